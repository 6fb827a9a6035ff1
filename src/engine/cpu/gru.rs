//! CPU twin of `shaders/gru.wgsl`: the fused gate nonlinearities and state update of the GRU
//! (PyTorch's `torch.nn.GRU`, gates r, z, n stacked in that order), forward and BPTT, for all
//! B rows of one time step. The recurrent product `h_{t-1} W_hh^T + b_hh` of all three gates is
//! one `matmul` before the forward step; `dA_hh W_hh` one after the backward step.

use ndarray::{ArrayView2, ArrayViewMut2};

use crate::engine::cpu::{Float, sigmoid, tanh_via_sigmoid};

/// Forward GRU step for all B rows, with `a_ih = x_t W_ih^T + b_ih` and
/// `a_hh = h_{t-1} W_hh^T + b_hh` (both [B, 3H], gate blocks r | z | n):
/// `r = σ(a_ih_r + a_hh_r)`, `z = σ(a_ih_z + a_hh_z)`, `n = tanh(a_ih_n + r ⊙ a_hh_n)`,
/// `h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}`.
/// Shapes: `gates` [B, 3H] holds a_ih on entry and (r, z, n) on exit; `a_hh` [B, 3H];
/// `h_prev`, `h_t` [B, H] (h_t written).
pub fn gru_step_forward<F: Float>(
    mut gates: ArrayViewMut2<F>,
    a_hh: ArrayView2<F>,
    h_prev: ArrayView2<F>,
    mut h_t: ArrayViewMut2<F>,
) {
    let h = h_t.ncols();
    for (b, mut g) in gates.outer_iter_mut().enumerate() {
        for j in 0..h {
            let r = sigmoid(g[j] + a_hh[[b, j]]);
            let z = sigmoid(g[h + j] + a_hh[[b, h + j]]);
            let n = tanh_via_sigmoid(g[2 * h + j] + r * a_hh[[b, 2 * h + j]]);
            g[j] = r;
            g[h + j] = z;
            g[2 * h + j] = n;
            h_t[[b, j]] = (F::one() - z) * n + z * h_prev[[b, j]];
        }
    }
}

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
    mut da_ih: ArrayViewMut2<F>,
    mut da_hh: ArrayViewMut2<F>,
    mut dh_prev: Option<ArrayViewMut2<F>>,
) {
    let h = dh.ncols();
    let one = F::one();
    for b in 0..dh.nrows() {
        for j in 0..h {
            let (r, z, n) = (gates[[b, j]], gates[[b, h + j]], gates[[b, 2 * h + j]]);
            let d = dh[[b, j]];
            let dan = d * (one - z) * (one - n * n);
            let daz = d * (h_prev[[b, j]] - n) * z * (one - z);
            let dar = dan * a_hh[[b, 2 * h + j]] * r * (one - r);
            da_ih[[b, j]] = dar;
            da_ih[[b, h + j]] = daz;
            da_ih[[b, 2 * h + j]] = dan;
            da_hh[[b, j]] = dar;
            da_hh[[b, h + j]] = daz;
            da_hh[[b, 2 * h + j]] = r * dan;
            if let Some(dp) = dh_prev.as_mut() {
                dp[[b, j]] += d * z;
            }
        }
    }
}
