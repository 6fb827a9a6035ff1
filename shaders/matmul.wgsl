// matmul.wgsl: tiled GEMM over flat f32 buffers, the twin of `src/engine/cpu/matmul.rs`.
//
// Every matrix is a contiguous row-major block inside a larger buffer, addressed by an element
// offset. The transposed variants read the stored matrix through swapped indices, so the GEMMs
// of BPTT (`dW = dZ^T S`, `dS = dlogits W`, `logits = S W^T + b`) are all this one kernel.
//
// Tunables (override constants): WG_X, WG_Y threads per workgroup; each thread owns a 4x4 block
// of C, so a workgroup covers TILE_M = 4 * WG_Y rows and TILE_N = 4 * WG_X columns; TILE_K is
// the depth of the K chunk staged in workgroup memory.

override WG_X: u32 = 16u;
override WG_Y: u32 = 16u;
override TILE_K: u32 = 16u;

const MICRO: u32 = 4u;

struct Args {
    // C is [m, n], op(A) is [m, k], op(B) is [k, n].
    m: u32,
    n: u32,
    k: u32,
    // Element offsets of A, B, C and of the (up to two) bias vectors in their buffers.
    a_off: u32,
    b_off: u32,
    c_off: u32,
    bias_off: u32,
    bias2_off: u32,
    // 1: A is stored [k, m] (op(A) = A^T); 0: stored [m, k].
    trans_a: u32,
    // 1: B is stored [n, k] (op(B) = B^T); 0: stored [k, n].
    trans_b: u32,
    // 1: C += op(A) op(B); 0: C = op(A) op(B).
    accumulate: u32,
    // Number of bias vectors [n] added to every row of the product: 0, 1 or 2.
    biases: u32,
    // The slice k_begin .. k_end of the depth this dispatch sums (the host splits a deep product
    // into several dispatches that accumulate, so no dispatch loops over more than a bounded
    // depth).
    k_begin: u32,
    k_end: u32,
    // Batched over workgroup z (the two directions of a bidirectional layer): product z reads
    // A, B and the biases and writes C these many elements further; 0 for one product.
    a_dir: u32,
    b_dir: u32,
    c_dir: u32,
    bias_dir: u32,
}

@group(0) @binding(0) var<uniform> args: Args;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;

var<workgroup> tile_a: array<f32, TILE_K * WG_Y * MICRO>;
var<workgroup> tile_b: array<f32, TILE_K * WG_X * MICRO>;

fn load_a(row: u32, col: u32, a_off: u32) -> f32 {
    // op(A)[row, col], zero outside [m, k].
    if (row >= args.m || col >= args.k_end) {
        return 0.0;
    }
    if (args.trans_a == 1u) {
        return a[a_off + col * args.m + row];
    }
    return a[a_off + row * args.k + col];
}

fn load_b(row: u32, col: u32, b_off: u32) -> f32 {
    // op(B)[row, col], zero outside [k, n].
    if (row >= args.k_end || col >= args.n) {
        return 0.0;
    }
    if (args.trans_b == 1u) {
        return b[b_off + col * args.k + row];
    }
    return b[b_off + row * args.n + col];
}

