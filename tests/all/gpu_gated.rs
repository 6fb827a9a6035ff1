//! The GRU, LSTM and dropout kernels against their CPU twins (poisoned outputs, T=1, B=1, H not a
//! multiple of the workgroup), and whole training steps of each gated cell and depth on the GPU
//! engine against the CPU engine, with masks, carried (h, c) and dropout masks that must agree.

use ndarray::Array2;
use unroll::engine::Dropout;
use unroll::engine::cpu::dropout::{self as cpu_dropout, MaskKey};
use unroll::engine::cpu::{CpuEngine, gru as cpu_gru, lstm as cpu_lstm};
use unroll::engine::gpu::gru::{GateStep, GruGrads};
use unroll::engine::gpu::pipelines::Pipelines;
use unroll::engine::gpu::plan::run_now;
use unroll::engine::gpu::{GpuEngine, buffers, dropout, gru, lstm};
use unroll::engine::{Batch, Engine};
use unroll::model::{Cell, InputKind, ModelConfig, OutputKind, ParamLayout};
use unroll::train::optim::{OptimizerConfig, OptimizerKind};

use crate::common::{self, assert_close, to_f64};

const POISON: f32 = 1e30;
/// (B, H) of the kernel tests: one row, H below and above the workgroup of 64, not multiples.
const SHAPES: &[(usize, usize)] = &[(1, 1), (3, 5), (2, 67)];

fn check(what: &str, gpu: &[f32], cpu: &[f32]) {
    assert_close(what, &to_f64(gpu), &to_f64(cpu), 1e-4, 1e-5);
}

fn arr(v: &[f32], rows: usize, cols: usize) -> Array2<f32> {
    Array2::from_shape_vec((rows, cols), v.to_vec()).unwrap()
}

/// `blocks` blocks of `len` poison values with `data` at block `at`.
fn poisoned_with(blocks: usize, len: usize, fill: &[(usize, &[f32])]) -> Vec<f32> {
    let mut v = vec![POISON; blocks * len];
    for (at, data) in fill {
        v[at * len..(at + 1) * len].copy_from_slice(data);
    }
    v
}

fn block(v: &[f32], at: usize, len: usize) -> &[f32] {
    &v[at * len..(at + 1) * len]
}

/// Runs one call on fresh device buffers made from `inputs` and reads them all back.
struct Kit {
    ctx: unroll::engine::gpu::GpuContext,
    pipes: Pipelines,
}

impl Kit {
    fn new(test: &str) -> Option<(Kit, rand_chacha::ChaCha8Rng)> {
        let ctx = common::gpu(test)?;
        Some((
            Kit {
                ctx,
                pipes: Pipelines::default(),
            },
            common::rng(test),
        ))
    }

    fn upload(&self, data: &[f32]) -> wgpu::Buffer {
        buffers::storage_with(&self.ctx, "test", data).unwrap()
    }

    fn read(&self, b: &wgpu::Buffer, n: usize) -> Vec<f32> {
        buffers::read(&self.ctx, b, 0, n).unwrap()
    }
}

