//! Data-parallel training: N processes (ranks) train one model, each on its contiguous share of
//! the rows of every batch, with the gradients summed across them before every optimizer step.
//!
//! The processes talk through a [`Group`]: [`Solo`] for a process alone, or MPI (`mpi` feature,
//! [`mpi::MpiGroup`]) under `mpirun`/`srun`. [`Sharded`] is the [`crate::engine::Engine`] of a
//! rank: it takes the global batch, runs the rank's share of it on the engine it wraps and makes
//! every read-back (loss, gradients, carried state) the global one, so that the trainer runs the
//! one-process algorithm unchanged. docs/ARCHITECTURE.md ("Data-parallel training") describes
//! the design and README.md ("Several GPUs and machines") its use.

pub mod launch;
#[cfg(feature = "mpi")]
pub mod mpi;
mod sharded;

use std::ops::Range;
use std::rc::Rc;

pub use sharded::{ReduceTimes, Sharded};

use crate::data::guard::hash_parts;
use crate::error::{Error, Result};

/// The processes of a data-parallel run and the collective operations among them. Every rank
/// must make the same calls in the same order (they wait for each other); rank 0 is the root,
/// which alone writes the run's files.
pub trait Group {
    /// This process's rank, `0..size`.
    fn rank(&self) -> usize;
    /// The number of processes.
    fn size(&self) -> usize;
    /// This process's rank among the processes of its machine (which GPU it takes).
    fn local_rank(&self) -> usize;
    /// The number of processes on this machine (which share its cores).
    fn local_size(&self) -> usize;
    /// The library and the number of processes, for logs.
    fn describe(&self) -> String;
    /// Sums `values` element-wise over the ranks; every rank gets the same sums.
    fn sum_f32(&self, values: &mut [f32]) -> Result<()>;
    /// Sums `values` element-wise over the ranks; every rank gets the same sums.
    fn sum_f64(&self, values: &mut [f64]) -> Result<()>;
    /// Replaces `bytes` on every rank by rank 0's.
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>) -> Result<()>;
    /// Every rank's `mine`, in rank order.
    fn all_gather_bytes(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>>;
    /// Ends every process of the run at once with exit status `code`: what a rank does when it
    /// fails while the others may be waiting for it.
    fn abort(&self, code: i32) -> !;

    /// Whether this is rank 0, which writes the run's files and prints its log.
    fn is_root(&self) -> bool {
        self.rank() == 0
    }

    /// Returns once every rank has called it: where some ranks wait while another works alone
    /// (`unroll bench` timing one process). MPI waits without spinning on a core here, so that
    /// the waiting ranks leave the CPUs to the one that works.
    fn wait_for_all(&self) -> Result<()> {
        self.sum_f64(&mut [0.0])
    }
}

/// A process alone: every collective operation is the identity.
#[derive(Clone, Copy, Debug, Default)]
pub struct Solo;

