//! The training loop over any [`Engine`] and any [`TrainBatches`] source (language-model streams
//! with carried state, or pairs): one optimizer step per batch, periodic evaluation on the
//! validation set (with accuracy where the set reports it), metrics,
//! checkpoints (`model.safetensors`, `best.safetensors`, `state.safetensors`) and a clean stop
//! on interruption.

use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::data::corpus::Tokens;
use crate::data::lm::StreamEval;
use crate::data::vocab::Vocab;
use crate::data::{EvalSet, SequenceKind, TrainBatches};
use crate::dist::{self, Group};
use crate::engine::{Batch, Engine, LossStats, Targets, for_each_output_chunk};
use crate::error::{Error, Result};
use crate::model::{Checkpoint, ModelConfig, OutputKind};
use crate::train::metrics::{Metrics, Record};
use crate::train::optim::OptimizerConfig;
use crate::train::state::{OnNan, Progress, RunSpec, TrainState};

/// File name of the best model (lowest validation loss) in a run directory.
pub const BEST_FILE: &str = "best.safetensors";

/// One training step on `batch`: reset the state to zero when `reset` (else the carried state is
/// the initial state), forward, BPTT, optimizer update with `lr`, then carry the final state.
pub fn train_step(
    engine: &mut dyn Engine,
    batch: &Batch,
    reset: bool,
    opt: &OptimizerConfig,
    lr: f32,
) -> Result<()> {
    if reset {
        engine.reset_state(batch.rows)?;
    }
    engine.upload_batch(batch)?;
    engine.zero_grads()?;
    engine.forward()?;
    engine.backward()?;
    engine.optimizer_step(opt, lr)?;
    engine.carry_state()
}

/// Loss over every target of `set`, leaving the engine's carried training state as it was.
/// Dropout is turned off.
pub fn evaluate(engine: &mut dyn Engine, set: &dyn EvalSet) -> Result<LossStats> {
    evaluate_with(engine, set, None)
}

/// Called with every evaluated batch chunk by chunk, as the output layer ran it: the batch, the
/// rows of the chunk and the engine's outputs for them (`rows.len() * V`).
pub type OnOutputs<'a> = &'a mut dyn FnMut(&Batch, Range<usize>, &[f32]) -> Result<()>;

/// Like [`evaluate`], calling `on_outputs` with every batch and the engine's outputs for it,
/// one chunk of rows at a time (read back only when `on_outputs` is given), so that no more
/// than one chunk of `T * B * V` outputs is held at once.
pub fn evaluate_with(
    engine: &mut dyn Engine,
    set: &dyn EvalSet,
    on_outputs: Option<OnOutputs>,
) -> Result<LossStats> {
    engine.set_grad_enabled(false)?;
    let scored = score(engine, set, on_outputs);
    engine.set_grad_enabled(true)?;
    scored
}

/// [`evaluate_with`] on an engine whose forwards keep no gradient.
fn score(
    engine: &mut dyn Engine,
    set: &dyn EvalSet,
    mut on_outputs: Option<OnOutputs>,
) -> Result<LossStats> {
    let saved = engine.state()?;
    engine.set_dropout(None)?;
    let per_row = engine.config().state_size_per_row();
    let mut total = LossStats {
        sum: 0.0,
        count: 0.0,
    };
    let mut first = true;
    for batch in set.batches()? {
        if first || !set.carries_state() {
            engine.reset_state(batch.rows)?;
            first = false;
        }
        engine.upload_batch(&batch)?;
        engine.forward()?;
        let l = engine.loss()?;
        total.sum += l.sum;
        total.count += l.count;
        if let Some(f) = on_outputs.as_mut() {
            // A data-parallel engine's outputs are those of its share of the batch.
            let share = engine.share_of(&batch).into_owned();
            for_each_output_chunk(engine, |rows, p| f(&share, rows, p))?;
        }
        if set.carries_state() {
            engine.carry_state()?;
        }
    }
    engine.set_state(saved.len() / per_row, &saved)?;
    Ok(total)
}

