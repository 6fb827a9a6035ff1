//! The GPU engine: the [`Engine`] contract on wgpu compute shaders, held to the CPU reference.
//!
//! Parameters, gradients and the two optimizer moments are four flat storage buffers in
//! `ParamLayout` order. Per batch shape (T, B) the engine allocates once the batch buffers, the
//! per-layer state buffers `[(T+1) * B, H]` (rows 0..B the initial state; an LSTM's memories c
//! alike), a gated layer's gate activations and recurrent pre-activations `[N, G*H]`, the logits
//! and their gradient, and builds three plans: forward (dropout of the layer below, input
//! projection over all N rows, T steps, output GEMM, fused loss, loss sum), backward (output
//! GEMMs, T BPTT steps, the weight gradients and the gradient of the layer below per layer) and
//! the optimizer (norm, update). A tanh step is one kernel (or the whole time loop one, the rows
//! kernels); a gated step is one kernel too, its recurrent product for all gates fused into the
//! gate work (wide), or one matmul and one gate kernel (steps), forward and backward. Engine
//! calls append to a recorder; `optimizer_step` submits the whole step as one command buffer with one compute pass, and
//! only read-backs wait for the device. The initial states live in their own buffer, so a
//! carried state never leaves the device.
//!
//! A non-finite gradient norm cannot stop `optimizer_step` without a host wait, so the update
//! kernel skips the update on the device and [`Engine::grad_norm`] reports the divergence as
//! [`Error::Data`] (the CPU engine returns that error from `optimizer_step` itself).
//!
//! Queue writes land before the next submit, so a write to a buffer that recorded work still
//! reads (the batch, the parameters, the state) first submits that work.

pub mod buffers;
pub mod context;
pub mod dropout;
pub mod gru;
pub mod loss;
pub mod lstm;
pub mod matmul;
pub mod optim;
pub mod pipelines;
pub mod plan;
pub mod profile;
pub mod reduce;
pub mod rnn;
pub mod shaders;

use std::collections::HashMap;

use crate::engine::cpu::dropout::MaskKey;
use crate::engine::{Batch, Dropout, Engine, Inputs, LossStats, Recurrence, Targets};
use crate::error::{Error, Result};
use crate::model::{Cell, InputKind, ModelConfig, ParamLayout};
use crate::train::optim::{OptimizerConfig, OptimizerState};

use self::buffers::{at, read, storage, storage_with, write};
pub use self::context::{AdapterSummary, GpuContext, list_adapters};
use self::gru::{GateStep, Recurrent};
use self::matmul::{Biases, RowsEpilogue, matmul, matmul_rows, plain, transposed};
use self::pipelines::Pipelines;
use self::plan::{Call, Op, Plan, Recorder};
use self::profile::{PhaseTimes, Profiler, StepPhase};
use self::reduce::{LOSS_SLOT, NORM_SLOT, SCRATCH_LEN};
use self::rnn::{Dims, TokenLayout, Weights};

/// Batch shapes kept allocated at once (training, evaluation, the padded lengths of lines mode,
/// sampling); the least recently used one goes when another is needed.
const SHAPES_KEPT: usize = 8;

/// Device buffers and plans for one batch shape.
struct Shape {
    steps: usize,
    rows: usize,
    /// Token ids and per-token row lists (one-hot) or values [N, I] (dense).
    inputs: wgpu::Buffer,
    /// Class ids [N] or target values [N, V] as f32 bits.
    targets: wgpu::Buffer,
    mask: wgpu::Buffer,
    /// Per layer [(T+1) * B, H].
    states: Vec<wgpu::Buffer>,
    /// Logits, then probabilities, of one chunk of the output layer [chunk_rows, V].
    logits: wgpu::Buffer,
    /// Rows per chunk of the output layer (N when it runs in one).
    chunk_rows: usize,
    forward: Plan,
    backward: Plan,
    /// The loss dispatches (in `forward`, or else in `backward`) and their rows; their arguments
    /// carry the batch's count.
    loss_slots: Vec<(bool, usize, std::ops::Range<usize>)>,
    /// LSTM: per layer the memories [(T+1) * B, H]; empty for the other cells.
    cells: Vec<wgpu::Buffer>,
    /// The dropout dispatches, whose arguments change with the dropout setting.
    dropout_slots: Vec<DropoutSlot>,
    /// When it was last made current (for eviction).
    last_used: u64,
    /// How the recurrent products of this shape run: "rows", "wide" or "steps".
    recurrence: &'static str,
}

