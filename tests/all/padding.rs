//! Masking is exact: a batch of padded sequences of unequal lengths gives the same loss and
//! gradients as the sequences run one by one.

use unroll::engine::cpu::CpuEngine;
use unroll::engine::{Batch, Engine, Inputs, Targets};
use unroll::model::{Activation, InputKind, ModelConfig, OutputKind, ParamLayout};

use crate::common;

/// Row `b` of a time-major batch, cut to its first `len` steps, as a batch of one.
pub fn row_of(batch: &Batch, cfg: &ModelConfig, b: usize, len: usize) -> Batch {
    let rows = batch.rows;
    let pick = |v: &[f32], width: usize| -> Vec<f32> {
        (0..len)
            .flat_map(|t| v[(t * rows + b) * width..(t * rows + b + 1) * width].to_vec())
            .collect()
    };
    let inputs = match &batch.inputs {
        Inputs::Tokens(x) => Inputs::Tokens((0..len).map(|t| x[t * rows + b]).collect()),
        Inputs::Dense(x) => Inputs::Dense(pick(x, cfg.input_size)),
    };
    let targets = match &batch.targets {
        Targets::Classes(y) => Targets::Classes((0..len).map(|t| y[t * rows + b]).collect()),
        Targets::Dense(y) => Targets::Dense(pick(y, cfg.output_size)),
    };
    Batch {
        steps: len,
        rows: 1,
        inputs,
        targets,
        mask: None,
    }
}

pub fn check(cfg: &ModelConfig, name: &str) {
    let mut rng = common::rng(name);
    let layout = ParamLayout::new(cfg).unwrap();
    let params = common::uniform(&mut rng, layout.len(), 0.5);
    let lengths = [6usize, 2, 5, 1];
    let batch = common::random_batch(&mut rng, cfg, 6, lengths.len(), Some(&lengths));
    let mut engine = CpuEngine::<f64>::new(cfg, &params).unwrap();
    engine.reset_state(lengths.len()).unwrap();
    engine.upload_batch(&batch).unwrap();
    engine.zero_grads().unwrap();
    engine.forward().unwrap();
    engine.backward().unwrap();
    let whole = engine.loss().unwrap();
    assert_eq!(whole.count, 14.0);
    // The objective is the mean over counted steps: scale back to sums to compare.
    let batched: Vec<f64> = engine
        .grads_native()
        .iter()
        .map(|g| g * whole.count)
        .collect();

    let mut sum = 0.0;
    let mut separate = vec![0.0; layout.len()];
    for (b, &len) in lengths.iter().enumerate() {
        let single = row_of(&batch, cfg, b, len);
        let mut e = CpuEngine::<f64>::new(cfg, &params).unwrap();
        e.upload_batch(&single).unwrap();
        e.zero_grads().unwrap();
        e.forward().unwrap();
        e.backward().unwrap();
        let l = e.loss().unwrap();
        sum += l.sum;
        for (s, g) in separate.iter_mut().zip(e.grads_native()) {
            *s += g * l.count;
        }
    }
    common::assert_close(&format!("{name} loss"), &[whole.sum], &[sum], 1e-12, 1e-12);
    common::assert_close(
        &format!("{name} gradients"),
        &batched,
        &separate,
        1e-10,
        1e-12,
    );
}

#[test]
fn padded_batches_match_sequences_run_one_by_one() {
    check(
        &common::config(
            Activation::Tanh,
            InputKind::OneHot,
            OutputKind::Softmax,
            (6, 5, 6, 2),
        ),
        "padding softmax",
    );
    check(
        &common::config(
            Activation::Tanh,
            InputKind::Dense,
            OutputKind::Identity,
            (3, 4, 2, 1),
        ),
        "padding identity",
    );
    check(
        &common::config(
            Activation::Relu,
            InputKind::Dense,
            OutputKind::Sigmoid,
            (3, 4, 3, 2),
        ),
        "padding sigmoid",
    );
}
