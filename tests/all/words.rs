//! Word tokens: the tokenizer's rules, joining that gives the same tokens back, context-free
//! decoding from any token start, chunked scans, word vocabularies (cut-offs, ties, `<unk>`,
//! JSON), and word corpora read through the sparse index.

use std::ops::ControlFlow;

use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use unroll::data::EvalSet;
use unroll::data::corpus::{Corpus, CorpusText, INDEX_STRIDE, Tokens};
use unroll::data::lines::Lines;
use unroll::data::vocab::{Vocab, VocabKind, WordOptions};
use unroll::data::words::{MAX_WORD_CHARS, Tokenizer, UNKNOWN, WordCounts, join};
use unroll::engine::{Inputs, Targets};
use unroll::model::{Checkpoint, ModelConfig, ParamLayout, init_params};

use crate::common;

const STREAM: Tokenizer = Tokenizer { line_breaks: true };
const LINES: Tokenizer = Tokenizer { line_breaks: false };

fn tokens(tokenizer: Tokenizer, text: &str) -> Vec<String> {
    tokenizer.tokenize(text, false)
}

fn pick<'a>(rng: &mut ChaCha8Rng, items: &[&'a str]) -> &'a str {
    items[rng.random_range(0..items.len())]
}

/// A random word of `alphabet`'s characters.
fn word_of(rng: &mut ChaCha8Rng, alphabet: &[char], len: std::ops::Range<usize>) -> String {
    let n = rng.random_range(len);
    (0..n)
        .map(|_| alphabet[rng.random_range(0..alphabet.len())])
        .collect()
}

/// Random text that mixes what the tokenizer must handle: words of several scripts, capitals,
/// contractions, hyphens, digits, decomposed accents, stray marks, punctuation and quotes of
/// every kind, emoji, runs longer than a word may be, and every kind of whitespace and line
/// break, blank and empty lines included. Pieces are sometimes glued with no separator.
pub fn random_text(rng: &mut ChaCha8Rng, pieces: usize) -> String {
    let latin: Vec<char> = ('a'..='z').chain('A'..='Z').collect();
    let greek: Vec<char> = "αβγδεζηθικλμνξοπρστυφχψωάέήίόύώΑΒΓΔΣΩ".chars().collect();
    let cyrillic: Vec<char> = "абвгдеёжзийклмнопрстуфхцчшщыьэюяАБВГДЖЯ".chars().collect();
    let cjk: Vec<char> = "東京大学日本語中文字漢あいうえおカタナ".chars().collect();
    let accented: Vec<char> = "éèêëàâäîïôöûüçñøåæœß".chars().collect();
    let digits: Vec<char> = ('0'..='9').collect();
    let punct = [
        ".", ",", ";", ":", "!", "?", "(", ")", "[", "]", "{", "}", "\"", "'", "’", "‘", "“", "”",
        "«", "»", "-", "‐", "—", "–", "…", "%", "$", "€", "£", "#", "&", "*", "/", "\\", "@", "<",
        ">", "=", "+", "_", "~", "|", "^", "¿", "¡", "。", "、", "（", "）",
    ];
    let emoji = [
        "😀",
        "👍",
        "👍🏽",
        "🎉",
        "❤️",
        "👨‍👩‍👧",
        "🇫🇷",
        "\u{301}",
        "\u{200D}",
    ];
    let space = [
        " ", " ", " ", "  ", "\t", "\n", "\n\n", "\r\n", "\r", " \n ", "\u{A0}", "\u{2003}",
        "\n\n\n", "",
    ];
    let mut s = String::new();
    for _ in 0..pieces {
        let piece = match rng.random_range(0..16) {
            0..=3 => word_of(rng, &latin, 1..9),
            4 => word_of(rng, &greek, 1..8),
            5 => word_of(rng, &cyrillic, 1..8),
            6 => word_of(rng, &cjk, 1..5),
            7 => {
                let mut w = word_of(rng, &latin, 1..5);
                w.push_str(&word_of(rng, &accented, 1..3));
                w
            }
            8 => word_of(rng, &digits, 1..6),
            9 => {
                // contractions, hyphenated words, doubled joiners
                let a = word_of(rng, &latin, 1..6);
                let b = word_of(rng, &latin, 1..6);
                let j = pick(rng, &["'", "’", "-", "‐", "--", "''", "-'"]);
                format!("{a}{j}{b}")
            }
            10 => format!(
                "{}e\u{301}{}",
                word_of(rng, &latin, 0..3),
                word_of(rng, &latin, 0..3)
            ),
            11 => "x".repeat(rng.random_range(MAX_WORD_CHARS - 3..MAX_WORD_CHARS * 2 + 3)),
            12 => pick(rng, &emoji).to_string(),
            _ => pick(rng, &punct).to_string(),
        };
        s.push_str(&piece);
        s.push_str(pick(rng, &space));
    }
    s
}

