//! Large vocabularies: the output layer in chunks, the exact softmax over tens of thousands of
//! classes, the embedding and tied weights, on both engines.

use ndarray::Array2;
use rand::RngExt;
use unroll::engine::cpu::{CpuEngine, loss as cpu_loss};
use unroll::engine::gpu::GpuEngine;
use unroll::engine::gpu::buffers::at;
use unroll::engine::gpu::{loss, reduce};
use unroll::engine::{Batch, Engine, Targets};
use unroll::error::Error;
use unroll::model::{Activation, Cell, InputKind, ModelConfig, OutputKind, ParamLayout};
use unroll::train::optim::{OptimizerConfig, OptimizerKind};

use crate::common::{self, assert_close, to_f64};
use crate::gradcheck::{check_gradients, check_gradients_of};

/// A language model over `v` tokens with an embedding of `embed` (tied when `tie`).
fn word_model(
    cell: Cell,
    v: usize,
    h: usize,
    layers: usize,
    embed: Option<usize>,
    tie: bool,
) -> ModelConfig {
    ModelConfig {
        cell,
        embed,
        tie_weights: tie,
        bidirectional: false,
        proj_size: None,
        bias: true,
        ..ModelConfig::language_model(v, h, layers)
    }
}

#[test]
fn large_vocabulary_gradients_match_finite_differences_in_chunks() {
    // V = 2000 over N = 6 rows, the logits held two rows at a time (three chunks).
    let cfg = word_model(Cell::Rnn, 2000, 3, 1, None, false);
    check_gradients(&cfg, 3, 2, None, Some(2 * 2000), "large V, chunked");
}

#[test]
fn ten_thousand_word_gradients_match_finite_differences_where_sampled() {
    // V = 10,000 with an embedding and tied weights, the output layer in chunks of 2 rows: 40
    // random elements of every tensor and every output row of a target class, in f64.
    let cfg = word_model(Cell::Gru, 10_000, 4, 1, Some(4), true);
    check_gradients_of(
        &cfg,
        (3, 2),
        None,
        Some(2 * 10_000),
        Some(40),
        "V=10000 sampled",
    );
}

#[test]
fn embedding_gradients_match_finite_differences() {
    let cfg = word_model(Cell::Gru, 300, 4, 2, Some(3), false);
    check_gradients(&cfg, 3, 2, None, None, "embedding GRU");
    let cfg = word_model(Cell::Rnn, 50, 3, 1, Some(5), false);
    check_gradients(
        &cfg,
        1,
        1,
        None,
        Some(1),
        "embedding T=1 B=1, one row per chunk",
    );
}

#[test]
fn tied_weights_gradients_match_finite_differences() {
    // The shared tensor's gradient is the sum of its input and output uses.
    let cfg = word_model(Cell::Lstm, 200, 4, 1, Some(4), true);
    check_gradients(&cfg, 3, 2, None, Some(3 * 200), "tied LSTM, chunked");
}

#[test]
fn tied_and_embedded_layouts_follow_pytorch_names() {
    let cfg = word_model(Cell::Rnn, 11, 4, 1, Some(4), true);
    let layout = ParamLayout::new(&cfg).unwrap();
    let names: Vec<&str> = layout.specs().iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "embed.weight",
            "rnn.weight_ih_l0",
            "rnn.weight_hh_l0",
            "rnn.bias_ih_l0",
            "rnn.bias_hh_l0",
            "out.bias"
        ]
    );
    assert_eq!(layout.get("embed.weight").unwrap().shape, [11, 4]);
    assert_eq!(layout.get("rnn.weight_ih_l0").unwrap().shape, [4, 4]);
    assert_eq!(layout.out_weight(), layout.embed().unwrap());
    // Tying needs E = H and an embedding; an embedding needs token input.
    for bad in [
        word_model(Cell::Rnn, 11, 4, 1, Some(3), true),
        word_model(Cell::Rnn, 11, 4, 1, None, true),
        ModelConfig {
            input_kind: unroll::model::InputKind::Dense,
            ..word_model(Cell::Rnn, 11, 4, 1, Some(4), false)
        },
    ] {
        assert!(
            matches!(ParamLayout::new(&bad), Err(Error::Config(_))),
            "{bad:?}"
        );
    }
}

