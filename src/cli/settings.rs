//! The settings of a fresh `unroll train` run, language model or pairs: every option with its
//! default applied ([`Settings::of`]), then the checked pieces the run is built from: the model
//! ([`fresh_model`]), the optimization ([`Settings::optimization`]) and the [`RunSpec`].

use std::path::{Path, PathBuf};

use unroll::data::Sequences;
use unroll::data::vocab::VocabKind;
use unroll::engine::{Dropout, EdgeDropout};
use unroll::model::{
    Activation, Cell, Checkpoint, InputKind, ModelConfig, OutputKind, ParamLayout, init_params,
    set_forget_bias_one, set_init_range,
};
use unroll::train::optim::OptimizerConfig;
use unroll::train::schedule::LrSchedule;
use unroll::train::state::{OnNan, RunSpec, check_lr, check_val_frac};

use super::options::{self, Given};
use super::{EvalEvery, OnNanArg, ScheduleArg, SequencesArg, TrainArgs, ValTokens, VocabArg};

/// The recurrent model of a fresh run.
pub struct ModelSettings {
    pub cell: Cell,
    pub activation: Activation,
    pub hidden: usize,
    pub layers: usize,
    pub dropout: f32,
    /// Dropout on the embedded tokens and on the top layer's output.
    pub edges: EdgeDropout,
    /// `--init-range R`: the embedding and output weights uniform in ±R, the output bias 0.
    pub init_range: Option<f32>,
    /// The embedding size; `None`: one-hot inputs (or the `--init` model's embedding).
    pub embed: Option<usize>,
    pub tie_weights: bool,
    pub bidirectional: bool,
    pub proj_size: Option<usize>,
    pub no_bias: bool,
    pub forget_bias_one: bool,
}

/// How long a run is.
#[derive(Clone, Copy)]
pub enum Length {
    Steps(u64),
    /// Passes over the training split.
    Epochs(f64),
}

/// The learning-rate schedule and its parameters.
pub struct ScheduleSettings {
    pub kind: ScheduleArg,
    pub decay: f32,
    pub decay_every: u64,
    pub min: f32,
    pub patience: u32,
}

/// Every setting of a fresh run.
pub struct Settings {
    pub out: PathBuf,
    pub vocab: VocabKind,
    pub sequences: Sequences,
    /// 0 with a validation file: the whole corpus (all the pairs) trains.
    pub val_frac: f64,
    /// The most predictions (lines, pairs) a periodic evaluation scores; `None`: all.
    pub val_limit: Option<u64>,
    /// The same for the closing evaluation after the last step.
    pub final_val_limit: Option<u64>,
    pub seed: u64,
    pub model: ModelSettings,
    pub batch: usize,
    /// Time steps per window; 0 for pairs (every batch is as long as its longest pair).
    pub seq_len: usize,
    /// The optimizer with its clipping, momentum and weight decay.
    pub optimizer: OptimizerConfig,
    pub lr: f32,
    pub length: Length,
    pub schedule: ScheduleSettings,
    pub eval_every: u64,
    /// Evaluate at the end of every pass over the training data (`--eval-every epoch`).
    pub eval_each_epoch: bool,
    pub checkpoint_every: u64,
    pub log_every: u64,
    pub on_nan: OnNan,
}

/// The optimizer, learning rate, number of steps and schedule of a run, checked.
pub struct Optimization {
    pub optimizer: OptimizerConfig,
    pub lr: f32,
    pub steps: u64,
    pub schedule: LrSchedule,
}

