//! Recording of the forward pass, function by function the twin of the CPU engine's `forward`,
//! `layer_forward` and `output_chunk` (`engine::cpu`): the embedding, per layer the dropout of
//! the layer below, the input projection over all N rows and the T steps, then the output
//! layer chunk by chunk and the loss sum. The gated cells' steps are in `gated.rs`.

use std::ops::Range;

use crate::engine::cpu::dropout::{EMBED_SITE, OUT_SITE};
use crate::engine::gpu::buffers::at;
use crate::engine::gpu::matmul::{Biases, RowsEpilogue, matmul, matmul_rows, plain, transposed};
use crate::engine::gpu::profile::StepPhase;
use crate::engine::gpu::recording::{Calls, Recording};
use crate::engine::gpu::reduce::{self, LOSS_SLOT};
use crate::engine::gpu::reverse;
use crate::engine::gpu::rnn::{self, Dims, Weights};
use crate::engine::gpu::shape::{CellBuffers, Embedding, RecurrenceKernel};
use crate::engine::gpu::{dropout, gated, loss};
use crate::engine::logit_chunks;
use crate::engine::reverse::RowGather;
use crate::error::Result;

/// The forward pass (twin: `Engine::forward` of the CPU engine): the embedding, every layer
/// from the bottom, the output layer over all N rows in chunks, and the loss sum into its
/// scratch slot. The initial states are copied in by the engine before the plan runs.
pub fn record_forward(r: &Recording<'_>, out: &mut Calls) -> Result<()> {
    out.mark(StepPhase::Input);
    if let Some(e) = &r.shape.embedding {
        record_embedding(r, e, out)?;
    }
    for k in 0..r.cfg.layers {
        out.mark(StepPhase::Input);
        if let Some(input) = &r.shape.layers[k].input {
            record_dropout_forward(r, k, input, out)?;
        }
        record_layer_forward(r, k, out)?;
    }
    let n = r.n();
    out.mark(StepPhase::Output);
    if let Some(x) = &r.shape.out_input {
        record_output_dropout(r, x, out)?;
    }
    for rows in logit_chunks(n, r.shape.output.chunk_rows) {
        out.output_chunk(|out| record_output_chunk(r, rows, out))?;
    }
    out.extend(reduce::sum(
        r.ctx,
        n,
        at(&r.shape.output.row_loss, 0),
        false,
        r.scratch,
        LOSS_SLOT,
    )?);
    Ok(())
}

/// The embedded tokens [N, E], layer 0's input (twin: `rnn::embed_gather`).
fn record_embedding(r: &Recording<'_>, e: &Embedding, out: &mut Calls) -> Result<()> {
    let dims = Dims {
        rows: r.shape.rows,
        hidden: e.width,
        inputs: r.cfg.input_size,
        n: r.n(),
    };
    out.push(rnn::embed_gather(
        r.ctx,
        dims,
        at(&r.shape.batch.inputs, 0),
        r.params,
        e.table,
        at(&e.embedded, 0),
    )?);
    if r.edges.embed > 0.0 {
        // Masked in place: the layer reads the embedded tokens only through the mask.
        let n = r.n() * e.width;
        let block = r.mask_block(EMBED_SITE, e.width);
        let call = dropout::dropout_backward(r.ctx, n, at(&e.embedded, 0), r.mask(block))?;
        out.push_dropout(call, n, (0, 0), block);
    }
    Ok(())
}

/// The output layer's input with dropout on the top layer's output: its output (h_1..h_T of
/// every direction) through the mask, into `x` [N, D*W] (twin: `dropout::dropout_forward`).
fn record_output_dropout(r: &Recording<'_>, x: &wgpu::Buffer, out: &mut Calls) -> Result<()> {
    let n = r.n() * r.cfg.output_width();
    let top = r.layer_output(r.cfg.layers - 1);
    let block = r.mask_block(OUT_SITE, r.cfg.output_width());
    let call = dropout::dropout_forward(r.ctx, n, top, at(x, 0), r.mask(block))?;
    out.push_dropout(call, n, (top.offset, 0), block);
    Ok(())
}

