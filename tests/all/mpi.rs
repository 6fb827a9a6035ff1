//! Data-parallel training under `mpirun` (the `mpi` feature): N ranks train the run one process
//! trains with the same global batch, in every data mode, for every cell and optimizer; a run
//! saved by N ranks resumes with M; an interrupted or killed job leaves a resumable run; bad
//! set-ups are refused with exit status 2 before anything is written. The tests skip with a
//! notice where `mpirun` is missing, except when `CI` is set.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use unroll::model::Checkpoint;
use unroll::train::state::TrainState;

use crate::cli::{ok, write_corpus};
use crate::common;

pub const BIN: &str = env!("CARGO_BIN_EXE_unroll");

/// One MPI job at a time: the ranks of several jobs would share the machine's few cores.
static ONE_JOB: Mutex<()> = Mutex::new(());

/// The right to start MPI jobs, or `None` (after a notice) where `mpirun` is missing; in CI
/// (`CI` set) a missing `mpirun` fails the test.
pub fn mpi_jobs(test: &str) -> Option<MutexGuard<'static, ()>> {
    let found = Command::new("mpirun")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: CI is set but mpirun is not on PATH"
        );
        eprintln!("{test}: skipped, mpirun is not on PATH");
        return None;
    }
    Some(ONE_JOB.lock().unwrap_or_else(|e| e.into_inner()))
}

/// `mpirun -n ranks` of `program args`, as root too, with more ranks than cores and the
/// engines' threads free to use any core.
pub fn mpirun_command(ranks: usize, program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .args(["--oversubscribe", "--bind-to", "none", "-n"])
        .arg(ranks.to_string())
        .arg(program)
        .args(args);
    cmd
}

/// `unroll args` on `ranks` processes under `mpirun`.
fn mpirun(ranks: usize, args: &[&str]) -> Output {
    mpirun_command(ranks, BIN, args)
        .output()
        .expect("mpirun runs")
}

