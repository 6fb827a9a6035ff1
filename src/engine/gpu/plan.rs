//! Recording: kernel calls become dispatches with their bind groups and argument slots built
//! once (a [`Plan`]), and a [`Recorder`] strings dispatches, copies and clears together and
//! submits them as ONE command buffer, consecutive dispatches sharing ONE compute pass (one per
//! phase of the step while the timestamp profile of `profile.rs` runs).
//!
//! Arguments are small `#[repr(C)]` structs (mirrors of each shader's `Args`) stored in 256-byte
//! slots of one uniform buffer per plan; a dispatch selects its slot with a dynamic offset, so
//! the T dispatches of a time loop share one bind group.

use std::collections::HashMap;

use bytemuck::Pod;

use crate::engine::gpu::context::GpuContext;
use crate::engine::gpu::pipelines::{ARGS_SLOT, ArgsMirror, Constants, Kernel, Pipelines};
use crate::engine::gpu::profile::{PhaseTimes, Profiler, StepPhase};
use crate::error::{Error, Result};

/// One kernel launch, before its bind group and argument slot exist.
#[derive(Debug)]
pub struct Call {
    pub kernel: &'static Kernel,
    /// WGSL override constants.
    pub constants: Constants,
    /// The storage buffers, bound whole at bindings 1, 2, ...
    pub buffers: Vec<wgpu::Buffer>,
    /// The `Args` struct's bytes.
    pub args: Vec<u8>,
    /// The name of the mirror the arguments came from.
    pub args_mirror: &'static str,
    /// Workgroups along x, y, z.
    pub groups: [u32; 3],
}

impl Call {
    /// A call of `kernel` with `args`.
    pub fn new<A: ArgsMirror>(
        kernel: &'static Kernel,
        constants: Constants,
        buffers: &[&wgpu::Buffer],
        args: &A,
        groups: [u32; 3],
    ) -> Self {
        Call {
            kernel,
            constants,
            buffers: buffers.iter().map(|&b| b.clone()).collect(),
            args: bytemuck::bytes_of(args).to_vec(),
            args_mirror: A::LAYOUT.name,
            groups,
        }
    }

    /// The same call over `count` directions of a bidirectional layer (workgroup z), its
    /// arguments given their direction strides by `set`.
    pub fn over_directions<A: ArgsMirror>(
        mut self,
        count: usize,
        set: impl FnOnce(&mut A),
    ) -> Result<Self> {
        if self.args_mirror != A::LAYOUT.name || self.args.len() != A::LAYOUT.size {
            return Err(Error::Gpu(format!(
                "{} takes {} arguments, not {}",
                self.kernel.entry,
                self.args_mirror,
                A::LAYOUT.name
            )));
        }
        let mut args: A = bytemuck::pod_read_unaligned(&self.args);
        set(&mut args);
        self.args = bytemuck::bytes_of(&args).to_vec();
        self.groups[2] = offset32("directions", count)?;
        Ok(self)
    }

    /// Checks the call against its kernel's declaration: the arguments mirror the kernel
    /// declares, and one buffer per storage binding. A mismatch is a bug in a launcher, reported
    /// when the plan is built instead of as a device validation error (or a wrong result).
    pub fn check(&self) -> Result<()> {
        let k = self.kernel;
        if self.args_mirror != k.args.name || self.args.len() != k.args.size {
            return Err(Error::Gpu(format!(
                "{} takes {} arguments but was given {} ({} bytes)",
                k.entry,
                k.args.name,
                self.args_mirror,
                self.args.len()
            )));
        }
        if self.buffers.len() != k.bindings.len() {
            return Err(Error::Gpu(format!(
                "{} binds {} storage buffers but was given {}",
                k.entry,
                k.bindings.len(),
                self.buffers.len()
            )));
        }
        Ok(())
    }
}

/// A dispatch ready to record.
#[derive(Clone, Debug)]
pub struct Dispatch {
    pub entry: &'static str,
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    offset: u32,
    groups: [u32; 3],
    /// The part of the step it belongs to, for the timestamp profile.
    pub phase: StepPhase,
}

