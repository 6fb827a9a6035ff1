//! A build without the `mpi` feature started by an MPI launcher (its environment says so) is
//! refused before anything is written: each of N copies would think it is the only process and
//! write the same run directory. Slurm's variables alone are a batch script's shell, not a
//! launch.

use std::path::Path;
use std::process::{Command, Output};

use crate::cli::write_corpus;

/// A tiny training run into `out` with `var=value` in the environment.
fn train_with(corpus: &str, out: &Path, (var, value): (&str, &str)) -> Output {
    Command::new(env!("CARGO_BIN_EXE_unroll"))
        .args(["train", "--corpus", corpus, "--steps", "2", "--out"])
        .arg(out)
        .args(
            crate::common::TINY_CPU_RUN
                .iter()
                .flat_map(|(k, v)| [*k, *v]),
        )
        .env(var, value)
        .output()
        .expect("the unroll binary runs")
}

#[test]
fn a_build_without_mpi_refuses_a_launch_of_several_processes() {
    if cfg!(feature = "mpi") {
        // The build with the feature joins the launcher's job (tests/all/mpi.rs).
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (corpus, _) = write_corpus(dir.path(), "launched");
    for (var, value, started) in [
        ("OMPI_COMM_WORLD_SIZE", "2", "2 processes"),
        ("PMI_SIZE", "2", "2 processes"),
        ("PMIX_RANK", "1", "an unknown number of processes"),
    ] {
        let out = dir.path().join(var);
        let run = train_with(&corpus, &out, (var, value));
        let err = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{var}={value}: {err}");
        let said = format!("an MPI launcher started {started} ({var}={value})");
        assert!(err.contains(&said), "{var}: {said:?} not in:\n{err}");
        assert!(err.contains("--features mpi"), "{var}: {err}");
        assert!(!out.exists(), "{var}: {} was written", out.display());
    }
    // A launch of one process trains as one.
    let out = dir.path().join("one");
    let run = train_with(&corpus, &out, ("OMPI_COMM_WORLD_SIZE", "1"));
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

#[test]
fn slurm_variables_alone_are_not_a_launch() {
    let dir = tempfile::tempdir().unwrap();
    let (corpus, _) = write_corpus(dir.path(), "slurm");
    let out = dir.path().join("run");
    let run = train_with(&corpus, &out, ("SLURM_NTASKS", "2"));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "SLURM_NTASKS=2: {err}");
    assert!(!err.contains("data-parallel"), "{err}");
    assert!(out.join("model.safetensors").exists());
}
