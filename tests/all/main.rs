//! The integration tests, one module per area.

mod bench;
mod checkpoint;
mod cli;
mod common;
mod gpu_kernels;
mod gpu_training;
mod gradcheck;
mod lm_cli;
mod lm_data;
mod padding;
mod shaders;
mod training;
