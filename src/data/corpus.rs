//! Text corpora that scale: the file is memory-mapped (never copied whole into memory) and read
//! as tokens through a sparse index (the byte offset of every [`INDEX_STRIDE`]-th token), so a
//! multi-gigabyte corpus costs a few megabytes of index and nothing else.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use crate::data::vocab::{Vocab, VocabKind};
use crate::error::{Error, Result};

/// The built-in default corpus: a generated collection of short plays, written by this project
/// (`scripts/make_default_corpus.py` wrote `data/default_corpus.txt`), used when a command is
/// given no `--corpus`.
pub const DEFAULT_CORPUS: &str = include_str!("../../data/default_corpus.txt");

/// Tokens between two entries of the sparse index.
pub const INDEX_STRIDE: usize = 1024;

/// A corpus's bytes, either mapped from a file or borrowed from the binary.
pub enum CorpusText {
    Mapped(Mmap),
    Static(&'static str),
    Owned(Vec<u8>),
}

impl CorpusText {
    /// Maps `path` read-only, refusing directories and empty files.
    pub fn open(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io("open corpus", path, e))?;
        if meta.is_dir() {
            return Err(Error::Data(format!(
                "corpus {} is a directory, not a file",
                path.display()
            )));
        }
        if meta.len() == 0 {
            return Err(Error::Data(format!("corpus {} is empty", path.display())));
        }
        let file = File::open(path).map_err(|e| Error::io("open corpus", path, e))?;
        // SAFETY: the map is read-only; a file truncated by another process while mapped is the
        // one case memory maps cannot guard against, as with every mmap-based reader.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io("map corpus", path, e))?;
        Ok(CorpusText::Mapped(map))
    }

    /// Drops the mapped pages of `range` from this process's resident memory (they stay in the
    /// page cache and are read again if touched); nothing for in-memory text.
    fn release(&self, range: std::ops::Range<usize>) {
        if let CorpusText::Mapped(m) = self {
            // SAFETY: the map is a read-only private file mapping that is never written, so
            // dropping its pages loses nothing: a later read faults the same bytes back in.
            let _ = unsafe {
                m.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    range.start,
                    range.len(),
                )
            };
        }
    }

    /// Calls `f(offset, text)` on consecutive chunks of the UTF-8 text (split at character
    /// boundaries), releasing each chunk's pages afterwards so a scan of a large file does not
    /// keep it resident. Fails at the first invalid byte, naming its offset.
    fn scan(&self, name: &str, mut f: impl FnMut(usize, &str)) -> Result<()> {
        const CHUNK: usize = 32 << 20;
        let bytes = self.bytes();
        let mut at = 0;
        while at < bytes.len() {
            let end = (at + CHUNK).min(bytes.len());
            let chunk = &bytes[at..end];
            let text = match std::str::from_utf8(chunk) {
                Ok(t) => t,
                // A character cut by the chunk's end continues in the next chunk.
                Err(e) if e.error_len().is_none() && end < bytes.len() && e.valid_up_to() > 0 => {
                    std::str::from_utf8(&chunk[..e.valid_up_to()]).unwrap_or_default()
                }
                Err(e) => {
                    return Err(Error::Data(format!(
                        "corpus {name} is not valid UTF-8 at byte {} (use --vocab bytes for files \
                         that are not UTF-8 text)",
                        at + e.valid_up_to()
                    )));
                }
            };
            f(at, text);
            self.release(at..at + text.len());
            at += text.len();
        }
        Ok(())
    }

    /// The raw bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            CorpusText::Mapped(m) => m,
            CorpusText::Static(s) => s.as_bytes(),
            CorpusText::Owned(v) => v,
        }
    }
}

/// Random access to a sequence of token ids.
pub trait Tokens {
    /// Number of tokens.
    fn len(&self) -> usize;
    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Appends tokens `start .. start + count` to `out` (`start + count <= len`).
    fn read(&self, start: usize, count: usize, out: &mut Vec<u32>);
}

impl Tokens for [u32] {
    fn len(&self) -> usize {
        <[u32]>::len(self)
    }
    fn read(&self, start: usize, count: usize, out: &mut Vec<u32>) {
        out.extend_from_slice(&self[start..start + count]);
    }
}

