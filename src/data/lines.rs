//! Lines mode: every line of the corpus is one sequence, framed by the start-of-line and
//! end-of-line tokens of the vocabulary: inputs `<s> c_1 .. c_n`, targets `c_1 .. c_n </s>`.
//! A batch holds one line of each of B streams (contiguous ranges of lines), padded and masked;
//! the state starts from zero for every batch. A line with more than `--seq-len` predictions is
//! cut into pieces of `--seq-len`, each learned from a zero state. Batches are padded to a
//! multiple of a quarter of `--seq-len` so the engines see at most four shapes.
//!
//! Only byte cursors are kept (no index of line starts), so a corpus of any size costs nothing
//! beyond its mapping.

use serde::{Deserialize, Serialize};

use crate::data::corpus::Corpus;
use crate::data::{EvalSet, TrainBatches};
use crate::engine::{Batch, Inputs, Targets};
use crate::error::{Error, Result};

/// The byte range `[start, end)` of lines, starting at line starts.
fn line_aligned(bytes: &[u8], at: usize) -> usize {
    if at == 0 {
        return 0;
    }
    match bytes[at - 1..].iter().position(|&b| b == b'\n') {
        Some(p) => at + p,
        None => bytes.len(),
    }
}

/// The line starting at `at` (without its newline and a trailing carriage return) and where the
/// next one starts.
fn line_at(bytes: &[u8], at: usize, end: usize) -> (std::ops::Range<usize>, usize) {
    let stop = bytes[at..end]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(end, |p| at + p);
    let mut text_end = stop;
    if text_end > at && bytes[text_end - 1] == b'\r' {
        text_end -= 1;
    }
    (at..text_end, (stop + 1).min(end))
}

/// One stream's place: the byte offset of its current line and how many of that line's
/// predictions earlier pieces covered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Cursor {
    at: usize,
    done: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct LinesPosition {
    epoch: u64,
    cursors: Vec<Cursor>,
}

/// Lines of a byte range of a corpus, cut into B streams.
pub struct Lines<'a> {
    corpus: &'a Corpus,
    start_token: u32,
    end_token: u32,
    rows: usize,
    steps: usize,
    /// Stream b covers bytes `bounds[b]..bounds[b + 1]`.
    bounds: Vec<usize>,
}

impl<'a> Lines<'a> {
    /// The lines of bytes `range` of `corpus` (whose vocabulary must have line tokens), in up to
    /// `rows` streams, pieces of at most `steps` predictions.
    pub fn new(
        corpus: &'a Corpus,
        range: std::ops::Range<usize>,
        rows: usize,
        steps: usize,
    ) -> Result<Self> {
        let vocab = corpus.vocab();
        let (Some(start_token), Some(end_token)) = (vocab.start_token(), vocab.end_token()) else {
            return Err(Error::Config(
                "lines mode needs a vocabulary with line tokens".into(),
            ));
        };
        if rows == 0 || steps == 0 {
            return Err(Error::Config(
                "--batch and --seq-len must be at least 1".into(),
            ));
        }
        let bytes = corpus.text_bytes();
        let len = range.len();
        let mut bounds: Vec<usize> = (0..rows)
            .map(|b| line_aligned(bytes, range.start + b * len / rows).max(range.start))
            .collect();
        bounds.push(range.end);
        bounds.dedup();
        Ok(Lines {
            corpus,
            start_token,
            end_token,
            rows: bounds.len() - 1,
            steps,
            bounds,
        })
    }

    /// Whether there is no line at all.
    pub fn is_empty(&self) -> bool {
        self.bounds.len() < 2 || self.bounds[0] >= self.bounds[self.bounds.len() - 1]
    }

    fn start(&self) -> Vec<Cursor> {
        self.bounds[..self.rows]
            .iter()
            .map(|&at| Cursor { at, done: 0 })
            .collect()
    }

