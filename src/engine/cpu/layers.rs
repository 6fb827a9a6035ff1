//! The passes of one layer: the input side (the embedding, dropout between layers, the layer's
//! input), each layer's forward and BPTT over all T steps, the output layer in chunks, and the
//! weight and input gradients of a layer after its BPTT. The Engine impl (`engine.rs`) calls
//! them in order; the time loops themselves run by blocks of rows (`rows.rs`), each step's
//! product on [`StepWeight`](super::packed::StepWeight), each step's cell math in the cell's file
//! (`rnn.rs`, `gru.rs`, `lstm.rs`).
//!
//! Shapes: T time steps, B rows, H state size, I input size, V output size, N = T * B.

use ndarray::{Array2, ArrayView2, ArrayViewMut2, s};

use crate::engine::profile::{self, PhaseClock, StepPhase};
use crate::engine::{Targets, logit_chunk_rows, logit_chunks};
use crate::error::{Error, Result};
use crate::model::{Cell, LayerOffsets, ModelConfig, OutputKind, ParamLayout};

use super::dropout::{self, MaskKey};
use super::engine::{Cache, DirectionCache, Kept, LayerCache, PreparedBatch};
use super::matmul::matmul;
use super::rows::{CellGrad, GatedGradRows, GatedRows, RowBlock, TanhGradRows, TanhRows};
use super::{Float, loss, packed, pool, reduce, reverse, rnn};

/// The `rows x cols` matrix at `offset` of a flat parameter or gradient buffer (row-major, as
/// [`ParamLayout`] places every tensor).
pub(super) fn view<F: Float>(
    buf: &[F],
    offset: usize,
    rows: usize,
    cols: usize,
) -> ArrayView2<'_, F> {
    ArrayView2::from_shape((rows, cols), &buf[offset..offset + rows * cols])
        .expect("layout ranges are in bounds")
}

/// An array of `steps` blocks of `b` rows ([steps * b, width], standard layout, as every array
/// of the engine is) seen per step: [steps, b, width].
fn per_step<F: Float>(a: ArrayView2<'_, F>, b: usize) -> ndarray::ArrayView3<'_, F> {
    let (rows, w) = a.dim();
    a.into_shape_with_order((rows / b.max(1), b, w))
        .expect("standard-layout arrays of whole steps")
}

/// [`per_step`], mutable.
fn per_step_mut<F: Float>(a: &mut Array2<F>, b: usize) -> ndarray::ArrayViewMut3<'_, F> {
    let (rows, w) = a.dim();
    a.view_mut()
        .into_shape_with_order((rows / b.max(1), b, w))
        .expect("standard-layout arrays of whole steps")
}

/// [`view`], mutable.
pub(super) fn view_mut<F: Float>(
    buf: &mut [F],
    offset: usize,
    rows: usize,
    cols: usize,
) -> ArrayViewMut2<'_, F> {
    ArrayViewMut2::from_shape((rows, cols), &mut buf[offset..offset + rows * cols])
        .expect("layout ranges are in bounds")
}

/// With an embedding, layer 0's input: the embedded tokens [N, E].
pub(super) fn embed_tokens<F: Float>(
    cfg: &ModelConfig,
    (layout, p): (&ParamLayout, &[F]),
    batch: &PreparedBatch<F>,
    pool: &mut pool::Pool<F>,
) -> Option<Array2<F>> {
    let n = batch.steps * batch.rows;
    match (layout.embed(), cfg.embed, &batch.tokens) {
        (Some(off), Some(e), Some(tokens)) => {
            let mut x = pool.overwritten((n, e));
            rnn::embed_gather(tokens, view(p, off, cfg.input_size, e), x.view_mut());
            Some(x)
        }
        _ => None,
    }
}

