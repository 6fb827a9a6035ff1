//! The GPU engine: the [`Engine`] contract on wgpu compute shaders, held to the CPU reference.
//!
//! Parameters, gradients and the two optimizer moments are four flat storage buffers in
//! `ParamLayout` order. Per batch shape (T, B) the engine allocates once the buffers named in
//! `shape.rs` (the batch, per layer and direction the states `[(T+1) * B, H]` with rows 0..B
//! the initial state, the per-cell arrays such as a gated layer's gate activations `[N, G*H]` and an LSTM's
//! memories, the logits and their gradient), resolves the shape's recurrence form once
//! (`shape::RecurrenceKernel`), and records two plans (`recording.rs`): forward (`forward.rs`:
//! dropout of the layer below, input projection over all N rows, T steps, output GEMM, fused
//! loss, loss sum) and backward (`backward.rs`: output GEMMs, T BPTT steps, the weight
//! gradients and the gradient of the layer below per layer); the gated cells' time loops are in
//! `gated.rs`. A third plan, the optimizer's (norm, update), is the engine's own. A tanh step is
//! one kernel (or the whole time loop one, the rows kernels); a gated step is one kernel too,
//! its recurrent product for all gates fused into the gate work (wide), or one matmul and one
//! gate kernel (steps), forward and backward. Engine calls append to a recorder;
//! `optimizer_step` submits the whole step as one command buffer with one compute pass, and
//! only read-backs wait for the device. The initial states live in their own buffer, so a
//! carried state never leaves the device.
//!
//! A non-finite gradient norm cannot stop `optimizer_step` without a host wait, so the update
//! kernel skips the update on the device and [`Engine::grad_norm`] reports the divergence as
//! [`Error::Diverged`], as the CPU engine does. docs/ARCHITECTURE.md ("GPU execution model")
//! describes the execution model this engine is built around.
//!
//! Queue writes land before the next submit, so a write to a buffer that recorded work still
//! reads (the batch, the parameters, the state) first submits that work.

pub mod backward;
pub mod buffers;
pub mod context;
pub mod dropout;
pub mod forward;
pub mod gated;
pub mod gru;
pub mod loss;
pub mod lstm;
pub mod matmul;
pub mod optim;
pub mod pipelines;
pub mod plan;
pub mod profile;
pub mod recording;
pub mod reduce;
pub mod reverse;
pub mod rnn;
pub mod shaders;
pub mod shape;
pub mod variants;

use std::collections::HashMap;

use self::context::Tunables;
use crate::engine::reverse::sequence_lengths;
use crate::engine::variant::{GpuVariant, Variant};
use crate::engine::{
    Batch, Dropout, EdgeDropout, Engine, Inputs, LossStats, OutputChunks, Recurrence, RowWindow,
    Targets,
};
use crate::error::{Error, Result};
use crate::model::{ModelConfig, ParamLayout};
use crate::train::optim::{OptimizerConfig, OptimizerState};

use self::buffers::{at, read, storage, storage_with, write};
pub use self::context::{AdapterSummary, GpuContext, list_adapters};
use self::pipelines::Pipelines;
use self::plan::{Op, Plan, Recorder};
use self::profile::{PhaseTimes, Profiler, StepPhase};
use self::recording::{Recording, ShapePlans};
use self::reduce::{LOSS_SLOT, NORM_SLOT, SCRATCH_LEN};
use self::shape::{RecurrenceKernel, Shape, ShapeBuffers};

/// Batch shapes kept allocated at once (training, evaluation, the padded lengths of lines mode,
/// sampling); the least recently used one goes when another is needed.
const SHAPES_KEPT: usize = 8;

