//! Language-model batches cut from a token sequence.
//!
//! Training (`stream`): the tokens are cut into B contiguous streams of `L = n / B` tokens; batch
//! k holds window k of every stream, T inputs `x_t = tok[b*L + k*T + t]` predicting the next
//! token. Consecutive windows continue each other, so the state is carried between batches and
//! the gradient is truncated at the window boundary (truncated BPTT). An epoch is
//! `(L - 1) / T` windows; leftover tokens at the end of each stream wait for the next epoch.
//!
//! Evaluation: every next-token prediction of the sequence is counted exactly once: the n - 1
//! predictions are cut into B streams of `ceil((n-1)/B)`, windows of T, the missing tail masked.
//! A bounded evaluation of N < n - 1 predictions keeps the B rows but gives each a segment of
//! about N / B predictions, the segments spread evenly over the whole sequence (row b starts
//! near `b * (n - 1) / B`); each row still starts from a zero state and carries it over its
//! windows. The segments depend on n, N, B and T alone, so every evaluation scores the same ones.

use serde::{Deserialize, Serialize};

use crate::data::corpus::Tokens;
use crate::data::{EvalSet, TrainBatches};
use crate::engine::{Batch, Inputs, Targets};
use crate::error::{Error, Result};

/// Where the stream batcher is: enough to continue exactly after a resume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    pub epoch: u64,
    /// Index of the next window within the epoch.
    pub window: usize,
}

/// Training batches over B carried streams.
#[derive(Clone, Debug)]
pub struct StreamBatches {
    rows: usize,
    steps: usize,
    stream_len: usize,
    windows: usize,
    pos: StreamPosition,
}

impl StreamBatches {
    /// Batches of `rows` streams and `steps` time steps over `n_tokens` tokens.
    pub fn new(n_tokens: usize, rows: usize, steps: usize) -> Result<Self> {
        if rows == 0 || steps == 0 {
            return Err(Error::Config(
                "--batch and --seq-len must be at least 1".into(),
            ));
        }
        let stream_len = n_tokens / rows;
        if stream_len < steps + 1 {
            return Err(Error::Data(format!(
                "{n_tokens} training tokens are too few for {rows} streams of {} tokens \
                 (--batch {rows} --seq-len {steps}); use a smaller --batch or --seq-len",
                steps + 1
            )));
        }
        Ok(StreamBatches {
            rows,
            steps,
            stream_len,
            windows: (stream_len - 1) / steps,
            pos: StreamPosition {
                epoch: 0,
                window: 0,
            },
        })
    }

    /// Windows per epoch.
    pub fn windows_per_epoch(&self) -> usize {
        self.windows
    }

    /// The position of the next batch.
    pub fn position(&self) -> StreamPosition {
        self.pos
    }

    /// Continues from `pos` (from a saved training state).
    pub fn seek(&mut self, pos: StreamPosition) -> Result<()> {
        if pos.window >= self.windows {
            return Err(Error::Data(format!(
                "saved window {} is beyond the {} windows of an epoch: the corpus or the batch \
                 shape changed since the checkpoint",
                pos.window, self.windows
            )));
        }
        self.pos = pos;
        Ok(())
    }

    /// The next batch, and whether it starts a new pass over the streams (so the carried state
    /// must be reset to zero).
    pub fn next_batch(&mut self, tokens: &dyn Tokens) -> (Batch, bool) {
        let (b_n, t_n) = (self.rows, self.steps);
        let start = self.pos.window == 0;
        let mut inputs = vec![0; b_n * t_n];
        let mut targets = vec![0; b_n * t_n];
        let mut window = Vec::with_capacity(t_n + 1);
        for b in 0..b_n {
            window.clear();
            tokens.read(
                b * self.stream_len + self.pos.window * t_n,
                t_n + 1,
                &mut window,
            );
            for t in 0..t_n {
                inputs[t * b_n + b] = window[t];
                targets[t * b_n + b] = window[t + 1];
            }
        }
        self.pos.window += 1;
        if self.pos.window == self.windows {
            self.pos.window = 0;
            self.pos.epoch += 1;
        }
        (
            Batch {
                steps: t_n,
                rows: b_n,
                inputs: Inputs::Tokens(inputs),
                targets: Targets::Classes(targets),
                mask: None,
            },
            start,
        )
    }
}

/// The predictions a row of an evaluation scores: `len` of them from prediction `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub start: usize,
    pub len: usize,
}

/// The segments of `rows` rows covering all `preds` predictions: `ceil(preds / rows)` each, the
/// last ones shorter (or empty).
fn full_segments(preds: usize, rows: usize) -> Vec<Segment> {
    let per_stream = preds.div_ceil(rows);
    (0..rows)
        .map(|b| {
            let start = b * per_stream;
            Segment {
                start,
                len: per_stream.min(preds.saturating_sub(start)),
            }
        })
        .collect()
}

/// The segments of `rows` rows scoring exactly `limit < preds` of `preds` predictions, spread
/// evenly: row b scores `floor((b+1) N / B) - floor(b N / B)` predictions after a gap that
/// spreads the `preds - N` unscored ones the same way, so the segments neither overlap nor
/// leave the sequence.
fn spread_segments(preds: usize, rows: usize, limit: usize) -> Vec<Segment> {
    let gap = preds - limit;
    let share = |total: usize, b: usize| (total as u128 * b as u128 / rows as u128) as usize;
    (0..rows)
        .map(|b| Segment {
            start: share(limit, b) + share(gap, b),
            len: share(limit, b + 1) - share(limit, b),
        })
        .collect()
}

