//! Command-line interface: argument parsing (clap derive) and the commands, each a thin layer over
//! the library.

mod commands;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use unroll::engine::select::DeviceChoice;
use unroll::model::Activation;
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
    /// Train a character-level language model on a text corpus (the built-in one by default).
    Train(TrainArgs),
    /// Generate text from a trained language model.
    Sample(SampleArgs),
    /// Evaluate a language model on a corpus: prints {"loss", "bits_per_token", ...} as JSON.
    Eval(EvalArgs),
}

/// Where to run.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DeviceArg {
    /// A hardware GPU when there is one, else the CPU.
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

#[derive(Clone, Copy, Debug, ValueEnum)]
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

#[derive(Clone, Copy, Debug, ValueEnum)]
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

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// UTF-8 text file to train on; without it, the built-in corpus.
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    /// Output directory for model.safetensors.
    #[arg(long, default_value = "runs/latest")]
    pub out: PathBuf,
    /// Start from the parameters of this checkpoint (directory or file) instead of a fresh init.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// State size H of every layer.
    #[arg(long, default_value_t = 128)]
    pub hidden: usize,
    /// Stacked recurrent layers.
    #[arg(long, default_value_t = 1)]
    pub layers: usize,
    /// State nonlinearity f1.
    #[arg(long, value_enum, default_value_t = ActivationArg::Tanh)]
    pub activation: ActivationArg,
    /// Streams per batch (B).
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Time steps per window (T): the truncation length of BPTT.
    #[arg(long, default_value_t = 64)]
    pub seq_len: usize,
    /// Optimizer steps (0 writes the initial model).
    #[arg(long, default_value_t = 1500)]
    pub steps: u64,
    #[arg(long, value_enum, default_value_t = OptimizerArg::Adam)]
    pub optimizer: OptimizerArg,
    /// Learning rate (default: 2e-3 for adam and rmsprop, 0.05 for momentum, 0.5 for sgd, 0.1 for adagrad).
    #[arg(long)]
    pub lr: Option<f32>,
    /// Momentum factor (momentum optimizer).
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f32,
    /// L2 weight decay.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    /// Clip gradients to this global L2 norm (0: no clipping).
    #[arg(long, default_value_t = 5.0)]
    pub clip: f32,
    /// Seed of the initialisation.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Fraction of the corpus, taken from its end, held out for validation.
    #[arg(long, default_value_t = 0.05)]
    pub val_frac: f64,
    /// Evaluate (and save) every this many steps (0: only at the end).
    #[arg(long, default_value_t = 250)]
    pub eval_every: u64,
    /// Print the training loss every this many steps.
    #[arg(long, default_value_t = 50)]
    pub log_every: u64,
    /// Characters to sample at the end of training (0: none).
    #[arg(long, default_value_t = 300)]
    pub sample: usize,
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
}

#[derive(Args, Debug)]
pub struct SampleArgs {
    /// Checkpoint directory (or .safetensors file).
    #[arg(long)]
    pub model: PathBuf,
    /// Characters to generate.
    #[arg(long, default_value_t = 500)]
    pub length: usize,
    /// Softmax temperature (> 0): lower is more conservative.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Draw only from the k most likely characters (0: all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Text to start from (default: a newline); characters outside the vocabulary are skipped.
    #[arg(long, default_value = "\n")]
    pub prime: String,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Checkpoint directory (or .safetensors file).
    #[arg(long)]
    pub model: PathBuf,
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

/// Parses the arguments and runs the command.
pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Train(a) => commands::train(a),
        Command::Sample(a) => commands::sample(a),
        Command::Eval(a) => commands::eval(a),
    }
}
