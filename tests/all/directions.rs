//! Bidirectional layers, LSTM projections and layers without biases on the CPU engine: every
//! new parameter's gradient against central finite differences in f64 (masked batches of
//! unequal lengths, a carried-in state of both directions, T = 1 and B = 1), a padded batch
//! against its sequences run one by one (the reverse direction starts at each sequence's own
//! last step), the state of both directions, the carried state of a projected LSTM, and the
//! fast paths (rows split between threads, packed step products) on the new layers.

use unroll::engine::cpu::CpuEngine;
use unroll::engine::cpu::packed::PACK_MIN;
use unroll::engine::{Dropout, Engine};
use unroll::model::{Cell, InputKind, ModelConfig, OutputKind, ParamLayout};

use crate::common::{self, assert_close};
use crate::gradcheck::{check_gradients, check_gradients_of};

/// A model of `cell` with the given kinds, sizes (I, H, V, layers) and new options
/// (bidirectional, proj_size, bias).
pub fn model(
    cell: Cell,
    (input, output): (InputKind, OutputKind),
    sizes: (usize, usize, usize, usize),
    (bidirectional, proj_size, bias): (bool, Option<usize>, bool),
) -> ModelConfig {
    ModelConfig {
        bidirectional,
        proj_size,
        bias,
        ..common::cell_config(cell, input, output, sizes)
    }
}

const CELLS: [Cell; 3] = [Cell::Rnn, Cell::Gru, Cell::Lstm];
const ONE_HOT: (InputKind, OutputKind) = (InputKind::OneHot, OutputKind::Softmax);
const DENSE: (InputKind, OutputKind) = (InputKind::Dense, OutputKind::Identity);
const BIDIRECTIONAL: (bool, Option<usize>, bool) = (true, None, true);

#[test]
fn bidirectional_gradients_match_finite_differences() {
    for cell in CELLS {
        for (kinds, layers) in [(ONE_HOT, 2), (DENSE, 2), (DENSE, 1)] {
            let cfg = model(cell, kinds, (4, 3, 4, layers), BIDIRECTIONAL);
            let name = format!("bidirectional {cell:?} {kinds:?} layers={layers}");
            check_gradients(&cfg, 5, 3, None, None, &name);
        }
    }
}

#[test]
fn bidirectional_gradients_with_dropout_embedding_and_chunks_match_finite_differences() {
    for cell in CELLS {
        // Dropout over the 2W-wide output between three layers.
        let cfg = model(cell, ONE_HOT, (4, 3, 4, 3), BIDIRECTIONAL);
        let dropout = Some(Dropout { p: 0.3, seed: 5 });
        check_gradients(&cfg, 4, 3, dropout, None, &format!("{cell:?} dropout"));
        // An embedding under the first layer; the output layer in chunks of 5 rows.
        let cfg = ModelConfig {
            embed: Some(3),
            ..model(cell, ONE_HOT, (5, 3, 5, 2), BIDIRECTIONAL)
        };
        check_gradients(
            &cfg,
            4,
            3,
            None,
            Some(5 * 5),
            &format!("{cell:?} embed chunks"),
        );
    }
    // Tied weights: the embedding is as wide as the layer's output [h_fwd ; h_rev].
    let cfg = ModelConfig {
        embed: Some(6),
        tie_weights: true,
        ..model(Cell::Gru, ONE_HOT, (5, 3, 5, 2), BIDIRECTIONAL)
    };
    check_gradients(&cfg, 4, 3, None, None, "bidirectional tied");
}

#[test]
fn new_layers_gradients_match_finite_differences_at_one_step_and_one_row() {
    for cell in CELLS {
        let cfg = model(cell, ONE_HOT, (3, 2, 3, 2), BIDIRECTIONAL);
        check_gradients(&cfg, 1, 1, None, None, &format!("{cell:?} bidi T=1 B=1"));
        check_gradients(&cfg, 4, 1, None, None, &format!("{cell:?} bidi B=1"));
        check_gradients(&cfg, 1, 3, None, None, &format!("{cell:?} bidi T=1"));
    }
    let cfg = model(Cell::Lstm, DENSE, (3, 3, 2, 2), (true, Some(2), false));
    check_gradients(&cfg, 1, 1, None, None, "projection T=1 B=1");
}

#[test]
fn projection_gradients_match_finite_differences() {
    for (kinds, layers, bidirectional) in [
        (DENSE, 1, false),
        (ONE_HOT, 2, false),
        (DENSE, 2, true),
        (ONE_HOT, 1, true),
    ] {
        let cfg = model(
            Cell::Lstm,
            kinds,
            (4, 4, 3, layers),
            (bidirectional, Some(2), true),
        );
        let name = format!("projection {kinds:?} layers={layers} bidirectional={bidirectional}");
        check_gradients(&cfg, 5, 3, None, None, &name);
    }
    // With dropout between three projected layers, and P = 1.
    let cfg = model(Cell::Lstm, ONE_HOT, (4, 3, 4, 3), (false, Some(1), true));
    let dropout = Some(Dropout { p: 0.3, seed: 9 });
    check_gradients(&cfg, 4, 3, dropout, None, "projection P=1 dropout");
}

