//! Engines that share a batch row-wise (data-parallel training): each runs a contiguous share
//! of the B rows of every time step with its `RowWindow`, and together they must draw the
//! dropout masks (between layers and at the edges) that one engine draws for the whole batch.
//! The shares' outputs are the whole batch's outputs of their rows and their gradients,
//! weighted by their counts, sum to the whole batch's gradient; the dropout kernels and the
//! GPU engine key their masks as the CPU twins do; a window changes nothing without dropout,
//! and one that does not hold the batch is refused.

use std::ops::Range;

use ndarray::Array2;
use rand_chacha::ChaCha8Rng;
use unroll::engine::cpu::CpuEngine;
use unroll::engine::cpu::dropout::{self as cpu_dropout, MaskKey, MaskSpan};
use unroll::engine::gpu::pipelines::Pipelines;
use unroll::engine::gpu::plan::run_now;
use unroll::engine::gpu::{GpuEngine, buffers, dropout as gpu_dropout};
use unroll::engine::{Batch, Dropout, EdgeDropout, Engine, Inputs, RowWindow, Targets};
use unroll::model::{Cell, InputKind, ModelConfig, OutputKind, ParamLayout};
use unroll::train::optim::{OptimizerConfig, OptimizerKind};

use crate::common::{self, assert_close};

const DROPOUT: f32 = 0.3;
const EDGES: EdgeDropout = EdgeDropout {
    embed: 0.4,
    out: 0.35,
};

/// A language model over 7 tokens with an embedding of E = 5, `layers` layers of `cell` with
/// H = 4, one or two directions.
fn language_model(cell: Cell, layers: usize, bidirectional: bool) -> ModelConfig {
    ModelConfig {
        cell,
        embed: Some(5),
        bidirectional,
        ..ModelConfig::language_model(7, 4, layers)
    }
}

/// Rows `rows` of every time step of `batch`: a batch of `rows.len()` rows.
fn share(batch: &Batch, cfg: &ModelConfig, rows: Range<usize>) -> Batch {
    let pick = |v: &[f32], width: usize| -> Vec<f32> {
        (0..batch.steps)
            .flat_map(|t| {
                let r = t * batch.rows;
                v[(r + rows.start) * width..(r + rows.end) * width].to_vec()
            })
            .collect()
    };
    let pick_ids = |v: &[u32]| -> Vec<u32> {
        let as_f: Vec<f32> = v.iter().map(|&x| x as f32).collect();
        pick(&as_f, 1).into_iter().map(|x| x as u32).collect()
    };
    Batch {
        steps: batch.steps,
        rows: rows.len(),
        inputs: match &batch.inputs {
            Inputs::Tokens(t) => Inputs::Tokens(pick_ids(t)),
            Inputs::Dense(x) => Inputs::Dense(pick(x, cfg.input_size)),
        },
        targets: match &batch.targets {
            Targets::Classes(c) => Targets::Classes(pick_ids(c)),
            Targets::Dense(y) => Targets::Dense(pick(y, cfg.output_size)),
        },
        mask: batch.mask.as_ref().map(|m| pick(m, 1)),
    }
}

/// What one forward and backward of an f64 CPU engine gives: the outputs, the loss sum and
/// count, and the gradient (the mean over the batch's count).
struct Run {
    outputs: Vec<f32>,
    sum: f64,
    count: f64,
    grads: Vec<f64>,
}

/// The edge dropout of `cfg`: [`EDGES`], on the embedded tokens only where it has them.
fn edges_of(cfg: &ModelConfig) -> EdgeDropout {
    match cfg.embed {
        Some(_) => EDGES,
        None => EdgeDropout {
            embed: 0.0,
            ..EDGES
        },
    }
}

