//! Transduction pairs: sequences x and y of equal length, read from JSON Lines, and the padded,
//! masked batches cut from them.
//!
//! Format: one pair per line, `{"x": [...], "y": [...]}`, each an array of n >= 1 time steps. A
//! step is a number (a vector of size 1) or an array of numbers; every step of a field has the
//! same size across the file. Class steps are integer ids `0..C`. Other keys of a line are
//! ignored, and so are blank lines (line numbers in errors count every line of the file), and a
//! UTF-8 byte order mark at the start of the file. The whole file is read and checked before
//! anything uses it, a line at a time with a bound on each (`data::jsonl`), and an error names
//! the line and the field.
//!
//! Batches: the pairs of a batch are padded to the longest and the padding masked out; every
//! batch has B rows (a short last batch gets empty rows, all masked) and starts from a zero state.
//! Training batches are drawn per epoch from a seeded shuffle: the shuffled pairs are cut into
//! pools of `POOL * B`, each pool sorted by length and cut into batches (so a batch holds pairs
//! of similar length), and the batches are shuffled. The order depends only on the seed and the
//! epoch, so a position is (epoch, batch). The validation split is a seeded random subset.

use std::path::Path;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::data::jsonl::JsonLines;
use crate::data::{EvalSet, TrainBatches};
use crate::engine::{Batch, Inputs, Targets};
use crate::error::{Error, Result};
use crate::model::{Activation, Cell, InputKind, ModelConfig, OutputKind};

/// Batches sorted together by length in a pool of this many batches.
const POOL: usize = 16;
/// The largest class id (so that ids stay exact in f32 and fit a model).
const MAX_CLASSES: usize = 1 << 24;

/// What the time steps of one side (x or y) hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepKind {
    /// Real vectors: dense input, or identity output with squared error.
    Real,
    /// Class ids: one-hot input, or softmax output with cross-entropy.
    Class,
    /// Vectors of 0/1 (or soft targets in [0, 1]): sigmoid output with binary cross-entropy.
    Binary,
}

/// The kind and size of one side: the vector size, or the number of classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SideFormat {
    pub kind: StepKind,
    pub size: usize,
}

/// The input and output format of a transduction model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairsFormat {
    pub input: SideFormat,
    pub output: SideFormat,
}

impl PairsFormat {
    /// The model that reads this input and writes this output.
    pub fn model_config(
        &self,
        hidden: usize,
        layers: usize,
        activation: Activation,
    ) -> Result<ModelConfig> {
        let input_kind = match self.input.kind {
            StepKind::Class => InputKind::OneHot,
            StepKind::Real | StepKind::Binary => InputKind::Dense,
        };
        let output_kind = match self.output.kind {
            StepKind::Class => OutputKind::Softmax,
            StepKind::Real => OutputKind::Identity,
            StepKind::Binary => OutputKind::Sigmoid,
        };
        let config = ModelConfig {
            cell: Cell::Rnn,
            activation,
            input_kind,
            input_size: self.input.size,
            hidden_size: hidden,
            layers,
            output_kind,
            output_size: self.output.size,
            embed: None,
            tie_weights: false,
            bidirectional: false,
            proj_size: None,
            bias: true,
        };
        config.validate()?;
        Ok(config)
    }

    /// The format a model reads and writes (dense inputs read as real vectors).
    pub fn of_config(config: &ModelConfig) -> Self {
        let input = match config.input_kind {
            InputKind::OneHot => StepKind::Class,
            InputKind::Dense => StepKind::Real,
        };
        let output = match config.output_kind {
            OutputKind::Softmax => StepKind::Class,
            OutputKind::Identity => StepKind::Real,
            OutputKind::Sigmoid => StepKind::Binary,
        };
        PairsFormat {
            input: SideFormat {
                kind: input,
                size: config.input_size,
            },
            output: SideFormat {
                kind: output,
                size: config.output_size,
            },
        }
    }
}

/// What the reader expects of one side: its kind, and its size when it is already known (a
/// model's, or a number of classes given by an option); `None` infers it from the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expect {
    pub kind: StepKind,
    pub size: Option<usize>,
}

/// One pair: `len` time steps of x and of y, flat (class ids as exact f32 values).
#[derive(Clone, Debug, PartialEq)]
pub struct Pair {
    /// The 1-based line of the file it came from.
    pub line: usize,
    pub len: usize,
    /// `len * input size` values (`len` ids for class inputs).
    pub x: Vec<f32>,
    /// `len * output size` values (`len` ids for class outputs); empty when y was not read.
    pub y: Vec<f32>,
}

