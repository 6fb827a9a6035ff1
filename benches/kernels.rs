//! Criterion benches of the kernels of one char-LM training step, on the CPU twins
//! (`engine::cpu::*`) and, where wgpu finds an adapter, on the WGSL kernels through their
//! launchers: the GEMMs of the step, the fused recurrent step forward and backward, the CPU's
//! packed products of a gated step (every SIMD kernel the processor runs), the fused softmax
//! cross-entropy, the gradient norm and the SGD update.
//!
//! Shapes: V = 65, B = 32, T = 64, H = 128 and 512 (the CPU anchors of docs/ARCHITECTURE.md, Tuning numbers).
//! Throughput: GEMMs and recurrent steps count FLOP (`2 m n k`; criterion prints them as
//! "elem/s", read GFLOP/s for Gelem/s); the loss counts logits, the optimizer and the norm
//! count parameters. GPU kernels run as 16 dispatches in one compute pass per submit (as in a
//! step), the queue is waited for before the clock is read, and the time is per dispatch.
//!
//! Run: `cargo bench --bench kernels` (a filter narrows it: `cargo bench --bench kernels -- cpu`).

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ndarray::{Array2, ArrayView2};
use unroll::engine::cpu::packed::{Kernel, StepWeight};
use unroll::engine::cpu::{loss as cpu_loss, matmul as cpu_matmul, optim as cpu_optim};
use unroll::engine::cpu::{reduce as cpu_reduce, rnn as cpu_rnn};
use unroll::engine::gpu::buffers::{at, storage_with};
use unroll::engine::gpu::matmul::{Operand, matmul, plain, transposed};
use unroll::engine::gpu::pipelines::Pipelines;
use unroll::engine::gpu::plan::{Call, Plan, Recorder};
use unroll::engine::gpu::reduce::{NORM_SLOT, SCRATCH_LEN};
use unroll::engine::gpu::rnn::Dims;
use unroll::engine::gpu::{GpuContext, loss, optim, reduce, rnn};
use unroll::model::{Activation, ModelConfig, OutputKind, ParamLayout};
use unroll::train::optim::{OptimizerConfig, OptimizerKind};

const V: usize = 65;
const B: usize = 32;
const T: usize = 64;
const HIDDEN: [usize; 2] = [128, 512];
/// GPU dispatches per submit.
const PER_SUBMIT: usize = 16;

/// A GEMM of the step: name, (m, n, k), whether A and B are used transposed (as the engines
/// use them: `S W_o^T`, `dlogits W_o`, `dlogits^T S`, `dZ^T S_prev`, `s W_hh^T`).
type Gemm = (&'static str, (usize, usize, usize), bool, bool);

fn gemms(h: usize) -> [Gemm; 5] {
    let n = B * T;
    [
        ("output projection", (n, V, h), false, true),
        ("dS = dlogits W_o", (n, h, V), false, false),
        ("dW_o = dlogits^T S", (V, h, n), true, false),
        ("dW_hh = dZ^T S_prev", (h, h, n), true, false),
        ("recurrent product", (B, h, h), false, true),
    ]
}

/// Deterministic values in [-scale, scale).
fn values(len: usize, salt: u32, scale: f32) -> Vec<f32> {
    (0..len)
        .map(|i| {
            let x = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(salt) >> 8;
            scale * (x as f32 / (1u32 << 23) as f32 - 1.0)
        })
        .collect()
}

fn array(rows: usize, cols: usize, salt: u32, scale: f32) -> Array2<f32> {
    Array2::from_shape_vec((rows, cols), values(rows * cols, salt, scale))
        .expect("the length matches")
}

/// A stored operand for `op(X)` of shape [r, c]: X itself, or X^T stored [c, r].
fn operand(r: usize, c: usize, trans: bool, salt: u32) -> Array2<f32> {
    if trans {
        array(c, r, salt, 0.1)
    } else {
        array(r, c, salt, 0.1)
    }
}

fn op(x: &Array2<f32>, trans: bool) -> ArrayView2<'_, f32> {
    if trans { x.t() } else { x.view() }
}

