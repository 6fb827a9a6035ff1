//! The run driver shared by `unroll train` and `unroll train --pairs`: signal handling, the
//! output directory, the engine of a fresh or resumed run, and the trainer driven with a progress
//! bar (or log lines), metrics and a closing message.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use unroll::data::vocab::Vocab;
use unroll::data::{SequenceKind, TrainBatches};
use unroll::engine::Engine;
use unroll::engine::select::create_engine_nth;
use unroll::model::ModelConfig;
use unroll::train::metrics::Metrics;
use unroll::train::rundir::{RunLock, remove_run_files, run_files_in};
use unroll::train::state::{Progress, RunSpec, STATE_FILE, TrainState};
use unroll::train::trainer::{Event, Outcome, Trainer, Validation};

use super::options::{changed_on_resume, kept_on_resume};
use super::ranks;
use super::sizes::check_training;
use super::tune;
use super::{EvalEvery, TrainArgs};

/// SIGINT and SIGTERM set a flag that the trainer checks after every step. A signal that comes
/// more than [`SIGNAL_GRACE`] after the first ends the process at once (files on disk are only
/// ever replaced by rename, so nothing is torn); signals within it count as the first, because
/// one interruption often arrives twice (`timeout` signals the command and then its whole
/// process group, a terminal's Ctrl-C reaches every process of the group).
pub struct Signals {
    int: Arc<AtomicBool>,
    term: Arc<AtomicBool>,
    any: Arc<AtomicBool>,
}

/// How long after the first signal a repeated one still counts as the same interruption.
const SIGNAL_GRACE: Duration = Duration::from_secs(1);

impl Signals {
    pub fn install() -> anyhow::Result<Self> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let s = Signals {
            int: Arc::new(AtomicBool::new(false)),
            term: Arc::new(AtomicBool::new(false)),
            any: Arc::new(AtomicBool::new(false)),
        };
        // Nanoseconds after `base` (plus one) of the first signal; 0 before it.
        let first = Arc::new(AtomicU64::new(0));
        let base = Instant::now();
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

    fn exit_code(&self) -> u8 {
        if self.term.load(Ordering::SeqCst) {
            143
        } else {
            130
        }
    }
}

/// Refuses `out` for a fresh run when a live run holds it, or when it holds the files of a run
/// (without --force). A first check before the options are worked out; [`claim_out`] repeats it
/// under the directory's lock.
pub fn check_fresh_out(a: &TrainArgs, out: &Path) -> anyhow::Result<()> {
    if !ranks::group().is_root() {
        // The run directory is rank 0's.
        return Ok(());
    }
    RunLock::check_free(out)?;
    refuse_a_run(a, out)
}

/// Refuses `out` when it holds any file a run writes, unless --force.
fn refuse_a_run(a: &TrainArgs, out: &Path) -> anyhow::Result<()> {
    let found = run_files_in(out);
    if found.is_empty() || a.force {
        return Ok(());
    }
    let dir = out.display();
    let resume = match found.iter().any(|f| f == STATE_FILE) {
        true => format!("continue it with --resume {dir}, "),
        false => String::new(),
    };
    usage!(
        "{dir} already holds a run ({}): {resume}choose another --out, or start over with \
         --force (which replaces only these files)",
        found.join(", ")
    );
}

/// Creates `out` and locks it for the run; under the lock, checks again that it holds no run
/// (or, with --force, removes the previous run's files, before anything new is written).
pub fn claim_out(a: &TrainArgs, out: &Path) -> anyhow::Result<RunLock> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let lock = RunLock::acquire(out)?;
    refuse_a_run(a, out)?;
    remove_run_files(out, &lock)?;
    Ok(lock)
}

/// The lock of the run directory of `--resume DIR`, taken before anything in it is read.
/// `None` when DIR holds no training state (reading it then fails with its own message).
pub fn lock_resumed(dir: &Path) -> anyhow::Result<Option<RunLock>> {
    if !ranks::group().is_root() || !dir.join(STATE_FILE).exists() {
        return Ok(None);
    }
    Ok(Some(RunLock::acquire(dir)?))
}