/// The GPU engine.
pub struct GpuEngine {
    ctx: GpuContext,
    pipes: Pipelines,
    config: ModelConfig,
    layout: ParamLayout,
    params: wgpu::Buffer,
    grads: wgpu::Buffer,
    moment_m: wgpu::Buffer,
    moment_v: wgpu::Buffer,
    /// Result slots (loss sum, gradient norm) and partial sums.
    scratch: wgpu::Buffer,
    /// Initial states of the next forward: per layer and direction [B, H], layer-major, then
    /// (LSTM) the memories c in the same layout.
    h0: wgpu::Buffer,
    dropout: Option<Dropout>,
    /// Dropout at the model's edges; a shape has its dispatches only where it is on.
    edges: EdgeDropout,
    /// Where the batches lie in a batch shared with other engines (keys the masks).
    window: Option<RowWindow>,
    /// The most logits the output layer holds at once.
    logit_budget: usize,
    /// The kernel choices: how the recurrence is dispatched, and the tunables it sets.
    variant: GpuVariant,
    rows: usize,
    shapes: HashMap<(usize, usize), Shape>,
    /// Counts `use_shape` calls, to find the least recently used shape.
    use_tick: u64,
    /// The shape of the current batch.
    current: Option<(usize, usize)>,
    /// Mask sum of the current batch.
    count: f64,
    /// Norm and update; its update arguments are rewritten every step.
    optim: Plan,
    recorder: Recorder,
    /// Whether recorded, unsubmitted work reads the batch buffers.
    pending_reads_batch: bool,
    forward_done: bool,
    norm_valid: bool,
    opt_step: u64,
}

impl GpuEngine {
    /// An engine for `config` on `ctx` with the given parameters, zero state for one row.
    pub fn new(ctx: GpuContext, config: &ModelConfig, params: &[f32]) -> Result<Self> {
        let layout = ParamLayout::new(config)?;
        let n = layout.len();
        if params.len() != n {
            return Err(Error::Shape(format!(
                "parameters: {} given, {n} expected",
                params.len()
            )));
        }
        let params = storage_with(&ctx, "params", params)?;
        let grads = storage(&ctx, "grads", n)?;
        let moment_m = storage(&ctx, "moment_m", n)?;
        let moment_v = storage(&ctx, "moment_v", n)?;
        let scratch = storage(&ctx, "scratch", SCRATCH_LEN)?;
        let mut pipes = Pipelines::default();
        let mut calls = reduce::sum(&ctx, n, at(&grads, 0), true, &scratch, NORM_SLOT)?;
        calls.push(optim::optimizer_update(
            &ctx,
            optim::OptimBuffers {
                scratch: &scratch,
                params: &params,
                grads: &grads,
                m: &moment_m,
                v: &moment_v,
            },
            // Placeholder arguments with the right size (the grid depends on it); every
            // optimizer_step rewrites them.
            optim::OptimArgs::new(
                &OptimizerConfig::new(crate::train::optim::OptimizerKind::Sgd),
                0.0,
                1,
                n,
                NORM_SLOT,
            )?,
        )?);
        let optim = Plan::build(&ctx, &mut pipes, "optimizer", calls)?
            .in_phases(&[(0, StepPhase::Optimizer)]);
        let h0 = storage(&ctx, "h0", config.state_size_per_row())?;
        Ok(GpuEngine {
            ctx,
            pipes,
            config: config.clone(),
            layout,
            params,
            grads,
            moment_m,
            moment_v,
            scratch,
            h0,
            dropout: None,
            edges: EdgeDropout::default(),
            window: None,
            logit_budget: crate::engine::DEFAULT_LOGIT_BUDGET,
            variant: GpuVariant::default(),
            rows: 1,
            shapes: HashMap::new(),
            use_tick: 0,
            current: None,
            count: 0.0,
            optim,
            recorder: Recorder::default(),
            pending_reads_batch: false,
            forward_done: false,
            norm_valid: false,
            opt_step: 0,
        })
    }

    /// The device context.
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// How many submits, compute passes and dispatches this engine has sent to the device
    /// (read-backs not counted).
    pub fn submit_counts(&self) -> plan::SubmitCounts {
        self.recorder.counts()
    }

