//! Launchers of `shaders/rnn.wgsl`: the one-hot input gather, the cell step forward, the BPTT
//! step, and the one-hot input gradient (a gather over host-built per-token row lists).

use crate::engine::gpu::buffers::Region;
use crate::engine::gpu::context::GpuContext;
use crate::engine::gpu::pipelines::{Access, Kernel, args_mirror, kernels};
use crate::engine::gpu::plan::{Call, grid_1d, grid_2d, offset32};
use crate::error::Result;
use crate::model::Activation;

const GATHER_BINDINGS: &[Access] = &[Access::Read, Access::Read, Access::ReadWrite];

kernels! {
    shader: Rnn;

    /// `input_gather_onehot`: bindings tokens, params, out.
    INPUT_GATHER_ONEHOT = "input_gather_onehot", RnnArgs, GATHER_BINDINGS;

    /// `input_grad_onehot`: bindings tokens (with the row lists), dZ, grads.
    INPUT_GRAD_ONEHOT = "input_grad_onehot", RnnArgs, GATHER_BINDINGS;

    /// `embed_gather`: bindings tokens, params, out.
    EMBED_GATHER = "embed_gather", RnnArgs, GATHER_BINDINGS;

    /// `embed_grad`: bindings tokens (with the row lists), dX, grads.
    EMBED_GRAD = "embed_grad", RnnArgs, GATHER_BINDINGS;

    /// `rnn_step_forward`: bindings params, activations (unused), states.
    RNN_STEP_FORWARD = "rnn_step_forward", RnnArgs, GATHER_BINDINGS;

    /// `rnn_forward_rows`: bindings params, activations (unused), states.
    RNN_FORWARD_ROWS = "rnn_forward_rows", RnnArgs, GATHER_BINDINGS;

    /// `rnn_backward_rows`: bindings params, states s_t, dZ (in place).
    RNN_BACKWARD_ROWS = "rnn_backward_rows", RnnArgs, GATHER_BINDINGS;

    /// `rnn_step_backward`: bindings params, states s_t, dZ (in place).
    RNN_STEP_BACKWARD = "rnn_step_backward", RnnArgs, GATHER_BINDINGS;
}

args_mirror! {
    /// Mirror of `Args` in rnn.wgsl.
    pub struct RnnArgs mirrors "Args" {
        pub rows: u32,
        pub hidden: u32,
        pub inputs: u32,
        pub n: u32,
        pub w_off: u32,
        pub bias_off: u32,
        pub bias2_off: u32,
        pub src_off: u32,
        pub dst_off: u32,
        pub act_off: u32,
        pub activation: u32,
        pub has_src: u32,
        pub tok_off: u32,
        pub starts_off: u32,
        pub sorted_off: u32,
        pub biases: u32,
        /// Direction strides (workgroup z) of the recurrence, of W_hh and of the states.
        pub dir_w: u32,
        pub dir_state: u32,
        pub pad: [u32; 2],
    }
}

/// Where the token ids and the per-token row lists sit in the batch's token buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenLayout {
    /// Token ids `[N]`.
    pub tokens: usize,
    /// CSR starts [I + 1]: the rows of token v are `sorted[starts[v]..starts[v + 1]]`.
    pub starts: usize,
    /// Row indices `[N]`, grouped by token, ascending within a token.
    pub sorted: usize,
}

impl TokenLayout {
    /// The layout for N tokens over a vocabulary of I: `[tokens | starts | sorted]`.
    pub fn new(n: usize, vocab: usize) -> Self {
        TokenLayout {
            tokens: 0,
            starts: n,
            sorted: n + vocab + 1,
        }
    }

    /// Elements of the whole token buffer.
    pub fn len(&self) -> usize {
        // The sorted rows are as many as the tokens, and `starts` is where the tokens end.
        self.sorted + self.starts
    }

    /// Whether the layout holds no tokens.
    pub fn is_empty(&self) -> bool {
        self.starts == 0
    }
}

