//! Command-line interface: argument parsing (clap derive) and the commands, each a thin layer over
//! the library.

/// Returns early with a [`Usage`] error: options that cannot work together or out of range.
macro_rules! usage {
    ($($arg:tt)*) => {
        return Err(anyhow::Error::new($crate::cli::Usage(format!($($arg)*))))
    };
}

mod bench;
mod bench_parallel;
mod commands;
mod import;
mod options;
mod pairs;
mod ranks;
mod run;
mod settings;
mod sizes;
mod train;
mod tune;

/// The cell of `config` as the logs name it: `rnn Tanh`, `Gru`, `Lstm`.
fn cell_name(config: &unroll::model::ModelConfig) -> String {
    match config.cell {
        unroll::model::Cell::Rnn => format!("rnn {:?}", config.activation),
        cell => format!("{cell:?}"),
    }
}

/// Refuses a bidirectional model where a language model is needed (`doing`: "train on a
/// corpus", ...): its reverse direction reads the tokens after each step, the very tokens a
/// language model predicts.
fn refuse_non_causal(bidirectional: bool, doing: &str) -> anyhow::Result<()> {
    if bidirectional {
        usage!(
            "cannot {doing} with a bidirectional model: a language model predicts each token from \
             the tokens before it, and a reverse direction would read the token it predicts; \
             bidirectional layers label sequences whose whole input is known (train --pairs, \
             predict)"
        );
    }
    Ok(())
}

/// The value of `--val-tokens`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValTokens {
    All,
    At(u64),
}

impl ValTokens {
    /// The bound (`None`: all).
    pub fn limit(self) -> Option<u64> {
        match self {
            ValTokens::All => None,
            ValTokens::At(n) => Some(n),
        }
    }
}

/// The value of `--eval-every`: a number of steps, or the end of every pass over the training
/// data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvalEvery {
    Steps(u64),
    Epoch,
}

fn parse_eval_every(text: &str) -> Result<EvalEvery, String> {
    if text == "epoch" {
        return Ok(EvalEvery::Epoch);
    }
    text.parse::<u64>()
        .map(EvalEvery::Steps)
        .map_err(|_| format!("expected a number of steps or `epoch`, got `{text}`"))
}

fn parse_val_tokens(text: &str) -> Result<ValTokens, String> {
    if text == "all" {
        return Ok(ValTokens::All);
    }
    match text.parse::<u64>() {
        Ok(0) | Err(_) => Err(format!(
            "expected a number of at least 1 or `all`, got `{text}`"
        )),
        Ok(n) => Ok(ValTokens::At(n)),
    }
}

/// An error in how the command was called (exit status 2), as opposed to one met while running
/// (exit status 1).
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// The exit status for an error: 2 for usage errors (ours, invalid configurations the library
/// refuses and sizes that do not fit in memory), 1 for everything met while running, divergence and engine misuse (a bug,
/// not a usage error) included.
pub fn exit_status(e: &anyhow::Error) -> u8 {
    if let Some(agreed) = e.downcast_ref::<Agreed>() {
        return agreed.code;
    }
    let usage = e.downcast_ref::<Usage>().is_some()
        || matches!(
            e.downcast_ref::<unroll::Error>(),
            Some(unroll::Error::Config(_) | unroll::Error::Memory { .. } | unroll::Error::Dist(_))
        );
    if usage { 2 } else { 1 }
}

#[cfg(test)]
mod tests {
    use super::{Usage, exit_status};

    #[test]
    fn usage_and_configuration_errors_exit_2_and_the_others_1() {
        let status = |e: anyhow::Error| exit_status(&e);
        assert_eq!(status(anyhow::Error::new(Usage("bad".into()))), 2);
        assert_eq!(status(unroll::Error::Config("bad".into()).into()), 2);
        let context = anyhow::Error::from(unroll::Error::Config("bad".into())).context("while");
        assert_eq!(status(context), 2, "a configuration error under context");
        let memory = unroll::Error::Memory {
            needed: 1 << 40,
            available: 1 << 30,
            message: "train needs about 1.0 TiB of memory".into(),
        };
        assert_eq!(status(memory.into()), 2, "a size that does not fit");
        assert_eq!(
            status(unroll::Error::Misuse("backward first".into()).into()),
            1
        );
        assert_eq!(status(unroll::Error::Diverged { norm: f32::NAN }.into()), 1);
        let stopped = unroll::Error::TrainingDiverged {
            step: 3,
            reason: "the training loss is NaN".into(),
            out: "runs/x".into(),
        };
        assert_eq!(status(stopped.into()), 1);
        assert_eq!(status(unroll::Error::Data("bad".into()).into()), 1);
        assert_eq!(status(anyhow::anyhow!("anything else")), 1);
    }
}

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use unroll::engine::select::DeviceChoice;
use unroll::model::{Activation, Cell};
use unroll::train::optim::OptimizerKind;

