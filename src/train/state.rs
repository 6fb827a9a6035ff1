//! The training state for an exact resume: `DIR/state.safetensors` holds the parameters, both
//! optimizer moment buffers and the carried state, with the run's settings and progress as JSON
//! metadata. It is self-contained (a resume needs no other file) and written atomically.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::data::Sequences;
use crate::data::vocab::Vocab;
use crate::dist::{self, Group};
use crate::engine::{Dropout, EdgeDropout};
use crate::error::{Error, Result};
use crate::model::checkpoint::{Tensor, serialize, write_atomic};
use crate::model::file::{SafetensorsKind, read_safetensors};
use crate::model::{ModelConfig, ParamLayout};
use crate::train::optim::{OptimizerConfig, OptimizerState};
use crate::train::schedule::{LrSchedule, ScheduleState};

/// File name of the training state inside a run directory.
pub const STATE_FILE: &str = "state.safetensors";
const FORMAT: &str = "unroll-state/1";

/// The settings of a run: what a resume continues with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    /// Total optimizer steps of the run.
    pub steps: u64,
    pub batch: usize,
    pub seq_len: usize,
    pub optimizer: OptimizerConfig,
    /// Base learning rate.
    pub lr: f32,
    pub schedule: LrSchedule,
    /// Evaluate (and save best.safetensors) every this many steps; 0: only at the end.
    pub eval_every: u64,
    /// Save model and state every this many steps; 0: only at evaluations and the end.
    pub checkpoint_every: u64,
    /// Read the loss back and report every this many steps.
    pub log_every: u64,
    pub seed: u64,
    /// The corpus path (None: the built-in corpus) and its token count, checked on resume; for a
    /// run on pairs, the pairs file and its number of pairs (and `seq_len` 0).
    pub corpus: Option<String>,
    pub corpus_tokens: usize,
    pub val_frac: f64,
    /// The most predictions (lines in lines mode, pairs) each periodic evaluation scores,
    /// spread over the validation part; `None`: all of it (and what runs saved before the
    /// bound existed keep).
    #[serde(default)]
    pub val_limit: Option<u64>,
    /// The same for the closing evaluation after the last step; `None`: all.
    #[serde(default)]
    pub final_val_limit: Option<u64>,
    /// How the corpus is cut into sequences.
    #[serde(default)]
    pub sequences: Sequences,
    /// What to do when the loss or the gradient norm stops being finite.
    #[serde(default)]
    pub on_nan: OnNan,
    /// Dropout between stacked layers (0: none); runs saved before it existed have none.
    #[serde(default)]
    pub dropout: f32,
    /// The bytes of the corpus path when they are not UTF-8 (`corpus` then holds a lossy form
    /// for display): the path a resume opens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corpus_path_bytes: Option<Vec<u8>>,
    /// The fingerprint of the corpus's content (`data::guard::fingerprint`), checked on resume;
    /// `None` for runs on pairs (checked by their own digest) and runs saved before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corpus_fingerprint: Option<u64>,
    /// Evaluate at the end of every pass over the training data (besides every `eval_every`
    /// steps, 0 with it); runs saved before it existed evaluate by steps.
    #[serde(default, skip_serializing_if = "is_false")]
    pub eval_each_epoch: bool,
    /// Dropout on the embedded tokens (the output of the embedding), in training only.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropout_embed: f32,
    /// Dropout on the top layer's output (the input of the output layer), in training only.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropout_out: f32,
    /// The file validation scores instead of a `val_frac` tail of the corpus (or a share of
    /// the pairs); `None`: the run validates on a part of its training data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_file: Option<ValFile>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(p: &f32) -> bool {
    *p == 0.0
}

/// A validation file of a run, kept so that a resume scores the same data: its path (as
/// [`RunSpec::corpus`] keeps the corpus's), its size in tokens (or pairs) and the fingerprint
/// of its content, both checked on resume.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValFile {
    pub path: String,
    /// The bytes of the path when they are not UTF-8 (`path` then holds a lossy form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_bytes: Option<Vec<u8>>,
    /// Tokens of a corpus, pairs of a pairs file.
    pub tokens: usize,
    /// `data::guard::fingerprint` of a corpus's text, `Pairs::digest` of pairs.
    pub fingerprint: u64,
}

impl ValFile {
    /// The validation file at `path` of `tokens` tokens (or pairs) and `fingerprint`.
    pub fn new(path: &Path, tokens: usize, fingerprint: u64) -> Self {
        ValFile {
            path: path.to_string_lossy().into_owned(),
            path_bytes: match path.to_str() {
                Some(_) => None,
                None => raw_path_bytes(path),
            },
            tokens,
            fingerprint,
        }
    }

