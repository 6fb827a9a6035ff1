// rnn.wgsl: the plain (Elman) cell, the twin of `src/engine/cpu/rnn.rs`.
//
// States of one layer live in one buffer as [(T+1) * B, H] rows (rows 0..B the initial state),
// so step t reads rows t*B.. and writes rows (t+1)*B... Only the recurrent product is sequential;
// the input projection runs once over all N = T * B rows before the time loop.
//
// Tunables (override constants): TILE, the side of the square output tile of the step kernels
// (TILE x TILE threads, one output each, K staged in chunks of TILE); WG, the workgroup size of
// the element-wise kernels.

override TILE: u32 = 16u;
override WG: u32 = 64u;

struct Args {
    // B rows per step, H state size (gate rows G*H = H for this cell), I input size, N = T * B.
    rows: u32,
    hidden: u32,
    inputs: u32,
    n: u32,
    // Element offsets: W_ih or W_hh in the parameter buffer, the two bias vectors, the operand
    // rows read by a step, the rows written by a step, the activations s_t (backward only).
    w_off: u32,
    bias_off: u32,
    bias2_off: u32,
    src_off: u32,
    dst_off: u32,
    act_off: u32,
    // 0: tanh, 1: relu.
    activation: u32,
    // 1: the step has a recurrent operand (always forward; backward except at t = T-1).
    has_src: u32,
    // Offsets in the token buffer: token ids [N], CSR starts [I+1], rows sorted by token [N].
    tok_off: u32,
    starts_off: u32,
    sorted_off: u32,
    // input_gather_onehot: how many bias vectors it adds: 2 both (tanh cell), 1 only the first
    // (gated cells, whose b_hh joins the recurrent product), 0 none (a model without biases).
    biases: u32,
    // The recurrence's direction strides: workgroup z = 1 runs the second direction of a
    // bidirectional layer, W_hh dir_w elements further in the parameters and its states (and
    // state gradient) dir_state elements further; 0 for one direction.
    dir_w: u32,
    dir_state: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> args: Args;

// The thread's index in a 1-D grid linearised over (x, y) workgroups of WG threads.
fn element(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid.x;
}

// ---- input_gather_onehot ------------------------------------------------------------------

@group(0) @binding(1) var<storage, read> g_tokens: array<u32>;
@group(0) @binding(2) var<storage, read> g_params: array<f32>;
@group(0) @binding(3) var<storage, read_write> g_out: array<f32>;

// One-hot input projection, a column gather (no matmul):
// U[r, j] = W_ih[j, tok_r] + b_ih[j] (+ b_hh[j] when biases = 2; neither when biases = 0); W_ih [GH, I], U [N, GH]
// written at dst_off (hidden = GH here).
// Grid: N * H threads, linearised over (x, y) workgroups.
@compute @workgroup_size(WG)
fn input_gather_onehot(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = element(wid, nwg, lid);
    if (i >= args.n * args.hidden) {
        return;
    }
    let r = i / args.hidden;
    let j = i % args.hidden;
    let tok = g_tokens[args.tok_off + r];
    var bsum = 0.0;
    if (args.biases >= 1u) {
        bsum = g_params[args.bias_off + j];
    }
    if (args.biases == 2u) {
        bsum += g_params[args.bias2_off + j];
    }
    g_out[args.dst_off + i] = g_params[args.w_off + j * args.inputs + tok] + bsum;
}

// ---- input_grad_onehot --------------------------------------------------------------------

@group(0) @binding(1) var<storage, read> d_tokens: array<u32>;
@group(0) @binding(2) var<storage, read> d_dz: array<f32>;
@group(0) @binding(3) var<storage, read_write> d_grads: array<f32>;

// One-hot input gradient as a deterministic gather (no atomics):
// dW_ih[j, v] += sum_{r : tok_r = v} dZ[r, j], the rows of token v read from the CSR lists
// (starts [I+1], sorted rows [N]) built on the host with the batch. dW_ih [H, I], dZ [N, H].
// Consecutive threads take consecutive tokens v, so the read-modify-write of dW_ih is coalesced.
// Grid: I * H threads, linearised.
@compute @workgroup_size(WG)
fn input_grad_onehot(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = element(wid, nwg, lid);
    if (i >= args.inputs * args.hidden) {
        return;
    }
    let j = i / args.inputs;
    let v = i % args.inputs;
    let idx = args.w_off + j * args.inputs + v;
    d_grads[idx] = d_grads[idx] + token_rows_sum(v, j);
}

// sum_{r : tok_r = v} d_dz[r, j] over the rows of token v in the CSR lists; d_dz rows are
// `hidden` wide, at src_off.
fn token_rows_sum(v: u32, j: u32) -> f32 {
    let lo = d_tokens[args.starts_off + v];
    let hi = d_tokens[args.starts_off + v + 1u];
    var sum = 0.0;
    for (var s = lo; s < hi; s++) {
        let r = d_tokens[args.sorted_off + s];
        sum += d_dz[args.src_off + r * args.hidden + j];
    }
    return sum;
}

// ---- embed_gather / embed_grad --------------------------------------------------------------
// The embedding E [I, Em] (hidden = Em, inputs = I) at w_off in the parameter or gradient buffer.

// Embedding lookup: X[r, e] = E[tok_r, e]; X [N, Em] written at dst_off.
// Grid: N * Em threads, linearised.
@compute @workgroup_size(WG)
fn embed_gather(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = element(wid, nwg, lid);
    if (i >= args.n * args.hidden) {
        return;
    }
    let r = i / args.hidden;
    let e = i % args.hidden;
    let tok = g_tokens[args.tok_off + r];
    g_out[args.dst_off + i] = g_params[args.w_off + tok * args.hidden + e];
}

// Embedding gradient as a deterministic gather over the CSR lists (as input_grad_onehot):
// dE[v, e] += sum_{r : tok_r = v} dX[r, e]. dX [N, Em] at src_off, dE [I, Em] at w_off.
// Grid: I * Em threads, linearised.
@compute @workgroup_size(WG)
fn embed_grad(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = element(wid, nwg, lid);
    if (i >= args.inputs * args.hidden) {
        return;
    }
    let v = i / args.hidden;
    let e = i % args.hidden;
    let idx = args.w_off + i;
    d_grads[idx] = d_grads[idx] + token_rows_sum(v, e);
}

// ---- rnn_step_forward / rnn_step_backward -------------------------------------------------

@group(0) @binding(1) var<storage, read> s_params: array<f32>;
@group(0) @binding(2) var<storage, read> s_act: array<f32>;
@group(0) @binding(3) var<storage, read_write> s_work: array<f32>;

var<workgroup> tile_x: array<f32, TILE * TILE>;
var<workgroup> tile_w: array<f32, TILE * TILE>;

// sum_k X[b, k] * W'[k, j] for the thread's (b, j), X = the rows at src_off of s_work [B, H],
// W' = W_hh^T (transpose_w = 0: W_hh[j, k]) or W_hh (transpose_w = 1: W_hh[k, j]).
// Called in uniform control flow by every thread of the workgroup.
fn recurrent_product(b: u32, j: u32, lid: vec3<u32>, transpose_w: bool, z: u32) -> f32 {
    let h = args.hidden;
    let src = args.src_off + z * args.dir_state;
    let w_off = args.w_off + z * args.dir_w;
    let b0 = b - lid.y;
    let j0 = j - lid.x;
    var acc = 0.0;
    for (var k0 = 0u; k0 < h; k0 += TILE) {
        // tile_x[y * TILE + x] = X[b0 + y, k0 + x]; tile_w[y * TILE + x] = W'[k0 + y, j0 + x].
        let xb = b0 + lid.y;
        let xk = k0 + lid.x;
        var xv = 0.0;
        if (xb < args.rows && xk < h) {
            xv = s_work[src + xb * h + xk];
        }
        tile_x[lid.y * TILE + lid.x] = xv;
        let wk = k0 + lid.y;
        let wj = j0 + lid.x;
        var wv = 0.0;
        if (wk < h && wj < h) {
            if (transpose_w) {
                wv = s_params[w_off + wk * h + wj];
            } else {
                wv = s_params[w_off + wj * h + wk];
            }
        }
        tile_w[lid.y * TILE + lid.x] = wv;
        workgroupBarrier();
        for (var kk = 0u; kk < TILE; kk++) {
            acc = fma(tile_x[lid.y * TILE + kk], tile_w[kk * TILE + lid.x], acc);
        }
        workgroupBarrier();
    }
    return acc;
}

// Forward cell step for all B rows: s_t = f1(u_t + s_{t-1} W_hh^T), in place: u_t [B, H] is
// read from and s_t written to the rows at dst_off; s_{t-1} [B, H] is read at src_off (same
// buffer, disjoint rows); W_hh [H, H]. f1 = tanh or relu.
// Grid: (ceil(H / TILE), ceil(B / TILE), 1) workgroups of TILE x TILE threads.
@compute @workgroup_size(TILE, TILE)
fn rnn_step_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let b = gid.y;
    let j = gid.x;
    let acc = recurrent_product(b, j, lid, false, gid.z);
    if (b < args.rows && j < args.hidden) {
        let idx = args.dst_off + gid.z * args.dir_state + b * args.hidden + j;
        let z = s_work[idx] + acc;
        if (args.activation == 1u) {
            s_work[idx] = max(z, 0.0);
        } else {
            s_work[idx] = tanh(z);
        }
    }
}

