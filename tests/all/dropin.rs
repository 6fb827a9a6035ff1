//! What PyTorch's word_language_model example needs of unroll: the edge dropout (on the
//! embedded tokens and on the top layer's output) on both engines, with its gradients against
//! finite differences; and on the command line a validation file (`--val-corpus`,
//! `--val-pairs`), evaluation at the end of every epoch, the edge dropout options and
//! `--init-range`, each through a resume and with its bad values.

use std::path::Path;

use unroll::engine::cpu::CpuEngine;
use unroll::engine::cpu::dropout::{EMBED_SITE, MaskKey, OUT_SITE};
use unroll::engine::gpu::GpuEngine;
use unroll::engine::{Batch, Dropout, EdgeDropout, Engine};
use unroll::model::{Cell, Checkpoint, InputKind, ModelConfig, OutputKind, ParamLayout};
use unroll::train::optim::{OptimizerConfig, OptimizerKind};

use crate::cli::{fails_with, ok, unroll, write_corpus};
use crate::common::{self, assert_close};

/// A language model over `v` tokens with an embedding of E = H (tied when `tied`), `layers`
/// layers of `cell`.
fn embedded(cell: Cell, (v, h, layers): (usize, usize, usize), tied: bool) -> ModelConfig {
    ModelConfig {
        cell,
        embed: Some(h),
        tie_weights: tied,
        ..ModelConfig::language_model(v, h, layers)
    }
}

/// The f64 CPU engine of `cfg` with random parameters and state, the given dropout set, and
/// a random masked batch of unequal lengths uploaded.
fn engine_with(
    cfg: &ModelConfig,
    (steps, rows): (usize, usize),
    (dropout, edges): (Option<Dropout>, EdgeDropout),
    rng: &mut rand_chacha::ChaCha8Rng,
) -> CpuEngine<f64> {
    let layout = ParamLayout::new(cfg).unwrap();
    let params = common::uniform(rng, layout.len(), 0.6);
    let mut engine = CpuEngine::<f64>::new(cfg, &params).unwrap();
    engine.set_dropout(dropout).unwrap();
    engine.set_edge_dropout(edges).unwrap();
    let lengths: Vec<usize> = (0..rows)
        .map(|b| if b == 0 { steps } else { 1 + (b * 7) % steps })
        .collect();
    let batch = common::random_batch(rng, cfg, steps, rows, Some(&lengths));
    let state = common::uniform(rng, rows * cfg.state_size_per_row(), 0.8);
    engine.set_state(rows, &state).unwrap();
    engine.upload_batch(&batch).unwrap();
    engine
}

/// The loss of `engine`'s batch (a fresh forward from the same initial state).
fn loss_of(engine: &mut CpuEngine<f64>) -> f64 {
    let state = engine.state().unwrap();
    engine.forward().unwrap();
    let rows = state.len() / engine.config().state_size_per_row();
    engine.set_state(rows, &state).unwrap();
    engine.loss().unwrap().mean()
}

/// Every parameter's gradient with the edge masks fixed (one seed) against central differences.
fn check_edge_gradients(cfg: &ModelConfig, shape: (usize, usize), name: &str) {
    let mut rng = common::rng(name);
    let dropout = Some(Dropout { p: 0.3, seed: 5 });
    let edges = EdgeDropout {
        embed: 0.4,
        out: 0.35,
    };
    let mut engine = engine_with(cfg, shape, (dropout, edges), &mut rng);
    let state = engine.state().unwrap();
    engine.zero_grads().unwrap();
    engine.forward().unwrap();
    engine.backward().unwrap();
    let analytic = engine.grads_native().to_vec();
    let rows = state.len() / cfg.state_size_per_row();
    engine.set_state(rows, &state).unwrap();
    let atol = 1e-9 * loss_of(&mut engine).abs().max(1.0);
    let base = engine.params_native().to_vec();
    let eps = 1e-6;
    let mut numeric = Vec::with_capacity(base.len());
    for i in 0..base.len() {
        let mut p = base.clone();
        p[i] = base[i] + eps;
        engine.set_params_native(&p).unwrap();
        let up = loss_of(&mut engine);
        p[i] = base[i] - eps;
        engine.set_params_native(&p).unwrap();
        let down = loss_of(&mut engine);
        numeric.push((up - down) / (2.0 * eps));
    }
    assert_close(name, &analytic, &numeric, 1e-6, atol);
}

