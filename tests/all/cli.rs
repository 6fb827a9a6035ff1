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

pub fn unroll(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_unroll"))
        .args(args)
        .output()
        .expect("the unroll binary runs")
}

pub fn ok(args: &[&str]) -> Output {
    let out = unroll(args);
    assert!(
        out.status.success(),
        "unroll {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a command that must fail: exit status 2 for a usage error (`usage`) or 1 for a runtime
/// one, a message containing `needle`, no panic.
pub(crate) fn fails_with(args: &[&str], needle: &str, usage: bool) {
    let out = unroll(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(if usage { 2 } else { 1 }),
        "unroll {args:?}: {err}"
    );
    assert!(
        !err.contains("panicked"),
        "unroll {args:?} panicked:\n{err}"
    );
    assert!(
        err.contains(needle),
        "unroll {args:?}: {needle:?} not in:\n{err}"
    );
}

fn misused(args: &[&str], needle: &str) {
    fails_with(args, needle, true)
}

pub(crate) fn write_corpus(dir: &Path, name: &str) -> (String, String) {
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
    let scored = |json: &serde_json::Value| json["model"].as_str().unwrap().to_string();
    assert_eq!(
        scored(&json),
        out.join("model.safetensors").display().to_string()
    );
    // --best scores the best validation model, exactly as naming its file does.
    let best_file = out.join("best.safetensors");
    let evaluated = |model: &str, best: &[&str]| -> serde_json::Value {
        let args = [
            &[
                "eval", "--model", model, "--corpus", &corpus, "--device", "cpu",
            ],
            best,
        ];
        serde_json::from_slice(&ok(&args.concat()).stdout).unwrap()
    };
    let (best, named) = (
        evaluated(o, &["--best"]),
        evaluated(best_file.to_str().unwrap(), &[]),
    );
    assert_eq!(scored(&best), best_file.display().to_string());
    assert_eq!(best["loss"], named["loss"]);
    misused(
        &["eval", "--model", best_file.to_str().unwrap(), "--best"],
        "not a directory",
    );
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
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    std::fs::write(p("empty.txt"), "").unwrap();
    std::fs::write(p("bin.dat"), [0x66, 0x6f, 0xff, 0xfe, 0x00]).unwrap();
    std::fs::create_dir(p("junk")).unwrap();
    std::fs::write(
        dir.path().join("junk/model.safetensors"),
        b"not a checkpoint",
    )
    .unwrap();
    let out = p("out");
    let train = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["train", "--out", &out, "--device", "cpu"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let no_such = p("no/such/file.txt");
    // (arguments, what the message must say, usage error (exit 2) or runtime error (exit 1))
    let cases: Vec<(Vec<String>, &str, bool)> = vec![
        (train(&["--corpus", &no_such]), "no/such/file.txt", false),
        (train(&["--corpus", &p("empty.txt")]), "is empty", false),
        (
            train(&["--corpus", dir.path().to_str().unwrap()]),
            "is a directory",
            false,
        ),
        (
            train(&["--corpus", &p("bin.dat")]),
            "not valid UTF-8 at byte 2 (use --vocab bytes",
            false,
        ),
        (
            train(&["--corpus", &corpus, "--batch", "500", "--seq-len", "100"]),
            "too few",
            false,
        ),
        (
            train(&["--corpus", &corpus, "--hidden", "0"]),
            "hidden size must be at least 1",
            true,
        ),
        (
            train(&["--corpus", &corpus, "--val-frac", "1.5"]),
            "--val-frac",
            true,
        ),
        (
            train(&["--corpus", &corpus, "--optimizer", "lbfgs"]),
            "lbfgs",
            true,
        ),
        (train(&["--corpus", &corpus, "--lr", "NaN"]), "--lr", true),
        (
            train(&["--corpus", &corpus, "--steps", "3", "--epochs", "1"]),
            "--epochs",
            true,
        ),
        (
            train(&["--corpus", &corpus, "--init", &p("junk")]),
            "not a valid safetensors file",
            false,
        ),
        (
            vec![
                "train".into(),
                "--resume".into(),
                p("junk"),
                "--hidden".into(),
                "8".into(),
            ],
            "--hidden cannot be changed when resuming",
            true,
        ),
        (
            vec!["train".into(), "--resume".into(), p("junk")],
            "state.safetensors",
            false,
        ),
        (
            vec!["sample".into(), "--model".into(), p("junk")],
            "not a valid safetensors file",
            false,
        ),
        (
            vec!["sample".into(), "--model".into(), p("none")],
            "none",
            false,
        ),
        (
            vec!["eval".into(), "--model".into(), p("none")],
            "none",
            false,
        ),
    ];
    for (args, needle, usage) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails_with(&args, needle, usage);
        assert!(
            !Path::new(&out).exists(),
            "unroll {args:?} wrote into the output directory"
        );
    }
    // A directory holding a run is not overwritten without --resume or --force.
    ok(&[
        "train", "--corpus", &corpus, "--steps", "0", "--hidden", "4", "--out", &out,
    ]);
    let before = std::fs::read(Path::new(&out).join("model.safetensors")).unwrap();
    misused(
        &["train", "--corpus", &corpus, "--steps", "0", "--out", &out],
        "already holds a run",
    );
    assert_eq!(
        std::fs::read(Path::new(&out).join("model.safetensors")).unwrap(),
        before
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
        let fresh = p("fresh");
        let base = ["train", "--corpus", &corpus, "--out", &fresh];
        misused(&[&base[..], args].concat(), needle);
        assert!(!Path::new(&fresh).exists());
    }
}

#[test]
fn divergence_goes_back_to_the_last_good_state_or_stops() {
    let dir = tempfile::tempdir().unwrap();
    let (corpus, _) = write_corpus(dir.path(), "divergence");
    let absurd = [
        "train",
        "--corpus",
        &corpus,
        "--hidden",
        "16",
        "--batch",
        "4",
        "--seq-len",
        "16",
        "--steps",
        "30",
        "--optimizer",
        "sgd",
        "--lr",
        "3e38",
        "--clip",
        "0",
        "--log-every",
        "5",
        "--eval-every",
        "10",
        "--sample",
        "0",
        "--device",
        "cpu",
    ];
    let stop = dir.path().join("stop");
    let out = unroll(
        &[
            &absurd[..],
            &["--on-nan", "stop", "--out", stop.to_str().unwrap()],
        ]
        .concat(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("diverged") && err.contains("last good checkpoint"),
        "{err}"
    );
    assert!(!err.contains("panicked"));
    // The checkpoint on disk is the last good one: it loads, so every parameter is finite.
    Checkpoint::load(&stop).unwrap();

    let reduce = dir.path().join("reduce");
    let out = ok(&[&absurd[..], &["--out", reduce.to_str().unwrap()]].concat());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("back to the state of step"), "{err}");
    Checkpoint::load(&reduce).unwrap();
    let state = unroll::train::state::TrainState::load(&reduce).unwrap();
    assert!(
        state.progress.lr_scale < 1.0,
        "the learning rate was reduced"
    );
}
