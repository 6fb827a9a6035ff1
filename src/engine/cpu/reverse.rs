//! The reverse direction of a bidirectional layer, as `pack_padded_sequence` runs it: each
//! sequence reversed within its own length. Row b's length L_b is 1 + the last step with a
//! non-zero mask weight (0 when it has none; T without a mask). The reverse direction reads x at
//! step L_b-1-t for its step t < L_b, starts from its initial state at its own step 0 (the
//! sequence's last real step), and its state after step t is the layer's output at step
//! L_b-1-t. Its steps t >= L_b are the padding, run after every real step and read by none.
//!
//! All of it is one permutation of the `T * B` time-major rows, [`reversal`]: an involution
//! (row `t * B + b` <-> `(L_b-1-t) * B + b` for t < L_b, padding rows fixed). The engine applies
//! it to the input projection before the reverse run ([`permute_rows`], in place), reads the
//! run's states through it into the layer's output ([`gather_rows`]), and back the same way for
//! the gradients.

use ndarray::{ArrayView2, ArrayViewMut2, Axis};

use crate::engine::cpu::Float;

/// L_b of each of the `rows` sequences of a time-major mask of `steps * rows` weights: 1 + the
/// last step with a non-zero weight (0 when none); `steps` for every row without a mask.
pub fn sequence_lengths(mask: Option<&[f32]>, steps: usize, rows: usize) -> Vec<usize> {
    let Some(mask) = mask else {
        return vec![steps; rows];
    };
    (0..rows)
        .map(|b| {
            (0..steps)
                .rev()
                .find(|&t| mask.get(t * rows + b).is_some_and(|&w| w != 0.0))
                .map_or(0, |t| t + 1)
        })
        .collect()
}

/// The permutation of the `steps * B` time-major rows that reverses each sequence b within its
/// length `lengths[b]` (B = `lengths.len()`): entry `t * B + b` is `(L_b-1-t) * B + b` for
/// t < L_b, itself for the padding. An involution: applying it twice gives the identity.
pub fn reversal(lengths: &[usize], steps: usize) -> Vec<u32> {
    let rows = lengths.len();
    let mut perm = Vec::with_capacity(steps * rows);
    for t in 0..steps {
        for (b, &len) in lengths.iter().enumerate() {
            let from = crate::engine::reverse::reversed_step(t, len);
            perm.push((from * rows + b) as u32);
        }
    }
    perm
}

/// Row r of `a` becomes the old row `perm[r]`, in place, for an involution `perm` (each pair
/// of rows swapped once).
pub fn permute_rows<F: Float>(mut a: ArrayViewMut2<F>, perm: &[u32]) {
    for (r, &p) in perm.iter().enumerate() {
        let p = p as usize;
        if p > r {
            let (mut lo, mut hi) = a.view_mut().split_at(Axis(0), p);
            let (mut x, mut y) = (lo.row_mut(r), hi.row_mut(0));
            ndarray::Zip::from(&mut x)
                .and(&mut y)
                .for_each(std::mem::swap);
        }
    }
}

/// `out[r, :] = a[perm[r], :]` for every row r of `out`.
pub fn gather_rows<F: Float>(a: ArrayView2<F>, perm: &[u32], mut out: ArrayViewMut2<F>) {
    for (mut row, &p) in out.outer_iter_mut().zip(perm) {
        row.assign(&a.row(p as usize));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn lengths_end_at_the_last_counted_step() {
        // T = 3, B = 3: row 0 full, row 1 a hole at t = 1, row 2 nothing.
        let mask = [1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.5, 0.0];
        assert_eq!(sequence_lengths(Some(&mask), 3, 3), vec![2, 3, 0]);
        assert_eq!(sequence_lengths(None, 4, 2), vec![4, 4]);
    }

    #[test]
    fn the_reversal_is_an_involution_that_reverses_within_each_length() {
        let lengths = [3, 1, 0, 2];
        let (steps, rows) = (3, 4);
        let perm = reversal(&lengths, steps);
        for (r, &p) in perm.iter().enumerate() {
            assert_eq!(perm[p as usize] as usize, r);
            assert_eq!(p as usize % rows, r % rows, "stays in its row");
        }
        // Row 0 (length 3): steps 0, 1, 2 <-> 2, 1, 0; row 3 (length 2): 0 <-> 1, 2 fixed.
        assert_eq!(perm[0], 8);
        assert_eq!(perm[4], 4);
        assert_eq!(perm[3], 7);
        assert_eq!(perm[11], 11);
        let a = Array2::from_shape_fn((12, 2), |(r, c)| (r * 2 + c) as f64);
        let mut b = a.clone();
        permute_rows(b.view_mut(), &perm);
        let mut c = Array2::<f64>::zeros((12, 2));
        gather_rows(a.view(), &perm, c.view_mut());
        assert_eq!(b, c);
        permute_rows(b.view_mut(), &perm);
        assert_eq!(a, b);
    }
}