#[test]
fn tokenizer_cuts_hand_written_sentences_as_documented() {
    let cases: [(&str, &[&str]); 10] = [
        (
            "Don't stop: it's a well-known o'clock rule!",
            &[
                "Don't",
                "stop",
                ":",
                "it's",
                "a",
                "well-known",
                "o'clock",
                "rule",
                "!",
            ],
        ),
        (
            "The dogs' toys -- rock--roll 'quoted' (x) $5.00, 50%.",
            &[
                "The", "dogs", "'", "toys", "-", "-", "rock", "-", "-", "roll", "'", "quoted", "'",
                "(", "x", ")", "$", "5", ".", "00", ",", "50", "%", ".",
            ],
        ),
        (
            "Привет, мир! Καλημέρα κόσμε. 東京は大きい 😀👍",
            &[
                "Привет",
                ",",
                "мир",
                "!",
                "Καλημέρα",
                "κόσμε",
                ".",
                "東京は大きい",
                "😀",
                "👍",
            ],
        ),
        (
            "line one\r\nline two\n\n  \t end\r",
            &["line", "one", "\n", "line", "two", "\n", "\n", "end"],
        ),
        (
            "cafe\u{301} naïve \u{301}x It’s ’tis -x x- a-'b",
            &[
                "cafe\u{301}",
                "naïve",
                "\u{301}",
                "x",
                "It’s",
                "’",
                "tis",
                "-",
                "x",
                "x",
                "-",
                "a",
                "-",
                "'",
                "b",
            ],
        ),
        ("", &[]),
        (" \n", &["\n"]),
        ("a\rb", &["a", "b"]),
        (
            "x2-y3 3.14 1,000",
            &["x2-y3", "3", ".", "14", "1", ",", "000"],
        ),
        (
            "\"Hi,\" she said.",
            &["\"", "Hi", ",", "\"", "she", "said", "."],
        ),
    ];
    for (text, want) in cases {
        assert_eq!(tokens(STREAM, text), want, "{text:?}");
    }
    // In lines mode line breaks are whitespace.
    assert_eq!(
        tokens(LINES, "line one\r\nline two\n\nend"),
        ["line", "one", "line", "two", "end"]
    );
    // A run longer than a word may be is cut into pieces of MAX_WORD_CHARS.
    let long = "y".repeat(2 * MAX_WORD_CHARS + 7);
    let want = [
        "y".repeat(MAX_WORD_CHARS),
        "y".repeat(MAX_WORD_CHARS),
        "y".repeat(7),
    ];
    assert_eq!(tokens(STREAM, &long), want);
    // Lower-casing maps tokens after the cut.
    assert_eq!(
        STREAM.tokenize("The ÉCOLE's ΣΟΦΙΑ", true),
        ["the", "école's", "σοφια"]
    );
}

#[test]
fn joined_text_reads_like_prose() {
    let cases = [
        "Hello, world! (He said \"don't\" — twice.) 50% of $5.",
        "The dogs’ toys; [a] {b}: ¿qué? ¡sí!\nNew line, “curly” and 'single' quotes.",
        "Καλημέρα, κόσμε!\n\nПривет.",
    ];
    for text in cases {
        assert_eq!(join(tokens(STREAM, text).iter().map(String::as_str)), text);
    }
}

