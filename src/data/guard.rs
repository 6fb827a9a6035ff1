//! A corpus file changing under a run: what a run can tell and what it does about it.
//!
//! - **Between runs**: a run stores a [`fingerprint`] of its corpus's bytes (with their
//!   length) and a resume refuses a corpus whose fingerprint differs, so a corpus that was
//!   edited or shuffled without changing its length is caught.
//! - **While training**: corpora up to [`in_memory_max`] bytes are read into memory, so nothing
//!   done to the file can reach the run. Larger ones stay memory-mapped; the run checks the
//!   file's [`FileStamp`] (length and modification time) before every batch and stops with an
//!   error when it changed, and a SIGBUS (a read of mapped pages that a truncation took away,
//!   which no check can rule out between two batches) ends the process with a message instead
//!   of a signal death: the handler is installed when a corpus is mapped, and the command says
//!   what the message adds ([`report_truncation`], [`report_truncation_during`]). The checkpoints are replaced only by rename,
//!   so the last one is intact either way.

use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::time::SystemTime;

use crate::error::{Error, Result};

/// Corpora of at most this many bytes are read into memory instead of being memory-mapped.
pub const IN_MEMORY_MAX: u64 = 64 << 20;

/// The environment variable that lowers (or raises) [`IN_MEMORY_MAX`], in bytes; `0` maps every
/// corpus. Meant for tests of the mapped path on small files.
pub const IN_MEMORY_MAX_VAR: &str = "UNROLL_IN_MEMORY_CORPUS_MAX";

/// The largest corpus read into memory: [`IN_MEMORY_MAX`], or what [`IN_MEMORY_MAX_VAR`] says.
pub fn in_memory_max() -> u64 {
    std::env::var(IN_MEMORY_MAX_VAR)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(IN_MEMORY_MAX)
}

/// Corpora up to this many bytes are fingerprinted whole; larger ones by [`SAMPLES`] blocks.
pub const WHOLE_HASH_MAX: usize = 1 << 30;
/// Blocks a larger corpus's fingerprint reads, spread evenly from its start to its end.
pub const SAMPLES: usize = 1024;
/// Bytes of each sampled block.
pub const SAMPLE_BYTES: usize = 64 << 10;

/// A 64-bit fingerprint of a corpus's `bytes` and their length: a multiply-rotate hash of
/// every 8-byte word (order-sensitive, so a shuffled corpus differs), of the whole text up to
/// [`WHOLE_HASH_MAX`] bytes and of [`SAMPLES`] evenly spread blocks of [`SAMPLE_BYTES`] beyond,
/// so a resume of a multi-gigabyte corpus reads 64 MiB. `done(range)` is called after each
/// range is read (a mapped corpus releases its pages there).
pub fn fingerprint(bytes: &[u8], mut done: impl FnMut(std::ops::Range<usize>)) -> u64 {
    let mut h = Hash(0x243f_6a88_85a3_08d3 ^ bytes.len() as u64);
    for block in blocks(bytes.len(), WHOLE_HASH_MAX) {
        h.eat(&bytes[block.clone()]);
        done(block);
    }
    h.finish()
}

/// The byte ranges [`fingerprint`] reads of a text of `len` bytes: all of it (in chunks of
/// 32 MiB) up to `whole_max`, else [`SAMPLES`] blocks from its start to its end.
fn blocks(len: usize, whole_max: usize) -> Vec<std::ops::Range<usize>> {
    const CHUNK: usize = 32 << 20;
    if len <= whole_max || len < SAMPLE_BYTES {
        return (0..len)
            .step_by(CHUNK)
            .map(|at| at..(at + CHUNK).min(len))
            .collect();
    }
    let last = len - SAMPLE_BYTES;
    (0..SAMPLES)
        .map(|i| i * last / (SAMPLES - 1))
        .map(|at| at..at + SAMPLE_BYTES)
        .collect()
}

/// The running state of [`fingerprint`].
/// A 64-bit hash of every byte of each of `parts` and of its length (the fingerprint's hash,
/// never sampled): equal for equal parts, barring a collision.
pub fn hash_parts(parts: &[&[u8]]) -> u64 {
    let mut h = Hash(0x243f_6a88_85a3_08d3 ^ parts.len() as u64);
    for part in parts {
        h.eat(part);
        h.word(part.len() as u64);
    }
    h.finish()
}

struct Hash(u64);

impl Hash {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;

    fn word(&mut self, w: u64) {
        self.0 = (self.0 ^ w).wrapping_mul(Self::K).rotate_left(27);
    }

    fn eat(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut b = [0; 8];
            b.copy_from_slice(w);
            self.word(u64::from_le_bytes(b));
        }
        let rest = words.remainder();
        let mut b = [0; 8];
        b[..rest.len()].copy_from_slice(rest);
        self.word(u64::from_le_bytes(b) ^ ((rest.len() as u64) << 56));
    }

    /// The splitmix64 finalizer, so every input bit reaches every output bit.
    fn finish(self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// A file's length and modification time: what a mapped corpus is checked against while a run
/// trains on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
}

