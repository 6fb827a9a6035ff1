//! Whole training steps on the GPU engine against the CPU engine: the same seed gives the same
//! loss curve and the same parameters after 1 and after 5 steps of every optimizer, with masks
//! and carried state; every model kind agrees on loss, outputs, gradients and final state;
//! shapes beyond the device's limits are refused with an error.

use rand_chacha::ChaCha8Rng;
use unroll::engine::cpu::CpuEngine;
use unroll::engine::gpu::profile::StepPhase;
use unroll::engine::gpu::{GpuContext, GpuEngine, list_adapters};
use unroll::engine::{Batch, Dropout, Engine, Recurrence};
use unroll::error::Error;
use unroll::model::{Activation, Cell, InputKind, ModelConfig, OutputKind, ParamLayout};
use unroll::train::optim::{OptimizerConfig, OptimizerKind};

use crate::common::{self, assert_close, to_f64};

const RTOL: f64 = 1e-4;
const ATOL: f64 = 1e-5;

/// Both engines on the same random parameters, or `None` when there is no GPU.
fn engines(test: &str, cfg: &ModelConfig) -> Option<(CpuEngine<f32>, GpuEngine, ChaCha8Rng)> {
    let ctx = common::gpu(test)?;
    let mut rng = common::rng(test);
    let layout = ParamLayout::new(cfg).unwrap();
    let params = common::uniform(&mut rng, layout.len(), 0.5);
    let cpu = CpuEngine::<f32>::new(cfg, &params).unwrap();
    let gpu = GpuEngine::new(ctx, cfg, &params).unwrap();
    Some((cpu, gpu, rng))
}

fn close(what: &str, gpu: &[f32], cpu: &[f32]) {
    assert_close(what, &to_f64(gpu), &to_f64(cpu), RTOL, ATOL);
}

/// Rows of unequal length: row 0 full, the others shorter (masked padding after them).
fn lengths(steps: usize, rows: usize) -> Vec<usize> {
    (0..rows)
        .map(|b| if b == 0 { steps } else { 1 + (b * 5) % steps })
        .collect()
}

/// One forward + backward on both engines; returns the losses.
fn forward_backward(cpu: &mut impl Engine, gpu: &mut impl Engine, batch: &Batch) -> (f64, f64) {
    for e in [cpu as &mut dyn Engine, gpu as &mut dyn Engine] {
        e.upload_batch(batch).unwrap();
        e.zero_grads().unwrap();
        e.forward().unwrap();
        e.backward().unwrap();
    }
    let (lc, lg) = (cpu.loss().unwrap(), gpu.loss().unwrap());
    assert_eq!(lc.count, lg.count);
    (lc.mean(), lg.mean())
}

#[test]
fn training_steps_match_cpu_for_every_optimizer_with_masks_and_carried_state() {
    let cfg = common::config(
        Activation::Tanh,
        InputKind::OneHot,
        OutputKind::Softmax,
        (7, 9, 7, 2),
    );
    let (steps, rows) = (4, 3);
    for kind in common::OPTIMIZERS {
        let name = format!("training {kind:?}");
        let Some((mut cpu, mut gpu, mut rng)) = engines(&name, &cfg) else {
            return;
        };
        let mut opt = OptimizerConfig::new(kind).with_clip(1.0);
        opt.weight_decay = 1e-3;
        // The adaptive rules divide by sqrt(v) + eps: with PyTorch's 1e-8 a gradient element
        // near zero turns its f32 rounding (which differs between the engines' summation
        // orders) into an O(lr) difference of the update. A larger eps keeps the comparison
        // well conditioned; the rule itself is the same.
        opt.eps = 1e-4;
        // Steps of comparable size: RMSprop's first updates are about 10 lr per element
        // (v starts at (1 - alpha) g^2), Adam's about lr.
        let lr = match kind {
            OptimizerKind::Sgd => 0.5,
            OptimizerKind::Rmsprop => 0.002,
            _ => 0.02,
        };
        cpu.reset_state(rows).unwrap();
        gpu.reset_state(rows).unwrap();
        for step in 1..=5 {
            let lens = lengths(steps, rows);
            let batch = common::random_batch(&mut rng, &cfg, steps, rows, Some(&lens));
            let (lc, lg) = forward_backward(&mut cpu, &mut gpu, &batch);
            assert_close(
                &format!("{name} loss at step {step}"),
                &[lg],
                &[lc],
                RTOL,
                ATOL,
            );
            cpu.optimizer_step(&opt, lr).unwrap();
            gpu.optimizer_step(&opt, lr).unwrap();
            cpu.carry_state().unwrap();
            gpu.carry_state().unwrap();
            let (nc, ng) = (cpu.grad_norm().unwrap(), gpu.grad_norm().unwrap());
            assert_close(
                &format!("{name} norm at step {step}"),
                &[ng as f64],
                &[nc as f64],
                RTOL,
                ATOL,
            );
            if step == 1 || step == 5 {
                let what = format!("{name} after {step} steps");
                close(
                    &format!("{what}: params"),
                    &gpu.params().unwrap(),
                    &cpu.params().unwrap(),
                );
                close(
                    &format!("{what}: state"),
                    &gpu.state().unwrap(),
                    &cpu.state().unwrap(),
                );
            }
        }
        let (sc, sg) = (
            cpu.optimizer_state().unwrap(),
            gpu.optimizer_state().unwrap(),
        );
        assert_eq!(sc.step, sg.step);
        close(&format!("{name}: moments m"), &sg.m, &sc.m);
        close(&format!("{name}: moments v"), &sg.v, &sc.v);
    }
}

