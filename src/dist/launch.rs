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
    /// This process's rank among them, where the environment says.
    pub rank: Option<usize>,
}

/// The variables of the launchers, in the order they are looked at: Open MPI's, the PMI of
/// MPICH's Hydra and of Slurm's PMI-2, and PMIx (Slurm, Open MPI 5), whose rank alone is set.
/// `SLURM_*` alone is not a launch: a batch script's shell has them too.
const SIZE_VARS: [&str; 2] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"];
const RANK_VARS: [&str; 1] = ["PMIX_RANK"];
/// The variables that give the rank, with the size variable they go with.
const RANK_OF: [(&str, &str); 3] = [
    ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),
    ("PMI_SIZE", "PMI_RANK"),
    ("PMIX_RANK", "PMIX_RANK"),
];

/// The launch of this process, from `var` (the environment); `None` when no launcher started
/// it.
pub fn launch_in(var: impl Fn(&str) -> Option<String>) -> Option<Launch> {
    let number = |name: &str| var(name).and_then(|v| v.trim().parse().ok());
    let rank_of = |name: &str| {
        let (_, rank) = RANK_OF.iter().find(|(size, _)| *size == name)?;
        number(rank)
    };
    for name in SIZE_VARS {
        if let Some(value) = var(name) {
            let size = value.trim().parse().ok();
            return Some(Launch {
                var: name,
                value,
                size,
                rank: rank_of(name),
            });
        }
    }
    for name in RANK_VARS {
        if let Some(value) = var(name) {
            // Slurm says how many tasks it started; PMIx alone does not.
            return Some(Launch {
                var: name,
                value,
                size: number("SLURM_NTASKS"),
                rank: rank_of(name),
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
pub fn check_world(launch: &Launch, (world, rank): (usize, usize), library: &str) -> Result<()> {
    if let Some(r) = launch.rank.filter(|&r| r != rank) {
        return Err(Error::Config(format!(
            "the launcher made this process rank {r} ({}), but the MPI library this unroll is \
             linked to ({library}) makes it rank {rank} of {world}: the launcher belongs to \
             another MPI; start it with the mpirun of the MPI it was built against, or build it \
             against the launcher's (MPI_PKG_CONFIG, see the README)",
            launch.var
        )));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn the_launchers_environments_are_recognised() {
        let open_mpi = launch_in(env(&[("OMPI_COMM_WORLD_SIZE", "4")])).unwrap();
        assert_eq!(
            (open_mpi.var, open_mpi.size),
            ("OMPI_COMM_WORLD_SIZE", Some(4))
        );
        let hydra = launch_in(env(&[("PMI_SIZE", "2"), ("PMI_RANK", "1")])).unwrap();
        assert_eq!((hydra.var, hydra.size), ("PMI_SIZE", Some(2)));
        let pmix = launch_in(env(&[("PMIX_RANK", "0"), ("SLURM_NTASKS", "8")])).unwrap();
        assert_eq!((pmix.var, pmix.size), ("PMIX_RANK", Some(8)));
        let pmix_alone = launch_in(env(&[("PMIX_RANK", "1")])).unwrap();
        assert_eq!(pmix_alone.size, None);
        // A batch script's shell is not a launch.
        assert_eq!(
            launch_in(env(&[("SLURM_NTASKS", "8"), ("SLURM_PROCID", "0")])),
            None
        );
        assert_eq!(launch_in(env(&[])), None);
    }

    #[test]
    fn a_build_without_mpi_refuses_more_than_one_process() {
        let of = |vars: &[(&str, &str)]| refuse_without_mpi(&launch_in(env(vars)).unwrap());
        let e = of(&[("OMPI_COMM_WORLD_SIZE", "2")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("2 processes") && e.contains("--features mpi"),
            "{e}"
        );
        assert!(
            of(&[("PMIX_RANK", "0")]).is_err(),
            "an unknown number is refused"
        );
        assert!(
            of(&[("PMI_SIZE", "1")]).is_ok(),
            "one process is a process alone"
        );
    }

    #[test]
    fn a_world_that_is_not_the_launchers_is_refused() {
        let launch = launch_in(env(&[("OMPI_COMM_WORLD_SIZE", "3")])).unwrap();
        let e = check_world(&launch, (1, 0), "MPICH 4.0")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("started 3") && e.contains("sees 1") && e.contains("MPICH"),
            "{e}"
        );
        assert!(check_world(&launch, (3, 2), "Open MPI").is_ok());
        let unknown = launch_in(env(&[("PMIX_RANK", "0")])).unwrap();
        assert!(check_world(&unknown, (5, 0), "Open MPI").is_ok());
        // A rank of a job of unknown size that the library makes a job of its own.
        let pmix = launch_in(env(&[("PMIX_RANK", "1")])).unwrap();
        let e = check_world(&pmix, (1, 0), "MPICH 4.0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("rank 1") && e.contains("rank 0 of 1"), "{e}");
        let hydra = launch_in(env(&[("PMI_SIZE", "2"), ("PMI_RANK", "1")])).unwrap();
        assert_eq!(hydra.rank, Some(1));
        assert!(check_world(&hydra, (2, 0), "Open MPI").is_err());
    }
}
