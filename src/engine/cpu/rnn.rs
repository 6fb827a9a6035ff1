//! CPU twin of `shaders/rnn.wgsl`: the input projection, the tanh/relu cell step forward and its
//! BPTT step backward, for all B rows of one time step.

use ndarray::{ArrayView2, ArrayViewMut2, Zip};

use crate::engine::cpu::Float;
use crate::engine::cpu::matmul::matmul;
use crate::engine::cpu::packed::StepWeight;
use crate::engine::cpu::simd::simd_dispatch;
use crate::model::Activation;

/// Rows of W_ih that the one-hot gather and its gradient walk together: their columns of a
/// large vocabulary stay in cache while every token of the batch reads or writes them.
const GATHER_BLOCK: usize = 16;

/// Columns of the one-hot input gradient per task on rayon's threads (a small vocabulary's
/// transposed gradient, [V, 128], stays in L1 while the batch's rows are added).
const SCATTER_COLUMNS: usize = 128;

/// One-hot input projection (a column gather, no matmul):
/// `U[r, :] = W_ih[:, tok_r] + (b_ih + b_hh)`; the gated cells leave b_hh to the recurrent
/// product (`b_hh = None`).
/// Shapes: W_ih [GH, I] (PyTorch's layout); `u` [N, GH]; `tokens` N ids < I. A vocabulary no
/// larger than N is transposed once and its rows copied; a larger one is read in place, in
/// blocks of rows of W_ih whose columns stay in cache while every token reads them.
pub fn input_gather_onehot<F: Float>(
    tokens: &[u32],
    w_ih: ArrayView2<F>,
    b_ih: &[F],
    b_hh: Option<&[F]>,
    mut u: ArrayViewMut2<F>,
) {
    let (gh, vocab) = w_ih.dim();
    let bias: Vec<F> = (0..gh)
        .map(|j| b_ih[j] + b_hh.map_or(F::zero(), |b| b[j]))
        .collect();
    if vocab <= tokens.len() {
        let w_t = w_ih.t().as_standard_layout().into_owned();
        for (mut row, &tok) in u.outer_iter_mut().zip(tokens) {
            Zip::from(&mut row)
                .and(&w_t.row(tok as usize))
                .and(&ndarray::ArrayView1::from(&bias[..]))
                .for_each(|o, &w, &b| *o = w + b);
        }
        return;
    }
    for j0 in (0..gh).step_by(GATHER_BLOCK) {
        let j1 = (j0 + GATHER_BLOCK).min(gh);
        for (r, &tok) in tokens.iter().enumerate() {
            for j in j0..j1 {
                u[[r, j]] = w_ih[[j, tok as usize]] + bias[j];
            }
        }
    }
}

/// Dense input projection over all rows at once: `U = X W_ih^T + b_ih (+ b_hh)`.
/// Shapes: X [N, I], W_ih [GH, I], U [N, GH].
pub fn input_projection_dense<F: Float>(
    x: ArrayView2<F>,
    w_ih: ArrayView2<F>,
    b_ih: &[F],
    b_hh: Option<&[F]>,
    mut u: ArrayViewMut2<F>,
) {
    for mut row in u.outer_iter_mut() {
        for (j, o) in row.iter_mut().enumerate() {
            *o = b_ih[j] + b_hh.map_or(F::zero(), |b| b[j]);
        }
    }
    matmul(x, w_ih.t(), &mut u, true);
}

/// Forward cell step for all B rows: `s_t = f1(u_t + s_{t-1} W_hh^T)`.
/// Shapes: `u_t` [B, H] (input projection plus biases), `s_prev` [B, H], W_hh [H, H],
/// `s_t` [B, H] (written). `u_t` is `None` when `s_t` holds it on entry (in place, as the
/// engine and the shader run it).
pub fn rnn_step_forward<F: Float>(
    u_t: Option<ArrayView2<F>>,
    s_prev: ArrayView2<F>,
    w_hh: ArrayView2<F>,
    act: Activation,
    s_t: ArrayViewMut2<F>,
) {
    rnn_step_forward_with(u_t, s_prev, &StepWeight::view(w_hh.t()), act, s_t);
}

/// [`rnn_step_forward`] with W_hh^T held for the time loop (packed once for all T steps).
pub fn rnn_step_forward_with<F: Float>(
    u_t: Option<ArrayView2<F>>,
    s_prev: ArrayView2<F>,
    w_hh_t: &StepWeight<'_, F>,
    act: Activation,
    mut s_t: ArrayViewMut2<F>,
) {
    if let Some(u_t) = u_t {
        s_t.assign(&u_t);
    }
    w_hh_t.product(s_prev, &mut s_t);
    match (act, s_t.as_slice_mut()) {
        (Activation::Tanh, Some(z)) => tanh_slice(z),
        (Activation::Tanh, None) => s_t.mapv_inplace(|z| z.tanh()),
        (Activation::Relu, _) => s_t.mapv_inplace(|z| z.max(F::zero())),
    }
}

