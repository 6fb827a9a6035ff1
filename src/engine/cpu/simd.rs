//! The element-wise kernels compiled for the processor's vector units, chosen at run time.
//!
//! The crate is built for baseline x86-64 (SSE2), so a loop the compiler vectorises runs 4 f32
//! lanes wide. [`simd_dispatch!`] compiles a kernel a second time inside a function with AVX2
//! and FMA enabled (8 lanes, and the gate kernels' many temporaries in 16 registers) and calls
//! it where the processor has them, detected once. The kernels have no fused multiply-adds of
//! their own and Rust never contracts `a * b + c` into one, so both compilations compute the
//! same operations in the same order: the results are bitwise the same (tested,
//! `tests/all/simd.rs`), only faster. `UNROLL_CPU_SIMD=baseline` runs the baseline code
//! (for comparisons); on other processors only the baseline exists.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::error::{Error, Result};

/// The vector code the element-wise kernels run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// The crate's baseline target (SSE2 on x86-64).
    Baseline,
    /// AVX2 and FMA (x86-64).
    Avx2,
}

impl Level {
    /// The name `UNROLL_CPU_SIMD` takes and the logs print.
    pub fn name(self) -> &'static str {
        match self {
            Level::Baseline => "baseline",
            Level::Avx2 => "avx2",
        }
    }
}

/// The environment variable that holds the element-wise kernels to the baseline code
/// (`baseline`); unset, empty or `auto`, the best the processor runs.
pub const SIMD_VAR: &str = "UNROLL_CPU_SIMD";

/// The best level this processor runs.
pub fn detected() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Level::Avx2;
        }
    }
    Level::Baseline
}

/// The level the kernels run: the one [`force`] set, else [`detected`], or the baseline
/// where [`SIMD_VAR`] asks for it (read once).
pub fn level() -> Level {
    static FROM_ENV: OnceLock<Level> = OnceLock::new();
    match FORCED.load(Ordering::Relaxed) {
        1 => Level::Baseline,
        2 => Level::Avx2,
        _ => *FROM_ENV.get_or_init(|| match std::env::var(SIMD_VAR).as_deref() {
            Ok("baseline") => Level::Baseline,
            _ => detected(),
        }),
    }
}

/// The level [`force`] set: 0 none, 1 baseline, 2 AVX2.
static FORCED: AtomicU8 = AtomicU8::new(0);

/// Makes every kernel of the process run `level` from now on (`None`: back to [`level`]'s
/// choice), for comparisons of the two compilations; a level the processor does not run is
/// [`Error::Config`].
pub fn force(level: Option<Level>) -> Result<()> {
    let code = match level {
        None => 0,
        Some(Level::Baseline) => 1,
        Some(Level::Avx2) if detected() == Level::Avx2 => 2,
        Some(l) => {
            return Err(Error::Config(format!(
                "this processor does not run the {} kernels",
                l.name()
            )));
        }
    };
    FORCED.store(code, Ordering::Relaxed);
    Ok(())
}

/// Defines `fn name<F: Float>(args) -> ret` from a body that the compiler vectorises, compiled
/// twice: as it is, and inside a function with AVX2 and FMA enabled that [`level`] picks at run
/// time. The arguments are plain names (rebind them `mut` in the body).
macro_rules! simd_dispatch {
    ($(#[$meta:meta])* $vis:vis fn $name:ident<F: Float>($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name<F: Float>($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body<F: Float>($($arg: $ty),*) $(-> $ret)? $body

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            fn avx2<F: Float>($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            if $crate::engine::cpu::simd::level() == $crate::engine::cpu::simd::Level::Avx2 {
                // SAFETY: `level` is Avx2 only where the processor runs AVX2 and FMA.
                return unsafe { avx2($($arg),*) };
            }
            body($($arg),*)
        }
    };
}

pub(crate) use simd_dispatch;
