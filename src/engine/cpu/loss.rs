//! CPU twin of `shaders/loss.wgsl`: output nonlinearity, loss and its gradient, fused per row.
//! With the canonical pairs (softmax + cross-entropy, identity + squared error, sigmoid + binary
//! cross-entropy) the gradient w.r.t. the logits is `w_r (p_r - y_r)` in every case, with
//! `w_r = mask_r / norm` (norm = the number of counted steps of the batch).

use ndarray::ArrayViewMut2;

use crate::engine::cpu::Float;
use crate::engine::cpu::simd::simd_dispatch;

fn weight(mask: Option<&[f32]>, r: usize) -> f64 {
    mask.map_or(1.0, |m| m[r] as f64)
}

/// Softmax + cross-entropy per row: `p_r = softmax(z_r)` (max-subtracted), loss `-ln p_r[y_r]`,
/// `dz_r = mask_r / norm * (p_r - onehot(y_r))`. `logits` [N, V] is overwritten with `p`;
/// `dlogits` [N, V] is written when given (a forward without gradients passes `None`). Returns
/// `sum_r mask_r * loss_r`, summed in row order. Blocks of [`LOSS_ROWS`] rows run on rayon's
/// threads; each row's result does not depend on the others, so the result is the same on any
/// number of threads.
pub fn softmax_cross_entropy<F: Float>(
    mut logits: ArrayViewMut2<F>,
    targets: &[u32],
    mask: Option<&[f32]>,
    norm: f64,
    dlogits: Option<ArrayViewMut2<F>>,
) -> f64 {
    let (n, v) = logits.dim();
    let mut losses = vec![0.0f64; n];
    let rows = |r0: usize, z: &mut [F], dz: Option<&mut [F]>, out: &mut [f64]| {
        let mask = mask.map(|m| &m[r0..]);
        softmax_rows(z, dz, v, &targets[r0..], mask, norm, out);
    };
    match (logits.as_slice_mut(), dlogits) {
        (Some(z), None) => in_row_blocks(z, None, v, &mut losses, &rows),
        (Some(z), Some(mut d)) => match d.as_slice_mut() {
            Some(dz) => in_row_blocks(z, Some(dz), v, &mut losses, &rows),
            None => {
                let mut dz = d.to_owned();
                let dz_slice = dz.as_slice_mut().unwrap_or_default();
                in_row_blocks(z, Some(dz_slice), v, &mut losses, &rows);
                d.assign(&dz);
            }
        },
        (None, d) => {
            // Not in standard layout (a caller's view): through a copy that is.
            let mut z = logits.to_owned();
            let total = softmax_cross_entropy(z.view_mut(), targets, mask, norm, d);
            logits.assign(&z);
            return total;
        }
    }
    losses.iter().fold(0.0, |a, &l| a + l)
}

/// Rows per block of the loss's parallel loop: enough work to be worth a task (V values per
/// row), few enough that the blocks of a small batch still spread over the threads.
pub const LOSS_ROWS: usize = 8;

/// The loss of consecutive rows from row `r0`: `(r0, z, dz, out)`, a value per row in `out`.
type RowsFn<'a, F> = dyn Fn(usize, &mut [F], Option<&mut [F]>, &mut [f64]) + Sync + 'a;

/// Runs `rows(r0, z, dz, out)` over the blocks of [`LOSS_ROWS`] rows of `z` (and `dz`), rows of
/// `v` values each, on rayon's threads when there is enough work; `out` gets a value per row.
fn in_row_blocks<F: Float>(
    z: &mut [F],
    dz: Option<&mut [F]>,
    v: usize,
    out: &mut [f64],
    rows: &RowsFn<'_, F>,
) {
    use rayon::prelude::*;
    let block = (LOSS_ROWS * v).max(1);
    if out.len() * v < 1 << 15 {
        return rows(0, z, dz, out);
    }
    let outs = out.par_chunks_mut(LOSS_ROWS);
    match dz {
        Some(dz) => z
            .par_chunks_mut(block)
            .zip(dz.par_chunks_mut(block))
            .zip(outs)
            .enumerate()
            .for_each(|(i, ((z, dz), o))| rows(i * LOSS_ROWS, z, Some(dz), o)),
        None => z
            .par_chunks_mut(block)
            .zip(outs)
            .enumerate()
            .for_each(|(i, (z, o))| rows(i * LOSS_ROWS, z, None, o)),
    }
}

