//! The recurrent products of the time loop: `C[B, n] += X[B, k] op(W)` with few rows B and the
//! same W at every one of the T steps.
//!
//! A general GEMM packs op(W) again at every call and, with B = 32 rows, spends as long moving W
//! as multiplying it (about 35 GFLOP/s on two AVX-512 cores for [32, 512] x [512, 2048], the
//! LSTM's step at H = 512). Here op(W) is packed ONCE per pass into panels as wide as the
//! kernel's block (each panel k x width, contiguous), and a register-tiled kernel runs over them:
//! 8 rows x 48 columns of C in 24 AVX-512 registers (6 rows x 16 columns in 12 AVX2 registers),
//! per depth step one broadcast of X per row and three (two) loads of W, each panel read once
//! per block of rows; threads take disjoint panels. The kernel is picked at run time from the processor's features; in f64, or on a
//! processor with neither, the product goes through [`matmul`](crate::engine::cpu::matmul::matmul) (on a row-major copy of op(W),
//! which the GEMM reads several times faster than a strided transposed view).
//!
//! Every element is summed in depth order with fused multiply-adds, so the result does not
//! depend on the number of threads.

use ndarray::{Array2, ArrayView2, ArrayViewMut2, Axis};

use crate::engine::cpu::Float;
use crate::engine::cpu::matmul::matmul_threads;
use crate::engine::variant::StepProduct;

/// Columns per block (and panel) of the AVX-512 kernel: 8 rows x 3 zmm of accumulators, 24 FMAs
/// per 3 loads of W and 8 broadcasts of X (measured on [32, 512] x [512, 2048] and its BPTT
/// twin: 150-167 GFLOP/s on two cores against 125-147 with 8 x 32 and 125-137 with 6 x 64).
const AVX512_COLS: usize = 48;

/// Columns per block of the AVX2 kernel, 6 rows x 2 ymm of accumulators (measured on this
/// processor running AVX2: 84-138 GFLOP/s against 70-77 with 4 x 24 and 20-50 with 4 x 32,
/// whose 16 accumulators left no register for W).
const AVX2_COLS: usize = 16;

/// Products smaller than this (in multiply-adds) run on one thread: below it, handing half the
/// panels to another thread costs more than it saves.
const PARALLEL_MIN: usize = 1 << 22;

/// op(W) of at most this many values (1 MiB of f32) stays with [`matmul`](crate::engine::cpu::matmul::matmul): it fits a core's L2
/// cache, where the GEMM is as fast as the kernel here (measured on two AVX-512 cores: equal at
/// [32, 512] x [512, 512], the GEMM ahead at [32, 128] x [128, 128], the kernel 1.4-2x ahead at
/// [32, 512] x [512, 2048] and [32, 2048] x [2048, 512]).
pub const PACK_MIN: usize = 1 << 18;

/// The SIMD kernels this module has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// 8 rows x 48 columns in 24 zmm registers.
    Avx512,
    /// 6 rows x 16 columns in 12 ymm registers.
    Avx2,
}

impl Kernel {
    /// Columns per panel: the kernel's block width.
    pub fn panel_width(self) -> usize {
        match self {
            Kernel::Avx512 => AVX512_COLS,
            Kernel::Avx2 => AVX2_COLS,
        }
    }

    /// The best kernel this processor runs, if any.
    pub fn detect() -> Option<Kernel> {
        [Kernel::Avx512, Kernel::Avx2]
            .into_iter()
            .find(|k| k.supported())
    }

    /// Whether this processor runs `self`.
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Kernel::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
                Kernel::Avx2 => {
                    std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }
}

/// op(W) [k, n] packed in panels of [`Kernel::panel_width`] columns (the last one zero-padded).
struct Panels {
    k: usize,
    n: usize,
    data: Vec<f32>,
    kernel: Kernel,
}

/// How a [`StepWeight`] holds op(W).
enum Held<'a, F> {
    /// Packed for a SIMD kernel (f32).
    Panels(Panels),
    /// The caller's view, for [`matmul`](crate::engine::cpu::matmul::matmul).
    View(ArrayView2<'a, F>),
    /// A row-major copy, for [`matmul`](crate::engine::cpu::matmul::matmul).
    Copy(Array2<F>),
}

