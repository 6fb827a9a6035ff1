//! Sequence-to-sequence transduction on the command line: `unroll train --pairs` (fresh or
//! resumed, through the run driver of `run.rs`), `unroll predict` and `unroll example`.

use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use unroll::data::EvalSet;
use unroll::data::pairs::{Expect, PairBatches, PairEval, Pairs, PairsFormat, StepKind};
use unroll::data::tasks::{Task, TaskOptions, generate};
use unroll::dist;
use unroll::engine::Batch;
use unroll::engine::select::create_engine;
use unroll::model::{Checkpoint, ModelConfig};
use unroll::train::state::{TrainState, ValFile};
use unroll::train::trainer::{Validation, argmax, count_correct, eval_rows, evaluate_with};

use unroll::train::rundir::RunLock;

use super::commands::largest_magnitude;
use super::ranks::{self, config_json, run_json};
use super::run::{
    Driver, Signals, absolute, check_fresh_out, fresh_engine, load_resumed, refuse_kept_on_resume,
    resumed_engine,
};
use super::settings::{Settings, fresh_model};
use super::sizes::{check_evaluation, check_training, longest_pair, pair_steps_option};
use super::train::as_limit;
use super::{DeviceArg, TrainArgs};
use unroll::engine::select::DeviceChoice;

/// What the x steps hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum InputArg {
    /// Real vectors (a number or an array of numbers per step).
    Real,
    /// Class ids, read as one-hot vectors.
    Class,
}

/// What the y steps hold, which fixes the output nonlinearity and the loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputArg {
    /// Real vectors: identity output, squared error.
    Real,
    /// Class ids: softmax output, cross-entropy.
    Class,
    /// Vectors of 0/1: sigmoid output, binary cross-entropy.
    Binary,
}

/// The options of `unroll train` for pairs.
#[derive(Args, Debug, Default)]
pub struct PairsArgs {
    /// Train on pairs of sequences, one JSON object {"x": [...], "y": [...]} per line, instead
    /// of a corpus (see the README); needs --input and --output.
    #[arg(long, conflicts_with_all = ["corpus", "vocab"])]
    pub pairs: Option<PathBuf>,
    /// With --pairs: what the x steps hold.
    #[arg(long, value_enum)]
    pub input: Option<InputArg>,
    /// With --pairs: what the y steps hold.
    #[arg(long, value_enum)]
    pub output: Option<OutputArg>,
    /// With --input class: the number of input classes.
    #[arg(long)]
    pub input_classes: Option<usize>,
    /// With --output class: the number of output classes.
    #[arg(long)]
    pub output_classes: Option<usize>,
}

/// Whether `unroll train` is a run on pairs: `--pairs`, or `--resume` of a run that has no
/// vocabulary. Pairs options without `--pairs` are refused.
pub fn wants_pairs(a: &TrainArgs) -> anyhow::Result<bool> {
    if a.pairs.pairs.is_some() {
        return Ok(true);
    }
    if let Some(dir) = &a.resume {
        // Contradicting options are refused before the saved run is read.
        refuse_kept_on_resume(a)?;
        let state = TrainState::load_shared(dir, super::ranks::group().as_ref())?;
        return Ok(state.vocab.is_none());
    }
    let given = a.given.flags(&[
        "input",
        "output",
        "input_classes",
        "output_classes",
        "val_pairs",
    ]);
    if !given.is_empty() {
        usage!("{} apply only with --pairs FILE", given.join(", "));
    }
    Ok(false)
}

/// Everything a pairs run needs, fresh or resumed.
struct Setup {
    data: Pairs,
    /// The validation pairs (`--val-pairs`), read as the model reads its pairs.
    val_data: Option<Pairs>,
    driver: Driver,
}

/// The validation pairs at `path`, read with the kinds and sizes of the model of `config`
/// (those of the training pairs): a pair it cannot take is refused, naming its line.
fn read_val_pairs(path: &Path, config: &ModelConfig) -> anyhow::Result<Pairs> {
    read_for(path, config, true).with_context(|| {
        format!(
            "the validation pairs must be of the kinds and class counts of the training pairs \
             ({})",
            describe_format(config)
        )
    })
}

