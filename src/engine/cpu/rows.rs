//! The time loops by blocks of batch rows. The rows of a batch are independent through the
//! recurrence, so each thread runs the whole time loop of its own block of rows, with no
//! synchronisation inside the loop. A [`RowBlock`] is a layer's arrays seen per time step
//! ([steps, B', width]) that split into disjoint blocks of rows; one kind per cell family and
//! direction ([`TanhRows`], [`TanhGradRows`], [`GatedRows`], [`GatedGradRows`]), each with the
//! loop over its steps.
//!
//! This is a fast path over the plain loop over all B rows (one block): the blocks compute
//! exactly what the one block computes for their rows, and `tests/all/row_split.rs` holds whole
//! training steps on three threads to those on one, for every cell, in f32 and f64.

use ndarray::{ArrayViewMut2, Axis};

use crate::model::Activation;

use super::packed::StepWeight;
use super::{Float, gru, lstm, rnn};

/// Batch rows per time loop: the rows of a batch are independent through the recurrence, so
/// each of the threads runs the whole time loop of its share of the rows, with no
/// synchronisation inside it (measured on two cores, B = 32, T = 64, against one loop whose step
/// products split their columns between threads: GRU and LSTM at H = 128 1.1-1.5x and 1.4-2x
/// the tokens/s, at H = 512 1.0-1.8x and 1.0-1.2x). At least [`ROW_SPLIT_MIN`] / 2 rows each.
pub(super) fn row_parts(b: usize) -> usize {
    if b < ROW_SPLIT_MIN {
        1
    } else {
        rayon::current_num_threads()
            .min(b / (ROW_SPLIT_MIN / 2))
            .max(1)
    }
}

/// The fewest batch rows worth a time loop of their own on another thread (half this per part).
const ROW_SPLIT_MIN: usize = 8;

/// A layer's arrays for a block of batch rows, per time step ([steps, B', width] views), that
/// split into disjoint blocks of rows.
pub(super) trait RowBlock: Sized + Send {
    /// B'.
    fn rows(&self) -> usize;
    /// Rows 0..r and r..B'.
    fn split_at(self, r: usize) -> (Self, Self);

    /// Runs `f` on `parts` disjoint blocks of rows, on as many threads.
    fn run_split(self, parts: usize, f: &(dyn Fn(Self) + Sync)) {
        let b = self.rows();
        if parts <= 1 || b < 2 {
            return f(self);
        }
        let (left, right) = self.split_at(b * (parts / 2) / parts);
        rayon::join(
            || left.run_split(parts / 2, f),
            || right.run_split(parts - parts / 2, f),
        );
    }
}

/// The tanh/relu layer's states [T+1, B', H] for a block of batch rows (the input projection in
/// rows 1..=T on entry).
pub(super) struct TanhRows<'a, F: Float>(pub(super) ndarray::ArrayViewMut3<'a, F>);

impl<F: Float> RowBlock for TanhRows<'_, F> {
    fn rows(&self) -> usize {
        self.0.len_of(Axis(1))
    }

    fn split_at(self, r: usize) -> (Self, Self) {
        let (a, b) = self.0.split_at(Axis(1), r);
        (TanhRows(a), TanhRows(b))
    }
}

impl<F: Float> TanhRows<'_, F> {
    /// Steps 0..T of these rows: h_t = f1(u_t + h_{t-1} W_hh^T), over the input projection u_t
    /// held in h_t on entry.
    pub(super) fn forward(mut self, step_w: &StepWeight<'_, F>, activation: Activation) {
        for t in 0..self.0.len_of(Axis(0)) - 1 {
            let (prev, mut cur) = self.0.view_mut().split_at(Axis(0), t + 1);
            let h_t = cur.index_axis_mut(Axis(0), 0);
            let h_prev = prev.index_axis(Axis(0), t);
            rnn::rnn_step_forward_with(None, h_prev, step_w, activation, h_t);
        }
    }
}