    /// The path a resume opens.
    pub fn path(&self) -> PathBuf {
        if let Some(bytes) = &self.path_bytes
            && let Some(path) = path_of_raw_bytes(bytes)
        {
            return path;
        }
        PathBuf::from(&self.path)
    }

    /// Refuses a validation file that is not the one the run was started on: `now` is its
    /// size and fingerprint as read by this resume.
    pub fn check(&self, (tokens, fingerprint): (usize, u64)) -> Result<()> {
        if tokens != self.tokens || fingerprint != self.fingerprint {
            return Err(Error::Data(format!(
                "the validation file {} changed since the run was started ({} then, {} now, or \
                 other content), so its scores would not compare with the saved ones; restore \
                 it, or start a new run from these weights with --init",
                self.path, self.tokens, tokens
            )));
        }
        Ok(())
    }
}

impl RunSpec {
    /// Records `path` as the run's corpus (or pairs file), losslessly: as text, and as its raw
    /// bytes too when it is not UTF-8.
    pub fn set_corpus_path(&mut self, path: &Path) {
        self.corpus = Some(path.to_string_lossy().into_owned());
        self.corpus_path_bytes = match path.to_str() {
            Some(_) => None,
            None => raw_path_bytes(path),
        };
    }

    /// The path of the run's corpus (or pairs file); `None`: the built-in corpus.
    pub fn corpus_path(&self) -> Option<PathBuf> {
        if let Some(bytes) = &self.corpus_path_bytes
            && let Some(path) = path_of_raw_bytes(bytes)
        {
            return Some(path);
        }
        self.corpus.as_ref().map(PathBuf::from)
    }

    /// Refuses settings that no run can have, with the checks the command line makes: a state
    /// file is held to them too, whoever wrote it.
    pub fn validate(&self) -> Result<()> {
        if self.batch == 0 {
            return Err(Error::Config("--batch must be at least 1".into()));
        }
        self.optimizer.validate()?;
        check_lr(self.lr)?;
        self.schedule.validate()?;
        check_val_frac(self.val_frac)?;
        for (option, limit) in [
            ("--val-tokens", self.val_limit),
            ("--final-val-tokens", self.final_val_limit),
        ] {
            if limit == Some(0) {
                return Err(Error::Config(format!(
                    "{option} must be at least 1 (or all)"
                )));
            }
        }
        for p in [self.dropout, self.dropout_embed, self.dropout_out] {
            Dropout { p, seed: 0 }.validate()?;
        }
        Ok(())
    }

    /// The dropout of training step `step` (0-based): its own mask seed from the run's seed, so
    /// a resumed run draws the masks an uninterrupted one would. `None` without dropout
    /// anywhere (between layers, on the embedding or on the top layer's output: the step's
    /// seed keys the masks of [`RunSpec::edge_dropout`] too).
    pub fn dropout_at(&self, step: u64) -> Option<Dropout> {
        let any = self.dropout > 0.0 || self.edge_dropout().is_on();
        any.then(|| Dropout {
            p: self.dropout,
            seed: self.seed ^ (step.wrapping_add(1)).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        })
    }
}

impl RunSpec {
    /// The dropout of the model's edges, the embedding's output and the top layer's output.
    pub fn edge_dropout(&self) -> EdgeDropout {
        EdgeDropout {
            embed: self.dropout_embed,
            out: self.dropout_out,
        }
    }
}

#[cfg(unix)]
fn raw_path_bytes(path: &Path) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    Some(path.as_os_str().as_bytes().to_vec())
}

#[cfg(not(unix))]
fn raw_path_bytes(_path: &Path) -> Option<Vec<u8>> {
    None
}

#[cfg(unix)]
fn path_of_raw_bytes(bytes: &[u8]) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    Some(PathBuf::from(std::ffi::OsStr::from_bytes(bytes)))
}

#[cfg(not(unix))]
fn path_of_raw_bytes(_bytes: &[u8]) -> Option<PathBuf> {
    None
}

/// What a run does when it diverges (a non-finite loss or gradient norm). Either way the update
/// of the diverging step is skipped and no checkpoint is written from it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnNan {
    /// Halve the learning rate and continue.
    #[default]
    ReduceLr,
    /// Stop with an error, keeping the last good checkpoint.
    Stop,
}

/// How far a run has come.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Optimizer steps taken.
    pub step: u64,
    /// Where the training data source is (its own JSON form).
    pub position: serde_json::Value,
    pub schedule: ScheduleState,
    /// Best validation loss so far (the loss of best.safetensors).
    pub best_val: Option<f64>,
    /// Multiplier of the learning rate after divergences (halved at each one).
    #[serde(default = "one")]
    pub lr_scale: f32,
}

fn one() -> f32 {
    1.0
}

