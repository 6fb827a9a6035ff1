//! `unroll train`: resolve the options (or the saved run of `--resume`), open the corpus, build
//! the engine, and drive the trainer with a progress bar, metrics and signal handling.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use unroll::data::corpus::{Corpus, Tokens};
use unroll::data::lines::{Lines, LinesSource};
use unroll::data::lm::{StreamBatches, StreamEval, StreamSource};
use unroll::data::vocab::{Vocab, VocabKind, WordOptions};
use unroll::data::{EvalSet, Sequences, TrainBatches};
use unroll::engine::select::create_engine;
use unroll::engine::{Dropout, Engine};
use unroll::model::{Cell, Checkpoint, ModelConfig, ParamLayout, init_params, set_forget_bias_one};
use unroll::sample::{SampleOptions, sample};
use unroll::train::metrics::Metrics;
use unroll::train::optim::{OptimizerConfig, OptimizerKind};
use unroll::train::schedule::LrSchedule;
use unroll::train::state::{OnNan, Progress, RunSpec, STATE_FILE, TrainState};
use unroll::train::trainer::{Event, Outcome, Trainer};

use super::{OnNanArg, ScheduleArg, SequencesArg, TrainArgs, VocabArg};

const LN2: f64 = std::f64::consts::LN_2;

fn default_lr(kind: OptimizerKind) -> f32 {
    match kind {
        OptimizerKind::Adam | OptimizerKind::Rmsprop => 2e-3,
        OptimizerKind::Momentum => 0.05,
        OptimizerKind::Sgd => 0.5,
        OptimizerKind::Adagrad => 0.1,
    }
}

/// SIGINT and SIGTERM set a flag that the trainer checks after every step. A signal that comes
/// more than [`SIGNAL_GRACE`] after the first ends the process at once (files on disk are only
/// ever replaced by rename, so nothing is torn); signals within it count as the first, because
/// one interruption often arrives twice (`timeout` signals the command and then its whole
/// process group, a terminal's Ctrl-C reaches every process of the group).
pub(super) struct Signals {
    int: Arc<AtomicBool>,
    term: Arc<AtomicBool>,
    pub(super) any: Arc<AtomicBool>,
}

/// How long after the first signal a repeated one still counts as the same interruption.
const SIGNAL_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

impl Signals {
    pub(super) fn install() -> anyhow::Result<Self> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let s = Signals {
            int: Arc::new(AtomicBool::new(false)),
            term: Arc::new(AtomicBool::new(false)),
            any: Arc::new(AtomicBool::new(false)),
        };
        // Nanoseconds after `base` (plus one) of the first signal; 0 before it.
        let first = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let base = std::time::Instant::now();
        for (sig, own, code) in [(SIGINT, &s.int, 130), (SIGTERM, &s.term, 143)] {
            let (own, any, first) = (Arc::clone(own), Arc::clone(&s.any), Arc::clone(&first));
            let handler = move || {
                let now = base.elapsed().as_nanos() as u64 + 1;
                let _ = first.compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst);
                let since = now.saturating_sub(first.load(Ordering::SeqCst));
                if any.swap(true, Ordering::SeqCst) && since > SIGNAL_GRACE.as_nanos() as u64 {
                    signal_hook::low_level::exit(code);
                }
                own.store(true, Ordering::SeqCst);
            };
            // SAFETY: the handler is async-signal-safe: it touches atomics only, reads the
            // monotonic clock (clock_gettime) and exits through signal_hook's `_exit`.
            unsafe { signal_hook::low_level::register(sig, handler) }?;
        }
        Ok(s)
    }

    pub(super) fn exit_code(&self) -> u8 {
        if self.term.load(Ordering::SeqCst) {
            143
        } else {
            130
        }
    }
}

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

    /// The training batches and the validation set of `run` over `corpus`.
    fn sources<'a>(
        &self,
        corpus: &'a Corpus,
        run: &RunSpec,
    ) -> anyhow::Result<(Box<dyn TrainBatches + 'a>, Box<dyn EvalSet + 'a>)> {
        Ok(match self.sequences {
            Sequences::Stream => {
                let n = corpus.len();
                let train = corpus.slice(0, self.train_tokens);
                let val = corpus.slice(self.train_tokens, n - self.train_tokens);
                (
                    Box::new(StreamSource::new(train, run.batch, run.seq_len)?),
                    Box::new(StreamEval {
                        tokens: val,
                        rows: run.batch,
                        steps: run.seq_len,
                    }),
                )
            }
            Sequences::Lines => {
                let end = corpus.text_bytes().len();
                let train = Lines::new(corpus, 0..self.train_bytes, run.batch, run.seq_len)?;
                let val = Lines::new(corpus, self.train_bytes..end, run.batch, run.seq_len)?;
                (Box::new(LinesSource::new(train)?), Box::new(val))
            }
        })
    }
}

