//! `unroll train`: resolve the options (or the saved run of `--resume`), open the corpus, build
//! the engine, and drive the trainer with a progress bar, metrics and signal handling.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use unroll::data::corpus::{Corpus, Tokens};
use unroll::data::guard::{FileStamp, report_truncation};
use unroll::data::lines::{Lines, LinesSource};
use unroll::data::lm::{StreamBatches, StreamEval, StreamSource};
use unroll::data::vocab::{Vocab, VocabKind, WordOptions};
use unroll::data::{EvalSet, Sequences, TrainBatches};
use unroll::dist;
use unroll::model::checkpoint::MODEL_FILE;
use unroll::model::{Checkpoint, ModelConfig};
use unroll::sample::SampleOptions;
use unroll::train::state::{RunSpec, ValFile};
use unroll::train::trainer::{Validation, eval_rows};

use unroll::train::rundir::RunLock;

use super::commands::write_sample;
use super::ranks::{self, config_json, run_json};
use super::run::{
    Driver, Signals, absolute, check_fresh_out, fresh_engine, load_resumed, resumed_engine,
};
use super::settings::{Settings, fresh_model};
use super::sizes::check_training;
use super::{TrainArgs, VocabArg};

const LN2: f64 = std::f64::consts::LN_2;

/// Where a corpus is cut into its training and validation parts: the last `val_frac` of the
/// tokens (streams), or of the bytes moved to the next line start (lines).
struct Split {
    train_tokens: usize,
    train_bytes: usize,
    sequences: Sequences,
}

impl Split {
    fn of(corpus: &Corpus, sequences: Sequences, val_frac: f64) -> Self {
        match sequences {
            Sequences::Stream => {
                let n = corpus.len();
                Split {
                    train_tokens: n - (n as f64 * val_frac) as usize,
                    train_bytes: 0,
                    sequences,
                }
            }
            Sequences::Lines => {
                let bytes = corpus.text_bytes();
                let mut at = ((bytes.len() as f64) * (1.0 - val_frac)) as usize;
                while at > 0 && at < bytes.len() && bytes[at - 1] != b'\n' {
                    at += 1;
                }
                Split {
                    train_tokens: corpus.count_range(0..at),
                    train_bytes: at,
                    sequences,
                }
            }
        }
    }

    /// The byte where the training part ends: a token start, or the end of the text.
    fn train_end(&self, corpus: &Corpus) -> usize {
        match self.sequences {
            Sequences::Stream => corpus.token_offset(self.train_tokens),
            Sequences::Lines => self.train_bytes,
        }
    }

    /// The training batches and the validation sets of `run` over `corpus` (or over the
    /// validation corpus `val_corpus`, all of it): the one each periodic evaluation scores
    /// (bounded by `run.val_limit`) and the closing one (bounded by `run.final_val_limit`;
    /// `None` when it is the same), in batches of `eval_rows` rows.
    fn sources<'a>(
        &self,
        (corpus, val_corpus): (&'a Corpus, Option<&'a Corpus>),
        run: &RunSpec,
        eval_rows: usize,
    ) -> anyhow::Result<Sources<'a>> {
        let (limit, closing) = (as_limit(run.val_limit), as_limit(run.final_val_limit));
        let closes = |periodic: &dyn EvalSet| closing != limit && !periodic.is_whole();
        Ok(match self.sequences {
            Sequences::Stream => {
                let n = corpus.len();
                let train = corpus.slice(0, self.train_tokens);
                let val_tokens = match val_corpus {
                    Some(v) => v.slice(0, v.len()),
                    None => corpus.slice(self.train_tokens, n - self.train_tokens),
                };
                let val = |limit| {
                    Box::new(StreamEval {
                        tokens: val_tokens,
                        rows: eval_rows,
                        steps: run.seq_len,
                        limit,
                    })
                };
                let periodic = val(limit);
                Sources {
                    train: Box::new(StreamSource::new(train, run.batch, run.seq_len)?),
                    closing: closes(periodic.as_ref()).then(|| val(closing) as Box<dyn EvalSet>),
                    periodic,
                }
            }
            Sequences::Lines => {
                let train = Lines::new(corpus, 0..self.train_bytes, run.batch, run.seq_len)?;
                let (val_text, val_bytes) = match val_corpus {
                    Some(v) => (v, 0..v.text_bytes().len()),
                    None => (corpus, self.train_bytes..corpus.text_bytes().len()),
                };
                let val = |limit| -> anyhow::Result<Box<dyn EvalSet + 'a>> {
                    let lines = Lines::new(val_text, val_bytes.clone(), eval_rows, run.seq_len)?;
                    Ok(Box::new(lines.spread(limit)))
                };
                let periodic = val(limit)?;
                Sources {
                    train: Box::new(LinesSource::new(train)?),
                    closing: match closes(periodic.as_ref()) {
                        true => Some(val(closing)?),
                        false => None,
                    },
                    periodic,
                }
            }
        })
    }
}