/// Refuses a learning rate that is not a number >= 0.
pub fn check_lr(lr: f32) -> Result<()> {
    if lr.is_finite() && lr >= 0.0 {
        Ok(())
    } else {
        Err(Error::Config(format!("--lr {lr} must be a number >= 0")))
    }
}

/// Refuses a validation fraction outside [0, 1).
pub fn check_val_frac(val_frac: f64) -> Result<()> {
    if (0.0..1.0).contains(&val_frac) {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "--val-frac {val_frac} must be in [0, 1)"
        )))
    }
}

impl Progress {
    /// Refuses progress that no run reaches: a learning-rate multiplier outside [0, 1], a
    /// best loss that is not finite.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        for (name, scale) in [
            ("learning-rate multiplier", self.lr_scale),
            ("schedule's learning-rate multiplier", self.schedule.scale),
        ] {
            if !(0.0..=1.0).contains(&scale) {
                return bad(format!("the {name} {scale} is not in [0, 1]"));
            }
        }
        for best in [self.best_val, self.schedule.best].into_iter().flatten() {
            if !best.is_finite() {
                return bad(format!("the best validation loss {best} is not finite"));
            }
        }
        Ok(())
    }

    /// The progress of a run that has not started.
    pub fn start() -> Self {
        Progress {
            step: 0,
            position: serde_json::Value::Null,
            schedule: ScheduleState::default(),
            best_val: None,
            lr_scale: 1.0,
        }
    }
}

/// Everything a resume needs.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainState {
    pub config: ModelConfig,
    /// The vocabulary of a language model; `None` for a run on pairs.
    pub vocab: Option<Vocab>,
    pub run: RunSpec,
    pub progress: Progress,
    pub params: Vec<f32>,
    pub optimizer: OptimizerState,
    /// Rows (B) of the carried state.
    pub state_rows: usize,
    /// The carried state, `B * config.state_size_per_row()` (h, then c for an LSTM).
    pub state: Vec<f32>,
}

/// The shape of the saved state of `rows` rows: `[parts, B, H]` (`layers * directions` blocks
/// of h, and as many of c for an LSTM) when h and c are as wide; flat `[B * per_row]` with a
/// projection, where h is P wide and c is H wide.
fn state_shape(config: &ModelConfig, rows: usize) -> Vec<usize> {
    let (per_row, h) = (config.state_size_per_row(), config.hidden_size);
    if config.state_width() == h {
        vec![per_row / h, rows, h]
    } else {
        vec![rows * per_row]
    }
}

/// The rows of a saved state of `shape`, when the shape is one of `config`'s.
fn state_rows_of(config: &ModelConfig, shape: &[usize]) -> Option<usize> {
    let rows = match shape {
        [_, rows, _] => *rows,
        [len] => len / config.state_size_per_row().max(1),
        _ => return None,
    };
    (state_shape(config, rows) == shape).then_some(rows)
}

