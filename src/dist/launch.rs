//! How a process finds out that an MPI launcher (`mpirun`, `mpiexec`, `srun`) started it, and
//! how many processes the launcher started, from the environment the launchers set.

use crate::error::{Error, Result};

/// What the launcher's environment says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    /// The variable that gave it away, and its value.
    pub var: &'static str,
    pub value: String,
    /// The number of processes the launcher started, where the environment says.
    pub size: Option<usize>,
}

/// The variables of the launchers, in the order they are looked at: Open MPI's, the PMI of
/// MPICH's Hydra and of Slurm's PMI-2, and PMIx (Slurm, Open MPI 5), whose rank alone is set.
/// `SLURM_*` alone is not a launch: a batch script's shell has them too.
const SIZE_VARS: [&str; 2] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"];
const RANK_VARS: [&str; 1] = ["PMIX_RANK"];

/// The launch of this process, from `var` (the environment); `None` when no launcher started
/// it.
pub fn launch_in(var: impl Fn(&str) -> Option<String>) -> Option<Launch> {
    for name in SIZE_VARS {
        if let Some(value) = var(name) {
            let size = value.trim().parse().ok();
            return Some(Launch {
                var: name,
                value,
                size,
            });
        }
    }
    for name in RANK_VARS {
        if let Some(value) = var(name) {
            // Slurm says how many tasks it started; PMIx alone does not.
            let size = var("SLURM_NTASKS").and_then(|n| n.trim().parse().ok());
            return Some(Launch {
                var: name,
                value,
                size,
            });
        }
    }
    None
}

/// The launch of this process, from its environment.
pub fn launch() -> Option<Launch> {
    launch_in(|name| std::env::var(name).ok())
}

/// Refuses a launch of more than one process (or of an unknown number) in a build without MPI:
/// each process would train alone, think it is the only one and write the same files.
pub fn refuse_without_mpi(launch: &Launch) -> Result<()> {
    if launch.size == Some(1) {
        return Ok(());
    }
    let started = match launch.size {
        Some(n) => format!("{n} processes"),
        None => "an unknown number of processes".into(),
    };
    Err(Error::Config(format!(
        "an MPI launcher started {started} ({}={}), but this unroll was built without MPI, so \
         each would train alone and write the same files; build it with `cargo build --release \
         --features mpi` (see the README, \"Several GPUs and machines\"), or run it without the \
         launcher",
        launch.var, launch.value
    )))
}

/// Refuses an MPI library whose world is not the launcher's: a binary linked to another MPI
/// than the launcher's (MPICH under Open MPI's `mpirun`, say) runs as N jobs of one process.
pub fn check_world(launch: &Launch, world: usize, library: &str) -> Result<()> {
    match launch.size {
        Some(n) if n != world => Err(Error::Config(format!(
            "the launcher started {n} processes ({}={}), but the MPI library this unroll is \
             linked to ({library}) sees {world}: the launcher belongs to another MPI; start it \
             with the mpirun of the MPI it was built against, or build it against the \
             launcher's (MPI_PKG_CONFIG, see the README)",
            launch.var, launch.value
        ))),
        _ => Ok(()),
    }
}
