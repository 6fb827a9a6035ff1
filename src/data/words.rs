//! Word tokens: how text is cut into words and written back, and how the words of a large corpus
//! are counted.
//!
//! The rules of [`Tokenizer`], applied from the start of the text:
//!
//! - Whitespace (`char::is_whitespace`) separates tokens and is dropped. In stream mode a line
//!   break is a token of its own, written `"\n"`: `\n`, or `\r\n` as one (a lone `\r` is
//!   whitespace). In lines mode line breaks separate sequences instead and are whitespace here.
//! - A word starts at an alphanumeric character (`char::is_alphanumeric`, any script) and runs
//!   over alphanumeric characters and combining marks (Unicode categories Mn, Mc, Me, and the
//!   zero-width (non-)joiners U+200C, U+200D). A single apostrophe (`'` or `’`) or hyphen (`-` or
//!   U+2010 `‐`) followed by an alphanumeric character continues the word: `don't`, `well-known`,
//!   `o'clock` are one token each, `rock--roll` and `dogs'` are not.
//! - A word is at most [`MAX_WORD_CHARS`] characters; a longer run is cut into pieces of that
//!   many (so a file without separators cannot make one giant token).
//! - Every other character (punctuation, symbols, emoji, a mark that follows no word) is a token
//!   of its own.
//!
//! The rules look back at nothing before a token's start and ahead at most two characters past
//! its end, so tokenizing from the start of any token gives the tail of the full token list: a
//! corpus can index the byte offset of every k-th token and decode from there. Lower-casing
//! (`--lowercase`) maps each token with `str::to_lowercase` after the cut; it never moves a
//! boundary.
//!
//! [`Joiner`] writes tokens back as readable text (see there); tokenizing what it writes gives
//! the same tokens again.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::ops::{ControlFlow, Range};

use super::marks::MARKS;

/// The token that stands for every word outside a vocabulary; id 0 of a word vocabulary.
pub const UNKNOWN: &str = "<unk>";

/// The line-break token of stream mode, as stored in a vocabulary.
pub const LINE_BREAK: &str = "\n";

/// The most characters in one word token; a longer run of word characters is cut into pieces.
pub const MAX_WORD_CHARS: usize = 100;

