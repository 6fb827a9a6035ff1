//! The layer-level contract both engines implement (the CPU reference and the GPU engine).
//!
//! A training step is: `upload_batch`, `zero_grads`, `forward` (keeps the activations of all T
//! steps, computes the loss and its gradient w.r.t. the outputs), `backward` (exact BPTT; gradients
//! ACCUMULATE), `optimizer_step` (global norm, clipping, update over the flat buffer), then
//! `carry_state` or `reset_state` before the next batch. `set_dropout` turns dropout between
//! layers on (with a fresh seed per training step) or off (evaluation, sampling);
//! `set_row_window` keys its masks by the rows of a batch shared with other engines
//! ([`RowWindow`]). The trainer, the sampler and the CLI are generic over [`Engine`]; an engine may record these calls and run them later, so only the
//! read-back calls (`loss`, `params`, `grads`, `state`, ...) have to wait for the work. Calls out
//! of this order are [`Error::Misuse`]: a bug in the caller. docs/ARCHITECTURE.md ("The Engine
//! contract") describes the contract and how each engine keeps it.
//!
//! Batches are time-major: row `r = t * B + b` holds time step `t` of sequence `b`.

pub mod cpu;
pub mod gpu;
pub mod profile;
pub mod reverse;
pub mod select;
pub mod variant;

use crate::error::{Error, Result};
use crate::model::{InputKind, ModelConfig, OutputKind, ParamLayout};
use crate::train::optim::{OptimizerConfig, OptimizerState};

/// The inputs of a batch, `T * B` time steps in time-major order.
#[derive(Clone, Debug, PartialEq)]
pub enum Inputs {
    /// One token id per step (one-hot inputs).
    Tokens(Vec<u32>),
    /// `input_size` numbers per step.
    Dense(Vec<f32>),
}

/// The targets of a batch, `T * B` time steps in time-major order.
#[derive(Clone, Debug, PartialEq)]
pub enum Targets {
    /// One class id per step (softmax output).
    Classes(Vec<u32>),
    /// `output_size` numbers per step (identity or sigmoid output).
    Dense(Vec<f32>),
}

/// One batch of B sequences of T steps, with an optional mask for padded steps.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// T: time steps.
    pub steps: usize,
    /// B: sequences.
    pub rows: usize,
    pub inputs: Inputs,
    pub targets: Targets,
    /// `T * B` weights, 1 for a real step and 0 for padding; `None` means all ones.
    pub mask: Option<Vec<f32>>,
}

impl Batch {
    /// Checks that the batch fits `config`: lengths, token and class ranges, finite numbers, mask.
    pub fn validate(&self, config: &ModelConfig) -> Result<()> {
        let n = self.steps * self.rows;
        if n == 0 {
            return Err(Error::Shape(format!(
                "a batch needs T >= 1 and B >= 1, got T={} B={}",
                self.steps, self.rows
            )));
        }
        match (&self.inputs, config.input_kind) {
            (Inputs::Tokens(t), InputKind::OneHot) => {
                check_len("input tokens", t.len(), n)?;
                if let Some(&bad) = t.iter().find(|&&x| x as usize >= config.input_size) {
                    return Err(Error::Data(format!(
                        "input token {bad} is outside the vocabulary of {}",
                        config.input_size
                    )));
                }
            }
            (Inputs::Dense(x), InputKind::Dense) => {
                check_len("input values", x.len(), n * config.input_size)?;
                check_finite("input", x)?;
            }
            _ => {
                return Err(Error::Shape(format!(
                    "batch inputs do not match the model's {:?} input",
                    config.input_kind
                )));
            }
        }
        match (&self.targets, config.output_kind) {
            (Targets::Classes(c), OutputKind::Softmax) => {
                check_len("target classes", c.len(), n)?;
                if let Some(&bad) = c.iter().find(|&&x| x as usize >= config.output_size) {
                    return Err(Error::Data(format!(
                        "target class {bad} is outside the {} outputs",
                        config.output_size
                    )));
                }
            }
            (Targets::Dense(y), OutputKind::Identity | OutputKind::Sigmoid) => {
                check_len("target values", y.len(), n * config.output_size)?;
                check_finite("target", y)?;
                if config.output_kind == OutputKind::Sigmoid
                    && let Some(v) = y.iter().find(|v| !(0.0..=1.0).contains(*v))
                {
                    return Err(Error::Data(format!("binary target {v} is outside [0, 1]")));
                }
            }
            _ => {
                return Err(Error::Shape(format!(
                    "batch targets do not match the model's {:?} output",
                    config.output_kind
                )));
            }
        }
        if let Some(m) = &self.mask {
            check_len("mask", m.len(), n)?;
            if let Some(v) = m.iter().find(|v| !(v.is_finite() && **v >= 0.0)) {
                return Err(Error::Data(format!("mask weight {v} is not >= 0")));
            }
        }
        Ok(())
    }

