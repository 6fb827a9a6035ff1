//! Launchers of `shaders/reduce.wgsl`: column sums into bias gradients, and the two-stage flat
//! sums that leave the loss total and the global gradient norm in the scratch buffer.

use crate::engine::gpu::buffers::Region;
use crate::engine::gpu::context::GpuContext;
use crate::engine::gpu::pipelines::{Access, args_mirror, kernels};
use crate::engine::gpu::plan::{Call, grid_2d, offset32};
use crate::error::Result;

const BINDINGS: &[Access] = &[Access::Read, Access::ReadWrite];

kernels! {
    shader: Reduce;

    /// `column_sums_accumulate`: bindings input, out.
    COLUMN_SUMS_ACCUMULATE = "column_sums_accumulate", ReduceArgs, BINDINGS;

    /// `sum_partial`: bindings input, scratch.
    SUM_PARTIAL = "sum_partial", ReduceArgs, BINDINGS;

    /// `sum_final`: bindings input (unused), scratch.
    SUM_FINAL = "sum_final", ReduceArgs, BINDINGS;
}

/// Scratch slot of the loss sum of the last forward.
pub const LOSS_SLOT: usize = 0;
/// Scratch slot of the global gradient norm of the last optimizer step.
pub const NORM_SLOT: usize = 1;
/// Scratch elements: 16 result slots, then at most [`MAX_PARTIALS`] partial sums.
pub const SCRATCH_LEN: usize = 16 + MAX_PARTIALS;
/// The most workgroups of the first stage of a flat sum.
pub const MAX_PARTIALS: usize = 256;

const COLS: u32 = 32;
const LANES: u32 = 8;

args_mirror! {
    /// Mirror of `Args` in reduce.wgsl.
    pub struct ReduceArgs mirrors "Args" {
        pub n: u32,
        pub cols: u32,
        pub in_off: u32,
        pub out_off: u32,
        pub out2_off: u32,
        pub outs: u32,
        pub square: u32,
        pub partials: u32,
        pub slot: u32,
        pub pad: [u32; 3],
    }
}

/// `out[j] += sum_r a[r, j]` for a [n, cols] at `input`, into one or two vectors of `out`
/// (twin: `column_sums_accumulate`).
pub fn column_sums_accumulate(
    ctx: &GpuContext,
    (n, cols): (usize, usize),
    input: Region<'_>,
    out: &wgpu::Buffer,
    offsets: &[usize],
) -> Result<Call> {
    let args = ReduceArgs {
        n: offset32("rows", n)?,
        cols: offset32("columns", cols)?,
        in_off: offset32("offset", input.offset)?,
        out_off: offset32("offset", offsets.first().copied().unwrap_or(0))?,
        out2_off: offset32("offset", offsets.get(1).copied().unwrap_or(0))?,
        outs: offsets.len() as u32,
        ..ReduceArgs::default()
    };
    Ok(Call::new(
        &COLUMN_SUMS_ACCUMULATE,
        vec![("COLS", COLS), ("LANES", LANES)],
        &[input.buffer, out],
        &args,
        grid_2d(ctx, "column sums", 1, cols, 1, COLS)?,
    ))
}

/// `scratch[slot] = sum_i x_i` (`square = false`) or `sqrt(sum_i x_i^2)` (`square = true`) over
/// the `n` values at `input`, in two fixed-order stages (twin: `sum_of_squares`).
pub fn sum(
    ctx: &GpuContext,
    n: usize,
    input: Region<'_>,
    square: bool,
    scratch: &wgpu::Buffer,
    slot: usize,
) -> Result<Vec<Call>> {
    let wg = ctx.tunables.flat_wg;
    let partials = n.div_ceil(wg as usize).clamp(1, MAX_PARTIALS);
    let args = ReduceArgs {
        n: offset32("elements", n)?,
        in_off: offset32("offset", input.offset)?,
        square: square as u32,
        partials: partials as u32,
        slot: offset32("slot", slot)?,
        ..ReduceArgs::default()
    };
    let constants = vec![("WG", wg)];
    Ok(vec![
        Call::new(
            &SUM_PARTIAL,
            constants.clone(),
            &[input.buffer, scratch],
            &args,
            [partials as u32, 1, 1],
        ),
        Call::new(
            &SUM_FINAL,
            constants,
            &[input.buffer, scratch],
            &args,
            [1, 1, 1],
        ),
    ])
}