/// The token buffer's contents: token ids, then a counting sort of the rows by token (the
/// per-token row lists that make the one-hot input gradient a deterministic gather).
pub fn token_buffer(tokens: &[u32], vocab: usize) -> Vec<u32> {
    let n = tokens.len();
    let layout = TokenLayout::new(n, vocab);
    let mut out = vec![0u32; layout.len()];
    out[..n].copy_from_slice(tokens);
    let (head, sorted) = out.split_at_mut(layout.sorted);
    let starts = &mut head[layout.starts..];
    for &t in tokens {
        starts[t as usize + 1] += 1;
    }
    for v in 0..vocab {
        starts[v + 1] += starts[v];
    }
    let mut next: Vec<u32> = starts[..vocab].to_vec();
    for (r, &t) in tokens.iter().enumerate() {
        sorted[next[t as usize] as usize] = r as u32;
        next[t as usize] += 1;
    }
    out
}

pub(crate) fn activation_index(act: Activation) -> u32 {
    match act {
        Activation::Tanh => 0,
        Activation::Relu => 1,
    }
}

/// Offsets of one layer's weights and biases in the parameter (or gradient) buffer; the gated
/// cells add only `bias` (b_ih) to the input projection.
#[derive(Clone, Copy, Debug)]
pub struct Weights {
    pub w: usize,
    pub bias: Option<usize>,
    pub bias2: Option<usize>,
}

/// Sizes of a layer's step: B rows, H state size, I input size, N = T * B rows in all.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub rows: usize,
    pub hidden: usize,
    pub inputs: usize,
    pub n: usize,
}

/// The arguments every cell kernel shares: the sizes and the offset of its weight matrix.
fn base_args(d: Dims, w: usize) -> Result<RnnArgs> {
    Ok(RnnArgs {
        rows: offset32("rows", d.rows)?,
        hidden: offset32("hidden size", d.hidden)?,
        inputs: offset32("input size", d.inputs)?,
        n: offset32("rows", d.n)?,
        w_off: offset32("offset", w)?,
        ..RnnArgs::default()
    })
}

/// `U[r, :] = W_ih[:, tok_r] + b_ih (+ b_hh)` for all N rows (twin: `input_gather_onehot`).
/// `params` holds W_ih [GH, I] at `w.w` and the biases; U [N, GH] is written at `out`
/// (`d.hidden` is the row width GH).
pub fn input_gather_onehot(
    ctx: &GpuContext,
    d: Dims,
    tokens: Region<'_>,
    params: &wgpu::Buffer,
    w: Weights,
    out: Region<'_>,
) -> Result<Call> {
    let wg = ctx.tunables.row_wg;
    let args = RnnArgs {
        bias_off: offset32("offset", w.bias.unwrap_or(0))?,
        bias2_off: offset32("offset", w.bias2.unwrap_or(0))?,
        biases: w.bias.map_or(0, |_| 1 + w.bias2.is_some() as u32),
        tok_off: offset32("offset", tokens.offset)?,
        dst_off: offset32("offset", out.offset)?,
        ..base_args(d, w.w)?
    };
    Ok(Call::new(
        &INPUT_GATHER_ONEHOT,
        vec![("WG", wg)],
        &[tokens.buffer, params, out.buffer],
        &args,
        grid_1d(ctx, d.n * d.hidden, wg)?,
    ))
}

/// `dW_ih[:, v] += sum_{r: tok_r = v} dZ[r, :]` (twin: `input_grad_onehot`). `tokens` is a
/// buffer laid out as `layout` says; dZ [N, H] at `dz`; dW_ih [H, I] at `grads`.
pub fn input_grad_onehot(
    ctx: &GpuContext,
    d: Dims,
    tokens: &wgpu::Buffer,
    layout: TokenLayout,
    dz: Region<'_>,
    grads: Region<'_>,
) -> Result<Call> {
    token_rows_grad(ctx, &INPUT_GRAD_ONEHOT, d, (tokens, layout), dz, grads)
}