simd_dispatch! {
/// [`softmax_cross_entropy`] of consecutive rows: `z` and `dz` hold `out.len()` rows of `v`
/// values, `targets` and `mask` start at the first of them; `out[r]` gets `mask_r * loss_r`.
fn softmax_rows<F: Float>(
    z: &mut [F],
    dz: Option<&mut [F]>,
    v: usize,
    targets: &[u32],
    mask: Option<&[f32]>,
    norm: f64,
    out: &mut [f64],
) {
    let mut dz = dz;
    for (r, o) in out.iter_mut().enumerate() {
        let z = &mut z[r * v..(r + 1) * v];
        let max = row_max(z);
        let y = targets[r] as usize;
        // The target's shifted logit, kept before the row is exponentiated: the loss
        // -ln p_y = ln(sum_j e^(z_j - max)) - (z_y - max) stays finite when p_y underflows.
        let zy = z[y] - max;
        for x in z.iter_mut() {
            *x -= max;
        }
        F::exp_in_place(z);
        // The sum of V exponentials accumulates in f64, so that with tens of thousands of
        // classes the small terms are not lost to rounding.
        let sum = sum_f64(z);
        let inv = F::of(1.0 / sum);
        let w = weight(mask, r);
        *o = w * (sum.ln() - zy.f64());
        let Some(dz) = dz.as_mut().map(|d| &mut d[r * v..(r + 1) * v]) else {
            z.iter_mut().for_each(|p| *p = *p * inv);
            continue;
        };
        let wf = F::of(w / norm);
        for (p, d) in z.iter_mut().zip(dz.iter_mut()) {
            *p = *p * inv;
            *d = wf * *p;
        }
        // The one-hot target: dz_y = wf (p_y - 1).
        dz[y] = wf * (z[y] - F::one());
    }
}
}

/// The sum of a row in f64, in eight independent lanes so the additions do not wait on each
/// other.
#[inline(always)]
fn sum_f64<F: Float>(z: &[F]) -> f64 {
    let mut lanes = [0.0f64; 8];
    let mut chunks = z.chunks_exact(8);
    for c in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += v.f64();
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|v| v.f64()).sum();
    lanes.iter().sum::<f64>() + tail
}

/// The largest element of a row, in eight independent lanes so the loop vectorises.
#[inline(always)]
fn row_max<F: Float>(z: &[F]) -> F {
    let mut lanes = [F::neg_infinity(); 8];
    let mut chunks = z.chunks_exact(8);
    for c in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l = if v > *l { v } else { *l };
        }
    }
    let tail = chunks.remainder().iter();
    lanes
        .iter()
        .chain(tail)
        .fold(F::neg_infinity(), |a, &b| if b > a { b } else { a })
}

/// Identity + squared error per row: `p_r = z_r`, loss `1/2 ||p_r - y_r||^2`,
/// `dz_r = mask_r / norm * (p_r - y_r)` (written when `dlogits` is given). `targets` [N * V].
/// Returns the masked loss sum.
pub fn squared_error<F: Float>(
    logits: ArrayViewMut2<F>,
    targets: &[f32],
    mask: Option<&[f32]>,
    norm: f64,
    mut dlogits: Option<ArrayViewMut2<F>>,
) -> f64 {
    let v = logits.ncols();
    let mut total = 0.0;
    for (r, z) in logits.outer_iter().enumerate() {
        let mut dz = dlogits.as_mut().map(|d| d.row_mut(r));
        let w = weight(mask, r);
        let wf = F::of(w / norm);
        let mut l = 0.0;
        for (j, p) in z.iter().enumerate() {
            let diff = *p - F::from_f32_lossless(targets[r * v + j]);
            l += diff.f64() * diff.f64();
            if let Some(dz) = dz.as_mut() {
                dz[j] = wf * diff;
            }
        }
        total += w * 0.5 * l;
    }
    total
}

/// Sigmoid + binary cross-entropy per row and component: `p = 1 / (1 + e^-z)`, loss
/// `-(y ln p + (1-y) ln(1-p))` computed stably as `max(z,0) - y z + ln(1 + e^-|z|)`, summed over
/// components; `dz = mask_r / norm * (p - y)` (written when `dlogits` is given). `logits` is
/// overwritten with `p`.
pub fn sigmoid_binary_cross_entropy<F: Float>(
    mut logits: ArrayViewMut2<F>,
    targets: &[f32],
    mask: Option<&[f32]>,
    norm: f64,
    mut dlogits: Option<ArrayViewMut2<F>>,
) -> f64 {
    let v = logits.ncols();
    let mut total = 0.0;
    for (r, mut z) in logits.outer_iter_mut().enumerate() {
        let mut dz = dlogits.as_mut().map(|d| d.row_mut(r));
        let w = weight(mask, r);
        let wf = F::of(w / norm);
        let mut l = 0.0;
        for (j, zp) in z.iter_mut().enumerate() {
            let y = F::from_f32_lossless(targets[r * v + j]);
            let x = *zp;
            let loss = x.max(F::zero()) - y * x + (F::one() + (-x.abs()).exp()).ln();
            l += loss.f64();
            let p = F::one() / (F::one() + (-x).exp());
            *zp = p;
            if let Some(dz) = dz.as_mut() {
                dz[j] = wf * (p - y);
            }
        }
        total += w * l;
    }
    total
}
