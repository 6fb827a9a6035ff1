//! CPU twin of `shaders/matmul.wgsl`: `C = op(A) op(B) (+ C when accumulating)`.
//! Transposes are views, so every GEMM of the step (the output projection, `dS = dlogits W_o`,
//! `dW_o = dlogits^T S`, `dW_hh = dZ^T S_prev`) is this one call.

use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};

use crate::engine::cpu::Float;

/// `C = A B` (`accumulate = false`) or `C += A B` (`accumulate = true`); pass `a.t()` / `b.t()`
/// for the transposed variants. Shapes: A [M, K], B [K, N], C [M, N].
pub fn matmul<F: Float>(
    a: ArrayView2<F>,
    b: ArrayView2<F>,
    c: &mut ArrayViewMut2<F>,
    accumulate: bool,
) {
    let beta = if accumulate { F::one() } else { F::zero() };
    general_mat_mul(F::one(), &a, &b, beta, c);
}
