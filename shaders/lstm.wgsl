// lstm.wgsl: the LSTM cell's fused gate nonlinearities and cell update (torch.nn.LSTM, gates
// i, f, g, o stacked in that order), the twin of `src/engine/cpu/lstm.rs`.
//
// One time step of all B rows, in two forms. `lstm_step_forward` / `lstm_step_backward` (the
// `steps` recurrence): the recurrent pre-activations of all four gates,
// a_hh = h_{t-1} W_hh^T + b_hh [B, 4H], come from ONE matmul dispatch before the forward step;
// `dh_{t-1} += da W_hh` is ONE matmul dispatch after the backward step. `*_rows` (the `wide`
// recurrence, below): the product is fused in, so a step is ONE dispatch. Both forms share the
// unit's math (`cell_forward`, `cell_backward`). The input-side pre-activations
// a_ih = x_t W_ih^T + b_ih of all T steps are computed before the time loop.
//
// Tunables (override constants): WG, the workgroup size of the element-wise form (one thread
// per (b, j) element); the fused form's are rows.wgsl's.

override WG: u32 = 64u;

struct Args {
    // B rows per step, H state size.
    rows: u32,
    hidden: u32,
    // Element offsets: step t's rows of the gate array [N, 4H] (and of da), of a_hh [N, 4H],
    // c_{t-1} / h_{t-1} and c_t / h_t in the layer's [(T+1) * B, H] buffers, step t's rows dh_t
    // in the state gradient [N, H].
    gates_off: u32,
    ahh_off: u32,
    src_off: u32,
    dst_off: u32,
    grad_off: u32,
    _pad0: u32,
    // Backward: 1 when dc holds the gradient from step t+1 (t < T-1); 0 reads it as zero.
    has_next: u32,
    // The fused kernels: W_hh and b_hh in the parameters, and the product's rows (h_{t-1}
    // forward, da_{t+1} backward; none when has_x = 0).
    w_off: u32,
    bias_off: u32,
    x_off: u32,
    has_x: u32,
    // 1: the fused forward adds b_hh at bias_off; 0: the layer has no biases.
    has_bias: u32,
    // Direction strides: workgroup z = 1 runs the second direction of a bidirectional layer,
    // its arrays this many elements further (all 0 for one direction): in the parameters (W_hh,
    // b_hh), the states and the state gradient, the memories, the gate arrays (gates, a_hh,
    // da_ih, da_hh, da), and dc.
    dir_w: u32,
    dir_state: u32,
    dir_cell: u32,
    dir_gate: u32,
    dir_dc: u32,
    _pad1: u32,
}

// b_hh[i] of the fused forward, i an element of the parameters (0 without biases).
fn hh_bias(i: u32) -> f32 {
    if (args.has_bias == 1u) {
        return s_w[i];
    }
    return 0.0;
}

// The offsets of direction z (workgroup z): the arguments' offsets moved by its strides.
struct Offsets {
    gates: u32,
    ahh: u32,
    // h_{t-1} and h_t (and dh_t) rows, then c_{t-1} and c_t rows.
    src: u32,
    dst: u32,
    grad: u32,
    c_src: u32,
    c_dst: u32,
    w: u32,
    bias: u32,
    // The product's rows of the fused BPTT step (da_{t+1}, a gate array).
    x: u32,
    dc: u32,
}

fn offsets(z: u32) -> Offsets {
    let s = z * args.dir_state;
    let c = z * args.dir_cell;
    let g = z * args.dir_gate;
    let w = z * args.dir_w;
    return Offsets(
        args.gates_off + g, args.ahh_off + g, args.src_off + s, args.dst_off + s,
        args.grad_off + s, args.src_off + c, args.dst_off + c, args.w_off + w,
        args.bias_off + w, args.x_off + g, z * args.dir_dc,
    );
}

@group(0) @binding(0) var<uniform> args: Args;

fn sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-x));
}

fn element(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid.x;
}

// One unit's forward step: the gates (i, f, g, o) from their pre-activations a, then c_t and h_t.
struct Cell {
    gates: vec4<f32>,
    c: f32,
    h: f32,
}

fn cell_forward(a: vec4<f32>, c_prev: f32) -> Cell {
    let i = sigmoid(a.x);
    let f = sigmoid(a.y);
    let g = tanh(a.z);
    let o = sigmoid(a.w);
    let c = f * c_prev + i * g;
    return Cell(vec4<f32>(i, f, g, o), c, o * tanh(c));
}

// One unit's BPTT step: da (for i, f, g, o) and the gradient reaching c_{t-1}, from the gates,
// c_{t-1}, c_t, the whole dh_t and the dc_t arriving from step t+1.
struct CellGrad {
    da: vec4<f32>,
    dc: f32,
}