/// `path` as a run stores it: absolute and canonical, so a resume from another working
/// directory finds the same file (as given when it cannot be resolved).
pub fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_path_buf())
}

/// The engine of a fresh run on `--device`, with a zero state of `batch` rows (in a
/// data-parallel run, this rank's [`ranks::shard`]). [`Driver::start`] creates the output
/// directory later, once every rank has agreed on the settings and data.
pub fn fresh_engine(
    a: &TrainArgs,
    config: &ModelConfig,
    params: &[f32],
    (batch, steps): (usize, usize),
) -> anyhow::Result<Box<dyn Engine>> {
    let (engine, note) = rank_engine(a, config, params)?;
    let mut engine = ranks::shard(engine, batch)?;
    engine.reset_state(batch)?;
    let variant = tune::for_run(engine.as_mut(), a.tune, (batch, steps))?;
    eprintln!("{note}; {variant}");
    Ok(engine)
}

/// The engine of `--device` for this process: on the machine's GPU of its local rank in a
/// data-parallel run.
fn rank_engine(
    a: &TrainArgs,
    config: &ModelConfig,
    params: &[f32],
) -> anyhow::Result<(Box<dyn Engine>, String)> {
    let nth = ranks::group().local_rank();
    Ok(create_engine_nth(a.device.into(), config, params, nth)?)
}

/// Refuses, beside `--resume`, the options the run keeps from its start (before the saved run is
/// read).
pub fn refuse_kept_on_resume(a: &TrainArgs) -> anyhow::Result<()> {
    let kept = kept_on_resume(a);
    if !kept.is_empty() {
        usage!(
            "{} cannot be changed when resuming: the run keeps the settings it was started with \
             (only {} may be given)",
            kept.join(", "),
            changed_on_resume()
        );
    }
    Ok(())
}

/// The saved run of `--resume DIR`, with the options a resume takes applied (those it keeps were
/// refused by [`refuse_kept_on_resume`]).
pub fn load_resumed(a: &TrainArgs, dir: &Path) -> anyhow::Result<(TrainState, RunSpec)> {
    let state = TrainState::load_shared(dir, ranks::group().as_ref())?;
    let mut run = state.run.clone();
    if let Some(steps) = a.steps {
        run.steps = steps;
    }
    match a.eval_every {
        Some(EvalEvery::Steps(n)) => (run.eval_every, run.eval_each_epoch) = (n, false),
        Some(EvalEvery::Epoch) => (run.eval_every, run.eval_each_epoch) = (0, true),
        None => {}
    }
    for (field, v) in [
        (&mut run.checkpoint_every, a.checkpoint_every),
        (&mut run.log_every, a.log_every),
    ] {
        if let Some(v) = v {
            *field = v;
        }
    }
    if let Some(bound) = a.final_val_tokens {
        run.final_val_limit = bound.limit();
    }
    Ok((state, run))
}

