//! Text corpora that scale: the file is memory-mapped (never copied whole into memory) and read
//! as tokens through a sparse index (the byte offset of every [`INDEX_STRIDE`]-th token), so a
//! multi-gigabyte corpus costs a few megabytes of index and nothing else. Word tokens are read
//! the same way: the tokenizer needs no context before a token's start.

use std::collections::HashMap;
use std::fs::File;
use std::ops::ControlFlow;
use std::path::Path;

use memmap2::Mmap;

use crate::data::guard::{fingerprint, in_memory_max, report_truncation_when_mapped};
use crate::data::vocab::{Vocab, VocabKind, WordOptions};
use crate::data::words::{Tokenizer, UNKNOWN, WordCounts, WordEncoder};
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
        if !meta.is_file() {
            // A device or a pipe has no length to map: reading one would not end.
            return Err(Error::Data(format!(
                "corpus {} is not a regular file (a device or pipe): give a text file",
                path.display()
            )));
        }
        if meta.len() == 0 {
            return Err(Error::Data(format!("corpus {} is empty", path.display())));
        }
        let file = File::open(path).map_err(|e| Error::io("open corpus", path, e))?;
        if meta.len() <= in_memory_max() {
            return Self::read(file, path);
        }
        // SAFETY: the map is read-only; a file truncated by another process while mapped is the
        // one case memory maps cannot guard against: see `guard` for what a run does about it.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io("map corpus", path, e))?;
        report_truncation_when_mapped(path)?;
        Ok(CorpusText::Mapped(map))
    }

    /// Reads a small corpus into memory, where nothing done to the file can reach it.
    fn read(file: File, path: &Path) -> Result<Self> {
        use std::io::Read;
        let mut bytes = Vec::new();
        file.take(in_memory_max().saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io("read corpus", path, e))?;
        if bytes.is_empty() {
            return Err(Error::Data(format!("corpus {} is empty", path.display())));
        }
        Ok(CorpusText::Owned(bytes))
    }

    /// Whether the text is a memory map of its file (which the file's truncation can reach).
    pub fn is_mapped(&self) -> bool {
        matches!(self, CorpusText::Mapped(_))
    }

    /// The [`fingerprint`] of the text, releasing the mapped pages it reads.
    pub fn fingerprint(&self) -> u64 {
        fingerprint(self.bytes(), |range| self.release(range))
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

/// How a corpus turns its text into token ids.
enum Encoder {
    /// Every byte is a token.
    Bytes,
    /// Every character the vocabulary has is a token; the others are skipped.
    Chars(CharEncoder),
    /// Word tokens; words the vocabulary lacks are `<unk>` (id 0).
    Words {
        words: WordEncoder,
        tokenizer: Tokenizer,
    },
}

/// Bytes decoded at a time when a scan of word tokens reads the corpus.
const WORD_CHUNK: usize = 32 << 20;

fn not_utf8(name: &str, at: usize) -> Error {
    Error::Data(format!(
        "corpus {name} is not valid UTF-8 at byte {at} (use --vocab bytes for files that are not \
         UTF-8 text)"
    ))
}

/// A memory-mapped corpus read as tokens of a vocabulary. Characters a character vocabulary
/// lacks are skipped (neither input nor target) and counted in [`Corpus::unknown`]; words a word
/// vocabulary lacks are read as `<unk>` and counted there.
pub struct Corpus {
    text: CorpusText,
    name: String,
    vocab: Vocab,
    encoder: Encoder,
    /// Byte offset of token `k * INDEX_STRIDE` (character and word vocabularies).
    index: Vec<u64>,
    /// The number of `<unk>` tokens among tokens `k * INDEX_STRIDE .. (k + 1) * INDEX_STRIDE`
    /// (word vocabularies).
    unknown_blocks: Vec<u16>,
    len: usize,
    unknown: usize,
}

impl Corpus {
    fn text_of(path: Option<&Path>) -> Result<(CorpusText, String)> {
        Ok(match path {
            Some(p) => (CorpusText::open(p)?, p.display().to_string()),
            None => (
                CorpusText::Static(DEFAULT_CORPUS),
                "built-in corpus".to_string(),
            ),
        })
    }

    /// Opens `path` (or the built-in corpus when `None`) with a vocabulary: the given one, or one
    /// scanned from the text (for words: the default [`WordOptions`] over the whole text; see
    /// [`Corpus::open_words`] to build it from a training part).
    pub fn open(path: Option<&Path>, kind: VocabKind, vocab: Option<Vocab>) -> Result<Self> {
        let (text, name) = Self::text_of(path)?;
        Self::from_text(text, &name, kind, vocab)
    }

    /// Opens `path` (or the built-in corpus) as word tokens with a vocabulary built from its
    /// training part (see [`Corpus::build_words`]).
    pub fn open_words(
        path: Option<&Path>,
        options: &WordOptions,
        line_tokens: bool,
        train_end: impl FnOnce(&Corpus) -> Result<usize>,
    ) -> Result<Self> {
        let (text, name) = Self::text_of(path)?;
        Self::build_words(text, &name, options, line_tokens, train_end)
    }

    /// Reads `text` as word tokens with a vocabulary built by `options` from the training part:
    /// the bytes before `train_end(corpus)`, which must be a token start or the end of the text,
    /// where `corpus` reads the same tokens with a vocabulary of `<unk>` alone. With
    /// `line_tokens`, for lines mode (line breaks are not tokens; start and end tokens are added).
    ///
    /// Three streaming passes over the text: one to index the tokens, one to count the words of
    /// the training part, one to index them with the vocabulary.
    pub fn build_words(
        text: CorpusText,
        name: &str,
        options: &WordOptions,
        line_tokens: bool,
        train_end: impl FnOnce(&Corpus) -> Result<usize>,
    ) -> Result<Self> {
        options.validate()?;
        let mut tokens_only = Vocab::words(vec![UNKNOWN.to_string()], options.lowercase);
        if line_tokens {
            tokens_only = tokens_only.with_line_tokens();
        }
        let probe = Self::from_text(text, name, VocabKind::Words, Some(tokens_only))?;
        let end = train_end(&probe)?;
        let counts = probe.count_words(0..end, options.lowercase)?;
        let vocab = Vocab::words_from_counts(&counts, options, line_tokens)?;
        Self::from_text(probe.text, name, VocabKind::Words, Some(vocab))
    }

    /// Reads `text` with the given vocabulary or one scanned from it (for words: the default
    /// [`WordOptions`] over the whole text).
    pub fn from_text(
        text: CorpusText,
        name: &str,
        kind: VocabKind,
        vocab: Option<Vocab>,
    ) -> Result<Self> {
        let kind = vocab.as_ref().map_or(kind, Vocab::kind);
        let name_owned = name.to_string();
        match (kind, vocab) {
            (VocabKind::Bytes, vocab) => {
                let len = text.bytes().len();
                Ok(Corpus {
                    text,
                    name: name_owned,
                    vocab: vocab.unwrap_or_else(Vocab::bytes),
                    encoder: Encoder::Bytes,
                    index: Vec::new(),
                    unknown_blocks: Vec::new(),
                    len,
                    unknown: 0,
                })
            }
            (VocabKind::Words, None) => {
                Self::build_words(text, name, &WordOptions::default(), false, |c| {
                    Ok(c.text_bytes().len())
                })
            }
            (VocabKind::Words, Some(vocab)) => Self::with_words(text, name_owned, vocab),
            (VocabKind::Chars, vocab) => Self::with_chars(text, name_owned, vocab),
        }
    }

    fn with_chars(text: CorpusText, name: String, vocab: Option<Vocab>) -> Result<Self> {
        let vocab = match vocab {
            Some(v) => v,
            None => {
                let mut seen = VocabScan::default();
                text.scan(&name, |_, chunk| seen.add(chunk))?;
                seen.vocab()
            }
        };
        let encoder = CharEncoder::new(vocab.chars().unwrap_or_default());
        let mut index = Vec::new();
        let (mut len, mut unknown) = (0usize, 0usize);
        text.scan(&name, |offset, chunk| {
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
            name,
            vocab,
            encoder: Encoder::Chars(encoder),
            index,
            unknown_blocks: Vec::new(),
            len,
            unknown,
        })
    }

    /// One streaming pass: the index of every `INDEX_STRIDE`-th token and the `<unk>` counts.
    fn with_words(text: CorpusText, name: String, vocab: Vocab) -> Result<Self> {
        let (Some(words), Some(tokenizer)) = (vocab.word_encoder(), vocab.tokenizer()) else {
            return Err(Error::Config(
                "a word corpus needs a word vocabulary".into(),
            ));
        };
        // A vocabulary of <unk> alone (while the real one is being built) needs no lookups.
        let only_unknown = vocab.base_len() == 1;
        let mut index = Vec::new();
        let mut unknown_blocks: Vec<u16> = Vec::new();
        let (mut len, mut unknown) = (0usize, 0usize);
        let bytes = text.bytes();
        tokenizer
            .scan(
                bytes,
                0..bytes.len(),
                WORD_CHUNK,
                &mut |at, token| {
                    if len % INDEX_STRIDE == 0 {
                        index.push(at as u64);
                        unknown_blocks.push(0);
                    }
                    if only_unknown || words.id(token).is_none() {
                        unknown += 1;
                        if let Some(b) = unknown_blocks.last_mut() {
                            *b += 1;
                        }
                    }
                    len += 1;
                    ControlFlow::Continue(())
                },
                &mut |r| text.release(r),
            )
            .map_err(|at| not_utf8(&name, at))?;
        Ok(Corpus {
            text,
            name,
            vocab,
            encoder: Encoder::Words { words, tokenizer },
            index,
            unknown_blocks,
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

    /// Characters skipped because a character vocabulary lacks them, or tokens read as `<unk>`
    /// because a word vocabulary lacks them.
    pub fn unknown(&self) -> usize {
        self.unknown
    }

    /// The `<unk>` tokens among tokens `start..start + count` (0 unless the vocabulary is one of
    /// words).
    pub fn unknown_in(&self, start: usize, count: usize) -> usize {
        if !matches!(self.encoder, Encoder::Words { .. }) {
            return 0;
        }
        let end = (start + count).min(self.len);
        let (mut n, mut at) = (0, start);
        let mut ids = Vec::new();
        while at < end {
            let block = at / INDEX_STRIDE;
            let block_end = ((block + 1) * INDEX_STRIDE).min(self.len);
            let stop = block_end.min(end);
            if at == block * INDEX_STRIDE && stop == block_end {
                n += usize::from(self.unknown_blocks[block]);
            } else {
                ids.clear();
                self.read(at, stop - at, &mut ids);
                n += ids.iter().filter(|&&id| id == 0).count();
            }
            at = stop;
        }
        n
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

    /// The fingerprint of the text (see [`crate::data::guard::fingerprint`]).
    pub fn fingerprint(&self) -> u64 {
        self.text.fingerprint()
    }

    /// Whether the text is memory-mapped from its file (a corpus larger than
    /// [`crate::data::guard::in_memory_max`]).
    pub fn is_mapped(&self) -> bool {
        self.text.is_mapped()
    }

    /// Appends the token ids of the text in byte `range` (which must start and end at character
    /// boundaries, and for words at token boundaries or whitespace) to `out`, skipping
    /// characters a character vocabulary lacks.
    pub fn encode_range(&self, range: std::ops::Range<usize>, out: &mut Vec<u32>) {
        self.each_id_in(range, &mut |id| out.push(id));
    }

    /// The number of tokens in byte `range` (bounded as for [`Corpus::encode_range`]), found
    /// through the index: it decodes at most two strides of tokens, whatever the range.
    pub fn count_range(&self, range: std::ops::Range<usize>) -> usize {
        self.tokens_before(range.end) - self.tokens_before(range.start)
    }

    /// The number of tokens that start before byte `at`.
    fn tokens_before(&self, at: usize) -> usize {
        let bytes = self.text.bytes();
        let at = at.min(bytes.len());
        let entry = match self.index.partition_point(|&o| o as usize <= at) {
            _ if matches!(self.encoder, Encoder::Bytes) => return at,
            0 => return 0,
            k => k - 1,
        };
        let from = self.index[entry] as usize;
        let mut n = entry * INDEX_STRIDE;
        match &self.encoder {
            Encoder::Words { tokenizer, .. } => {
                let _ = tokenizer.scan(
                    bytes,
                    from..bytes.len(),
                    at - from + 256,
                    &mut |start, _| {
                        if start >= at {
                            return ControlFlow::Break(());
                        }
                        n += 1;
                        ControlFlow::Continue(())
                    },
                    &mut |_| {},
                );
            }
            Encoder::Chars(encoder) => {
                self.each_char_from(from, at - from, &mut |start, c| {
                    if start >= at {
                        return ControlFlow::Break(());
                    }
                    if encoder.id(c).is_some() {
                        n += 1;
                    }
                    ControlFlow::Continue(())
                });
            }
            Encoder::Bytes => {}
        }
        n
    }

    fn each_id_in(&self, range: std::ops::Range<usize>, f: &mut dyn FnMut(u32)) {
        let bytes = self.text.bytes();
        match &self.encoder {
            Encoder::Bytes => bytes[range].iter().for_each(|&b| f(u32::from(b))),
            Encoder::Chars(encoder) => {
                let bytes = &bytes[range];
                let text = match std::str::from_utf8(bytes) {
                    Ok(t) => t,
                    Err(e) => std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default(),
                };
                text.chars().filter_map(|c| encoder.id(c)).for_each(f);
            }
            Encoder::Words { words, tokenizer } => {
                // The text was checked when the corpus was opened; a scan cannot fail.
                let _ = tokenizer.scan(
                    bytes,
                    range,
                    WORD_CHUNK,
                    &mut |_, token| {
                        f(words.id(token).unwrap_or(0));
                        ControlFlow::Continue(())
                    },
                    &mut |_| {},
                );
            }
        }
    }

    /// The byte offset where token `k` starts (the end of the text for `k == len`).
    pub fn token_offset(&self, k: usize) -> usize {
        let bytes = self.text.bytes();
        if k >= self.len {
            return bytes.len();
        }
        let pos = match &self.encoder {
            Encoder::Bytes => return k,
            _ => self.index[k / INDEX_STRIDE] as usize,
        };
        let mut skip = k % INDEX_STRIDE;
        let mut found = bytes.len();
        match &self.encoder {
            Encoder::Words { tokenizer, .. } => {
                let _ = tokenizer.scan(
                    bytes,
                    pos..bytes.len(),
                    16 * skip + 256,
                    &mut |at, _| {
                        if skip == 0 {
                            found = at;
                            return ControlFlow::Break(());
                        }
                        skip -= 1;
                        ControlFlow::Continue(())
                    },
                    &mut |_| {},
                );
            }
            Encoder::Chars(encoder) => {
                self.each_char_from(pos, skip + 1, &mut |at, c| {
                    if encoder.id(c).is_some() {
                        if skip == 0 {
                            found = at;
                            return ControlFlow::Break(());
                        }
                        skip -= 1;
                    }
                    ControlFlow::Continue(())
                });
            }
            Encoder::Bytes => {}
        }
        found
    }

    /// Calls `f(offset, c)` on the characters from byte `pos` on, decoding bounded chunks sized
    /// for about `wanted` characters, until `f` breaks or the text ends.
    fn each_char_from(
        &self,
        mut pos: usize,
        wanted: usize,
        f: &mut dyn FnMut(usize, char) -> ControlFlow<()>,
    ) {
        let bytes = self.text.bytes();
        let mut want = 4 * wanted + 64;
        while pos < bytes.len() {
            let end = (pos + want).min(bytes.len());
            let chunk = &bytes[pos..end];
            let s = match std::str::from_utf8(chunk) {
                Ok(s) => s,
                Err(e) => std::str::from_utf8(&chunk[..e.valid_up_to()]).unwrap_or_default(),
            };
            if s.is_empty() {
                return;
            }
            for (at, c) in s.char_indices() {
                if f(pos + at, c).is_break() {
                    return;
                }
            }
            pos += s.len();
            want *= 2;
        }
    }

    /// Counts the word tokens of byte `range` (which starts at a token start or whitespace and
    /// ends at a token start or the end of the text) in one streaming pass, releasing the pages
    /// read. Lower-cases them first with `lowercase`.
    pub fn count_words(
        &self,
        range: std::ops::Range<usize>,
        lowercase: bool,
    ) -> Result<WordCounts> {
        let Encoder::Words { tokenizer, .. } = &self.encoder else {
            return Err(Error::Config(
                "words are counted in a corpus of word tokens".into(),
            ));
        };
        let mut counts = WordCounts::new(lowercase);
        tokenizer
            .scan(
                self.text.bytes(),
                range,
                WORD_CHUNK,
                &mut |_, token| {
                    counts.add(token);
                    ControlFlow::Continue(())
                },
                &mut |r| self.text.release(r),
            )
            .map_err(|at| not_utf8(&self.name, at))?;
        Ok(counts)
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
        if count == 0 {
            return;
        }
        let bytes = self.text.bytes();
        let entry = start / INDEX_STRIDE;
        let mut skip = start - entry * INDEX_STRIDE;
        let mut left = count;
        match &self.encoder {
            Encoder::Bytes => out.extend(bytes[start..start + count].iter().map(|&b| u32::from(b))),
            // Decode bounded chunks from the indexed character boundary; unknown characters are
            // skipped, so the chunk is widened until `count` tokens are found.
            Encoder::Chars(encoder) => {
                self.each_char_from(self.index[entry] as usize, skip + left, &mut |_, c| {
                    if let Some(id) = encoder.id(c) {
                        if skip > 0 {
                            skip -= 1;
                        } else {
                            out.push(id);
                            left -= 1;
                            if left == 0 {
                                return ControlFlow::Break(());
                            }
                        }
                    }
                    ControlFlow::Continue(())
                })
            }
            // Tokenize from the indexed token start: the tokenizer needs no earlier context.
            Encoder::Words { words, tokenizer } => {
                let _ = tokenizer.scan(
                    bytes,
                    self.index[entry] as usize..bytes.len(),
                    8 * (skip + left) + 256,
                    &mut |_, token| {
                        if skip > 0 {
                            skip -= 1;
                            return ControlFlow::Continue(());
                        }
                        out.push(words.id(token).unwrap_or(0));
                        left -= 1;
                        if left == 0 {
                            ControlFlow::Break(())
                        } else {
                            ControlFlow::Continue(())
                        }
                    },
                    &mut |_| {},
                );
            }
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
