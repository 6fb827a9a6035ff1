//! Criterion benches of whole char-LM training steps (`unroll::bench::StepBench`: upload,
//! forward, BPTT, SGD with clip 5, state carry), throughput in tokens (B * T per step). The
//! CPU runs the anchors of docs/ARCHITECTURE.md, Tuning numbers (B=32, T=64, H=128 and 512); the GPU, when wgpu finds
//! an adapter, the tanh-RNN rows of the GPU anchors (only H=128 on a software rasteriser).
//! Every sample's steps are recorded back to back and the device is waited for once at the
//! end, before the clock is read.
//!
//! Run: `cargo bench --bench step` (`-- cpu` or `-- gpu` narrows it).

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use unroll::bench::{
    BenchEngine, CPU_SWEEP, DeviceKind, GPU_SWEEP, StepBench, StepShape, parse_cell,
};
use unroll::engine::gpu::GpuContext;
use unroll::model::{ParamLayout, init_params};

const V: usize = 65;

fn shapes(table: &[(&str, usize, usize, usize)]) -> Vec<StepShape> {
    table
        .iter()
        .filter_map(|&(cell, h, b, t)| Some(StepShape::new(parse_cell(cell).ok()?, V, h, b, t)))
        .collect()
}

fn bench_steps(c: &mut Criterion, group: &str, benches: Vec<StepBench>) {
    let mut g = c.benchmark_group(group);
    for mut b in benches {
        let s = b.shape;
        g.throughput(Throughput::Elements(s.tokens() as u64));
        let id = format!("{:?} H={} B={} T={}", s.cell, s.hidden, s.batch, s.seq_len);
        g.bench_function(BenchmarkId::new("train step tokens", id), |bench| {
            bench.iter_custom(|iters| {
                let t0 = Instant::now();
                for _ in 0..iters {
                    b.step().expect("step");
                }
                b.engine.wait().expect("wait");
                t0.elapsed()
            })
        });
    }
    g.finish();
}

fn cpu_steps(c: &mut Criterion) {
    let benches = shapes(&CPU_SWEEP)
        .into_iter()
        .map(|s| StepBench::new(DeviceKind::Cpu, s, 1).expect("cpu bench"))
        .collect();
    bench_steps(c, "cpu", benches);
}

fn gpu_steps(c: &mut Criterion) {
    let software = match GpuContext::open(true) {
        Ok(ctx) => ctx.info.software,
        Err(e) => {
            eprintln!("gpu step benches skipped: {e}");
            return;
        }
    };
    let mut benches = Vec::new();
    for s in shapes(&GPU_SWEEP) {
        if software && s.hidden > 128 {
            continue;
        }
        let ctx = GpuContext::open(true).expect("the adapter opened a moment ago");
        let cfg = s.config().expect("a valid shape");
        let params = init_params(&cfg, &ParamLayout::new(&cfg).expect("layout"), 1);
        let engine = BenchEngine::gpu(ctx, &cfg, &params).expect("gpu engine");
        benches.push(StepBench::with_engine(engine, s, 1).expect("gpu bench"));
    }
    bench_steps(c, "gpu", benches);
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = steps;
    config = config();
    targets = cpu_steps, gpu_steps
}
criterion_main!(steps);
