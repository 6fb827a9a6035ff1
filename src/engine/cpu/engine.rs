//! [`CpuEngine`]: the [`Engine`] contract on the CPU, and what one step keeps between its calls
//! (the batch in the engine's float type, the activations of the last forward). `forward` and
//! `backward` read as the pass they are: the input side, each layer in turn, the output layer
//! (and back), with the per-layer work in `layers.rs`.

use ndarray::{Array2, ArrayView2, s};

use crate::engine::profile::{self, PhaseClock, PhaseTimes, StepPhase};
use crate::engine::variant::Variant;
use crate::engine::{
    Batch, DEFAULT_LOGIT_BUDGET, Dropout, EdgeDropout, Engine, INFERENCE_LOGITS, Inputs, LossStats,
    OutputChunks, RowWindow, Targets, outputs_not_kept,
};
use crate::error::{Error, Result};
use crate::model::{ModelConfig, ParamLayout};
use crate::train::optim::{OptimizerConfig, OptimizerState, clip_scale};

use super::dropout::{self, EMBED_SITE, MaskKey, MaskSpan, OUT_SITE};
use super::layers::{
    chunk_outputs, dropout_input, embed_tokens, in_time_order, input_backward, input_grad,
    input_weight_grads, layer_backward, layer_below, layer_forward, layer_output, output_backward,
    output_forward, output_input, recurrent_grads, split_directions,
};
use super::{Float, optim, pool, reduce, reverse, variants};

/// The current batch converted to the engine's float type.
pub(super) struct PreparedBatch<F> {
    pub(super) steps: usize,
    pub(super) rows: usize,
    pub(super) tokens: Option<Vec<u32>>,
    pub(super) dense: Option<Array2<F>>,
    pub(super) targets: Targets,
    pub(super) mask: Option<Vec<f32>>,
    pub(super) count: f64,
    /// Bidirectional: the permutation of the N rows that reverses each sequence within its
    /// length (`reverse.rs`).
    pub(super) reverse: Option<Vec<u32>>,
}

/// Activations of one direction of one layer in the last forward pass (the reverse direction's
/// in its own time order: its step t of row b is the sequence's step L_b-1-t, `reverse.rs`).
pub(super) struct DirectionCache<F> {
    /// h: [(T+1) * B, W], rows 0..B the initial state (W the state width, P or H).
    pub(super) states: Array2<F>,
    /// LSTM c: [(T+1) * B, H], rows 0..B the initial state.
    pub(super) cells: Option<Array2<F>>,
    /// GRU (r, z, n) or LSTM (i, f, g, o) activations, [N, G*H]; empty for the tanh cell.
    pub(super) gates: Array2<F>,
    /// Recurrent pre-activations `h_{t-1} W_hh^T + b_hh`, [N, G*H]; empty for the tanh cell.
    pub(super) a_hh: Array2<F>,
    /// An LSTM with a projection: `m_t = o_t * tanh(c_t)` [N, H], the state before W_hr.
    pub(super) unprojected: Option<Array2<F>>,
}

/// Activations of one layer in the last forward pass.
pub(super) struct LayerCache<F> {
    /// Each direction's run: the forward one, then the reverse one when bidirectional.
    pub(super) directions: Vec<DirectionCache<F>>,
    /// Bidirectional: the layer's output `[h_fwd ; h_rev]` in the sequence's time order,
    /// [N, 2W]; `None` with one direction, whose output is its states' rows B.. .
    pub(super) output: Option<Array2<F>>,
    /// The input of layer k > 0 after dropout, [N, D*W]; `None` when no dropout is applied.
    pub(super) input: Option<Array2<F>>,
}