/// Correct predictions among the counted targets of `rows` of `batch`, given their outputs `p`
/// (`rows.len() * V`): `(correct, judged)`. A softmax step is correct when its most likely
/// class is the target; each sigmoid output is judged on its own, correct when `p >= 0.5`
/// agrees with `y >= 0.5`. Identity outputs have no accuracy: `(0, 0)`.
pub fn count_correct(
    config: &ModelConfig,
    batch: &Batch,
    rows: Range<usize>,
    p: &[f32],
) -> (f64, f64) {
    let v = config.output_size;
    let counted = |r: &usize| batch.mask.as_ref().is_none_or(|m| m[*r] > 0.0);
    let (mut correct, mut judged) = (0.0, 0.0);
    if p.len() < rows.len() * v || rows.end > batch.steps * batch.rows {
        return (correct, judged);
    }
    let start = rows.start;
    let step = |r: usize| &p[(r - start) * v..(r - start + 1) * v];
    match (&batch.targets, config.output_kind) {
        (Targets::Classes(y), OutputKind::Softmax) => {
            for r in rows.filter(counted) {
                correct += f64::from(argmax(step(r)) == y[r] as usize);
                judged += 1.0;
            }
        }
        (Targets::Dense(y), OutputKind::Sigmoid) => {
            for r in rows.filter(counted) {
                for (&pk, &yk) in step(r).iter().zip(&y[r * v..(r + 1) * v]) {
                    correct += f64::from((pk >= 0.5) == (yk >= 0.5));
                    judged += 1.0;
                }
            }
        }
        _ => {}
    }
    (correct, judged)
}

/// Index of the largest value (the first of equals).
pub fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &x)| {
            if x > best.1 { (i, x) } else { best }
        })
        .0
}

/// Loss over `set` and, when the set reports it and the output has one, the accuracy.
pub fn evaluate_accuracy(
    engine: &mut dyn Engine,
    set: &dyn EvalSet,
) -> Result<(LossStats, Option<f64>)> {
    if !set.reports_accuracy() || engine.config().output_kind == OutputKind::Identity {
        return Ok((evaluate(engine, set)?, None));
    }
    let config = engine.config().clone();
    let (mut correct, mut judged) = (0.0, 0.0);
    let mut tally = |batch: &Batch, rows: Range<usize>, p: &[f32]| {
        let (c, j) = count_correct(&config, batch, rows, p);
        correct += c;
        judged += j;
        Ok(())
    };
    let loss = evaluate_with(engine, set, Some(&mut tally))?;
    let mut counts = [correct, judged];
    engine.sum_over_shares(&mut counts)?;
    let [correct, judged] = counts;
    Ok((loss, (judged > 0.0).then(|| correct / judged)))
}

/// Language-model loss over every next-token prediction of `tokens`, as B carried streams of
/// windows of T.
pub fn evaluate_lm(
    engine: &mut dyn Engine,
    tokens: &dyn Tokens,
    rows: usize,
    steps: usize,
) -> Result<LossStats> {
    evaluate(
        engine,
        &StreamEval {
            tokens,
            rows,
            steps,
            limit: None,
        },
    )
}

/// The most rows of an evaluation batch (see docs/ARCHITECTURE.md, "Tuning numbers").
pub const EVAL_ROWS: usize = 256;
/// The most output values (`T * B * V`) an evaluation batch may hold, 64 MiB of f32 (see
/// docs/ARCHITECTURE.md, "Tuning numbers").
pub const EVAL_OUTPUTS: usize = 1 << 24;

/// The rows of an evaluation batch for a model of `config` trained with `rows` rows of `steps`
/// steps: evaluation keeps no activations for backpropagation, so it takes [`EVAL_ROWS`] rows
/// while their outputs stay within [`EVAL_OUTPUTS`] values, and never fewer than training. It
/// depends on the run's settings alone, so every evaluation of a run, resumed or not and on
/// either engine, cuts the same batches.
pub fn eval_rows(config: &ModelConfig, rows: usize, steps: usize) -> usize {
    let per_row = steps.max(1).saturating_mul(config.output_size.max(1));
    (EVAL_OUTPUTS / per_row).min(EVAL_ROWS).max(rows)
}

/// The validation sets of a run: `periodic` is scored at every evaluation (and drives
/// best.safetensors and the schedule); `closing`, when there is one, is scored once more after
/// the last step (all of the validation part, when `periodic` is a spread subset of it) and is
/// compared with nothing.
#[derive(Clone, Copy)]
pub struct Validation<'v> {
    pub periodic: &'v dyn EvalSet,
    pub closing: Option<&'v dyn EvalSet>,
}

