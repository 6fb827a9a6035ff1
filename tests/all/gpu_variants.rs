//! The GPU engine against the CPU engine over whole training steps for the layer variants of
//! PyTorch's recurrent modules: layers without biases, bidirectional layers (padded batches of
//! unequal lengths, the reverse direction starting at each row's last real step) and LSTM
//! projections, in every recurrence form each runs in, with T and B off the workgroup sizes;
//! and the kernels these variants add, against their CPU twins with poisoned outputs.

use rand::RngExt;
use unroll::engine::cpu::CpuEngine;
use unroll::engine::gpu::pipelines::Pipelines;
use unroll::engine::gpu::plan::run_now;
use unroll::engine::gpu::{GpuEngine, buffers, reverse};
use unroll::engine::reverse::RowGather;
use unroll::engine::{Batch, Dropout, Engine, Inputs, Recurrence, Targets};
use unroll::model::{Cell, InputKind, ModelConfig, OutputKind, ParamLayout};
use unroll::train::optim::{OptimizerConfig, OptimizerKind};

use crate::common;

/// One comparison: the model, (T, B), dropout, the recurrence form, and how many steps.
struct Case<'a> {
    cfg: &'a ModelConfig,
    shape: (usize, usize),
    dropout: f32,
    recurrence: Recurrence,
    steps: u64,
}

/// The recurrence forms a cell runs in.
fn forms(cell: Cell) -> &'static [Recurrence] {
    match cell {
        Cell::Rnn => &[Recurrence::Steps, Recurrence::Wide, Recurrence::Rows],
        _ => &[Recurrence::Steps, Recurrence::Wide],
    }
}

/// `case.steps` training steps (the first one alone, then the following ones after updates)
/// on both engines from the same random parameters and initial state, each on a
/// fresh padded batch of unequal lengths (row 0 full, the others shorter), comparing loss,
/// outputs, gradients and parameters after every step; unidirectional models also carry their
/// state from step to step and compare it.
fn steps_match(case: &Case<'_>, name: &str) {
    let Some(ctx) = common::gpu(name) else {
        return;
    };
    let (cfg, (steps, rows)) = (case.cfg, case.shape);
    let mut rng = common::rng(name);
    let layout = ParamLayout::new(cfg).unwrap();
    let params = common::uniform(&mut rng, layout.len(), 0.5);
    let mut cpu = CpuEngine::<f32>::new(cfg, &params).unwrap();
    let mut gpu = GpuEngine::new(ctx, cfg, &params).unwrap();
    gpu.set_recurrence(case.recurrence).unwrap();
    let state = common::uniform(&mut rng, rows * cfg.state_size_per_row(), 0.8);
    cpu.set_state(rows, &state).unwrap();
    gpu.set_state(rows, &state).unwrap();
    // Plain SGD: Adam would magnify the rounding noise of gradients that are almost zero.
    let opt = OptimizerConfig::new(OptimizerKind::Sgd).with_clip(1.0);
    for step in 0..case.steps {
        let lens: Vec<usize> = (0..rows)
            .map(|b| {
                if b == 0 {
                    steps
                } else {
                    1 + (b * 5 + step as usize) % steps
                }
            })
            .collect();
        let batch: Batch = common::random_batch(&mut rng, cfg, steps, rows, Some(&lens));
        let d = (case.dropout > 0.0).then_some(Dropout {
            p: case.dropout,
            seed: 7 + step,
        });
        let what = format!("{name} step {step}");
        common::forward_backward_both([&mut cpu, &mut gpu], &batch, d, &what);
        let (og, oc) = (gpu.outputs().unwrap(), cpu.outputs().unwrap());
        match (&batch.mask, cfg.bidirectional) {
            (Some(mask), true) => close_on_mask(&format!("{what} outputs"), &og, &oc, mask),
            _ => common::close_steps(&format!("{what} outputs"), &og, &oc),
        }
        // A bidirectional model's state after a padded batch is not carried (see the engines).
        common::update_both([&mut cpu, &mut gpu], &opt, !cfg.bidirectional, &what);
    }
}

/// Five training steps of `cfg` on (T, B) with `dropout`, in each of `forms`.
fn match_in_forms(
    cfg: &ModelConfig,
    (shape, dropout): ((usize, usize), f32),
    forms: &[Recurrence],
    name: &str,
) {
    for &recurrence in forms {
        let case = Case {
            cfg,
            shape,
            dropout,
            recurrence,
            steps: 5,
        };
        steps_match(&case, &format!("{name} {recurrence:?}"));
    }
}

/// `cell` with I = 6 (one-hot) or 5 (dense), H = 9, V = 5 and `layers` layers.
fn model(cell: Cell, input: InputKind, output: OutputKind, layers: usize) -> ModelConfig {
    let i = if input == InputKind::OneHot { 6 } else { 5 };
    common::cell_config(cell, input, output, (i, 9, 5, layers))
}