// BPTT cell step for all B rows: dz_t = (ds_t + dz_{t+1} W_hh) ⊙ f1'(s_t), in place: ds_t [B, H]
// is read from and dz_t written to the rows at dst_off; dz_{t+1} [B, H] is read at src_off
// when has_src = 1 (not at t = T-1); s_t [B, H] at act_off of s_act; W_hh [H, H].
// f1' in terms of s_t: 1 - s_t^2 (tanh), [s_t > 0] (relu).
// Grid: (ceil(H / TILE), ceil(B / TILE), 1) workgroups of TILE x TILE threads.
@compute @workgroup_size(TILE, TILE)
fn rnn_step_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let b = gid.y;
    let j = gid.x;
    var acc = 0.0;
    if (args.has_src == 1u) {
        acc = recurrent_product(b, j, lid, true, gid.z);
    }
    if (b < args.rows && j < args.hidden) {
        let idx = args.dst_off + gid.z * args.dir_state + b * args.hidden + j;
        let s = s_act[args.act_off + gid.z * args.dir_state + b * args.hidden + j];
        var d = s_work[idx] + acc;
        if (args.activation == 1u) {
            if (s <= 0.0) {
                d = 0.0;
            }
        } else {
            d = d * (1.0 - s * s);
        }
        s_work[idx] = d;
    }
}