/// The training batches and validation sets of a language-model run.
struct Sources<'a> {
    train: Box<dyn TrainBatches + 'a>,
    periodic: Box<dyn EvalSet + 'a>,
    closing: Option<Box<dyn EvalSet + 'a>>,
}

/// A bound of a run's settings as a number of items (`None`: all).
pub(super) fn as_limit(bound: Option<u64>) -> Option<usize> {
    bound.map(|l| usize::try_from(l).unwrap_or(usize::MAX))
}

/// The word-vocabulary options of `--vocab words` (`None` for other vocabularies). The options
/// are refused without `--vocab words`, and with `--init`, whose model brings its vocabulary.
pub(super) fn word_options(a: &TrainArgs) -> anyhow::Result<Option<WordOptions>> {
    let given = a.given.flags(&["max_vocab", "min_count", "lowercase"]);
    if a.vocab != Some(VocabArg::Words) {
        if !given.is_empty() {
            let verb = if given.len() == 1 { "applies" } else { "apply" };
            usage!("{} {verb} only with --vocab words", given.join(", "));
        }
        return Ok(None);
    }
    if a.init.is_some() && !given.is_empty() {
        usage!(
            "{} cannot be used with --init: the run keeps the vocabulary of the --init model",
            given.join(", ")
        );
    }
    let options = WordOptions {
        max_vocab: a.max_vocab.unwrap_or(WordOptions::default().max_vocab),
        min_count: a.min_count.unwrap_or(WordOptions::default().min_count),
        lowercase: a.lowercase,
    };
    options.validate()?;
    Ok(Some(options))
}

/// The share of `<unk>` tokens in the training and validation parts of a word corpus (the
/// validation corpus, when there is one), as a line for the run summary (`None` for other
/// vocabularies).
fn unknown_summary(corpus: &Corpus, val: Option<&Corpus>, train_tokens: usize) -> Option<String> {
    let words = corpus.vocab().word_list()?;
    let in_train = corpus.unknown_in(0, train_tokens);
    let (val_tokens, in_val) = match val {
        Some(v) => (v.len(), v.unknown()),
        None => (corpus.len() - train_tokens, corpus.unknown() - in_train),
    };
    let share = |n: usize, of: usize| 100.0 * n as f64 / of.max(1) as f64;
    Some(format!(
        "words: <unk> and {} words{}; <unk> is {:.2}% of the training tokens ({in_train}) and \
         {:.2}% of the validation tokens ({in_val})",
        words.len() - 1,
        if corpus.vocab().lowercase() {
            ", lower-cased"
        } else {
            ""
        },
        share(in_train, train_tokens),
        share(in_val, val_tokens),
    ))
}

/// The loss as the log shows it: nats and bits per token, and the perplexity for word models.
fn loss_text(vocab: &Vocab) -> impl Fn(f64) -> String {
    let words = vocab.word_list().is_some();
    move |loss: f64| {
        if words {
            format!(
                "{loss:.4} ({:.3} bits, perplexity {:.2})",
                loss / LN2,
                loss.exp()
            )
        } else {
            format!("{loss:.4} ({:.3} bits)", loss / LN2)
        }
    }
}