impl<F: Float> LayerCache<F> {
    /// What the layer above and the output layer read, [N, D*W] (`b`: the batch rows B).
    pub(super) fn output(&self, b: usize) -> ArrayView2<'_, F> {
        match &self.output {
            Some(out) => out.view(),
            None => self.directions[0].states.slice(s![b.., ..]),
        }
    }

    /// Every array the layer holds, to hand back to the pool.
    fn into_arrays(self) -> impl Iterator<Item = Array2<F>> {
        let runs = self.directions.into_iter().flat_map(|d| {
            [
                Some(d.states),
                d.cells,
                Some(d.gates),
                Some(d.a_hh),
                d.unprojected,
            ]
        });
        runs.chain([self.output, self.input]).flatten()
    }
}

/// The output layer's probabilities (after f2) and, in a forward with gradients, the gradient
/// of the objective w.r.t. the logits, [rows, V] each.
pub(super) struct Kept<F> {
    pub(super) probs: Array2<F>,
    pub(super) dlogits: Option<Array2<F>>,
}

/// Activations of the last forward pass.
pub(super) struct Cache<F> {
    pub(super) layers: Vec<LayerCache<F>>,
    /// The dropout mask after each layer but the last.
    pub(super) masks: Vec<MaskKey>,
    /// With an embedding: layer 0's input, the embedded tokens [N, E] (after the embedding's
    /// dropout, when it is on).
    pub(super) embedded: Option<Array2<F>>,
    /// The masks of the embedded tokens and of the top layer's output (identity when off).
    pub(super) edge_masks: EdgeMasks,
    /// With dropout on the top layer's output: the output layer's input, the top layer's
    /// states h_1..h_T through its mask [N, W].
    pub(super) out_input: Option<Array2<F>>,
    /// When the output layer ran in one chunk: the output probabilities (after f2) and, with
    /// gradients, the gradient of the objective w.r.t. the logits, [N, V] each.
    pub(super) kept: Option<Kept<F>>,
    /// Whether the forward ran with gradients (see [`Engine::set_grad_enabled`]).
    pub(super) with_grad: bool,
    /// Rows per chunk of the output layer (N when it ran in one).
    pub(super) chunk_rows: usize,
    pub(super) loss: LossStats,
}

/// The masks of the model's edges in one forward (see [`EdgeDropout`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct EdgeMasks {
    pub(super) embed: MaskKey,
    pub(super) out: MaskKey,
}

impl EdgeMasks {
    /// The masks of a forward under `dropout` (the step's seed; `None`: evaluation), over the
    /// embedded tokens' and the top layer's output's blocks in the row window (`spans`).
    pub(super) fn new(
        dropout: Option<Dropout>,
        edges: EdgeDropout,
        (embed, out): (MaskSpan, MaskSpan),
    ) -> Self {
        EdgeMasks {
            embed: MaskKey::edge(dropout, edges.embed, EMBED_SITE).within(embed),
            out: MaskKey::edge(dropout, edges.out, OUT_SITE).within(out),
        }
    }
}

/// The CPU engine in float type `F`.
pub struct CpuEngine<F: Float = f32> {
    config: ModelConfig,
    layout: ParamLayout,
    params: Vec<F>,
    grads: Vec<F>,
    moments_m: Vec<F>,
    moments_v: Vec<F>,
    opt_step: u64,
    last_norm: f64,
    /// Initial state of the next forward: per layer and direction (`k * D + d`) [B, W].
    h0: Vec<Array2<F>>,
    /// LSTM: initial memory of the next forward, per layer and direction [B, H]; empty for
    /// other cells.
    c0: Vec<Array2<F>>,
    dropout: Option<Dropout>,
    /// Dropout at the model's edges, applied while `dropout` is set.
    edges: EdgeDropout,
    /// Where the batches lie in a batch shared with other engines (keys the masks).
    window: Option<RowWindow>,
    /// The most logits the output layer holds at once.
    logit_budget: usize,
    /// Whether forwards keep what the backward needs ([`Engine::set_grad_enabled`]).
    grad_enabled: bool,
    /// Output arrays of an earlier forward, for the next one to fill.
    spare: Option<Kept<F>>,
    /// The other arrays of earlier steps, for the next ones.
    pool: pool::Pool<F>,
    /// With a phase profile: the time per phase of the step.
    clock: Option<PhaseClock>,
    batch: Option<PreparedBatch<F>>,
    cache: Option<Cache<F>>,
}

