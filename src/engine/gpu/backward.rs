//! Recording of the backward pass, function by function the twin of the CPU engine's `backward`
//! and `layer_backward` (`engine::cpu`): the output layer chunk by chunk, then per layer from
//! the top the BPTT, the weight gradients over all N rows and the gradient of the layer's input
//! (passed down through the dropout mask, or into the embedding). The gated cells' steps are in
//! `gated.rs`.

use std::ops::Range;

use crate::engine::cpu::dropout::MaskKey;
use crate::engine::gpu::buffers::at;
use crate::engine::gpu::forward::record_output_chunk;
use crate::engine::gpu::matmul::{RowsEpilogue, matmul, matmul_rows, plain, transposed};
use crate::engine::gpu::profile::StepPhase;
use crate::engine::gpu::recording::{Calls, Recording};
use crate::engine::gpu::reduce;
use crate::engine::gpu::rnn::{self, Dims, TokenLayout};
use crate::engine::gpu::shape::{CellBuffers, RecurrenceKernel, ShapeBuffers};
use crate::engine::gpu::{dropout, gated};
use crate::engine::logit_chunks;
use crate::error::Result;

/// The backward pass (twin: `Engine::backward` of the CPU engine): the output layer chunk by
/// chunk (each chunk's forward recorded again when there are several), then every layer from
/// the top. Gradients accumulate into the engine's gradient buffer.
pub fn record_backward(r: &Recording<'_>, out: &mut Calls) -> Result<()> {
    let chunks: Vec<Range<usize>> = logit_chunks(r.n(), r.shape.output.chunk_rows).collect();
    for rows in &chunks {
        if chunks.len() > 1 {
            out.mark(StepPhase::Output);
            record_output_chunk(r, rows.clone(), out)?;
        }
        out.mark(StepPhase::OutputBackward);
        record_output_backward(r, rows.clone(), out)?;
    }
    // The gradient reaching layer k's outputs is ds[cur]; layer k writes the one of the layer
    // below into the other.
    let mut cur = 0;
    for k in (0..r.cfg.layers).rev() {
        let ds = &r.shape.ds[cur];
        let (da_ih, da_hh) = record_layer_backward(r, k, ds, out)?;
        out.mark(StepPhase::WeightGradients);
        record_weight_gradients(r, k, (da_ih, da_hh), out)?;
        if record_input_gradient(r, k, (da_ih, &r.shape.ds[1 - cur]), out)? {
            cur = 1 - cur;
        }
    }
    Ok(())
}

/// One chunk of the output layer's backward, from the kept (or just recomputed) dlogits:
/// dW_o += dlogits^T S, db_o += colsum(dlogits), and its rows of dS = dlogits W_o into ds[0].
fn record_output_backward(r: &Recording<'_>, rows: Range<usize>, out: &mut Calls) -> Result<()> {
    let (ctx, shape, p, g) = (r.ctx, r.shape, r.params, r.grads);
    let (b, h, v) = (shape.rows, r.cfg.hidden_size, r.cfg.output_size);
    let (ow, ob) = (r.layout.out_weight(), r.layout.out_bias());
    let top = &shape.layers[r.cfg.layers - 1].states;
    let dlogits = &shape.output.dlogits;
    let m = rows.len();
    out.extend(matmul(
        ctx,
        (v, h, m),
        transposed(at(dlogits, 0)),
        plain(at(top, (b + rows.start) * h)),
        at(g, ow),
        None,
        true,
    )?);
    out.push(reduce::column_sums_accumulate(
        ctx,
        (m, v),
        at(dlogits, 0),
        g,
        &[ob],
    )?);
    out.extend(matmul(
        ctx,
        (m, h, v),
        plain(at(dlogits, 0)),
        plain(at(p, ow)),
        at(&shape.ds[0], rows.start * h),
        None,
        false,
    )?);
    Ok(())
}