/// Everything a language-model run needs, from fresh options or a saved state.
struct Setup {
    corpus: Corpus,
    /// The validation corpus (`--val-corpus`), read with the corpus's vocabulary.
    val_corpus: Option<Corpus>,
    driver: Driver,
    /// The corpus file as it was before it was opened (`None`: the built-in corpus).
    watch: Option<Watch>,
}

/// A corpus file and its stamp, taken before it was opened.
struct Watch {
    path: PathBuf,
    stamp: FileStamp,
}

impl Watch {
    fn of(path: Option<&Path>) -> anyhow::Result<Option<Watch>> {
        let Some(path) = path else { return Ok(None) };
        Ok(Some(Watch {
            path: path.to_path_buf(),
            stamp: FileStamp::of(path)?,
        }))
    }
}

/// A training source over a memory-mapped corpus that checks the file's stamp before every
/// batch, so a run stops with an error (saving nothing from the changed data) when the corpus
/// is changed under it.
struct Watched<'a> {
    inner: Box<dyn TrainBatches + 'a>,
    watch: Watch,
    dir: PathBuf,
}

impl TrainBatches for Watched<'_> {
    fn next_batch(&mut self) -> unroll::Result<(unroll::engine::Batch, bool)> {
        self.watch.stamp.check(&self.watch.path, &self.dir)?;
        self.inner.next_batch()
    }
    fn position(&self) -> serde_json::Value {
        self.inner.position()
    }
    fn seek(&mut self, position: &serde_json::Value) -> unroll::Result<()> {
        self.inner.seek(position)
    }
    fn epochs_done(&self) -> u64 {
        self.inner.epochs_done()
    }
}

/// The training source of `corpus`, watched when it is memory-mapped from its file (with a
/// message instead of a signal death when the file is truncated under a read).
fn watched<'a>(
    train: Box<dyn TrainBatches + 'a>,
    corpus: &Corpus,
    watch: Option<Watch>,
    dir: &Path,
) -> anyhow::Result<Box<dyn TrainBatches + 'a>> {
    match watch {
        Some(watch) if corpus.is_mapped() => {
            report_truncation(&watch.path, dir)?;
            Ok(Box::new(Watched {
                inner: train,
                watch,
                dir: dir.to_path_buf(),
            }))
        }
        _ => Ok(train),
    }
}

/// Refuses a corpus whose content is not the one the run was started on (same length, other
/// bytes); a run saved before runs kept the fingerprint is told so and keeps it from now on.
fn check_fingerprint(run: &mut RunSpec, corpus: &Corpus, dir: &Path) -> anyhow::Result<()> {
    let now = corpus.fingerprint();
    let name = run.corpus.as_deref().unwrap_or("(built-in)");
    match run.corpus_fingerprint {
        Some(saved) if saved != now => bail!(
            "the corpus {name} changed since the run was started: it has as many tokens but \
             other content (its fingerprint differs), so the run cannot continue on it; restore \
             the corpus, or start a new run from these weights with --init {}",
            dir.join(MODEL_FILE).display()
        ),
        Some(_) => {}
        None => {
            eprintln!(
                "note: {} was saved without a fingerprint of its corpus, so only the corpus's \
                 length is checked on this resume; the run keeps its fingerprint from now on",
                dir.display()
            );
            run.corpus_fingerprint = Some(now);
        }
    }
    Ok(())
}