/// Whether `c` is a combining mark (Mn, Mc, Me) or a zero-width (non-)joiner, which continue a
/// word.
pub fn is_mark(c: char) -> bool {
    let c = c as u32;
    if c < 0x300 {
        return false;
    }
    if c == 0x200C || c == 0x200D {
        return true;
    }
    MARKS
        .binary_search_by(|&(first, last)| {
            if last < c {
                std::cmp::Ordering::Less
            } else if first > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// Whether `c` joins two runs of a word: an apostrophe or a hyphen.
pub fn is_joiner(c: char) -> bool {
    matches!(c, '\'' | '\u{2019}' | '-' | '\u{2010}')
}

/// The token text of the byte range a [`Step::Token`] gives: `\r\n` is the line-break token
/// `"\n"`.
pub fn token_text(slice: &str) -> &str {
    if slice == "\r\n" { LINE_BREAK } else { slice }
}

/// Whether `c` continues a word it follows.
fn continues_word(c: char) -> bool {
    c.is_alphanumeric() || is_mark(c)
}

/// What [`Tokenizer::next`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The next token: its byte range in the text.
    Token(Range<usize>),
    /// The text ends before the next token is known: it starts at this byte, and more text is
    /// needed to decide where it ends.
    More(usize),
    /// No token starts before the end of the text.
    End,
}

/// Cuts text into word tokens (see the module documentation for the rules).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tokenizer {
    /// Whether line breaks are tokens (stream mode) rather than whitespace (lines mode).
    pub line_breaks: bool,
}

impl Tokenizer {
    /// The next token of `text` at or after byte `at` (a character boundary). `last` says
    /// whether the text ends there; when it does not, a token whose end depends on what follows
    /// the text gives [`Step::More`]. The token's text is [`token_text`] of its range.
    pub fn next(&self, text: &str, at: usize, last: bool) -> Step {
        let mut i = at;
        let c = loop {
            let Some(c) = text[i..].chars().next() else {
                return Step::End;
            };
            if self.line_breaks && c == '\n' {
                return Step::Token(i..i + 1);
            }
            if self.line_breaks && c == '\r' {
                match text[i + 1..].chars().next() {
                    Some('\n') => return Step::Token(i..i + 2),
                    None if !last => return Step::More(i),
                    _ => {}
                }
            }
            if !c.is_whitespace() {
                break c;
            }
            i += c.len_utf8();
        };
        let start = i;
        let mut end = start + c.len_utf8();
        if !c.is_alphanumeric() {
            return Step::Token(start..end);
        }
        let mut chars = 1;
        while chars < MAX_WORD_CHARS {
            let mut rest = text[end..].chars();
            let Some(d) = rest.next() else {
                return if last {
                    Step::Token(start..end)
                } else {
                    Step::More(start)
                };
            };
            if continues_word(d) {
                end += d.len_utf8();
                chars += 1;
                continue;
            }
            if is_joiner(d) && chars + 2 <= MAX_WORD_CHARS {
                match rest.next() {
                    Some(e) if e.is_alphanumeric() => {
                        end += d.len_utf8() + e.len_utf8();
                        chars += 2;
                        continue;
                    }
                    None if !last => return Step::More(start),
                    _ => {}
                }
            }
            break;
        }
        Step::Token(start..end)
    }

    /// The tokens of a whole text with their byte offsets.
    pub fn tokens<'t>(&self, text: &'t str) -> impl Iterator<Item = (usize, &'t str)> + 't {
        let tokenizer = *self;
        let mut at = 0;
        std::iter::from_fn(move || match tokenizer.next(text, at, true) {
            Step::Token(r) => {
                at = r.end;
                Some((r.start, token_text(&text[r])))
            }
            Step::More(_) | Step::End => None,
        })
    }

    /// The tokens of a whole text, lower-cased when `lowercase` is set.
    pub fn tokenize(&self, text: &str, lowercase: bool) -> Vec<String> {
        self.tokens(text)
            .map(|(_, t)| {
                if lowercase {
                    lower(t).into_owned()
                } else {
                    t.to_string()
                }
            })
            .collect()
    }

    /// Calls `f(offset, token text)` on the tokens of `bytes[range]` (UTF-8 text; `range` starts at a
    /// token start or a whitespace character, and ends at one or at the end of the text), decoded
    /// in chunks of about `chunk` bytes. A token cut by a chunk's end is carried over whole into
    /// the next chunk. `done(range)` is called on every byte range the scan has finished with
    /// (so the caller can release it from memory). `f` may stop the scan early. Fails with the
    /// offset of the first byte that is not UTF-8.
    pub fn scan(
        &self,
        bytes: &[u8],
        range: Range<usize>,
        chunk: usize,
        f: &mut dyn FnMut(usize, &str) -> ControlFlow<()>,
        done: &mut dyn FnMut(Range<usize>),
    ) -> Result<(), usize> {
        let mut pos = range.start;
        let mut want = chunk.max(16);
        while pos < range.end {
            let end = (pos + want).min(range.end);
            let piece = &bytes[pos..end];
            let text = match std::str::from_utf8(piece) {
                Ok(t) => t,
                // A character cut by the chunk's end continues in the next chunk.
                Err(e) if e.error_len().is_none() && end < range.end => {
                    std::str::from_utf8(&piece[..e.valid_up_to()]).map_err(|_| pos)?
                }
                Err(e) => return Err(pos + e.valid_up_to()),
            };
            let last = pos + text.len() == range.end;
            let mut at = 0;
            let used = loop {
                match self.next(text, at, last) {
                    Step::Token(r) => {
                        at = r.end;
                        if f(pos + r.start, token_text(&text[r])).is_break() {
                            done(pos..pos + at);
                            return Ok(());
                        }
                    }
                    Step::More(start) => break start,
                    Step::End => break text.len(),
                }
            };
            if used == 0 {
                // Not one token fits: read a longer chunk.
                want *= 2;
                continue;
            }
            done(pos..pos + used);
            pos += used;
            want = chunk.max(16);
        }
        Ok(())
    }
}

/// `token` lower-cased with `str::to_lowercase`, borrowed when that changes nothing.
pub fn lower(token: &str) -> Cow<'_, str> {
    if token.is_ascii() {
        if token.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(token.to_ascii_lowercase())
        } else {
            Cow::Borrowed(token)
        }
    } else {
        let l = token.to_lowercase();
        if l == token {
            Cow::Borrowed(token)
        } else {
            Cow::Owned(l)
        }
    }
}

/// Characters written without a space before them (closing punctuation).
const CLOSING: &[char] = &[
    '.', ',', ';', ':', '!', '?', ')', ']', '}', '%', '‰', '…', '”', '’', '»', '›', '。', '，',
    '、', '！', '？', '：', '；', '）', '」', '』', '】',
];

