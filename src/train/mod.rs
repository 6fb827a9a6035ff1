//! Training: optimizers, the trainer loop over an [`crate::engine::Engine`].

pub mod optim;
pub mod trainer;