/// One forward and backward of `batch` from a zero state with dropout (seed `seed`) and the
/// edge dropout on, in `window`.
fn run_f64(
    cfg: &ModelConfig,
    params: &[f32],
    batch: &Batch,
    window: Option<RowWindow>,
    seed: u64,
) -> Run {
    let mut e = CpuEngine::<f64>::new(cfg, params).unwrap();
    e.set_edge_dropout(edges_of(cfg)).unwrap();
    e.set_dropout(Some(Dropout { p: DROPOUT, seed })).unwrap();
    e.set_row_window(window).unwrap();
    e.reset_state(batch.rows).unwrap();
    e.upload_batch(batch).unwrap();
    e.zero_grads().unwrap();
    e.forward().unwrap();
    e.backward().unwrap();
    let loss = e.loss().unwrap();
    Run {
        outputs: e.outputs().unwrap(),
        sum: loss.sum,
        count: loss.count,
        grads: e.grads_native().to_vec(),
    }
}

/// The outputs of rows `rows` of every time step, from outputs of `b` rows of V values.
fn rows_of(outputs: &[f32], (b, v): (usize, usize), rows: &Range<usize>) -> Vec<f64> {
    outputs
        .chunks(b * v)
        .flat_map(|step| &step[rows.start * v..rows.end * v])
        .map(|&x| x as f64)
        .collect()
}

/// The whole batch against its shares `splits`, each on its own engine with its window:
/// outputs of every row, loss sums and the count-weighted sum of the gradients agree.
fn shares_match_the_whole(cfg: &ModelConfig, batch: &Batch, splits: &[Range<usize>], name: &str) {
    let mut rng = common::rng(name);
    let params = common::uniform(&mut rng, ParamLayout::new(cfg).unwrap().len(), 0.6);
    let seed = 11;
    let whole = run_f64(cfg, &params, batch, None, seed);
    let (b, v) = (batch.rows, cfg.output_size);
    let mut grads = vec![0.0; whole.grads.len()];
    let mut sum = 0.0;
    for rows in splits {
        let part = share(batch, cfg, rows.clone());
        let window = RowWindow {
            first: rows.start,
            rows: b,
        };
        let run = run_f64(cfg, &params, &part, Some(window), seed);
        let what = format!("{name} rows {rows:?}");
        assert_close(
            &format!("{what} outputs"),
            &rows_of(&run.outputs, (rows.len(), v), &(0..rows.len())),
            &rows_of(&whole.outputs, (b, v), rows),
            1e-6,
            1e-9,
        );
        for (g, s) in grads.iter_mut().zip(&run.grads) {
            *g += s * run.count;
        }
        sum += run.sum;
    }
    let total = batch.count();
    assert_close(&format!("{name} loss"), &[sum], &[whole.sum], 1e-12, 1e-12);
    assert_eq!(whole.count, total, "{name}: the whole batch's count");
    let grads: Vec<f64> = grads.iter().map(|g| g / total).collect();
    assert_close(
        &format!("{name} gradient"),
        &grads,
        &whole.grads,
        1e-9,
        1e-12,
    );
}

/// A batch of T = 4 and `rows` rows for `cfg`, padded (rows of unequal lengths) or not.
fn batch_of(rng: &mut ChaCha8Rng, cfg: &ModelConfig, rows: usize, padded: bool) -> Batch {
    let steps = 4;
    let lengths: Vec<usize> = (0..rows).map(|b| 1 + (b * 3 + 2) % steps).collect();
    common::random_batch(rng, cfg, steps, rows, padded.then_some(&lengths[..]))
}

#[test]
fn shares_of_a_batch_draw_the_masks_of_the_whole_batch_on_the_cpu() {
    let mut rng = common::rng("row window shares");
    let models = [
        (language_model(Cell::Rnn, 3, false), "rnn 3 layers"),
        (language_model(Cell::Gru, 2, false), "gru 2 layers"),
        (language_model(Cell::Lstm, 2, false), "lstm 2 layers"),
        (language_model(Cell::Gru, 2, true), "bidirectional gru"),
    ];
    let thirds = [0..2, 2..4, 4..6];
    let awkward = [0..2, 2..5];
    for (cfg, name) in &models {
        let six = batch_of(&mut rng, cfg, 6, false);
        shares_match_the_whole(cfg, &six, &thirds, &format!("{name} B=6"));
        let five = batch_of(&mut rng, cfg, 5, true);
        shares_match_the_whole(cfg, &five, &awkward, &format!("{name} padded B=5"));
    }
    // Dense inputs: no embedding, so dropout between layers and on the top layer's output.
    let dense = ModelConfig {
        cell: Cell::Lstm,
        ..common::config(
            unroll::model::Activation::Tanh,
            InputKind::Dense,
            OutputKind::Identity,
            (3, 5, 2, 3),
        )
    };
    let batch = batch_of(&mut rng, &dense, 6, true);
    shares_match_the_whole(&dense, &batch, &[0..3, 3..6], "dense lstm 3 layers");
}

