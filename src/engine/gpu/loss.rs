//! Launcher of `shaders/loss.wgsl`: the output nonlinearity, the masked loss per row and the
//! gradient w.r.t. the logits, fused, one workgroup per row.

use bytemuck::{Pod, Zeroable};

use crate::engine::gpu::context::GpuContext;
use crate::engine::gpu::pipelines::{Access, Kernel};
use crate::engine::gpu::plan::{Call, grid_1d, offset32};
use crate::engine::gpu::shaders::Shader;
use crate::error::Result;
use crate::model::OutputKind;

const BINDINGS: &[Access] = &[
    Access::Read,
    Access::Read,
    Access::ReadWrite,
    Access::ReadWrite,
    Access::ReadWrite,
];

/// `softmax_cross_entropy`: bindings targets, mask, logits, dlogits, row_loss.
pub static SOFTMAX_CROSS_ENTROPY: Kernel = Kernel {
    shader: Shader::Loss,
    entry: "softmax_cross_entropy",
    bindings: BINDINGS,
};

/// `squared_error`: bindings as [`SOFTMAX_CROSS_ENTROPY`].
pub static SQUARED_ERROR: Kernel = Kernel {
    shader: Shader::Loss,
    entry: "squared_error",
    bindings: BINDINGS,
};

/// `sigmoid_binary_cross_entropy`: bindings as [`SOFTMAX_CROSS_ENTROPY`].
pub static SIGMOID_BINARY_CROSS_ENTROPY: Kernel = Kernel {
    shader: Shader::Loss,
    entry: "sigmoid_binary_cross_entropy",
    bindings: BINDINGS,
};

/// Mirror of `Args` in loss.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct LossArgs {
    pub n: u32,
    pub v: u32,
    /// 1 / count, count = the batch's mask sum (clamped away from 0).
    pub inv_count: f32,
    pub pad: u32,
}

impl LossArgs {
    /// Arguments for N rows of V outputs with `count` counted steps.
    pub fn new(n: usize, v: usize, count: f64) -> Result<Self> {
        Ok(LossArgs {
            n: offset32("rows", n)?,
            v: offset32("outputs", v)?,
            inv_count: (1.0 / count.max(f64::MIN_POSITIVE)) as f32,
            pad: 0,
        })
    }
}

/// The buffers of the loss: targets (class ids, or target values as f32 bits) and mask `[N]` in;
/// logits `[N, V]` in and overwritten with the probabilities; dlogits `[N, V]` and the masked loss
/// per row `[N]` written.
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
