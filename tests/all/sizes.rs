//! No size aborts the process: every size option of every command, and every size read from a
//! state or pairs file, is refused with the memory estimate and the option to lower, or
//! streamed. Each command here runs under an address-space limit (`ulimit -v`), so that an
//! allocation that is not guarded shows as a signal death (an abort) and never takes the
//! machine's memory.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use unroll::engine::DEFAULT_LOGIT_BUDGET;
use unroll::memory::{Lower, Rows, Shape, estimate};
use unroll::model::{Cell, ModelConfig};
use unroll::train::trainer::eval_rows;

use crate::cli::ok;

/// The address-space limit of every command, in KiB (4 GiB).
const LIMIT_KIB: u64 = 4 << 20;

const U64_MAX: &str = "18446744073709551615";

/// The binary with `args`, run under the address-space limit.
fn limited(args: &[&str]) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!("ulimit -v {LIMIT_KIB}; exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_unroll"))
        .args(args);
    c
}

/// How a command ended: its status and standard error, or `None` when it was still running at
/// the deadline (and was killed).
struct Ended {
    status: Option<ExitStatus>,
    stderr: String,
}

/// Runs `args` under the limit with standard output discarded, for at most `deadline`.
fn run_for(args: &[&str], deadline: Duration) -> Ended {
    let err = tempfile::NamedTempFile::new().unwrap();
    let child = limited(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err.reopen().unwrap())
        .spawn()
        .expect("sh runs");
    let status = wait_for(child, deadline);
    Ended {
        status,
        stderr: std::fs::read_to_string(err.path()).unwrap_or_default(),
    }
}

/// Waits for `child` until `deadline`; kills it then and returns `None`.
fn wait_for(mut child: Child, deadline: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Checks that a command that ended did so by itself (no signal), with 0, 1 or 2, without a
/// panic or a failed allocation, and with a message when it failed; gives the exit status.
fn no_abort(args: &[&str], status: ExitStatus, stderr: &str) -> Result<i32, String> {
    let Some(code) = status.code() else {
        return Err(format!(
            "unroll {args:?} died of signal {:?}:\n{stderr}",
            status.signal()
        ));
    };
    if let Some(bad) = ["panicked", "memory allocation of", "capacity overflow"]
        .iter()
        .find(|bad| stderr.contains(*bad))
    {
        return Err(format!("unroll {args:?}: {bad}:\n{stderr}"));
    }
    if !matches!(code, 0..=2) {
        return Err(format!("unroll {args:?} exited {code}:\n{stderr}"));
    }
    if code != 0 && !stderr.contains("error") {
        return Err(format!(
            "unroll {args:?} exited {code} without a message:\n{stderr}"
        ));
    }
    Ok(code)
}

/// [`no_abort`] as an assertion.
fn assert_no_abort(args: &[&str], status: ExitStatus, stderr: &str) -> i32 {
    no_abort(args, status, stderr).unwrap_or_else(|e| panic!("{e}"))
}

/// The files the commands read: a small corpus, a language model trained on it (stream and
/// lines mode), a pairs file and a pairs model.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let f = Fixture {
            dir: tempfile::tempdir().unwrap(),
        };
        let vocab = ["ab", "cd", "ef", "gh", "abc"];
        let text: String = (0..600)
            .map(|i| format!("{} {}\n", vocab[i % 5], vocab[(i * 7 + 3) % 5]))
            .collect();
        std::fs::write(f.path("corpus.txt"), text).unwrap();
        let corpus = f.path("corpus.txt");
        for (out, mode) in [("lm", "stream"), ("lines", "lines")] {
            let out = f.path(out);
            let fixed = "train --device cpu --hidden 8 --steps 0 --sequences";
            ok(&strs(&words(
                fixed,
                &[mode, "--corpus", &corpus, "--out", &out],
            )));
        }
        let pairs = f.path("pairs.jsonl");
        ok(&["example", "echo", "--count", "60", "--out", &pairs]);
        let fixed = "train --device cpu --input class --output class --hidden 8 --steps 0";
        let paths = ["--pairs", &pairs, "--out", &f.path("pm")];
        ok(&strs(&words(fixed, &paths)));
        f
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }

    /// A small, quick training of a language model on the corpus into `out`, sampling
    /// `sample` tokens after it.
    fn small_run(&self, out: &str, sample: &str) -> Vec<String> {
        let corpus = self.path("corpus.txt");
        let fixed = "train --device cpu --hidden 8 --steps 1 --batch 4 --seq-len 8";
        words(
            fixed,
            &["--corpus", &corpus, "--sample", sample, "--out", out],
        )
    }
}

