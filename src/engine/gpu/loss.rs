//! Launcher of `shaders/loss.wgsl`: the output nonlinearity, the masked loss per row and the
//! gradient w.r.t. the logits, fused, one workgroup per row.

use crate::engine::gpu::context::GpuContext;
use crate::engine::gpu::pipelines::{Access, args_mirror, kernels};
use crate::engine::gpu::plan::{Call, grid_1d, offset32};
use crate::error::Result;
use crate::model::OutputKind;

const BINDINGS: &[Access] = &[
    Access::Read,
    Access::Read,
    Access::ReadWrite,
    Access::ReadWrite,
    Access::ReadWrite,
];

kernels! {
    shader: Loss;

    /// `softmax_cross_entropy`: bindings targets, mask, logits, dlogits, row_loss.
    SOFTMAX_CROSS_ENTROPY = "softmax_cross_entropy", LossArgs, BINDINGS;

    /// `squared_error`: bindings as [`SOFTMAX_CROSS_ENTROPY`].
    SQUARED_ERROR = "squared_error", LossArgs, BINDINGS;

    /// `sigmoid_binary_cross_entropy`: bindings as [`SOFTMAX_CROSS_ENTROPY`].
    SIGMOID_BINARY_CROSS_ENTROPY = "sigmoid_binary_cross_entropy", LossArgs, BINDINGS;
}

args_mirror! {
    /// Mirror of `Args` in loss.wgsl.
    pub struct LossArgs mirrors "Args" {
        /// Rows of the chunk.
        pub n: u32,
        pub v: u32,
        /// 1 / count, count = the batch's mask sum (clamped away from 0).
        pub inv_count: f32,
        /// The batch row of the chunk's first row.
        pub row0: u32,
    }
}

impl LossArgs {
    /// Arguments for the chunk of batch rows `rows` of V outputs, with `count` counted steps in
    /// the batch.
    pub fn new(rows: std::ops::Range<usize>, v: usize, count: f64) -> Result<Self> {
        Ok(LossArgs {
            n: offset32("rows", rows.len())?,
            v: offset32("outputs", v)?,
            inv_count: (1.0 / count.max(f64::MIN_POSITIVE)) as f32,
            row0: offset32("rows", rows.start)?,
        })
    }
}

/// The buffers of the loss: targets (class ids `[N]`, or target values `[N, V]` as f32 bits) and
/// mask `[N]` in; the chunk's logits `[n, V]` in and overwritten with the probabilities; the
/// chunk's dlogits `[n, V]` and the masked loss per batch row `[N]` written.
#[derive(Clone, Copy, Debug)]
pub struct LossBuffers<'a> {
    pub targets: &'a wgpu::Buffer,
    pub mask: &'a wgpu::Buffer,
    pub logits: &'a wgpu::Buffer,
    pub dlogits: &'a wgpu::Buffer,
    pub row_loss: &'a wgpu::Buffer,
}

/// The fused loss of `kind` (twins: `softmax_cross_entropy`, `squared_error`,
/// `sigmoid_binary_cross_entropy`).
pub fn loss(
    ctx: &GpuContext,
    kind: OutputKind,
    b: LossBuffers<'_>,
    args: LossArgs,
) -> Result<Call> {
    let wg = ctx.tunables.row_wg;
    let kernel = match kind {
        OutputKind::Softmax => &SOFTMAX_CROSS_ENTROPY,
        OutputKind::Identity => &SQUARED_ERROR,
        OutputKind::Sigmoid => &SIGMOID_BINARY_CROSS_ENTROPY,
    };
    Ok(Call::new(
        kernel,
        vec![("WG", wg)],
        &[b.targets, b.mask, b.logits, b.dlogits, b.row_loss],
        &args,
        grid_1d(ctx, args.n as usize, 1)?,
    ))
}