/// Without its window a share draws other masks: the comparison above can fail.
#[test]
fn a_share_without_its_window_draws_other_masks() {
    let mut rng = common::rng("share without window");
    let cfg = language_model(Cell::Gru, 2, false);
    let params = common::uniform(&mut rng, ParamLayout::new(&cfg).unwrap().len(), 0.6);
    let batch = batch_of(&mut rng, &cfg, 6, false);
    let whole = run_f64(&cfg, &params, &batch, None, 5);
    let rows = 2..4;
    let alone = run_f64(&cfg, &params, &share(&batch, &cfg, rows.clone()), None, 5);
    let (a, w) = (
        rows_of(&alone.outputs, (2, cfg.output_size), &(0..2)),
        rows_of(&whole.outputs, (6, cfg.output_size), &rows),
    );
    let differ = a
        .iter()
        .zip(&w)
        .filter(|(x, y)| (*x - *y).abs() > 1e-4)
        .count();
    assert!(
        differ > a.len() / 2,
        "{differ} of {} outputs differ",
        a.len()
    );
}

/// Loss, outputs and gradient of one step of `engine` on `batch`, as bits.
fn step_bits(engine: &mut dyn Engine, batch: &Batch) -> Vec<u64> {
    engine.reset_state(batch.rows).unwrap();
    engine.upload_batch(batch).unwrap();
    engine.zero_grads().unwrap();
    engine.forward().unwrap();
    engine.backward().unwrap();
    let loss = engine.loss().unwrap();
    let floats = engine.outputs().unwrap().into_iter();
    [loss.sum.to_bits(), loss.count.to_bits()]
        .into_iter()
        .chain(
            floats
                .chain(engine.grads().unwrap())
                .map(|x| x.to_bits() as u64),
        )
        .collect()
}

/// The f32 CPU engine of `cfg` and, where there is a GPU, the GPU engine.
fn cpu_and_gpu(cfg: &ModelConfig, params: &[f32], name: &str) -> Vec<Box<dyn Engine>> {
    let mut engines: Vec<Box<dyn Engine>> =
        vec![Box::new(CpuEngine::<f32>::new(cfg, params).unwrap())];
    if let Some(ctx) = common::gpu(name) {
        engines.push(Box::new(GpuEngine::new(ctx, cfg, params).unwrap()));
    }
    engines
}

/// With dropout off a window changes nothing, bit for bit; with it on, the window of the
/// whole batch (rows 0..B of B) is the engine alone. On both engines.
#[test]
fn a_window_without_dropout_or_of_the_whole_batch_changes_nothing() {
    let mut rng = common::rng("window changes nothing");
    let cfg = language_model(Cell::Lstm, 2, false);
    let params = common::uniform(&mut rng, ParamLayout::new(&cfg).unwrap().len(), 0.6);
    let batch = batch_of(&mut rng, &cfg, 3, true);
    let mut engines = cpu_and_gpu(&cfg, &params, "window changes nothing");
    let elsewhere = RowWindow { first: 4, rows: 9 };
    let whole = RowWindow { first: 0, rows: 3 };
    for e in &mut engines {
        let who = e.describe();
        e.set_edge_dropout(EDGES).unwrap();
        e.set_dropout(None).unwrap();
        let alone = step_bits(e.as_mut(), &batch);
        e.set_row_window(Some(elsewhere)).unwrap();
        assert!(step_bits(e.as_mut(), &batch) == alone, "{who}: dropout off");
        e.set_dropout(Some(Dropout { p: 0.3, seed: 8 })).unwrap();
        e.set_row_window(None).unwrap();
        let on = step_bits(e.as_mut(), &batch);
        assert!(on != alone, "{who}: dropout on changes the step");
        e.set_row_window(Some(whole)).unwrap();
        assert!(
            step_bits(e.as_mut(), &batch) == on,
            "{who}: the whole batch"
        );
    }
}

