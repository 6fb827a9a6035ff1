//! `unroll sample` and `unroll eval`.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::ranks;
use unroll::data::corpus::{Corpus, Tokens};
use unroll::data::guard::report_truncation_during;
use unroll::data::lines::Lines;
use unroll::data::vocab::Vocab;
use unroll::engine::select::{create_engine, create_engine_nth};
use unroll::model::checkpoint::MODEL_FILE;
use unroll::model::{Checkpoint, InputKind, OutputKind};
use unroll::sample::{SampleOptions, sample as generate};
use unroll::train::trainer::{BEST_FILE, evaluate, evaluate_lm};

use super::sizes::check_evaluation;
use super::{EvalArgs, SampleArgs};
use unroll::memory::Rows;

/// Loads a language model and its vocabulary, checking that they belong together.
fn load_lm(path: &Path) -> anyhow::Result<(Checkpoint, Vocab)> {
    let ckpt = Checkpoint::load(path)?;
    if ckpt.config.input_kind != InputKind::OneHot || ckpt.config.output_kind != OutputKind::Softmax
    {
        bail!(
            "{} is not a language model (one-hot input, softmax output)",
            path.display()
        );
    }
    super::refuse_non_causal(ckpt.config.bidirectional, "score or sample text")?;
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
    // The prime runs as one sequence of at most one token per byte; the sample keeps nothing.
    let prime_steps = Rows {
        rows: 1,
        steps: a.prime.len().max(1),
    };
    let device = a.device.into();
    check_evaluation(
        "sample",
        &ckpt.config,
        prime_steps,
        Vec::new(),
        "--prime",
        device,
    )?;
    let (mut engine, note) = create_engine(a.device.into(), &ckpt.config, &ckpt.params)?;
    eprintln!("{note}");
    let (mut prime, unknown) = vocab.encode(&a.prime);
    if unknown > 0 && vocab.word_list().is_some() {
        eprintln!(
            "note: {unknown} words of the prime text are not in the vocabulary and are read as <unk>"
        );
    } else if unknown > 0 {
        eprintln!(
            "note: {unknown} characters of the prime text are not in the vocabulary and are skipped"
        );
    }
    if let Some(start) = vocab.start_token() {
        // A lines-mode model starts every line with the start token; a newline in the prime
        // is not part of its vocabulary.
        prime.insert(0, start);
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
    // Words are joined with their own spaces: the prime's trailing spaces (not its line
    // breaks, which are tokens) would double the one before the first sampled word.
    let shown = if vocab.word_list().is_some() {
        a.prime
            .trim_end_matches(|c: char| c.is_whitespace() && c != '\n')
    } else {
        &a.prime
    };
    write_sample(engine.as_mut(), &vocab, &prime, &opts, shown)
}

/// Writes `shown`, then the sample of `opts` from `prime` as it is drawn, then a line break, to
/// standard output. Nothing is kept, so any `--length` streams; a reader that closes the pipe
/// (`| head`) ends the sample quietly.
pub fn write_sample(
    engine: &mut dyn unroll::engine::Engine,
    vocab: &Vocab,
    prime: &[u32],
    opts: &SampleOptions,
    shown: &str,
) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    let mut failed = None;
    // After the first failed write, nothing more is written.
    let mut write = |piece: &str| {
        if failed.is_some() {
            return ControlFlow::Break(());
        }
        match stdout
            .write_all(piece.as_bytes())
            .and_then(|_| stdout.flush())
        {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                failed = Some(e);
                ControlFlow::Break(())
            }
        }
    };
    if write(shown).is_continue() {
        generate(engine, vocab, prime, opts, &mut write)?;
    }
    let _ = write("\n");
    match failed {
        Some(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Some(e) => Err(e).context("writing the sample to standard output"),
        None => Ok(()),
    }
}

