//! Training: optimizers, the trainer loop over an [`crate::engine::Engine`], metrics.

pub mod optim;
