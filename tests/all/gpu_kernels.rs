//! Every WGSL kernel against its CPU twin on fresh random inputs, awkward shapes included
//! (one row, one column, sizes that are not multiples of the tiles). Outputs are poisoned before
//! each run and guard elements around them must survive, so an unwritten or overwritten
//! element fails.

use ndarray::{Array2, ArrayView2};
use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use unroll::engine::cpu::{gru as cpu_gru, lstm as cpu_lstm, reduce as cpu_reduce, rnn as cpu_rnn};
use unroll::engine::cpu::{loss as cpu_loss, matmul as cpu_matmul, optim as cpu_optim};
use unroll::engine::gpu::buffers::{self, at};
use unroll::engine::gpu::pipelines::Pipelines;
use unroll::engine::gpu::plan::{Call, run_now};
use unroll::engine::gpu::{GpuContext, gru, loss, lstm, matmul, optim, reduce, rnn};
use unroll::model::{Activation, OutputKind};
use unroll::train::optim::{OptimizerConfig, OptimizerKind, clip_scale};

use crate::common::{self, assert_close, to_f64};

/// A poison value no kernel would produce.
const POISON: f32 = 1e30;
/// Elements of poison before and after every output region.
const GUARD: usize = 3;

struct Gpu {
    ctx: GpuContext,
    pipes: Pipelines,
}

impl Gpu {
    /// The device and a fresh random stream for `test`; `None` when the test is skipped.
    fn new(test: &str) -> Option<(Self, ChaCha8Rng)> {
        let ctx = common::gpu(test)?;
        let gpu = Gpu {
            ctx,
            pipes: Pipelines::default(),
        };
        Some((gpu, common::rng(test)))
    }

    fn upload(&self, data: &[f32]) -> wgpu::Buffer {
        buffers::storage_with(&self.ctx, "test input", data).unwrap()
    }

    fn upload_u32(&self, data: &[u32]) -> wgpu::Buffer {
        buffers::storage_with(&self.ctx, "test input", data).unwrap()
    }

    /// A buffer with `data` at element GUARD, poison around it.
    fn guarded(&self, data: &[f32]) -> wgpu::Buffer {
        let mut all = vec![POISON; GUARD];
        all.extend_from_slice(data);
        all.extend(std::iter::repeat_n(POISON, GUARD));
        self.upload(&all)
    }

    /// A guarded buffer of `n` poisoned elements.
    fn poisoned(&self, n: usize) -> wgpu::Buffer {
        self.guarded(&vec![POISON; n])
    }

    /// A buffer with `data` at element 0 and poison after it, for kernels that address whole
    /// buffers.
    fn tailed(&self, data: &[f32]) -> wgpu::Buffer {
        let mut all = data.to_vec();
        all.extend(std::iter::repeat_n(POISON, GUARD));
        self.upload(&all)
    }

    /// The `n` elements of a [`Gpu::tailed`] buffer, after checking its tail.
    fn read_tailed(&self, buf: &wgpu::Buffer, n: usize, what: &str) -> Vec<f32> {
        let all: Vec<f32> = buffers::read(&self.ctx, buf, 0, n + GUARD).unwrap();
        for (i, &x) in all.iter().enumerate().skip(n) {
            assert_eq!(x, POISON, "{what}: tail element {i} was overwritten");
        }
        all[..n].to_vec()
    }

    fn run(&mut self, calls: Vec<Call>) {
        run_now(&self.ctx, &mut self.pipes, calls).unwrap();
    }

    /// The `n` elements of a guarded buffer, after checking that its guards are intact.
    fn read_guarded(&self, buf: &wgpu::Buffer, n: usize, what: &str) -> Vec<f32> {
        let all: Vec<f32> = buffers::read(&self.ctx, buf, 0, n + 2 * GUARD).unwrap();
        for i in (0..GUARD).chain(GUARD + n..2 * GUARD + n) {
            assert_eq!(all[i], POISON, "{what}: guard element {i} was overwritten");
        }
        all[GUARD..GUARD + n].to_vec()
    }
}

fn arr(v: &[f32], rows: usize, cols: usize) -> Array2<f32> {
    Array2::from_shape_vec((rows, cols), v.to_vec()).unwrap()
}

fn flat(a: &Array2<f32>) -> Vec<f32> {
    a.as_standard_layout().iter().copied().collect()
}

fn check(what: &str, gpu: &[f32], cpu: &[f32]) {
    assert_close(what, &to_f64(gpu), &to_f64(cpu), 1e-4, 1e-5);
}

