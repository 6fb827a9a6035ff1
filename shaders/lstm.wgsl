// lstm.wgsl: the LSTM cell's fused gate nonlinearities and cell update (torch.nn.LSTM, gates
// i, f, g, o stacked in that order), the twin of `src/engine/cpu/lstm.rs`.
//
// One time step of all B rows. The recurrent pre-activations of all four gates,
// a_hh = h_{t-1} W_hh^T + b_hh [B, 4H], come from ONE matmul dispatch before the forward step;
// `dh_{t-1} += da W_hh` is ONE matmul dispatch after the backward step. The input-side
// pre-activations a_ih = x_t W_ih^T + b_ih of all T steps are computed before the time loop.
//
// Tunables (override constants): WG, the workgroup size (one thread per (b, j) element).

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
    _pad1: u32,
    _pad2: u32,
    _pad3: u32,
}

@group(0) @binding(0) var<uniform> args: Args;

fn sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-x));
}

fn element(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid.x;
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
    let idx = element(wid, nwg, lid);
    let h = args.hidden;
    if (idx >= args.rows * h) {
        return;
    }
    let b = idx / h;
    let j = idx % h;
    let gi = args.gates_off + b * 4u * h + j;
    let ai = args.ahh_off + b * 4u * h + j;
    let i = sigmoid(f_gates[gi] + f_ahh[ai]);
    let f = sigmoid(f_gates[gi + h] + f_ahh[ai + h]);
    let g = tanh(f_gates[gi + 2u * h] + f_ahh[ai + 2u * h]);
    let o = sigmoid(f_gates[gi + 3u * h] + f_ahh[ai + 3u * h]);
    f_gates[gi] = i;
    f_gates[gi + h] = f;
    f_gates[gi + 2u * h] = g;
    f_gates[gi + 3u * h] = o;
    let c = f * f_cells[args.src_off + idx] + i * g;
    f_cells[args.dst_off + idx] = c;
    f_states[args.dst_off + idx] = o * tanh(c);
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
    let idx = element(wid, nwg, lid);
    let h = args.hidden;
    if (idx >= args.rows * h) {
        return;
    }
    let b = idx / h;
    let j = idx % h;
    let gi = args.gates_off + b * 4u * h + j;
    let i = b_gates[gi];
    let f = b_gates[gi + h];
    let g = b_gates[gi + 2u * h];
    let o = b_gates[gi + 3u * h];
    let tc = tanh(b_cells[args.dst_off + idx]);
    let d = b_ds[args.grad_off + idx];
    var dc = 0.0;
    if (args.has_next == 1u) {
        dc = b_dc[idx];
    }
    let dct = dc + d * o * (1.0 - tc * tc);
    b_da[gi] = dct * g * i * (1.0 - i);
    b_da[gi + h] = dct * b_cells[args.src_off + idx] * f * (1.0 - f);
    b_da[gi + 2u * h] = dct * i * (1.0 - g * g);
    b_da[gi + 3u * h] = d * tc * o * (1.0 - o);
    b_dc[idx] = dct * f;
}