/// The engine of a resumed run, with its optimizer moments and carried state restored, once the
/// memory guard has passed the saved sizes: the run's batch and `steps` (its T, and what sets it).
pub fn resumed_engine(
    a: &TrainArgs,
    state: &TrainState,
    dir: &Path,
    run: &RunSpec,
    (steps, option): (usize, &str),
) -> anyhow::Result<Box<dyn Engine>> {
    let rows = (run.batch, steps);
    check_training(&state.config, rows, steps, option, true, a.device.into())?;
    let (engine, note) = rank_engine(a, &state.config, &state.params)?;
    let mut engine = ranks::shard(engine, run.batch)?;
    engine.reset_state(run.batch)?;
    let variant = tune::for_run(engine.as_mut(), a.tune, (run.batch, steps))?;
    eprintln!("{note}; {variant}");
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

/// A run ready to train, fresh or resumed: where it writes, what it runs, where it starts.
pub struct Driver {
    pub out: PathBuf,
    pub run: RunSpec,
    pub progress: Progress,
    pub engine: Box<dyn Engine>,
    pub resumed: bool,
    /// The run directory's lock, held for the whole run.
    _lock: Option<RunLock>,
}

impl Driver {
    /// A fresh run of `run` writing into `out` (created by [`Driver::start`]).
    pub fn fresh(out: PathBuf, run: RunSpec, engine: Box<dyn Engine>) -> Self {
        Driver {
            out,
            run,
            progress: Progress::start(),
            engine,
            resumed: false,
            _lock: None,
        }
    }

    /// The run saved in `dir` (locked by `lock`), continued from `progress`.
    pub fn resumed(
        dir: &Path,
        run: RunSpec,
        progress: Progress,
        engine: Box<dyn Engine>,
        lock: Option<RunLock>,
    ) -> Self {
        Driver {
            out: dir.to_path_buf(),
            run,
            progress,
            engine,
            resumed: true,
            _lock: lock,
        }
    }

    /// Starts every rank from rank 0's parameters once they have the same settings and data
    /// (`hash` of them, see [`ranks::start`]); then rank 0 creates and locks the output
    /// directory of a fresh run (only now that every option and every rank has been checked,
    /// so that a refused run writes nothing), and opens the run's metrics.
    pub fn start(&mut self, a: &TrainArgs, hash: u64) -> anyhow::Result<Metrics> {
        ranks::start(self.engine.as_mut(), hash)?;
        let group = ranks::group();
        if !self.resumed {
            let claimed = match group.is_root() {
                true => claim_out(a, &self.out).map(Some),
                false => Ok(None),
            };
            self._lock = ranks::agree(group.as_ref(), claimed)?;
        }
        self.metrics()
    }

    /// The metrics file of the run (cut back to the saved step on a resume).
    fn metrics(&self) -> anyhow::Result<Metrics> {
        if !ranks::group().is_root() {
            return Ok(Metrics::in_memory());
        }
        Ok(Metrics::open(
            &self.out,
            self.resumed.then_some(self.progress.step),
        )?)
    }

    /// Trains on `train`, evaluating on `val`, reported by [`run_reported`]; `vocab`: the
    /// language model's vocabulary, saved with it.
    pub fn train(
        &mut self,
        vocab: Option<&Vocab>,
        train: &mut dyn TrainBatches,
        val: Validation,
        metrics: &mut Metrics,
        loss_text: &dyn Fn(f64) -> String,
        signals: &Signals,
    ) -> anyhow::Result<Option<u8>> {
        let group = ranks::group();
        let mut trainer = Trainer {
            engine: self.engine.as_mut(),
            vocab,
            run: &self.run,
            out: &self.out,
            interrupt: Some(&signals.any),
            group: group.as_ref(),
        };
        let progress = self.progress.clone();
        run_reported(
            &mut trainer,
            train,
            val,
            progress,
            metrics,
            loss_text,
            signals,
        )
    }
}

/// Runs `trainer` with a progress bar on a terminal (log lines otherwise), showing losses with
/// `loss_text` and evaluations with their accuracy, and says where the result is. Returns the
/// exit status when the run was interrupted (after saying how to continue), `None` when it
/// finished.
fn run_reported(
    trainer: &mut Trainer,
    train: &mut dyn TrainBatches,
    val: Validation,
    progress: Progress,
    metrics: &mut Metrics,
    loss_text: &dyn Fn(f64) -> String,
    signals: &Signals,
) -> anyhow::Result<Option<u8>> {
    let total = trainer.run.steps;
    let bar = std::io::stderr()
        .is_terminal()
        .then(|| progress_bar(total, progress.step));
    let mut reporter = Reporter {
        total,
        bar: bar.as_ref(),
        val_msg: String::new(),
        loss_text,
        eta: Eta::new(progress.step, total, trainer.run.eval_every),
    };
    let outcome = trainer.run(train, val, progress, metrics, |e| reporter.show(e))?;
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

/// The bar shows the time left that [`Eta`] estimates as its prefix.
fn progress_bar(total: u64, at: u64) -> ProgressBar {
    let bar = ProgressBar::new(total).with_position(at);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise} < {prefix}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix("?");
    bar
}

/// The time left of a run: the steps left at the time per step measured so far without
/// evaluations, plus the evaluations left at the time the last one took.
struct Eta {
    clock: Instant,
    from: u64,
    total: u64,
    eval_every: u64,
    /// Seconds spent evaluating since `clock`.
    evaluating: f64,
    last_eval: f64,
}

impl Eta {
    fn new(from: u64, total: u64, eval_every: u64) -> Self {
        Eta {
            clock: Instant::now(),
            from,
            total,
            eval_every,
            evaluating: 0.0,
            last_eval: 0.0,
        }
    }

    fn evaluated(&mut self, seconds: f64) {
        self.evaluating += seconds;
        self.last_eval = seconds;
    }

    /// The evaluations due after `step`: one every `eval_every` steps and one at the end.
    fn evals_after(&self, step: u64) -> u64 {
        let periodic = match self.eval_every {
            0 => 0,
            every => self.total / every - step / every,
        };
        let at_end = u64::from(self.eval_every == 0 || !self.total.is_multiple_of(self.eval_every));
        periodic + if step < self.total { at_end } else { 0 }
    }

    /// The time left after `step`, as the bar shows it.
    fn left(&self, step: u64) -> String {
        let done = step.saturating_sub(self.from);
        if done == 0 {
            return "?".into();
        }
        let training = (self.clock.elapsed().as_secs_f64() - self.evaluating).max(0.0);
        let seconds = training / done as f64 * self.total.saturating_sub(step) as f64
            + self.last_eval * self.evals_after(step) as f64;
        let s = seconds.round() as u64;
        format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    }
}

/// Shows the events of a run of `total` steps on the progress bar or as log lines.
struct Reporter<'r> {
    total: u64,
    bar: Option<&'r ProgressBar>,
    /// The last validation loss, for the bar's message.
    val_msg: String,
    loss_text: &'r dyn Fn(f64) -> String,
    eta: Eta,
}

