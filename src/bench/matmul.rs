//! Throughput of the WGSL matmul alone (`unroll bench --matmul`): `C[m, n] = A[m, k] B[k, n]`
//! in f32, `per_submit` dispatches recorded into one compute pass and submitted once, the queue
//! waited for before the clock is read; FLOP = `2 m n k` per dispatch.

use std::time::Instant;

use serde::Serialize;

use super::Spread;
use crate::engine::gpu::GpuContext;
use crate::engine::gpu::buffers::{at, storage_with};
use crate::engine::gpu::matmul::{matmul, plain};
use crate::engine::gpu::pipelines::Pipelines;
use crate::engine::gpu::plan::{Plan, Recorder};
use crate::error::{Error, Result};

/// The shapes measured on an H200 (docs/ARCHITECTURE.md, Tuning numbers; the tiled kernel reached 22.6 and 20.4 TFLOP/s on an H200):
/// `(m, n, k)`.
pub const DEFAULT_SHAPES: [(usize, usize, usize); 2] = [(4096, 4096, 4096), (8192, 512, 512)];

/// One GEMM shape's throughput.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MatmulReport {
    pub adapter: String,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// Dispatches per timed submit.
    pub per_submit: usize,
    /// Milliseconds per GEMM (submit time / per_submit).
    pub ms: Spread,
    /// From the median.
    pub tflops: f64,
}

/// Parses `MxNxK` (e.g. `4096x4096x4096`).
pub fn parse_shape(s: &str) -> Result<(usize, usize, usize)> {
    let parts: Vec<usize> = s
        .split(['x', 'X'])
        .map(|p| p.trim().parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| Error::Config(format!("matmul shape {s:?} is not MxNxK")))?;
    match parts[..] {
        [m, n, k] if m > 0 && n > 0 && k > 0 => Ok((m, n, k)),
        _ => Err(Error::Config(format!(
            "matmul shape {s:?} is not MxNxK with sizes >= 1"
        ))),
    }
}

/// Deterministic operand values in [-1, 1) (their values do not change the work done).
fn fill(len: usize, salt: u32) -> Vec<f32> {
    (0..len)
        .map(|i| {
            let x = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(salt) >> 8;
            x as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

/// Times `C = A B` at `(m, n, k)`: one warm-up submit, then `repeats` submits of `per_submit`
/// dispatches, each waited for.
pub fn measure(
    ctx: &GpuContext,
    (m, n, k): (usize, usize, usize),
    per_submit: usize,
    repeats: usize,
) -> Result<MatmulReport> {
    if per_submit == 0 || repeats == 0 {
        return Err(Error::Config(
            "matmul: the repeats and dispatches per submit must be at least 1".into(),
        ));
    }
    let a = storage_with(ctx, "bench a", &fill(m * k, 1))?;
    let b = storage_with(ctx, "bench b", &fill(k * n, 2))?;
    let c = storage_with(ctx, "bench c", &vec![0.0f32; m * n])?;
    let calls = (0..per_submit)
        .map(|_| {
            matmul(
                ctx,
                (m, n, k),
                plain(at(&a, 0)),
                plain(at(&b, 0)),
                at(&c, 0),
                None,
                false,
            )
        })
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect();
    let mut pipes = Pipelines::default();
    let plan = Plan::build(ctx, &mut pipes, "bench matmul", calls)?;
    let mut rec = Recorder::default();
    let mut run = || -> Result<f64> {
        let t0 = Instant::now();
        rec.record(&plan);
        rec.submit(ctx)?;
        ctx.wait()?;
        ctx.check("running the benchmarked matmul")?;
        Ok(t0.elapsed().as_secs_f64() * 1e3 / per_submit as f64)
    };
    run()?;
    let samples = (0..repeats).map(|_| run()).collect::<Result<Vec<_>>>()?;
    let ms = Spread::of(&samples)?;
    Ok(MatmulReport {
        adapter: ctx.info.to_string(),
        m,
        n,
        k,
        per_submit,
        tflops: 2.0 * (m * n * k) as f64 / (ms.median * 1e-3) / 1e12,
        ms,
    })
}