impl Settings {
    /// The settings of fresh options: what was given, the defaults of `options.rs` for the rest.
    pub fn of(a: &TrainArgs) -> Self {
        use options as d;
        let pairs = a.pairs.pairs.is_some();
        let sequences = match (pairs, a.sequences.unwrap_or(d::SEQUENCES)) {
            (false, SequencesArg::Lines) => Sequences::Lines,
            _ => Sequences::Stream,
        };
        let optimizer = a.optimizer.unwrap_or(d::OPTIMIZER);
        let mut opt = OptimizerConfig::new(optimizer.into()).with_clip(a.clip.unwrap_or(d::CLIP));
        opt.momentum = a.momentum.unwrap_or(d::MOMENTUM);
        opt.weight_decay = a.weight_decay.unwrap_or(d::WEIGHT_DECAY);
        Settings {
            out: a.out.clone().unwrap_or_else(|| PathBuf::from(d::OUT)),
            vocab: match a.vocab.unwrap_or(d::VOCAB) {
                VocabArg::Chars => VocabKind::Chars,
                VocabArg::Bytes => VocabKind::Bytes,
                VocabArg::Words => VocabKind::Words,
            },
            sequences,
            val_frac: match (a.val_corpus.is_some() || a.val_pairs.is_some(), pairs) {
                (true, _) => 0.0,
                (false, true) => a.val_frac.unwrap_or(d::PAIRS_VAL_FRAC),
                (false, false) => a.val_frac.unwrap_or(d::VAL_FRAC),
            },
            val_limit: match a.val_tokens {
                Some(bound) => bound.limit(),
                None if pairs => Some(d::VAL_PAIRS),
                None if sequences == Sequences::Lines => Some(d::VAL_LINES),
                None => Some(d::VAL_TOKENS),
            },
            final_val_limit: a.final_val_tokens.and_then(ValTokens::limit),
            seed: a.seed.unwrap_or(d::SEED),
            model: ModelSettings {
                cell: a.cell.unwrap_or(d::CELL).into(),
                activation: a.activation.unwrap_or(d::ACTIVATION).into(),
                hidden: a.hidden.unwrap_or(d::HIDDEN),
                layers: a.layers.unwrap_or(d::LAYERS),
                dropout: a.dropout.unwrap_or(d::DROPOUT),
                edges: EdgeDropout {
                    embed: a.dropout_embed.unwrap_or(d::DROPOUT),
                    out: a.dropout_out.unwrap_or(d::DROPOUT),
                },
                init_range: a.init_range,
                embed: a.embed,
                tie_weights: a.tie_weights,
                bidirectional: a.bidirectional,
                proj_size: a.proj_size,
                no_bias: a.no_bias,
                forget_bias_one: a.forget_bias_one,
            },
            batch: a.batch.unwrap_or(d::BATCH),
            seq_len: if pairs {
                0
            } else {
                a.seq_len.unwrap_or(d::SEQ_LEN)
            },
            optimizer: opt,
            lr: a.lr.unwrap_or_else(|| d::default_lr(optimizer)),
            length: match a.epochs {
                Some(e) => Length::Epochs(e),
                None => Length::Steps(a.steps.unwrap_or(d::STEPS)),
            },
            schedule: ScheduleSettings {
                kind: a.lr_schedule.unwrap_or(d::LR_SCHEDULE),
                decay: a.lr_decay.unwrap_or(d::LR_DECAY),
                decay_every: a.lr_decay_every.unwrap_or(d::LR_DECAY_EVERY),
                min: a.lr_min.unwrap_or(d::LR_MIN),
                patience: a.patience.unwrap_or(d::PATIENCE),
            },
            eval_every: match a.eval_every {
                Some(EvalEvery::Steps(n)) => n,
                Some(EvalEvery::Epoch) => 0,
                None => d::EVAL_EVERY,
            },
            eval_each_epoch: a.eval_every == Some(EvalEvery::Epoch),
            checkpoint_every: a.checkpoint_every.unwrap_or(d::CHECKPOINT_EVERY),
            log_every: a.log_every.unwrap_or(d::LOG_EVERY),
            on_nan: match a.on_nan.unwrap_or(d::ON_NAN) {
                OnNanArg::ReduceLr => OnNan::ReduceLr,
                OnNanArg::Stop => OnNan::Stop,
            },
        }
    }

