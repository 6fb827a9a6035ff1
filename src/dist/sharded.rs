//! The engine of one rank of a data-parallel run: the rank's share of every batch on the engine
//! it wraps, with the loss, the gradients and the carried state made global.

use std::borrow::Cow;
use std::ops::Range;
use std::rc::Rc;
use std::time::Instant;

use super::{Group, all_gather_f32, share};
use crate::engine::variant::Variant;
use crate::engine::{
    Batch, Dropout, EdgeDropout, Engine, Inputs, LossStats, OutputChunks, Recurrence, RowWindow,
    Targets, profile,
};
use crate::error::{Error, Result};
use crate::model::{ModelConfig, ParamLayout};
use crate::train::optim::{OptimizerConfig, OptimizerState};

/// Time spent summing gradients across the ranks, for `unroll bench`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ReduceTimes {
    /// Optimizer steps whose gradients were summed.
    pub steps: u64,
    /// Seconds spent reading the gradients back, summing them and writing them again.
    pub seconds: f64,
    /// Seconds of that in the sum itself (the communication).
    pub sum_seconds: f64,
}

/// An [`Engine`] over the rank's share of every batch (see the module docs of [`crate::dist`]).
///
/// - `upload_batch` takes the GLOBAL batch (B rows) and runs rows [`share`]`(B, rank, N)` of it;
///   `reset_state`, `set_state` and `state` speak of all B rows too (the carried state is
///   gathered from every rank).
/// - The loss is the sum over the ranks; before the optimizer step, each rank's gradient (of
///   its mean loss) is scaled by its share of the counted steps and the gradients are summed, so
///   that every rank applies the gradient of the global mean loss, the same update, and the
///   parameters stay bitwise equal on every rank.
/// - A rank whose share of a batch is empty (evaluation batches with fewer rows than ranks)
///   runs nothing for it and counts nothing.
pub struct Sharded {
    inner: Box<dyn Engine>,
    group: Rc<dyn Group>,
    /// Rows of the current global batch (and carried state), and this rank's share of them.
    rows: usize,
    mine: Range<usize>,
    /// Counted steps of this rank's share and of the whole batch.
    local_count: f64,
    global_count: f64,
    times: ReduceTimes,
}

impl Sharded {
    /// The engine of this rank of `group`, over `inner` (which holds the run's parameters).
    pub fn new(inner: Box<dyn Engine>, group: Rc<dyn Group>) -> Self {
        Sharded {
            inner,
            group,
            rows: 0,
            mine: 0..0,
            local_count: 0.0,
            global_count: 0.0,
            times: ReduceTimes::default(),
        }
    }

    /// The processes this engine shares its batches with.
    pub fn group(&self) -> &Rc<dyn Group> {
        &self.group
    }

    /// The time spent summing gradients so far.
    pub fn reduce_times(&self) -> ReduceTimes {
        self.times
    }

    /// Whether this rank runs nothing of the current batch.
    fn idle(&self) -> bool {
        self.mine.is_empty()
    }

    fn set_rows(&mut self, rows: usize) {
        self.rows = rows;
        self.mine = share(rows, self.group.rank(), self.group.size());
    }

    /// The widths of the parts of a carried state, each `[B, width]`: h of every layer and
    /// direction, then c of each for an LSTM (see [`Engine::set_state`]).
    fn state_parts(config: &ModelConfig) -> Vec<usize> {
        let parts = config.layers * config.directions();
        let mut widths = vec![config.state_width(); parts];
        if config.cell.has_memory() {
            widths.extend(std::iter::repeat_n(config.hidden_size, parts));
        }
        widths
    }

    /// Rows `rows` of a state of `total` rows.
    fn slice_state(
        config: &ModelConfig,
        state: &[f32],
        total: usize,
        rows: &Range<usize>,
    ) -> Vec<f32> {
        let mut out = Vec::with_capacity(rows.len() * config.state_size_per_row());
        let mut at = 0;
        for w in Self::state_parts(config) {
            out.extend_from_slice(&state[at + rows.start * w..at + rows.end * w]);
            at += total * w;
        }
        out
    }

    /// The state of every rank's share of `total` rows (`parts[r]`: rank r's), as one state.
    fn join_state(config: &ModelConfig, parts: &[Vec<f32>], total: usize) -> Result<Vec<f32>> {
        let size = parts.len();
        let mut out = Vec::with_capacity(total * config.state_size_per_row());
        let mut offsets = vec![0; size];
        for w in Self::state_parts(config) {
            for (r, part) in parts.iter().enumerate() {
                let n = share(total, r, size).len() * w;
                let chunk = part.get(offsets[r]..offsets[r] + n).ok_or_else(|| {
                    Error::Dist(format!("rank {r} sent a carried state of another shape"))
                })?;
                out.extend_from_slice(chunk);
                offsets[r] += n;
            }
        }
        Ok(out)
    }