    /// Sum of the mask (the number of counted steps).
    pub fn count(&self) -> f64 {
        match &self.mask {
            Some(m) => m.iter().map(|&v| v as f64).sum(),
            None => (self.steps * self.rows) as f64,
        }
    }
}

fn check_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::Shape(format!(
            "{what}: {got} given, {want} expected"
        )));
    }
    Ok(())
}

fn check_finite(what: &str, v: &[f32]) -> Result<()> {
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(Error::Data(format!("{what} value {i} is not finite")));
    }
    Ok(())
}

/// The loss of the last forward pass: `sum` of the per-step losses over counted steps and the
/// `count` of those steps (the mask's sum). The training objective is `sum / count`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossStats {
    pub sum: f64,
    pub count: f64,
}

impl LossStats {
    /// Mean loss per counted step (nats per token for a language model); 0 when nothing counted.
    pub fn mean(&self) -> f64 {
        if self.count > 0.0 {
            self.sum / self.count
        } else {
            0.0
        }
    }
}

/// Dropout between stacked layers, as `torch.nn.RNN/GRU/LSTM(dropout=p)` applies it: on the
/// outputs of every layer but the last, in training only. The mask is a function of `seed`, the
/// layer and the element (see `engine::cpu::dropout`), the same on every engine; the trainer
/// gives each step its own seed, so a resumed run draws the masks it would have drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    /// Probability of zeroing an element, in `[0, 1)`.
    pub p: f32,
    pub seed: u64,
}

impl Dropout {
    /// Checks that `p` is a probability below 1.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.p) {
            return Err(Error::Config(format!(
                "dropout {} is not in [0, 1)",
                self.p
            )));
        }
        Ok(())
    }
}

/// Where an engine's batches lie in a larger batch that several engines share row-wise
/// (data-parallel training): local row b of every time step is row `first + b` of a batch of
/// `rows` rows. Dropout masks are keyed by the row in that batch, so the engines that share it
/// draw the masks one engine would draw for all of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowWindow {
    pub first: usize,
    pub rows: usize,
}

impl RowWindow {
    /// Checks that the window has a row of its own within its batch.
    pub fn validate(&self) -> Result<()> {
        if self.first >= self.rows {
            return Err(Error::Shape(format!(
                "row window starts at row {} of a batch of {} rows; it must start within it",
                self.first, self.rows
            )));
        }
        Ok(())
    }

    /// Checks that a batch of `rows` rows fits in the window: rows `first..first + rows` of
    /// the shared batch.
    pub fn check_batch(&self, rows: usize) -> Result<()> {
        if self.first.saturating_add(rows) > self.rows {
            return Err(Error::Shape(format!(
                "a batch of B={rows} rows does not fit in the row window at row {} of a batch \
                 of {} rows; set a window that holds rows {}..{}",
                self.first,
                self.rows,
                self.first,
                self.first + rows
            )));
        }
        Ok(())
    }
}

