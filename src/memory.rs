//! The memory a run needs, estimated from its shapes before anything is allocated, and the
//! guard that refuses a run that would not fit in what the process may use.
//!
//! [`estimate`] counts, in checked 128-bit arithmetic, what the engines and the data layer hold
//! at once: the parameters with their gradients, optimizer moments and checkpoint copies, the
//! activations a training forward keeps for BPTT (and the temporaries of its backward), the
//! output layer's logits (or one chunk of them under the logit budget), the batches, the
//! evaluation batch and whatever a command keeps on top ([`Shape::kept`]). [`check`] compares
//! the total with [`available`]: the smaller of the kernel's `MemAvailable` and what the
//! address-space limit (`ulimit -v`) leaves, and refuses with an [`Error::Memory`] that says
//! how much is needed, how much there is, the largest parts and the option to lower.
//! docs/ARCHITECTURE.md ("Memory") says why the guard works this way.

use crate::engine::{INFERENCE_LOGITS, logit_chunk_rows};
use crate::error::{Error, Result};
use crate::model::{InputKind, ModelConfig, OutputKind};

/// Bytes of one stored value (the engines run in f32).
const VALUE: u128 = 4;

/// The most bytes any run may need when the process's limits cannot be read: more than a
/// 64-bit machine can address (2^48 bytes, 256 TiB).
pub const MAX_BYTES: u128 = 1 << 48;

/// Copies of the flat parameter buffer a training run holds at once: parameters, gradients and
/// two optimizer moments in the engine, the last good training state kept to go back to, and
/// the parameters and moments read back and serialized when the checkpoints are written
/// (measured: a peak of 15 copies for models whose parameters dominate).
const MODEL_COPIES: u128 = 16;

/// Copies of the flat parameter buffer a run without training holds: the engine's four (it
/// keeps gradients and moments beside the parameters) and the checkpoint's.
const INFERENCE_COPIES: u128 = 5;

/// Copies of the flat parameter buffer the engine itself holds: parameters, gradients and two
/// moments. On a GPU with memory of its own they are not in the host's memory.
const ENGINE_COPIES: u128 = 4;

/// A batch of `rows` sequences of `steps` time steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rows {
    pub rows: usize,
    pub steps: usize,
}

/// What a command runs: its training and evaluation batches and what it keeps besides, with the
/// options that size each (named in the refusal).
#[derive(Clone, Debug)]
pub struct Shape {
    /// The training batch (`None`: no training, as in `eval`, `predict` and `sample`).
    pub train: Option<Rows>,
    /// The evaluation (or prediction, or sampling) batch.
    pub eval: Option<Rows>,
    /// The logit budget of the output layer (see [`crate::engine::Engine::set_logit_budget`]).
    pub logit_budget: usize,
    /// Whether evaluation runs forwards without gradients in blocks of at most
    /// [`INFERENCE_LOGITS`] logits (the CPU engine, see
    /// [`crate::engine::Engine::set_grad_enabled`]), holding one block of probabilities and
    /// its copy read back; otherwise it holds the training's three arrays under the budget.
    pub inference_blocks: bool,
    /// Anything else the command keeps, as (what, values).
    pub kept: Vec<(String, u128)>,
    /// The options to lower, per part.
    pub lower: Lower,
    /// Whether the engine's buffers (its copies of the parameters, the activations and the
    /// logits) are in the host's memory: the CPU engine, a software or integrated GPU. On a
    /// discrete GPU they are not, and only what the host holds is counted; the GPU's buffer
    /// limits are checked when the engine lays out a batch shape.
    pub engine_on_host: bool,
}

/// The options that shrink each part of an estimate, as the refusal names them.
#[derive(Clone, Debug)]
pub struct Lower {
    /// The model: parameters and their copies.
    pub model: String,
    /// The training batch and its activations.
    pub train: String,
    /// The evaluation batch and its activations.
    pub eval: String,
    /// What [`Shape::kept`] counts.
    pub kept: String,
}

/// One part of an estimate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// What it holds, e.g. "activations kept for BPTT (B=32, T=64)".
    pub what: String,
    pub bytes: u128,
    /// The options that shrink it.
    pub lower: String,
}

/// The memory a run needs, part by part.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Estimate {
    pub items: Vec<Item>,
}

impl Estimate {
    /// The sum of the parts (saturating: a sum past `u128` reads as `u128::MAX`).
    pub fn total(&self) -> u128 {
        self.items
            .iter()
            .fold(0u128, |sum, item| sum.saturating_add(item.bytes))
    }