    /// Refuses a validation fraction outside [0, 1).
    pub fn check_val_frac(&self) -> anyhow::Result<()> {
        Ok(check_val_frac(self.val_frac)?)
    }

    /// The checked optimizer, learning rate, number of steps and schedule; `per_epoch` is the
    /// number of batches in an epoch (for --epochs).
    pub fn optimization(&self, per_epoch: u64) -> anyhow::Result<Optimization> {
        self.optimizer.validate()?;
        let lr = self.lr;
        check_lr(lr)?;
        let steps = match self.length {
            Length::Epochs(e) if !(e.is_finite() && e > 0.0) => usage!("--epochs {e} must be > 0"),
            Length::Epochs(e) => (e * per_epoch as f64).ceil() as u64,
            Length::Steps(steps) => steps,
        };
        let s = &self.schedule;
        let schedule = match s.kind {
            ScheduleArg::Constant => LrSchedule::Constant,
            ScheduleArg::Step => LrSchedule::Step {
                every: s.decay_every,
                factor: s.decay,
            },
            ScheduleArg::Cosine => LrSchedule::Cosine {
                total: steps.max(1),
                min: s.min,
            },
            ScheduleArg::Plateau => LrSchedule::Plateau {
                factor: s.decay,
                patience: s.patience,
                min: s.min,
            },
        };
        schedule.validate()?;
        Ok(Optimization {
            optimizer: self.optimizer,
            lr,
            steps,
            schedule,
        })
    }

    /// The run of these settings on the data read from `corpus` (`None`: the built-in corpus),
    /// of `corpus_tokens` tokens (or pairs), checked as a resume checks a saved one.
    pub fn run_spec(
        &self,
        optimization: Optimization,
        corpus: Option<&Path>,
        corpus_tokens: usize,
    ) -> anyhow::Result<RunSpec> {
        let mut run = RunSpec {
            steps: optimization.steps,
            batch: self.batch,
            seq_len: self.seq_len,
            optimizer: optimization.optimizer,
            lr: optimization.lr,
            schedule: optimization.schedule,
            eval_every: self.eval_every,
            checkpoint_every: self.checkpoint_every,
            log_every: self.log_every,
            seed: self.seed,
            corpus: None,
            corpus_tokens,
            val_frac: self.val_frac,
            val_limit: self.val_limit,
            final_val_limit: self.final_val_limit,
            sequences: self.sequences,
            on_nan: self.on_nan,
            dropout: self.model.dropout,
            corpus_path_bytes: None,
            corpus_fingerprint: None,
            eval_each_epoch: self.eval_each_epoch,
            dropout_embed: self.model.edges.embed,
            dropout_out: self.model.edges.out,
            val_file: None,
        };
        if let Some(path) = corpus {
            run.set_corpus_path(path);
        }
        run.validate()?;
        Ok(run)
    }
}