/// The input of layer k > 0 when dropout is on: the output of layer k-1 (the last of `layers`)
/// through its mask, [N, D*W]; `None` at layer 0 and where the mask keeps everything.
pub(super) fn dropout_input<F: Float>(
    cfg: &ModelConfig,
    k: usize,
    masks: &[MaskKey],
    layers: &[LayerCache<F>],
    b: usize,
    pool: &mut pool::Pool<F>,
) -> Option<Array2<F>> {
    let mask = k.checked_sub(1).and_then(|j| masks.get(j));
    mask.filter(|m| !m.is_identity()).map(|&m| {
        let below = layers[k - 1].output(b);
        let mut x = pool.overwritten((below.nrows(), cfg.output_width()));
        dropout::dropout_forward(below, m, x.view_mut());
        x
    })
}

/// What layer k reads, [N, width]: its input after dropout (`input`), or the output of layer
/// k-1, or at layer 0 the embedded tokens or the dense batch; `None` for one-hot tokens, which
/// the layer gathers (and scatters in its gradient).
pub(super) fn layer_below<'a, F: Float>(
    k: usize,
    input: Option<&'a Array2<F>>,
    layers: &'a [LayerCache<F>],
    embedded: Option<&'a Array2<F>>,
    batch: &'a PreparedBatch<F>,
) -> Option<ArrayView2<'a, F>> {
    match (input, k) {
        (Some(x), _) => Some(x.view()),
        (None, 0) => embedded.or(batch.dense.as_ref()).map(|x| x.view()),
        (None, _) => Some(layers[k - 1].output(batch.rows)),
    }
}

/// The output layer's input [N, D*W]: the top layer's output (h_1..h_T of each direction), or
/// `out_input`, that output through the output dropout when it is on.
pub(super) fn output_input<'a, F: Float>(
    cfg: &ModelConfig,
    layers: &'a [LayerCache<F>],
    out_input: Option<&'a Array2<F>>,
    b: usize,
) -> ArrayView2<'a, F> {
    match out_input {
        Some(x) => x.view(),
        None => layers[cfg.layers - 1].output(b),
    }
}

/// One chunk of the output layer: for `rows` of the top layer's output `top` [N, D*W], the logits
/// `top[rows] W_o^T + b_o`, then the fused output nonlinearity, loss and (with `grad`) its
/// gradient. Returns the probabilities and, with `grad`, the gradient w.r.t. the logits,
/// [rows, V] each, and the masked loss sum. `reuse` holds arrays of an earlier chunk or forward,
/// filled when their shape fits.
fn output_chunk<F: Float>(
    cfg: &ModelConfig,
    (layout, p): (&ParamLayout, &[F]),
    top: ArrayView2<F>,
    batch: &PreparedBatch<F>,
    rows: std::ops::Range<usize>,
    (reuse, grad): (Option<Kept<F>>, bool),
) -> Result<(Kept<F>, f64)> {
    let (width, v) = (cfg.output_width(), cfg.output_size);
    let w_o = view(p, layout.out_weight(), v, width);
    let b_o = ndarray::ArrayView1::from(&p[layout.out_bias()..layout.out_bias() + v]);
    let m = rows.len();
    // Both arrays are overwritten whole, so those of the last forward serve when they fit.
    let fits = |a: Array2<F>| (a.dim() == (m, v)).then_some(a);
    let (probs, dlogits) = reuse.map_or((None, None), |k| (Some(k.probs), k.dlogits));
    let mut logits = probs
        .and_then(fits)
        .unwrap_or_else(|| Array2::zeros((m, v)));
    let mut dlogits = grad.then(|| {
        dlogits
            .and_then(fits)
            .unwrap_or_else(|| Array2::zeros((m, v)))
    });
    for mut row in logits.outer_iter_mut() {
        row.assign(&b_o);
    }
    matmul(
        top.slice(s![rows.clone(), ..]),
        w_o.t(),
        &mut logits.view_mut(),
        true,
    );
    let norm = batch.count.max(f64::MIN_POSITIVE);
    let mask = batch.mask.as_deref().map(|m| &m[rows.clone()]);
    let dense_rows = rows.start * v..rows.end * v;
    let d = dlogits.as_mut().map(|d| d.view_mut());
    let z = logits.view_mut();
    let sum = match (&batch.targets, cfg.output_kind) {
        (Targets::Classes(y), OutputKind::Softmax) => {
            loss::softmax_cross_entropy(z, &y[rows.clone()], mask, norm, d)
        }
        (Targets::Dense(y), OutputKind::Identity) => {
            loss::squared_error(z, &y[dense_rows], mask, norm, d)
        }
        (Targets::Dense(y), OutputKind::Sigmoid) => {
            loss::sigmoid_binary_cross_entropy(z, &y[dense_rows], mask, norm, d)
        }
        _ => return Err(Error::Shape("targets do not match the output kind".into())),
    };
    let kept = Kept {
        probs: logits,
        dlogits,
    };
    Ok((kept, sum))
}