    /// Adds a part of `values` f32 values (or as many 4-byte units), shrunk by `lower`.
    pub fn push(&mut self, what: String, values: u128, lower: &str) {
        self.items.push(Item {
            what,
            bytes: values.saturating_mul(VALUE),
            lower: lower.to_string(),
        });
    }

    /// The parts from the largest down.
    pub fn largest(&self) -> Vec<&Item> {
        let mut items: Vec<&Item> = self.items.iter().filter(|i| i.bytes > 0).collect();
        items.sort_by_key(|i| std::cmp::Reverse(i.bytes));
        items
    }
}

/// The product of `factors` in 128 bits, saturating.
fn product(factors: &[usize]) -> u128 {
    factors
        .iter()
        .fold(1u128, |p, &f| p.saturating_mul(f as u128))
}

/// The number of parameters of `config`, in the order of [`crate::model::ParamLayout`], without
/// building the layout (whose `usize` sums a hostile size could overflow).
pub fn param_count(config: &ModelConfig) -> u128 {
    let (h, g, w) = (
        config.hidden_size,
        config.cell.gates(),
        config.state_width(),
    );
    let mut total = match config.embed {
        Some(e) => product(&[config.input_size, e]),
        None => 0,
    };
    let biases = if config.bias { 2 } else { 0 };
    let projection = config.proj_size.unwrap_or(0);
    for k in 0..config.layers {
        let input = config.layer_input_size(k);
        let direction = product(&[g, h, input])
            .saturating_add(product(&[g, h, w]))
            .saturating_add(product(&[biases, g, h]))
            .saturating_add(product(&[projection, h]));
        total = total.saturating_add(direction.saturating_mul(config.directions() as u128));
    }
    if !config.tie_weights {
        total = total.saturating_add(product(&[config.output_size, config.output_width()]));
    }
    total.saturating_add(config.output_size as u128)
}

/// Values a forward over `rows` keeps, summed over the layers: the states (and LSTM cells) of
/// all T + 1 steps, the gates and recurrent pre-activations of a gated cell, the input of the
/// layers above the first (after dropout), the embedded tokens, and the input projection of
/// the layer being run. With `backward`, the temporaries of BPTT on top: the pre-activation
/// gradients of a layer and the gradient passed down.
fn activations(config: &ModelConfig, r: Rows, backward: bool) -> u128 {
    let (h, g, w) = (
        config.hidden_size,
        config.cell.gates(),
        config.state_width(),
    );
    let (d, width) = (config.directions(), config.output_width());
    let n = product(&[r.rows, r.steps]);
    let steps = r.steps.saturating_add(1);
    // Per direction: h (W wide), an LSTM's c (H wide) and, with a projection, m = o * tanh(c)
    // and its gradient (H wide each); the gates and recurrent pre-activations of a gated cell.
    let memory = if config.cell.has_memory() { h } else { 0 };
    let projected = if config.proj_size.is_some() { 2 * h } else { 0 };
    let gated = if g > 1 { 2 } else { 0 };
    let per_direction = product(&[r.rows, steps, w])
        .saturating_add(product(&[r.rows, steps, memory]))
        .saturating_add(
            n.saturating_mul(product(&[gated, g, h]).saturating_add(projected as u128)),
        );
    // A bidirectional layer also keeps its output [N, 2W] in time order, and its backward the
    // gradient of each direction's states and a work array of the pre-activations.
    let joined = if d > 1 {
        n.saturating_mul(width as u128)
            .saturating_add(product(&[2, r.rows, steps, w]))
            .saturating_add(n.saturating_mul(product(&[g, h])))
    } else {
        0
    };
    let per_layer = per_direction
        .saturating_mul(d as u128)
        .saturating_add(joined);
    let inputs = n.saturating_mul(product(&[config.layers.saturating_sub(1), width]));
    let embedded = n.saturating_mul(config.embed.unwrap_or(0) as u128);
    let projection = n.saturating_mul(product(&[g, h]));
    let gradients = match backward {
        true => n.saturating_mul(product(&[2, g, h]).saturating_add(width as u128)),
        false => 0,
    };
    per_layer
        .saturating_mul(config.layers as u128)
        .saturating_add(inputs)
        .saturating_add(embedded)
        .saturating_add(projection)
        .saturating_add(gradients)
}

/// Values of the output layer over `rows`: `arrays` arrays of logits (or of one chunk of them
/// under `budget`): in training the logits, their probabilities kept after the forward and
/// their gradient.
fn logits(config: &ModelConfig, r: Rows, (budget, arrays): (usize, usize)) -> u128 {
    let n = r.rows.saturating_mul(r.steps);
    let chunk = logit_chunk_rows(n, config.output_size, budget);
    product(&[arrays, chunk, config.output_size])
}

