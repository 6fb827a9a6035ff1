//! Launcher of `shaders/matmul.wgsl`: `C (+)= op(A) op(B) (+ biases)` for the GEMMs that run
//! once over all `T * B` rows (input and output projections, weight gradients, `dS = dlogits W`).

use bytemuck::{Pod, Zeroable};

use crate::engine::gpu::buffers::Region;
use crate::engine::gpu::context::GpuContext;
use crate::engine::gpu::pipelines::{Access, Kernel};
use crate::engine::gpu::plan::{Call, grid_2d, offset32};
use crate::engine::gpu::shaders::Shader;
use crate::error::Result;

/// `matmul`: bindings A (read), B (read), C (read-write), bias (read).
pub static MATMUL: Kernel = Kernel {
    shader: Shader::Matmul,
    entry: "matmul",
    bindings: &[Access::Read, Access::Read, Access::ReadWrite, Access::Read],
};

/// Mirror of `Args` in matmul.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct MatmulArgs {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub a_off: u32,
    pub b_off: u32,
    pub c_off: u32,
    pub bias_off: u32,
    pub bias2_off: u32,
    pub trans_a: u32,
    pub trans_b: u32,
    pub accumulate: u32,
    pub biases: u32,
    /// The slice of the depth this dispatch sums.
    pub k_begin: u32,
    pub k_end: u32,
    pub pad: [u32; 2],
}

/// The most depth one matmul dispatch sums: deeper products (the output layer's `dS = dlogits
/// W_o` sums over the whole vocabulary) are split into dispatches that accumulate, which keeps
/// each dispatch short and its f32 running sums shallow (and lavapipe computes wrong sums in one
/// dispatch from a depth of about 40,000).
pub const MAX_DEPTH_PER_DISPATCH: usize = 8192;

/// A GEMM operand: where it is, and whether it is stored transposed (`op(X) = X^T`).
#[derive(Clone, Copy, Debug)]
pub struct Operand<'a> {
    pub at: Region<'a>,
    pub transposed: bool,
}

/// `op(X) = X`, X stored as the rows of op(X).
pub fn plain(at: Region<'_>) -> Operand<'_> {
    Operand {
        at,
        transposed: false,
    }
}

/// `op(X) = X^T`, X stored as the columns of op(X).
pub fn transposed(at: Region<'_>) -> Operand<'_> {
    Operand {
        at,
        transposed: true,
    }
}

/// Up to two bias vectors `[n]` inside one buffer, added to every row of the product.
#[derive(Clone, Copy, Debug)]
pub struct Biases<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub first: usize,
    pub second: Option<usize>,
}

/// `C[m, n] = op(A)[m, k] op(B)[k, n] + biases` (`accumulate = false`) or `C += op(A) op(B)`.
/// The CPU twin is `engine::cpu::matmul::matmul`. One dispatch per [`MAX_DEPTH_PER_DISPATCH`] of
/// the depth k.
pub fn matmul(
    ctx: &GpuContext,
    (m, n, k): (usize, usize, usize),
    a: Operand<'_>,
    b: Operand<'_>,
    c: Region<'_>,
    biases: Option<Biases<'_>>,
    accumulate: bool,
) -> Result<Vec<Call>> {
    let t = ctx.tunables;
    let (wx, wy) = t.matmul_wg;
    let args = MatmulArgs {
        m: offset32("rows", m)?,
        n: offset32("columns", n)?,
        k: offset32("depth", k)?,
        a_off: offset32("offset", a.at.offset)?,
        b_off: offset32("offset", b.at.offset)?,
        c_off: offset32("offset", c.offset)?,
        bias_off: offset32("offset", biases.map_or(0, |x| x.first))?,
        bias2_off: offset32("offset", biases.and_then(|x| x.second).unwrap_or(0))?,
        trans_a: a.transposed as u32,
        trans_b: b.transposed as u32,
        accumulate: accumulate as u32,
        biases: biases.map_or(0, |x| 1 + x.second.is_some() as u32),
        k_begin: 0,
        k_end: offset32("depth", k)?,
        pad: [0; 2],
    };
    let bias_buffer = biases.map_or(b.at.buffer, |x| x.buffer);
    let grid = grid_2d(ctx, "matmul", m, n, 4 * wy, 4 * wx)?;
    // The first slice applies the caller's accumulate flag and biases; the others add to it.
    (0..k.max(1))
        .step_by(MAX_DEPTH_PER_DISPATCH)
        .map(|k0| {
            let first = k0 == 0;
            let slice = MatmulArgs {
                k_begin: offset32("depth", k0)?,
                k_end: offset32("depth", (k0 + MAX_DEPTH_PER_DISPATCH).min(k))?,
                accumulate: if first { args.accumulate } else { 1 },
                biases: if first { args.biases } else { 0 },
                ..args
            };
            Ok(Call::new(
                &MATMUL,
                vec![("WG_X", wx), ("WG_Y", wy), ("TILE_K", t.matmul_k)],
                &[a.at.buffer, b.at.buffer, c.buffer, bias_buffer],
                &slice,
                grid,
            ))
        })
        .collect()
}
