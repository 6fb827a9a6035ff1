//! Kernel choice measured on the device (`--tune`, `unroll tune`), as
//! `torch.backends.cudnn.benchmark` does: each applicable [`Variant`] of an engine runs a few
//! forward and backward passes of a batch of the run's shape, and the fastest is kept
//! ([`tune`]). [`cache`] keeps the winner per device and shape in a small JSON file, so later
//! runs apply it without measuring ([`choose`]).
//!
//! What is measured: [`TuneOptions::repeats`] rounds; in each, every variant in the race is
//! set and runs one untimed forward + backward (pipelines compiled, buffers allocated), then
//! one timed, waited for (the loss read back), with no optimizer step; the median of each
//! variant, the fastest median wins. A variant whose time passes [`TuneOptions::give_up`]
//! times the best median so far leaves the race. The engine's parameters, gradients and carried state are as before when
//! [`tune`] returns, and it runs the winner.

pub mod cache;

use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::engine::variant::Variant;
use crate::engine::{Batch, Engine, Inputs, Targets};
use crate::error::{Error, Result};
use crate::model::{InputKind, ModelConfig, OutputKind};

pub use cache::{CacheEntry, TuneCache, shape_key};

/// Where the tuner reads the time. The real clock is [`WallClock`]; a test's clock may make
/// the time depend on the variant the engine runs.
pub trait Clock {
    /// The time now, while the engine runs `variant`.
    fn now(&mut self, variant: &Variant) -> Duration;
}

/// The wall clock ([`Instant`]).
pub struct WallClock(Instant);

impl Default for WallClock {
    fn default() -> Self {
        WallClock(Instant::now())
    }
}

impl Clock for WallClock {
    fn now(&mut self, _: &Variant) -> Duration {
        self.0.elapsed()
    }
}

/// How much the tuner measures.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TuneOptions {
    /// Untimed forward + backward passes before each timed one (after a switch of variant).
    pub warmup: usize,
    /// Rounds: timed passes per variant (at most).
    pub repeats: usize,
    /// A variant stops being measured once one of its passes takes this many times the best
    /// median so far.
    pub give_up: f64,
    /// The default variant stays unless another's median is below it by more than this
    /// fraction (timing noise does not change the choice).
    pub margin: f64,
}

impl Default for TuneOptions {
    fn default() -> Self {
        TuneOptions {
            warmup: 1,
            repeats: 3,
            give_up: 2.0,
            margin: 0.02,
        }
    }
}

/// What one variant measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    pub variant: Variant,
    /// The median milliseconds of a forward + backward; `None` when it could not run here.
    pub median_ms: Option<f64>,
    /// Timed passes (fewer than the repeats when it was clearly slower than the best).
    pub samples: usize,
    /// Why it did not run, if it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// The outcome of [`tune`].
#[derive(Clone, Debug, PartialEq)]
pub struct Tuning {
    pub winner: Variant,
    /// Every variant, in the order measured (the default first).
    pub measured: Vec<Measured>,
    /// The time the tuning took on the clock, in seconds.
    pub seconds: f64,
}

impl Tuning {
    /// The median milliseconds of `variant`, if it ran.
    pub fn median_of(&self, variant: &Variant) -> Option<f64> {
        self.measured
            .iter()
            .find(|m| &m.variant == variant)
            .and_then(|m| m.median_ms)
    }
}

/// What the engine held before the tuning, put back after it.
struct Saved {
    grads: Vec<f32>,
    state: Vec<f32>,
    rows: usize,
    variant: Variant,
}

impl Saved {
    fn take(engine: &mut dyn Engine) -> Result<Self> {
        let state = engine.state()?;
        let per_row = engine.config().state_size_per_row().max(1);
        Ok(Saved {
            grads: engine.grads()?,
            rows: state.len() / per_row,
            state,
            variant: engine.variant(),
        })
    }

    fn restore(&self, engine: &mut dyn Engine) -> Result<()> {
        engine.set_grads(&self.grads)?;
        engine.set_state(self.rows, &self.state)
    }
}

/// Measures every variant of `engine` on `batch` (see the module docs) and leaves the engine
/// on the fastest, its parameters, gradients and state as they were. Variants the engine
/// refuses for this batch ([`Error::Config`] or [`Error::Shape`]) are listed as refused;
/// other errors end the tuning (the engine back on its variant).
pub fn tune(
    engine: &mut dyn Engine,
    batch: &Batch,
    clock: &mut dyn Clock,
    opts: &TuneOptions,
) -> Result<Tuning> {
    batch.validate(engine.config())?;
    let saved = Saved::take(engine)?;
    engine.reset_state(batch.rows)?;
    let started = clock.now(&saved.variant);
    let result = measure_all(engine, batch, clock, opts);
    let winner = match &result {
        Ok(measured) => fastest(measured, opts.margin).unwrap_or(saved.variant),
        Err(_) => saved.variant,
    };
    engine.set_variant(&winner)?;
    saved.restore(engine)?;
    let measured = result?;
    let seconds = clock.now(&winner).saturating_sub(started).as_secs_f64();
    Ok(Tuning {
        winner,
        measured,
        seconds,
    })
}