fn cell_backward(gates: vec4<f32>, c_prev: f32, c: f32, d: f32, dc: f32) -> CellGrad {
    let i = gates.x;
    let f = gates.y;
    let g = gates.z;
    let o = gates.w;
    let tc = tanh(c);
    let dct = dc + d * o * (1.0 - tc * tc);
    let da = vec4<f32>(
        dct * g * i * (1.0 - i),
        dct * c_prev * f * (1.0 - f),
        dct * i * (1.0 - g * g),
        d * tc * o * (1.0 - o),
    );
    return CellGrad(da, dct * f);
}

// ---- lstm_step_forward --------------------------------------------------------------------

@group(0) @binding(1) var<storage, read_write> f_gates: array<f32>;
@group(0) @binding(2) var<storage, read> f_ahh: array<f32>;
@group(0) @binding(3) var<storage, read_write> f_cells: array<f32>;
@group(0) @binding(4) var<storage, read_write> f_states: array<f32>;

// Forward LSTM step for all B rows, a = a_ih + a_hh [B, 4H] (a_ih in the gate rows on entry):
// i = σ(a_i), f = σ(a_f), g = tanh(a_g), o = σ(a_o), c_t = f ⊙ c_{t-1} + i ⊙ g,
// h_t = o ⊙ tanh(c_t); (i, f, g, o) overwrite the gate rows, c_t and h_t [B, H] are written.
// Grid: B * H threads, linearised over (x, y) workgroups.
@compute @workgroup_size(WG)
fn lstm_step_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let o = offsets(wid.z);
    let idx = element(wid, nwg, lid);
    let h = args.hidden;
    if (idx >= args.rows * h) {
        return;
    }
    let b = idx / h;
    let j = idx % h;
    let gi = o.gates + b * 4u * h + j;
    let ai = o.ahh + b * 4u * h + j;
    let a = vec4<f32>(
        f_gates[gi] + f_ahh[ai],
        f_gates[gi + h] + f_ahh[ai + h],
        f_gates[gi + 2u * h] + f_ahh[ai + 2u * h],
        f_gates[gi + 3u * h] + f_ahh[ai + 3u * h],
    );
    let cell = cell_forward(a, f_cells[o.c_src + idx]);
    f_gates[gi] = cell.gates.x;
    f_gates[gi + h] = cell.gates.y;
    f_gates[gi + 2u * h] = cell.gates.z;
    f_gates[gi + 3u * h] = cell.gates.w;
    f_cells[o.c_dst + idx] = cell.c;
    f_states[o.dst + idx] = cell.h;
}

// ---- lstm_step_backward -------------------------------------------------------------------

@group(0) @binding(1) var<storage, read> b_gates: array<f32>;
@group(0) @binding(2) var<storage, read> b_cells: array<f32>;
@group(0) @binding(3) var<storage, read> b_ds: array<f32>;
@group(0) @binding(4) var<storage, read_write> b_dc: array<f32>;
@group(0) @binding(5) var<storage, read_write> b_da: array<f32>;

// BPTT LSTM step for all B rows; dh [B, H] is the whole gradient reaching h_t, dc [B, H] the
// gradient reaching c_t from step t+1 (zero when has_next = 0), replaced by the one reaching
// c_{t-1}: dc_t = dc + dh ⊙ o ⊙ (1 - tanh(c_t)^2), da_i = dc_t ⊙ g ⊙ i(1 - i),
// da_f = dc_t ⊙ c_{t-1} ⊙ f(1 - f), da_g = dc_t ⊙ i ⊙ (1 - g^2), da_o = dh ⊙ tanh(c_t) ⊙ o(1 - o),
// dc = dc_t ⊙ f. da [B, 4H] (the gradient of a_ih and a_hh alike) is written.
// Grid: B * H threads, linearised over (x, y) workgroups.
@compute @workgroup_size(WG)
fn lstm_step_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let o = offsets(wid.z);
    let idx = element(wid, nwg, lid);
    let h = args.hidden;
    if (idx >= args.rows * h) {
        return;
    }
    let b = idx / h;
    let j = idx % h;
    let gi = o.gates + b * 4u * h + j;
    let gates = vec4<f32>(b_gates[gi], b_gates[gi + h], b_gates[gi + 2u * h], b_gates[gi + 3u * h]);
    var dc = 0.0;
    if (args.has_next == 1u) {
        dc = b_dc[o.dc + idx];
    }
    let d = b_ds[o.grad + idx];
    let grad = cell_backward(gates, b_cells[o.c_src + idx], b_cells[o.c_dst + idx], d, dc);
    b_da[gi] = grad.da.x;
    b_da[gi + h] = grad.da.y;
    b_da[gi + 2u * h] = grad.da.z;
    b_da[gi + 3u * h] = grad.da.w;
    b_dc[o.dc + idx] = grad.dc;
}