#[test]
fn every_model_kind_matches_cpu_on_loss_outputs_gradients_and_state() {
    let kinds = [
        (Activation::Tanh, InputKind::OneHot, OutputKind::Softmax, 1),
        (Activation::Relu, InputKind::OneHot, OutputKind::Sigmoid, 2),
        (Activation::Tanh, InputKind::Dense, OutputKind::Identity, 3),
        (Activation::Relu, InputKind::Dense, OutputKind::Softmax, 1),
        (Activation::Tanh, InputKind::Dense, OutputKind::Sigmoid, 2),
    ];
    // (T, B, I, H, V): one step, one row, one output, sizes off the tiles.
    let shapes = [(1, 1, 3, 5, 1), (5, 2, 6, 17, 4), (3, 5, 1, 3, 70)];
    for (act, input, output, layers) in kinds {
        for &(steps, rows, i, h, v) in &shapes {
            // A softmax over one class has a zero gradient everywhere: still checked.
            let cfg = common::config(act, input, output, (i, h, v, layers));
            let name = format!(
                "{act:?} {input:?} {output:?} L={layers} T={steps} B={rows} I={i} H={h} V={v}"
            );
            let Some((mut cpu, mut gpu, mut rng)) = engines(&name, &cfg) else {
                return;
            };
            let state = common::uniform(&mut rng, layers * rows * h, 0.8);
            cpu.set_state(rows, &state).unwrap();
            gpu.set_state(rows, &state).unwrap();
            let batch =
                common::random_batch(&mut rng, &cfg, steps, rows, Some(&lengths(steps, rows)));
            let (lc, lg) = forward_backward(&mut cpu, &mut gpu, &batch);
            assert_close(&format!("{name}: loss"), &[lg], &[lc], RTOL, ATOL);
            close(
                &format!("{name}: outputs"),
                &gpu.outputs().unwrap(),
                &cpu.outputs().unwrap(),
            );
            close(
                &format!("{name}: gradients"),
                &gpu.grads().unwrap(),
                &cpu.grads().unwrap(),
            );
            cpu.carry_state().unwrap();
            gpu.carry_state().unwrap();
            close(
                &format!("{name}: carried state"),
                &gpu.state().unwrap(),
                &cpu.state().unwrap(),
            );
        }
    }
}

#[test]
fn evaluation_between_training_steps_keeps_the_engines_in_step() {
    // Forward-only batches of another shape between training steps, as an evaluation does,
    // with the state saved and restored around them.
    let cfg = ModelConfig::language_model(11, 8, 1);
    let Some((mut cpu, mut gpu, mut rng)) = engines("evaluation", &cfg) else {
        return;
    };
    let opt = OptimizerConfig::new(OptimizerKind::Sgd).with_clip(5.0);
    for e in [&mut cpu as &mut dyn Engine, &mut gpu as &mut dyn Engine] {
        e.reset_state(2).unwrap();
    }
    for step in 0..3 {
        let train = common::random_batch(&mut rng, &cfg, 3, 2, None);
        let eval = common::random_batch(&mut rng, &cfg, 5, 1, None);
        let mut losses = Vec::new();
        for e in [&mut cpu as &mut dyn Engine, &mut gpu as &mut dyn Engine] {
            e.upload_batch(&train).unwrap();
            e.zero_grads().unwrap();
            e.forward().unwrap();
            e.backward().unwrap();
            e.optimizer_step(&opt, 0.3).unwrap();
            e.carry_state().unwrap();
            let saved = e.state().unwrap();
            e.reset_state(1).unwrap();
            e.upload_batch(&eval).unwrap();
            e.forward().unwrap();
            losses.push(e.loss().unwrap().mean());
            e.set_state(2, &saved).unwrap();
        }
        assert_close(
            &format!("eval loss {step}"),
            &[losses[1]],
            &[losses[0]],
            RTOL,
            ATOL,
        );
    }
    close("params", &gpu.params().unwrap(), &cpu.params().unwrap());
    close("state", &gpu.state().unwrap(), &cpu.state().unwrap());
}