#[test]
fn matmul_matches_cpu_for_every_transpose_bias_and_awkward_shape() {
    let Some((mut g, mut rng)) = Gpu::new("matmul") else {
        return;
    };
    for &(m, n, k) in &[
        (1, 1, 1),
        (7, 5, 3),
        (33, 65, 17),
        (64, 64, 64),
        (70, 1, 130),
        // Deeper than one dispatch sums.
        (3, 2, 40000),
    ] {
        for trans_a in [false, true] {
            for trans_b in [false, true] {
                for (accumulate, biases) in [(false, 0), (false, 1), (false, 2), (true, 0)] {
                    let what = format!(
                        "matmul m={m} n={n} k={k} ta={trans_a} tb={trans_b} acc={accumulate} biases={biases}"
                    );
                    // A deep product sums positive terms, so that the f32 rounding of two
                    // summation orders stays within the tolerance (random signs would cancel
                    // to a small sum with the rounding of the large partial sums).
                    let deep = |v: Vec<f32>| -> Vec<f32> {
                        if k > 10_000 {
                            v.iter().map(|x| x.abs()).collect()
                        } else {
                            v
                        }
                    };
                    let a = deep(common::uniform(&mut rng, m * k, 1.0));
                    let b = deep(common::uniform(&mut rng, k * n, 1.0));
                    let bias = common::uniform(&mut rng, 2 * n + 1, 1.0);
                    let c0 = common::uniform(&mut rng, m * n, 1.0);
                    // CPU: C = (b1 + b2) then += op(A) op(B), or C = c0 + op(A) op(B).
                    let a_cpu = if trans_a {
                        arr(&a, k, m)
                    } else {
                        arr(&a, m, k)
                    };
                    let b_cpu = if trans_b {
                        arr(&b, n, k)
                    } else {
                        arr(&b, k, n)
                    };
                    let mut c = Array2::<f32>::zeros((m, n));
                    if accumulate {
                        c = arr(&c0, m, n);
                    }
                    for mut row in c.rows_mut() {
                        for (j, x) in row.iter_mut().enumerate() {
                            if biases >= 1 {
                                let mut s = bias[1 + j];
                                if biases == 2 {
                                    s += bias[1 + n + j];
                                }
                                *x = s;
                            }
                        }
                    }
                    let av: ArrayView2<f32> = if trans_a { a_cpu.t() } else { a_cpu.view() };
                    let bv: ArrayView2<f32> = if trans_b { b_cpu.t() } else { b_cpu.view() };
                    let acc = accumulate || biases > 0;
                    cpu_matmul::matmul(av, bv, &mut c.view_mut(), acc);
                    // GPU, with every operand at an offset inside a larger buffer.
                    let ab = g.guarded(&a);
                    let bb = g.guarded(&b);
                    let biasb = g.upload(&bias);
                    let cb = if accumulate {
                        g.guarded(&c0)
                    } else {
                        g.poisoned(m * n)
                    };
                    let op = |buf, tr| {
                        let r = at(buf, GUARD);
                        if tr {
                            matmul::transposed(r)
                        } else {
                            matmul::plain(r)
                        }
                    };
                    let calls = matmul::matmul(
                        &g.ctx,
                        (m, n, k),
                        op(&ab, trans_a),
                        op(&bb, trans_b),
                        at(&cb, GUARD),
                        (biases > 0).then_some(matmul::Biases {
                            buffer: &biasb,
                            first: 1,
                            second: (biases == 2).then_some(1 + n),
                        }),
                        accumulate,
                    )
                    .unwrap();
                    g.run(calls);
                    check(&what, &g.read_guarded(&cb, m * n, &what), &flat(&c));
                }
            }
        }
    }
}

fn activations() -> [Activation; 2] {
    [Activation::Tanh, Activation::Relu]
}

/// (B, H, I) shapes for the cell kernels: one row and one unit, and sizes off the 16 tile.
const CELL_SHAPES: &[(usize, usize, usize)] = &[(1, 1, 1), (3, 17, 5), (20, 33, 7)];