// C[m, n] (+)= op(A)[m, k] op(B)[k, n] + sum of `biases` bias vectors [n] (broadcast over rows).
// Grid: (ceil(n / TILE_N), ceil(m / TILE_M), 1) workgroups of (WG_X, WG_Y) threads.
@compute @workgroup_size(WG_X, WG_Y)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let tile_m = WG_Y * MICRO;
    let tile_n = WG_X * MICRO;
    let row0 = wid.y * tile_m;
    let col0 = wid.x * tile_n;
    let threads = WG_X * WG_Y;
    let tid = lid.y * WG_X + lid.x;
    let a_off = args.a_off + wid.z * args.a_dir;
    let b_off = args.b_off + wid.z * args.b_dir;
    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i++) {
        acc[i] = 0.0;
    }
    for (var k0 = args.k_begin; k0 < args.k_end; k0 += TILE_K) {
        // Stage op(A)[row0.., k0..] as tile_a[kk * tile_m + r] and op(B)[k0.., col0..] as
        // tile_b[kk * tile_n + c].
        for (var i = tid; i < TILE_K * tile_m; i += threads) {
            let kk = i / tile_m;
            let r = i % tile_m;
            tile_a[i] = load_a(row0 + r, k0 + kk, a_off);
        }
        for (var i = tid; i < TILE_K * tile_n; i += threads) {
            let kk = i / tile_n;
            let cc = i % tile_n;
            tile_b[i] = load_b(k0 + kk, col0 + cc, b_off);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TILE_K; kk++) {
            var av: array<f32, 4>;
            var bv: array<f32, 4>;
            for (var i = 0u; i < MICRO; i++) {
                av[i] = tile_a[kk * tile_m + lid.y * MICRO + i];
                bv[i] = tile_b[kk * tile_n + lid.x * MICRO + i];
            }
            for (var i = 0u; i < MICRO; i++) {
                for (var j = 0u; j < MICRO; j++) {
                    acc[i * MICRO + j] = fma(av[i], bv[j], acc[i * MICRO + j]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < MICRO; i++) {
        let row = row0 + lid.y * MICRO + i;
        for (var j = 0u; j < MICRO; j++) {
            let col = col0 + lid.x * MICRO + j;
            if (row < args.m && col < args.n) {
                var v = acc[i * MICRO + j];
                if (args.biases >= 1u) {
                    // (b1 + b2) + product, the CPU twin's order of additions.
                    let z_bias = wid.z * args.bias_dir;
                    var bsum = bias[args.bias_off + z_bias + col];
                    if (args.biases >= 2u) {
                        bsum += bias[args.bias2_off + z_bias + col];
                    }
                    v = bsum + v;
                }
                let idx = args.c_off + wid.z * args.c_dir + row * args.n + col;
                if (args.accumulate == 1u) {
                    v += c[idx];
                }
                c[idx] = v;
            }
        }
    }
}

// ---- matmul_rows: the tanh/relu cell's step, spread over the output columns ---------------
//
// One time step of the tanh/relu recurrence for all B rows, its product out[b, j] += sum_k
// X[b, k] W'[k, j] (b < rows, j < n, k < depth) spread over the columns: each workgroup owns
// ROWS_COLS of them for all B rows (rows.wgsl's `rows_product`), where the 64x64 tiles of
// `matmul` would leave most of the device idle. X and out are rows of the same buffer, s_io. As
// for `matmul`'s B: W' = W^T with W stored [n, depth] (trans_w = 1; the forward's s W_hh^T) or
// W' = W stored [depth, n] (trans_w = 0; the BPTT's dz W_hh).
//
// Epilogues: the forward in place, out = f1(out + product) (derivative = 0), or the BPTT in
// place, out = (out + product) f1'(s) with s [B, n] at act_off of r_act (derivative = 1).
// f1 = tanh (activation 0) or relu (1). With has_x = 0 the product is zero (the last BPTT step
// has no dz_{t+1}).

struct RowsArgs {
    rows: u32,
    n: u32,
    depth: u32,
    // Element offsets: X and the output (in s_io), W (in s_w), s (in r_act).
    x_off: u32,
    out_off: u32,
    w_off: u32,
    act_off: u32,
    trans_w: u32,
    has_x: u32,
    derivative: u32,
    activation: u32,
    // Direction strides: workgroup z = 1 runs the second direction of a bidirectional layer,
    // W dir_w elements further and X, the output and s dir_state elements further; 0 for one.
    dir_w: u32,
    dir_state: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> rargs: RowsArgs;
@group(0) @binding(3) var<storage, read> r_act: array<f32>;

// Grid: (ceil(n / ROWS_COLS), 1, 1) workgroups of ROWS_WG threads.
@compute @workgroup_size(ROWS_WG)
fn matmul_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let n = rargs.n;
    let j0 = wid.x * ROWS_COLS;
    var col_stride = 1u;
    var depth_stride = n;
    if (rargs.trans_w == 1u) {
        col_stride = rargs.depth;
        depth_stride = 1u;
    }
    let zs = wid.z * rargs.dir_state;
    let p = RowsProduct(
        rargs.rows, rargs.depth, rargs.x_off + zs, rargs.has_x, rargs.w_off + wid.z * rargs.dir_w,
        ROWS_COLS, n, 0u, col_stride, depth_stride,
    );
    let lane = lid.x % LANES;
    let slot = lid.x / LANES;
    for (var b0 = 0u; b0 < rargs.rows; b0 += ROWS_WG / LANES) {
        rows_product(p, j0, b0, lid.x);
        let b = b0 + slot;
        let j = j0 + lane;
        if (lane < ROWS_COLS && b < rargs.rows && j < n) {
            let idx = rargs.out_off + zs + b * n + j;
            let z = s_io[idx] + rows_sum(slot, lane);
            if (rargs.derivative == 1u) {
                let s = r_act[rargs.act_off + zs + b * n + j];
                var d = z;
                if (rargs.activation == 1u) {
                    if (s <= 0.0) {
                        d = 0.0;
                    }
                } else {
                    d = d * (1.0 - s * s);
                }
                s_io[idx] = d;
            } else if (rargs.activation == 1u) {
                s_io[idx] = max(z, 0.0);
            } else {
                s_io[idx] = tanh(z);
            }
        }
        // `partial` is written again by the next row pass.
        workgroupBarrier();
    }
}