/// The word-vocabulary options of `--vocab words` (`None` for other vocabularies). The options
/// are refused without `--vocab words`, and with `--init`, whose model brings its vocabulary.
pub(super) fn word_options(a: &TrainArgs) -> anyhow::Result<Option<WordOptions>> {
    let given: Vec<&str> = [
        ("--max-vocab", a.max_vocab.is_some()),
        ("--min-count", a.min_count.is_some()),
        ("--lowercase", a.lowercase),
    ]
    .iter()
    .filter(|g| g.1)
    .map(|g| g.0)
    .collect();
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

/// The share of `<unk>` tokens in the training and validation parts of a word corpus, as a
/// line for the run summary (`None` for other vocabularies).
fn unknown_summary(corpus: &Corpus, train_tokens: usize) -> Option<String> {
    let words = corpus.vocab().word_list()?;
    let val_tokens = corpus.len() - train_tokens;
    let in_train = corpus.unknown_in(0, train_tokens);
    let in_val = corpus.unknown() - in_train;
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

/// The engine of a fresh run on `--device`, with a zero state of `batch` rows, and the output
/// directory created (only now that every option has been checked).
pub(super) fn fresh_engine(
    a: &TrainArgs,
    config: &ModelConfig,
    params: &[f32],
    batch: usize,
    out: &Path,
) -> anyhow::Result<Box<dyn Engine>> {
    let (mut engine, note) = create_engine(a.device.into(), config, params)?;
    engine.reset_state(batch)?;
    eprintln!("{note}");
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    Ok(engine)
}

/// The divergence policy of fresh options.
pub(super) fn on_nan(a: &TrainArgs) -> OnNan {
    match a.on_nan {
        Some(OnNanArg::Stop) => OnNan::Stop,
        _ => OnNan::ReduceLr,
    }
}

/// The options a resumed run keeps from its start; giving one of them is a contradiction.
pub(super) fn fixed_on_resume(a: &TrainArgs) -> Vec<&'static str> {
    let given = [
        ("--cell", a.cell.is_some()),
        ("--hidden", a.hidden.is_some()),
        ("--layers", a.layers.is_some()),
        ("--dropout", a.dropout.is_some()),
        ("--forget-bias-one", a.forget_bias_one),
        ("--activation", a.activation.is_some()),
        ("--batch", a.batch.is_some()),
        ("--seq-len", a.seq_len.is_some()),
        ("--optimizer", a.optimizer.is_some()),
        ("--lr", a.lr.is_some()),
        ("--lr-schedule", a.lr_schedule.is_some()),
        ("--lr-decay", a.lr_decay.is_some()),
        ("--lr-decay-every", a.lr_decay_every.is_some()),
        ("--lr-min", a.lr_min.is_some()),
        ("--patience", a.patience.is_some()),
        ("--momentum", a.momentum.is_some()),
        ("--weight-decay", a.weight_decay.is_some()),
        ("--clip", a.clip.is_some()),
        ("--epochs", a.epochs.is_some()),
        ("--sequences", a.sequences.is_some()),
        ("--on-nan", a.on_nan.is_some()),
        ("--force", a.force),
    ];
    given.iter().filter(|g| g.1).map(|g| g.0).collect()
}

/// Everything a run needs, from fresh options or a saved state.
struct Setup {
    out: PathBuf,
    corpus: Corpus,
    config: ModelConfig,
    run: RunSpec,
    progress: Progress,
    engine: Box<dyn Engine>,
    resumed: bool,
}

fn holds_a_run(dir: &Path) -> bool {
    dir.join(STATE_FILE).exists() || dir.join(unroll::model::checkpoint::MODEL_FILE).exists()
}

/// The saved run of `--resume DIR`, with the options a resume may change applied.
pub(super) fn load_resumed(a: &TrainArgs, dir: &Path) -> anyhow::Result<(TrainState, RunSpec)> {
    let fixed = fixed_on_resume(a);
    if !fixed.is_empty() {
        usage!(
            "{} cannot be changed when resuming: the run keeps the settings it was started with \
             (only --steps, --eval-every, --checkpoint-every, --log-every, --device and --sample may be given)",
            fixed.join(", ")
        );
    }
    let state = TrainState::load(dir)?;
    let mut run = state.run.clone();
    if let Some(steps) = a.steps {
        run.steps = steps;
    }
    for (field, v) in [
        (&mut run.eval_every, a.eval_every),
        (&mut run.checkpoint_every, a.checkpoint_every),
        (&mut run.log_every, a.log_every),
    ] {
        if let Some(v) = v {
            *field = v;
        }
    }
    Ok((state, run))
}

/// The engine of a resumed run, with its optimizer moments and carried state restored.
pub(super) fn resumed_engine(
    a: &TrainArgs,
    state: &TrainState,
    dir: &Path,
    run: &RunSpec,
) -> anyhow::Result<Box<dyn Engine>> {
    let (mut engine, note) = create_engine(a.device.into(), &state.config, &state.params)?;
    eprintln!("{note}");
    engine.set_optimizer_state(&state.optimizer)?;
    engine.set_state(state.state_rows, &state.state)?;
    eprintln!(
        "resuming {} at step {} of {}",
        dir.display(),
        state.progress.step,
        run.steps
    );
    Ok(engine)
}

fn resume_setup(a: &TrainArgs, dir: &Path) -> anyhow::Result<Setup> {
    let (state, run) = load_resumed(a, dir)?;
    let vocab = state
        .vocab
        .clone()
        .context("the saved run has no vocabulary: it is not a language-model run")?;
    let corpus = Corpus::open(
        run.corpus.as_deref().map(Path::new),
        vocab.kind(),
        Some(vocab),
    )?;
    if corpus.len() != run.corpus_tokens {
        bail!(
            "the corpus {} now has {} tokens, the run was started on {}: it changed since, so the \
             data position cannot be restored",
            run.corpus.as_deref().unwrap_or("(built-in)"),
            corpus.len(),
            run.corpus_tokens
        );
    }
    let engine = resumed_engine(a, &state, dir, &run)?;
    Ok(Setup {
        out: dir.to_path_buf(),
        corpus,
        config: state.config,
        run,
        progress: state.progress,
        engine,
        resumed: true,
    })
}

/// The output directory of a fresh run, refused when it holds another run (without --force).
pub(super) fn fresh_out(a: &TrainArgs) -> anyhow::Result<PathBuf> {
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs/latest"));
    if holds_a_run(&out) && !a.force {
        usage!(
            "{} already holds a run: continue it with --resume {}, choose another --out, or \
             overwrite it with --force",
            out.display(),
            out.display()
        );
    }
    Ok(out)
}

/// The optimizer, learning rate, number of steps and schedule of fresh options; `per_epoch` is
/// the number of batches in an epoch (for --epochs).
pub(super) fn optimization(
    a: &TrainArgs,
    per_epoch: u64,
) -> anyhow::Result<(OptimizerConfig, f32, u64, LrSchedule)> {
    let kind: OptimizerKind = a.optimizer.unwrap_or(super::OptimizerArg::Adam).into();
    let mut opt = OptimizerConfig::new(kind).with_clip(a.clip.unwrap_or(5.0));
    opt.momentum = a.momentum.unwrap_or(0.9);
    opt.weight_decay = a.weight_decay.unwrap_or(0.0);
    opt.validate()?;
    let lr = a.lr.unwrap_or_else(|| default_lr(kind));
    if !(lr.is_finite() && lr >= 0.0) {
        usage!("--lr {lr} must be a number >= 0");
    }
    let steps = match a.epochs {
        Some(e) if !(e.is_finite() && e > 0.0) => usage!("--epochs {e} must be > 0"),
        Some(e) => (e * per_epoch as f64).ceil() as u64,
        None => a.steps.unwrap_or(1500),
    };
    let decay = a.lr_decay.unwrap_or(0.5);
    let schedule = match a.lr_schedule.unwrap_or(ScheduleArg::Constant) {
        ScheduleArg::Constant => LrSchedule::Constant,
        ScheduleArg::Step => LrSchedule::Step {
            every: a.lr_decay_every.unwrap_or(1000),
            factor: decay,
        },
        ScheduleArg::Cosine => LrSchedule::Cosine {
            total: steps.max(1),
            min: a.lr_min.unwrap_or(0.0),
        },
        ScheduleArg::Plateau => LrSchedule::Plateau {
            factor: decay,
            patience: a.patience.unwrap_or(2),
            min: a.lr_min.unwrap_or(0.0),
        },
    };
    schedule.validate()?;
    Ok((opt, lr, steps, schedule))
}

/// Completes `config` (whose sizes are set) with the cell options of fresh options, checks them,
/// and gives the initial parameters (from `init`, or drawn with `seed`) and the dropout.
pub(super) fn fresh_model(
    a: &TrainArgs,
    config: &mut ModelConfig,
    init: Option<(&Checkpoint, &Path)>,
    seed: u64,
) -> anyhow::Result<(Vec<f32>, f32)> {
    config.activation = a.activation.unwrap_or(super::ActivationArg::Tanh).into();
    config.cell = a.cell.unwrap_or(super::CellArg::Rnn).into();
    // An --init model keeps its embedding and tying unless they are given.
    let (init_embed, init_tie) = init.map_or((None, false), |(c, _)| {
        (c.config.embed, c.config.tie_weights)
    });
    config.embed = a.embed.or(init_embed);
    config.tie_weights = a.tie_weights || (a.embed.is_none() && init_tie);
    if a.embed == Some(0) {
        usage!("--embed must be at least 1");
    }
    if config.embed.is_some() && config.input_kind != unroll::model::InputKind::OneHot {
        usage!("--embed needs token input (a language model, or --input class)");
    }
    if config.tie_weights && config.embed != Some(config.hidden_size) {
        usage!(
            "--tie-weights needs --embed equal to --hidden ({})",
            config.hidden_size
        );
    }
    if config.tie_weights
        && (config.output_kind != unroll::model::OutputKind::Softmax
            || config.output_size != config.input_size)
    {
        usage!("--tie-weights needs class outputs over the input tokens");
    }
    config.validate()?;
    let dropout = a.dropout.unwrap_or(0.0);
    Dropout {
        p: dropout,
        seed: 0,
    }
    .validate()?;
    if a.forget_bias_one && config.cell != Cell::Lstm {
        usage!("--forget-bias-one needs --cell lstm");
    }
    if a.forget_bias_one && init.is_some() {
        usage!("--forget-bias-one sets a fresh initialisation; it cannot change an --init model");
    }
    if a.activation.is_some() && config.cell != Cell::Rnn {
        usage!(
            "--activation applies to --cell rnn only (the GRU and LSTM have fixed nonlinearities)"
        );
    }
    let params = match init {
        Some((c, p)) => {
            c.check_config(config, p)?;
            c.params.clone()
        }
        None => {
            let layout = ParamLayout::new(config)?;
            let mut params = init_params(config, &layout, seed);
            if a.forget_bias_one {
                set_forget_bias_one(config, &layout, &mut params)?;
            }
            params
        }
    };
    Ok((params, dropout))
}

fn fresh_setup(a: &TrainArgs) -> anyhow::Result<Setup> {
    let out = fresh_out(a)?;
    let val_frac = a.val_frac.unwrap_or(0.05);
    if !(0.0..1.0).contains(&val_frac) {
        usage!("--val-frac {val_frac} must be in [0, 1)");
    }
    let init = match &a.init {
        Some(p) => Some(Checkpoint::load(p)?),
        None => None,
    };
    let kind = match a.vocab {
        Some(VocabArg::Bytes) => VocabKind::Bytes,
        Some(VocabArg::Words) => VocabKind::Words,
        _ => VocabKind::Chars,
    };
    let sequences = match a.sequences {
        Some(SequencesArg::Lines) => Sequences::Lines,
        _ => Sequences::Stream,
    };
    let vocab = init.as_ref().and_then(|c| c.vocab.clone());
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
            |probe| Ok(Split::of(probe, sequences, val_frac).train_end(probe)),
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
    let mut config = ModelConfig::language_model(
        corpus.vocab().len(),
        a.hidden.unwrap_or(128),
        a.layers.unwrap_or(1),
    );
    let seed = a.seed.unwrap_or(1);
    let checkpoint = init.as_ref().zip(a.init.as_deref());
    let (params, dropout) = fresh_model(a, &mut config, checkpoint, seed)?;
    let (batch, seq_len) = (a.batch.unwrap_or(32), a.seq_len.unwrap_or(64));
    let n = corpus.len();
    let split = Split::of(&corpus, sequences, val_frac);
    let batches_per_epoch = match sequences {
        Sequences::Stream => {
            StreamBatches::new(split.train_tokens, batch, seq_len)?.windows_per_epoch() as u64
        }
        Sequences::Lines => {
            let lines = Lines::new(&corpus, 0..split.train_bytes, batch, seq_len)?;
            if lines.is_empty() {
                bail!("the training split of the corpus has no line");
            }
            let count = corpus.text_bytes()[..split.train_bytes]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            (count.max(1) as u64).div_ceil(batch as u64)
        }
    };
    let (opt, lr, steps, schedule) = optimization(a, batches_per_epoch)?;
    let run = RunSpec {
        steps,
        batch,
        seq_len,
        optimizer: opt,
        lr,
        schedule,
        eval_every: a.eval_every.unwrap_or(250),
        checkpoint_every: a.checkpoint_every.unwrap_or(0),
        log_every: a.log_every.unwrap_or(50),
        seed,
        corpus: a.corpus.as_ref().map(|p| p.display().to_string()),
        corpus_tokens: n,
        val_frac,
        sequences,
        on_nan: on_nan(a),
        dropout,
    };
    let engine = fresh_engine(a, &config, &params, batch, &out)?;
    Ok(Setup {
        out,
        corpus,
        config,
        run,
        progress: Progress::start(),
        engine,
        resumed: false,
    })
}

/// Runs `trainer` with a progress bar on a terminal (log lines otherwise), showing losses with
/// `loss_text` and evaluations with their accuracy, and says where the result is. Returns the
/// exit status when the run was interrupted (after saying how to continue), `None` when it
/// finished.
pub(super) fn run_reported(
    trainer: &mut Trainer,
    train: &mut dyn TrainBatches,
    val: &dyn EvalSet,
    progress: Progress,
    metrics: &mut Metrics,
    loss_text: &dyn Fn(f64) -> String,
    signals: &Signals,
) -> anyhow::Result<Option<u8>> {
    let total = trainer.run.steps;
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new(total).with_position(progress.step);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    });
    let mut val_msg = String::new();
    let show = |line: String| match &bar {
        Some(b) => b.println(line),
        None => eprintln!("{line}"),
    };
    let outcome = trainer.run(train, val, progress, metrics, |e| match *e {
        Event::Train {
            step,
            loss,
            grad_norm,
            tokens_per_sec,
            lr,
        } => {
            let msg = format!(
                "loss {}{val_msg}  {tokens_per_sec:.0} tok/s  lr {lr:.2e}  |g| {grad_norm:.2}",
                loss_text(loss),
            );
            match &bar {
                Some(b) => {
                    b.set_position(step);
                    b.set_message(msg);
                }
                None => eprintln!("step {step:>7}/{total}  {msg}"),
            }
        }
        Event::Eval {
            step,
            loss,
            best,
            accuracy,
        } => {
            let acc = accuracy.map_or(String::new(), |a| format!(", accuracy {:.2}%", 100.0 * a));
            val_msg = format!("  val {}{acc}", loss_text(loss));
            show(format!(
                "step {step:>7}  validation loss {}{acc}{}",
                loss_text(loss),
                if best { "  best so far" } else { "" }
            ));
        }
        Event::Saved { .. } => {}
        Event::Diverged {
            step,
            back_to,
            ref reason,
            lr,
        } => show(format!(
            "step {step:>7}  diverged ({reason}); back to the state of step {back_to}, \
             continuing with learning rate {lr:.3e}"
        )),
    })?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let out = trainer.out.display();
    match outcome {
        Outcome::Interrupted { step } => {
            eprintln!(
                "interrupted after step {step}: model and training state saved in {out}; continue \
                 with `unroll train --resume {out}`"
            );
            Ok(Some(signals.exit_code()))
        }
        Outcome::Finished => {
            eprintln!(
                "saved {}/model.safetensors (best validation model: best.safetensors; \
                 metrics.jsonl, loss.svg)",
                out
            );
            Ok(None)
        }
    }
}

