//! A batch shape's two plans (forward and backward) and the handles of their patchable
//! dispatches: the loss kernels, whose arguments carry the batch's mask sum, and the dropout
//! kernels, whose arguments carry the dropout setting. Also what the recording functions of
//! `forward.rs`, `backward.rs` and `gated.rs` share: the [`Recording`] they read and the
//! [`Calls`] they append to.

use std::ops::Range;

use bytemuck::Pod;

use crate::engine::cpu::dropout::{MaskKey, MaskSpan};
use crate::engine::gpu::buffers::{Region, at};
use crate::engine::gpu::context::GpuContext;
use crate::engine::gpu::dropout::DropoutArgs;
use crate::engine::gpu::gru::GateArgs;
use crate::engine::gpu::loss::LossArgs;
use crate::engine::gpu::matmul::{MatmulArgs, RowsArgs};
use crate::engine::gpu::matmul::{Operand, plain};
use crate::engine::gpu::pipelines::Pipelines;
use crate::engine::gpu::plan::offset32;
use crate::engine::gpu::plan::{Call, Plan};
use crate::engine::gpu::profile::StepPhase;
use crate::engine::gpu::rnn::Dims;
use crate::engine::gpu::rnn::RnnArgs;
use crate::engine::gpu::shape::{RecurrenceKernel, ShapeBuffers};
use crate::engine::gpu::{backward, forward};
use crate::engine::{Dropout, EdgeDropout, RowWindow};
use crate::error::Result;
use crate::model::{ModelConfig, ParamLayout};

/// Which of a shape's plans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanKind {
    Forward,
    Backward,
}

/// A loss dispatch: its plan, its index there and the rows of its chunk.
#[derive(Clone, Debug)]
pub struct LossSlot {
    pub plan: PlanKind,
    pub index: usize,
    pub rows: Range<usize>,
}

impl LossSlot {
    /// Its arguments for a batch whose mask sums to `count`, V = `v`.
    pub fn args(&self, v: usize, count: f64) -> Result<LossArgs> {
        LossArgs::new(self.rows.clone(), v, count)
    }
}

/// The block a dropout dispatch masks: its mask site and its shape per time step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaskBlock {
    /// The mask after this layer, or an edge site (`engine::cpu::dropout::EMBED_SITE`,
    /// `OUT_SITE`).
    pub boundary: usize,
    /// The batch's rows B and the block's width: the block is [T * B, width].
    pub rows: usize,
    pub width: usize,
}

impl MaskBlock {
    /// Its mask under the dropout setting `dropout`, the edge dropout `edges` and the row
    /// window `window`.
    pub fn key(
        &self,
        dropout: Option<Dropout>,
        edges: EdgeDropout,
        window: Option<RowWindow>,
    ) -> MaskKey {
        let span = MaskSpan::new(window, self.rows, self.width);
        MaskKey::at(dropout, edges, self.boundary).within(span)
    }
}

/// A dropout dispatch: its plan, its index there, and what it masks.
#[derive(Clone, Debug)]
pub struct DropoutSlot {
    pub plan: PlanKind,
    pub index: usize,
    /// Elements masked.
    pub n: usize,
    /// Element offsets of the source and the destination.
    pub offsets: (usize, usize),
    pub block: MaskBlock,
}

/// What a dropout dispatch's mask follows: the dropout setting, the edge dropout and the row
/// window.
pub type MaskSetting = (Option<Dropout>, EdgeDropout, Option<RowWindow>);

impl DropoutSlot {
    /// Its arguments under `setting`.
    pub fn args(&self, (dropout, edges, window): MaskSetting) -> Result<DropoutArgs> {
        let key = self.block.key(dropout, edges, window);
        DropoutArgs::new(self.n, self.offsets, key)
    }
}

/// What the recording functions read: the device, the model, the engine's flat buffers, the
/// dropout setting, and the shape's buffers and recurrence form.
pub struct Recording<'a> {
    pub ctx: &'a GpuContext,
    pub cfg: &'a ModelConfig,
    pub layout: &'a ParamLayout,
    pub params: &'a wgpu::Buffer,
    pub grads: &'a wgpu::Buffer,
    /// The loss sum's slot and the partial sums.
    pub scratch: &'a wgpu::Buffer,
    pub dropout: Option<Dropout>,
    /// The edge dropout; the shape has its dispatches only where it is on.
    pub edges: EdgeDropout,
    /// Where the batch lies in a batch shared with other engines (keys the masks).
    pub window: Option<RowWindow>,
    pub shape: &'a ShapeBuffers,
    pub kernel: RecurrenceKernel,
}