/// The checkpoint file `eval` scores: `--model` itself, or the directory's model.safetensors
/// (best.safetensors with `--best`).
fn scored_file(a: &EvalArgs) -> anyhow::Result<PathBuf> {
    match (a.model.is_dir(), a.best) {
        (true, best) => Ok(a.model.join(if best { BEST_FILE } else { MODEL_FILE })),
        (false, false) => Ok(a.model.clone()),
        (false, true) => usage!(
            "--best picks best.safetensors of a run directory; {} is not a directory",
            a.model.display()
        ),
    }
}

pub fn eval(a: EvalArgs) -> anyhow::Result<()> {
    // Under an MPI launcher, every process scores its share of every batch; they agree on how
    // the set-up went before the first batch.
    let nth = ranks::group().local_rank();
    let prepared = (|| -> anyhow::Result<_> {
        let file = scored_file(&a)?;
        let (ckpt, vocab) = load_lm(&file)?;
        if a.batch == 0 || a.seq_len == 0 {
            usage!("--batch and --seq-len must be at least 1");
        }
        let eval = Rows {
            rows: a.batch,
            steps: a.seq_len,
        };
        check_evaluation(
            "eval",
            &ckpt.config,
            eval,
            Vec::new(),
            "--batch or --seq-len",
            a.device.into(),
        )?;
        if let Some(path) = &a.corpus {
            // What a truncation of a memory-mapped corpus under the read says (see `guard`).
            let then = "nothing was written: run `unroll eval` again once the corpus is restored";
            report_truncation_during(path, "it was scored", then)?;
        }
        let corpus = Corpus::open(a.corpus.as_deref(), vocab.kind(), Some(vocab))?;
        let (engine, note) = create_engine_nth(a.device.into(), &ckpt.config, &ckpt.params, nth)?;
        eprintln!("{note}");
        Ok((file, ckpt, corpus, engine))
    })();
    let (file, ckpt, corpus, engine) = ranks::agree(ranks::group().as_ref(), prepared)?;
    let mut engine = ranks::shard_rows(engine);
    let stats = if corpus.vocab().start_token().is_some() {
        // A lines-mode model: every line once, framed by its start and end tokens.
        let lines = Lines::new(&corpus, 0..corpus.text_bytes().len(), a.batch, a.seq_len)?;
        evaluate(engine.as_mut(), &lines)?
    } else {
        evaluate_lm(engine.as_mut(), &corpus, a.batch, a.seq_len)?
    };
    let loss = stats.mean();
    if !loss.is_finite() {
        bail!(
            "the loss of {} on this corpus is {loss}: the model's outputs overflow (its largest \
             parameter is {:e}), so it cannot be scored",
            file.display(),
            largest_magnitude(&ckpt.params)
        );
    }
    let mut json = serde_json::json!({
        "model": file.display().to_string(),
        "loss": loss,
        "bits_per_token": loss / std::f64::consts::LN_2,
        "perplexity": loss.exp(),
        "predictions": stats.count as u64,
        "tokens": corpus.len(),
    });
    // Characters a character vocabulary lacks are skipped; words a word vocabulary lacks are
    // tokens, read as <unk>.
    let unknown = if corpus.vocab().word_list().is_some() {
        "unknown_words"
    } else {
        "unknown_chars"
    };
    json[unknown] = corpus.unknown().into();
    println!("{json}");
    Ok(())
}

/// The largest absolute value of `values`.
pub(super) fn largest_magnitude(values: &[f32]) -> f32 {
    values.iter().fold(0.0, |m, v| m.max(v.abs()))
}

pub fn devices() -> anyhow::Result<()> {
    let adapters = unroll::engine::gpu::context::list_adapters();
    if adapters.is_empty() {
        println!("no GPU adapter found: every command runs on the CPU engine");
    }
    for a in &adapters {
        println!("{a}");
    }
    let hardware = adapters.iter().find(|a| !a.software);
    match hardware {
        Some(a) => println!("--device auto takes: {}", a.name),
        None => println!("--device auto takes: the CPU engine (no hardware GPU)"),
    }
    Ok(())
}