/// The size and fingerprint of validation pairs, as a run keeps them.
fn val_fingerprint(data: &Pairs) -> (usize, u64) {
    let all: Vec<usize> = (0..data.len()).collect();
    (data.len(), data.digest(&all))
}

/// "x: class ids (of 5), y: real vectors of 2".
fn describe_format(config: &ModelConfig) -> String {
    let f = PairsFormat::of_config(config);
    format!(
        "x: {}, y: {}",
        describe(f.input.kind, f.input.size),
        describe(f.output.kind, f.output.size)
    )
}

fn expect_classes(kind: StepKind, classes: Option<usize>, option: &str) -> anyhow::Result<Expect> {
    match classes {
        Some(_) if kind != StepKind::Class => usage!("{option} applies only to class ids"),
        Some(0) => usage!("{option} must be at least 1"),
        _ => Ok(Expect {
            kind,
            size: classes,
        }),
    }
}

/// The kinds of the x and y steps of fresh options.
fn step_kinds(a: &TrainArgs) -> anyhow::Result<(StepKind, StepKind)> {
    let (Some(input), Some(output)) = (a.pairs.input, a.pairs.output) else {
        usage!(
            "--pairs needs --input real|class (what the x steps hold) and --output \
             real|class|binary (what the y steps hold)"
        );
    };
    let input = match input {
        InputArg::Real => StepKind::Real,
        InputArg::Class => StepKind::Class,
    };
    let output = match output {
        OutputArg::Real => StepKind::Real,
        OutputArg::Class => StepKind::Class,
        OutputArg::Binary => StepKind::Binary,
    };
    Ok((input, output))
}

fn fresh_setup(a: &TrainArgs, path: &Path) -> anyhow::Result<Setup> {
    let s = Settings::of(a);
    check_fresh_out(a, &s.out)?;
    let (input, output) = step_kinds(a)?;
    s.check_val_frac()?;
    if s.batch == 0 {
        usage!("--batch must be at least 1");
    }
    let p = &a.pairs;
    let data = Pairs::read(
        path,
        expect_classes(input, p.input_classes, "--input-classes")?,
        Some(expect_classes(
            output,
            p.output_classes,
            "--output-classes",
        )?),
    )?;
    let (train, _) = data.split(s.val_frac, s.seed);
    let optimization = s.optimization(train.len().div_ceil(s.batch.max(1)) as u64)?;
    let m = &s.model;
    let mut config = data
        .format()?
        .model_config(m.hidden, m.layers, m.activation)?;
    let init = match &a.init {
        Some(p) => Some(Checkpoint::load(p)?),
        None => None,
    };
    let checkpoint = init.as_ref().zip(a.init.as_deref());
    let (longest, option) = (longest_pair(&data).1, pair_steps_option(&data));
    let device = a.device.into();
    let guard =
        |c: &ModelConfig| check_training(c, (s.batch, longest), longest, &option, false, device);
    let params = fresh_model(&s, &a.given, &mut config, checkpoint, guard)?;
    let mut run = s.run_spec(optimization, Some(&absolute(path)), data.len())?;
    let val_data = match &a.val_pairs {
        Some(p) => Some(read_val_pairs(p, &config)?),
        None => None,
    };
    if let (Some(p), Some(v)) = (&a.val_pairs, &val_data) {
        let (pairs, digest) = val_fingerprint(v);
        run.val_file = Some(ValFile::new(&absolute(p), pairs, digest));
    }
    let engine = fresh_engine(a, &config, &params, (s.batch, longest))?;
    Ok(Setup {
        data,
        val_data,
        driver: Driver::fresh(s.out, run, engine),
    })
}

/// Reads a pairs file as `config` reads and writes it (sizes fixed by the model).
fn read_for(path: &Path, config: &ModelConfig, with_y: bool) -> anyhow::Result<Pairs> {
    let f = PairsFormat::of_config(config);
    let side = |s: unroll::data::pairs::SideFormat| Expect {
        kind: s.kind,
        size: Some(s.size),
    };
    Ok(Pairs::read(
        path,
        side(f.input),
        with_y.then(|| side(f.output)),
    )?)
}