impl<F: Float> CpuEngine<F> {
    /// An engine for `config` with the given parameters (f32, layout order), zero state for one row.
    pub fn new(config: &ModelConfig, params: &[f32]) -> Result<Self> {
        let layout = ParamLayout::new(config)?;
        let n = layout.len();
        let mut e = CpuEngine {
            config: config.clone(),
            layout,
            params: vec![F::zero(); n],
            grads: vec![F::zero(); n],
            moments_m: vec![F::zero(); n],
            moments_v: vec![F::zero(); n],
            opt_step: 0,
            last_norm: 0.0,
            h0: Vec::new(),
            c0: Vec::new(),
            dropout: None,
            edges: EdgeDropout::default(),
            window: None,
            logit_budget: DEFAULT_LOGIT_BUDGET,
            grad_enabled: true,
            spare: None,
            pool: pool::Pool::default(),
            clock: None,
            batch: None,
            cache: None,
        };
        e.set_params(params)?;
        e.reset_state(1)?;
        Ok(e)
    }

    /// Parameters in the engine's own float type.
    pub fn params_native(&self) -> &[F] {
        &self.params
    }

    /// Replaces parameters in the engine's own float type (for finite differences).
    pub fn set_params_native(&mut self, params: &[F]) -> Result<()> {
        check_len("parameters", params.len(), self.layout.len())?;
        self.params.copy_from_slice(params);
        Ok(())
    }

    /// Gradients in the engine's own float type.
    pub fn grads_native(&self) -> &[F] {
        &self.grads
    }

    /// How many step arrays (activations, gradients) the engine has allocated so far; once the
    /// batch shape repeats, steps take them from earlier steps instead.
    pub fn step_allocations(&self) -> u64 {
        self.pool.allocated()
    }
}

impl<F: Float> CpuEngine<F> {
    /// What the last forward kept, or the error that none has run.
    fn cache(&self) -> Result<&Cache<F>> {
        needed(&self.cache, "no forward pass has run yet")
    }

    /// B: the rows of the state.
    fn rows(&self) -> usize {
        self.h0.first().map_or(0, |a| a.nrows())
    }

    /// The dropout masks of a forward of a batch of `rows` rows: after each layer but the last,
    /// and at the edges, each over its block in the row window.
    fn masks(&self, rows: usize) -> (Vec<MaskKey>, EdgeMasks) {
        let cfg = &self.config;
        let span = |width| MaskSpan::new(self.window, rows, width);
        let layer = span(cfg.output_width());
        let masks = (0..cfg.layers.saturating_sub(1))
            .map(|k| MaskKey::new(self.dropout, k).within(layer))
            .collect();
        // Without an embedding the embedded tokens' mask is never applied.
        let embedded = span(cfg.embed.unwrap_or(0));
        let edges = EdgeMasks::new(self.dropout, self.edges, (embedded, layer));
        (masks, edges)
    }

    /// Checks that the row window holds a batch of `rows` rows.
    fn check_window(&self, rows: usize) -> Result<()> {
        self.window.map_or(Ok(()), |w| w.check_batch(rows))
    }

    /// The norm, clipping and update of `optimizer_step`.
    fn update(&mut self, config: &OptimizerConfig, lr: f32) {
        let norm = reduce::sum_of_squares(&self.grads).sqrt();
        self.last_norm = norm;
        self.opt_step += 1;
        if !norm.is_finite() {
            // As on the GPU: the update is skipped and `grad_norm` reports the divergence.
            return;
        }
        optim::optimizer_update(
            config,
            lr as f64,
            self.opt_step,
            clip_scale(norm, config.clip),
            &mut self.params,
            &self.grads,
            &mut self.moments_m,
            &mut self.moments_v,
        );
    }