    /// How the current batch shape's recurrent products run ("rows": one dispatch per layer,
    /// both directions; "wide" or "steps": one per time step), once a batch has been uploaded.
    pub fn recurrence_kernel(&self) -> Option<&'static str> {
        self.current_shape().ok().map(|s| s.recurrence.name())
    }

    /// Submits everything recorded so far (without waiting).
    pub fn flush(&mut self) -> Result<()> {
        self.pending_reads_batch = false;
        self.recorder.submit(&self.ctx)
    }

    fn current_shape(&self) -> Result<&Shape> {
        self.current
            .and_then(|k| self.shapes.get(&k))
            .ok_or_else(|| Error::Misuse("no batch has been uploaded yet".into()))
    }

    /// Allocates the buffers of shape (T, B), resolves its recurrence form and records its
    /// plans.
    fn build_shape(&mut self, steps: usize, rows: usize) -> Result<Shape> {
        let cfg = &self.config;
        let setting = self.variant.recurrence;
        let kernel =
            RecurrenceKernel::resolve(&self.ctx, setting, cfg.cell, rows, cfg.hidden_size)?
                .for_projection(cfg.proj_size.is_some(), setting)?;
        let mut buffers = ShapeBuffers::allocate(
            &self.ctx,
            (cfg, &self.layout),
            (steps, rows),
            kernel,
            self.logit_budget,
        )?;
        if self.edges.out > 0.0 {
            let len = steps * rows * cfg.output_width();
            buffers.out_input = Some(storage(&self.ctx, "out_input", len)?);
        }
        let recording = Recording {
            ctx: &self.ctx,
            cfg,
            layout: &self.layout,
            params: &self.params,
            grads: &self.grads,
            scratch: &self.scratch,
            dropout: self.dropout,
            edges: self.edges,
            window: self.window,
            shape: &buffers,
            kernel,
        };
        let plans = ShapePlans::record(&recording, &mut self.pipes)?;
        Ok(Shape {
            buffers,
            recurrence: kernel,
            plans,
            last_used: 0,
        })
    }

    /// Rewrites the dropout arguments of every shape for the current dropout setting and row
    /// window. Only
    /// recorded forward or backward dispatches read them, so only those are submitted first (a
    /// carried state's copies stay in the next step's submit).
    fn patch_dropout(&mut self) -> Result<()> {
        if self.pending_reads_batch {
            self.flush()?;
        }
        for shape in self.shapes.values() {
            let setting = (self.dropout, self.edges, self.window);
            shape.plans.patch_dropout(&self.ctx, setting)?;
        }
        Ok(())
    }

    /// Checks that the row window holds a batch of `rows` rows.
    fn check_window(&self, rows: usize) -> Result<()> {
        self.window.map_or(Ok(()), |w| w.check_batch(rows))
    }

    /// Makes (T, B) the current shape, building it on first use.
    fn use_shape(&mut self, steps: usize, rows: usize) -> Result<()> {
        if !self.shapes.contains_key(&(steps, rows)) {
            if self.shapes.len() >= SHAPES_KEPT
                && let Some(oldest) = self
                    .shapes
                    .iter()
                    .min_by_key(|(_, s)| s.last_used)
                    .map(|(k, _)| *k)
            {
                self.shapes.remove(&oldest);
            }
            let shape = self.build_shape(steps, rows)?;
            self.shapes.insert((steps, rows), shape);
        }
        self.use_tick += 1;
        if let Some(shape) = self.shapes.get_mut(&(steps, rows)) {
            shape.last_used = self.use_tick;
        }
        self.current = Some((steps, rows));
        Ok(())
    }

    /// Drops every shape's buffers and plans (after submitting recorded work), so that the next
    /// batch builds its shape under new settings.
    fn rebuild_shapes(&mut self) -> Result<()> {
        self.flush()?;
        self.shapes.clear();
        self.current = None;
        self.forward_done = false;
        Ok(())
    }

    /// Submits recorded work before a queue write, so the write cannot overtake it.
    fn flush_before_write(&mut self) -> Result<()> {
        if !self.recorder.is_empty() {
            self.flush()?;
        }
        Ok(())
    }

    fn check_len(what: &str, got: usize, want: usize) -> Result<()> {
        if got != want {
            return Err(Error::Shape(format!(
                "{what}: {got} given, {want} expected"
            )));
        }
        Ok(())
    }

    fn read_all(&mut self, buffer: &wgpu::Buffer, offset: usize, count: usize) -> Result<Vec<f32>> {
        self.flush()?;
        read(&self.ctx, buffer, offset, count)
    }
}

impl Engine for GpuEngine {
    fn describe(&self) -> String {
        let info = &self.ctx.info;
        let software = if info.software { ", software" } else { "" };
        format!("gpu ({}, {}{software})", info.name, info.backend)
    }

    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    fn set_params(&mut self, params: &[f32]) -> Result<()> {
        Self::check_len("parameters", params.len(), self.layout.len())?;
        self.flush_before_write()?;
        write(&self.ctx, &self.params, 0, params);
        Ok(())
    }