/// Workgroups for `threads` threads of a 1-D kernel with `wg` threads per workgroup, spread over
/// x and y when x alone would pass the device's limit (the kernels linearise (x, y)).
pub fn grid_1d(ctx: &GpuContext, threads: usize, wg: u32) -> Result<[u32; 3]> {
    let max = ctx.limits.max_compute_workgroups_per_dimension.max(1) as usize;
    let groups = threads.div_ceil(wg as usize).max(1);
    let x = groups.min(max);
    let y = groups.div_ceil(x);
    if y > max {
        return Err(Error::Shape(format!(
            "{threads} threads need more than {max} x {max} workgroups"
        )));
    }
    Ok([x as u32, y as u32, 1])
}

/// Workgroups for a 2-D tiling of `rows` x `cols` with `tile_rows` x `tile_cols` tiles.
pub fn grid_2d(
    ctx: &GpuContext,
    what: &str,
    rows: usize,
    cols: usize,
    tile_rows: u32,
    tile_cols: u32,
) -> Result<[u32; 3]> {
    let max = ctx.limits.max_compute_workgroups_per_dimension as usize;
    let x = cols.div_ceil(tile_cols as usize).max(1);
    let y = rows.div_ceil(tile_rows as usize).max(1);
    if x > max || y > max {
        return Err(Error::Shape(format!(
            "{what} over [{rows}, {cols}] needs {y} x {x} workgroups, more than the device's \
             {max} per dimension; use fewer rows per batch"
        )));
    }
    Ok([x as u32, y as u32, 1])
}

/// The element offset as the u32 the shaders index with.
pub fn offset32(what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Shape(format!("{what} {v} does not fit in 32 bits")))
}

/// Dispatches with their bind groups and argument slots, built once and replayed.
pub struct Plan {
    args: wgpu::Buffer,
    slot: u64,
    pub dispatches: Vec<Dispatch>,
}

impl Plan {
    /// Builds every call's pipeline, bind group (shared between calls of the same kernel on the
    /// same buffers) and argument slot.
    pub fn build(
        ctx: &GpuContext,
        pipes: &mut Pipelines,
        label: &str,
        calls: Vec<Call>,
    ) -> Result<Plan> {
        let align = ctx.limits.min_uniform_buffer_offset_alignment.max(1) as u64;
        let slot = ARGS_SLOT.div_ceil(align) * align;
        let mut bytes = vec![0u8; (slot as usize) * calls.len().max(1)];
        for (i, c) in calls.iter().enumerate() {
            c.check()?;
            let at = i * slot as usize;
            bytes[at..at + c.args.len()].copy_from_slice(&c.args);
        }
        let args = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.len() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        ctx.queue.write_buffer(&args, 0, &bytes);
        // wgpu hashes a buffer by its id, which never changes.
        #[allow(clippy::mutable_key_type)]
        let mut groups: HashMap<(&'static str, Vec<wgpu::Buffer>), wgpu::BindGroup> =
            HashMap::new();
        let mut dispatches = Vec::with_capacity(calls.len());
        for (i, c) in calls.into_iter().enumerate() {
            let pipeline = pipes.get(ctx, c.kernel, &c.constants)?;
            let bind_group = match groups.get(&(c.kernel.entry, c.buffers.clone())) {
                Some(g) => g.clone(),
                None => {
                    let layout = pipes.bind_group_layout(ctx, c.kernel);
                    let mut entries = vec![wgpu::BindGroupEntry {
                        binding: 0,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &args,
                            offset: 0,
                            size: wgpu::BufferSize::new(ARGS_SLOT),
                        }),
                    }];
                    for (j, b) in c.buffers.iter().enumerate() {
                        entries.push(wgpu::BindGroupEntry {
                            binding: j as u32 + 1,
                            resource: b.as_entire_binding(),
                        });
                    }
                    let g = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some(c.kernel.entry),
                        layout: &layout,
                        entries: &entries,
                    });
                    ctx.check(&format!("binding the buffers of {}", c.kernel.entry))?;
                    groups.insert((c.kernel.entry, c.buffers), g.clone());
                    g
                }
            };
            dispatches.push(Dispatch {
                entry: c.kernel.entry,
                pipeline,
                bind_group,
                offset: (i as u64 * slot) as u32,
                groups: c.groups,
                phase: StepPhase::Other,
            });
        }
        Ok(Plan {
            args,
            slot,
            dispatches,
        })
    }

    /// Tags the dispatches with their phases: `marks` lists `(first dispatch, phase)` in
    /// increasing order, and each phase runs to the next mark.
    pub fn in_phases(mut self, marks: &[(usize, StepPhase)]) -> Self {
        for (k, &(start, phase)) in marks.iter().enumerate() {
            let end = marks.get(k + 1).map_or(self.dispatches.len(), |m| m.0);
            for d in self.dispatches.iter_mut().take(end).skip(start) {
                d.phase = phase;
            }
        }
        self
    }

    /// Rewrites the arguments of dispatch `index`; the write lands before the next submit, so
    /// the caller submits any recorded use of the old arguments first.
    pub fn patch<A: Pod>(&self, ctx: &GpuContext, index: usize, args: &A) {
        ctx.queue.write_buffer(
            &self.args,
            index as u64 * self.slot,
            bytemuck::bytes_of(args),
        );
    }
}

