//! CPU twin of `shaders/lstm.wgsl`: the fused gate nonlinearities and cell update of the LSTM
//! (PyTorch's `torch.nn.LSTM`, gates i, f, g, o stacked in that order), forward and BPTT, for
//! all B rows of one time step. The recurrent product `h_{t-1} W_hh^T + b_hh` of all four gates
//! is one `matmul` before the forward step; `da W_hh` one after the backward step.

use ndarray::{Array1, ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2, Axis, Zip};

use crate::engine::cpu::packed::StepWeight;
use crate::engine::cpu::simd::simd_dispatch;
use crate::engine::cpu::{Float, sigmoid, tanh_via_sigmoid};

simd_dispatch! {
/// Forward LSTM step for all B rows, with `a = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh`
/// ([B, 4H], gate blocks i | f | g | o, given as its two parts `a_ih` and `a_hh`):
/// `i = σ(a_i)`, `f = σ(a_f)`, `g = tanh(a_g)`, `o = σ(a_o)`, `c_t = f ⊙ c_{t-1} + i ⊙ g`,
/// `h_t = o ⊙ tanh(c_t)`.
/// Shapes: `gates` [B, 4H] holds a_ih on entry and (i, f, g, o) on exit; `a_hh` [B, 4H];
/// `c_prev`, `c_t`, `h_t` [B, H] (c_t and h_t written).
pub fn lstm_step_forward<F: Float>(
    gates: ArrayViewMut2<F>,
    a_hh: ArrayView2<F>,
    c_prev: ArrayView2<F>,
    c_t: ArrayViewMut2<F>,
    h_t: ArrayViewMut2<F>,
) {
    let mut gates = gates;
    let mut c_t = c_t;
    let mut h_t = h_t;
    let h = h_t.ncols();
    // Row by row, in passes over contiguous blocks of H (loops that vectorise).
    for (b, g) in gates.outer_iter_mut().enumerate() {
        let (mut gi, mut gf, mut gg, mut go) = blocks_mut(g, h);
        let (ai, af, ag, ao) = blocks(a_hh.row(b), h);
        Zip::from(&mut gi)
            .and(&ai)
            .for_each(|x, &a| *x = sigmoid(*x + a));
        Zip::from(&mut gf)
            .and(&af)
            .for_each(|x, &a| *x = sigmoid(*x + a));
        Zip::from(&mut gg)
            .and(&ag)
            .for_each(|x, &a| *x = tanh_via_sigmoid(*x + a));
        Zip::from(&mut go)
            .and(&ao)
            .for_each(|x, &a| *x = sigmoid(*x + a));
        Zip::from(c_t.row_mut(b))
            .and(&c_prev.row(b))
            .and(&gi)
            .and(&gf)
            .and(&gg)
            .for_each(|c, &cp, &i, &f, &g| *c = f * cp + i * g);
        Zip::from(h_t.row_mut(b))
            .and(&c_t.row(b))
            .and(&go)
            .for_each(|y, &c, &o| *y = o * tanh_via_sigmoid(c));
    }
}
}

/// The four gate blocks [H] of a row [4H] (for a GRU row [3H], the fourth is empty).
pub(crate) fn blocks_mut<F>(
    row: ArrayViewMut1<'_, F>,
    h: usize,
) -> (
    ArrayViewMut1<'_, F>,
    ArrayViewMut1<'_, F>,
    ArrayViewMut1<'_, F>,
    ArrayViewMut1<'_, F>,
) {
    let (a, rest) = row.split_at(Axis(0), h);
    let (b, rest) = rest.split_at(Axis(0), h);
    let (c, d) = rest.split_at(Axis(0), h);
    (a, b, c, d)
}

/// Read-only [`blocks_mut`].
pub(crate) fn blocks<F>(
    row: ArrayView1<'_, F>,
    h: usize,
) -> (
    ArrayView1<'_, F>,
    ArrayView1<'_, F>,
    ArrayView1<'_, F>,
    ArrayView1<'_, F>,
) {
    let (a, rest) = row.split_at(Axis(0), h);
    let (b, rest) = rest.split_at(Axis(0), h);
    let (c, d) = rest.split_at(Axis(0), h);
    (a, b, c, d)
}