#[test]
fn no_bias_gradients_match_finite_differences() {
    for cell in CELLS {
        for (kinds, layers) in [(ONE_HOT, 2), (DENSE, 1)] {
            let cfg = model(cell, kinds, (4, 3, 4, layers), (false, None, false));
            let layout = ParamLayout::new(&cfg).unwrap();
            assert!(layout.specs().iter().all(|s| !s.name.contains("bias_")));
            let name = format!("no bias {cell:?} {kinds:?} layers={layers}");
            check_gradients(&cfg, 5, 3, None, None, &name);
        }
    }
    // Everything at once: bidirectional, projected, no biases, dropout.
    let cfg = model(Cell::Lstm, ONE_HOT, (4, 4, 4, 2), (true, Some(3), false));
    let dropout = Some(Dropout { p: 0.2, seed: 3 });
    check_gradients_of(&cfg, (4, 3), dropout, None, None, "all options");
}

#[test]
fn padded_bidirectional_batches_match_sequences_run_one_by_one() {
    // The reverse direction of each padded sequence starts at its own last step, so the padded
    // batch gives what each sequence alone gives, gradients included.
    for cell in CELLS {
        let cfg = model(cell, ONE_HOT, (6, 5, 6, 2), BIDIRECTIONAL);
        crate::padding::check(&cfg, &format!("padding bidirectional {cell:?}"));
    }
    let cfg = model(Cell::Lstm, DENSE, (3, 5, 2, 2), (true, Some(3), false));
    crate::padding::check(&cfg, "padding bidirectional projection");
}

/// A forward pass of `cfg` over a fresh batch from a random state of `rows` rows; returns the
/// engine after `carry_state` and the state it started from.
fn run_and_carry(
    cfg: &ModelConfig,
    (steps, rows): (usize, usize),
    rng: &mut rand_chacha::ChaCha8Rng,
) -> (CpuEngine<f64>, Vec<f32>) {
    let params = common::uniform(rng, ParamLayout::new(cfg).unwrap().len(), 0.5);
    let mut e = CpuEngine::<f64>::new(cfg, &params).unwrap();
    let state = common::uniform(rng, rows * cfg.state_size_per_row(), 0.8);
    e.set_state(rows, &state).unwrap();
    assert_eq!(e.state().unwrap(), state, "set_state then state");
    let batch = common::random_batch(rng, cfg, steps, rows, None);
    e.upload_batch(&batch).unwrap();
    e.forward().unwrap();
    e.carry_state().unwrap();
    (e, state)
}

#[test]
fn the_state_holds_both_directions_and_a_projected_h() {
    let mut rng = common::rng("state of both directions");
    // set_state / state / carry_state over every layer and direction (h P wide, c H wide).
    for cfg in [
        model(Cell::Lstm, DENSE, (3, 4, 2, 2), (true, Some(3), true)),
        model(Cell::Gru, ONE_HOT, (3, 4, 3, 2), BIDIRECTIONAL),
    ] {
        let rows = 2;
        let (mut e, start) = run_and_carry(&cfg, (3, rows), &mut rng);
        let end = e.state().unwrap();
        assert_eq!(end.len(), rows * cfg.state_size_per_row());
        let w = cfg.state_width();
        // Every part (layer, direction; h then c) changed.
        let parts = cfg.layers * cfg.directions();
        let mut at = 0;
        let widths = if cfg.cell.has_memory() {
            vec![w, cfg.hidden_size]
        } else {
            vec![w]
        };
        for width in widths {
            for part in 0..parts {
                let r = at..at + rows * width;
                assert_ne!(end[r.clone()], start[r.clone()], "{cfg:?}: part {part}");
                at = r.end;
            }
        }
        assert_eq!(at, end.len());
        // The reverse direction's initial state is its state at its own first step, the
        // sequence's last: changing it changes the output there.
        let mut moved = start.clone();
        let rev_h0 = rows * w; // layer 0, direction 1
        moved[rev_h0] += 0.5;
        let batch = common::random_batch(&mut rng, &cfg, 3, rows, None);
        let mut loss = Vec::new();
        for s in [&start, &moved] {
            e.set_state(rows, s).unwrap();
            e.upload_batch(&batch).unwrap();
            e.forward().unwrap();
            loss.push(e.loss().unwrap().sum);
        }
        assert_ne!(loss[0], loss[1], "the reverse direction's h0 is read");
    }
}

