//! The benchmarked step on the N ranks of a data-parallel run, against one process.
//!
//! Every rank runs its share of the global batch through [`Sharded`], the engine data-parallel
//! training runs: the same steps in lockstep, the gradients summed across the ranks before every
//! optimizer step. In the same invocation rank 0 also runs the whole global batch alone, while
//! the others wait ([`Group::wait_for_all`]), so that the ratio of the two is measured under the
//! same conditions. With several rounds the two alternate and their samples are pooled.
//!
//! A step of the job takes as long as its slowest rank: the job's sample `i` is the largest of
//! the ranks' samples `i` (the ranks time the same steps, which their all-reduce keeps in
//! lockstep).

use std::rc::Rc;

use serde::Serialize;

use super::{BenchEngine, DeviceKind, Spread, StepBench, StepReport, StepShape, Timing};
use crate::dist::{Group, ReduceTimes, Sharded, share};
use crate::error::{Error, Result};
use crate::model::{ParamLayout, init_params};

/// The step measured on every rank and, on rank 0, in one process.
pub struct ParallelBench {
    group: Rc<dyn Group>,
    /// This rank's share of every batch, through [`Sharded`].
    ranks: StepBench,
    /// Rank 0: the whole batch in this process alone.
    alone: Option<StepBench>,
    /// Gradient values summed per step.
    gradient: usize,
    /// Pooled over the rounds: this rank's measurement, rank 0's alone, the all-reduce time of
    /// the timed steps.
    mine: Option<StepReport>,
    one: Option<StepReport>,
    reduce: ReduceTimes,
}

/// One rank's part of the job.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RankReport {
    pub rank: usize,
    /// Its share of the B streams.
    pub rows: usize,
    /// `rows * T / median step time` of this rank.
    pub tokens_per_s: f64,
    pub step_ms: Spread,
    /// Mean per timed step: reading the gradients back, summing them across the ranks and
    /// writing them again.
    pub allreduce_seconds_per_step: f64,
    /// Mean per timed step: the sum itself (the communication, and the wait for the others).
    pub allreduce_sum_seconds_per_step: f64,
}

/// The gradient sum of the job.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AllReduceReport {
    /// f32 values summed per step (the model's parameters).
    pub gradient_values: usize,
    pub gradient_bytes: usize,
    /// Timed steps behind the means.
    pub steps: u64,
    /// The ranks' least mean per step of read-back + sum + write. The rank that reaches the sum
    /// last waits least for the others, so the least is the nearest to the cost itself.
    pub seconds_per_step: f64,
    /// The ranks' least mean per step of the sum itself.
    pub sum_seconds_per_step: f64,
}

/// The job against one process.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Scaling {
    pub processes: usize,
    /// The MPI library and the number of processes.
    pub group: String,
    pub per_rank: Vec<RankReport>,
    pub allreduce: AllReduceReport,
    /// Rank 0 alone on the whole global batch, in the same invocation.
    pub one_process: StepReport,
    /// Tokens/s of the job over tokens/s of one process.
    pub speedup: f64,
    /// `speedup / processes`.
    pub efficiency: f64,
}

/// What [`ParallelBench::report`] gives rank 0.
#[derive(Clone, Debug, PartialEq)]
pub struct ParallelReport {
    /// The job: the global shape, a step as long as its slowest rank's, tokens/s of the whole
    /// job (the global batch's tokens over the median step).
    pub job: StepReport,
    pub scaling: Scaling,
}

impl ParallelBench {
    /// The step of `shape` (its global batch) on every rank of `group` (each on the machine's
    /// GPU of its local rank), and on rank 0 alone. Parameters and batches come from `seed`, as
    /// in [`StepBench::new`]. Every rank must call it.
    pub fn new(
        device: DeviceKind,
        shape: StepShape,
        seed: u64,
        group: Rc<dyn Group>,
    ) -> Result<Self> {
        let n = group.size();
        if n == 0 || !shape.batch.is_multiple_of(n) {
            return Err(Error::Config(format!(
                "a batch of {} streams does not split into {n} equal shares",
                shape.batch
            )));
        }
        let config = shape.config()?;
        let layout = ParamLayout::new(&config)?;
        let params = init_params(&config, &layout, seed);
        let nth = group.local_rank();
        let inner = BenchEngine::open_nth(device, &config, &params, nth)?.into_engine();
        let engine = BenchEngine::Sharded {
            engine: Box::new(Sharded::new(inner, Rc::clone(&group))),
            device,
        };
        let ranks = StepBench::with_engine(engine, shape, seed)?;
        let alone = match group.is_root() {
            true => Some(StepBench::with_engine(
                BenchEngine::open_nth(device, &config, &params, nth)?,
                shape,
                seed,
            )?),
            false => None,
        };
        Ok(ParallelBench {
            group,
            ranks,
            alone,
            gradient: layout.len(),
            mine: None,
            one: None,
            reduce: ReduceTimes::default(),
        })
    }

