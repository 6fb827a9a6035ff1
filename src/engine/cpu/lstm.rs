//! CPU twin of `shaders/lstm.wgsl`: the fused gate nonlinearities and cell update of the LSTM
//! (PyTorch's `torch.nn.LSTM`, gates i, f, g, o stacked in that order), forward and BPTT, for
//! all B rows of one time step. The recurrent product `h_{t-1} W_hh^T + b_hh` of all four gates
//! is one `matmul` before the forward step; `da W_hh` one after the backward step.

use ndarray::{ArrayView2, ArrayViewMut2};

use crate::engine::cpu::{Float, sigmoid, tanh_via_sigmoid};

/// Forward LSTM step for all B rows, with `a = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh`
/// ([B, 4H], gate blocks i | f | g | o, given as its two parts `a_ih` and `a_hh`):
/// `i = σ(a_i)`, `f = σ(a_f)`, `g = tanh(a_g)`, `o = σ(a_o)`, `c_t = f ⊙ c_{t-1} + i ⊙ g`,
/// `h_t = o ⊙ tanh(c_t)`.
/// Shapes: `gates` [B, 4H] holds a_ih on entry and (i, f, g, o) on exit; `a_hh` [B, 4H];
/// `c_prev`, `c_t`, `h_t` [B, H] (c_t and h_t written).
pub fn lstm_step_forward<F: Float>(
    mut gates: ArrayViewMut2<F>,
    a_hh: ArrayView2<F>,
    c_prev: ArrayView2<F>,
    mut c_t: ArrayViewMut2<F>,
    mut h_t: ArrayViewMut2<F>,
) {
    let h = h_t.ncols();
    for (b, mut g) in gates.outer_iter_mut().enumerate() {
        for j in 0..h {
            let i = sigmoid(g[j] + a_hh[[b, j]]);
            let f = sigmoid(g[h + j] + a_hh[[b, h + j]]);
            let gg = tanh_via_sigmoid(g[2 * h + j] + a_hh[[b, 2 * h + j]]);
            let o = sigmoid(g[3 * h + j] + a_hh[[b, 3 * h + j]]);
            g[j] = i;
            g[h + j] = f;
            g[2 * h + j] = gg;
            g[3 * h + j] = o;
            let c = f * c_prev[[b, j]] + i * gg;
            c_t[[b, j]] = c;
            h_t[[b, j]] = o * tanh_via_sigmoid(c);
        }
    }
}

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
    mut dc: ArrayViewMut2<F>,
    mut da: ArrayViewMut2<F>,
) {
    let h = dh.ncols();
    let one = F::one();
    for b in 0..dh.nrows() {
        for j in 0..h {
            let (i, f) = (gates[[b, j]], gates[[b, h + j]]);
            let (g, o) = (gates[[b, 2 * h + j]], gates[[b, 3 * h + j]]);
            let tc = tanh_via_sigmoid(c_t[[b, j]]);
            let d = dh[[b, j]];
            let dct = dc[[b, j]] + d * o * (one - tc * tc);
            da[[b, j]] = dct * g * i * (one - i);
            da[[b, h + j]] = dct * c_prev[[b, j]] * f * (one - f);
            da[[b, 2 * h + j]] = dct * i * (one - g * g);
            da[[b, 3 * h + j]] = d * tc * o * (one - o);
            dc[[b, j]] = dct * f;
        }
    }
}
