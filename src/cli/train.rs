//! `unroll train`: resolve the options (or the saved run of `--resume`), open the corpus, build
//! the engine, and drive the trainer with a progress bar, metrics and signal handling.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use unroll::data::corpus::{Corpus, Tokens};
use unroll::data::lm::StreamBatches;
use unroll::data::vocab::VocabKind;
use unroll::engine::select::create_engine;
use unroll::engine::{Dropout, Engine};
use unroll::model::{Cell, Checkpoint, ModelConfig, ParamLayout, init_params, set_forget_bias_one};
use unroll::sample::{SampleOptions, sample};
use unroll::train::metrics::Metrics;
use unroll::train::optim::{OptimizerConfig, OptimizerKind};
use unroll::train::schedule::LrSchedule;
use unroll::train::state::{Progress, RunSpec, STATE_FILE, TrainState};
use unroll::train::trainer::{Event, Outcome, Trainer};

use super::{ScheduleArg, TrainArgs, VocabArg};

const LN2: f64 = std::f64::consts::LN_2;

fn default_lr(kind: OptimizerKind) -> f32 {
    match kind {
        OptimizerKind::Adam | OptimizerKind::Rmsprop => 2e-3,
        OptimizerKind::Momentum => 0.05,
        OptimizerKind::Sgd => 0.5,
        OptimizerKind::Adagrad => 0.1,
    }
}

/// SIGINT and SIGTERM set a flag that the trainer checks after every step; a second signal ends
/// the process at once (files on disk are only ever replaced by rename, so nothing is torn).
struct Signals {
    int: Arc<AtomicBool>,
    term: Arc<AtomicBool>,
    any: Arc<AtomicBool>,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        use signal_hook::flag;
        let s = Signals {
            int: Arc::new(AtomicBool::new(false)),
            term: Arc::new(AtomicBool::new(false)),
            any: Arc::new(AtomicBool::new(false)),
        };
        // The conditional shutdowns are registered first so that they see the flag as it was
        // before this signal set it: only a second signal exits at once.
        flag::register_conditional_shutdown(SIGINT, 130, Arc::clone(&s.any))?;
        flag::register_conditional_shutdown(SIGTERM, 143, Arc::clone(&s.any))?;
        for (sig, f) in [(SIGINT, &s.int), (SIGTERM, &s.term)] {
            flag::register(sig, Arc::clone(f))?;
            flag::register(sig, Arc::clone(&s.any))?;
        }
        Ok(s)
    }

    fn exit_code(&self) -> u8 {
        if self.term.load(Ordering::SeqCst) {
            143
        } else {
            130
        }
    }
}

/// The options a resumed run keeps from its start; giving one of them is a contradiction.
fn fixed_on_resume(a: &TrainArgs) -> Vec<&'static str> {
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