/// A checked pairs file.
#[derive(Clone, Debug, PartialEq)]
pub struct Pairs {
    pub input: SideFormat,
    /// `None` when only x was read.
    pub output: Option<SideFormat>,
    pub pairs: Vec<Pair>,
}

impl Pairs {
    /// Reads and checks a whole JSON Lines file; `output: None` reads only x (any y is ignored).
    /// The file is read a line at a time, each line at most [`crate::data::jsonl::MAX_LINE`] bytes, so a
    /// file that is not JSON Lines is refused after a bounded read.
    pub fn read(path: &Path, input: Expect, output: Option<Expect>) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io("read pairs file", path, e))?;
        let lines = JsonLines::new(std::io::BufReader::new(file));
        Self::parse_lines(lines, input, output)
            .map_err(|m| Error::Data(format!("{}: {m}", path.display())))
    }

    /// Parses and checks JSON Lines text; the error names the line and the field.
    pub fn parse(bytes: &[u8], input: Expect, output: Option<Expect>) -> Result<Self> {
        Self::parse_lines(JsonLines::new(bytes), input, output).map_err(Error::Data)
    }

    fn parse_lines<R: std::io::BufRead>(
        mut lines: JsonLines<R>,
        input: Expect,
        output: Option<Expect>,
    ) -> std::result::Result<Self, String> {
        if input.kind == StepKind::Binary {
            return Err("inputs are real vectors or class ids, not binary".into());
        }
        let mut xs = Side::new("x", input);
        let mut ys = output.map(|o| Side::new("y", o));
        let mut pairs = Vec::new();
        for (i, raw) in lines.by_ref().enumerate() {
            let raw = raw?;
            let line = i + 1;
            let at = |m: String| format!("line {line}: {m}");
            let text = std::str::from_utf8(&raw).map_err(|_| at("is not UTF-8 text".into()))?;
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            let value: Value = serde_json::from_str(text).map_err(|e| {
                let msg = e.to_string();
                let msg = msg.split(" at line ").next().unwrap_or_default();
                at(format!("invalid JSON at column {}: {msg}", e.column()))
            })?;
            let Value::Object(obj) = value else {
                return Err(at(format!(
                    "expected an object {{\"x\": [...], \"y\": [...]}}, found {}",
                    type_name(&value)
                )));
            };
            let field = |name: &str| {
                obj.get(name)
                    .ok_or_else(|| at(format!("the \"{name}\" field is missing")))
            };
            let mut x = Vec::new();
            let len = xs.parse(field("x")?, line, &mut x).map_err(at)?;
            let mut y = Vec::new();
            if let Some(ys) = &mut ys {
                let y_len = ys.parse(field("y")?, line, &mut y).map_err(at)?;
                if y_len != len {
                    return Err(at(format!(
                        "x has {len} time steps but y has {y_len}: the sequences of a pair \
                         must be of equal length"
                    )));
                }
            }
            pairs.push(Pair { line, len, x, y });
        }
        if pairs.is_empty() {
            return Err(if lines.was_empty() {
                "the file is empty: it holds no pairs".into()
            } else {
                "the file holds no pairs, only blank lines".into()
            });
        }
        Ok(Pairs {
            input: xs.format(),
            output: ys.map(|s| s.format()),
            pairs,
        })
    }

    /// The input and output format, when y was read.
    pub fn format(&self) -> Result<PairsFormat> {
        let output = self
            .output
            .ok_or_else(|| Error::Data("the pairs were read without their y".into()))?;
        Ok(PairsFormat {
            input: self.input,
            output,
        })
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether there are none (never, for a file that was read).
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Sum of the lengths of all pairs.
    pub fn steps(&self) -> usize {
        self.pairs.iter().map(|p| p.len).sum()
    }

    /// A digest of every pair's lengths and values, to tell on resume whether the data changed.
    pub fn digest(&self, indices: &[usize]) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |v: u64| {
            for b in v.to_le_bytes() {
                h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
            }
        };
        for &i in indices {
            let p = &self.pairs[i];
            eat(p.len as u64);
            for v in p.x.iter().chain(&p.y) {
                eat(v.to_bits() as u64);
            }
        }
        h
    }

    /// One batch of the pairs `indices` in `rows` rows (at least one per pair), padded to the
    /// longest and masked. Pairs read without y get zero targets of `output` (set it to the
    /// model's output format; for prediction only).
    pub fn batch(&self, indices: &[usize], rows: usize) -> Batch {
        let rows = rows.max(indices.len());
        let steps = indices
            .iter()
            .map(|&i| self.pairs[i].len)
            .max()
            .unwrap_or(1);
        let (dx, n) = (self.input.size, steps * rows);
        let (out_kind, dy) = match self.output {
            Some(o) => (o.kind, o.size),
            None => (StepKind::Real, 0),
        };
        let x_width = if self.input.kind == StepKind::Class {
            1
        } else {
            dx
        };
        let y_width = if out_kind == StepKind::Class { 1 } else { dy };
        let mut x = vec![0.0f32; n * x_width];
        let mut y = vec![0.0f32; n * y_width];
        let mut mask = vec![0.0f32; n];
        for (b, &i) in indices.iter().enumerate() {
            let p = &self.pairs[i];
            for t in 0..p.len {
                let r = t * rows + b;
                mask[r] = 1.0;
                x[r * x_width..(r + 1) * x_width]
                    .copy_from_slice(&p.x[t * x_width..(t + 1) * x_width]);
                if !p.y.is_empty() {
                    y[r * y_width..(r + 1) * y_width]
                        .copy_from_slice(&p.y[t * y_width..(t + 1) * y_width]);
                }
            }
        }
        let inputs = match self.input.kind {
            StepKind::Class => Inputs::Tokens(x.iter().map(|&v| v as u32).collect()),
            _ => Inputs::Dense(x),
        };
        let targets = match out_kind {
            StepKind::Class => Targets::Classes(y.iter().map(|&v| v as u32).collect()),
            _ => Targets::Dense(y),
        };
        Batch {
            steps,
            rows,
            inputs,
            targets,
            mask: Some(mask),
        }
    }

    /// Splits the pairs into training and validation indices: `floor(n * val_frac)` pairs drawn
    /// by a shuffle seeded with `seed` are held out; both lists keep file order.
    pub fn split(&self, val_frac: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
        let n = self.len();
        let n_val = ((n as f64 * val_frac) as usize).min(n.saturating_sub(1));
        let mut perm: Vec<usize> = (0..n).collect();
        perm.shuffle(&mut rng(seed, 0));
        let mut val = perm[..n_val].to_vec();
        let mut train = perm[n_val..].to_vec();
        val.sort_unstable();
        train.sort_unstable();
        (train, val)
    }
}