/// Values of one batch over `rows`, held by the data layer and again by the engine: inputs
/// (a token or a vector per step), targets (a class or a vector per step) and the mask, and the
/// per-row bookkeeping of the batch sources.
fn batch(config: &ModelConfig, r: Rows) -> u128 {
    let input = match config.input_kind {
        InputKind::OneHot => 1,
        InputKind::Dense => config.input_size,
    };
    let target = match config.output_kind {
        OutputKind::Softmax => 1,
        OutputKind::Identity | OutputKind::Sigmoid => config.output_size,
    };
    let per_step = (input as u128)
        .saturating_add(target as u128)
        .saturating_add(1);
    product(&[2, r.rows, r.steps])
        .saturating_mul(per_step)
        .saturating_add(product(&[4, r.rows]))
}

/// The budget and the arrays of logits of the training (`training`) or of the evaluation of
/// `shape`.
fn output_arrays(shape: &Shape, training: bool) -> (usize, usize) {
    match training || !shape.inference_blocks {
        true => (shape.logit_budget, 3),
        false => (shape.logit_budget.min(INFERENCE_LOGITS), 2),
    }
}

/// The memory `config` needs to run `shape`, part by part.
pub fn estimate(config: &ModelConfig, shape: &Shape) -> Estimate {
    let mut e = Estimate::default();
    let copies = if shape.train.is_some() {
        MODEL_COPIES
    } else {
        INFERENCE_COPIES
    } - if shape.engine_on_host {
        0
    } else {
        ENGINE_COPIES
    };
    e.push(
        format!(
            "the model ({} parameters, H={}, layers={}, V={}{})",
            param_count(config),
            config.hidden_size,
            config.layers,
            config.output_size,
            if shape.train.is_some() {
                ", with gradients, optimizer moments and checkpoint copies"
            } else {
                ", with the engine's copies"
            }
        ),
        param_count(config).saturating_mul(copies),
        &shape.lower.model,
    );
    let parts = [
        (shape.train, "training", &shape.lower.train),
        (shape.eval, "evaluation", &shape.lower.eval),
    ];
    for (rows, name, lower) in parts {
        let Some(r) = rows else { continue };
        let (b, t) = (r.rows, r.steps);
        let kept = if name == "training" {
            "kept for BPTT"
        } else {
            "of the forward"
        };
        if shape.engine_on_host {
            e.push(
                format!("the {name} activations {kept} (B={b} x T={t} x H per layer)"),
                activations(config, r, name == "training"),
                lower,
            );
            e.push(
                format!(
                    "the {name} logits (B={b} x T={t} x V={})",
                    config.output_size
                ),
                logits(config, r, output_arrays(shape, name == "training")),
                lower,
            );
        }
        e.push(
            format!("the {name} batch (B={b} x T={t})"),
            batch(config, r),
            lower,
        );
    }
    for (what, values) in &shape.kept {
        e.push(what.clone(), *values, &shape.lower.kept);
    }
    e
}

/// How much memory the process may still use, and where the number comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Available {
    pub bytes: u64,
    /// E.g. "MemAvailable of /proc/meminfo".
    pub source: String,
}

