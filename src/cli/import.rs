//! `unroll import`: a model trained in PyTorch (a `state_dict()` saved with safetensors) becomes
//! a run directory holding `model.safetensors`, which `eval`, `sample`, `predict` and
//! `train --init` read like any checkpoint unroll wrote.

use std::path::PathBuf;

use clap::Args;
use unroll::data::corpus::Corpus;
use unroll::data::pairs::{Expect, Pairs, PairsFormat};
use unroll::data::vocab::{Vocab, VocabKind, WordOptions};
use unroll::model::Checkpoint;
use unroll::model::import::{Ends, Inferred, StateDict};
use unroll::model::{Activation, InputKind, ModelConfig, OutputKind};
use unroll::train::rundir::{RunLock, remove_run_files, run_files_in};

use super::pairs::{InputArg, OutputArg};
use super::{ActivationArg, VocabArg};

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// A PyTorch `model.state_dict()` saved with `safetensors.torch.save_file`, its modules
    /// named `rnn` (nn.RNN, nn.GRU or nn.LSTM), `out` (nn.Linear) and, for token inputs read
    /// through an embedding, `embed` (nn.Embedding). F64, F16 and BF16 tensors are converted to
    /// f32.
    #[arg(long, value_name = "FILE")]
    pub state_dict: PathBuf,
    /// Directory to write model.safetensors into (created when missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Replace the files of a run that --out already holds.
    #[arg(long)]
    pub force: bool,
    /// A language model: the text whose vocabulary the model reads and predicts, built as
    /// `unroll train` builds it from the same file and --vocab (the model's token ids must be
    /// that vocabulary's); without it, the built-in corpus.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["pairs", "input", "output"])]
    pub corpus: Option<PathBuf>,
    /// A language model's token vocabulary (with --corpus, or alone for the built-in corpus).
    #[arg(long, value_enum, conflicts_with_all = ["pairs", "input", "output"])]
    pub vocab: Option<VocabArg>,
    /// A sequence model: a pairs file the model reads as `train --pairs` would, with --input
    /// and --output; its sizes must be the model's.
    #[arg(long, value_name = "FILE")]
    pub pairs: Option<PathBuf>,
    /// A sequence model: what the x steps hold (the sizes come from the tensors).
    #[arg(long, value_enum)]
    pub input: Option<InputArg>,
    /// A sequence model: what the y steps hold, which fixes the output nonlinearity.
    #[arg(long, value_enum)]
    pub output: Option<OutputArg>,
    /// With --input class: the number of input classes, checked against the model's.
    #[arg(long)]
    pub input_classes: Option<usize>,
    /// With --output class: the number of output classes, checked against the model's.
    #[arg(long)]
    pub output_classes: Option<usize>,
    /// The plain RNN cell's nonlinearity (PyTorch's `nonlinearity=`), which the tensors do not
    /// record.
    #[arg(long, value_enum, default_value_t = ActivationArg::Tanh)]
    pub activation: ActivationArg,
}

/// How the imported model reads its inputs and writes its outputs.
enum Kind {
    /// A language model over a vocabulary.
    Language(Vocab),
    /// A sequence model whose x and y steps are read as a pairs file's.
    Sequence {
        input: InputKind,
        output: OutputKind,
    },
}

/// The kind of model the options describe (the vocabulary is built later, once the model is
/// known to fit one).
fn wanted(a: &ImportArgs) -> anyhow::Result<Option<(InputKind, OutputKind)>> {
    if a.corpus.is_some() || a.vocab.is_some() {
        return Ok(None);
    }
    let (Some(input), Some(output)) = (a.input, a.output) else {
        usage!(
            "import needs to know how the model reads and writes: --corpus FILE and/or --vocab \
             chars|bytes|words for a language model, or --input real|class and --output \
             real|class|binary (with --pairs FILE to check them against a pairs file) for a \
             sequence model"
        );
    };
    let input = match input {
        InputArg::Real => InputKind::Dense,
        InputArg::Class => InputKind::OneHot,
    };
    let output = match output {
        OutputArg::Real => OutputKind::Identity,
        OutputArg::Class => OutputKind::Softmax,
        OutputArg::Binary => OutputKind::Sigmoid,
    };
    for (given, kind, option) in [
        (
            a.input_classes,
            input == InputKind::OneHot,
            "--input-classes",
        ),
        (
            a.output_classes,
            output == OutputKind::Softmax,
            "--output-classes",
        ),
    ] {
        if given.is_some() && !kind {
            usage!("{option} applies only to class ids");
        }
    }
    Ok(Some((input, output)))
}

/// Refuses an --out that a live run holds, or that holds a run's files without --force.
fn check_out(a: &ImportArgs) -> anyhow::Result<()> {
    RunLock::check_free(&a.out)?;
    refuse_a_run(a)
}

/// Refuses an --out that holds a run's files, without --force.
fn refuse_a_run(a: &ImportArgs) -> anyhow::Result<()> {
    let found = run_files_in(&a.out);
    if !found.is_empty() && !a.force {
        usage!(
            "{} already holds a run ({}): choose another --out, or replace these files with \
             --force",
            a.out.display(),
            found.join(", ")
        );
    }
    Ok(())
}

/// The vocabulary `train` builds from --corpus (or the built-in corpus) with --vocab: the whole
/// file's, as one stream.
fn vocabulary(a: &ImportArgs) -> anyhow::Result<Vocab> {
    let path = a.corpus.as_deref();
    let corpus = match a.vocab.unwrap_or(super::options::VOCAB) {
        VocabArg::Chars => Corpus::open(path, VocabKind::Chars, None)?,
        VocabArg::Bytes => Corpus::open(path, VocabKind::Bytes, None)?,
        VocabArg::Words => Corpus::open_words(path, &WordOptions::default(), false, |c| {
            Ok(c.text_bytes().len())
        })?,
    };
    Ok(corpus.vocab().clone())
}

