//! `unroll bench` under `mpirun -n 2`, on a tiny shape: rank 0 alone prints the job's tokens/s,
//! each rank's, the all-reduce time per step and the efficiency against one process (JSON and
//! table), and options a run of several processes cannot take are clear errors. Timings are
//! never asserted, only that each figure is a finite number. Skipped with a notice where
//! `mpirun` is missing, except in CI (env `CI`), where it must run.

#![cfg(feature = "mpi")]

use std::process::Output;

use crate::mpi::{BIN, mpi_jobs, mpirun_command};

use unroll::bench::{StepShape, parse_cell};
use unroll::model::ParamLayout;

/// A tiny LSTM step that splits into two shares of two streams.
const TINY: [&str; 18] = [
    "--device",
    "cpu",
    "--cell",
    "lstm",
    "--hidden",
    "6",
    "--batch",
    "4",
    "--seq-len",
    "3",
    "--vocab-size",
    "7",
    "--warmup",
    "1",
    "--repeats",
    "3",
    "--threads",
    "1",
];

/// `mpirun -n N unroll bench ARGS` (one MPI job at a time), or `None` with a notice where there
/// is no `mpirun`.
fn mpirun_bench(n: usize, args: &[&str]) -> Option<Output> {
    let _job = mpi_jobs("mpi_bench")?;
    let args: Vec<&str> = std::iter::once("bench")
        .chain(args.iter().copied())
        .collect();
    Some(mpirun_command(n, BIN, &args).output().expect("mpirun runs"))
}

/// The number at `path` in `v`, which must be finite.
fn finite(v: &serde_json::Value, path: &str) -> f64 {
    let x = v
        .pointer(path)
        .and_then(serde_json::Value::as_f64)
        .unwrap_or_else(|| panic!("{path} is not a number in {v}"));
    assert!(x.is_finite(), "{path} = {x} is not finite");
    x
}

#[test]
fn bench_under_mpirun_reports_the_job_each_rank_the_allreduce_and_the_efficiency() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let json_path = dir.path().join("bench.json");
    let mut args = TINY.to_vec();
    let path = json_path.to_string_lossy().to_string();
    args.extend(["--json-out", &path]);
    let Some(out) = mpirun_bench(2, &args) else {
        return;
    };
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "mpirun failed:\n{stderr}\n{stdout}");
    // Rank 0 alone prints the tables: one header of each.
    assert_eq!(stdout.matches("| device | cell |").count(), 2, "{stdout}");
    assert!(stdout.contains("efficiency"), "{stdout}");
    let text = std::fs::read_to_string(&json_path).expect("--json-out was written");
    let v: serde_json::Value = serde_json::from_str(&text).expect("the JSON parses");
    let r = &v["results"][0];
    assert!(finite(r, "/tokens_per_s") > 0.0);
    assert_eq!(r.pointer("/shape/batch"), Some(&4.into()));
    let dp = &r["data_parallel"];
    assert_eq!(dp.pointer("/processes"), Some(&2.into()));
    let ranks = dp["per_rank"].as_array().expect("per_rank is a list");
    assert_eq!(ranks.len(), 2);
    for (i, rank) in ranks.iter().enumerate() {
        assert_eq!(rank.pointer("/rank"), Some(&i.into()));
        assert_eq!(rank.pointer("/rows"), Some(&2.into()));
        assert!(finite(rank, "/tokens_per_s") > 0.0);
        let (all, sum) = (
            finite(rank, "/allreduce_seconds_per_step"),
            finite(rank, "/allreduce_sum_seconds_per_step"),
        );
        assert!(all > 0.0 && (0.0..=all).contains(&sum), "{rank}");
    }
    let all = finite(dp, "/allreduce/seconds_per_step");
    let sum = finite(dp, "/allreduce/sum_seconds_per_step");
    assert!(all > 0.0 && (0.0..=all).contains(&sum), "{dp}");
    assert_eq!(dp.pointer("/allreduce/steps"), Some(&3.into()));
    let shape = StepShape::new(parse_cell("lstm").expect("lstm"), 7, 6, 4, 3);
    let params = ParamLayout::new(&shape.config().expect("config"))
        .expect("layout")
        .len();
    assert_eq!(
        dp.pointer("/allreduce/gradient_values"),
        Some(&params.into())
    );
    assert!(finite(dp, "/one_process/tokens_per_s") > 0.0);
    assert_eq!(dp.pointer("/one_process/shape/batch"), Some(&4.into()));
    let (speedup, efficiency) = (finite(dp, "/speedup"), finite(dp, "/efficiency"));
    assert!(efficiency > 0.0);
    assert!((speedup - 2.0 * efficiency).abs() <= 1e-9 * speedup, "{dp}");
}

#[test]
fn bench_under_mpirun_refuses_a_batch_that_does_not_split_and_one_process_modes() {
    let mut odd = TINY.to_vec();
    odd[7] = "3";
    for (args, needle) in [
        (odd, "does not split into 2 equal shares"),
        (
            vec!["--matmul"],
            "--matmul and --baseline measure one process",
        ),
    ] {
        let Some(out) = mpirun_bench(2, &args) else {
            return;
        };
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}:\n{err}");
        assert!(err.contains(needle), "{args:?}: {needle:?} not in:\n{err}");
        // Told once, by rank 0.
        assert_eq!(err.matches(needle).count(), 1, "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
