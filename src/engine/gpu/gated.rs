//! Recording of the gated cells' time loops, forward and BPTT (twins: `GatedRows::forward` and
//! `GatedGradRows::backward` of the CPU engine, each step `gru::gru_step_*` or
//! `lstm::lstm_step_*`). A step is one dispatch with its recurrent product fused in (the wide
//! form, `*_rows` launchers) or a GEMM for all gates followed by the gate kernel (the steps
//! form). The GRU keeps a_hh in both forms and takes its form from the shape's
//! [`RecurrenceKernel`](crate::engine::gpu::shape::RecurrenceKernel); the LSTM's is in its
//! buffers ([`LstmProduct`]), as only the steps form has an a_hh.

use crate::engine::gpu::buffers::at;
use crate::engine::gpu::gru::{self, GateStep, GruGrads, Recurrent};
use crate::engine::gpu::lstm;
use crate::engine::gpu::matmul::{Biases, matmul, plain, transposed};
use crate::engine::gpu::recording::{Calls, Recording};
use crate::engine::gpu::shape::{GruLayer, LstmLayer, LstmProduct};
use crate::error::Result;

/// Where step t of a gated layer reads and writes.
fn gate_step(r: &Recording<'_>, t: usize) -> GateStep {
    GateStep {
        rows: r.shape.rows,
        hidden: r.cfg.hidden_size,
        gates: r.cfg.cell.gates(),
        t,
    }
}

/// W_hh and b_hh of layer k, for the fused steps.
fn recurrent<'a>(r: &Recording<'a>, k: usize) -> Result<Recurrent<'a>> {
    let lo = r.layout.layer(k);
    Ok(Recurrent {
        params: r.params,
        weight: lo.weight_hh,
        bias: lo.bias_hh,
    })
}

/// The steps form's product of forward step t for all gates at once:
/// `a_hh_t = h_{t-1} W_hh^T + b_hh` [B, G*H] (twin: the step product of `GatedRows::forward`).
fn record_recurrent_product(
    r: &Recording<'_>,
    k: usize,
    t: usize,
    (states, a_hh): (&wgpu::Buffer, &wgpu::Buffer),
    out: &mut Calls,
) -> Result<()> {
    let (b, h, w) = (r.shape.rows, r.cfg.hidden_size, r.cfg.state_width());
    let gh = r.cfg.cell.gates() * h;
    let lo = r.layout.layer(k);
    let calls = matmul(
        r.ctx,
        (b, gh, w),
        plain(at(states, t * b * w)),
        transposed(at(r.params, lo.weight_hh)),
        at(a_hh, t * b * gh),
        Biases::of(r.params, lo.bias_hh, None),
        false,
    )?;
    out.extend(r.matmul_calls(k, calls, |d| [d.state, d.w, d.gate, d.w])?);
    Ok(())
}

/// The steps form's product of BPTT step t > 0 for all gates at once: `dh_{t-1} += da_t W_hh`
/// into `ds` (twin: the step product of `GatedGradRows::backward`). `da` is the recurrent
/// side's gradient.
fn record_recurrent_grad(
    r: &Recording<'_>,
    k: usize,
    t: usize,
    (da, ds): (&wgpu::Buffer, &wgpu::Buffer),
    out: &mut Calls,
) -> Result<()> {
    let (b, h, w) = (r.shape.rows, r.cfg.hidden_size, r.cfg.state_width());
    let gh = r.cfg.cell.gates() * h;
    let calls = matmul(
        r.ctx,
        (b, w, gh),
        plain(at(da, t * b * gh)),
        plain(at(r.params, r.layout.layer(k).weight_hh)),
        at(ds, (t - 1) * b * w),
        None,
        true,
    )?;
    out.extend(r.matmul_calls(k, calls, |d| [d.gate, d.w, d.state, 0])?);
    Ok(())
}

/// The GRU recurrence of layer k, T steps (twin: `GatedRows::forward`, each step
/// `gru::gru_step_forward`).
pub fn record_gru_forward(
    r: &Recording<'_>,
    k: usize,
    layer: &GruLayer,
    out: &mut Calls,
) -> Result<()> {
    let states = &r.shape.layers[k].states;
    let fused = r.kernel.fuses_gates();
    for t in 0..r.shape.steps {
        let step = gate_step(r, t);
        if fused {
            let buffers = (&layer.gates, &layer.a_hh, states);
            let call = gru::gru_step_forward_rows(r.ctx, step, recurrent(r, k)?, buffers)?;
            out.push(r.gate_call(k, call)?);
            continue;
        }
        record_recurrent_product(r, k, t, (states, &layer.a_hh), out)?;
        let call = gru::gru_step_forward(r.ctx, step, &layer.gates, &layer.a_hh, states)?;
        out.push(r.gate_call(k, call)?);
    }
    Ok(())
}

/// The LSTM recurrence of layer k, T steps (twin: `GatedRows::forward`, each step
/// `lstm::lstm_step_forward`). With a projection the step writes m_t = o ⊙ tanh(c_t) into
/// `unprojected` and a GEMM projects it, h_t = m_t W_hr^T, into the states.
pub fn record_lstm_forward(
    r: &Recording<'_>,
    k: usize,
    layer: &LstmLayer,
    out: &mut Calls,
) -> Result<()> {
    let states = &r.shape.layers[k].states;
    let memories = (&layer.cells, layer.unprojected.as_ref().unwrap_or(states));
    for t in 0..r.shape.steps {
        let step = gate_step(r, t);
        let call = match &layer.product {
            LstmProduct::Fused => {
                lstm::lstm_step_forward_rows(r.ctx, step, recurrent(r, k)?, &layer.gates, memories)?
            }
            LstmProduct::Separate { a_hh } => {
                record_recurrent_product(r, k, t, (states, a_hh), out)?;
                lstm::lstm_step_forward(r.ctx, step, &layer.gates, a_hh, memories)?
            }
        };
        out.push(r.gate_call(k, call)?);
        if let Some(m) = &layer.unprojected {
            record_projection(r, (k, t, false), (m, states), out)?;
        }
    }
    Ok(())
}