    /// Hands the last forward's arrays on: its output arrays to the next forward (when they
    /// fit), the others to the pool.
    fn recycle_cache(&mut self) {
        let Some(cache) = self.cache.take() else {
            return;
        };
        if let Some(kept) = cache.kept {
            self.spare = Some(kept);
        }
        for a in cache.layers.into_iter().flat_map(LayerCache::into_arrays) {
            self.pool.give(a);
        }
        for x in [cache.embedded, cache.out_input].into_iter().flatten() {
            self.pool.give(x);
        }
    }
}

/// The engine's `part`, or the error that a call came before what sets it up (`msg`).
fn needed<'a, T>(part: &'a Option<T>, msg: &str) -> Result<&'a T> {
    part.as_ref().ok_or_else(|| Error::Misuse(msg.into()))
}

fn check_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::Shape(format!(
            "{what}: {got} given, {want} expected"
        )));
    }
    Ok(())
}

impl<F: Float> Engine for CpuEngine<F> {
    fn describe(&self) -> String {
        let threads = rayon::current_num_threads();
        format!(
            "cpu ({}, {threads} thread{})",
            std::any::type_name::<F>(),
            if threads == 1 { "" } else { "s" }
        )
    }

    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    fn set_params(&mut self, params: &[f32]) -> Result<()> {
        check_len("parameters", params.len(), self.layout.len())?;
        for (d, &s) in self.params.iter_mut().zip(params) {
            *d = F::from_f32_lossless(s);
        }
        Ok(())
    }

    fn params(&mut self) -> Result<Vec<f32>> {
        Ok(self.params.iter().map(|v| v.to_f32_lossy()).collect())
    }

    fn grads(&mut self) -> Result<Vec<f32>> {
        Ok(self.grads.iter().map(|v| v.to_f32_lossy()).collect())
    }

    fn set_grads(&mut self, grads: &[f32]) -> Result<()> {
        check_len("gradients", grads.len(), self.layout.len())?;
        for (d, &s) in self.grads.iter_mut().zip(grads) {
            *d = F::from_f32_lossless(s);
        }
        Ok(())
    }

    fn upload_batch(&mut self, batch: &Batch) -> Result<()> {
        batch.validate(&self.config)?;
        self.check_window(batch.rows)?;
        if batch.rows != self.rows() {
            return Err(Error::Shape(format!(
                "batch has B={} rows but the state has {}; reset the state first",
                batch.rows,
                self.rows()
            )));
        }
        let n = batch.steps * batch.rows;
        let (tokens, dense) = match &batch.inputs {
            Inputs::Tokens(t) => (Some(t.clone()), None),
            Inputs::Dense(x) => {
                let conv: Vec<F> = x.iter().map(|&v| F::from_f32_lossless(v)).collect();
                let arr = Array2::from_shape_vec((n, self.config.input_size), conv)
                    .map_err(|e| Error::Shape(e.to_string()))?;
                (None, Some(arr))
            }
        };
        self.batch = Some(PreparedBatch {
            steps: batch.steps,
            rows: batch.rows,
            tokens,
            dense,
            targets: batch.targets.clone(),
            mask: batch.mask.clone(),
            count: batch.count(),
            reverse: self.config.bidirectional.then(|| {
                let lengths =
                    reverse::sequence_lengths(batch.mask.as_deref(), batch.steps, batch.rows);
                reverse::reversal(&lengths, batch.steps)
            }),
        });
        self.recycle_cache();
        Ok(())
    }

