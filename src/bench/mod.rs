//! Measurement of training throughput: the char-LM training step (one-hot input over V tokens,
//! a stack of recurrent layers, a linear output, softmax cross-entropy on every step, SGD with
//! clip-by-norm 5) timed on either engine, with the device's work waited for before the clock
//! is read. `unroll bench`, the criterion benches and the tests share this code.
//!
//! Protocol: `warmup` untimed steps (pipelines compiled, buffers allocated, caches warm), then
//! `repeats` samples of a block of `block` steps, each block waited to completion and divided by
//! `block` (throughput); on the GPU also `repeats` single steps, each waited (latency). Every
//! step is [`train_step`]: upload a batch, zero the gradients, forward, BPTT, optimizer, carry the
//! state, as `unroll train` runs it. Batches are random tokens from a seeded stream, the targets
//! the next token of the same stream, rotated among a few pre-built batches. With bidirectional
//! layers the step is a labelling step, as `unroll train --pairs` runs it: random labels, and
//! the state reset to zero before every batch instead of carried.
//!
//! `pytorch` runs the same step through PyTorch for a side-by-side ratio; `matmul` times the WGSL
//! GEMM alone.

pub mod matmul;
pub mod parallel;
pub mod pytorch;

use std::time::Instant;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::dist::Sharded;
use crate::engine::cpu::CpuEngine;
use crate::engine::gpu::profile::StepPhase;
use crate::engine::gpu::{GpuContext, GpuEngine};
use crate::engine::{Batch, Engine, Inputs, Targets};
use crate::error::{Error, Result};
use crate::model::{Cell, ModelConfig, ParamLayout, init_params};
use crate::train::optim::{OptimizerConfig, OptimizerKind};
use crate::train::trainer::train_step;

/// Cell names a build may know; [`parse_cell`] accepts those that [`Cell`] has.
const CELL_NAMES: [&str; 3] = ["rnn", "gru", "lstm"];

/// Distinct batches the timed steps rotate through.
const BATCHES: usize = 4;

/// Learning rate of the benchmarked SGD (small enough never to diverge on random tokens).
pub const BENCH_LR: f32 = 0.05;
/// Clip norm of the benchmarked step.
pub const BENCH_CLIP: f32 = 5.0;

/// The cell called `name` (`rnn`, and the gated cells when this build has them), read through
/// the same names as checkpoints use, so a new [`Cell`] variant is accepted with no change here.
pub fn parse_cell(name: &str) -> Result<Cell> {
    serde_json::from_value(serde_json::Value::String(name.trim().to_lowercase())).map_err(|_| {
        Error::Config(format!(
            "unknown cell {name:?}: this build knows {}",
            known_cells().join(", ")
        ))
    })
}

/// The cell names this build accepts.
pub fn known_cells() -> Vec<&'static str> {
    CELL_NAMES
        .iter()
        .copied()
        .filter(|n| serde_json::from_value::<Cell>(serde_json::Value::String((*n).into())).is_ok())
        .collect()
}

/// The name of `cell` as `--cell` and the PyTorch script spell it.
pub fn cell_name(cell: Cell) -> String {
    serde_json::to_value(cell)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{cell:?}").to_lowercase())
}

/// Where a benchmark runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Cpu,
    Gpu,
}

/// The model and batch shape of one benchmarked step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct StepShape {
    #[serde(serialize_with = "serialize_cell")]
    pub cell: Cell,
    /// V: vocabulary (one-hot inputs and softmax outputs).
    pub vocab: usize,
    /// H.
    pub hidden: usize,
    /// B.
    pub batch: usize,
    /// T.
    pub seq_len: usize,
    pub layers: usize,
    /// E: a learned embedding of the tokens before the first layer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embed: Option<usize>,
    /// Bidirectional layers. The step is then a labelling step: every step's label is drawn
    /// at random, the state starts from zero at every batch (nothing is carried), and every
    /// step counts in the loss.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub bidirectional: bool,
    /// P: an LSTM's projection size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proj_size: Option<usize>,
    /// Whether the recurrent layers have biases.
    #[serde(skip_serializing_if = "is_true")]
    pub bias: bool,
}

fn is_true(b: &bool) -> bool {
    *b
}