/// A window must start within its batch and hold the batch's rows: `set_row_window`,
/// `upload_batch` and `forward` refuse one that does not with `Error::Shape`.
#[test]
fn a_window_that_does_not_hold_the_batch_is_refused() {
    let mut rng = common::rng("window refused");
    let cfg = language_model(Cell::Rnn, 2, false);
    let params = common::uniform(&mut rng, ParamLayout::new(&cfg).unwrap().len(), 0.6);
    let batch = batch_of(&mut rng, &cfg, 3, false);
    let mut engines = cpu_and_gpu(&cfg, &params, "window refused");
    let shape_error = |what: &str, r: unroll::Result<()>| match r {
        Err(unroll::Error::Shape(msg)) => assert!(msg.contains("row window"), "{what}: {msg}"),
        other => panic!("{what}: expected Error::Shape, got {other:?}"),
    };
    for e in &mut engines {
        let who = e.describe();
        for bad in [
            RowWindow { first: 6, rows: 6 },
            RowWindow { first: 0, rows: 0 },
        ] {
            shape_error(&format!("{who} {bad:?}"), e.set_row_window(Some(bad)));
        }
        e.reset_state(3).unwrap();
        e.set_row_window(Some(RowWindow { first: 4, rows: 6 }))
            .unwrap();
        shape_error(&format!("{who} upload"), e.upload_batch(&batch));
        e.set_row_window(Some(RowWindow { first: 3, rows: 6 }))
            .unwrap();
        e.upload_batch(&batch).unwrap();
        e.set_row_window(Some(RowWindow { first: 1, rows: 3 }))
            .unwrap();
        shape_error(&format!("{who} forward"), e.forward());
        e.set_row_window(Some(RowWindow { first: 0, rows: 3 }))
            .unwrap();
        e.forward().unwrap();
    }
}

/// The GPU engine in a window against the CPU engine in the same window: two training steps
/// with dropout between layers and at the edges, the second in another window of the same
/// shape with the same dropout seed (its dispatches patched for the window alone, not
/// rebuilt).
fn gpu_matches_cpu_in_windows(cfg: &ModelConfig, name: &str) {
    let Some(ctx) = common::gpu(name) else {
        return;
    };
    let mut rng = common::rng(name);
    let params = common::uniform(&mut rng, ParamLayout::new(cfg).unwrap().len(), 0.5);
    let mut cpu = CpuEngine::<f32>::new(cfg, &params).unwrap();
    let mut gpu = GpuEngine::new(ctx, cfg, &params).unwrap();
    let rows = 3;
    for e in [&mut cpu as &mut dyn Engine, &mut gpu as &mut dyn Engine] {
        e.set_edge_dropout(edges_of(cfg)).unwrap();
        e.reset_state(rows).unwrap();
    }
    let opt = OptimizerConfig::new(OptimizerKind::Sgd).with_clip(1.0);
    for (step, first) in [(0u64, 2usize), (1, 5)] {
        let window = Some(RowWindow { first, rows: 8 });
        for e in [&mut cpu as &mut dyn Engine, &mut gpu as &mut dyn Engine] {
            e.set_row_window(window).unwrap();
        }
        let batch = batch_of(&mut rng, cfg, rows, true);
        let dropout = Some(Dropout {
            p: DROPOUT,
            seed: 21,
        });
        let what = format!("{name} step {step} window {window:?}");
        common::forward_backward_both([&mut cpu, &mut gpu], &batch, dropout, &what);
        common::close_steps(
            &format!("{what} outputs"),
            &gpu.outputs().unwrap(),
            &cpu.outputs().unwrap(),
        );
        common::update_both([&mut cpu, &mut gpu], &opt, true, &what);
    }
}

#[test]
fn gpu_masks_in_a_window_match_the_cpu_for_the_tanh_and_a_gated_cell() {
    gpu_matches_cpu_in_windows(&language_model(Cell::Rnn, 3, false), "window rnn");
    gpu_matches_cpu_in_windows(&language_model(Cell::Lstm, 2, false), "window lstm");
    gpu_matches_cpu_in_windows(&language_model(Cell::Gru, 2, true), "window bidir gru");
}