    fn forward(&mut self) -> Result<()> {
        self.recycle_cache();
        let batch = needed(&self.batch, "forward called before upload_batch")?;
        self.check_window(batch.rows)?;
        let (masks, edge_masks) = self.masks(batch.rows);
        let pool = &mut self.pool;
        let clock = &mut self.clock;
        profile::enter(clock, StepPhase::Input);
        let cfg = &self.config;
        let model = (&self.layout, &self.params[..]);
        let mut embedded = embed_tokens(cfg, model, batch, pool);
        if let Some(x) = embedded
            .as_mut()
            .filter(|_| !edge_masks.embed.is_identity())
        {
            // In place: the embedded tokens are only read through their mask.
            dropout::dropout_backward(edge_masks.embed, x.view_mut());
        }
        // Each layer over all T steps, reading the one below (through dropout when it is on).
        let mut layers: Vec<LayerCache<F>> = Vec::with_capacity(cfg.layers);
        for k in 0..cfg.layers {
            profile::enter(clock, StepPhase::Input);
            let input = dropout_input(cfg, k, &masks, &layers, batch.rows, pool);
            let below = layer_below(k, input.as_ref(), &layers, embedded.as_ref(), batch);
            // Each direction over all T steps (the reverse one over each sequence reversed).
            let mut directions = Vec::with_capacity(cfg.directions());
            for d in 0..cfg.directions() {
                let i = k * cfg.directions() + d;
                let init = (&self.h0[i], self.c0.get(i));
                let run = layer_forward(cfg, model, (k, d), batch, below, init, (pool, clock));
                directions.push(run);
            }
            let output = layer_output(&directions, batch, pool);
            layers.push(LayerCache {
                directions,
                output,
                input,
            });
        }
        // The output layer over all N rows: the projection, the output nonlinearity, the loss
        // and its gradient.
        profile::enter(clock, StepPhase::Output);
        let out_input = (!edge_masks.out.is_identity()).then(|| {
            let top = layers[cfg.layers - 1].output(batch.rows);
            let mut x = pool.overwritten(top.dim());
            dropout::dropout_forward(top, edge_masks.out, x.view_mut());
            x
        });
        let top = output_input(cfg, &layers, out_input.as_ref(), batch.rows);
        let reuse = self.spare.take();
        let with_grad = self.grad_enabled;
        let budget = match with_grad {
            true => self.logit_budget,
            false => self.logit_budget.min(INFERENCE_LOGITS),
        };
        let (kept, chunk_rows, sum) =
            output_forward(cfg, model, top, batch, (budget, with_grad), reuse)?;
        self.cache = Some(Cache {
            layers,
            masks,
            embedded,
            edge_masks,
            out_input,
            kept,
            with_grad,
            chunk_rows,
            loss: LossStats {
                sum,
                count: batch.count,
            },
        });
        profile::stop(&mut self.clock);
        Ok(())
    }

    fn zero_grads(&mut self) -> Result<()> {
        self.grads.iter_mut().for_each(|g| *g = F::zero());
        Ok(())
    }