fn resume_setup(a: &TrainArgs, dir: &Path, lock: Option<RunLock>) -> anyhow::Result<Setup> {
    let (state, run) = load_resumed(a, dir)?;
    let path = run
        .corpus_path()
        .context("the saved run names no pairs file")?;
    let data = read_for(&path, &state.config, true)?;
    if data.len() != run.corpus_tokens {
        bail!(
            "the pairs file {} now holds {} pairs, the run was started on {}: it changed since, \
             so the data position cannot be restored",
            path.display(),
            data.len(),
            run.corpus_tokens
        );
    }
    let val_data = match &run.val_file {
        Some(file) => {
            let v = read_val_pairs(&file.path(), &state.config)?;
            file.check(val_fingerprint(&v))?;
            Some(v)
        }
        None => None,
    };
    let steps = (longest_pair(&data).1, pair_steps_option(&data));
    let engine = resumed_engine(a, &state, dir, &run, (steps.0, &steps.1))?;
    Ok(Setup {
        data,
        val_data,
        driver: Driver::resumed(dir, run, state.progress, engine, lock),
    })
}

fn describe(s: StepKind, size: usize) -> String {
    match s {
        StepKind::Class => format!("class ids (of {size})"),
        StepKind::Real => format!("real vectors of {size}"),
        StepKind::Binary => format!("binary vectors of {size}"),
    }
}

/// `unroll train --pairs FILE` or `--resume DIR` of such a run.
pub fn train(a: TrainArgs, lock: Option<RunLock>) -> anyhow::Result<u8> {
    if a.seq_len.is_some() {
        usage!("--seq-len does not apply to --pairs: every batch is as long as its longest pair");
    }
    let signals = Signals::install()?;
    let setup = match (&a.resume, &a.pairs.pairs) {
        (Some(dir), _) => resume_setup(&a, dir, lock),
        (None, Some(path)) => fresh_setup(&a, path),
        (None, None) => usage!("--pairs FILE is required"),
    };
    let Setup {
        data,
        val_data,
        mut driver,
    } = ranks::agree(ranks::group().as_ref(), setup)?;
    let run = driver.run.clone();
    let (train_idx, val_idx) = data.split(run.val_frac, run.seed);
    // Validation on the pairs of the validation file, all of them, or on the held-out share.
    let (val, val_idx) = match &val_data {
        Some(v) => (v, (0..v.len()).collect()),
        None => (&data, val_idx),
    };
    let format = data.format()?;
    let from = match &run.val_file {
        Some(file) => format!(" from {}", file.path),
        None => String::new(),
    };
    eprintln!(
        "pairs: {}, {} pairs of {} steps in all ({} train, {} validation{from}); x: {}, y: {}",
        run.corpus.as_deref().unwrap_or_default(),
        data.len(),
        data.steps(),
        train_idx.len(),
        val_idx.len(),
        describe(format.input.kind, format.input.size),
        describe(format.output.kind, format.output.size),
    );
    let config = driver.engine.config().clone();
    eprintln!(
        "model: {} H={} layers={} ({} parameters), {:?} output; {:?} lr {} {:?}, clip {}, \
         B={}, {} steps",
        super::cell_name(&config),
        config.hidden_size,
        config.layers,
        driver.engine.layout().len(),
        config.output_kind,
        run.optimizer.kind,
        run.lr,
        run.schedule,
        run.optimizer.clip,
        run.batch,
        run.steps
    );
    let all: Vec<usize> = (0..data.len()).collect();
    let settings = [
        &run_json(&run),
        &config_json(&config),
        &data.digest(&all).to_le_bytes()[..],
    ];
    let sources = (|| -> anyhow::Result<_> {
        let source = PairBatches::new(&data, train_idx, run.batch, run.seed)?;
        let longest = val_idx.iter().map(|&i| val.pairs[i].len).max().unwrap_or(1);
        let rows = eval_rows(&config, run.batch, longest);
        let (limit, closing) = (as_limit(run.val_limit), as_limit(run.final_val_limit));
        let periodic = PairEval::spread(val, val_idx.clone(), rows, limit)?;
        let closing = (closing != limit && !periodic.is_whole())
            .then(|| PairEval::spread(val, val_idx, rows, closing))
            .transpose()?;
        Ok((source, periodic, closing))
    })();
    let (mut source, periodic, closing) = ranks::agree(ranks::group().as_ref(), sources)?;
    let mut metrics = driver.start(&a, dist::settings_hash(&settings))?;
    let val = Validation {
        periodic: &periodic,
        closing: closing.as_ref().map(|c| c as &dyn EvalSet),
    };
    let plain = |loss: f64| format!("{loss:.4}");
    if let Some(code) = driver.train(None, &mut source, val, &mut metrics, &plain, &signals)? {
        return Ok(code);
    }
    eprintln!(
        "predict with: unroll predict --model {} --inputs FILE",
        driver.out.display()
    );
    Ok(0)
}

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// Checkpoint directory (or .safetensors file) of a model trained with --pairs.
    #[arg(long)]
    pub model: PathBuf,
    /// Pairs file (JSON Lines with x and y): predicts every y and reports the loss and accuracy.
    #[arg(long, required_unless_present = "inputs", conflicts_with = "inputs")]
    pub pairs: Option<PathBuf>,
    /// JSON Lines with only x on each line (a y is ignored): predictions only.
    #[arg(long)]
    pub inputs: Option<PathBuf>,
    /// Write the predictions to this file instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Sequences run side by side.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
}

