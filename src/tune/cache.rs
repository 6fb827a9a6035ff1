//! The cache of kernel choices: a small JSON file, `$UNROLL_TUNE_CACHE` when set, else
//! `$XDG_CACHE_HOME/unroll/tune.json`, else `$HOME/.cache/unroll/tune.json`. One entry per
//! device ([`Engine::device_key`](crate::engine::Engine::device_key)) and shape
//! ([`shape_key`]) keeps the winner and each variant's median. It is written whole to a
//! temporary file renamed over the old one, so a reader never sees half of it (of two runs
//! writing at once, the last rename wins). A file that cannot be read, is not this format or of
//! another [`CACHE_VERSION`] is ignored with a note and replaced by the next write.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Measured, Tuning};
use crate::engine::Batch;
use crate::engine::variant::Variant;
use crate::error::{Error, Result};
use crate::model::{Cell, InputKind, ModelConfig, OutputKind};

/// The environment variable naming the cache file.
pub const CACHE_VAR: &str = "UNROLL_TUNE_CACHE";

/// The format of the file; another version is ignored (and replaced by the next write).
pub const CACHE_VERSION: u32 = 1;

/// A cache file larger than this is not one of ours: ignored.
const MAX_BYTES: u64 = 16 << 20;

/// The cache file: [`CACHE_VAR`], else `$XDG_CACHE_HOME/unroll/tune.json`, else
/// `$HOME/.cache/unroll/tune.json`; `None` when none of them is set.
pub fn cache_path() -> Option<PathBuf> {
    cache_path_in(|name| std::env::var_os(name))
}

/// [`cache_path`] with the environment read through `env` (empty values count as unset).
fn cache_path_in(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<PathBuf> {
    let var = |name: &str| env(name).filter(|v| !v.is_empty());
    if let Some(p) = var(CACHE_VAR) {
        return Some(PathBuf::from(p));
    }
    let dir = var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(dir.join("unroll").join("tune.json"))
}

/// The model and batch shape a choice is for: cell, layers, H, E, V, B, T, directions,
/// projection, biases, input and output kinds, f32.
pub fn shape_key(config: &ModelConfig, batch: &Batch) -> String {
    let cell = match config.cell {
        Cell::Rnn => format!("rnn-{:?}", config.activation).to_lowercase(),
        Cell::Gru => "gru".into(),
        Cell::Lstm => "lstm".into(),
    };
    let input = match config.input_kind {
        InputKind::OneHot => "onehot",
        InputKind::Dense => "dense",
    };
    let output = match config.output_kind {
        OutputKind::Softmax => "softmax",
        OutputKind::Identity => "identity",
        OutputKind::Sigmoid => "sigmoid",
    };
    let opt = |v: Option<usize>| v.map_or("-".to_string(), |v| v.to_string());
    format!(
        "{cell} L{} H{} E{} I{} {input} V{} {output} B{} T{} D{} P{} bias={} f32",
        config.layers,
        config.hidden_size,
        opt(config.embed),
        config.input_size,
        config.output_size,
        batch.rows,
        batch.steps,
        config.directions(),
        opt(config.proj_size),
        config.bias,
    )
}

/// One device and shape's choice.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheEntry {
    pub device: String,
    pub shape: String,
    pub winner: Variant,
    /// Every variant measured, with its median.
    pub times: Vec<Measured>,
}