#[test]
fn edge_dropout_gradients_match_finite_differences() {
    for cell in [Cell::Rnn, Cell::Gru, Cell::Lstm] {
        let cfg = embedded(cell, (5, 4, 2), false);
        check_edge_gradients(&cfg, (4, 3), &format!("{cell:?} edge dropout"));
    }
    let tied = embedded(Cell::Lstm, (5, 4, 1), true);
    check_edge_gradients(&tied, (3, 2), "tied lstm edge dropout");
    let one = embedded(Cell::Gru, (4, 3, 1), false);
    check_edge_gradients(&one, (1, 1), "gru edge dropout T=1 B=1");
}

#[test]
fn edge_dropout_needs_an_embedding_and_probabilities_below_one() {
    let cfg = ModelConfig::language_model(5, 4, 1);
    let params = vec![0.1; ParamLayout::new(&cfg).unwrap().len()];
    let mut cpu = CpuEngine::<f32>::new(&cfg, &params).unwrap();
    let embed = EdgeDropout {
        embed: 0.2,
        out: 0.0,
    };
    assert!(matches!(
        cpu.set_edge_dropout(embed),
        Err(unroll::Error::Config(_))
    ));
    for out in [1.0, -0.1, f32::NAN] {
        let edges = EdgeDropout { embed: 0.0, out };
        assert!(cpu.set_edge_dropout(edges).is_err(), "out {out}");
    }
    // The output dropout alone needs no embedding.
    let out = EdgeDropout {
        embed: 0.0,
        out: 0.5,
    };
    cpu.set_edge_dropout(out).unwrap();
}

/// The columns of out.weight's and embed.weight's gradient that a one-row, one-step batch
/// leaves zero are exactly those the masks of the edge sites drop, on both engines.
#[test]
fn edge_masks_zero_what_they_drop_on_both_engines() {
    let Some(ctx) = common::gpu("edge masks") else {
        return;
    };
    let mut rng = common::rng("edge masks");
    let (v, h) = (7, 67);
    let cfg = embedded(Cell::Rnn, (v, h, 1), false);
    let layout = ParamLayout::new(&cfg).unwrap();
    let params = common::uniform(&mut rng, layout.len(), 0.5);
    let dropout = Some(Dropout { p: 0.0, seed: 99 });
    let edges = EdgeDropout {
        embed: 0.5,
        out: 0.4,
    };
    let batch = common::random_batch(&mut rng, &cfg, 1, 1, None);
    let token = match &batch.inputs {
        unroll::engine::Inputs::Tokens(t) => t[0] as usize,
        _ => unreachable!("a language model reads tokens"),
    };
    let mut cpu = CpuEngine::<f32>::new(&cfg, &params).unwrap();
    let mut gpu = GpuEngine::new(ctx, &cfg, &params).unwrap();
    for e in [&mut cpu as &mut dyn Engine, &mut gpu as &mut dyn Engine] {
        e.set_edge_dropout(edges).unwrap();
        e.set_dropout(dropout).unwrap();
        e.upload_batch(&batch).unwrap();
        e.zero_grads().unwrap();
        e.forward().unwrap();
        e.backward().unwrap();
        let g = e.grads().unwrap();
        let who = e.describe();
        let (ow, em) = (layout.out_weight(), layout.embed().unwrap());
        let (mut dropped_out, mut dropped_embed) = (0, 0);
        for j in 0..h {
            let out_key = MaskKey::edge(dropout, edges.out, OUT_SITE);
            let zero_col = (0..v).all(|r| g[ow + r * h + j] == 0.0);
            assert_eq!(
                zero_col,
                out_key.value(j as u32) == 0.0,
                "{who} out column {j}"
            );
            dropped_out += usize::from(zero_col);
            let embed_key = MaskKey::edge(dropout, edges.embed, EMBED_SITE);
            let zero = g[em + token * h + j] == 0.0;
            assert_eq!(zero, embed_key.value(j as u32) == 0.0, "{who} embed {j}");
            dropped_embed += usize::from(zero);
        }
        assert!(dropped_out > 10 && dropped_out < 45, "{who}: {dropped_out}");
        assert!(
            dropped_embed > 15 && dropped_embed < 52,
            "{who}: {dropped_embed}"
        );
    }
}