impl<'v> Validation<'v> {
    /// A run that scores all of `set` at every evaluation.
    pub fn whole(set: &'v dyn EvalSet) -> Self {
        Validation {
            periodic: set,
            closing: None,
        }
    }
}

/// What an evaluation scored and how long it took.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scored {
    /// Predictions (tokens, or pair steps) scored.
    pub tokens: u64,
    /// For sets of sequences, how many were scored and what they are.
    pub sequences: Option<(usize, SequenceKind)>,
    pub seconds: f64,
    /// Whether all of the validation part was scored.
    pub whole: bool,
}

/// A progress event for the caller to show.
#[derive(Clone, Debug)]
pub enum Event {
    /// Training loss of step `step` (1-based), with throughput since the last report.
    Train {
        step: u64,
        loss: f64,
        grad_norm: f32,
        tokens_per_sec: f64,
        lr: f32,
    },
    /// Validation loss after `step` steps; `best` when it is the lowest so far. `accuracy`: the
    /// fraction of correct class or binary predictions, for sets that report it. `last`: the
    /// closing evaluation after the last step of a run whose periodic evaluations score a
    /// subset (it is not compared with them). `epoch`: the passes over the training data
    /// completed, when the evaluation is the one at the end of a pass (`--eval-every epoch`).
    Eval {
        step: u64,
        epoch: Option<u64>,
        loss: f64,
        best: bool,
        accuracy: Option<f64>,
        scored: Scored,
        last: bool,
    },
    /// Model and state saved after `step` steps.
    Saved { step: u64 },
    /// The run diverged at a report after `step` steps; it went back to the state saved after
    /// `back_to` steps and continues from there with learning rate `lr`.
    Diverged {
        step: u64,
        back_to: u64,
        reason: String,
        lr: f32,
    },
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// All steps were taken.
    Finished,
    /// Stopped by the interrupt flag after `step` steps, with everything saved.
    Interrupted { step: u64 },
}

/// A training run writing into a directory.
pub struct Trainer<'a> {
    pub engine: &'a mut dyn Engine,
    /// The vocabulary of a language model, saved with it; `None` for pairs.
    pub vocab: Option<&'a Vocab>,
    pub run: &'a RunSpec,
    pub out: &'a Path,
    /// Checked after every step; when set, the run saves and returns [`Outcome::Interrupted`].
    pub interrupt: Option<&'a AtomicBool>,
    /// The processes of a data-parallel run ([`Solo`] for a process alone): they stop together
    /// when any of them is interrupted, and only rank 0 writes files.
    pub group: &'a dyn Group,
}

