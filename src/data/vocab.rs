//! Vocabularies: how text becomes token ids and back.
//!
//! `chars`: the distinct characters (Unicode scalar values) of the training text sorted by code
//! point; id i is the i-th of them. `bytes`: the 256 byte values, for any file. `words`: id 0 is
//! `<unk>`, then the most frequent word tokens of the training text (see [`crate::data::words`]),
//! most frequent first. In lines mode two more ids follow the base ones: start-of-line and
//! end-of-line.
//! Rule for characters a character vocabulary has never seen (at eval time): they are skipped,
//! neither input nor target, and counted so the caller can report them. Words a word vocabulary
//! lacks are read as `<unk>` (id 0), and counted.

use serde::{Deserialize, Serialize};

use crate::data::words::{self, Joiner, LINE_BREAK, Tokenizer, UNKNOWN, WordCounts, WordEncoder};
use crate::error::{Error, Result};

/// Which kind of base vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VocabKind {
    Chars,
    Bytes,
    Words,
}

/// The base symbols.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Symbols {
    /// Distinct characters sorted by code point.
    Chars { symbols: Vec<char> },
    /// The 256 byte values.
    Bytes,
    /// Word tokens: `symbols[0]` is `<unk>`, then words by descending count in the training
    /// text (ties by code point order). With `lowercase`, tokens are lower-cased before lookup.
    Words {
        symbols: Vec<String>,
        #[serde(default)]
        lowercase: bool,
    },
}

/// How a word vocabulary is built from counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WordOptions {
    /// The most base tokens, `<unk>` and the line-break token included (the start and end tokens
    /// of lines mode come on top).
    pub max_vocab: usize,
    /// Words counted fewer times are left out (read as `<unk>`).
    pub min_count: u64,
    /// Whether tokens are lower-cased.
    pub lowercase: bool,
}

impl Default for WordOptions {
    fn default() -> Self {
        WordOptions {
            max_vocab: 10_000,
            min_count: 1,
            lowercase: false,
        }
    }
}

impl WordOptions {
    /// Checks the sizes.
    pub fn validate(&self) -> Result<()> {
        if self.max_vocab < 2 {
            return Err(Error::Config(format!(
                "--max-vocab {} must be at least 2 (<unk> and one word)",
                self.max_vocab
            )));
        }
        if self.min_count < 1 {
            return Err(Error::Config("--min-count must be at least 1".into()));
        }
        Ok(())
    }
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

    /// A word vocabulary of `symbols`, whose first is `<unk>`.
    pub fn words(symbols: Vec<String>, lowercase: bool) -> Self {
        Vocab {
            symbols: Symbols::Words { symbols, lowercase },
            line_tokens: false,
        }
    }

    /// The word vocabulary of `counts` (see [`WordOptions`]): `<unk>`, then the most frequent
    /// words, lower-cased if the counts were; with `line_tokens`, for lines mode (start/end
    /// tokens, no line-break token).
    pub fn words_from_counts(
        counts: &WordCounts,
        options: &WordOptions,
        line_tokens: bool,
    ) -> Result<Self> {
        options.validate()?;
        let mut symbols = vec![UNKNOWN.to_string()];
        symbols.extend(
            counts
                .most_frequent(options.max_vocab, options.min_count)
                .into_iter()
                .filter(|w| !(line_tokens && w == LINE_BREAK))
                .take(options.max_vocab - 1),
        );
        let vocab = Self::words(symbols, counts.lowercase());
        Ok(if line_tokens {
            vocab.with_line_tokens()
        } else {
            vocab
        })
    }

    /// The vocabulary for lines mode: without the line breaks (the characters `\n`, `\r`, or
    /// the line-break word token), which separate sequences instead, and with start/end-of-line
    /// tokens.
    pub fn for_lines(mut self) -> Self {
        match &mut self.symbols {
            Symbols::Chars { symbols } => symbols.retain(|&c| c != '\n' && c != '\r'),
            Symbols::Words { symbols, .. } => symbols.retain(|w| w != LINE_BREAK),
            Symbols::Bytes => {}
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
            Symbols::Words { .. } => VocabKind::Words,
        }
    }

    /// The sorted characters of a character vocabulary.
    pub fn chars(&self) -> Option<&[char]> {
        match &self.symbols {
            Symbols::Chars { symbols } => Some(symbols),
            _ => None,
        }
    }

    /// The words of a word vocabulary, by id (`<unk>` first).
    pub fn word_list(&self) -> Option<&[String]> {
        match &self.symbols {
            Symbols::Words { symbols, .. } => Some(symbols),
            _ => None,
        }
    }

    /// Whether a word vocabulary lower-cases tokens.
    pub fn lowercase(&self) -> bool {
        matches!(
            self.symbols,
            Symbols::Words {
                lowercase: true,
                ..
            }
        )
    }

    /// The id that stands for unknown words (`<unk>`, 0) in a word vocabulary.
    pub fn unknown_token(&self) -> Option<u32> {
        self.word_list().map(|_| 0)
    }

    /// How a word vocabulary cuts text: line breaks are tokens unless in lines mode.
    pub fn tokenizer(&self) -> Option<Tokenizer> {
        self.word_list().map(|_| Tokenizer {
            line_breaks: !self.line_tokens,
        })
    }