/// Three training steps on both engines with the edge dropout (and dropout between layers):
/// loss, outputs, gradients, parameters and carried state agree; `budget` runs the output
/// layer in chunks.
fn edge_steps_match(cfg: &ModelConfig, (steps, rows): (usize, usize), budget: usize, name: &str) {
    let Some(ctx) = common::gpu(name) else {
        return;
    };
    let mut rng = common::rng(name);
    let layout = ParamLayout::new(cfg).unwrap();
    let params = common::uniform(&mut rng, layout.len(), 0.5);
    let mut cpu = CpuEngine::<f32>::new(cfg, &params).unwrap();
    let mut gpu = GpuEngine::new(ctx, cfg, &params).unwrap();
    let edges = EdgeDropout {
        embed: if cfg.embed.is_some() { 0.3 } else { 0.0 },
        out: 0.45,
    };
    let state = common::uniform(&mut rng, rows * cfg.state_size_per_row(), 0.8);
    for e in [&mut cpu as &mut dyn Engine, &mut gpu as &mut dyn Engine] {
        e.set_logit_budget(budget).unwrap();
        e.set_edge_dropout(edges).unwrap();
        e.set_state(rows, &state).unwrap();
    }
    let opt = OptimizerConfig::new(OptimizerKind::Sgd).with_clip(1.0);
    for step in 0..3u64 {
        let lens: Vec<usize> = (0..rows).map(|b| 1 + (b * 5 + 3) % steps).collect();
        let batch: Batch = common::random_batch(&mut rng, cfg, steps, rows, Some(&lens));
        let d = Some(Dropout {
            p: 0.25,
            seed: 7 + step,
        });
        let what = format!("{name} step {step}");
        common::forward_backward_both([&mut cpu, &mut gpu], &batch, d, &what);
        // The first chunk of the output layer (all of it with a large budget).
        let first = 0..(steps * rows).min(budget / cfg.output_size);
        common::close_steps(
            &format!("{what} outputs"),
            &gpu.outputs_of(first.clone()).unwrap(),
            &cpu.outputs_of(first).unwrap(),
        );
        common::update_both([&mut cpu, &mut gpu], &opt, true, &what);
    }
    // Evaluation: no mask at all, on either engine.
    let batch = common::random_batch(&mut rng, cfg, steps, rows, None);
    for e in [&mut cpu as &mut dyn Engine, &mut gpu as &mut dyn Engine] {
        e.set_dropout(None).unwrap();
        e.upload_batch(&batch).unwrap();
        e.forward().unwrap();
    }
    let (lc, lg) = (cpu.loss().unwrap(), gpu.loss().unwrap());
    assert_close(
        &format!("{name} eval loss"),
        &[lg.mean()],
        &[lc.mean()],
        1e-4,
        1e-5,
    );
}

#[test]
fn training_steps_with_edge_dropout_match_cpu_for_every_cell() {
    for (cell, layers, shape) in [
        (Cell::Rnn, 2, (3, 2)),
        (Cell::Gru, 1, (1, 1)),
        (Cell::Lstm, 2, (5, 3)),
    ] {
        let cfg = embedded(cell, (6, 33, layers), cell == Cell::Lstm);
        edge_steps_match(&cfg, shape, 1 << 20, &format!("{cell:?} edge dropout"));
    }
    // One-hot inputs (the output dropout alone) and an output layer in chunks of 4 rows.
    let onehot = common::cell_config(
        Cell::Gru,
        InputKind::OneHot,
        OutputKind::Softmax,
        (6, 9, 5, 2),
    );
    edge_steps_match(&onehot, (3, 3), 4 * 5, "one-hot output dropout in chunks");
    // Bidirectional layers (one with a projection): the output mask covers both directions.
    for (cell, proj_size) in [(Cell::Gru, None), (Cell::Lstm, Some(4))] {
        let cfg = ModelConfig {
            bidirectional: true,
            proj_size,
            ..embedded(cell, (6, 9, 2), false)
        };
        let name = format!("{cell:?} bidirectional edge dropout");
        edge_steps_match(&cfg, (4, 3), 1 << 20, &name);
    }
}