/// [`mpirun`] that must succeed.
fn mpirun_ok(ranks: usize, args: &[&str]) -> Output {
    let out = mpirun(ranks, args);
    assert!(
        out.status.success(),
        "mpirun -n {ranks} unroll {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `unroll args` on one process (`ranks` = 1, without a launcher) or on `ranks` under `mpirun`.
fn run_on(ranks: usize, args: &[&str]) -> Output {
    match ranks {
        1 => ok(args),
        n => mpirun_ok(n, args),
    }
}

/// Arguments as the helpers take them.
fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The parameters of the model saved in `dir`.
fn params(dir: &Path) -> Vec<f32> {
    Checkpoint::load(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .params
}

/// Every parameter of `dir`'s model within `rtol` (relative) of `reference`'s, and the training
/// moved them (the comparison would be empty between two untrained models).
fn assert_same_model(what: &str, dir: &Path, reference: &Path, rtol: f64) {
    let (p, r) = (params(dir), params(reference));
    common::assert_close(what, &common::to_f64(&p), &common::to_f64(&r), rtol, rtol);
}

/// The options every run of these tests shares: tiny, on the CPU, no sample.
const TINY: [&str; 6] = ["--hidden", "12", "--sample", "0", "--device", "cpu"];

/// The optimizer options and the tolerance of a comparison after its steps: the summation order
/// of the gradients differs between N ranks and one, which Adam's division by the root of the
/// second moment amplifies (up to a step of the learning rate for a gradient near 0, hence
/// Adam's default rate).
fn optimizer(name: &str) -> ([&'static str; 4], f64) {
    match name {
        "sgd" => (["--optimizer", "sgd", "--lr", "0.5"], 1e-5),
        "adam" => (["--optimizer", "adam", "--lr", "0.002"], 1e-4),
        other => panic!("no optimizer {other} in these tests"),
    }
}

/// One comparison: `cell` trained with `opt` for 5 steps on `ranks` processes and on one.
struct Case {
    cell: &'static str,
    ranks: usize,
    opt: &'static str,
    /// Evaluate after every step: each evaluation compares a checksum of the parameters across
    /// the ranks, so a passing run had them bitwise equal on every rank throughout.
    eval_every_step: bool,
}

impl Case {
    const fn new(cell: &'static str, ranks: usize, opt: &'static str, eval: bool) -> Self {
        Case {
            cell,
            ranks,
            opt,
            eval_every_step: eval,
        }
    }

    /// Trains with `data` (the data options) on `ranks` processes and on one into `dir`, and
    /// compares the models.
    fn check(&self, dir: &Path, mode: &str, data: &[&str]) {
        let (opt, rtol) = optimizer(self.opt);
        let eval = if self.eval_every_step { "1" } else { "0" };
        let name = format!("{mode}-{}-{}-n{}", self.cell, self.opt, self.ranks);
        let (one, many) = (dir.join(format!("{name}-1")), dir.join(&name));
        let args = |out: &Path| -> Vec<String> {
            let fixed = ["train", "--cell", self.cell, "--steps", "5"];
            (fixed.iter().chain(&opt).chain(&TINY).chain(data))
                .chain(&["--eval-every", eval, "--seed", "7", "--out", path(out)])
                .map(|s| s.to_string())
                .collect()
        };
        ok(&strs(&args(&one)));
        let out = mpirun_ok(self.ranks, &strs(&args(&many)));
        let log = String::from_utf8_lossy(&out.stderr);
        let note = format!("data-parallel: {} processes over MPI", self.ranks);
        assert!(log.contains(&note), "{name}: {note:?} not in:\n{log}");
        assert_same_model(&name, &many, &one, rtol);
    }
}

/// Every case of `cases` in data mode `mode` (the options `data`).
fn check_all(dir: &Path, mode: &str, data: &[&str], cases: &[Case]) {
    for case in cases {
        case.check(dir, mode, data);
    }
}

#[test]
fn ranks_train_the_one_process_run_on_a_stream() {
    let Some(_job) = mpi_jobs("ranks on a stream") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (corpus, _) = write_corpus(dir.path(), "stream");
    let data = ["--corpus", &corpus, "--batch", "6", "--seq-len", "10"];
    let cases = [
        Case::new("rnn", 2, "sgd", true),
        Case::new("gru", 3, "adam", false),
        Case::new("lstm", 3, "sgd", false),
    ];
    check_all(dir.path(), "stream", &data, &cases);
}

#[test]
fn ranks_train_the_one_process_run_on_lines() {
    let Some(_job) = mpi_jobs("ranks on lines") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (corpus, _) = write_corpus(dir.path(), "lines");
    let data = [
        "--corpus",
        &corpus,
        "--sequences",
        "lines",
        "--batch",
        "6",
        "--seq-len",
        "16",
    ];
    let cases = [
        Case::new("rnn", 3, "adam", false),
        Case::new("gru", 2, "sgd", false),
        Case::new("lstm", 2, "adam", true),
    ];
    check_all(dir.path(), "lines", &data, &cases);
}

/// A pairs file of class ids: sequences of 1 to 9 steps of `classes` classes, y a function of
/// x, from the test's seed.
fn write_pairs(dir: &Path, name: &str, count: usize, classes: u32) -> PathBuf {
    use rand::RngExt;
    let mut rng = common::rng(name);
    let mut text = String::new();
    for _ in 0..count {
        let len = rng.random_range(1..10usize);
        let x: Vec<u32> = (0..len).map(|_| rng.random_range(0..classes)).collect();
        let y: Vec<String> = (0..len)
            .map(|t| ((x[t] + x[t.saturating_sub(1)]) % classes).to_string())
            .collect();
        let x: Vec<String> = x.iter().map(u32::to_string).collect();
        text.push_str(&format!(
            "{{\"x\": [{}], \"y\": [{}]}}\n",
            x.join(", "),
            y.join(", ")
        ));
    }
    let file = dir.join(format!("{name}.jsonl"));
    std::fs::write(&file, text).unwrap();
    file
}

#[test]
fn ranks_train_the_one_process_run_on_pairs() {
    let Some(_job) = mpi_jobs("ranks on pairs") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = write_pairs(dir.path(), "pairs", 60, 5);
    let data = [
        "--pairs",
        path(&file),
        "--input",
        "class",
        "--output",
        "class",
        "--batch",
        "12",
    ];
    let cases = [
        Case::new("rnn", 2, "adam", true),
        Case::new("gru", 3, "sgd", true),
        Case::new("lstm", 3, "adam", false),
    ];
    check_all(dir.path(), "pairs", &data, &cases);
}

#[test]
fn ranks_draw_the_dropout_masks_of_one_process() {
    let Some(_job) = mpi_jobs("dropout on ranks") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (corpus, _) = write_corpus(dir.path(), "dropout");
    let data = ["--corpus", &corpus, "--batch", "6", "--seq-len", "8"];
    let layers = ["--layers", "2", "--dropout", "0.3"];
    let embed = ["--embed", "8", "--dropout-embed", "0.2"];
    Case::new("lstm", 2, "sgd", true).check(dir.path(), "dropout", &[&data[..], &layers].concat());
    Case::new("gru", 2, "sgd", false).check(
        dir.path(),
        "dropout-embed",
        &[&data[..], &layers, &embed].concat(),
    );
}

/// `unroll train --resume dir --steps steps` on `ranks` processes (one without a launcher).
fn resume_on(ranks: usize, dir: &Path, steps: u64) -> Output {
    let steps = steps.to_string();
    run_on(
        ranks,
        &[
            "train",
            "--resume",
            path(dir),
            "--steps",
            &steps,
            "--sample",
            "0",
            "--device",
            "cpu",
        ],
    )
}

/// A stream-mode run of `cell` for 4 steps on `first` processes, resumed for 4 more on `then`,
/// equals 8 steps straight on one: the saved state holds the carried state of every stream.
fn check_resume_across(dir: &Path, corpus: &str, cell: &str, (first, then): (usize, usize)) {
    let name = format!("{cell}-{first}-then-{then}");
    let (split, straight) = (dir.join(&name), dir.join(format!("{name}-straight")));
    let (opt, rtol) = optimizer("sgd");
    let args = |out: &Path, steps: &'static str| -> Vec<String> {
        let fixed = [
            "train", "--corpus", corpus, "--cell", cell, "--steps", steps,
        ];
        (fixed.iter().chain(&opt).chain(&TINY))
            .chain(&["--batch", "6", "--seq-len", "8", "--seed", "3"])
            .chain(&["--eval-every", "3", "--out", path(out)])
            .map(|s| s.to_string())
            .collect()
    };
    ok(&strs(&args(&straight, "8")));
    run_on(first, &strs(&args(&split, "4")));
    let state = TrainState::load(&split).unwrap();
    assert_eq!((state.progress.step, state.state_rows), (4, 6), "{name}");
    resume_on(then, &split, 8);
    assert_same_model(&name, &split, &straight, rtol);
}

#[test]
fn a_run_saved_by_some_ranks_resumes_on_others() {
    let Some(_job) = mpi_jobs("resume across rank counts") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (corpus, _) = write_corpus(dir.path(), "resume");
    check_resume_across(dir.path(), &corpus, "gru", (2, 1));
    check_resume_across(dir.path(), &corpus, "lstm", (1, 3));
}

/// A long run of a tiny model on `ranks` processes under `mpirun` into `out`, started in the
/// background, saving at every step.
fn start_long_run(ranks: usize, corpus: &str, out: &Path) -> Child {
    let args = [
        "train",
        "--corpus",
        corpus,
        "--steps",
        "1000000",
        "--batch",
        "6",
        "--seq-len",
        "8",
        "--checkpoint-every",
        "1",
        "--eval-every",
        "0",
    ];
    mpirun_command(
        ranks,
        BIN,
        &[&args[..], &TINY, &["--out", path(out)]].concat(),
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("mpirun starts")
}

/// The step of the training state saved in `dir`; 0 before the first (files are replaced by
/// rename, so a read never sees half of one).
fn saved_step(dir: &Path) -> u64 {
    match dir.join("state.safetensors").exists() {
        true => TrainState::load(dir).unwrap().progress.step,
        false => 0,
    }
}

/// Waits until `job` has saved the training state of a step after the first in `out`, and
/// returns the pids of its ranks (the children of `mpirun`).
fn wait_for_state(job: &mut Child, out: &Path) -> Vec<i32> {
    let start = Instant::now();
    while saved_step(out) < 2 {
        if let Some(status) = job.try_wait().unwrap() {
            panic!("the job ended before saving: {status}");
        }
        assert!(start.elapsed() < Duration::from_secs(120), "no state saved");
        std::thread::sleep(Duration::from_millis(100));
    }
    children(job.id() as i32)
}

/// The processes whose parent is `parent` (from /proc).
fn children(parent: i32) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: the name may hold spaces and parentheses.
        let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        if after.split_whitespace().nth(1) == Some(&parent.to_string()) {
            found.push(pid);
        }
    }
    found.sort();
    found
}

/// Sends `signal` to `pid`.
fn signal(pid: i32, signal: i32) {
    // SAFETY: kill(2) on a process this test started; no memory is involved.
    let r = unsafe { libc::kill(pid, signal) };
    assert_eq!(r, 0, "kill({pid}, {signal})");
}

/// The saved run in `dir` resumes on one process for 2 more steps and finishes.
fn resumes(dir: &Path) {
    let step = TrainState::load(dir).unwrap().progress.step;
    assert!(step > 0, "{}: saved at step 0", dir.display());
    resume_on(1, dir, step + 2);
    assert_eq!(TrainState::load(dir).unwrap().progress.step, step + 2);
}

#[test]
fn a_killed_rank_leaves_a_resumable_run() {
    let Some(_job) = mpi_jobs("a killed rank") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (corpus, _) = write_corpus(dir.path(), "killed");
    let out = dir.path().join("run");
    let mut job = start_long_run(2, &corpus, &out);
    let ranks = wait_for_state(&mut job, &out);
    assert_eq!(ranks.len(), 2, "ranks of mpirun: {ranks:?}");
    signal(ranks[1], libc::SIGKILL);
    let ended = job.wait_with_output().unwrap();
    assert!(!ended.status.success(), "the job survived a killed rank");
    resumes(&out);
}

/// Interrupts a long run on `ranks` processes by sending SIGINT to mpirun (`to_rank` None) or to
/// one rank: every rank stops after the same step, the run is saved once and resumes.
fn check_interrupted(dir: &Path, corpus: &str, ranks: usize, to_rank: Option<usize>) {
    let out = dir.join(format!("run-{ranks}-{to_rank:?}"));
    let mut job = start_long_run(ranks, corpus, &out);
    let pids = wait_for_state(&mut job, &out);
    assert_eq!(pids.len(), ranks, "ranks of mpirun: {pids:?}");
    let target = to_rank.map_or(job.id() as i32, |r| pids[r]);
    signal(target, libc::SIGINT);
    let ended = job.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&ended.stderr);
    let said = log.matches("interrupted after step").count();
    assert_eq!(
        said, 1,
        "{to_rank:?}: the interruption said {said} times:\n{log}"
    );
    let step = TrainState::load(&out).unwrap().progress.step;
    let saved = format!("interrupted after step {step}:");
    assert!(log.contains(&saved), "{saved:?} not in:\n{log}");
    resumes(&out);
}

#[test]
fn sigint_stops_every_rank_after_one_step_and_saves_once() {
    let Some(_job) = mpi_jobs("SIGINT to a job") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (corpus, _) = write_corpus(dir.path(), "sigint");
    // mpirun passes a SIGINT on as SIGTERM to every rank (and SIGKILL a second later).
    check_interrupted(dir.path(), &corpus, 2, None);
    // One rank alone interrupted stops every rank at its step.
    check_interrupted(dir.path(), &corpus, 3, Some(2));
}

/// `out` has exit status 2, says `needle` and did not panic, and `dir` was not created.
fn refused(what: &str, out: &Output, needle: &str, dir: &Path) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{what}: {err}");
    assert!(!err.contains("panicked"), "{what} panicked:\n{err}");
    assert!(err.contains(needle), "{what}: {needle:?} not in:\n{err}");
    assert!(!dir.exists(), "{what}: {} was written", dir.display());
}