/// The output layer's forward over all N rows of the top layer's states `top`, in chunks when
/// the logits exceed `budget` elements: the projection, then the fused output nonlinearity +
/// loss (+ gradient with `grad`). Returns, when it ran in one chunk, the probabilities and
/// (with `grad`) the gradient w.r.t. the logits (kept for `outputs` and the backward; `reuse`
/// are arrays to fill), the rows per chunk, and the masked loss sum. In chunks, only the loss
/// is kept, and one chunk's arrays are reused by the next.
pub(super) fn output_forward<F: Float>(
    cfg: &ModelConfig,
    model: (&ParamLayout, &[F]),
    top: ArrayView2<F>,
    batch: &PreparedBatch<F>,
    (budget, grad): (usize, bool),
    reuse: Option<Kept<F>>,
) -> Result<(Option<Kept<F>>, usize, f64)> {
    let (n, v) = (top.nrows(), cfg.output_size);
    let chunk_rows = logit_chunk_rows(n, v, budget);
    if chunk_rows >= n {
        let (kept, sum) = output_chunk(cfg, model, top, batch, 0..n, (reuse, grad))?;
        return Ok((Some(kept), chunk_rows, sum));
    }
    let mut sum = 0.0;
    let mut spare = reuse;
    for rows in logit_chunks(n, chunk_rows) {
        let (kept, s) = output_chunk(cfg, model, top, batch, rows, (spare, false))?;
        sum += s;
        spare = Some(kept);
    }
    Ok((None, chunk_rows, sum))
}

/// The output probabilities of `rows`, which lie within the output layer's chunk `chunk` of
/// the last forward (twin: the GPU engine's `outputs_of`), as f32: the kept ones when it ran in
/// one chunk, else the whole chunk computed again from the top layer's states, as the backward
/// does, so each value is the one the forward computed. `rows.len() * V` values.
pub(super) fn chunk_outputs<F: Float>(
    cfg: &ModelConfig,
    model: (&ParamLayout, &[F]),
    (cache, batch): (&Cache<F>, &PreparedBatch<F>),
    chunk: std::ops::Range<usize>,
    rows: std::ops::Range<usize>,
) -> Result<Vec<f32>> {
    let f32s = |a: ArrayView2<F>| a.iter().map(|v| v.to_f32_lossy()).collect();
    if let Some(kept) = &cache.kept {
        return Ok(f32s(kept.probs.slice(s![rows, ..])));
    }
    let top = output_input(cfg, &cache.layers, cache.out_input.as_ref(), batch.rows);
    let probs = output_chunk(cfg, model, top, batch, chunk.clone(), (None, false))?
        .0
        .probs;
    let within = rows.start - chunk.start..rows.end - chunk.start;
    Ok(f32s(probs.slice(s![within, ..])))
}