fn serialize_cell<S: serde::Serializer>(cell: &Cell, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&cell_name(*cell))
}

impl StepShape {
    /// A one-layer tanh language model of `hidden` units over `vocab` tokens.
    pub fn new(cell: Cell, vocab: usize, hidden: usize, batch: usize, seq_len: usize) -> Self {
        StepShape {
            cell,
            vocab,
            hidden,
            batch,
            seq_len,
            layers: 1,
            embed: None,
            bidirectional: false,
            proj_size: None,
            bias: true,
        }
    }

    /// The model configuration (checked).
    pub fn config(&self) -> Result<ModelConfig> {
        let mut cfg = ModelConfig::language_model(self.vocab, self.hidden, self.layers);
        cfg.cell = self.cell;
        cfg.embed = self.embed;
        cfg.bidirectional = self.bidirectional;
        cfg.proj_size = self.proj_size;
        cfg.bias = self.bias;
        cfg.validate()?;
        if self.vocab < 2 {
            return Err(Error::Config(format!(
                "vocabulary size = {} must be at least 2",
                self.vocab
            )));
        }
        for (name, v) in [("batch", self.batch), ("sequence length", self.seq_len)] {
            if v == 0 {
                return Err(Error::Config(format!("{name} must be at least 1")));
            }
        }
        Ok(cfg)
    }

    /// Tokens per step, `B * T`.
    pub fn tokens(&self) -> usize {
        self.batch * self.seq_len
    }
}

/// Warm-up and repetitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Timing {
    /// Untimed steps first.
    pub warmup: usize,
    /// Timed samples.
    pub repeats: usize,
    /// Steps per throughput sample (each sample waited once, then divided).
    pub block: usize,
}

impl Timing {
    fn validate(&self) -> Result<()> {
        if self.repeats == 0 || self.block == 0 {
            return Err(Error::Config(format!(
                "--repeats ({}) and --block ({}) must be at least 1",
                self.repeats, self.block
            )));
        }
        Ok(())
    }
}

/// Summary of a sample of times in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub p10: f64,
    pub p90: f64,
    pub samples: usize,
}

impl Spread {
    /// The median (mean of the two middle values for an even count), extremes and nearest-rank
    /// 10th and 90th percentiles of `ms`.
    pub fn of(ms: &[f64]) -> Result<Spread> {
        if ms.is_empty() || ms.iter().any(|v| !v.is_finite()) {
            return Err(Error::Config("no finite timing samples".into()));
        }
        let mut v = ms.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            0.5 * (v[n / 2 - 1] + v[n / 2])
        };
        let rank = |p: f64| v[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
        Ok(Spread {
            median,
            min: v[0],
            max: v[n - 1],
            p10: rank(0.1),
            p90: rank(0.9),
            samples: n,
        })
    }
}

/// Median time of one part of the step, and its share of their sum.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Phase {
    pub name: String,
    pub ms: f64,
    pub share: f64,
}

/// A per-phase breakdown and how it was taken.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Profile {
    pub phases: Vec<Phase>,
    /// What the phases are and how they were timed.
    pub method: String,
}

impl Profile {
    /// The median of each phase's samples (`names[i]` for `samples[i]`) and its share.
    pub fn from_samples(names: &[&str], samples: &[Vec<f64>], method: String) -> Result<Self> {
        let medians = samples
            .iter()
            .map(|s| Spread::of(s).map(|x| x.median))
            .collect::<Result<Vec<_>>>()?;
        let total: f64 = medians.iter().sum();
        let phases = names
            .iter()
            .zip(medians)
            .map(|(name, ms)| Phase {
                name: (*name).to_string(),
                ms,
                share: if total > 0.0 { ms / total } else { 0.0 },
            })
            .collect();
        Ok(Profile { phases, method })
    }
}

