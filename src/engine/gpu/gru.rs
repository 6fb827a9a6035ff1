//! Launchers of `shaders/gru.wgsl`: the GRU's fused forward step and BPTT step for all B rows of
//! one time step, either around separate recurrent products (`matmul` calls, see the GPU engine)
//! or with the product fused in (`*_rows`, one dispatch per step). The step arguments shared with
//! the LSTM's kernels live here too.

use crate::engine::gpu::context::GpuContext;
use crate::engine::gpu::matmul::{gated_units, rows_launch};
use crate::engine::gpu::pipelines::{Kernel, args_mirror, kernels};
use crate::engine::gpu::plan::{Call, grid_1d, offset32};
use crate::error::Result;

kernels! {
    shader: Gru;

    /// `gru_step_forward`: bindings gates (a_ih in, r z n out), a_hh, states.
    GRU_STEP_FORWARD = "gru_step_forward", GateArgs, [ReadWrite, Read, ReadWrite];

    /// `gru_step_backward`: bindings gates, a_hh, states, ds, da_ih, da_hh.
    GRU_STEP_BACKWARD = "gru_step_backward", GateArgs,
        [Read, Read, Read, ReadWrite, ReadWrite, ReadWrite];

    /// `gru_step_forward_rows`: bindings W_hh and b_hh, states, gates, a_hh.
    GRU_STEP_FORWARD_ROWS = "gru_step_forward_rows", GateArgs,
        [Read, ReadWrite, ReadWrite, ReadWrite];

    /// `gru_step_backward_rows`: bindings W_hh, da_hh, gates, a_hh, states, ds, da_ih.
    GRU_STEP_BACKWARD_ROWS = "gru_step_backward_rows", GateArgs,
        [Read, ReadWrite, Read, Read, Read, ReadWrite, ReadWrite];
}

args_mirror! {
    /// Mirror of `Args` in gru.wgsl and lstm.wgsl.
    pub struct GateArgs mirrors "Args" {
        pub rows: u32,
        pub hidden: u32,
        pub gates_off: u32,
        pub ahh_off: u32,
        pub src_off: u32,
        pub dst_off: u32,
        pub grad_off: u32,
        /// Padding in lstm.wgsl, which has no dh_{t-1} to write.
        pub prev_grad_off: u32 as "prev_grad_off" | "_pad0",
        /// `has_prev` in gru.wgsl, `has_next` in lstm.wgsl.
        pub flag: u32 as "has_prev" | "has_next",
        pub w_off: u32,
        pub bias_off: u32,
        pub x_off: u32,
        pub has_x: u32,
        /// 1: the fused forward adds b_hh at `bias_off`; 0: the layer has no biases.
        pub has_bias: u32,
        /// Direction strides (the second direction of a bidirectional layer runs as
        /// workgroup z = 1, its arrays this many elements further; all 0 for one direction):
        /// in the parameters (W_hh, b_hh), the states and the state gradient, the memories,
        /// the gate arrays (gates, a_hh, da), and the carried dc.
        pub dir_w: u32,
        pub dir_state: u32,
        pub dir_cell: u32,
        pub dir_gate: u32,
        pub dir_dc: u32,
        pub pad: u32,
    }
}

/// Where step t of a gated layer reads and writes, in elements: `rows` B, `hidden` H, and
/// the time step t; the offsets follow from the layouts [N, G*H], [(T+1) * B, H] and [N, H].
#[derive(Clone, Copy, Debug)]
pub struct GateStep {
    pub rows: usize,
    pub hidden: usize,
    pub gates: usize,
    pub t: usize,
}

impl GateStep {
    /// The arguments of step t, with `flag` as given.
    pub fn args(&self, flag: bool) -> Result<GateArgs> {
        let (b, h, t) = (self.rows, self.hidden, self.t);
        let gh = self.gates * h;
        Ok(GateArgs {
            rows: offset32("rows", b)?,
            hidden: offset32("hidden size", h)?,
            gates_off: offset32("offset", t * b * gh)?,
            ahh_off: offset32("offset", t * b * gh)?,
            src_off: offset32("offset", t * b * h)?,
            dst_off: offset32("offset", (t + 1) * b * h)?,
            grad_off: offset32("offset", t * b * h)?,
            prev_grad_off: offset32("offset", t.saturating_sub(1) * b * h)?,
            flag: flag as u32,
            ..GateArgs::default()
        })
    }

