//! The CPU engine's kernel choices ([`CpuVariant`]): packed step products or the GEMM, and the
//! blocks of batch rows of the time loops; and what they depend on besides the model (the
//! processor, its SIMD kernel, the threads).

use crate::engine::variant::{CpuVariant, StepProduct, Variant};
use crate::error::{Error, Result};

use super::packed::Kernel;

/// The variants of an engine whose floats are `bytes` wide on this processor, the default
/// first: the products always packed and always through the GEMM (where there is a packed
/// kernel for the floats), and the time loops on one block of rows and on twice the threads.
pub fn cpu_variants(bytes: usize) -> Vec<Variant> {
    let mut out = vec![Variant::CPU];
    if bytes == 4 && Kernel::detect().is_some() {
        for product in [StepProduct::Packed, StepProduct::Gemm] {
            out.push(Variant::Cpu(CpuVariant {
                product,
                row_parts: None,
            }));
        }
    }
    let threads = rayon::current_num_threads();
    let mut parts = vec![2 * threads];
    if threads > 1 {
        parts.insert(0, 1);
    }
    for p in parts {
        out.push(Variant::Cpu(CpuVariant {
            product: StepProduct::Auto,
            row_parts: Some(p),
        }));
    }
    out
}

/// The CPU choices of `v`: a GPU variant, or row blocks of 0, is [`Error::Config`].
pub fn cpu_choice(v: &Variant) -> Result<CpuVariant> {
    match v {
        Variant::Cpu(c) if c.row_parts == Some(0) => Err(Error::Config(
            "a CPU variant needs at least one block of rows; pick another variant".into(),
        )),
        Variant::Cpu(c) => Ok(*c),
        Variant::Gpu(_) => Err(Error::Config(format!(
            "the CPU engine cannot run the GPU variant \"{v}\"; tune again on this device"
        ))),
    }
}

/// The processor as the choice depends on it: its model name, the packed kernel it runs, the
/// threads, the float type.
pub fn cpu_device_key(float: &str) -> String {
    let kernel = match Kernel::detect() {
        Some(Kernel::Avx512) => "avx512",
        Some(Kernel::Avx2) => "avx2",
        None => "no-simd-kernel",
    };
    format!(
        "cpu | {} | {kernel} | {} threads | {float}",
        cpu_model_name(),
        rayon::current_num_threads()
    )
}

/// The processor's model name (Linux: /proc/cpuinfo), else the architecture.
fn cpu_model_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, name)| name.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}