    fn backward(&mut self) -> Result<()> {
        let cache = needed(&self.cache, "backward called before forward")?;
        if !cache.with_grad {
            return Err(Error::Misuse(
                "backward called after a forward without gradients (set_grad_enabled(false))"
                    .into(),
            ));
        }
        let batch = needed(&self.batch, "backward called before upload_batch")?;
        let cfg = &self.config;
        let b = batch.rows;
        let model = (&self.layout, &self.params[..]);
        let g = &mut self.grads;
        let pool = &mut self.pool;
        let clock = &mut self.clock;
        let step = (cache, batch);
        // The output layer's weight gradients and dS, the gradient reaching the top layer.
        profile::enter(clock, StepPhase::OutputBackward);
        let mut ds = output_backward(cfg, model, g, step, (pool, clock))?;
        for k in (0..cfg.layers).rev() {
            let lc = &cache.layers[k];
            let mut dx = None;
            let per_direction = split_directions(ds, batch, cfg.directions(), pool);
            for (d, ds_d) in per_direction.into_iter().enumerate() {
                let run = &lc.directions[d];
                // BPTT through the direction: the gradients of the input-side and
                // recurrent-side pre-activations, [N, G*H] each (the same array for the tanh
                // cell and the LSTM).
                profile::enter(clock, StepPhase::BackwardRecurrence);
                let grads = layer_backward(cfg, model, (k, d), run, b, ds_d, pool);
                profile::enter(clock, StepPhase::WeightGradients);
                recurrent_grads(cfg, &self.layout, g, (k, d), run, &grads);
                let mut da_ih = grads.da_ih;
                in_time_order(&mut da_ih, batch, d);
                input_weight_grads(cfg, &self.layout, g, (k, d), step, &da_ih);
                // The gradient of the layer's input, summed over the directions.
                let embedded = cache.embedded.is_some();
                input_grad(cfg, model, (k, d), embedded, &da_ih, &mut dx, pool);
                for a in [Some(da_ih), grads.da_hh, grads.dh].into_iter().flatten() {
                    pool.give(a);
                }
            }
            // Passed down, or into the embedding.
            ds = input_backward(cfg, &self.layout, g, k, step, dx, pool);
        }
        profile::stop(clock);
        Ok(())
    }

    fn loss(&mut self) -> Result<LossStats> {
        Ok(self.cache()?.loss)
    }

    fn optimizer_step(&mut self, config: &OptimizerConfig, lr: f32) -> Result<()> {
        config.validate()?;
        profile::enter(&mut self.clock, StepPhase::Optimizer);
        self.update(config, lr);
        profile::stop(&mut self.clock);
        Ok(())
    }

    fn set_phase_profile(&mut self, on: bool) -> Result<()> {
        self.clock = on.then(PhaseClock::default);
        Ok(())
    }

    fn take_phase_times(&mut self) -> Result<Option<PhaseTimes>> {
        Ok(self.clock.as_mut().map(PhaseClock::take))
    }

    fn grad_norm(&mut self) -> Result<f32> {
        let norm = self.last_norm;
        if !norm.is_finite() {
            return Err(Error::Diverged { norm: norm as f32 });
        }
        Ok(norm as f32)
    }

    fn optimizer_state(&mut self) -> Result<OptimizerState> {
        Ok(OptimizerState {
            step: self.opt_step,
            m: self.moments_m.iter().map(|v| v.to_f32_lossy()).collect(),
            v: self.moments_v.iter().map(|v| v.to_f32_lossy()).collect(),
        })
    }

    fn set_optimizer_state(&mut self, state: &OptimizerState) -> Result<()> {
        check_len("optimizer moments m", state.m.len(), self.layout.len())?;
        check_len("optimizer moments v", state.v.len(), self.layout.len())?;
        self.opt_step = state.step;
        for (d, &s) in self.moments_m.iter_mut().zip(&state.m) {
            *d = F::from_f32_lossless(s);
        }
        for (d, &s) in self.moments_v.iter_mut().zip(&state.v) {
            *d = F::from_f32_lossless(s);
        }
        Ok(())
    }

    fn reset_state(&mut self, rows: usize) -> Result<()> {
        if rows == 0 {
            return Err(Error::Shape("the state needs at least one row".into()));
        }
        let cfg = &self.config;
        let runs = cfg.layers * cfg.directions();
        let zeros = |width| (0..runs).map(|_| Array2::zeros((rows, width))).collect();
        self.h0 = zeros(cfg.state_width());
        self.c0 = if cfg.cell.has_memory() {
            zeros(cfg.hidden_size)
        } else {
            Vec::new()
        };
        Ok(())
    }