#[test]
fn rnn_step_forward_and_backward_match_cpu() {
    let Some((mut g, mut rng)) = Gpu::new("rnn steps") else {
        return;
    };
    for &(b, h, _) in CELL_SHAPES {
        for act in activations() {
            let what = format!("B={b} H={h} {act:?}");
            let w = common::uniform(&mut rng, h * h, 0.8);
            let s_prev = common::uniform(&mut rng, b * h, 1.0);
            let u = common::uniform(&mut rng, b * h, 1.0);
            // Forward: the state buffer holds [s_prev; u] as two blocks of rows.
            let mut s_cpu = Array2::<f32>::zeros((b, h));
            cpu_rnn::rnn_step_forward(
                Some(arr(&u, b, h).view()),
                arr(&s_prev, b, h).view(),
                arr(&w, h, h).view(),
                act,
                s_cpu.view_mut(),
            );
            let params = g.guarded(&w);
            let states = g.guarded(&[s_prev.clone(), u.clone()].concat());
            let dims = rnn::Dims {
                rows: b,
                hidden: h,
                inputs: 1,
                n: b,
            };
            let call = rnn::rnn_step_forward(
                &g.ctx,
                dims,
                &params,
                GUARD,
                &states,
                (GUARD, GUARD + b * h),
                act,
            )
            .unwrap();
            g.run(vec![call]);
            let out = g.read_guarded(&states, 2 * b * h, &what);
            check(
                &format!("{what} forward keeps s_prev"),
                &out[..b * h],
                &s_prev,
            );
            check(&format!("{what} forward"), &out[b * h..], &flat(&s_cpu));

            // Backward, with and without a dz_{t+1}: work holds [ds_t; dz_next].
            let s_t = flat(&s_cpu);
            for has_next in [false, true] {
                let ds = common::uniform(&mut rng, b * h, 1.0);
                let dz_next = common::uniform(&mut rng, b * h, 1.0);
                let mut dz_cpu = arr(&ds, b, h);
                let dn = arr(&dz_next, b, h);
                cpu_rnn::rnn_step_backward(
                    None,
                    has_next.then(|| dn.view()),
                    arr(&w, h, h).view(),
                    arr(&s_t, b, h).view(),
                    act,
                    dz_cpu.view_mut(),
                );
                let act_buf = g.guarded(&s_t);
                let work = g.guarded(&[ds, dz_next.clone()].concat());
                let call = rnn::rnn_step_backward(
                    &g.ctx,
                    dims,
                    &params,
                    GUARD,
                    at(&act_buf, GUARD),
                    &work,
                    (has_next.then_some(GUARD + b * h), GUARD),
                    act,
                )
                .unwrap();
                g.run(vec![call]);
                let out = g.read_guarded(&work, 2 * b * h, &what);
                let w2 = format!("{what} backward has_next={has_next}");
                check(&w2, &out[..b * h], &flat(&dz_cpu));
                check(&format!("{w2} keeps dz_next"), &out[b * h..], &dz_next);
            }
        }
    }
}

/// `matmul_rows` (the tanh/relu step spread over the output columns, 4 per workgroup) against
/// the CPU cell steps, forward (s_{t-1} W_hh^T, W read transposed) and BPTT (dz_{t+1} W_hh, with
/// and without a next step). Shapes: one row and one unit; rows past one pass of the workgroup
/// (32 rows with 256 threads); H off the 4 columns per workgroup; and, with the staged slice
/// forced shallow, depths in several slices. The rows read must come back unchanged and the
/// guards around the rows written must survive.
#[test]
fn matmul_rows_matches_the_cpu_cell_steps_for_awkward_shapes() {
    let Some((mut g, mut rng)) = Gpu::new("matmul_rows") else {
        return;
    };
    let staged = g.ctx.tunables.rows_product_kc;
    // (B, H, deepest staged slice)
    let shapes = [
        (1, 1, staged),
        (1, 7, staged),
        (37, 33, staged),
        (5, 40, 16),
        (70, 9, 8),
        (2, 300, 8),
    ];
    for (b, h, kc) in shapes {
        g.ctx.tunables.rows_product_kc = kc;
        let tag = format!("B={b} H={h} kc={kc}");
        let w = common::uniform(&mut rng, h * h, 0.8);
        // W_hh [H, H] behind other parameters: the forward reads it as s W_hh^T (transposed),
        // the BPTT as dz W_hh (plain).
        let params = g.guarded(&[common::uniform(&mut rng, 5, 1.0), w.clone()].concat());
        let w_at = at(&params, GUARD + 5);
        let w_hh = arr(&w, h, h);
        let x = common::uniform(&mut rng, b * h, 1.0);
        for act in activations() {
            let what = format!("{tag} {act:?} forward");
            let u = common::uniform(&mut rng, b * h, 1.0);
            let mut s_cpu = Array2::<f32>::zeros((b, h));
            cpu_rnn::rnn_step_forward(
                Some(arr(&u, b, h).view()),
                arr(&x, b, h).view(),
                w_hh.view(),
                act,
                s_cpu.view_mut(),
            );
            // s_{t-1} in the rows before s_t (which holds u_t) in the same buffer.
            let states = g.guarded(&[x.clone(), u.clone()].concat());
            let call = matmul::matmul_rows(
                &g.ctx,
                (b, h, h),
                Some(GUARD),
                matmul::transposed(w_at),
                at(&states, GUARD + b * h),
                matmul::RowsEpilogue::Activate(act),
            )
            .unwrap();
            g.run(vec![call]);
            let got = g.read_guarded(&states, 2 * b * h, &what);
            check(&format!("{what} keeps s_prev"), &got[..b * h], &x);
            check(&what, &got[b * h..], &flat(&s_cpu));

            let s_t = flat(&s_cpu);
            let act_buf = g.guarded(&s_t);
            for has_next in [false, true] {
                let what = format!("{tag} {act:?} backward has_next={has_next}");
                let ds = common::uniform(&mut rng, b * h, 1.0);
                let mut dz_cpu = arr(&ds, b, h);
                let dn = arr(&x, b, h);
                cpu_rnn::rnn_step_backward(
                    None,
                    has_next.then(|| dn.view()),
                    w_hh.view(),
                    arr(&s_t, b, h).view(),
                    act,
                    dz_cpu.view_mut(),
                );
                // [ds_t; dz_{t+1}] in one buffer.
                let work = g.guarded(&[ds, x.clone()].concat());
                let call = matmul::matmul_rows(
                    &g.ctx,
                    (b, h, h),
                    has_next.then_some(GUARD + b * h),
                    matmul::plain(w_at),
                    at(&work, GUARD),
                    matmul::RowsEpilogue::Derivative(act, at(&act_buf, GUARD)),
                )
                .unwrap();
                g.run(vec![call]);
                let got = g.read_guarded(&work, 2 * b * h, &what);
                check(&what, &got[..b * h], &flat(&dz_cpu));
                check(&format!("{what} keeps dz_next"), &got[b * h..], &x);
            }
        }
    }
}