fn resume_setup(a: &TrainArgs, dir: &Path) -> anyhow::Result<Setup> {
    let fixed = fixed_on_resume(a);
    if !fixed.is_empty() {
        bail!(
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
    let corpus = Corpus::open(
        run.corpus.as_deref().map(Path::new),
        state.vocab.kind(),
        Some(state.vocab.clone()),
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

fn fresh_setup(a: &TrainArgs) -> anyhow::Result<Setup> {
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs/latest"));
    if holds_a_run(&out) && !a.force {
        bail!(
            "{} already holds a run: continue it with --resume {}, choose another --out, or \
             overwrite it with --force",
            out.display(),
            out.display()
        );
    }
    let val_frac = a.val_frac.unwrap_or(0.05);
    if !(0.0..1.0).contains(&val_frac) {
        bail!("--val-frac {val_frac} must be in [0, 1)");
    }
    let init = match &a.init {
        Some(p) => Some(Checkpoint::load(p)?),
        None => None,
    };
    let kind = match a.vocab {
        Some(VocabArg::Bytes) => VocabKind::Bytes,
        _ => VocabKind::Chars,
    };
    let vocab = init.as_ref().and_then(|c| c.vocab.clone());
    let corpus = Corpus::open(a.corpus.as_deref(), kind, vocab)?;
    if corpus.unknown() > 0 {
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
    config.activation = a.activation.unwrap_or(super::ActivationArg::Tanh).into();
    config.cell = a.cell.unwrap_or(super::CellArg::Rnn).into();
    config.validate()?;
    let dropout = a.dropout.unwrap_or(0.0);
    Dropout {
        p: dropout,
        seed: 0,
    }
    .validate()?;
    if a.forget_bias_one && config.cell != Cell::Lstm {
        bail!("--forget-bias-one needs --cell lstm");
    }
    if a.forget_bias_one && a.init.is_some() {
        bail!("--forget-bias-one sets a fresh initialisation; it cannot change an --init model");
    }
    if a.activation.is_some() && config.cell != Cell::Rnn {
        bail!(
            "--activation applies to --cell rnn only (the GRU and LSTM have fixed nonlinearities)"
        );
    }
    let seed = a.seed.unwrap_or(1);
    let params = match (&init, &a.init) {
        (Some(c), Some(p)) => {
            c.check_config(&config, p)?;
            c.params.clone()
        }
        _ => {
            let layout = ParamLayout::new(&config)?;
            let mut params = init_params(&config, &layout, seed);
            if a.forget_bias_one {
                set_forget_bias_one(&config, &layout, &mut params)?;
            }
            params
        }
    };
    let kind: OptimizerKind = a.optimizer.unwrap_or(super::OptimizerArg::Adam).into();
    let mut opt = OptimizerConfig::new(kind).with_clip(a.clip.unwrap_or(5.0));
    opt.momentum = a.momentum.unwrap_or(0.9);
    opt.weight_decay = a.weight_decay.unwrap_or(0.0);
    opt.validate()?;
    let lr = a.lr.unwrap_or_else(|| default_lr(kind));
    if !(lr.is_finite() && lr >= 0.0) {
        bail!("--lr {lr} must be a number >= 0");
    }
    let (batch, seq_len) = (a.batch.unwrap_or(32), a.seq_len.unwrap_or(64));
    let n = corpus.len();
    let n_val = (n as f64 * val_frac) as usize;
    let windows = StreamBatches::new(n - n_val, batch, seq_len)?.windows_per_epoch() as u64;
    let steps = match a.epochs {
        Some(e) if !(e.is_finite() && e > 0.0) => bail!("--epochs {e} must be > 0"),
        Some(e) => (e * windows as f64).ceil() as u64,
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
        dropout,
    };
    let (mut engine, note) = create_engine(a.device.into(), &config, &params)?;
    engine.reset_state(batch)?;
    eprintln!("{note}");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
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

pub fn train(a: TrainArgs) -> anyhow::Result<u8> {
    let signals = Signals::install()?;
    let mut s = match &a.resume {
        Some(dir) => resume_setup(&a, dir)?,
        None => fresh_setup(&a)?,
    };
    let n = s.corpus.len();
    let n_val = (n as f64 * s.run.val_frac) as usize;
    let train_tokens = s.corpus.slice(0, n - n_val);
    let val_tokens = s.corpus.slice(n - n_val, n_val);
    let run = s.run.clone();
    eprintln!(
        "corpus: {}, {n} tokens ({} train, {} validation), vocabulary {}",
        run.corpus.as_deref().unwrap_or("built-in"),
        train_tokens.len(),
        val_tokens.len(),
        s.corpus.vocab().len()
    );
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
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new(run.steps).with_position(s.progress.step);
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
    let vocab = s.corpus.vocab().clone();
    let mut trainer = Trainer {
        engine: s.engine.as_mut(),
        vocab: &vocab,
        run: &run,
        out: &s.out,
        interrupt: Some(&signals.any),
    };
    let outcome = trainer.run(&train_tokens, &val_tokens, s.progress.clone(), &mut metrics, |e| match *e {
        Event::Train {
            step,
            loss,
            grad_norm,
            tokens_per_sec,
            lr,
        } => {
            let msg = format!(
                "loss {loss:.4} ({:.3} bits){val_msg}  {:.0} tok/s  lr {lr:.2e}  |g| {grad_norm:.2}",
                loss / LN2,
                tokens_per_sec
            );
            match &bar {
                Some(b) => {
                    b.set_position(step);
                    b.set_message(msg);
                }
                None => eprintln!("step {step:>7}/{}  {msg}", run.steps),
            }
        }
        Event::Eval { step, loss, best } => {
            val_msg = format!("  val {loss:.4} ({:.3} bits)", loss / LN2);
            show(format!(
                "step {step:>7}  validation loss {loss:.4} ({:.3} bits/token){}",
                loss / LN2,
                if best { "  best so far" } else { "" }
            ));
        }
        Event::Saved { .. } => {}
    })?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    match outcome {
        Outcome::Interrupted { step } => {
            eprintln!(
                "interrupted after step {step}: model and training state saved in {}; continue with \
                 `unroll train --resume {}`",
                s.out.display(),
                s.out.display()
            );
            return Ok(signals.exit_code());
        }
        Outcome::Finished => eprintln!(
            "saved {} (best validation model: best.safetensors; metrics.jsonl, loss.svg)",
            s.out.join("model.safetensors").display()
        ),
    }
    if a.sample > 0 && run.steps > 0 {
        let prime = vocab.encode("\n").0;
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
