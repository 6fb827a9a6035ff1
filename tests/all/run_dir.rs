//! A run directory belongs to one run: a second trainer is refused while the first holds the
//! lock (and a killed run leaves no stale lock), only unroll's own files are replaced, a failed
//! write leaves no temporary and no mix of two runs, and the corpus is checked on resume (its
//! content, an absolute and lossless path) and watched while a run trains on its memory map.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use unroll::data::corpus::{Corpus, Tokens};
use unroll::data::guard::{IN_MEMORY_MAX_VAR, report_truncation};
use unroll::data::vocab::VocabKind;
use unroll::train::rundir::{LOCK_FILE, RUN_FILES};
use unroll::train::state::TrainState;

use crate::common;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_unroll"))
}

/// A small CPU run of `steps` steps on `corpus` into `out`, with `extra` options.
fn train_args(corpus: &Path, out: &Path, steps: u64, extra: &[&str]) -> Vec<OsString> {
    let mut args = vec![OsString::from("train")];
    for (flag, value) in common::TINY_CPU_RUN {
        args.extend([flag.into(), value.into()]);
    }
    for (flag, value) in [("--corpus", corpus.as_os_str()), ("--out", out.as_os_str())] {
        args.push(flag.into());
        args.push(value.to_owned());
    }
    args.extend(["--steps".into(), steps.to_string().into()]);
    args.extend(extra.iter().map(OsString::from));
    args
}

fn run(args: &[impl AsRef<OsStr>]) -> Output {
    bin().args(args).output().unwrap()
}

/// Resumes `dir` up to `steps` steps.
fn resume(dir: &Path, steps: u64) -> Output {
    let steps = steps.to_string();
    let args = [
        "train", "--sample", "0", "--device", "cpu", "--steps", &steps,
    ];
    bin().args(args).arg("--resume").arg(dir).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts that `out` exited with `code` (not by a signal) saying every one of `needles`.
fn assert_refused(out: &Output, code: i32, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "{err}");
    for needle in needles {
        assert!(err.contains(needle), "no {needle:?} in: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

fn assert_ok(out: &Output) {
    assert!(out.status.success(), "{}", stderr(out));
}

/// A generated corpus of `sentences` sentences at `dir/name`.
fn write_corpus(dir: &Path, name: &OsStr, sentences: usize) -> PathBuf {
    let mut rng = common::rng("run_dir corpus");
    let path = dir.join(name);
    std::fs::write(
        &path,
        crate::training::generated_corpus(&mut rng, sentences),
    )
    .unwrap();
    path
}

/// Starts a run of a million steps, saving every 2, with its standard error in `log`, and
/// returns once its first state is saved.
fn start_long_run(corpus: &Path, out: &Path, log: &Path, env: &[(&str, &str)]) -> Child {
    let args = train_args(corpus, out, 1_000_000, &["--checkpoint-every", "2"]);
    let mut child = bin()
        .args(&args)
        .envs(env.iter().copied())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !out.join("state.safetensors").exists() {
        if let Some(status) = child.try_wait().unwrap() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("the run ended before training ({status}): {log}");
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no state saved");
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

/// Waits for `child` to exit by itself, at most `limit`.
fn wait_for(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("the run did not stop within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn saved_step(dir: &Path) -> u64 {
    TrainState::load(dir).unwrap().progress.step
}

#[test]
fn a_second_trainer_is_refused_while_a_run_holds_the_directory_and_a_killed_run_leaves_no_lock() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(dir.path(), "c.txt".as_ref(), 300);
    let out = dir.path().join("run");
    let mut first = start_long_run(&corpus, &out, &dir.path().join("first.log"), &[]);
    let pid = format!("process {}", first.id());
    let busy = ["is in use", "another unroll run", pid.as_str()];
    for extra in [&[][..], &["--force"][..]] {
        let second = run(&train_args(&corpus, &out, 3, extra));
        assert_refused(&second, 1, &busy);
    }
    assert_refused(&resume(&out, 3), 1, &busy);
    assert!(first.try_wait().unwrap().is_none(), "the first run died");
    // SIGKILL: the operating system releases the lock; the file stays, no longer held.
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(out.join(LOCK_FILE).exists());
    let step = saved_step(&out);
    assert_ok(&resume(&out, step + 2));
    assert_eq!(saved_step(&out), step + 2);
}

#[test]
fn a_directory_with_any_file_a_run_writes_is_refused_and_force_replaces_only_those() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(dir.path(), "c.txt".as_ref(), 100);
    let outside = dir.path().join("outside.txt");
    std::fs::write(&outside, "the user's").unwrap();
    let mut names: Vec<String> = RUN_FILES.iter().map(|n| n.to_string()).collect();
    names.extend(RUN_FILES.iter().map(|n| format!("{n}.tmp")));
    for name in &names {
        let out = dir.path().join(format!("only-{name}"));
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join(name), "the user's").unwrap();
        let refused = run(&train_args(&corpus, &out, 2, &[]));
        assert_refused(&refused, 2, &["already holds a run", name, "--force"]);
        assert_eq!(
            std::fs::read_to_string(out.join(name)).unwrap(),
            "the user's"
        );
    }
    // All of them at once, one a link out of the directory, beside a file of the user's.
    let out = dir.path().join("all");
    std::fs::create_dir(&out).unwrap();
    for name in &names {
        std::fs::write(out.join(name), "the user's").unwrap();
    }
    std::fs::remove_file(out.join("state.safetensors.tmp")).unwrap();
    std::os::unix::fs::symlink(&outside, out.join("state.safetensors.tmp")).unwrap();
    std::fs::write(out.join("notes.txt"), "keep me").unwrap();
    assert_ok(&run(&train_args(&corpus, &out, 2, &["--force"])));
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "the user's");
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "keep me"
    );
    for name in &names {
        let kept = std::fs::read(out.join(name)).is_ok_and(|b| b == b"the user's");
        assert!(!kept, "{name} was not replaced");
    }
    let mut left: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    let mut want: Vec<&str> = RUN_FILES.to_vec();
    want.extend([LOCK_FILE, "notes.txt"]);
    want.sort();
    assert_eq!(left, want);
}

#[test]
fn a_failed_save_over_a_forced_run_leaves_no_temporary_and_no_mix_of_two_runs() {
    if !cfg!(debug_assertions) {
        eprintln!("skipped: the write failure is injected in debug builds only");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(dir.path(), "c.txt".as_ref(), 100);
    let out = dir.path().join("run");
    assert_ok(&run(&train_args(&corpus, &out, 3, &[])));
    let old_model = std::fs::read(out.join("model.safetensors")).unwrap();
    // The disk is full when the new run first writes its model.
    let failed = bin()
        .args(train_args(&corpus, &out, 4, &["--force", "--seed", "7"]))
        .env("UNROLL_FAIL_WRITE", "model.safetensors")
        .output()
        .unwrap();
    assert_refused(&failed, 1, &["model.safetensors.tmp"]);
    for entry in std::fs::read_dir(&out).unwrap() {
        let path = entry.unwrap().path();
        assert!(
            path.extension() != Some("tmp".as_ref()),
            "{} was left",
            path.display()
        );
        assert_ne!(
            std::fs::read(&path).unwrap(),
            old_model,
            "{}",
            path.display()
        );
    }
    // What is there is the new run's alone, and it resumes.
    assert!(!out.join("model.safetensors").exists());
    assert_eq!(TrainState::load(&out).unwrap().run.seed, 7);
    assert_ok(&resume(&out, 5));
}

#[test]
fn a_corpus_truncated_under_a_mapped_run_stops_it_with_a_message_and_the_run_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(dir.path(), "c.txt".as_ref(), 3000);
    let text = std::fs::read(&corpus).unwrap();
    let out = dir.path().join("run");
    let log = dir.path().join("run.log");
    let mapped = [(IN_MEMORY_MAX_VAR, "0")];
    let mut child = start_long_run(&corpus, &out, &log, &mapped);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&corpus)
        .unwrap()
        .set_len(100)
        .unwrap();
    let status = wait_for(&mut child, Duration::from_secs(60));
    let err = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{status}: {err}");
    let name = corpus.display().to_string();
    for needle in [name.as_str(), "while training", "--resume"] {
        assert!(err.contains(needle), "no {needle:?} in: {err}");
    }
    std::fs::write(&corpus, &text).unwrap();
    let step = saved_step(&out);
    assert_ok(&resume(&out, step + 2));
}

