//! The command line end to end on small generated corpora: honest training steps, checkpoints,
//! evaluation output, and clear errors on bad input.

use std::path::Path;
use std::process::{Command, Output};

use unroll::data::corpus::Corpus;
use unroll::data::vocab::VocabKind;
use unroll::engine::cpu::CpuEngine;
use unroll::engine::{Batch, Engine, Inputs, Targets};
use unroll::model::{Checkpoint, ModelConfig, ParamLayout, init_params};
use unroll::train::optim::{OptimizerConfig, OptimizerKind};

use crate::common;

fn unroll(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_unroll"))
        .args(args)
        .output()
        .expect("the unroll binary runs")
}

fn ok(args: &[&str]) -> Output {
    let out = unroll(args);
    assert!(
        out.status.success(),
        "unroll {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a command that must fail: non-zero exit, a message containing `needle`, no panic.
fn fails(args: &[&str], needle: &str) {
    let out = unroll(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "unroll {args:?} succeeded");
    assert!(
        !err.contains("panicked"),
        "unroll {args:?} panicked:\n{err}"
    );
    assert!(
        err.contains(needle),
        "unroll {args:?}: {needle:?} not in:\n{err}"
    );
}

fn write_corpus(dir: &Path, name: &str) -> (String, String) {
    let mut rng = common::rng(name);
    let text = crate::training::generated_corpus(&mut rng, 200);
    let path = dir.join(format!("{name}.txt"));
    std::fs::write(&path, &text).unwrap();
    (path.to_str().unwrap().to_string(), text)
}

#[test]
fn zero_steps_writes_the_seeded_initial_model() {
    let dir = tempfile::tempdir().unwrap();
    let (corpus, text) = write_corpus(dir.path(), "zero");
    let out = dir.path().join("m");
    ok(&[
        "train",
        "--corpus",
        &corpus,
        "--steps",
        "0",
        "--hidden",
        "12",
        "--layers",
        "2",
        "--seed",
        "42",
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    let ckpt = Checkpoint::load(&out).unwrap();
    let vocab = Corpus::from_string(text, VocabKind::Chars)
        .unwrap()
        .vocab()
        .clone();
    let cfg = ModelConfig::language_model(vocab.len(), 12, 2);
    assert_eq!(ckpt.config, cfg);
    assert_eq!(ckpt.vocab.as_ref(), Some(&vocab));
    assert_eq!(
        ckpt.params,
        init_params(&cfg, &ParamLayout::new(&cfg).unwrap(), 42)
    );
}

#[test]
fn sgd_without_clipping_takes_the_exact_step_on_the_first_window() {
    let dir = tempfile::tempdir().unwrap();
    let (corpus, text) = write_corpus(dir.path(), "sgd");
    let out = dir.path().join("m");
    let t = 9;
    ok(&[
        "train",
        "--corpus",
        &corpus,
        "--steps",
        "1",
        "--hidden",
        "7",
        "--batch",
        "1",
        "--seq-len",
        &t.to_string(),
        "--optimizer",
        "sgd",
        "--lr",
        "0.3",
        "--clip",
        "0",
        "--seed",
        "5",
        "--sample",
        "0",
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    let trained = Checkpoint::load(&out).unwrap();
    // The same step by hand: tokens 0..T predicting 1..T+1 from a zero state.
    let corpus = Corpus::from_string(text, VocabKind::Chars).unwrap();
    let tokens = corpus.to_vec();
    let cfg = ModelConfig::language_model(corpus.vocab().len(), 7, 1);
    let params = init_params(&cfg, &ParamLayout::new(&cfg).unwrap(), 5);
    let mut engine = CpuEngine::<f64>::new(&cfg, &params).unwrap();
    engine.reset_state(1).unwrap();
    engine
        .upload_batch(&Batch {
            steps: t,
            rows: 1,
            inputs: Inputs::Tokens(tokens[..t].to_vec()),
            targets: Targets::Classes(tokens[1..=t].to_vec()),
            mask: None,
        })
        .unwrap();
    engine.zero_grads().unwrap();
    engine.forward().unwrap();
    engine.backward().unwrap();
    let expected: Vec<f64> = params
        .iter()
        .zip(engine.grads_native())
        .map(|(&p, &g)| p as f64 - 0.3 * g)
        .collect();
    common::assert_close(
        "sgd step",
        &common::to_f64(&trained.params),
        &expected,
        1e-5,
        1e-6,
    );
    assert_ne!(trained.params, params, "the step moved the parameters");
    let _ = OptimizerConfig::new(OptimizerKind::Sgd);
}

#[test]
fn train_sample_and_eval_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let (corpus, _) = write_corpus(dir.path(), "e2e");
    let out = dir.path().join("m");
    let o = out.to_str().unwrap();
    ok(&[
        "train",
        "--corpus",
        &corpus,
        "--steps",
        "120",
        "--hidden",
        "32",
        "--batch",
        "8",
        "--seq-len",
        "24",
        "--lr",
        "0.01",
        "--eval-every",
        "60",
        "--sample",
        "40",
        "--out",
        o,
        "--device",
        "cpu",
    ]);
    let s = ok(&[
        "sample", "--model", o, "--length", "80", "--prime", "the ", "--device", "cpu",
    ]);
    let text = String::from_utf8(s.stdout).unwrap();
    assert!(
        text.starts_with("the ") && text.trim_end().chars().count() >= 40,
        "{text:?}"
    );
    let e = ok(&["eval", "--model", o, "--corpus", &corpus, "--device", "cpu"]);
    let json: serde_json::Value = serde_json::from_slice(&e.stdout).unwrap();
    let loss = json["loss"].as_f64().unwrap();
    let bits = json["bits_per_token"].as_f64().unwrap();
    assert!((bits - loss / std::f64::consts::LN_2).abs() < 1e-9);
    let n_chars = std::fs::read_to_string(&corpus).unwrap().chars().count() as u64;
    assert_eq!(json["predictions"].as_u64().unwrap(), n_chars - 1);
    // The model learned something: well below a uniform guess over its vocabulary.
    let v = Checkpoint::load(&out).unwrap().config.input_size as f64;
    assert!(loss < 0.6 * v.ln(), "eval loss {loss} vs ln V {}", v.ln());
    // With one stream the state is carried across windows: the window length does not matter.
    let one_stream = |t: &str| {
        let e = ok(&[
            "eval",
            "--model",
            o,
            "--corpus",
            &corpus,
            "--batch",
            "1",
            "--seq-len",
            t,
            "--device",
            "cpu",
        ]);
        serde_json::from_slice::<serde_json::Value>(&e.stdout).unwrap()["loss"]
            .as_f64()
            .unwrap()
    };
    let (a, b) = (one_stream("17"), one_stream("1000"));
    assert!((a - b).abs() < 1e-5 * a, "{a} vs {b}");
}

#[test]
fn bad_input_gives_a_clear_error_and_no_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (corpus, _) = write_corpus(dir.path(), "bad");
    let d = dir.path().to_str().unwrap();
    fails(
        &["train", "--corpus", "/no/such/file.txt", "--out", d],
        "/no/such/file.txt",
    );
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    fails(
        &["train", "--corpus", empty.to_str().unwrap(), "--out", d],
        "is empty",
    );
    let binary = dir.path().join("bin.dat");
    std::fs::write(&binary, [0x66, 0x6f, 0xff, 0xfe, 0x00]).unwrap();
    fails(
        &["train", "--corpus", binary.to_str().unwrap(), "--out", d],
        "not valid UTF-8 at byte 2",
    );
    fails(
        &[
            "train",
            "--corpus",
            &corpus,
            "--batch",
            "500",
            "--seq-len",
            "100",
            "--out",
            d,
        ],
        "too few",
    );
    fails(
        &["train", "--corpus", &corpus, "--hidden", "0", "--out", d],
        "hidden size must be at least 1",
    );
    fails(
        &[
            "train",
            "--corpus",
            &corpus,
            "--val-frac",
            "1.5",
            "--out",
            d,
        ],
        "--val-frac",
    );
    fails(
        &[
            "train",
            "--corpus",
            &corpus,
            "--optimizer",
            "lbfgs",
            "--out",
            d,
        ],
        "lbfgs",
    );
    for (args, needle) in [
        (
            &["--cell", "gru", "--dropout", "1"][..],
            "dropout 1 is not in [0, 1)",
        ),
        (
            &["--cell", "gru", "--forget-bias-one"][..],
            "needs --cell lstm",
        ),
        (
            &["--cell", "lstm", "--activation", "relu"][..],
            "--cell rnn only",
        ),
        (&["--cell", "cnn"][..], "cnn"),
    ] {
        let base = ["train", "--corpus", &corpus, "--out", d];
        fails(&[&base[..], args].concat(), needle);
    }
    let junk = dir.path().join("junk");
    std::fs::create_dir(&junk).unwrap();
    std::fs::write(junk.join("model.safetensors"), b"not a checkpoint").unwrap();
    fails(
        &["sample", "--model", junk.to_str().unwrap()],
        "not a valid safetensors file",
    );
    fails(
        &["eval", "--model", dir.path().join("none").to_str().unwrap()],
        "none",
    );
}
