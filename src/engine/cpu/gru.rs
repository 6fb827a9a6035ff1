//! CPU twin of `shaders/gru.wgsl`: the fused gate nonlinearities and state update of the GRU
//! (PyTorch's `torch.nn.GRU`, gates r, z, n stacked in that order), forward and BPTT, for all
//! B rows of one time step. The recurrent product `h_{t-1} W_hh^T + b_hh` of all three gates is
//! one `matmul` before the forward step; `dA_hh W_hh` one after the backward step.

use ndarray::{ArrayView2, ArrayViewMut2, Zip};

use crate::engine::cpu::lstm::{blocks, blocks_mut};
use crate::engine::cpu::simd::simd_dispatch;
use crate::engine::cpu::{Float, sigmoid, tanh_via_sigmoid};

simd_dispatch! {
/// Forward GRU step for all B rows, with `a_ih = x_t W_ih^T + b_ih` and
/// `a_hh = h_{t-1} W_hh^T + b_hh` (both [B, 3H], gate blocks r | z | n):
/// `r = σ(a_ih_r + a_hh_r)`, `z = σ(a_ih_z + a_hh_z)`, `n = tanh(a_ih_n + r ⊙ a_hh_n)`,
/// `h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}`.
/// Shapes: `gates` [B, 3H] holds a_ih on entry and (r, z, n) on exit; `a_hh` [B, 3H];
/// `h_prev`, `h_t` [B, H] (h_t written).
pub fn gru_step_forward<F: Float>(
    gates: ArrayViewMut2<F>,
    a_hh: ArrayView2<F>,
    h_prev: ArrayView2<F>,
    h_t: ArrayViewMut2<F>,
) {
    let mut gates = gates;
    let mut h_t = h_t;
    let h = h_t.ncols();
    // Row by row, in passes over contiguous blocks of H (loops that vectorise).
    for (b, g) in gates.outer_iter_mut().enumerate() {
        let (mut r, mut z, mut n, _) = blocks_mut(g, h);
        let (ar, az, an, _) = blocks(a_hh.row(b), h);
        Zip::from(&mut r)
            .and(&ar)
            .for_each(|x, &a| *x = sigmoid(*x + a));
        Zip::from(&mut z)
            .and(&az)
            .for_each(|x, &a| *x = sigmoid(*x + a));
        Zip::from(&mut n)
            .and(&r)
            .and(&an)
            .for_each(|x, &r, &a| *x = tanh_via_sigmoid(*x + r * a));
        Zip::from(h_t.row_mut(b))
            .and(&z)
            .and(&n)
            .and(&h_prev.row(b))
            .for_each(|y, &z, &n, &hp| *y = (F::one() - z) * n + z * hp);
    }
}
}

simd_dispatch! {
/// BPTT GRU step for all B rows. `dh` [B, H] is the whole gradient reaching h_t (from the
/// outputs or the layer above, plus `da_hh_{t+1} W_hh` from the next step):
/// `dn = dh ⊙ (1 - z)`, `dz = dh ⊙ (h_{t-1} - n)`, `dâ_n = dn ⊙ (1 - n^2)`,
/// `dr = dâ_n ⊙ a_hh_n`, `dâ_r = dr ⊙ r(1 - r)`, `dâ_z = dz ⊙ z(1 - z)`;
/// `da_ih = (dâ_r, dâ_z, dâ_n)`, `da_hh = (dâ_r, dâ_z, r ⊙ dâ_n)` (both [B, 3H], written), and
/// the direct part of the previous state's gradient `dh_prev += dh ⊙ z` when `dh_prev` is given
/// (not at t = 0, whose initial state gets no gradient).
/// Shapes: `gates` (r, z, n) and `a_hh` [B, 3H]; `h_prev`, `dh`, `dh_prev` [B, H].
pub fn gru_step_backward<F: Float>(
    gates: ArrayView2<F>,
    a_hh: ArrayView2<F>,
    h_prev: ArrayView2<F>,
    dh: ArrayView2<F>,
    da_ih: ArrayViewMut2<F>,
    da_hh: ArrayViewMut2<F>,
    dh_prev: Option<ArrayViewMut2<F>>,
) {
    let mut da_ih = da_ih;
    let mut da_hh = da_hh;
    let mut dh_prev = dh_prev;
    let h = dh.ncols();
    let one = F::one();
    for (b, (ih, hh)) in da_ih
        .outer_iter_mut()
        .zip(da_hh.outer_iter_mut())
        .enumerate()
    {
        let (r, z, n, _) = blocks(gates.row(b), h);
        let (_, _, a_n, _) = blocks(a_hh.row(b), h);
        let (mut dar, mut daz, mut dan, _) = blocks_mut(ih, h);
        let (mut hr, mut hz, mut hn, _) = blocks_mut(hh, h);
        let d = dh.row(b);
        Zip::from(&mut dan)
            .and(&d)
            .and(&z)
            .and(&n)
            .for_each(|x, &d, &z, &n| *x = d * (one - z) * (one - n * n));
        Zip::from(&mut daz)
            .and(&d)
            .and(&h_prev.row(b))
            .and(&n)
            .and(&z)
            .for_each(|x, &d, &hp, &n, &z| *x = d * (hp - n) * z * (one - z));
        Zip::from(&mut dar)
            .and(&dan)
            .and(&a_n)
            .and(&r)
            .for_each(|x, &dn, &a, &r| *x = dn * a * r * (one - r));
        hr.assign(&dar);
        hz.assign(&daz);
        Zip::from(&mut hn)
            .and(&r)
            .and(&dan)
            .for_each(|x, &r, &dn| *x = r * dn);
        if let Some(dp) = dh_prev.as_mut() {
            Zip::from(dp.row_mut(b))
                .and(&d)
                .and(&z)
                .for_each(|x, &d, &z| *x += d * z);
        }
    }
}
}