/// The tanh/relu layer's BPTT for a block of batch rows: the states [T+1, B', H] and the state
/// gradient [T, B', H], which becomes dz in place.
pub(super) struct TanhGradRows<'a, F: Float> {
    pub(super) states: ndarray::ArrayView3<'a, F>,
    pub(super) ds: ndarray::ArrayViewMut3<'a, F>,
}

impl<F: Float> RowBlock for TanhGradRows<'_, F> {
    fn rows(&self) -> usize {
        self.ds.len_of(Axis(1))
    }

    fn split_at(self, r: usize) -> (Self, Self) {
        let (s0, s1) = self.states.split_at(Axis(1), r);
        let (d0, d1) = self.ds.split_at(Axis(1), r);
        (
            TanhGradRows { states: s0, ds: d0 },
            TanhGradRows { states: s1, ds: d1 },
        )
    }
}

impl<F: Float> TanhGradRows<'_, F> {
    /// Steps T-1..0 of these rows, in place: ds_t becomes dz_t = (ds_t + dz_{t+1} W_hh) ⊙ f1'(z_t).
    pub(super) fn backward(mut self, step_w: &StepWeight<'_, F>, activation: Activation) {
        let steps = self.ds.len_of(Axis(0));
        for t in (0..steps).rev() {
            let (cur, next) = self.ds.view_mut().split_at(Axis(0), t + 1);
            let dz_t = cur.index_axis_move(Axis(0), t);
            let dz_next = (t + 1 < steps).then(|| next.index_axis_move(Axis(0), 0));
            let s_t = self.states.index_axis(Axis(0), t + 1);
            rnn::rnn_step_backward_with(
                None,
                dz_next.as_ref().map(|d| d.view()),
                step_w,
                s_t,
                activation,
                dz_t,
            );
        }
    }
}

/// A gated layer's forward arrays for a block of batch rows, per time step: states [T+1, B', W]
/// and memories [T+1, B', H], gates and a_hh [T, B', G*H], and with a projection the states
/// before it [T, B', H].
pub(super) struct GatedRows<'a, F: Float> {
    pub(super) states: ndarray::ArrayViewMut3<'a, F>,
    pub(super) cells: Option<ndarray::ArrayViewMut3<'a, F>>,
    pub(super) gates: ndarray::ArrayViewMut3<'a, F>,
    pub(super) a_hh: ndarray::ArrayViewMut3<'a, F>,
    pub(super) unprojected: Option<ndarray::ArrayViewMut3<'a, F>>,
}

impl<F: Float> RowBlock for GatedRows<'_, F> {
    fn rows(&self) -> usize {
        self.states.len_of(Axis(1))
    }

    fn split_at(self, r: usize) -> (Self, Self) {
        let (s0, s1) = self.states.split_at(Axis(1), r);
        let (g0, g1) = self.gates.split_at(Axis(1), r);
        let (a0, a1) = self.a_hh.split_at(Axis(1), r);
        let (c0, c1) = split_option(self.cells, r);
        let (m0, m1) = split_option(self.unprojected, r);
        (
            GatedRows {
                states: s0,
                cells: c0,
                gates: g0,
                a_hh: a0,
                unprojected: m0,
            },
            GatedRows {
                states: s1,
                cells: c1,
                gates: g1,
                a_hh: a1,
                unprojected: m1,
            },
        )
    }
}

/// Rows 0..r and r.. of an optional [steps, B', width] array.
fn split_option<'a, F: Float>(
    a: Option<ndarray::ArrayViewMut3<'a, F>>,
    r: usize,
) -> (
    Option<ndarray::ArrayViewMut3<'a, F>>,
    Option<ndarray::ArrayViewMut3<'a, F>>,
) {
    match a.map(|a| a.split_at(Axis(1), r)) {
        Some((a0, a1)) => (Some(a0), Some(a1)),
        None => (None, None),
    }
}