impl Trainer<'_> {
    /// The full training state after `progress`, read from the engine.
    fn snapshot(&mut self, progress: &Progress) -> Result<TrainState> {
        let state = self.engine.state()?;
        let per_row = self.engine.config().state_size_per_row();
        Ok(TrainState {
            config: self.engine.config().clone(),
            vocab: self.vocab.cloned(),
            run: self.run.clone(),
            progress: progress.clone(),
            params: self.engine.params()?,
            optimizer: self.engine.optimizer_state()?,
            state_rows: state.len() / per_row,
            state,
        })
    }

    /// Saves the training state and `model.safetensors` (state first: it is what a resume
    /// reads, and it holds the parameters too).
    fn write(&self, state: &TrainState) -> Result<()> {
        if !self.group.is_root() {
            return Ok(());
        }
        state.save(self.out)?;
        self.checkpoint(state.params.clone()).save_dir(self.out)?;
        Ok(())
    }

    fn checkpoint(&self, params: Vec<f32>) -> Checkpoint {
        Checkpoint {
            config: self.engine.config().clone(),
            vocab: self.vocab.cloned(),
            params,
        }
    }

    /// Why the run has diverged, if it has: the last update's gradient norm was not finite (the
    /// engine skipped that update), or `loss` is not finite.
    fn divergence(&mut self, loss: Option<f64>) -> Result<Option<String>> {
        match self.engine.grad_norm() {
            Err(e @ Error::Diverged { .. }) => Ok(Some(e.to_string())),
            Err(e) => Err(e),
            Ok(_) => Ok(loss
                .filter(|l| !l.is_finite())
                .map(|l| format!("the training loss is {l}"))),
        }
    }

    /// Applies the run's divergence policy: stop with an error, or go back to the last saved
    /// training state (parameters, moments, carried state, data position) and continue from
    /// there with half the learning rate (giving up below a millionth of it).
    fn on_divergence(
        &mut self,
        train: &mut dyn TrainBatches,
        progress: &mut Progress,
        reason: String,
    ) -> Result<Event> {
        let run = self.run;
        let step = progress.step;
        if run.on_nan == OnNan::Stop || progress.lr_scale < 1e-6 {
            return Err(Error::TrainingDiverged {
                step,
                reason,
                out: self.out.to_path_buf(),
            });
        }
        let good = TrainState::load_shared(self.out, self.group)?;
        self.engine.set_params(&good.params)?;
        self.engine.set_optimizer_state(&good.optimizer)?;
        self.engine.set_state(good.state_rows, &good.state)?;
        let scale = progress.lr_scale * 0.5;
        *progress = good.progress;
        progress.lr_scale = scale;
        train.seek(&progress.position)?;
        Ok(Event::Diverged {
            step,
            back_to: progress.step,
            reason,
            lr: progress.schedule.lr(&run.schedule, run.lr, progress.step) * scale,
        })
    }

    /// Runs from `progress` to `run.steps` on batches from `train`, evaluating on `val`, calling
    /// `on_event` with progress.
    pub fn run(
        &mut self,
        train: &mut dyn TrainBatches,
        val: Validation,
        progress: Progress,
        metrics: &mut Metrics,
        on_event: impl FnMut(&Event),
    ) -> Result<Outcome> {
        let steps = self.run.steps;
        let mut pass = Pass::start(self, train, val, progress, metrics, on_event)?;
        let took_steps = pass.progress.step < steps;
        if pass.progress.step == 0 {
            // The initial state: what `--steps 0` asks for, and where a run that diverges
            // before its first checkpoint goes back to.
            pass.progress.position = pass.train.position();
            let state = pass.trainer.snapshot(&pass.progress)?;
            pass.trainer.write(&state)?;
            pass.saved_at = Some(0);
        }
        while pass.progress.step < steps {
            if let Some(outcome) = pass.step()? {
                return Ok(outcome);
            }
        }
        pass.finish(took_steps)
    }
}

/// One call of [`Trainer::run`]: the trainer with its data, metrics and listener, and what the
/// loop carries from step to step.
struct Pass<'p, 't, F: FnMut(&Event)> {
    trainer: &'p mut Trainer<'t>,
    train: &'p mut dyn TrainBatches,
    val: Validation<'p>,
    metrics: &'p mut Metrics,
    on_event: F,
    progress: Progress,
    /// Class outputs report a perplexity beside the loss.
    classes: bool,
    /// Throughput: tokens trained on since `clock`.
    clock: Instant,
    tokens_since: usize,
    /// The step whose state was last saved by the loop.
    saved_at: Option<u64>,
}

impl<'p, 't, F: FnMut(&Event)> Pass<'p, 't, F> {
    /// The pass from `progress`, with the batches of `train` positioned there.
    fn start(
        trainer: &'p mut Trainer<'t>,
        train: &'p mut dyn TrainBatches,
        val: Validation<'p>,
        progress: Progress,
        metrics: &'p mut Metrics,
        on_event: F,
    ) -> Result<Self> {
        let classes = trainer.engine.config().output_kind == OutputKind::Softmax;
        if !progress.position.is_null() {
            train.seek(&progress.position)?;
        }
        trainer
            .engine
            .set_edge_dropout(trainer.run.edge_dropout())?;
        Ok(Pass {
            trainer,
            train,
            val,
            metrics,
            on_event,
            progress,
            classes,
            clock: Instant::now(),
            tokens_since: 0,
            saved_at: None,
        })
    }

