// gru.wgsl: the GRU cell's fused gate nonlinearities and state update (torch.nn.GRU, gates
// r, z, n stacked in that order), the twin of `src/engine/cpu/gru.rs`.
//
// One time step of all B rows, in two forms. `gru_step_forward` / `gru_step_backward` (the
// `steps` recurrence): the recurrent pre-activations of all three gates,
// a_hh = h_{t-1} W_hh^T + b_hh [B, 3H], come from ONE matmul dispatch before the forward step;
// `dh_{t-1} += da_hh W_hh` is ONE matmul dispatch after the backward step. `*_rows` (the `wide`
// recurrence, below): the product is fused in, so a step is ONE dispatch. Both forms share the
// unit's math (`unit_forward`, `unit_backward`). The input-side pre-activations
// a_ih = x_t W_ih^T + b_ih of all T steps are computed before the time loop.
//
// Tunables (override constants): WG, the workgroup size of the element-wise form (one thread
// per (b, j) element); the fused form's are rows.wgsl's.

override WG: u32 = 64u;

struct Args {
    // B rows per step, H state size.
    rows: u32,
    hidden: u32,
    // Element offsets: step t's rows of the gate array [N, 3H] (and of da_ih), of a_hh [N, 3H]
    // (and of da_hh), h_{t-1} and h_t in the layer's state buffer [(T+1) * B, H], and step t's
    // rows dh_t and t-1's rows dh_{t-1} in the state gradient [N, H].
    gates_off: u32,
    ahh_off: u32,
    src_off: u32,
    dst_off: u32,
    grad_off: u32,
    prev_grad_off: u32,
    // Backward: 1 when t > 0 (dh_{t-1} receives the direct part dh ⊙ z).
    has_prev: u32,
    // The fused kernels: W_hh and b_hh in the parameters, and the product's rows (h_{t-1}
    // forward, da_hh_{t+1} backward; none when has_x = 0).
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
    _pad0: u32,
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
    src: u32,
    dst: u32,
    grad: u32,
    prev_grad: u32,
    w: u32,
    bias: u32,
    // The product's rows of the fused BPTT step (da_hh_{t+1}, a gate array).
    x: u32,
}

fn offsets(z: u32) -> Offsets {
    let s = z * args.dir_state;
    let g = z * args.dir_gate;
    let w = z * args.dir_w;
    return Offsets(
        args.gates_off + g, args.ahh_off + g, args.src_off + s, args.dst_off + s,
        args.grad_off + s, args.prev_grad_off + s, args.w_off + w, args.bias_off + w,
        args.x_off + g,
    );
}

@group(0) @binding(0) var<uniform> args: Args;

fn sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-x));
}

fn element(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid.x;
}

// One unit's forward step: the gates (r, z, n) from a_ih and a_hh, then h_t.
struct Unit {
    gates: vec3<f32>,
    h: f32,
}

fn unit_forward(a_ih: vec3<f32>, a_hh: vec3<f32>, h_prev: f32) -> Unit {
    let r = sigmoid(a_ih.x + a_hh.x);
    let z = sigmoid(a_ih.y + a_hh.y);
    let n = tanh(a_ih.z + r * a_hh.z);
    return Unit(vec3<f32>(r, z, n), (1.0 - z) * n + z * h_prev);
}

// One unit's BPTT step from the gates, a_hh_n, h_{t-1} and the whole dh_t: da_ih, da_hh (as
// `gru_step_backward` says) and the direct part of dh_{t-1}, dh ⊙ z.
struct UnitGrad {
    da_ih: vec3<f32>,
    da_hh: vec3<f32>,
    d_prev: f32,
}

fn unit_backward(gates: vec3<f32>, a_hh_n: f32, h_prev: f32, d: f32) -> UnitGrad {
    let r = gates.x;
    let z = gates.y;
    let n = gates.z;
    let dan = d * (1.0 - z) * (1.0 - n * n);
    let daz = d * (h_prev - n) * z * (1.0 - z);
    let dar = dan * a_hh_n * r * (1.0 - r);
    return UnitGrad(vec3<f32>(dar, daz, dan), vec3<f32>(dar, daz, r * dan), d * z);
}

// ---- gru_step_forward ---------------------------------------------------------------------

@group(0) @binding(1) var<storage, read_write> f_gates: array<f32>;
@group(0) @binding(2) var<storage, read> f_ahh: array<f32>;
@group(0) @binding(3) var<storage, read_write> f_states: array<f32>;