    fn carry_state(&mut self) -> Result<()> {
        let cache = needed(&self.cache, "carry_state called before forward")?;
        let b = self.rows();
        // Each direction's state after its last step, in the order of `h0`.
        let runs = cache.layers.iter().flat_map(|lc| &lc.directions);
        for (i, run) in runs.enumerate() {
            let last = run.states.nrows() - b;
            self.h0[i].assign(&run.states.slice(s![last.., ..]));
            if let (Some(c0), Some(cells)) = (self.c0.get_mut(i), &run.cells) {
                c0.assign(&cells.slice(s![last.., ..]));
            }
        }
        Ok(())
    }

    fn set_state(&mut self, rows: usize, state: &[f32]) -> Result<()> {
        check_len(
            "state",
            state.len(),
            rows * self.config.state_size_per_row(),
        )?;
        self.reset_state(rows)?;
        // h of every layer and direction, then c likewise, each [B, width] row-major.
        let mut rest = state;
        for a in self.h0.iter_mut().chain(self.c0.iter_mut()) {
            let (src, tail) = rest.split_at(a.len());
            for (d, &s) in a.iter_mut().zip(src) {
                *d = F::from_f32_lossless(s);
            }
            rest = tail;
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<f32>> {
        Ok(self
            .h0
            .iter()
            .chain(self.c0.iter())
            .flat_map(|a| a.iter().map(|v| v.to_f32_lossy()))
            .collect())
    }

    fn set_dropout(&mut self, dropout: Option<Dropout>) -> Result<()> {
        if let Some(d) = dropout {
            d.validate()?;
        }
        self.dropout = dropout;
        Ok(())
    }

    fn set_edge_dropout(&mut self, edges: EdgeDropout) -> Result<()> {
        edges.check_for(&self.config)?;
        self.edges = edges;
        Ok(())
    }

    fn set_row_window(&mut self, window: Option<RowWindow>) -> Result<()> {
        if let Some(w) = window {
            w.validate()?;
        }
        self.window = window;
        Ok(())
    }

    fn outputs(&mut self) -> Result<Vec<f32>> {
        let cache = self.cache()?;
        match &cache.kept {
            Some(kept) => Ok(kept.probs.iter().map(|v| v.to_f32_lossy()).collect()),
            None => {
                let n = cache.layers[0].directions[0].states.nrows() - self.rows();
                Err(outputs_not_kept(
                    n,
                    self.config.output_size,
                    cache.chunk_rows,
                ))
            }
        }
    }

    fn output_chunks(&mut self) -> Result<OutputChunks> {
        let cache = self.cache()?;
        let batch = needed(&self.batch, "no batch has been uploaded yet")?;
        Ok(OutputChunks {
            rows: batch.steps * batch.rows,
            chunk_rows: cache.chunk_rows,
        })
    }

    fn outputs_of(&mut self, rows: std::ops::Range<usize>) -> Result<Vec<f32>> {
        let chunk = self.output_chunks()?.chunk_of(&rows)?;
        let cache = self.cache()?;
        let batch = needed(&self.batch, "no batch has been uploaded yet")?;
        let model = (&self.layout, &self.params[..]);
        chunk_outputs(&self.config, model, (cache, batch), chunk, rows)
    }

    fn set_logit_budget(&mut self, elements: usize) -> Result<()> {
        if elements == 0 {
            return Err(Error::Config("the logit budget must be at least 1".into()));
        }
        self.logit_budget = elements;
        Ok(())
    }

    fn set_grad_enabled(&mut self, on: bool) -> Result<()> {
        self.grad_enabled = on;
        Ok(())
    }

    fn variants(&self) -> Vec<Variant> {
        variants::cpu_variants(std::mem::size_of::<F>())
    }

    fn set_variant(&mut self, variant: &Variant) -> Result<()> {
        self.pool.set_choice(variants::cpu_choice(variant)?);
        Ok(())
    }

    fn variant(&self) -> Variant {
        Variant::Cpu(self.pool.choice())
    }

    fn device_key(&self) -> String {
        variants::cpu_device_key(std::any::type_name::<F>())
    }
}