    fn params(&mut self) -> Result<Vec<f32>> {
        let (b, n) = (self.params.clone(), self.layout.len());
        self.read_all(&b, 0, n)
    }

    fn grads(&mut self) -> Result<Vec<f32>> {
        let (b, n) = (self.grads.clone(), self.layout.len());
        self.read_all(&b, 0, n)
    }

    fn set_grads(&mut self, grads: &[f32]) -> Result<()> {
        Self::check_len("gradients", grads.len(), self.layout.len())?;
        self.flush_before_write()?;
        write(&self.ctx, &self.grads, 0, grads);
        Ok(())
    }

    fn upload_batch(&mut self, batch: &Batch) -> Result<()> {
        batch.validate(&self.config)?;
        self.check_window(batch.rows)?;
        if batch.rows != self.rows {
            return Err(Error::Shape(format!(
                "batch has B={} rows but the state has {}; reset the state first",
                batch.rows, self.rows
            )));
        }
        if self.pending_reads_batch {
            self.flush()?;
        }
        self.use_shape(batch.steps, batch.rows)?;
        let n = batch.steps * batch.rows;
        let count = batch.count();
        let shape = self.current_shape()?;
        let ctx = &self.ctx;
        let buffers = &shape.buffers.batch;
        match &batch.inputs {
            Inputs::Tokens(t) => write(
                ctx,
                &buffers.inputs,
                0,
                &rnn::token_buffer(t, self.config.input_size),
            ),
            Inputs::Dense(x) => write(ctx, &buffers.inputs, 0, x),
        }
        match &batch.targets {
            Targets::Classes(c) => write(ctx, &buffers.targets, 0, c),
            Targets::Dense(y) => write(ctx, &buffers.targets, 0, y),
        }
        match &batch.mask {
            Some(m) => write(ctx, &buffers.mask, 0, m),
            None => write(ctx, &buffers.mask, 0, &vec![1.0f32; n]),
        }
        if self.config.bidirectional {
            let lengths = sequence_lengths(batch.mask.as_deref(), batch.steps, batch.rows);
            write(ctx, &buffers.lengths, 0, &lengths);
        }
        shape
            .plans
            .patch_losses(ctx, self.config.output_size, count)?;
        self.count = count;
        self.forward_done = false;
        Ok(())
    }

    fn forward(&mut self) -> Result<()> {
        let shape = self
            .current
            .and_then(|k| self.shapes.get(&k))
            .ok_or_else(|| Error::Misuse("forward called before upload_batch".into()))?;
        let rows = shape.buffers.rows;
        self.check_window(rows)?;
        let mut h0_off = 0;
        for (states, offset, width) in shape.buffers.carried(&self.config) {
            self.recorder.push(Op::Copy {
                src: self.h0.clone(),
                src_offset: h0_off,
                dst: states.clone(),
                dst_offset: offset,
                elements: rows * width,
            });
            h0_off += rows * width;
        }
        self.recorder.record(&shape.plans.forward);
        self.pending_reads_batch = true;
        self.forward_done = true;
        Ok(())
    }

    fn zero_grads(&mut self) -> Result<()> {
        self.recorder.push(Op::Clear {
            buffer: self.grads.clone(),
            offset: 0,
            elements: self.layout.len(),
        });
        Ok(())
    }

    fn backward(&mut self) -> Result<()> {
        if !self.forward_done {
            return Err(Error::Misuse("backward called before forward".into()));
        }
        let shape = self
            .current
            .and_then(|k| self.shapes.get(&k))
            .ok_or_else(|| Error::Misuse("backward called before upload_batch".into()))?;
        self.recorder.record(&shape.plans.backward);
        self.pending_reads_batch = true;
        Ok(())
    }

    fn loss(&mut self) -> Result<LossStats> {
        if !self.forward_done {
            return Err(Error::Misuse("no forward pass has run yet".into()));
        }
        let scratch = self.scratch.clone();
        let sum = self.read_all(&scratch, LOSS_SLOT, 1)?[0];
        Ok(LossStats {
            sum: sum as f64,
            count: self.count,
        })
    }