#[test]
fn logits_beyond_the_device_binding_limit_run_in_chunks_and_match_cpu() {
    // V = 2^18 outputs with H = 1: small parameters, but the N * V logits of one batch pass the
    // device's storage binding limit, so the output layer must run in chunks of rows.
    let v = 1 << 18;
    let cfg = ModelConfig::language_model(v, 1, 1);
    let Some((mut cpu, mut gpu, mut rng)) = engines("limits", &cfg) else {
        return;
    };
    let limit = gpu.context().limits.max_storage_buffer_binding_size;
    let rows = ((limit / 4 / v as u64) + 1).min(1 << 12) as usize;
    let batch = common::random_batch(&mut rng, &cfg, 1, rows, None);
    for e in [&mut cpu as &mut dyn Engine, &mut gpu] {
        e.reset_state(rows).unwrap();
        e.upload_batch(&batch).unwrap();
        e.zero_grads().unwrap();
        e.forward().unwrap();
        e.backward().unwrap();
    }
    match gpu.outputs() {
        Err(Error::Shape(msg)) => assert!(msg.contains("chunks"), "{msg}"),
        other => panic!(
            "expected the outputs to be refused, got {:?}",
            other.map(|o| o.len())
        ),
    }
    let (l_gpu, l_cpu) = (gpu.loss().unwrap(), cpu.loss().unwrap());
    assert_close("loss", &[l_gpu.mean()], &[l_cpu.mean()], RTOL, ATOL);
    close("grads", &gpu.grads().unwrap(), &cpu.grads().unwrap());
}

#[test]
fn shapes_beyond_the_device_limits_are_refused_with_an_error() {
    // An LSTM's gate activations [N, 4H] are its largest per-batch buffer: with H = 256, one
    // step of `limit / 4 KiB + 1` rows passes the device's storage binding limit there.
    let cfg = ModelConfig {
        cell: Cell::Lstm,
        ..ModelConfig::language_model(3, 256, 1)
    };
    let Some((_, mut gpu, mut rng)) = engines("limits", &cfg) else {
        return;
    };
    let limit = gpu.context().limits.max_storage_buffer_binding_size;
    let rows = (limit / 4 / 1024 + 1) as usize;
    assert!(
        rows <= 1 << 20,
        "binding limit {limit} is too large for this test"
    );
    gpu.reset_state(rows).unwrap();
    let batch = common::random_batch(&mut rng, &cfg, 1, rows, None);
    match gpu.upload_batch(&batch) {
        Err(Error::Shape(msg)) => assert!(
            msg.contains("gates") && msg.contains("binds at most"),
            "{msg}"
        ),
        other => panic!("expected a shape error, got {other:?}"),
    }
}