simd_dispatch! {
/// BPTT LSTM step for all B rows. `dh` [B, H] is the whole gradient reaching h_t (from the
/// outputs or the layer above, plus `da_{t+1} W_hh` from the next step); `dc` [B, H] holds on
/// entry the gradient reaching c_t from step t+1 (`dc_{t+1} ⊙ f_{t+1}`, zero at t = T-1) and on
/// exit the one reaching c_{t-1}:
/// `dc_t = dc + dh ⊙ o ⊙ (1 - tanh(c_t)^2)`, `da_i = dc_t ⊙ g ⊙ i(1 - i)`,
/// `da_f = dc_t ⊙ c_{t-1} ⊙ f(1 - f)`, `da_g = dc_t ⊙ i ⊙ (1 - g^2)`,
/// `da_o = dh ⊙ tanh(c_t) ⊙ o(1 - o)`, `dc ← dc_t ⊙ f`.
/// `da` [B, 4H] is written; it is the gradient of both a_ih and a_hh.
/// Shapes: `gates` (i, f, g, o) [B, 4H]; `c_prev`, `c_t`, `dh`, `dc` [B, H].
pub fn lstm_step_backward<F: Float>(
    gates: ArrayView2<F>,
    c_prev: ArrayView2<F>,
    c_t: ArrayView2<F>,
    dh: ArrayView2<F>,
    dc: ArrayViewMut2<F>,
    da: ArrayViewMut2<F>,
) {
    let mut dc = dc;
    let mut da = da;
    let h = dh.ncols();
    let one = F::one();
    let mut tc = Array1::<F>::zeros(h);
    for (b, dab) in da.outer_iter_mut().enumerate() {
        let (i, f, g, o) = blocks(gates.row(b), h);
        let (mut da_i, mut da_f, mut da_g, mut da_o) = blocks_mut(dab, h);
        let (d, mut dcb) = (dh.row(b), dc.row_mut(b));
        Zip::from(&mut tc)
            .and(&c_t.row(b))
            .for_each(|t, &c| *t = tanh_via_sigmoid(c));
        // dc becomes dc_t = dc + dh o (1 - tanh(c_t)^2).
        Zip::from(&mut dcb)
            .and(&d)
            .and(&o)
            .and(&tc)
            .for_each(|dct, &d, &o, &t| *dct += d * o * (one - t * t));
        Zip::from(&mut da_i)
            .and(&dcb)
            .and(&g)
            .and(&i)
            .for_each(|x, &dct, &g, &i| *x = dct * g * i * (one - i));
        Zip::from(&mut da_f)
            .and(&dcb)
            .and(&c_prev.row(b))
            .and(&f)
            .for_each(|x, &dct, &cp, &f| *x = dct * cp * f * (one - f));
        Zip::from(&mut da_g)
            .and(&dcb)
            .and(&i)
            .and(&g)
            .for_each(|x, &dct, &i, &g| *x = dct * i * (one - g * g));
        Zip::from(&mut da_o)
            .and(&d)
            .and(&tc)
            .and(&o)
            .for_each(|x, &d, &t, &o| *x = d * t * o * (one - o));
        Zip::from(&mut dcb)
            .and(&f)
            .for_each(|dct, &f| *dct = *dct * f);
    }
}
}

/// An LSTM's projection (PyTorch's `proj_size`) for all B rows of one step:
/// `h_t = m_t W_hr^T`, where `m_t = o ⊙ tanh(c_t)` is what [`lstm_step_forward`] wrote.
/// Shapes: `m_t` [B, H], `w_hr_t` W_hr^T [H, P] (held for the time loop), `h_t` [B, P] (written).
pub fn lstm_projection_forward<F: Float>(
    m_t: ArrayView2<F>,
    w_hr_t: &StepWeight<'_, F>,
    mut h_t: ArrayViewMut2<F>,
) {
    h_t.fill(F::zero());
    w_hr_t.product(m_t, &mut h_t);
}

/// The projection's BPTT for all B rows of one step: `dm_t = dh_t W_hr`, the gradient that
/// [`lstm_step_backward`] reads as its `dh` (dW_hr += dh^T m is summed over all steps at once).
/// Shapes: `dh` [B, P] (the whole gradient reaching h_t), `w_hr` W_hr [P, H] (held for the time
/// loop), `dm` [B, H] (written).
pub fn lstm_projection_backward<F: Float>(
    dh: ArrayView2<F>,
    w_hr: &StepWeight<'_, F>,
    mut dm: ArrayViewMut2<F>,
) {
    dm.fill(F::zero());
    w_hr.product(dh, &mut dm);
}