// Forward GRU step for all B rows, a_ih [B, 3H] in the gate rows on entry, a_hh [B, 3H]:
// r = σ(a_ih_r + a_hh_r), z = σ(a_ih_z + a_hh_z), n = tanh(a_ih_n + r ⊙ a_hh_n),
// h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}; (r, z, n) overwrite the gate rows, h_t [B, H] is written.
// Grid: B * H threads, linearised over (x, y) workgroups.
@compute @workgroup_size(WG)
fn gru_step_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let o = offsets(wid.z);
    let i = element(wid, nwg, lid);
    let h = args.hidden;
    if (i >= args.rows * h) {
        return;
    }
    let b = i / h;
    let j = i % h;
    let g = o.gates + b * 3u * h + j;
    let a = o.ahh + b * 3u * h + j;
    let unit = unit_forward(
        vec3<f32>(f_gates[g], f_gates[g + h], f_gates[g + 2u * h]),
        vec3<f32>(f_ahh[a], f_ahh[a + h], f_ahh[a + 2u * h]),
        f_states[o.src + i],
    );
    f_gates[g] = unit.gates.x;
    f_gates[g + h] = unit.gates.y;
    f_gates[g + 2u * h] = unit.gates.z;
    f_states[o.dst + i] = unit.h;
}

// ---- gru_step_backward --------------------------------------------------------------------

@group(0) @binding(1) var<storage, read> b_gates: array<f32>;
@group(0) @binding(2) var<storage, read> b_ahh: array<f32>;
@group(0) @binding(3) var<storage, read> b_states: array<f32>;
@group(0) @binding(4) var<storage, read_write> b_ds: array<f32>;
@group(0) @binding(5) var<storage, read_write> b_da_ih: array<f32>;
@group(0) @binding(6) var<storage, read_write> b_da_hh: array<f32>;

// BPTT GRU step for all B rows; dh [B, H] is the whole gradient reaching h_t:
// dn = dh ⊙ (1 - z), dz = dh ⊙ (h_{t-1} - n), dâ_n = dn ⊙ (1 - n^2), dr = dâ_n ⊙ a_hh_n,
// dâ_r = dr ⊙ r(1 - r), dâ_z = dz ⊙ z(1 - z);
// da_ih = (dâ_r, dâ_z, dâ_n), da_hh = (dâ_r, dâ_z, r ⊙ dâ_n) [B, 3H] written,
// dh_{t-1} += dh ⊙ z when has_prev = 1.
// Grid: B * H threads, linearised over (x, y) workgroups.
@compute @workgroup_size(WG)
fn gru_step_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let o = offsets(wid.z);
    let i = element(wid, nwg, lid);
    let h = args.hidden;
    if (i >= args.rows * h) {
        return;
    }
    let b = i / h;
    let j = i % h;
    let g = o.gates + b * 3u * h + j;
    let a = o.ahh + b * 3u * h + j;
    let gates = vec3<f32>(b_gates[g], b_gates[g + h], b_gates[g + 2u * h]);
    let d = b_ds[o.grad + i];
    let grad = unit_backward(gates, b_ahh[a + 2u * h], b_states[o.src + i], d);
    b_da_ih[g] = grad.da_ih.x;
    b_da_ih[g + h] = grad.da_ih.y;
    b_da_ih[g + 2u * h] = grad.da_ih.z;
    b_da_hh[a] = grad.da_hh.x;
    b_da_hh[a + h] = grad.da_hh.y;
    b_da_hh[a + 2u * h] = grad.da_hh.z;
    if (args.has_prev == 1u) {
        let p = o.prev_grad + i;
        b_ds[p] = b_ds[p] + grad.d_prev;
    }
}

// ---- gru_step_forward_rows, gru_step_backward_rows: a whole step in one dispatch -----------
//
// The same steps with their recurrent product fused in (rows.wgsl): a workgroup owns
// units = ROWS_COLS / 3 hidden units forward (their columns of all three gates) and
// units = ROWS_COLS backward, for all B rows, so a time step is ONE dispatch each way.
// s_w (binding 1, rows.wgsl) is the parameters; s_io (binding 2) holds the product's rows and
// is written by the step: the states forward (h_{t-1} read, h_t written), da_hh backward
// (da_hh_{t+1} read, da_hh_t written).