impl<T: Tokens + ?Sized> Tokens for &T {
    fn len(&self) -> usize {
        (**self).len()
    }
    fn read(&self, start: usize, count: usize, out: &mut Vec<u32>) {
        (**self).read(start, count, out)
    }
}

impl Tokens for Vec<u32> {
    fn len(&self) -> usize {
        <[u32]>::len(self)
    }
    fn read(&self, start: usize, count: usize, out: &mut Vec<u32>) {
        out.extend_from_slice(&self[start..start + count]);
    }
}

/// Maps characters to token ids: a table for the Basic Multilingual Plane, a map beyond.
struct CharEncoder {
    bmp: Vec<u32>,
    other: HashMap<char, u32>,
}

const NONE: u32 = u32::MAX;

impl CharEncoder {
    fn new(symbols: &[char]) -> Self {
        let mut bmp = vec![NONE; 0x1_0000];
        let mut other = HashMap::new();
        for (i, &c) in symbols.iter().enumerate() {
            if (c as u32) < 0x1_0000 {
                bmp[c as usize] = i as u32;
            } else {
                other.insert(c, i as u32);
            }
        }
        CharEncoder { bmp, other }
    }

    fn id(&self, c: char) -> Option<u32> {
        let id = if (c as u32) < 0x1_0000 {
            self.bmp[c as usize]
        } else {
            self.other.get(&c).copied().unwrap_or(NONE)
        };
        (id != NONE).then_some(id)
    }
}

/// The distinct characters seen so far: a table for ASCII, a set beyond.
#[derive(Default)]
struct VocabScan {
    /// Bit i set when ASCII character i was seen.
    ascii: u128,
    other: std::collections::BTreeSet<char>,
}

impl VocabScan {
    fn add(&mut self, text: &str) {
        for c in text.chars() {
            if c.is_ascii() {
                self.ascii |= 1 << (c as u32);
            } else {
                self.other.insert(c);
            }
        }
    }

    fn vocab(self) -> Vocab {
        let mut symbols: Vec<char> = (0u8..128)
            .filter(|&b| self.ascii & (1 << b) != 0)
            .map(char::from)
            .collect();
        symbols.extend(self.other);
        Vocab::from_symbols(symbols)
    }
}

/// A memory-mapped corpus read as tokens of a vocabulary. Characters the vocabulary lacks are
/// skipped (neither input nor target) and counted in [`Corpus::unknown`].
pub struct Corpus {
    text: CorpusText,
    vocab: Vocab,
    encoder: Option<CharEncoder>,
    /// Byte offset of token `k * INDEX_STRIDE` (character vocabularies only).
    index: Vec<u64>,
    len: usize,
    unknown: usize,
}

impl Corpus {
    /// Opens `path` (or the built-in corpus when `None`) with a vocabulary: the given one, or one
    /// scanned from the text. `name` is used in messages.
    pub fn open(path: Option<&Path>, kind: VocabKind, vocab: Option<Vocab>) -> Result<Self> {
        let (text, name) = match path {
            Some(p) => (CorpusText::open(p)?, p.display().to_string()),
            None => (
                CorpusText::Static(DEFAULT_CORPUS),
                "built-in corpus".to_string(),
            ),
        };
        Self::from_text(text, &name, kind, vocab)
    }

    /// Reads `text` with the given vocabulary or one scanned from it.
    pub fn from_text(
        text: CorpusText,
        name: &str,
        kind: VocabKind,
        vocab: Option<Vocab>,
    ) -> Result<Self> {
        let kind = vocab.as_ref().map_or(kind, Vocab::kind);
        if kind == VocabKind::Bytes {
            let len = text.bytes().len();
            return Ok(Corpus {
                text,
                vocab: vocab.unwrap_or_else(Vocab::bytes),
                encoder: None,
                index: Vec::new(),
                len,
                unknown: 0,
            });
        }
        let vocab = match vocab {
            Some(v) => v,
            None => {
                let mut seen = VocabScan::default();
                text.scan(name, |_, chunk| seen.add(chunk))?;
                seen.vocab()
            }
        };
        let encoder = CharEncoder::new(vocab.chars().unwrap_or_default());
        let mut index = Vec::new();
        let (mut len, mut unknown) = (0usize, 0usize);
        text.scan(name, |offset, chunk| {
            for (at, c) in chunk.char_indices() {
                if encoder.id(c).is_some() {
                    if len % INDEX_STRIDE == 0 {
                        index.push((offset + at) as u64);
                    }
                    len += 1;
                } else {
                    unknown += 1;
                }
            }
        })?;
        Ok(Corpus {
            text,
            vocab,
            encoder: Some(encoder),
            index,
            len,
            unknown,
        })
    }

