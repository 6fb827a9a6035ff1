//! Launcher of `shaders/optim.wgsl`: one optimizer update over the flat parameter buffer, the
//! clip factor taken on the device from the norm in the scratch buffer.

use crate::engine::gpu::context::GpuContext;
use crate::engine::gpu::pipelines::{args_mirror, kernels};
use crate::engine::gpu::plan::{Call, grid_1d, offset32};
use crate::error::Result;
use crate::train::optim::OptimizerConfig;

kernels! {
    shader: Optim;

    /// `optimizer_update`: bindings scratch (read), params, grads (read), m, v.
    OPTIMIZER_UPDATE = "optimizer_update", OptimArgs, [Read, ReadWrite, Read, ReadWrite, ReadWrite];
}

args_mirror! {
    /// Mirror of `Args` in optim.wgsl.
    pub struct OptimArgs mirrors "Args" {
        pub n: u32,
        pub kind: u32,
        pub norm_slot: u32,
        pub pad0: u32,
        pub lr: f32,
        pub step_size: f32,
        pub bias_correction2: f32,
        pub clip: f32,
        pub weight_decay: f32,
        pub momentum: f32,
        pub beta1: f32,
        pub beta2: f32,
        pub alpha: f32,
        pub eps: f32,
        pub pad1: [u32; 2],
    }
}

impl OptimArgs {
    /// The arguments of update number `step` (1-based) with learning rate `lr` over `n`
    /// parameters; Adam's bias corrections are computed in f64 as the CPU engine does.
    pub fn new(
        cfg: &OptimizerConfig,
        lr: f32,
        step: u64,
        n: usize,
        norm_slot: usize,
    ) -> Result<Self> {
        let t = step.min(i32::MAX as u64) as i32;
        let lr64 = lr as f64;
        let bc1 = 1.0 - (cfg.beta1 as f64).powi(t);
        let bc2 = (1.0 - (cfg.beta2 as f64).powi(t)).sqrt();
        Ok(OptimArgs {
            n: offset32("parameters", n)?,
            kind: cfg.kind.index(),
            norm_slot: offset32("slot", norm_slot)?,
            pad0: 0,
            lr,
            step_size: (lr64 / bc1) as f32,
            bias_correction2: bc2 as f32,
            clip: cfg.clip,
            weight_decay: cfg.weight_decay,
            momentum: cfg.momentum,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            alpha: cfg.alpha,
            eps: cfg.eps,
            pad1: [0; 2],
        })
    }
}

/// The flat buffers an update touches: scratch (holding the norm), parameters, gradients and
/// the two moment buffers, all in `ParamLayout` order.
#[derive(Clone, Copy, Debug)]
pub struct OptimBuffers<'a> {
    pub scratch: &'a wgpu::Buffer,
    pub params: &'a wgpu::Buffer,
    pub grads: &'a wgpu::Buffer,
    pub m: &'a wgpu::Buffer,
    pub v: &'a wgpu::Buffer,
}

/// One update of every parameter (twin: `optimizer_update`).
pub fn optimizer_update(ctx: &GpuContext, b: OptimBuffers<'_>, args: OptimArgs) -> Result<Call> {
    let wg = ctx.tunables.flat_wg;
    Ok(Call::new(
        &OPTIMIZER_UPDATE,
        vec![("WG", wg)],
        &[b.scratch, b.params, b.grads, b.m, b.v],
        &args,
        grid_1d(ctx, args.n as usize, wg)?,
    ))
}
