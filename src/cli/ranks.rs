//! The processes of a data-parallel run as the command line sees them: joining the MPI job an
//! MPI launcher started (or refusing it in a build without MPI), the agreement of every rank on
//! how its set-up went, and what a rank does when it fails.

use std::rc::Rc;
use std::sync::OnceLock;

use unroll::dist::{self, Group, Sharded};
use unroll::engine::Engine;

use super::exit_status;

thread_local! {
    /// The processes of this run, once [`join`] has found them.
    static GROUP: std::cell::RefCell<Option<Rc<dyn Group>>> = const { std::cell::RefCell::new(None) };
}

/// The processes of this run ([`dist::Solo`] before [`join`] and for a process alone).
pub fn group() -> Rc<dyn Group> {
    GROUP
        .with(|g| g.borrow().clone())
        .unwrap_or_else(dist::solo)
}

/// This process's rank in a data-parallel run of several, once it has joined one: messages of
/// the ranks other than 0 name it.
static RANK: OnceLock<usize> = OnceLock::new();

/// How an error message starts on this rank: `error` on rank 0 or alone, `error (rank k)`.
pub fn error_label() -> String {
    match RANK.get() {
        Some(&r) if r > 0 => format!("error (rank {r})"),
        _ => "error".into(),
    }
}

/// The processes of this run: [`dist::Solo`] unless an MPI launcher started it; then the MPI
/// job (a build with the `mpi` feature) or an error (a build without it). `runs_distributed`:
/// whether the command can run on several processes (the others are refused under a launcher
/// of more than one).
pub fn join(runs_distributed: bool) -> anyhow::Result<Rc<dyn Group>> {
    let Some(launch) = dist::launch::launch() else {
        return Ok(dist::solo());
    };
    let group = join_launched(&launch)?;
    if group.size() > 1 {
        if !runs_distributed {
            usage!(
                "this command runs in one process; only train, eval and bench run under an MPI \
                 launcher with more than one process"
            );
        }
        let _ = RANK.set(group.rank());
        if !group.is_root() {
            quiet::silence()?;
        }
    }
    GROUP.with(|g| *g.borrow_mut() = Some(Rc::clone(&group)));
    Ok(group)
}

/// The CPU engine's threads of each of the `local` processes of this machine: its cores shared
/// among them (RAYON_NUM_THREADS, when set, decides instead), so that ranks on one machine do
/// not oversubscribe its cores.
pub fn share_cores() {
    if group().local_size() == 1 || std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return;
    }
    // Fails only when the pool already exists, which it does not before the first engine.
    let _ = size_thread_pool(cores_per_rank());
}

/// This machine's cores shared among the processes of the run on it (at least one).
pub fn cores_per_rank() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / group().local_size().max(1)).max(1)
}

/// Sizes the CPU engine's thread pool to `threads` without the environment, which the MPI
/// library's threads may be reading already; an error once the pool exists.
pub fn size_thread_pool(threads: usize) -> anyhow::Result<()> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .map_err(|e| anyhow::anyhow!("sizing the CPU thread pool: {e}"))
}

#[cfg(feature = "mpi")]
fn join_launched(launch: &dist::launch::Launch) -> anyhow::Result<Rc<dyn Group>> {
    Ok(Rc::new(dist::mpi::MpiGroup::join(launch)?))
}

#[cfg(not(feature = "mpi"))]
fn join_launched(launch: &dist::launch::Launch) -> anyhow::Result<Rc<dyn Group>> {
    dist::launch::refuse_without_mpi(launch)?;
    Ok(dist::solo())
}

/// An error that every rank of a data-parallel run knows of, because they agreed on it: each
/// exits normally with `code`, and `error` is printed by the one rank that tells it (it is
/// `None` on the others).
#[derive(Debug)]
pub struct Agreed {
    pub code: u8,
    pub error: Option<anyhow::Error>,
}

impl std::fmt::Display for Agreed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.error {
            Some(e) => write!(f, "{e:#}"),
            None => f.write_str("another process of the run failed"),
        }
    }
}

impl std::error::Error for Agreed {}

/// `result` on every rank when every rank succeeded; otherwise an [`Agreed`] error on every rank,
/// told by the lowest failing rank, with the highest exit status of the failures. A point every
/// rank reaches, so that a failure of one (a bad option, an unreadable file) ends every process
/// cleanly instead of leaving the others waiting for it.
pub fn agree<T>(group: &dyn Group, result: anyhow::Result<T>) -> anyhow::Result<T> {
    if group.size() == 1 {
        return result;
    }
    let code = match &result {
        Ok(_) => 0,
        Err(e) => u64::from(exit_status(e).max(1)),
    };
    let codes = dist::all_gather_u64(group, code)?;
    let Some(first) = codes.iter().position(|&c| c != 0) else {
        return result;
    };
    let code = codes.iter().copied().max().unwrap_or(1) as u8;
    let error = match result {
        Err(e) if first == group.rank() => Some(e),
        _ => None,
    };
    Err(anyhow::Error::new(Agreed { code, error }))
}