impl Recording<'_> {
    /// N = T * B.
    pub fn n(&self) -> usize {
        self.shape.steps * self.shape.rows
    }

    /// The block of the mask at `boundary` (a layer or an edge site), `width` wide.
    pub fn mask_block(&self, boundary: usize, width: usize) -> MaskBlock {
        MaskBlock {
            boundary,
            rows: self.shape.rows,
            width,
        }
    }

    /// The mask of `block` under the recording's setting.
    pub fn mask(&self, block: MaskBlock) -> MaskKey {
        block.key(self.dropout, self.edges, self.window)
    }

    /// The sizes of layer k's tanh/relu step kernels: B rows, H, the layer's input size, N.
    pub fn tanh_dims(&self, k: usize) -> Dims {
        Dims {
            rows: self.shape.rows,
            hidden: self.cfg.hidden_size,
            inputs: self.cfg.layer_input_size(k),
            n: self.n(),
        }
    }

    /// Row `row` of the output layer's input [N, D*W]: the top layer's output, or that output
    /// through the output dropout when it is on.
    pub fn output_input(&self, row: usize) -> Region<'_> {
        let w = self.cfg.output_width();
        match &self.shape.out_input {
            Some(x) => at(x, row * w),
            None => {
                let top = self.layer_output(self.cfg.layers - 1);
                at(top.buffer, top.offset + row * w)
            }
        }
    }

    /// Layer k's output [N, D*H] in time order: a bidirectional layer's output buffer, or the
    /// states' rows B.. .
    pub fn layer_output(&self, k: usize) -> Region<'_> {
        let layer = &self.shape.layers[k];
        match &layer.output {
            Some(o) => at(o, 0),
            None => at(&layer.states, self.shape.rows * self.cfg.state_width()),
        }
    }

    /// The direction strides of layer k's recurrence; `None` for one direction.
    pub fn dirs(&self, k: usize) -> Result<Option<Dirs>> {
        if !self.cfg.bidirectional {
            return Ok(None);
        }
        let (b, h) = (self.shape.rows, self.cfg.hidden_size);
        let w = self.layout.direction(k, 1).weight_hh - self.layout.direction(k, 0).weight_hh;
        let block = (self.shape.steps + 1) * b;
        Ok(Some(Dirs {
            w: offset32("stride", w)?,
            state: offset32("stride", block * self.cfg.state_width())?,
            cell: offset32("stride", block * h)?,
            gate: offset32("stride", self.n() * self.cfg.cell.gates() * h)?,
            dc: offset32("stride", b * h)?,
        }))
    }

    /// Layer k's step `call` of a gated cell over both directions where it has two.
    pub fn gate_call(&self, k: usize, call: Call) -> Result<Call> {
        let Some(d) = self.dirs(k)? else {
            return Ok(call);
        };
        // With a projection the gate kernels read and write m and dm, laid out as the
        // memories, in place of the states and their gradient.
        let state = if self.shape.cell.projected(k) {
            d.cell
        } else {
            d.state
        };
        call.over_directions::<GateArgs>(2, |a| {
            (a.dir_w, a.dir_state, a.dir_cell, a.dir_gate, a.dir_dc) =
                (d.w, state, d.cell, d.gate, d.dc);
        })
    }

    /// Layer k's tanh/relu step (or rows) `call` over both directions where it has two.
    pub fn rnn_call(&self, k: usize, call: Call) -> Result<Call> {
        let Some(d) = self.dirs(k)? else {
            return Ok(call);
        };
        call.over_directions::<RnnArgs>(2, |a| (a.dir_w, a.dir_state) = (d.w, d.state))
    }

    /// Layer k's wide tanh/relu step `call` over both directions where it has two.
    pub fn rows_call(&self, k: usize, call: Call) -> Result<Call> {
        let Some(d) = self.dirs(k)? else {
            return Ok(call);
        };
        call.over_directions::<RowsArgs>(2, |a| (a.dir_w, a.dir_state) = (d.w, d.state))
    }

    /// Layer k's per-step GEMM `calls` over both directions where it has two, A, B, C and the
    /// bias `strides` apart (from [`Dirs`]).
    pub fn matmul_calls(
        &self,
        k: usize,
        calls: Vec<Call>,
        strides: impl Fn(&Dirs) -> [u32; 4],
    ) -> Result<Vec<Call>> {
        let Some(d) = self.dirs(k)? else {
            return Ok(calls);
        };
        let [a_dir, b_dir, c_dir, bias_dir] = strides(&d);
        calls
            .into_iter()
            .map(|c| {
                c.over_directions::<MatmulArgs>(2, |a| {
                    (a.a_dir, a.b_dir, a.c_dir, a.bias_dir) = (a_dir, b_dir, c_dir, bias_dir)
                })
            })
            .collect()
    }

    /// The input of layer k as a GEMM operand [N, I_k]: the states below after dropout, the
    /// embedded tokens, or the dense batch.
    pub fn below(&self, k: usize) -> Operand<'_> {
        let shape = self.shape;
        match (&shape.layers[k].input, &shape.embedding) {
            (Some(x), _) => plain(at(x, 0)),
            (None, Some(e)) => plain(at(&e.embedded, 0)),
            (None, None) => plain(at(&shape.batch.inputs, 0)),
        }
    }
}