/// One forward + backward of `batch` on `e`; returns the loss and the gradients.
fn step(e: &mut dyn Engine, batch: &Batch) -> (f64, Vec<f32>) {
    e.reset_state(batch.rows).unwrap();
    e.upload_batch(batch).unwrap();
    e.zero_grads().unwrap();
    e.forward().unwrap();
    e.backward().unwrap();
    (e.loss().unwrap().mean(), e.grads().unwrap())
}

#[test]
fn the_output_layer_in_chunks_equals_it_in_one() {
    let mut rng = common::rng("chunks");
    let cfg = word_model(Cell::Gru, 700, 6, 1, Some(5), false);
    let layout = ParamLayout::new(&cfg).unwrap();
    let params = common::uniform(&mut rng, layout.len(), 0.5);
    let lengths = [5, 2, 4];
    let batch = common::random_batch(&mut rng, &cfg, 5, 3, Some(&lengths));
    let mut whole = CpuEngine::<f32>::new(&cfg, &params).unwrap();
    let (l1, g1) = step(&mut whole, &batch);
    let p1 = whole.outputs().unwrap();
    assert_eq!(p1.len(), 15 * 700);
    // 15 rows in chunks of 4 rows (the last one of 3), and of one row.
    for rows in [4, 1] {
        let mut chunked = CpuEngine::<f32>::new(&cfg, &params).unwrap();
        chunked.set_logit_budget(rows * 700 + 699).unwrap();
        let (l2, g2) = step(&mut chunked, &batch);
        assert_close("chunked loss", &[l2], &[l1], 1e-6, 0.0);
        assert_close("chunked gradients", &to_f64(&g2), &to_f64(&g1), 1e-5, 1e-7);
        match chunked.outputs() {
            Err(Error::Shape(msg)) => assert!(msg.contains("chunks of"), "{msg}"),
            other => panic!(
                "expected the outputs to be refused, got {:?}",
                other.map(|o| o.len())
            ),
        }
    }
}

/// Logits of `rows` rows over `v` classes whose softmax mass is spread over many small terms:
/// the target's logit is the largest, every other one is `gap` below it or lower, so the loss
/// depends on the sum of tens of thousands of terms each far below the largest.
fn spread_logits(rng: &mut rand_chacha::ChaCha8Rng, rows: usize, v: usize) -> (Vec<f32>, Vec<u32>) {
    let mut z = Vec::with_capacity(rows * v);
    let mut y = Vec::with_capacity(rows);
    for _ in 0..rows {
        let target = rng.random_range(0..v as u32);
        for j in 0..v as u32 {
            z.push(if j == target {
                12.0
            } else {
                rng.random_range(-6.0f32..2.0)
            });
        }
        y.push(target);
    }
    (z, y)
}

/// The softmax probabilities and summed loss of `z` in f64.
fn softmax_f64(z: &[f32], y: &[u32], v: usize) -> (Vec<f64>, f64) {
    let mut p = vec![0.0; z.len()];
    let mut loss = 0.0;
    for (r, row) in z.chunks(v).enumerate() {
        let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
        let s: f64 = row.iter().map(|&x| (x as f64 - m).exp()).sum();
        for (j, &x) in row.iter().enumerate() {
            p[r * v + j] = (x as f64 - m).exp() / s;
        }
        loss += s.ln() - (row[y[r] as usize] as f64 - m);
    }
    (p, loss)
}

#[test]
fn softmax_over_fifty_thousand_classes_keeps_the_small_terms_on_the_cpu() {
    let mut rng = common::rng("softmax 50k cpu");
    let (rows, v) = (3, 50_000);
    let (z, y) = spread_logits(&mut rng, rows, v);
    let (p64, loss64) = softmax_f64(&z, &y, v);
    let mut p = Array2::from_shape_vec((rows, v), z).unwrap();
    let mut d = Array2::<f32>::zeros((rows, v));
    let loss = cpu_loss::softmax_cross_entropy(p.view_mut(), &y, None, 1.0, Some(d.view_mut()));
    // The loss depends on the sum of 50,000 exponentials, 40% of it in terms below 1e-4 of the
    // largest: a plain f32 running sum errs by about 1e-5 here, the f64 accumulation by far less.
    assert_close("loss", &[loss], &[loss64], 1e-6, 0.0);
    // Each probability carries the rounding of its f32 argument z - max (up to 1e-6 relative
    // for |z - max| < 32) and of exp.
    assert_close(
        "probabilities",
        &to_f64(p.as_slice().unwrap()),
        &p64,
        2e-6,
        0.0,
    );
}

