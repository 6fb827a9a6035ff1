//! Launcher of `shaders/matmul.wgsl`: `C (+)= op(A) op(B) (+ biases)` for the GEMMs that run
//! once over all `T * B` rows (input and output projections, weight gradients, `dS = dlogits W`).

use crate::engine::gpu::buffers::Region;
use crate::engine::gpu::context::GpuContext;
use crate::engine::gpu::pipelines::{Constants, args_mirror, kernels};
use crate::engine::gpu::plan::{Call, grid_2d, offset32};
use crate::error::{Error, Result};
use crate::model::Activation;

kernels! {
    shader: Matmul;

    /// `matmul`: bindings A (read), B (read), C (read-write), bias (read).
    MATMUL = "matmul", MatmulArgs, [Read, Read, ReadWrite, Read];

    /// `matmul_rows`: bindings W (read), the rows X and the output (read-write), s (read).
    MATMUL_ROWS = "matmul_rows", RowsArgs, [Read, ReadWrite, Read];
}

args_mirror! {
    /// Mirror of `Args` in matmul.wgsl.
    pub struct MatmulArgs mirrors "Args" {
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
        /// Strides of the products batched over workgroup z (the directions of a layer).
        pub a_dir: u32,
        pub b_dir: u32,
        pub c_dir: u32,
        pub bias_dir: u32,
    }
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

impl<'a> Biases<'a> {
    /// Those of the bias vectors at `first` and `second` of `buffer` that exist: none for a
    /// layer without biases.
    pub fn of(
        buffer: &'a wgpu::Buffer,
        first: Option<usize>,
        second: Option<usize>,
    ) -> Option<Self> {
        match (first, second) {
            (Some(first), second) => Some(Biases {
                buffer,
                first,
                second,
            }),
            (None, Some(first)) => Some(Biases {
                buffer,
                first,
                second: None,
            }),
            (None, None) => None,
        }
    }
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
        ..MatmulArgs::default()
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

args_mirror! {
    /// Mirror of `RowsArgs` in matmul.wgsl.
    pub struct RowsArgs mirrors "RowsArgs" {
        pub rows: u32,
        pub n: u32,
        pub depth: u32,
        pub x_off: u32,
        pub out_off: u32,
        pub w_off: u32,
        pub act_off: u32,
        pub trans_w: u32,
        pub has_x: u32,
        pub derivative: u32,
        pub activation: u32,
        /// Direction strides (workgroup z), of W and of X, the output and s.
        pub dir_w: u32,
        pub dir_state: u32,
        pub pad: [u32; 3],
    }
}

/// Output columns per workgroup of `matmul_rows` (`ROWS_COLS` in rows.wgsl).
pub const ROWS_UNITS: usize = 4;

/// The most columns per workgroup of rows.wgsl (`MAX_COLS`, at most its `LANES`).
pub const ROWS_MAX_COLS: usize = 8;

/// Units per workgroup of a fused gated step of `gates` gates, forward and backward: as many
/// as fit [`ROWS_MAX_COLS`] forward and [`ROWS_UNITS`] backward, or the tunables' number
/// within those bounds.
pub fn gated_units(ctx: &GpuContext, gates: usize) -> (usize, usize) {
    let most = ROWS_MAX_COLS / gates.max(1);
    match ctx.tunables.gated_units {
        None => (most, ROWS_UNITS),
        Some(u) => {
            let u = (u as usize).max(1);
            (u.min(most), u.min(ROWS_MAX_COLS))
        }
    }
}

/// What `matmul_rows` does with each output element.
#[derive(Clone, Copy, Debug)]
pub enum RowsEpilogue<'a> {
    /// The tanh/relu cell's forward step in place: `out = f1(out + product)`.
    Activate(Activation),
    /// The tanh/relu cell's BPTT step in place: `out = (out + product) f1'(s)`, s `[B, n]`.
    Derivative(Activation, Region<'a>),
}

/// One time step of the tanh/relu recurrence, `out[B, n] = f(out + X[B, depth] op(W))` for few
/// rows B, spread over the n output columns (4 per workgroup). X is at element `x` of the
/// output's buffer, disjoint from the rows written (the previous state forward, the next step's
/// dz in BPTT); `None` is a zero product (the last BPTT step). `op(W)` as for [`matmul`]'s B:
/// `transposed(W)` for `X W^T` (W stored [n, depth]), `plain(W)` for `X W` (W stored
/// [depth, n]). The CPU twins are `rnn_step_forward` and `rnn_step_backward` of
/// `engine::cpu::rnn`.
pub fn matmul_rows(
    ctx: &GpuContext,
    (rows, n, depth): (usize, usize, usize),
    x: Option<usize>,
    w: Operand<'_>,
    out: Region<'_>,
    epilogue: RowsEpilogue<'_>,
) -> Result<Call> {
    let (derivative, activation, act) = match epilogue {
        RowsEpilogue::Activate(a) => (0, a, None),
        RowsEpilogue::Derivative(a, s) => (1, a, Some(s)),
    };
    let args = RowsArgs {
        rows: offset32("rows", rows)?,
        n: offset32("columns", n)?,
        depth: offset32("depth", depth)?,
        x_off: offset32("offset", x.unwrap_or(0))?,
        out_off: offset32("offset", out.offset)?,
        w_off: offset32("offset", w.at.offset)?,
        act_off: offset32("offset", act.map_or(0, |s| s.offset))?,
        trans_w: w.transposed as u32,
        has_x: x.is_some() as u32,
        derivative,
        activation: crate::engine::gpu::rnn::activation_index(activation),
        ..RowsArgs::default()
    };
    let (overrides, groups) = rows_launch(ctx, ROWS_UNITS, ROWS_UNITS, n, depth)?;
    // Without s, W's buffer fills the binding (read only, never read).
    let s = act.map_or(w.at.buffer, |s| s.buffer);
    Ok(Call::new(
        &MATMUL_ROWS,
        overrides,
        &[w.at.buffer, out.buffer, s],
        &args,
        groups,
    ))
}

/// Override constants and grid of a kernel built on rows.wgsl's `rows_product`: `cols` columns
/// per workgroup (at most [`ROWS_MAX_COLS`]), `units` of the `n` units per workgroup, over
/// `depth`. The staged slice is exactly the depth when it fits (one pipeline per depth), else
/// the deepest that fits the workgroup memory beside the partial sums, at most the tunable.
pub fn rows_launch(
    ctx: &GpuContext,
    cols: usize,
    units: usize,
    n: usize,
    depth: usize,
) -> Result<(Constants, [u32; 3])> {
    let t = ctx.tunables;
    let wg = t.rows_product_wg as usize;
    let floats = ctx.limits.max_compute_workgroup_storage_size as usize / 4;
    let fit = floats.saturating_sub(cols * wg) / cols.max(1) / 8 * 8;
    let kc = (depth.max(1).div_ceil(8) * 8)
        .min(t.rows_product_kc as usize)
        .min(fit);
    if cols == 0 || cols > ROWS_MAX_COLS || kc == 0 {
        return Err(Error::Shape(format!(
            "a per-step product of {cols} columns per workgroup does not fit this device"
        )));
    }
    let groups = n.div_ceil(units.max(1)).max(1);
    let max = ctx.limits.max_compute_workgroups_per_dimension as usize;
    if groups > max {
        return Err(Error::Shape(format!(
            "a per-step product over {n} units needs {groups} workgroups, more than the device's {max}"
        )));
    }
    let overrides = vec![
        ("ROWS_WG", t.rows_product_wg),
        ("ROWS_KC", kc as u32),
        ("ROWS_COLS", cols as u32),
    ];
    Ok((overrides, [groups as u32, 1, 1]))
}