/// The ChaCha8 stream `stream` of `seed`: 0 draws the validation split, `e + 1` epoch e.
fn rng(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The reader's view of one side across the file: its kind, the size it must have (given or
/// set by the first step read) and the largest class id seen.
struct Side {
    name: &'static str,
    kind: StepKind,
    given: Option<usize>,
    /// Vector size of the steps so far and the line that set it.
    seen: Option<(usize, usize)>,
    max_class: Option<u32>,
}

impl Side {
    fn new(name: &'static str, expect: Expect) -> Self {
        Side {
            name,
            kind: expect.kind,
            given: expect.size,
            seen: None,
            max_class: None,
        }
    }

    /// Appends the steps of `value` to `out`; returns their number.
    fn parse(&mut self, value: &Value, line: usize, out: &mut Vec<f32>) -> Result<usize, String> {
        let name = self.name;
        let Value::Array(steps) = value else {
            return Err(format!(
                "\"{name}\" must be an array of time steps, found {}",
                type_name(value)
            ));
        };
        if steps.is_empty() {
            return Err(format!(
                "\"{name}\" is empty: a sequence needs at least one time step"
            ));
        }
        for (t, step) in steps.iter().enumerate() {
            if self.kind == StepKind::Class {
                out.push(self.class_id(step, t)? as f32);
                continue;
            }
            let start = out.len();
            match step {
                Value::Array(items) => {
                    if items.is_empty() {
                        return Err(format!("{name}[{t}] is an empty vector"));
                    }
                    for (k, item) in items.iter().enumerate() {
                        out.push(self.real(item, &format!("{name}[{t}][{k}]"))?);
                    }
                }
                _ => out.push(self.real(step, &format!("{name}[{t}]"))?),
            }
            self.check_size(out.len() - start, t, line)?;
        }
        Ok(steps.len())
    }

    fn class_id(&mut self, step: &Value, t: usize) -> Result<u32, String> {
        let name = self.name;
        let id = match step {
            Value::Number(n) => n.as_u64().or_else(|| {
                n.as_f64()
                    .filter(|v| v.fract() == 0.0 && *v >= 0.0)
                    .map(|v| v as u64)
            }),
            _ => {
                return Err(format!(
                    "{name}[{t}] is {}, but class ids are single integers",
                    type_name(step)
                ));
            }
        };
        let Some(id) = id else {
            return Err(format!(
                "{name}[{t}] = {step} is not a class id (an integer >= 0)"
            ));
        };
        let limit = self.given.unwrap_or(MAX_CLASSES);
        if id >= limit as u64 {
            return Err(match self.given {
                Some(c) => format!(
                    "{name}[{t}] = {id} is outside the {c} classes (ids 0 to {})",
                    c - 1
                ),
                None => format!(
                    "{name}[{t}] = {id} is larger than {}, the largest class id supported",
                    MAX_CLASSES - 1
                ),
            });
        }
        let id = id as u32;
        self.max_class = Some(self.max_class.map_or(id, |m| m.max(id)));
        Ok(id)
    }

    fn real(&self, item: &Value, at: &str) -> Result<f32, String> {
        let v = match item {
            Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
            _ => return Err(format!("{at} is {}, not a number", type_name(item))),
        };
        let f = v as f32;
        if !f.is_finite() {
            return Err(format!("{at} = {item} does not fit in a 32-bit float"));
        }
        if self.kind == StepKind::Binary && !(0.0..=1.0).contains(&f) {
            return Err(format!(
                "{at} = {item} is not in [0, 1]: binary targets are 0, 1 or probabilities"
            ));
        }
        Ok(f)
    }

    fn check_size(&mut self, size: usize, t: usize, line: usize) -> Result<(), String> {
        let name = self.name;
        let numbers = |n: usize| {
            if n == 1 {
                "1 number".to_string()
            } else {
                format!("{n} numbers")
            }
        };
        match (self.given, self.seen) {
            (Some(want), _) if size != want => Err(format!(
                "{name}[{t}] has {}, the model's steps have {}",
                numbers(size),
                numbers(want)
            )),
            (None, Some((want, first))) if size != want => Err(format!(
                "{name}[{t}] has {}, but the steps before it (from line {first}) have {}: \
                 every step of \"{name}\" must be of the same size",
                numbers(size),
                numbers(want)
            )),
            _ => {
                self.seen.get_or_insert((size, line));
                Ok(())
            }
        }
    }

    fn format(&self) -> SideFormat {
        let size = match (self.given, self.kind) {
            (Some(s), _) => s,
            (None, StepKind::Class) => self.max_class.map_or(1, |m| m as usize + 1),
            (None, _) => self.seen.map_or(1, |s| s.0),
        };
        SideFormat {
            kind: self.kind,
            size,
        }
    }
}

/// Where the pair batcher is, with what it was batching, to continue exactly after a resume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairPosition {
    pub epoch: u64,
    /// Index of the next batch within the epoch.
    pub batch: usize,
    /// Number of training pairs and their digest: a resume refuses other data.
    pub pairs: usize,
    pub digest: u64,
}