/// The output layer's backward, chunk by chunk (the kept gradient, or each chunk computed
/// again): dW_o += dlogits^T S, db_o += colsum(dlogits). Returns dS = dlogits W_o [N, D*W], the
/// gradient reaching the top layer's output (back through the output dropout when it is on;
/// S is then the dropped output).
pub(super) fn output_backward<F: Float>(
    cfg: &ModelConfig,
    (layout, p): (&ParamLayout, &[F]),
    g: &mut [F],
    (cache, batch): (&Cache<F>, &PreparedBatch<F>),
    (pool, clock): (&mut pool::Pool<F>, &mut Option<PhaseClock>),
) -> Result<Array2<F>> {
    let (b, h, v) = (batch.rows, cfg.output_width(), cfg.output_size);
    let n = batch.steps * b;
    let top = output_input(cfg, &cache.layers, cache.out_input.as_ref(), b);
    let (ow, ob) = (layout.out_weight(), layout.out_bias());
    // Written whole by the chunks' `dS = dlogits W_o` (not accumulated).
    let mut ds = pool.overwritten((n, h));
    let mut spare = None;
    for rows in logit_chunks(n, cache.chunk_rows) {
        let dlogits = match cache.kept.as_ref().and_then(|k| k.dlogits.as_ref()) {
            Some(d) => d.view(),
            None => {
                profile::enter(clock, StepPhase::Output);
                let reuse = (spare.take(), true);
                spare = Some(output_chunk(cfg, (layout, p), top, batch, rows.clone(), reuse)?.0);
                profile::enter(clock, StepPhase::OutputBackward);
                let recomputed = spare.as_ref().and_then(|k| k.dlogits.as_ref());
                recomputed
                    .ok_or_else(|| Error::Misuse("an output chunk lost its gradient".into()))?
                    .view()
            }
        };
        let top_c = top.slice(s![rows.clone(), ..]);
        matmul(dlogits.t(), top_c, &mut view_mut(g, ow, v, h), true);
        reduce::column_sums_accumulate(dlogits, &mut g[ob..ob + v]);
        matmul(
            dlogits,
            view(p, ow, v, h),
            &mut ds.slice_mut(s![rows, ..]),
            false,
        );
    }
    if cache.out_input.is_some() {
        dropout::dropout_backward(cache.edge_masks.out, ds.view_mut());
    }
    Ok(ds)
}

/// The `bias_ih` and `bias_hh` [G*H] of one direction `lo`, or `zeros` without biases
/// (bias=False), where the layer adds zeros.
fn biases_or<'a, F: Float>(
    lo: &LayerOffsets,
    p: &'a [F],
    gh: usize,
    zeros: &'a [F],
) -> (&'a [F], &'a [F]) {
    match lo.bias_ih.zip(lo.bias_hh) {
        Some((ih, hh)) => (&p[ih..ih + gh], &p[hh..hh + gh]),
        None => (zeros, zeros),
    }
}

/// The input projection of one direction over all N rows at once, into `u` [N, G*H]: x W_ih^T
/// plus b_ih (and b_hh, `second`, for the tanh cell), a column gather for one-hot input. The
/// reverse direction (`reverse`, the batch's [`reversal`](super::reverse::reversal)) reads it
/// in its own time order, so its rows are permuted in place.
fn input_projection<F: Float>(
    (w_ih, b_ih, second): (ArrayView2<F>, &[F], Option<&[F]>),
    batch: &PreparedBatch<F>,
    below: Option<ArrayView2<F>>,
    reverse: Option<&[u32]>,
    mut u: ArrayViewMut2<F>,
) {
    match (below, &batch.tokens) {
        (Some(x), _) => rnn::input_projection_dense(x, w_ih, b_ih, second, u.view_mut()),
        (None, Some(tokens)) => rnn::input_gather_onehot(tokens, w_ih, b_ih, second, u.view_mut()),
        (None, None) => u.fill(F::zero()),
    }
    if let Some(perm) = reverse {
        reverse::permute_rows(u, perm);
    }
}

/// The batch's reversal when direction `d` is the reverse one.
fn reversal_of<F: Float>(batch: &PreparedBatch<F>, d: usize) -> Option<&[u32]> {
    if d == 1 {
        batch.reverse.as_deref()
    } else {
        None
    }
}