/// A gradient gathered over the per-token row lists (`input_grad_onehot`, `embed_grad`): one
/// thread per (token, column), I * `d.hidden` of them.
fn token_rows_grad(
    ctx: &GpuContext,
    kernel: &'static Kernel,
    d: Dims,
    (tokens, layout): (&wgpu::Buffer, TokenLayout),
    src: Region<'_>,
    grads: Region<'_>,
) -> Result<Call> {
    let wg = ctx.tunables.row_wg;
    let args = RnnArgs {
        src_off: offset32("offset", src.offset)?,
        tok_off: offset32("offset", layout.tokens)?,
        starts_off: offset32("offset", layout.starts)?,
        sorted_off: offset32("offset", layout.sorted)?,
        ..base_args(d, grads.offset)?
    };
    Ok(Call::new(
        kernel,
        vec![("WG", wg)],
        &[tokens, src.buffer, grads.buffer],
        &args,
        grid_1d(ctx, d.inputs * d.hidden, wg)?,
    ))
}

/// `X[r, :] = E[tok_r, :]` for all N rows (twin: `embed_gather`): the embedding E [I, Em] at
/// `table` in `params`, X [N, Em] written at `out`; `d.inputs` = I, `d.hidden` = Em.
pub fn embed_gather(
    ctx: &GpuContext,
    d: Dims,
    tokens: Region<'_>,
    params: &wgpu::Buffer,
    table: usize,
    out: Region<'_>,
) -> Result<Call> {
    let wg = ctx.tunables.row_wg;
    let args = RnnArgs {
        tok_off: offset32("offset", tokens.offset)?,
        dst_off: offset32("offset", out.offset)?,
        ..base_args(d, table)?
    };
    Ok(Call::new(
        &EMBED_GATHER,
        vec![("WG", wg)],
        &[tokens.buffer, params, out.buffer],
        &args,
        grid_1d(ctx, d.n * d.hidden, wg)?,
    ))
}

/// `dE[v, :] += sum_{r: tok_r = v} dX[r, :]` (twin: `embed_grad`). `tokens` is a buffer laid
/// out as `layout` says; dX [N, Em] at `dx`; dE [I, Em] at `grads`.
pub fn embed_grad(
    ctx: &GpuContext,
    d: Dims,
    tokens: &wgpu::Buffer,
    layout: TokenLayout,
    dx: Region<'_>,
    grads: Region<'_>,
) -> Result<Call> {
    token_rows_grad(ctx, &EMBED_GRAD, d, (tokens, layout), dx, grads)
}

/// One forward step for all B rows, in place in a layer's state buffer:
/// `s_t = f1(u_t + s_{t-1} W_hh^T)` with u_t read from and s_t written to the rows at `dst`,
/// s_{t-1} read at `src` (twin: `rnn_step_forward`). W_hh [H, H] at `w_hh` in `params`.
pub fn rnn_step_forward(
    ctx: &GpuContext,
    d: Dims,
    params: &wgpu::Buffer,
    w_hh: usize,
    states: &wgpu::Buffer,
    (src, dst): (usize, usize),
    act: Activation,
) -> Result<Call> {
    let tile = ctx.tunables.rnn_tile;
    let args = RnnArgs {
        src_off: offset32("offset", src)?,
        dst_off: offset32("offset", dst)?,
        activation: activation_index(act),
        has_src: 1,
        ..base_args(d, w_hh)?
    };
    Ok(Call::new(
        &RNN_STEP_FORWARD,
        vec![("TILE", tile)],
        &[params, params, states],
        &args,
        grid_2d(ctx, "rnn_step_forward", d.rows, d.hidden, tile, tile)?,
    ))
}