/// Training batches over the pairs `indices`: every batch starts from a zero state.
pub struct PairBatches<'a> {
    data: &'a Pairs,
    indices: Vec<usize>,
    rows: usize,
    seed: u64,
    pos: PairPosition,
    /// The batches of `pos.epoch`.
    order: Vec<Vec<usize>>,
}

impl<'a> PairBatches<'a> {
    /// Batches of `rows` pairs drawn from `indices` of `data`, shuffled with `seed`.
    pub fn new(data: &'a Pairs, indices: Vec<usize>, rows: usize, seed: u64) -> Result<Self> {
        if rows == 0 {
            return Err(Error::Config("--batch must be at least 1".into()));
        }
        if indices.is_empty() {
            return Err(Error::Data("there are no training pairs".into()));
        }
        if data.output.is_none() {
            return Err(Error::Data("training pairs need their y".into()));
        }
        let pos = PairPosition {
            epoch: 0,
            batch: 0,
            pairs: indices.len(),
            digest: data.digest(&indices),
        };
        let mut b = PairBatches {
            data,
            indices,
            rows,
            seed,
            pos,
            order: Vec::new(),
        };
        b.order = b.epoch_order(0);
        Ok(b)
    }

    /// Batches per epoch: `ceil(pairs / B)`.
    pub fn batches_per_epoch(&self) -> usize {
        self.indices.len().div_ceil(self.rows)
    }