/// How far apart, in elements, a bidirectional layer's two directions are in each of its
/// arrays: the parameters (W_hh, b_hh, W_hr), the states and the state gradient, the memories
/// (and an LSTM projection's m and dm), the gate arrays (gates, a_hh, da), and dc. The second direction runs as workgroup z = 1 of the
/// same dispatches.
#[derive(Clone, Copy, Debug)]
pub struct Dirs {
    pub w: u32,
    pub state: u32,
    pub cell: u32,
    pub gate: u32,
    pub dc: u32,
}

/// The calls of one plan as they are recorded, with the phase marks of the timestamp profile
/// and the handles of the patchable dispatches.
pub struct Calls {
    plan: PlanKind,
    calls: Vec<Call>,
    /// (first dispatch, phase) of each phase.
    marks: Vec<(usize, StepPhase)>,
    loss: Vec<LossSlot>,
    dropout: Vec<DropoutSlot>,
    /// The calls of each chunk of the output layer, in order.
    output_chunks: Vec<Range<usize>>,
}

impl Calls {
    pub fn new(plan: PlanKind) -> Self {
        Calls {
            plan,
            calls: Vec::new(),
            marks: Vec::new(),
            loss: Vec::new(),
            dropout: Vec::new(),
            output_chunks: Vec::new(),
        }
    }

    /// Appends the calls of one chunk of the output layer that `record` pushes, remembering
    /// where they are, so that the chunk can be run again on its own.
    pub fn output_chunk(&mut self, record: impl FnOnce(&mut Self) -> Result<()>) -> Result<()> {
        let first = self.calls.len();
        record(self)?;
        self.output_chunks.push(first..self.calls.len());
        Ok(())
    }

    /// The calls from here on belong to `phase`.
    pub fn mark(&mut self, phase: StepPhase) {
        self.marks.push((self.calls.len(), phase));
    }

    pub fn push(&mut self, call: Call) {
        self.calls.push(call);
    }

    pub fn extend(&mut self, calls: Vec<Call>) {
        self.calls.extend(calls);
    }

    /// A loss call over `rows`, whose arguments every upload patches.
    pub fn push_loss(&mut self, call: Call, rows: Range<usize>) {
        self.loss.push(LossSlot {
            plan: self.plan,
            index: self.calls.len(),
            rows,
        });
        self.calls.push(call);
    }

    /// A dropout call of `n` elements at `offsets` masking `block`, whose arguments every
    /// change of the dropout setting or the row window patches.
    pub fn push_dropout(
        &mut self,
        call: Call,
        n: usize,
        offsets: (usize, usize),
        block: MaskBlock,
    ) {
        self.dropout.push(DropoutSlot {
            plan: self.plan,
            index: self.calls.len(),
            n,
            offsets,
            block,
        });
        self.calls.push(call);
    }
}

