// rows.wgsl: the product of few rows with a slice of W's columns, the core of every per-step
// recurrent kernel that spreads a step over its output columns: `matmul_rows` (matmul.wgsl) and
// the fused gated steps (gru.wgsl, lstm.wgsl). It is not a shader of its own: `Shader::source`
// prepends it to those files. Their kernels bind W's buffer (the parameters) at binding 1 and,
// at binding 2, the buffer the product's rows X come from, which the step then writes (other
// rows of it: the next state, or the gradient of the previous step).
//
// A workgroup owns ROWS_COLS columns of out[b, c] = sum_k X[b, k] W'[k, c] for all B rows. Its
// columns are `units` consecutive units of each of ROWS_COLS / units gates: column c is unit
// j = j0 + c % units of gate g = c / units, and W'[k, c] is element
//     w_off + (g * gate_stride + j) * col_stride + k * depth_stride
// of W's buffer. So W' = W^T for W stored [n, depth] (col_stride = depth, depth_stride = 1: the
// forward's h W_hh^T, a gated cell's gates g * H + j being rows of W_hh), and W' = W for W
// stored [depth, n] (col_stride = 1, depth_stride = n: the BPTT's da W_hh). The workgroup
// stages its slice of W' (ROWS_KC deep at a time) in workgroup memory; LANES = 8 threads share
// each row's depth; `rows_sum` adds their partial sums in a fixed order.
//
// Tunables (override constants): ROWS_WG threads per workgroup (a multiple of LANES), ROWS_KC
// the depth of the staged slice, ROWS_COLS the columns per workgroup (at most LANES).

override ROWS_WG: u32 = 256u;
override ROWS_KC: u32 = 512u;
override ROWS_COLS: u32 = 4u;

const LANES: u32 = 8u;
const MAX_COLS: u32 = 8u;

struct RowsProduct {
    rows: u32,
    depth: u32,
    // X [B, depth] at element x_off of s_io; has_x = 0: the product is zero.
    x_off: u32,
    has_x: u32,
    w_off: u32,
    // Units per gate in this workgroup's columns, and units in all (columns of units past it
    // read as zero).
    units: u32,
    unit_count: u32,
    gate_stride: u32,
    col_stride: u32,
    depth_stride: u32,
}

@group(0) @binding(1) var<storage, read> s_w: array<f32>;
@group(0) @binding(2) var<storage, read_write> s_io: array<f32>;

// A gated cell's forward product h_{t-1} W_hh^T for `gates` gates, W_hh [gates * H, H] at w_off
// (gate g's unit j is row g * H + j), h_{t-1} [B, H] at x_off: ROWS_COLS / gates units of each
// gate per workgroup.
fn gates_forward(rows: u32, h: u32, gates: u32, x_off: u32, w_off: u32) -> RowsProduct {
    return RowsProduct(rows, h, x_off, 1u, w_off, ROWS_COLS / gates, h, h, h, 1u);
}

// Its BPTT product da_{t+1} W_hh, da [B, gates * H] at x_off (none when has_x = 0), W_hh read as
// W [depth = gates * H, n = H]: ROWS_COLS units per workgroup.
fn gates_backward(rows: u32, h: u32, gates: u32, x_off: u32, has_x: u32, w_off: u32) -> RowsProduct {
    return RowsProduct(rows, gates * h, x_off, has_x, w_off, ROWS_COLS, h, 0u, 1u, h);
}

var<workgroup> w_slice: array<f32, ROWS_COLS * ROWS_KC>;
var<workgroup> partial: array<f32, ROWS_COLS * ROWS_WG>;

// One pass over ROWS_WG / LANES rows from b0 (thread `lid` serves row b0 + lid / LANES): leaves
// every thread's partial sums in `partial` and synchronises the workgroup. Callers read them
// with `rows_sum` and synchronise again before the next pass. Uniform control flow only.
fn rows_product(p: RowsProduct, j0: u32, b0: u32, lid: u32) {
    let lane = lid % LANES;
    let b = b0 + lid / LANES;
    var chunks = (p.depth + ROWS_KC - 1u) / ROWS_KC;
    if (p.has_x == 0u) {
        chunks = 0u;
    }
    var acc: array<f32, MAX_COLS>;
    for (var c = 0u; c < chunks; c++) {
        let k0 = c * ROWS_KC;
        let kn = min(ROWS_KC, p.depth - k0);
        // One slice serves every row pass when the depth fits in one.
        if (chunks > 1u || b0 == 0u) {
            workgroupBarrier();
            for (var i = lid; i < ROWS_COLS * kn; i += ROWS_WG) {
                // Neighbouring threads read neighbouring elements of W's buffer.
                var col = i / kn;
                var kk = i % kn;
                if (p.depth_stride != 1u) {
                    col = i % ROWS_COLS;
                    kk = i / ROWS_COLS;
                }
                let j = j0 + col % p.units;
                var w = 0.0;
                if (j < p.unit_count) {
                    let line = (col / p.units) * p.gate_stride + j;
                    w = s_w[p.w_off + line * p.col_stride + (k0 + kk) * p.depth_stride];
                }
                w_slice[col * ROWS_KC + kk] = w;
            }
            workgroupBarrier();
        }
        if (b < p.rows) {
            let row = p.x_off + b * p.depth + k0;
            for (var kk = lane; kk < kn; kk += LANES) {
                let x = s_io[row + kk];
                for (var col = 0u; col < ROWS_COLS; col++) {
                    acc[col] = fma(w_slice[col * ROWS_KC + kk], x, acc[col]);
                }
            }
        }
    }
    for (var col = 0u; col < ROWS_COLS; col++) {
        partial[lid * ROWS_COLS + col] = acc[col];
    }
    workgroupBarrier();
}

// Column `col`'s product for row b0 + slot of the last `rows_product` pass.
fn rows_sum(slot: u32, col: u32) -> f32 {
    var sum = 0.0;
    for (var l = 0u; l < LANES; l++) {
        sum += partial[(slot * LANES + l) * ROWS_COLS + col];
    }
    return sum;
}