#[test]
fn joining_then_tokenizing_gives_the_same_tokens() {
    let mut rng = common::rng("join_round_trip");
    for round in 0..300 {
        let pieces = rng.random_range(0..80);
        let text = random_text(&mut rng, pieces);
        for tokenizer in [STREAM, LINES] {
            let toks = tokens(tokenizer, &text);
            assert!(
                toks.iter().all(|t| (t == "\n" && tokenizer.line_breaks)
                    || (!t.is_empty() && !t.chars().any(char::is_whitespace))),
                "tokens hold no whitespace but line breaks: {toks:?}"
            );
            let joined = join(toks.iter().map(String::as_str));
            assert_eq!(
                tokens(tokenizer, &joined),
                toks,
                "round {round}: {text:?} joined as {joined:?}"
            );
            // Joining again changes nothing: the text is canonical.
            assert_eq!(
                join(tokens(tokenizer, &joined).iter().map(String::as_str)),
                joined
            );
        }
    }
}

#[test]
fn tokenizing_from_any_token_start_gives_the_tail_of_the_tokens() {
    let mut rng = common::rng("context_free");
    for _ in 0..60 {
        let pieces = rng.random_range(1..60);
        let text = random_text(&mut rng, pieces);
        for tokenizer in [STREAM, LINES] {
            let all: Vec<(usize, &str)> = tokenizer.tokens(&text).collect();
            for k in 0..all.len() {
                let tail: Vec<(usize, &str)> = tokenizer
                    .tokens(&text[all[k].0..])
                    .map(|(at, t)| (at + all[k].0, t))
                    .collect();
                assert_eq!(tail, all[k..], "from token {k} of {text:?}");
            }
        }
    }
}

#[test]
fn chunked_scans_carry_a_token_cut_by_a_chunk_boundary() {
    let mut rng = common::rng("chunked_scan");
    for _ in 0..40 {
        let pieces = rng.random_range(1..60);
        let text = random_text(&mut rng, pieces);
        let bytes = text.as_bytes();
        for tokenizer in [STREAM, LINES] {
            let want: Vec<(usize, &str)> = tokenizer.tokens(&text).collect();
            for chunk in [1, 2, 3, 5, 8, 13, 64] {
                let mut got = Vec::new();
                let mut released = 0;
                tokenizer
                    .scan(
                        bytes,
                        0..bytes.len(),
                        chunk,
                        &mut |at, t| {
                            got.push((at, t.to_string()));
                            ControlFlow::Continue(())
                        },
                        &mut |r| {
                            assert_eq!(r.start, released, "released ranges are contiguous");
                            released = r.end;
                        },
                    )
                    .unwrap();
                let got: Vec<(usize, &str)> = got.iter().map(|(a, t)| (*a, t.as_str())).collect();
                assert_eq!(got, want, "chunks of {chunk} bytes over {text:?}");
                assert_eq!(released, bytes.len());
            }
        }
    }
    // Text that is not UTF-8 is refused with the offset of the first bad byte.
    let mut bad = b"good words ".to_vec();
    bad.push(0xFF);
    let err = STREAM.scan(
        &bad,
        0..bad.len(),
        4,
        &mut |_, _| ControlFlow::Continue(()),
        &mut |_| {},
    );
    assert_eq!(err, Err(11));
}

/// The vocabulary by the documented rule, written out plainly: `<unk>`, then words with at
/// least `min_count` occurrences by descending count, ties by text, `max - 1` at most.
fn reference_vocab(words: &[String], max: usize, min_count: u64) -> Vec<String> {
    let mut counts = std::collections::BTreeMap::<&str, u64>::new();
    for w in words {
        *counts.entry(w).or_default() += 1;
    }
    let mut v: Vec<(&str, u64)> = counts.into_iter().filter(|c| c.1 >= min_count).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let mut out = vec![UNKNOWN.to_string()];
    out.extend(v.into_iter().take(max - 1).map(|(w, _)| w.to_string()));
    out
}

