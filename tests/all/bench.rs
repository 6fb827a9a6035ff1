//! `unroll bench` end to end on tiny shapes, on the CPU and on the GPU (any adapter): the JSON
//! parses and has positive throughput, the profile and the matmul mode run, a missing PyTorch
//! is a note and not a failure, and bad options are clear errors. Timings are never asserted.

use std::process::{Command, Output};

use unroll::bench::{DeviceKind, Spread, StepBench, StepShape, Timing, parse_cell};
use unroll::engine::profile::StepPhase;
use unroll::model::Cell;

use crate::common;

/// Options for a tiny configuration that runs in well under a second.
const TINY: [&str; 12] = [
    "--hidden",
    "8",
    "--batch",
    "3",
    "--seq-len",
    "5",
    "--vocab-size",
    "11",
    "--warmup",
    "1",
    "--repeats",
    "3",
];

fn unroll(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_unroll"))
        .arg("bench")
        .args(args)
        .output()
        .expect("the unroll binary runs")
}

/// Runs `unroll bench ARGS --json` and returns the parsed output.
fn bench_json(args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = unroll(&all);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "unroll bench {all:?} failed:\n{stderr}"
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "unroll bench {all:?}: output is not JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn fails(args: &[&str], needle: &str) {
    let out = unroll(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "unroll bench {args:?} succeeded");
    assert!(
        !err.contains("panicked"),
        "unroll bench {args:?} panicked:\n{err}"
    );
    assert!(
        err.contains(needle),
        "unroll bench {args:?}: {needle:?} not in:\n{err}"
    );
}

/// Checks one result of the JSON output: its device, shape and positive, ordered timings.
fn check_result(r: &serde_json::Value, device: &str) {
    assert_eq!(r["device"], device, "{r}");
    assert_eq!(r["shape"]["hidden"], 8, "{r}");
    assert_eq!(r["shape"]["batch"], 3, "{r}");
    assert_eq!(r["shape"]["seq_len"], 5, "{r}");
    assert_eq!(r["shape"]["cell"], "rnn", "{r}");
    let tps = r["tokens_per_s"]
        .as_f64()
        .expect("tokens_per_s is a number");
    assert!(tps > 0.0 && tps.is_finite(), "tokens/s {tps}");
    for key in ["step_ms", "latency_ms"] {
        let s = &r[key];
        let (lo, mid, hi) = (
            s["min"].as_f64().unwrap(),
            s["median"].as_f64().unwrap(),
            s["max"].as_f64().unwrap(),
        );
        assert!(0.0 < lo && lo <= mid && mid <= hi, "{key}: {s}");
    }
    let loss = r["loss"].as_f64().unwrap();
    assert!(loss.is_finite() && loss > 0.0, "loss {loss}");
    // Which recurrence kernel ran: on the GPU only (a small tanh layer: a workgroup per row).
    let kernel = if device == "gpu" { "rows" } else { "" };
    assert_eq!(r["recurrence"].as_str().unwrap_or(""), kernel, "{r}");
}

#[test]
fn bench_on_the_cpu_prints_json_with_positive_throughput() {
    let v = bench_json(&[&["--device", "cpu"], &TINY[..]].concat());
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "{v}");
    check_result(&results[0], "cpu");
    assert!(v["machine"]["threads"].as_u64().unwrap() >= 1, "{v}");
    assert!(results[0]["pytorch"].is_null());
}

#[test]
fn bench_on_the_gpu_prints_json_with_a_profile() {
    let Some(ctx) = common::gpu("bench_on_the_gpu_prints_json_with_a_profile") else {
        return;
    };
    let v = bench_json(&[&["--device", "gpu", "--profile", "--block", "2"], &TINY[..]].concat());
    let r = &v["results"][0];
    check_result(r, "gpu");
    assert_eq!(r["timing"]["block"], 2);
    // Per engine call, and with timestamp queries the device time per phase of the step.
    let profiles = r["profile"].as_array().unwrap();
    assert_eq!(profiles.len(), 1 + ctx.has_timestamps() as usize, "{r}");
    let phases = profiles[0]["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 5, "{r}");
    assert!(
        phases.iter().all(|p| p["ms"].as_f64().unwrap() >= 0.0),
        "{r}"
    );
    if ctx.has_timestamps() {
        let device = profiles[1]["phases"].as_array().unwrap();
        let names: Vec<&str> = device.iter().map(|p| p["name"].as_str().unwrap()).collect();
        // Every kernel of the step is in a named phase, and each phase took device time.
        for want in [
            "input projection",
            "forward recurrence",
            "output GEMM",
            "output backward",
            "backward recurrence",
            "weight-gradient",
            "optimizer",
        ] {
            assert!(names.iter().any(|n| n.starts_with(want)), "{want}: {r}");
        }
        assert!(!names.iter().any(|n| n.starts_with("other")), "{r}");
        assert!(
            device.iter().all(|p| p["ms"].as_f64().unwrap() > 0.0),
            "{r}"
        );
        let method = profiles[1]["method"].as_str().unwrap();
        assert!(method.contains("timestamp queries"), "{method}");
    }
}

#[test]
fn bench_on_both_devices_and_as_a_table() {
    let gpu = common::gpu("bench_on_both_devices_and_as_a_table").is_some();
    let devices = if gpu { "cpu,gpu" } else { "cpu" };
    let out = unroll(&[&["--device", devices, "--profile"], &TINY[..]].concat());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("| cpu | rnn | 8 | 3 | 5 | 1 |"), "{text}");
    assert!(text.contains("forward (recurrence"), "{text}");
    assert!(text.contains("backward recurrence (T steps)"), "{text}");
    if gpu {
        // A small tanh layer runs a workgroup per row (auto).
        assert!(
            text.contains("| gpu (rows) | rnn | 8 | 3 | 5 | 1 |"),
            "{text}"
        );
    }
}