/// The measurement of one configuration on one engine.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepReport {
    pub device: DeviceKind,
    /// The engine's own description (adapter or float type and threads).
    pub engine: String,
    /// GPU: how the recurrent products ran ("rows", "wide" or "steps"; see `--recurrence`).
    pub recurrence: Option<String>,
    pub shape: StepShape,
    pub timing: Timing,
    /// `B * T / median step time`.
    pub tokens_per_s: f64,
    /// Per-step time from blocks of `timing.block` steps.
    pub step_ms: Spread,
    /// One step submitted and waited for on its own.
    pub latency_ms: Spread,
    /// Mean loss per token of the last timed step (a sanity check: about ln V at first).
    pub loss: f64,
    /// With `--profile`: per engine call, and on the CPU (one-layer RNN) per kernel phase.
    pub profile: Vec<Profile>,
    /// The per-step samples behind `step_ms` and `latency_ms`, for [`StepReport::merge`].
    #[serde(skip)]
    pub samples: (Vec<f64>, Vec<f64>),
}

impl StepReport {
    /// Adds the samples of another measurement of the same configuration (a later round):
    /// the spreads and tokens/s are recomputed over all samples; the loss is the later one's.
    pub fn merge(&mut self, later: StepReport) -> Result<()> {
        self.samples.0.extend(later.samples.0);
        self.samples.1.extend(later.samples.1);
        self.step_ms = Spread::of(&self.samples.0)?;
        self.latency_ms = Spread::of(&self.samples.1)?;
        self.tokens_per_s = self.shape.tokens() as f64 / (self.step_ms.median * 1e-3);
        self.loss = later.loss;
        self.profile.extend(later.profile);
        Ok(())
    }
}

/// An engine under measurement, with the wait that makes its clock honest.
pub enum BenchEngine {
    Cpu(Box<CpuEngine<f32>>),
    Gpu(Box<GpuEngine>),
    /// One rank of a data-parallel run (`parallel`), over an engine on `device`.
    Sharded {
        engine: Box<Sharded>,
        device: DeviceKind,
    },
}

impl BenchEngine {
    /// The engine on `device` (the GPU: the best adapter, software ones included) for `config`.
    pub fn open(device: DeviceKind, config: &ModelConfig, params: &[f32]) -> Result<Self> {
        Self::open_nth(device, config, params, 0)
    }

    /// [`BenchEngine::open`] on the `nth` GPU of the machine (see [`GpuContext::open_nth`]).
    pub fn open_nth(
        device: DeviceKind,
        config: &ModelConfig,
        params: &[f32],
        nth: usize,
    ) -> Result<Self> {
        Ok(match device {
            DeviceKind::Cpu => BenchEngine::Cpu(Box::new(CpuEngine::new(config, params)?)),
            DeviceKind::Gpu => BenchEngine::gpu(GpuContext::open_nth(true, nth)?, config, params)?,
        })
    }

    /// The engine itself, to share out (`parallel`).
    pub fn into_engine(self) -> Box<dyn Engine> {
        match self {
            BenchEngine::Cpu(e) => e,
            BenchEngine::Gpu(e) => e,
            BenchEngine::Sharded { engine, .. } => engine,
        }
    }

    /// The GPU engine on an open context.
    pub fn gpu(ctx: GpuContext, config: &ModelConfig, params: &[f32]) -> Result<Self> {
        Ok(BenchEngine::Gpu(Box::new(GpuEngine::new(
            ctx, config, params,
        )?)))
    }

    pub fn device(&self) -> DeviceKind {
        match self {
            BenchEngine::Cpu(_) => DeviceKind::Cpu,
            BenchEngine::Gpu(_) => DeviceKind::Gpu,
            BenchEngine::Sharded { device, .. } => *device,
        }
    }

    /// The engine behind the contract.
    pub fn engine(&mut self) -> &mut dyn Engine {
        match self {
            BenchEngine::Cpu(e) => e.as_mut(),
            BenchEngine::Gpu(e) => e.as_mut(),
            BenchEngine::Sharded { engine, .. } => engine.as_mut(),
        }
    }

    /// Returns once every call made so far has finished on the device (submits what the GPU
    /// engine still holds, then blocks on the queue; the CPU engine is synchronous). A rank's
    /// GPU engine is waited for by reading back the gradient norm of the last optimizer step
    /// (the benchmarked step clips, so there is one): a read-back submits and waits for every
    /// command recorded before it.
    pub fn wait(&mut self) -> Result<()> {
        match self {
            BenchEngine::Cpu(_) => Ok(()),
            BenchEngine::Gpu(e) => {
                e.flush()?;
                e.context().wait()?;
                e.context().check("running the benchmarked step")
            }
            BenchEngine::Sharded { engine, device } => match device {
                DeviceKind::Cpu => Ok(()),
                DeviceKind::Gpu => engine.grad_norm().map(drop),
            },
        }
    }