    /// The batches of epoch `epoch` (lists of pair indices), as described in the module docs.
    pub fn epoch_order(&self, epoch: u64) -> Vec<Vec<usize>> {
        let mut rng = rng(self.seed, epoch + 1);
        let mut idx = self.indices.clone();
        idx.shuffle(&mut rng);
        for pool in idx.chunks_mut(self.rows * POOL) {
            pool.sort_by_key(|&i| self.data.pairs[i].len);
        }
        let mut batches: Vec<Vec<usize>> = idx.chunks(self.rows).map(<[usize]>::to_vec).collect();
        batches.shuffle(&mut rng);
        batches
    }
}

impl TrainBatches for PairBatches<'_> {
    fn next_batch(&mut self) -> Result<(Batch, bool)> {
        let batch = self.data.batch(&self.order[self.pos.batch], self.rows);
        self.pos.batch += 1;
        if self.pos.batch == self.order.len() {
            self.pos.batch = 0;
            self.pos.epoch += 1;
            self.order = self.epoch_order(self.pos.epoch);
        }
        Ok((batch, true))
    }

    fn position(&self) -> serde_json::Value {
        serde_json::to_value(self.pos).unwrap_or_default()
    }

    fn seek(&mut self, position: &serde_json::Value) -> Result<()> {
        let pos: PairPosition = serde_json::from_value(position.clone())
            .map_err(|e| Error::Data(format!("saved pairs position is invalid: {e}")))?;
        if pos.pairs != self.pos.pairs || pos.digest != self.pos.digest {
            return Err(Error::Data(format!(
                "the training pairs changed since the checkpoint ({} pairs then, {} now, or \
                 other values): the data position cannot be restored",
                pos.pairs, self.pos.pairs
            )));
        }
        if pos.batch >= self.batches_per_epoch() {
            return Err(Error::Data(format!(
                "saved batch {} is beyond the {} batches of an epoch: the batch size changed \
                 since the checkpoint",
                pos.batch,
                self.batches_per_epoch()
            )));
        }
        self.order = self.epoch_order(pos.epoch);
        self.pos = pos;
        Ok(())
    }

    fn epochs_done(&self) -> u64 {
        self.pos.epoch
    }
}

/// Pairs evaluated in batches of B sorted by length, each from a zero state; every counted step
/// of every pair is counted once.
pub struct PairEval<'a> {
    data: &'a Pairs,
    /// Batches of pair indices, in evaluation order.
    batches: Vec<Vec<usize>>,
    rows: usize,
    /// Whether every pair given is scored (not a spread subset of them).
    whole: bool,
}

impl<'a> PairEval<'a> {
    /// Like [`PairEval::new`], scoring at most `limit` of the pairs `indices`, spread evenly
    /// over them in their order (every k-th); `None`, or a limit of at least their number: all
    /// of them, exactly as `new`.
    pub fn spread(
        data: &'a Pairs,
        indices: Vec<usize>,
        rows: usize,
        limit: Option<usize>,
    ) -> Result<Self> {
        let whole = limit.is_none_or(|l| l >= indices.len());
        let chosen = crate::data::spread(indices.len(), limit)
            .into_iter()
            .map(|i| indices[i])
            .collect();
        Ok(PairEval {
            whole,
            ..Self::new(data, chosen, rows)?
        })
    }

    /// The pairs `indices` of `data` in batches of `rows`, sorted by length (stable, so pairs of
    /// equal length keep their order).
    pub fn new(data: &'a Pairs, mut indices: Vec<usize>, rows: usize) -> Result<Self> {
        if rows == 0 {
            return Err(Error::Config("the batch size must be at least 1".into()));
        }
        indices.sort_by_key(|&i| data.pairs[i].len);
        Ok(PairEval {
            data,
            batches: indices.chunks(rows).map(<[usize]>::to_vec).collect(),
            rows,
            whole: true,
        })
    }

    /// The pair indices of each batch, in order: row b of batch k is pair `batches()[k][b]`.
    pub fn batch_indices(&self) -> &[Vec<usize>] {
        &self.batches
    }
}

impl EvalSet for PairEval<'_> {
    fn batches(&self) -> Result<Box<dyn Iterator<Item = Batch> + '_>> {
        Ok(Box::new(
            self.batches.iter().map(|b| self.data.batch(b, self.rows)),
        ))
    }

    fn carries_state(&self) -> bool {
        false
    }

    fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    fn reports_accuracy(&self) -> bool {
        true
    }

    fn is_whole(&self) -> bool {
        self.whole
    }

    fn sequences(&self) -> Option<(usize, crate::data::SequenceKind)> {
        Some((
            self.batches.iter().map(Vec::len).sum(),
            crate::data::SequenceKind::Pairs,
        ))
    }
}