/// The words of `fixed`, then `more`, as arguments.
fn words(fixed: &str, more: &[&str]) -> Vec<String> {
    let fixed = fixed.split_whitespace();
    fixed
        .chain(more.iter().copied())
        .map(str::to_string)
        .collect()
}

/// Borrowed arguments.
fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// A pairs file with one pair of `steps` steps on its second line.
fn write_long_pair(path: &str, steps: usize) {
    let zeros = vec!["0"; steps].join(",");
    let text = format!(
        "{{\"x\":[1,2],\"y\":[1,2]}}\n{{\"x\":[{zeros}],\"y\":[{zeros}]}}\n{{\"x\":[3],\"y\":[3]}}\n"
    );
    std::fs::write(path, text).unwrap();
}

/// Rewrites the saved run of `dir` with a batch of `batch` rows (the metadata of
/// state.safetensors, its header length updated).
fn set_saved_batch(dir: &str, batch: &str) {
    let path = Path::new(dir).join("state.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    let at = header
        .find("\\\"batch\\\":")
        .expect("the run's batch in the header");
    let start = at + "\\\"batch\\\":".len();
    let end = start + header[start..].find(',').unwrap();
    let mut header = format!("{}{batch}{}", &header[..start], &header[end..]);
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(&path, out).unwrap();
}

#[test]
fn sizes_that_do_not_fit_are_refused_with_the_estimate_and_the_option_to_lower() {
    let f = Fixture::new();
    let (pairs, long) = (f.path("pairs.jsonl"), f.path("long.jsonl"));
    write_long_pair(&long, 2_000_000);
    let resumed = f.path("resumed");
    ok(&strs(&f.small_run(&resumed, "0")));
    set_saved_batch(&resumed, "1000000000");
    let saved = std::fs::read(Path::new(&resumed).join("state.safetensors")).unwrap();
    let out = f.path("out");
    let (lm, pm) = (f.path("lm"), f.path("pm"));
    let train = |fixed: &str, paths: &[&str]| {
        let at = [paths, &["--out", &out]].concat();
        let device = if fixed.contains("--device") {
            ""
        } else {
            "--device cpu"
        };
        words(&format!("train --steps 1 {device} {fixed}"), &at)
    };
    let billion = "1000000000";
    let pairs_of = |path| ["--pairs", path, "--input", "class", "--output", "class"];
    // (arguments, what the message names besides the estimate)
    let cases: Vec<(Vec<String>, &[&str])> = vec![
        (train("--hidden 60000", &[]), &["--hidden", "GiB"]),
        // The host memory guard runs before the GPU engine is set up.
        (train("--hidden 60000 --device gpu", &[]), &["--hidden"]),
        (
            train("--sequences lines --batch 1000000000", &[]),
            &["--batch", "TiB"],
        ),
        (
            train("--sequences lines --seq-len 1000000000", &[]),
            &["--seq-len"],
        ),
        (train("--seq-len 1000000000", &[]), &["--seq-len"]),
        (train("--batch 1000000000", &pairs_of(&pairs)), &["--batch"]),
        (
            train("", &pairs_of(&long)),
            &["line 2 of the pairs file, 2000000 steps"],
        ),
        (
            words("eval --device cpu --seq-len", &[billion, "--model", &lm]),
            &["--seq-len", "eval needs"],
        ),
        (
            words(
                "predict --device cpu --batch",
                &[billion, "--model", &pm, "--pairs", &pairs],
            ),
            &["--batch", "predict needs"],
        ),
        (
            words("train --device cpu --steps 2 --resume", &[&resumed]),
            &["B=1000000000", "a resumed run keeps its settings"],
        ),
        (
            train("", &["--batch", U64_MAX, "--seq-len", U64_MAX]),
            &["overflow 64-bit arithmetic"],
        ),
    ];
    for (args, needles) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let ended = run_for(&args, Duration::from_secs(60));
        let status = ended.status.expect("a refusal comes at once");
        let code = assert_no_abort(&args, status, &ended.stderr);
        assert_eq!(code, 2, "unroll {args:?}:\n{}", ended.stderr);
        for needle in ["needs", "of memory", "the largest parts"]
            .iter()
            .chain(*needles)
        {
            assert!(
                ended.stderr.contains(needle),
                "unroll {args:?}: {needle:?} not in:\n{}",
                ended.stderr
            );
        }
        assert!(!Path::new(&out).exists(), "unroll {args:?} wrote {out}");
    }
    assert_eq!(
        std::fs::read(Path::new(&resumed).join("state.safetensors")).unwrap(),
        saved,
        "the refused resume left the run as it was"
    );
}