#[test]
fn gru_step_forward_and_backward_match_cpu() {
    let Some((mut k, mut rng)) = Kit::new("gru steps") else {
        return;
    };
    for &(b, h) in SHAPES {
        for t in [0usize, 1] {
            let what = format!("gru B={b} H={h} t={t}");
            let (bh, bg) = (b * h, 3 * b * h);
            let step = GateStep {
                rows: b,
                hidden: h,
                gates: 3,
                t,
            };
            let a_ih = common::uniform(&mut rng, bg, 1.5);
            let a_hh = common::uniform(&mut rng, bg, 1.5);
            let h_prev = common::uniform(&mut rng, bh, 1.0);
            // Forward on the CPU.
            let mut gates_cpu = arr(&a_ih, b, 3 * h);
            let mut h_cpu = Array2::<f32>::zeros((b, h));
            cpu_gru::gru_step_forward(
                gates_cpu.view_mut(),
                arr(&a_hh, b, 3 * h).view(),
                arr(&h_prev, b, h).view(),
                h_cpu.view_mut(),
            );
            let gates = k.upload(&poisoned_with(t + 2, bg, &[(t, &a_ih)]));
            let ahh = k.upload(&poisoned_with(t + 2, bg, &[(t, &a_hh)]));
            let states = k.upload(&poisoned_with(t + 3, bh, &[(t, &h_prev)]));
            let call = gru::gru_step_forward(&k.ctx, step, &gates, &ahh, &states).unwrap();
            run_now(&k.ctx, &mut k.pipes, vec![call]).unwrap();
            let g_out = k.read(&gates, (t + 2) * bg);
            let s_out = k.read(&states, (t + 3) * bh);
            let gates_flat: Vec<f32> = gates_cpu.iter().copied().collect();
            let h_flat: Vec<f32> = h_cpu.iter().copied().collect();
            check(
                &format!("{what} gates"),
                &g_out,
                &poisoned_with(t + 2, bg, &[(t, &gates_flat)]),
            );
            check(
                &format!("{what} states"),
                &s_out,
                &poisoned_with(t + 3, bh, &[(t, &h_prev), (t + 1, &h_flat)]),
            );

            // Backward: ds holds dh_{t-1} at block t-1 and dh_t at block t.
            let dh = common::uniform(&mut rng, bh, 1.0);
            let dh_prev = common::uniform(&mut rng, bh, 1.0);
            let mut dih_cpu = Array2::<f32>::zeros((b, 3 * h));
            let mut dhh_cpu = Array2::<f32>::zeros((b, 3 * h));
            let mut dprev_cpu = arr(&dh_prev, b, h);
            cpu_gru::gru_step_backward(
                gates_cpu.view(),
                arr(&a_hh, b, 3 * h).view(),
                arr(&h_prev, b, h).view(),
                arr(&dh, b, h).view(),
                dih_cpu.view_mut(),
                dhh_cpu.view_mut(),
                (t > 0).then(|| dprev_cpu.view_mut()),
            );
            let mut ds_in = vec![(t, dh.as_slice())];
            if t > 0 {
                ds_in.push((t - 1, dh_prev.as_slice()));
            }
            let ds = k.upload(&poisoned_with(t + 2, bh, &ds_in));
            let da_ih = k.upload(&vec![POISON; (t + 2) * bg]);
            let da_hh = k.upload(&vec![POISON; (t + 2) * bg]);
            let grads = GruGrads {
                gates: &gates,
                a_hh: &ahh,
                states: &states,
                ds: &ds,
                da_ih: &da_ih,
                da_hh: &da_hh,
            };
            let call = gru::gru_step_backward(&k.ctx, step, grads).unwrap();
            run_now(&k.ctx, &mut k.pipes, vec![call]).unwrap();
            let flat = |a: &Array2<f32>| a.iter().copied().collect::<Vec<f32>>();
            check(
                &format!("{what} da_ih"),
                &k.read(&da_ih, (t + 2) * bg),
                &poisoned_with(t + 2, bg, &[(t, &flat(&dih_cpu))]),
            );
            check(
                &format!("{what} da_hh"),
                &k.read(&da_hh, (t + 2) * bg),
                &poisoned_with(t + 2, bg, &[(t, &flat(&dhh_cpu))]),
            );
            let ds_out = k.read(&ds, (t + 2) * bh);
            check(&format!("{what} dh kept"), block(&ds_out, t, bh), &dh);
            if t > 0 {
                check(
                    &format!("{what} dh_prev"),
                    block(&ds_out, t - 1, bh),
                    &flat(&dprev_cpu),
                );
            }
            check(
                &format!("{what} ds guard"),
                block(&ds_out, t + 1, bh),
                &vec![POISON; bh],
            );
        }
    }
}