#[test]
fn adapters_are_listed_and_auto_takes_only_hardware() {
    let Some(ctx) = common::gpu("adapters") else {
        return;
    };
    let all = list_adapters();
    assert!(
        all.iter().any(|a| a.name == ctx.info.name),
        "{} is not among the listed adapters {all:?}",
        ctx.info
    );
    match GpuContext::open(false) {
        Ok(hw) => assert!(
            !hw.info.software,
            "auto took a software adapter: {}",
            hw.info
        ),
        Err(Error::Gpu(msg)) => {
            assert!(all.iter().all(|a| a.software), "{msg}");
            assert!(msg.contains("--device gpu"), "{msg}");
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[test]
fn a_non_finite_gradient_skips_the_update_and_is_reported() {
    let cfg = ModelConfig::language_model(5, 4, 1);
    let Some((mut cpu, mut gpu, mut rng)) = engines("divergence", &cfg) else {
        return;
    };
    common::assert_divergence_is_typed_and_skips_the_update(&mut cpu, &mut rng);
    common::assert_divergence_is_typed_and_skips_the_update(&mut gpu, &mut rng);
}

#[test]
fn engine_calls_out_of_order_are_misuse_on_both_engines() {
    for cell in [Cell::Rnn, Cell::Lstm] {
        let cfg = ModelConfig {
            cell,
            ..ModelConfig::language_model(5, 4, 2)
        };
        let Some((mut cpu, mut gpu, mut rng)) = engines("misuse", &cfg) else {
            return;
        };
        common::assert_calls_out_of_order_are_misuse(&mut cpu, &mut rng);
        common::assert_calls_out_of_order_are_misuse(&mut gpu, &mut rng);
    }
}

#[test]
fn a_training_step_is_one_submit_with_one_compute_pass() {
    for cell in [Cell::Rnn, Cell::Gru, Cell::Lstm] {
        let cfg = ModelConfig {
            cell,
            ..ModelConfig::language_model(6, 5, 2)
        };
        let Some((_, mut gpu, mut rng)) = engines(&format!("one submit {cell:?}"), &cfg) else {
            return;
        };
        let opt = OptimizerConfig::new(OptimizerKind::Adam).with_clip(1.0);
        let (steps, rows) = (4, 3);
        gpu.reset_state(rows).unwrap();
        for step in 0..3 {
            let before = gpu.submit_counts();
            let batch = common::random_batch(&mut rng, &cfg, steps, rows, None);
            gpu.set_dropout(Some(Dropout { p: 0.2, seed: step }))
                .unwrap();
            gpu.upload_batch(&batch).unwrap();
            gpu.zero_grads().unwrap();
            gpu.forward().unwrap();
            gpu.backward().unwrap();
            gpu.optimizer_step(&opt, 0.01).unwrap();
            gpu.carry_state().unwrap();
            let after = gpu.submit_counts();
            assert_eq!(
                after.submits - before.submits,
                1,
                "{cell:?} step {step}: submits"
            );
            assert_eq!(
                after.passes - before.passes,
                1,
                "{cell:?} step {step}: compute passes"
            );
            // Per layer: T steps forward and back (two dispatches each for a gated cell: the
            // recurrent matmul and the fused gates), an input projection and the gradients.
            let per_step = if cell == Cell::Rnn { 1 } else { 2 };
            assert!(after.dispatches - before.dispatches >= 2 * 2 * per_step * steps as u64);
        }
    }
}

#[test]
fn a_lost_device_gives_an_error_not_a_panic() {
    let cfg = ModelConfig::language_model(6, 5, 1);
    let Some((_, mut gpu, mut rng)) = engines("device lost", &cfg) else {
        return;
    };
    let opt = OptimizerConfig::new(OptimizerKind::Sgd);
    let batch = common::random_batch(&mut rng, &cfg, 3, 2, None);
    gpu.reset_state(2).unwrap();
    gpu.context().device.destroy();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        gpu.upload_batch(&batch)?;
        gpu.zero_grads()?;
        gpu.forward()?;
        gpu.backward()?;
        gpu.optimizer_step(&opt, 0.1)?;
        gpu.loss()?;
        gpu.params()
    }));
    match result {
        Err(_) => panic!("a lost device panicked the engine"),
        Ok(Ok(_)) => panic!("a step on a destroyed device reported success"),
        Ok(Err(Error::Gpu(msg))) => {
            assert!(msg.contains("the GPU device was lost"), "{msg}")
        }
        Ok(Err(other)) => panic!("expected a GPU error, got {other:?}"),
    }
}

