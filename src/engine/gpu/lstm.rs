//! Launchers of `shaders/lstm.wgsl`: the LSTM's fused forward step and BPTT step for all B rows
//! of one time step. The recurrent products around them are `matmul` calls (see the GPU engine).

use crate::engine::gpu::context::GpuContext;
use crate::engine::gpu::gru::GateStep;
use crate::engine::gpu::pipelines::{Access, Kernel};
use crate::engine::gpu::plan::Call;
use crate::engine::gpu::shaders::Shader;
use crate::error::Result;

/// `lstm_step_forward`: bindings gates (a_ih in, i f g o out), a_hh, cells, states.
pub static LSTM_STEP_FORWARD: Kernel = Kernel {
    shader: Shader::Lstm,
    entry: "lstm_step_forward",
    bindings: &[
        Access::ReadWrite,
        Access::Read,
        Access::ReadWrite,
        Access::ReadWrite,
    ],
};

/// `lstm_step_backward`: bindings gates, cells, ds, dc, da.
pub static LSTM_STEP_BACKWARD: Kernel = Kernel {
    shader: Shader::Lstm,
    entry: "lstm_step_backward",
    bindings: &[
        Access::Read,
        Access::Read,
        Access::Read,
        Access::ReadWrite,
        Access::ReadWrite,
    ],
};

/// Forward LSTM step t (twin: `lstm_step_forward`): `gates` [N, 4H] holds a_ih at step t's rows
/// and receives (i, f, g, o); `a_hh` [N, 4H]; `cells` and `states` [(T+1) * B, H] (c_{t-1}
/// read, c_t and h_t written).
pub fn lstm_step_forward(
    ctx: &GpuContext,
    step: GateStep,
    gates: &wgpu::Buffer,
    a_hh: &wgpu::Buffer,
    (cells, states): (&wgpu::Buffer, &wgpu::Buffer),
) -> Result<Call> {
    let wg = ctx.tunables.row_wg;
    Ok(Call::new(
        &LSTM_STEP_FORWARD,
        vec![("WG", wg)],
        &[gates, a_hh, cells, states],
        &step.args(false)?,
        step.grid(ctx)?,
    ))
}

/// BPTT LSTM step t (twin: `lstm_step_backward`): reads the gate activations and the `cells`
/// [(T+1) * B, H], dh_t from the state gradient `ds` [N, H], carries `dc` [B, H] (from zero at
/// t = T-1, marked by `last`), and writes da at step t's rows of `da` [N, 4H].
pub fn lstm_step_backward(
    ctx: &GpuContext,
    step: GateStep,
    (gates, cells): (&wgpu::Buffer, &wgpu::Buffer),
    (ds, dc, da): (&wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer),
    last: bool,
) -> Result<Call> {
    let wg = ctx.tunables.row_wg;
    Ok(Call::new(
        &LSTM_STEP_BACKWARD,
        vec![("WG", wg)],
        &[gates, cells, ds, dc, da],
        &step.args(!last)?,
        step.grid(ctx)?,
    ))
}