#[test]
fn softmax_over_fifty_thousand_classes_keeps_the_small_terms_on_the_gpu() {
    let Some(ctx) = common::gpu("softmax 50k gpu") else {
        return;
    };
    let mut rng = common::rng("softmax 50k gpu");
    let (rows, v) = (3, 50_000);
    let (z, y) = spread_logits(&mut rng, rows, v);
    let (p64, loss64) = softmax_f64(&z, &y, v);
    let buf = |data: &[f32]| unroll::engine::gpu::buffers::storage_with(&ctx, "t", data).unwrap();
    let targets = unroll::engine::gpu::buffers::storage_with(&ctx, "targets", &y).unwrap();
    let mask = buf(&vec![1.0; rows]);
    let logits = buf(&z);
    let dlogits = buf(&vec![f32::NAN; rows * v]);
    let row_loss = buf(&vec![f32::NAN; rows]);
    let scratch = buf(&vec![f32::NAN; reduce::SCRATCH_LEN]);
    let mut calls = vec![
        loss::loss(
            &ctx,
            OutputKind::Softmax,
            loss::LossBuffers {
                targets: &targets,
                mask: &mask,
                logits: &logits,
                dlogits: &dlogits,
                row_loss: &row_loss,
            },
            loss::LossArgs::new(0..rows, v, 1.0).unwrap(),
        )
        .unwrap(),
    ];
    calls.extend(
        reduce::sum(
            &ctx,
            rows,
            at(&row_loss, 0),
            false,
            &scratch,
            reduce::LOSS_SLOT,
        )
        .unwrap(),
    );
    let mut pipes = unroll::engine::gpu::pipelines::Pipelines::default();
    unroll::engine::gpu::plan::run_now(&ctx, &mut pipes, calls).unwrap();
    let read = |b: &wgpu::Buffer, off: usize, n: usize| -> Vec<f32> {
        unroll::engine::gpu::buffers::read(&ctx, b, off, n).unwrap()
    };
    let loss = read(&scratch, reduce::LOSS_SLOT, 1)[0] as f64;
    // The sum: each row's probabilities, as the kernel divided its own exponentials by its sum,
    // add up to 1 within a few roundings only if that sum of 50,000 terms was accurate (measured
    // on lavapipe: blocked summation stays within 5e-7, a plain running sum per thread errs by
    // up to 2e-6).
    let p_gpu = read(&logits, 0, rows * v);
    for (r, row) in p_gpu.chunks(v).enumerate() {
        let total: f64 = row.iter().map(|&x| x as f64).sum();
        assert!(
            (total - 1.0).abs() < 8e-7,
            "row {r}: probabilities sum to {total}"
        );
    }
    // Against f64: Vulkan lets `exp(x)` err by 3 + 2|x| ulp (4.6e-6 relative at |x| = 18, where
    // the terms that matter here lie), and lavapipe's exp is biased by about that much.
    assert_close("loss", &[loss], &[loss64], 2e-5, 0.0);
    assert_close("probabilities", &to_f64(&p_gpu), &p64, 1e-5, 0.0);
    let mut d64 = p64.clone();
    for (r, &t) in y.iter().enumerate() {
        d64[r * v + t as usize] -= 1.0;
    }
    assert_close(
        "gradient",
        &to_f64(&read(&dlogits, 0, rows * v)),
        &d64,
        1e-5,
        1e-9,
    );
}