#[test]
fn every_gpu_recurrence_kernel_matches_cpu_over_whole_steps() {
    // (cell, activation, T, B, H, layers): one step and one row, H of one unit, H off every
    // workgroup size, H above the workgroup size (each thread owns several units), two layers,
    // rows past one pass of the wide kernel's workgroup (32), and the gated cells.
    let shapes = [
        (Cell::Rnn, Activation::Tanh, 1, 1, 1, 1),
        (Cell::Rnn, Activation::Tanh, 5, 3, 33, 2),
        (Cell::Rnn, Activation::Relu, 4, 2, 17, 1),
        (Cell::Rnn, Activation::Tanh, 3, 2, 300, 1),
        (Cell::Rnn, Activation::Tanh, 2, 35, 9, 1),
        (Cell::Gru, Activation::Tanh, 3, 2, 13, 2),
        (Cell::Lstm, Activation::Tanh, 3, 34, 6, 1),
    ];
    for (cell, act, steps, rows, h, layers) in shapes {
        let cfg = ModelConfig {
            cell,
            ..common::config(
                act,
                InputKind::OneHot,
                OutputKind::Softmax,
                (6, h, 5, layers),
            )
        };
        let kernels: &[Recurrence] = match cell {
            Cell::Rnn => &[Recurrence::Steps, Recurrence::Wide, Recurrence::Rows],
            _ => &[Recurrence::Steps, Recurrence::Wide],
        };
        for &recurrence in kernels {
            let name =
                format!("{recurrence:?} {cell:?} {act:?} T={steps} B={rows} H={h} L={layers}");
            let Some((mut cpu, mut gpu, mut rng)) = engines(&name, &cfg) else {
                return;
            };
            gpu.set_recurrence(recurrence).unwrap();
            // Weights in PyTorch's range 1/sqrt(H): with larger ones a wide tanh layer is
            // chaotic and magnifies the engines' different f32 roundings step after step.
            let len = ParamLayout::new(&cfg).unwrap().len();
            let params = common::uniform(&mut rng, len, 1.0 / (h as f32).sqrt());
            let state = common::uniform(&mut rng, rows * cfg.state_size_per_row(), 0.8);
            cpu.set_params(&params).unwrap();
            gpu.set_params(&params).unwrap();
            for e in [&mut cpu as &mut dyn Engine, &mut gpu] {
                e.set_state(rows, &state).unwrap();
            }
            let opt = OptimizerConfig::new(OptimizerKind::Sgd).with_clip(5.0);
            for step in 0..2 {
                let lens = lengths(steps, rows);
                let batch = common::random_batch(&mut rng, &cfg, steps, rows, Some(&lens));
                let (lc, lg) = forward_backward(&mut cpu, &mut gpu, &batch);
                assert_close(&format!("{name} loss {step}"), &[lg], &[lc], RTOL, ATOL);
                close(
                    &format!("{name} gradients {step}"),
                    &gpu.grads().unwrap(),
                    &cpu.grads().unwrap(),
                );
                for e in [&mut cpu as &mut dyn Engine, &mut gpu] {
                    e.optimizer_step(&opt, 0.05).unwrap();
                    e.carry_state().unwrap();
                }
            }
            close(
                &format!("{name} state"),
                &gpu.state().unwrap(),
                &cpu.state().unwrap(),
            );
        }
    }
}

#[test]
fn the_phase_profile_times_every_pass_and_changes_no_result() {
    // Two embedded LSTM layers with the output layer in chunks, so every phase has kernels
    // (the chunks' recomputation in the backward included).
    let cfg = ModelConfig {
        cell: Cell::Lstm,
        embed: Some(4),
        ..ModelConfig::language_model(7, 6, 2)
    };
    let name = "phase profile";
    let Some((_, mut plain, mut rng)) = engines(name, &cfg) else {
        return;
    };
    if !plain.context().has_timestamps() {
        eprintln!("{name}: skipped, the adapter has no timestamp queries");
        return;
    }
    let mut profiled =
        GpuEngine::new(common::gpu(name).unwrap(), &cfg, &plain.params().unwrap()).unwrap();
    let (steps, rows) = (3, 2);
    let opt = OptimizerConfig::new(OptimizerKind::Adam).with_clip(1.0);
    let batches: Vec<Batch> = (0..3)
        .map(|_| common::random_batch(&mut rng, &cfg, steps, rows, None))
        .collect();
    profiled.set_phase_profile(true).unwrap();
    for e in [&mut plain, &mut profiled] {
        // Two rows of logits per chunk: three chunks.
        e.set_logit_budget(2 * 7).unwrap();
        e.reset_state(rows).unwrap();
        for batch in &batches {
            let before = e.submit_counts();
            e.take_phase_times().unwrap();
            e.upload_batch(batch).unwrap();
            e.zero_grads().unwrap();
            e.forward().unwrap();
            e.backward().unwrap();
            e.optimizer_step(&opt, 0.01).unwrap();
            let times = e.take_phase_times().unwrap();
            e.carry_state().unwrap();
            let Some(times) = times else {
                continue;
            };
            let passes = e.submit_counts().passes - before.passes;
            assert_eq!(times.passes, passes, "every pass is timed");
            for phase in StepPhase::ALL {
                let ns = times.of(phase);
                match phase {
                    StepPhase::Other => assert_eq!(ns, 0.0, "an untagged kernel ran"),
                    _ => assert!(ns > 0.0, "{phase:?}: no device time"),
                }
            }
            assert!(times.total() > 0.0);
        }
    }
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    assert_eq!(
        bits(profiled.params().unwrap()),
        bits(plain.params().unwrap())
    );
    assert_eq!(
        bits(profiled.state().unwrap()),
        bits(plain.state().unwrap())
    );
    assert_eq!(plain.take_phase_times().unwrap(), None);
    profiled.set_phase_profile(false).unwrap();
    assert_eq!(profiled.take_phase_times().unwrap(), None);
}

