//! A run directory and what unroll owns in it: the files a run writes (always `DIR/<fixed
//! name>`, each replaced through `<name>.tmp` and a rename) and the lock that lets one run at a
//! time train in the directory.
//!
//! The lock is an advisory exclusive lock (`flock`) on `DIR/unroll.lock`, held by the open file
//! for the whole run. The operating system releases it when the process ends, however it ends,
//! so a killed run never leaves a stale lock; the file itself stays (removing it would let two
//! runs lock two different files of the same name) and holds the process id of the run that
//! last took it, for the message of a refused run.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::model::checkpoint::{MODEL_FILE, tmp_path};
use crate::train::metrics::{METRICS_FILE, PLOT_FILE};
use crate::train::state::STATE_FILE;
use crate::train::trainer::BEST_FILE;

/// File name of the lock inside a run directory.
pub const LOCK_FILE: &str = "unroll.lock";

/// The files a run writes into its directory, the training state first: it is what makes the
/// directory resumable, so removing it first never leaves a resumable mix of two runs.
pub const RUN_FILES: [&str; 5] = [STATE_FILE, MODEL_FILE, BEST_FILE, METRICS_FILE, PLOT_FILE];

/// Every name a run may leave in `dir` besides the lock: [`RUN_FILES`] and their temporaries.
fn run_paths(dir: &Path) -> impl Iterator<Item = PathBuf> + '_ {
    RUN_FILES
        .iter()
        .map(move |name| dir.join(name))
        .flat_map(|p| [tmp_path(&p), p])
}

/// The names of unroll's files present in `dir` (files or links; the lock excepted): a
/// directory holding any of them holds a run, whoever wrote it.
pub fn run_files_in(dir: &Path) -> Vec<String> {
    run_paths(dir)
        .filter(|p| std::fs::symlink_metadata(p).is_ok())
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect()
}

/// Removes the files of the run in `dir` ([`RUN_FILES`] and their temporaries, the state
/// first) and nothing else; a link is removed, never what it points to. Needs the directory's
/// lock, so no live run loses its files.
pub fn remove_run_files(dir: &Path, _lock: &RunLock) -> Result<()> {
    for path in run_paths(dir) {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io("remove the previous run's", path, e));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The exclusive lock of a run directory, held until dropped (or the process ends).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Locks `dir` (which must exist) for this process, writing its id into the lock file.
    /// Fails with [`Error::RunLocked`] when another process holds the lock, at once (it never
    /// waits).
    pub fn acquire(dir: &Path) -> Result<Self> {
        let path = dir.join(LOCK_FILE);
        refuse_link(&path)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io("open the lock", &path, e))?;
        try_lock(&file, dir)?;
        let pid = std::process::id().to_string();
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(pid.as_bytes()))
            .map_err(|e| Error::io("write the lock", &path, e))?;
        Ok(RunLock { _file: file })
    }

    /// Fails with [`Error::RunLocked`] when a live run holds `dir`'s lock; takes nothing and
    /// creates nothing (a directory without a lock file is free).
    pub fn check_free(dir: &Path) -> Result<()> {
        let path = dir.join(LOCK_FILE);
        match File::open(&path) {
            Ok(file) => try_lock(&file, dir),
            Err(_) => Ok(()),
        }
    }
}

/// Refuses a lock file that is a symbolic link: unroll writes only its own files, inside the
/// run directory.
fn refuse_link(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(Error::Data(format!(
            "{} is a symbolic link, not unroll's lock file: remove it or choose another \
             directory",
            path.display()
        ))),
        _ => Ok(()),
    }
}

/// Takes `file`'s exclusive lock without waiting; a lock held elsewhere is
/// [`Error::RunLocked`] with the process id the file names.
fn try_lock(file: &File, dir: &Path) -> Result<()> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.take(32).read_to_string(&mut text);
            Err(Error::RunLocked {
                dir: dir.to_path_buf(),
                pid: text.trim().parse().ok(),
            })
        }
        Err(TryLockError::Error(e)) => Err(Error::io("lock", dir.join(LOCK_FILE), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_of_the_same_directory_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = RunLock::acquire(dir.path()).unwrap();
        let pid = std::process::id();
        match RunLock::acquire(dir.path()) {
            Err(Error::RunLocked { pid: Some(p), .. }) => assert_eq!(p, pid),
            other => panic!("expected RunLocked, got {other:?}"),
        }
        assert!(matches!(
            RunLock::check_free(dir.path()),
            Err(Error::RunLocked { .. })
        ));
        drop(first);
        RunLock::check_free(dir.path()).unwrap();
        RunLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn run_files_are_listed_and_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["metrics.jsonl", "model.safetensors.tmp", "notes.txt"] {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        assert_eq!(
            run_files_in(dir.path()),
            ["model.safetensors.tmp", "metrics.jsonl"]
        );
        let lock = RunLock::acquire(dir.path()).unwrap();
        remove_run_files(dir.path(), &lock).unwrap();
        assert!(run_files_in(dir.path()).is_empty());
        assert!(dir.path().join("notes.txt").exists());
        assert!(dir.path().join(LOCK_FILE).exists());
    }
}