/// Train recurrent neural networks on the GPU (WGSL compute shaders) or the CPU.
#[derive(Parser, Debug)]
#[command(name = "unroll", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a language model on a text corpus (the built-in one by default) over characters,
    /// bytes or words, or a sequence-to-sequence model on a file of pairs (--pairs).
    Train(Box<TrainArgs>),
    /// Generate text from a trained language model.
    Sample(SampleArgs),
    /// Evaluate a language model on a corpus: prints {"loss", "bits_per_token", "perplexity",
    /// ...} as JSON.
    Eval(EvalArgs),
    /// Predict y for every x of a JSON Lines file with a model trained with `train --pairs`.
    Predict(pairs::PredictArgs),
    /// Write a generated example pairs file (echo, sum, parity, count).
    Example(pairs::ExampleArgs),
    /// List the GPU adapters wgpu sees and which one `--device auto` and `--device gpu` take.
    Devices,
    /// Import a model trained in PyTorch (a state_dict saved with safetensors) into a run
    /// directory that eval, sample, predict and train --init use.
    Import(Box<import::ImportArgs>),
    /// Measure training throughput (tokens/s) on the GPU and CPU engines, optionally against
    /// PyTorch.
    Bench(Box<bench::BenchArgs>),
    /// Measure every kernel variant of each configuration (bench's shapes) on this device and
    /// cache the fastest for `train --tune cached` (the default) and `bench --tune`.
    Tune(Box<tune::TuneArgs>),
}

/// Where to run.
#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum DeviceArg {
    /// A hardware GPU when there is one, else the CPU.
    #[default]
    Auto,
    /// The GPU engine (any adapter, software ones included).
    Gpu,
    /// The CPU reference engine.
    Cpu,
}