/// Evaluation batches over the `n - 1` next-token predictions of `tokens` (all of them, or a
/// spread subset), made one at a time. The state is to be reset before the first and carried
/// between them.
pub struct EvalBatches<'a> {
    tokens: &'a dyn Tokens,
    rows: usize,
    steps: usize,
    segments: Vec<Segment>,
    windows: usize,
    next: usize,
}

impl<'a> EvalBatches<'a> {
    /// Batches of at most `rows` streams and `steps` steps over every prediction of `tokens`.
    pub fn new(tokens: &'a dyn Tokens, rows: usize, steps: usize) -> Result<Self> {
        Self::bounded(tokens, rows, steps, None)
    }

    /// Like [`EvalBatches::new`], scoring at most `limit` predictions spread over the whole
    /// sequence (`None`, or a limit of at least `n - 1`: all of them, exactly as `new`).
    pub fn bounded(
        tokens: &'a dyn Tokens,
        rows: usize,
        steps: usize,
        limit: Option<usize>,
    ) -> Result<Self> {
        if rows == 0 || steps == 0 {
            return Err(Error::Config(
                "batch and sequence length must be at least 1".into(),
            ));
        }
        let preds = tokens.len().saturating_sub(1);
        if preds == 0 {
            return Err(Error::Data("evaluation needs at least two tokens".into()));
        }
        if limit == Some(0) {
            return Err(Error::Config(
                "an evaluation must score at least one prediction".into(),
            ));
        }
        let segments = match limit {
            Some(limit) if limit < preds => spread_segments(preds, rows.min(limit), limit),
            _ => full_segments(preds, rows.min(preds)),
        };
        let longest = segments.iter().map(|s| s.len).max().unwrap_or(0);
        Ok(EvalBatches {
            tokens,
            rows: segments.len(),
            steps,
            segments,
            windows: longest.div_ceil(steps),
            next: 0,
        })
    }

    /// B of every batch.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// What each row scores.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Number of batches.
    pub fn len(&self) -> usize {
        self.windows
    }

    /// Whether there are no batches (never: at least one prediction is required).
    pub fn is_empty(&self) -> bool {
        self.windows == 0
    }
}

impl Iterator for EvalBatches<'_> {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.next == self.windows {
            return None;
        }
        let (rows, steps, w) = (self.rows, self.steps, self.next);
        let n = rows * steps;
        let (mut inputs, mut targets, mut mask) = (vec![0; n], vec![0; n], vec![0.0; n]);
        let mut window = Vec::with_capacity(steps + 1);
        for (b, segment) in self.segments.iter().enumerate() {
            // Predictions k of row b: input token segment.start + k, within the segment.
            let first = segment.start + w * steps;
            let end = segment.start + segment.len;
            let count = end.saturating_sub(first).min(steps);
            if count == 0 {
                continue;
            }
            window.clear();
            self.tokens.read(first, count + 1, &mut window);
            for t in 0..count {
                inputs[t * rows + b] = window[t];
                targets[t * rows + b] = window[t + 1];
                mask[t * rows + b] = 1.0;
            }
        }
        self.next += 1;
        Some(Batch {
            steps,
            rows,
            inputs: Inputs::Tokens(inputs),
            targets: Targets::Classes(targets),
            mask: Some(mask),
        })
    }
}

/// Stream batches over a token sequence as a [`TrainBatches`] source.
pub struct StreamSource<T: Tokens> {
    tokens: T,
    batches: StreamBatches,
}

impl<T: Tokens> StreamSource<T> {
    /// B streams of windows of T tokens over `tokens`.
    pub fn new(tokens: T, rows: usize, steps: usize) -> Result<Self> {
        let batches = StreamBatches::new(tokens.len(), rows, steps)?;
        Ok(StreamSource { tokens, batches })
    }

    /// Windows per epoch.
    pub fn windows_per_epoch(&self) -> usize {
        self.batches.windows_per_epoch()
    }
}

impl<T: Tokens> TrainBatches for StreamSource<T> {
    fn next_batch(&mut self) -> Result<(Batch, bool)> {
        Ok(self.batches.next_batch(&self.tokens))
    }

    fn position(&self) -> serde_json::Value {
        serde_json::to_value(self.batches.position()).unwrap_or_default()
    }

    fn seek(&mut self, position: &serde_json::Value) -> Result<()> {
        let pos: StreamPosition = serde_json::from_value(position.clone())
            .map_err(|e| Error::Data(format!("saved stream position is invalid: {e}")))?;
        self.batches.seek(pos)
    }

    fn epochs_done(&self) -> u64 {
        self.batches.position().epoch
    }
}

/// A token sequence evaluated as B carried streams of windows of T (see [`EvalBatches`]),
/// scoring every prediction or, with `limit`, at most that many spread over the sequence.
pub struct StreamEval<T: Tokens> {
    pub tokens: T,
    pub rows: usize,
    pub steps: usize,
    pub limit: Option<usize>,
}

impl<T: Tokens> EvalSet for StreamEval<T> {
    fn batches(&self) -> Result<Box<dyn Iterator<Item = Batch> + '_>> {
        Ok(Box::new(EvalBatches::bounded(
            &self.tokens,
            self.rows,
            self.steps,
            self.limit,
        )?))
    }

    fn carries_state(&self) -> bool {
        true
    }

    fn is_empty(&self) -> bool {
        self.tokens.len() < 2
    }

    fn is_whole(&self) -> bool {
        self.limit
            .is_none_or(|l| l >= self.tokens.len().saturating_sub(1))
    }
}
