//! Checkpoints: `DIR/model.safetensors` holds every parameter under PyTorch's name and shape, with
//! the model configuration and the vocabulary as JSON in the safetensors metadata. Files are written
//! to a temporary name, flushed, and renamed, so a crash never leaves a half-written checkpoint.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use crate::data::vocab::Vocab;
use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::model::file::{SafetensorsKind, read_safetensors};
use crate::model::layout::ParamLayout;

/// File name of the latest model inside a checkpoint directory.
pub const MODEL_FILE: &str = "model.safetensors";
/// Metadata key that marks an unroll checkpoint and its format version.
const FORMAT_KEY: &str = "format";
const FORMAT: &str = "unroll/1";
const CONFIG_KEY: &str = "config";
const VOCAB_KEY: &str = "vocab";

/// A model as stored on disk.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub config: ModelConfig,
    pub vocab: Option<Vocab>,
    /// The flat parameter buffer in `ParamLayout` order.
    pub params: Vec<f32>,
}

impl Checkpoint {
    /// Writes `dir/model.safetensors` (creating `dir`), atomically.
    pub fn save_dir(&self, dir: &Path) -> Result<PathBuf> {
        fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
        let path = dir.join(MODEL_FILE);
        self.save(&path)?;
        Ok(path)
    }

    /// Writes the checkpoint to `path` through a temporary file and a rename.
    pub fn save(&self, path: &Path) -> Result<()> {
        let layout = ParamLayout::new(&self.config)?;
        if self.params.len() != layout.len() {
            return Err(Error::Shape(format!(
                "{} parameters given for a model of {}",
                self.params.len(),
                layout.len()
            )));
        }
        if let Some(what) = layout.first_non_finite(&self.params) {
            return Err(Error::checkpoint(
                path,
                format!("not saved: {what} (a model is only saved with finite parameters)"),
            ));
        }
        let tensors: Vec<Tensor> = layout
            .specs()
            .iter()
            .map(|spec| {
                (
                    spec.name.as_str(),
                    spec.shape.clone(),
                    &self.params[spec.range()],
                )
            })
            .collect();
        let mut meta = BTreeMap::new();
        meta.insert(FORMAT_KEY.to_string(), FORMAT.to_string());
        meta.insert(
            CONFIG_KEY.to_string(),
            serde_json::to_string(&self.config).map_err(|e| Error::Config(e.to_string()))?,
        );
        if let Some(vocab) = &self.vocab {
            meta.insert(VOCAB_KEY.to_string(), vocab.to_json());
        }
        let out = serialize(&tensors, &meta);
        write_atomic(path, &out)
    }

    /// Reads a checkpoint from a directory (its `model.safetensors`) or a file, checking names,
    /// shapes, dtypes and the configuration.
    pub fn load(path: &Path) -> Result<Self> {
        let file = if path.is_dir() {
            path.join(MODEL_FILE)
        } else {
            path.to_path_buf()
        };
        let bytes = read_safetensors(&file, SafetensorsKind::Checkpoint)?;
        Self::from_bytes(&bytes, &file)
    }

    /// Parses checkpoint bytes; `path` is only used in error messages.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let bad = |m: String| Error::checkpoint(path, m);
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(format!("not a valid safetensors file ({e})")))?;
        let empty = std::collections::HashMap::new();
        let meta = header.metadata().as_ref().unwrap_or(&empty);
        match meta.get(FORMAT_KEY) {
            Some(f) if f == FORMAT => {}
            Some(f) => return Err(bad(format!("format {f:?} is not {FORMAT:?}"))),
            None => return Err(bad("no unroll metadata: not an unroll checkpoint".into())),
        }
        let config: ModelConfig = meta
            .get(CONFIG_KEY)
            .ok_or_else(|| bad("metadata has no model config".into()))
            .and_then(|c| {
                serde_json::from_str(c).map_err(|e| bad(format!("model config is invalid: {e}")))
            })?;
        let layout = ParamLayout::new(&config).map_err(|e| bad(e.to_string()))?;
        let vocab = match meta.get(VOCAB_KEY) {
            Some(v) => {
                Some(Vocab::from_json_of(v, config.input_size).map_err(|e| bad(e.to_string()))?)
            }
            None => None,
        };
        let tensors = SafeTensors::deserialize(bytes)
            .map_err(|e| bad(format!("not a valid safetensors file ({e})")))?;
        let mut params = vec![0.0f32; layout.len()];
        for spec in layout.specs() {
            let t = tensors
                .tensor(&spec.name)
                .map_err(|_| bad(format!("tensor {} is missing", spec.name)))?;
            if t.dtype() != Dtype::F32 {
                return Err(bad(format!(
                    "tensor {} has dtype {:?}, expected F32",
                    spec.name,
                    t.dtype()
                )));
            }
            if t.shape() != spec.shape.as_slice() {
                return Err(bad(format!(
                    "tensor {} has shape {:?}, the config {} expects {:?}",
                    spec.name,
                    t.shape(),
                    serde_json::to_string(&config).unwrap_or_default(),
                    spec.shape
                )));
            }
            for (dst, src) in params[spec.range()]
                .iter_mut()
                .zip(t.data().chunks_exact(4))
            {
                *dst = f32::from_le_bytes([src[0], src[1], src[2], src[3]]);
            }
        }
        let expected: Vec<&str> = layout.specs().iter().map(|s| s.name.as_str()).collect();
        if let Some((name, _)) = tensors
            .tensors()
            .into_iter()
            .find(|(n, _)| !expected.contains(&n.as_str()))
        {
            return Err(bad(format!(
                "unexpected tensor {name} for this model config"
            )));
        }
        if let Some(what) = layout.first_non_finite(&params) {
            return Err(bad(what));
        }
        Ok(Checkpoint {
            config,
            vocab,
            params,
        })
    }

    /// Refuses the checkpoint when its configuration is not `expected`, naming the differences.
    pub fn check_config(&self, expected: &ModelConfig, path: &Path) -> Result<()> {
        if &self.config == expected {
            return Ok(());
        }
        let a = serde_json::to_value(&self.config).unwrap_or_default();
        let b = serde_json::to_value(expected).unwrap_or_default();
        let mut diffs = Vec::new();
        if let (Some(a), Some(b)) = (a.as_object(), b.as_object()) {
            for (k, va) in a {
                if b.get(k) != Some(va) {
                    diffs.push(format!(
                        "{k}: checkpoint has {va}, expected {}",
                        b.get(k).cloned().unwrap_or_default()
                    ));
                }
            }
        }
        Err(Error::checkpoint(
            path,
            format!("model config does not match ({})", diffs.join("; ")),
        ))
    }
}

