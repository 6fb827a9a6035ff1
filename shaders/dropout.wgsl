// dropout.wgsl: dropout between stacked layers, the twin of `src/engine/cpu/dropout.rs`.
//
// The mask is counter-based, so it is neither stored nor uploaded: element i of an [N, H] block
// is kept when mix32(mix32(i) ^ key) >> 8 >= threshold (threshold = round(p * 2^24), key drawn
// on the host from the step's seed and the layer), and a kept element is scaled by 1 / (1 - p).
// threshold = 0 and scale = 1 keep everything unchanged (dropout off).
//
// An engine whose batch is a share of a larger one keys element i by its index in the shared
// batch's block: (i / step) * shared_step + window_off + i % step, with step = Bl * H elements
// of a time step here, shared_step = B * H of one in the shared batch and window_off = b0 * H
// (`MaskSpan`). step = shared_step and window_off = 0 key i by itself.
//
// Tunables (override constants): WG, the workgroup size.

override WG: u32 = 64u;

struct Args {
    // Elements of the block (N * H), offsets of the source and destination blocks.
    n: u32,
    src_off: u32,
    dst_off: u32,
    key: u32,
    threshold: u32,
    scale: f32,
    // Where the block lies in the shared batch's (elements): see above.
    step: u32,
    shared_step: u32,
    window_off: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> args: Args;

// lowbias32, the same integer hash as the CPU's `mix32`.
fn mix32(v: u32) -> u32 {
    var x = v;
    x ^= x >> 16u;
    x *= 0x7feb352du;
    x ^= x >> 15u;
    x *= 0x846ca68bu;
    x ^= x >> 16u;
    return x;
}

// The index that keys element i of the block: its index in the shared batch's block.
fn shared_index(i: u32) -> u32 {
    let step = max(args.step, 1u);
    return (i / step) * args.shared_step + args.window_off + i % step;
}

fn mask(i: u32) -> f32 {
    if ((mix32(mix32(shared_index(i)) ^ args.key) >> 8u) >= args.threshold) {
        return args.scale;
    }
    return 0.0;
}

fn element(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid.x;
}

// ---- dropout_forward ----------------------------------------------------------------------

@group(0) @binding(1) var<storage, read> f_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> f_y: array<f32>;

// y = x ⊙ m over an [N, H] block (x at src_off, y at dst_off).
// Grid: N * H threads, linearised over (x, y) workgroups.
@compute @workgroup_size(WG)
fn dropout_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = element(wid, nwg, lid);
    if (i >= args.n) {
        return;
    }
    f_y[args.dst_off + i] = f_x[args.src_off + i] * mask(i);
}

// ---- dropout_backward ---------------------------------------------------------------------

@group(0) @binding(1) var<storage, read_write> b_d: array<f32>;

// dx = dy ⊙ m in place over an [N, H] block at dst_off (the forward's mask).
// Grid: N * H threads, linearised over (x, y) workgroups.
@compute @workgroup_size(WG)
fn dropout_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = element(wid, nwg, lid);
    if (i >= args.n) {
        return;
    }
    b_d[args.dst_off + i] = b_d[args.dst_off + i] * mask(i);
}