#[test]
fn a_batch_that_does_not_split_over_the_ranks_is_refused() {
    let Some(_job) = mpi_jobs("batch over ranks") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (corpus, _) = write_corpus(dir.path(), "batch");
    let out = dir.path().join("run");
    let args = [
        "train",
        "--corpus",
        &corpus,
        "--steps",
        "2",
        "--batch",
        "5",
        "--out",
        path(&out),
    ];
    let job = mpirun(2, &[&args[..], &TINY].concat());
    refused(
        "--batch 5 on 2 ranks",
        &job,
        "--batch 5 does not split into 2",
        &out,
    );
    let file = write_pairs(dir.path(), "few", 20, 3);
    let pairs = [
        "--pairs",
        path(&file),
        "--input",
        "class",
        "--output",
        "class",
    ];
    let args = ["train", "--steps", "2", "--batch", "4", "--out", path(&out)];
    let job = mpirun(3, &[&args[..], &pairs, &TINY].concat());
    refused(
        "--batch 4 pairs on 3 ranks",
        &job,
        "--batch 4 does not split into 3",
        &out,
    );
}

/// `unroll train` of 2 steps into `out` on `ranks` processes, each with the options `options`
/// as the shell expands them on the rank (`$OMPI_COMM_WORLD_RANK` tells which).
fn train_per_rank(ranks: usize, options: &str, out: &Path) -> Output {
    let script = format!(
        "exec \"$0\" train {options} --steps 2 --batch 6 --seq-len 8 --hidden 8 --sample 0 \
         --device cpu --out {}",
        path(out)
    );
    mpirun_command(ranks, "sh", &["-c", &script, BIN])
        .output()
        .expect("mpirun runs")
}