    /// The next piece of stream b's current line as (inputs, targets), advancing the cursor;
    /// `None` once the stream is exhausted.
    fn piece(
        &self,
        b: usize,
        cursor: &mut Cursor,
        scratch: &mut Vec<u32>,
    ) -> Option<(Vec<u32>, Vec<u32>)> {
        let end = self.bounds[b + 1];
        if cursor.at >= end {
            return None;
        }
        let bytes = self.corpus.text_bytes();
        let (line, next) = line_at(bytes, cursor.at, end);
        scratch.clear();
        scratch.push(self.start_token);
        self.corpus.encode_range(line, scratch);
        scratch.push(self.end_token);
        // scratch = <s> c_1 .. c_n </s>: n + 1 predictions.
        let preds = scratch.len() - 1;
        let from = cursor.done;
        let to = (from + self.steps).min(preds);
        let piece = (scratch[from..to].to_vec(), scratch[from + 1..=to].to_vec());
        if to == preds {
            *cursor = Cursor { at: next, done: 0 };
        } else {
            cursor.done = to;
        }
        Some(piece)
    }

    /// One batch from the streams' cursors, or `None` when every stream is exhausted.
    fn batch(&self, cursors: &mut [Cursor]) -> Option<Batch> {
        let mut scratch = Vec::new();
        let pieces: Vec<Option<(Vec<u32>, Vec<u32>)>> = cursors
            .iter_mut()
            .enumerate()
            .map(|(b, c)| self.piece(b, c, &mut scratch))
            .collect();
        let longest = pieces.iter().flatten().map(|p| p.0.len()).max()?;
        let quantum = self.steps.div_ceil(4).max(1);
        let steps = (longest.div_ceil(quantum) * quantum).min(self.steps);
        let rows = self.rows;
        let n = rows * steps;
        let (mut inputs, mut targets, mut mask) = (vec![0; n], vec![0; n], vec![0.0; n]);
        for (b, piece) in pieces.iter().enumerate() {
            if let Some((x, y)) = piece {
                for t in 0..x.len() {
                    inputs[t * rows + b] = x[t];
                    targets[t * rows + b] = y[t];
                    mask[t * rows + b] = 1.0;
                }
            }
        }
        Some(Batch {
            steps,
            rows,
            inputs: Inputs::Tokens(inputs),
            targets: Targets::Classes(targets),
            mask: Some(mask),
        })
    }
}

/// Training batches of lines; a new epoch starts when every stream is exhausted.
pub struct LinesSource<'a> {
    lines: Lines<'a>,
    pos: LinesPosition,
}

impl<'a> LinesSource<'a> {
    /// Training batches over `lines`.
    pub fn new(lines: Lines<'a>) -> Result<Self> {
        if lines.is_empty() {
            return Err(Error::Data("the training split has no line".into()));
        }
        let cursors = lines.start();
        Ok(LinesSource {
            lines,
            pos: LinesPosition { epoch: 0, cursors },
        })
    }
}

impl TrainBatches for LinesSource<'_> {
    fn next_batch(&mut self) -> Result<(Batch, bool)> {
        if let Some(b) = self.lines.batch(&mut self.pos.cursors) {
            return Ok((b, true));
        }
        self.pos.epoch += 1;
        self.pos.cursors = self.lines.start();
        let b = self
            .lines
            .batch(&mut self.pos.cursors)
            .ok_or_else(|| Error::Data("the training split has no line".into()))?;
        Ok((b, true))
    }

    fn position(&self) -> serde_json::Value {
        serde_json::to_value(&self.pos).unwrap_or_default()
    }

    fn seek(&mut self, position: &serde_json::Value) -> Result<()> {
        let pos: LinesPosition = serde_json::from_value(position.clone())
            .map_err(|e| Error::Data(format!("saved lines position is invalid: {e}")))?;
        if pos.cursors.len() != self.lines.rows
            || pos
                .cursors
                .iter()
                .enumerate()
                .any(|(b, c)| c.at < self.lines.bounds[b] || c.at > self.lines.bounds[b + 1])
        {
            return Err(Error::Data(
                "saved lines position does not fit this corpus and batch shape".into(),
            ));
        }
        self.pos = pos;
        Ok(())
    }
}

impl EvalSet for Lines<'_> {
    fn batches(&self) -> Result<Box<dyn Iterator<Item = Batch> + '_>> {
        let mut cursors = self.start();
        Ok(Box::new(std::iter::from_fn(move || {
            self.batch(&mut cursors)
        })))
    }

    fn carries_state(&self) -> bool {
        false
    }

    fn is_empty(&self) -> bool {
        Lines::is_empty(self)
    }
}
