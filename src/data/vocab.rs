//! Vocabularies: how text becomes token ids and back.
//!
//! `chars`: the distinct characters (Unicode scalar values) of the training text sorted by code
//! point; id i is the i-th of them. `bytes`: the 256 byte values, for any file.
//! Rule for characters the vocabulary has never seen (at eval time): they are skipped, neither
//! input nor target, and counted so the caller can report them.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A token vocabulary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Vocab {
    /// Distinct characters sorted by code point.
    Chars { symbols: Vec<char> },
    /// The 256 byte values.
    Bytes,
}

impl Vocab {
    /// The character vocabulary of `text`.
    pub fn chars_of(text: &str) -> Self {
        let mut seen = std::collections::BTreeSet::new();
        seen.extend(text.chars());
        Vocab::Chars {
            symbols: seen.into_iter().collect(),
        }
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        match self {
            Vocab::Chars { symbols } => symbols.len(),
            Vocab::Bytes => 256,
        }
    }

    /// Whether the vocabulary has no tokens.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Token ids of `text`, and the number of characters skipped because they are not in the
    /// vocabulary.
    pub fn encode(&self, text: &str) -> (Vec<u32>, usize) {
        match self {
            Vocab::Bytes => (text.bytes().map(u32::from).collect(), 0),
            Vocab::Chars { symbols } => {
                let mut ids = Vec::with_capacity(text.len());
                let mut unknown = 0;
                for c in text.chars() {
                    match symbols.binary_search(&c) {
                        Ok(i) => ids.push(i as u32),
                        Err(_) => unknown += 1,
                    }
                }
                (ids, unknown)
            }
        }
    }

    /// The text of token ids; bytes that are not valid UTF-8 are shown as U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        match self {
            Vocab::Bytes => {
                let bytes: Vec<u8> = ids.iter().map(|&i| i as u8).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            }
            Vocab::Chars { symbols } => ids
                .iter()
                .map(|&i| symbols.get(i as usize).copied().unwrap_or('\u{FFFD}'))
                .collect(),
        }
    }

    /// JSON form stored in checkpoints.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses the JSON form, checking that a character vocabulary is sorted and distinct.
    pub fn from_json(s: &str) -> Result<Self> {
        let v: Vocab =
            serde_json::from_str(s).map_err(|e| Error::Data(format!("invalid vocabulary: {e}")))?;
        if let Vocab::Chars { symbols } = &v
            && symbols.windows(2).any(|w| w[0] >= w[1])
        {
            return Err(Error::Data(
                "invalid vocabulary: characters are not sorted and distinct".into(),
            ));
        }
        Ok(v)
    }
}