impl<F: Float> GatedRows<'_, F> {
    /// Steps 0..T of these rows: a_hh = h_{t-1} W_hh^T + b_hh, then the gates and the state;
    /// with a projection (`w_hr`: W_hr^T), the LSTM's `o * tanh(c_t)` goes to `unprojected` and
    /// the state is `h_t = m_t W_hr^T`.
    pub(super) fn forward(
        mut self,
        step_w: &StepWeight<'_, F>,
        b_hh: &[F],
        w_hr: Option<&StepWeight<'_, F>>,
    ) {
        for t in 0..self.gates.len_of(Axis(0)) {
            let (prev, mut cur) = self.states.view_mut().split_at(Axis(0), t + 1);
            let h_prev = prev.index_axis(Axis(0), t);
            let h_t = cur.index_axis_mut(Axis(0), 0);
            let mut a_hh_t = self.a_hh.index_axis_mut(Axis(0), t);
            for mut row in a_hh_t.outer_iter_mut() {
                row.assign(&ndarray::ArrayView1::from(b_hh));
            }
            step_w.product(h_prev.view(), &mut a_hh_t);
            let gates_t = self.gates.index_axis_mut(Axis(0), t);
            match self.cells.as_mut() {
                Some(c) => {
                    let (c_prev, mut c_cur) = c.view_mut().split_at(Axis(0), t + 1);
                    // With a projection the step writes m_t, and h_t = m_t W_hr^T.
                    let (mut out, projection) = match (self.unprojected.as_mut(), w_hr) {
                        (Some(m), Some(w_hr)) => (m.index_axis_mut(Axis(0), t), Some((w_hr, h_t))),
                        _ => (h_t, None),
                    };
                    lstm::lstm_step_forward(
                        gates_t,
                        a_hh_t.view(),
                        c_prev.index_axis(Axis(0), t),
                        c_cur.index_axis_mut(Axis(0), 0),
                        out.view_mut(),
                    );
                    if let Some((w_hr, h_t)) = projection {
                        lstm::lstm_projection_forward(out.view(), w_hr, h_t);
                    }
                }
                None => gru::gru_step_forward(gates_t, a_hh_t.view(), h_prev, h_t),
            }
        }
    }
}

/// A gated layer's BPTT arrays for a block of batch rows, per time step: the forward's gates
/// [T, B', G*H], the state gradient ds [T, B', W], da_ih [T, B', G*H], and the cell's own.
pub(super) struct GatedGradRows<'a, F: Float> {
    pub(super) gates: ndarray::ArrayView3<'a, F>,
    pub(super) ds: ndarray::ArrayViewMut3<'a, F>,
    pub(super) da_ih: ndarray::ArrayViewMut3<'a, F>,
    pub(super) cell: CellGrad<'a, F>,
}

/// What the BPTT of one kind of gated cell reads and writes besides [`GatedGradRows`]'s arrays.
pub(super) enum CellGrad<'a, F: Float> {
    /// The memories [T+1, B', H] and the gradient carried to c_{t-1} [B', H]; da_ih is also the
    /// recurrent side's gradient. With a projection, `dm` [B', H] holds each step's gradient of
    /// the state before it.
    Lstm {
        cells: ndarray::ArrayView3<'a, F>,
        dc: ArrayViewMut2<'a, F>,
        dm: Option<ArrayViewMut2<'a, F>>,
    },
    /// a_hh [T, B', 3H], the states [T+1, B', H] and da_hh [T, B', 3H].
    Gru {
        a_hh: ndarray::ArrayView3<'a, F>,
        states: ndarray::ArrayView3<'a, F>,
        da_hh: ndarray::ArrayViewMut3<'a, F>,
    },
}

