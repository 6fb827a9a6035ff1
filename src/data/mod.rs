//! Data: corpora, vocabularies, and the batches cut from them. Whatever the data, training reads
//! it through [`TrainBatches`] and evaluation through [`EvalSet`], so the trainer knows nothing of
//! streams, lines or pairs.

pub mod corpus;
pub mod guard;
pub mod jsonl;
pub mod lines;
pub mod lm;
pub mod pairs;
pub mod tasks;
pub mod vocab;
pub mod words;

mod marks;

use serde::{Deserialize, Serialize};

use crate::engine::Batch;
use crate::error::Result;

/// How a corpus is cut into sequences for a language model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sequences {
    /// B contiguous streams, windows of T tokens, the state carried between windows.
    #[default]
    Stream,
    /// Every line one sequence framed by start and end tokens, padded and masked.
    Lines,
}

/// What the sequences of an evaluation set are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SequenceKind {
    Lines,
    Pairs,
}

impl std::fmt::Display for SequenceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SequenceKind::Lines => "lines",
            SequenceKind::Pairs => "pairs",
        })
    }
}

/// A source of training batches.
pub trait TrainBatches {
    /// The next batch, and whether the state must start from zero for it (a new pass over
    /// carried streams, or every batch of independent sequences).
    fn next_batch(&mut self) -> Result<(Batch, bool)>;
    /// Where the source is, as JSON, saved with the training state for an exact resume.
    fn position(&self) -> serde_json::Value;
    /// Continues from a position saved by [`TrainBatches::position`].
    fn seek(&mut self, position: &serde_json::Value) -> Result<()>;
    /// Passes over the training data completed so far: it grows by one with the batch that
    /// ends a pass (and follows a seek).
    fn epochs_done(&self) -> u64;
}

/// A held-out set, cut into batches that count every target once.
pub trait EvalSet {
    /// The batches in order.
    fn batches(&self) -> Result<Box<dyn Iterator<Item = Batch> + '_>>;
    /// Whether the state flows from one batch into the next (streams) instead of starting from
    /// zero for every batch (independent sequences).
    fn carries_state(&self) -> bool;
    /// Whether the set holds nothing to evaluate.
    fn is_empty(&self) -> bool;
    /// Whether evaluation should also count correct predictions (class and binary outputs),
    /// which reads the outputs back.
    fn reports_accuracy(&self) -> bool {
        false
    }
    /// Whether the set scores every target of its data (not a spread subset of it).
    fn is_whole(&self) -> bool {
        true
    }
    /// For sets of sequences, how many are scored and what they are; `None` for token
    /// streams, whose size is the number of predictions scored.
    fn sequences(&self) -> Option<(usize, SequenceKind)> {
        None
    }
}

/// The indices of `limit` of `len` items spread evenly over them (`floor(i * len / limit)`, so
/// every `len / limit`-th item), or all `len` when `limit` is `None` or not below `len`.
pub fn spread(len: usize, limit: Option<usize>) -> Vec<usize> {
    match limit {
        Some(n) if n < len => (0..n)
            .map(|i| (i as u128 * len as u128 / n as u128) as usize)
            .collect(),
        _ => (0..len).collect(),
    }
}