    /// Whether [`StepBench::phase_profile`] can time the phases of this engine: the CPU's, and
    /// a GPU's with timestamp queries (a rank's GPU engine is not reached for them).
    fn has_phase_times(&self) -> bool {
        match self {
            BenchEngine::Cpu(_) => true,
            BenchEngine::Gpu(e) => e.context().has_timestamps(),
            BenchEngine::Sharded { device, .. } => *device == DeviceKind::Cpu,
        }
    }
}

/// `count` random batches for `shape`: B token streams of T + 1 tokens each, inputs the first T
/// and targets the last T (time-major), from a ChaCha8 stream seeded with `seed`. A
/// bidirectional model (which would read the next token) is given labels drawn on their own.
pub fn random_batches(shape: &StepShape, count: usize, seed: u64) -> Vec<Batch> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (b, t) = (shape.batch, shape.seq_len);
    (0..count)
        .map(|_| {
            let streams: Vec<u32> = (0..b * (t + 1))
                .map(|_| rng.random_range(0..shape.vocab as u32))
                .collect();
            let at = |step: usize, row: usize| streams[row * (t + 1) + step];
            let inputs = (0..t * b).map(|r| at(r / b, r % b)).collect();
            let targets = match shape.bidirectional {
                true => (0..t * b)
                    .map(|_| rng.random_range(0..shape.vocab as u32))
                    .collect(),
                false => (0..t * b).map(|r| at(r / b + 1, r % b)).collect(),
            };
            Batch {
                steps: t,
                rows: b,
                inputs: Inputs::Tokens(inputs),
                targets: Targets::Classes(targets),
                mask: None,
            }
        })
        .collect()
}

/// The optimizer of the benchmarked step: plain SGD, clip-by-norm 5.
pub fn bench_optimizer() -> OptimizerConfig {
    OptimizerConfig::new(OptimizerKind::Sgd).with_clip(BENCH_CLIP)
}

/// A seeded engine and batches, ready to step.
pub struct StepBench {
    pub engine: BenchEngine,
    pub shape: StepShape,
    batches: Vec<Batch>,
    opt: OptimizerConfig,
    next: usize,
}

impl StepBench {
    /// Parameters initialised from `seed` (as `unroll train` does), zero state for B rows.
    pub fn new(device: DeviceKind, shape: StepShape, seed: u64) -> Result<Self> {
        let config = shape.config()?;
        let params = init_params(&config, &ParamLayout::new(&config)?, seed);
        let engine = BenchEngine::open(device, &config, &params)?;
        Self::with_engine(engine, shape, seed)
    }

    /// The benchmark on an engine already opened for `shape.config()`.
    pub fn with_engine(mut engine: BenchEngine, shape: StepShape, seed: u64) -> Result<Self> {
        if engine.engine().config() != &shape.config()? {
            return Err(Error::Config(
                "the engine was opened for another model than the benchmarked one".into(),
            ));
        }
        engine.engine().reset_state(shape.batch)?;
        Ok(StepBench {
            engine,
            shape,
            batches: random_batches(&shape, BATCHES, seed.wrapping_add(1)),
            opt: bench_optimizer(),
            next: 0,
        })
    }

    /// Records (GPU) or runs (CPU) one training step on the next batch; does not wait.
    pub fn step(&mut self) -> Result<()> {
        let batch = &self.batches[self.next % self.batches.len()];
        self.next += 1;
        // A labelling step (bidirectional) starts every batch from a zero state.
        let reset = self.shape.bidirectional;
        train_step(self.engine.engine(), batch, reset, &self.opt, BENCH_LR)
    }

    /// `n` steps, then a wait: returns the wall-clock milliseconds.
    pub fn timed_steps(&mut self, n: usize) -> Result<f64> {
        let t0 = Instant::now();
        for _ in 0..n {
            self.step()?;
        }
        self.engine.wait()?;
        Ok(t0.elapsed().as_secs_f64() * 1e3)
    }