/// Characters written without a space after them (opening brackets, quotes and currency signs).
const OPENING: &[char] = &[
    '(', '[', '{', '“', '‘', '«', '‹', '¿', '¡', '$', '£', '€', '¥', '（', '「', '『', '【',
];

/// Writes tokens as text, one at a time: tokens are separated by one space, except
///
/// - none before closing punctuation (`. , ; : ! ? ) ] } % … ” ’ »` and the like),
/// - none after an opening bracket, quote or currency sign (`( [ { “ ‘ « ¿ ¡ $ £ € ¥`),
/// - none around a line break, which starts a new line,
/// - straight quotes `"` and `'` alternate between opening (a space before, none after) and
///   closing (none before, a space after), each kind on its own, starting afresh on every line,
///
/// and a space is always written where leaving it out would join two tokens into one (a word
/// followed by a word or a mark, or a word, an apostrophe or hyphen and a word). So tokenizing the
/// text gives the same tokens again.
#[derive(Clone, Debug)]
pub struct Joiner {
    /// The last two characters written (`[before last, last]`).
    tail: [Option<char>; 2],
    line_start: bool,
    after_opening: bool,
    double_open: bool,
    single_open: bool,
}

impl Default for Joiner {
    fn default() -> Self {
        Self::new()
    }
}

impl Joiner {
    /// A joiner at the start of a line.
    pub fn new() -> Self {
        Joiner {
            tail: [None, None],
            line_start: true,
            after_opening: false,
            double_open: false,
            single_open: false,
        }
    }

    /// Continues at the start of a new line (a line break was written by other means).
    pub fn start_line(&mut self) {
        *self = Joiner::new();
    }

    /// Appends `token` to `out`, with the space before it when one is due.
    pub fn push(&mut self, token: &str, out: &mut String) {
        if token == LINE_BREAK {
            out.push('\n');
            self.start_line();
            return;
        }
        let mut chars = token.chars();
        let Some(first) = chars.next() else {
            return;
        };
        let single = chars.next().is_none();
        let mut space = !self.line_start && !self.after_opening;
        let mut opening = false;
        if single {
            match first {
                '"' | '\'' => {
                    let open = if first == '"' {
                        &mut self.double_open
                    } else {
                        &mut self.single_open
                    };
                    if *open {
                        space = false;
                    } else {
                        opening = true;
                    }
                    *open = !*open;
                }
                c if CLOSING.contains(&c) => space = false,
                c if OPENING.contains(&c) => opening = true,
                _ => {}
            }
        }
        if !space && !self.line_start && self.would_join(first) {
            space = true;
        }
        if space {
            out.push(' ');
            self.tail = [self.tail[1], Some(' ')];
        }
        out.push_str(token);
        for c in token.chars() {
            self.tail = [self.tail[1], Some(c)];
        }
        self.line_start = false;
        self.after_opening = opening;
    }

    /// Whether a token starting with `first`, written right after what was written, would be
    /// read as part of the token before it.
    fn would_join(&self, first: char) -> bool {
        let word = |c: Option<char>| c.is_some_and(continues_word);
        let [before, last] = self.tail;
        (word(last) && continues_word(first))
            || (last.is_some_and(is_joiner) && word(before) && first.is_alphanumeric())
    }
}

/// The text of `tokens` written by a [`Joiner`].
pub fn join<'t>(tokens: impl IntoIterator<Item = &'t str>) -> String {
    let mut joiner = Joiner::new();
    let mut out = String::new();
    for t in tokens {
        joiner.push(t, &mut out);
    }
    out
}

/// A fast hash for word counting (the multiply-rotate hash of rustc's FxHasher): word maps are
/// built from our own corpora, where hash flooding is no concern, and hashing is most of the
/// cost of a counting pass.
#[derive(Clone, Copy, Debug, Default)]
pub struct FxBuildHasher;

/// The hasher of [`FxBuildHasher`].
#[derive(Clone, Copy, Debug, Default)]
pub struct FxHasher(u64);

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.0.rotate_left(26)
    }
}

impl BuildHasher for FxBuildHasher {
    type Hasher = FxHasher;
    fn build_hasher(&self) -> FxHasher {
        FxHasher(0)
    }
}

/// A map from words, hashed with [`FxBuildHasher`].
pub type WordMap<V> = HashMap<Box<str>, V, FxBuildHasher>;

/// The default bound on distinct words held while counting (see [`WordCounts`]).
pub const MAX_DISTINCT_WORDS: usize = 1 << 22;