/// One direction `d` of layer k's forward pass over all T steps: the input projection over all
/// N rows at once (a column gather for one-hot input), then the recurrence one step at a time
/// (the reverse direction over each sequence reversed, `reverse.rs`). `below` is the layer's
/// input ([`layer_below`]; `None`: the one-hot tokens). `init` is (h0 [B, W], c0 [B, H]).
pub(super) fn layer_forward<F: Float>(
    cfg: &ModelConfig,
    (layout, p): (&ParamLayout, &[F]),
    (k, d): (usize, usize),
    batch: &PreparedBatch<F>,
    below: Option<ArrayView2<F>>,
    (h0, c0): (&Array2<F>, Option<&Array2<F>>),
    (pool, clock): (&mut pool::Pool<F>, &mut Option<PhaseClock>),
) -> DirectionCache<F> {
    let (t_len, b, h, w) = (batch.steps, batch.rows, cfg.hidden_size, cfg.state_width());
    let n = t_len * b;
    let gh = cfg.cell.gates() * h;
    let lo = layout.direction(k, d);
    let w_ih = view(p, lo.weight_ih, gh, cfg.layer_input_size(k));
    let gated = cfg.cell != Cell::Rnn;
    // Every step's product h_{t-1} W_hh^T (and with a projection m_t W_hr^T), with the weight
    // packed (or copied row-major) once for all T steps. With the rows split between threads,
    // each product runs on its own thread.
    let parts = pool.row_parts(b);
    let w_hh_t = view(p, lo.weight_hh, gh, w).reversed_axes();
    let step_w = step_weight(w_hh_t, parts == 1, pool);
    let step_hr = lo
        .weight_hr
        .map(|hr| step_weight(view(p, hr, w, h).reversed_axes(), parts == 1, pool));
    let zeros = vec![F::zero(); if lo.bias_ih.is_some() { 0 } else { gh }];
    let (b_ih, b_hh) = biases_or(&lo, p, gh, &zeros);
    // Overwritten whole: rows 0..B by h0, the others by the input projection (tanh) or the
    // steps; likewise the gates (the input projection), a_hh (bias + product) and the memories.
    let mut states = pool.overwritten(((t_len + 1) * b, w));
    states.slice_mut(s![0..b, ..]).assign(h0);
    // Input projection over all N rows at once: the tanh cell writes it where its states go
    // (with both biases), a gated cell into its gate array (b_hh joins the recurrent product).
    let mut gates = pool.overwritten(if gated { (n, gh) } else { (0, 0) });
    let (u, second) = if gated {
        (gates.view_mut(), None)
    } else {
        (states.slice_mut(s![b.., ..]), Some(b_hh))
    };
    input_projection((w_ih, b_ih, second), batch, below, reversal_of(batch, d), u);
    let mut a_hh = pool.overwritten(if gated { (n, gh) } else { (0, 0) });
    let mut cells = c0.map(|c0| {
        let mut c = pool.overwritten(((t_len + 1) * b, h));
        c.slice_mut(s![0..b, ..]).assign(c0);
        c
    });
    let mut unprojected = step_hr.as_ref().map(|_| pool.overwritten((n, h)));
    // The recurrence, one time step at a time.
    profile::enter(clock, StepPhase::ForwardRecurrence);
    if !gated {
        let rows = TanhRows(per_step_mut(&mut states, b));
        rows.run_split(parts, &|r| r.forward(&step_w, cfg.activation));
    } else {
        // Per time step and batch row: [T(+1), B, width].
        let rows = GatedRows {
            states: per_step_mut(&mut states, b),
            cells: cells.as_mut().map(|c| per_step_mut(c, b)),
            gates: per_step_mut(&mut gates, b),
            a_hh: per_step_mut(&mut a_hh, b),
            unprojected: unprojected.as_mut().map(|m| per_step_mut(m, b)),
        };
        rows.run_split(parts, &|r| r.forward(&step_w, b_hh, step_hr.as_ref()));
    }
    pool.give_pack(step_w.into_buffer());
    if let Some(hr) = step_hr {
        pool.give_pack(hr.into_buffer());
    }
    DirectionCache {
        states,
        cells,
        gates,
        a_hh,
        unprojected,
    }
}

/// A bidirectional layer's output `[h_fwd ; h_rev]` [N, 2W] in the sequence's time order, from
/// its two runs (the reverse one read through the reversal); `None` with one direction.
pub(super) fn layer_output<F: Float>(
    runs: &[DirectionCache<F>],
    batch: &PreparedBatch<F>,
    pool: &mut pool::Pool<F>,
) -> Option<Array2<F>> {
    let [fwd, rev] = runs else {
        return None;
    };
    let b = batch.rows;
    let w = fwd.states.ncols();
    let mut out = pool.overwritten((batch.steps * b, 2 * w));
    out.slice_mut(s![.., 0..w])
        .assign(&fwd.states.slice(s![b.., ..]));
    let rev_states = rev.states.slice(s![b.., ..]);
    match reversal_of(batch, 1) {
        Some(perm) => reverse::gather_rows(rev_states, perm, out.slice_mut(s![.., w..])),
        None => out.slice_mut(s![.., w..]).assign(&rev_states),
    }
    Some(out)
}

