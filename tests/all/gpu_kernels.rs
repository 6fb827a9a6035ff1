//! Every WGSL kernel against its CPU twin on fresh random inputs, awkward shapes included
//! (one row, one column, sizes that are not multiples of the tiles). Outputs are poisoned before
//! each run and guard elements around them must survive, so an unwritten or overwritten
//! element fails.

use ndarray::{Array2, ArrayView2};
use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use unroll::engine::cpu::{loss as cpu_loss, matmul as cpu_matmul, optim as cpu_optim};
use unroll::engine::cpu::{reduce as cpu_reduce, rnn as cpu_rnn};
use unroll::engine::gpu::buffers::{self, at};
use unroll::engine::gpu::pipelines::Pipelines;
use unroll::engine::gpu::plan::{Call, run_now};
use unroll::engine::gpu::{GpuContext, loss, matmul, optim, reduce, rnn};
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

/// `matmul_rows` (the per-step recurrent products, 4 columns per workgroup) against the CPU
/// matmul for the store and accumulate epilogues, and against the cell steps for the fused
/// tanh/relu epilogues, with W read both ways. Shapes: one row and one column; rows past one pass
/// of the workgroup (32 rows with 256 threads); columns off the 4 per workgroup; and, with the
/// staged slice forced shallow, depths in several slices.
#[test]
fn matmul_rows_matches_cpu_for_every_epilogue_and_awkward_shape() {
    let Some((mut g, mut rng)) = Gpu::new("matmul_rows") else {
        return;
    };
    let staged = g.ctx.tunables.matmul_rows_kc;
    // (B, n, depth, deepest staged slice)
    let shapes = [
        (1, 1, 1, staged),
        (3, 5, 7, staged),
        (37, 33, 17, staged),
        (70, 9, 50, 16),
        (2, 6, 300, 8),
        // Square, for the cell epilogues: one pass of rows and past it, one slice and several.
        (1, 7, 7, staged),
        (37, 33, 33, staged),
        (5, 40, 40, 16),
    ];
    for (b, n, depth, kc) in shapes {
        g.ctx.tunables.matmul_rows_kc = kc;
        for trans_w in [false, true] {
            let tag = format!("B={b} n={n} depth={depth} kc={kc} trans_w={trans_w}");
            let w = common::uniform(&mut rng, n * depth, 0.8);
            let w_cpu = if trans_w {
                arr(&w, n, depth).t().to_owned()
            } else {
                arr(&w, depth, n)
            };
            // W and a bias vector in one parameter buffer, both at offsets.
            let bias = common::uniform(&mut rng, n, 1.0);
            let params = g.guarded(&[w.clone(), bias.clone()].concat());
            let wop = |buf| {
                let r = at(buf, GUARD);
                if trans_w {
                    matmul::transposed(r)
                } else {
                    matmul::plain(r)
                }
            };
            let x = common::uniform(&mut rng, b * depth, 1.0);
            let xb = g.guarded(&x);
            for (name, with_bias, accumulate) in [
                ("store", false, false),
                ("store + bias", true, false),
                ("accumulate", false, true),
            ] {
                let what = format!("{tag} {name}");
                let c0 = common::uniform(&mut rng, b * n, 1.0);
                let mut c = if accumulate {
                    arr(&c0, b, n)
                } else if with_bias {
                    Array2::from_shape_fn((b, n), |(_, j)| bias[j])
                } else {
                    Array2::zeros((b, n))
                };
                cpu_matmul::matmul(
                    arr(&x, b, depth).view(),
                    w_cpu.view(),
                    &mut c.view_mut(),
                    accumulate || with_bias,
                );
                let out = if accumulate {
                    g.guarded(&c0)
                } else {
                    g.poisoned(b * n)
                };
                let epilogue = if accumulate {
                    matmul::RowsEpilogue::Accumulate
                } else {
                    matmul::RowsEpilogue::Store {
                        bias: with_bias.then_some(GUARD + n * depth),
                    }
                };
                let call = matmul::matmul_rows(
                    &g.ctx,
                    (b, n, depth),
                    matmul::RowsInput::Separate(at(&xb, GUARD)),
                    wop(&params),
                    at(&out, GUARD),
                    epilogue,
                )
                .unwrap();
                g.run(vec![call]);
                check(&what, &g.read_guarded(&out, b * n, &what), &flat(&c));
            }
            // The cell epilogues need a square W: H = n = depth.
            if n != depth {
                continue;
            }
            let h = n;
            // W_hh [H, H] is the stored W either way: the forward reads it as s W_hh^T
            // (trans_w), the BPTT as dz W_hh.
            let w_hh = arr(&w, h, h);
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
                if trans_w {
                    // The forward reads s_{t-1} from the rows before s_t in the same buffer.
                    let states = g.guarded(&[x.clone(), u.clone()].concat());
                    let call = matmul::matmul_rows(
                        &g.ctx,
                        (b, h, h),
                        matmul::RowsInput::InOutput(GUARD),
                        wop(&params),
                        at(&states, GUARD + b * h),
                        matmul::RowsEpilogue::Activate(act),
                    )
                    .unwrap();
                    g.run(vec![call]);
                    let got = g.read_guarded(&states, 2 * b * h, &what);
                    check(&format!("{what} keeps s_prev"), &got[..b * h], &x);
                    check(&what, &got[b * h..], &flat(&s_cpu));
                }
                if !trans_w {
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
                        let work = g.guarded(&[ds, x.clone()].concat());
                        let input = if has_next {
                            matmul::RowsInput::InOutput(GUARD + b * h)
                        } else {
                            matmul::RowsInput::None
                        };
                        let call = matmul::matmul_rows(
                            &g.ctx,
                            (b, h, h),
                            input,
                            wop(&params),
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
                bias: GUARD + h * vocab,
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
                        d_cpu.view_mut(),
                    ),
                    g.upload_u32(&classes),
                ),
                OutputKind::Identity => (
                    cpu_loss::squared_error(
                        p_cpu.view_mut(),
                        &values,
                        Some(&mask),
                        norm,
                        d_cpu.view_mut(),
                    ),
                    g.upload(&values),
                ),
                OutputKind::Sigmoid => (
                    cpu_loss::sigmoid_binary_cross_entropy(
                        p_cpu.view_mut(),
                        &values,
                        Some(&mask),
                        norm,
                        d_cpu.view_mut(),
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
