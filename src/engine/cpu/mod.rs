//! The CPU engine: the reference every other result is held to, generic over the float type so
//! the same code runs in f64 (the specification, checked against finite differences) and in f32
//! (training, with fast paths of its own).
//!
//! # Chain of trust
//!
//! Each link is held to the one before it by a test, so a number the GPU engine computes is,
//! in the end, a finite difference of the loss (see `docs/ARCHITECTURE.md`, "Chain of trust").
//!
//! 1. **Finite differences -> the CPU engine in f64.** `tests/all/gradcheck.rs` checks every
//!    gradient of `CpuEngine<f64>` against central finite differences of its own loss, for every
//!    cell, activation, output kind, with dropout, at one step and one row, on masked batches of
//!    unequal lengths with a carried-in state (`tests/all/directions.rs` for bidirectional
//!    layers, projections and layers without biases); `tests/all/large_vocab.rs` does the same for the
//!    output layer in chunks, the embedding and tied weights. `tests/all/padding.rs` holds a
//!    padded batch to its sequences run one by one, and `tests/all/training.rs` the optimizer
//!    to PyTorch's equations. In f64 the engine runs the plain code: the library `exp` and
//!    `tanh` (the [`Float`] defaults), every product through [`matmul`](matmul::matmul).
//! 2. **The f64 engine -> the f32 engine and its fast paths.** The f32 engine runs the same code
//!    with these replacements, each pinned to its plain twin:
//!    - [`exp_f32`] (the softmax, the gates' sigmoid) and [`tanh_f32`] (the tanh cell), against
//!      the library functions in f64 over dense sweeps of their range:
//!      `fast_f32_exp_is_accurate_to_a_few_ulps` and `fast_f32_tanh_is_accurate_to_a_few_ulps`
//!      in `tests/all/gradcheck.rs`;
//!    - [`sigmoid`] and [`tanh_via_sigmoid`] (the gated cells' `tanh` as `2 σ(2x) - 1`), against
//!      the logistic function and `tanh` in f64: the unit tests of `float.rs`;
//!    - the packed SIMD step products ([`packed`], for f32 step weights of more than
//!      [`PACK_MIN`](packed::PACK_MIN) elements), against `matmul` for every kernel the
//!      processor runs, awkward shapes and threads, the same bits on any number of threads, and
//!      whole GRU and LSTM steps against the f64 engine: `tests/all/packed.rs`;
//!    - the whole f32 engine (fast `exp`, `tanh` and sigmoid together) against the f64 engine
//!      over training steps of every cell: the unit tests of `tests.rs`;
//!    - the element-wise kernels compiled for AVX2 + FMA ([`simd`]: the gates, tanh, the
//!      softmax and loss, column sums, the norm and the optimizer update), against their
//!      baseline compilation, bit for bit over training steps of every cell and every
//!      optimizer's update: `tests/all/simd.rs`;
//!    - the softmax and loss, the column sums, the norm and the update in blocks on rayon's
//!      threads, one thread against three, bit for bit over a wide output layer:
//!      `tests/all/simd.rs`.
//! 3. **One block of rows -> the time loop split by rows** (`rows.rs`, in f32 and f64). Rows
//!    are independent through the recurrence, so each thread runs the time loop of its own
//!    block; `tests/all/row_split.rs` holds training steps on three threads to those on one for
//!    every cell, stacked layers and packed products, in both float types.
//!    The kernel variants (`variants.rs`: the products always packed or always through the
//!    GEMM, the row blocks set by hand) hold a training step of every cell to the default's:
//!    `tests/all/tune.rs`.
//! 4. **The CPU engine in f32 -> the GPU engine.** Every WGSL kernel against its CPU twin here
//!    (the file of the same name as its shader): `tests/all/gpu_kernels.rs`,
//!    `tests/all/gpu_gated.rs`; whole training steps of every model kind, optimizer and depth:
//!    `tests/all/gpu_training.rs`, `tests/all/gpu_gated.rs`, `tests/all/large_vocab.rs`.
//!
//! # Where the code is
//!
//! - `engine.rs`: [`CpuEngine`], the `Engine` impl and what a step keeps between its calls
//!   (the prepared batch, the activations of the last forward). Its `forward` and `backward`
//!   are the pass in order: the input side, each layer, the output layer.
//! - `layers.rs`: the passes of one layer (forward, BPTT, weight and input gradients, per
//!   direction), the output layer in chunks, the embedding and dropout between layers. Plain
//!   specification.
//! - `reverse.rs`: the reversal of each sequence within its length that the reverse direction
//!   of a bidirectional layer runs over.
//! - `rows.rs`: the time loops by blocks of batch rows on rayon's threads (fast path, step 3).
//! - `float.rs`: [`Float`] (f32 and f64) and the elementwise functions; the library ones in f64,
//!   the vectorisable f32 approximations (fast paths, step 2).
//! - The kernel families, one file per WGSL shader of the same name, the CPU twins the GPU is
//!   tested against: `rnn.rs`, `gru.rs`, `lstm.rs` (one time step of each cell), `matmul.rs`,
//!   `loss.rs`, `reduce.rs`, `optim.rs`, `dropout.rs`.
//! - `simd.rs`: the element-wise kernels compiled twice, for the baseline target and for
//!   AVX2 + FMA, picked at run time (fast path, step 2).
//! - `packed.rs`: the step products with W packed once per pass (fast path, step 2);
//!   `pool.rs`: the step arrays recycled between steps.
//!
//! The input-independent GEMMs run once over all `T * B` rows; only the recurrence is
//! sequential. Shapes: T time steps, B rows, H state size, I input size, V output size,
//! N = T * B, W the state width (P with an LSTM projection, else H), D the directions.
//! Each direction of layer k keeps its states as one [(T+1) * B, W] array whose first B rows
//! are the initial state (and an LSTM its memories c the same way, [(T+1) * B, H]); gated cells
//! also keep their gate activations and recurrent pre-activations, [N, G*H] each.
//!
//! # Bidirectional layers and projections
//!
//! The reverse direction of a bidirectional layer is the same time loop run over each sequence
//! reversed within its own length, as `pack_padded_sequence` does (`reverse.rs`): the input
//! projection's rows are permuted by the batch's reversal (an involution of the N rows, which
//! leaves the padding in place, after the real steps) before the loop, the loop's states are
//! read through it into the layer's output `[h_fwd ; h_rev]` [N, 2W], and in the backward the
//! gradient from above is read through it into the loop's order and `da_ih` permuted back
//! before the input-side gradients. The weights' gradients over all N rows do not depend on
//! the order, so nothing else changes. An LSTM with a projection keeps `m_t = o * tanh(c_t)`
//! [N, H] and runs `h_t = m_t W_hr^T` as a second step product (`lstm.rs`:
//! `lstm_projection_forward`, `lstm_projection_backward`); `dW_hr += dh^T M` runs once over
//! all N rows after the loop, from the whole gradient of each h_t that the BPTT leaves in ds.
//! `tests/all/directions.rs` checks every new gradient against finite differences and padded
//! batches against their sequences one by one; `tests/all/pytorch_variants.rs` holds the
//! outputs and gradients to PyTorch's.

pub mod dropout;
mod engine;
mod float;
pub mod gru;
mod layers;
pub mod loss;
pub mod lstm;
pub mod matmul;
pub mod optim;
pub mod packed;
pub mod pool;
pub mod reduce;
pub mod reverse;
pub mod rnn;
mod rows;
pub mod simd;
#[cfg(test)]
mod tests;
pub mod variants;

pub use self::engine::CpuEngine;
pub use self::float::{Float, exp_f32, sigmoid, tanh_f32, tanh_via_sigmoid};
