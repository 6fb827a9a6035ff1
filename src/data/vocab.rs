//! Vocabularies: how text becomes token ids and back.
//!
//! `chars`: the distinct characters (Unicode scalar values) of the training text sorted by code
//! point; id i is the i-th of them. `bytes`: the 256 byte values, for any file. In lines mode two
//! more ids follow the base ones: start-of-line and end-of-line.
//! Rule for characters the vocabulary has never seen (at eval time): they are skipped, neither
//! input nor target, and counted so the caller can report them.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which kind of base vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VocabKind {
    Chars,
    Bytes,
}

/// The base symbols.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Symbols {
    /// Distinct characters sorted by code point.
    Chars { symbols: Vec<char> },
    /// The 256 byte values.
    Bytes,
}

/// A token vocabulary: base symbols, plus start/end-of-line tokens in lines mode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vocab {
    #[serde(flatten)]
    pub symbols: Symbols,
    /// Whether ids `base` and `base + 1` are the start-of-line and end-of-line tokens.
    #[serde(default)]
    pub line_tokens: bool,
}

impl Vocab {
    /// The character vocabulary of `text`.
    pub fn chars_of(text: &str) -> Self {
        let mut seen: Vec<char> = text.chars().collect();
        seen.sort_unstable();
        seen.dedup();
        Self::from_symbols(seen)
    }

    /// A character vocabulary of sorted, distinct `symbols`.
    pub fn from_symbols(symbols: Vec<char>) -> Self {
        Vocab {
            symbols: Symbols::Chars { symbols },
            line_tokens: false,
        }
    }

    /// The byte vocabulary.
    pub fn bytes() -> Self {
        Vocab {
            symbols: Symbols::Bytes,
            line_tokens: false,
        }
    }

    /// The vocabulary for lines mode: without the line-break characters (`\n`, `\r`), which
    /// separate sequences instead, and with start/end-of-line tokens.
    pub fn for_lines(mut self) -> Self {
        if let Symbols::Chars { symbols } = &mut self.symbols {
            symbols.retain(|&c| c != '\n' && c != '\r');
        }
        self.with_line_tokens()
    }

    /// The same vocabulary with start/end-of-line tokens.
    pub fn with_line_tokens(mut self) -> Self {
        self.line_tokens = true;
        self
    }

    /// The kind of base vocabulary.
    pub fn kind(&self) -> VocabKind {
        match self.symbols {
            Symbols::Chars { .. } => VocabKind::Chars,
            Symbols::Bytes => VocabKind::Bytes,
        }
    }

    /// The sorted characters of a character vocabulary.
    pub fn chars(&self) -> Option<&[char]> {
        match &self.symbols {
            Symbols::Chars { symbols } => Some(symbols),
            Symbols::Bytes => None,
        }
    }

    /// Number of base symbols (without line tokens).
    pub fn base_len(&self) -> usize {
        match &self.symbols {
            Symbols::Chars { symbols } => symbols.len(),
            Symbols::Bytes => 256,
        }
    }

    /// Number of tokens, line tokens included.
    pub fn len(&self) -> usize {
        self.base_len() + if self.line_tokens { 2 } else { 0 }
    }

    /// Whether the vocabulary has no tokens.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The start-of-line token, in lines mode.
    pub fn start_token(&self) -> Option<u32> {
        self.line_tokens.then(|| self.base_len() as u32)
    }

    /// The end-of-line token, in lines mode.
    pub fn end_token(&self) -> Option<u32> {
        self.line_tokens.then(|| self.base_len() as u32 + 1)
    }

    /// Token ids of `text`, and the number of characters skipped because they are not in the
    /// vocabulary.
    pub fn encode(&self, text: &str) -> (Vec<u32>, usize) {
        match &self.symbols {
            Symbols::Bytes => (text.bytes().map(u32::from).collect(), 0),
            Symbols::Chars { symbols } => {
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

    /// The text of token ids. Bytes that are not valid UTF-8 are shown as U+FFFD; the end-of-line
    /// token is written as a newline and the start-of-line token as nothing.
    pub fn decode(&self, ids: &[u32]) -> String {
        let base = self.base_len() as u32;
        let mut out = String::new();
        let mut bytes = Vec::new();
        let flush = |bytes: &mut Vec<u8>, out: &mut String| {
            out.push_str(&String::from_utf8_lossy(bytes));
            bytes.clear();
        };
        for &id in ids {
            if self.line_tokens && id >= base {
                flush(&mut bytes, &mut out);
                if Some(id) == self.end_token() {
                    out.push('\n');
                }
                continue;
            }
            match &self.symbols {
                Symbols::Bytes => bytes.push(id as u8),
                Symbols::Chars { symbols } => {
                    out.push(symbols.get(id as usize).copied().unwrap_or('\u{FFFD}'))
                }
            }
        }
        flush(&mut bytes, &mut out);
        out
    }

    /// JSON form stored in checkpoints.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses the JSON form, checking that a character vocabulary is sorted and distinct.
    pub fn from_json(s: &str) -> Result<Self> {
        let v: Vocab =
            serde_json::from_str(s).map_err(|e| Error::Data(format!("invalid vocabulary: {e}")))?;
        if let Some(symbols) = v.chars()
            && symbols.windows(2).any(|w| w[0] >= w[1])
        {
            return Err(Error::Data(
                "invalid vocabulary: characters are not sorted and distinct".into(),
            ));
        }
        Ok(v)
    }
}