/// What a rank of several does when `result` is an error the others may not know of (one that
/// was not agreed on): it prints the error and ends every process of the run, which may be
/// waiting for it in a collective operation.
pub fn end_on_failure(group: &dyn Group, result: &anyhow::Result<u8>) {
    if group.size() == 1 {
        return;
    }
    if let Err(e) = result
        && e.downcast_ref::<Agreed>().is_none()
    {
        quiet::restore();
        eprintln!("{}: {e:#}", error_label());
        group.abort(i32::from(exit_status(e)));
    }
}

/// The output of the ranks other than 0: their standard output and error go to /dev/null (rank
/// 0 prints the run's log), except for their own errors.
#[cfg(feature = "mpi")]
mod quiet {
    use std::sync::OnceLock;

    /// The standard error as it was, for the rank's own errors.
    static SAVED: OnceLock<i32> = OnceLock::new();

    pub fn silence() -> anyhow::Result<()> {
        // SAFETY: plain descriptor calls on descriptors this process owns; the path is a
        // NUL-terminated literal.
        unsafe {
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
            let saved = libc::dup(2);
            if null < 0 || saved < 0 {
                anyhow::bail!("cannot open /dev/null for the output of this rank");
            }
            let _ = SAVED.set(saved);
            libc::dup2(null, 1);
            libc::dup2(null, 2);
            libc::close(null);
        }
        Ok(())
    }

    pub fn restore() {
        if let Some(&saved) = SAVED.get() {
            // SAFETY: `saved` is a descriptor this process duplicated and still owns.
            unsafe {
                libc::dup2(saved, 2);
            }
        }
    }
}

#[cfg(not(feature = "mpi"))]
mod quiet {
    pub fn silence() -> anyhow::Result<()> {
        Ok(())
    }
    pub fn restore() {}
}

/// Restores this rank's standard error, for its own error message.
pub fn restore_stderr() {
    quiet::restore();
}

/// The engine of this rank: `engine` itself for a process alone, else the [`Sharded`] engine
/// over it, which runs the rank's share of every batch of `batch` rows. The batch must split
/// into as many shares as there are ranks.
pub fn shard(engine: Box<dyn Engine>, batch: usize) -> anyhow::Result<Box<dyn Engine>> {
    let group = group();
    if group.size() == 1 {
        return Ok(engine);
    }
    check_split(batch)?;
    Ok(Box::new(Sharded::new(engine, group)))
}

/// Refuses a batch of `batch` rows that does not split into one equal share per process.
pub fn check_split(batch: usize) -> anyhow::Result<()> {
    let n = group().size();
    if !batch.is_multiple_of(n) {
        usage!(
            "--batch {batch} does not split into {n} equal shares, one per process: the batch \
             is the global one, so give a multiple of {n} (or run {} processes)",
            divisors_below(batch, n)
        );
    }
    Ok(())
}

/// The engine of this rank for evaluation: `engine` itself for a process alone, else the
/// [`Sharded`] engine over it, which scores the rank's share of every batch (shares of a batch
/// with fewer rows than processes are empty).
pub fn shard_rows(engine: Box<dyn Engine>) -> Box<dyn Engine> {
    let group = group();
    match group.size() {
        1 => engine,
        _ => Box::new(Sharded::new(engine, group)),
    }
}

/// The process counts up to `n` that divide `batch`, as text ("1, 2 or 4").
fn divisors_below(batch: usize, n: usize) -> String {
    let d: Vec<String> = (1..=n.max(1))
        .filter(|k| batch.is_multiple_of(*k))
        .map(|k| k.to_string())
        .collect();
    match d.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => d.join(""),
    }
}

/// Starts the training of every rank from rank 0's parameters, after checking that every rank
/// has the same settings and data (`hash` of them), and says on rank 0 what each rank runs on.
pub fn start(engine: &mut dyn Engine, hash: u64) -> anyhow::Result<()> {
    let group = group();
    if group.size() == 1 {
        return Ok(());
    }
    let checked = dist::check_same(
        group.as_ref(),
        "settings or data (options, corpus or pairs, vocabulary: a hash of them differs)",
        hash,
    );
    agree(group.as_ref(), checked.map_err(anyhow::Error::from))?;
    let mut params = engine.params()?;
    dist::broadcast_f32(group.as_ref(), &mut params)?;
    engine.set_params(&params)?;
    let devices = group.all_gather_bytes(engine.describe().as_bytes())?;
    eprintln!(
        "data-parallel: {}, each on its share of every batch",
        group.describe()
    );
    for d in devices {
        eprintln!("  {}", String::from_utf8_lossy(&d));
    }
    Ok(())
}

/// The settings of a run as bytes, for the hash [`start`] compares.
pub fn run_json(run: &unroll::train::state::RunSpec) -> Vec<u8> {
    serde_json::to_vec(run).unwrap_or_default()
}

/// The model's configuration as bytes, for the hash [`start`] compares.
pub fn config_json(config: &unroll::model::ModelConfig) -> Vec<u8> {
    serde_json::to_vec(config).unwrap_or_default()
}