/// (T, Bl, B, first, W) of the span tests: one element, a window at the shared batch's end, W
/// above the workgroup of 64 and not a multiple, and a window in the middle.
const SPANS: &[(usize, usize, usize, usize, usize)] = &[
    (1, 1, 1, 0, 1),
    (3, 2, 5, 3, 67),
    (2, 3, 7, 1, 5),
    (4, 1, 4, 2, 3),
];

/// Element (n, j) of a block of Bl rows per time step in a window is keyed by
/// `((n / Bl) * B + first + n % Bl) * W + j`, its index in the shared block; the whole span
/// keys every element by itself.
#[test]
fn a_span_keys_each_element_by_its_index_in_the_shared_block() {
    for &(steps, bl, b, first, w) in SPANS {
        let span = MaskSpan::new(Some(RowWindow { first, rows: b }), bl, w);
        for n in 0..steps * bl {
            for j in 0..w {
                let shared = ((n / bl) * b + first + n % bl) * w + j;
                assert_eq!(span.index(n * w + j), shared as u32, "{span:?} n={n} j={j}");
            }
        }
    }
    let big = u32::MAX as usize;
    for i in [0, 1, 12345, big - 1, big, big + 7] {
        assert_eq!(
            MaskSpan::WHOLE.index(i),
            i as u32,
            "whole span, element {i}"
        );
    }
    assert!(MaskSpan::new(None, 3, 4).is_whole());
    assert!(!MaskSpan::new(Some(RowWindow { first: 1, rows: 4 }), 3, 4).is_whole());
}

const POISON: f32 = 1e30;

/// The dropout kernels over a block in a window against their CPU twins, bit for bit, with
/// poison around the output block.
#[test]
fn the_dropout_kernels_in_a_window_match_their_cpu_twins() {
    let name = "dropout kernels in a window";
    let Some(ctx) = common::gpu(name) else {
        return;
    };
    let mut rng = common::rng(name);
    let mut pipes = Pipelines::default();
    let dropout = Some(Dropout { p: 0.4, seed: 9 });
    for &(steps, bl, b, first, w) in SPANS {
        let span = MaskSpan::new(Some(RowWindow { first, rows: b }), bl, w);
        let key = MaskKey::new(dropout, 2).within(span);
        let (rows, n) = (steps * bl, steps * bl * w);
        let what = format!("{span:?}");
        let x = common::uniform(&mut rng, n, 1.0);
        let mut y_cpu = Array2::<f32>::zeros((rows, w));
        let x_cpu = Array2::from_shape_vec((rows, w), x.clone()).unwrap();
        cpu_dropout::dropout_forward(x_cpu.view(), key, y_cpu.view_mut());
        let xb = buffers::storage_with(&ctx, "x", &x).unwrap();
        let yb = buffers::storage_with(&ctx, "y", &vec![POISON; n + 2]).unwrap();
        let (xr, yr) = (buffers::at(&xb, 0), buffers::at(&yb, 1));
        let call = gpu_dropout::dropout_forward(&ctx, n, xr, yr, key).unwrap();
        run_now(&ctx, &mut pipes, vec![call]).unwrap();
        let y: Vec<f32> = buffers::read(&ctx, &yb, 0, n + 2).unwrap();
        assert_eq!((y[0], y[n + 1]), (POISON, POISON), "{what}: outside");
        assert_eq!(&y[1..=n], y_cpu.as_slice().unwrap(), "{what}: forward");
        let mut d_cpu = x_cpu;
        cpu_dropout::dropout_backward(key, d_cpu.view_mut());
        let call = gpu_dropout::dropout_backward(&ctx, n, buffers::at(&xb, 0), key).unwrap();
        run_now(&ctx, &mut pipes, vec![call]).unwrap();
        let d: Vec<f32> = buffers::read(&ctx, &xb, 0, n).unwrap();
        assert_eq!(d, d_cpu.as_slice().unwrap(), "{what}: backward");
    }
}
