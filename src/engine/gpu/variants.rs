//! The GPU engine's kernel choices ([`GpuVariant`]): the recurrence kernel, the GEMM's tiles,
//! the per-step products' threads and the fused gated steps' units per workgroup; and what they
//! depend on besides the model (the adapter and its driver).

use crate::engine::Recurrence;
use crate::engine::gpu::context::{GpuContext, Tunables};
use crate::engine::gpu::rnn::rows_kernels_fit;
use crate::engine::gpu::shape::RecurrenceKernel;
use crate::engine::variant::{GpuVariant, Variant};
use crate::error::{Error, Result};
use crate::model::{Cell, ModelConfig};

/// The variants of `config` on this device for batches of `rows` rows, the default first, each
/// changing one choice of the default: the other recurrence kernels, the GEMM with smaller
/// workgroups or other K chunks, the per-step products with fewer threads, the fused gated
/// steps with one unit or eight units per workgroup. Only values the device's limits allow.
pub fn gpu_variants(ctx: &GpuContext, config: &ModelConfig, rows: usize) -> Vec<Variant> {
    let base = GpuVariant::default();
    let mut out = vec![base];
    for recurrence in [Recurrence::Steps, Recurrence::Wide, Recurrence::Rows] {
        out.push(GpuVariant { recurrence, ..base });
    }
    let default = Tunables::for_limits(&ctx.limits);
    for w in [8, 16].into_iter().filter(|&w| (w, w) != default.matmul_wg) {
        out.push(GpuVariant {
            matmul_wg: Some(w),
            ..base
        });
    }
    for k in [8, 32].into_iter().filter(|&k| k != default.matmul_k) {
        out.push(GpuVariant {
            matmul_k: Some(k),
            ..base
        });
    }
    let resolved = auto_kernel(ctx, config, rows);
    if resolved == Some(RecurrenceKernel::Wide) {
        for wg in [64, 128]
            .into_iter()
            .filter(|&w| w < default.rows_product_wg)
        {
            out.push(GpuVariant {
                rows_product_wg: Some(wg),
                ..base
            });
        }
        if config.cell != Cell::Rnn {
            for units in [1, 8] {
                out.push(GpuVariant {
                    gated_units: Some(units),
                    ..base
                });
            }
        }
    }
    out.into_iter()
        .filter(|v| v == &base || differs(ctx, config, rows, v, resolved))
        .map(Variant::Gpu)
        .collect()
}

/// The kernel the default resolves to for `rows` rows (`None` where it cannot run).
fn auto_kernel(ctx: &GpuContext, config: &ModelConfig, rows: usize) -> Option<RecurrenceKernel> {
    let projected = config.proj_size.is_some();
    RecurrenceKernel::resolve(ctx, Recurrence::Auto, config.cell, rows, config.hidden_size)
        .and_then(|k| k.for_projection(projected, Recurrence::Auto))
        .ok()
}

/// Whether `v` runs (the device allows it) and runs something else than the default.
fn differs(
    ctx: &GpuContext,
    config: &ModelConfig,
    rows: usize,
    v: &GpuVariant,
    resolved: Option<RecurrenceKernel>,
) -> bool {
    if gpu_choice(ctx, config, rows, &Variant::Gpu(*v)).is_err() {
        return false;
    }
    if v.recurrence == Recurrence::Auto {
        return true;
    }
    let projected = config.proj_size.is_some();
    let kernel =
        RecurrenceKernel::resolve(ctx, v.recurrence, config.cell, rows, config.hidden_size)
            .and_then(|k| k.for_projection(projected, v.recurrence));
    matches!(kernel, Ok(k) if Some(k) != resolved)
}

/// The GPU choices of `v` for `config` on this device with batches of `rows` rows:
/// [`Error::Config`] for a CPU variant, the rows kernel where the cell cannot run it (a gated
/// cell, or more rows or units than the device holds), the wide kernel with an LSTM
/// projection, or tunables the device's limits refuse.
pub fn gpu_choice(
    ctx: &GpuContext,
    config: &ModelConfig,
    rows: usize,
    v: &Variant,
) -> Result<GpuVariant> {
    let g = match v {
        Variant::Gpu(g) => *g,
        Variant::Cpu(_) => {
            return Err(Error::Config(format!(
                "the GPU engine cannot run the CPU variant \"{v}\"; tune again on this device"
            )));
        }
    };
    let refuse = |why: &str| Err(Error::Config(format!("the GPU variant \"{v}\" {why}")));
    match g.recurrence {
        Recurrence::Rows if config.cell != Cell::Rnn => {
            return refuse("runs the rows kernel, which only the tanh/relu cell has");
        }
        Recurrence::Rows if !rows_kernels_fit(ctx, rows, config.hidden_size) => {
            return refuse("runs the rows kernel, which does not fit this device's limits");
        }
        Recurrence::Wide if config.proj_size.is_some() => {
            return refuse("runs the wide kernel, which cannot project (--proj-size)");
        }
        _ => {}
    }
    Tunables::for_limits(&ctx.limits).with_variant(&ctx.limits, &g)?;
    Ok(g)
}

/// The adapter as the choice depends on it: name, driver and its version, backend.
pub fn gpu_device_key(ctx: &GpuContext) -> String {
    let i = &ctx.info;
    format!("gpu | {} | {} | {}", i.name, i.driver, i.backend)
}