@group(0) @binding(3) var<storage, read_write> sf_gates: array<f32>;
@group(0) @binding(4) var<storage, read_write> sf_ahh: array<f32>;

// Forward GRU step t, a_hh = b_hh + h_{t-1} W_hh^T (written to its rows, for the BPTT) with a_ih
// in the gate rows on entry: as `gru_step_forward`.
// Grid: (ceil(H / units), 1, 1) workgroups of ROWS_WG threads.
@compute @workgroup_size(ROWS_WG)
fn gru_step_forward_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let o = offsets(wid.z);
    let h = args.hidden;
    let p = gates_forward(args.rows, h, 3u, o.src, o.w);
    let units = p.units;
    let j0 = wid.x * units;
    let lane = lid.x % LANES;
    let slot = lid.x / LANES;
    for (var b0 = 0u; b0 < args.rows; b0 += ROWS_WG / LANES) {
        rows_product(p, j0, b0, lid.x);
        let b = b0 + slot;
        let j = j0 + lane;
        if (lane < units && b < args.rows && j < h) {
            let g = o.gates + b * 3u * h + j;
            let a = o.ahh + b * 3u * h + j;
            let bi = o.bias + j;
            let a_hh = vec3<f32>(
                hh_bias(bi) + rows_sum(slot, lane),
                hh_bias(bi + h) + rows_sum(slot, units + lane),
                hh_bias(bi + 2u * h) + rows_sum(slot, 2u * units + lane),
            );
            sf_ahh[a] = a_hh.x;
            sf_ahh[a + h] = a_hh.y;
            sf_ahh[a + 2u * h] = a_hh.z;
            let idx = b * h + j;
            let unit = unit_forward(
                vec3<f32>(sf_gates[g], sf_gates[g + h], sf_gates[g + 2u * h]),
                a_hh,
                s_io[o.src + idx],
            );
            sf_gates[g] = unit.gates.x;
            sf_gates[g + h] = unit.gates.y;
            sf_gates[g + 2u * h] = unit.gates.z;
            s_io[o.dst + idx] = unit.h;
        }
        // `partial` is written again by the next row pass.
        workgroupBarrier();
    }
}

@group(0) @binding(3) var<storage, read> sb_gates: array<f32>;
@group(0) @binding(4) var<storage, read> sb_ahh: array<f32>;
@group(0) @binding(5) var<storage, read> sb_states: array<f32>;
@group(0) @binding(6) var<storage, read_write> sb_ds: array<f32>;
@group(0) @binding(7) var<storage, read_write> sb_da_ih: array<f32>;

// BPTT GRU step t with dh = ds_t + da_hh_{t+1} W_hh: as `gru_step_backward`, da_hh_t written into
// binding 2. Grid: (ceil(H / units), 1, 1) workgroups of ROWS_WG threads.
@compute @workgroup_size(ROWS_WG)
fn gru_step_backward_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let o = offsets(wid.z);
    let h = args.hidden;
    let j0 = wid.x * ROWS_COLS;
    let p = gates_backward(args.rows, h, 3u, o.x, args.has_x, o.w);
    let lane = lid.x % LANES;
    let slot = lid.x / LANES;
    for (var b0 = 0u; b0 < args.rows; b0 += ROWS_WG / LANES) {
        rows_product(p, j0, b0, lid.x);
        let b = b0 + slot;
        let j = j0 + lane;
        if (lane < ROWS_COLS && b < args.rows && j < h) {
            let idx = b * h + j;
            let g = o.gates + b * 3u * h + j;
            let a = o.ahh + b * 3u * h + j;
            let gates = vec3<f32>(sb_gates[g], sb_gates[g + h], sb_gates[g + 2u * h]);
            let d = rows_sum(slot, lane) + sb_ds[o.grad + idx];
            let grad = unit_backward(gates, sb_ahh[a + 2u * h], sb_states[o.src + idx], d);
            sb_da_ih[g] = grad.da_ih.x;
            sb_da_ih[g + h] = grad.da_ih.y;
            sb_da_ih[g + 2u * h] = grad.da_ih.z;
            s_io[a] = grad.da_hh.x;
            s_io[a + h] = grad.da_hh.y;
            s_io[a + 2u * h] = grad.da_hh.z;
            if (args.has_prev == 1u) {
                let q = o.prev_grad + idx;
                sb_ds[q] = sb_ds[q] + grad.d_prev;
            }
        }
        workgroupBarrier();
    }
}
