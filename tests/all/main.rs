//! The integration tests, one module per area.

mod checkpoint;
mod cli;
mod common;
mod gradcheck;
mod lm_cli;
mod lm_data;
mod padding;
mod training;