/// A dropout dispatch inside a plan.
struct DropoutSlot {
    /// In the forward plan (else the backward plan).
    forward: bool,
    index: usize,
    n: usize,
    offsets: (usize, usize),
    /// The mask after this layer.
    boundary: usize,
}

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
    /// Initial states of the next forward: per layer [B, H], layer-major, then (LSTM) the
    /// memories c in the same layout.
    h0: wgpu::Buffer,
    dropout: Option<Dropout>,
    /// The most logits the output layer holds at once.
    logit_budget: usize,
    /// How the tanh/relu recurrence is dispatched.
    recurrence: Recurrence,
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
            logit_budget: crate::engine::DEFAULT_LOGIT_BUDGET,
            recurrence: Recurrence::Auto,
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

    /// How the current batch shape's recurrent products run ("rows": one dispatch per layer and
    /// direction; "wide" or "steps": one per time step), once a batch has been uploaded.
    pub fn recurrence_kernel(&self) -> Option<&'static str> {
        self.current_shape().ok().map(|s| s.recurrence)
    }

    /// Submits everything recorded so far (without waiting).
    pub fn flush(&mut self) -> Result<()> {
        self.pending_reads_batch = false;
        self.recorder.submit(&self.ctx)
    }

    fn current_shape(&self) -> Result<&Shape> {
        self.current
            .and_then(|k| self.shapes.get(&k))
            .ok_or_else(|| Error::Config("no batch has been uploaded yet".into()))
    }

    /// Allocates the buffers and builds the plans of shape (T, B).
    fn build_shape(&mut self, steps: usize, rows: usize) -> Result<Shape> {
        let ctx = &self.ctx;
        let cfg = &self.config;
        let (h, v, i0) = (cfg.hidden_size, cfg.output_size, cfg.input_size);
        let gh = cfg.cell.gates() * h;
        let gated = cfg.cell != Cell::Rnn;
        let n = steps * rows;
        // The tanh/relu recurrence: one dispatch per layer (a workgroup per row) or one per step;
        // the per-step products spread over the output columns (wide; a gated step's product
        // fused into its gate kernel) or tiled (steps).
        let rows_kernels = !gated
            && match self.recurrence {
                Recurrence::Steps | Recurrence::Wide => false,
                Recurrence::Auto => {
                    h < crate::engine::ROWS_BELOW_HIDDEN && rnn::rows_kernels_fit(ctx, rows, h)
                }
                Recurrence::Rows => rnn::rows_kernels_fit(ctx, rows, h),
            };
        let wide = !rows_kernels && self.recurrence != Recurrence::Steps;
        if self.recurrence == Recurrence::Rows && !rows_kernels && !gated {
            return Err(Error::Config(format!(
                "the rows-per-workgroup recurrence does not fit B={rows} rows of H={h} on {}",
                ctx.info.name
            )));
        }

        let inputs = match cfg.input_kind {
            InputKind::OneHot => storage(ctx, "tokens", TokenLayout::new(n, i0).len())?,
            InputKind::Dense => storage(ctx, "inputs", n * i0)?,
        };
        let targets = match cfg.output_kind {
            crate::model::OutputKind::Softmax => storage(ctx, "targets", n)?,
            _ => storage(ctx, "targets", n * v)?,
        };
        let mask = storage(ctx, "mask", n)?;
        let per_layer = |name: &str, len: usize, on: bool| -> Result<Vec<wgpu::Buffer>> {
            if !on {
                return Ok(Vec::new());
            }
            (0..cfg.layers)
                .map(|k| storage(ctx, &format!("{name}_l{k}"), len))
                .collect()
        };
        let states = per_layer("states", (steps + 1) * rows * h, true)?;
        let cells = per_layer("cells", (steps + 1) * rows * h, cfg.cell == Cell::Lstm)?;
        let gates = per_layer("gates", n * gh, gated)?;
        // a_hh: the recurrent pre-activations, kept when the product is its own dispatch or the
        // GRU's BPTT reads them.
        let a_hh = per_layer("a_hh", n * gh, cfg.cell == Cell::Gru || (gated && !wide))?;
        // The input of layer k > 0 after dropout (an unscaled copy when dropout is off).
        let dropped = per_layer("dropped", n * h, cfg.layers > 1)?;
        let da_ih = gated.then(|| storage(ctx, "da_ih", n * gh)).transpose()?;
        let da_hh = (cfg.cell == Cell::Gru)
            .then(|| storage(ctx, "da_hh", n * gh))
            .transpose()?;
        let dc = (cfg.cell == Cell::Lstm)
            .then(|| storage(ctx, "dc", rows * h))
            .transpose()?;
        // The output layer runs in chunks of `chunk` rows when N * V logits exceed the budget
        // (or what one buffer binds).
        let bindable = (ctx.limits.max_storage_buffer_binding_size / 4) as usize;
        let chunk = crate::engine::logit_chunk_rows(n, v, self.logit_budget.min(bindable));
        let logits = storage(ctx, "logits", chunk * v)?;
        let dlogits = storage(ctx, "dlogits", chunk * v)?;
        // With an embedding: the embedded tokens [N, E] (layer 0's input) and their gradient.
        let embed = match (self.layout.embed(), cfg.embed) {
            (Some(off), Some(e)) => Some((
                off,
                e,
                storage(ctx, "embedded", n * e)?,
                storage(ctx, "d_embedded", n * e)?,
            )),
            _ => None,
        };
        let row_loss = storage(ctx, "row_loss", n)?;
        let ds = [storage(ctx, "ds_a", n * h)?, storage(ctx, "ds_b", n * h)?];
        let p = &self.params;
        let g = &self.grads;
        let lay = &self.layout;
        let act = cfg.activation;
        let below = |k: usize| -> matmul::Operand<'_> {
            match (k, &embed) {
                (0, Some((_, _, x, _))) => plain(at(x, 0)),
                (0, None) => plain(at(&inputs, 0)),
                _ => plain(at(&dropped[k], 0)),
            }
        };
        let mut dropout_slots = Vec::new();
        // Forward: the embedding, then per layer the input projection over all N rows and the
        // T steps.
        let mut fwd: Vec<Call> = Vec::new();
        // (first dispatch, phase) of each phase, for the timestamp profile.
        let mut fwd_marks = vec![(0, StepPhase::Input)];
        if let Some((off, e, x, _)) = &embed {
            fwd.push(rnn::embed_gather(
                ctx,
                Dims {
                    rows,
                    hidden: *e,
                    inputs: i0,
                    n,
                },
                at(&inputs, 0),
                p,
                *off,
                at(x, 0),
            )?);
        }
        for k in 0..cfg.layers {
            let lo = lay.layer(k);
            let ik = cfg.layer_input_size(k);
            let d = Dims {
                rows,
                hidden: gh,
                inputs: ik,
                n,
            };
            fwd_marks.push((fwd.len(), StepPhase::Input));
            if k > 0 {
                let key = MaskKey::new(self.dropout, k - 1);
                dropout_slots.push(DropoutSlot {
                    forward: true,
                    index: fwd.len(),
                    n: n * h,
                    offsets: (rows * h, 0),
                    boundary: k - 1,
                });
                fwd.push(dropout::dropout_forward(
                    ctx,
                    n * h,
                    at(&states[k - 1], rows * h),
                    at(&dropped[k], 0),
                    key,
                )?);
            }
            // The tanh cell projects into its state rows with both biases; a gated cell into
            // its gate array with b_ih only (b_hh joins the recurrent product).
            let (proj, bias2) = if gated {
                (at(&gates[k], 0), None)
            } else {
                (at(&states[k], rows * h), Some(lo.bias_hh))
            };
            if k == 0 && cfg.gathers_input() {
                let weights = Weights {
                    w: lo.weight_ih,
                    bias: lo.bias_ih,
                    bias2,
                };
                fwd.push(rnn::input_gather_onehot(
                    ctx,
                    d,
                    at(&inputs, 0),
                    p,
                    weights,
                    proj,
                )?);
            } else {
                fwd.extend(matmul(
                    ctx,
                    (n, gh, ik),
                    below(k),
                    transposed(at(p, lo.weight_ih)),
                    proj,
                    Some(Biases {
                        buffer: p,
                        first: lo.bias_ih,
                        second: bias2,
                    }),
                    false,
                )?);
            }
            fwd_marks.push((fwd.len(), StepPhase::ForwardRecurrence));
            if !gated && rows_kernels {
                fwd.push(rnn::rnn_forward_rows(
                    ctx,
                    Dims {
                        hidden: h,
                        n: steps,
                        ..d
                    },
                    p,
                    lo.weight_hh,
                    at(&states[k], 0),
                    act,
                )?);
                continue;
            }
            let recurrent = Recurrent {
                params: p,
                weight: lo.weight_hh,
                bias: lo.bias_hh,
            };
            for t in 0..steps {
                if !gated && wide {
                    fwd.push(matmul_rows(
                        ctx,
                        (rows, h, h),
                        Some(t * rows * h),
                        transposed(at(p, lo.weight_hh)),
                        at(&states[k], (t + 1) * rows * h),
                        RowsEpilogue::Activate(act),
                    )?);
                    continue;
                }
                if !gated {
                    fwd.push(rnn::rnn_step_forward(
                        ctx,
                        Dims { hidden: h, ..d },
                        p,
                        lo.weight_hh,
                        &states[k],
                        (t * rows * h, (t + 1) * rows * h),
                        act,
                    )?);
                    continue;
                }
                let step = GateStep {
                    rows,
                    hidden: h,
                    gates: cfg.cell.gates(),
                    t,
                };
                if wide {
                    // The recurrent product fused into the gate kernel: ONE dispatch per step.
                    fwd.push(match cfg.cell {
                        Cell::Lstm => lstm::lstm_step_forward_rows(
                            ctx,
                            step,
                            recurrent,
                            &gates[k],
                            (&cells[k], &states[k]),
                        )?,
                        _ => gru::gru_step_forward_rows(
                            ctx,
                            step,
                            recurrent,
                            (&gates[k], &a_hh[k], &states[k]),
                        )?,
                    });
                    continue;
                }
                // All gates' recurrent pre-activations in ONE product: h_{t-1} W_hh^T + b_hh.
                fwd.extend(matmul(
                    ctx,
                    (rows, gh, h),
                    plain(at(&states[k], t * rows * h)),
                    transposed(at(p, lo.weight_hh)),
                    at(&a_hh[k], t * rows * gh),
                    Some(Biases {
                        buffer: p,
                        first: lo.bias_hh,
                        second: None,
                    }),
                    false,
                )?);
                fwd.push(match cfg.cell {
                    Cell::Lstm => lstm::lstm_step_forward(
                        ctx,
                        step,
                        &gates[k],
                        &a_hh[k],
                        (&cells[k], &states[k]),
                    )?,
                    _ => gru::gru_step_forward(ctx, step, &gates[k], &a_hh[k], &states[k])?,
                });
            }
        }
        // The output layer, chunk by chunk: the projection, then the fused output nonlinearity,
        // loss and gradient. In one chunk the backward reads the kept gradient; in several, the
        // forward keeps only the loss and the backward computes each chunk again.
        let top = &states[cfg.layers - 1];
        let (ow, ob) = (lay.out_weight(), lay.out_bias());
        let output_chunk = |calls: &mut Vec<Call>,
                            slots: &mut Vec<(bool, usize, std::ops::Range<usize>)>,
                            forward: bool,
                            r: std::ops::Range<usize>|
         -> Result<()> {
            calls.extend(matmul(
                ctx,
                (r.len(), v, h),
                plain(at(top, (rows + r.start) * h)),
                transposed(at(p, ow)),
                at(&logits, 0),
                Some(Biases {
                    buffer: p,
                    first: ob,
                    second: None,
                }),
                false,
            )?);
            slots.push((forward, calls.len(), r.clone()));
            calls.push(loss::loss(
                ctx,
                cfg.output_kind,
                loss::LossBuffers {
                    targets: &targets,
                    mask: &mask,
                    logits: &logits,
                    dlogits: &dlogits,
                    row_loss: &row_loss,
                },
                loss::LossArgs::new(r, v, n as f64)?,
            )?);
            Ok(())
        };
        let mut loss_slots = Vec::new();
        let chunks: Vec<std::ops::Range<usize>> = crate::engine::logit_chunks(n, chunk).collect();
        fwd_marks.push((fwd.len(), StepPhase::Output));
        for r in &chunks {
            output_chunk(&mut fwd, &mut loss_slots, true, r.clone())?;
        }
        fwd.extend(reduce::sum(
            ctx,
            n,
            at(&row_loss, 0),
            false,
            &self.scratch,
            LOSS_SLOT,
        )?);

        // Backward: the output layer (dW_o += dlogits^T S, db_o += colsum(dlogits),
        // dS = dlogits W_o) chunk by chunk, then BPTT layer by layer, top down.
        let mut bwd: Vec<Call> = Vec::new();
        let mut bwd_marks = Vec::new();
        for r in &chunks {
            if chunks.len() > 1 {
                bwd_marks.push((bwd.len(), StepPhase::Output));
                output_chunk(&mut bwd, &mut loss_slots, false, r.clone())?;
            }
            bwd_marks.push((bwd.len(), StepPhase::OutputBackward));
            let m = r.len();
            bwd.extend(matmul(
                ctx,
                (v, h, m),
                transposed(at(&dlogits, 0)),
                plain(at(top, (rows + r.start) * h)),
                at(g, ow),
                None,
                true,
            )?);
            bwd.push(reduce::column_sums_accumulate(
                ctx,
                (m, v),
                at(&dlogits, 0),
                g,
                &[ob],
            )?);
            bwd.extend(matmul(
                ctx,
                (m, h, v),
                plain(at(&dlogits, 0)),
                plain(at(p, ow)),
                at(&ds[0], r.start * h),
                None,
                false,
            )?);
        }
        let mut cur = 0;
        for k in (0..cfg.layers).rev() {
            let lo = lay.layer(k);
            let ik = cfg.layer_input_size(k);
            // BPTT through the layer, leaving the gradients of the input-side and the
            // recurrent-side pre-activations [N, G*H] (one buffer for the tanh cell and LSTM).
            bwd_marks.push((bwd.len(), StepPhase::BackwardRecurrence));
            let (dz_ih, dz_hh) = match (cfg.cell, &da_ih, &da_hh, &dc) {
                (Cell::Rnn, ..) if rows_kernels => {
                    bwd.push(rnn::rnn_backward_rows(
                        ctx,
                        Dims {
                            rows,
                            hidden: h,
                            inputs: ik,
                            n: steps,
                        },
                        p,
                        lo.weight_hh,
                        at(&states[k], 0),
                        at(&ds[cur], 0),
                        act,
                    )?);
                    (&ds[cur], &ds[cur])
                }
                (Cell::Rnn, ..) if wide => {
                    for t in (0..steps).rev() {
                        let next = (t + 1 < steps).then_some((t + 1) * rows * h);
                        bwd.push(matmul_rows(
                            ctx,
                            (rows, h, h),
                            next,
                            plain(at(p, lo.weight_hh)),
                            at(&ds[cur], t * rows * h),
                            RowsEpilogue::Derivative(act, at(&states[k], (t + 1) * rows * h)),
                        )?);
                    }
                    (&ds[cur], &ds[cur])
                }
                (Cell::Rnn, ..) => {
                    for t in (0..steps).rev() {
                        let next = (t + 1 < steps).then_some((t + 1) * rows * h);
                        bwd.push(rnn::rnn_step_backward(
                            ctx,
                            Dims {
                                rows,
                                hidden: h,
                                inputs: ik,
                                n,
                            },
                            p,
                            lo.weight_hh,
                            at(&states[k], (t + 1) * rows * h),
                            &ds[cur],
                            (next, t * rows * h),
                            act,
                        )?);
                    }
                    (&ds[cur], &ds[cur])
                }
                (_, Some(da_ih), da_hh, dc) => {
                    // GRU: da_hh differs from da_ih; LSTM: one gradient for both sides.
                    let da_rec = da_hh.as_ref().unwrap_or(da_ih);
                    let recurrent = Recurrent {
                        params: p,
                        weight: lo.weight_hh,
                        bias: lo.bias_hh,
                    };
                    // The GRU's buffers (an LSTM in the wide form has no a_hh).
                    let gru_grads = dc.is_none().then(|| gru::GruGrads {
                        gates: &gates[k],
                        a_hh: &a_hh[k],
                        states: &states[k],
                        ds: &ds[cur],
                        da_ih,
                        da_hh: da_rec,
                    });
                    for t in (0..steps).rev() {
                        let step = GateStep {
                            rows,
                            hidden: h,
                            gates: cfg.cell.gates(),
                            t,
                        };
                        let last = t + 1 == steps;
                        // wide: dh_t += da_{t+1} W_hh fused into the gate kernel, ONE dispatch.
                        bwd.push(match (dc, gru_grads, wide) {
                            (Some(dc), _, true) => lstm::lstm_step_backward_rows(
                                ctx,
                                step,
                                recurrent,
                                (&gates[k], &cells[k]),
                                (&ds[cur], dc, da_ih),
                                last,
                            )?,
                            (Some(dc), _, false) => lstm::lstm_step_backward(
                                ctx,
                                step,
                                (&gates[k], &cells[k]),
                                (&ds[cur], dc, da_ih),
                                last,
                            )?,
                            (None, Some(b), true) => {
                                gru::gru_step_backward_rows(ctx, step, recurrent, b, last)?
                            }
                            (None, Some(b), false) => gru::gru_step_backward(ctx, step, b)?,
                            (None, None, _) => {
                                return Err(Error::Config("gradient buffers missing".into()));
                            }
                        });
                        if wide {
                            continue;
                        }
                        if t > 0 {
                            // ds[t-1] += da_t W_hh: ONE product for all gates.
                            bwd.extend(matmul(
                                ctx,
                                (rows, h, gh),
                                plain(at(da_rec, t * rows * gh)),
                                plain(at(p, lo.weight_hh)),
                                at(&ds[cur], (t - 1) * rows * h),
                                None,
                                true,
                            )?);
                        }
                    }
                    (da_ih, da_rec)
                }
                _ => return Err(Error::Config("gradient buffers missing".into())),
            };
            bwd_marks.push((bwd.len(), StepPhase::WeightGradients));
            bwd.extend(matmul(
                ctx,
                (gh, h, n),
                transposed(at(dz_hh, 0)),
                plain(at(&states[k], 0)),
                at(g, lo.weight_hh),
                None,
                true,
            )?);
            // db_ih += colsum(da_ih), db_hh += colsum(da_hh): one pass when they are one array.
            let sums: &[(&wgpu::Buffer, &[usize])] = if std::ptr::eq(dz_ih, dz_hh) {
                &[(dz_ih, &[lo.bias_ih, lo.bias_hh])]
            } else {
                &[(dz_ih, &[lo.bias_ih]), (dz_hh, &[lo.bias_hh])]
            };
            for &(dz, outs) in sums {
                bwd.push(reduce::column_sums_accumulate(
                    ctx,
                    (n, gh),
                    at(dz, 0),
                    g,
                    outs,
                )?);
            }
            if k == 0 && cfg.gathers_input() {
                bwd.push(rnn::input_grad_onehot(
                    ctx,
                    Dims {
                        rows,
                        hidden: gh,
                        inputs: ik,
                        n,
                    },
                    &inputs,
                    TokenLayout::new(n, i0),
                    at(dz_ih, 0),
                    at(g, lo.weight_ih),
                )?);
            } else {
                bwd.extend(matmul(
                    ctx,
                    (gh, ik, n),
                    transposed(at(dz_ih, 0)),
                    below(k),
                    at(g, lo.weight_ih),
                    None,
                    true,
                )?);
            }
            if k > 0 {
                bwd.extend(matmul(
                    ctx,
                    (n, h, gh),
                    plain(at(dz_ih, 0)),
                    plain(at(p, lo.weight_ih)),
                    at(&ds[1 - cur], 0),
                    None,
                    false,
                )?);
                dropout_slots.push(DropoutSlot {
                    forward: false,
                    index: bwd.len(),
                    n: n * h,
                    offsets: (0, 0),
                    boundary: k - 1,
                });
                bwd.push(dropout::dropout_backward(
                    ctx,
                    n * h,
                    at(&ds[1 - cur], 0),
                    MaskKey::new(self.dropout, k - 1),
                )?);
                cur = 1 - cur;
            } else if let Some((off, e, _, dx)) = &embed {
                // Into the embedding: dX = dZ W_ih [N, E], then dE[v] += the rows of token v.
                bwd.extend(matmul(
                    ctx,
                    (n, *e, gh),
                    plain(at(dz_ih, 0)),
                    plain(at(p, lo.weight_ih)),
                    at(dx, 0),
                    None,
                    false,
                )?);
                bwd.push(rnn::embed_grad(
                    ctx,
                    Dims {
                        rows,
                        hidden: *e,
                        inputs: i0,
                        n,
                    },
                    &inputs,
                    TokenLayout::new(n, i0),
                    at(dx, 0),
                    at(g, *off),
                )?);
            }
        }
        let forward = Plan::build(ctx, &mut self.pipes, "forward", fwd)?.in_phases(&fwd_marks);
        let backward = Plan::build(ctx, &mut self.pipes, "backward", bwd)?.in_phases(&bwd_marks);
        Ok(Shape {
            steps,
            rows,
            inputs,
            targets,
            mask,
            states,
            cells,
            logits,
            chunk_rows: chunk,
            forward,
            backward,
            loss_slots,
            dropout_slots,
            last_used: 0,
            recurrence: match (rows_kernels, wide) {
                (true, _) => "rows",
                (false, true) => "wide",
                (false, false) => "steps",
            },
        })
    }

    /// Rewrites the dropout arguments of every shape for the current dropout setting. Only
    /// recorded forward or backward dispatches read them, so only those are submitted first (a
    /// carried state's copies stay in the next step's submit).
    fn patch_dropout(&mut self) -> Result<()> {
        if self.pending_reads_batch {
            self.flush()?;
        }
        for shape in self.shapes.values() {
            for slot in &shape.dropout_slots {
                let args = dropout::DropoutArgs::new(
                    slot.n,
                    slot.offsets,
                    MaskKey::new(self.dropout, slot.boundary),
                )?;
                let plan = if slot.forward {
                    &shape.forward
                } else {
                    &shape.backward
                };
                plan.patch(&self.ctx, slot.index, &args);
            }
        }
        Ok(())
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

    fn upload_batch(&mut self, batch: &Batch) -> Result<()> {
        batch.validate(&self.config)?;
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
        match &batch.inputs {
            Inputs::Tokens(t) => write(
                ctx,
                &shape.inputs,
                0,
                &rnn::token_buffer(t, self.config.input_size),
            ),
            Inputs::Dense(x) => write(ctx, &shape.inputs, 0, x),
        }
        match &batch.targets {
            Targets::Classes(c) => write(ctx, &shape.targets, 0, c),
            Targets::Dense(y) => write(ctx, &shape.targets, 0, y),
        }
        match &batch.mask {
            Some(m) => write(ctx, &shape.mask, 0, m),
            None => write(ctx, &shape.mask, 0, &vec![1.0f32; n]),
        }
        for (forward, index, r) in &shape.loss_slots {
            let args = loss::LossArgs::new(r.clone(), self.config.output_size, count)?;
            let plan = if *forward {
                &shape.forward
            } else {
                &shape.backward
            };
            plan.patch(ctx, *index, &args);
        }
        self.count = count;
        self.forward_done = false;
        Ok(())
    }

    fn forward(&mut self) -> Result<()> {
        let shape = self
            .current
            .and_then(|k| self.shapes.get(&k))
            .ok_or_else(|| Error::Config("forward called before upload_batch".into()))?;
        let bh = shape.rows * self.config.hidden_size;
        for (k, states) in shape.states.iter().chain(&shape.cells).enumerate() {
            self.recorder.push(Op::Copy {
                src: self.h0.clone(),
                src_offset: k * bh,
                dst: states.clone(),
                dst_offset: 0,
                elements: bh,
            });
        }
        self.recorder.record(&shape.forward);
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
            return Err(Error::Config("backward called before forward".into()));
        }
        let shape = self
            .current
            .and_then(|k| self.shapes.get(&k))
            .ok_or_else(|| Error::Config("backward called before upload_batch".into()))?;
        self.recorder.record(&shape.backward);
        self.pending_reads_batch = true;
        Ok(())
    }

    fn loss(&mut self) -> Result<LossStats> {
        if !self.forward_done {
            return Err(Error::Config("no forward pass has run yet".into()));
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
            return Err(Error::Data(format!(
                "gradient norm is {norm}: training diverged (lower the learning rate or clip); \
                 the update was skipped"
            )));
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
            return Err(Error::Config("carry_state called before forward".into()));
        }
        let shape = self.current_shape()?;
        let bh = shape.rows * self.config.hidden_size;
        let last = shape.steps * bh;
        let ops: Vec<Op> = shape
            .states
            .iter()
            .chain(&shape.cells)
            .enumerate()
            .map(|(k, s)| Op::Copy {
                src: s.clone(),
                src_offset: last,
                dst: self.h0.clone(),
                dst_offset: k * bh,
                elements: bh,
            })
            .collect();
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

    fn outputs(&mut self) -> Result<Vec<f32>> {
        if !self.forward_done {
            return Err(Error::Config("no forward pass has run yet".into()));
        }
        let shape = self.current_shape()?;
        let (n, v) = (shape.steps * shape.rows, self.config.output_size);
        if shape.chunk_rows < n {
            return Err(crate::engine::outputs_not_kept(n, v, shape.chunk_rows));
        }
        let logits = shape.logits.clone();
        self.read_all(&logits, 0, n * v)
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
        if recurrence != self.recurrence {
            self.rebuild_shapes()?;
            self.recurrence = recurrence;
        }
        Ok(())
    }
}