#[test]
fn a_corpus_truncated_while_eval_reads_it_ends_with_a_message_not_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    let small = write_corpus(dir.path(), "small.txt".as_ref(), 200);
    let model = dir.path().join("model");
    assert_ok(&run(&train_args(&small, &model, 0, &[])));
    // Enough text that scoring it takes seconds, so the truncation meets a read.
    let text = std::fs::read(&small).unwrap();
    let big = dir.path().join("big.txt");
    std::fs::write(&big, text.repeat((40 << 20) / text.len() + 1)).unwrap();
    let log = std::fs::File::create(dir.path().join("eval.log")).unwrap();
    let mut child = bin()
        .args(["eval", "--device", "cpu", "--model"])
        .arg(&model)
        .arg("--corpus")
        .arg(&big)
        .env(IN_MEMORY_MAX_VAR, "0")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&big)
        .unwrap()
        .set_len(100)
        .unwrap();
    let status = wait_for(&mut child, Duration::from_secs(60));
    let err = std::fs::read_to_string(dir.path().join("eval.log")).unwrap();
    assert_eq!(status.code(), Some(1), "{status}: {err}");
    let name = big.display().to_string();
    for needle in [name.as_str(), "was truncated while it was scored", "again"] {
        assert!(err.contains(needle), "no {needle:?} in: {err}");
    }
}