#[test]
fn word_vocabulary_keeps_the_most_frequent_words_with_ties_broken_by_text() {
    let counted = |text: &str| {
        let mut c = WordCounts::new(false);
        for (_, t) in STREAM.tokens(text) {
            c.add(t);
        }
        c
    };
    let vocab = |c: &WordCounts, max_vocab, min_count| {
        let options = WordOptions {
            max_vocab,
            min_count,
            lowercase: false,
        };
        Vocab::words_from_counts(c, &options, false)
            .unwrap()
            .word_list()
            .unwrap()
            .to_vec()
    };
    let c = counted("b a c b a d b e e");
    assert_eq!(vocab(&c, 4, 1), ["<unk>", "b", "a", "e"]);
    assert_eq!(vocab(&c, 100, 1), ["<unk>", "b", "a", "e", "c", "d"]);
    assert_eq!(vocab(&c, 100, 2), ["<unk>", "b", "a", "e"]);
    assert_eq!(vocab(&c, 100, 3), ["<unk>", "b"]);
    assert_eq!(vocab(&c, 100, 4), ["<unk>"]);
    assert_eq!(vocab(&c, 2, 1), ["<unk>", "b"]);

    let mut rng = common::rng("vocab_cutoffs");
    for _ in 0..20 {
        // Few distinct words and many draws: plenty of ties.
        let distinct: Vec<String> = (0..rng.random_range(1..40))
            .map(|i| format!("w{}", (i * 7919) % 97))
            .collect();
        let words: Vec<String> = (0..rng.random_range(1..400))
            .map(|_| distinct[rng.random_range(0..distinct.len())].clone())
            .collect();
        let c = counted(&words.join(" "));
        let (max, min) = (rng.random_range(2..50), rng.random_range(1..6));
        assert_eq!(vocab(&c, max, min), reference_vocab(&words, max, min));
    }
    // Lines mode leaves out the line-break token and adds start and end tokens.
    let c = counted("a b\na\n\n");
    let options = WordOptions::default();
    let lines = Vocab::words_from_counts(&c, &options, true).unwrap();
    assert_eq!(c.count("\n"), 3);
    assert_eq!(lines.word_list().unwrap(), ["<unk>", "a", "b"]);
    assert_eq!(lines.start_token(), Some(3));
    assert_eq!(lines.end_token(), Some(4));
    assert_eq!(lines.len(), 5);
    // Sizes that cannot work are refused.
    for (max_vocab, min_count) in [(1, 1), (0, 1), (10, 0)] {
        let options = WordOptions {
            max_vocab,
            min_count,
            lowercase: false,
        };
        assert!(Vocab::words_from_counts(&c, &options, false).is_err());
    }
}

#[test]
fn counting_in_bounded_memory_keeps_the_frequent_words() {
    let mut rng = common::rng("bounded_counts");
    // Zipf-like: word i drawn with weight 1 / (i + 1), over many more words than the bound.
    let n_words = 3000;
    let weights: Vec<f64> = (0..n_words).map(|i| 1.0 / (i as f64 + 1.0)).collect();
    let total: f64 = weights.iter().sum();
    let draw = |rng: &mut ChaCha8Rng| {
        let mut r = rng.random_range(0.0..total);
        for (i, w) in weights.iter().enumerate() {
            if r < *w {
                return i;
            }
            r -= w;
        }
        n_words - 1
    };
    let text: Vec<String> = (0..20_000)
        .map(|_| format!("w{}", draw(&mut rng)))
        .collect();
    let (mut exact, mut bounded) = (WordCounts::new(false), WordCounts::with_limit(false, 1000));
    for w in &text {
        exact.add(w);
        bounded.add(w);
    }
    assert!(!exact.dropped());
    assert!(exact.distinct() > 1000);
    assert!(bounded.dropped() && bounded.distinct() <= 1000);
    assert_eq!(exact.tokens(), 20_000);
    assert_eq!(bounded.tokens(), 20_000);
    assert_eq!(bounded.most_frequent(10, 1), exact.most_frequent(10, 1));
    for w in exact.most_frequent(10, 1) {
        assert_eq!(bounded.count(&w), exact.count(&w), "{w}");
    }
}

