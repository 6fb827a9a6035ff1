//! What a run saves and reads back: never a value that is not finite (a run whose parameters
//! overflow is a divergence), saved settings held to the command line's checks on resume, the
//! same bytes for the same model, and a clear refusal to score a model whose outputs overflow.

use std::path::Path;

use unroll::model::Checkpoint;
use unroll::train::state::TrainState;

use crate::cli::{fails_with, ok, unroll, write_corpus};
use crate::common::TINY_CPU_RUN;

/// The first 20 KB of the built-in corpus, written into `dir`.
fn builtin_corpus_head(dir: &Path) -> String {
    let text = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/default_corpus.txt"
    ))
    .expect("the built-in corpus is in the repository");
    let path = dir.join("head.txt");
    std::fs::write(&path, &text[..20_000]).unwrap();
    path.to_str().unwrap().to_string()
}

/// Every checkpoint file `dir` holds loads (so every value in it is finite); how many there are.
fn assert_every_file_loads(dir: &Path) -> usize {
    let mut found = 0;
    for name in ["model.safetensors", "best.safetensors"] {
        let path = dir.join(name);
        if path.exists() {
            Checkpoint::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            found += 1;
        }
    }
    TrainState::load(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    found + 1
}

/// ReLU with a huge plain SGD step and no clipping: the parameters of units that the ReLU keeps
/// silent overflow while the loss and the gradient norm stay finite.
#[test]
fn parameters_that_overflow_are_a_divergence_and_never_saved() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = builtin_corpus_head(dir.path());
    let args = |policy: &str, out: &Path| -> Vec<String> {
        [
            "train",
            "--corpus",
            &corpus,
            "--activation",
            "relu",
            "--optimizer",
            "sgd",
            "--lr",
            "15625",
            "--clip",
            "0",
            "--hidden",
            "16",
            "--batch",
            "4",
            "--seq-len",
            "16",
            "--steps",
            "20",
            "--sample",
            "0",
            "--device",
            "cpu",
            "--on-nan",
            policy,
            "--out",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([out.to_str().unwrap().to_string()])
        .collect()
    };
    let stop = dir.path().join("stop");
    let stop_args = args("stop", &stop);
    let out = unroll(&stop_args.iter().map(String::as_str).collect::<Vec<_>>());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("is not finite") && err.contains("diverged"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_every_file_loads(&stop);
    let state = TrainState::load(&stop).unwrap();
    assert_eq!(
        state.progress.step, 0,
        "the last good state is the initial one"
    );

    let reduce = dir.path().join("reduce");
    let reduce_args = args("reduce-lr", &reduce);
    let out = unroll(&reduce_args.iter().map(String::as_str).collect::<Vec<_>>());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains("is not finite"),
        "the divergence is reported:\n{err}"
    );
    // Either the smaller rate trained to the end, or the rate fell too far and the run stopped;
    // both keep only finite files.
    assert!(matches!(out.status.code(), Some(0 | 1)), "{err}");
    assert_every_file_loads(&reduce);
    assert!(TrainState::load(&reduce).unwrap().progress.lr_scale < 1.0);
}

/// Trains the tiny CPU model of `common::TINY_CPU_RUN` on `corpus` into `out`, with `extra`.
fn tiny_train(corpus: &str, out: &Path, extra: &[&str]) {
    let mut args = vec!["train", "--corpus", corpus, "--out", out.to_str().unwrap()];
    args.extend(TINY_CPU_RUN.iter().flat_map(|(k, v)| [*k, *v]));
    args.extend(extra);
    ok(&args);
}

/// A finished small run in `dir/run`, and its corpus.
fn small_run(dir: &Path, name: &str) -> (std::path::PathBuf, String) {
    let (corpus, _) = write_corpus(dir, name);
    let run = dir.join("run");
    tiny_train(&corpus, &run, &["--steps", "2"]);
    (run, corpus)
}

#[test]
fn saved_settings_out_of_range_are_refused_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let (run, _) = small_run(dir.path(), "bad_state");
    let saved = TrainState::load(&run).unwrap();
    let resume = [
        "train",
        "--resume",
        run.to_str().unwrap(),
        "--steps",
        "3",
        "--device",
        "cpu",
        "--sample",
        "0",
    ];
    type Edit = fn(&mut TrainState);
    let cases: [(&str, Edit, &str); 12] = [
        (
            "lines",
            |s| s.run.sequences = unroll::data::Sequences::Lines,
            "line tokens",
        ),
        ("seq_len 0", |s| s.run.seq_len = 0, "--seq-len"),
        ("val_frac 2", |s| s.run.val_frac = 2.0, "--val-frac 2"),
        ("val_frac -0.5", |s| s.run.val_frac = -0.5, "--val-frac"),
        ("lr -1", |s| s.run.lr = -1.0, "--lr -1"),
        ("batch 0", |s| s.run.batch = 0, "--batch"),
        ("dropout 1.5", |s| s.run.dropout = 1.5, "dropout"),
        ("momentum 2", |s| s.run.optimizer.momentum = 2.0, "momentum"),
        ("clip -1", |s| s.run.optimizer.clip = -1.0, "clip"),
        ("val_limit 0", |s| s.run.val_limit = Some(0), "--val-tokens"),
        ("lr_scale 4", |s| s.progress.lr_scale = 4.0, "multiplier"),
        (
            "step every 0",
            |s| {
                s.run.schedule = unroll::train::schedule::LrSchedule::Step {
                    every: 0,
                    factor: 0.5,
                }
            },
            "--lr-decay-every",
        ),
    ];
    for (what, edit, needle) in cases {
        let mut state = saved.clone();
        edit(&mut state);
        state.save(&run).unwrap();
        let err = TrainState::load(&run).expect_err(what).to_string();
        assert!(
            err.contains("saved settings are not valid") && err.contains(needle),
            "{what}: {err}"
        );
        fails_with(&resume, needle, false);
    }
    // Settings that are legal alone but do not fit the saved run are refused further on, by
    // the data and the engine, as cleanly.
    let mismatched: [(&str, Edit, &str); 2] = [
        ("corpus_tokens", |s| s.run.corpus_tokens += 1, "changed"),
        ("state rows", |s| s.state_rows = 3, "state"),
    ];
    for (what, edit, needle) in mismatched {
        let mut state = saved.clone();
        edit(&mut state);
        if what == "state rows" {
            state.state = vec![0.0; 3 * state.config.state_size_per_row()];
        }
        state.save(&run).unwrap();
        fails_with(&resume, needle, false);
    }
    saved.save(&run).unwrap();
    ok(&resume);
}