/// Dropout at the model's edges, as PyTorch's word_language_model example applies it besides
/// the dropout between layers: on the embedded tokens (`embed`, layer 0's input) and on the
/// top layer's output (`out`, the output layer's input). In training only: the masks are keyed
/// by the step's [`Dropout`] seed and a site of their own (see `engine::cpu::dropout`), and
/// apply only while the engine has one.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EdgeDropout {
    /// Probability of zeroing an element of the embedded tokens, in `[0, 1)`.
    pub embed: f32,
    /// Probability of zeroing an element of the top layer's output, in `[0, 1)`.
    pub out: f32,
}

impl EdgeDropout {
    /// Checks that both are probabilities below 1.
    pub fn validate(&self) -> Result<()> {
        for p in [self.embed, self.out] {
            Dropout { p, seed: 0 }.validate()?;
        }
        Ok(())
    }

    /// Whether either site drops anything.
    pub fn is_on(&self) -> bool {
        self.embed > 0.0 || self.out > 0.0
    }

    /// Checks the probabilities and that `config` has the sites they drop: the embedding
    /// dropout needs an embedding.
    pub fn check_for(&self, config: &ModelConfig) -> Result<()> {
        self.validate()?;
        if self.embed > 0.0 && config.embed.is_none() {
            return Err(Error::Config(
                "dropout on the embedding needs an embedding (--embed E)".into(),
            ));
        }
        Ok(())
    }
}

/// The engine contract: see the module docs for the order of calls.
pub trait Engine {
    /// A short description of the engine and its device, for logs.
    fn describe(&self) -> String;
    /// The model this engine runs.
    fn config(&self) -> &ModelConfig;
    /// The layout of its flat parameter, gradient and moment buffers.
    fn layout(&self) -> &ParamLayout;

    /// Replaces all parameters (flat buffer in layout order).
    fn set_params(&mut self, params: &[f32]) -> Result<()>;
    /// Reads all parameters back.
    fn params(&mut self) -> Result<Vec<f32>>;
    /// Reads the accumulated gradients back.
    fn grads(&mut self) -> Result<Vec<f32>>;
    /// Replaces the accumulated gradients (flat buffer in layout order): a data-parallel run
    /// puts the gradient summed over its processes here before the optimizer step.
    fn set_grads(&mut self, grads: &[f32]) -> Result<()>;

    /// Makes `batch` the current batch; its B must equal the state's B unless the state is reset.
    fn upload_batch(&mut self, batch: &Batch) -> Result<()>;
    /// Runs the current batch forward from the initial state, keeping the activations, the loss
    /// and the gradient of the loss w.r.t. the outputs.
    fn forward(&mut self) -> Result<()>;
    /// Sets every gradient to zero.
    fn zero_grads(&mut self) -> Result<()>;
    /// Exact BPTT through the last forward pass; ADDS into the gradients.
    fn backward(&mut self) -> Result<()>;
    /// The loss of the last forward pass (waits for it on an asynchronous engine).
    fn loss(&mut self) -> Result<LossStats>;

    /// One optimizer update over the flat buffer with learning rate `lr`: the global gradient
    /// norm is computed, gradients are scaled by `min(1, clip / (norm + 1e-6))` when
    /// `config.clip > 0`, then the update rule is applied. When the norm is not finite the
    /// update is skipped (parameters and moments stay as they were; the step count still
    /// advances) and [`Engine::grad_norm`] reports the divergence.
    fn optimizer_step(&mut self, config: &OptimizerConfig, lr: f32) -> Result<()>;
    /// Global L2 norm of the gradients before clipping, as computed by the last `optimizer_step`;
    /// [`Error::Diverged`] when it was not finite and the update was skipped.
    fn grad_norm(&mut self) -> Result<f32>;
    /// Optimizer moments and step count, for checkpoints.
    fn optimizer_state(&mut self) -> Result<OptimizerState>;
    /// Restores optimizer moments and step count.
    fn set_optimizer_state(&mut self, state: &OptimizerState) -> Result<()>;