// ---- the command line ------------------------------------------------------------------------

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The JSON records of `dir/metrics.jsonl`.
fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The validation records of `dir/metrics.jsonl`.
fn evaluations(dir: &Path) -> Vec<serde_json::Value> {
    let all = metrics(dir);
    all.into_iter()
        .filter(|r| r.get("val_loss").is_some())
        .collect()
}

/// The tiny run's options on the CPU, as strings.
fn tiny() -> Vec<&'static str> {
    common::TINY_CPU_RUN
        .iter()
        .flat_map(|(k, v)| [*k, *v])
        .collect()
}

/// `unroll train` with `args` after the tiny run's options.
fn train(args: &[&str]) -> std::process::Output {
    ok(&[&["train"][..], &tiny(), args].concat())
}

/// A validation corpus: a generated text of its own with `extra` appended.
fn val_file(dir: &Path, name: &str, extra: &str) -> String {
    let (file, text) = write_corpus(dir, name);
    std::fs::write(&file, format!("{text}{extra}")).unwrap();
    file
}

#[test]
fn val_corpus_scores_the_file_as_eval_does_in_every_mode() {
    let dir = tempfile::tempdir().unwrap();
    let (corpus, _) = write_corpus(dir.path(), "train");
    let val = val_file(dir.path(), "valid", "");
    for (vocab, sequences) in [("chars", "stream"), ("words", "lines"), ("bytes", "stream")] {
        let out = dir.path().join(format!("{vocab}-{sequences}"));
        let run = train(&[
            "--corpus",
            &corpus,
            "--val-corpus",
            &val,
            "--vocab",
            vocab,
            "--sequences",
            sequences,
            "--steps",
            "6",
            "--eval-every",
            "3",
            "--val-tokens",
            "all",
            "--out",
            path(&out),
        ]);
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(err.contains("validation: "), "{err}");
        let evals = evaluations(&out);
        assert_eq!(evals.len(), 2, "{vocab} {sequences}");
        // The whole corpus trains: its last step is the run's, and the score is the file's.
        let scored = ok(&[
            "eval",
            "--model",
            path(&out),
            "--corpus",
            &val,
            "--batch",
            "256",
            "--seq-len",
            "8",
            "--device",
            "cpu",
        ]);
        let json: serde_json::Value = serde_json::from_slice(&scored.stdout).unwrap();
        let want = json["loss"].as_f64().unwrap();
        let got = evals[1]["val_loss"].as_f64().unwrap();
        assert_close(&format!("{vocab} {sequences}"), &[got], &[want], 1e-6, 0.0);
        assert_eq!(
            evals[1]["val_tokens"].as_u64(),
            json["predictions"].as_u64(),
            "{vocab} {sequences}"
        );
    }
}