simd_dispatch! {
/// `tanh` of every element of `z`, in place ([`Float::tanh_in_place`]).
fn tanh_slice<F: Float>(z: &mut [F]) {
    F::tanh_in_place(z)
}
}

/// BPTT cell step for all B rows: `dz_t = (ds_t + dz_{t+1} W_hh) ⊙ f1'(z_t)`, where `ds_t` is the
/// gradient reaching s_t from the outputs (or the layer above) and f1' is written in terms of s_t
/// (`1 - s_t^2` for tanh, `[s_t > 0]` for relu). `dz_next` is `None` at the last step.
/// Shapes: all [B, H], W_hh [H, H]. `dz_t` is written (it may hold `ds_t` on entry).
pub fn rnn_step_backward<F: Float>(
    ds_t: Option<ArrayView2<F>>,
    dz_next: Option<ArrayView2<F>>,
    w_hh: ArrayView2<F>,
    s_t: ArrayView2<F>,
    act: Activation,
    dz_t: ArrayViewMut2<F>,
) {
    rnn_step_backward_with(ds_t, dz_next, &StepWeight::view(w_hh), s_t, act, dz_t);
}

/// [`rnn_step_backward`] with W_hh held for the time loop (packed once for all T steps).
pub fn rnn_step_backward_with<F: Float>(
    ds_t: Option<ArrayView2<F>>,
    dz_next: Option<ArrayView2<F>>,
    w_hh: &StepWeight<'_, F>,
    s_t: ArrayView2<F>,
    act: Activation,
    mut dz_t: ArrayViewMut2<F>,
) {
    if let Some(ds) = ds_t {
        dz_t.assign(&ds);
    }
    if let Some(dz_next) = dz_next {
        w_hh.product(dz_next, &mut dz_t);
    }
    let one = F::one();
    match act {
        Activation::Tanh => Zip::from(&mut dz_t)
            .and(&s_t)
            .for_each(|d, &s| *d = *d * (one - s * s)),
        Activation::Relu => Zip::from(&mut dz_t).and(&s_t).for_each(|d, &s| {
            if s <= F::zero() {
                *d = F::zero()
            }
        }),
    }
}

/// One-hot input gradient (scatter-add): `dW_ih[:, tok_r] += dZ[r, :]`.
/// Shapes: dW_ih [GH, I] (PyTorch's layout), `dz` [N, GH]. As the gather: a vocabulary no
/// larger than N gathers into a transposed array added once; a larger one is written in place
/// in blocks of rows.
pub fn input_grad_onehot<F: Float>(tokens: &[u32], dz: ArrayView2<F>, mut dw_ih: ArrayViewMut2<F>) {
    let (gh, vocab) = dw_ih.dim();
    if vocab <= tokens.len() {
        // Blocks of columns on rayon's threads, each row added in order.
        use rayon::prelude::*;
        let width = SCATTER_COLUMNS;
        let starts: Vec<usize> = (0..gh).step_by(width).collect();
        let blocks: Vec<ndarray::Array2<F>> = starts
            .par_iter()
            .map(|&j0| {
                let cols = dz.slice(ndarray::s![.., j0..(j0 + width).min(gh)]);
                let mut dw_t = ndarray::Array2::<F>::zeros((vocab, cols.ncols()));
                for (row, &tok) in cols.outer_iter().zip(tokens) {
                    let mut dst = dw_t.row_mut(tok as usize);
                    dst += &row;
                }
                dw_t
            })
            .collect();
        for (&j0, dw_t) in starts.iter().zip(&blocks) {
            let mut dst = dw_ih.slice_mut(ndarray::s![j0..j0 + dw_t.ncols(), ..]);
            dst += &dw_t.t();
        }
        return;
    }
    for j0 in (0..gh).step_by(GATHER_BLOCK) {
        let j1 = (j0 + GATHER_BLOCK).min(gh);
        for (r, &tok) in tokens.iter().enumerate() {
            for j in j0..j1 {
                dw_ih[[j, tok as usize]] += dz[[r, j]];
            }
        }
    }
}

/// Embedding lookup: `X[r, :] = E[tok_r, :]`. Shapes: E [I, E], X [N, E] (written).
pub fn embed_gather<F: Float>(tokens: &[u32], table: ArrayView2<F>, mut x: ArrayViewMut2<F>) {
    for (mut row, &tok) in x.outer_iter_mut().zip(tokens) {
        row.assign(&table.row(tok as usize));
    }
}

/// Embedding gradient (scatter-add): `dE[tok_r, :] += dX[r, :]`. Shapes: dX [N, E], dE [I, E].
pub fn embed_grad<F: Float>(tokens: &[u32], dx: ArrayView2<F>, mut d_table: ArrayViewMut2<F>) {
    for (row, &tok) in dx.outer_iter().zip(tokens) {
        let mut dst = d_table.row_mut(tok as usize);
        dst += &row;
    }
}