/// The child half of the next test: reads a mapped corpus after truncating it.
#[test]
fn truncated_map_child() {
    let Some(path) = std::env::var_os("UNROLL_TEST_TRUNCATED_MAP") else {
        return;
    };
    let path = PathBuf::from(path);
    let corpus = Corpus::open(Some(&path), VocabKind::Bytes, None).unwrap();
    assert!(corpus.is_mapped());
    if std::env::var_os("UNROLL_TEST_TRAINING_NOTE").is_some() {
        report_truncation(&path, Path::new("the-run")).unwrap();
    }
    std::fs::File::create(&path).unwrap();
    let mut tokens = Vec::new();
    corpus.read(0, corpus.len(), &mut tokens);
    panic!("read {} tokens of a truncated map", tokens.len());
}

#[test]
fn a_read_of_a_truncated_map_ends_with_a_message_not_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(dir.path(), "c.txt".as_ref(), 3000);
    let text = std::fs::read(&corpus).unwrap();
    let child = |training: bool| {
        // The child truncates the corpus: each one starts from the whole text.
        std::fs::write(&corpus, &text).unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap());
        child
            .args(["run_dir::truncated_map_child", "--exact", "--nocapture"])
            .env("UNROLL_TEST_TRUNCATED_MAP", &corpus)
            .env(IN_MEMORY_MAX_VAR, "0")
            .stdout(Stdio::null());
        if training {
            child.env("UNROLL_TEST_TRAINING_NOTE", "1");
        }
        child.output().unwrap()
    };
    let name = corpus.display().to_string();
    // The training's note; and, without one, the plain note that mapping the corpus set.
    for (training, says) in [
        (true, "was truncated while training"),
        (false, "while it was read"),
    ] {
        let out = child(training);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{:?}: {err}", out.status);
        for needle in [name.as_str(), says] {
            assert!(err.contains(needle), "no {needle:?} in: {err}");
        }
        assert_eq!(err.contains("the-run"), training, "{err}");
    }
}

#[test]
fn a_corpus_with_other_content_of_the_same_length_is_refused_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(dir.path(), "c.txt".as_ref(), 200);
    let out = dir.path().join("run");
    assert_ok(&run(&train_args(&corpus, &out, 2, &[])));
    let text = std::fs::read_to_string(&corpus).unwrap();
    let mut lines: Vec<&str> = text.split_inclusive('\n').collect();
    lines.reverse();
    let shuffled = lines.concat();
    assert_eq!(shuffled.len(), text.len());
    assert_ne!(shuffled, text);
    std::fs::write(&corpus, &shuffled).unwrap();
    let name = corpus.display().to_string();
    assert_refused(
        &resume(&out, 4),
        1,
        &[name.as_str(), "changed since the run was started"],
    );
    // A run saved before the fingerprint existed resumes, saying so once, and keeps it.
    let mut state = TrainState::load(&out).unwrap();
    state.run.corpus_fingerprint = None;
    state.save(&out).unwrap();
    let resumed = resume(&out, 4);
    assert_ok(&resumed);
    assert!(stderr(&resumed).contains("without a fingerprint"));
    assert!(
        TrainState::load(&out)
            .unwrap()
            .run
            .corpus_fingerprint
            .is_some()
    );
    let again = resume(&out, 5);
    assert_ok(&again);
    assert!(!stderr(&again).contains("without a fingerprint"));
}

#[cfg(unix)]
#[test]
fn a_relative_non_utf8_corpus_path_resumes_from_another_directory() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let name = OsStr::from_bytes(b"corpus-\xff\xfe.txt");
    let corpus = write_corpus(dir.path(), name, 100);
    let out = dir.path().join("run");
    let fresh = bin()
        .args(train_args(Path::new(name), &out, 2, &[]))
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_ok(&fresh);
    let run = TrainState::load(&out).unwrap().run;
    assert_eq!(run.corpus_path(), Some(corpus.canonicalize().unwrap()));
    let steps = ["train", "--resume"];
    let resumed = bin()
        .args(steps)
        .arg(&out)
        .args(["--steps", "4", "--sample", "0", "--device", "cpu"])
        .current_dir("/")
        .output()
        .unwrap();
    assert_ok(&resumed);
    assert_eq!(saved_step(&out), 4);
}

#[cfg(unix)]
#[test]
fn a_relative_non_utf8_pairs_path_resumes_from_another_directory() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let name = OsStr::from_bytes(b"pairs-\xff.jsonl");
    let example = [
        "example", "parity", "--count", "40", "--length", "3..6", "--out",
    ];
    let made = bin()
        .args(example)
        .arg(name)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_ok(&made);
    let out = dir.path().join("run");
    let options = ["--input", "real", "--output", "binary", "--hidden", "8"];
    let fresh = bin()
        .args(["train", "--pairs"])
        .arg(name)
        .args(options)
        .args(["--batch", "4", "--steps", "2", "--device", "cpu", "--out"])
        .arg(&out)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_ok(&fresh);
    let run = TrainState::load(&out).unwrap().run;
    let canonical = dir.path().join(name).canonicalize().unwrap();
    assert_eq!(run.corpus_path(), Some(canonical));
    let resumed = bin()
        .args(["train", "--resume"])
        .arg(&out)
        .args(["--steps", "4", "--device", "cpu"])
        .current_dir("/")
        .output()
        .unwrap();
    assert_ok(&resumed);
    assert_eq!(saved_step(&out), 4);
}