    /// A fused step (rows.wgsl's product in front of the gate work): forward, the product
    /// `h_{t-1} W_hh^T` with each workgroup owning its units of every gate; backward, `da_{t+1}
    /// W_hh` (none at the last step) with each workgroup owning `ROWS_UNITS` units (or as
    /// [`gated_units`] says). `flag` is
    /// the kernel's flag argument; `buffers` start with the parameters.
    pub fn rows_call(
        &self,
        ctx: &GpuContext,
        (kernel, pass): (&'static Kernel, Pass),
        w: Recurrent,
        flag: bool,
        buffers: &[&wgpu::Buffer],
    ) -> Result<Call> {
        let (b, h, g) = (self.rows, self.hidden, self.gates);
        let mut args = self.args(flag)?;
        args.w_off = offset32("offset", w.weight)?;
        args.bias_off = offset32("offset", w.bias.unwrap_or(0))?;
        args.has_bias = w.bias.is_some() as u32;
        let (cols, units, depth) = match pass {
            Pass::Forward => {
                args.has_x = 1;
                args.x_off = args.src_off;
                let units = gated_units(ctx, g).0;
                (units * g, units, h)
            }
            Pass::Backward { last } => {
                args.has_x = (!last) as u32;
                args.x_off = if last {
                    0
                } else {
                    offset32("offset", (self.t + 1) * b * g * h)?
                };
                let units = gated_units(ctx, g).1;
                (units, units, g * h)
            }
        };
        let (overrides, groups) = rows_launch(ctx, cols, units, h, depth)?;
        Ok(Call::new(kernel, overrides, buffers, &args, groups))
    }

    /// The grid: one thread per (b, j).
    pub fn grid(&self, ctx: &GpuContext) -> Result<[u32; 3]> {
        grid_1d(ctx, self.rows * self.hidden, ctx.tunables.row_wg)
    }
}

/// Which way a fused step goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    Forward,
    /// BPTT; `last`: step T-1, which gets no gradient from a next step.
    Backward {
        last: bool,
    },
}

/// The recurrent weights of a fused step: W_hh [G*H, H] and b_hh `[G*H]` (if the layer has
/// biases) at these element offsets of the parameter buffer.
#[derive(Clone, Copy, Debug)]
pub struct Recurrent<'a> {
    pub params: &'a wgpu::Buffer,
    pub weight: usize,
    /// `None` for a layer without biases.
    pub bias: Option<usize>,
}

/// Forward GRU step t (twin: `gru_step_forward`): `gates` [N, 3H] holds a_ih at step t's rows
/// and receives (r, z, n); `a_hh` [N, 3H]; `states` [(T+1) * B, H] (h_{t-1} read, h_t written).
pub fn gru_step_forward(
    ctx: &GpuContext,
    step: GateStep,
    gates: &wgpu::Buffer,
    a_hh: &wgpu::Buffer,
    states: &wgpu::Buffer,
) -> Result<Call> {
    let wg = ctx.tunables.row_wg;
    Ok(Call::new(
        &GRU_STEP_FORWARD,
        vec![("WG", wg)],
        &[gates, a_hh, states],
        &step.args(false)?,
        step.grid(ctx)?,
    ))
}

/// The buffers of a GRU layer's BPTT step.
#[derive(Clone, Copy, Debug)]
pub struct GruGrads<'a> {
    /// Gate activations (r, z, n) [N, 3H].
    pub gates: &'a wgpu::Buffer,
    /// Recurrent pre-activations a_hh [N, 3H].
    pub a_hh: &'a wgpu::Buffer,
    /// The layer's states [(T+1) * B, H].
    pub states: &'a wgpu::Buffer,
    /// The state gradient [N, H].
    pub ds: &'a wgpu::Buffer,
    /// da_ih [N, 3H].
    pub da_ih: &'a wgpu::Buffer,
    /// da_hh [N, 3H].
    pub da_hh: &'a wgpu::Buffer,
}

/// BPTT GRU step t (twin: `gru_step_backward`): reads dh_t from `ds`, writes da_ih and da_hh at
/// step t's rows, and adds dh ⊙ z into dh_{t-1} when t > 0.
pub fn gru_step_backward(ctx: &GpuContext, step: GateStep, b: GruGrads<'_>) -> Result<Call> {
    let wg = ctx.tunables.row_wg;
    Ok(Call::new(
        &GRU_STEP_BACKWARD,
        vec![("WG", wg)],
        &[b.gates, b.a_hh, b.states, b.ds, b.da_ih, b.da_hh],
        &step.args(step.t > 0)?,
        step.grid(ctx)?,
    ))
}

/// Forward GRU step t with its recurrent product fused in (twins: `matmul` for
/// `a_hh = h_{t-1} W_hh^T + b_hh`, then `gru_step_forward`): ONE dispatch. `gates` [N, 3H] holds
/// a_ih at step t's rows and receives (r, z, n); a_hh [N, 3H] is written (the BPTT reads it);
/// `states` [(T+1) * B, H] (h_{t-1} read, h_t written).
pub fn gru_step_forward_rows(
    ctx: &GpuContext,
    step: GateStep,
    w: Recurrent<'_>,
    (gates, a_hh, states): (&wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer),
) -> Result<Call> {
    step.rows_call(
        ctx,
        (&GRU_STEP_FORWARD_ROWS, Pass::Forward),
        w,
        false,
        &[w.params, states, gates, a_hh],
    )
}

/// BPTT GRU step t with its recurrent product fused in (twins: `matmul` for
/// `dh_t += da_hh_{t+1} W_hh`, then `gru_step_backward`): ONE dispatch. dh_t is the product
/// (none at t = T-1, `last`) plus `ds` at step t's rows, which is only read; da_ih and da_hh are
/// written at step t's rows and dh ⊙ z is added into ds at step t-1's rows when t > 0.
pub fn gru_step_backward_rows(
    ctx: &GpuContext,
    step: GateStep,
    w: Recurrent<'_>,
    b: GruGrads<'_>,
    last: bool,
) -> Result<Call> {
    step.rows_call(
        ctx,
        (&GRU_STEP_BACKWARD_ROWS, Pass::Backward { last }),
        w,
        step.t > 0,
        &[w.params, b.da_hh, b.gates, b.a_hh, b.states, b.ds, b.da_ih],
    )
}
