//! Generation from a language model: prime text, then one token at a time drawn from the
//! softmax output with a temperature and an optional top-k cut.

use std::ops::ControlFlow;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::data::vocab::Vocab;
use crate::data::words::Joiner;
use crate::engine::{Batch, Engine, Inputs, Targets};
use crate::error::{Error, Result};
use crate::model::{InputKind, OutputKind};

/// How to draw tokens.
#[derive(Clone, Debug)]
pub struct SampleOptions {
    /// Number of tokens to generate after the prime text.
    pub length: usize,
    /// Divides the logits: below 1 sharper, above 1 flatter. Must be > 0.
    pub temperature: f32,
    /// Keep only the k most likely tokens (0: all).
    pub top_k: usize,
    pub seed: u64,
}

/// Draws a token from probabilities `p` with `temperature` and `top_k`.
pub fn draw(p: &[f32], temperature: f32, top_k: usize, rng: &mut ChaCha8Rng) -> u32 {
    // p^(1/temp) renormalised equals softmax(logits / temp).
    let inv = 1.0 / temperature as f64;
    let mut w: Vec<(usize, f64)> = p
        .iter()
        .enumerate()
        .map(|(i, &v)| (i, (v.max(0.0) as f64).powf(inv)))
        .collect();
    if top_k > 0 && top_k < w.len() {
        w.sort_by(|a, b| b.1.total_cmp(&a.1));
        w.truncate(top_k);
    }
    let total: f64 = w.iter().map(|x| x.1).sum();
    if total <= 0.0 || !total.is_finite() {
        return w
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map_or(0, |x| x.0 as u32);
    }
    let mut r = rng.random_range(0.0..total);
    for &(i, v) in &w {
        if r < v {
            return i as u32;
        }
        r -= v;
    }
    w.last().map_or(0, |x| x.0 as u32)
}

/// Turns tokens into text as they come: characters at once, bytes once they form UTF-8, words
/// with the space a [`Joiner`] puts before them.
struct TextStream<'a> {
    vocab: &'a Vocab,
    pending: Vec<u8>,
    /// For a word vocabulary: where the text stands, so the next word gets its space.
    words: Option<Joiner>,
}

impl<'a> TextStream<'a> {
    /// A stream that continues the text of `prime` (already shown).
    fn new(vocab: &'a Vocab, prime: &[u32]) -> Self {
        let words = vocab.word_list().map(|_| {
            let mut joiner = Joiner::new();
            let mut shown = String::new();
            for &tok in prime {
                vocab.decode_word(tok, &mut joiner, &mut shown);
            }
            joiner
        });
        TextStream {
            vocab,
            pending: Vec::new(),
            words,
        }
    }

    fn push(&mut self, tok: u32, out: &mut dyn FnMut(&str)) {
        if let Some(joiner) = &mut self.words {
            let mut piece = String::new();
            self.vocab.decode_word(tok, joiner, &mut piece);
            out(&piece);
            return;
        }
        if self.vocab.chars().is_some()
            || self.vocab.line_tokens && tok >= self.vocab.base_len() as u32
        {
            self.flush(out);
            out(&self.vocab.decode(&[tok]));
            return;
        }
        self.pending.push(tok as u8);
        match std::str::from_utf8(&self.pending) {
            Ok(s) => {
                out(s);
                self.pending.clear();
            }
            Err(e) if e.error_len().is_none() && self.pending.len() < 4 => {}
            Err(_) => self.flush(out),
        }
    }

    fn flush(&mut self, out: &mut dyn FnMut(&str)) {
        if !self.pending.is_empty() {
            out(&String::from_utf8_lossy(&self.pending));
            self.pending.clear();
        }
    }
}

/// How a sample ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sampled {
    /// Tokens generated.
    pub tokens: usize,
    /// The last token generated (`None`: none).
    pub last: Option<u32>,
}

/// Feeds `prime` (at least one token) and generates up to `opts.length` tokens, stopping early
/// at the end-of-line token of a lines-mode vocabulary, or when `out` breaks. Each piece of text
/// is passed to `out` as soon as it is known (not the prime); nothing is kept, so any length
/// runs in the memory of one token. The engine's forwards keep no gradient meanwhile.
pub fn sample(
    engine: &mut dyn Engine,
    vocab: &Vocab,
    prime: &[u32],
    opts: &SampleOptions,
    out: &mut dyn FnMut(&str) -> ControlFlow<()>,
) -> Result<Sampled> {
    engine.set_grad_enabled(false)?;
    let sampled = generate(engine, vocab, prime, opts, out);
    engine.set_grad_enabled(true)?;
    sampled
}

/// [`sample`] on an engine whose forwards keep no gradient.
fn generate(
    engine: &mut dyn Engine,
    vocab: &Vocab,
    prime: &[u32],
    opts: &SampleOptions,
    out: &mut dyn FnMut(&str) -> ControlFlow<()>,
) -> Result<Sampled> {
    let cfg = engine.config().clone();
    if cfg.input_kind != InputKind::OneHot || cfg.output_kind != OutputKind::Softmax {
        return Err(Error::Config(
            "sampling needs a language model (one-hot input, softmax output)".into(),
        ));
    }
    if !(opts.temperature > 0.0 && opts.temperature.is_finite()) {
        return Err(Error::Config(format!(
            "temperature {} must be > 0",
            opts.temperature
        )));
    }
    if prime.is_empty() {
        return Err(Error::Config(
            "the prime text has no token in the model's vocabulary".into(),
        ));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    // Sampling runs the trained model as it is: no dropout.
    engine.set_dropout(None)?;
    engine.reset_state(1)?;
    let v = cfg.output_size;
    // Runs `inputs` forward from the carried state and carries the state on; returns the output
    // probabilities of the last step when `read` (a long prime over a large vocabulary may run
    // its output layer in chunks, which keeps no outputs).
    let step = |engine: &mut dyn Engine, inputs: &[u32], read: bool| -> Result<Vec<f32>> {
        let steps = inputs.len();
        engine.upload_batch(&Batch {
            steps,
            rows: 1,
            inputs: Inputs::Tokens(inputs.to_vec()),
            targets: Targets::Classes(vec![0; steps]),
            mask: None,
        })?;
        engine.forward()?;
        engine.carry_state()?;
        if !read {
            return Ok(Vec::new());
        }
        let out = engine.outputs()?;
        Ok(out[(steps - 1) * v..].to_vec())
    };
    // The prime but its last token, then that token alone, whose outputs start the sample.
    let (last, head) = prime
        .split_last()
        .ok_or_else(|| Error::Config("the prime text is empty".into()))?;
    if !head.is_empty() {
        step(engine, head, false)?;
    }
    let mut probs = step(engine, std::slice::from_ref(last), true)?;
    let mut text = TextStream::new(vocab, prime);
    let mut sampled = Sampled {
        tokens: 0,
        last: None,
    };
    let mut piece = String::new();
    for _ in 0..opts.length {
        let tok = draw(&probs, opts.temperature, opts.top_k, &mut rng);
        sampled.tokens += 1;
        sampled.last = Some(tok);
        piece.clear();
        text.push(tok, &mut |s| piece.push_str(s));
        if !piece.is_empty() && out(&piece).is_break() {
            return Ok(sampled);
        }
        if Some(tok) == vocab.end_token() {
            break;
        }
        probs = step(engine, &[tok], true)?;
    }
    piece.clear();
    text.flush(&mut |s| piece.push_str(s));
    if !piece.is_empty() {
        let _ = out(&piece);
    }
    Ok(sampled)
}