/// A sequence of steps as JSON: numbers when each step is one value, else arrays.
fn steps_json(
    values: &[f32],
    width: usize,
    f: impl Fn(f32) -> serde_json::Value,
) -> Vec<serde_json::Value> {
    values
        .chunks(width)
        .map(|step| match step {
            [v] => f(*v),
            _ => serde_json::Value::Array(step.iter().map(|&v| f(v)).collect()),
        })
        .collect()
}

/// What `predict` keeps of one pair's steps as the outputs come in, chunk by chunk: the most
/// likely class of each step for a softmax output (not its V probabilities), else each step's
/// V values.
#[derive(Clone, Debug, Default)]
struct Prediction {
    classes: Vec<usize>,
    values: Vec<f32>,
}

impl Prediction {
    /// Adds the outputs `p` (V values) of the pair's next step.
    fn push(&mut self, kind: StepKind, p: &[f32]) {
        match kind {
            StepKind::Class => self.classes.push(argmax(p)),
            StepKind::Binary | StepKind::Real => self.values.extend_from_slice(p),
        }
    }

    /// The JSON line of the prediction: class ids for a softmax output, 0/1 decisions and
    /// their probabilities `p` for a sigmoid, values for an identity output.
    fn json(&self, kind: StepKind, v: usize) -> serde_json::Value {
        let number = |x: f32| serde_json::json!(x);
        match kind {
            StepKind::Class => serde_json::json!({ "y": self.classes }),
            StepKind::Binary => serde_json::json!({
                "y": steps_json(&self.values, v, |x| serde_json::json!(u8::from(x >= 0.5))),
                "p": steps_json(&self.values, v, number),
            }),
            StepKind::Real => serde_json::json!({ "y": steps_json(&self.values, v, number) }),
        }
    }
}

/// The predictions of every pair of `data` and, when it has y, the accuracy's tally, collected
/// from the outputs of `set`'s batches as the engine gives them (a chunk of rows at a time).
struct Collected<'d> {
    data: &'d Pairs,
    config: &'d ModelConfig,
    indices: &'d [Vec<usize>],
    kind: StepKind,
    /// Batches seen so far (a batch's first chunk starts at row 0).
    batches: usize,
    predictions: Vec<Prediction>,
    with_y: bool,
    correct: f64,
    judged: f64,
    /// The first pair (index) with an output that is not finite.
    overflow: Option<usize>,
}

impl<'d> Collected<'d> {
    fn new(data: &'d Pairs, config: &'d ModelConfig, set: &'d PairEval, with_y: bool) -> Self {
        Collected {
            data,
            config,
            indices: set.batch_indices(),
            kind: PairsFormat::of_config(config).output.kind,
            batches: 0,
            predictions: vec![Prediction::default(); data.len()],
            with_y,
            correct: 0.0,
            judged: 0.0,
            overflow: None,
        }
    }