    /// Sets the initial state of the next forward to zero, for `rows` sequences.
    fn reset_state(&mut self, rows: usize) -> Result<()>;
    /// Makes the last forward's final state the initial state of the next forward (truncated BPTT:
    /// no gradient flows across).
    fn carry_state(&mut self) -> Result<()>;
    /// Sets the initial state: `B * config.state_size_per_row()` values: h as `layers * B * H`
    /// values, layer-major then row-major, followed for an LSTM by c in the same layout.
    fn set_state(&mut self, rows: usize, state: &[f32]) -> Result<()>;
    /// Reads the initial state of the next forward, laid out as [`Engine::set_state`] takes it.
    fn state(&mut self) -> Result<Vec<f32>>;
    /// Dropout between layers for the following forward passes (`None`: off, as in evaluation
    /// and sampling, and the initial setting). Engines without dropout refuse `p > 0`.
    fn set_dropout(&mut self, dropout: Option<Dropout>) -> Result<()> {
        match dropout {
            Some(d) if d.p > 0.0 => Err(Error::Config(format!(
                "{} does not support dropout",
                self.describe()
            ))),
            _ => Ok(()),
        }
    }
    /// Dropout at the model's edges for the training forwards that follow (see
    /// [`EdgeDropout`]): it applies only while [`Engine::set_dropout`] has set a step's
    /// dropout, whose seed keys its masks, and is off in evaluation and sampling. Engines
    /// without it refuse a probability above 0.
    fn set_edge_dropout(&mut self, edges: EdgeDropout) -> Result<()> {
        edges.validate()?;
        if edges.is_on() {
            return Err(Error::Config(format!(
                "{} does not support dropout on the embedding or the top layer's output",
                self.describe()
            )));
        }
        Ok(())
    }
    /// The rows of `batch` this engine runs: all of them for an engine alone; the process's
    /// share of them for the engine of a data-parallel run ([`crate::dist::Sharded`]), whose
    /// outputs ([`Engine::outputs_of`]) are those of the share.
    fn share_of<'b>(&self, batch: &'b Batch) -> std::borrow::Cow<'b, Batch> {
        std::borrow::Cow::Borrowed(batch)
    }
    /// Sums `values` over the processes of a data-parallel run (counts that each process took
    /// over its share of the batches); nothing to do for an engine alone.
    fn sum_over_shares(&mut self, values: &mut [f64]) -> Result<()> {
        let _ = values;
        Ok(())
    }
    /// Output probabilities (after f2) of the last forward, `T * B * V` time-major. Only kept when
    /// the output layer ran in one chunk (see [`Engine::set_logit_budget`]); otherwise an error
    /// says so, and [`Engine::outputs_of`] gives them a chunk at a time.
    fn outputs(&mut self) -> Result<Vec<f32>>;
    /// How the output layer of the last forward ran: its N rows in chunks of how many.
    fn output_chunks(&mut self) -> Result<OutputChunks>;
    /// The output probabilities (after f2) of `rows` of the last forward, `rows.len() * V`
    /// time-major, for any V: read from the kept outputs when the output layer ran in one chunk
    /// (the values [`Engine::outputs`] returns), else computed again from the top layer's kept
    /// states with the current parameters, one chunk at a time as the backward does (the values
    /// the forward computed, as long as the parameters did not change since). `rows` must lie
    /// within one of the chunks of [`Engine::output_chunks`]; [`for_each_output_chunk`] walks
    /// them all.
    fn outputs_of(&mut self, rows: std::ops::Range<usize>) -> Result<Vec<f32>>;
    /// The most logits (rows times V) the output layer holds at once; at least one row. When a
    /// batch's `T * B * V` logits exceed it, the output layer runs in chunks of
    /// [`logit_chunk_rows`] rows: the forward keeps only the loss, and the backward computes each
    /// chunk's logits again (one more output GEMM) before its gradients. Default
    /// [`DEFAULT_LOGIT_BUDGET`]; applies from the next shape the engine builds.
    fn set_logit_budget(&mut self, elements: usize) -> Result<()>;
    /// Whether the forwards that follow keep what [`Engine::backward`] needs (`true`, the
    /// initial setting). Evaluation and prediction turn it off: the CPU engine's output layer
    /// then computes no gradient w.r.t. its logits and holds at most [`INFERENCE_LOGITS`] logits
    /// at once (one block of rows, reused block after block), so their memory is bounded by
    /// the model, the activations and one block, not by the batch times V; a backward after
    /// such a forward is an error. Engines may keep their gradients anyway (the GPU engine,
    /// whose logits live in device memory under the logit budget).
    fn set_grad_enabled(&mut self, on: bool) -> Result<()> {
        let _ = on;
        Ok(())
    }
    /// How the recurrent products are dispatched, for engines that have a choice (the GPU);
    /// the others run their one way. Applies from the next shape the engine builds.
    fn set_recurrence(&mut self, recurrence: Recurrence) -> Result<()> {
        let _ = recurrence;
        Ok(())
    }
    /// The kernel choices applicable to this engine's model and device
    /// ([`variant::Variant`]), its default first.
    fn variants(&self) -> Vec<variant::Variant>;
    /// Runs `variant` from the next shape the engine builds (a batch shape seen before is
    /// built again); the results stay within the engines' tolerances. A variant of the other
    /// engine, or one this device cannot run, is [`Error::Config`].
    fn set_variant(&mut self, variant: &variant::Variant) -> Result<()>;
    /// The variant the engine runs.
    fn variant(&self) -> variant::Variant;
    /// What the choice of a variant depends on besides the model's shape: the GPU adapter
    /// (name, driver, backend) or the processor (model, SIMD kernel, threads).
    fn device_key(&self) -> String {
        self.describe()
    }
    /// Where the batches that follow lie in a batch shared row-wise with other engines
    /// (data-parallel training), which keys their dropout masks by the shared batch's rows
    /// ([`RowWindow`]); `None`, the initial setting, is the engine alone. It applies to the
    /// forwards and backwards from the next `upload_batch`; a batch whose rows the window does
    /// not hold is [`Error::Shape`] there (and at `forward`).
    fn set_row_window(&mut self, window: Option<RowWindow>) -> Result<()>;
    /// Starts (`true`) or stops timing each [`profile::StepPhase`] of the calls that follow:
    /// device time from timestamp queries on the GPU (an error where the device has none, and
    /// every submit then waits for its timestamps), the wall clock inside the calls on the CPU.
    /// Results are the same with and without it.
    fn set_phase_profile(&mut self, on: bool) -> Result<()>;
    /// The time per phase since the last call (everything recorded is run first); `None` when
    /// not profiling.
    fn take_phase_times(&mut self) -> Result<Option<profile::PhaseTimes>>;
}