/// The validation corpus at `path`, read with the training corpus's `vocab`: a word it lacks
/// reads as <unk> (counted in the run summary); a character it lacks is skipped, as `unroll
/// eval` skips it, and said here.
fn open_val_corpus(path: &Path, vocab: &Vocab) -> anyhow::Result<Corpus> {
    let corpus = Corpus::open(Some(path), vocab.kind(), Some(vocab.clone()))?;
    if corpus.len() < 2 {
        bail!(
            "the validation corpus {} has {} tokens in the training corpus's vocabulary: \
             validation needs at least 2 (one prediction)",
            path.display(),
            corpus.len()
        );
    }
    if vocab.kind() != VocabKind::Chars {
        return Ok(corpus);
    }
    // In lines mode the line breaks frame the lines; they are not tokens.
    let breaks = match vocab.start_token() {
        Some(_) => (corpus.text_bytes().iter())
            .filter(|&&b| b == b'\n' || b == b'\r')
            .count(),
        None => 0,
    };
    let skipped = corpus.unknown().saturating_sub(breaks);
    if skipped > 0 {
        eprintln!(
            "note: {skipped} characters of the validation corpus {} are not in the training \
             corpus's vocabulary: they are skipped (neither input nor target), as `unroll eval` \
             skips them",
            path.display()
        );
    }
    Ok(corpus)
}

/// The fingerprint of a validation corpus: its size and content as a run keeps them.
fn val_fingerprint(corpus: &Corpus) -> (usize, u64) {
    (corpus.len(), corpus.fingerprint())
}

/// The validation corpus of a resumed run, refused when it changed since the run started.
fn resumed_val_corpus(run: &RunSpec, vocab: &Vocab) -> anyhow::Result<Option<Corpus>> {
    let Some(file) = &run.val_file else {
        return Ok(None);
    };
    let corpus = open_val_corpus(&file.path(), vocab)?;
    file.check(val_fingerprint(&corpus))?;
    Ok(Some(corpus))
}

fn resume_setup(a: &TrainArgs, dir: &Path, lock: Option<RunLock>) -> anyhow::Result<Setup> {
    let (state, mut run) = load_resumed(a, dir)?;
    let vocab = state
        .vocab
        .clone()
        .context("the saved run has no vocabulary: it is not a language-model run")?;
    let path = run.corpus_path();
    let watch = Watch::of(path.as_deref())?;
    let corpus = Corpus::open(path.as_deref(), vocab.kind(), Some(vocab))?;
    if corpus.len() != run.corpus_tokens {
        bail!(
            "the corpus {} now has {} tokens, the run was started on {}: it changed since, so the \
             data position cannot be restored",
            run.corpus.as_deref().unwrap_or("(built-in)"),
            corpus.len(),
            run.corpus_tokens
        );
    }
    check_fingerprint(&mut run, &corpus, dir)?;
    let val_corpus = resumed_val_corpus(&run, corpus.vocab())?;
    let engine = resumed_engine(a, &state, dir, &run, (run.seq_len, "--seq-len"))?;
    Ok(Setup {
        corpus,
        val_corpus,
        driver: Driver::resumed(dir, run, state.progress, engine, lock),
        watch,
    })
}

/// The corpus of fresh options, with the vocabulary of the `--init` model when there is one.
fn fresh_corpus(a: &TrainArgs, s: &Settings, init: Option<&Checkpoint>) -> anyhow::Result<Corpus> {
    let (kind, sequences) = (s.vocab, s.sequences);
    let vocab = init.and_then(|c| c.vocab.clone());
    if let (Some(v), Some(_)) = (&vocab, a.vocab)
        && v.kind() != kind
    {
        usage!(
            "--vocab {} does not match the --init model, whose vocabulary is of {}",
            format!("{kind:?}").to_lowercase(),
            format!("{:?}", v.kind()).to_lowercase()
        );
    }
    let mut corpus = match (&vocab, word_options(a)?) {
        // A fresh word vocabulary: built from the training part only.
        (None, Some(options)) => Corpus::open_words(
            a.corpus.as_deref(),
            &options,
            sequences == Sequences::Lines,
            |probe| Ok(Split::of(probe, sequences, s.val_frac).train_end(probe)),
        )?,
        _ => Corpus::open(a.corpus.as_deref(), kind, vocab.clone())?,
    };
    if sequences == Sequences::Lines && vocab.is_none() && kind != VocabKind::Words {
        // Line breaks separate the sequences: the vocabulary has line tokens instead.
        let lines_vocab = corpus.vocab().clone().for_lines();
        corpus = Corpus::open(a.corpus.as_deref(), kind, Some(lines_vocab))?;
    }
    if sequences == Sequences::Lines && corpus.vocab().start_token().is_none() {
        usage!("--sequences lines needs a model trained in lines mode for --init");
    }
    if corpus.unknown() > 0 && init.is_some() && corpus.vocab().kind() != VocabKind::Words {
        eprintln!(
            "note: {} characters of the corpus are not in the --init model's vocabulary and are skipped",
            corpus.unknown()
        );
    }
    Ok(corpus)
}