/// The variant of the lowest median (the first of equals), or the first measured (the
/// default) where it is within `margin` of it.
fn fastest(measured: &[Measured], margin: f64) -> Option<Variant> {
    let best = measured
        .iter()
        .filter_map(|m| m.median_ms.map(|t| (t, m.variant)))
        .fold(None, |best: Option<(f64, Variant)>, (t, v)| match best {
            Some((bt, _)) if bt <= t => best,
            _ => Some((t, v)),
        })?;
    match measured
        .first()
        .and_then(|m| m.median_ms.map(|t| (t, m.variant)))
    {
        Some((t, default)) if t <= best.0 * (1.0 + margin) => Some(default),
        _ => Some(best.1),
    }
}

/// Every variant in rounds: in each, every variant still in the race is set, warmed up and
/// timed once, so a drift of the machine's speed (another process, the clock's boost) falls on
/// all of them alike instead of on the ones measured last. A variant the engine refuses is
/// listed as refused; one whose pass takes more than `give_up` times the best median so far
/// leaves the race.
fn measure_all(
    engine: &mut dyn Engine,
    batch: &Batch,
    clock: &mut dyn Clock,
    opts: &TuneOptions,
) -> Result<Vec<Measured>> {
    let variants = engine.variants();
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    let mut refused: Vec<Option<String>> = vec![None; variants.len()];
    let mut racing = vec![true; variants.len()];
    for _ in 0..opts.repeats.max(1) {
        for (i, variant) in variants.iter().enumerate() {
            if !racing[i] {
                continue;
            }
            let best = times
                .iter()
                .filter(|t| !t.is_empty())
                .map(|t| median(&mut t.clone()))
                .reduce(f64::min);
            match time_one(engine, batch, (clock, variant), opts.warmup) {
                Ok(t) => {
                    times[i].push(t);
                    racing[i] = best.is_none_or(|b| t <= opts.give_up * b);
                }
                Err(Error::Config(why) | Error::Shape(why)) => {
                    refused[i] = Some(why);
                    racing[i] = false;
                }
                Err(e) => return Err(e),
            }
        }
    }
    let measured = variants.into_iter().zip(times).zip(refused);
    Ok(measured
        .map(|((variant, mut ms), refused)| Measured {
            variant,
            median_ms: (!ms.is_empty()).then(|| median(&mut ms)),
            samples: ms.len(),
            refused,
        })
        .collect())
}

/// One forward + backward of the uploaded batch, waited for.
fn pass(engine: &mut dyn Engine) -> Result<()> {
    engine.zero_grads()?;
    engine.forward()?;
    engine.backward()?;
    engine.loss().map(|_| ())
}

/// The milliseconds of one pass of `variant` on `batch`, after `warmup` untimed ones (which
/// absorb the switch to the variant: a new shape, buffers and pipelines).
fn time_one(
    engine: &mut dyn Engine,
    batch: &Batch,
    (clock, variant): (&mut dyn Clock, &Variant),
    warmup: usize,
) -> Result<f64> {
    engine.set_variant(variant)?;
    engine.upload_batch(batch)?;
    for _ in 0..warmup {
        pass(engine)?;
    }
    let t0 = clock.now(variant);
    pass(engine)?;
    Ok(clock.now(variant).saturating_sub(t0).as_secs_f64() * 1e3)
}

/// The median of `v` (the mean of the middle two for an even count); `v` is not empty.
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n % 2 {
        1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// A batch of `rows` sequences of `steps` steps for `config`, drawn from `seed`: random tokens
/// or values in [-1, 1], random classes or targets in [0, 1]. What the tuner runs when the
/// caller has no batch of its own at hand.
pub fn probe_batch(config: &ModelConfig, rows: usize, steps: usize, seed: u64) -> Batch {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = rows * steps;
    let inputs = match config.input_kind {
        InputKind::OneHot => Inputs::Tokens(
            (0..n)
                .map(|_| rng.random_range(0..config.input_size as u32))
                .collect(),
        ),
        InputKind::Dense => Inputs::Dense(
            (0..n * config.input_size)
                .map(|_| rng.random_range(-1.0..1.0f32))
                .collect(),
        ),
    };
    let v = config.output_size;
    let targets = match config.output_kind {
        OutputKind::Softmax => {
            Targets::Classes((0..n).map(|_| rng.random_range(0..v as u32)).collect())
        }
        OutputKind::Identity | OutputKind::Sigmoid => {
            Targets::Dense((0..n * v).map(|_| rng.random_range(0.0..1.0f32)).collect())
        }
    };
    Batch {
        steps,
        rows,
        inputs,
        targets,
        mask: None,
    }
}

/// `--tune`: what a run does about its kernel choice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TuneMode {
    /// The engine's defaults; the cache is not read.
    Off,
    /// A cached choice for this device and shape when there is one; nothing is measured.
    #[default]
    Cached,
    /// The cached choice, or a tuning when there is none (then cached).
    On,
    /// Always a tuning, which replaces the cached choice.
    Again,
}