pub fn train(a: TrainArgs) -> anyhow::Result<u8> {
    let signals = Signals::install()?;
    let mut s = match &a.resume {
        Some(dir) => resume_setup(&a, dir)?,
        None => fresh_setup(&a)?,
    };
    let split = Split::of(&s.corpus, s.run.sequences, s.run.val_frac);
    let run = s.run.clone();
    eprintln!(
        "corpus: {}, {} tokens ({} train, {} validation), vocabulary {}, {:?} sequences",
        run.corpus.as_deref().unwrap_or("built-in"),
        s.corpus.len(),
        split.train_tokens,
        s.corpus.len() - split.train_tokens,
        s.corpus.vocab().len(),
        run.sequences
    );
    if let Some(line) = unknown_summary(&s.corpus, split.train_tokens) {
        eprintln!("{line}");
    }
    eprintln!(
        "model: {} H={} layers={} ({} parameters), dropout {}; {:?} lr {} {:?}, clip {}, B={} T={}, {} steps",
        match s.config.cell {
            Cell::Rnn => format!("rnn {:?}", s.config.activation),
            cell => format!("{cell:?}"),
        },
        s.config.hidden_size,
        s.config.layers,
        s.engine.layout().len(),
        run.dropout,
        run.optimizer.kind,
        run.lr,
        run.schedule,
        run.optimizer.clip,
        run.batch,
        run.seq_len,
        run.steps
    );
    let mut metrics = Metrics::open(&s.out, s.resumed.then_some(s.progress.step))?;
    let vocab = s.corpus.vocab().clone();
    let mut trainer = Trainer {
        engine: s.engine.as_mut(),
        vocab: Some(&vocab),
        run: &run,
        out: &s.out,
        interrupt: Some(&signals.any),
    };
    let (mut train_source, val_set) = split.sources(&s.corpus, &run)?;
    let bits = loss_text(&vocab);
    if let Some(code) = run_reported(
        &mut trainer,
        train_source.as_mut(),
        val_set.as_ref(),
        s.progress.clone(),
        &mut metrics,
        &bits,
        &signals,
    )? {
        return Ok(code);
    }
    if a.sample > 0 && run.steps > 0 {
        let prime = match vocab.start_token() {
            Some(start) => vec![start],
            None => vocab.encode("\n").0,
        };
        let prime = if prime.is_empty() { vec![0] } else { prime };
        let opts = SampleOptions {
            length: a.sample,
            temperature: 0.8,
            top_k: 0,
            seed: run.seed,
        };
        eprintln!("--- sample ---");
        let mut text = String::new();
        sample(s.engine.as_mut(), &vocab, &prime, &opts, &mut |piece| {
            text.push_str(piece)
        })?;
        println!("{text}");
    }
    Ok(0)
}