/// The gradient reaching a layer's output from above, ds [N, D*W], split per direction: the
/// forward direction's columns as they are, the reverse direction's in its own time order
/// (through the reversal). With one direction, ds itself.
pub(super) fn split_directions<F: Float>(
    ds: Array2<F>,
    batch: &PreparedBatch<F>,
    directions: usize,
    pool: &mut pool::Pool<F>,
) -> Vec<Array2<F>> {
    if directions == 1 {
        return vec![ds];
    }
    let (n, w) = (ds.nrows(), ds.ncols() / 2);
    let mut fwd = pool.overwritten((n, w));
    fwd.assign(&ds.slice(s![.., 0..w]));
    let mut rev = pool.overwritten((n, w));
    match reversal_of(batch, 1) {
        Some(perm) => reverse::gather_rows(ds.slice(s![.., w..]), perm, rev.view_mut()),
        None => rev.assign(&ds.slice(s![.., w..])),
    }
    pool.give(ds);
    vec![fwd, rev]
}

/// The gradients one direction's BPTT returns.
pub(super) struct DirectionGrads<F> {
    /// Of the input-side pre-activations, [N, G*H] (for the tanh cell and the LSTM also the
    /// recurrent side's).
    pub(super) da_ih: Array2<F>,
    /// The GRU: of the recurrent-side pre-activations, [N, 3H].
    pub(super) da_hh: Option<Array2<F>>,
    /// With a projection: the whole gradient reaching each h_t, [N, P] (for dW_hr).
    pub(super) dh: Option<Array2<F>>,
}

/// The step product weights of one direction's BPTT: W_hh [G*H, W] for dh_{t-1} += da W_hh
/// and, with a projection, W_hr [P, H] for dm_t = dh_t W_hr; packed once for all T steps.
fn backward_weights<'a, F: Float>(
    cfg: &ModelConfig,
    (layout, p): (&ParamLayout, &'a [F]),
    (k, d): (usize, usize),
    parallel: bool,
    pool: &mut pool::Pool<F>,
) -> (packed::StepWeight<'a, F>, Option<packed::StepWeight<'a, F>>) {
    let (h, w) = (cfg.hidden_size, cfg.state_width());
    let lo = layout.direction(k, d);
    let w_hh = view(p, lo.weight_hh, cfg.cell.gates() * h, w);
    let step_w = step_weight(w_hh, parallel, pool);
    let step_hr = lo
        .weight_hr
        .map(|hr| step_weight(view(p, hr, w, h), parallel, pool));
    (step_w, step_hr)
}

/// `w` held for the products of a time loop, on a packing buffer from the pool; `parallel`:
/// whether each product may use several threads.
fn step_weight<'a, F: Float>(
    w: ArrayView2<'a, F>,
    parallel: bool,
    pool: &mut pool::Pool<F>,
) -> packed::StepWeight<'a, F> {
    let product = pool.step_product();
    packed::StepWeight::reusing_as(w, pool.pack_buffer(), product).parallel(parallel)
}

