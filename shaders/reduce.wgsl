// reduce.wgsl: column sums (bias gradients) and two-stage sums (the loss total, the sum of
// squares behind the global gradient norm), the twin of `src/engine/cpu/reduce.rs`.
// Every reduction runs in a fixed order, so results are the same on every run.
//
// Tunables (override constants): COLS x LANES threads for column sums; WG threads for the sums.

override COLS: u32 = 32u;
override LANES: u32 = 8u;
override WG: u32 = 256u;

struct Args {
    // Input: `n` elements (sums) or an [n, cols] matrix (column sums), from element `in_off`.
    n: u32,
    cols: u32,
    in_off: u32,
    // Column sums: out[out_off + j] += colsum (and out[out2_off + j] too when `outs` = 2).
    out_off: u32,
    out2_off: u32,
    outs: u32,
    // Sums: 1 to square each element first (sum_partial) / take the square root (sum_final).
    square: u32,
    // sum_final: the number of partials to add, and the slot of `scratch` to write.
    partials: u32,
    slot: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// Scratch layout: slots [0, 16) hold results (loss sum, gradient norm); partials from 16 on.
const PARTIALS_AT: u32 = 16u;

@group(0) @binding(0) var<uniform> args: Args;
@group(0) @binding(1) var<storage, read> input: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

var<workgroup> lanes: array<f32, COLS * LANES>;
var<workgroup> partial: array<f32, WG>;

// Bias gradients: out[j] += sum_r a[r, j] (and the same into a second vector), a [n, cols].
// Grid: (ceil(cols / COLS), 1, 1) workgroups of COLS x LANES threads; lane y adds rows
// y, y + LANES, ..., then the lanes are added in order.
@compute @workgroup_size(COLS, LANES)
fn column_sums_accumulate(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let j = wid.x * COLS + lid.x;
    var s = 0.0;
    if (j < args.cols) {
        for (var r = lid.y; r < args.n; r += LANES) {
            s += input[args.in_off + r * args.cols + j];
        }
    }
    lanes[lid.y * COLS + lid.x] = s;
    workgroupBarrier();
    if (lid.y == 0u && j < args.cols) {
        var total = 0.0;
        for (var y = 0u; y < LANES; y++) {
            total += lanes[y * COLS + lid.x];
        }
        out[args.out_off + j] = out[args.out_off + j] + total;
        if (args.outs == 2u) {
            out[args.out2_off + j] = out[args.out2_off + j] + total;
        }
    }
}

fn tree_sum(value: f32, lid: u32) -> f32 {
    partial[lid] = value;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (lid < stride) {
            partial[lid] = partial[lid] + partial[lid + stride];
        }
        workgroupBarrier();
    }
    return partial[0];
}

// Stage one of sum(x) or sum(x^2) over `n` elements: workgroup w writes its partial sum to
// out[PARTIALS_AT + w], threads striding over the input by the total thread count.
// Grid: (P, 1, 1) workgroups of WG threads (WG a power of two), P <= 256.
@compute @workgroup_size(WG)
fn sum_partial(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let stride = nwg.x * WG;
    var s = 0.0;
    for (var i = wid.x * WG + lid.x; i < args.n; i += stride) {
        let x = input[args.in_off + i];
        if (args.square == 1u) {
            s += x * x;
        } else {
            s += x;
        }
    }
    let total = tree_sum(s, lid.x);
    if (lid.x == 0u) {
        out[PARTIALS_AT + wid.x] = total;
    }
}

// Stage two: out[slot] = sum of the `partials` partial sums (its square root when square = 1:
// the global gradient norm ||g||_2). Grid: one workgroup of WG threads.
@compute @workgroup_size(WG)
fn sum_final(@builtin(local_invocation_id) lid: vec3<u32>) {
    var s = 0.0;
    for (var i = lid.x; i < args.partials; i += WG) {
        s += out[PARTIALS_AT + i];
    }
    let total = tree_sum(s, lid.x);
    if (lid.x == 0u) {
        if (args.square == 1u) {
            out[args.slot] = sqrt(total);
        } else {
            out[args.slot] = total;
        }
    }
}