#[test]
fn val_corpus_says_what_it_skips_and_resumes_on_the_same_file_only() {
    let dir = tempfile::tempdir().unwrap();
    let (corpus, _) = write_corpus(dir.path(), "train");
    // Characters the training corpus lacks are skipped, as `eval` skips them.
    let val = val_file(dir.path(), "valid", "\u{e9}\u{e9}\u{3bb}\n");
    let out = dir.path().join("run");
    let run = train(&[
        "--corpus",
        &corpus,
        "--val-corpus",
        &val,
        "--steps",
        "4",
        "--out",
        path(&out),
    ]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("3 characters of the validation corpus"),
        "{err}"
    );
    let before = evaluations(&out);
    ok(&[
        "train",
        "--resume",
        path(&out),
        "--steps",
        "6",
        "--device",
        "cpu",
        "--sample",
        "0",
    ]);
    let after = evaluations(&out);
    assert_eq!(after.len(), before.len() + 1);
    // The same file, read again: an edited one is refused.
    std::fs::write(&val, "something else entirely\n").unwrap();
    fails_with(
        &[
            "train",
            "--resume",
            path(&out),
            "--steps",
            "8",
            "--device",
            "cpu",
        ],
        "the validation file",
        false,
    );
    // Conflicts: with --val-frac, on resume, without --pairs.
    let fresh = dir.path().join("fresh");
    for (args, needle) in [
        (
            vec![
                "--corpus",
                &corpus,
                "--val-corpus",
                &val,
                "--val-frac",
                "0.1",
            ],
            "--val-frac",
        ),
        (
            vec!["--resume", path(&out), "--val-corpus", &val],
            "--val-corpus",
        ),
        (vec!["--corpus", &corpus, "--val-pairs", &val], "--pairs"),
    ] {
        fails_with(&[&["train"][..], &args].concat(), needle, true);
    }
    fails_with(
        &[
            "train",
            "--corpus",
            &corpus,
            "--val-corpus",
            path(&dir.path().join("missing")),
            "--out",
            path(&fresh),
            "--device",
            "cpu",
        ],
        "missing",
        false,
    );
    std::fs::write(&val, "\u{3bb}\u{3bb}\u{3bb}").unwrap();
    fails_with(
        &[
            &["train"][..],
            &tiny(),
            &[
                "--corpus",
                &corpus,
                "--val-corpus",
                &val,
                "--out",
                path(&fresh),
            ],
        ]
        .concat(),
        "validation needs at least 2",
        false,
    );
}

/// A pairs file of `count` pairs of class ids below `classes`, x = y (an echo).
fn echo_pairs(file: &Path, count: usize, classes: u32, seed: u64) {
    let mut lines = String::new();
    for i in 0..count as u64 {
        let len = 1 + (i * 7 + seed) % 5;
        let xs: Vec<String> = (0..len)
            .map(|t| ((i * 3 + t * 5 + seed) % u64::from(classes)).to_string())
            .collect();
        let xs = xs.join(",");
        lines.push_str(&format!("{{\"x\": [{xs}], \"y\": [{xs}]}}\n"));
    }
    std::fs::write(file, lines).unwrap();
}

#[test]
fn val_pairs_score_the_file_as_predict_does_and_refuse_a_pair_the_model_cannot_take() {
    let dir = tempfile::tempdir().unwrap();
    let (pairs, val) = (dir.path().join("p.jsonl"), dir.path().join("v.jsonl"));
    echo_pairs(&pairs, 40, 5, 0);
    echo_pairs(&val, 9, 5, 3);
    let out = dir.path().join("run");
    let pairs_run = |extra: &[&str], out: &Path| {
        let args = [
            "train",
            "--pairs",
            path(&pairs),
            "--input",
            "class",
            "--output",
            "class",
            "--hidden",
            "8",
            "--batch",
            "4",
            "--device",
            "cpu",
            "--out",
            path(out),
        ];
        unroll(&[&args[..], extra].concat())
    };
    let run = pairs_run(&["--val-pairs", path(&val), "--steps", "5"], &out);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("(40 train, 9 validation from "), "{err}");
    let evals = evaluations(&out);
    let predicted = ok(&[
        "predict",
        "--model",
        path(&out),
        "--pairs",
        path(&val),
        "--device",
        "cpu",
    ]);
    let stderr = String::from_utf8_lossy(&predicted.stderr);
    let summary: serde_json::Value = serde_json::from_str(stderr.lines().last().unwrap()).unwrap();
    let last = evals.last().unwrap();
    assert_close(
        "val pairs",
        &[last["val_loss"].as_f64().unwrap()],
        &[summary["loss"].as_f64().unwrap()],
        1e-5,
        0.0,
    );
    assert_eq!(last["val_pairs"].as_u64(), Some(9));
    // Resumed, it reads the file again.
    ok(&[
        "train",
        "--resume",
        path(&out),
        "--steps",
        "7",
        "--device",
        "cpu",
    ]);
    assert_eq!(evaluations(&out).len(), evals.len() + 1);
    // A validation pair with a class the model does not have: its line is named.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"x\": [1], \"y\": [1]}\n{\"x\": [7, 1], \"y\": [1, 1]}\n",
    )
    .unwrap();
    let run = pairs_run(&["--val-pairs", path(&bad)], &dir.path().join("bad"));
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{err}");
    assert!(
        err.contains("line 2") && err.contains("kinds and class counts"),
        "{err}"
    );
    assert!(!dir.path().join("bad").join("metrics.jsonl").exists());
    // A language model's validation file is not for pairs.
    let run = pairs_run(&["--val-corpus", path(&val)], &dir.path().join("lm"));
    assert_eq!(run.status.code(), Some(2));
}