/// Step t of an LSTM projection (twin: the projection of `GatedRows::forward` and
/// `GatedGradRows::backward`): forward, h_t = m_t W_hr^T [B, P] from m into the states;
/// `backward`, dm_t = dh_t W_hr [B, H] from the state gradient (the whole dh_t by then) into dm,
/// which the step kernel reads in place of the state gradient.
fn record_projection(
    r: &Recording<'_>,
    (k, t, backward): (usize, usize, bool),
    (src, dst): (&wgpu::Buffer, &wgpu::Buffer),
    out: &mut Calls,
) -> Result<()> {
    let (b, h, w) = (r.shape.rows, r.cfg.hidden_size, r.cfg.state_width());
    let w_hr = r.layout.layer(k).weight_hr.ok_or_else(|| {
        crate::error::Error::Misuse(format!("layer {k} has no projection weights"))
    })?;
    let (n, depth, src_off, dst_off, weights) = if backward {
        (h, w, t * b * w, t * b * h, plain(at(r.params, w_hr)))
    } else {
        let rows = (t + 1) * b;
        (w, h, rows * h, rows * w, transposed(at(r.params, w_hr)))
    };
    let calls = matmul(
        r.ctx,
        (b, n, depth),
        plain(at(src, src_off)),
        weights,
        at(dst, dst_off),
        None,
        false,
    )?;
    out.extend(r.matmul_calls(k, calls, |d| {
        if backward {
            [d.state, d.w, d.cell, 0]
        } else {
            [d.cell, d.w, d.state, 0]
        }
    })?);
    Ok(())
}

/// The GRU's BPTT through layer k, T steps from the last (twin: `GatedGradRows::backward` with
/// `CellGrad::Gru`): reads dh from `ds` [N, H], writes `da_ih` and `da_hh` [N, 3H].
pub fn record_gru_backward(
    r: &Recording<'_>,
    k: usize,
    layer: &GruLayer,
    (da_ih, da_hh): (&wgpu::Buffer, &wgpu::Buffer),
    ds: &wgpu::Buffer,
    out: &mut Calls,
) -> Result<()> {
    let grads = GruGrads {
        gates: &layer.gates,
        a_hh: &layer.a_hh,
        states: &r.shape.layers[k].states,
        ds,
        da_ih,
        da_hh,
    };
    let t_len = r.shape.steps;
    for t in (0..t_len).rev() {
        let step = gate_step(r, t);
        if r.kernel.fuses_gates() {
            let last = t + 1 == t_len;
            let call = gru::gru_step_backward_rows(r.ctx, step, recurrent(r, k)?, grads, last)?;
            out.push(r.gate_call(k, call)?);
            continue;
        }
        out.push(r.gate_call(k, gru::gru_step_backward(r.ctx, step, grads)?)?);
        if t > 0 {
            record_recurrent_grad(r, k, t, (da_hh, ds), out)?;
        }
    }
    Ok(())
}

/// The buffers of an LSTM layer's BPTT: `da` [N, 4H] written, `dc` [B, H] carried, `dm` (with
/// a projection) and the state gradient `ds` [N, W] read.
pub struct LstmGrads<'a> {
    pub da: &'a wgpu::Buffer,
    pub dc: &'a wgpu::Buffer,
    pub dm: Option<&'a wgpu::Buffer>,
    pub ds: &'a wgpu::Buffer,
}

/// The LSTM's BPTT through layer k, T steps from the last (twin: `GatedGradRows::backward` with
/// `CellGrad::Lstm`): reads dh from `ds` [N, W] (through dm_t = dh_t W_hr with a projection),
/// carries `dc` [B, H], writes `da` [N, 4H].
pub fn record_lstm_backward(
    r: &Recording<'_>,
    k: usize,
    layer: &LstmLayer,
    g: LstmGrads<'_>,
    out: &mut Calls,
) -> Result<()> {
    let forward = (&layer.gates, &layer.cells);
    let t_len = r.shape.steps;
    for t in (0..t_len).rev() {
        let step = gate_step(r, t);
        let last = t + 1 == t_len;
        if let Some(dm) = g.dm {
            record_projection(r, (k, t, true), (g.ds, dm), out)?;
        }
        let grads = (g.dm.unwrap_or(g.ds), g.dc, g.da);
        match layer.product {
            LstmProduct::Fused => {
                let w = recurrent(r, k)?;
                let call = lstm::lstm_step_backward_rows(r.ctx, step, w, forward, grads, last)?;
                out.push(r.gate_call(k, call)?);
            }
            LstmProduct::Separate { .. } => {
                let call = lstm::lstm_step_backward(r.ctx, step, forward, grads, last)?;
                out.push(r.gate_call(k, call)?);
                if t > 0 {
                    record_recurrent_grad(r, k, t, (g.da, g.ds), out)?;
                }
            }
        }
    }
    Ok(())
}
