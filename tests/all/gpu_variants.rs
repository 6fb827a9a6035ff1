//! The GPU engine against the CPU engine over whole training steps for the layer variants of
//! PyTorch's recurrent modules: layers without biases, bidirectional layers (padded batches of
//! unequal lengths, the reverse direction starting at each row's last real step) and LSTM
//! projections, in every recurrence form each runs in, with T and B off the workgroup sizes;
//! and the kernels these variants add, against their CPU twins with poisoned outputs.

use unroll::engine::cpu::CpuEngine;
use unroll::engine::gpu::GpuEngine;
use unroll::engine::{Batch, Dropout, Engine, Recurrence};
use unroll::model::{Cell, InputKind, ModelConfig, OutputKind, ParamLayout};
use unroll::train::optim::{OptimizerConfig, OptimizerKind};

use crate::common::{self, assert_close, to_f64};

/// f32 rounding compounds over steps, layers and the update; a wrong gate, bias or direction
/// would be off by orders of magnitude more.
fn close(what: &str, gpu: &[f32], cpu: &[f32]) {
    assert_close(what, &to_f64(gpu), &to_f64(cpu), 5e-4, 5e-5);
}

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
        for e in [&mut cpu as &mut dyn Engine, &mut gpu as &mut dyn Engine] {
            e.set_dropout(d).unwrap();
            e.upload_batch(&batch).unwrap();
            e.zero_grads().unwrap();
            e.forward().unwrap();
            e.backward().unwrap();
        }
        let what = format!("{name} step {step}");
        let (lc, lg) = (cpu.loss().unwrap(), gpu.loss().unwrap());
        assert_close(
            &format!("{what} loss"),
            &[lg.mean()],
            &[lc.mean()],
            1e-4,
            1e-5,
        );
        let (og, oc) = (gpu.outputs().unwrap(), cpu.outputs().unwrap());
        close(&format!("{what} outputs"), &og, &oc);
        close(
            &format!("{what} grads"),
            &gpu.grads().unwrap(),
            &cpu.grads().unwrap(),
        );
        for e in [&mut cpu as &mut dyn Engine, &mut gpu as &mut dyn Engine] {
            e.optimizer_step(&opt, 0.1).unwrap();
            if !cfg.bidirectional {
                e.carry_state().unwrap();
            }
        }
        close(
            &format!("{what} params"),
            &gpu.params().unwrap(),
            &cpu.params().unwrap(),
        );
        close(
            &format!("{what} state"),
            &gpu.state().unwrap(),
            &cpu.state().unwrap(),
        );
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
            for &recurrence in forms(cell) {
                let case = Case {
                    cfg: &cfg,
                    shape,
                    dropout: 0.0,
                    recurrence,
                    steps: 5,
                };
                steps_match(
                    &case,
                    &format!("no bias {cell:?} L={layers} {recurrence:?}"),
                );
            }
        }
    }
}
