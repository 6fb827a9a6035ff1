//! Device time per phase of the training step, from GPU timestamp queries.
//!
//! Every dispatch of the engine's plans carries the [`StepPhase`] it belongs to. With profiling
//! on, the recorder ends a compute pass wherever the phase changes and asks the device to write a
//! timestamp at the beginning and at the end of every pass (`timestamp_writes`, which needs only
//! `Features::TIMESTAMP_QUERY`). After each submit it resolves the queries, waits for the device
//! and adds each pass's end minus beginning to its phase. Profiling therefore waits for the
//! device at every submit; the device times it reports are unaffected by that wait, but copies,
//! clears and the gaps between passes are in no phase.

pub use crate::engine::profile::{PhaseTimes, StepPhase};

use crate::engine::gpu::buffers::map_read;
use crate::engine::gpu::context::GpuContext;
use crate::error::{Error, Result};

/// The most queries one submit writes (two per pass); passes beyond it stay untimed and are
/// reported as such. wgpu allows 4096 queries per set.
const MAX_QUERIES: u32 = 4096;

/// The query set and buffers of the timestamp profile, grown to the largest submit seen.
pub struct Profiler {
    queries: Option<(wgpu::QuerySet, wgpu::Buffer, wgpu::Buffer, u32)>,
    times: PhaseTimes,
}

impl Profiler {
    /// A profiler for `ctx`, whose device must have been opened with timestamp queries.
    pub fn new(ctx: &GpuContext) -> Result<Self> {
        if !ctx.has_timestamps() {
            return Err(Error::Gpu(format!(
                "{} has no timestamp queries (wgpu feature TIMESTAMP_QUERY), so there is no \
                 per-phase device time",
                ctx.info.name
            )));
        }
        Ok(Profiler {
            queries: None,
            times: PhaseTimes::default(),
        })
    }

    /// The query set for `passes` passes (at most `MAX_QUERIES` / 2 of them), growing it when
    /// a submit needs more than any before.
    pub fn query_set(&mut self, ctx: &GpuContext, passes: usize) -> Option<&wgpu::QuerySet> {
        let want = (passes as u64 * 2).min(MAX_QUERIES as u64) as u32;
        if want == 0 {
            return None;
        }
        if self.queries.as_ref().is_none_or(|q| q.3 < want) {
            let set = ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("phase timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: want,
            });
            let bytes = want as u64 * 8;
            let buffer = |label, usage| {
                ctx.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size: bytes,
                    usage,
                    mapped_at_creation: false,
                })
            };
            let resolve = buffer(
                "timestamps",
                wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            );
            let readback = buffer(
                "timestamps readback",
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            );
            self.queries = Some((set, resolve, readback, want));
        }
        self.queries.as_ref().map(|q| &q.0)
    }

    /// Counts a pass that found no free query (more than `MAX_QUERIES` / 2 in one submit).
    pub fn untimed(&mut self) {
        self.times.untimed_passes += 1;
    }

    /// How many passes the query set can time.
    pub fn capacity(&self) -> usize {
        self.queries.as_ref().map_or(0, |q| q.3 as usize / 2)
    }

    /// Records the resolve of the first `passes` passes' queries into the read-back buffer.
    pub fn resolve(&self, encoder: &mut wgpu::CommandEncoder, passes: usize) {
        if let Some((set, resolve, readback, _)) = &self.queries {
            let n = passes as u32 * 2;
            encoder.resolve_query_set(set, 0..n, resolve, 0);
            encoder.copy_buffer_to_buffer(resolve, 0, readback, 0, n as u64 * 8);
        }
    }

    /// Waits for the submitted work, reads the timestamps of `phases` (one per timed pass, in
    /// order) and adds each pass's device time to its phase.
    pub fn collect(&mut self, ctx: &GpuContext, phases: &[StepPhase]) -> Result<()> {
        let Some((_, _, readback, _)) = &self.queries else {
            return Ok(());
        };
        if phases.is_empty() {
            return Ok(());
        }
        let ticks: Vec<u64> = map_read(
            ctx,
            readback,
            phases.len() as u64 * 16,
            "reading the timestamps",
        )?;
        let period = ctx.queue.get_timestamp_period() as f64;
        for (phase, pair) in phases.iter().zip(ticks.chunks_exact(2)) {
            // A counter that wrapped or was reset between the two writes gives no time.
            let ns = pair[1].saturating_sub(pair[0]) as f64 * period;
            self.times.add(*phase, ns);
            self.times.passes += 1;
        }
        Ok(())
    }

    /// The device time per phase since the last call, and a fresh count.
    pub fn take(&mut self) -> PhaseTimes {
        std::mem::take(&mut self.times)
    }
}
