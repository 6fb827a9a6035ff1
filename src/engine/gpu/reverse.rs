//! Launcher of `shaders/reverse.wgsl`: the row gather that takes a bidirectional layer's second
//! direction into each sequence's reversed order and back (twin: `RowGather::apply` of
//! `engine::reverse`).

use crate::engine::gpu::context::GpuContext;
use crate::engine::gpu::pipelines::{args_mirror, kernels};
use crate::engine::gpu::plan::{Call, grid_1d, offset32};
use crate::engine::reverse::RowGather;
use crate::error::Result;

kernels! {
    shader: Reverse;

    /// `permute_rows`: bindings the rows' lengths (u32), the source, the destination.
    PERMUTE_ROWS = "permute_rows", PermuteArgs, [Read, Read, ReadWrite];
}

args_mirror! {
    /// Mirror of `Args` in reverse.wgsl.
    pub struct PermuteArgs mirrors "Args" {
        pub steps: u32,
        pub rows: u32,
        pub width: u32,
        pub src_off: u32,
        pub src_stride: u32,
        pub src_dir: u32,
        pub dst_off: u32,
        pub dst_stride: u32,
        pub dst_dir: u32,
        pub reverse: u32,
        pub pad: [u32; 2],
    }
}

/// The gather `g` from `src` into `dst` (distinct buffers), the rows' lengths `[B]` in `lengths`
/// (twin: `RowGather::apply`).
pub fn permute_rows(
    ctx: &GpuContext,
    g: &RowGather,
    lengths: &wgpu::Buffer,
    src: &wgpu::Buffer,
    dst: &wgpu::Buffer,
) -> Result<Call> {
    let wg = ctx.tunables.row_wg;
    let args = PermuteArgs {
        steps: offset32("steps", g.steps)?,
        rows: offset32("rows", g.rows)?,
        width: offset32("width", g.width)?,
        src_off: offset32("offset", g.src.0)?,
        src_stride: offset32("stride", g.src.1)?,
        src_dir: offset32("stride", g.src.2)?,
        dst_off: offset32("offset", g.dst.0)?,
        dst_stride: offset32("stride", g.dst.1)?,
        dst_dir: offset32("stride", g.dst.2)?,
        reverse: g.reverse,
        pad: [0; 2],
    };
    let mut groups = grid_1d(ctx, g.steps * g.rows * g.width, wg)?;
    groups[2] = offset32("directions", g.directions)?;
    Ok(Call::new(
        &PERMUTE_ROWS,
        vec![("WG", wg)],
        &[lengths, src, dst],
        &args,
        groups,
    ))
}