    /// A corpus of in-memory text with a vocabulary scanned from it.
    pub fn from_string(text: String, kind: VocabKind) -> Result<Self> {
        Self::from_text(CorpusText::Owned(text.into_bytes()), "text", kind, None)
    }

    /// The vocabulary.
    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    /// Characters skipped because the vocabulary lacks them.
    pub fn unknown(&self) -> usize {
        self.unknown
    }

    /// Tokens `start..start+len` as a [`Tokens`] view (e.g. the training or validation split).
    pub fn slice(&self, start: usize, len: usize) -> CorpusSlice<'_> {
        assert!(start + len <= self.len, "slice within the corpus");
        CorpusSlice {
            corpus: self,
            start,
            len,
        }
    }

    /// The raw bytes of the text.
    pub fn text_bytes(&self) -> &[u8] {
        self.text.bytes()
    }

    /// Appends the token ids of the text in byte `range` (which must start and end at character
    /// boundaries) to `out`, skipping characters the vocabulary lacks.
    pub fn encode_range(&self, range: std::ops::Range<usize>, out: &mut Vec<u32>) {
        let bytes = &self.text.bytes()[range];
        match &self.encoder {
            None => out.extend(bytes.iter().map(|&b| u32::from(b))),
            Some(encoder) => {
                let text = match std::str::from_utf8(bytes) {
                    Ok(t) => t,
                    Err(e) => std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default(),
                };
                out.extend(text.chars().filter_map(|c| encoder.id(c)));
            }
        }
    }

    /// All tokens, collected (for small corpora and tests).
    pub fn to_vec(&self) -> Vec<u32> {
        let mut v = Vec::with_capacity(self.len);
        self.read(0, self.len, &mut v);
        v
    }
}

impl Tokens for Corpus {
    fn len(&self) -> usize {
        self.len
    }

    fn read(&self, start: usize, count: usize, out: &mut Vec<u32>) {
        let bytes = self.text.bytes();
        let Some(encoder) = &self.encoder else {
            out.extend(bytes[start..start + count].iter().map(|&b| u32::from(b)));
            return;
        };
        let entry = start / INDEX_STRIDE;
        let mut skip = start - entry * INDEX_STRIDE;
        let mut pos = self.index[entry] as usize;
        let mut left = count;
        // Decode bounded chunks from the indexed character boundary; unknown characters are
        // skipped, so the chunk is widened until `count` tokens are found.
        while left > 0 && pos < bytes.len() {
            let end = (pos + 4 * (skip + left) + 64).min(bytes.len());
            let chunk = &bytes[pos..end];
            let s = match std::str::from_utf8(chunk) {
                Ok(s) => s,
                Err(e) => std::str::from_utf8(&chunk[..e.valid_up_to()]).unwrap_or_default(),
            };
            if s.is_empty() {
                break;
            }
            for c in s.chars() {
                if left == 0 {
                    break;
                }
                if let Some(id) = encoder.id(c) {
                    if skip > 0 {
                        skip -= 1;
                    } else {
                        out.push(id);
                        left -= 1;
                    }
                }
            }
            pos += s.len();
        }
    }
}

/// A contiguous range of a corpus's tokens.
#[derive(Clone, Copy)]
pub struct CorpusSlice<'a> {
    corpus: &'a Corpus,
    start: usize,
    len: usize,
}

impl Tokens for CorpusSlice<'_> {
    fn len(&self) -> usize {
        self.len
    }
    fn read(&self, start: usize, count: usize, out: &mut Vec<u32>) {
        debug_assert!(start + count <= self.len);
        self.corpus.read(self.start + start, count, out);
    }
}