    /// One optimizer step, then what is due after it: the loss report, the evaluation, the
    /// checkpoint, and the stop on interruption (its outcome).
    fn step(&mut self) -> Result<Option<Outcome>> {
        let run = self.trainer.run;
        let progress = &mut self.progress;
        let lr = progress.schedule.lr(&run.schedule, run.lr, progress.step) * progress.lr_scale;
        let epochs = self.train.epochs_done();
        let (batch, reset) = self.train.next_batch()?;
        // The epoch this batch completed, when it ends one and evaluations follow epochs.
        let epoch = (run.eval_each_epoch && self.train.epochs_done() > epochs)
            .then(|| self.train.epochs_done());
        let engine = &mut *self.trainer.engine;
        engine.set_dropout(run.dropout_at(progress.step))?;
        train_step(engine, &batch, reset, &run.optimizer, lr)?;
        progress.step += 1;
        progress.position = self.train.position();
        self.tokens_since += batch.count() as usize;
        let step = progress.step;
        let last = step == run.steps;
        let mut diverged = false;
        if run.log_every > 0 && (step.is_multiple_of(run.log_every) || last) {
            diverged = self.report_loss(step, lr)?;
        }
        let eval_now =
            (run.eval_every > 0 && step.is_multiple_of(run.eval_every)) || epoch.is_some() || last;
        if eval_now && !self.val.periodic.is_empty() && !diverged {
            diverged = self.evaluate((step, epoch), lr)?;
            if let Some(closing) = self.val.closing.filter(|_| last && !diverged) {
                self.evaluate_closing(closing, step, lr)?;
            }
        }
        let due = eval_now
            || last
            || (run.checkpoint_every > 0 && step.is_multiple_of(run.checkpoint_every));
        // Nothing is saved from a diverged step: the last good checkpoint stays.
        if due && !diverged && !self.diverged_before_save()? && self.save()? {
            (self.on_event)(&Event::Saved { step });
        }
        let interrupted = self
            .trainer
            .interrupt
            .is_some_and(|f| f.load(Ordering::SeqCst));
        // Every rank stops after the same step when any of them is interrupted.
        let interrupted = dist::any(self.trainer.group, interrupted)?;
        if interrupted && !last {
            return self.stop(step).map(Some);
        }
        Ok(None)
    }

    fn restart_clock(&mut self) {
        self.clock = Instant::now();
        self.tokens_since = 0;
    }

    /// Applies the divergence policy (see [`Trainer::on_divergence`]) and reports it.
    fn diverge(&mut self, reason: String) -> Result<()> {
        let event = self
            .trainer
            .on_divergence(self.train, &mut self.progress, reason)?;
        (self.on_event)(&event);
        Ok(())
    }

    /// Reports the training loss of `step` (taken with `lr`) and records it, after handling a
    /// divergence; whether the run diverged.
    fn report_loss(&mut self, step: u64, lr: f32) -> Result<bool> {
        let loss = self.trainer.engine.loss()?.mean();
        let mut diverged = false;
        if let Some(reason) = self.trainer.divergence(Some(loss))? {
            self.diverge(reason)?;
            diverged = true;
        }
        let grad_norm = self.trainer.engine.grad_norm().unwrap_or(f32::NAN);
        let tokens_per_sec =
            self.tokens_since as f64 / self.clock.elapsed().as_secs_f64().max(1e-9);
        (self.on_event)(&Event::Train {
            step,
            loss,
            grad_norm,
            tokens_per_sec,
            lr,
        });
        self.metrics.push(Record {
            train_loss: Some(loss),
            tokens_per_sec: Some(tokens_per_sec),
            grad_norm: Some(grad_norm),
            ..Record::of_loss(step, loss, self.classes, lr)
        })?;
        self.restart_clock();
        Ok(diverged)
    }

    /// Evaluates on the validation set after `step`: feeds the schedule, saves the best model,
    /// reports and records the loss; a loss that is not finite is a divergence. Whether the run
    /// diverged.
    fn evaluate(&mut self, (step, epoch): (u64, Option<u64>), lr: f32) -> Result<bool> {
        let (stats, accuracy, scored) = self.score(self.val.periodic)?;
        let loss = stats.mean();
        if !loss.is_finite() {
            self.diverge(format!("the validation loss is {loss}"))?;
            return Ok(true);
        }
        let run = self.trainer.run;
        self.progress.schedule.observe(&run.schedule, loss);
        let best = self.progress.best_val.is_none_or(|b| loss < b);
        if best {
            let params = self.trainer.engine.params()?;
            if let Some(what) = self.trainer.engine.layout().first_non_finite(&params) {
                self.diverge(what)?;
                return Ok(true);
            }
            self.progress.best_val = Some(loss);
            if self.trainer.group.is_root() {
                let best_file = self.trainer.out.join(BEST_FILE);
                self.trainer.checkpoint(params).save(&best_file)?;
            }
        }
        self.check_same_params()?;
        self.report_eval((step, epoch), lr, (loss, accuracy), best, scored, false)?;
        Ok(false)
    }