#[test]
fn lstm_step_forward_and_backward_match_cpu() {
    let Some((mut k, mut rng)) = Kit::new("lstm steps") else {
        return;
    };
    for &(b, h) in SHAPES {
        for t in [0usize, 1] {
            let what = format!("lstm B={b} H={h} t={t}");
            let (bh, bg) = (b * h, 4 * b * h);
            let step = GateStep {
                rows: b,
                hidden: h,
                gates: 4,
                t,
            };
            let a_ih = common::uniform(&mut rng, bg, 1.5);
            let a_hh = common::uniform(&mut rng, bg, 1.5);
            let c_prev = common::uniform(&mut rng, bh, 1.5);
            let mut gates_cpu = arr(&a_ih, b, 4 * h);
            let mut c_cpu = Array2::<f32>::zeros((b, h));
            let mut h_cpu = Array2::<f32>::zeros((b, h));
            cpu_lstm::lstm_step_forward(
                gates_cpu.view_mut(),
                arr(&a_hh, b, 4 * h).view(),
                arr(&c_prev, b, h).view(),
                c_cpu.view_mut(),
                h_cpu.view_mut(),
            );
            let gates = k.upload(&poisoned_with(t + 2, bg, &[(t, &a_ih)]));
            let ahh = k.upload(&poisoned_with(t + 2, bg, &[(t, &a_hh)]));
            let cells = k.upload(&poisoned_with(t + 3, bh, &[(t, &c_prev)]));
            let states = k.upload(&vec![POISON; (t + 3) * bh]);
            let call =
                lstm::lstm_step_forward(&k.ctx, step, &gates, &ahh, (&cells, &states)).unwrap();
            run_now(&k.ctx, &mut k.pipes, vec![call]).unwrap();
            let flat = |a: &Array2<f32>| a.iter().copied().collect::<Vec<f32>>();
            check(
                &format!("{what} gates"),
                &k.read(&gates, (t + 2) * bg),
                &poisoned_with(t + 2, bg, &[(t, &flat(&gates_cpu))]),
            );
            check(
                &format!("{what} cells"),
                &k.read(&cells, (t + 3) * bh),
                &poisoned_with(t + 3, bh, &[(t, &c_prev), (t + 1, &flat(&c_cpu))]),
            );
            check(
                &format!("{what} states"),
                &k.read(&states, (t + 3) * bh),
                &poisoned_with(t + 3, bh, &[(t + 1, &flat(&h_cpu))]),
            );

            // Backward from the last step (dc from zero) and from an inner one.
            for last in [true, false] {
                let dh = common::uniform(&mut rng, bh, 1.0);
                let dc_in = common::uniform(&mut rng, bh, 1.0);
                let mut dc_cpu = if last {
                    Array2::<f32>::zeros((b, h))
                } else {
                    arr(&dc_in, b, h)
                };
                let mut da_cpu = Array2::<f32>::zeros((b, 4 * h));
                cpu_lstm::lstm_step_backward(
                    gates_cpu.view(),
                    arr(&c_prev, b, h).view(),
                    c_cpu.view(),
                    arr(&dh, b, h).view(),
                    dc_cpu.view_mut(),
                    da_cpu.view_mut(),
                );
                let ds = k.upload(&poisoned_with(t + 2, bh, &[(t, &dh)]));
                let dc = k.upload(&dc_in);
                let da = k.upload(&vec![POISON; (t + 2) * bg]);
                let call =
                    lstm::lstm_step_backward(&k.ctx, step, (&gates, &cells), (&ds, &dc, &da), last)
                        .unwrap();
                run_now(&k.ctx, &mut k.pipes, vec![call]).unwrap();
                let w = format!("{what} last={last}");
                check(
                    &format!("{w} da"),
                    &k.read(&da, (t + 2) * bg),
                    &poisoned_with(t + 2, bg, &[(t, &flat(&da_cpu))]),
                );
                check(&format!("{w} dc"), &k.read(&dc, bh), &flat(&dc_cpu));
            }
        }
    }
}

#[test]
fn dropout_masks_are_identical_on_both_engines() {
    let Some((mut k, mut rng)) = Kit::new("dropout kernels") else {
        return;
    };
    for (n, p) in [(1usize, 0.5f32), (1000, 0.3), (4099, 0.0)] {
        let key = MaskKey::new(Some(Dropout { p, seed: 42 }), 1);
        let x = common::uniform(&mut rng, n, 1.0);
        let mut y_cpu = Array2::<f32>::zeros((1, n));
        cpu_dropout::dropout_forward(arr(&x, 1, n).view(), key, y_cpu.view_mut());
        let xb = k.upload(&x);
        let yb = k.upload(&vec![POISON; n + 1]);
        let call =
            dropout::dropout_forward(&k.ctx, n, buffers::at(&xb, 0), buffers::at(&yb, 1), key)
                .unwrap();
        run_now(&k.ctx, &mut k.pipes, vec![call]).unwrap();
        let y = k.read(&yb, n + 1);
        assert_eq!(y[0], POISON, "dropout forward wrote before its block");
        let y_cpu: Vec<f32> = y_cpu.iter().copied().collect();
        assert_eq!(&y[1..], y_cpu.as_slice(), "dropout forward n={n} p={p}");
        let dropped = y_cpu.iter().filter(|v| **v == 0.0).count() as f64 / n as f64;
        if n >= 1000 {
            assert!(
                (dropped - p as f64).abs() < 0.05,
                "dropped {dropped}, p {p}"
            );
        }
        let mut d_cpu = arr(&x, 1, n);
        cpu_dropout::dropout_backward(key, d_cpu.view_mut());
        let call = dropout::dropout_backward(&k.ctx, n, buffers::at(&xb, 0), key).unwrap();
        run_now(&k.ctx, &mut k.pipes, vec![call]).unwrap();
        let d_cpu: Vec<f32> = d_cpu.iter().copied().collect();
        assert_eq!(k.read(&xb, n), d_cpu, "dropout backward n={n} p={p}");
    }
}