/// One recorded command.
#[derive(Clone, Debug)]
pub enum Op {
    Dispatch(Dispatch),
    /// Copy `elements` 4-byte values between two different buffers.
    Copy {
        src: wgpu::Buffer,
        src_offset: usize,
        dst: wgpu::Buffer,
        dst_offset: usize,
        elements: usize,
    },
    /// Zero `elements` values from element `offset`.
    Clear {
        buffer: wgpu::Buffer,
        offset: usize,
        elements: usize,
    },
}

/// Counts of what a recorder has submitted, to check the execution model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubmitCounts {
    pub submits: u64,
    pub passes: u64,
    pub dispatches: u64,
}

/// Commands waiting to be submitted, in order.
#[derive(Default)]
pub struct Recorder {
    ops: Vec<Op>,
    counts: SubmitCounts,
    /// With a profiler, every submit times its passes per phase and waits for the device.
    profiler: Option<Profiler>,
}

impl Recorder {
    /// Appends every dispatch of `plan`.
    pub fn record(&mut self, plan: &Plan) {
        self.ops
            .extend(plan.dispatches.iter().cloned().map(Op::Dispatch));
    }

    /// Appends the dispatches `part` of `plan`.
    pub fn record_part(&mut self, plan: &Plan, part: std::ops::Range<usize>) {
        self.ops
            .extend(plan.dispatches[part].iter().cloned().map(Op::Dispatch));
    }