// ---- lstm_step_forward_rows, lstm_step_backward_rows: a whole step in one dispatch ---------
//
// The same steps with their recurrent product fused in (rows.wgsl): a workgroup owns
// units = ROWS_COLS / 4 hidden units forward (their columns of all four gates) and
// units = ROWS_COLS backward, for all B rows, so a time step is ONE dispatch each way.
// s_w (binding 1, rows.wgsl) is the parameters; s_io (binding 2) holds the product's rows and
// is written by the step: the states forward (h_{t-1} read, h_t written), da backward
// (da_{t+1} read, da_t written).

@group(0) @binding(3) var<storage, read_write> sf_gates: array<f32>;
@group(0) @binding(4) var<storage, read_write> sf_cells: array<f32>;

// Forward LSTM step t, a = a_ih + (b_hh + h_{t-1} W_hh^T) with a_ih in the gate rows on entry:
// as `lstm_step_forward`. Grid: (ceil(H / units), 1, 1) workgroups of ROWS_WG threads.
@compute @workgroup_size(ROWS_WG)
fn lstm_step_forward_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let o = offsets(wid.z);
    let h = args.hidden;
    let p = gates_forward(args.rows, h, 4u, o.src, o.w);
    let units = p.units;
    let j0 = wid.x * units;
    let lane = lid.x % LANES;
    let slot = lid.x / LANES;
    for (var b0 = 0u; b0 < args.rows; b0 += ROWS_WG / LANES) {
        rows_product(p, j0, b0, lid.x);
        let b = b0 + slot;
        let j = j0 + lane;
        if (lane < units && b < args.rows && j < h) {
            let gi = o.gates + b * 4u * h + j;
            let bi = o.bias + j;
            let a = vec4<f32>(
                sf_gates[gi] + (hh_bias(bi) + rows_sum(slot, lane)),
                sf_gates[gi + h] + (hh_bias(bi + h) + rows_sum(slot, units + lane)),
                sf_gates[gi + 2u * h] + (hh_bias(bi + 2u * h) + rows_sum(slot, 2u * units + lane)),
                sf_gates[gi + 3u * h] + (hh_bias(bi + 3u * h) + rows_sum(slot, 3u * units + lane)),
            );
            let idx = b * h + j;
            let cell = cell_forward(a, sf_cells[o.c_src + idx]);
            sf_gates[gi] = cell.gates.x;
            sf_gates[gi + h] = cell.gates.y;
            sf_gates[gi + 2u * h] = cell.gates.z;
            sf_gates[gi + 3u * h] = cell.gates.w;
            sf_cells[o.c_dst + idx] = cell.c;
            s_io[o.dst + idx] = cell.h;
        }
        // `partial` is written again by the next row pass.
        workgroupBarrier();
    }
}

@group(0) @binding(3) var<storage, read> sb_gates: array<f32>;
@group(0) @binding(4) var<storage, read> sb_cells: array<f32>;
@group(0) @binding(5) var<storage, read> sb_ds: array<f32>;
@group(0) @binding(6) var<storage, read_write> sb_dc: array<f32>;

// BPTT LSTM step t with dh = ds_t + da_{t+1} W_hh (ds_t, from the outputs or the layer above,
// is only read): as `lstm_step_backward`, da_t written into binding 2.
// Grid: (ceil(H / units), 1, 1) workgroups of ROWS_WG threads.
@compute @workgroup_size(ROWS_WG)
fn lstm_step_backward_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let o = offsets(wid.z);
    let h = args.hidden;
    let j0 = wid.x * ROWS_COLS;
    let p = gates_backward(args.rows, h, 4u, o.x, args.has_x, o.w);
    let lane = lid.x % LANES;
    let slot = lid.x / LANES;
    for (var b0 = 0u; b0 < args.rows; b0 += ROWS_WG / LANES) {
        rows_product(p, j0, b0, lid.x);
        let b = b0 + slot;
        let j = j0 + lane;
        if (lane < ROWS_COLS && b < args.rows && j < h) {
            let idx = b * h + j;
            let gi = o.gates + b * 4u * h + j;
            let gates = vec4<f32>(sb_gates[gi], sb_gates[gi + h], sb_gates[gi + 2u * h], sb_gates[gi + 3u * h]);
            var dc = 0.0;
            if (args.has_next == 1u) {
                dc = sb_dc[o.dc + idx];
            }
            let d = rows_sum(slot, lane) + sb_ds[o.grad + idx];
            let grad = cell_backward(gates, sb_cells[o.c_src + idx], sb_cells[o.c_dst + idx], d, dc);
            s_io[gi] = grad.da.x;
            s_io[gi + h] = grad.da.y;
            s_io[gi + 2u * h] = grad.da.z;
            s_io[gi + 3u * h] = grad.da.w;
            sb_dc[o.dc + idx] = grad.dc;
        }
        workgroupBarrier();
    }
}
