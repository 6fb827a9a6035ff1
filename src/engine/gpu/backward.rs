//! Recording of the backward pass, function by function the twin of the CPU engine's `backward`
//! and `layer_backward` (`engine::cpu`): the output layer chunk by chunk, then per layer from
//! the top the BPTT, the weight gradients over all N rows and the gradient of the layer's input
//! (passed down through the dropout mask, or into the embedding). The gated cells' steps are in
//! `gated.rs`.

use std::ops::Range;

use crate::engine::cpu::dropout::{EMBED_SITE, OUT_SITE};
use crate::engine::gpu::buffers::{Region, at};
use crate::engine::gpu::forward::record_output_chunk;
use crate::engine::gpu::matmul::{RowsEpilogue, matmul, matmul_rows, plain, transposed};
use crate::engine::gpu::profile::StepPhase;
use crate::engine::gpu::recording::{Calls, Recording};
use crate::engine::gpu::reduce;
use crate::engine::gpu::reverse;
use crate::engine::gpu::rnn::{self, Dims, TokenLayout};
use crate::engine::gpu::shape::{CellBuffers, RecurrenceKernel, ShapeBuffers};
use crate::engine::gpu::{dropout, gated};
use crate::engine::logit_chunks;
use crate::engine::reverse::RowGather;
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
    if r.shape.out_input.is_some() {
        // dS back through the output dropout (twin: `dropout::dropout_backward`).
        let n = r.n() * r.cfg.output_width();
        let block = r.mask_block(OUT_SITE, r.cfg.output_width());
        let call = dropout::dropout_backward(r.ctx, n, at(&r.shape.ds[0], 0), r.mask(block))?;
        out.push_dropout(call, n, (0, 0), block);
    }
    // The gradient reaching layer k's outputs is ds[cur]; layer k writes the one of the layer
    // below into the other.
    let mut cur = 0;
    for k in (0..r.cfg.layers).rev() {
        let ds = record_split_directions(r, &r.shape.ds[cur], out)?;
        let grads = record_layer_backward(r, k, ds, out)?;
        out.mark(StepPhase::WeightGradients);
        if record_gradients_below(r, k, grads, &r.shape.ds[1 - cur], out)? {
            cur = 1 - cur;
        }
    }
    Ok(())
}

/// The gradient reaching a layer's output [N, D*H] as its recurrence reads it: `ds` itself for
/// one direction; for two, each direction's half into the reverse work arrays' state gradient,
/// the second's in reversed time order (twin: `RowGather::apply`).
fn record_split_directions<'a>(
    r: &Recording<'a>,
    ds: &'a wgpu::Buffer,
    out: &mut Calls,
) -> Result<&'a wgpu::Buffer> {
    let Some(rev) = &r.shape.reverse else {
        return Ok(ds);
    };
    let (t, b, w) = (r.shape.steps, r.shape.rows, r.cfg.state_width());
    let gather = RowGather {
        steps: t,
        rows: b,
        width: w,
        src: (0, 2 * w, w),
        dst: (0, w, (t + 1) * b * w),
        directions: 2,
        reverse: 0b10,
    };
    out.push(reverse::permute_rows(
        r.ctx,
        &gather,
        &r.shape.batch.lengths,
        ds,
        &rev.ds,
    )?);
    Ok(&rev.ds)
}

/// Layer k's weight gradients and the gradient of its input, direction by direction (the
/// second direction's da_ih first taken back to time order, twin: `RowGather::apply`), then
/// passed below; returns whether `ds_below` received it (as `record_input_gradient`).
fn record_gradients_below(
    r: &Recording<'_>,
    k: usize,
    grads: LayerGrads<'_>,
    ds_below: &wgpu::Buffer,
    out: &mut Calls,
) -> Result<bool> {
    for d in 0..r.cfg.directions() {
        let da_ih = match (&r.shape.reverse, d) {
            (Some(rev), 1) => {
                let (t, b) = (r.shape.steps, r.shape.rows);
                let gather = RowGather::reversed(t, b, grads.width, (grads.stride, 0));
                let lengths = &r.shape.batch.lengths;
                out.push(reverse::permute_rows(
                    r.ctx,
                    &gather,
                    lengths,
                    grads.da_ih,
                    &rev.work,
                )?);
                at(&rev.work, 0)
            }
            _ => at(grads.da_ih, 0),
        };
        record_weight_gradients(r, (k, d), &grads, da_ih, out)?;
        record_input_product(r, (k, d), da_ih, ds_below, out)?;
    }
    record_input_gradient(r, k, ds_below, out)
}