    /// The word-to-id map of a word vocabulary.
    pub fn word_encoder(&self) -> Option<WordEncoder> {
        self.word_list()
            .map(|w| WordEncoder::new(w, self.lowercase()))
    }

    /// Number of base symbols (without line tokens).
    pub fn base_len(&self) -> usize {
        match &self.symbols {
            Symbols::Chars { symbols } => symbols.len(),
            Symbols::Bytes => 256,
            Symbols::Words { symbols, .. } => symbols.len(),
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
    /// vocabulary (of words read as `<unk>`, for a word vocabulary).
    pub fn encode(&self, text: &str) -> (Vec<u32>, usize) {
        match &self.symbols {
            Symbols::Bytes => (text.bytes().map(u32::from).collect(), 0),
            Symbols::Words { symbols, lowercase } => {
                let encoder = WordEncoder::new(symbols, *lowercase);
                let tokenizer = Tokenizer {
                    line_breaks: !self.line_tokens,
                };
                let mut unknown = 0;
                let ids = tokenizer
                    .tokens(text)
                    .map(|(_, t)| {
                        encoder.id(t).unwrap_or_else(|| {
                            unknown += 1;
                            0
                        })
                    })
                    .collect();
                (ids, unknown)
            }
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
    /// token is written as a newline and the start-of-line token as nothing. Words are joined by
    /// a [`Joiner`].
    pub fn decode(&self, ids: &[u32]) -> String {
        let base = self.base_len() as u32;
        let mut out = String::new();
        if self.word_list().is_some() {
            let mut joiner = Joiner::new();
            for &id in ids {
                self.decode_word(id, &mut joiner, &mut out);
            }
            return out;
        }
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
                Symbols::Words { .. } => {}
            }
        }
        flush(&mut bytes, &mut out);
        out
    }

    /// Appends the text of word token `id` to `out` as `joiner` places it: the end-of-line token
    /// as a newline, the start-of-line token as the start of a line, an id beyond the vocabulary
    /// as `<unk>`. Nothing for other vocabularies.
    pub fn decode_word(&self, id: u32, joiner: &mut Joiner, out: &mut String) {
        let Some(symbols) = self.word_list() else {
            return;
        };
        if Some(id) == self.end_token() {
            out.push('\n');
            joiner.start_line();
        } else if Some(id) == self.start_token() {
            joiner.start_line();
        } else {
            let word = symbols.get(id as usize).map_or(UNKNOWN, String::as_str);
            joiner.push(word, out);
        }
    }

    /// JSON form stored in checkpoints.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses the JSON form, checking that a character vocabulary is sorted and distinct, and
    /// that a word vocabulary starts with `<unk>` and holds distinct tokens (without whitespace,
    /// but for the line-break token of stream mode).
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
        if let Some(symbols) = v.word_list() {
            v.check_words(symbols)?;
        }
        Ok(v)
    }

    /// Parses the JSON form of a vocabulary that must hold `tokens` tokens (the model's input
    /// size), counting its symbols first without building them, so that a vocabulary of the
    /// wrong size is refused before it takes any memory.
    pub fn from_json_of(s: &str, tokens: usize) -> Result<Self> {
        let size: VocabSize =
            serde_json::from_str(s).map_err(|e| Error::Data(format!("invalid vocabulary: {e}")))?;
        let base = match size.kind {
            VocabKind::Bytes => 256,
            VocabKind::Chars | VocabKind::Words => size.symbols.map_or(0, |c| c.0),
        };
        let len = base + if size.line_tokens { 2 } else { 0 };
        if len != tokens {
            return Err(Error::Data(format!(
                "vocabulary of {len} tokens for a model of {tokens} inputs: the checkpoint is \
                 damaged or was not written by unroll"
            )));
        }
        Self::from_json(s)
    }

    fn check_words(&self, symbols: &[String]) -> Result<()> {
        let bad = |m: String| Err(Error::Data(format!("invalid word vocabulary: {m}")));
        if symbols.first().map(String::as_str) != Some(UNKNOWN) {
            return bad(format!("the first word must be {UNKNOWN}"));
        }
        let mut seen = words::WordMap::default();
        for w in &symbols[1..] {
            let line_break = w == LINE_BREAK && !self.line_tokens;
            if w.is_empty() || (!line_break && w.chars().any(char::is_whitespace)) {
                return bad(format!("{w:?} is not a token"));
            }
            if seen.insert(w.as_str().into(), ()).is_some() {
                return bad(format!("{w:?} appears twice"));
            }
        }
        Ok(())
    }
}

/// What [`Vocab::from_json_of`] reads of a vocabulary before building it: its kind and how many
/// symbols it lists (every other field, and the symbols themselves, skipped without a copy).
#[derive(Deserialize)]
struct VocabSize {
    kind: VocabKind,
    #[serde(default)]
    symbols: Option<Count>,
    #[serde(default)]
    line_tokens: bool,
}

/// The length of a JSON array, counted without keeping its elements.
struct Count(usize);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Counter;
        impl<'de> serde::de::Visitor<'de> for Counter {
            type Value = Count;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array of symbols")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Count, A::Error> {
                let mut n = 0;
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(Count(n))
            }
        }
        d.deserialize_seq(Counter)
    }
}