/// The W of a time loop's products, packed for the SIMD kernel when there is one.
pub struct StepWeight<'a, F: Float> {
    held: Held<'a, F>,
    /// Whether a product may share its work between threads.
    parallel: bool,
}

impl<'a, F: Float> StepWeight<'a, F> {
    /// op(W) [k, n] (any strides): packed for the processor's best kernel when it is larger
    /// than [`PACK_MIN`] (f32), else a row-major copy unless it is row-major already.
    pub fn new(w: ArrayView2<'a, F>) -> Self {
        Self::reusing(w, Vec::new())
    }

    /// [`new`](StepWeight::new), packing into `buffer` (a buffer of an earlier
    /// [`StepWeight::into_buffer`]) instead of a new allocation.
    pub fn reusing(w: ArrayView2<'a, F>, buffer: Vec<f32>) -> Self {
        Self::reusing_as(w, buffer, StepProduct::Auto)
    }

    /// [`reusing`](StepWeight::reusing) as `product` says: packed above [`PACK_MIN`] (`Auto`),
    /// always packed where the processor has a kernel (`Packed`), or never (`Gemm`).
    pub fn reusing_as(w: ArrayView2<'a, F>, buffer: Vec<f32>, product: StepProduct) -> Self {
        let pack = match product {
            StepProduct::Auto => w.len() > PACK_MIN,
            StepProduct::Packed => true,
            StepProduct::Gemm => false,
        };
        Self::build(w, Kernel::detect().filter(|_| pack), buffer)
    }

    /// The packing buffer, for the next [`StepWeight::reusing`] (empty when nothing was packed).
    pub fn into_buffer(self) -> Vec<f32> {
        match self.held {
            Held::Panels(p) => p.data,
            _ => Vec::new(),
        }
    }

    /// op(W) packed for `kernel` when the processor runs it and F is f32; else as [`new`]
    /// without a kernel.
    ///
    /// [`new`]: StepWeight::new
    pub fn with_kernel(w: ArrayView2<'a, F>, kernel: Option<Kernel>) -> Self {
        Self::build(w, kernel, Vec::new())
    }

    fn build(w: ArrayView2<'a, F>, kernel: Option<Kernel>, buffer: Vec<f32>) -> Self {
        let kernel = kernel.filter(|k| k.supported());
        let held = match (kernel, as_f32(w)) {
            (Some(kernel), Some(w32)) => Held::Panels(pack(w32, kernel, buffer)),
            _ if w.is_standard_layout() => Held::View(w),
            _ => Held::Copy(w.as_standard_layout().into_owned()),
        };
        StepWeight {
            held,
            parallel: true,
        }
    }

    /// op(W) as it is, for [`matmul`](crate::engine::cpu::matmul::matmul): no kernel, no copy (the CPU twins of the GPU kernels).
    pub fn view(w: ArrayView2<'a, F>) -> Self {
        StepWeight {
            held: Held::View(w),
            parallel: true,
        }
    }

    /// Whether the products may share their work between threads (the default) or run on the
    /// calling thread alone (for callers that already run one product per thread).
    pub fn parallel(mut self, on: bool) -> Self {
        self.parallel = on;
        self
    }

    /// The kernel the products run on (`None`: [`matmul`](crate::engine::cpu::matmul::matmul)).
    pub fn kernel(&self) -> Option<Kernel> {
        match &self.held {
            Held::Panels(p) => Some(p.kernel),
            _ => None,
        }
    }