    /// Checks that every rank of a data-parallel run holds the same parameters (a checksum of
    /// them, compared at every evaluation): a mismatch is an error naming the ranks.
    fn check_same_params(&mut self) -> Result<()> {
        let group = self.trainer.group;
        if group.size() == 1 {
            return Ok(());
        }
        let params = self.trainer.engine.params()?;
        dist::check_same(
            group,
            "parameters (their checksum differs)",
            dist::checksum(&params),
        )
    }

    /// Scores the closing set after the last step; reported and recorded, compared with
    /// nothing.
    fn evaluate_closing(&mut self, set: &dyn EvalSet, step: u64, lr: f32) -> Result<()> {
        let (stats, accuracy, scored) = self.score(set)?;
        self.report_eval(
            (step, None),
            lr,
            (stats.mean(), accuracy),
            false,
            scored,
            true,
        )
    }

    /// Evaluates on `set`, timed.
    fn score(&mut self, set: &dyn EvalSet) -> Result<(LossStats, Option<f64>, Scored)> {
        let clock = Instant::now();
        let (stats, accuracy) = evaluate_accuracy(self.trainer.engine, set)?;
        let scored = Scored {
            tokens: stats.count.round() as u64,
            sequences: set.sequences(),
            seconds: clock.elapsed().as_secs_f64(),
            whole: set.is_whole(),
        };
        Ok((stats, accuracy, scored))
    }

    /// Reports an evaluation's `(loss, accuracy)` and records it with what it scored.
    fn report_eval(
        &mut self,
        (step, epoch): (u64, Option<u64>),
        lr: f32,
        (loss, accuracy): (f64, Option<f64>),
        best: bool,
        scored: Scored,
        last: bool,
    ) -> Result<()> {
        (self.on_event)(&Event::Eval {
            step,
            epoch,
            loss,
            best,
            accuracy,
            scored,
            last,
        });
        let sequences = |kind| {
            scored
                .sequences
                .filter(|&(_, k)| k == kind)
                .map(|(n, _)| n as u64)
        };
        self.metrics.push(Record {
            val_loss: Some(loss),
            val_accuracy: accuracy,
            val_tokens: Some(scored.tokens),
            val_lines: sequences(SequenceKind::Lines),
            val_pairs: sequences(SequenceKind::Pairs),
            val_final: last.then_some(true),
            epoch,
            ..Record::of_loss(step, loss, self.classes, lr)
        })?;
        self.metrics.plot()
    }

    /// Saves the training state and model of the current progress, unless a value in them is
    /// not finite: parameters can overflow while the loss and the gradient norm stay finite
    /// (a huge step on a unit that a ReLU keeps silent). Then the run has diverged, the policy
    /// applies, and nothing is written. Whether it saved.
    fn save(&mut self) -> Result<bool> {
        let state = self.trainer.snapshot(&self.progress)?;
        if let Some(what) = state.first_non_finite() {
            self.diverge(what)?;
            return Ok(false);
        }
        self.trainer.write(&state)?;
        self.saved_at = Some(self.progress.step);
        Ok(true)
    }

    /// Whether the last update diverged (then handled), checked before a checkpoint is written.
    fn diverged_before_save(&mut self) -> Result<bool> {
        match self.trainer.divergence(None)? {
            Some(reason) => {
                self.diverge(reason)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Stops on interruption after `step`, with everything saved (or, when the state of `step`
    /// is not finite, at the last good state, which is on disk).
    fn stop(&mut self, step: u64) -> Result<Outcome> {
        if self.saved_at != Some(step) && self.save()? {
            (self.on_event)(&Event::Saved { step });
        }
        self.metrics.plot()?;
        self.trainer.engine.set_dropout(None)?;
        Ok(Outcome::Interrupted {
            step: self.progress.step,
        })
    }

    /// Ends a pass that took every step (or none: `took_steps` false).
    fn finish(mut self, took_steps: bool) -> Result<Outcome> {
        if !took_steps && self.saved_at.is_none() {
            // Zero steps, or a resume of a finished run: still leave a consistent directory.
            // (After steps, the last one saved unless it diverged; then the last good
            // checkpoint stays.)
            self.save()?;
        }
        self.metrics.plot()?;
        // Leave the engine as evaluation and sampling expect it.
        self.trainer.engine.set_dropout(None)?;
        Ok(Outcome::Finished)
    }
}