impl<F: Float> RowBlock for GatedGradRows<'_, F> {
    fn rows(&self) -> usize {
        self.ds.len_of(Axis(1))
    }

    fn split_at(self, r: usize) -> (Self, Self) {
        let (g0, g1) = self.gates.split_at(Axis(1), r);
        let (d0, d1) = self.ds.split_at(Axis(1), r);
        let (i0, i1) = self.da_ih.split_at(Axis(1), r);
        let (cell0, cell1) = match self.cell {
            CellGrad::Lstm { cells, dc, dm } => {
                let (c0, c1) = cells.split_at(Axis(1), r);
                let (e0, e1) = dc.split_at(Axis(0), r);
                let (m0, m1) = match dm.map(|m| m.split_at(Axis(0), r)) {
                    Some((m0, m1)) => (Some(m0), Some(m1)),
                    None => (None, None),
                };
                (
                    CellGrad::Lstm {
                        cells: c0,
                        dc: e0,
                        dm: m0,
                    },
                    CellGrad::Lstm {
                        cells: c1,
                        dc: e1,
                        dm: m1,
                    },
                )
            }
            CellGrad::Gru {
                a_hh,
                states,
                da_hh,
            } => {
                let (a0, a1) = a_hh.split_at(Axis(1), r);
                let (s0, s1) = states.split_at(Axis(1), r);
                let (h0, h1) = da_hh.split_at(Axis(1), r);
                (
                    CellGrad::Gru {
                        a_hh: a0,
                        states: s0,
                        da_hh: h0,
                    },
                    CellGrad::Gru {
                        a_hh: a1,
                        states: s1,
                        da_hh: h1,
                    },
                )
            }
        };
        (
            GatedGradRows {
                gates: g0,
                ds: d0,
                da_ih: i0,
                cell: cell0,
            },
            GatedGradRows {
                gates: g1,
                ds: d1,
                da_ih: i1,
                cell: cell1,
            },
        )
    }
}

impl<F: Float> GatedGradRows<'_, F> {
    /// Steps T-1..0 of these rows: the gate derivatives, then dh_{t-1} += da_hh W_hh; with a
    /// projection (`w_hr`: W_hr), the LSTM's step reads `dm_t = dh_t W_hr`.
    pub(super) fn backward(mut self, step_w: &StepWeight<'_, F>, w_hr: Option<&StepWeight<'_, F>>) {
        for t in (0..self.gates.len_of(Axis(0))).rev() {
            let (before, cur) = self.ds.view_mut().split_at(Axis(0), t);
            let dh = cur.index_axis(Axis(0), 0);
            let mut dh_prev = (t > 0).then(|| before.index_axis_move(Axis(0), t - 1));
            let gates_t = self.gates.index_axis(Axis(0), t);
            let da_ih_t = self.da_ih.index_axis_mut(Axis(0), t);
            let da_rec = match &mut self.cell {
                CellGrad::Lstm { cells, dc, dm } => {
                    let dm = match (dm.as_mut(), w_hr) {
                        (Some(dm), Some(w_hr)) => {
                            lstm::lstm_projection_backward(dh, w_hr, dm.view_mut());
                            dm.view()
                        }
                        _ => dh,
                    };
                    lstm::lstm_step_backward(
                        gates_t,
                        cells.index_axis(Axis(0), t),
                        cells.index_axis(Axis(0), t + 1),
                        dm,
                        dc.view_mut(),
                        da_ih_t,
                    );
                    self.da_ih.index_axis(Axis(0), t)
                }
                CellGrad::Gru {
                    a_hh,
                    states,
                    da_hh,
                } => {
                    gru::gru_step_backward(
                        gates_t,
                        a_hh.index_axis(Axis(0), t),
                        states.index_axis(Axis(0), t),
                        dh,
                        da_ih_t,
                        da_hh.index_axis_mut(Axis(0), t),
                        dh_prev.as_mut().map(|d| d.view_mut()),
                    );
                    da_hh.index_axis(Axis(0), t)
                }
            };
            // The recurrent part of the previous state's gradient: dh_{t-1} += da_hh W_hh.
            if let Some(dp) = dh_prev.as_mut() {
                step_w.product(da_rec, dp);
            }
        }
    }
}