/// One layer's BPTT over all T steps, from the last step to the first (twin: `layer_backward`).
/// `ds` [N, H] holds the gradient reaching the layer's outputs h_1..h_T from above. Returns the
/// gradients of the input-side pre-activations [N, G*H] and, for the GRU, of the recurrent-side
/// ones (for the tanh cell, whose BPTT turns `ds` into dz in place, and the LSTM they are the
/// same buffer).
pub fn record_layer_backward<'a>(
    r: &Recording<'a>,
    k: usize,
    ds: &'a wgpu::Buffer,
    out: &mut Calls,
) -> Result<(&'a wgpu::Buffer, Option<&'a wgpu::Buffer>)> {
    let shape: &'a ShapeBuffers = r.shape;
    out.mark(StepPhase::BackwardRecurrence);
    match &shape.cell {
        CellBuffers::Tanh => {
            record_tanh_backward(r, k, ds, out)?;
            Ok((ds, None))
        }
        CellBuffers::Gru {
            layers,
            da_ih,
            da_hh,
        } => {
            gated::record_gru_backward(r, k, &layers[k], (da_ih, da_hh), ds, out)?;
            Ok((da_ih, Some(da_hh)))
        }
        CellBuffers::Lstm { layers, da, dc } => {
            gated::record_lstm_backward(r, k, &layers[k], (da, dc), ds, out)?;
            Ok((da, None))
        }
    }
}

/// The tanh/relu BPTT of layer k in place in `ds` (twin: the `TanhGradRows` loop of
/// `layer_backward`, each step `rnn::rnn_step_backward_with`): one dispatch for the layer
/// (rows), or one per step spread over the columns (wide) or tiled (steps).
fn record_tanh_backward(
    r: &Recording<'_>,
    k: usize,
    ds: &wgpu::Buffer,
    out: &mut Calls,
) -> Result<()> {
    let (ctx, p, shape) = (r.ctx, r.params, r.shape);
    let (t_len, b, h) = (shape.steps, shape.rows, r.cfg.hidden_size);
    let (w_hh, act) = (r.layout.layer(k).weight_hh, r.cfg.activation);
    let states = &shape.layers[k].states;
    let dims = r.tanh_dims(k);
    if r.kernel == RecurrenceKernel::Rows {
        // The rows kernels loop over the T steps themselves.
        let dims = Dims { n: t_len, ..dims };
        out.push(rnn::rnn_backward_rows(
            ctx,
            dims,
            p,
            w_hh,
            at(states, 0),
            at(ds, 0),
            act,
        )?);
        return Ok(());
    }
    for t in (0..t_len).rev() {
        let next = (t + 1 < t_len).then_some((t + 1) * b * h);
        let s_t = at(states, (t + 1) * b * h);
        out.push(match r.kernel {
            RecurrenceKernel::Steps => {
                rnn::rnn_step_backward(ctx, dims, p, w_hh, s_t, ds, (next, t * b * h), act)?
            }
            _ => matmul_rows(
                ctx,
                (b, h, h),
                next,
                plain(at(p, w_hh)),
                at(ds, t * b * h),
                RowsEpilogue::Derivative(act, s_t),
            )?,
        });
    }
    Ok(())
}

