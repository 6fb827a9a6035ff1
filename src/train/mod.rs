//! Training: optimizers, learning-rate schedules, the trainer loop over an
//! [`crate::engine::Engine`], metrics, and the state that makes a resume exact.

pub mod metrics;
pub mod optim;
pub mod rundir;
pub mod schedule;
pub mod state;
pub mod trainer;