/// One chunk of the output layer's backward, from the kept (or just recomputed) dlogits:
/// dW_o += dlogits^T S, db_o += colsum(dlogits), and its rows of dS = dlogits W_o into ds[0].
fn record_output_backward(r: &Recording<'_>, rows: Range<usize>, out: &mut Calls) -> Result<()> {
    let (ctx, shape, p, g) = (r.ctx, r.shape, r.params, r.grads);
    let (h, v) = (r.cfg.output_width(), r.cfg.output_size);
    let (ow, ob) = (r.layout.out_weight(), r.layout.out_bias());
    let dlogits = &shape.output.dlogits;
    let m = rows.len();
    out.extend(matmul(
        ctx,
        (v, h, m),
        transposed(at(dlogits, 0)),
        plain(r.output_input(rows.start)),
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

/// What a layer's BPTT leaves for its weight gradients: the gradients of the input-side
/// pre-activations [N, G*H] per direction `stride` elements apart and, for the GRU, of the
/// recurrent-side ones (for the tanh cell, whose BPTT turns `ds` into dz in place, and the LSTM
/// they are the same buffer).
pub struct LayerGrads<'a> {
    /// The state gradient the BPTT read (the whole dh_t of every step once it is done), per
    /// direction [(T+1) * B, W] apart.
    pub ds: &'a wgpu::Buffer,
    pub da_ih: &'a wgpu::Buffer,
    pub da_hh: Option<&'a wgpu::Buffer>,
    /// G*H.
    pub width: usize,
    /// Elements between the directions' blocks.
    pub stride: usize,
}

/// One layer's BPTT over all T steps, from the last step to the first (twin: `layer_backward`),
/// both directions at once. `ds` holds the gradient reaching the layer's outputs h_1..h_T from
/// above, per direction ([N, H], the directions [(T+1) * B, H] apart).
pub fn record_layer_backward<'a>(
    r: &Recording<'a>,
    k: usize,
    ds: &'a wgpu::Buffer,
    out: &mut Calls,
) -> Result<LayerGrads<'a>> {
    let shape: &'a ShapeBuffers = r.shape;
    let (h, n) = (r.cfg.hidden_size, r.n());
    let gh = r.cfg.cell.gates() * h;
    out.mark(StepPhase::BackwardRecurrence);
    let grads = |da_ih, da_hh, stride| LayerGrads {
        ds,
        da_ih,
        da_hh,
        width: gh,
        stride,
    };
    match &shape.cell {
        CellBuffers::Tanh => {
            record_tanh_backward(r, k, ds, out)?;
            Ok(grads(ds, None, (shape.steps + 1) * shape.rows * h))
        }
        CellBuffers::Gru {
            layers,
            da_ih,
            da_hh,
        } => {
            gated::record_gru_backward(r, k, &layers[k], (da_ih, da_hh), ds, out)?;
            Ok(grads(da_ih, Some(da_hh), n * gh))
        }
        CellBuffers::Lstm { layers, da, dc, dm } => {
            let grads_of = gated::LstmGrads {
                da,
                dc,
                dm: dm.as_ref(),
                ds,
            };
            gated::record_lstm_backward(r, k, &layers[k], grads_of, out)?;
            Ok(grads(da, None, n * gh))
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
        let call = rnn::rnn_backward_rows(ctx, dims, p, w_hh, at(states, 0), at(ds, 0), act)?;
        out.push(r.rnn_call(k, call)?);
        return Ok(());
    }
    for t in (0..t_len).rev() {
        let next = (t + 1 < t_len).then_some((t + 1) * b * h);
        let s_t = at(states, (t + 1) * b * h);
        out.push(match r.kernel {
            RecurrenceKernel::Steps => r.rnn_call(
                k,
                rnn::rnn_step_backward(ctx, dims, p, w_hh, s_t, ds, (next, t * b * h), act)?,
            )?,
            _ => r.rows_call(
                k,
                matmul_rows(
                    ctx,
                    (b, h, h),
                    next,
                    plain(at(p, w_hh)),
                    at(ds, t * b * h),
                    RowsEpilogue::Derivative(act, s_t),
                )?,
            )?,
        });
    }
    Ok(())
}

/// Direction d of layer k's weight gradients over all N rows at once: dW_hh += da_hh^T S,
/// db_ih += colsum(da_ih), db_hh += colsum(da_hh) (one pass when they are one buffer), all in
/// the direction's own time order, and dW_ih += da_ih^T X for the layer's input X with `da_ih`
/// in time order (a scatter-add for one-hot tokens, twin: `rnn::input_grad_onehot`).
fn record_weight_gradients(
    r: &Recording<'_>,
    (k, d): (usize, usize),
    grads: &LayerGrads<'_>,
    da_ih: Region<'_>,
    out: &mut Calls,
) -> Result<()> {
    let (ctx, cfg, shape, g) = (r.ctx, r.cfg, r.shape, r.grads);
    let (w, n, gh) = (cfg.state_width(), r.n(), grads.width);
    let lo = r.layout.direction(k, d);
    let ik = cfg.layer_input_size(k);
    let own = d * grads.stride;
    let da_hh = grads.da_hh.unwrap_or(grads.da_ih);
    let states = &shape.layers[k].states;
    let state_block = (shape.steps + 1) * shape.rows * w;
    record_projection_gradient(r, (k, d), grads.ds, out)?;
    out.extend(matmul(
        ctx,
        (gh, w, n),
        transposed(at(da_hh, own)),
        plain(at(states, d * state_block)),
        at(g, lo.weight_hh),
        None,
        true,
    )?);
    if let (Some(bias_ih), Some(bias_hh)) = (lo.bias_ih, lo.bias_hh) {
        let sums: &[(&wgpu::Buffer, &[usize])] = match grads.da_hh {
            None => &[(grads.da_ih, &[bias_ih, bias_hh])],
            Some(da_hh) => &[(grads.da_ih, &[bias_ih]), (da_hh, &[bias_hh])],
        };
        for &(da, biases) in sums {
            out.push(reduce::column_sums_accumulate(
                ctx,
                (n, gh),
                at(da, own),
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
            da_ih,
            at(g, lo.weight_ih),
        )?);
        return Ok(());
    }
    out.extend(matmul(
        ctx,
        (gh, ik, n),
        transposed(da_ih),
        r.below(k),
        at(g, lo.weight_ih),
        None,
        true,
    )?);
    Ok(())
}

/// Direction d of an LSTM projection's weight gradient, dW_hr += sum_t dh_t^T m_t over all N
/// rows (dh_t the whole state gradient `ds` the BPTT leaves, m_t the unprojected outputs);
/// nothing without a projection.
fn record_projection_gradient(
    r: &Recording<'_>,
    (k, d): (usize, usize),
    ds: &wgpu::Buffer,
    out: &mut Calls,
) -> Result<()> {
    let CellBuffers::Lstm { layers, .. } = &r.shape.cell else {
        return Ok(());
    };
    let (Some(m), Some(w_hr)) = (&layers[k].unprojected, r.layout.direction(k, d).weight_hr) else {
        return Ok(());
    };
    let (h, w, n) = (r.cfg.hidden_size, r.cfg.state_width(), r.n());
    let block = (r.shape.steps + 1) * r.shape.rows;
    out.extend(matmul(
        r.ctx,
        (w, h, n),
        transposed(at(ds, d * block * w)),
        plain(at(m, d * block * h + r.shape.rows * h)),
        at(r.grads, w_hr),
        None,
        true,
    )?);
    Ok(())
}

/// Direction d's part of the gradient of layer k's input, dX (+)= da_ih W_ih with `da_ih` in
/// time order: for k > 0 into `ds_below` [N, I_k], for layer 0 with an embedding into the
/// embedded tokens' gradient; the first direction writes it, the second adds to it. Layer 0
/// without an embedding has none.
fn record_input_product(
    r: &Recording<'_>,
    (k, d): (usize, usize),
    da_ih: Region<'_>,
    ds_below: &wgpu::Buffer,
    out: &mut Calls,
) -> Result<()> {
    let (ctx, cfg, p) = (r.ctx, r.cfg, r.params);
    let (n, gh) = (r.n(), cfg.cell.gates() * cfg.hidden_size);
    let w_ih = r.layout.direction(k, d).weight_ih;
    let dx = match (k, &r.shape.embedding) {
        (0, None) => return Ok(()),
        (0, Some(e)) => at(&e.d_embedded, 0),
        _ => at(ds_below, 0),
    };
    out.extend(matmul(
        ctx,
        (n, cfg.layer_input_size(k), gh),
        plain(da_ih),
        plain(at(p, w_ih)),
        dx,
        None,
        d > 0,
    )?);
    Ok(())
}

/// The gradient of layer k's input, once `record_input_product` has summed it over the
/// directions: for k > 0 back through the dropout mask in `ds_below` (twin:
/// `dropout::dropout_backward`; its arguments follow the dropout setting), returning `true`;
/// for layer 0 with an embedding into the table's gradient (twin: `rnn::embed_grad`). Layer 0
/// without one has none.
fn record_input_gradient(
    r: &Recording<'_>,
    k: usize,
    ds_below: &wgpu::Buffer,
    out: &mut Calls,
) -> Result<bool> {
    let (ctx, cfg) = (r.ctx, r.cfg);
    let n = r.n();
    if k > 0 {
        let len = n * cfg.layer_input_size(k);
        let block = r.mask_block(k - 1, cfg.layer_input_size(k));
        let call = dropout::dropout_backward(ctx, len, at(ds_below, 0), r.mask(block))?;
        out.push_dropout(call, len, (0, 0), block);
        return Ok(true);
    }
    let Some(e) = &r.shape.embedding else {
        return Ok(false);
    };
    if r.edges.embed > 0.0 {
        let n = n * e.width;
        let block = r.mask_block(EMBED_SITE, e.width);
        let call = dropout::dropout_backward(ctx, n, at(&e.d_embedded, 0), r.mask(block))?;
        out.push_dropout(call, n, (0, 0), block);
    }
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