    fn optimizer_step(&mut self, config: &OptimizerConfig, lr: f32) -> Result<()> {
        config.validate()?;
        self.opt_step += 1;
        let args = optim::OptimArgs::new(config, lr, self.opt_step, self.layout.len(), NORM_SLOT)?;
        let last = self.optim.dispatches.len() - 1;
        self.optim.patch(&self.ctx, last, &args);
        self.recorder.record(&self.optim);
        self.norm_valid = true;
        self.flush()
    }

    fn grad_norm(&mut self) -> Result<f32> {
        if !self.norm_valid {
            return Ok(0.0);
        }
        let scratch = self.scratch.clone();
        let norm = self.read_all(&scratch, NORM_SLOT, 1)?[0];
        if !norm.is_finite() {
            return Err(Error::Diverged { norm });
        }
        Ok(norm)
    }

    fn optimizer_state(&mut self) -> Result<OptimizerState> {
        let n = self.layout.len();
        let (m, v) = (self.moment_m.clone(), self.moment_v.clone());
        Ok(OptimizerState {
            step: self.opt_step,
            m: self.read_all(&m, 0, n)?,
            v: self.read_all(&v, 0, n)?,
        })
    }

    fn set_optimizer_state(&mut self, state: &OptimizerState) -> Result<()> {
        let n = self.layout.len();
        Self::check_len("optimizer moments m", state.m.len(), n)?;
        Self::check_len("optimizer moments v", state.v.len(), n)?;
        self.flush_before_write()?;
        write(&self.ctx, &self.moment_m, 0, &state.m);
        write(&self.ctx, &self.moment_v, 0, &state.v);
        self.opt_step = state.step;
        Ok(())
    }

    fn reset_state(&mut self, rows: usize) -> Result<()> {
        if rows == 0 {
            return Err(Error::Shape("the state needs at least one row".into()));
        }
        let len = rows * self.config.state_size_per_row();
        if rows != self.rows {
            self.h0 = storage(&self.ctx, "h0", len)?;
            self.rows = rows;
        } else {
            self.recorder.push(Op::Clear {
                buffer: self.h0.clone(),
                offset: 0,
                elements: len,
            });
        }
        Ok(())
    }

    fn carry_state(&mut self) -> Result<()> {
        if !self.forward_done {
            return Err(Error::Misuse("carry_state called before forward".into()));
        }
        let shape = self.current_shape()?;
        let (steps, rows) = (shape.buffers.steps, shape.buffers.rows);
        let mut h0_off = 0;
        let mut ops = Vec::new();
        for (states, offset, width) in shape.buffers.carried(&self.config) {
            ops.push(Op::Copy {
                src: states.clone(),
                src_offset: offset + steps * rows * width,
                dst: self.h0.clone(),
                dst_offset: h0_off,
                elements: rows * width,
            });
            h0_off += rows * width;
        }
        for op in ops {
            self.recorder.push(op);
        }
        Ok(())
    }

