//! Forwards without gradients (`Engine::set_grad_enabled(false)`), as evaluation, prediction
//! and sampling run them: the CPU engine's output layer holds one block of rows at a time, the
//! loss and outputs are those of a forward with gradients, and `unroll eval` runs in memory
//! bounded by that block, not by the window times V.

use std::io::Write;
use std::process::Stdio;

use rand::RngExt;
use unroll::data::EvalSet;
use unroll::engine::cpu::CpuEngine;
use unroll::engine::{Engine, INFERENCE_LOGITS, for_each_output_chunk};
use unroll::model::{Cell, InputKind, ModelConfig, OutputKind, ParamLayout};
use unroll::train::trainer::{evaluate, evaluate_with};

use crate::common;

/// A language model with `v` classes: H = 8, E = 6, so that the output layer dominates.
fn wide_model(rng: &mut rand_chacha::ChaCha8Rng, cell: Cell, v: usize) -> (ModelConfig, Vec<f32>) {
    let mut cfg = common::cell_config(cell, InputKind::OneHot, OutputKind::Softmax, (v, 8, v, 1));
    cfg.embed = Some(6);
    let n = ParamLayout::new(&cfg).unwrap().len();
    (cfg, common::uniform(rng, n, 0.3))
}

#[test]
fn forwards_without_gradients_hold_one_block_and_give_the_same_loss_and_outputs() {
    let mut rng = common::rng("no-grad forward");
    for cell in [Cell::Rnn, Cell::Lstm] {
        // N * V above the block, so the forward without gradients runs in blocks.
        let v = rng.random_range(4500..6000);
        let (steps, rows) = (rng.random_range(90..120), rng.random_range(9..12));
        let (cfg, params) = wide_model(&mut rng, cell, v);
        let lengths: Vec<usize> = (0..rows).map(|_| rng.random_range(1..=steps)).collect();
        let batch = common::random_batch(&mut rng, &cfg, steps, rows, Some(&lengths));
        let n = steps * rows;
        assert!(n * v > INFERENCE_LOGITS, "the test shape must need blocks");

        let mut e = CpuEngine::<f32>::new(&cfg, &params).unwrap();
        e.reset_state(rows).unwrap();
        e.upload_batch(&batch).unwrap();
        e.forward().unwrap();
        let with_grad = e.loss().unwrap();
        let kept = e.outputs().unwrap();
        e.zero_grads().unwrap();
        e.backward().unwrap();
        let grads = e.grads().unwrap();

        e.set_grad_enabled(false).unwrap();
        e.forward().unwrap();
        let without = e.loss().unwrap();
        assert_eq!(without.count, with_grad.count);
        common::assert_close("loss", &[without.sum], &[with_grad.sum], 1e-9, 0.0);
        let chunks = e.output_chunks().unwrap();
        assert!(chunks.chunk_rows * v <= INFERENCE_LOGITS && chunks.chunk_rows < n);
        assert!(e.outputs().is_err(), "no [N, V] outputs are kept");
        let mut seen = 0;
        for_each_output_chunk(&mut e, |r, p| {
            assert_eq!(r.start, seen);
            assert_eq!(p.len(), r.len() * v);
            let want = &kept[r.start * v..r.end * v];
            common::assert_close(
                "outputs",
                &common::to_f64(p),
                &common::to_f64(want),
                1e-5,
                1e-9,
            );
            seen = r.end;
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, n);
        let misuse = e.backward().unwrap_err().to_string();
        assert!(misuse.contains("without gradients"), "{misuse}");

        // Back on: the same gradient as before, bitwise.
        e.set_grad_enabled(true).unwrap();
        e.forward().unwrap();
        e.zero_grads().unwrap();
        e.backward().unwrap();
        assert_eq!(
            e.grads().unwrap(),
            grads,
            "{cell:?}: gradients after no-grad forwards"
        );
    }
}

/// One batch, evaluated as it is.
struct OneBatch(unroll::engine::Batch);

impl EvalSet for OneBatch {
    fn batches(
        &self,
    ) -> unroll::error::Result<Box<dyn Iterator<Item = unroll::engine::Batch> + '_>> {
        Ok(Box::new(std::iter::once(self.0.clone())))
    }
    fn carries_state(&self) -> bool {
        false
    }
    fn is_empty(&self) -> bool {
        false
    }
}

