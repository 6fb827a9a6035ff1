//! Outputs of an output layer that ran in chunks: `Engine::outputs_of` computes a chunk's
//! outputs again on both engines (the GPU held to the CPU), and evaluation, accuracy and
//! `unroll predict` read them chunk by chunk, so that they work for any V.

use std::path::Path;
use std::process::Command;

use rand::RngExt;
use unroll::engine::cpu::CpuEngine;
use unroll::engine::gpu::GpuEngine;
use unroll::engine::{Batch, Engine, for_each_output_chunk, logit_chunk_rows};
use unroll::error::Error;
use unroll::model::{Activation, InputKind, ModelConfig, OutputKind, ParamLayout};

use crate::common::{self, assert_close, to_f64};

/// The models of the engine cases: a softmax over a few hundred classes, a sigmoid and an
/// identity output, one and two layers.
fn models() -> Vec<ModelConfig> {
    let gru = |c: ModelConfig| ModelConfig {
        cell: unroll::model::Cell::Gru,
        ..c
    };
    vec![
        common::config(
            Activation::Tanh,
            InputKind::OneHot,
            OutputKind::Softmax,
            (11, 6, 300, 1),
        ),
        gru(common::config(
            Activation::Tanh,
            InputKind::Dense,
            OutputKind::Sigmoid,
            (3, 5, 40, 2),
        )),
        common::config(
            Activation::Relu,
            InputKind::Dense,
            OutputKind::Identity,
            (2, 4, 17, 1),
        ),
    ]
}

/// The chunks of `e`'s last forward in a scrambled order (the last, the first, then the rest),
/// so that a chunk that is not computed again reads what another one left behind.
fn scrambled(e: &mut dyn Engine) -> Vec<std::ops::Range<usize>> {
    let mut chunks: Vec<_> = e.output_chunks().unwrap().ranges().collect();
    chunks.rotate_right(1);
    chunks
}

/// Runs `batch` forward on `e` from a zero state.
fn forward(e: &mut dyn Engine, batch: &Batch) {
    e.reset_state(batch.rows).unwrap();
    e.upload_batch(batch).unwrap();
    e.forward().unwrap();
}

/// Compares outputs that were read (`got`) with the expected ones, naming what was read.
type Check<'a> = &'a dyn Fn(&str, &[f32], &[f32]);

/// Every chunk's outputs (read in a scrambled order), a single row inside the first chunk and
/// all of them through `for_each_output_chunk`, checked against `want` (the outputs of the
/// same forward in one chunk) with `check`; the loss of the forward is not changed by the reads,
/// and a range across two chunks is refused.
fn check_chunks(e: &mut dyn Engine, batch: &Batch, want: &[f32], check: Check) {
    let v = e.config().output_size;
    forward(e, batch);
    let loss = e.loss().unwrap();
    for rows in scrambled(e) {
        let got = e.outputs_of(rows.clone()).unwrap();
        let what = format!("rows {rows:?}");
        check(&what, &got, &want[rows.start * v..rows.end * v]);
    }
    let first = e.output_chunks().unwrap().ranges().next().unwrap();
    let last = first.end - 1;
    let got = e.outputs_of(last..first.end).unwrap();
    check("one row", &got, &want[last * v..first.end * v]);
    let mut all = Vec::new();
    for_each_output_chunk(e, |_, p| {
        all.extend_from_slice(p);
        Ok(())
    })
    .unwrap();
    check("every chunk in order", &all, want);
    assert_eq!(
        e.loss().unwrap(),
        loss,
        "reading the outputs changed the loss"
    );
    let chunks = e.output_chunks().unwrap();
    if chunks.chunk_rows < chunks.rows {
        match e.outputs_of(0..chunks.chunk_rows + 1) {
            Err(Error::Shape(m)) => assert!(m.contains("not within one chunk"), "{m}"),
            other => panic!("a range across chunks gave {:?}", other.map(|o| o.len())),
        }
    }
}