fn word_vocab(words: &[&str], lowercase: bool) -> Vocab {
    let mut symbols = vec![UNKNOWN.to_string()];
    symbols.extend(words.iter().map(|w| w.to_string()));
    Vocab::words(symbols, lowercase)
}

#[test]
fn unknown_words_read_as_unk_and_are_counted() {
    let vocab = word_vocab(&["the", "cat", ".", "\n"], false);
    let (ids, unknown) = vocab.encode("The cat sat.\nthe cat");
    assert_eq!(ids, [0, 2, 0, 3, 4, 1, 2]);
    assert_eq!(unknown, 2);
    assert_eq!(vocab.decode(&ids), "<unk> cat <unk>.\nthe cat");
    let lower = word_vocab(&["the", "cat", "école"], true);
    let (ids, unknown) = lower.encode("The CAT École DOG");
    assert_eq!((ids, unknown), (vec![1, 2, 3, 0], 1));

    // In a corpus every word is a token: the unknown ones as <unk>, counted per range.
    let text = "the cat sat on the mat . the dog sat\nthe cat";
    let corpus = Corpus::from_text(
        CorpusText::Owned(text.as_bytes().to_vec()),
        "text",
        VocabKind::Words,
        Some(vocab.clone()),
    )
    .unwrap();
    let all = corpus.to_vec();
    assert_eq!(all, [1, 2, 0, 0, 1, 0, 3, 1, 0, 0, 4, 1, 2]);
    assert_eq!(corpus.len(), 13);
    assert_eq!(corpus.unknown(), 5);
    assert_eq!(corpus.unknown_in(0, 4), 2);
    assert_eq!(corpus.unknown_in(4, 9), 3);
}