    /// Appends one command.
    pub fn push(&mut self, op: Op) {
        self.ops.push(op);
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// What has been submitted so far.
    pub fn counts(&self) -> SubmitCounts {
        self.counts
    }

    /// Starts (`Some`) or stops (`None`) timing the phases of every submit; returns the
    /// profiler that was there.
    pub fn set_profiler(&mut self, profiler: Option<Profiler>) -> Option<Profiler> {
        std::mem::replace(&mut self.profiler, profiler)
    }

    /// The device time per phase since the last call (`None` when not profiling).
    pub fn take_phase_times(&mut self) -> Option<PhaseTimes> {
        self.profiler.as_mut().map(Profiler::take)
    }

    /// Records everything into one command encoder (one compute pass per run of consecutive
    /// dispatches, and per phase when profiling) and submits it once. Does not wait for the
    /// device, except to read the timestamps when profiling.
    pub fn submit(&mut self, ctx: &GpuContext) -> Result<()> {
        if self.ops.is_empty() {
            return Ok(());
        }
        let ops = std::mem::take(&mut self.ops);
        let profiling = self.profiler.is_some();
        // Where a pass ends: at any other command, and at a phase change when profiling.
        let same_pass = |a: &Op, b: Option<&Op>| match (a, b) {
            (Op::Dispatch(x), Some(Op::Dispatch(y))) => !profiling || x.phase == y.phase,
            _ => false,
        };
        // The query set for this submit's passes (counted only when profiling).
        let queries = match self.profiler.as_mut() {
            Some(p) => {
                let passes = (0..ops.len())
                    .filter(|&i| {
                        matches!(ops[i], Op::Dispatch(_))
                            && (i == 0 || !same_pass(&ops[i - 1], ops.get(i)))
                    })
                    .count();
                p.query_set(ctx, passes).cloned()
            }
            None => None,
        };
        let capacity = self.profiler.as_ref().map_or(0, Profiler::capacity);
        let mut timed: Vec<StepPhase> = Vec::new();
        let mut encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("unroll step"),
            });
        let mut i = 0;
        while i < ops.len() {
            match &ops[i] {
                Op::Dispatch(first) => {
                    let slot = timed.len() as u32;
                    let timestamp_writes = match &queries {
                        Some(set) if timed.len() < capacity => {
                            timed.push(first.phase);
                            Some(wgpu::ComputePassTimestampWrites {
                                query_set: set,
                                beginning_of_pass_write_index: Some(2 * slot),
                                end_of_pass_write_index: Some(2 * slot + 1),
                            })
                        }
                        Some(_) => {
                            if let Some(p) = self.profiler.as_mut() {
                                p.untimed();
                            }
                            None
                        }
                        None => None,
                    };
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("unroll kernels"),
                        timestamp_writes,
                    });
                    self.counts.passes += 1;
                    while let Some(Op::Dispatch(d)) = ops.get(i) {
                        pass.set_pipeline(&d.pipeline);
                        pass.set_bind_group(0, &d.bind_group, &[d.offset]);
                        pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
                        self.counts.dispatches += 1;
                        i += 1;
                        if !same_pass(&ops[i - 1], ops.get(i)) {
                            break;
                        }
                    }
                }
                Op::Copy {
                    src,
                    src_offset,
                    dst,
                    dst_offset,
                    elements,
                } => {
                    encoder.copy_buffer_to_buffer(
                        src,
                        *src_offset as u64 * 4,
                        dst,
                        *dst_offset as u64 * 4,
                        *elements as u64 * 4,
                    );
                    i += 1;
                }
                Op::Clear {
                    buffer,
                    offset,
                    elements,
                } => {
                    encoder.clear_buffer(buffer, *offset as u64 * 4, Some(*elements as u64 * 4));
                    i += 1;
                }
            }
        }
        if let Some(p) = &self.profiler {
            p.resolve(&mut encoder, timed.len());
        }
        ctx.queue.submit([encoder.finish()]);
        self.counts.submits += 1;
        ctx.check("recording the step")?;
        match self.profiler.as_mut() {
            Some(p) => p.collect(ctx, &timed),
            None => Ok(()),
        }
    }
}

/// Builds `calls` into a plan, submits it and waits: for tests and one-off work.
pub fn run_now(ctx: &GpuContext, pipes: &mut Pipelines, calls: Vec<Call>) -> Result<()> {
    let plan = Plan::build(ctx, pipes, "one-off", calls)?;
    let mut rec = Recorder::default();
    rec.record(&plan);
    rec.submit(ctx)?;
    ctx.wait()?;
    ctx.check("running one-off kernels")
}

#[cfg(test)]
mod tests {
    use super::Call;
    use crate::engine::gpu::matmul::{MATMUL, MatmulArgs};
    use crate::engine::gpu::rnn::RnnArgs;

    #[test]
    fn a_call_is_checked_against_its_kernels_declaration() {
        let wrong = Call::new(&MATMUL, vec![], &[], &RnnArgs::default(), [1, 1, 1]);
        let msg = wrong.check().unwrap_err().to_string();
        assert!(
            msg.contains("matmul takes MatmulArgs arguments but was given RnnArgs"),
            "{msg}"
        );
        // The right mirror passes that check and meets the next: no buffers for its bindings.
        let unbound = Call::new(&MATMUL, vec![], &[], &MatmulArgs::default(), [1, 1, 1]);
        let msg = unbound.check().unwrap_err().to_string();
        assert!(msg.contains("matmul binds"), "{msg}");
        assert!(msg.contains("but was given 0"), "{msg}");
    }
}