impl FileStamp {
    /// The stamp of `path` now.
    pub fn of(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io("read the corpus", path, e))?;
        Ok(FileStamp {
            len: meta.len(),
            modified: meta.modified().ok(),
        })
    }

    /// Fails when `path` no longer has this stamp: the corpus changed under the run, whose
    /// last checkpoint in `dir` is intact.
    pub fn check(&self, path: &Path, dir: &Path) -> Result<()> {
        let now = FileStamp::of(path).ok();
        if now == Some(*self) {
            return Ok(());
        }
        Err(Error::Data(format!(
            "the corpus {} changed while training (its length or modification time is not what \
             it was when the run opened it); stopped without saving from it: the last \
             checkpoint in {} is intact, continue with `unroll train --resume {}` once the \
             corpus is restored",
            path.display(),
            dir.display(),
            dir.display()
        )))
    }
}

/// Turns a SIGBUS (a read of the mapped `corpus` after it was truncated) into a message on
/// standard error and exit status 1, instead of a death by signal without a word. The message
/// is written by the handler with one `write(2)` and the process ends with `_exit`, both
/// async-signal-safe; the checkpoints in `dir` are only ever replaced by rename, so the last
/// one is intact.
pub fn report_truncation(corpus: &Path, dir: &Path) -> Result<()> {
    let then = format!(
        "the last checkpoint in {} is intact: continue with `unroll train --resume {}` once the \
         corpus is restored",
        dir.display(),
        dir.display()
    );
    report_truncation_during(corpus, "training", &then)
}

/// Like [`report_truncation`], for any command that reads a mapped corpus: the message says
/// the corpus was truncated while `doing`, then `then` (what became of the command's work).
/// The latest call's message is the one printed.
pub fn report_truncation_during(corpus: &Path, doing: &str, then: &str) -> Result<()> {
    let note = truncation_note(corpus, doing, then);
    // The previous note is never freed: the handler may be reading it. A process sets a few.
    NOTE.swap(Box::into_raw(Box::new(note)), Ordering::SeqCst);
    install_handler(corpus)
}

/// Called when `corpus` is memory-mapped: from then on a SIGBUS is reported, with the message
/// of the command reading it when it set one ([`report_truncation_during`]), else a plain one.
pub(crate) fn report_truncation_when_mapped(corpus: &Path) -> Result<()> {
    let then = "run the command again once the corpus is restored";
    let note = Box::into_raw(Box::new(truncation_note(corpus, "it was read", then)));
    if NOTE
        .compare_exchange(
            std::ptr::null_mut(),
            note,
            Ordering::SeqCst,
            Ordering::SeqCst,
        )
        .is_err()
    {
        // SAFETY: `note` was never published; this is its only owner.
        drop(unsafe { Box::from_raw(note) });
    }
    install_handler(corpus)
}

/// What a SIGBUS prints: the latest note, set before any mapped read that it concerns.
static NOTE: AtomicPtr<Vec<u8>> = AtomicPtr::new(std::ptr::null_mut());

fn truncation_note(corpus: &Path, doing: &str, then: &str) -> Vec<u8> {
    format!(
        "error: the corpus {} was truncated while {doing} (bus error reading its memory map); \
         {then}\n",
        corpus.display(),
    )
    .into_bytes()
}

/// Installs the SIGBUS handler once per process: it writes [`NOTE`] and exits with status 1.
fn install_handler(corpus: &Path) -> Result<()> {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    static INSTALLED: OnceLock<std::result::Result<(), std::io::ErrorKind>> = OnceLock::new();
    let handler = || {
        let note = NOTE.load(Ordering::SeqCst);
        // SAFETY: fd 2 (standard error) stays open for the process's life; the `File` is never
        // dropped, so it is not closed. `write_all` calls write(2) and allocates nothing. A
        // published note is never freed, so the pointer stays valid.
        let mut err = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(2) });
        if let Some(note) = unsafe { note.as_ref() } {
            let _ = err.write_all(note);
        }
        signal_hook::low_level::exit(1);
    };
    let installed = INSTALLED.get_or_init(|| {
        // SAFETY: the handler only writes a prepared buffer and calls `_exit`
        // (async-signal-safe); it never returns, so the faulting read is not retried.
        unsafe { signal_hook::low_level::register(signal_hook::consts::SIGBUS, handler) }
            .map(|_| ())
            .map_err(|e| e.kind())
    });
    installed.map_err(|kind| Error::io("install a handler for the corpus", corpus, kind.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_sees_order_and_length_and_samples_large_texts() {
        let text: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let fp = |b: &[u8]| fingerprint(b, |_| {});
        let mut swapped = text.clone();
        swapped.swap(17, 4000);
        assert_ne!(fp(&text), fp(&swapped));
        assert_ne!(fp(&text), fp(&text[..9_999]));
        let mut padded = text[..9_999].to_vec();
        padded.push(0);
        assert_ne!(fp(&text[..9_999]), fp(&padded));
        assert_eq!(fp(&text), fp(&text.clone()));
        let big = WHOLE_HASH_MAX + 1;
        let sampled = blocks(big, WHOLE_HASH_MAX);
        assert_eq!(sampled.len(), SAMPLES);
        assert_eq!(sampled[0].start, 0);
        assert_eq!(sampled[SAMPLES - 1].end, big);
        assert!(sampled.windows(2).all(|w| w[0].end <= w[1].start));
        assert_eq!(blocks(100, WHOLE_HASH_MAX), vec![(0..100)]);
    }
}