/// The configuration of the tensors read as a language model over `vocab`.
fn language_config(
    a: &ImportArgs,
    inferred: &Inferred,
    dict: &StateDict,
    vocab: &Vocab,
    activation: Activation,
) -> anyhow::Result<ModelConfig> {
    super::refuse_non_causal(inferred.bidirectional, "import a language model")?;
    let ends = Ends {
        input: InputKind::OneHot,
        output: OutputKind::Softmax,
        activation,
    };
    let config = inferred.config(ends, dict)?;
    let n = vocab.len();
    if config.input_size != n || config.output_size != n {
        usage!(
            "the {} vocabulary of {} has {n} tokens, but the model reads {} and predicts {}: give \
             the --corpus and --vocab the model was trained with",
            format!("{:?}", vocab.kind()).to_lowercase(),
            a.corpus
                .as_ref()
                .map_or("the built-in corpus".to_string(), |p| p
                    .display()
                    .to_string()),
            config.input_size,
            config.output_size
        );
    }
    Ok(config)
}

/// Checks the classes given by options, and the pairs file, against the model's sizes.
fn check_sequence(a: &ImportArgs, config: &ModelConfig) -> anyhow::Result<()> {
    for (given, size, option) in [
        (a.input_classes, config.input_size, "--input-classes"),
        (a.output_classes, config.output_size, "--output-classes"),
    ] {
        if let Some(n) = given.filter(|&n| n != size) {
            usage!("{option} {n} does not match the model, which has {size}");
        }
    }
    if let Some(path) = &a.pairs {
        let f = PairsFormat::of_config(config);
        let side = |s: unroll::data::pairs::SideFormat| Expect {
            kind: s.kind,
            size: Some(s.size),
        };
        Pairs::read(path, side(f.input), Some(side(f.output)))?;
    }
    Ok(())
}

/// What the model is, in a line.
fn describe(config: &ModelConfig) -> String {
    let cell = super::cell_name(config).to_lowercase();
    let mut parts = vec![format!(
        "{cell}, H={}, layers={}",
        config.hidden_size, config.layers
    )];
    if let Some(p) = config.proj_size {
        parts.push(format!("projection P={p}"));
    }
    if config.bidirectional {
        parts.push("bidirectional".into());
    }
    if !config.bias {
        parts.push("no biases".into());
    }
    if let Some(e) = config.embed {
        parts.push(format!("embedding E={e}"));
    }
    if config.tie_weights {
        parts.push("tied output weights".into());
    }
    let input = match config.input_kind {
        InputKind::OneHot => "token ids",
        InputKind::Dense => "real vectors",
    };
    let output = match config.output_kind {
        OutputKind::Softmax => "softmax",
        OutputKind::Identity => "identity",
        OutputKind::Sigmoid => "sigmoid",
    };
    parts.push(format!(
        "inputs: {input} of {}, output: {output} of {}",
        config.input_size, config.output_size
    ));
    parts.join(", ")
}

/// Says which tensors were converted to f32, one line per type they were stored in.
fn note_conversions(dict: &StateDict) {
    let mut types: Vec<&str> = dict.converted.iter().map(|(_, t)| t.as_str()).collect();
    types.sort_unstable();
    types.dedup();
    for t in types {
        let mut names: Vec<&str> = dict
            .converted
            .iter()
            .filter(|(_, d)| d == t)
            .map(|(n, _)| n.as_str())
            .collect();
        names.sort_unstable();
        eprintln!(
            "note: {} tensors stored as {t} are converted to f32 (what unroll computes in): {}",
            names.len(),
            names.join(", ")
        );
    }
}

/// Writes the checkpoint into --out under its lock, after checking again that it holds no run.
fn write(a: &ImportArgs, ckpt: &Checkpoint) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(&a.out)
        .map_err(|e| unroll::Error::io("create directory", &a.out, e))?;
    let lock = RunLock::acquire(&a.out)?;
    refuse_a_run(a)?;
    if a.force {
        remove_run_files(&a.out, &lock)?;
    }
    Ok(ckpt.save_dir(&a.out)?)
}

/// `unroll import`.
pub fn import(a: ImportArgs) -> anyhow::Result<()> {
    let sequence = wanted(&a)?;
    check_out(&a)?;
    let dict = StateDict::read(&a.state_dict)?;
    let inferred = Inferred::of(&dict)?;
    let activation = a.activation.into();
    let kind = match sequence {
        None => Kind::Language(vocabulary(&a)?),
        Some((input, output)) => Kind::Sequence { input, output },
    };
    let (config, vocab) = match kind {
        Kind::Language(vocab) => (
            language_config(&a, &inferred, &dict, &vocab, activation)?,
            Some(vocab),
        ),
        Kind::Sequence { input, output } => {
            let ends = Ends {
                input,
                output,
                activation,
            };
            let config = inferred.config(ends, &dict)?;
            check_sequence(&a, &config)?;
            (config, None)
        }
    };
    let params = dict.params(&config)?;
    note_conversions(&dict);
    let ckpt = Checkpoint {
        config,
        vocab,
        params,
    };
    let path = write(&a, &ckpt)?;
    eprintln!(
        "imported {}: {}",
        a.state_dict.display(),
        describe(&ckpt.config)
    );
    eprintln!("wrote {}", path.display());
    let next = match ckpt.vocab {
        Some(_) => "unroll eval --model DIR, unroll sample --model DIR",
        None => "unroll predict --model DIR --inputs FILE",
    };
    let line = format!("use it with {next} or unroll train --init DIR");
    eprintln!("{}", line.replace("DIR", &a.out.display().to_string()));
    Ok(())
}
