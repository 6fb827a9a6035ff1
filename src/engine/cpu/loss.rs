//! CPU twin of `shaders/loss.wgsl`: output nonlinearity, loss and its gradient, fused per row.
//! With the canonical pairs (softmax + cross-entropy, identity + squared error, sigmoid + binary
//! cross-entropy) the gradient w.r.t. the logits is `w_r (p_r - y_r)` in every case, with
//! `w_r = mask_r / norm` (norm = the number of counted steps of the batch).

use ndarray::ArrayViewMut2;

use crate::engine::cpu::Float;

fn weight(mask: Option<&[f32]>, r: usize) -> f64 {
    mask.map_or(1.0, |m| m[r] as f64)
}

/// Softmax + cross-entropy per row: `p_r = softmax(z_r)` (max-subtracted), loss `-ln p_r[y_r]`,
/// `dz_r = mask_r / norm * (p_r - onehot(y_r))`. `logits` [N, V] is overwritten with `p`;
/// `dlogits` [N, V] is written when given (a forward without gradients passes `None`). Returns
/// `sum_r mask_r * loss_r`.
pub fn softmax_cross_entropy<F: Float>(
    mut logits: ArrayViewMut2<F>,
    targets: &[u32],
    mask: Option<&[f32]>,
    norm: f64,
    mut dlogits: Option<ArrayViewMut2<F>>,
) -> f64 {
    let mut total = 0.0;
    for (r, mut z) in logits.outer_iter_mut().enumerate() {
        let mut dz = dlogits.as_mut().map(|d| d.row_mut(r));
        let Some(z) = z.as_slice_mut() else {
            unreachable!("rows of standard-layout arrays are contiguous")
        };
        let max = row_max(z);
        let y = targets[r] as usize;
        // The target's shifted logit, kept before the row is exponentiated: the loss
        // -ln p_y = ln(sum_j e^(z_j - max)) - (z_y - max) stays finite when p_y underflows.
        let zy = z[y] - max;
        for v in z.iter_mut() {
            *v -= max;
        }
        F::exp_in_place(z);
        // The sum of V exponentials accumulates in f64, so that with tens of thousands of
        // classes the small terms are not lost to rounding.
        let sum = sum_f64(z);
        let inv = F::of(1.0 / sum);
        let w = weight(mask, r);
        total += w * (sum.ln() - zy.f64());
        let Some(dz) = dz.as_mut().and_then(|d| d.as_slice_mut()) else {
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
    total
}

/// The sum of a row in f64, in eight independent lanes so the additions do not wait on each
/// other.
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