#[test]
fn word_vocabulary_round_trips_through_json_and_checkpoints_and_old_forms_still_parse() {
    let vocab = word_vocab(&["the", "don't", "\n", "Καλημέρα", "😀", "."], true);
    let json = vocab.to_json();
    assert!(json.contains(r#""kind":"words""#), "{json}");
    assert!(json.contains(r#""symbols":["<unk>","the""#), "{json}");
    assert_eq!(Vocab::from_json(&json).unwrap(), vocab);
    let lines = vocab.clone().for_lines();
    assert_eq!(Vocab::from_json(&lines.to_json()).unwrap(), lines);
    assert!(!lines.word_list().unwrap().contains(&"\n".to_string()));

    // The forms stored by earlier versions parse to the same vocabularies.
    let chars =
        Vocab::from_json(r#"{"kind":"chars","symbols":["\n"," ","a"],"line_tokens":false}"#);
    assert_eq!(chars.unwrap(), Vocab::from_symbols(vec!['\n', ' ', 'a']));
    assert_eq!(
        Vocab::from_json(r#"{"kind":"bytes"}"#).unwrap(),
        Vocab::bytes()
    );
    assert_eq!(
        Vocab::from_json(r#"{"kind":"bytes","line_tokens":true}"#).unwrap(),
        Vocab::bytes().with_line_tokens()
    );
    assert_eq!(
        Vocab::from_symbols(vec!['a', 'b']).to_json(),
        r#"{"kind":"chars","symbols":["a","b"],"line_tokens":false}"#
    );
    assert_eq!(
        Vocab::bytes().to_json(),
        r#"{"kind":"bytes","line_tokens":false}"#
    );

    // Malformed word vocabularies are refused.
    for bad in [
        r#"{"kind":"words","symbols":["the","<unk>"]}"#,
        r#"{"kind":"words","symbols":[]}"#,
        r#"{"kind":"words","symbols":["<unk>","a","a"]}"#,
        r#"{"kind":"words","symbols":["<unk>","two words"]}"#,
        r#"{"kind":"words","symbols":["<unk>",""]}"#,
        r#"{"kind":"words","symbols":["<unk>","\n"],"line_tokens":true}"#,
    ] {
        assert!(Vocab::from_json(bad).is_err(), "{bad}");
    }

    // A checkpoint keeps the word vocabulary.
    let dir = tempfile::tempdir().unwrap();
    let config = ModelConfig::language_model(vocab.len(), 8, 1);
    let ckpt = Checkpoint {
        params: init_params(&config, &ParamLayout::new(&config).unwrap(), 3),
        config,
        vocab: Some(vocab.clone()),
    };
    ckpt.save_dir(dir.path()).unwrap();
    assert_eq!(Checkpoint::load(dir.path()).unwrap(), ckpt);
}

/// A corpus of random text with a word vocabulary built from its first `train` tokens.
fn random_word_corpus(
    rng: &mut ChaCha8Rng,
    pieces: usize,
    options: &WordOptions,
) -> (String, Corpus) {
    let text = random_text(rng, pieces);
    let train = rng.random_range(0..=STREAM.tokens(&text).count());
    let corpus = Corpus::build_words(
        CorpusText::Owned(text.as_bytes().to_vec()),
        "random",
        options,
        false,
        |probe| Ok(probe.token_offset(train)),
    )
    .unwrap();
    (text, corpus)
}

#[test]
fn word_corpus_reads_the_same_tokens_through_the_sparse_index() {
    let mut rng = common::rng("word_corpus");
    let options = WordOptions {
        max_vocab: rng.random_range(2..300),
        min_count: rng.random_range(1..3),
        lowercase: rng.random_bool(0.5),
    };
    let (text, corpus) = random_word_corpus(&mut rng, 6000, &options);
    let vocab = corpus.vocab();
    let all: Vec<(usize, &str)> = STREAM.tokens(&text).collect();
    assert!(all.len() > 4 * INDEX_STRIDE, "{} tokens", all.len());
    let (want, unknown) = vocab.encode(&text);
    assert_eq!(corpus.len(), all.len());
    assert_eq!(corpus.unknown(), unknown);
    assert_eq!(corpus.to_vec(), want);
    for _ in 0..300 {
        let start = rng.random_range(0..all.len());
        let count = rng.random_range(0..=(all.len() - start).min(3 * INDEX_STRIDE));
        let mut got = Vec::new();
        corpus.read(start, count, &mut got);
        assert_eq!(got, want[start..start + count], "read({start}, {count})");
        let unk = want[start..start + count]
            .iter()
            .filter(|&&id| id == 0)
            .count();
        assert_eq!(
            corpus.unknown_in(start, count),
            unk,
            "unknown_in({start}, {count})"
        );
        assert_eq!(corpus.token_offset(start), all[start].0);
        // Byte ranges between token starts hold those tokens.
        let end = if start + count == all.len() {
            text.len()
        } else {
            all[start + count].0
        };
        let mut ids = Vec::new();
        corpus.encode_range(all[start].0..end, &mut ids);
        assert_eq!(ids, want[start..start + count]);
        assert_eq!(corpus.count_range(all[start].0..end), count);
    }
    assert_eq!(corpus.token_offset(all.len()), text.len());
}

#[test]
fn word_vocabulary_is_built_from_the_training_part_only() {
    let text = "apple pear apple plum\nkiwi kiwi kiwi mango";
    let train_tokens = 5; // up to and including the line break
    let corpus = Corpus::build_words(
        CorpusText::Owned(text.as_bytes().to_vec()),
        "fruit",
        &WordOptions::default(),
        false,
        |probe| {
            assert_eq!(probe.len(), 9);
            Ok(probe.token_offset(train_tokens))
        },
    )
    .unwrap();
    assert_eq!(
        corpus.vocab().word_list().unwrap(),
        ["<unk>", "apple", "\n", "pear", "plum"]
    );
    assert_eq!(corpus.to_vec(), [1, 3, 1, 4, 2, 0, 0, 0, 0]);
    assert_eq!(corpus.unknown_in(0, train_tokens), 0);
    assert_eq!(corpus.unknown_in(train_tokens, 4), 4);
    // Lines mode: no line-break token; start and end tokens follow the words.
    let lines = Corpus::build_words(
        CorpusText::Owned(text.as_bytes().to_vec()),
        "fruit",
        &WordOptions {
            lowercase: true,
            ..WordOptions::default()
        },
        true,
        |probe| {
            assert_eq!(probe.len(), 8);
            Ok(text.find('\n').unwrap() + 1)
        },
    )
    .unwrap();
    let vocab = lines.vocab();
    assert_eq!(
        vocab.word_list().unwrap(),
        ["<unk>", "apple", "pear", "plum"]
    );
    assert!(vocab.lowercase());
    assert_eq!((vocab.start_token(), vocab.end_token()), (Some(4), Some(5)));
}

#[test]
fn lines_of_words_are_framed_by_start_and_end_tokens() {
    let mut rng = common::rng("word_lines");
    let text = random_text(&mut rng, 400);
    let corpus = Corpus::build_words(
        CorpusText::Owned(text.as_bytes().to_vec()),
        "lines",
        &WordOptions {
            max_vocab: 50,
            ..WordOptions::default()
        },
        true,
        |probe| Ok(probe.text_bytes().len()),
    )
    .unwrap();
    let vocab = corpus.vocab().clone();
    let (start, end) = (vocab.start_token().unwrap(), vocab.end_token().unwrap());
    // Every line, framed, in order of the streams: what the batches must hold.
    let mut want: Vec<Vec<u32>> = text
        .split('\n')
        .map(|line| {
            let mut ids = vec![start];
            ids.extend(vocab.encode(line).0);
            ids.push(end);
            ids
        })
        .collect();
    if text.ends_with('\n') {
        want.pop();
    }
    let steps = 1000;
    let lines = Lines::new(&corpus, 0..text.len(), 1, steps).unwrap();
    let mut got = Vec::new();
    for batch in lines.batches().unwrap() {
        let (Inputs::Tokens(x), Targets::Classes(y)) = (&batch.inputs, &batch.targets) else {
            panic!("token batch")
        };
        let mask = batch.mask.as_ref().unwrap();
        let n = mask.iter().filter(|&&m| m == 1.0).count();
        let mut seq = x[..n].to_vec();
        seq.push(y[n - 1]);
        assert_eq!(&y[..n - 1], &x[1..n], "targets are the next inputs");
        got.push(seq);
    }
    assert_eq!(got, want);
    assert!(got.iter().flatten().all(|&id| (id as usize) < vocab.len()));
}

#[test]
fn token_counts_of_byte_ranges_agree_with_a_full_decode() {
    let mut rng = common::rng("count_range");
    let text = random_text(&mut rng, 3000);
    // Characters: a vocabulary that lacks some of them (those are skipped, not counted).
    let third = (0..=text.len() / 3)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap();
    let vocab = Vocab::chars_of(&text[..third]);
    let chars = Corpus::from_text(
        CorpusText::Owned(text.as_bytes().to_vec()),
        "chars",
        VocabKind::Chars,
        Some(vocab.clone()),
    )
    .unwrap();
    assert!(chars.len() > 3 * INDEX_STRIDE);
    let bytes = Corpus::from_string(text.clone(), VocabKind::Bytes).unwrap();
    let bounds: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .chain([text.len()])
        .collect();
    for _ in 0..200 {
        let mut ends = [
            bounds[rng.random_range(0..bounds.len())],
            bounds[rng.random_range(0..bounds.len())],
        ];
        ends.sort();
        let (a, b) = (ends[0], ends[1]);
        assert_eq!(
            chars.count_range(a..b),
            vocab.encode(&text[a..b]).0.len(),
            "{a}..{b}"
        );
        assert_eq!(bytes.count_range(a..b), b - a);
    }
}