/// A named f32 tensor to serialize: name, shape, values.
pub type Tensor<'a> = (&'a str, Vec<usize>, &'a [f32]);

/// The safetensors bytes of `tensors` (stored in the order given) and the string metadata `meta`.
/// The same tensors and metadata always give the same bytes: the header's keys are written in
/// a fixed order (metadata sorted by key, then the tensors), which `safetensors::serialize`
/// does not promise (its metadata is a hash map). Readers see an ordinary safetensors file.
pub fn serialize(tensors: &[Tensor], meta: &BTreeMap<String, String>) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!(meta));
    let mut offset = 0;
    for (name, shape, values) in tensors {
        let end = offset + 4 * values.len();
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut header = serde_json::Value::Object(header).to_string().into_bytes();
    // The data starts 8-byte aligned, as safetensors writes it.
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + header.len() + offset);
    out.extend((header.len() as u64).to_le_bytes());
    out.extend(header);
    for (_, _, values) in tensors {
        out.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    }
    out
}

/// Writes `bytes` to `path` through `path.tmp`, fsyncs, then renames over `path`. On any
/// failure (a full disk, most often) the temporary file is removed, so a failed write leaves
/// `path` as it was and nothing beside it. The temporary is created anew (a file or link left
/// under its name is removed first, never written through), so the write stays in `path`'s
/// directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_via(path, &tmp_path(path), bytes)
}

/// [`write_atomic`] through the temporary file `tmp` (in `path`'s directory): a name of its
/// own for each writer where several processes may write `path` at once.
pub fn write_atomic_via(path: &Path, tmp: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp.to_path_buf();
    let written = write_new(&tmp, bytes)
        .and_then(|()| fs::rename(&tmp, path).map_err(|e| Error::io("rename into", path, e)));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
        return written;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = fs::File::open(dir)
    {
        // Make the rename itself durable; not every platform lets a directory be synced.
        let _ = d.sync_all();
    }
    Ok(())
}

/// The temporary name [`write_atomic`] writes `path` through: `path.tmp`.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    PathBuf::from(tmp)
}

/// Creates `tmp` as a new file (replacing whatever had its name) holding `bytes`, synced.
fn write_new(tmp: &Path, bytes: &[u8]) -> Result<()> {
    match fs::remove_file(tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(Error::io("remove the stale", tmp, e));
        }
        _ => {}
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)
        .map_err(|e| Error::io("create", tmp, e))?;
    fail_point(tmp)?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io("write", tmp, e))
}

/// A write failure injected for tests: with `UNROLL_FAIL_WRITE=NAME` in the environment of a
/// debug build, writing the temporary of the file named `NAME` fails as on a full disk, after
/// the temporary was created. Release builds never read the variable.
fn fail_point(tmp: &Path) -> Result<()> {
    if cfg!(debug_assertions)
        && let Some(name) = std::env::var_os("UNROLL_FAIL_WRITE")
        && tmp.file_name() == Some(tmp_path(Path::new(&name)).as_os_str())
    {
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        return Err(Error::io("write", tmp, full));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_removes_its_temporary_and_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        // A rename onto a non-empty directory fails after the temporary was written.
        let path = dir.path().join("model.safetensors");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("kept"), "old").unwrap();
        assert!(write_atomic(&path, b"new").is_err());
        assert!(!tmp_path(&path).exists(), "the temporary was left behind");
        assert_eq!(fs::read_to_string(path.join("kept")).unwrap(), "old");
    }

    #[cfg(unix)]
    #[test]
    fn a_stale_temporary_link_is_replaced_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside.txt");
        fs::write(&outside, "the user's").unwrap();
        let run = dir.path().join("run");
        fs::create_dir(&run).unwrap();
        let path = run.join("state.safetensors");
        std::os::unix::fs::symlink(&outside, tmp_path(&path)).unwrap();
        write_atomic(&path, b"ours").unwrap();
        assert_eq!(fs::read_to_string(&outside).unwrap(), "the user's");
        assert_eq!(fs::read(&path).unwrap(), b"ours");
        assert!(!tmp_path(&path).exists());
    }
}