impl CacheEntry {
    pub fn new(device: String, shape: String, tuning: &Tuning) -> Self {
        CacheEntry {
            device,
            shape,
            winner: tuning.winner,
            times: tuning.measured.clone(),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct CacheFile {
    version: u32,
    entries: Vec<CacheEntry>,
}

/// The cache as read from its file, with the notes of what was ignored.
#[derive(Debug, Default)]
pub struct TuneCache {
    path: Option<PathBuf>,
    entries: Vec<CacheEntry>,
    /// What was ignored while reading, one line each.
    pub notes: Vec<String>,
}

impl TuneCache {
    /// The cache at `path` (empty when there is none, or when it is ignored with a note).
    pub fn open(path: Option<&Path>) -> Self {
        let mut cache = TuneCache {
            path: path.map(Path::to_path_buf),
            ..TuneCache::default()
        };
        if let Some(p) = path {
            match read(p) {
                Ok(entries) => cache.entries = entries,
                Err(why) => cache.notes.push(format!(
                    "note: ignoring the kernel-choice cache {}: {why} (the next tuning rewrites it)",
                    p.display()
                )),
            }
        }
        cache
    }

    /// The file, for messages.
    pub fn path_text(&self) -> String {
        self.path
            .as_ref()
            .map_or("(no cache file)".into(), |p| p.display().to_string())
    }

    /// The entry of `device` and `shape`.
    pub fn lookup(&self, device: &str, shape: &str) -> Option<&CacheEntry> {
        self.entries
            .iter()
            .find(|e| e.device == device && e.shape == shape)
    }

    /// Every entry.
    pub fn entries(&self) -> &[CacheEntry] {
        &self.entries
    }

    /// Adds `entry`, replacing the one of its device and shape.
    pub fn insert(&mut self, entry: CacheEntry) {
        self.entries
            .retain(|e| !(e.device == entry.device && e.shape == entry.shape));
        self.entries.push(entry);
    }

    /// Writes the cache to its file atomically (a temporary file renamed over it), creating
    /// its folder. Nothing to do without a file.
    pub fn save(&self) -> Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let file = CacheFile {
            version: CACHE_VERSION,
            entries: self.entries.clone(),
        };
        let text = serde_json::to_string_pretty(&file)
            .map_err(|e| Error::Config(format!("cannot encode the kernel-choice cache: {e}")))?;
        write_atomic(path, text.as_bytes())
    }
}

/// The entries of the file at `path`: none when it does not exist; an error (the reason) when
/// it cannot be read, is too large, is not JSON of this format or of another version.
fn read(path: &Path) -> std::result::Result<Vec<CacheEntry>, String> {
    let meta = match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.to_string()),
        Ok(m) => m,
    };
    if meta.len() > MAX_BYTES {
        return Err(format!("{} bytes, more than a cache holds", meta.len()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("not JSON ({e})"))?;
    let version = value.get("version").and_then(|v| v.as_u64());
    if version != Some(CACHE_VERSION as u64) {
        return Err(format!(
            "format version {}, this build reads {CACHE_VERSION}",
            version.map_or("missing".into(), |v| v.to_string())
        ));
    }
    let file: CacheFile =
        serde_json::from_value(value).map_err(|e| format!("not a kernel-choice cache ({e})"))?;
    Ok(file.entries)
}

/// Writes `bytes` to a temporary file beside `path` named for this process (several runs may
/// save the cache at once: the last rename wins), then renames it over `path`.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("creating the folder of", path, e))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    crate::model::checkpoint::write_atomic_via(path, &PathBuf::from(tmp), bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path_with(vars: &[(&str, &str)]) -> Option<PathBuf> {
        cache_path_in(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| std::ffi::OsString::from(v))
        })
    }

    #[test]
    fn the_cache_path_prefers_the_variable_then_xdg_then_home() {
        let all = [
            (CACHE_VAR, "/a/t.json"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
        ];
        assert_eq!(path_with(&all), Some(PathBuf::from("/a/t.json")));
        assert_eq!(
            path_with(&all[1..]),
            Some(PathBuf::from("/x/unroll/tune.json"))
        );
        assert_eq!(
            path_with(&[(CACHE_VAR, ""), ("HOME", "/h")]),
            Some(PathBuf::from("/h/.cache/unroll/tune.json"))
        );
        assert_eq!(path_with(&[]), None);
    }

    #[test]
    fn a_missing_file_is_an_empty_cache_without_a_note() {
        let dir = std::env::temp_dir().join(format!("unroll-no-cache-{}", std::process::id()));
        let cache = TuneCache::open(Some(&dir.join("none.json")));
        assert!(cache.notes.is_empty() && cache.entries().is_empty());
        assert!(TuneCache::open(None).save().is_ok());
    }
}