impl Group for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn local_rank(&self) -> usize {
        0
    }
    fn local_size(&self) -> usize {
        1
    }
    fn describe(&self) -> String {
        "one process".into()
    }
    fn sum_f32(&self, _: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn sum_f64(&self, _: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn broadcast_bytes(&self, _: &mut Vec<u8>) -> Result<()> {
        Ok(())
    }
    fn all_gather_bytes(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        Ok(vec![mine.to_vec()])
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// A process alone, shared.
pub fn solo() -> Rc<dyn Group> {
    Rc::new(Solo)
}

/// The rows of `rows` that rank `rank` of `size` takes: a contiguous share, the shares differing
/// by at most one row (`rows * rank / size .. rows * (rank + 1) / size`), so that the ranks in
/// order cover every row once. Empty when there are fewer rows than ranks.
pub fn share(rows: usize, rank: usize, size: usize) -> Range<usize> {
    let size = size.max(1);
    let at = |r: usize| (rows as u128 * r as u128 / size as u128) as usize;
    at(rank)..at(rank + 1)
}

/// Rank 0's `values` on every rank.
pub fn broadcast_f32(group: &dyn Group, values: &mut Vec<f32>) -> Result<()> {
    if group.size() == 1 {
        return Ok(());
    }
    let mut bytes: Vec<u8> = bytemuck::cast_slice(values).to_vec();
    group.broadcast_bytes(&mut bytes)?;
    *values = f32s(&bytes);
    Ok(())
}

/// The f32 values of `bytes` as the helpers here send them (little-endian).
fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Every rank's `values`, concatenated in rank order.
pub fn all_gather_f32(group: &dyn Group, values: &[f32]) -> Result<Vec<Vec<f32>>> {
    let parts = group.all_gather_bytes(bytemuck::cast_slice(values))?;
    Ok(parts.iter().map(|p| f32s(p)).collect())
}

/// Rank 0's `read()` on every rank: rank 0 runs it and sends the bytes, or its error, which
/// every rank then returns (the others as [`Error::Dist`] naming rank 0).
pub fn broadcast_result(
    group: &dyn Group,
    read: impl FnOnce() -> Result<Vec<u8>>,
) -> Result<Vec<u8>> {
    if group.size() == 1 {
        return read();
    }
    let mine = match group.is_root() {
        true => Some(read()),
        false => None,
    };
    // One byte of status (0: the bytes follow; 1: an error message follows).
    let mut message = match &mine {
        Some(Ok(bytes)) => [&[0u8][..], bytes].concat(),
        Some(Err(e)) => [&[1u8][..], e.to_string().as_bytes()].concat(),
        None => Vec::new(),
    };
    group.broadcast_bytes(&mut message)?;
    match (mine, message.split_first()) {
        (Some(result), _) => result,
        (None, Some((0, bytes))) => Ok(bytes.to_vec()),
        (None, Some((_, text))) => Err(Error::Dist(format!(
            "rank 0 failed: {}",
            String::from_utf8_lossy(text)
        ))),
        (None, None) => Err(Error::Dist("rank 0 sent nothing".into())),
    }
}

/// Whether `flag` is set on any rank.
pub fn any(group: &dyn Group, flag: bool) -> Result<bool> {
    let mut v = [f64::from(u8::from(flag))];
    group.sum_f64(&mut v)?;
    Ok(v[0] > 0.0)
}

/// Every rank's `value`, in rank order.
pub fn all_gather_u64(group: &dyn Group, value: u64) -> Result<Vec<u64>> {
    let parts = group.all_gather_bytes(&value.to_le_bytes())?;
    parts
        .iter()
        .map(|p| {
            <[u8; 8]>::try_from(p.as_slice())
                .map(u64::from_le_bytes)
                .map_err(|_| Error::Dist("a rank sent a malformed value".into()))
        })
        .collect()
}

/// Checks that every rank has rank 0's `value` of `what` (a hash of settings and data, a
/// checksum of the parameters): an error naming the ranks that differ otherwise.
pub fn check_same(group: &dyn Group, what: &str, value: u64) -> Result<()> {
    let all = all_gather_u64(group, value)?;
    let differ: Vec<String> = (all.iter().enumerate())
        .filter(|&(_, v)| *v != all[0])
        .map(|(r, _)| r.to_string())
        .collect();
    if differ.is_empty() {
        return Ok(());
    }
    Err(Error::Dist(format!(
        "rank{} {} of {} {} other {what} than rank 0",
        if differ.len() > 1 { "s" } else { "" },
        differ.join(", "),
        group.size(),
        if differ.len() > 1 { "have" } else { "has" },
    )))
}

/// A cheap checksum of `values` (a hash of all their bits): equal on every rank exactly when
/// the values are bitwise equal, barring a collision.
pub fn checksum(values: &[f32]) -> u64 {
    hash_parts(&[bytemuck::cast_slice(values)])
}

/// A hash of `parts` (settings as JSON, data fingerprints), to compare across ranks.
pub fn settings_hash(parts: &[&[u8]]) -> u64 {
    hash_parts(parts)
}
