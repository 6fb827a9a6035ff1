//! CPU twin of `shaders/reduce.wgsl`: column sums (bias gradients) and the sum of squares (the
//! global gradient norm).

use ndarray::ArrayView2;

use crate::engine::cpu::Float;

/// `out[j] += sum_r a[r, j]`. Shapes: a [N, C], out `[C]`.
pub fn column_sums_accumulate<F: Float>(a: ArrayView2<F>, out: &mut [F]) {
    for row in a.outer_iter() {
        for (o, &v) in out.iter_mut().zip(row.iter()) {
            *o += v;
        }
    }
}

/// `sum_i x_i^2`, accumulated in f64.
pub fn sum_of_squares<F: Float>(x: &[F]) -> f64 {
    x.iter().map(|v| v.f64() * v.f64()).sum()
}
