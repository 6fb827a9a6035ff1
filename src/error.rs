//! Errors of the library: one enum, each variant carrying the context a user needs to act on it.

use std::path::PathBuf;

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in unroll, with its cause.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read, written or renamed.
    #[error("{action} {path}: {cause}")]
    Io {
        action: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
    /// A model configuration or option that cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A checkpoint that is malformed or does not match what was expected.
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    /// Input data (corpus, batch, pairs file) that is malformed or inconsistent.
    #[error("data: {0}")]
    Data(String),
    /// Tensor or batch shapes that do not agree.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A data-parallel run's processes disagree, or their communication failed.
    #[error("data-parallel run: {0}")]
    Dist(String),
    /// The GPU could not be set up or failed while running.
    #[error("gpu: {0}")]
    Gpu(String),
    /// The gradient norm of the last update was not finite: the engine skipped that update
    /// (parameters and moments are as they were before it).
    #[error(
        "gradient norm is {norm}: training diverged (lower the learning rate or clip); the \
         update was skipped"
    )]
    Diverged { norm: f32 },
    /// A training run stopped because it diverged (`--on-nan stop`, or the learning rate fell too
    /// far); the last good checkpoint in `out` is kept.
    #[error(
        "training diverged after step {step}: {reason}; stopped (the last good checkpoint in {} \
         is kept)",
        out.display()
    )]
    TrainingDiverged {
        step: u64,
        reason: String,
        out: PathBuf,
    },
    /// The engine API was called out of order (e.g. `backward` before `forward`): a bug in the
    /// caller, not in its input.
    #[error("engine called out of order: {0}")]
    Misuse(String),
    /// The memory a run needs, estimated from its shapes before anything is allocated, is more
    /// than the process may use (or its sizes overflow the arithmetic); the message names the
    /// largest parts and the option to lower (see `crate::memory`).
    #[error("{message}")]
    Memory {
        /// Bytes needed (saturating).
        needed: u128,
        /// Bytes the process may use.
        available: u128,
        message: String,
    },
    /// Another process holds the lock of a run directory: a run is training in it, and nothing
    /// in it may be read for a resume or written until it ends. `pid`: the process the lock
    /// file names.
    #[error(
        "{} is in use: another unroll run{} is training in it; wait for it to end (or stop it), \
         or choose another directory",
        dir.display(),
        pid.map_or(String::new(), |p| format!(" (process {p})"))
    )]
    RunLocked { dir: PathBuf, pid: Option<u32> },
}

impl Error {
    /// An I/O error with the action and path it concerned.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            cause,
        }
    }

    /// A checkpoint error with the file it concerns.
    pub fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.into(),
            message: message.into(),
        }
    }
}