#[test]
fn auto_picks_the_recurrence_kernel_by_cell_and_size() {
    if common::gpu("recurrence choice").is_none() {
        return;
    }
    let mut rng = common::rng("recurrence choice");
    let big = unroll::engine::ROWS_BELOW_HIDDEN;
    // (cell, H, setting, expected kernel)
    let cases = [
        (Cell::Rnn, 8, Recurrence::Auto, "rows"),
        (Cell::Rnn, big - 1, Recurrence::Auto, "rows"),
        (Cell::Rnn, big, Recurrence::Auto, "wide"),
        (Cell::Rnn, 8, Recurrence::Wide, "wide"),
        (Cell::Rnn, 8, Recurrence::Steps, "steps"),
        (Cell::Gru, 8, Recurrence::Auto, "wide"),
        (Cell::Lstm, 8, Recurrence::Rows, "wide"),
        (Cell::Lstm, 8, Recurrence::Steps, "steps"),
    ];
    for (cell, h, setting, want) in cases {
        let cfg = ModelConfig {
            cell,
            ..ModelConfig::language_model(5, h, 1)
        };
        let params = vec![0.0; ParamLayout::new(&cfg).unwrap().len()];
        let mut gpu = GpuEngine::new(GpuContext::open(true).unwrap(), &cfg, &params).unwrap();
        assert_eq!(gpu.recurrence_kernel(), None);
        gpu.set_recurrence(setting).unwrap();
        gpu.reset_state(2).unwrap();
        gpu.upload_batch(&common::random_batch(&mut rng, &cfg, 2, 2, None))
            .unwrap();
        assert_eq!(
            gpu.recurrence_kernel(),
            Some(want),
            "{cell:?} H={h} {setting:?}"
        );
    }
}

#[test]
fn passes_beyond_the_query_set_are_counted_as_untimed() {
    use unroll::engine::gpu::buffers::{at, storage};
    use unroll::engine::gpu::matmul::{RowsEpilogue, matmul_rows, plain};
    use unroll::engine::gpu::pipelines::Pipelines;
    use unroll::engine::gpu::plan::{Plan, Recorder};
    use unroll::engine::gpu::profile::Profiler;
    let Some(ctx) = common::gpu("untimed passes") else {
        return;
    };
    if !ctx.has_timestamps() {
        return;
    }
    // 2100 one-unit tanh steps whose phase alternates: 2100 passes, 2048 of them timed.
    let (w, states) = (
        storage(&ctx, "w", 1).unwrap(),
        storage(&ctx, "states", 2).unwrap(),
    );
    let calls = (0..2100)
        .map(|_| {
            matmul_rows(
                &ctx,
                (1, 1, 1),
                Some(0),
                plain(at(&w, 0)),
                at(&states, 1),
                RowsEpilogue::Activate(Activation::Tanh),
            )
            .unwrap()
        })
        .collect();
    let marks: Vec<(usize, StepPhase)> = (0..2100).map(|i| (i, StepPhase::ALL[i % 2])).collect();
    let mut pipes = Pipelines::default();
    let plan = Plan::build(&ctx, &mut pipes, "passes", calls)
        .unwrap()
        .in_phases(&marks);
    let mut rec = Recorder::default();
    rec.set_profiler(Some(Profiler::new(&ctx).unwrap()));
    rec.record(&plan);
    rec.submit(&ctx).unwrap();
    let times = rec.take_phase_times().unwrap();
    assert_eq!(rec.counts().passes, 2100);
    assert_eq!((times.passes, times.untimed_passes), (2048, 52));
    assert!(times.of(StepPhase::ALL[0]) > 0.0 && times.of(StepPhase::ALL[1]) > 0.0);
}
