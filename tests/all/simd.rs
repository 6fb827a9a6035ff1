//! The element-wise kernels of the CPU engine are compiled twice, for the baseline target and
//! for AVX2 + FMA, and picked at run time (`engine::cpu::simd`). Both compilations compute the
//! same operations in the same order, so whole training steps give the same bits with either;
//! and the loops over rows, columns and flat buffers that run on several threads give the same
//! bits on any number of them.

use unroll::engine::cpu::CpuEngine;
use unroll::engine::cpu::simd::{self, Level};
use unroll::model::{Cell, InputKind, ModelConfig, OutputKind, ParamLayout};
use unroll::train::optim::{OptimizerConfig, OptimizerKind};

use crate::common;
use crate::row_split::{Trace, trace_clipped};

/// A model of `cell` with awkward sizes (H and V off every vector width) and an embedding.
fn model(
    rng: &mut rand_chacha::ChaCha8Rng,
    cell: Cell,
    (h, v): (usize, usize),
) -> (ModelConfig, Vec<f32>) {
    let mut cfg = common::cell_config(cell, InputKind::OneHot, OutputKind::Softmax, (v, h, v, 2));
    cfg.embed = Some(11);
    let n = ParamLayout::new(&cfg).unwrap().len();
    let params = common::uniform(rng, n, 1.0 / (h as f32).sqrt());
    (cfg, params)
}

fn batches(
    rng: &mut rand_chacha::ChaCha8Rng,
    cfg: &ModelConfig,
    (steps, rows): (usize, usize),
) -> Vec<unroll::engine::Batch> {
    let lens: Vec<usize> = (0..rows).map(|r| 1 + (r * 5) % steps).collect();
    (0..2)
        .map(|_| common::random_batch(rng, cfg, steps, rows, Some(&lens)))
        .collect()
}

/// Two training steps (SGD, the gradients clipped to a norm of 0.01, so the norm reaches the
/// parameters) of `cfg` on `threads` threads, with the kernels of `level` when it is given
/// (else those the process runs).
fn run(
    level: Option<Level>,
    threads: usize,
    cfg: &ModelConfig,
    params: &[f32],
    b: &[unroll::engine::Batch],
) -> Trace {
    if level.is_some() {
        simd::force(level).unwrap();
    }
    let make = || CpuEngine::<f32>::new(cfg, params).unwrap();
    let t = trace_clipped(threads, &make, b, 0.01);
    if level.is_some() {
        simd::force(None).unwrap();
    }
    t
}

#[test]
fn both_compilations_of_the_element_wise_kernels_give_the_same_bits() {
    if simd::detected() != Level::Avx2 {
        eprintln!("this processor has no AVX2 + FMA: only the baseline kernels exist here");
        return;
    }
    let mut rng = common::rng("simd levels");
    for cell in [Cell::Rnn, Cell::Gru, Cell::Lstm] {
        let (cfg, params) = model(&mut rng, cell, (37, 29));
        let b = batches(&mut rng, &cfg, (4, 5));
        let base = run(Some(Level::Baseline), 2, &cfg, &params, &b);
        let avx2 = run(Some(Level::Avx2), 2, &cfg, &params, &b);
        assert_eq!(base, avx2, "{cell:?}: the baseline and AVX2 kernels differ");
    }
    // Every optimizer's update, with weight decay and clipping, over an odd length.
    let n = 70_001;
    let g = common::uniform(&mut rng, n, 1.0);
    for kind in [
        OptimizerKind::Sgd,
        OptimizerKind::Momentum,
        OptimizerKind::Adam,
        OptimizerKind::Rmsprop,
        OptimizerKind::Adagrad,
    ] {
        let cfg = OptimizerConfig {
            weight_decay: 0.01,
            ..OptimizerConfig::new(kind)
        };
        let p0 = common::uniform(&mut rng, n, 1.0);
        let m0 = common::uniform(&mut rng, n, 0.1);
        let v0: Vec<f32> = common::uniform(&mut rng, n, 0.1)
            .iter()
            .map(|x| x.abs())
            .collect();
        let update = |level| {
            simd::force(Some(level)).unwrap();
            let (mut p, mut m, mut v) = (p0.clone(), m0.clone(), v0.clone());
            unroll::engine::cpu::optim::optimizer_update(
                &cfg, 0.01, 3, 0.7, &mut p, &g, &mut m, &mut v,
            );
            simd::force(None).unwrap();
            (p, m, v)
        };
        assert_eq!(update(Level::Baseline), update(Level::Avx2), "{kind:?}");
    }
}

#[test]
fn wide_outputs_give_the_same_bits_on_any_number_of_threads() {
    // V = 3001 over 65 rows: the loss, the bias's column sums and the gradient norm run in
    // blocks on the threads.
    let mut rng = common::rng("wide outputs on threads");
    for cell in [Cell::Rnn, Cell::Lstm] {
        let (cfg, params) = model(&mut rng, cell, (19, 3001));
        let b = batches(&mut rng, &cfg, (5, 13));
        let one = run(None, 1, &cfg, &params, &b);
        let three = run(None, 3, &cfg, &params, &b);
        assert_eq!(one, three, "{cell:?}: one thread and three differ");
    }
}