/// A shape's forward and backward plans with their patchable dispatches.
pub struct ShapePlans {
    pub forward: Plan,
    pub backward: Plan,
    /// The loss dispatches (in the forward plan, and again in the backward plan when the
    /// output layer runs in several chunks).
    pub loss_slots: Vec<LossSlot>,
    pub dropout_slots: Vec<DropoutSlot>,
    /// The forward plan's dispatches of each chunk of the output layer, in order: run again
    /// on their own, they compute that chunk's outputs of the last forward once more.
    pub output_chunks: Vec<Range<usize>>,
}

impl ShapePlans {
    /// Records the forward and the backward pass of `r` and builds their plans.
    pub fn record(r: &Recording<'_>, pipes: &mut Pipelines) -> Result<Self> {
        let mut fwd = Calls::new(PlanKind::Forward);
        forward::record_forward(r, &mut fwd)?;
        let mut bwd = Calls::new(PlanKind::Backward);
        backward::record_backward(r, &mut bwd)?;
        let mut loss_slots = fwd.loss;
        loss_slots.extend(bwd.loss);
        let mut dropout_slots = fwd.dropout;
        dropout_slots.extend(bwd.dropout);
        let output_chunks = fwd.output_chunks;
        let forward = Plan::build(r.ctx, pipes, "forward", fwd.calls)?.in_phases(&fwd.marks);
        let backward = Plan::build(r.ctx, pipes, "backward", bwd.calls)?.in_phases(&bwd.marks);
        Ok(ShapePlans {
            forward,
            backward,
            loss_slots,
            dropout_slots,
            output_chunks,
        })
    }

    /// The forward or the backward plan.
    pub fn plan(&self, which: PlanKind) -> &Plan {
        match which {
            PlanKind::Forward => &self.forward,
            PlanKind::Backward => &self.backward,
        }
    }

    /// Rewrites the arguments of dispatch `index` of plan `which`.
    pub fn patch<A: Pod>(&self, ctx: &GpuContext, (which, index): (PlanKind, usize), args: &A) {
        self.plan(which).patch(ctx, index, args);
    }

    /// Every loss dispatch's arguments for a batch whose mask sums to `count`.
    pub fn patch_losses(&self, ctx: &GpuContext, v: usize, count: f64) -> Result<()> {
        for slot in &self.loss_slots {
            self.patch(ctx, (slot.plan, slot.index), &slot.args(v, count)?);
        }
        Ok(())
    }

    /// Every dropout dispatch's arguments for `setting` (the dropout setting, the edge
    /// dropout and the row window).
    pub fn patch_dropout(&self, ctx: &GpuContext, setting: MaskSetting) -> Result<()> {
        for slot in &self.dropout_slots {
            self.patch(ctx, (slot.plan, slot.index), &slot.args(setting)?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::gpu::rnn::{EMBED_GATHER, RnnArgs};

    fn call() -> Call {
        Call::new(
            &EMBED_GATHER,
            Vec::new(),
            &[],
            &RnnArgs::default(),
            [1, 1, 1],
        )
    }

    #[test]
    fn slots_name_their_plan_and_the_index_their_call_lands_at() {
        let mut calls = Calls::new(PlanKind::Backward);
        calls.push(call());
        calls.push_loss(call(), 2..5);
        calls.extend(vec![call(), call()]);
        let block = MaskBlock {
            boundary: 1,
            rows: 2,
            width: 5,
        };
        calls.push_dropout(call(), 10, (4, 0), block);
        assert_eq!(calls.calls.len(), 5);
        let loss = &calls.loss[0];
        assert_eq!(
            (loss.plan, loss.index, loss.rows.clone()),
            (PlanKind::Backward, 1, 2..5)
        );
        let d = &calls.dropout[0];
        assert_eq!(
            (d.plan, d.index, d.n, d.offsets, d.block),
            (PlanKind::Backward, 4, 10, (4, 0), block)
        );
    }

    #[test]
    fn phase_marks_point_at_the_next_call() {
        let mut calls = Calls::new(PlanKind::Forward);
        calls.mark(StepPhase::Input);
        calls.push(call());
        calls.mark(StepPhase::Output);
        assert_eq!(
            calls.marks,
            vec![(0, StepPhase::Input), (1, StepPhase::Output)]
        );
    }
}
