//! The training loop of a language model over any [`Engine`]: stream batches with carried state,
//! one optimizer step per batch, periodic evaluation on the validation tokens, metrics,
//! checkpoints (`model.safetensors`, `best.safetensors`, `state.safetensors`) and a clean stop
//! on interruption.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::data::corpus::Tokens;
use crate::data::lm::{EvalBatches, StreamBatches};
use crate::data::vocab::Vocab;
use crate::engine::{Batch, Engine, LossStats};
use crate::error::Result;
use crate::model::Checkpoint;
use crate::train::metrics::{Metrics, Record};
use crate::train::optim::OptimizerConfig;
use crate::train::state::{Progress, RunSpec, TrainState};

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

/// Loss over every next-token prediction of `tokens` (see [`EvalBatches`]), leaving the engine's
/// carried training state as it was. Dropout is turned off.
pub fn evaluate(
    engine: &mut dyn Engine,
    tokens: &dyn Tokens,
    rows: usize,
    steps: usize,
) -> Result<LossStats> {
    let saved = engine.state()?;
    engine.set_dropout(None)?;
    let per_row = engine.config().state_size_per_row();
    let batches = EvalBatches::new(tokens, rows, steps)?;
    engine.reset_state(batches.rows())?;
    let mut total = LossStats {
        sum: 0.0,
        count: 0.0,
    };
    for batch in batches {
        engine.upload_batch(&batch)?;
        engine.forward()?;
        let l = engine.loss()?;
        total.sum += l.sum;
        total.count += l.count;
        engine.carry_state()?;
    }
    engine.set_state(saved.len() / per_row, &saved)?;
    Ok(total)
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
    /// Validation loss after `step` steps; `best` when it is the lowest so far.
    Eval { step: u64, loss: f64, best: bool },
    /// Model and state saved after `step` steps.
    Saved { step: u64 },
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// All steps were taken.
    Finished,
    /// Stopped by the interrupt flag after `step` steps, with everything saved.
    Interrupted { step: u64 },
}

/// A language-model training run writing into a directory.
pub struct Trainer<'a> {
    pub engine: &'a mut dyn Engine,
    pub vocab: &'a Vocab,
    pub run: &'a RunSpec,
    pub out: &'a Path,
    /// Checked after every step; when set, the run saves and returns [`Outcome::Interrupted`].
    pub interrupt: Option<&'a AtomicBool>,
}

impl Trainer<'_> {
    /// Saves `model.safetensors` and the full training state (state first: it is what a resume
    /// reads, and it holds the parameters too).
    fn save(&mut self, progress: &Progress) -> Result<()> {
        let params = self.engine.params()?;
        let state = self.engine.state()?;
        let per_row = self.engine.config().state_size_per_row();
        TrainState {
            config: self.engine.config().clone(),
            vocab: self.vocab.clone(),
            run: self.run.clone(),
            progress: progress.clone(),
            params: params.clone(),
            optimizer: self.engine.optimizer_state()?,
            state_rows: state.len() / per_row,
            state,
        }
        .save(self.out)?;
        self.checkpoint(params).save_dir(self.out)?;
        Ok(())
    }

    fn checkpoint(&self, params: Vec<f32>) -> Checkpoint {
        Checkpoint {
            config: self.engine.config().clone(),
            vocab: Some(self.vocab.clone()),
            params,
        }
    }

    /// Runs from `progress` to `run.steps`, calling `on_event` with progress.
    pub fn run(
        &mut self,
        train: &dyn Tokens,
        val: &dyn Tokens,
        mut progress: Progress,
        metrics: &mut Metrics,
        mut on_event: impl FnMut(&Event),
    ) -> Result<Outcome> {
        let run = self.run;
        let mut batches = StreamBatches::new(train.len(), run.batch, run.seq_len)?;
        batches.seek(progress.position)?;
        let mut clock = Instant::now();
        let mut tokens_since = 0usize;
        let mut saved_at = None;
        while progress.step < run.steps {
            let lr = progress.schedule.lr(&run.schedule, run.lr, progress.step);
            let (batch, reset) = batches.next_batch(train);
            self.engine.set_dropout(run.dropout_at(progress.step))?;
            train_step(self.engine, &batch, reset, &run.optimizer, lr)?;
            progress.step += 1;
            progress.position = batches.position();
            tokens_since += batch.rows * batch.steps;
            let step = progress.step;
            let last = step == run.steps;
            if run.log_every > 0 && (step.is_multiple_of(run.log_every) || last) {
                let loss = self.engine.loss()?.mean();
                let grad_norm = self.engine.grad_norm()?;
                let tokens_per_sec = tokens_since as f64 / clock.elapsed().as_secs_f64().max(1e-9);
                on_event(&Event::Train {
                    step,
                    loss,
                    grad_norm,
                    tokens_per_sec,
                    lr,
                });
                metrics.push(Record {
                    step,
                    train_loss: Some(loss),
                    bits_per_token: loss / std::f64::consts::LN_2,
                    tokens_per_sec: Some(tokens_per_sec),
                    lr,
                    grad_norm: Some(grad_norm),
                    ..Record::default()
                })?;
                clock = Instant::now();
                tokens_since = 0;
            }
            let eval_now = (run.eval_every > 0 && step.is_multiple_of(run.eval_every)) || last;
            if eval_now && val.len() >= 2 {
                let loss = evaluate(self.engine, val, run.batch, run.seq_len)?.mean();
                progress.schedule.observe(&run.schedule, loss);
                let best = progress.best_val.is_none_or(|b| loss < b);
                if best {
                    progress.best_val = Some(loss);
                    let params = self.engine.params()?;
                    self.checkpoint(params).save(&self.out.join(BEST_FILE))?;
                }
                on_event(&Event::Eval { step, loss, best });
                metrics.push(Record {
                    step,
                    val_loss: Some(loss),
                    bits_per_token: loss / std::f64::consts::LN_2,
                    lr,
                    ..Record::default()
                })?;
                metrics.plot()?;
            }
            let save_now = eval_now
                || last
                || (run.checkpoint_every > 0 && step.is_multiple_of(run.checkpoint_every));
            if save_now {
                self.save(&progress)?;
                saved_at = Some(step);
                on_event(&Event::Saved { step });
            }
            if save_now || eval_now {
                clock = Instant::now();
                tokens_since = 0;
            }
            if self.interrupt.is_some_and(|f| f.load(Ordering::SeqCst)) && !last {
                if saved_at != Some(step) {
                    self.save(&progress)?;
                    on_event(&Event::Saved { step });
                }
                metrics.plot()?;
                self.engine.set_dropout(None)?;
                return Ok(Outcome::Interrupted { step });
            }
        }
        if saved_at != Some(progress.step) {
            // A resume of a finished run, or zero steps: still leave a consistent directory.
            self.save(&progress)?;
        }
        metrics.plot()?;
        // Leave the engine as evaluation and sampling expect it.
        self.engine.set_dropout(None)?;
        Ok(Outcome::Finished)
    }
}