#[test]
fn evaluation_reads_blocks_and_leaves_the_engine_training() {
    let mut rng = common::rng("evaluation blocks");
    let v = rng.random_range(4500..6000);
    let (cfg, params) = wide_model(&mut rng, Cell::Gru, v);
    let (steps, rows) = (rng.random_range(80..100), 12);
    let batch = common::random_batch(&mut rng, &cfg, steps, rows, None);
    let mut e = CpuEngine::<f32>::new(&cfg, &params).unwrap();
    let set = OneBatch(batch.clone());
    let mut largest = 0;
    let mut on = |_: &unroll::engine::Batch, r: std::ops::Range<usize>, p: &[f32]| {
        largest = largest.max(p.len());
        assert_eq!(p.len(), r.len() * v);
        Ok(())
    };
    let scored = evaluate_with(&mut e, &set, Some(&mut on)).unwrap();
    assert!(largest <= INFERENCE_LOGITS, "{largest} outputs at once");
    assert_eq!(scored.count, (steps * rows) as f64);
    // The engine trains again afterwards: a forward keeps its gradient for the backward.
    e.reset_state(rows).unwrap();
    e.upload_batch(&batch).unwrap();
    e.forward().unwrap();
    common::assert_close("loss", &[e.loss().unwrap().sum], &[scored.sum], 1e-9, 0.0);
    e.zero_grads().unwrap();
    e.backward().unwrap();
    assert_eq!(evaluate(&mut e, &set).unwrap().count, scored.count);
}

/// A corpus of `words` tokens over `distinct` different words.
fn word_corpus(rng: &mut rand_chacha::ChaCha8Rng, words: usize, distinct: usize) -> String {
    let mut s = String::new();
    for i in 0..words {
        s.push_str(&format!("w{}", rng.random_range(0..distinct)));
        s.push(if i % 12 == 11 { '\n' } else { ' ' });
    }
    s
}

#[test]
fn eval_of_a_word_model_runs_in_memory_bounded_by_a_block() {
    let mut rng = common::rng("eval memory");
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("words.txt");
    std::fs::File::create(&corpus)
        .unwrap()
        .write_all(word_corpus(&mut rng, 60_000, 6_000).as_bytes())
        .unwrap();
    let out = dir.path().join("run");
    let c = corpus.to_str().unwrap();
    let trained = std::process::Command::new(env!("CARGO_BIN_EXE_unroll"))
        .args([
            "train",
            "--device",
            "cpu",
            "--vocab",
            "words",
            "--max-vocab",
            "6000",
        ])
        .args([
            "--hidden",
            "8",
            "--steps",
            "1",
            "--batch",
            "4",
            "--seq-len",
            "8",
        ])
        .args([
            "--sample",
            "0",
            "--corpus",
            c,
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        trained.status.success(),
        "{}",
        String::from_utf8_lossy(&trained.stderr)
    );
    // A window of 64 x 128 = 8192 rows: its logits alone would be 8192 x 6000 x 4 bytes, 188 MiB
    // (and as much again for their gradient).
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_unroll"))
        .args([
            "eval",
            "--device",
            "cpu",
            "--batch",
            "64",
            "--seq-len",
            "128",
        ])
        .args(["--model", out.to_str().unwrap(), "--corpus", c])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (peak_kib, status) = common::peak_rss_kib(&mut child);
    let mut text = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut text).unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{err}");
    assert!(text.contains("\"loss\""), "{text}");
    eprintln!("eval peak RSS: {} MiB", peak_kib >> 10);
    assert!(peak_kib > 0, "the peak RSS was read");
    assert!(
        peak_kib < 120 << 10,
        "eval peaked at {} MiB, more than a block of logits allows",
        peak_kib >> 10
    );
}