/// The input of layer k > 0: the output of layer k-1 (h_1..h_T, both directions) through the
/// dropout mask after it, into `input` [N, D*H] (twin: `dropout::dropout_forward`; an unscaled copy when dropout is
/// off). Its arguments follow the dropout setting.
fn record_dropout_forward(
    r: &Recording<'_>,
    k: usize,
    input: &wgpu::Buffer,
    out: &mut Calls,
) -> Result<()> {
    let n = r.n() * r.cfg.output_width();
    let below = r.layer_output(k - 1);
    let block = r.mask_block(k - 1, r.cfg.output_width());
    let call = dropout::dropout_forward(r.ctx, n, below, at(input, 0), r.mask(block))?;
    out.push_dropout(call, n, (below.offset, 0), block);
    Ok(())
}

/// One layer's forward pass over all T steps (twin: `layer_forward`): the input projection
/// over all N rows at once, then the recurrence one step (or, for the rows kernels, one layer)
/// per dispatch.
pub fn record_layer_forward(r: &Recording<'_>, k: usize, out: &mut Calls) -> Result<()> {
    for d in 0..r.cfg.directions() {
        record_input_projection(r, k, d, out)?;
    }
    out.mark(StepPhase::ForwardRecurrence);
    match &r.shape.cell {
        CellBuffers::Tanh => record_tanh_forward(r, k, out)?,
        CellBuffers::Gru { layers, .. } => gated::record_gru_forward(r, k, &layers[k], out)?,
        CellBuffers::Lstm { layers, .. } => gated::record_lstm_forward(r, k, &layers[k], out)?,
    }
    record_layer_output(r, k, out)
}

/// A bidirectional layer's output [N, 2W] from its states (twin: `RowGather::apply`): per row
/// `[h_fwd; h_rev]`, the second direction's states taken back to time order. Nothing for one
/// direction, whose output is its states.
fn record_layer_output(r: &Recording<'_>, k: usize, out: &mut Calls) -> Result<()> {
    let layer = &r.shape.layers[k];
    let Some(output) = &layer.output else {
        return Ok(());
    };
    let (t, b, w) = (r.shape.steps, r.shape.rows, r.cfg.state_width());
    let gather = RowGather {
        steps: t,
        rows: b,
        width: w,
        src: (b * w, w, (t + 1) * b * w),
        dst: (0, 2 * w, w),
        directions: 2,
        reverse: 0b10,
    };
    let lengths = &r.shape.batch.lengths;
    out.push(reverse::permute_rows(
        r.ctx,
        &gather,
        lengths,
        &layer.states,
        output,
    )?);
    Ok(())
}

/// Direction d's input projection over all N rows: the tanh cell writes it where its states
/// go (with both biases), a gated cell into its gate array (b_hh joins the recurrent product).
/// One-hot layer 0 gathers columns of W_ih (twin: `rnn::input_gather_onehot`), the others run
/// a GEMM (twin: `rnn::input_projection_dense`). The second direction's is then reversed in
/// time (twin: `RowGather::apply`), as its recurrence runs over each sequence reversed.
fn record_input_projection(r: &Recording<'_>, k: usize, d: usize, out: &mut Calls) -> Result<()> {
    let (cfg, p, shape) = (r.cfg, r.params, r.shape);
    let (t_len, b, h, n) = (shape.steps, shape.rows, cfg.hidden_size, r.n());
    let gh = cfg.cell.gates() * h;
    let lo = r.layout.direction(k, d);
    let (bias_ih, bias_hh) = (lo.bias_ih, lo.bias_hh);
    let ik = cfg.layer_input_size(k);
    // Direction d's block of the gate array [N, G*H], or of the states [(T+1) * B, H] from row B.
    let (dst, dst_off, bias2) = match shape.cell.gates(k) {
        Some(gates) => (gates, d * n * gh, None),
        None => (
            &shape.layers[k].states,
            d * (t_len + 1) * b * h + b * h,
            bias_hh,
        ),
    };
    // The second direction projects into the work array, then reverses it into place.
    let work = match (&shape.reverse, d) {
        (Some(rev), 1) => Some(&rev.work),
        _ => None,
    };
    let proj = match work {
        Some(w) => at(w, 0),
        None => at(dst, dst_off),
    };
    if k == 0 && cfg.gathers_input() {
        let dims = Dims {
            rows: b,
            hidden: gh,
            inputs: ik,
            n,
        };
        let weights = Weights {
            w: lo.weight_ih,
            bias: bias_ih,
            bias2,
        };
        let tokens = at(&shape.batch.inputs, 0);
        out.push(rnn::input_gather_onehot(
            r.ctx, dims, tokens, p, weights, proj,
        )?);
    } else {
        out.extend(matmul(
            r.ctx,
            (n, gh, ik),
            r.below(k),
            transposed(at(p, lo.weight_ih)),
            proj,
            Biases::of(p, bias_ih, bias2),
            false,
        )?);
    }
    if let Some(w) = work {
        let gather = RowGather::reversed(t_len, b, gh, (0, dst_off));
        out.push(reverse::permute_rows(
            r.ctx,
            &gather,
            &shape.batch.lengths,
            w,
            dst,
        )?);
    }
    Ok(())
}

