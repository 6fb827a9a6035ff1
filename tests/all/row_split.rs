//! The CPU engine runs each layer's time loop on its threads by blocks of batch rows (rows are
//! independent through the recurrence). Whole training steps on a pool of three threads (three
//! blocks of an odd B) must give what one thread gives, for every cell, stacked layers, with
//! the state carried into a second step, in f32 and f64, on small products (the GEMM) and on
//! packed ones.

use unroll::engine::Engine;
use unroll::engine::cpu::CpuEngine;
use unroll::engine::cpu::packed::PACK_MIN;
use unroll::model::{Cell, InputKind, OutputKind, ParamLayout};
use unroll::train::optim::{OptimizerConfig, OptimizerKind};

use crate::common::{self, assert_close};

/// Loss, gradients, parameters and state after each of two training steps.
pub type Trace = Vec<(f64, Vec<f64>, Vec<f64>, Vec<f64>)>;

pub fn trace<E: Engine + Send>(
    threads: usize,
    make: &(dyn Fn() -> E + Sync),
    batches: &[unroll::engine::Batch],
) -> Trace {
    trace_clipped(threads, make, batches, 5.0)
}

/// [`trace`] with the gradients clipped to global norm `clip`.
pub fn trace_clipped<E: Engine + Send>(
    threads: usize,
    make: &(dyn Fn() -> E + Sync),
    batches: &[unroll::engine::Batch],
    clip: f32,
) -> Trace {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        let mut e = make();
        let rows = batches[0].rows;
        e.reset_state(rows).unwrap();
        let opt = OptimizerConfig::new(OptimizerKind::Sgd).with_clip(clip);
        batches
            .iter()
            .map(|batch| {
                e.upload_batch(batch).unwrap();
                e.zero_grads().unwrap();
                e.forward().unwrap();
                e.backward().unwrap();
                let loss = e.loss().unwrap().sum;
                let grads = common::to_f64(&e.grads().unwrap());
                e.optimizer_step(&opt, 0.1).unwrap();
                e.carry_state().unwrap();
                let params = common::to_f64(&e.params().unwrap());
                (loss, grads, params, common::to_f64(&e.state().unwrap()))
            })
            .collect()
    })
}

pub fn same(what: &str, one: &Trace, three: &Trace) {
    for (step, (a, b)) in one.iter().zip(three).enumerate() {
        let w = format!("{what} step {step}");
        assert_close(&format!("{w} loss"), &[b.0], &[a.0], 1e-6, 1e-7);
        assert_close(&format!("{w} gradients"), &b.1, &a.1, 1e-5, 1e-7);
        assert_close(&format!("{w} parameters"), &b.2, &a.2, 1e-6, 1e-7);
        assert_close(&format!("{w} state"), &b.3, &a.3, 1e-5, 1e-7);
    }
}

#[test]
fn time_loops_split_by_rows_match_one_thread() {
    let mut rng = common::rng("row split");
    // (cell, H, layers): the GEMM's small products, two layers, and a gated layer whose
    // products are packed.
    let shapes = [
        (Cell::Rnn, 20, 2),
        (Cell::Gru, 20, 2),
        (Cell::Lstm, 20, 2),
        (Cell::Lstm, 300, 1),
    ];
    let (steps, rows) = (5, 13);
    for (cell, h, layers) in shapes {
        let cfg = common::cell_config(
            cell,
            InputKind::OneHot,
            OutputKind::Softmax,
            (6, h, 6, layers),
        );
        if h == 300 {
            assert!(h * cell.gates() * h > PACK_MIN);
        }
        let len = ParamLayout::new(&cfg).unwrap().len();
        let params = common::uniform(&mut rng, len, 1.0 / (h as f32).sqrt());
        let lens: Vec<usize> = (0..rows).map(|r| 1 + (r * 7) % steps).collect();
        let batches: Vec<_> = (0..2)
            .map(|_| common::random_batch(&mut rng, &cfg, steps, rows, Some(&lens)))
            .collect();
        let what = format!("{cell:?} H={h} L={layers}");
        let f32_engine = || CpuEngine::<f32>::new(&cfg, &params).unwrap();
        same(
            &format!("{what} f32"),
            &trace(1, &f32_engine, &batches),
            &trace(3, &f32_engine, &batches),
        );
        let f64_engine = || CpuEngine::<f64>::new(&cfg, &params).unwrap();
        same(
            &format!("{what} f64"),
            &trace(1, &f64_engine, &batches),
            &trace(3, &f64_engine, &batches),
        );
    }
}
