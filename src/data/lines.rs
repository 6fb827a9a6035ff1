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
        let (piece, next) = self.line_piece(cursor.at, cursor.done, end, scratch);
        *cursor = match next {
            Some(next) => Cursor { at: next, done: 0 },
            None => Cursor {
                at: cursor.at,
                done: cursor.done + piece.0.len(),
            },
        };
        Some(piece)
    }

    /// The piece after the first `done` predictions of the line starting at `at` (the text
    /// ending at `end`) as (inputs, targets), and where the next line starts when the piece
    /// ends the line.
    fn line_piece(
        &self,
        at: usize,
        done: usize,
        end: usize,
        scratch: &mut Vec<u32>,
    ) -> ((Vec<u32>, Vec<u32>), Option<usize>) {
        let bytes = self.corpus.text_bytes();
        let (line, next) = line_at(bytes, at, end);
        scratch.clear();
        scratch.push(self.start_token);
        self.corpus.encode_range(line, scratch);
        scratch.push(self.end_token);
        // scratch = <s> c_1 .. c_n </s>: n + 1 predictions.
        let preds = scratch.len() - 1;
        let to = (done + self.steps).min(preds);
        let piece = (scratch[done..to].to_vec(), scratch[done + 1..=to].to_vec());
        (piece, (to == preds).then_some(next))
    }

    /// One batch from the streams' cursors, or `None` when every stream is exhausted.
    fn batch(&self, cursors: &mut [Cursor]) -> Option<Batch> {
        let mut scratch = Vec::new();
        let pieces: Vec<Option<(Vec<u32>, Vec<u32>)>> = cursors
            .iter_mut()
            .enumerate()
            .map(|(b, c)| self.piece(b, c, &mut scratch))
            .collect();
        self.assemble(&pieces)
    }

    /// One batch of one piece per row (`None`: an empty row), padded and masked; `None` when
    /// every row is empty.
    fn assemble(&self, pieces: &[Option<(Vec<u32>, Vec<u32>)>]) -> Option<Batch> {
        let longest = pieces.iter().flatten().map(|p| p.0.len()).max()?;
        let quantum = self.steps.div_ceil(4).max(1);
        let steps = (longest.div_ceil(quantum) * quantum).min(self.steps);
        let rows = pieces.len();
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

    /// The byte offsets where the lines of the whole range start, in order.
    fn line_starts(&self) -> Vec<usize> {
        let (start, end) = (self.bounds[0], self.bounds[self.bounds.len() - 1]);
        let bytes = self.corpus.text_bytes();
        let mut starts = Vec::new();
        let mut at = start;
        while at < end {
            starts.push(at);
            at = line_at(bytes, at, end).1;
        }
        starts
    }

    /// Evaluation of at most `limit` lines of these, spread evenly over them (every k-th
    /// line), in the same rows; `None`, or a limit of at least the number of lines: all of
    /// them, exactly as evaluating `self`.
    pub fn spread(self, limit: Option<usize>) -> LinesEval<'a> {
        let all = self.line_starts();
        let count = all.len();
        let whole = limit.is_none_or(|l| l >= count);
        let starts: Vec<usize> = if whole {
            Vec::new()
        } else {
            crate::data::spread(count, limit)
                .into_iter()
                .map(|i| all[i])
                .collect()
        };
        LinesEval {
            count: if whole { count } else { starts.len() },
            lines: self,
            starts,
            whole,
        }
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

    fn epochs_done(&self) -> u64 {
        // The pass ends with the batch that exhausts every stream; the next batch starts the
        // next pass.
        let lines = &self.lines;
        let exhausted =
            (self.pos.cursors.iter().enumerate()).all(|(b, c)| c.at >= lines.bounds[b + 1]);
        self.pos.epoch + u64::from(exhausted)
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

/// The lines evaluated by a run: all of them (as [`Lines`] evaluates them), or a spread subset
/// whose lines are shared out to the rows in order, row b taking the b-th run of `N / B` of them.
pub struct LinesEval<'a> {
    lines: Lines<'a>,
    /// The starts of the lines of a subset (empty when the set is whole).
    starts: Vec<usize>,
    /// The number of lines scored.
    count: usize,
    whole: bool,
}

/// One row's place in a subset of lines: the index of its current line among the subset's, and
/// the predictions of that line earlier pieces covered.
#[derive(Clone, Copy)]
struct SubsetCursor {
    line: usize,
    done: usize,
}

impl LinesEval<'_> {
    /// One batch of the subset, advancing the rows' cursors (row b ends at line `ends[b]`).
    fn subset_batch(&self, cursors: &mut [SubsetCursor], ends: &[usize]) -> Option<Batch> {
        let end = self.lines.bounds[self.lines.bounds.len() - 1];
        let mut scratch = Vec::new();
        let pieces: Vec<Option<(Vec<u32>, Vec<u32>)>> = cursors
            .iter_mut()
            .zip(ends)
            .map(|(c, &stop)| {
                if c.line >= stop {
                    return None;
                }
                let at = self.starts[c.line];
                let (piece, next) = self.lines.line_piece(at, c.done, end, &mut scratch);
                *c = match next {
                    Some(_) => SubsetCursor {
                        line: c.line + 1,
                        done: 0,
                    },
                    None => SubsetCursor {
                        line: c.line,
                        done: c.done + piece.0.len(),
                    },
                };
                Some(piece)
            })
            .collect();
        self.lines.assemble(&pieces)
    }
}

impl EvalSet for LinesEval<'_> {
    fn batches(&self) -> Result<Box<dyn Iterator<Item = Batch> + '_>> {
        if self.whole {
            return self.lines.batches();
        }
        let (n, rows) = (self.starts.len(), self.lines.rows.min(self.starts.len()));
        let first = |b: usize| b * n / rows.max(1);
        let mut cursors: Vec<SubsetCursor> = (0..rows)
            .map(|b| SubsetCursor {
                line: first(b),
                done: 0,
            })
            .collect();
        let ends: Vec<usize> = (1..=rows).map(first).collect();
        Ok(Box::new(std::iter::from_fn(move || {
            self.subset_batch(&mut cursors, &ends)
        })))
    }

    fn carries_state(&self) -> bool {
        false
    }

    fn is_empty(&self) -> bool {
        Lines::is_empty(&self.lines)
    }

    fn is_whole(&self) -> bool {
        self.whole
    }

    fn sequences(&self) -> Option<(usize, crate::data::SequenceKind)> {
        Some((self.count, crate::data::SequenceKind::Lines))
    }
}
