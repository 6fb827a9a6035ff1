//! The kernel choices an engine can run ([`Variant`]): which recurrence kernel, which GEMM
//! tiles, how many threads per workgroup on the GPU; packed products or the GEMM and how many
//! blocks of batch rows on the CPU. Every variant computes the same results within the
//! engines' tolerances; only their speed differs, and which one wins depends on the device.
//! [`crate::tune`] measures them on the device and caches the winner.
//!
//! A variant is set with [`Engine::set_variant`](super::Engine::set_variant), which applies it
//! from the next shape the engine builds; [`Engine::variants`](super::Engine::variants) lists
//! those applicable to the engine's model and device, the default first. Each field left at
//! its default keeps the engine's own choice, so the default variant changes nothing.

use serde::{Deserialize, Serialize};

use super::Recurrence;

/// The kernel choices of one engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "engine", rename_all = "lowercase")]
pub enum Variant {
    Cpu(CpuVariant),
    Gpu(GpuVariant),
}

/// How the CPU engine runs the products of its time loops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepProduct {
    /// Packed SIMD kernel above `packed::PACK_MIN` elements of W, the GEMM below.
    #[default]
    Auto,
    /// Always the packed SIMD kernel (where the processor has one and F is f32).
    Packed,
    /// Always the GEMM.
    Gemm,
}

/// The CPU engine's choices: each `None`/`Auto` is the engine's own rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuVariant {
    /// The step products: packed kernel or GEMM.
    #[serde(default)]
    pub product: StepProduct,
    /// Blocks of batch rows the time loops run on (one thread each); `None`: `rows::row_parts`.
    #[serde(default)]
    pub row_parts: Option<usize>,
}

/// The GPU engine's choices: each `None`/`Auto` is the value the device's limits give.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuVariant {
    /// The recurrence kernel ([`Recurrence`]).
    #[serde(default)]
    pub recurrence: Recurrence,
    /// The GEMM's threads per workgroup along x and y (square; each owns a 4x4 block of C).
    #[serde(default)]
    pub matmul_wg: Option<u32>,
    /// The GEMM's K chunk staged in workgroup memory.
    #[serde(default)]
    pub matmul_k: Option<u32>,
    /// Threads per workgroup of the per-step products (rows.wgsl), a multiple of 8.
    #[serde(default)]
    pub rows_product_wg: Option<u32>,
    /// Hidden units per workgroup of the fused gated steps (forward at most 8 / gates).
    #[serde(default)]
    pub gated_units: Option<u32>,
}

impl Variant {
    /// The default of the CPU engine.
    pub const CPU: Variant = Variant::Cpu(CpuVariant {
        product: StepProduct::Auto,
        row_parts: None,
    });

    /// The default of the GPU engine.
    pub const GPU: Variant = Variant::Gpu(GpuVariant {
        recurrence: Recurrence::Auto,
        matmul_wg: None,
        matmul_k: None,
        rows_product_wg: None,
        gated_units: None,
    });

    /// A short name for logs and tables: "default", or the choices that differ from it.
    pub fn name(&self) -> String {
        let parts = match self {
            Variant::Cpu(c) => c.parts(),
            Variant::Gpu(g) => g.parts(),
        };
        if parts.is_empty() {
            "default".into()
        } else {
            parts.join(" ")
        }
    }

    /// Whether this is its engine's default variant.
    pub fn is_default(&self) -> bool {
        *self == Variant::CPU || *self == Variant::GPU
    }
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

impl CpuVariant {
    fn parts(&self) -> Vec<String> {
        let mut out = Vec::new();
        match self.product {
            StepProduct::Auto => {}
            StepProduct::Packed => out.push("product=packed".into()),
            StepProduct::Gemm => out.push("product=gemm".into()),
        }
        if let Some(p) = self.row_parts {
            out.push(format!("row-blocks={p}"));
        }
        out
    }

    /// The row blocks of a time loop over `b` rows: the variant's number (at least 1, at most
    /// `b`), or `auto(b)`.
    pub fn row_parts_or(&self, b: usize, auto: impl Fn(usize) -> usize) -> usize {
        match self.row_parts {
            Some(p) => p.clamp(1, b.max(1)),
            None => auto(b),
        }
    }
}

impl GpuVariant {
    fn parts(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(r) = recurrence_name(self.recurrence) {
            out.push(format!("recurrence={r}"));
        }
        let named = [
            ("gemm-wg", self.matmul_wg),
            ("gemm-k", self.matmul_k),
            ("rows-wg", self.rows_product_wg),
            ("gated-units", self.gated_units),
        ];
        for (name, v) in named {
            if let Some(v) = v {
                out.push(format!("{name}={v}"));
            }
        }
        out
    }
}

fn recurrence_name(r: Recurrence) -> Option<&'static str> {
    match r {
        Recurrence::Auto => None,
        Recurrence::Steps => Some("steps"),
        Recurrence::Wide => Some("wide"),
        Recurrence::Rows => Some("rows"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_list_what_differs_from_the_default() {
        assert_eq!(Variant::CPU.name(), "default");
        assert_eq!(Variant::GPU.name(), "default");
        let v = Variant::Gpu(GpuVariant {
            recurrence: Recurrence::Steps,
            matmul_k: Some(32),
            ..GpuVariant::default()
        });
        assert_eq!(v.name(), "recurrence=steps gemm-k=32");
        let c = Variant::Cpu(CpuVariant {
            product: StepProduct::Gemm,
            row_parts: Some(2),
        });
        assert_eq!(c.name(), "product=gemm row-blocks=2");
    }

    #[test]
    fn variants_round_trip_through_json() {
        for v in [
            Variant::CPU,
            Variant::GPU,
            Variant::Gpu(GpuVariant {
                recurrence: Recurrence::Rows,
                rows_product_wg: Some(64),
                gated_units: Some(1),
                ..GpuVariant::default()
            }),
        ] {
            let text = serde_json::to_string(&v).unwrap();
            assert_eq!(serde_json::from_str::<Variant>(&text).unwrap(), v);
        }
    }
}