    fn set_state(&mut self, rows: usize, state: &[f32]) -> Result<()> {
        let len = rows * self.config.state_size_per_row();
        Self::check_len("state", state.len(), len)?;
        self.reset_state(rows)?;
        self.flush_before_write()?;
        write(&self.ctx, &self.h0, 0, state);
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<f32>> {
        let len = self.rows * self.config.state_size_per_row();
        let h0 = self.h0.clone();
        self.read_all(&h0, 0, len)
    }

    fn set_dropout(&mut self, dropout: Option<Dropout>) -> Result<()> {
        if let Some(d) = dropout {
            d.validate()?;
        }
        if dropout != self.dropout {
            self.dropout = dropout;
            self.patch_dropout()?;
        }
        Ok(())
    }

    fn set_row_window(&mut self, window: Option<RowWindow>) -> Result<()> {
        if let Some(w) = window {
            w.validate()?;
        }
        if window != self.window {
            self.window = window;
            self.patch_dropout()?;
        }
        Ok(())
    }

    /// Changing it drops the shapes, whose plans have the edges' dispatches only where they
    /// are on: set it before a batch is uploaded.
    fn set_edge_dropout(&mut self, edges: EdgeDropout) -> Result<()> {
        edges.check_for(&self.config)?;
        if edges != self.edges {
            // Recorded work may read the shapes' buffers.
            self.flush()?;
            self.edges = edges;
            self.shapes.clear();
            self.current = None;
            self.forward_done = false;
        }
        Ok(())
    }

    fn outputs(&mut self) -> Result<Vec<f32>> {
        if !self.forward_done {
            return Err(Error::Misuse("no forward pass has run yet".into()));
        }
        let shape = self.current_shape()?;
        let (n, v) = (
            shape.buffers.steps * shape.buffers.rows,
            self.config.output_size,
        );
        let output = &shape.buffers.output;
        if output.chunk_rows < n {
            return Err(crate::engine::outputs_not_kept(n, v, output.chunk_rows));
        }
        let logits = output.logits.clone();
        self.read_all(&logits, 0, n * v)
    }

    fn output_chunks(&mut self) -> Result<OutputChunks> {
        if !self.forward_done {
            return Err(Error::Misuse("no forward pass has run yet".into()));
        }
        let shape = &self.current_shape()?.buffers;
        Ok(OutputChunks {
            rows: shape.steps * shape.rows,
            chunk_rows: shape.output.chunk_rows,
        })
    }

    fn outputs_of(&mut self, rows: std::ops::Range<usize>) -> Result<Vec<f32>> {
        let chunks = self.output_chunks()?;
        let chunk = chunks.chunk_of(&rows)?;
        let shape = self
            .current
            .and_then(|k| self.shapes.get(&k))
            .ok_or_else(|| Error::Misuse("no batch has been uploaded yet".into()))?;
        let logits = shape.buffers.output.logits.clone();
        if chunks.chunk_rows < chunks.rows {
            // The chunk's output GEMM and output kernel, as the forward (and the backward) ran
            // them; the loss sum of the forward is not touched.
            let part = shape
                .plans
                .output_chunks
                .get(chunk.start / chunks.chunk_rows)
                .cloned()
                .ok_or_else(|| Error::Misuse(format!("no output chunk at row {}", chunk.start)))?;
            let forward = &shape.plans.forward;
            self.recorder.record_part(forward, part);
            self.pending_reads_batch = true;
        }
        let v = self.config.output_size;
        self.read_all(&logits, (rows.start - chunk.start) * v, rows.len() * v)
    }

    fn set_logit_budget(&mut self, elements: usize) -> Result<()> {
        if elements == 0 {
            return Err(Error::Config("the logit budget must be at least 1".into()));
        }
        if elements != self.logit_budget {
            // The chunks are part of each shape's buffers and plans: build them again.
            self.rebuild_shapes()?;
            self.logit_budget = elements;
        }
        Ok(())
    }

    fn set_phase_profile(&mut self, on: bool) -> Result<()> {
        self.flush()?;
        let profiler = if on {
            Some(Profiler::new(&self.ctx)?)
        } else {
            None
        };
        self.recorder.set_profiler(profiler);
        Ok(())
    }

    fn take_phase_times(&mut self) -> Result<Option<PhaseTimes>> {
        self.flush()?;
        Ok(self.recorder.take_phase_times())
    }

    fn set_recurrence(&mut self, recurrence: Recurrence) -> Result<()> {
        if recurrence != self.variant.recurrence {
            self.rebuild_shapes()?;
            self.variant.recurrence = recurrence;
        }
        Ok(())
    }

    fn variants(&self) -> Vec<Variant> {
        variants::gpu_variants(&self.ctx, &self.config, self.rows)
    }

    fn set_variant(&mut self, variant: &Variant) -> Result<()> {
        let v = variants::gpu_choice(&self.ctx, &self.config, self.rows, variant)?;
        if v != self.variant {
            let base = Tunables::for_limits(&self.ctx.limits);
            let tunables = base.with_variant(&self.ctx.limits, &v)?;
            self.rebuild_shapes()?;
            self.ctx.tunables = tunables;
            self.variant = v;
        }
        Ok(())
    }

    fn variant(&self) -> Variant {
        Variant::Gpu(self.variant)
    }

    fn device_key(&self) -> String {
        variants::gpu_device_key(&self.ctx)
    }
}