/// A corpus of 40 generated sentences (a few dozen windows of the tiny run per epoch).
fn small_corpus(dir: &Path) -> String {
    let mut rng = common::rng("small corpus");
    let file = dir.join("small.txt");
    std::fs::write(&file, crate::training::generated_corpus(&mut rng, 40)).unwrap();
    path(&file).to_string()
}

#[test]
fn eval_every_epoch_reports_each_epoch_through_resume_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = small_corpus(dir.path());
    let out = dir.path().join("run");
    let run = train(&[
        "--corpus",
        &corpus,
        "--epochs",
        "2",
        "--eval-every",
        "epoch",
        "--checkpoint-every",
        "7",
        "--out",
        path(&out),
    ]);
    let err = String::from_utf8_lossy(&run.stderr);
    let evals = evaluations(&out);
    assert_eq!(evals.len(), 2, "{err}");
    let per_epoch = evals[0]["step"].as_u64().unwrap();
    for (i, e) in evals.iter().enumerate() {
        assert_eq!(e["epoch"].as_u64(), Some(i as u64 + 1));
        assert_eq!(e["step"].as_u64(), Some(per_epoch * (i as u64 + 1)));
        assert!(err.contains(&format!("epoch {} ", i + 1)), "{err}");
    }
    // Extended by resume: the third epoch is evaluated at its end and a step-count end after.
    let steps = (3 * per_epoch + 2).to_string();
    ok(&[
        "train",
        "--resume",
        path(&out),
        "--steps",
        &steps,
        "--device",
        "cpu",
        "--sample",
        "0",
    ]);
    let evals = evaluations(&out);
    let epochs: Vec<Option<u64>> = evals.iter().map(|e| e["epoch"].as_u64()).collect();
    assert_eq!(epochs, [Some(1), Some(2), Some(3), None]);
    // A run by steps switched to epochs on resume, and back.
    let steps_run = dir.path().join("steps");
    train(&[
        "--corpus",
        &corpus,
        "--steps",
        "3",
        "--eval-every",
        "2",
        "--out",
        path(&steps_run),
    ]);
    let to = (per_epoch + 1).to_string();
    ok(&[
        "train",
        "--resume",
        path(&steps_run),
        "--steps",
        &to,
        "--eval-every",
        "epoch",
        "--device",
        "cpu",
        "--sample",
        "0",
    ]);
    let epochs: Vec<Option<u64>> = evaluations(&steps_run)
        .iter()
        .map(|e| e["epoch"].as_u64())
        .collect();
    assert_eq!(epochs, [None, None, Some(1), None]);
    for bad in ["epochs", "-1", "1.5", ""] {
        let every = format!("--eval-every={bad}");
        fails_with(
            &[
                "train",
                "--corpus",
                &corpus,
                &every,
                "--out",
                path(&steps_run),
            ],
            "--eval-every",
            true,
        );
    }
}