/// Layer k's weight gradients over all N rows at once: dW_hh += da_hh^T S, db_ih +=
/// colsum(da_ih), db_hh += colsum(da_hh) (one pass when they are one buffer), and dW_ih +=
/// da_ih^T X for the layer's input X (a scatter-add for one-hot tokens, twin:
/// `rnn::input_grad_onehot`). `da_hh` is `None` where it is `da_ih`.
fn record_weight_gradients(
    r: &Recording<'_>,
    k: usize,
    (da_ih, da_hh): (&wgpu::Buffer, Option<&wgpu::Buffer>),
    out: &mut Calls,
) -> Result<()> {
    let (ctx, cfg, shape, g) = (r.ctx, r.cfg, r.shape, r.grads);
    let (h, n) = (cfg.hidden_size, r.n());
    let gh = cfg.cell.gates() * h;
    let lo = r.layout.layer(k);
    let ik = cfg.layer_input_size(k);
    let states = &shape.layers[k].states;
    out.extend(matmul(
        ctx,
        (gh, h, n),
        transposed(at(da_hh.unwrap_or(da_ih), 0)),
        plain(at(states, 0)),
        at(g, lo.weight_hh),
        None,
        true,
    )?);
    if let (Some(bias_ih), Some(bias_hh)) = (lo.bias_ih, lo.bias_hh) {
        let sums: &[(&wgpu::Buffer, &[usize])] = match da_hh {
            None => &[(da_ih, &[bias_ih, bias_hh])],
            Some(da_hh) => &[(da_ih, &[bias_ih]), (da_hh, &[bias_hh])],
        };
        for &(da, biases) in sums {
            out.push(reduce::column_sums_accumulate(
                ctx,
                (n, gh),
                at(da, 0),
                g,
                biases,
            )?);
        }
    }
    if k == 0 && cfg.gathers_input() {
        let dims = Dims {
            rows: shape.rows,
            hidden: gh,
            inputs: ik,
            n,
        };
        let tokens = TokenLayout::new(n, cfg.input_size);
        out.push(rnn::input_grad_onehot(
            ctx,
            dims,
            &shape.batch.inputs,
            tokens,
            at(da_ih, 0),
            at(g, lo.weight_ih),
        )?);
        return Ok(());
    }
    out.extend(matmul(
        ctx,
        (gh, ik, n),
        transposed(at(da_ih, 0)),
        r.below(k),
        at(g, lo.weight_ih),
        None,
        true,
    )?);
    Ok(())
}

/// The gradient of layer k's input, dX = da_ih W_ih: for k > 0 into `ds_below` [N, H] and back
/// through the dropout mask (twin: `dropout::dropout_backward`; its arguments follow the
/// dropout setting), returning `true`; for layer 0 with an embedding into the embedded tokens'
/// gradient and then the table's (twin: `rnn::embed_grad`). Layer 0 without one has none.
fn record_input_gradient(
    r: &Recording<'_>,
    k: usize,
    (da_ih, ds_below): (&wgpu::Buffer, &wgpu::Buffer),
    out: &mut Calls,
) -> Result<bool> {
    let (ctx, cfg, p) = (r.ctx, r.cfg, r.params);
    let (h, n) = (cfg.hidden_size, r.n());
    let gh = cfg.cell.gates() * h;
    let w_ih = r.layout.layer(k).weight_ih;
    if k > 0 {
        out.extend(matmul(
            ctx,
            (n, h, gh),
            plain(at(da_ih, 0)),
            plain(at(p, w_ih)),
            at(ds_below, 0),
            None,
            false,
        )?);
        let key = MaskKey::new(r.dropout, k - 1);
        let call = dropout::dropout_backward(ctx, n * h, at(ds_below, 0), key)?;
        out.push_dropout(call, n * h, (0, 0), k - 1);
        return Ok(true);
    }
    let Some(e) = &r.shape.embedding else {
        return Ok(false);
    };
    out.extend(matmul(
        ctx,
        (n, e.width, gh),
        plain(at(da_ih, 0)),
        plain(at(p, w_ih)),
        at(&e.d_embedded, 0),
        None,
        false,
    )?);
    let dims = Dims {
        rows: r.shape.rows,
        hidden: e.width,
        inputs: cfg.input_size,
        n,
    };
    out.push(rnn::embed_grad(
        ctx,
        dims,
        &r.shape.batch.inputs,
        TokenLayout::new(n, cfg.input_size),
        at(&e.d_embedded, 0),
        at(r.grads, e.table),
    )?);
    Ok(false)
}