#[test]
fn rounds_pool_their_samples() {
    let v = bench_json(&[&["--device", "cpu", "--rounds", "2"], &TINY[..]].concat());
    let r = &v["results"][0];
    check_result(r, "cpu");
    assert_eq!(r["step_ms"]["samples"], 6, "{r}");
    assert_eq!(r["latency_ms"]["samples"], 6, "{r}");
}

#[test]
fn a_missing_pytorch_is_a_note_not_a_failure() {
    let v = bench_json(
        &[
            &[
                "--device",
                "cpu",
                "--baseline",
                "pytorch",
                "--python",
                "/nonexistent/python3",
            ],
            &TINY[..],
        ]
        .concat(),
    );
    check_result(&v["results"][0], "cpu");
    assert!(v["results"][0]["ratio"].is_null());
    assert_eq!(v["results"][0]["round_ratios"], serde_json::json!([]));
    let notes = v["notes"].to_string();
    assert!(notes.contains("no PyTorch baseline"), "{notes}");
}

#[test]
fn matmul_mode_reports_tflops() {
    if common::gpu("matmul_mode_reports_tflops").is_none() {
        return;
    }
    let v = bench_json(&[
        "--matmul",
        "--matmul-shape",
        "33x17x9,8x8x8",
        "--repeats",
        "2",
        "--block",
        "2",
    ]);
    let m = v["matmul"].as_array().unwrap();
    assert_eq!(m.len(), 2, "{v}");
    assert_eq!(
        (m[0]["m"].as_u64(), m[0]["n"].as_u64()),
        (Some(33), Some(17))
    );
    assert!(m[0]["tflops"].as_f64().unwrap() > 0.0, "{v}");
}

#[test]
fn bad_options_are_clear_errors() {
    fails(
        &["--device", "cpu", "--cell", "transformer"],
        "unknown cell \"transformer\"",
    );
    fails(
        &["--device", "cpu", "--hidden", "0"],
        "hidden size must be at least 1",
    );
    fails(
        &["--device", "cpu", "--batch", "0"],
        "batch must be at least 1",
    );
    fails(
        &["--device", "cpu", "--seq-len", "0"],
        "sequence length must be at least 1",
    );
    fails(&["--device", "cpu", "--vocab-size", "1"], "vocabulary size");
    fails(
        &[&["--device", "cpu", "--repeats", "0"], &TINY[..4]].concat(),
        "--repeats",
    );
    fails(&["--matmul", "--matmul-shape", "4x4"], "not MxNxK");
    fails(&["--device", "tpu"], "invalid value 'tpu'");
}

#[test]
fn cells_parse_by_their_checkpoint_names() {
    assert_eq!(parse_cell("rnn").unwrap(), Cell::Rnn);
    assert_eq!(parse_cell(" RNN ").unwrap(), Cell::Rnn);
    let err = parse_cell("elman").unwrap_err().to_string();
    assert!(err.contains("unknown cell") && err.contains("rnn"), "{err}");
}

#[test]
fn spread_has_the_median_and_nearest_rank_percentiles() {
    let s = Spread::of(&[5.0, 1.0, 4.0, 2.0, 3.0, 6.0, 7.0, 8.0, 9.0, 10.0]).unwrap();
    assert_eq!((s.min, s.max, s.median), (1.0, 10.0, 5.5));
    assert_eq!((s.p10, s.p90), (1.0, 9.0));
    assert_eq!(Spread::of(&[3.0, 1.0, 2.0]).unwrap().median, 2.0);
    assert!(Spread::of(&[]).is_err());
}

#[test]
fn the_library_measures_a_step_without_the_command_line() {
    for cell in [Cell::Rnn, Cell::Lstm] {
        let shape = StepShape::new(cell, 7, 6, 2, 4);
        let mut bench = StepBench::new(DeviceKind::Cpu, shape, 3).unwrap();
        let timing = Timing {
            warmup: 1,
            repeats: 2,
            block: 2,
        };
        let r = bench.measure(timing, true).unwrap();
        assert!(r.tokens_per_s > 0.0);
        assert_eq!(r.step_ms.samples, 2);
        // Per engine call, then per phase inside the engine: every phase of the step timed.
        assert_eq!(r.profile.len(), 2);
        assert_eq!(r.profile[0].phases.len(), 5);
        let names: Vec<&str> = r.profile[1]
            .phases
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        let want: Vec<&str> = StepPhase::ALL
            .iter()
            .filter(|&&p| p != StepPhase::Other)
            .map(|p| p.name())
            .collect();
        assert_eq!(names, want, "{cell:?}");
        assert!(r.profile[1].phases.iter().all(|p| p.ms > 0.0), "{r:?}");
        assert!(r.profile[1].method.contains("wall clock"), "{r:?}");
    }
}