/// One direction `d` of layer k's BPTT over all T steps, from the last step to the first (in the
/// direction's own time order). `ds` [N, W] is the gradient reaching its states h_1..h_T from
/// above ([`split_directions`]).
pub(super) fn layer_backward<F: Float>(
    cfg: &ModelConfig,
    model: (&ParamLayout, &[F]),
    (k, d): (usize, usize),
    run: &DirectionCache<F>,
    b: usize,
    mut ds: Array2<F>,
    pool: &mut pool::Pool<F>,
) -> DirectionGrads<F> {
    let n = ds.nrows();
    // dh_{t-1} += dz_t W_hh at every step, W_hh packed once; with the rows split between
    // threads, each product runs on its own thread.
    let parts = pool.row_parts(b);
    let (step_w, step_hr) = backward_weights(cfg, model, (k, d), parts == 1, pool);
    if cfg.cell == Cell::Rnn {
        // In place: ds becomes dz.
        let rows = TanhGradRows {
            states: per_step(run.states.view(), b),
            ds: per_step_mut(&mut ds, b),
        };
        rows.run_split(parts, &|r| r.backward(&step_w, cfg.activation));
        pool.give_pack(step_w.into_buffer());
        return DirectionGrads {
            da_ih: ds,
            da_hh: None,
            dh: None,
        };
    }
    let (gh, h) = (run.gates.ncols(), cfg.hidden_size);
    let lstm = run.cells.is_some();
    // Both written whole by the step kernels, row block by row block.
    let mut da_ih = pool.overwritten((n, gh));
    let mut da_hh = pool.overwritten(if lstm { (0, 0) } else { (n, gh) });
    let mut dc = pool.zeros(if lstm { (b, h) } else { (0, 0) });
    let mut dm = pool.overwritten(if step_hr.is_some() { (b, h) } else { (0, 0) });
    let cell = match &run.cells {
        Some(c) => CellGrad::Lstm {
            cells: per_step(c.view(), b),
            dc: dc.view_mut(),
            dm: step_hr.as_ref().map(|_| dm.view_mut()),
        },
        None => CellGrad::Gru {
            a_hh: per_step(run.a_hh.view(), b),
            states: per_step(run.states.view(), b),
            da_hh: per_step_mut(&mut da_hh, b),
        },
    };
    let rows = GatedGradRows {
        gates: per_step(run.gates.view(), b),
        ds: per_step_mut(&mut ds, b),
        da_ih: per_step_mut(&mut da_ih, b),
        cell,
    };
    rows.run_split(parts, &|r| r.backward(&step_w, step_hr.as_ref()));
    pool.give_pack(step_w.into_buffer());
    pool.give(dc);
    pool.give(dm);
    // ds now holds the whole gradient of every h_t: what dW_hr needs.
    let dh = match step_hr {
        Some(hr) => {
            pool.give_pack(hr.into_buffer());
            Some(ds)
        }
        None => {
            pool.give(ds);
            None
        }
    };
    DirectionGrads {
        da_ih,
        da_hh: (!lstm).then_some(da_hh),
        dh,
    }
}

/// One direction's recurrent weight gradients over all N rows at once (in the direction's own
/// time order): dW_hh += da_hh^T S_prev, the two bias sums, and with a projection
/// dW_hr += dh^T M (M the states before the projection).
pub(super) fn recurrent_grads<F: Float>(
    cfg: &ModelConfig,
    layout: &ParamLayout,
    g: &mut [F],
    (k, d): (usize, usize),
    run: &DirectionCache<F>,
    grads: &DirectionGrads<F>,
) {
    let (n, gh) = grads.da_ih.dim();
    let (h, w) = (cfg.hidden_size, cfg.state_width());
    let lo = layout.direction(k, d);
    let da_hh = grads.da_hh.as_ref().unwrap_or(&grads.da_ih);
    matmul(
        da_hh.t(),
        run.states.slice(s![0..n, ..]),
        &mut view_mut(g, lo.weight_hh, gh, w),
        true,
    );
    if let Some((ih, hh)) = lo.bias_ih.zip(lo.bias_hh) {
        // One array for both (the tanh cell, the LSTM) onto equal gradients (both zero after
        // `zero_grads`): bias_hh's sums are bias_ih's, copied instead of summed again.
        let same = grads.da_hh.is_none() && g[ih..ih + gh] == g[hh..hh + gh];
        reduce::column_sums_accumulate(grads.da_ih.view(), &mut g[ih..ih + gh]);
        match same {
            true => g.copy_within(ih..ih + gh, hh),
            false => reduce::column_sums_accumulate(da_hh.view(), &mut g[hh..hh + gh]),
        }
    }
    if let (Some(hr), Some(dh), Some(m)) = (lo.weight_hr, &grads.dh, &run.unprojected) {
        matmul(dh.t(), m.view(), &mut view_mut(g, hr, w, h), true);
    }
}