    /// Runs the protocol of the module docs; `profile` adds the per-phase breakdown.
    pub fn measure(&mut self, timing: Timing, profile: bool) -> Result<StepReport> {
        timing.validate()?;
        for _ in 0..timing.warmup {
            self.step()?;
        }
        self.engine.wait()?;
        let mut per_step = Vec::with_capacity(timing.repeats);
        for _ in 0..timing.repeats {
            per_step.push(self.timed_steps(timing.block)? / timing.block as f64);
        }
        let step_ms = Spread::of(&per_step)?;
        let single = if timing.block == 1 {
            per_step.clone()
        } else {
            let mut single = Vec::with_capacity(timing.repeats);
            for _ in 0..timing.repeats {
                single.push(self.timed_steps(1)?);
            }
            single
        };
        let latency_ms = Spread::of(&single)?;
        let mut profiles = Vec::new();
        if profile {
            profiles.push(self.profile(timing.repeats)?);
            if let Some(p) = self.phase_profile(timing.repeats)? {
                profiles.push(p);
            }
        }
        // A diverged step would make the numbers meaningless: the norm read-back says so.
        let device = self.engine.device();
        let engine = self.engine.engine();
        engine.grad_norm()?;
        let loss = engine.loss()?.mean();
        let describe = engine.describe();
        let recurrence = match &self.engine {
            BenchEngine::Gpu(e) => e.recurrence_kernel().map(str::to_string),
            BenchEngine::Cpu(_) | BenchEngine::Sharded { .. } => None,
        };
        Ok(StepReport {
            device,
            engine: describe,
            recurrence,
            shape: self.shape,
            timing,
            tokens_per_s: self.shape.tokens() as f64 / (step_ms.median * 1e-3),
            step_ms,
            latency_ms,
            loss,
            profile: profiles,
            samples: (per_step, single),
        })
    }