/// Occurrences of every word of a text, counted one token at a time (lower-cased first when
/// `lowercase` is set).
///
/// The counts are exact while there are at most [`MAX_DISTINCT_WORDS`] distinct words. When a new
/// word finds no room, memory stays bounded: the words with the lowest counts so far are dropped
/// (all of those at the count where the cut falls) until at most three quarters of the room is
/// taken, and a dropped word seen again counts from zero. So only a word that was among the
/// rarest at some point can come out low, and the most frequent words of a large text come out
/// exact. Counting is deterministic: the same text gives the same counts on every machine.
#[derive(Clone, Debug)]
pub struct WordCounts {
    counts: WordMap<u64>,
    tokens: u64,
    lowercase: bool,
    limit: usize,
    /// The highest count of a word dropped to make room (0: none ever).
    dropped_below: u64,
}

impl WordCounts {
    /// Empty counts.
    pub fn new(lowercase: bool) -> Self {
        Self::with_limit(lowercase, MAX_DISTINCT_WORDS)
    }

    /// Empty counts that hold at most `limit` distinct words (see the type's documentation).
    pub fn with_limit(lowercase: bool, limit: usize) -> Self {
        WordCounts {
            counts: WordMap::default(),
            tokens: 0,
            lowercase,
            limit: limit.max(4),
            dropped_below: 0,
        }
    }

    /// Counts one token.
    pub fn add(&mut self, token: &str) {
        self.tokens += 1;
        let token = if self.lowercase {
            lower(token)
        } else {
            Cow::Borrowed(token)
        };
        if let Some(n) = self.counts.get_mut(&*token) {
            *n += 1;
            return;
        }
        if self.counts.len() >= self.limit {
            self.shrink();
        }
        self.counts.insert(token.into(), 1);
    }

    fn shrink(&mut self) {
        let keep = self.limit - self.limit / 4;
        let mut counts: Vec<u64> = self.counts.values().copied().collect();
        // The (keep + 1)-th highest count: keeping the words above it keeps at most `keep`.
        let (_, &mut floor, _) = counts.select_nth_unstable_by(keep, |a, b| b.cmp(a));
        self.counts.retain(|_, n| *n > floor);
        self.dropped_below = self.dropped_below.max(floor);
    }

    /// Tokens counted.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// How often `word` was counted (0 for a word never seen, or dropped).
    pub fn count(&self, word: &str) -> u64 {
        self.counts.get(word).copied().unwrap_or(0)
    }

    /// Distinct words held.
    pub fn distinct(&self) -> usize {
        self.counts.len()
    }

    /// Whether lower-cased tokens were counted.
    pub fn lowercase(&self) -> bool {
        self.lowercase
    }

    /// Whether words were dropped to bound memory (so counts of rare words are low).
    pub fn dropped(&self) -> bool {
        self.dropped_below > 0
    }

    /// The words counted at least `min_count` times, most frequent first, ties by the word's
    /// text in code point order, at most `max` of them.
    pub fn most_frequent(&self, max: usize, min_count: u64) -> Vec<String> {
        let mut words: Vec<(&str, u64)> = self
            .counts
            .iter()
            .filter(|(_, n)| **n >= min_count)
            .map(|(w, n)| (&**w, *n))
            .collect();
        let order = |a: &(&str, u64), b: &(&str, u64)| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0));
        if words.len() > max && max > 0 {
            words.select_nth_unstable_by(max - 1, order);
        }
        words.truncate(max);
        words.sort_unstable_by(order);
        words.into_iter().map(|(w, _)| w.to_string()).collect()
    }
}

/// Maps word tokens to the ids of a vocabulary's words.
#[derive(Clone, Debug)]
pub struct WordEncoder {
    ids: WordMap<u32>,
    lowercase: bool,
}

impl WordEncoder {
    /// The encoder of `words` (id i for `words[i]`), lower-casing tokens first when `lowercase`.
    pub fn new(words: &[String], lowercase: bool) -> Self {
        let mut ids = WordMap::default();
        ids.reserve(words.len());
        for (i, w) in words.iter().enumerate() {
            ids.entry(w.as_str().into()).or_insert(i as u32);
        }
        WordEncoder { ids, lowercase }
    }

    /// The id of `token`, or `None` when the vocabulary lacks it.
    pub fn id(&self, token: &str) -> Option<u32> {
        if self.lowercase {
            self.ids.get(&*lower(token)).copied()
        } else {
            self.ids.get(token).copied()
        }
    }
}