    /// This rank's engine (a [`Sharded`] one) and, on rank 0, the one that runs alone.
    pub fn engines(&mut self) -> (&mut BenchEngine, Option<&mut BenchEngine>) {
        (
            &mut self.ranks.engine,
            self.alone.as_mut().map(|a| &mut a.engine),
        )
    }

    fn reduce_times(&mut self) -> ReduceTimes {
        match &self.ranks.engine {
            BenchEngine::Sharded { engine, .. } => engine.reduce_times(),
            _ => ReduceTimes::default(),
        }
    }

    /// One round: the job on every rank (with the per-phase profile of each rank's engine when
    /// `profile`), then rank 0 alone while the others wait. Every rank must call it.
    pub fn round(&mut self, timing: Timing, profile: bool) -> Result<()> {
        for _ in 0..timing.warmup {
            self.ranks.step()?;
        }
        self.ranks.engine.wait()?;
        let before = self.reduce_times();
        let timed = Timing {
            warmup: 0,
            ..timing
        };
        let mut report = self.ranks.measure(timed, false)?;
        let after = self.reduce_times();
        self.reduce.steps += after.steps - before.steps;
        self.reduce.seconds += after.seconds - before.seconds;
        self.reduce.sum_seconds += after.sum_seconds - before.sum_seconds;
        if profile {
            report.profile.push(self.ranks.profile(timing.repeats)?);
            report
                .profile
                .extend(self.ranks.phase_profile(timing.repeats)?);
        }
        report.timing = timing;
        pool(&mut self.mine, report)?;
        if let Some(alone) = &mut self.alone {
            pool(&mut self.one, alone.measure(timing, false)?)?;
        }
        self.group.wait_for_all()
    }

    /// The report of the rounds so far, on rank 0 (`None` on the others). Every rank must call
    /// it: the ranks' samples are gathered.
    pub fn report(&self) -> Result<Option<ParallelReport>> {
        let mine = self
            .mine
            .as_ref()
            .ok_or_else(|| Error::Misuse("no round was measured".into()))?;
        let all = gather(self.group.as_ref(), &RankSamples::of(mine, self.reduce))?;
        let (Some(one), true) = (&self.one, self.group.is_root()) else {
            return Ok(None);
        };
        let shape = mine.shape;
        let per_rank = (all.iter().enumerate())
            .map(|(rank, s)| s.report(rank, &shape, self.group.size()))
            .collect::<Result<Vec<_>>>()?;
        let job = job_report(mine, &all)?;
        let speedup = job.tokens_per_s / one.tokens_per_s;
        let scaling = Scaling {
            processes: self.group.size(),
            group: self.group.describe(),
            allreduce: self.allreduce(&per_rank),
            per_rank,
            one_process: one.clone(),
            speedup,
            efficiency: speedup / self.group.size() as f64,
        };
        Ok(Some(ParallelReport { job, scaling }))
    }

    fn allreduce(&self, ranks: &[RankReport]) -> AllReduceReport {
        let least = |f: fn(&RankReport) -> f64| ranks.iter().map(f).fold(f64::INFINITY, f64::min);
        AllReduceReport {
            gradient_values: self.gradient,
            gradient_bytes: self.gradient * std::mem::size_of::<f32>(),
            steps: self.reduce.steps,
            seconds_per_step: least(|r| r.allreduce_seconds_per_step),
            sum_seconds_per_step: least(|r| r.allreduce_sum_seconds_per_step),
        }
    }
}

/// Adds `report` to the rounds pooled in `into`.
fn pool(into: &mut Option<StepReport>, report: StepReport) -> Result<()> {
    match into {
        None => *into = Some(report),
        Some(r) => r.merge(report)?,
    }
    Ok(())
}

/// What each rank sends rank 0: its step samples and all-reduce times.
#[derive(Clone, Debug, PartialEq)]
struct RankSamples {
    steps: Vec<f64>,
    latency: Vec<f64>,
    reduce: ReduceTimes,
}

impl RankSamples {
    fn of(report: &StepReport, reduce: ReduceTimes) -> Self {
        RankSamples {
            steps: report.samples.0.clone(),
            latency: report.samples.1.clone(),
            reduce,
        }
    }