    /// `c += x op(W)`: x [m, k], c [m, n]; mismatched shapes panic as [`matmul`](crate::engine::cpu::matmul::matmul)'s do.
    pub fn product(&self, x: ArrayView2<F>, c: &mut ArrayViewMut2<F>) {
        let p = match &self.held {
            Held::View(w) => return matmul_threads(x, *w, c, true, self.parallel),
            Held::Copy(w) => return matmul_threads(x, w.view(), c, true, self.parallel),
            Held::Panels(p) => p,
        };
        let (m, k) = x.dim();
        assert!(
            k == p.k && c.dim() == (m, p.n),
            "step product shapes [{m}, {k}] x [{}, {}] -> {:?}",
            p.k,
            p.n,
            c.dim()
        );
        // Panels exist only for f32, so F is f32 here.
        let (Some(x32), Some(c32)) = (as_f32(x), as_f32_mut(c.view_mut())) else {
            return;
        };
        if m == 0 {
            return;
        }
        let parts = if self.parallel && m * k * p.n >= PARALLEL_MIN {
            rayon::current_num_threads().min(p.n.div_ceil(p.kernel.panel_width()))
        } else {
            1
        };
        split(x32, p, c32, 0, parts);
    }
}

/// `v` as f32 when F is f32.
fn as_f32<F: Float>(v: ArrayView2<'_, F>) -> Option<ArrayView2<'_, f32>> {
    if std::any::TypeId::of::<F>() != std::any::TypeId::of::<f32>() {
        return None;
    }
    // SAFETY: F is f32, so `ArrayView2<F>` and `ArrayView2<f32>` are the same type.
    Some(unsafe { std::ptr::read(&v as *const ArrayView2<'_, F> as *const ArrayView2<'_, f32>) })
}

/// `v` as f32 when F is f32.
fn as_f32_mut<F: Float>(v: ArrayViewMut2<'_, F>) -> Option<ArrayViewMut2<'_, f32>> {
    if std::any::TypeId::of::<F>() != std::any::TypeId::of::<f32>() {
        return None;
    }
    let v = std::mem::ManuallyDrop::new(v);
    // SAFETY: F is f32, so both are the same type; `v` is not used (nor dropped) again, so the
    // mutable borrow moves into the result.
    Some(unsafe {
        std::ptr::read(&*v as *const ArrayViewMut2<'_, F> as *const ArrayViewMut2<'_, f32>)
    })
}

fn pack(w: ArrayView2<'_, f32>, kernel: Kernel, mut data: Vec<f32>) -> Panels {
    let (k, n) = w.dim();
    let nr = kernel.panel_width();
    let count = n.div_ceil(nr);
    // Zero-filled: the last panel's columns past n stay zero.
    data.clear();
    data.resize(count * k * nr, 0.0);
    // Blocks of 32 depths: the strided side of the copy stays within a few cache lines.
    for (p, panel) in data.chunks_exact_mut((k * nr).max(1)).enumerate() {
        let cols = w.slice(ndarray::s![.., p * nr..(p * nr + nr).min(n)]);
        for k0 in (0..k).step_by(32) {
            for (j, col) in cols.axis_iter(Axis(1)).enumerate() {
                for kk in k0..(k0 + 32).min(k) {
                    panel[kk * nr + j] = col[kk];
                }
            }
        }
    }
    Panels { k, n, data, kernel }
}

/// Runs the panels of `c`'s columns on `parts` threads (disjoint column ranges); `p0` is the
/// first panel of `c`.
fn split(x: ArrayView2<'_, f32>, p: &Panels, c: ArrayViewMut2<'_, f32>, p0: usize, parts: usize) {
    if parts > 1 {
        let cols = c.ncols();
        let nr = p.kernel.panel_width();
        let mid = cols.div_ceil(nr) / 2;
        let (left, right) = c.split_at(Axis(1), (mid * nr).min(cols));
        rayon::join(
            || split(x, p, left, p0, parts / 2),
            || split(x, p, right, p0 + mid, parts - parts / 2),
        );
        return;
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `Panels` holds a kernel only when the processor runs it (`with_kernel`).
    unsafe {
        match p.kernel {
            Kernel::Avx512 => x86::run_avx512::<8>(x, p, c, p0),
            Kernel::Avx2 => x86::run_avx2_rows(x, p, c, p0),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (x, p, c, p0);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use ndarray::{ArrayView2, ArrayViewMut2};

    use super::{AVX2_COLS, AVX512_COLS, Panels};

    /// `c += x op(W)` over c's panels, by blocks of R rows of x (the last row repeated past m):
    /// each panel's R x NR block of accumulators in registers.
    macro_rules! blocks {
        ($name:ident, $feature:literal, $cols:ident, $vec:ty, $lanes:literal,
         $zero:ident, $load:ident, $set1:ident, $fma:ident, $store:ident) => {
            #[target_feature(enable = $feature)]
            pub unsafe fn $name<const R: usize>(
                x: ArrayView2<'_, f32>,
                p: &Panels,
                mut c: ArrayViewMut2<'_, f32>,
                p0: usize,
            ) {
                const NR: usize = $cols;
                const V: usize = NR / $lanes;
                let (m, k) = x.dim();
                let (xs, xk) = (x.strides()[0], x.strides()[1]);
                let cols = c.ncols();
                for q in 0..cols.div_ceil(NR) {
                    let panel = p.data[(p0 + q) * k * NR..(p0 + q + 1) * k * NR].as_ptr();
                    let width = NR.min(cols - q * NR);
                    for r0 in (0..m).step_by(R) {
                        let rows = R.min(m - r0);
                        // SAFETY (whole block): the row pointers address rows < m of x, read
                        // at depths < k through x's own strides; the panel holds k * NR
                        // values; the loads and stores are unaligned ones.
                        unsafe {
                            let xr: [*const f32; R] = std::array::from_fn(|r| {
                                x.as_ptr().offset((r0 + r.min(rows - 1)) as isize * xs)
                            });
                            let mut acc = [[$zero(); V]; R];
                            for kk in 0..k {
                                let w: [$vec; V] =
                                    std::array::from_fn(|v| $load(panel.add(kk * NR + v * $lanes)));
                                for r in 0..R {
                                    let xv = $set1(*xr[r].offset(kk as isize * xk));
                                    for v in 0..V {
                                        acc[r][v] = $fma(xv, w[v], acc[r][v]);
                                    }
                                }
                            }
                            let mut out = [0.0f32; NR];
                            for r in 0..rows {
                                for v in 0..V {
                                    $store(out.as_mut_ptr().add(v * $lanes), acc[r][v]);
                                }
                                let mut row = c.row_mut(r0 + r);
                                for j in 0..width {
                                    row[q * NR + j] += out[j];
                                }
                            }
                        }
                    }
                }
            }
        };
    }

    blocks!(
        run_avx512,
        "avx512f",
        AVX512_COLS,
        __m512,
        16,
        _mm512_setzero_ps,
        _mm512_loadu_ps,
        _mm512_set1_ps,
        _mm512_fmadd_ps,
        _mm512_storeu_ps
    );
    blocks!(
        run_avx2,
        "avx2,fma",
        AVX2_COLS,
        __m256,
        8,
        _mm256_setzero_ps,
        _mm256_loadu_ps,
        _mm256_set1_ps,
        _mm256_fmadd_ps,
        _mm256_storeu_ps
    );

    /// [`run_avx2`] by blocks of 6 rows, and the rows left (1 to 5) by the smallest block of
    /// 2, 4 or 6 that holds them, so that (with B = 32 split between two threads, 16 rows
    /// each) no block computes rows that are not there: 6 + 6 + 4, where blocks of 6 alone
    /// would compute 18.
    ///
    /// # Safety
    /// The processor runs AVX2 and FMA.
    pub unsafe fn run_avx2_rows(
        x: ArrayView2<'_, f32>,
        p: &Panels,
        mut c: ArrayViewMut2<'_, f32>,
        p0: usize,
    ) {
        let m = x.nrows();
        let full = m / 6 * 6;
        let (c_full, c_tail) = c.view_mut().split_at(ndarray::Axis(0), full);
        let (x_full, x_tail) = x.split_at(ndarray::Axis(0), full);
        // SAFETY: the caller's processor runs AVX2 and FMA.
        unsafe {
            if full > 0 {
                run_avx2::<6>(x_full, p, c_full, p0);
            }
            match m - full {
                0 => {}
                1 | 2 => run_avx2::<2>(x_tail, p, c_tail, p0),
                3 | 4 => run_avx2::<4>(x_tail, p, c_tail, p0),
                _ => run_avx2::<6>(x_tail, p, c_tail, p0),
            }
        }
    }
}