/// Where a run's variant came from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Source {
    /// The engine's defaults (`--tune off`, or nothing cached).
    Default,
    /// The cache.
    Cached,
    /// Measured now, in this many seconds.
    Tuned(f64),
}

/// The variant a run runs, where it came from, and the notes to show (a cache ignored, a cache
/// that could not be written).
#[derive(Clone, Debug)]
pub struct Chosen {
    pub variant: Variant,
    pub source: Source,
    pub notes: Vec<String>,
    /// The measurements, when it was tuned.
    pub tuning: Option<Tuning>,
}

impl Chosen {
    /// "variant default (default)", "variant X (cached)", "variant X (tuned in 2.1 s)".
    pub fn describe(&self) -> String {
        format!("variant {} ({})", self.variant, self.source_text())
    }

    /// "default", "cached" or "tuned in 2.1 s".
    pub fn source_text(&self) -> String {
        match self.source {
            Source::Default => "default".to_string(),
            Source::Cached => "cached".to_string(),
            Source::Tuned(s) => format!("tuned in {s:.1} s"),
        }
    }
}

/// Applies `mode` to `engine` for batches of `batch`'s shape: reads the cache at `path` (when
/// there is one), measures where the mode asks, writes what it measured back. A cache that
/// cannot be read, of another version, or whose choice the engine now refuses is ignored with a
/// note; one that cannot be written is a note too. Only a failure of the engine is an error.
pub fn choose(
    engine: &mut dyn Engine,
    mode: TuneMode,
    batch: &Batch,
    path: Option<&std::path::Path>,
) -> Result<Chosen> {
    let mut chosen = Chosen {
        variant: engine.variant(),
        source: Source::Default,
        notes: Vec::new(),
        tuning: None,
    };
    if mode == TuneMode::Off {
        return Ok(chosen);
    }
    let mut cache = TuneCache::open(path);
    chosen.notes.append(&mut cache.notes);
    let (device, shape) = (engine.device_key(), shape_key(engine.config(), batch));
    if mode != TuneMode::Again && apply_cached(engine, &cache, (&device, &shape), &mut chosen)? {
        return Ok(chosen);
    }
    if mode == TuneMode::Cached {
        return Ok(chosen);
    }
    let tuning = tune(
        engine,
        batch,
        &mut WallClock::default(),
        &TuneOptions::default(),
    )?;
    cache.insert(CacheEntry::new(device, shape, &tuning));
    if let Err(e) = cache.save() {
        chosen
            .notes
            .push(format!("note: the tuning was not cached: {e}"));
    }
    chosen.variant = tuning.winner;
    chosen.source = Source::Tuned(tuning.seconds);
    chosen.tuning = Some(tuning);
    Ok(chosen)
}

/// Sets the cached winner for (device, shape) when there is one the engine runs; a stale one
/// is a note. Whether it was applied.
fn apply_cached(
    engine: &mut dyn Engine,
    cache: &TuneCache,
    (device, shape): (&str, &str),
    chosen: &mut Chosen,
) -> Result<bool> {
    let Some(entry) = cache.lookup(device, shape) else {
        return Ok(false);
    };
    match engine.set_variant(&entry.winner) {
        Ok(()) => {
            chosen.variant = entry.winner;
            chosen.source = Source::Cached;
            Ok(true)
        }
        Err(Error::Config(why)) => {
            chosen.notes.push(format!(
                "note: ignoring the cached kernel choice in {}: {why}",
                cache.path_text()
            ));
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::variant::{CpuVariant, StepProduct};

    fn measured(variant: Variant, ms: Option<f64>) -> Measured {
        Measured {
            variant,
            median_ms: ms,
            samples: 1,
            refused: None,
        }
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&mut [7.0]), 7.0);
    }

    #[test]
    fn the_fastest_skips_refused_variants_and_keeps_a_default_within_the_margin() {
        let gemm = Variant::Cpu(CpuVariant {
            product: StepProduct::Gemm,
            row_parts: None,
        });
        let one = Variant::Cpu(CpuVariant {
            row_parts: Some(1),
            ..CpuVariant::default()
        });
        let all = [
            measured(Variant::CPU, Some(10.0)),
            measured(gemm, None),
            measured(one, Some(9.0)),
        ];
        assert_eq!(fastest(&all, 0.0), Some(one));
        assert_eq!(fastest(&all, 0.2), Some(Variant::CPU));
        assert_eq!(fastest(&all[1..2], 0.0), None);
        let refused_default = [measured(Variant::CPU, None), measured(one, Some(9.0))];
        assert_eq!(fastest(&refused_default, 0.5), Some(one));
    }

    #[test]
    fn probe_batches_fit_their_model() {
        let mut cfg = ModelConfig::language_model(5, 4, 1);
        assert!(probe_batch(&cfg, 3, 2, 1).validate(&cfg).is_ok());
        cfg.input_kind = InputKind::Dense;
        cfg.output_kind = OutputKind::Sigmoid;
        assert!(probe_batch(&cfg, 1, 1, 2).validate(&cfg).is_ok());
    }
}