    /// Sums the ranks' gradients into every rank's engine: each scaled by its share of the
    /// counted steps, so the sum is the gradient of the global mean loss.
    fn sum_grads(&mut self) -> Result<()> {
        let clock = Instant::now();
        let mut g = self.inner.grads()?;
        let weight = match self.global_count > 0.0 {
            true => (self.local_count / self.global_count) as f32,
            false => 0.0,
        };
        if weight != 1.0 {
            g.iter_mut().for_each(|v| *v *= weight);
        }
        let sum_clock = Instant::now();
        self.group.sum_f32(&mut g)?;
        self.times.sum_seconds += sum_clock.elapsed().as_secs_f64();
        self.inner.set_grads(&g)?;
        self.times.steps += 1;
        self.times.seconds += clock.elapsed().as_secs_f64();
        Ok(())
    }
}

/// Rows `rows` of every time step of `batch`, as a batch of their own.
pub fn batch_rows(batch: &Batch, rows: &Range<usize>) -> Batch {
    fn pick<T: Copy>(values: &[T], batch: &Batch, rows: &Range<usize>) -> Vec<T> {
        let w = values.len() / (batch.steps * batch.rows).max(1);
        (0..batch.steps)
            .flat_map(|t| {
                let r = t * batch.rows;
                values[(r + rows.start) * w..(r + rows.end) * w]
                    .iter()
                    .copied()
            })
            .collect()
    }
    Batch {
        steps: batch.steps,
        rows: rows.len(),
        inputs: match &batch.inputs {
            Inputs::Tokens(t) => Inputs::Tokens(pick(t, batch, rows)),
            Inputs::Dense(x) => Inputs::Dense(pick(x, batch, rows)),
        },
        targets: match &batch.targets {
            Targets::Classes(y) => Targets::Classes(pick(y, batch, rows)),
            Targets::Dense(y) => Targets::Dense(pick(y, batch, rows)),
        },
        mask: batch.mask.as_ref().map(|m| pick(m, batch, rows)),
    }
}

impl Engine for Sharded {
    fn describe(&self) -> String {
        format!(
            "{} (rank {} of {})",
            self.inner.describe(),
            self.group.rank(),
            self.group.size()
        )
    }
    fn config(&self) -> &ModelConfig {
        self.inner.config()
    }
    fn layout(&self) -> &ParamLayout {
        self.inner.layout()
    }
    fn set_params(&mut self, params: &[f32]) -> Result<()> {
        self.inner.set_params(params)
    }
    fn params(&mut self) -> Result<Vec<f32>> {
        self.inner.params()
    }
    /// The gradients of this rank's share until the optimizer step sums them.
    fn grads(&mut self) -> Result<Vec<f32>> {
        self.inner.grads()
    }
    fn set_grads(&mut self, grads: &[f32]) -> Result<()> {
        self.inner.set_grads(grads)
    }

    fn upload_batch(&mut self, batch: &Batch) -> Result<()> {
        batch.validate(self.inner.config())?;
        if batch.rows != self.rows {
            return Err(Error::Shape(format!(
                "batch has B={} rows but the state has {}; reset the state first",
                batch.rows, self.rows
            )));
        }
        self.global_count = batch.count();
        if self.idle() {
            self.local_count = 0.0;
            return Ok(());
        }
        let local = batch_rows(batch, &self.mine);
        self.local_count = local.count();
        // The share's dropout masks are those of its rows in the global batch.
        let window = RowWindow {
            first: self.mine.start,
            rows: batch.rows,
        };
        self.inner.set_row_window(Some(window))?;
        self.inner.upload_batch(&local)
    }
    fn forward(&mut self) -> Result<()> {
        match self.idle() {
            true => Ok(()),
            false => self.inner.forward(),
        }
    }
    fn zero_grads(&mut self) -> Result<()> {
        self.inner.zero_grads()
    }
    fn backward(&mut self) -> Result<()> {
        match self.idle() {
            true => Ok(()),
            false => self.inner.backward(),
        }
    }
    fn loss(&mut self) -> Result<LossStats> {
        let local = match self.idle() {
            true => LossStats {
                sum: 0.0,
                count: 0.0,
            },
            false => self.inner.loss()?,
        };
        let mut v = [local.sum, local.count];
        self.group.sum_f64(&mut v)?;
        Ok(LossStats {
            sum: v[0],
            count: v[1],
        })
    }