fn random_tokens(rng: &mut ChaCha8Rng, n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|_| rng.random_range(0..vocab as u32)).collect()
}

#[test]
fn one_hot_input_gather_and_gradient_match_cpu() {
    let Some((mut g, mut rng)) = Gpu::new("one-hot") else {
        return;
    };
    for &(b, h, vocab) in CELL_SHAPES {
        for steps in [1, 4] {
            let n = steps * b;
            let what = format!("N={n} H={h} I={vocab}");
            let tokens = random_tokens(&mut rng, n, vocab);
            // params = [W_ih [H, I] | b_ih | b_hh]
            let params = common::uniform(&mut rng, h * vocab + 2 * h, 1.0);
            let w_ih = arr(&params[..h * vocab], h, vocab);
            let (b_ih, b_hh) = params[h * vocab..].split_at(h);
            let mut u_cpu = Array2::<f32>::zeros((n, h));
            cpu_rnn::input_gather_onehot(&tokens, w_ih.view(), b_ih, Some(b_hh), u_cpu.view_mut());

            let tok_buf = g.upload_u32(&rnn::token_buffer(&tokens, vocab));
            let p_buf = g.guarded(&params);
            let out = g.poisoned(n * h);
            let dims = rnn::Dims {
                rows: b,
                hidden: h,
                inputs: vocab,
                n,
            };
            let weights = rnn::Weights {
                w: GUARD,
                bias: Some(GUARD + h * vocab),
                bias2: Some(GUARD + h * vocab + h),
            };
            let call = rnn::input_gather_onehot(
                &g.ctx,
                dims,
                at(&tok_buf, 0),
                &p_buf,
                weights,
                at(&out, GUARD),
            )
            .unwrap();
            g.run(vec![call]);
            check(
                &format!("{what} gather"),
                &g.read_guarded(&out, n * h, &what),
                &flat(&u_cpu),
            );

            // Gradient: dW_ih [H, I] += scatter of dZ [N, H] by token.
            let dz = common::uniform(&mut rng, n * h, 1.0);
            let dw0 = common::uniform(&mut rng, h * vocab, 1.0);
            let mut dw = arr(&dw0, h, vocab);
            cpu_rnn::input_grad_onehot(&tokens, arr(&dz, n, h).view(), dw.view_mut());
            let expect: Vec<f32> = flat(&dw);
            let dz_buf = g.guarded(&dz);
            let dw_buf = g.guarded(&dw0);
            let call = rnn::input_grad_onehot(
                &g.ctx,
                dims,
                &tok_buf,
                rnn::TokenLayout::new(n, vocab),
                at(&dz_buf, GUARD),
                at(&dw_buf, GUARD),
            )
            .unwrap();
            g.run(vec![call]);
            check(
                &format!("{what} input gradient"),
                &g.read_guarded(&dw_buf, h * vocab, &what),
                &expect,
            );
        }
    }
}