#[test]
fn identical_runs_write_identical_files() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let (corpus, _) = write_corpus(dirs[0].path(), "identical");
    let runs: Vec<_> = dirs.iter().map(|d| d.path().join("run")).collect();
    for run in &runs {
        tiny_train(&corpus, run, &["--steps", "3", "--eval-every", "2"]);
    }
    for name in ["model.safetensors", "best.safetensors", "state.safetensors"] {
        let [a, b] = [&runs[0], &runs[1]].map(|r| std::fs::read(r.join(name)).unwrap());
        assert!(a == b, "{name} differs between two identical runs");
    }
}

#[test]
fn a_model_whose_outputs_overflow_is_not_scored() {
    let dir = tempfile::tempdir().unwrap();
    let (run, corpus) = small_run(dir.path(), "overflow");
    let mut model = Checkpoint::load(&run).unwrap();
    model.params.iter_mut().for_each(|p| *p = 3e38);
    let path = dir.path().join("huge.safetensors");
    model.save(&path).unwrap();
    let args = [
        "eval",
        "--model",
        path.to_str().unwrap(),
        "--corpus",
        &corpus,
        "--device",
        "cpu",
    ];
    fails_with(&args, "overflow", false);
    let out = unroll(&args);
    assert!(out.stdout.is_empty(), "no JSON with a null loss");
}

#[test]
fn predictions_of_a_model_whose_outputs_overflow_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = dir.path().join("echo.jsonl");
    ok(&[
        "example",
        "echo",
        "--count",
        "20",
        "--out",
        pairs.to_str().unwrap(),
    ]);
    let run = dir.path().join("run");
    ok(&[
        "train",
        "--pairs",
        pairs.to_str().unwrap(),
        "--input",
        "class",
        "--output",
        "class",
        "--hidden",
        "8",
        "--steps",
        "1",
        "--device",
        "cpu",
        "--out",
        run.to_str().unwrap(),
    ]);
    let mut model = Checkpoint::load(&run).unwrap();
    model.params.iter_mut().for_each(|p| *p = 3e38);
    let path = dir.path().join("huge.safetensors");
    model.save(&path).unwrap();
    let args = [
        "predict",
        "--model",
        path.to_str().unwrap(),
        "--pairs",
        pairs.to_str().unwrap(),
        "--device",
        "cpu",
    ];
    fails_with(&args, "overflow", false);
    assert!(
        unroll(&args).stdout.is_empty(),
        "no prediction holds a null"
    );
}

#[test]
fn a_model_or_state_with_a_value_that_is_not_finite_is_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let (run, _) = small_run(dir.path(), "refused");
    let before = [
        std::fs::read(run.join("model.safetensors")).unwrap(),
        std::fs::read(run.join("state.safetensors")).unwrap(),
    ];
    let mut model = Checkpoint::load(&run).unwrap();
    let i = model.params.len() / 2;
    model.params[i] = f32::INFINITY;
    let err = model.save_dir(&run).unwrap_err().to_string();
    assert!(err.contains("not saved") && err.contains("inf"), "{err}");
    let mut state = TrainState::load(&run).unwrap();
    state.optimizer.v[0] = f32::NAN;
    let err = state.save(&run).unwrap_err().to_string();
    assert!(
        err.contains("not saved") && err.contains("second moment"),
        "{err}"
    );
    let after = [
        std::fs::read(run.join("model.safetensors")).unwrap(),
        std::fs::read(run.join("state.safetensors")).unwrap(),
    ];
    assert!(before == after, "the files on disk are untouched");
    assert!(!run.join("model.safetensors.tmp").exists());
}
