//! The whole f32 engine, with its fast paths together (`exp_f32` in the softmax and the gates'
//! sigmoid, `tanh_f32` in the tanh cell, `tanh_via_sigmoid` in the gated cells), against the
//! f64 engine that runs the library functions: the same training steps of every cell agree to
//! f32 rounding. (Products large enough to be packed are held to the f64 engine by
//! `tests/all/packed.rs`; here they all run on `matmul`.)

use crate::engine::{Batch, Engine, Inputs, Targets};
use crate::model::{Activation, Cell, ModelConfig, ParamLayout};
use crate::train::optim::{OptimizerConfig, OptimizerKind};

use super::{CpuEngine, Float};

/// A fixed pseudo-random sequence (a 64-bit LCG), so the test needs no generator crate.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) as u32
    }

    /// Uniform in [-a, a).
    fn uniform(&mut self, a: f32) -> f32 {
        (self.next() as f32 / (1u64 << 31) as f32 * 2.0 - 1.0) * a
    }
}

/// A batch of T steps and B rows of one-hot tokens and classes, with some steps masked out.
fn batch(rng: &mut Lcg, cfg: &ModelConfig, steps: usize, rows: usize) -> Batch {
    let n = steps * rows;
    let mut tokens = |v: usize| (0..n).map(|_| rng.next() % v as u32).collect::<Vec<_>>();
    let inputs = Inputs::Tokens(tokens(cfg.input_size));
    let targets = Targets::Classes(tokens(cfg.output_size));
    let mask = (0..n).map(|i| if i % 7 == 3 { 0.0 } else { 1.0 }).collect();
    Batch {
        steps,
        rows,
        inputs,
        targets,
        mask: Some(mask),
    }
}

/// Loss, gradients, then parameters and state after the update, of each of `batches`.
fn trace<F: Float>(cfg: &ModelConfig, params: &[f32], batches: &[Batch]) -> Vec<[Vec<f64>; 4]> {
    let mut e = CpuEngine::<F>::new(cfg, params).expect("a valid model");
    let opt = OptimizerConfig::new(OptimizerKind::Sgd);
    let f64s = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<_>>();
    e.reset_state(batches[0].rows).expect("rows");
    let mut out = Vec::new();
    for b in batches {
        e.upload_batch(b).expect("a valid batch");
        e.zero_grads().expect("zero");
        e.forward().expect("forward");
        e.backward().expect("backward");
        let loss = vec![e.loss().expect("loss").sum];
        let grads = f64s(e.grads().expect("grads"));
        e.optimizer_step(&opt, 0.01).expect("step");
        e.carry_state().expect("carry");
        let params = f64s(e.params().expect("params"));
        out.push([loss, grads, params, f64s(e.state().expect("state"))]);
    }
    out
}

/// The largest `|a - b| / (atol + rtol max(|a|, |b|))`; at most 1 when they agree.
fn excess(a: &[f64], b: &[f64], rtol: f64, atol: f64) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x - y).abs() / (atol + rtol * x.abs().max(y.abs())))
        .fold(0.0, f64::max)
}

#[test]
fn the_f32_engine_matches_the_f64_engine_for_every_cell() {
    let cells = [
        (Cell::Rnn, Activation::Tanh),
        (Cell::Rnn, Activation::Relu),
        (Cell::Gru, Activation::Tanh),
        (Cell::Lstm, Activation::Tanh),
    ];
    for (cell, activation) in cells {
        let cfg = ModelConfig {
            cell,
            activation,
            ..ModelConfig::language_model(7, 24, 2)
        };
        let mut rng = Lcg(cfg.cell.gates() as u64 * 31 + activation as u64);
        let len = ParamLayout::new(&cfg).expect("a valid layout").len();
        let params: Vec<f32> = (0..len).map(|_| rng.uniform(0.4)).collect();
        let batches: Vec<Batch> = (0..2).map(|_| batch(&mut rng, &cfg, 6, 5)).collect();
        let single = trace::<f32>(&cfg, &params, &batches);
        let double = trace::<f64>(&cfg, &params, &batches);
        let what = ["loss", "gradients", "parameters", "state"];
        // (rtol, atol) of each: f32 rounding through two steps of the recurrence.
        let tol = [(1e-6, 1e-7), (1e-4, 1e-6), (1e-6, 1e-7), (1e-5, 1e-6)];
        for (step, (s, d)) in single.iter().zip(&double).enumerate() {
            for i in 0..4 {
                let x = excess(&s[i], &d[i], tol[i].0, tol[i].1);
                assert!(
                    x <= 1.0,
                    "{cell:?} {activation:?} step {step} {}: {x}",
                    what[i]
                );
            }
        }
    }
}