#[test]
fn a_projected_lstm_carries_its_state_across_windows() {
    // Stream mode: two windows with the state carried between them give the outputs of one
    // window of both lengths (h is P wide, c H wide).
    let mut rng = common::rng("projected carry");
    let cfg = model(Cell::Lstm, DENSE, (3, 5, 2, 2), (false, Some(2), true));
    let params = common::uniform(&mut rng, ParamLayout::new(&cfg).unwrap().len(), 0.5);
    let rows = 3;
    let whole = common::random_batch(&mut rng, &cfg, 6, rows, None);
    let (first, second) = split_in_time(&whole, 2, cfg.input_size, cfg.output_size);
    let mut e = CpuEngine::<f64>::new(&cfg, &params).unwrap();
    e.reset_state(rows).unwrap();
    e.upload_batch(&whole).unwrap();
    e.forward().unwrap();
    let one = e.outputs().unwrap();
    e.reset_state(rows).unwrap();
    let mut two = Vec::new();
    for part in [&first, &second] {
        e.upload_batch(part).unwrap();
        e.forward().unwrap();
        e.carry_state().unwrap();
        two.extend(e.outputs().unwrap());
    }
    assert_close(
        "carried windows",
        &common::to_f64(&two),
        &common::to_f64(&one),
        1e-6,
        1e-7,
    );
}

/// A batch without a mask cut in two at step `at`.
fn split_in_time(
    batch: &unroll::engine::Batch,
    at: usize,
    input: usize,
    output: usize,
) -> (unroll::engine::Batch, unroll::engine::Batch) {
    use unroll::engine::{Batch, Inputs, Targets};
    let b = batch.rows;
    let cut = |steps: std::ops::Range<usize>| {
        let rows = steps.start * b..steps.end * b;
        let inputs = match &batch.inputs {
            Inputs::Dense(x) => Inputs::Dense(x[rows.start * input..rows.end * input].to_vec()),
            Inputs::Tokens(x) => Inputs::Tokens(x[rows.clone()].to_vec()),
        };
        let targets = match &batch.targets {
            Targets::Dense(y) => Targets::Dense(y[rows.start * output..rows.end * output].to_vec()),
            Targets::Classes(y) => Targets::Classes(y[rows].to_vec()),
        };
        Batch {
            steps: steps.len(),
            rows: b,
            inputs,
            targets,
            mask: None,
        }
    };
    (cut(0..at), cut(at..batch.steps))
}

#[test]
fn new_layers_split_by_rows_match_one_thread() {
    let mut rng = common::rng("row split new layers");
    let (steps, rows) = (5, 13);
    for (cell, options) in [
        (Cell::Gru, BIDIRECTIONAL),
        (Cell::Rnn, (true, None, false)),
        (Cell::Lstm, (true, Some(7), true)),
    ] {
        let cfg = model(cell, ONE_HOT, (6, 20, 6, 2), options);
        let len = ParamLayout::new(&cfg).unwrap().len();
        let params = common::uniform(&mut rng, len, 0.25);
        let lens: Vec<usize> = (0..rows).map(|r| 1 + (r * 7) % steps).collect();
        let batches: Vec<_> = (0..2)
            .map(|_| common::random_batch(&mut rng, &cfg, steps, rows, Some(&lens)))
            .collect();
        let what = format!("{cell:?} {options:?}");
        let f32_engine = || CpuEngine::<f32>::new(&cfg, &params).unwrap();
        crate::row_split::same(
            &format!("{what} f32"),
            &crate::row_split::trace(1, &f32_engine, &batches),
            &crate::row_split::trace(3, &f32_engine, &batches),
        );
    }
}

#[test]
fn projected_bidirectional_layers_with_packed_weights_match_the_f64_engine() {
    // H = 300, P = 250: W_hh^T [250, 1200] exceeds PACK_MIN, so the f32 engine runs the
    // recurrent products of both directions on the packed kernel; W_hr^T [300, 250] stays
    // with the GEMM.
    let cfg = model(Cell::Lstm, DENSE, (4, 300, 3, 1), (true, Some(250), true));
    assert!(cfg.state_width() * 4 * cfg.hidden_size > PACK_MIN);
    let mut rng = common::rng("packed projection");
    let params = common::uniform(&mut rng, ParamLayout::new(&cfg).unwrap().len(), 0.05);
    let (steps, rows) = (4, 9);
    let lens: Vec<usize> = (0..rows).map(|r| 1 + (r * 3) % steps).collect();
    let batch = common::random_batch(&mut rng, &cfg, steps, rows, Some(&lens));
    let mut out = Vec::new();
    let mut e32 = CpuEngine::<f32>::new(&cfg, &params).unwrap();
    let mut e64 = CpuEngine::<f64>::new(&cfg, &params).unwrap();
    for e in [&mut e32 as &mut dyn Engine, &mut e64] {
        e.reset_state(rows).unwrap();
        e.upload_batch(&batch).unwrap();
        e.zero_grads().unwrap();
        e.forward().unwrap();
        e.backward().unwrap();
        out.push((e.loss().unwrap().sum, e.grads().unwrap()));
    }
    assert_close("packed loss", &[out[0].0], &[out[1].0], 1e-5, 1e-5);
    let (g32, g64) = (common::to_f64(&out[0].1), common::to_f64(&out[1].1));
    assert_close("packed gradients", &g32, &g64, 1e-3, 1e-5);
}

