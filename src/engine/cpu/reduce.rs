//! CPU twin of `shaders/reduce.wgsl`: column sums (bias gradients) and the sum of squares (the
//! global gradient norm).

use ndarray::ArrayView2;

use crate::engine::cpu::Float;
use crate::engine::cpu::simd::simd_dispatch;

/// Values per task of the parallel loops over flat buffers and columns.
pub const FLAT_BLOCK: usize = 1 << 15;

/// `out[j] += sum_r a[r, j]`. Shapes: a [N, C], out `[C]`. Blocks of columns run on rayon's
/// threads, each column summed in row order, so the result is the same on any number of
/// threads.
pub fn column_sums_accumulate<F: Float>(a: ArrayView2<F>, out: &mut [F]) {
    use rayon::prelude::*;
    let cols = (FLAT_BLOCK / a.nrows().max(1)).max(64);
    if a.len() < FLAT_BLOCK || cols >= out.len() {
        return column_sums_block(a, out);
    }
    out.par_chunks_mut(cols).enumerate().for_each(|(i, o)| {
        let c0 = i * cols;
        column_sums_block(a.slice(ndarray::s![.., c0..c0 + o.len()]), o);
    });
}

/// `sum_i x_i^2`, accumulated in f64 by blocks of [`FLAT_BLOCK`] values (each in order, on
/// rayon's threads), then over the blocks in order: the same on any number of threads.
pub fn sum_of_squares<F: Float>(x: &[F]) -> f64 {
    use rayon::prelude::*;
    let blocks: Vec<f64> = x.par_chunks(FLAT_BLOCK).map(sum_of_squares_block).collect();
    blocks.iter().fold(0.0, |a, &b| a + b)
}

simd_dispatch! {
/// [`column_sums_accumulate`] on the calling thread.
fn column_sums_block<F: Float>(a: ArrayView2<F>, out: &mut [F]) {
    for row in a.outer_iter() {
        for (o, &v) in out.iter_mut().zip(row.iter()) {
            *o += v;
        }
    }
}
}

simd_dispatch! {
/// `sum_i x_i^2` of one block, accumulated in f64 in order.
fn sum_of_squares_block<F: Float>(x: &[F]) -> f64 {
    x.iter().map(|v| v.f64() * v.f64()).sum()
}
}
