// reverse.wgsl: the time reversal of a bidirectional layer's second direction, the twin of
// `RowGather::apply` in `src/engine/reverse.rs`.
//
// A gather of the rows of time-major arrays (row r = t * B + b), one or two directions at once
// (workgroup z): destination row r of direction z reads source row s * B + b, s = t, or for a
// direction whose bit is set in `reverse`, the reversed step of t in row b's sequence of
// lengths[b] real steps: L - 1 - t for t < L, t itself for padding (pack_padded_sequence's
// order). The rows' lengths come from the batch's mask, computed on the host at upload.
//
// Tunables (override constants): WG, the workgroup size (one thread per element).

override WG: u32 = 64u;

struct Args {
    // T steps, B rows, the columns gathered per row.
    steps: u32,
    rows: u32,
    width: u32,
    // Element offset, elements between rows and between directions, source then destination.
    src_off: u32,
    src_stride: u32,
    src_dir: u32,
    dst_off: u32,
    dst_stride: u32,
    dst_dir: u32,
    // Bit z: direction z reads in reversed order.
    reverse: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> args: Args;
@group(0) @binding(1) var<storage, read> lengths: array<u32>;
@group(0) @binding(2) var<storage, read> src: array<f32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;

// Grid: T * B * width threads, linearised over (x, y) workgroups; z the directions.
@compute @workgroup_size(WG)
fn permute_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid.x;
    if (i >= args.steps * args.rows * args.width) {
        return;
    }
    let r = i / args.width;
    let c = i % args.width;
    let t = r / args.rows;
    let b = r % args.rows;
    let z = wid.z;
    var s = t;
    let len = lengths[b];
    if (((args.reverse >> z) & 1u) == 1u && t < len) {
        s = len - 1u - t;
    }
    let at = args.src_off + z * args.src_dir + (s * args.rows + b) * args.src_stride + c;
    dst[args.dst_off + z * args.dst_dir + r * args.dst_stride + c] = src[at];
}
