// loss.wgsl: output nonlinearity, loss and its gradient fused per row, the twin of
// `src/engine/cpu/loss.rs`.
//
// One workgroup per row of a chunk of the logits: the chunk holds rows row0 .. row0 + n of the
// batch's N rows, so logits and dlogits are indexed by the row within the chunk and targets, mask
// and row_loss by the batch row r = row0 + i. With the canonical pairs the gradient w.r.t. the
// logits is w_r (p_r - y_r) in every case, w_r = mask_r / count. Each row's masked loss
// mask_r * loss_r goes to row_loss[r]; reduce.wgsl sums them on the device.
//
// Tunables (override constants): WG, threads per row.

override WG: u32 = 64u;

// Terms per block of the softmax's blocked summation.
const BLOCK: u32 = 32u;

struct Args {
    // n rows in this chunk, V outputs per row.
    n: u32,
    v: u32,
    // 1 / count, count = the sum of the mask over the batch (the number of counted steps).
    inv_count: f32,
    // The batch row of the chunk's first row.
    row0: u32,
}

@group(0) @binding(0) var<uniform> args: Args;
// Class ids [N] (softmax) or target values [N, V] stored as f32 bits (squared error, BCE).
@group(0) @binding(1) var<storage, read> targets: array<u32>;
// Mask weights [N].
@group(0) @binding(2) var<storage, read> mask: array<f32>;
// Logits [n, V] of the chunk in, probabilities p = f2(z) out.
@group(0) @binding(3) var<storage, read_write> logits: array<f32>;
// Gradient of the objective w.r.t. the logits [n, V] of the chunk, written.
@group(0) @binding(4) var<storage, read_write> dlogits: array<f32>;
// mask_r * loss_r [N], written.
@group(0) @binding(5) var<storage, read_write> row_loss: array<f32>;

var<workgroup> scratch: array<f32, WG>;

// Tree reduction over the workgroup: every thread passes its value, thread 0 gets the total
// (the maximum when `take_max`). Called in uniform control flow.
fn workgroup_reduce(value: f32, lid: u32, take_max: bool) -> f32 {
    scratch[lid] = value;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (lid < stride) {
            if (take_max) {
                scratch[lid] = max(scratch[lid], scratch[lid + stride]);
            } else {
                scratch[lid] = scratch[lid] + scratch[lid + stride];
            }
        }
        workgroupBarrier();
    }
    let total = scratch[0];
    workgroupBarrier();
    return total;
}

fn row_of(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.y * nwg.x + wid.x;
}

// Softmax + cross-entropy per row: p_r = softmax(z_r) (max-subtracted), loss_r = -ln p_r[y_r],
// dz_r = mask_r / count * (p_r - onehot(y_r)). Shapes: logits, dlogits [n, V]; targets [N].
// Each thread sums its V / WG exponentials in blocks, then the workgroup adds the partial sums
// in a tree, so with tens of thousands of classes the small terms survive.
// Grid: n workgroups (linearised over x, y) of WG threads. WG must be a power of two.
@compute @workgroup_size(WG)
fn softmax_cross_entropy(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = row_of(wid, nwg);
    if (i >= args.n) {
        return;
    }
    let r = args.row0 + i;
    let base = i * args.v;
    let y = targets[r];
    // The target's logit, read before any thread overwrites the row.
    let zy = logits[base + y];
    var m = -3.4028235e38;
    for (var j = lid.x; j < args.v; j += WG) {
        m = max(m, logits[base + j]);
    }
    m = workgroup_reduce(m, lid.x, true);
    // Blocked summation: this thread's terms are summed in blocks of BLOCK, and the block sums
    // added to the running sum, so each small term is added to a partial sum of at most BLOCK
    // terms instead of to the whole row's sum (and without the exact-rounding tricks of
    // compensated summation, which compilers that reassociate undo).
    var s = 0.0;
    var block = 0.0;
    var in_block = 0u;
    for (var j = lid.x; j < args.v; j += WG) {
        let e = exp(logits[base + j] - m);
        logits[base + j] = e;
        block += e;
        in_block += 1u;
        if (in_block == BLOCK) {
            s += block;
            block = 0.0;
            in_block = 0u;
        }
    }
    s += block;
    s = workgroup_reduce(s, lid.x, false);
    let w = mask[r];
    let wf = w * args.inv_count;
    let inv = 1.0 / s;
    // -ln p_y = ln(s) - (z_y - max).
    if (lid.x == 0u) {
        row_loss[r] = w * (log(s) - (zy - m));
    }
    for (var j = lid.x; j < args.v; j += WG) {
        let p = logits[base + j] * inv;
        logits[base + j] = p;
        var onehot = 0.0;
        if (j == y) {
            onehot = 1.0;
        }
        dlogits[base + j] = wf * (p - onehot);
    }
}

// The element-wise pairs, one row per workgroup: identity + squared error
// (loss = 1/2 sum_j (z_j - y_j)^2, p = z) or, with `sigmoid`, sigmoid + binary cross-entropy
// (loss = sum_j max(z_j, 0) - y_j z_j + ln(1 + e^-|z_j|), p = 1 / (1 + e^-z)); both write
// dz = mask_r / count * (p - y) and row_loss[r] = mask_r * loss.
fn elementwise_loss(i: u32, lid: u32, sigmoid: bool) {
    let r = args.row0 + i;
    let base = i * args.v;
    let tbase = r * args.v;
    let w = mask[r];
    let wf = w * args.inv_count;
    var l = 0.0;
    for (var j = lid; j < args.v; j += WG) {
        let y = bitcast<f32>(targets[tbase + j]);
        let x = logits[base + j];
        var p = x;
        if (sigmoid) {
            l += max(x, 0.0) - y * x + log(1.0 + exp(-abs(x)));
            p = 1.0 / (1.0 + exp(-x));
            logits[base + j] = p;
        } else {
            l += 0.5 * (p - y) * (p - y);
        }
        dlogits[base + j] = wf * (p - y);
    }
    l = workgroup_reduce(l, lid, false);
    if (lid == 0u) {
        row_loss[r] = w * l;
    }
}

// Identity + squared error per row: p_r = z_r, loss_r = 1/2 ||p_r - y_r||^2,
// dz_r = mask_r / count * (p_r - y_r). Shapes: logits, dlogits [n, V]; targets [N, V].
// Grid: n workgroups (linearised) of WG threads.
@compute @workgroup_size(WG)
fn squared_error(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = row_of(wid, nwg);
    if (i < args.n) {
        elementwise_loss(i, lid.x, false);
    }
}

// Sigmoid + binary cross-entropy per row and component: p = 1 / (1 + e^-z),
// loss = max(z, 0) - y z + ln(1 + e^-|z|) summed over the V components,
// dz = mask_r / count * (p - y). Shapes: logits, dlogits [n, V]; targets [N, V].
// Grid: n workgroups (linearised) of WG threads.
@compute @workgroup_size(WG)
fn sigmoid_binary_cross_entropy(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = row_of(wid, nwg);
    if (i < args.n) {
        elementwise_loss(i, lid.x, true);
    }
}