/// Runs `args` with standard output read by a reader that stops after `bytes` bytes; the
/// command must then end by itself, quietly, with status 0.
fn stops_with_its_reader(args: &[&str], bytes: usize) {
    let err = tempfile::NamedTempFile::new().unwrap();
    let mut child = limited(args)
        .stdout(Stdio::piped())
        .stderr(err.reopen().unwrap())
        .spawn()
        .unwrap();
    let mut head = vec![0u8; bytes];
    child
        .stdout
        .take()
        .unwrap()
        .read_exact(&mut head)
        .unwrap_or_else(|e| panic!("unroll {args:?} wrote less than {bytes} bytes: {e}"));
    let status = wait_for(child, Duration::from_secs(30));
    let stderr = std::fs::read_to_string(err.path()).unwrap_or_default();
    let status = status.unwrap_or_else(|| panic!("unroll {args:?} went on after its reader"));
    assert_eq!(assert_no_abort(args, status, &stderr), 0, "{stderr}");
}

#[test]
fn samples_of_any_length_stream_and_end_quietly_when_the_reader_stops() {
    let f = Fixture::new();
    let lm = f.path("lm");
    stops_with_its_reader(
        &[
            "sample", "--device", "cpu", "--model", &lm, "--length", U64_MAX,
        ],
        2000,
    );
    let out = f.path("out");
    stops_with_its_reader(&strs(&f.small_run(&out, U64_MAX)), 2000);
}

/// The values every size option is tried at.
const VALUES: [&str; 6] = [
    "0",
    "1",
    "2147483648",
    "4294967297",
    "9223372036854775808",
    U64_MAX,
];

/// The fuzz cases of one command: its fixed arguments, its size options with their legal small
/// values (empty: not given), and the options that run (train, stream) for as long as they
/// say: those may still be running, sound, at the deadline.
struct FuzzCommand {
    fixed: Vec<String>,
    sizes: Vec<(&'static str, &'static str)>,
    runs_on: &'static [&'static str],
    /// Values not tried (legal ones that would start a long run).
    skipped: &'static [&'static str],
}

impl FuzzCommand {
    /// The arguments with `changed` (option, value) in place of their legal values (`--epochs`
    /// in place of `--steps`).
    fn args(&self, changed: &[(&str, &str)]) -> Vec<String> {
        let mut args = self.fixed.clone();
        let epochs = changed.iter().any(|(o, _)| *o == "--epochs");
        for (option, legal) in &self.sizes {
            if epochs && *option == "--steps" {
                continue;
            }
            let value = changed
                .iter()
                .find(|(o, _)| o == option)
                .map_or(*legal, |(_, v)| *v);
            if !value.is_empty() {
                args.extend([option.to_string(), value.to_string()]);
            }
        }
        args
    }
}

/// Size options with their legal values, from `--option=value` words (an empty value: not
/// given).
fn sizes(spec: &'static str) -> Vec<(&'static str, &'static str)> {
    spec.split_whitespace()
        .map(|w| w.split_once('=').expect("--option=value"))
        .collect()
}

