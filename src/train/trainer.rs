//! The training loop of a language model over any [`Engine`]: stream batches with carried state,
//! one optimizer step per batch, periodic evaluation on the validation tokens, checkpoints.

use std::time::Instant;

use crate::data::lm::{EvalBatches, StreamBatches};
use crate::engine::{Batch, Engine, LossStats};
use crate::error::Result;
use crate::train::optim::OptimizerConfig;

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
/// carried training state as it was.
pub fn evaluate(
    engine: &mut dyn Engine,
    tokens: &[u32],
    rows: usize,
    steps: usize,
) -> Result<LossStats> {
    let saved = engine.state()?;
    let saved_rows = saved.len() / (engine.config().layers * engine.config().hidden_size);
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
    engine.set_state(saved_rows, &saved)?;
    Ok(total)
}

/// What the language-model trainer is asked to do.
#[derive(Clone, Debug)]
pub struct LmSchedule {
    pub steps: u64,
    pub batch: usize,
    pub seq_len: usize,
    pub optimizer: OptimizerConfig,
    pub lr: f32,
    /// Evaluate every this many steps (0: only at the end).
    pub eval_every: u64,
    /// Read the training loss back every this many steps (a GPU engine waits for it).
    pub log_every: u64,
}

/// A progress event for the caller to print or record.
#[derive(Clone, Debug)]
pub enum Event {
    /// Training loss of step `step` (1-based), with throughput since the last report.
    Train {
        step: u64,
        loss: f64,
        grad_norm: f32,
        tokens_per_sec: f64,
    },
    /// Validation loss after `step` steps.
    Eval { step: u64, loss: f64 },
}

/// Trains `engine` on `train` tokens, evaluating on `val` tokens, calling `on_event` with
/// progress, and `on_checkpoint(step)` after each evaluation (for saving). Returns the final
/// validation loss, if there are validation tokens.
pub fn train_lm(
    engine: &mut dyn Engine,
    train: &[u32],
    val: &[u32],
    schedule: &LmSchedule,
    mut on_event: impl FnMut(&Event),
    mut on_checkpoint: impl FnMut(&mut dyn Engine, u64) -> Result<()>,
) -> Result<Option<f64>> {
    let mut batches = StreamBatches::new(train.len(), schedule.batch, schedule.seq_len)?;
    let mut clock = Instant::now();
    let mut tokens_since = 0usize;
    let mut last_val = None;
    let eval_rows = schedule.batch;
    let eval_steps = schedule.seq_len;
    for step in 1..=schedule.steps {
        let (batch, reset) = batches.next_batch(train);
        train_step(engine, &batch, reset, &schedule.optimizer, schedule.lr)?;
        tokens_since += batch.rows * batch.steps;
        if schedule.log_every > 0 && (step % schedule.log_every == 0 || step == schedule.steps) {
            let loss = engine.loss()?.mean();
            let elapsed = clock.elapsed().as_secs_f64().max(1e-9);
            on_event(&Event::Train {
                step,
                loss,
                grad_norm: engine.grad_norm()?,
                tokens_per_sec: tokens_since as f64 / elapsed,
            });
            clock = Instant::now();
            tokens_since = 0;
        }
        let eval_now =
            (schedule.eval_every > 0 && step % schedule.eval_every == 0) || step == schedule.steps;
        if eval_now {
            if val.len() >= 2 {
                let l = evaluate(engine, val, eval_rows, eval_steps)?.mean();
                on_event(&Event::Eval { step, loss: l });
                last_val = Some(l);
            }
            on_checkpoint(engine, step)?;
            clock = Instant::now();
            tokens_since = 0;
        }
    }
    Ok(last_val)
}