#[test]
fn ranks_that_read_different_data_or_options_are_refused() {
    let Some(_job) = mpi_jobs("different data or options") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Two corpora of one vocabulary and length: the same lines in another order.
    let (corpus, text) = write_corpus(dir.path(), "corpus");
    let mut lines: Vec<&str> = text.lines().collect();
    std::fs::write(dir.path().join("c0.txt"), &text).unwrap();
    lines.reverse();
    std::fs::write(dir.path().join("c1.txt"), lines.join("\n") + "\n").unwrap();
    let out = dir.path().join("run");
    let corpora = format!("--corpus {}/c$OMPI_COMM_WORLD_RANK.txt", path(dir.path()));
    let job = train_per_rank(2, &corpora, &out);
    let said = "rank 1 of 2 has other settings or data";
    refused("different corpora", &job, said, &out);
    // Rank 2 of 3 with another learning rate.
    let lr = format!("--corpus {corpus} --lr 0.$((1 + OMPI_COMM_WORLD_RANK / 2))");
    let job = train_per_rank(3, &lr, &out);
    let said = "rank 2 of 3 has other settings or data";
    refused("another --lr", &job, said, &out);
}

#[test]
fn an_mpi_world_that_is_not_the_launchers_is_refused() {
    let Some(_job) = mpi_jobs("a world not the launcher's") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (corpus, _) = write_corpus(dir.path(), "world");
    let out = dir.path().join("run");
    // Started without mpirun, MPI makes a world of one process.
    for (var, value) in [("OMPI_COMM_WORLD_SIZE", "3"), ("PMI_SIZE", "2")] {
        let job = Command::new(BIN)
            .args([
                "train",
                "--corpus",
                &corpus,
                "--steps",
                "2",
                "--out",
                path(&out),
            ])
            .args(TINY)
            .env(var, value)
            .output()
            .unwrap();
        let said = format!("the launcher started {value} processes ({var}={value})");
        refused(var, &job, &said, &out);
        refused(var, &job, "sees 1", &out);
    }
}

#[test]
fn gpu_ranks_train_the_one_process_cpu_run() {
    let Some(_job) = mpi_jobs("gpu ranks") else {
        return;
    };
    if common::gpu("gpu ranks").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (corpus, _) = write_corpus(dir.path(), "gpu");
    let (cpu, gpu) = (dir.path().join("cpu"), dir.path().join("gpu"));
    let (opt, _) = optimizer("sgd");
    let args = |device: &'static str, out: &Path| -> Vec<String> {
        let fixed = [
            "train", "--corpus", &corpus, "--cell", "gru", "--steps", "3",
        ];
        (fixed.iter().chain(&opt))
            .chain(&[
                "--hidden",
                "8",
                "--batch",
                "4",
                "--seq-len",
                "5",
                "--sample",
                "0",
            ])
            .chain(&["--eval-every", "3", "--val-tokens", "40", "--seed", "5"])
            .chain(&["--device", device, "--out", path(out)])
            .map(|s| s.to_string())
            .collect()
    };
    ok(&strs(&args("cpu", &cpu)));
    let out = mpirun_ok(2, &strs(&args("gpu", &gpu)));
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(log.matches("(rank ").count(), 2, "{log}");
    assert_same_model("gpu ranks", &gpu, &cpu, 1e-4);
}