/// A labelling task that needs the future: x is `count` sequences of class ids 1..=4 of
/// lengths 5..=12, and y_t is x_{t+2} (0 for the last two steps).
fn lookahead_pairs(path: &std::path::Path, count: usize, seed: u64) {
    use rand::{RngExt, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut text = String::new();
    for _ in 0..count {
        let len = rng.random_range(5..=12);
        let x: Vec<u32> = (0..len).map(|_| rng.random_range(1..=4)).collect();
        let y: Vec<u32> = (0..len)
            .map(|t| x.get(t + 2).copied().unwrap_or(0))
            .collect();
        text.push_str(&serde_json::json!({ "x": x, "y": y }).to_string());
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn only_a_bidirectional_model_learns_the_input_two_steps_later() {
    // Through the command line: train --pairs, then predict on held-out pairs. A forward model
    // cannot see x_{t+2} (chance is about 1/4 per step); the reverse direction has read it.
    let dir = tempfile::tempdir().unwrap();
    let (train, test) = (
        dir.path().join("train.jsonl"),
        dir.path().join("test.jsonl"),
    );
    lookahead_pairs(&train, 400, 1);
    lookahead_pairs(&test, 200, 2);
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let accuracy = |extra: &[&str]| {
        let out = path(&dir.path().join(format!("run{}", extra.len())));
        let args = [
            "train",
            "--pairs",
            &path(&train),
            "--input",
            "class",
            "--output",
            "class",
            "--cell",
            "gru",
            "--hidden",
            "16",
            "--batch",
            "16",
            "--steps",
            "300",
            "--lr",
            "0.02",
            "--eval-every",
            "0",
            "--device",
            "cpu",
            "--out",
            &out,
        ];
        crate::cli::ok(&[&args[..], extra].concat());
        let pred = crate::cli::ok(&["predict", "--model", &out, "--pairs", &path(&test)]);
        let stderr = String::from_utf8_lossy(&pred.stderr);
        let summary: serde_json::Value =
            serde_json::from_str(stderr.lines().last().unwrap()).unwrap();
        eprintln!("lookahead {extra:?}: {summary}");
        summary["accuracy"].as_f64().unwrap()
    };
    let forward = accuracy(&[]);
    let both = accuracy(&["--bidirectional"]);
    assert!(
        forward < 0.6,
        "a forward model learned the future: {forward}"
    );
    assert!(both > 0.95, "the bidirectional model reached {both}");
}

#[test]
fn repeated_steps_of_the_new_layers_allocate_no_new_step_arrays() {
    use unroll::train::optim::{OptimizerConfig, OptimizerKind};
    // Three bidirectional projected layers (the inputs of the upper ones through dropout) under
    // an embedding: the pool keeps every step array for the next step.
    let cfg = ModelConfig {
        embed: Some(3),
        ..model(Cell::Lstm, ONE_HOT, (7, 6, 7, 3), (true, Some(4), true))
    };
    let mut rng = common::rng("step allocations of the new layers");
    let params = common::uniform(&mut rng, ParamLayout::new(&cfg).unwrap().len(), 0.3);
    let mut e = CpuEngine::<f32>::new(&cfg, &params).unwrap();
    e.set_dropout(Some(Dropout { p: 0.3, seed: 1 })).unwrap();
    e.reset_state(2).unwrap();
    let opt = OptimizerConfig::new(OptimizerKind::Sgd);
    let mut after = Vec::new();
    for _ in 0..4 {
        let batch = common::random_batch(&mut rng, &cfg, 3, 2, Some(&[3, 2]));
        e.upload_batch(&batch).unwrap();
        e.zero_grads().unwrap();
        e.forward().unwrap();
        e.backward().unwrap();
        e.optimizer_step(&opt, 0.1).unwrap();
        after.push(e.step_allocations());
    }
    assert!(after[0] > 0, "the first step allocates its arrays");
    assert_eq!(after[1], after[3], "later steps allocated {after:?}");
}
