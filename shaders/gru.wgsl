// gru.wgsl: the GRU cell's fused gate nonlinearities and state update (torch.nn.GRU, gates
// r, z, n stacked in that order), the twin of `src/engine/cpu/gru.rs`.
//
// One time step of all B rows. The recurrent pre-activations of all three gates,
// a_hh = h_{t-1} W_hh^T + b_hh [B, 3H], come from ONE matmul dispatch before the forward step;
// `dh_{t-1} += da_hh W_hh` is ONE matmul dispatch after the backward step. The input-side
// pre-activations a_ih = x_t W_ih^T + b_ih of all T steps are computed before the time loop.
//
// Tunables (override constants): WG, the workgroup size (one thread per (b, j) element).

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
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> args: Args;

fn sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-x));
}

fn element(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid.x;
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
    let i = element(wid, nwg, lid);
    let h = args.hidden;
    if (i >= args.rows * h) {
        return;
    }
    let b = i / h;
    let j = i % h;
    let g = args.gates_off + b * 3u * h + j;
    let a = args.ahh_off + b * 3u * h + j;
    let r = sigmoid(f_gates[g] + f_ahh[a]);
    let z = sigmoid(f_gates[g + h] + f_ahh[a + h]);
    let n = tanh(f_gates[g + 2u * h] + r * f_ahh[a + 2u * h]);
    f_gates[g] = r;
    f_gates[g + h] = z;
    f_gates[g + 2u * h] = n;
    f_states[args.dst_off + i] = (1.0 - z) * n + z * f_states[args.src_off + i];
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
    let i = element(wid, nwg, lid);
    let h = args.hidden;
    if (i >= args.rows * h) {
        return;
    }
    let b = i / h;
    let j = i % h;
    let g = args.gates_off + b * 3u * h + j;
    let a = args.ahh_off + b * 3u * h + j;
    let r = b_gates[g];
    let z = b_gates[g + h];
    let n = b_gates[g + 2u * h];
    let d = b_ds[args.grad_off + i];
    let dan = d * (1.0 - z) * (1.0 - n * n);
    let daz = d * (b_states[args.src_off + i] - n) * z * (1.0 - z);
    let dar = dan * b_ahh[a + 2u * h] * r * (1.0 - r);
    b_da_ih[g] = dar;
    b_da_ih[g + h] = daz;
    b_da_ih[g + 2u * h] = dan;
    b_da_hh[a] = dar;
    b_da_hh[a + h] = daz;
    b_da_hh[a + 2u * h] = r * dan;
    if (args.has_prev == 1u) {
        let p = args.prev_grad_off + i;
        b_ds[p] = b_ds[p] + d * z;
    }
}