    /// As f64 values: the counts, the all-reduce times, then the samples.
    fn encode(&self) -> Vec<f64> {
        let head = [
            self.steps.len() as f64,
            self.latency.len() as f64,
            self.reduce.steps as f64,
            self.reduce.seconds,
            self.reduce.sum_seconds,
        ];
        [&head[..], &self.steps, &self.latency].concat()
    }

    fn decode(values: &[f64]) -> Result<Self> {
        let bad = || Error::Dist("a rank sent malformed benchmark samples".into());
        let (head, rest) = values.split_at_checked(5).ok_or_else(bad)?;
        let (steps, latency) = (head[0] as usize, head[1] as usize);
        if rest.len() != steps + latency {
            return Err(bad());
        }
        Ok(RankSamples {
            steps: rest[..steps].to_vec(),
            latency: rest[steps..].to_vec(),
            reduce: ReduceTimes {
                steps: head[2] as u64,
                seconds: head[3],
                sum_seconds: head[4],
            },
        })
    }

    /// Rank `rank`'s part of the job of `shape` over `size` ranks.
    fn report(&self, rank: usize, shape: &StepShape, size: usize) -> Result<RankReport> {
        let rows = share(shape.batch, rank, size).len();
        let step_ms = Spread::of(&self.steps)?;
        let per_step = |s: f64| match self.reduce.steps {
            0 => 0.0,
            n => s / n as f64,
        };
        Ok(RankReport {
            rank,
            rows,
            tokens_per_s: (rows * shape.seq_len) as f64 / (step_ms.median * 1e-3),
            step_ms,
            allreduce_seconds_per_step: per_step(self.reduce.seconds),
            allreduce_sum_seconds_per_step: per_step(self.reduce.sum_seconds),
        })
    }
}

/// Every rank's samples, in rank order.
fn gather(group: &dyn Group, mine: &RankSamples) -> Result<Vec<RankSamples>> {
    let bytes: Vec<u8> = mine.encode().iter().flat_map(|v| v.to_le_bytes()).collect();
    group
        .all_gather_bytes(&bytes)?
        .iter()
        .map(|b| {
            let values: Vec<f64> = b
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or_default()))
                .collect();
            RankSamples::decode(&values)
        })
        .collect()
}

/// The element-wise largest of the ranks' samples: a step of the job lasts as long as its
/// slowest rank's.
fn slowest(all: &[Vec<f64>]) -> Result<Vec<f64>> {
    let n = all.first().map_or(0, Vec::len);
    if all.iter().any(|s| s.len() != n) {
        return Err(Error::Dist(
            "the ranks timed different numbers of steps".into(),
        ));
    }
    Ok((0..n)
        .map(|i| all.iter().map(|s| s[i]).fold(f64::NEG_INFINITY, f64::max))
        .collect())
}

/// Rank 0's report made the job's: its samples replaced by the slowest rank's, its tokens/s
/// the whole batch's.
fn job_report(mine: &StepReport, all: &[RankSamples]) -> Result<StepReport> {
    let steps = slowest(&all.iter().map(|s| s.steps.clone()).collect::<Vec<_>>())?;
    let latency = slowest(&all.iter().map(|s| s.latency.clone()).collect::<Vec<_>>())?;
    let mut job = mine.clone();
    job.step_ms = Spread::of(&steps)?;
    job.latency_ms = Spread::of(&latency)?;
    job.tokens_per_s = mine.shape.tokens() as f64 / (job.step_ms.median * 1e-3);
    job.samples = (steps, latency);
    Ok(job)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_survive_the_trip_between_ranks() {
        let s = RankSamples {
            steps: vec![1.5, 2.0, 3.25],
            latency: vec![4.0],
            reduce: ReduceTimes {
                steps: 7,
                seconds: 0.5,
                sum_seconds: 0.25,
            },
        };
        assert_eq!(RankSamples::decode(&s.encode()).ok(), Some(s.clone()));
        let mut cut = s.encode();
        cut.pop();
        assert!(RankSamples::decode(&cut).is_err());
    }

    #[test]
    fn the_job_steps_as_slowly_as_its_slowest_rank() {
        let all = vec![vec![1.0, 5.0, 2.0], vec![3.0, 4.0, 2.5]];
        assert_eq!(slowest(&all).ok(), Some(vec![3.0, 5.0, 2.5]));
        assert!(slowest(&[vec![1.0], vec![1.0, 2.0]]).is_err());
    }
}