/// How the GPU engine runs the recurrent product of each time step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Recurrence {
    /// tanh/relu: `Rows` below H = [`ROWS_BELOW_HIDDEN`] where it fits the device, else `Wide`;
    /// gated cells: `Wide`.
    #[default]
    Auto,
    /// One dispatch per time step, the product tiled over rows and columns (16x16 tiles for the
    /// tanh cell, the GEMM's 64x64 tiles for a gated cell's gates, followed by its gate kernel).
    Steps,
    /// One dispatch per time step, spread over the output columns: each workgroup owns a few of
    /// them for all B rows, with their slice of W in workgroup memory. A gated step is this one
    /// dispatch, the gate work of the workgroup's units fused after the product.
    Wide,
    /// tanh/relu: one dispatch per layer and direction, a workgroup per batch row looping over
    /// all T steps with its state in workgroup memory. Gated cells run `Wide`.
    Rows,
}

/// `Recurrence::Auto` runs the tanh/relu recurrence a workgroup per row below this H and
/// `Wide` from it. The forward recurrence measured on an H200 (docs/ARCHITECTURE.md, Tuning
/// numbers): rows per workgroup 2.6 us per step against 5.6 for the wide kernel at H = 128
/// (B = 32), 27.8 against 16.5 at H = 512 (B = 64), and the wide kernel ahead at H = 1024 and
/// 2048 too.
pub const ROWS_BELOW_HIDDEN: usize = 512;