/// One BPTT step for all B rows, in place in the gradient buffer `work`:
/// `dz_t = (ds_t + dz_{t+1} W_hh) ⊙ f1'(s_t)` with ds_t read from and dz_t written to the rows
/// at `dst`, dz_{t+1} read at `src` (`None` at t = T-1), s_t at `s_t` (twin: `rnn_step_backward`).
#[allow(clippy::too_many_arguments)]
pub fn rnn_step_backward(
    ctx: &GpuContext,
    d: Dims,
    params: &wgpu::Buffer,
    w_hh: usize,
    s_t: Region<'_>,
    work: &wgpu::Buffer,
    (src, dst): (Option<usize>, usize),
    act: Activation,
) -> Result<Call> {
    let tile = ctx.tunables.rnn_tile;
    let args = RnnArgs {
        src_off: offset32("offset", src.unwrap_or(0))?,
        dst_off: offset32("offset", dst)?,
        act_off: offset32("offset", s_t.offset)?,
        activation: activation_index(act),
        has_src: src.is_some() as u32,
        ..base_args(d, w_hh)?
    };
    Ok(Call::new(
        &RNN_STEP_BACKWARD,
        vec![("TILE", tile)],
        &[params, s_t.buffer, work],
        &args,
        grid_2d(ctx, "rnn_step_backward", d.rows, d.hidden, tile, tile)?,
    ))
}

/// Whether the rows-per-workgroup kernels can run B rows of H units on this device: one
/// workgroup per row, and the two state buffers of H values in workgroup memory.
pub fn rows_kernels_fit(ctx: &GpuContext, rows: usize, hidden: usize) -> bool {
    let limits = &ctx.limits;
    rows <= limits.max_compute_workgroups_per_dimension as usize
        && 2 * hidden * 4 <= limits.max_compute_workgroup_storage_size as usize
}

/// Threads per workgroup of the rows-per-workgroup kernels: enough for H units, at most the
/// per-row size.
fn rows_wg(ctx: &GpuContext, hidden: usize) -> u32 {
    let want = hidden.next_power_of_two().clamp(32, 1 << 16) as u32;
    ctx.tunables.row_wg.min(want)
}

/// The whole forward recurrence of a tanh/relu layer in ONE dispatch (twin: T calls of
/// `rnn_step_forward`): `s_{t+1} = f1(u_t + s_t W_hh^T)` for t = 0..T, in place in the layer's
/// state buffer `states` [(T+1) * B, H] (rows 0..B the initial state, the others holding u on
/// entry). `d.n` is T here. W_hh [H, H] at `w_hh` in `params`.
pub fn rnn_forward_rows(
    ctx: &GpuContext,
    d: Dims,
    params: &wgpu::Buffer,
    w_hh: usize,
    states: Region<'_>,
    act: Activation,
) -> Result<Call> {
    let wg = rows_wg(ctx, d.hidden);
    let args = RnnArgs {
        dst_off: offset32("offset", states.offset)?,
        activation: activation_index(act),
        ..base_args(d, w_hh)?
    };
    Ok(Call::new(
        &RNN_FORWARD_ROWS,
        vec![("WG", wg), ("MAX_H", offset32("hidden size", d.hidden)?)],
        &[params, params, states.buffer],
        &args,
        [offset32("rows", d.rows)?, 1, 1],
    ))
}

/// The whole BPTT of a tanh/relu layer in ONE dispatch (twin: T calls of `rnn_step_backward`):
/// `dz_t = (ds_t + dz_{t+1} W_hh) ⊙ f1'(s_t)` for t = T-1 down to 0, in place in `work`
/// [N, H] (ds on entry, dz on exit), s_t read from the layer's state buffer `states`
/// [(T+1) * B, H]. `d.n` is T here.
pub fn rnn_backward_rows(
    ctx: &GpuContext,
    d: Dims,
    params: &wgpu::Buffer,
    w_hh: usize,
    states: Region<'_>,
    work: Region<'_>,
    act: Activation,
) -> Result<Call> {
    let wg = rows_wg(ctx, d.hidden);
    let args = RnnArgs {
        dst_off: offset32("offset", work.offset)?,
        act_off: offset32("offset", states.offset)?,
        activation: activation_index(act),
        ..base_args(d, w_hh)?
    };
    Ok(Call::new(
        &RNN_BACKWARD_ROWS,
        vec![("WG", wg), ("MAX_H", offset32("hidden size", d.hidden)?)],
        &[params, states.buffer, work.buffer],
        &args,
        [offset32("rows", d.rows)?, 1, 1],
    ))
}