/// The number of batches in a pass over the training part of `corpus`.
fn batches_per_epoch(corpus: &Corpus, split: &Split, s: &Settings) -> anyhow::Result<u64> {
    let (batch, seq_len) = (s.batch, s.seq_len);
    Ok(match s.sequences {
        Sequences::Stream => {
            StreamBatches::new(split.train_tokens, batch, seq_len)?.windows_per_epoch() as u64
        }
        Sequences::Lines => {
            let lines = Lines::new(corpus, 0..split.train_bytes, batch, seq_len)?;
            if lines.is_empty() {
                bail!("the training split of the corpus has no line");
            }
            let count = corpus.text_bytes()[..split.train_bytes]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            (count.max(1) as u64).div_ceil(batch as u64)
        }
    })
}

fn fresh_setup(a: &TrainArgs) -> anyhow::Result<Setup> {
    let s = Settings::of(a);
    super::refuse_non_causal(a.bidirectional, "train on a corpus")?;
    check_fresh_out(a, &s.out)?;
    s.check_val_frac()?;
    let watch = Watch::of(a.corpus.as_deref())?;
    let init = match &a.init {
        Some(p) => Some(Checkpoint::load(p)?),
        None => None,
    };
    let corpus = fresh_corpus(a, &s, init.as_ref())?;
    let mut config =
        ModelConfig::language_model(corpus.vocab().len(), s.model.hidden, s.model.layers);
    let checkpoint = init.as_ref().zip(a.init.as_deref());
    let (rows, device) = ((s.batch, s.seq_len), a.device.into());
    let guard = |c: &ModelConfig| check_training(c, rows, s.seq_len, "--seq-len", false, device);
    let params = fresh_model(&s, &a.given, &mut config, checkpoint, guard)?;
    super::refuse_non_causal(config.bidirectional, "train on a corpus")?;
    let split = Split::of(&corpus, s.sequences, s.val_frac);
    let optimization = s.optimization(batches_per_epoch(&corpus, &split, &s)?)?;
    let path = a.corpus.as_deref().map(absolute);
    let mut run = s.run_spec(optimization, path.as_deref(), corpus.len())?;
    run.corpus_fingerprint = Some(corpus.fingerprint());
    let val_corpus = match &a.val_corpus {
        Some(p) => Some(open_val_corpus(p, corpus.vocab())?),
        None => None,
    };
    if let (Some(p), Some(v)) = (&a.val_corpus, &val_corpus) {
        let (tokens, fingerprint) = val_fingerprint(v);
        run.val_file = Some(ValFile::new(&absolute(p), tokens, fingerprint));
    }
    let engine = fresh_engine(a, &config, &params, (s.batch, s.seq_len))?;
    Ok(Setup {
        corpus,
        val_corpus,
        driver: Driver::fresh(s.out, run, engine),
        watch,
    })
}