// ---- rnn_forward_rows / rnn_backward_rows --------------------------------------------------
// The whole recurrence of a layer in ONE dispatch: batch rows are independent, so workgroup b
// owns row b, keeps its state in workgroup memory and loops over all T steps (n = T here),
// reading W_hh from global memory (cache) at every step. No other workgroup waits for it, so
// no grid-wide barrier is needed. Wins over T dispatches of the step kernels where those are
// latency-bound (small H); MAX_H = H sizes the two state buffers.

override MAX_H: u32 = 128u;

// The state of the previous and of the current step (ping-pong by step parity).
var<workgroup> rows_h: array<f32, 2u * MAX_H>;

// Forward over all T steps for row b = workgroup_id.x: s_{t+1} = f1(u_t + W_hh s_t) in place in
// the layer's state buffer s_work [(T+1) * B, H] at dst_off, whose rows t*B + b hold s_t for
// t = 0 (the initial state) and u_{t-1} (input projection plus biases) for t >= 1 on entry,
// s_t on exit. W_hh [H, H] at w_off of s_params. The twin is T calls of rnn_step_forward.
// Grid: (B, 1, 1) workgroups of WG threads.
@compute @workgroup_size(WG)
fn rnn_forward_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let b = wid.x;
    let h = args.hidden;
    let dst = args.dst_off + wid.z * args.dir_state;
    let w_off = args.w_off + wid.z * args.dir_w;
    for (var j = lid.x; j < h; j += WG) {
        rows_h[j] = s_work[dst + b * h + j];
    }
    workgroupBarrier();
    for (var t = 0u; t < args.n; t++) {
        let cur = (t % 2u) * MAX_H;
        let nxt = MAX_H - cur;
        let row = dst + ((t + 1u) * args.rows + b) * h;
        for (var j = lid.x; j < h; j += WG) {
            var acc = 0.0;
            let w = w_off + j * h;
            for (var k = 0u; k < h; k++) {
                acc = fma(s_params[w + k], rows_h[cur + k], acc);
            }
            let z = s_work[row + j] + acc;
            var s = tanh(z);
            if (args.activation == 1u) {
                s = max(z, 0.0);
            }
            s_work[row + j] = s;
            rows_h[nxt + j] = s;
        }
        workgroupBarrier();
    }
}

// BPTT over all T steps for row b = workgroup_id.x, from t = T-1 down to 0:
// dz_t = (ds_t + W_hh^T dz_{t+1}) ⊙ f1'(s_t) (dz_T = 0), in place in s_work at dst_off, whose
// rows t*B + b hold ds_t on entry and dz_t on exit; s_t at rows (t+1)*B + b of s_act at act_off.
// The twin is T calls of rnn_step_backward. Grid: (B, 1, 1) workgroups of WG threads.
@compute @workgroup_size(WG)
fn rnn_backward_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let b = wid.x;
    let h = args.hidden;
    let dst = args.dst_off + wid.z * args.dir_state;
    let act = args.act_off + wid.z * args.dir_state;
    let w_off = args.w_off + wid.z * args.dir_w;
    for (var j = lid.x; j < h; j += WG) {
        rows_h[j] = 0.0;
    }
    workgroupBarrier();
    for (var i = 0u; i < args.n; i++) {
        let t = args.n - 1u - i;
        let cur = (i % 2u) * MAX_H;
        let nxt = MAX_H - cur;
        let row = dst + (t * args.rows + b) * h;
        let srow = act + ((t + 1u) * args.rows + b) * h;
        for (var j = lid.x; j < h; j += WG) {
            var acc = 0.0;
            for (var k = 0u; k < h; k++) {
                acc = fma(s_params[w_off + k * h + j], rows_h[cur + k], acc);
            }
            let s = s_act[srow + j];
            var d = s_work[row + j] + acc;
            if (args.activation == 1u) {
                if (s <= 0.0) {
                    d = 0.0;
                }
            } else {
                d = d * (1.0 - s * s);
            }
            s_work[row + j] = d;
            rows_h[nxt + j] = d;
        }
        workgroupBarrier();
    }
}