#[test]
fn layers_without_biases_match_cpu_for_every_cell_and_form() {
    for cell in [Cell::Rnn, Cell::Gru, Cell::Lstm] {
        for (layers, input, output, shape) in [
            (1, InputKind::OneHot, OutputKind::Softmax, (3, 5)),
            (2, InputKind::Dense, OutputKind::Identity, (1, 1)),
        ] {
            let cfg = ModelConfig {
                bias: false,
                ..model(cell, input, output, layers)
            };
            let name = format!("no bias {cell:?} L={layers}");
            match_in_forms(&cfg, (shape, 0.0), forms(cell), &name);
        }
    }
}

#[test]
fn bidirectional_layers_match_cpu_for_every_cell_depth_and_form() {
    for cell in [Cell::Rnn, Cell::Gru, Cell::Lstm] {
        for (layers, input, output, shape, dropout) in [
            (1, InputKind::OneHot, OutputKind::Softmax, (5, 3), 0.0),
            (2, InputKind::Dense, OutputKind::Identity, (3, 2), 0.3),
            (2, InputKind::OneHot, OutputKind::Sigmoid, (1, 1), 0.0),
        ] {
            let cfg = ModelConfig {
                bidirectional: true,
                ..model(cell, input, output, layers)
            };
            let name = format!("bidirectional {cell:?} L={layers} p={dropout}");
            match_in_forms(&cfg, (shape, dropout), forms(cell), &name);
        }
    }
}

#[test]
fn bidirectional_layers_without_biases_and_with_an_embedding_match_cpu() {
    for cell in [Cell::Rnn, Cell::Gru, Cell::Lstm] {
        let cfg = ModelConfig {
            bidirectional: true,
            bias: false,
            embed: Some(4),
            ..model(cell, InputKind::OneHot, OutputKind::Softmax, 2)
        };
        let name = format!("bidirectional no bias embedded {cell:?}");
        match_in_forms(&cfg, ((4, 3), 0.0), &[Recurrence::Auto], &name);
    }
}

/// Compares outputs at the rows the mask weights (padding holds whatever each engine leaves
/// there, and reaches nothing).
fn close_on_mask(what: &str, gpu: &[f32], cpu: &[f32], mask: &[f32]) {
    let v = gpu.len() / mask.len();
    let keep = |x: &[f32]| -> Vec<f32> {
        x.chunks(v)
            .zip(mask)
            .filter(|(_, m)| **m != 0.0)
            .flat_map(|(row, _)| row.to_vec())
            .collect()
    };
    common::close_steps(what, &keep(gpu), &keep(cpu));
}

#[test]
fn permute_rows_matches_its_cpu_twin_with_poisoned_outputs() {
    let Some(ctx) = common::gpu("permute rows") else {
        return;
    };
    let mut rng = common::rng("permute rows");
    let mut pipes = Pipelines::default();
    const POISON: f32 = 1e30;
    for &(steps, rows, width) in &[(1, 1, 1), (3, 2, 5), (7, 3, 67)] {
        for (directions, reverse) in [(1, 0), (1, 1), (2, 0b10), (2, 0b11)] {
            let what = format!("T={steps} B={rows} width={width} dirs={directions} rev={reverse}");
            // Lengths from 0 to T, row 0 full.
            let lengths: Vec<u32> = (0..rows)
                .map(|b| if b == 0 { steps } else { rng.random_range(0..=steps) } as u32)
                .collect();
            let n = steps * rows;
            // A source with a guard in front, rows 2 * width apart, directions `width` apart
            // (the layout of a bidirectional output); a destination with its own guard and
            // direction blocks of [(T + 1) * B, width] (the layout of the states).
            let gather = RowGather {
                steps,
                rows,
                width,
                src: (3, 2 * width, width),
                dst: (5, width, (steps + 1) * rows * width),
                directions,
                reverse,
            };
            let src = common::uniform(&mut rng, 3 + 2 * n * width, 1.0);
            let dst_len = 5 + 2 * (steps + 1) * rows * width;
            let mut expect = vec![POISON; dst_len];
            gather.apply(&lengths, &src, &mut expect);
            let len_buf = buffers::storage_with(&ctx, "lengths", &lengths).unwrap();
            let src_buf = buffers::storage_with(&ctx, "src", &src).unwrap();
            let dst_buf = buffers::storage_with(&ctx, "dst", &vec![POISON; dst_len]).unwrap();
            let call = reverse::permute_rows(&ctx, &gather, &len_buf, &src_buf, &dst_buf).unwrap();
            run_now(&ctx, &mut pipes, vec![call]).unwrap();
            let got: Vec<f32> = buffers::read(&ctx, &dst_buf, 0, dst_len).unwrap();
            assert_eq!(got, expect, "{what}");
            // Every destination row of every direction was written, nothing else.
            let written = expect.iter().filter(|&&x| x != POISON).count();
            assert_eq!(written, directions * n * width, "{what}");
        }
    }
}

