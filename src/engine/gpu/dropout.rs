//! Launchers of `shaders/dropout.wgsl`: dropout between layers with the counter-based mask of
//! `engine::cpu::dropout`, forward (a masked copy) and backward (masked in place).

use crate::engine::cpu::dropout::MaskKey;
use crate::engine::gpu::buffers::Region;
use crate::engine::gpu::context::GpuContext;
use crate::engine::gpu::pipelines::{args_mirror, kernels};
use crate::engine::gpu::plan::{Call, grid_1d, offset32};
use crate::error::Result;

kernels! {
    shader: Dropout;

    /// `dropout_forward`: bindings x, y.
    DROPOUT_FORWARD = "dropout_forward", DropoutArgs, [Read, ReadWrite];

    /// `dropout_backward`: binding d (in place).
    DROPOUT_BACKWARD = "dropout_backward", DropoutArgs, [ReadWrite];
}

args_mirror! {
    /// Mirror of `Args` in dropout.wgsl.
    pub struct DropoutArgs mirrors "Args" {
        pub n: u32,
        pub src_off: u32,
        pub dst_off: u32,
        pub key: u32,
        pub threshold: u32,
        pub scale: f32,
        pub step: u32,
        pub shared_step: u32,
        pub window_off: u32,
        pub pad: [u32; 3],
    }
}

impl DropoutArgs {
    /// The arguments for `n` elements with mask `key` (over its span).
    pub fn new(n: usize, (src, dst): (usize, usize), key: MaskKey) -> Result<Self> {
        Ok(DropoutArgs {
            n: offset32("elements", n)?,
            src_off: offset32("offset", src)?,
            dst_off: offset32("offset", dst)?,
            key: key.key,
            threshold: key.threshold,
            scale: key.scale,
            step: offset32("mask span step", key.span.step)?,
            shared_step: offset32("mask span step", key.span.shared_step)?,
            window_off: offset32("mask span offset", key.span.offset)?,
            pad: [0; 3],
        })
    }
}

/// `y = x ⊙ m` over `n` elements (twin: `dropout_forward`).
pub fn dropout_forward(
    ctx: &GpuContext,
    n: usize,
    x: Region<'_>,
    y: Region<'_>,
    key: MaskKey,
) -> Result<Call> {
    let wg = ctx.tunables.row_wg;
    Ok(Call::new(
        &DROPOUT_FORWARD,
        vec![("WG", wg)],
        &[x.buffer, y.buffer],
        &DropoutArgs::new(n, (x.offset, y.offset), key)?,
        grid_1d(ctx, n, wg)?,
    ))
}

/// `d = d ⊙ m` in place over `n` elements (twin: `dropout_backward`).
pub fn dropout_backward(ctx: &GpuContext, n: usize, d: Region<'_>, key: MaskKey) -> Result<Call> {
    let wg = ctx.tunables.row_wg;
    Ok(Call::new(
        &DROPOUT_BACKWARD,
        vec![("WG", wg)],
        &[d.buffer],
        &DropoutArgs::new(n, (0, d.offset), key)?,
        grid_1d(ctx, n, wg)?,
    ))
}