/// The tanh/relu recurrence of layer k (twin: the `TanhRows` loop of `layer_forward`, each step
/// `rnn::rnn_step_forward_with`): one dispatch for the layer (rows), or one per step spread over
/// the columns (wide) or tiled (steps).
fn record_tanh_forward(r: &Recording<'_>, k: usize, out: &mut Calls) -> Result<()> {
    let (ctx, p, shape) = (r.ctx, r.params, r.shape);
    let (t_len, b, h) = (shape.steps, shape.rows, r.cfg.hidden_size);
    let (w_hh, act) = (r.layout.layer(k).weight_hh, r.cfg.activation);
    let states = &shape.layers[k].states;
    let dims = r.tanh_dims(k);
    if r.kernel == RecurrenceKernel::Rows {
        // The rows kernels loop over the T steps themselves.
        let dims = Dims { n: t_len, ..dims };
        let call = rnn::rnn_forward_rows(ctx, dims, p, w_hh, at(states, 0), act)?;
        out.push(r.rnn_call(k, call)?);
        return Ok(());
    }
    for t in 0..t_len {
        out.push(match r.kernel {
            RecurrenceKernel::Steps => r.rnn_call(
                k,
                rnn::rnn_step_forward(
                    ctx,
                    dims,
                    p,
                    w_hh,
                    states,
                    (t * b * h, (t + 1) * b * h),
                    act,
                )?,
            )?,
            _ => r.rows_call(
                k,
                matmul_rows(
                    ctx,
                    (b, h, h),
                    Some(t * b * h),
                    transposed(at(p, w_hh)),
                    at(states, (t + 1) * b * h),
                    RowsEpilogue::Activate(act),
                )?,
            )?,
        });
    }
    Ok(())
}

/// One chunk of the output layer (twin: `output_chunk`): for `rows` of the top layer's states,
/// the logits `S W_o^T + b_o`, then the fused output nonlinearity, loss and gradient, whose
/// arguments carry the batch's mask sum. The backward records it again per chunk when the
/// output layer runs in several.
pub fn record_output_chunk(r: &Recording<'_>, rows: Range<usize>, out: &mut Calls) -> Result<()> {
    let (cfg, shape, p) = (r.cfg, r.shape, r.params);
    let (dh, v) = (cfg.output_width(), cfg.output_size);
    let o = &shape.output;
    let biases = Biases {
        buffer: p,
        first: r.layout.out_bias(),
        second: None,
    };
    out.extend(matmul(
        r.ctx,
        (rows.len(), v, dh),
        plain(r.output_input(rows.start)),
        transposed(at(p, r.layout.out_weight())),
        at(&o.logits, 0),
        Some(biases),
        false,
    )?);
    let buffers = loss::LossBuffers {
        targets: &shape.batch.targets,
        mask: &shape.batch.mask,
        logits: &o.logits,
        dlogits: &o.dlogits,
        row_loss: &o.row_loss,
    };
    let args = loss::LossArgs::new(rows.clone(), v, r.n() as f64)?;
    out.push_loss(loss::loss(r.ctx, cfg.output_kind, buffers, args)?, rows);
    Ok(())
}
