//! The model: its configuration, the flat parameter layout, initialisation and checkpoints.

pub mod checkpoint;
pub mod config;
pub mod file;
pub mod import;
pub mod init;
pub mod layout;

pub use checkpoint::Checkpoint;
pub use config::{Activation, Cell, InputKind, ModelConfig, OutputKind};
pub use init::{init_params, set_forget_bias_one, set_init_range};
pub use layout::{LayerOffsets, ParamLayout, ParamSpec};
