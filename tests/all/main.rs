//! The integration tests, one module per area.

mod bench;
mod checkpoint;
mod cli;
mod common;
mod gating;
mod gpu_gated;
mod gpu_kernels;
mod gpu_training;
mod gradcheck;
mod interfaces;
mod large_vocab;
mod lines;
mod lm_cli;
mod lm_data;
mod packed;
mod padding;
mod pairs_cli;
mod pairs_data;
mod pytorch;
mod row_split;
mod run_dir;
mod shaders;
mod training;
mod val_bound;
mod words;
mod words_cli;