fn lm(h: usize) -> (ModelConfig, usize) {
    let cfg = ModelConfig::language_model(V, h, 1);
    let n = ParamLayout::new(&cfg).expect("a valid model").len();
    (cfg, n)
}

fn cpu_kernels(c: &mut Criterion) {
    for h in HIDDEN {
        let mut g = c.benchmark_group(format!("cpu/H={h}"));
        for (name, (m, n, k), ta, tb) in gemms(h) {
            let a = operand(m, k, ta, 1);
            let b = operand(k, n, tb, 2);
            let mut out = Array2::<f32>::zeros((m, n));
            g.throughput(Throughput::Elements((2 * m * n * k) as u64));
            g.bench_function(BenchmarkId::new("matmul flop", name), |bench| {
                bench
                    .iter(|| cpu_matmul::matmul(op(&a, ta), op(&b, tb), &mut out.view_mut(), false))
            });
        }
        // A gated step's products with op(W) packed once (`engine::cpu::packed`), on every SIMD
        // kernel this processor runs: h W_hh^T [B, H] x [H, 4H] and da W_hh [B, 4H] x [4H, H].
        for (name, (k, n)) in [("h W_hh^T", (h, 4 * h)), ("da W_hh", (4 * h, h))] {
            let (x, w) = (array(B, k, 11, 1.0), array(k, n, 12, 0.1));
            let mut out = Array2::<f32>::zeros((B, n));
            g.throughput(Throughput::Elements((2 * B * n * k) as u64));
            for kernel in [Kernel::Avx512, Kernel::Avx2] {
                if !kernel.supported() {
                    continue;
                }
                let packed = StepWeight::with_kernel(w.view(), Some(kernel));
                let id = BenchmarkId::new(format!("packed LSTM step flop {kernel:?}"), name);
                g.bench_function(id, |bench| {
                    bench.iter(|| packed.product(x.view(), &mut out.view_mut()))
                });
            }
        }
        let w_hh = array(h, h, 3, 1.0 / (h as f32).sqrt());
        let (u, prev) = (array(B, h, 4, 1.0), array(B, h, 5, 1.0));
        let mut s = Array2::<f32>::zeros((B, h));
        g.throughput(Throughput::Elements((2 * B * h * h) as u64));
        g.bench_function("rnn_step_forward flop", |bench| {
            bench.iter(|| {
                cpu_rnn::rnn_step_forward(
                    Some(u.view()),
                    prev.view(),
                    w_hh.view(),
                    Activation::Tanh,
                    s.view_mut(),
                )
            })
        });
        let (ds, dz_next) = (array(B, h, 6, 0.1), array(B, h, 7, 0.1));
        let mut dz = Array2::<f32>::zeros((B, h));
        g.bench_function("rnn_step_backward flop", |bench| {
            bench.iter(|| {
                cpu_rnn::rnn_step_backward(
                    Some(ds.view()),
                    Some(dz_next.view()),
                    w_hh.view(),
                    prev.view(),
                    Activation::Tanh,
                    dz.view_mut(),
                )
            })
        });
        let n = B * T;
        let mut logits = array(n, V, 8, 2.0);
        let mut dlogits = Array2::<f32>::zeros((n, V));
        let targets: Vec<u32> = (0..n).map(|r| (r * 7 % V) as u32).collect();
        g.throughput(Throughput::Elements((n * V) as u64));
        g.bench_function("softmax_cross_entropy logits", |bench| {
            bench.iter(|| {
                cpu_loss::softmax_cross_entropy(
                    logits.view_mut(),
                    &targets,
                    None,
                    n as f64,
                    Some(dlogits.view_mut()),
                )
            })
        });
        let (_, np) = lm(h);
        let mut p = values(np, 9, 0.1);
        let grads = values(np, 10, 0.01);
        let (mut m, mut v) = (vec![0.0f32; np], vec![0.0f32; np]);
        let cfg = OptimizerConfig::new(OptimizerKind::Sgd).with_clip(5.0);
        g.throughput(Throughput::Elements(np as u64));
        g.bench_function("sum_of_squares params", |bench| {
            bench.iter(|| cpu_reduce::sum_of_squares(&grads))
        });
        g.bench_function("optimizer_update sgd params", |bench| {
            bench.iter(|| {
                cpu_optim::optimizer_update(&cfg, 1e-3, 1, 1.0, &mut p, &grads, &mut m, &mut v)
            })
        });
        g.finish();
    }
}