/// Says what the run trains on and with what.
fn describe((corpus, val): (&Corpus, Option<&Corpus>), split: &Split, driver: &Driver) {
    let (run, config) = (&driver.run, driver.engine.config());
    let validation = match (val, &run.val_file) {
        (Some(v), Some(file)) => format!("validation: {}, {} tokens", file.path, v.len()),
        _ => format!("{} validation", corpus.len() - split.train_tokens),
    };
    eprintln!(
        "corpus: {}, {} tokens ({} train, {validation}), vocabulary {}, {:?} sequences",
        run.corpus.as_deref().unwrap_or("built-in"),
        corpus.len(),
        split.train_tokens,
        corpus.vocab().len(),
        run.sequences
    );
    if let Some(line) = unknown_summary(corpus, val, split.train_tokens) {
        eprintln!("{line}");
    }
    let edges = match run.edge_dropout() {
        e if e.is_on() => format!(" (embedding {}, output {})", e.embed, e.out),
        _ => String::new(),
    };
    eprintln!(
        "model: {} H={} layers={} ({} parameters), dropout {}{edges}; {:?} lr {} {:?}, clip {}, B={} T={}, {} steps",
        super::cell_name(config),
        config.hidden_size,
        config.layers,
        driver.engine.layout().len(),
        run.dropout,
        run.optimizer.kind,
        run.lr,
        run.schedule,
        run.optimizer.clip,
        run.batch,
        run.seq_len,
        run.steps
    );
}

/// Samples `length` tokens from the trained model, from the start of a line.
fn sample_after(
    engine: &mut dyn unroll::engine::Engine,
    vocab: &Vocab,
    length: usize,
    run: &RunSpec,
) -> anyhow::Result<()> {
    let prime = match vocab.start_token() {
        Some(start) => vec![start],
        None => vocab.encode("\n").0,
    };
    let prime = if prime.is_empty() { vec![0] } else { prime };
    let opts = SampleOptions {
        length,
        temperature: 0.8,
        top_k: 0,
        seed: run.seed,
    };
    eprintln!("--- sample ---");
    write_sample(engine, vocab, &prime, &opts, "")
}

/// `unroll train` of a language model, fresh or `--resume`d.
pub fn train(a: TrainArgs, lock: Option<RunLock>) -> anyhow::Result<u8> {
    let signals = Signals::install()?;
    let setup = match &a.resume {
        Some(dir) => resume_setup(&a, dir, lock),
        None => fresh_setup(&a),
    };
    let Setup {
        corpus,
        val_corpus,
        mut driver,
        watch,
    } = ranks::agree(ranks::group().as_ref(), setup)?;
    let split = Split::of(&corpus, driver.run.sequences, driver.run.val_frac);
    describe((&corpus, val_corpus.as_ref()), &split, &driver);
    let vocab = corpus.vocab().clone();
    let run = driver.run.clone();
    let eval_rows = eval_rows(driver.engine.config(), run.batch, run.seq_len);
    let sources = (|| {
        let mut sources = split.sources((&corpus, val_corpus.as_ref()), &run, eval_rows)?;
        sources.train = watched(sources.train, &corpus, watch, &driver.out)?;
        Ok(sources)
    })();
    let mut sources = ranks::agree(ranks::group().as_ref(), sources)?;
    let val = Validation {
        periodic: sources.periodic.as_ref(),
        closing: sources.closing.as_deref(),
    };
    let vocab_json = vocab.to_json();
    let settings = [
        &run_json(&run),
        &config_json(driver.engine.config()),
        vocab_json.as_bytes(),
    ];
    let mut metrics = driver.start(&a, dist::settings_hash(&settings))?;
    let bits = loss_text(&vocab);
    if let Some(code) = driver.train(
        Some(&vocab),
        sources.train.as_mut(),
        val,
        &mut metrics,
        &bits,
        &signals,
    )? {
        return Ok(code);
    }
    if a.sample > 0 && run.steps > 0 && ranks::group().size() > 1 {
        // Sampling is one sequence: it is not shared among processes.
        eprintln!(
            "sample from the model with `unroll sample --model {}`",
            driver.out.display()
        );
    } else if a.sample > 0 && run.steps > 0 {
        sample_after(driver.engine.as_mut(), &vocab, a.sample, &run)?;
    }
    Ok(0)
}