    /// Takes the outputs `p` of `rows` of `batch` (time-major, `rows.len() * V`).
    fn take(&mut self, batch: &Batch, rows: Range<usize>, p: &[f32]) -> unroll::Result<()> {
        if rows.start == 0 {
            self.batches += 1;
        }
        let indices = self
            .batches
            .checked_sub(1)
            .and_then(|k| self.indices.get(k))
            .ok_or_else(|| unroll::Error::Misuse("outputs of a batch that was not cut".into()))?;
        let v = self.config.output_size;
        for (i, r) in rows.clone().enumerate() {
            let (t, b) = (r / batch.rows, r % batch.rows);
            if let Some(&pair) = indices.get(b)
                && t < self.data.pairs[pair].len
            {
                let step = &p[i * v..(i + 1) * v];
                if self.overflow.is_none() && step.iter().any(|x| !x.is_finite()) {
                    self.overflow = Some(pair);
                }
                self.predictions[pair].push(self.kind, step);
            }
        }
        if self.with_y {
            let (c, j) = count_correct(self.config, batch, rows, p);
            self.correct += c;
            self.judged += j;
        }
        Ok(())
    }
}

/// Refuses a prediction over `data` in batches of `batch` pairs that does not fit in memory: the
/// batches and the predictions of every pair, kept until they are written (a class id per step
/// of a class output, V values per step of the others).
fn check_prediction(
    config: &ModelConfig,
    data: &Pairs,
    batch: usize,
    device: DeviceChoice,
) -> anyhow::Result<()> {
    if batch == 0 {
        usage!("--batch must be at least 1");
    }
    let eval = unroll::memory::Rows {
        rows: batch,
        steps: longest_pair(data).1,
    };
    let per_step = match PairsFormat::of_config(config).output.kind {
        StepKind::Class => 2,
        StepKind::Binary | StepKind::Real => config.output_size,
    };
    let kept = (data.steps() as u128).saturating_mul(per_step as u128);
    let what = format!(
        "the predictions of every pair ({} steps x {per_step} values)",
        data.steps()
    );
    let lower = format!(
        "--batch, or predict fewer pairs; {}",
        pair_steps_option(data)
    );
    check_evaluation("predict", config, eval, vec![(what, kept)], &lower, device)?;
    Ok(())
}

/// `unroll predict`: one JSON line per pair of the file, in order, with the predicted y; with
/// `--pairs`, a summary `{"pairs", "steps", "loss", "accuracy"}` on standard error.
pub fn predict(a: PredictArgs) -> anyhow::Result<()> {
    let ckpt = Checkpoint::load(&a.model)?;
    if ckpt.vocab.is_some() {
        bail!(
            "{} is a language model; predict runs models trained with --pairs (use `unroll sample`)",
            a.model.display()
        );
    }
    let (path, with_y) = match (&a.pairs, &a.inputs) {
        (Some(p), _) => (p, true),
        (None, Some(p)) => (p, false),
        (None, None) => usage!("give --pairs FILE or --inputs FILE"),
    };
    let config = ckpt.config.clone();
    let mut data = read_for(path, &config, with_y)?;
    // Without y, batches carry zero targets of the model's output: the loss is not reported.
    data.output = Some(PairsFormat::of_config(&config).output);
    check_prediction(&config, &data, a.batch, a.device.into())?;
    let (mut engine, note) = create_engine(a.device.into(), &config, &ckpt.params)?;
    eprintln!("{note}");
    let set = PairEval::new(&data, (0..data.len()).collect(), a.batch)?;
    let mut collected = Collected::new(&data, &config, &set, with_y);
    let mut take = |batch: &Batch, rows: Range<usize>, p: &[f32]| collected.take(batch, rows, p);
    let loss = evaluate_with(engine.as_mut(), &set, Some(&mut take))?;
    if let Some(pair) = collected.overflow {
        bail!(
            "the outputs of {} for pair {} of {} are not finite: the model's outputs overflow \
             (its largest parameter is {:e}); no prediction was written",
            a.model.display(),
            pair + 1,
            path.display(),
            largest_magnitude(&ckpt.params)
        );
    }
    write_predictions(a.out.as_deref(), &collected)?;
    if with_y {
        let summary = serde_json::json!({
            "pairs": data.len(),
            "steps": data.steps(),
            "loss": loss.mean(),
            "accuracy": (collected.judged > 0.0).then(|| collected.correct / collected.judged),
        });
        eprintln!("{summary}");
    }
    Ok(())
}