#[test]
fn embedding_gather_and_gradient_match_cpu() {
    let Some((mut g, mut rng)) = Gpu::new("embedding") else {
        return;
    };
    // (B, E, I): E and I off the workgroup size, one token, a vocabulary larger than N (most
    // rows of the gradient untouched), and one smaller (tokens repeat).
    for &(b, e, vocab) in &[(1, 1, 1), (3, 5, 70), (2, 33, 3), (4, 7, 1000)] {
        for steps in [1, 5] {
            let n = steps * b;
            let what = format!("N={n} E={e} I={vocab}");
            let tokens = random_tokens(&mut rng, n, vocab);
            let table = common::uniform(&mut rng, vocab * e, 1.0);
            let mut x_cpu = Array2::<f32>::zeros((n, e));
            cpu_rnn::embed_gather(&tokens, arr(&table, vocab, e).view(), x_cpu.view_mut());
            let tok_buf = g.upload_u32(&rnn::token_buffer(&tokens, vocab));
            let p_buf = g.guarded(&table);
            let out = g.poisoned(n * e);
            let dims = rnn::Dims {
                rows: b,
                hidden: e,
                inputs: vocab,
                n,
            };
            let call = rnn::embed_gather(
                &g.ctx,
                dims,
                at(&tok_buf, 0),
                &p_buf,
                GUARD,
                at(&out, GUARD),
            )
            .unwrap();
            g.run(vec![call]);
            check(
                &format!("{what} gather"),
                &g.read_guarded(&out, n * e, &what),
                &flat(&x_cpu),
            );

            let dx = common::uniform(&mut rng, n * e, 1.0);
            let de0 = common::uniform(&mut rng, vocab * e, 1.0);
            let mut de = arr(&de0, vocab, e);
            cpu_rnn::embed_grad(&tokens, arr(&dx, n, e).view(), de.view_mut());
            let dx_buf = g.guarded(&dx);
            let de_buf = g.guarded(&de0);
            let call = rnn::embed_grad(
                &g.ctx,
                dims,
                &tok_buf,
                rnn::TokenLayout::new(n, vocab),
                at(&dx_buf, GUARD),
                at(&de_buf, GUARD),
            )
            .unwrap();
            g.run(vec![call]);
            check(
                &format!("{what} embedding gradient"),
                &g.read_guarded(&de_buf, vocab * e, &what),
                &flat(&de),
            );
        }
    }
}

#[test]
fn fused_losses_match_cpu_with_masks() {
    let Some((mut g, mut rng)) = Gpu::new("losses") else {
        return;
    };
    for kind in [
        OutputKind::Softmax,
        OutputKind::Identity,
        OutputKind::Sigmoid,
    ] {
        for &(n, v) in &[(1, 1), (7, 5), (6, 70)] {
            let what = format!("{kind:?} N={n} V={v}");
            let z = common::uniform(&mut rng, n * v, 4.0);
            let mask: Vec<f32> = (0..n).map(|r| if r % 3 == 2 { 0.0 } else { 1.0 }).collect();
            let count: f64 = mask.iter().map(|&m| m as f64).sum();
            let classes = random_tokens(&mut rng, n, v);
            let values: Vec<f32> = (0..n * v).map(|_| rng.random_range(0.0..1.0)).collect();
            let mut p_cpu = arr(&z, n, v);
            let mut d_cpu = Array2::<f32>::zeros((n, v));
            let norm = count.max(f64::MIN_POSITIVE);
            let (sum, targets) = match kind {
                OutputKind::Softmax => (
                    cpu_loss::softmax_cross_entropy(
                        p_cpu.view_mut(),
                        &classes,
                        Some(&mask),
                        norm,
                        Some(d_cpu.view_mut()),
                    ),
                    g.upload_u32(&classes),
                ),
                OutputKind::Identity => (
                    cpu_loss::squared_error(
                        p_cpu.view_mut(),
                        &values,
                        Some(&mask),
                        norm,
                        Some(d_cpu.view_mut()),
                    ),
                    g.upload(&values),
                ),
                OutputKind::Sigmoid => (
                    cpu_loss::sigmoid_binary_cross_entropy(
                        p_cpu.view_mut(),
                        &values,
                        Some(&mask),
                        norm,
                        Some(d_cpu.view_mut()),
                    ),
                    g.upload(&values),
                ),
            };
            let mask_buf = g.upload(&mask);
            let logits = g.upload(&z);
            let dlogits = g.upload(&vec![POISON; n * v]);
            let row_loss = g.upload(&vec![POISON; n]);
            let scratch = g.upload(&vec![POISON; reduce::SCRATCH_LEN]);
            let mut calls = vec![
                loss::loss(
                    &g.ctx,
                    kind,
                    loss::LossBuffers {
                        targets: &targets,
                        mask: &mask_buf,
                        logits: &logits,
                        dlogits: &dlogits,
                        row_loss: &row_loss,
                    },
                    loss::LossArgs::new(0..n, v, count).unwrap(),
                )
                .unwrap(),
            ];
            calls.extend(
                reduce::sum(
                    &g.ctx,
                    n,
                    at(&row_loss, 0),
                    false,
                    &scratch,
                    reduce::LOSS_SLOT,
                )
                .unwrap(),
            );
            g.run(calls);
            let read = |b: &wgpu::Buffer, len| buffers::read::<f32>(&g.ctx, b, 0, len).unwrap();
            check(
                &format!("{what} outputs"),
                &read(&logits, n * v),
                &flat(&p_cpu),
            );
            check(
                &format!("{what} dlogits"),
                &read(&dlogits, n * v),
                &flat(&d_cpu),
            );
            let gpu_sum = read(&scratch, 1)[0] as f64;
            assert_close(&format!("{what} loss sum"), &[gpu_sum], &[sum], 1e-5, 1e-5);
        }
    }
}