impl From<DeviceArg> for DeviceChoice {
    fn from(d: DeviceArg) -> Self {
        match d {
            DeviceArg::Auto => DeviceChoice::Auto,
            DeviceArg::Gpu => DeviceChoice::Gpu,
            DeviceArg::Cpu => DeviceChoice::Cpu,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ActivationArg {
    Tanh,
    Relu,
}

impl From<ActivationArg> for Activation {
    fn from(a: ActivationArg) -> Self {
        match a {
            ActivationArg::Tanh => Activation::Tanh,
            ActivationArg::Relu => Activation::Relu,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OptimizerArg {
    Sgd,
    Momentum,
    Adam,
    Rmsprop,
    Adagrad,
}

impl From<OptimizerArg> for OptimizerKind {
    fn from(o: OptimizerArg) -> Self {
        match o {
            OptimizerArg::Sgd => OptimizerKind::Sgd,
            OptimizerArg::Momentum => OptimizerKind::Momentum,
            OptimizerArg::Adam => OptimizerKind::Adam,
            OptimizerArg::Rmsprop => OptimizerKind::Rmsprop,
            OptimizerArg::Adagrad => OptimizerKind::Adagrad,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum VocabArg {
    /// The distinct characters of the corpus (UTF-8 text).
    Chars,
    /// The 256 byte values (any file).
    Bytes,
    /// Word tokens: <unk> and the most frequent words of the training part (see --max-vocab,
    /// --min-count, --lowercase).
    Words,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SequencesArg {
    /// B contiguous streams, windows of --seq-len, the state carried between windows
    /// (truncated BPTT).
    Stream,
    /// Every line is one sequence framed by start and end tokens; batches are padded and masked;
    /// sampling stops at the end token.
    Lines,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnNanArg {
    /// Skip the diverging update, halve the learning rate and continue.
    ReduceLr,
    /// Stop with an error, keeping the last good checkpoint.
    Stop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ScheduleArg {
    /// The same learning rate throughout.
    Constant,
    /// Multiply by --lr-decay every --lr-decay-every steps.
    Step,
    /// Cosine from --lr down to --lr-min over the run.
    Cosine,
    /// Multiply by --lr-decay when validation has not improved for --patience evaluations.
    Plateau,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CellArg {
    /// The plain (Elman) cell of torch.nn.RNN.
    Rnn,
    /// torch.nn.GRU: gates r, z, n.
    Gru,
    /// torch.nn.LSTM: gates i, f, g, o; carries (h, c).
    Lstm,
}

impl From<CellArg> for Cell {
    fn from(c: CellArg) -> Self {
        match c {
            CellArg::Rnn => Cell::Rnn,
            CellArg::Gru => Cell::Gru,
            CellArg::Lstm => Cell::Lstm,
        }
    }
}

/// Options of `unroll train`. Those that define the model, the data or the optimizer are
/// optional here so that a resume can tell which ones were given (and refuse a change); their
/// defaults are the constants of `options.rs` (which also write them into the help) and are
/// applied by `settings.rs`.
#[derive(Args, Debug, Default)]
pub struct TrainArgs {
    /// UTF-8 text file to train on (any file with --vocab bytes); default: the built-in corpus.
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    /// Token vocabulary.
    #[arg(long, value_enum)]
    pub vocab: Option<VocabArg>,
    /// With --vocab words: the most tokens in the vocabulary, <unk> (and the line-break token)
    /// included; the start and end tokens of lines mode come on top.
    #[arg(long)]
    pub max_vocab: Option<usize>,
    /// With --vocab words: leave out words seen fewer times in the training part (they read as
    /// <unk>).
    #[arg(long)]
    pub min_count: Option<u64>,
    /// With --vocab words: lower-case every token (the model's sample and eval do the same).
    #[arg(long)]
    pub lowercase: bool,
    /// How the corpus is cut into sequences.
    #[arg(long, value_enum)]
    pub sequences: Option<SequencesArg>,
    /// Fraction of the corpus, taken from its end, held out for validation.
    #[arg(long)]
    pub val_frac: Option<f64>,
    /// Validate on this text file instead of a --val-frac tail of the corpus (the whole corpus
    /// then trains). It is read with the training corpus's vocabulary: a word the vocabulary
    /// lacks reads as <unk>, a character it lacks is skipped (and counted), as `unroll eval`
    /// does.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["val_frac", "pairs"])]
    pub val_corpus: Option<PathBuf>,
    /// With --pairs: validate on the pairs of this file instead of a --val-frac share of the
    /// training pairs (all of which then train). Its steps must be of the kinds and class
    /// counts of the training pairs.
    #[arg(long, value_name = "FILE", conflicts_with = "val_frac")]
    pub val_pairs: Option<PathBuf>,
    /// How much each periodic evaluation scores: N predictions (lines in lines mode, pairs
    /// with --pairs), a fixed set spread evenly over the whole validation part, the same at
    /// every evaluation; `all`: all of it. After the last step all of it is scored once more
    /// (see --final-val-tokens).
    #[arg(long, value_name = "N|all", value_parser = parse_val_tokens)]
    pub val_tokens: Option<ValTokens>,
    /// What the closing evaluation after the last step scores, counted as --val-tokens (a
    /// spread subset of N, or `all`); when it equals --val-tokens the last periodic evaluation
    /// is the closing one.
    #[arg(long, value_name = "N|all", value_parser = parse_val_tokens)]
    pub final_val_tokens: Option<ValTokens>,
    /// Output directory: model.safetensors, best.safetensors, state.safetensors, metrics.jsonl,
    /// loss.svg.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run saved in this directory, exactly where it stopped (with --steps to
    /// extend it).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Start from the parameters of this checkpoint (directory or file) instead of a fresh init.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Overwrite an output directory that holds another run.
    #[arg(long)]
    pub force: bool,
    /// Recurrent cell.
    #[arg(long, value_enum)]
    pub cell: Option<CellArg>,
    /// State size H of every layer.
    #[arg(long)]
    pub hidden: Option<usize>,
    /// Stacked recurrent layers.
    #[arg(long)]
    pub layers: Option<usize>,
    /// Dropout probability on the outputs of every layer but the last, in training only (as
    /// PyTorch's `dropout=`).
    #[arg(long)]
    pub dropout: Option<f32>,
    /// Dropout probability on the embedded tokens (the embedding's output, layer 0's input),
    /// in training only; needs --embed.
    #[arg(long, value_name = "P")]
    pub dropout_embed: Option<f32>,
    /// Dropout probability on the top layer's output (the output layer's input), in training
    /// only.
    #[arg(long, value_name = "P")]
    pub dropout_out: Option<f32>,
    /// Initialise the embedding and the output weights uniform in [-R, R] and the output bias
    /// to 0, as PyTorch's word_language_model example does (R = 0.1 there); the recurrent
    /// layers keep PyTorch's default initialisation.
    #[arg(long, value_name = "R")]
    pub init_range: Option<f32>,
    /// LSTM: initialise the forget-gate bias to 1 (bias_ih's f block 1, bias_hh's 0), as
    /// char-rnn does.
    #[arg(long)]
    pub forget_bias_one: bool,
    /// Learn an embedding of this size for the input tokens (`embed.weight` [V, E]) before the
    /// first layer, instead of reading one-hot vectors.
    #[arg(long)]
    pub embed: Option<usize>,
    /// Tie the output weights to the embedding (`out.weight` is `embed.weight`); needs
    /// --embed equal to the top layer's output width (--hidden, or --proj-size).
    #[arg(long)]
    pub tie_weights: bool,
    /// Bidirectional layers: each layer also runs over the sequence in reverse, with its own
    /// parameters (`*_reverse`), and outputs [h_fwd; h_rev] (PyTorch's `bidirectional=True`).
    /// With --pairs only: a language model must not read the tokens it predicts.
    #[arg(long)]
    pub bidirectional: bool,
    /// LSTM: project the state to P < H values, h_t = W_hr (o * tanh(c_t)) with
    /// `weight_hr_l{k}` [P, H] (PyTorch's `proj_size`).
    #[arg(long, value_name = "P")]
    pub proj_size: Option<usize>,
    /// Recurrent layers without `bias_ih`/`bias_hh` (PyTorch's `bias=False`).
    #[arg(long)]
    pub no_bias: bool,
    /// State nonlinearity f1.
    #[arg(long, value_enum)]
    pub activation: Option<ActivationArg>,
    /// Streams per batch, B (pairs per batch with --pairs).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Time steps per window, T: the truncation length of BPTT.
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Optimizer steps in all; 0 writes the initial model.
    #[arg(long, conflicts_with = "epochs")]
    pub steps: Option<u64>,
    /// Passes over the training split, instead of --steps.
    #[arg(long)]
    pub epochs: Option<f64>,
    /// Optimizer.
    #[arg(long, value_enum)]
    pub optimizer: Option<OptimizerArg>,
    /// Learning rate.
    #[arg(long)]
    pub lr: Option<f32>,
    /// Learning-rate schedule.
    #[arg(long, value_enum)]
    pub lr_schedule: Option<ScheduleArg>,
    /// Decay factor of the step and plateau schedules.
    #[arg(long)]
    pub lr_decay: Option<f32>,
    /// Steps between decays of the step schedule.
    #[arg(long)]
    pub lr_decay_every: Option<u64>,
    /// Floor of the cosine and plateau schedules.
    #[arg(long)]
    pub lr_min: Option<f32>,
    /// Evaluations without improvement before the plateau schedule decays.
    #[arg(long)]
    pub patience: Option<u32>,
    /// Momentum factor of the momentum optimizer.
    #[arg(long)]
    pub momentum: Option<f32>,
    /// L2 weight decay.
    #[arg(long)]
    pub weight_decay: Option<f32>,
    /// Clip gradients to this global L2 norm; 0 disables clipping.
    #[arg(long)]
    pub clip: Option<f32>,
    /// Seed of the initialisation (and with --pairs of the validation split and the batch
    /// order).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Evaluate on the validation split, save best.safetensors and redraw loss.svg every this
    /// many steps, or `epoch`: at the end of every pass over the training data (the log and
    /// metrics.jsonl then name the epoch); 0: only at the end.
    #[arg(long, value_name = "N|epoch", value_parser = parse_eval_every)]
    pub eval_every: Option<EvalEvery>,
    /// Save model.safetensors and the training state every this many steps (besides every
    /// evaluation); 0: only then.
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Report the training loss every this many steps.
    #[arg(long)]
    pub log_every: Option<u64>,
    /// What to do when the loss or gradient norm is not finite.
    #[arg(long, value_enum)]
    pub on_nan: Option<OnNanArg>,
    /// Tokens (characters, bytes or words) to sample at the end of training; 0: none.
    #[arg(long, default_value_t = options::SAMPLE)]
    pub sample: usize,
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    /// Kernel choice measured on this device (`unroll tune`): `cached` runs the choice cached
    /// for this device and shape when there is one, `on` measures every variant when none is
    /// cached (a few seconds) and caches the fastest, `again` always measures, `off` runs the
    /// engine's defaults.
    #[arg(long, value_enum, default_value_t = tune::TuneArg::Cached)]
    pub tune: tune::TuneArg,
    #[command(flatten)]
    pub pairs: pairs::PairsArgs,
    /// Which of the options above were given on the command line.
    #[arg(skip)]
    pub given: options::Given,
}

#[derive(Args, Debug)]
pub struct SampleArgs {
    /// Checkpoint directory (or .safetensors file).
    #[arg(long)]
    pub model: PathBuf,
    /// Tokens to generate (characters, bytes or words).
    #[arg(long, default_value_t = 500)]
    pub length: usize,
    /// Softmax temperature (> 0): lower is more conservative.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Draw only from the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Text to start from (default: a newline), cut into tokens as the model's corpus was;
    /// characters outside a character vocabulary are skipped, words outside a word vocabulary
    /// read as <unk>.
    #[arg(long, default_value = "\n")]
    pub prime: String,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Checkpoint directory (its model.safetensors) or .safetensors file.
    #[arg(long)]
    pub model: PathBuf,
    /// Score the directory's best.safetensors (the best validation model) instead.
    #[arg(long)]
    pub best: bool,
    /// UTF-8 text file to evaluate on; without it, the built-in corpus.
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    /// Streams evaluated side by side.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Time steps per window.
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
}

/// Parses the arguments and runs the command; returns the process exit status.
pub fn run() -> anyhow::Result<u8> {
    let cli = options::parse();
    let group = ranks::join(matches!(
        cli.command,
        Command::Train(_) | Command::Eval(_) | Command::Bench(_)
    ))?;
    // `unroll bench` sizes its own pool (--threads).
    if matches!(cli.command, Command::Train(_) | Command::Eval(_)) {
        ranks::share_cores();
    }
    let result = dispatch(cli.command);
    ranks::end_on_failure(group.as_ref(), &result);
    result
}

pub use ranks::{Agreed, error_label, restore_stderr};

fn dispatch(command: Command) -> anyhow::Result<u8> {
    match command {
        Command::Train(a) => {
            let group = ranks::group();
            let checked = (|| {
                // Word options without --vocab words are refused for pairs runs too.
                train::word_options(&a)?;
                // A resumed run's directory is locked before anything in it is read.
                match &a.resume {
                    Some(dir) => run::lock_resumed(dir),
                    None => Ok(None),
                }
            })();
            let lock = ranks::agree(group.as_ref(), checked)?;
            if ranks::agree(group.as_ref(), pairs::wants_pairs(&a))? {
                pairs::train(*a, lock)
            } else {
                train::train(*a, lock)
            }
        }
        Command::Sample(a) => commands::sample(a).map(|()| 0),
        Command::Eval(a) => commands::eval(a).map(|()| 0),
        Command::Predict(a) => pairs::predict(a).map(|()| 0),
        Command::Example(a) => pairs::example(a).map(|()| 0),
        Command::Devices => commands::devices().map(|()| 0),
        Command::Import(a) => import::import(*a).map(|()| 0),
        Command::Bench(a) => bench::bench(*a),
        Command::Tune(a) => tune::tune_command(*a),
    }
}