/// A plan of dispatches, timed as a whole (one submit per criterion iteration).
struct GpuRun<'a> {
    ctx: &'a GpuContext,
    plan: Plan,
}

impl<'a> GpuRun<'a> {
    fn new(ctx: &'a GpuContext, pipes: &mut Pipelines, calls: Vec<Call>) -> Self {
        let plan = Plan::build(ctx, pipes, "bench", calls).expect("the plan builds");
        GpuRun { ctx, plan }
    }

    /// Wall time of `iters` submits of the plan, waited for at the end.
    fn time(&self, iters: u64) -> Duration {
        let mut rec = Recorder::default();
        let t0 = Instant::now();
        for _ in 0..iters {
            rec.record(&self.plan);
            rec.submit(self.ctx).expect("submit");
        }
        self.ctx.wait().expect("wait");
        t0.elapsed()
    }
}

fn gpu_kernels(c: &mut Criterion) {
    let ctx = match GpuContext::open(true) {
        Ok(ctx) => ctx,
        Err(e) => {
            eprintln!("gpu kernel benches skipped: {e}");
            return;
        }
    };
    eprintln!("gpu kernel benches on {}", ctx.info);
    let mut pipes = Pipelines::default();
    for h in HIDDEN {
        let mut g = c.benchmark_group(format!("gpu/H={h}"));
        for (name, (m, n, k), ta, tb) in gemms(h) {
            let a = storage_with(&ctx, "a", &values(m * k, 1, 0.1)).expect("alloc");
            let b = storage_with(&ctx, "b", &values(k * n, 2, 0.1)).expect("alloc");
            let out = storage_with(&ctx, "c", &vec![0.0f32; m * n]).expect("alloc");
            let opnd = |x, t| -> Operand<'_> {
                if t {
                    transposed(at(x, 0))
                } else {
                    plain(at(x, 0))
                }
            };
            let calls = (0..PER_SUBMIT)
                .map(|_| {
                    matmul(
                        &ctx,
                        (m, n, k),
                        opnd(&a, ta),
                        opnd(&b, tb),
                        at(&out, 0),
                        None,
                        false,
                    )
                })
                .collect::<Result<Vec<_>, _>>()
                .expect("matmul call")
                .into_iter()
                .flatten()
                .collect();
            let run = GpuRun::new(&ctx, &mut pipes, calls);
            g.throughput(Throughput::Elements((2 * m * n * k * PER_SUBMIT) as u64));
            g.bench_function(BenchmarkId::new("matmul flop x16", name), |bench| {
                bench.iter_custom(|iters| run.time(iters))
            });
        }
        let (cfg, np) = lm(h);
        let layout = ParamLayout::new(&cfg).expect("layout");
        let lo = layout.layer(0);
        let params = storage_with(&ctx, "params", &values(np, 3, 0.05)).expect("alloc");
        let d = Dims {
            rows: B,
            hidden: h,
            inputs: V,
            n: B * T,
        };
        let states = storage_with(&ctx, "states", &values((T + 1) * B * h, 4, 0.5)).expect("alloc");
        let fwd = (0..T)
            .map(|t| {
                rnn::rnn_step_forward(
                    &ctx,
                    d,
                    &params,
                    lo.weight_hh,
                    &states,
                    (t * B * h, (t + 1) * B * h),
                    Activation::Tanh,
                )
            })
            .collect::<Result<Vec<_>, _>>()
            .expect("step call");
        let run = GpuRun::new(&ctx, &mut pipes, fwd);
        g.throughput(Throughput::Elements((2 * B * h * h * T) as u64));
        g.bench_function("rnn_step_forward flop x T", |bench| {
            bench.iter_custom(|iters| run.time(iters))
        });
        let work = storage_with(&ctx, "ds", &values(T * B * h, 5, 0.01)).expect("alloc");
        let bwd = (0..T)
            .rev()
            .map(|t| {
                let next = (t + 1 < T).then_some((t + 1) * B * h);
                rnn::rnn_step_backward(
                    &ctx,
                    d,
                    &params,
                    lo.weight_hh,
                    at(&states, (t + 1) * B * h),
                    &work,
                    (next, t * B * h),
                    Activation::Tanh,
                )
            })
            .collect::<Result<Vec<_>, _>>()
            .expect("step call");
        let run = GpuRun::new(&ctx, &mut pipes, bwd);
        g.bench_function("rnn_step_backward flop x T", |bench| {
            bench.iter_custom(|iters| run.time(iters))
        });
        let n = B * T;
        let targets: Vec<u32> = (0..n).map(|r| (r * 7 % V) as u32).collect();
        let targets = storage_with(&ctx, "targets", &targets).expect("alloc");
        let mask = storage_with(&ctx, "mask", &vec![1.0f32; n]).expect("alloc");
        let logits = storage_with(&ctx, "logits", &values(n * V, 6, 2.0)).expect("alloc");
        let dlogits = storage_with(&ctx, "dlogits", &vec![0.0f32; n * V]).expect("alloc");
        let row_loss = storage_with(&ctx, "row_loss", &vec![0.0f32; n]).expect("alloc");
        let calls = (0..PER_SUBMIT)
            .map(|_| {
                loss::loss(
                    &ctx,
                    OutputKind::Softmax,
                    loss::LossBuffers {
                        targets: &targets,
                        mask: &mask,
                        logits: &logits,
                        dlogits: &dlogits,
                        row_loss: &row_loss,
                    },
                    loss::LossArgs::new(0..n, V, n as f64)?,
                )
            })
            .collect::<Result<Vec<_>, _>>()
            .expect("loss call");
        let run = GpuRun::new(&ctx, &mut pipes, calls);
        g.throughput(Throughput::Elements((n * V * PER_SUBMIT) as u64));
        g.bench_function("softmax_cross_entropy logits x16", |bench| {
            bench.iter_custom(|iters| run.time(iters))
        });
        let grads = storage_with(&ctx, "grads", &values(np, 7, 0.01)).expect("alloc");
        let m = storage_with(&ctx, "m", &vec![0.0f32; np]).expect("alloc");
        let v = storage_with(&ctx, "v", &vec![0.0f32; np]).expect("alloc");
        let scratch = storage_with(&ctx, "scratch", &vec![0.0f32; SCRATCH_LEN]).expect("alloc");
        let opt = OptimizerConfig::new(OptimizerKind::Sgd).with_clip(5.0);
        let mut calls = Vec::new();
        for _ in 0..PER_SUBMIT {
            calls.extend(
                reduce::sum(&ctx, np, at(&grads, 0), true, &scratch, NORM_SLOT).expect("norm"),
            );
            calls.push(
                optim::optimizer_update(
                    &ctx,
                    optim::OptimBuffers {
                        scratch: &scratch,
                        params: &params,
                        grads: &grads,
                        m: &m,
                        v: &v,
                    },
                    optim::OptimArgs::new(&opt, 1e-3, 1, np, NORM_SLOT).expect("args"),
                )
                .expect("update"),
            );
        }
        let run = GpuRun::new(&ctx, &mut pipes, calls);
        g.throughput(Throughput::Elements((np * PER_SUBMIT) as u64));
        g.bench_function("norm + optimizer_update sgd params x16", |bench| {
            bench.iter_custom(|iters| run.time(iters))
        });
        g.finish();
    }
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = kernels;
    config = config();
    targets = cpu_kernels, gpu_kernels
}
criterion_main!(kernels);
