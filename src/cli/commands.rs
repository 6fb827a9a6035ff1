//! The commands behind the CLI.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use unroll::data::corpus::{CorpusText, DEFAULT_CORPUS, TokenizedCorpus};
use unroll::data::vocab::Vocab;
use unroll::engine::select::create_engine;
use unroll::model::{Checkpoint, InputKind, ModelConfig, OutputKind, ParamLayout, init_params};
use unroll::sample::{SampleOptions, sample as generate};
use unroll::train::optim::{OptimizerConfig, OptimizerKind};
use unroll::train::trainer::{Event, LmSchedule, evaluate, train_lm};

use super::{EvalArgs, SampleArgs, TrainArgs};

/// The corpus text of `--corpus`, or the built-in one.
fn open_corpus(path: Option<&Path>) -> anyhow::Result<(CorpusText, String)> {
    Ok(match path {
        Some(p) => (CorpusText::open(p)?, p.display().to_string()),
        None => (
            CorpusText::Static(DEFAULT_CORPUS),
            "built-in corpus".to_string(),
        ),
    })
}

fn default_lr(kind: OptimizerKind) -> f32 {
    match kind {
        OptimizerKind::Adam | OptimizerKind::Rmsprop => 2e-3,
        OptimizerKind::Momentum => 0.05,
        OptimizerKind::Sgd => 0.5,
        OptimizerKind::Adagrad => 0.1,
    }
}

pub fn train(a: TrainArgs) -> anyhow::Result<()> {
    if !(0.0..1.0).contains(&a.val_frac) {
        bail!("--val-frac {} must be in [0, 1)", a.val_frac);
    }
    let (text, name) = open_corpus(a.corpus.as_deref())?;
    let text = text.text(&name)?;
    let init = match &a.init {
        Some(p) => Some(Checkpoint::load(p)?),
        None => None,
    };
    // The vocabulary comes from the initial checkpoint when there is one, else from the corpus.
    let vocab = init.as_ref().and_then(|c| c.vocab.clone());
    let corpus = TokenizedCorpus::from_text(text, vocab);
    if corpus.unknown > 0 {
        eprintln!(
            "note: {} characters of {name} are not in the --init model's vocabulary and are skipped",
            corpus.unknown
        );
    }
    let vocab_size = corpus.vocab.len();
    let mut config = ModelConfig::language_model(vocab_size, a.hidden, a.layers);
    config.activation = a.activation.into();
    let params = match &init {
        Some(c) => {
            c.check_config(&config, a.init.as_deref().unwrap_or(Path::new("")))?;
            c.params.clone()
        }
        None => init_params(&config, &ParamLayout::new(&config)?, a.seed),
    };
    let n = corpus.tokens.len();
    let n_val = (n as f64 * a.val_frac) as usize;
    let (train_tokens, val_tokens) = corpus.tokens.split_at(n - n_val);
    let kind: OptimizerKind = a.optimizer.into();
    let mut opt = OptimizerConfig::new(kind).with_clip(a.clip);
    opt.momentum = a.momentum;
    opt.weight_decay = a.weight_decay;
    opt.validate()?;
    let lr = a.lr.unwrap_or_else(|| default_lr(kind));
    if !(lr.is_finite() && lr >= 0.0) {
        bail!("--lr {lr} must be a number >= 0");
    }
    let (mut engine, note) = create_engine(a.device.into(), &config, &params)?;
    eprintln!("{note}");
    eprintln!(
        "corpus: {name}, {n} tokens ({} train, {} validation), vocabulary {vocab_size}",
        train_tokens.len(),
        val_tokens.len()
    );
    eprintln!(
        "model: rnn {:?} H={} layers={} ({} parameters); {:?} lr {lr}, clip {}, B={} T={}",
        config.activation,
        config.hidden_size,
        config.layers,
        engine.layout().len(),
        kind,
        a.clip,
        a.batch,
        a.seq_len
    );
    let save = |engine: &mut dyn unroll::engine::Engine, out: &Path| -> anyhow::Result<()> {
        let ckpt = Checkpoint {
            config: config.clone(),
            vocab: Some(corpus.vocab.clone()),
            params: engine.params()?,
        };
        ckpt.save_dir(out)
            .with_context(|| format!("saving the model to {}", out.display()))?;
        Ok(())
    };
    if a.steps == 0 {
        save(engine.as_mut(), &a.out)?;
        eprintln!(
            "wrote the initial model to {}",
            a.out.join("model.safetensors").display()
        );
        return Ok(());
    }
    let schedule = LmSchedule {
        steps: a.steps,
        batch: a.batch,
        seq_len: a.seq_len,
        optimizer: opt,
        lr,
        eval_every: a.eval_every,
        log_every: a.log_every,
    };
    let ln2 = std::f64::consts::LN_2;
    let out = a.out.clone();
    train_lm(
        engine.as_mut(),
        train_tokens,
        val_tokens,
        &schedule,
        |e| match e {
            Event::Train {
                step,
                loss,
                grad_norm,
                tokens_per_sec,
            } => eprintln!(
                "step {step:>6}  loss {loss:.4}  ({:.3} bits/token)  grad norm {grad_norm:.3}  {:.0} tokens/s",
                loss / ln2,
                tokens_per_sec
            ),
            Event::Eval { step, loss } => eprintln!(
                "step {step:>6}  validation loss {loss:.4}  ({:.3} bits/token)",
                loss / ln2
            ),
        },
        |engine, _| save(engine, &out).map_err(|e| unroll::Error::Config(format!("{e:#}"))),
    )?;
    eprintln!("saved {}", a.out.join("model.safetensors").display());
    if a.sample > 0 {
        let prime = corpus.vocab.encode("\n").0;
        let prime = if prime.is_empty() { vec![0] } else { prime };
        let opts = SampleOptions {
            length: a.sample,
            temperature: 0.8,
            top_k: 0,
            seed: a.seed,
        };
        let text = generate(engine.as_mut(), &corpus.vocab, &prime, &opts)?;
        eprintln!("--- sample ---");
        println!("{text}");
    }
    Ok(())
}

