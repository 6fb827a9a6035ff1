//! The time reversal of a bidirectional layer's second direction, as `pack_padded_sequence`
//! does it: each row's sequence is reversed within its own length, so the reverse direction
//! starts at the row's last real step and padding never reaches a real step.
//!
//! A row's length L_b is 1 + its last step with a non-zero mask weight (0 when it has none).
//! The reversed order reads step `L_b - 1 - t` at step t < L_b and step t itself for padding
//! (t >= L_b): an involution, so the same gather takes an array into reversed order and back.
//! [`RowGather::apply`] is the CPU twin of the GPU kernel `permute_rows` (shaders/reverse.wgsl).

/// The length of every row of a time-major batch of `steps` x `rows` as the GPU uploads it
/// (the CPU engine's `reverse::sequence_lengths`, as u32).
pub fn sequence_lengths(mask: Option<&[f32]>, steps: usize, rows: usize) -> Vec<u32> {
    crate::engine::cpu::reverse::sequence_lengths(mask, steps, rows)
        .into_iter()
        .map(|l| l as u32)
        .collect()
}

/// The step that step `t` of a sequence of `len` real steps reads in reversed order.
pub fn reversed_step(t: usize, len: usize) -> usize {
    if t < len { len - 1 - t } else { t }
}

/// A gather of the rows of a time-major array, T steps of B rows of `width` columns, for one or
/// two directions at once: destination row r = t * B + b of direction z reads source row
/// `s * B + b` with s = t, or for a direction whose bit is set in `reverse`, s = the reversed
/// step of t in row b's sequence. Each side is (element offset, elements between rows,
/// elements between the directions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowGather {
    pub steps: usize,
    pub rows: usize,
    pub width: usize,
    pub src: (usize, usize, usize),
    pub dst: (usize, usize, usize),
    pub directions: usize,
    /// Bit z: direction z reads in reversed order.
    pub reverse: u32,
}

impl RowGather {
    /// One direction's [N, width] block from element `src` into time-reversed order at element
    /// `dst` (and, the reversal being an involution, back).
    pub fn reversed(steps: usize, rows: usize, width: usize, (src, dst): (usize, usize)) -> Self {
        RowGather {
            steps,
            rows,
            width,
            src: (src, width, 0),
            dst: (dst, width, 0),
            directions: 1,
            reverse: 1,
        }
    }

    /// The gather on the CPU (twin: `permute_rows`), with the rows' lengths `lengths` `[B]`.
    pub fn apply<F: Copy>(&self, lengths: &[u32], src: &[F], dst: &mut [F]) {
        let (b_len, w) = (self.rows, self.width);
        for z in 0..self.directions {
            let reversed = (self.reverse >> z) & 1 == 1;
            for t in 0..self.steps {
                for (b, &len) in lengths.iter().enumerate().take(b_len) {
                    let s = if reversed {
                        reversed_step(t, len as usize)
                    } else {
                        t
                    };
                    let from = self.src.0 + z * self.src.2 + (s * b_len + b) * self.src.1;
                    let to = self.dst.0 + z * self.dst.2 + (t * b_len + b) * self.dst.1;
                    dst[to..to + w].copy_from_slice(&src[from..from + w]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_end_at_the_last_weighted_step() {
        // T = 3, B = 3: row 0 full, row 1 one step, row 2 empty.
        let mask = [1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0];
        assert_eq!(sequence_lengths(Some(&mask), 3, 3), [3, 1, 0]);
        // T = 3, B = 2: row 0 with a hole at t = 1 counts it, row 1 ends at t = 1.
        let mask = [1.0, 0.0, 0.0, 0.5, 1.0, 0.0];
        assert_eq!(sequence_lengths(Some(&mask), 3, 2), [3, 2]);
        assert_eq!(sequence_lengths(None, 4, 2), [4, 4]);
    }

    #[test]
    fn the_reversal_is_an_involution_within_each_length() {
        for len in 0..5 {
            for t in 0..6 {
                assert_eq!(reversed_step(reversed_step(t, len), len), t);
            }
        }
        assert_eq!(reversed_step(0, 3), 2);
        assert_eq!(reversed_step(3, 3), 3);
    }

    #[test]
    fn a_reversed_gather_reverses_each_row_and_keeps_the_padding() {
        // T = 3, B = 2, width 1: rows 0 and 1 with lengths 3 and 2.
        let src: Vec<f32> = (0..6).map(|i| i as f32).collect();
        let mut dst = vec![-1.0; 6];
        let g = RowGather {
            steps: 3,
            rows: 2,
            width: 1,
            src: (0, 1, 0),
            dst: (0, 1, 0),
            directions: 1,
            reverse: 1,
        };
        g.apply(&[3, 2], &src, &mut dst);
        // Row 0: t = 0, 1, 2 read 2, 1, 0; row 1: t = 0, 1 read 1, 0 and t = 2 itself.
        assert_eq!(dst, [4.0, 3.0, 2.0, 1.0, 0.0, 5.0]);
    }
}
