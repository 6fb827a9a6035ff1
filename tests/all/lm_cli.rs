//! The language-model command line at scale and over time: exact resume, Ctrl-C, byte
//! vocabularies, corpora read through the sparse index, and a large corpus in bounded memory.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::RngExt;
use unroll::data::corpus::{Corpus, CorpusText, Tokens};
use unroll::data::vocab::{Vocab, VocabKind};
use unroll::model::Checkpoint;
use unroll::train::state::TrainState;

use crate::common;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_unroll"))
}

fn run_ok(args: &[&str]) {
    let out = bin().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "unroll {args:?}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn corpus_file(dir: &Path, sentences: usize, name: &str) -> String {
    let mut rng = common::rng(name);
    let path = dir.join("corpus.txt");
    std::fs::write(
        &path,
        crate::training::generated_corpus(&mut rng, sentences),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

fn params(dir: &Path) -> Vec<u32> {
    Checkpoint::load(dir)
        .unwrap()
        .params
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

/// Starts `unroll` with `args` for a million steps into `run` and returns once it has reported
/// three times (so it is training).
fn start_long_run(args: &[&str], run: &Path) -> std::process::Child {
    start_run_after(args, run, 3)
}

/// Starts a run of a million steps whose standard error goes to `run` + ".log", and returns
/// once `metrics.jsonl` has `lines` lines (it is training; with 0 lines, once the state of step
/// 0 is saved).
fn start_run_after(args: &[&str], run: &Path, lines: usize) -> std::process::Child {
    let log = std::fs::File::create(run.with_extension("log")).unwrap();
    let mut child = bin()
        .args(args)
        .args(["--steps", "1000000", "--out", run.to_str().unwrap()])
        .stderr(log)
        .spawn()
        .unwrap();
    let metrics = run.join("metrics.jsonl");
    let start = Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |s| s.lines().count()) < lines
        || !run.join("state.safetensors").exists()
    {
        if let Some(status) = child.try_wait().unwrap() {
            let log = std::fs::read_to_string(run.with_extension("log")).unwrap_or_default();
            panic!("the run ended before training ({status}): {log}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "training did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

/// Continues the run in `run` on the CPU to `steps` steps in all, without a sample.
fn resume_to(run: &Path, steps: u64) {
    let steps = steps.to_string();
    run_ok(&[
        "train",
        "--resume",
        run.to_str().unwrap(),
        "--steps",
        &steps,
        "--sample",
        "0",
        "--device",
        "cpu",
    ]);
}

/// Sends SIGINT to `child`.
fn interrupt(child: &std::process::Child) {
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
}

const SMALL: [&str; 13] = [
    "train",
    "--hidden",
    "24",
    "--batch",
    "4",
    "--seq-len",
    "16",
    "--eval-every",
    "7",
    "--sample",
    "0",
    "--device",
    "cpu",
];

#[test]
fn resume_continues_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus_file(dir.path(), 300, "resume");
    let (whole, half) = (dir.path().join("whole"), dir.path().join("half"));
    for opt in ["adam", "momentum"] {
        let common = [
            &SMALL[..],
            &[
                "--corpus",
                &corpus,
                "--optimizer",
                opt,
                "--lr-schedule",
                "cosine",
            ],
        ]
        .concat();
        run_ok(
            &[
                &common[..],
                &["--steps", "30", "--out", whole.to_str().unwrap(), "--force"],
            ]
            .concat(),
        );
        run_ok(
            &[
                &common[..],
                &[
                    "--steps",
                    "30",
                    "--out",
                    half.to_str().unwrap(),
                    "--force",
                    "--checkpoint-every",
                    "13",
                ],
            ]
            .concat(),
        );
        // Stop at 13 by resuming a copy of the state saved there: train 13, then resume to 30.
        run_ok(
            &[
                &common[..],
                &["--steps", "13", "--out", half.to_str().unwrap(), "--force"],
            ]
            .concat(),
        );
        let state = TrainState::load(&half).unwrap();
        assert_eq!(state.progress.step, 13);
        // The cosine schedule was set for 13 steps there; a resume keeps the schedule of the run,
        // so compare against a run whose schedule is also 13 long: extend both with --steps.
        resume_to(&half, 30);
        run_ok(
            &[
                &common[..],
                &["--steps", "13", "--out", whole.to_str().unwrap(), "--force"],
            ]
            .concat(),
        );
        resume_to(&whole, 30);
        assert_eq!(params(&half), params(&whole), "{opt}: resumed runs agree");
        // And a straight run with a constant schedule equals one interrupted by a resume.
        let straight = [&SMALL[..], &["--corpus", &corpus, "--optimizer", opt]].concat();
        run_ok(
            &[
                &straight[..],
                &["--steps", "20", "--out", whole.to_str().unwrap(), "--force"],
            ]
            .concat(),
        );
        run_ok(
            &[
                &straight[..],
                &["--steps", "9", "--out", half.to_str().unwrap(), "--force"],
            ]
            .concat(),
        );
        resume_to(&half, 20);
        assert_eq!(
            params(&half),
            params(&whole),
            "{opt}: 9 + resume 11 = 20 steps, bit for bit"
        );
        let lines = std::fs::read_to_string(half.join("metrics.jsonl")).unwrap();
        let steps: Vec<u64> = lines
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert!(
            steps.windows(2).all(|w| w[0] <= w[1]),
            "metrics continue in order: {steps:?}"
        );
    }
}

#[test]
fn ctrl_c_saves_and_resume_matches_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus_file(dir.path(), 300, "sigint");
    let run = dir.path().join("run");
    let args = [&SMALL[..], &["--corpus", &corpus, "--log-every", "1"]].concat();
    // A long run, interrupted once it has taken a few steps.
    let mut child = start_long_run(&args, &run);
    interrupt(&child);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "interrupted runs exit with 130");
    let stopped = TrainState::load(&run).unwrap().progress.step;
    assert!(stopped >= 3);
    assert_eq!(
        Checkpoint::load(&run).unwrap().params,
        TrainState::load(&run).unwrap().params
    );
    // Resume to a few steps past the interruption, and compare with a straight run that long.
    let total = stopped + 4;
    resume_to(&run, total);
    let straight = dir.path().join("straight");
    run_ok(
        &[
            &args[..],
            &[
                "--steps",
                &total.to_string(),
                "--out",
                straight.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    assert_eq!(params(&run), params(&straight));
}

#[test]
fn byte_vocabulary_trains_on_any_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = common::rng("bytes");
    let data: Vec<u8> = (0..6000)
        .map(|i| {
            if i % 7 == 0 {
                0xff
            } else {
                rng.random_range(0..4u8)
            }
        })
        .collect();
    let path = dir.path().join("data.bin");
    std::fs::write(&path, &data).unwrap();
    let out = dir.path().join("m");
    run_ok(
        &[
            &SMALL[..],
            &[
                "--corpus",
                path.to_str().unwrap(),
                "--vocab",
                "bytes",
                "--steps",
                "5",
                "--out",
                out.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    let ckpt = Checkpoint::load(&out).unwrap();
    assert_eq!(ckpt.vocab, Some(Vocab::bytes()));
    assert_eq!(ckpt.config.input_size, 256);
    let e = bin()
        .args([
            "eval",
            "--model",
            out.to_str().unwrap(),
            "--corpus",
            path.to_str().unwrap(),
            "--device",
            "cpu",
        ])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&e.stdout).unwrap();
    assert_eq!(json["predictions"].as_u64(), Some(data.len() as u64 - 1));
}

#[test]
fn indexed_corpus_reads_the_same_tokens_as_a_full_decode() {
    let mut rng = common::rng("corpus index");
    let alphabet: Vec<char> = "ab cdé€🎉\n".chars().collect();
    let text: String = (0..5000)
        .map(|_| alphabet[rng.random_range(0..alphabet.len())])
        .collect();
    // A vocabulary that lacks some characters: those are skipped.
    let vocab = Vocab::chars_of("ab cd€\n");
    let (want, unknown) = vocab.encode(&text);
    let corpus = Corpus::from_text(
        CorpusText::Owned(text.into_bytes()),
        "t",
        VocabKind::Chars,
        Some(vocab),
    )
    .unwrap();
    assert_eq!(corpus.len(), want.len());
    assert_eq!(corpus.unknown(), unknown);
    for _ in 0..200 {
        let start = rng.random_range(0..want.len());
        let count = rng.random_range(0..=(want.len() - start).min(3000));
        let mut got = Vec::new();
        corpus.read(start, count, &mut got);
        assert_eq!(
            got,
            want[start..start + count],
            "start {start} count {count}"
        );
    }
    let split = corpus.slice(1000, 2000);
    let mut got = Vec::new();
    split.read(5, 10, &mut got);
    assert_eq!(got, want[1005..1015]);
}

#[test]
fn a_large_corpus_trains_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.txt");
    let mut rng = common::rng("large corpus");
    let block = crate::training::generated_corpus(&mut rng, 20_000);
    let target = 300usize << 20;
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let mut written = 0;
    while written < target {
        f.write_all(block.as_bytes()).unwrap();
        written += block.len();
    }
    f.flush().unwrap();
    drop(f);
    let out = dir.path().join("m");
    let started = Instant::now();
    let mut child = bin()
        .args(
            [
                &SMALL[..],
                &[
                    "--corpus",
                    path.to_str().unwrap(),
                    "--steps",
                    "3",
                    "--val-frac",
                    "0.00001",
                    "--out",
                    out.to_str().unwrap(),
                ],
            ]
            .concat(),
        )
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (peak, status) = common::peak_rss_kib(&mut child);
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{err}");
    eprintln!(
        "{} MiB corpus: trained 3 steps in {:.1?}, peak RSS {} MiB",
        written >> 20,
        started.elapsed(),
        peak >> 10
    );
    assert!(peak > 0, "the peak RSS was read");
    assert!(
        peak < 200 << 10,
        "peak RSS {} MiB for a {} MiB corpus",
        peak >> 10,
        written >> 20
    );
    let state = TrainState::load(&out).unwrap();
    assert_eq!(state.run.corpus_tokens, written);
}

fn eval_json(model: &Path, corpus: &str, device: &str) -> serde_json::Value {
    let out = bin()
        .args([
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--corpus",
            corpus,
            "--device",
            device,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn train_sample_and_eval_on_the_gpu_agree_with_the_cpu() {
    if common::gpu("cli on the gpu").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus_file(dir.path(), 150, "cli gpu");
    for sequences in ["stream", "lines"] {
        let (gpu, cpu) = (dir.path().join("gpu"), dir.path().join("cpu"));
        let args = [
            "train",
            "--corpus",
            &corpus,
            "--hidden",
            "16",
            "--batch",
            "4",
            "--seq-len",
            "12",
            "--steps",
            "12",
            "--eval-every",
            "6",
            "--optimizer",
            "sgd",
            "--lr",
            "0.5",
            "--sample",
            "20",
            "--sequences",
            sequences,
            "--force",
        ];
        let out = bin()
            .args(args)
            .args(["--device", "gpu", "--out", gpu.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(err.contains("device: gpu"), "the GPU engine ran: {err}");
        run_ok(
            &[
                &args[..],
                &["--device", "cpu", "--out", cpu.to_str().unwrap()],
            ]
            .concat(),
        );
        let (g, c) = (
            Checkpoint::load(&gpu).unwrap(),
            Checkpoint::load(&cpu).unwrap(),
        );
        common::assert_close(
            &format!("{sequences}: parameters after 12 steps"),
            &common::to_f64(&g.params),
            &common::to_f64(&c.params),
            1e-4,
            1e-5,
        );
        let (eg, ec) = (
            eval_json(&gpu, &corpus, "gpu"),
            eval_json(&gpu, &corpus, "cpu"),
        );
        let (lg, lc) = (eg["loss"].as_f64().unwrap(), ec["loss"].as_f64().unwrap());
        assert!(
            (lg - lc).abs() < 1e-4 * lc,
            "{sequences}: eval {lg} on the GPU vs {lc} on the CPU"
        );
        assert_eq!(eg["predictions"], ec["predictions"]);
        let s = bin()
            .args([
                "sample",
                "--model",
                gpu.to_str().unwrap(),
                "--length",
                "30",
                "--device",
                "gpu",
                "--prime",
                "the",
            ])
            .output()
            .unwrap();
        assert!(s.status.success());
        assert!(String::from_utf8_lossy(&s.stdout).starts_with("the"));
    }
}

#[test]
fn sigkill_while_checkpointing_always_leaves_a_loadable_resumable_run() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus_file(dir.path(), 300, "sigkill");
    let mut rng = common::rng("sigkill delays");
    let args = [
        &SMALL[..],
        &[
            "--corpus",
            &corpus,
            "--checkpoint-every",
            "1",
            "--log-every",
            "1",
        ],
    ]
    .concat();
    for attempt in 0..4 {
        // A directory per attempt: the wait below must see this run's first checkpoint, not
        // the file of the attempt before.
        let run = dir.path().join(format!("run{attempt}"));
        let mut child = bin()
            .args(
                [
                    &args[..],
                    &["--steps", "1000000", "--out", run.to_str().unwrap()],
                ]
                .concat(),
            )
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Let it save a few checkpoints, then kill it without warning at a random moment.
        let start = Instant::now();
        while !run.join("state.safetensors").exists() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no checkpoint was written"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(20..300)));
        child.kill().unwrap();
        child.wait().unwrap();
        let state = TrainState::load(&run).unwrap_or_else(|e| panic!("attempt {attempt}: {e}"));
        Checkpoint::load(&run).unwrap_or_else(|e| panic!("attempt {attempt}: {e}"));
        resume_to(&run, state.progress.step + 2);
        assert_eq!(
            TrainState::load(&run).unwrap().progress.step,
            state.progress.step + 2
        );
    }
}

#[test]
fn gated_stacked_runs_with_dropout_resume_exactly_and_sample_and_eval() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus_file(dir.path(), 200, "gated resume");
    for (cell, extra) in [("gru", &[][..]), ("lstm", &["--forget-bias-one"][..])] {
        let (whole, half) = (
            dir.path().join(format!("{cell}-whole")),
            dir.path().join(cell),
        );
        let model = [
            &SMALL[..],
            &[
                "--corpus",
                &corpus,
                "--cell",
                cell,
                "--layers",
                "2",
                "--dropout",
                "0.3",
            ],
            extra,
        ]
        .concat();
        for (out, steps) in [(&whole, "12"), (&half, "5")] {
            let args = ["--steps", steps, "--out", out.to_str().unwrap(), "--force"];
            run_ok(&[&model[..], &args].concat());
        }
        let state = TrainState::load(&half).unwrap();
        assert_eq!(
            state.state.len(),
            state.state_rows * state.config.state_size_per_row(),
            "{cell}: the saved state holds h (and c)"
        );
        assert_eq!(state.run.dropout, 0.3);
        let h = half.to_str().unwrap();
        resume_to(Path::new(h), 12);
        assert_eq!(
            params(&half),
            params(&whole),
            "{cell}: 5 + resume 7 = 12 steps"
        );
        let cfg = Checkpoint::load(&half).unwrap().config;
        assert_eq!(format!("{:?}", cfg.cell).to_lowercase(), cell);
        run_ok(&["sample", "--model", h, "--length", "20", "--device", "cpu"]);
        run_ok(&["eval", "--model", h, "--corpus", &corpus, "--device", "cpu"]);
    }
}

/// The run in `run` loads, and resumes for one more step.
fn assert_loadable_and_resumable(run: &Path) {
    let state = TrainState::load(run).unwrap();
    Checkpoint::load(run).unwrap();
    resume_to(run, state.progress.step + 1);
}

#[test]
fn signals_in_quick_succession_count_as_one_interruption_that_saves() {
    // `timeout -s INT` signals the command and then its process group: two signals at once.
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus_file(dir.path(), 300, "two signals");
    let run = dir.path().join("run");
    let args = [&SMALL[..], &["--corpus", &corpus, "--log-every", "1"]].concat();
    let mut child = start_long_run(&args, &run);
    for _ in 0..2 {
        interrupt(&child);
    }
    assert_eq!(child.wait().unwrap().code(), Some(130));
    let log = std::fs::read_to_string(run.with_extension("log")).unwrap();
    assert!(log.contains("interrupted after step"), "{log}");
    // The saved state is that of the last step run.
    let state = TrainState::load(&run).unwrap();
    let logged = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(logged.lines().last().unwrap()).unwrap();
    assert_eq!(Some(state.progress.step), last["step"].as_u64());
    assert_loadable_and_resumable(&run);
}

#[test]
fn a_second_signal_after_the_grace_exits_at_once_and_leaves_a_loadable_run() {
    // Steps of several seconds (a wide LSTM over long windows), so the second signal, 1.5 s
    // after the first (sent once the state of step 0 is saved), finds step 1 still running.
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus_file(dir.path(), 3000, "slow steps");
    let run = dir.path().join("run");
    let args = [
        "train",
        "--corpus",
        &corpus,
        "--cell",
        "lstm",
        "--hidden",
        "1024",
        "--batch",
        "64",
        "--seq-len",
        "128",
        "--log-every",
        "1",
        "--eval-every",
        "1000",
        "--sample",
        "0",
        "--device",
        "cpu",
    ];
    let mut child = start_run_after(&args, &run, 0);
    interrupt(&child);
    std::thread::sleep(Duration::from_millis(1500));
    interrupt(&child);
    assert_eq!(child.wait().unwrap().code(), Some(130));
    let log = std::fs::read_to_string(run.with_extension("log")).unwrap();
    assert!(
        !log.contains("interrupted after step"),
        "it saved instead: {log}"
    );
    // Whatever the moment, the run on disk (the initial state of step 0) is complete.
    assert_loadable_and_resumable(&run);
}

#[test]
fn embedded_and_tied_models_resume_exactly_and_sample_and_eval() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus_file(dir.path(), 200, "embedded resume");
    // SMALL's --hidden is the tied embedding's size.
    let hidden = SMALL[SMALL.iter().position(|&a| a == "--hidden").unwrap() + 1];
    for (name, extra) in [
        ("embed", &["--embed", "5", "--cell", "gru"][..]),
        ("tied", &["--embed", hidden, "--tie-weights"][..]),
    ] {
        let (whole, half) = (
            dir.path().join(format!("{name}-whole")),
            dir.path().join(name),
        );
        let model = [&SMALL[..], &["--corpus", &corpus], extra].concat();
        for (out, steps) in [(&whole, "10"), (&half, "4")] {
            let args = ["--steps", steps, "--out", out.to_str().unwrap(), "--force"];
            run_ok(&[&model[..], &args].concat());
        }
        let h = half.to_str().unwrap();
        resume_to(Path::new(h), 10);
        assert_eq!(
            params(&half),
            params(&whole),
            "{name}: 4 + resume 6 = 10 steps"
        );
        let ckpt = Checkpoint::load(&half).unwrap();
        let layout = unroll::model::ParamLayout::new(&ckpt.config).unwrap();
        let names: Vec<&str> = layout.specs().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names[0], "embed.weight", "{name}");
        assert_eq!(ckpt.config.tie_weights, name == "tied");
        assert_eq!(
            names.contains(&"out.weight"),
            name != "tied",
            "{name}: {names:?}"
        );
        run_ok(&["sample", "--model", h, "--length", "20", "--device", "cpu"]);
        run_ok(&["eval", "--model", h, "--corpus", &corpus, "--device", "cpu"]);
    }
    // Tying needs an embedding of the hidden size: a usage error, exit 2.
    for bad in [
        &["--tie-weights"][..],
        &["--embed", "3", "--tie-weights"][..],
        &["--embed", "0"][..],
    ] {
        let out = dir.path().join("bad");
        let args = [
            &SMALL[..],
            &["--corpus", &corpus, "--out", out.to_str().unwrap()],
            bad,
        ]
        .concat();
        let res = bin().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&res.stderr);
        assert_eq!(res.status.code(), Some(2), "{bad:?}: {err}");
        assert!(
            err.contains("--embed") && !err.contains("panicked"),
            "{bad:?}: {err}"
        );
        assert!(!out.exists(), "{bad:?} wrote a run");
    }
}
