//! The [`Group`] of an MPI job (rsmpi), for runs started by `mpirun`, `mpiexec` or `srun`.

use mpi::Count;
use mpi::collective::SystemOperation;
use mpi::datatype::PartitionMut;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use super::Group;
use super::launch::{Launch, check_world};
use crate::error::{Error, Result};

/// The processes of `MPI_COMM_WORLD`. MPI is finalized when it is dropped.
pub struct MpiGroup {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    local_rank: usize,
    local_size: usize,
    library: String,
    // Dropped last: finalizes MPI.
    _universe: mpi::environment::Universe,
}

impl MpiGroup {
    /// Initializes MPI for the processes `launch` started, checking that the library's world
    /// is the launcher's.
    pub fn join(launch: &Launch) -> Result<Self> {
        let universe = mpi::initialize()
            .ok_or_else(|| Error::Dist("MPI could not be initialized (it already was)".into()))?;
        let world = universe.world();
        let library = mpi::environment::library_version()
            .map(|v| {
                v.split([',', '\n'])
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_string()
            })
            .unwrap_or_else(|_| "an MPI library".into());
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        check_world(launch, (size, rank), &library)?;
        // The processes of this machine: the GPU a rank takes is its rank among them.
        let local = world.split_shared(world.rank());
        let (local_rank, local_size) = (local.rank() as usize, local.size() as usize);
        Ok(MpiGroup {
            world,
            rank,
            size,
            local_rank,
            local_size,
            library,
            _universe: universe,
        })
    }
}

impl MpiGroup {
    /// Sums `values` element-wise over the ranks (all-reduce; rsmpi takes no in-place buffer,
    /// so the values are sent from a copy).
    fn sum<T: Equivalence + Copy>(&self, values: &mut [T]) -> Result<()> {
        count(values.len())?;
        let send = values.to_vec();
        self.world
            .all_reduce_into(&send[..], values, SystemOperation::sum());
        Ok(())
    }
}

fn count(n: usize) -> Result<Count> {
    Count::try_from(n)
        .map_err(|_| Error::Dist(format!("{n} values are too many for one MPI message")))
}

impl Group for MpiGroup {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn local_rank(&self) -> usize {
        self.local_rank
    }
    fn local_size(&self) -> usize {
        self.local_size
    }
    fn describe(&self) -> String {
        format!("{} processes over MPI ({})", self.size, self.library)
    }
    fn sum_f32(&self, values: &mut [f32]) -> Result<()> {
        self.sum(values)
    }
    fn sum_f64(&self, values: &mut [f64]) -> Result<()> {
        self.sum(values)
    }
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>) -> Result<()> {
        let root = self.world.process_at_rank(0);
        let mut len = bytes.len() as u64;
        root.broadcast_into(&mut len);
        let len =
            usize::try_from(len).map_err(|_| Error::Dist(format!("rank 0 sent {len} bytes")))?;
        count(len)?;
        bytes.resize(len, 0);
        // Every rank knows the length: an empty message is not sent.
        if len > 0 {
            root.broadcast_into(&mut bytes[..]);
        }
        Ok(())
    }
    fn all_gather_bytes(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        let n = count(mine.len())?;
        let mut counts: Vec<Count> = vec![0; self.size];
        self.world.all_gather_into(&n, &mut counts[..]);
        let mut displs = Vec::with_capacity(self.size);
        let mut total: usize = 0;
        for &c in &counts {
            displs.push(count(total)?);
            total += c as usize;
        }
        count(total)?;
        if total == 0 {
            // Every rank knows the counts: nothing is sent.
            return Ok(vec![Vec::new(); self.size]);
        }
        let mut buf = vec![0u8; total];
        {
            let mut partition = PartitionMut::new(&mut buf[..], &counts[..], &displs[..]);
            self.world.all_gather_varcount_into(mine, &mut partition);
        }
        Ok((counts.iter().zip(&displs))
            .map(|(&c, &d)| buf[d as usize..(d + c) as usize].to_vec())
            .collect())
    }
    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
    fn wait_for_all(&self) -> Result<()> {
        // A blocking barrier busy-polls (Open MPI's shared memory), taking a core from the rank
        // that works; a non-blocking one tested every millisecond sleeps instead.
        let mut request = self.world.immediate_barrier();
        loop {
            match request.test() {
                Ok(_) => return Ok(()),
                Err(pending) => request = pending,
            }
            std::thread::sleep(IDLE_POLL);
        }
    }
}

/// How often a rank that waits in [`Group::wait_for_all`] looks whether the others arrived.
const IDLE_POLL: std::time::Duration = std::time::Duration::from_millis(1);