/// The fuzz cases of `unroll train`: language models (streams, lines, words, the schedules'
/// counts) and pairs.
fn train_fuzz(f: &Fixture) -> Vec<FuzzCommand> {
    let (corpus, pairs, out) = (f.path("corpus.txt"), f.path("pairs.jsonl"), f.path("out"));
    let train = |fixed: &str, more: &[&str], spec: &'static str| FuzzCommand {
        fixed: words(
            &format!("train --device cpu {fixed}"),
            &[more, &["--out", &out]].concat(),
        ),
        sizes: [
            sizes("--hidden=8 --steps=1 --batch=4 --sample=0"),
            sizes(spec),
        ]
        .concat(),
        runs_on: &["--steps", "--epochs", "--sample"],
        skipped: &[],
    };
    let lm = ["--corpus", &corpus];
    vec![
        train(
            "",
            &lm,
            "--seq-len=8 --epochs= --layers=1 --embed= --val-tokens= --final-val-tokens= \
             --eval-every= --checkpoint-every= --log-every= --seed=",
        ),
        train("--sequences lines", &lm, "--seq-len=8 --val-tokens="),
        train(
            "--vocab words",
            &lm,
            "--seq-len=8 --max-vocab= --min-count=",
        ),
        train("--lr-schedule step", &lm, "--seq-len=8 --lr-decay-every="),
        train(
            "--lr-schedule plateau --eval-every 1",
            &lm,
            "--seq-len=8 --patience=",
        ),
        train(
            "--input class --output class",
            &["--pairs", &pairs],
            "--input-classes= --output-classes= --val-tokens=",
        ),
    ]
}

/// The fuzz cases of the other commands.
fn other_fuzz(f: &Fixture) -> Vec<FuzzCommand> {
    let (lm, pm) = (f.path("lm"), f.path("pm"));
    let command = |fixed: &str, more: &[&str], spec: &'static str| FuzzCommand {
        fixed: words(fixed, more),
        sizes: sizes(spec),
        runs_on: &[],
        skipped: &[],
    };
    let corpus = ["--model", &lm, "--corpus", &f.path("corpus.txt")];
    vec![
        command("eval --device cpu", &corpus, "--batch=4 --seq-len=8"),
        FuzzCommand {
            runs_on: &["--length"],
            ..command(
                "sample --device cpu",
                &["--model", &lm],
                "--length=10 --top-k= --seed=",
            )
        },
        command(
            "predict --device cpu",
            &["--model", &pm, "--pairs", &f.path("pairs.jsonl")],
            "--batch=4",
        ),
        command(
            "example echo",
            &["--out", &f.path("example.jsonl")],
            "--count=10 --length=5 --delay= --symbols=",
        ),
        // Only refused sizes: a legal one would start a benchmark.
        FuzzCommand {
            skipped: &["1"],
            ..command(
                "bench --device cpu --quick",
                &[],
                "--hidden= --batch= --seq-len= --layers= --vocab-size= --embed= --threads=",
            )
        },
    ]
}

/// Two huge sizes at once, and huge sizes beside legal ones, per command (by its first
/// arguments).
const COMBINATIONS: &[(&str, &[(&str, &str)])] = &[
    ("train", &[("--batch", U64_MAX), ("--seq-len", U64_MAX)]),
    ("train", &[("--batch", "2147483648"), ("--hidden", "1")]),
    ("train", &[("--hidden", "16777216"), ("--layers", "64")]),
    (
        "train",
        &[("--hidden", "16777216"), ("--embed", "16777216")],
    ),
    (
        "train",
        &[("--steps", U64_MAX), ("--batch", "9223372036854775808")],
    ),
    (
        "train",
        &[("--sample", U64_MAX), ("--seq-len", "4294967297")],
    ),
    (
        "eval",
        &[
            ("--batch", "9223372036854775808"),
            ("--seq-len", "9223372036854775808"),
        ],
    ),
    ("eval", &[("--batch", "1"), ("--seq-len", "4294967297")]),
    ("example", &[("--count", U64_MAX), ("--length", U64_MAX)]),
];