#[test]
fn outputs_of_a_chunked_output_layer_match_the_unchunked_outputs_on_both_engines() {
    // (T, B, lengths): one row; several chunks with padding; one row per step.
    let shapes: [(usize, usize, Option<&[usize]>); 3] =
        [(1, 1, None), (4, 3, Some(&[4, 2, 3])), (5, 1, None)];
    for cfg in models() {
        let v = cfg.output_size;
        let name = format!("outputs_of {:?} V={v}", cfg.output_kind);
        let mut rng = common::rng(&name);
        let params = common::uniform(&mut rng, ParamLayout::new(&cfg).unwrap().len(), 0.5);
        let mut whole = CpuEngine::<f32>::new(&cfg, &params).unwrap();
        let mut gpu = common::gpu(&name).map(|ctx| GpuEngine::new(ctx, &cfg, &params).unwrap());
        for &(steps, rows, lengths) in &shapes {
            let batch = common::random_batch(&mut rng, &cfg, steps, rows, lengths);
            forward(&mut whole, &batch);
            let want = whole.outputs().unwrap();
            // One row per chunk, two rows and a bit, and one chunk of all rows.
            for budget in [v, 2 * v + 1, steps * rows * v] {
                let n = steps * rows;
                let mut cpu = CpuEngine::<f32>::new(&cfg, &params).unwrap();
                cpu.set_logit_budget(budget).unwrap();
                // The products of a chunk's rows may round apart from those of all rows.
                let same = |what: &str, got: &[f32], want: &[f32]| {
                    let what = format!("cpu T={steps} B={rows} budget={budget} {what}");
                    assert_close(&what, &to_f64(got), &to_f64(want), 1e-6, 1e-7);
                };
                check_chunks(&mut cpu, &batch, &want, &same);
                let chunks = cpu.output_chunks().unwrap();
                assert_eq!(chunks.chunk_rows, logit_chunk_rows(n, v, budget));
                let Some(gpu) = gpu.as_mut() else { continue };
                gpu.set_logit_budget(budget).unwrap();
                let close = |what: &str, got: &[f32], want: &[f32]| {
                    let what = format!("gpu T={steps} B={rows} budget={budget} {what}");
                    assert_close(&what, &to_f64(got), &to_f64(want), 1e-4, 1e-6);
                };
                check_chunks(gpu, &batch, &want, &close);
                assert_eq!(gpu.output_chunks().unwrap(), chunks);
            }
        }
    }
}

#[test]
fn outputs_of_before_a_forward_is_misuse() {
    let cfg = models().remove(0);
    let params = vec![0.1; ParamLayout::new(&cfg).unwrap().len()];
    let mut engines: Vec<Box<dyn Engine>> =
        vec![Box::new(CpuEngine::<f32>::new(&cfg, &params).unwrap())];
    if let Some(ctx) = common::gpu("outputs_of misuse") {
        engines.push(Box::new(GpuEngine::new(ctx, &cfg, &params).unwrap()));
    }
    for e in &mut engines {
        assert!(matches!(e.outputs_of(0..1), Err(Error::Misuse(_))));
        assert!(matches!(e.output_chunks(), Err(Error::Misuse(_))));
    }
}

