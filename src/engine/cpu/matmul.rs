//! CPU twin of `shaders/matmul.wgsl`: `C = op(A) op(B) (+ C when accumulating)`.
//! Transposes are views, so every GEMM of the step (the output projection, `dS = dlogits W_o`,
//! `dW_o = dlogits^T S`, `dW_hh = dZ^T S_prev`, the recurrent products) is this one call. It
//! runs on the `gemm` crate's kernels (AVX-512 / AVX2 / NEON as the processor has them, threads
//! from rayon's pool above its own size threshold), which read the views' strides directly.

use ndarray::{ArrayView2, ArrayViewMut2};

use crate::engine::cpu::Float;

/// `C = A B` (`accumulate = false`) or `C += A B` (`accumulate = true`); pass `a.t()` / `b.t()`
/// for the transposed variants. Shapes: A [M, K], B [K, N], C [M, N]; mismatched shapes panic
/// (they are a bug of the caller: every shape here comes from the layout).
pub fn matmul<F: Float>(
    a: ArrayView2<F>,
    b: ArrayView2<F>,
    c: &mut ArrayViewMut2<F>,
    accumulate: bool,
) {
    matmul_threads(a, b, c, accumulate, true)
}

/// [`matmul`] on the calling thread alone (`parallel = false`), for callers that already
/// share the work between threads, or on rayon's pool.
pub fn matmul_threads<F: Float>(
    a: ArrayView2<F>,
    b: ArrayView2<F>,
    c: &mut ArrayViewMut2<F>,
    accumulate: bool,
    parallel: bool,
) {
    let ((m, k), (k2, n)) = (a.dim(), b.dim());
    assert!(
        k == k2 && c.dim() == (m, n),
        "matmul shapes [{m}, {k}] x [{k2}, {n}] -> {:?}",
        c.dim()
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.fill(F::zero());
        }
        return;
    }
    let (sa, sb) = (a.strides(), b.strides());
    let (sc0, sc1) = (c.strides()[0], c.strides()[1]);
    // SAFETY: the three views are valid for their shapes and strides (ndarray guarantees it),
    // `c` is borrowed mutably so it aliases neither `a` nor `b`, and gemm reads and writes only
    // the elements those shapes and strides address. gemm computes
    // dst = alpha * dst + beta * lhs * rhs (dst read only when `read_dst`).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            sc1,
            sc0,
            accumulate,
            a.as_ptr(),
            sa[1],
            sa[0],
            b.as_ptr(),
            sb[1],
            sb[0],
            F::one(),
            F::one(),
            false,
            false,
            false,
            if parallel {
                gemm::Parallelism::Rayon(0)
            } else {
                gemm::Parallelism::None
            },
        );
    }
}