#[test]
fn column_sums_and_norms_match_cpu() {
    let Some((mut g, mut rng)) = Gpu::new("reductions") else {
        return;
    };
    for &(n, cols) in &[(1, 1), (37, 70), (300, 5)] {
        let what = format!("column sums N={n} C={cols}");
        let a = common::uniform(&mut rng, n * cols, 1.0);
        let out0 = common::uniform(&mut rng, 2 * cols, 1.0);
        let mut first = out0[..cols].to_vec();
        cpu_reduce::column_sums_accumulate(arr(&a, n, cols).view(), &mut first);
        let mut second = out0[cols..].to_vec();
        cpu_reduce::column_sums_accumulate(arr(&a, n, cols).view(), &mut second);
        let a_buf = g.guarded(&a);
        let out = g.guarded(&out0);
        let call = reduce::column_sums_accumulate(
            &g.ctx,
            (n, cols),
            at(&a_buf, GUARD),
            &out,
            &[GUARD, GUARD + cols],
        )
        .unwrap();
        g.run(vec![call]);
        check(
            &what,
            &g.read_guarded(&out, 2 * cols, &what),
            &[first, second].concat(),
        );
    }
    for n in [1, 1000, 70_001] {
        let x = common::uniform(&mut rng, n, 1.0);
        let sumsq = cpu_reduce::sum_of_squares(&x);
        let total: f64 = x.iter().map(|&v| v as f64).sum();
        let x_buf = g.guarded(&x);
        let scratch = g.upload(&vec![POISON; reduce::SCRATCH_LEN]);
        let mut calls = reduce::sum(&g.ctx, n, at(&x_buf, GUARD), true, &scratch, 1).unwrap();
        calls.extend(reduce::sum(&g.ctx, n, at(&x_buf, GUARD), false, &scratch, 2).unwrap());
        g.run(calls);
        let got: Vec<f32> = buffers::read(&g.ctx, &scratch, 1, 2).unwrap();
        assert_close(
            &format!("norm n={n}"),
            &[got[0] as f64],
            &[sumsq.sqrt()],
            1e-5,
            1e-6,
        );
        assert_close(
            &format!("sum n={n}"),
            &[got[1] as f64],
            &[total],
            1e-4,
            1e-3,
        );
    }
}

#[test]
fn optimizer_updates_match_cpu_with_clipping_and_weight_decay() {
    let Some((mut g, mut rng)) = Gpu::new("optimizers") else {
        return;
    };
    let n = 1001;
    for kind in common::OPTIMIZERS {
        for (clip, wd) in [(0.0, 0.0), (0.5, 0.01)] {
            let what = format!("{kind:?} clip={clip} wd={wd}");
            let mut cfg = OptimizerConfig::new(kind).with_clip(clip);
            cfg.weight_decay = wd;
            let mut p = common::uniform(&mut rng, n, 1.0);
            let mut m: Vec<f32> = if kind == OptimizerKind::Sgd {
                vec![0.0; n]
            } else {
                common::uniform(&mut rng, n, 0.1)
            };
            let mut v: Vec<f32> = common::uniform(&mut rng, n, 0.1)
                .iter()
                .map(|x| x.abs())
                .collect();
            let grads = common::uniform(&mut rng, n, 1.0);
            let p_buf = g.upload(&p);
            let m_buf = g.upload(&m);
            let v_buf = g.upload(&v);
            let g_buf = g.upload(&grads);
            let scratch = g.upload(&vec![POISON; reduce::SCRATCH_LEN]);
            for step in 1..=3u64 {
                let lr = 0.05;
                let norm = cpu_reduce::sum_of_squares(&grads).sqrt();
                cpu_optim::optimizer_update(
                    &cfg,
                    lr as f64,
                    step,
                    clip_scale(norm, cfg.clip),
                    &mut p,
                    &grads,
                    &mut m,
                    &mut v,
                );
                let mut calls =
                    reduce::sum(&g.ctx, n, at(&g_buf, 0), true, &scratch, reduce::NORM_SLOT)
                        .unwrap();
                calls.push(
                    optim::optimizer_update(
                        &g.ctx,
                        optim::OptimBuffers {
                            scratch: &scratch,
                            params: &p_buf,
                            grads: &g_buf,
                            m: &m_buf,
                            v: &v_buf,
                        },
                        optim::OptimArgs::new(&cfg, lr, step, n, reduce::NORM_SLOT).unwrap(),
                    )
                    .unwrap(),
                );
                g.run(calls);
            }
            let read = |b: &wgpu::Buffer| buffers::read::<f32>(&g.ctx, b, 0, n).unwrap();
            check(&format!("{what} params"), &read(&p_buf), &p);
            check(&format!("{what} m"), &read(&m_buf), &m);
            check(&format!("{what} v"), &read(&v_buf), &v);
        }
    }
}