/// Writes `dir/echo.jsonl`, `count` pairs whose y echoes x over `classes` class ids, and
/// returns its path.
fn echo_pairs(dir: &Path, count: usize, classes: u32) -> String {
    let mut rng = common::rng("echo pairs");
    let mut text = String::new();
    for _ in 0..count {
        let len = rng.random_range(2..7);
        let x: Vec<u32> = (0..len).map(|_| rng.random_range(0..classes)).collect();
        text.push_str(&serde_json::json!({ "x": x, "y": x }).to_string());
        text.push('\n');
    }
    let path = dir.join("echo.jsonl");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// Runs unroll with the output layer held to `budget` logits (`None`: the default).
fn unroll_with_budget(budget: Option<usize>, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_unroll"));
    cmd.args(args);
    if let Some(b) = budget {
        cmd.env(unroll::engine::select::LOGIT_BUDGET_VAR, b.to_string());
    }
    let out = cmd.output().expect("the unroll binary runs");
    assert!(
        out.status.success(),
        "unroll {args:?} (budget {budget:?}) failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The accuracies that metrics.jsonl of run `dir` recorded.
fn accuracies(dir: &Path) -> Vec<f64> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["val_accuracy"].as_f64())
        .collect()
}

/// Trains on `file` with the given budget (40 Adam steps, enough to learn some of an echo)
/// and returns its run directory.
fn train_pairs(dir: &Path, file: &str, device: &str, budget: Option<usize>) -> std::path::PathBuf {
    let out = dir.join(format!("run-{device}-{budget:?}"));
    let sizes = [
        "--hidden", "16", "--batch", "4", "--steps", "40", "--lr", "0.05",
    ];
    let rest = [
        "--eval-every",
        "20",
        "--device",
        device,
        "--out",
        out.to_str().unwrap(),
    ];
    let kinds = ["--input", "class", "--output", "class"];
    unroll_with_budget(
        budget,
        &[&["train", "--pairs", file][..], &kinds, &sizes, &rest].concat(),
    );
    out
}

/// `predict --pairs` of `model` on `file`: the predictions and the summary line.
fn predict(model: &Path, file: &str, device: &str, budget: Option<usize>) -> (String, String) {
    let out = unroll_with_budget(
        budget,
        &[
            "predict",
            "--model",
            model.to_str().unwrap(),
            "--pairs",
            file,
            "--batch",
            "8",
            "--device",
            device,
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary = stderr.lines().last().unwrap_or_default().to_string();
    (String::from_utf8_lossy(&out.stdout).into_owned(), summary)
}

#[test]
fn pairs_with_the_output_layer_in_chunks_train_evaluate_and_predict_on_both_engines() {
    let dir = tempfile::tempdir().unwrap();
    let file = &echo_pairs(dir.path(), 60, 40);
    // 40 classes and a budget of 2 rows and a bit: every batch runs its output layer in
    // chunks, where evaluation and predict used to stop with "were not kept".
    let budget = Some(2 * 40 + 1);
    let mut devices = vec!["cpu"];
    if common::gpu("pairs in chunks").is_some() {
        devices.push("gpu");
    }
    for device in devices {
        let whole = train_pairs(dir.path(), file, device, None);
        let chunked = train_pairs(dir.path(), file, device, budget);
        let (a, b) = (accuracies(&whole), accuracies(&chunked));
        assert!(
            !b.is_empty(),
            "{device}: the chunked run recorded no accuracy"
        );
        // Training in chunks sums the output layer's gradients in another order, which may
        // move a near tie: the accuracies agree within one validation step in 20.
        assert_eq!(a.len(), b.len());
        assert_close(&format!("{device} accuracies"), &b, &a, 0.0, 0.05);
        assert!(
            a.last() > Some(&0.3),
            "{device}: the echo was not learned: {a:?}"
        );
        let model = whole.join("model.safetensors");
        let (want, want_summary) = predict(&model, file, device, None);
        let (got, got_summary) = predict(&model, file, device, budget);
        assert_eq!(got.lines().count(), 60);
        assert_eq!(got, want, "{device}: the predictions in chunks differ");
        let accuracy =
            |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap()["accuracy"].clone();
        assert_eq!(accuracy(&got_summary), accuracy(&want_summary));
    }
}

#[test]
fn a_logit_budget_that_is_not_a_positive_number_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = &echo_pairs(dir.path(), 8, 5);
    let run = train_pairs(dir.path(), file, "cpu", None);
    let model = run.join("model.safetensors");
    for bad in ["0", "many", "-3"] {
        let out = Command::new(env!("CARGO_BIN_EXE_unroll"))
            .args([
                "predict",
                "--model",
                model.to_str().unwrap(),
                "--pairs",
                file,
            ])
            .args(["--device", "cpu"])
            .env(unroll::engine::select::LOGIT_BUDGET_VAR, bad)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert!(
            err.contains("UNROLL_LOGIT_BUDGET") && !err.contains("panicked"),
            "{err}"
        );
    }
}