/// The reverse direction's da_ih (`d` = 1) back in the sequence's time order, in place.
pub(super) fn in_time_order<F: Float>(da_ih: &mut Array2<F>, batch: &PreparedBatch<F>, d: usize) {
    if let Some(perm) = reversal_of(batch, d) {
        reverse::permute_rows(da_ih.view_mut(), perm);
    }
}

/// dW_ih += da_ih^T X for direction `d` of layer k and its input X ([`layer_below`]; a
/// scatter-add for one-hot tokens), with da_ih in the sequence's time order.
pub(super) fn input_weight_grads<F: Float>(
    cfg: &ModelConfig,
    layout: &ParamLayout,
    g: &mut [F],
    (k, d): (usize, usize),
    (cache, batch): (&Cache<F>, &PreparedBatch<F>),
    da_ih: &Array2<F>,
) {
    let gh = da_ih.ncols();
    let lo = layout.direction(k, d);
    let embedded = cache.embedded.as_ref();
    let below = layer_below(
        k,
        cache.layers[k].input.as_ref(),
        &cache.layers,
        embedded,
        batch,
    );
    let mut dw_ih = view_mut(g, lo.weight_ih, gh, cfg.layer_input_size(k));
    match (below, &batch.tokens) {
        (Some(x), _) => matmul(da_ih.t(), x, &mut dw_ih, true),
        (None, Some(tokens)) => rnn::input_grad_onehot(tokens, da_ih.view(), dw_ih),
        (None, None) => {}
    }
}

/// Direction `d`'s part of the gradient of layer k's input, `dx (+)= da_ih W_ih` [N, width]
/// (the first direction writes `dx`, the second adds to it), with da_ih in the sequence's time
/// order. Nothing where no gradient is passed down (layer 0 without an embedding).
pub(super) fn input_grad<F: Float>(
    cfg: &ModelConfig,
    (layout, p): (&ParamLayout, &[F]),
    (k, d): (usize, usize),
    embedded: bool,
    da_ih: &Array2<F>,
    dx: &mut Option<Array2<F>>,
    pool: &mut pool::Pool<F>,
) {
    if k == 0 && !embedded {
        return;
    }
    let (n, gh) = da_ih.dim();
    let input = cfg.layer_input_size(k);
    let w_ih = view(p, layout.direction(k, d).weight_ih, gh, input);
    match dx {
        Some(x) => matmul(da_ih.view(), w_ih, &mut x.view_mut(), true),
        None => {
            let mut x = pool.overwritten((n, input));
            matmul(da_ih.view(), w_ih, &mut x.view_mut(), false);
            *dx = Some(x);
        }
    }
}

/// The gradient of layer k's input `dx` ([`input_grad`] of every direction), passed on: for
/// k > 0 returned as the gradient reaching layer k-1's output (back through dropout where it was
/// applied); at layer 0 scattered into the embedding's gradient when there is one. Returns an
/// empty array where nothing is passed down.
pub(super) fn input_backward<F: Float>(
    cfg: &ModelConfig,
    layout: &ParamLayout,
    g: &mut [F],
    k: usize,
    (cache, batch): (&Cache<F>, &PreparedBatch<F>),
    dx: Option<Array2<F>>,
    pool: &mut pool::Pool<F>,
) -> Array2<F> {
    let width = cfg.output_width();
    let Some(mut dx) = dx else {
        return Array2::<F>::zeros((0, width));
    };
    if k > 0 {
        if cache.layers[k].input.is_some() {
            dropout::dropout_backward(cache.masks[k - 1], dx.view_mut());
        }
        return dx;
    }
    if !cache.edge_masks.embed.is_identity() {
        dropout::dropout_backward(cache.edge_masks.embed, dx.view_mut());
    }
    if let (Some(off), Some(tokens)) = (layout.embed(), &batch.tokens) {
        let e = dx.ncols();
        rnn::embed_grad(tokens, dx.view(), view_mut(g, off, cfg.input_size, e));
    }
    pool.give(dx);
    Array2::<F>::zeros((0, width))
}