    fn optimizer_step(&mut self, config: &OptimizerConfig, lr: f32) -> Result<()> {
        self.sum_grads()?;
        self.inner.optimizer_step(config, lr)
    }
    fn grad_norm(&mut self) -> Result<f32> {
        self.inner.grad_norm()
    }
    fn optimizer_state(&mut self) -> Result<OptimizerState> {
        self.inner.optimizer_state()
    }
    fn set_optimizer_state(&mut self, state: &OptimizerState) -> Result<()> {
        self.inner.set_optimizer_state(state)
    }

    fn reset_state(&mut self, rows: usize) -> Result<()> {
        self.set_rows(rows);
        match self.idle() {
            true => Ok(()),
            false => self.inner.reset_state(self.mine.len()),
        }
    }
    fn carry_state(&mut self) -> Result<()> {
        match self.idle() {
            true => Ok(()),
            false => self.inner.carry_state(),
        }
    }
    fn set_state(&mut self, rows: usize, state: &[f32]) -> Result<()> {
        let per_row = self.inner.config().state_size_per_row();
        if state.len() != rows * per_row {
            return Err(Error::Shape(format!(
                "state: {} values given, {} expected for {rows} rows",
                state.len(),
                rows * per_row
            )));
        }
        self.set_rows(rows);
        if self.idle() {
            return Ok(());
        }
        let mine = Self::slice_state(self.inner.config(), state, rows, &self.mine);
        self.inner.set_state(self.mine.len(), &mine)
    }
    fn state(&mut self) -> Result<Vec<f32>> {
        let local = match self.idle() {
            true => Vec::new(),
            false => self.inner.state()?,
        };
        let parts = all_gather_f32(self.group.as_ref(), &local)?;
        Self::join_state(self.inner.config(), &parts, self.rows)
    }
    fn set_dropout(&mut self, dropout: Option<Dropout>) -> Result<()> {
        self.inner.set_dropout(dropout)
    }
    /// The window of each share is set by `upload_batch`; the global batch is not a share.
    fn set_row_window(&mut self, window: Option<RowWindow>) -> Result<()> {
        match window {
            None => Ok(()),
            Some(_) => Err(Error::Config(
                "a data-parallel engine sets its ranks' row windows itself".into(),
            )),
        }
    }
    fn set_edge_dropout(&mut self, edges: EdgeDropout) -> Result<()> {
        self.inner.set_edge_dropout(edges)
    }

    fn share_of<'b>(&self, batch: &'b Batch) -> Cow<'b, Batch> {
        match self.group.size() {
            1 => Cow::Borrowed(batch),
            _ => Cow::Owned(batch_rows(
                batch,
                &share(batch.rows, self.group.rank(), self.group.size()),
            )),
        }
    }
    fn sum_over_shares(&mut self, values: &mut [f64]) -> Result<()> {
        self.group.sum_f64(values)
    }
    /// The outputs of this rank's share.
    fn outputs(&mut self) -> Result<Vec<f32>> {
        match self.idle() {
            true => Ok(Vec::new()),
            false => self.inner.outputs(),
        }
    }
    fn output_chunks(&mut self) -> Result<OutputChunks> {
        match self.idle() {
            true => Ok(OutputChunks {
                rows: 0,
                chunk_rows: 1,
            }),
            false => self.inner.output_chunks(),
        }
    }
    fn outputs_of(&mut self, rows: Range<usize>) -> Result<Vec<f32>> {
        self.inner.outputs_of(rows)
    }
    fn set_logit_budget(&mut self, elements: usize) -> Result<()> {
        self.inner.set_logit_budget(elements)
    }

    fn set_grad_enabled(&mut self, on: bool) -> Result<()> {
        self.inner.set_grad_enabled(on)
    }
    fn set_recurrence(&mut self, recurrence: Recurrence) -> Result<()> {
        self.inner.set_recurrence(recurrence)
    }
    fn variants(&self) -> Vec<Variant> {
        self.inner.variants()
    }
    fn set_variant(&mut self, variant: &Variant) -> Result<()> {
        self.inner.set_variant(variant)
    }
    fn variant(&self) -> Variant {
        self.inner.variant()
    }
    fn device_key(&self) -> String {
        self.inner.device_key()
    }
    fn set_phase_profile(&mut self, on: bool) -> Result<()> {
        self.inner.set_phase_profile(on)
    }
    fn take_phase_times(&mut self) -> Result<Option<profile::PhaseTimes>> {
        self.inner.take_phase_times()
    }
}