#[test]
fn every_size_option_at_any_value_exits_cleanly() {
    let f = Fixture::new();
    let mut commands = train_fuzz(&f);
    commands.extend(other_fuzz(&f));
    let mut cases: Vec<(Vec<String>, bool)> = Vec::new();
    for c in &commands {
        for (option, _) in &c.sizes {
            for value in VALUES.iter().filter(|v| !c.skipped.contains(v)) {
                let runs_on = c.runs_on.contains(option) && *value != "0";
                cases.push((c.args(&[(option, value)]), runs_on));
            }
        }
    }
    for (name, changed) in COMBINATIONS {
        for c in commands.iter().filter(|c| c.fixed[0] == *name) {
            let known = changed
                .iter()
                .all(|(o, _)| c.sizes.iter().any(|(s, _)| s == o));
            if known {
                cases.push((c.args(changed), false));
            }
        }
    }
    let failures = std::sync::Mutex::new(Vec::new());
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                while let Some((args, runs_on)) =
                    cases.get(next.fetch_add(1, std::sync::atomic::Ordering::SeqCst))
                {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    let deadline = Duration::from_secs(if *runs_on { 2 } else { 60 });
                    let ended = run_for(&args, deadline);
                    let outcome = match ended.status {
                        Some(status) => no_abort(&args, status, &ended.stderr).map(|_| ()),
                        None if *runs_on => Ok(()),
                        None => Err(format!("unroll {args:?} did not end in 60 s")),
                    };
                    if let Err(e) = outcome {
                        failures.lock().unwrap().push(e);
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// The largest resident size of `child` until it ends, in bytes.
fn peak_resident(mut child: Child) -> (ExitStatus, u64) {
    let (kib, status) = crate::common::peak_rss_kib(&mut child);
    (status, kib * 1024)
}

#[test]
fn the_estimate_is_within_a_factor_of_two_of_the_real_peak() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("bytes.txt");
    let text: Vec<u8> = (0..90_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&corpus, text).unwrap();
    // (cell, H, layers, embedding, B, T): a plain and a gated cell, with and without an
    // embedding, so that states, gates, logits and the evaluation batch all count; and a model
    // whose parameters (and their copies) dominate.
    let shapes = [
        (Cell::Rnn, 64, 2, Some(16), 64, 64),
        (Cell::Lstm, 128, 1, None, 32, 64),
        (Cell::Rnn, 1000, 1, None, 1, 2),
    ];
    for (cell, h, layers, embed, b, t) in shapes {
        let out = dir.path().join(format!("{cell:?}-{h}"));
        let mut args: Vec<String> = [
            "train", "--device", "cpu", "--vocab", "bytes", "--steps", "2", "--sample", "0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (option, value) in [
            ("--corpus", corpus.to_str().unwrap().to_string()),
            ("--out", out.to_str().unwrap().to_string()),
            ("--cell", format!("{cell:?}").to_lowercase()),
            ("--hidden", h.to_string()),
            ("--layers", layers.to_string()),
            ("--batch", b.to_string()),
            ("--seq-len", t.to_string()),
        ] {
            args.extend([option.to_string(), value]);
        }
        if let Some(e) = embed {
            args.extend(["--embed".to_string(), e.to_string()]);
        }
        let child = Command::new(env!("CARGO_BIN_EXE_unroll"))
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (status, peak) = peak_resident(child);
        assert!(status.success(), "unroll {args:?} failed");
        let config = ModelConfig {
            cell,
            embed,
            ..ModelConfig::language_model(256, h, layers)
        };
        let lower = || Lower {
            model: String::new(),
            train: String::new(),
            eval: String::new(),
            kept: String::new(),
        };
        let shape = Shape {
            train: Some(Rows { rows: b, steps: t }),
            eval: Some(Rows {
                rows: eval_rows(&config, b, t),
                steps: t,
            }),
            logit_budget: DEFAULT_LOGIT_BUDGET,
            inference_blocks: true,
            kept: Vec::new(),
            lower: lower(),
            engine_on_host: true,
        };
        let estimated = estimate(&config, &shape).total() as f64;
        let ratio = estimated / peak as f64;
        eprintln!(
            "{cell:?} H={h}: estimate {estimated} bytes, peak {peak} bytes, ratio {ratio:.2}"
        );
        assert!(
            (0.5..=2.0).contains(&ratio),
            "{cell:?} H={h} layers={layers} B={b} T={t}: the estimate {estimated} bytes is not \
             within a factor of 2 of the peak {peak} bytes"
        );
    }
}