impl TrainState {
    /// The first value that is not finite in the parameters, the optimizer's moments or the
    /// carried state, named; `None` when every value is finite (a state that can be saved).
    pub fn first_non_finite(&self) -> Option<String> {
        let layout = ParamLayout::new(&self.config).ok()?;
        if let Some(what) = layout.first_non_finite(&self.params) {
            return Some(what);
        }
        for (moment, values) in [("first", &self.optimizer.m), ("second", &self.optimizer.v)] {
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                return Some(format!(
                    "the optimizer's {moment} moment of {} is not finite ({})",
                    layout.name_of(i),
                    values[i]
                ));
            }
        }
        let i = self.state.iter().position(|v| !v.is_finite())?;
        Some(format!(
            "the carried state (value {i}) is not finite ({})",
            self.state[i]
        ))
    }

    /// Writes `dir/state.safetensors` atomically; a state holding a value that is not finite is
    /// refused (nothing is written).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(STATE_FILE);
        if let Some(what) = self.first_non_finite() {
            return Err(Error::checkpoint(
                &path,
                format!("not saved: {what} (a training state is only saved when finite)"),
            ));
        }
        let n = self.params.len();
        let tensors: Vec<Tensor> = vec![
            ("params", vec![n], &self.params),
            (
                "optimizer.m",
                vec![self.optimizer.m.len()],
                &self.optimizer.m,
            ),
            (
                "optimizer.v",
                vec![self.optimizer.v.len()],
                &self.optimizer.v,
            ),
            (
                "state",
                state_shape(&self.config, self.state_rows),
                &self.state,
            ),
        ];
        let json = |v: &dyn erased::Json| v.json();
        let mut meta = BTreeMap::new();
        meta.insert("format".to_string(), FORMAT.to_string());
        meta.insert("config".to_string(), json(&self.config));
        if let Some(vocab) = &self.vocab {
            meta.insert("vocab".to_string(), vocab.to_json());
        }
        meta.insert("run".to_string(), json(&self.run));
        meta.insert("progress".to_string(), json(&self.progress));
        meta.insert(
            "optimizer_step".to_string(),
            self.optimizer.step.to_string(),
        );
        write_atomic(&path, &serialize(&tensors, &meta))
    }

    /// Reads `dir/state.safetensors`, checking every tensor against the stored config.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(STATE_FILE);
        let bytes = read_safetensors(&path, SafetensorsKind::TrainingState)?;
        Self::parse(&bytes, &path)
    }

    /// [`TrainState::load`] for every rank of `group`: rank 0 reads the file (the run directory
    /// is rank 0's) and sends its bytes to the others; rank 0's error, if any, is every rank's.
    pub fn load_shared(dir: &Path, group: &dyn Group) -> Result<Self> {
        let path = dir.join(STATE_FILE);
        let bytes = dist::broadcast_result(group, || {
            read_safetensors(&path, SafetensorsKind::TrainingState)
        })?;
        Self::parse(&bytes, &path)
    }

    /// The training state in the bytes of a state file read from `path`.
    fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        let path = path.to_path_buf();
        let bad = |m: String| Error::checkpoint(&path, m);
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| bad(format!("not a valid safetensors file ({e})")))?;
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(format!("not a valid safetensors file ({e})")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(bad(format!(
                "not an unroll training state (format {FORMAT} expected)"
            )));
        }
        fn field<T: for<'de> Deserialize<'de>>(
            meta: &HashMap<String, String>,
            key: &str,
            bad: &dyn Fn(String) -> Error,
        ) -> Result<T> {
            let s = meta
                .get(key)
                .ok_or_else(|| bad(format!("metadata has no {key}")))?;
            serde_json::from_str(s).map_err(|e| bad(format!("metadata {key} is invalid: {e}")))
        }
        let config: ModelConfig = field(&meta, "config", &bad)?;
        let run: RunSpec = field(&meta, "run", &bad)?;
        let progress: Progress = field(&meta, "progress", &bad)?;
        let opt_step: u64 = field(&meta, "optimizer_step", &bad)?;
        let vocab = match meta.get("vocab") {
            Some(v) => {
                Some(Vocab::from_json_of(v, config.input_size).map_err(|e| bad(e.to_string()))?)
            }
            None => None,
        };
        let n = ParamLayout::new(&config)
            .map_err(|e| bad(e.to_string()))?
            .len();
        check_settings(&run, &progress, vocab.as_ref()).map_err(|e| match e {
            Error::Config(m) => bad(format!("its saved settings are not valid: {m}")),
            other => other,
        })?;
        let tensor = |name: &str, want: Option<&[usize]>| -> Result<(Vec<usize>, Vec<f32>)> {
            let t = st
                .tensor(name)
                .map_err(|_| bad(format!("tensor {name} is missing")))?;
            if t.dtype() != Dtype::F32 || want.is_some_and(|w| w != t.shape()) {
                return Err(bad(format!(
                    "tensor {name} has {:?} {:?}, expected F32 {want:?}",
                    t.dtype(),
                    t.shape()
                )));
            }
            let v: Vec<f32> = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            if v.iter().any(|x| !x.is_finite()) {
                return Err(bad(format!("tensor {name} holds a non-finite value")));
            }
            Ok((t.shape().to_vec(), v))
        };
        let (_, params) = tensor("params", Some(&[n]))?;
        let (_, m) = tensor("optimizer.m", Some(&[n]))?;
        let (_, v) = tensor("optimizer.v", Some(&[n]))?;
        let (shape, state) = tensor("state", None)?;
        let Some(state_rows) = state_rows_of(&config, &shape) else {
            return Err(bad(format!("tensor state has shape {shape:?}")));
        };
        Ok(TrainState {
            config,
            vocab,
            run,
            progress,
            params,
            optimizer: OptimizerState {
                step: opt_step,
                m,
                v,
            },
            state_rows,
            state,
        })
    }
}

/// The checks of a saved run's settings: those of the command line, and those the kind of run
/// implies (a language model's windows have a length, lines need line tokens).
fn check_settings(run: &RunSpec, progress: &Progress, vocab: Option<&Vocab>) -> Result<()> {
    run.validate()?;
    progress.validate()?;
    let Some(vocab) = vocab else {
        return Ok(());
    };
    if run.seq_len == 0 {
        return Err(Error::Config("--seq-len must be at least 1".into()));
    }
    if run.sequences == Sequences::Lines && vocab.start_token().is_none() {
        return Err(Error::Config(
            "lines sequences need a vocabulary with line tokens, which it lacks".into(),
        ));
    }
    Ok(())
}

/// JSON of any serializable value, for metadata.
mod erased {
    pub trait Json {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> String {
            serde_json::to_string(self).unwrap_or_default()
        }
    }
}