/// Runs one forward and backward of `gpu` on `batch` and returns (outputs, grads).
fn run(gpu: &mut GpuEngine, batch: &Batch) -> (Vec<f32>, Vec<f32>) {
    gpu.upload_batch(batch).unwrap();
    gpu.zero_grads().unwrap();
    gpu.forward().unwrap();
    gpu.backward().unwrap();
    (gpu.outputs().unwrap(), gpu.grads().unwrap())
}

/// The rows of step-major `data` (rows of `width`) that belong to sequence b of T x B, its
/// first `len` steps.
fn sequence(data: &[f32], (rows, width): (usize, usize), b: usize, len: usize) -> Vec<f32> {
    (0..len)
        .flat_map(|t| data[(t * rows + b) * width..(t * rows + b + 1) * width].to_vec())
        .collect()
}

#[test]
fn a_padded_bidirectional_batch_gives_the_sequences_one_by_one_on_the_gpu() {
    for cell in [Cell::Rnn, Cell::Gru, Cell::Lstm] {
        for &recurrence in forms(cell) {
            let name = format!("bidirectional padded {cell:?} {recurrence:?}");
            let Some(ctx) = common::gpu(&name) else {
                return;
            };
            let mut rng = common::rng(&name);
            let cfg = ModelConfig {
                bidirectional: true,
                ..model(cell, InputKind::Dense, OutputKind::Identity, 2)
            };
            let layout = ParamLayout::new(&cfg).unwrap();
            let params = common::uniform(&mut rng, layout.len(), 0.5);
            let (steps, rows) = (5, 3);
            let lens = [5, 2, 4];
            let mut gpu = GpuEngine::new(ctx, &cfg, &params).unwrap();
            gpu.set_recurrence(recurrence).unwrap();
            gpu.reset_state(rows).unwrap();
            let batch = common::random_batch(&mut rng, &cfg, steps, rows, Some(&lens));
            let (out, grads) = run(&mut gpu, &batch);
            let mut sum = vec![0.0f32; grads.len()];
            let (i, v) = (cfg.input_size, cfg.output_size);
            for (b, &len) in lens.iter().enumerate() {
                let (Inputs::Dense(x), Targets::Dense(y)) = (&batch.inputs, &batch.targets) else {
                    unreachable!()
                };
                let one = Batch {
                    steps: len,
                    rows: 1,
                    inputs: Inputs::Dense(sequence(x, (rows, i), b, len)),
                    targets: Targets::Dense(sequence(y, (rows, v), b, len)),
                    mask: None,
                };
                gpu.reset_state(1).unwrap();
                let (o, g) = run(&mut gpu, &one);
                let what = format!("{name} row {b}");
                common::close_steps(
                    &format!("{what} outputs"),
                    &o,
                    &sequence(&out, (rows, v), b, len),
                );
                // The batch's loss is the mean over all real steps: weight each sequence's.
                let scale = len as f32 / lens.iter().sum::<usize>() as f32;
                sum.iter_mut().zip(&g).for_each(|(s, g)| *s += scale * g);
            }
            common::close_steps(&format!("{name} grads"), &sum, &grads);
        }
    }
}

#[test]
fn lstm_projections_match_cpu_alone_and_bidirectional() {
    for (layers, bidirectional, input, output, shape, dropout) in [
        (
            1,
            false,
            InputKind::OneHot,
            OutputKind::Softmax,
            (5, 3),
            0.0,
        ),
        (
            2,
            false,
            InputKind::Dense,
            OutputKind::Identity,
            (3, 2),
            0.3,
        ),
        (1, true, InputKind::OneHot, OutputKind::Softmax, (4, 3), 0.0),
        (2, true, InputKind::Dense, OutputKind::Sigmoid, (1, 1), 0.0),
    ] {
        let cfg = ModelConfig {
            proj_size: Some(4),
            bidirectional,
            ..model(Cell::Lstm, input, output, layers)
        };
        // Auto picks the steps form for a projection; Steps names it.
        let name = format!("projection L={layers} bidirectional={bidirectional}");
        let forms = [Recurrence::Auto, Recurrence::Steps];
        match_in_forms(&cfg, (shape, dropout), &forms, &name);
    }
}

#[test]
fn the_wide_recurrence_refuses_lstm_projections_by_name() {
    let Some(ctx) = common::gpu("wide projection") else {
        return;
    };
    let mut rng = common::rng("wide projection");
    let cfg = ModelConfig {
        proj_size: Some(4),
        ..model(Cell::Lstm, InputKind::OneHot, OutputKind::Softmax, 1)
    };
    let params = common::uniform(&mut rng, ParamLayout::new(&cfg).unwrap().len(), 0.5);
    let mut gpu = GpuEngine::new(ctx, &cfg, &params).unwrap();
    gpu.set_recurrence(Recurrence::Wide).unwrap();
    let batch = common::random_batch(&mut rng, &cfg, 2, 1, None);
    match gpu.upload_batch(&batch) {
        Err(unroll::Error::Config(m)) => assert!(m.contains("--proj-size"), "{m}"),
        other => panic!("the wide form ran a projection: {other:?}"),
    }
}
