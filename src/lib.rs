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
//! or, with gates stacked along the first axis of the weights as PyTorch stacks them, the GRU
//! (`r, z = σ(..)`, `n = tanh(a_ih_n + r ⊙ a_hh_n)`, `h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}`) or the
//! LSTM (`i, f, o = σ(..)`, `g = tanh(..)`, `c_t = f ⊙ c_{t-1} + i ⊙ g`, `h_t = o ⊙ tanh(c_t)`).
//!
//! Shape legend: B batch rows, T time steps, H state size, I input size (the vocabulary for a
//! language model, whose one-hot input makes `W_ih x_t` a column gather), V output size,
//! N = T * B rows in time-major order (`r = t * B + b`).
//!
//! A language model trained for a few steps on the CPU reference engine, through the same
//! [`engine::Engine`] calls the trainer and the GPU engine use:
//!
//! ```
//! use unroll::data::corpus::Corpus;
//! use unroll::data::vocab::VocabKind;
//! use unroll::data::{TrainBatches, lm::StreamSource};
//! use unroll::engine::{Engine, cpu::CpuEngine};
//! use unroll::model::{ModelConfig, ParamLayout, init_params};
//! use unroll::train::optim::{OptimizerConfig, OptimizerKind};
//! use unroll::train::trainer::train_step;
//!
//! let corpus = Corpus::from_string("abcabcabd".repeat(200), VocabKind::Chars)?;
//! let config = ModelConfig::language_model(corpus.vocab().len(), 16, 1);
//! let params = init_params(&config, &ParamLayout::new(&config)?, 7);
//! let mut engine = CpuEngine::<f32>::new(&config, &params)?;
//! let mut batches = StreamSource::new(&corpus, 8, 16)?;
//! let adam = OptimizerConfig::new(OptimizerKind::Adam).with_clip(5.0);
//! let mut losses = Vec::new();
//! for _ in 0..100 {
//!     let (batch, reset) = batches.next_batch()?;
//!     train_step(&mut engine, &batch, reset, &adam, 0.02)?;
//!     losses.push(engine.loss()?.mean());
//! }
//! // ln(4) = 1.39 nats for a uniform guess over the four characters; the pattern is learnt.
//! assert!(losses[0] > 1.2 && losses[99] < 0.5, "{} -> {}", losses[0], losses[99]);
//! # Ok::<(), unroll::Error>(())
//! ```

pub mod bench;
pub mod data;
pub mod dist;
pub mod engine;
pub mod error;
pub mod memory;
pub mod model;
pub mod sample;
pub mod train;
pub mod tune;

pub use error::{Error, Result};