/// The default logit budget: 2^26 values (256 MiB in f32 per logits array), so the usual
/// character and word models run the output layer in one chunk and only very large batches
/// over large vocabularies are chunked.
pub const DEFAULT_LOGIT_BUDGET: usize = 1 << 26;

/// The most logits the CPU engine's output layer holds at once in a forward without gradients
/// ([`Engine::set_grad_enabled`]): 2^22 values, 16 MiB in f32 (419 rows of a 10,000-word
/// vocabulary), large enough that the output GEMM of each block runs at full speed.
pub const INFERENCE_LOGITS: usize = 1 << 22;

/// Rows of the output layer's chunks for N rows of V logits under a budget of `budget` values:
/// `budget / V` rows, at least one and at most N.
pub fn logit_chunk_rows(n: usize, v: usize, budget: usize) -> usize {
    (budget / v.max(1)).clamp(1, n.max(1))
}

/// The chunks of N rows, `rows` each (the last one shorter), as the output layer runs them.
pub fn logit_chunks(n: usize, rows: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    (0..n)
        .step_by(rows.max(1))
        .map(move |c| c..(c + rows).min(n))
}

/// The error of [`Engine::outputs`] when the output layer ran in chunks.
pub fn outputs_not_kept(n: usize, v: usize, rows: usize) -> Error {
    Error::Shape(format!(
        "the outputs of the last forward ({n} rows of {v}) were not kept: the output layer ran in \
         chunks of {rows} rows; read them a chunk at a time (outputs_of)"
    ))
}

/// How the output layer of a forward ran: `rows` (N = T * B) in chunks of `chunk_rows` (N when
/// it ran in one, which keeps the outputs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputChunks {
    pub rows: usize,
    pub chunk_rows: usize,
}

impl OutputChunks {
    /// The row ranges of the chunks, in order.
    pub fn ranges(&self) -> impl Iterator<Item = std::ops::Range<usize>> {
        logit_chunks(self.rows, self.chunk_rows)
    }

    /// The chunk holding `rows`, or [`Error::Shape`] when they are empty, reach past N or
    /// cross a chunk's end.
    pub fn chunk_of(&self, rows: &std::ops::Range<usize>) -> Result<std::ops::Range<usize>> {
        let step = self.chunk_rows.max(1);
        let start = rows.start / step * step;
        let chunk = start..(start + step).min(self.rows);
        if rows.is_empty() || rows.end > chunk.end {
            return Err(Error::Shape(format!(
                "output rows {}..{} are not within one chunk of the last forward's {} rows in \
                 chunks of {}",
                rows.start, rows.end, self.rows, self.chunk_rows
            )));
        }
        Ok(chunk)
    }
}

/// Calls `f` with each chunk of the last forward's outputs in order: its rows and their
/// probabilities (`rows.len() * V`), so that no more than one chunk of them is held at once.
/// When the output layer ran in one chunk this is one call with all of them.
pub fn for_each_output_chunk(
    engine: &mut dyn Engine,
    mut f: impl FnMut(std::ops::Range<usize>, &[f32]) -> Result<()>,
) -> Result<()> {
    let chunks = engine.output_chunks()?;
    for rows in chunks.ranges() {
        let p = engine.outputs_of(rows.clone())?;
        f(rows, &p)?;
    }
    Ok(())
}
