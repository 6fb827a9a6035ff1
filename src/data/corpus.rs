//! Text corpora: a file memory-mapped (never copied whole into a `String`), or the built-in default
//! corpus, tokenized with a vocabulary.

use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use crate::data::vocab::Vocab;
use crate::error::{Error, Result};

/// The built-in default corpus: a generated collection of short plays, written by this project
/// (see `data/default_corpus.txt`), used when `unroll train` is given no `--corpus`.
pub const DEFAULT_CORPUS: &str = include_str!("../../data/default_corpus.txt");

/// A corpus's text, either mapped from a file or borrowed from the binary.
pub enum CorpusText {
    Mapped(Mmap),
    Static(&'static str),
}

impl CorpusText {
    /// Maps `path` read-only; checks that it is UTF-8 when `need_utf8`.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io("open corpus", path, e))?;
        let len = file
            .metadata()
            .map_err(|e| Error::io("stat corpus", path, e))?
            .len();
        if len == 0 {
            return Err(Error::Data(format!("corpus {} is empty", path.display())));
        }
        // SAFETY: the map is read-only; a file truncated by another process while mapped is the
        // one case memory maps cannot guard against, as with every mmap-based reader.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io("map corpus", path, e))?;
        Ok(CorpusText::Mapped(map))
    }

    /// The raw bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            CorpusText::Mapped(m) => m,
            CorpusText::Static(s) => s.as_bytes(),
        }
    }

    /// The text as UTF-8, or an error that gives the byte offset of the first invalid sequence.
    pub fn text(&self, name: &str) -> Result<&str> {
        std::str::from_utf8(self.bytes()).map_err(|e| {
            Error::Data(format!(
                "corpus {name} is not valid UTF-8 at byte {} (use --vocab bytes for binary files)",
                e.valid_up_to()
            ))
        })
    }
}

/// Tokens of a whole corpus with its vocabulary.
pub struct TokenizedCorpus {
    pub vocab: Vocab,
    pub tokens: Vec<u32>,
    /// Characters skipped because the vocabulary did not have them.
    pub unknown: usize,
}

impl TokenizedCorpus {
    /// Tokenizes `text`, building a character vocabulary from it unless one is given.
    pub fn from_text(text: &str, vocab: Option<Vocab>) -> Self {
        let vocab = vocab.unwrap_or_else(|| Vocab::chars_of(text));
        let (tokens, unknown) = vocab.encode(text);
        TokenizedCorpus {
            vocab,
            tokens,
            unknown,
        }
    }
}