#[test]
fn ten_thousand_word_models_train_alike_on_the_gpu_and_the_cpu() {
    // (cell, H, layers, embedding, tied, logit budget): the plain one-hot model in one chunk and
    // in chunks of 2 rows; an embedding under a GRU; tied weights under a 2-layer LSTM in chunks.
    let v = 10_000;
    let cases = [
        (Cell::Rnn, 8, 1, None, false, None),
        (Cell::Rnn, 8, 1, None, false, Some(2 * v)),
        (Cell::Gru, 6, 1, Some(5), false, None),
        (Cell::Lstm, 8, 2, Some(8), true, Some(5 * v)),
    ];
    for (cell, h, layers, embed, tie, budget) in cases {
        let cfg = word_model(cell, v, h, layers, embed, tie);
        let name = format!("{cell:?} E={embed:?} tied={tie} budget={budget:?}");
        let Some(ctx) = common::gpu(&name) else {
            return;
        };
        let mut rng = common::rng(&name);
        let layout = ParamLayout::new(&cfg).unwrap();
        let params = common::uniform(&mut rng, layout.len(), 0.5);
        let mut cpu = CpuEngine::<f32>::new(&cfg, &params).unwrap();
        let mut gpu = GpuEngine::new(ctx, &cfg, &params).unwrap();
        if let Some(b) = budget {
            cpu.set_logit_budget(b).unwrap();
            gpu.set_logit_budget(b).unwrap();
        }
        let opt = OptimizerConfig::new(OptimizerKind::Sgd).with_clip(5.0);
        let (steps, rows) = (3, 2);
        for e in [&mut cpu as &mut dyn Engine, &mut gpu] {
            e.reset_state(rows).unwrap();
        }
        for s in 0..2 {
            let lengths = [3, 2];
            let mut batch = common::random_batch(&mut rng, &cfg, steps, rows, Some(&lengths));
            // Repeat a token so the gathered gradients add rows of the same word.
            if let (unroll::engine::Inputs::Tokens(t), Targets::Classes(_)) =
                (&mut batch.inputs, &batch.targets)
            {
                t[1] = t[0];
            }
            let mut losses = Vec::new();
            for e in [&mut cpu as &mut dyn Engine, &mut gpu] {
                e.upload_batch(&batch).unwrap();
                e.zero_grads().unwrap();
                e.forward().unwrap();
                e.backward().unwrap();
                losses.push(e.loss().unwrap().mean());
            }
            assert_close(
                &format!("{name} loss {s}"),
                &[losses[1]],
                &[losses[0]],
                1e-5,
                1e-6,
            );
            assert_close(
                &format!("{name} gradients {s}"),
                &to_f64(&gpu.grads().unwrap()),
                &to_f64(&cpu.grads().unwrap()),
                1e-4,
                1e-6,
            );
            for e in [&mut cpu as &mut dyn Engine, &mut gpu] {
                e.optimizer_step(&opt, 0.5).unwrap();
                e.carry_state().unwrap();
            }
        }
        assert_close(
            &format!("{name} parameters"),
            &to_f64(&gpu.params().unwrap()),
            &to_f64(&cpu.params().unwrap()),
            1e-4,
            1e-6,
        );
        assert_close(
            &format!("{name} state"),
            &to_f64(&gpu.state().unwrap()),
            &to_f64(&cpu.state().unwrap()),
            1e-4,
            1e-6,
        );
    }
}

#[test]
fn chunked_output_layers_of_every_kind_match_one_chunk_and_the_gpu() {
    // Dense targets (identity, sigmoid) are sliced by chunk too; rows of unequal length.
    for (input, output) in [
        (InputKind::Dense, OutputKind::Identity),
        (InputKind::OneHot, OutputKind::Sigmoid),
        (InputKind::Dense, OutputKind::Softmax),
    ] {
        let cfg = common::config(Activation::Tanh, input, output, (4, 5, 37, 2));
        let name = format!("chunked {output:?}");
        let mut rng = common::rng(&name);
        let params = common::uniform(&mut rng, ParamLayout::new(&cfg).unwrap().len(), 0.5);
        let batch = common::random_batch(&mut rng, &cfg, 4, 3, Some(&[4, 1, 3]));
        let mut whole = CpuEngine::<f32>::new(&cfg, &params).unwrap();
        let (l1, g1) = step(&mut whole, &batch);
        // 12 rows in chunks of 5 (the last of 2).
        let mut chunked = CpuEngine::<f32>::new(&cfg, &params).unwrap();
        chunked.set_logit_budget(5 * 37).unwrap();
        let (l2, g2) = step(&mut chunked, &batch);
        assert_close(&format!("{name} loss"), &[l2], &[l1], 1e-6, 0.0);
        assert_close(
            &format!("{name} gradients"),
            &to_f64(&g2),
            &to_f64(&g1),
            1e-5,
            1e-7,
        );
        let Some(ctx) = common::gpu(&name) else {
            continue;
        };
        let mut gpu = GpuEngine::new(ctx, &cfg, &params).unwrap();
        gpu.set_logit_budget(5 * 37).unwrap();
        let (l3, g3) = step(&mut gpu, &batch);
        assert_close(&format!("{name} gpu loss"), &[l3], &[l1], 1e-5, 1e-6);
        assert_close(
            &format!("{name} gpu gradients"),
            &to_f64(&g3),
            &to_f64(&g1),
            1e-4,
            1e-6,
        );
    }
}