/// The fused gated steps (`gru_step_*_rows`, `lstm_step_*_rows`: the recurrent product and the
/// gate work in one dispatch) against their CPU twins, the CPU matmul followed by the CPU step.
/// Step t of T = 2 reads and writes only its rows: the other rows of every buffer must come back
/// as they went in (poison where they were poisoned). Backward runs the last step (no product,
/// no carried dc, the GRU's dh_{t-1} written) and the first (product and dc, no dh_{t-1}).
/// Shapes: one row and one unit; H off the units per workgroup; rows past one pass of 32; and,
/// with the staged slice forced shallow, depths in several slices.
#[test]
fn fused_gated_steps_match_the_cpu_product_and_step() {
    let Some((mut g, mut rng)) = Gpu::new("fused_gated_steps") else {
        return;
    };
    let staged = g.ctx.tunables.rows_product_kc;
    let steps = 2;
    // (B, H, deepest staged slice)
    let shapes = [
        (1, 1, staged),
        (3, 5, staged),
        (37, 13, staged),
        (34, 9, 8),
        (2, 20, 16),
    ];
    for (b, h, kc) in shapes {
        g.ctx.tunables.rows_product_kc = kc;
        for lstm in [false, true] {
            let gates_n = if lstm { 4 } else { 3 };
            let gh = gates_n * h;
            let n = steps * b;
            let tag = format!("{} B={b} H={h} kc={kc}", if lstm { "LSTM" } else { "GRU" });
            let w = common::uniform(&mut rng, gh * h, 0.6);
            let bias = common::uniform(&mut rng, gh, 0.5);
            let params = g.guarded(&[w.clone(), bias.clone()].concat());
            let recurrent = gru::Recurrent {
                params: &params,
                weight: GUARD,
                bias: Some(GUARD + gh * h),
            };
            let w_hh = arr(&w, gh, h);
            let step = |t| gru::GateStep {
                rows: b,
                hidden: h,
                gates: gates_n,
                t,
            };
            let rows_of =
                |v: &[f32], t: usize, width: usize| v[t * b * width..(t + 1) * b * width].to_vec();

            // Forward, step t = 1: h_{t-1} (and c_{t-1}) are states' rows 1, a_ih gates' rows 1.
            let t = 1;
            let states0 = [
                common::uniform(&mut rng, 2 * b * h, 1.0),
                vec![POISON; b * h],
            ]
            .concat();
            let cells0 = [
                common::uniform(&mut rng, 2 * b * h, 1.0),
                vec![POISON; b * h],
            ]
            .concat();
            let gates0 = common::uniform(&mut rng, n * gh, 1.0);
            let h_prev = arr(&rows_of(&states0, t, h), b, h);
            let mut a_hh = Array2::from_shape_fn((b, gh), |(_, j)| bias[j]);
            cpu_matmul::matmul(h_prev.view(), w_hh.t(), &mut a_hh.view_mut(), true);
            let mut gates_cpu = arr(&rows_of(&gates0, t, gh), b, gh);
            let mut h_cpu = Array2::<f32>::zeros((b, h));
            let mut c_cpu = Array2::<f32>::zeros((b, h));
            if lstm {
                cpu_lstm::lstm_step_forward(
                    gates_cpu.view_mut(),
                    a_hh.view(),
                    arr(&rows_of(&cells0, t, h), b, h).view(),
                    c_cpu.view_mut(),
                    h_cpu.view_mut(),
                );
            } else {
                cpu_gru::gru_step_forward(
                    gates_cpu.view_mut(),
                    a_hh.view(),
                    h_prev.view(),
                    h_cpu.view_mut(),
                );
            }
            let states = g.tailed(&states0);
            let gates = g.tailed(&gates0);
            let cells = g.tailed(&cells0);
            let a_hh_buf = g.tailed(&vec![POISON; n * gh]);
            let call = if lstm {
                lstm::lstm_step_forward_rows(&g.ctx, step(t), recurrent, &gates, (&cells, &states))
            } else {
                gru::gru_step_forward_rows(&g.ctx, step(t), recurrent, (&gates, &a_hh_buf, &states))
            };
            g.run(vec![call.unwrap()]);
            let what = format!("{tag} forward");
            check(
                &format!("{what} states"),
                &g.read_tailed(&states, 3 * b * h, &what),
                &keep_rows(&states0, t + 1, b * h, &h_cpu),
            );
            check(
                &format!("{what} gates"),
                &g.read_tailed(&gates, n * gh, &what),
                &keep_rows(&gates0, t, b * gh, &gates_cpu),
            );
            if lstm {
                check(
                    &format!("{what} cells"),
                    &g.read_tailed(&cells, 3 * b * h, &what),
                    &keep_rows(&cells0, t + 1, b * h, &c_cpu),
                );
            } else {
                check(
                    &format!("{what} a_hh"),
                    &g.read_tailed(&a_hh_buf, n * gh, &what),
                    &keep_rows(&vec![POISON; n * gh], t, b * gh, &a_hh),
                );
            }

            // Backward: the last step, then the first.
            for t in [1, 0] {
                let last = t + 1 == steps;
                let what = format!("{tag} backward t={t}");
                let gates0 = common::uniform(&mut rng, n * gh, 1.0);
                let cells0 = common::uniform(&mut rng, 3 * b * h, 1.0);
                let states0 = common::uniform(&mut rng, 3 * b * h, 1.0);
                let a_hh0 = common::uniform(&mut rng, n * gh, 1.0);
                let ds0 = common::uniform(&mut rng, n * h, 1.0);
                let dc0 = common::uniform(&mut rng, b * h, 1.0);
                // da (LSTM) / da_hh (GRU): step t+1's rows are the product's input, step t's
                // are written.
                let mut da0 = common::uniform(&mut rng, n * gh, 1.0);
                da0[t * b * gh..(t + 1) * b * gh].fill(POISON);
                let mut dh = arr(&rows_of(&ds0, t, h), b, h);
                if !last {
                    let next = arr(&rows_of(&da0, t + 1, gh), b, gh);
                    cpu_matmul::matmul(next.view(), w_hh.view(), &mut dh.view_mut(), true);
                }
                let gates_t = arr(&rows_of(&gates0, t, gh), b, gh);
                let mut da_cpu = Array2::<f32>::zeros((b, gh));
                let mut dc_cpu = if last {
                    Array2::zeros((b, h))
                } else {
                    arr(&dc0, b, h)
                };
                let mut da_ih_cpu = Array2::<f32>::zeros((b, gh));
                let mut ds_cpu = arr(&ds0, n, h);
                if lstm {
                    cpu_lstm::lstm_step_backward(
                        gates_t.view(),
                        arr(&rows_of(&cells0, t, h), b, h).view(),
                        arr(&rows_of(&cells0, t + 1, h), b, h).view(),
                        dh.view(),
                        dc_cpu.view_mut(),
                        da_cpu.view_mut(),
                    );
                } else {
                    let prev =
                        (t > 0).then(|| ds_cpu.slice_mut(ndarray::s![(t - 1) * b..t * b, ..]));
                    cpu_gru::gru_step_backward(
                        gates_t.view(),
                        arr(&rows_of(&a_hh0, t, gh), b, gh).view(),
                        arr(&rows_of(&states0, t, h), b, h).view(),
                        dh.view(),
                        da_ih_cpu.view_mut(),
                        da_cpu.view_mut(),
                        prev,
                    );
                }
                let gates = g.tailed(&gates0);
                let ds = g.tailed(&ds0);
                let dc = g.tailed(&dc0);
                let da = g.tailed(&da0);
                let da_ih = g.tailed(&vec![POISON; n * gh]);
                let cells = g.tailed(&cells0);
                let states = g.tailed(&states0);
                let a_hh_buf = g.tailed(&a_hh0);
                let call = if lstm {
                    lstm::lstm_step_backward_rows(
                        &g.ctx,
                        step(t),
                        recurrent,
                        (&gates, &cells),
                        (&ds, &dc, &da),
                        last,
                    )
                } else {
                    gru::gru_step_backward_rows(
                        &g.ctx,
                        step(t),
                        recurrent,
                        gru::GruGrads {
                            gates: &gates,
                            a_hh: &a_hh_buf,
                            states: &states,
                            ds: &ds,
                            da_ih: &da_ih,
                            da_hh: &da,
                        },
                        last,
                    )
                };
                g.run(vec![call.unwrap()]);
                check(
                    &format!("{what} da"),
                    &g.read_tailed(&da, n * gh, &what),
                    &keep_rows(&da0, t, b * gh, &da_cpu),
                );
                check(
                    &format!("{what} ds"),
                    &g.read_tailed(&ds, n * h, &what),
                    &flat(&ds_cpu),
                );
                if lstm {
                    check(
                        &format!("{what} dc"),
                        &g.read_tailed(&dc, b * h, &what),
                        &flat(&dc_cpu),
                    );
                } else {
                    check(
                        &format!("{what} da_ih"),
                        &g.read_tailed(&da_ih, n * gh, &what),
                        &keep_rows(&vec![POISON; n * gh], t, b * gh, &da_ih_cpu),
                    );
                }
            }
        }
    }
}

/// `v` with its `t`-th block of `len` elements replaced by `new` (a step's rows, or for the
/// states [(T+1) * B, H] the rows written by step t - 1).
fn keep_rows(v: &[f32], t: usize, len: usize, new: &Array2<f32>) -> Vec<f32> {
    let mut out = v.to_vec();
    out[t * len..(t + 1) * len].copy_from_slice(&flat(new));
    out
}