/// Completes `config` (whose sizes are set) with the cell options of `s`, checks them, and gives
/// the initial parameters (from `init`, or drawn with the seed). `given`: the options given,
/// which some checks read; `guard` refuses the completed `config` before its parameters are
/// allocated (the memory guard).
pub fn fresh_model(
    s: &Settings,
    given: &Given,
    config: &mut ModelConfig,
    init: Option<(&Checkpoint, &Path)>,
    guard: impl FnOnce(&ModelConfig) -> unroll::Result<()>,
) -> anyhow::Result<Vec<f32>> {
    let m = &s.model;
    config.activation = m.activation;
    config.cell = m.cell;
    // An --init model keeps its embedding and tying unless they are given.
    let (init_embed, init_tie) = init.map_or((None, false), |(c, _)| {
        (c.config.embed, c.config.tie_weights)
    });
    config.embed = m.embed.or(init_embed);
    config.tie_weights = m.tie_weights || (m.embed.is_none() && init_tie);
    // ... and its directions, projection and biases: given options that differ are refused
    // by the check against the --init model below.
    let init_config = init.map(|(c, _)| &c.config);
    config.bidirectional = m.bidirectional || init_config.is_some_and(|c| c.bidirectional);
    config.proj_size = m.proj_size.or(init_config.and_then(|c| c.proj_size));
    config.bias = !m.no_bias && init_config.is_none_or(|c| c.bias);
    if m.proj_size == Some(0) {
        usage!("--proj-size must be at least 1");
    }
    if config.proj_size.is_some() && config.cell != Cell::Lstm {
        usage!("--proj-size needs --cell lstm");
    }
    if let Some(p) = config.proj_size.filter(|&p| p >= config.hidden_size) {
        usage!(
            "--proj-size {p} must be smaller than --hidden {} (the projection narrows the state)",
            config.hidden_size
        );
    }
    check_embedding(m, config)?;
    config.validate()?;
    Dropout {
        p: m.dropout,
        seed: 0,
    }
    .validate()?;
    check_edge_dropout(m, config)?;
    if m.forget_bias_one && config.cell != Cell::Lstm {
        usage!("--forget-bias-one needs --cell lstm");
    }
    for (given, option) in [
        (m.forget_bias_one, "--forget-bias-one"),
        (m.init_range.is_some(), "--init-range"),
    ] {
        if given && init.is_some() {
            usage!("{option} sets a fresh initialisation; it cannot change an --init model");
        }
    }
    if let Some(r) = m.init_range.filter(|r| !(r.is_finite() && *r > 0.0)) {
        usage!("--init-range {r} must be a number > 0");
    }
    if given.has("activation") && config.cell != Cell::Rnn {
        usage!(
            "--activation applies to --cell rnn only (the GRU and LSTM have fixed nonlinearities)"
        );
    }
    guard(config)?;
    Ok(match init {
        Some((c, p)) => {
            c.check_config(config, p)?;
            c.params.clone()
        }
        None => {
            let layout = ParamLayout::new(config)?;
            let mut params = init_params(config, &layout, s.seed);
            if m.forget_bias_one {
                set_forget_bias_one(config, &layout, &mut params)?;
            }
            if let Some(range) = m.init_range {
                set_init_range(config, &layout, &mut params, range, s.seed)?;
            }
            params
        }
    })
}

/// Refuses edge dropout outside [0, 1), and on an embedding that `config` does not have.
fn check_edge_dropout(m: &ModelSettings, config: &ModelConfig) -> anyhow::Result<()> {
    for (p, option) in [
        (m.edges.embed, "--dropout-embed"),
        (m.edges.out, "--dropout-out"),
    ] {
        if !(0.0..1.0).contains(&p) {
            usage!("{option} {p} must be in [0, 1)");
        }
    }
    if m.edges.embed > 0.0 && config.embed.is_none() {
        usage!(
            "--dropout-embed drops the embedded tokens: it needs --embed E (one-hot inputs have \
             no embedding to drop)"
        );
    }
    Ok(())
}

/// Refuses an embedding or tying that `config` cannot have.
fn check_embedding(m: &ModelSettings, config: &ModelConfig) -> anyhow::Result<()> {
    if m.embed == Some(0) {
        usage!("--embed must be at least 1");
    }
    if config.embed.is_some() && config.input_kind != InputKind::OneHot {
        usage!("--embed needs token input (a language model, or --input class)");
    }
    if config.tie_weights && config.embed != Some(config.output_width()) {
        usage!(
            "--tie-weights needs --embed equal to the top layer's output width ({}: {})",
            config.output_width(),
            match (config.proj_size.is_some(), config.bidirectional) {
                (false, false) => "--hidden",
                (true, false) => "--proj-size",
                (false, true) => "twice --hidden, for two directions",
                (true, true) => "twice --proj-size, for two directions",
            }
        );
    }
    if config.tie_weights
        && (config.output_kind != OutputKind::Softmax || config.output_size != config.input_size)
    {
        usage!("--tie-weights needs class outputs over the input tokens");
    }
    Ok(())
}