/// Three training steps on both engines from the same random parameters and (h, c), with masks
/// and carried state, comparing loss, outputs, gradients, parameters and state.
fn steps_match(cfg: &ModelConfig, (steps, rows): (usize, usize), dropout: f32, name: &str) {
    let Some(ctx) = common::gpu(name) else {
        return;
    };
    let mut rng = common::rng(name);
    let layout = ParamLayout::new(cfg).unwrap();
    let params = common::uniform(&mut rng, layout.len(), 0.5);
    let mut cpu = CpuEngine::<f32>::new(cfg, &params).unwrap();
    let mut gpu = GpuEngine::new(ctx, cfg, &params).unwrap();
    let state = common::uniform(&mut rng, rows * cfg.state_size_per_row(), 0.8);
    cpu.set_state(rows, &state).unwrap();
    gpu.set_state(rows, &state).unwrap();
    // Plain SGD: Adam would magnify the rounding noise of gradients that are almost zero.
    let opt = OptimizerConfig::new(OptimizerKind::Sgd).with_clip(1.0);
    for step in 0..3u64 {
        let lens: Vec<usize> = (0..rows)
            .map(|b| if b == 0 { steps } else { 1 + (b * 5) % steps })
            .collect();
        let batch: Batch = common::random_batch(&mut rng, cfg, steps, rows, Some(&lens));
        let d = (dropout > 0.0).then_some(Dropout {
            p: dropout,
            seed: 7 + step,
        });
        let what = format!("{name} step {step}");
        common::forward_backward_both([&mut cpu, &mut gpu], &batch, d, &what);
        common::close_steps(
            &format!("{what} outputs"),
            &gpu.outputs().unwrap(),
            &cpu.outputs().unwrap(),
        );
        common::update_both([&mut cpu, &mut gpu], &opt, true, &what);
    }
}

#[test]
fn gru_training_steps_match_cpu_at_every_depth() {
    for &(layers, input, output, shape) in &[
        (1, InputKind::OneHot, OutputKind::Softmax, (4, 3)),
        (2, InputKind::Dense, OutputKind::Identity, (3, 2)),
        (3, InputKind::OneHot, OutputKind::Sigmoid, (1, 1)),
    ] {
        let cfg = common::cell_config(Cell::Gru, input, output, (6, 9, 5, layers));
        steps_match(
            &cfg,
            shape,
            0.0,
            &format!("gru layers={layers} T,B={shape:?}"),
        );
    }
}

#[test]
fn lstm_training_steps_match_cpu_at_every_depth() {
    for &(layers, input, output, shape) in &[
        (1, InputKind::OneHot, OutputKind::Softmax, (4, 3)),
        (2, InputKind::Dense, OutputKind::Identity, (3, 2)),
        (3, InputKind::OneHot, OutputKind::Sigmoid, (1, 1)),
    ] {
        let cfg = common::cell_config(Cell::Lstm, input, output, (6, 9, 5, layers));
        steps_match(
            &cfg,
            shape,
            0.0,
            &format!("lstm layers={layers} T,B={shape:?}"),
        );
    }
}

#[test]
fn training_steps_with_dropout_match_cpu_for_every_cell() {
    for cell in [Cell::Rnn, Cell::Gru, Cell::Lstm] {
        let cfg = common::cell_config(cell, InputKind::OneHot, OutputKind::Softmax, (6, 33, 5, 3));
        steps_match(&cfg, (3, 2), 0.4, &format!("{cell:?} dropout"));
    }
}