#[test]
fn edge_dropout_resumes_exactly_and_refuses_bad_values() {
    let dir = tempfile::tempdir().unwrap();
    let (corpus, _) = write_corpus(dir.path(), "train");
    let drop = [
        "--corpus",
        &corpus,
        "--embed",
        "8",
        "--tie-weights",
        "--cell",
        "lstm",
        "--layers",
        "2",
        "--dropout",
        "0.2",
        "--dropout-embed",
        "0.2",
        "--dropout-out",
        "0.2",
    ];
    let (whole, split, plain) = (
        dir.path().join("whole"),
        dir.path().join("split"),
        dir.path().join("plain"),
    );
    train(&[&drop[..], &["--steps", "8", "--out", path(&whole)]].concat());
    train(&[&drop[..], &["--steps", "4", "--out", path(&split)]].concat());
    ok(&[
        "train",
        "--resume",
        path(&split),
        "--steps",
        "8",
        "--device",
        "cpu",
        "--sample",
        "0",
    ]);
    let bits = |d: &Path| -> Vec<u32> {
        Checkpoint::load(d)
            .unwrap()
            .params
            .iter()
            .map(|v| v.to_bits())
            .collect()
    };
    assert_eq!(
        bits(&whole),
        bits(&split),
        "a resumed run draws the masks of an uninterrupted one"
    );
    // Without the edge dropout the run is another.
    train(&[&drop[..11], &["--steps", "8", "--out", path(&plain)]].concat());
    assert_ne!(bits(&whole), bits(&plain));
    let fresh = path(&dir.path().join("fresh")).to_string();
    for (args, needle) in [
        (vec!["--dropout-embed", "0.2"], "needs --embed"),
        (
            vec!["--dropout-out", "1"],
            "--dropout-out 1 must be in [0, 1)",
        ),
        (
            vec!["--embed", "4", "--dropout-embed=-0.5"],
            "--dropout-embed -0.5",
        ),
        (vec!["--dropout-out", "x"], "--dropout-out"),
    ] {
        let args = [&["train", "--corpus", &corpus, "--out", &fresh][..], &args].concat();
        fails_with(&args, needle, true);
    }
    fails_with(
        &["train", "--resume", path(&whole), "--dropout-out", "0.5"],
        "--dropout-out cannot be changed",
        true,
    );
}

#[test]
fn init_range_draws_the_edges_in_range_and_keeps_the_layers() {
    let dir = tempfile::tempdir().unwrap();
    let (corpus, _) = write_corpus(dir.path(), "train");
    let (ranged, default) = (dir.path().join("ranged"), dir.path().join("default"));
    let model = [
        "--corpus", &corpus, "--embed", "8", "--layers", "2", "--steps", "0",
    ];
    train(
        &[
            &model[..],
            &["--init-range", "0.05", "--out", path(&ranged)],
        ]
        .concat(),
    );
    train(&[&model[..], &["--out", path(&default)]].concat());
    let (a, b) = (
        Checkpoint::load(&ranged).unwrap(),
        Checkpoint::load(&default).unwrap(),
    );
    let layout = ParamLayout::new(&a.config).unwrap();
    for spec in layout.specs() {
        let (x, y) = (&a.params[spec.range()], &b.params[spec.range()]);
        match spec.name.as_str() {
            "embed.weight" | "out.weight" => {
                assert!(x.iter().all(|v| v.abs() <= 0.05), "{}", spec.name);
                assert!(x.iter().any(|v| v.abs() > 0.04), "{}", spec.name);
                assert_ne!(x, y, "{}", spec.name);
            }
            "out.bias" => assert!(x.iter().all(|v| *v == 0.0)),
            name => assert_eq!(x, y, "{name} keeps PyTorch's initialisation"),
        }
    }
    let fresh = path(&dir.path().join("fresh")).to_string();
    for r in ["0", "-0.1", "nan", "inf"] {
        let range = format!("--init-range={r}");
        let args = ["train", "--corpus", &corpus, &range, "--out", &fresh];
        fails_with(&args, "--init-range", true);
    }
    fails_with(
        &[
            "train",
            "--corpus",
            &corpus,
            "--init",
            path(&ranged),
            "--init-range",
            "0.1",
            "--out",
            &fresh,
        ],
        "cannot change an --init model",
        true,
    );
    fails_with(
        &["train", "--resume", path(&ranged), "--init-range", "0.1"],
        "--init-range cannot be changed",
        true,
    );
}

// ---- the pieces under them -----------------------------------------------------------------