fn load_lm(path: &Path) -> anyhow::Result<(Checkpoint, Vocab)> {
    let ckpt = Checkpoint::load(path)?;
    if ckpt.config.input_kind != InputKind::OneHot || ckpt.config.output_kind != OutputKind::Softmax
    {
        bail!(
            "{} is not a language model (one-hot input, softmax output)",
            path.display()
        );
    }
    let vocab = ckpt
        .vocab
        .clone()
        .with_context(|| format!("{} has no vocabulary in its metadata", path.display()))?;
    if vocab.len() != ckpt.config.input_size {
        bail!(
            "{}: vocabulary of {} tokens for a model of {} inputs",
            path.display(),
            vocab.len(),
            ckpt.config.input_size
        );
    }
    Ok((ckpt, vocab))
}

pub fn sample(a: SampleArgs) -> anyhow::Result<()> {
    let (ckpt, vocab) = load_lm(&a.model)?;
    let (mut engine, note) = create_engine(a.device.into(), &ckpt.config, &ckpt.params)?;
    eprintln!("{note}");
    let (prime, unknown) = vocab.encode(&a.prime);
    if unknown > 0 {
        eprintln!(
            "note: {unknown} characters of the prime text are not in the vocabulary and are skipped"
        );
    }
    if prime.is_empty() {
        bail!(
            "the prime text {:?} has no character in the model's vocabulary",
            a.prime
        );
    }
    let opts = SampleOptions {
        length: a.length,
        temperature: a.temperature,
        top_k: a.top_k,
        seed: a.seed,
    };
    let text = generate(engine.as_mut(), &vocab, &prime, &opts)?;
    let mut stdout = std::io::stdout().lock();
    write!(stdout, "{}{text}", a.prime)?;
    writeln!(stdout)?;
    Ok(())
}

pub fn eval(a: EvalArgs) -> anyhow::Result<()> {
    let (ckpt, vocab) = load_lm(&a.model)?;
    let (text, name) = open_corpus(a.corpus.as_deref())?;
    let text = text.text(&name)?;
    let corpus = TokenizedCorpus::from_text(text, Some(vocab));
    let (mut engine, note) = create_engine(a.device.into(), &ckpt.config, &ckpt.params)?;
    eprintln!("{note}");
    let stats = evaluate(engine.as_mut(), &corpus.tokens, a.batch, a.seq_len)?;
    let loss = stats.mean();
    let json = serde_json::json!({
        "loss": loss,
        "bits_per_token": loss / std::f64::consts::LN_2,
        "predictions": stats.count as u64,
        "unknown_chars": corpus.unknown,
    });
    println!("{json}");
    Ok(())
}
