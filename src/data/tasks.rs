//! Built-in example tasks for transduction: small seeded generators of pairs files that need a
//! memory to solve, written in the JSON Lines format of [`crate::data::pairs`].
//!
//! - `echo`: class ids `1..=S` in, the id seen `k` steps before out (`y_t = x_{t-k}`, 0 while
//!   `t < k`): the model must hold the last k inputs.
//! - `sum`: reals in [-1, 1] in, their running sum out (`y_t = x_0 + ... + x_t`): an integrator.
//! - `parity`: bits in (as reals), the parity of the bits so far out (binary): a flip-flop.
//! - `count`: class ids `0..S` in, how many of them were 0 so far out (class): a counter.
//!
//! The same options and seed give the same file on every machine (ChaCha8).

use std::fmt::Write as _;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::pairs::StepKind;
use crate::error::{Error, Result};

/// An example task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Echo,
    Sum,
    Parity,
    Count,
}

impl Task {
    /// The `--input` and `--output` kinds that train on the task.
    pub fn kinds(self) -> (StepKind, StepKind) {
        match self {
            Task::Echo | Task::Count => (StepKind::Class, StepKind::Class),
            Task::Sum => (StepKind::Real, StepKind::Real),
            Task::Parity => (StepKind::Real, StepKind::Binary),
        }
    }
}

/// How many pairs, how long, and the task's own settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskOptions {
    /// Number of pairs.
    pub count: usize,
    /// Lengths are drawn uniformly from `min_len..=max_len`.
    pub min_len: usize,
    pub max_len: usize,
    /// The delay k of `echo`.
    pub delay: usize,
    /// The number of distinct input symbols S of `echo` and `count`.
    pub symbols: usize,
    pub seed: u64,
}

impl Default for TaskOptions {
    fn default() -> Self {
        TaskOptions {
            count: 1000,
            min_len: 5,
            max_len: 20,
            delay: 3,
            symbols: 4,
            seed: 1,
        }
    }
}

/// A real number written with at most 4 decimals.
fn real(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.into() }
}

/// The pairs of `task` as JSON Lines text, one pair per line.
pub fn generate(task: Task, opts: &TaskOptions) -> Result<String> {
    if opts.min_len == 0 || opts.min_len > opts.max_len {
        return Err(Error::Config(format!(
            "lengths {}..{} must satisfy 1 <= min <= max",
            opts.min_len, opts.max_len
        )));
    }
    if opts.symbols == 0 || opts.symbols > 1 << 20 {
        return Err(Error::Config(format!(
            "{} symbols must be between 1 and 2^20",
            opts.symbols
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut out = String::new();
    let s = opts.symbols as u32;
    for _ in 0..opts.count {
        let n = rng.random_range(opts.min_len..=opts.max_len);
        let (x, y): (Vec<String>, Vec<String>) = match task {
            Task::Echo => {
                let x: Vec<u32> = (0..n).map(|_| rng.random_range(1..=s)).collect();
                let y = (0..n).map(|t| if t < opts.delay { 0 } else { x[t - opts.delay] });
                (
                    x.iter().map(u32::to_string).collect(),
                    y.map(|v| v.to_string()).collect(),
                )
            }
            Task::Sum => {
                let x: Vec<f64> = (0..n)
                    .map(|_| (rng.random_range(-1.0..1.0f64) * 1e4).round() / 1e4)
                    .collect();
                let mut acc = 0.0;
                let y = x.iter().map(|v| {
                    acc += v;
                    real(acc)
                });
                (x.iter().map(|&v| real(v)).collect(), y.collect())
            }
            Task::Parity => {
                let x: Vec<u32> = (0..n).map(|_| rng.random_range(0..2)).collect();
                let mut acc = 0;
                let y = x.iter().map(|v| {
                    acc ^= v;
                    acc.to_string()
                });
                (x.iter().map(u32::to_string).collect(), y.collect())
            }
            Task::Count => {
                let x: Vec<u32> = (0..n).map(|_| rng.random_range(0..s)).collect();
                let mut acc = 0;
                let y = x.iter().map(|&v| {
                    acc += u32::from(v == 0);
                    acc.to_string()
                });
                (x.iter().map(u32::to_string).collect(), y.collect())
            }
        };
        let _ = writeln!(out, "{{\"x\":[{}],\"y\":[{}]}}", x.join(","), y.join(","));
    }
    Ok(out)
}