/// Writes one JSON line per prediction to `out` (standard output when `None`).
fn write_predictions(out: Option<&Path>, collected: &Collected) -> anyhow::Result<()> {
    let mut sink: Box<dyn Write> = match out {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let v = collected.config.output_size;
    for p in &collected.predictions {
        writeln!(sink, "{}", p.json(collected.kind, v))?;
    }
    sink.flush().context("writing the predictions")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TaskArg {
    /// Class ids 1..=S in, the id of --delay steps before out (0 before that): --input class --output class.
    Echo,
    /// Reals in [-1, 1] in, their running sum out: --input real --output real.
    Sum,
    /// Bits in, the parity of the bits so far out: --input real --output binary.
    Parity,
    /// Class ids 0..S in, how many were 0 so far out: --input class --output class.
    Count,
}

#[derive(Args, Debug)]
pub struct ExampleArgs {
    #[arg(value_enum)]
    pub task: TaskArg,
    /// Write the pairs to this file instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Number of pairs.
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
    /// Sequence length: N, or MIN..MAX for lengths drawn uniformly (both included).
    #[arg(long, default_value = "5..20")]
    pub length: String,
    /// echo: how many steps y lags behind x.
    #[arg(long, default_value_t = 3)]
    pub delay: usize,
    /// echo and count: how many distinct input symbols.
    #[arg(long, default_value_t = 4)]
    pub symbols: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Refuses an example file that would not fit in memory, where it is generated before it is
/// written: about 24 bytes of text per step of `--count` pairs of up to `max_len` steps, and
/// about 100 bytes per step of the pair being generated.
fn check_example(a: &ExampleArgs, max_len: usize) -> anyhow::Result<()> {
    if a.count == 0 {
        usage!("--count must be at least 1");
    }
    let mut estimate = unroll::memory::Estimate::default();
    let lower = "--count or --length";
    let steps = (a.count as u128).saturating_mul(max_len as u128);
    estimate.push(
        format!("the text of {} pairs", a.count),
        steps.saturating_mul(6),
        lower,
    );
    estimate.push(
        "the pair being drawn".into(),
        (max_len as u128).saturating_mul(25),
        lower,
    );
    unroll::memory::check("example", &estimate)?;
    Ok(())
}

/// `unroll example TASK`: writes a generated pairs file.
pub fn example(a: ExampleArgs) -> anyhow::Result<()> {
    let parse = |s: &str| {
        s.trim()
            .parse::<usize>()
            .with_context(|| format!("--length {:?} must be N or MIN..MAX", a.length))
    };
    let (min_len, max_len) = match a.length.split_once("..") {
        Some((lo, hi)) => (parse(lo)?, parse(hi)?),
        None => (parse(&a.length)?, parse(&a.length)?),
    };
    check_example(&a, max_len)?;
    let task = match a.task {
        TaskArg::Echo => Task::Echo,
        TaskArg::Sum => Task::Sum,
        TaskArg::Parity => Task::Parity,
        TaskArg::Count => Task::Count,
    };
    let text = generate(
        task,
        &TaskOptions {
            count: a.count,
            min_len,
            max_len,
            delay: a.delay,
            symbols: a.symbols,
            seed: a.seed,
        },
    )?;
    let (input, output) = task.kinds();
    let kind = |k: StepKind| format!("{k:?}").to_lowercase();
    match &a.out {
        Some(p) => {
            std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?;
            eprintln!(
                "wrote {} pairs to {}; train with: unroll train --pairs {} --input {} --output {}",
                a.count,
                p.display(),
                p.display(),
                kind(input),
                kind(output)
            );
        }
        None => std::io::stdout()
            .lock()
            .write_all(text.as_bytes())
            .context("writing the pairs")?,
    }
    Ok(())
}