/// The smaller of the kernel's `MemAvailable` and what the address-space limit (`ulimit -v`,
/// `RLIMIT_AS`) leaves beside the process's current size; `None` where neither can be read.
pub fn available() -> Option<Available> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let meminfo = read("/proc/meminfo").and_then(|t| kib_field(&t, "MemAvailable:"));
    let limit = read("/proc/self/limits").and_then(|t| address_limit(&t));
    let size = read("/proc/self/status").and_then(|t| kib_field(&t, "VmSize:"));
    let from_limit = limit.map(|l| Available {
        bytes: l.saturating_sub(size.unwrap_or(0)),
        source: format!(
            "left by the address-space limit (ulimit -v) of {}",
            bytes_text(l as u128)
        ),
    });
    let from_meminfo = meminfo.map(|m| Available {
        bytes: m,
        source: "available (MemAvailable in /proc/meminfo)".to_string(),
    });
    match (from_limit, from_meminfo) {
        (Some(a), Some(b)) => Some(if a.bytes <= b.bytes { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// A `Name:   N kB` field of /proc/meminfo or /proc/self/status, in bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line[name.len()..].split_whitespace().next()?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The soft limit of `Max address space` in /proc/self/limits, in bytes (`None`: unlimited).
fn address_limit(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max address space"))?;
    line["Max address space".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `bytes` for people: KiB, MiB, GiB, TiB; beyond what 64 bits count, said so.
pub fn bytes_text(bytes: u128) -> String {
    if bytes > u64::MAX as u128 {
        return "more than 16 EiB".to_string();
    }
    let units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

/// Refuses `estimate` for `command` when it needs more than the process may use (see
/// [`available`]), or more than [`MAX_BYTES`] when that cannot be read.
pub fn check(command: &str, estimate: &Estimate) -> Result<()> {
    check_within(command, estimate, available())
}

/// [`check`] against a given amount of available memory.
pub fn check_within(
    command: &str,
    estimate: &Estimate,
    available: Option<Available>,
) -> Result<()> {
    let total = estimate.total();
    let (room, source) = match available {
        Some(a) if (a.bytes as u128) < MAX_BYTES => (a.bytes as u128, a.source),
        _ => (
            MAX_BYTES,
            "the most any run may use (2^48 bytes)".to_string(),
        ),
    };
    if total <= room {
        return Ok(());
    }
    let largest = estimate.largest();
    let parts: Vec<String> = largest
        .iter()
        .take(3)
        .map(|i| format!("{} {}", i.what, bytes_text(i.bytes)))
        .collect();
    let lower = largest
        .first()
        .map_or_else(String::new, |i| i.lower.clone());
    let needs = if total > u64::MAX as u128 {
        "more than 16 EiB of memory (its sizes overflow 64-bit arithmetic)".to_string()
    } else {
        format!("about {} of memory", bytes_text(total))
    };
    Err(Error::Memory {
        needed: total,
        available: room,
        message: format!(
            "{command} needs {needs}, more than the {} {source}; the largest parts: {}; lower \
             {lower}",
            bytes_text(room),
            parts.join(", ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Cell, ParamLayout};

    fn lower() -> Lower {
        Lower {
            model: "--hidden".into(),
            train: "--batch or --seq-len".into(),
            eval: "--batch".into(),
            kept: "--count".into(),
        }
    }

    fn shape(b: usize, t: usize) -> Shape {
        Shape {
            train: Some(Rows { rows: b, steps: t }),
            eval: Some(Rows { rows: b, steps: t }),
            logit_budget: crate::engine::DEFAULT_LOGIT_BUDGET,
            inference_blocks: true,
            kept: Vec::new(),
            lower: lower(),
            engine_on_host: true,
        }
    }

    fn total(config: &ModelConfig, b: usize, t: usize) -> u128 {
        estimate(config, &shape(b, t)).total()
    }

    #[test]
    fn a_gpu_with_memory_of_its_own_leaves_only_the_host_parts_counted() {
        let config = ModelConfig::language_model(100, 256, 2);
        let host = estimate(&config, &shape(64, 128));
        let device = estimate(
            &config,
            &Shape {
                engine_on_host: false,
                ..shape(64, 128)
            },
        );
        let params = param_count(&config) * VALUE;
        assert_eq!(
            host.total() - device.total(),
            ENGINE_COPIES * params
                + host
                    .items
                    .iter()
                    .filter(|i| i.what.contains("activations") || i.what.contains("logits"))
                    .map(|i| i.bytes)
                    .sum::<u128>(),
            "the engine's copies, activations and logits are the difference"
        );
        assert!(device.items.iter().all(|i| !i.what.contains("activations")));
        assert!(device.items.iter().any(|i| i.what.contains("batch")));
        assert!(
            device.total() < host.total() / 2,
            "activations dominate this shape"
        );
    }

    #[test]
    fn the_parameters_are_counted_as_the_layout_lays_them_out() {
        let variants = [
            (false, None, true),
            (true, None, false),
            (true, Some(5), true),
        ];
        for cell in [Cell::Rnn, Cell::Gru, Cell::Lstm] {
            for (embed, tie, layers) in [(None, false, 1), (Some(7), false, 3), (Some(9), true, 2)]
            {
                for (bidirectional, proj, bias) in variants {
                    let proj_size = proj.filter(|_| cell == Cell::Lstm);
                    let plain = !bidirectional && proj_size.is_none();
                    let config = ModelConfig {
                        cell,
                        embed,
                        tie_weights: tie && plain,
                        bidirectional,
                        proj_size,
                        bias,
                        ..ModelConfig::language_model(11, 9, layers)
                    };
                    let layout = ParamLayout::new(&config).unwrap();
                    assert_eq!(param_count(&config), layout.len() as u128, "{config:?}");
                }
            }
        }
    }

    #[test]
    fn the_estimate_grows_with_every_size_as_the_buffers_do() {
        for cell in [Cell::Rnn, Cell::Gru, Cell::Lstm] {
            let config = |h, v| ModelConfig {
                cell,
                ..ModelConfig::language_model(v, h, 2)
            };
            let base = total(&config(32, 50), 8, 16);
            // Doubling B or T doubles the activations, the logits and the batch.
            for grown in [
                total(&config(32, 50), 16, 16),
                total(&config(32, 50), 8, 32),
                total(&config(64, 50), 8, 16),
                total(&config(32, 100), 8, 16),
            ] {
                assert!(grown > base, "{cell:?}: {grown} <= {base}");
            }
            let b = total(&config(32, 50), 1 << 20, 16);
            let bb = total(&config(32, 50), 1 << 21, 16);
            assert!(bb > b * 19 / 10 && bb <= b * 2, "linear in B: {b} -> {bb}");
        }
        // Gated cells keep more per step than the plain one, the LSTM most.
        let of = |cell| {
            let config = ModelConfig {
                cell,
                ..ModelConfig::language_model(50, 64, 1)
            };
            total(&config, 32, 64)
        };
        assert!(of(Cell::Rnn) < of(Cell::Gru) && of(Cell::Gru) < of(Cell::Lstm));
    }

    #[test]
    fn chunked_logits_are_counted_by_the_budget() {
        let config = ModelConfig::language_model(1 << 16, 8, 1);
        let mut s = shape(32, 32);
        s.inference_blocks = false;
        let whole = estimate(&config, &s).total();
        s.logit_budget = 1 << 16;
        let chunked = estimate(&config, &s).total();
        // 1024 rows of 2^16 logits in one chunk (2^26, the default budget), against one row at
        // a time, for training and evaluation.
        assert_eq!(whole - chunked, 2 * 3 * 1023 * (1 << 16) * 4);
        // An evaluation in blocks of 2^22 logits holds 64 rows of two arrays, not 1024 of three.
        s.inference_blocks = true;
        s.logit_budget = crate::engine::DEFAULT_LOGIT_BUDGET;
        let blocks = estimate(&config, &s).total();
        assert_eq!(whole - blocks, (3 * 1024 - 2 * 64) * (1 << 16) * 4);
    }

    #[test]
    fn sizes_past_the_arithmetic_saturate_instead_of_wrapping() {
        let config = ModelConfig::language_model(1 << 24, 1 << 24, 64);
        let huge = total(&config, usize::MAX, usize::MAX);
        assert_eq!(huge, u128::MAX);
        let e = check_within("train", &estimate(&config, &shape(usize::MAX, 2)), None);
        let message = e.unwrap_err().to_string();
        assert!(message.contains("overflow 64-bit arithmetic"), "{message}");
    }

    #[test]
    fn the_guard_refuses_what_does_not_fit_naming_the_largest_part_and_its_option() {
        let config = ModelConfig::language_model(65, 128, 1);
        let e = estimate(&config, &shape(32, 64));
        let needed = e.total();
        let room = |bytes: u128| {
            Some(Available {
                bytes: bytes as u64,
                source: "available (test)".into(),
            })
        };
        assert!(check_within("train", &e, room(needed)).is_ok());
        assert!(check_within("train", &e, None).is_ok(), "unknown limits");
        let Err(Error::Memory {
            needed: n,
            available,
            message,
        }) = check_within("train", &e, room(needed - 1))
        else {
            panic!("refused")
        };
        assert_eq!((n, available), (needed, needed - 1));
        assert!(message.starts_with("train needs about "), "{message}");
        assert!(message.contains("available (test)"), "{message}");
        assert!(message.contains("lower --batch or --seq-len"), "{message}");
        // Without readable limits, only what no machine has is refused.
        let absurd = estimate(&config, &shape(1 << 40, 64));
        let message = check_within("train", &absurd, None)
            .unwrap_err()
            .to_string();
        assert!(message.contains("2^48"), "{message}");
    }

    #[test]
    fn the_limits_are_read_from_proc() {
        let meminfo = "MemTotal:       16000000 kB\nMemAvailable:    8000000 kB\n";
        assert_eq!(kib_field(meminfo, "MemAvailable:"), Some(8_192_000_000));
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max address space         4294967296           unlimited            bytes\n";
        assert_eq!(address_limit(limits), Some(1 << 32));
        let unlimited =
            "Max address space         unlimited            unlimited            bytes\n";
        assert_eq!(address_limit(unlimited), None);
        assert!(available().is_some(), "Linux has /proc/meminfo");
        assert_eq!(bytes_text(3 << 30), "3.0 GiB");
        assert_eq!(bytes_text(512), "512 bytes");
    }
}
