//! The CPU counterpart of a per-kernel GPU profile: the CPU twin kernels (`engine::cpu::*`)
//! called on the step's shapes with random data, in the order the CPU engine runs them for a
//! one-layer tanh RNN language model, each phase timed with the wall clock. It models the step
//! from its parts; what the engine does between kernels (copies, allocations) is not in it, nor
//! is the one-hot input gather (about 1% of the step), so the phases add up to a little less than
//! the engine's step.

use std::time::Instant;

use ndarray::{Array2, s};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{Profile, StepShape, bench_optimizer};
use crate::engine::cpu::{loss, matmul::matmul, optim, reduce, rnn};
use crate::error::{Error, Result};
use crate::model::{Activation, Cell, ParamLayout};
use crate::train::optim::clip_scale;

const NAMES: [&str; 6] = [
    "forward recurrence (T steps)",
    "output GEMM + softmax cross-entropy",
    "output backward GEMMs (dW_o, db_o, dS)",
    "backward recurrence (T steps)",
    "weight-gradient GEMMs (dW_hh, biases, dW_ih)",
    "optimizer (norm + clip + SGD)",
];

fn random(rng: &mut ChaCha8Rng, rows: usize, cols: usize, a: f32) -> Result<Array2<f32>> {
    let v = (0..rows * cols).map(|_| rng.random_range(-a..a)).collect();
    Array2::from_shape_vec((rows, cols), v).map_err(|e| Error::Shape(e.to_string()))
}

/// Median time of each phase over `repeats` runs, for a one-layer tanh RNN of `shape`.
pub fn cpu_kernel_phases(shape: &StepShape, repeats: usize, seed: u64) -> Result<Profile> {
    if shape.cell != Cell::Rnn || shape.layers != 1 || shape.embed.is_some() {
        return Err(Error::Config(
            "the kernel-level CPU profile models a one-layer tanh RNN without embedding only"
                .into(),
        ));
    }
    let cfg = shape.config()?;
    let np = ParamLayout::new(&cfg)?.len();
    let (t_len, b, h, v) = (shape.seq_len, shape.batch, shape.hidden, shape.vocab);
    let n = t_len * b;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let scale = 1.0 / (h as f32).sqrt();
    let w_hh = random(&mut rng, h, h, scale)?;
    let w_o = random(&mut rng, v, h, scale)?;
    let tokens: Vec<u32> = (0..n).map(|_| rng.random_range(0..v as u32)).collect();
    let targets: Vec<u32> = (0..n).map(|_| rng.random_range(0..v as u32)).collect();
    let mut params = vec![0.0f32; np];
    let (mut grads, mut m, mut mv) = (vec![1e-3f32; np], vec![0.0f32; np], vec![0.0f32; np]);
    let opt = bench_optimizer();

    let mut states = Array2::<f32>::zeros(((t_len + 1) * b, h));
    // The input projection (gathered columns of W_ih plus the biases) as it enters the steps.
    let u = random(&mut rng, n, h, 1.0)?;
    let mut logits = Array2::<f32>::zeros((n, v));
    let mut dlogits = Array2::<f32>::zeros((n, v));
    let mut ds = Array2::<f32>::zeros((n, h));
    let mut dw_o = Array2::<f32>::zeros((v, h));
    let mut dw_hh = Array2::<f32>::zeros((h, h));
    let mut dw_ih = Array2::<f32>::zeros((h, v));
    let mut db = vec![0.0f32; h.max(v)];

    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(repeats); NAMES.len()];
    let mut clock = |i: usize, t0: Instant| samples[i].push(t0.elapsed().as_secs_f64() * 1e3);
    for _ in 0..repeats.max(1) {
        let t0 = Instant::now();
        for t in 0..t_len {
            let (prev, mut cur) = states.view_mut().split_at(ndarray::Axis(0), (t + 1) * b);
            rnn::rnn_step_forward(
                Some(u.slice(s![t * b..(t + 1) * b, ..])),
                prev.slice(s![t * b.., ..]),
                w_hh.view(),
                Activation::Tanh,
                cur.slice_mut(s![0..b, ..]),
            );
        }
        clock(0, t0);

        let t0 = Instant::now();
        let top = states.slice(s![b.., ..]);
        matmul(top, w_o.t(), &mut logits.view_mut(), false);
        loss::softmax_cross_entropy(
            logits.view_mut(),
            &targets,
            None,
            n as f64,
            dlogits.view_mut(),
        );
        clock(1, t0);

        let t0 = Instant::now();
        matmul(dlogits.t(), top, &mut dw_o.view_mut(), true);
        reduce::column_sums_accumulate(dlogits.view(), &mut db[..v]);
        matmul(dlogits.view(), w_o.view(), &mut ds.view_mut(), false);
        clock(2, t0);

        let t0 = Instant::now();
        for t in (0..t_len).rev() {
            let (cur, next) = ds.view_mut().split_at(ndarray::Axis(0), (t + 1) * b);
            let dz_t = cur.slice_move(s![t * b.., ..]);
            let dz_next = (t + 1 < t_len).then(|| next.slice(s![0..b, ..]));
            let s_t = states.slice(s![(t + 1) * b..(t + 2) * b, ..]);
            rnn::rnn_step_backward(None, dz_next, w_hh.view(), s_t, Activation::Tanh, dz_t);
        }
        clock(3, t0);

        let t0 = Instant::now();
        matmul(
            ds.t(),
            states.slice(s![0..n, ..]),
            &mut dw_hh.view_mut(),
            true,
        );
        reduce::column_sums_accumulate(ds.view(), &mut db[..h]);
        reduce::column_sums_accumulate(ds.view(), &mut db[..h]);
        rnn::input_grad_onehot(&tokens, ds.view(), dw_ih.view_mut());
        clock(4, t0);

        let t0 = Instant::now();
        let norm = reduce::sum_of_squares(&grads).sqrt();
        optim::optimizer_update(
            &opt,
            super::BENCH_LR as f64,
            1,
            clip_scale(norm, opt.clip),
            &mut params,
            &grads,
            &mut m,
            &mut mv,
        );
        clock(5, t0);
        // Keep the gradients from drifting towards denormals or infinities between repeats.
        grads.iter_mut().for_each(|g| *g = 1e-3);
        ds.fill(0.0);
    }
    Profile::from_samples(
        &NAMES,
        &samples,
        "CPU twin kernels on the step's shapes with random data, in the engine's order, wall \
         clock, median over the repeats (a model of the step from its kernels: the engine's \
         copies and allocations between kernels are not counted)"
            .into(),
    )
}