    /// Per engine call, each waited for before the next starts, median over `repeats` steps:
    /// upload (batch to the device), forward (recurrence, output GEMM, loss), backward (output
    /// GEMMs, BPTT, weight gradients), optimizer (norm, clip, update) and the state carry.
    pub fn profile(&mut self, repeats: usize) -> Result<Profile> {
        const NAMES: [&str; 5] = [
            "upload batch",
            "forward (recurrence + output GEMM + loss)",
            "backward (output GEMMs + BPTT + weight gradients)",
            "optimizer (norm + clip + SGD)",
            "carry state",
        ];
        let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(repeats); NAMES.len()];
        for _ in 0..repeats.max(1) {
            let batch = self.batches[self.next % self.batches.len()].clone();
            self.next += 1;
            let (opt, reset) = (self.opt, self.shape.bidirectional);
            let calls: [&mut EngineCall; 5] = [
                &mut |e| {
                    if reset {
                        e.reset_state(batch.rows)?;
                    }
                    e.upload_batch(&batch)
                },
                &mut |e| e.forward(),
                &mut |e| {
                    e.zero_grads()?;
                    e.backward()
                },
                &mut |e| e.optimizer_step(&opt, BENCH_LR),
                &mut |e| e.carry_state(),
            ];
            for (i, call) in calls.into_iter().enumerate() {
                let t0 = Instant::now();
                call(self.engine.engine())?;
                self.engine.wait()?;
                samples[i].push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
        let method = match &self.engine {
            BenchEngine::Cpu(_) | BenchEngine::Sharded { .. } => {
                "per engine call, wall clock, median over the repeats".to_string()
            }
            BenchEngine::Gpu(e) => {
                format!(
                    "per engine call, each submitted and waited for on its own (wall clock, so \
                     every phase includes one submit and one wait){}",
                    if e.context().has_timestamps() {
                        ""
                    } else {
                        "; the device has no timestamp queries, so there is no per-kernel \
                         device time"
                    }
                )
            }
        };
        Profile::from_samples(&NAMES, &samples, method)
    }
    /// The time of each phase of the step inside the engine, median over `repeats` steps:
    /// device time on a GPU with timestamp queries (its kernels tagged by phase, timed per
    /// compute pass), the wall clock around the same parts of the CPU engine's calls. `None` on
    /// a GPU without timestamp queries.
    pub fn phase_profile(&mut self, repeats: usize) -> Result<Option<Profile>> {
        if !self.engine.has_phase_times() {
            return Ok(None);
        }
        let engine = self.engine.engine();
        engine.set_phase_profile(true)?;
        engine.take_phase_times()?;
        let mut steps = Vec::with_capacity(repeats);
        let mut walls = Vec::with_capacity(repeats);
        for _ in 0..repeats.max(1) {
            let t0 = Instant::now();
            let times = self
                .step()
                .and_then(|()| self.engine.engine().take_phase_times());
            walls.push(t0.elapsed().as_secs_f64() * 1e3);
            match times {
                Ok(Some(t)) => steps.push(t),
                Ok(None) => {}
                Err(e) => {
                    self.engine.engine().set_phase_profile(false)?;
                    return Err(e);
                }
            }
        }
        self.engine.engine().set_phase_profile(false)?;
        let phases: Vec<StepPhase> = StepPhase::ALL
            .into_iter()
            .filter(|&p| steps.iter().any(|t| t.of(p) > 0.0))
            .collect();
        let names: Vec<&str> = phases.iter().map(|p| p.name()).collect();
        let samples: Vec<Vec<f64>> = phases
            .iter()
            .map(|&p| steps.iter().map(|t| t.of(p) * 1e-6).collect())
            .collect();
        let sum: Vec<f64> = steps.iter().map(|t| t.total() * 1e-6).collect();
        let untimed: u64 = steps.iter().map(|t| t.untimed_passes).sum();
        let untimed = match untimed {
            0 => String::new(),
            u => format!("; {u} compute passes found no free timestamp query and are in no phase"),
        };
        let (sum, wall) = (Spread::of(&sum)?.median, Spread::of(&walls)?.median);
        let method = match self.engine.device() {
            DeviceKind::Gpu => format!(
                "device time per phase from GPU timestamp queries at the start and end of each \
                 phase's compute passes, median over {} steps; the phases add up to {sum:.3} ms \
                 of device time, against {wall:.3} ms per step on the wall clock in this mode \
                 (every submit waits for its timestamps; copies, clears and the gaps between \
                 passes are in no phase){untimed}",
                steps.len(),
            ),
            DeviceKind::Cpu => format!(
                "wall clock per phase inside the engine's calls, median over {} steps; the \
                 phases add up to {sum:.3} ms against {wall:.3} ms per step (the batch \
                 upload, zeroing the gradients and the state carry are in no phase)",
                steps.len(),
            ),
        };
        Profile::from_samples(&names, &samples, method).map(Some)
    }
}

/// One engine call of the profile.
type EngineCall<'a> = dyn FnMut(&mut dyn Engine) -> Result<()> + 'a;

/// The GPU anchors (PyTorch + cuDNN on an H200; docs/ARCHITECTURE.md, Tuning numbers):
/// `(cell name, H, B, T)`.
pub const GPU_SWEEP: [(&str, usize, usize, usize); 8] = [
    ("rnn", 128, 32, 64),
    ("rnn", 512, 64, 128),
    ("rnn", 1024, 128, 128),
    ("rnn", 2048, 64, 128),
    ("gru", 512, 64, 128),
    ("lstm", 512, 64, 128),
    ("lstm", 1024, 128, 128),
    ("lstm", 2048, 64, 128),
];

/// The CPU anchors (docs/ARCHITECTURE.md, Tuning numbers): `(cell name, H, B, T)`.
pub const CPU_SWEEP: [(&str, usize, usize, usize); 6] = [
    ("rnn", 128, 32, 64),
    ("rnn", 512, 32, 64),
    ("gru", 128, 32, 64),
    ("gru", 512, 32, 64),
    ("lstm", 128, 32, 64),
    ("lstm", 512, 32, 64),
];

/// The default sweep of `device` for the cells in `cells` (all cells this build has when
/// empty), in the order of the anchors' tables.
pub fn default_sweep(device: DeviceKind, cells: &[Cell], vocab: usize) -> Vec<StepShape> {
    let table: &[(&str, usize, usize, usize)] = match device {
        DeviceKind::Cpu => &CPU_SWEEP,
        DeviceKind::Gpu => &GPU_SWEEP,
    };
    table
        .iter()
        .filter_map(|&(name, h, b, t)| {
            let cell = parse_cell(name).ok()?;
            (cells.is_empty() || cells.contains(&cell))
                .then(|| StepShape::new(cell, vocab, h, b, t))
        })
        .collect()
}