impl Reporter<'_> {
    fn line(&self, line: String) {
        match self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn show(&mut self, e: &Event) {
        let loss_text = self.loss_text;
        match *e {
            Event::Train {
                step,
                loss,
                grad_norm,
                tokens_per_sec,
                lr,
            } => {
                let msg = format!(
                    "loss {}{}  {tokens_per_sec:.0} tok/s  lr {lr:.2e}  |g| {grad_norm:.2}",
                    loss_text(loss),
                    self.val_msg
                );
                match self.bar {
                    Some(b) => {
                        b.set_position(step);
                        b.set_prefix(self.eta.left(step));
                        b.set_message(msg);
                    }
                    None => eprintln!("step {step:>7}/{}  {msg}", self.total),
                }
            }
            Event::Eval {
                step,
                epoch,
                loss,
                best,
                accuracy,
                scored,
                last,
            } => {
                self.eta.evaluated(scored.seconds);
                let acc =
                    accuracy.map_or(String::new(), |a| format!(", accuracy {:.2}%", 100.0 * a));
                let sequences = scored
                    .sequences
                    .map_or(String::new(), |(n, kind)| format!("{n} {kind}, "));
                let unit = match scored.sequences {
                    Some((_, SequenceKind::Pairs)) => "steps",
                    _ => "tokens",
                };
                let what = if last { "final " } else { "" };
                if !last {
                    self.val_msg = format!("  val {}{acc}", loss_text(loss));
                }
                let epoch = epoch.map_or(String::new(), |e| format!("epoch {e}  "));
                self.line(format!(
                    "{epoch}step {step:>7}  {what}validation loss {}{acc}{}  ({sequences}{} {unit} \
                     in {:.1} s)",
                    loss_text(loss),
                    if best { "  best so far" } else { "" },
                    scored.tokens,
                    scored.seconds
                ));
            }
            Event::Saved { .. } => {}
            Event::Diverged {
                step,
                back_to,
                ref reason,
                lr,
            } => self.line(format!(
                "step {step:>7}  diverged ({reason}); back to the state of step {back_to}, \
                 continuing with learning rate {lr:.3e}"
            )),
        }
    }
}
