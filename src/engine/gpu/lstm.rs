//! Launchers of `shaders/lstm.wgsl`: the LSTM's fused forward step and BPTT step for all B rows
//! of one time step, either around separate recurrent products (`matmul` calls, see the GPU
//! engine) or with the product fused in (`*_rows`, one dispatch per step).

use crate::engine::gpu::context::GpuContext;
use crate::engine::gpu::gru::{GateArgs, GateStep, Pass, Recurrent};
use crate::engine::gpu::pipelines::kernels;
use crate::engine::gpu::plan::Call;
use crate::error::Result;

kernels! {
    shader: Lstm;

    /// `lstm_step_forward`: bindings gates (a_ih in, i f g o out), a_hh, cells, states.
    LSTM_STEP_FORWARD = "lstm_step_forward", GateArgs, [ReadWrite, Read, ReadWrite, ReadWrite];

    /// `lstm_step_backward`: bindings gates, cells, ds, dc, da.
    LSTM_STEP_BACKWARD = "lstm_step_backward", GateArgs, [Read, Read, Read, ReadWrite, ReadWrite];

    /// `lstm_step_forward_rows`: bindings W_hh and b_hh, states, gates, cells.
    LSTM_STEP_FORWARD_ROWS = "lstm_step_forward_rows", GateArgs,
        [Read, ReadWrite, ReadWrite, ReadWrite];

    /// `lstm_step_backward_rows`: bindings W_hh, da, gates, cells, ds, dc.
    LSTM_STEP_BACKWARD_ROWS = "lstm_step_backward_rows", GateArgs,
        [Read, ReadWrite, Read, Read, Read, ReadWrite];
}

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

/// Forward LSTM step t with its recurrent product fused in (twins: `matmul` for
/// `a_hh = h_{t-1} W_hh^T + b_hh`, then `lstm_step_forward`): ONE dispatch, no a_hh array.
/// `gates` [N, 4H] holds a_ih at step t's rows and receives (i, f, g, o); `cells` and `states`
/// [(T+1) * B, H] (c_{t-1}, h_{t-1} read, c_t and h_t written).
pub fn lstm_step_forward_rows(
    ctx: &GpuContext,
    step: GateStep,
    w: Recurrent<'_>,
    gates: &wgpu::Buffer,
    (cells, states): (&wgpu::Buffer, &wgpu::Buffer),
) -> Result<Call> {
    step.rows_call(
        ctx,
        (&LSTM_STEP_FORWARD_ROWS, Pass::Forward),
        w,
        false,
        &[w.params, states, gates, cells],
    )
}

/// BPTT LSTM step t with its recurrent product fused in (twins: `matmul` for
/// `dh_t += da_{t+1} W_hh`, then `lstm_step_backward`): ONE dispatch. dh_t is the product (none
/// at t = T-1, `last`, where `dc` is read as zero) plus `ds` at step t's rows, which is only
/// read; `dc` [B, H] is carried and da is written at step t's rows of `da` [N, 4H].
pub fn lstm_step_backward_rows(
    ctx: &GpuContext,
    step: GateStep,
    w: Recurrent<'_>,
    (gates, cells): (&wgpu::Buffer, &wgpu::Buffer),
    (ds, dc, da): (&wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer),
    last: bool,
) -> Result<Call> {
    step.rows_call(
        ctx,
        (&LSTM_STEP_BACKWARD_ROWS, Pass::Backward { last }),
        w,
        !last,
        &[w.params, da, gates, cells, ds, dc],
    )
}