/// Takes batches from `source` and checks that `epochs_done` grows by one exactly with the
/// batch that ends each pass of `per_pass` batches.
fn check_epochs(source: &mut dyn unroll::data::TrainBatches, per_pass: usize, what: &str) {
    assert_eq!(source.epochs_done(), 0, "{what}");
    for i in 1..=3 * per_pass {
        source.next_batch().unwrap();
        let want = (i / per_pass) as u64;
        assert_eq!(source.epochs_done(), want, "{what}: batch {i}");
        // A resume continues from the saved position with the same count.
        let at = source.position();
        source.seek(&at).unwrap();
        assert_eq!(source.epochs_done(), want, "{what}: batch {i} after a seek");
    }
}

#[test]
fn epochs_done_grows_with_the_batch_that_ends_a_pass() {
    use unroll::data::TrainBatches;
    use unroll::data::corpus::{Corpus, CorpusText};
    use unroll::data::lines::{Lines, LinesSource};
    use unroll::data::lm::StreamSource;
    use unroll::data::pairs::{Expect, PairBatches, Pairs, StepKind};
    use unroll::data::vocab::VocabKind;
    let tokens: Vec<u32> = (0..101).map(|i| i % 7).collect();
    let mut stream = StreamSource::new(tokens, 2, 8).unwrap();
    let windows = stream.windows_per_epoch();
    check_epochs(&mut stream, windows, "streams");
    let text = "ab\nbca\n\nabcabcabc\nc\nba\n";
    let chars = Corpus::from_string(text.to_string(), VocabKind::Chars).unwrap();
    let vocab = chars.vocab().clone().for_lines();
    let owned = CorpusText::Owned(text.as_bytes().to_vec());
    let corpus = Corpus::from_text(owned, "lines", VocabKind::Chars, Some(vocab)).unwrap();
    let all = 0..corpus.text_bytes().len();
    let mut source = LinesSource::new(Lines::new(&corpus, all.clone(), 2, 4).unwrap()).unwrap();
    // The batches of a pass, counted from the saved position, whose epoch turns with the first
    // batch of the next pass.
    let mut probe = LinesSource::new(Lines::new(&corpus, all, 2, 4).unwrap()).unwrap();
    let mut taken = 0;
    while probe.position()["epoch"] == 0 {
        probe.next_batch().unwrap();
        taken += 1;
    }
    let per_pass = taken - 1;
    assert!(per_pass >= 2, "{per_pass}");
    check_epochs(&mut source, per_pass, "lines");
    let jsonl = (0..7)
        .map(|i| format!("{{\"x\": [{i}], \"y\": [0]}}\n"))
        .collect::<String>();
    let class = Expect {
        kind: StepKind::Class,
        size: None,
    };
    let data = Pairs::parse(jsonl.as_bytes(), class, Some(class)).unwrap();
    let mut pairs = PairBatches::new(&data, (0..7).collect(), 3, 1).unwrap();
    check_epochs(&mut pairs, 3, "pairs");
}

#[test]
fn run_settings_saved_before_these_options_load_with_them_off() {
    let run = crate::training::run_spec(5, 2, 8, OptimizerConfig::new(OptimizerKind::Sgd), 0.1, 99);
    let json = serde_json::to_value(&run).unwrap();
    for key in [
        "eval_each_epoch",
        "dropout_embed",
        "dropout_out",
        "val_file",
    ] {
        assert!(json.get(key).is_none(), "{key} is written when off");
    }
    let back: unroll::train::state::RunSpec = serde_json::from_value(json).unwrap();
    assert_eq!(back, run);
    assert_eq!(
        back.dropout_at(3),
        None,
        "no dropout anywhere: no seed either"
    );
    let edges = unroll::train::state::RunSpec {
        dropout_out: 0.3,
        ..run
    };
    let d = edges
        .dropout_at(3)
        .expect("the output dropout needs the step's seed");
    assert_eq!(d.p, 0.0, "no dropout between layers");
    let bad = unroll::train::state::RunSpec {
        dropout_embed: 1.0,
        ..edges
    };
    assert!(bad.validate().is_err());
}
