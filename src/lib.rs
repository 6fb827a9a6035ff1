//! # unroll
//!
//! Trains recurrent neural networks with exact back-propagation through time, on the GPU through
//! WGSL compute shaders and on the CPU with a reference engine that every GPU result is checked
//! against.
//!
//! The model (layer k, time step t, PyTorch's names):
//!
//! ```text
//! s_t = f1(W_ih x_t + b_ih + W_hh s_{t-1} + b_hh)      f1 = tanh (or relu)
//! p_t = f2(W_o s_t + b_o)                              f2 = softmax | identity | sigmoid
//! Loss = sum_t mask_t * Loss_elt(p_t, y_t) / sum_t mask_t
//! ```
//!
//! Shape legend: B batch rows, T time steps, H state size, I input size (the vocabulary for a
//! language model, whose one-hot input makes `W_ih x_t` a column gather), V output size,
//! N = T * B rows in time-major order (`r = t * B + b`).

pub mod bench;
pub mod data;
pub mod engine;
pub mod error;
pub mod model;
pub mod sample;
pub mod train;

pub use error::{Error, Result};
