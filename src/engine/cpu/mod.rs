//! The CPU reference engine: the readable specification every GPU result is held to.
//!
//! Generic over the float type so the same code runs in f32 (training) and f64 (gradient checks
//! against finite differences). One file per kernel family mirrors `shaders/` by name. The
//! input-independent GEMMs run once over all `T * B` rows; only the recurrence is sequential.
//!
//! Shapes: T time steps, B rows, H state size, I input size, V output size, N = T * B.
//! Layer k keeps its states as one [(T+1) * B, H] array whose first B rows are the initial state
//! (and an LSTM its memories c the same way); gated cells also keep their gate activations and
//! recurrent pre-activations, [N, G*H] each.

pub mod dropout;
pub mod gru;
pub mod loss;
pub mod lstm;
pub mod matmul;
pub mod optim;
pub mod packed;
pub mod pool;
pub mod reduce;
pub mod rnn;

use ndarray::{Array2, ArrayView2, ArrayViewMut2, Axis, s};

use crate::engine::profile::{self, PhaseClock, PhaseTimes, StepPhase};
use crate::engine::{
    Batch, DEFAULT_LOGIT_BUDGET, Dropout, Engine, Inputs, LossStats, Targets, logit_chunk_rows,
    logit_chunks, outputs_not_kept,
};
use crate::error::{Error, Result};
use crate::model::{Cell, ModelConfig, OutputKind, ParamLayout};
use crate::train::optim::{OptimizerConfig, OptimizerState, clip_scale};

use self::dropout::MaskKey;
use self::matmul::matmul;

/// The float types the CPU engine runs in (f32 and f64).
pub trait Float:
    ndarray::LinalgScalar
    + ndarray::ScalarOperand
    + num_traits::Float
    + num_traits::FromPrimitive
    + std::ops::AddAssign
    + std::ops::SubAssign
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    /// From f64, rounding as `as` does.
    fn of(v: f64) -> Self;
    /// To f64, exactly.
    fn f64(self) -> f64;
    /// From f32, exactly.
    fn from_f32_lossless(v: f32) -> Self;
    /// To f32, rounding.
    fn to_f32_lossy(self) -> f32;
    /// `tanh` applied to every element of `x` in place: the library function in f64 (the
    /// reference precision), a vectorisable rational approximation in f32 ([`tanh_f32`]).
    fn tanh_in_place(x: &mut [Self]) {
        for v in x {
            *v = v.tanh();
        }
    }
    /// `exp` applied to every element of `x` in place: the library function in f64, a
    /// vectorisable polynomial in f32 ([`exp_f32`]).
    fn exp_in_place(x: &mut [Self]) {
        for v in x {
            *v = v.fast_exp();
        }
    }
    /// `e^x` for the gates and the softmax (`x <= 88`): the library function in f64, the
    /// inline polynomial [`exp_f32`] in f32 (which vectorises in loops over contiguous rows).
    #[inline]
    fn fast_exp(self) -> Self {
        self.exp()
    }
}

/// `e^x` in f32 for `x <= 88` (the softmax's max-subtracted logits are <= 0): `x = n ln 2 + r`
/// with n rounded to nearest and |r| <= ln(2)/2, `e^r` from Cephes' degree-6 polynomial, and
/// `2^n` built in the exponent bits. Accurate to about one ulp down to x = -87.3 (where it
/// flushes to the smallest normal); plain arithmetic and bit operations (no float-to-integer
/// conversion, whose saturating Rust semantics do not vectorise), so a loop of it vectorises,
/// where the library `expf` is a call per element and dominated the softmax of large
/// vocabularies.
#[inline]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.336_55, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    // n + 127 is an integer in 1..=254; added to 2^23 it fills the low mantissa bits, and
    // shifting those into the exponent field gives 2^n.
    const BIAS: f32 = 8_388_735.0; // 2^23 + 127
    er * f32::from_bits((n + BIAS).to_bits() << 23)
}

/// `tanh` in f32 as `x * p(x^2) / q(x^2)` with x clamped to +-7.905 (where tanh rounds to 1):
/// a rational minimax approximation (the coefficients of Eigen's fast float tanh) accurate to a
/// few ulps, written in plain arithmetic so the compiler vectorises a loop of it, where the
/// library `tanhf` is a call per element and dominated the forward recurrence.
#[inline]
pub fn tanh_f32(x: f32) -> f32 {
    const CLAMP: f32 = 7.905_311;
    const A1: f32 = 4.893_524_6e-3;
    const A3: f32 = 6.372_619_3e-4;
    const A5: f32 = 1.485_722_4e-5;
    const A7: f32 = 5.122_297e-8;
    const A9: f32 = -8.604_672e-11;
    const A11: f32 = 2.000_188e-13;
    const A13: f32 = -2.760_768_5e-16;
    const B0: f32 = 4.893_525e-3;
    const B2: f32 = 2.268_434_6e-3;
    const B4: f32 = 1.185_347e-4;
    const B6: f32 = 1.198_258_4e-6;
    let x = x.clamp(-CLAMP, CLAMP);
    let x2 = x * x;
    let p = x * (A1 + x2 * (A3 + x2 * (A5 + x2 * (A7 + x2 * (A9 + x2 * (A11 + x2 * A13))))));
    let q = B0 + x2 * (B2 + x2 * (B4 + x2 * B6));
    p / q
}

impl Float for f32 {
    fn of(v: f64) -> Self {
        v as f32
    }
    fn f64(self) -> f64 {
        self as f64
    }
    fn from_f32_lossless(v: f32) -> Self {
        v
    }
    fn to_f32_lossy(self) -> f32 {
        self
    }
    fn tanh_in_place(x: &mut [Self]) {
        for v in x {
            *v = tanh_f32(*v);
        }
    }
    #[inline]
    fn fast_exp(self) -> Self {
        exp_f32(self)
    }
}

impl Float for f64 {
    fn of(v: f64) -> Self {
        v
    }
    fn f64(self) -> f64 {
        self
    }
    fn from_f32_lossless(v: f32) -> Self {
        v as f64
    }
    fn to_f32_lossy(self) -> f32 {
        self as f32
    }
}

/// The logistic function `1 / (1 + e^-x)` of the gates, written as the shaders write it.
#[inline]
pub fn sigmoid<F: Float>(x: F) -> F {
    F::one() / (F::one() + (-x).fast_exp())
}

/// `tanh(x)` of the gated cells written as `2 σ(2x) - 1`: the same function to rounding (an
/// absolute error of a few ulps of 1 near 0), at the cost of one `exp`, where the library
/// `tanh` costs several times more and dominated the gated cells' element-wise work.
#[inline]
pub fn tanh_via_sigmoid<F: Float>(x: F) -> F {
    let two = F::one() + F::one();
    two * sigmoid(two * x) - F::one()
}

/// The current batch converted to the engine's float type.
struct PreparedBatch<F> {
    steps: usize,
    rows: usize,
    tokens: Option<Vec<u32>>,
    dense: Option<Array2<F>>,
    targets: Targets,
    mask: Option<Vec<f32>>,
    count: f64,
}

/// Activations of one layer in the last forward pass.
struct LayerCache<F> {
    /// h: [(T+1) * B, H], rows 0..B the initial state.
    states: Array2<F>,
    /// LSTM c: [(T+1) * B, H], rows 0..B the initial state.
    cells: Option<Array2<F>>,
    /// GRU (r, z, n) or LSTM (i, f, g, o) activations, [N, G*H]; empty for the tanh cell.
    gates: Array2<F>,
    /// Recurrent pre-activations `h_{t-1} W_hh^T + b_hh`, [N, G*H]; empty for the tanh cell.
    a_hh: Array2<F>,
    /// The input of layer k > 0 after dropout, [N, H]; `None` when no dropout is applied.
    input: Option<Array2<F>>,
}

/// Activations of the last forward pass.
struct Cache<F> {
    layers: Vec<LayerCache<F>>,
    /// The dropout mask after each layer but the last.
    masks: Vec<MaskKey>,
    /// With an embedding: layer 0's input, the embedded tokens [N, E].
    embedded: Option<Array2<F>>,
    /// When the output layer ran in one chunk: the output probabilities (after f2) and the
    /// gradient of the objective w.r.t. the logits, [N, V] each.
    kept: Option<(Array2<F>, Array2<F>)>,
    /// Rows per chunk of the output layer (N when it ran in one).
    chunk_rows: usize,
    loss: LossStats,
}

/// One chunk of the output layer: for `rows` of the top layer's states `top` [N, H], the logits
/// `top[rows] W_o^T + b_o`, then the fused output nonlinearity, loss and gradient. Returns the
/// probabilities and the gradient w.r.t. the logits, [rows, V] each, and the masked loss sum.
fn output_chunk<F: Float>(
    cfg: &ModelConfig,
    layout: &ParamLayout,
    p: &[F],
    top: ArrayView2<F>,
    batch: &PreparedBatch<F>,
    rows: std::ops::Range<usize>,
    reuse: Option<(Array2<F>, Array2<F>)>,
) -> Result<(Array2<F>, Array2<F>, f64)> {
    let (h, v) = (cfg.hidden_size, cfg.output_size);
    let w_o = view(p, layout.out_weight(), v, h);
    let b_o = ndarray::ArrayView1::from(&p[layout.out_bias()..layout.out_bias() + v]);
    let m = rows.len();
    // Both arrays are overwritten whole, so those of the last forward serve when they fit.
    let (mut logits, mut dlogits) = match reuse {
        Some((a, b)) if a.dim() == (m, v) && b.dim() == (m, v) => (a, b),
        _ => (Array2::<F>::zeros((m, v)), Array2::<F>::zeros((m, v))),
    };
    for mut row in logits.outer_iter_mut() {
        row.assign(&b_o);
    }
    matmul(
        top.slice(s![rows.clone(), ..]),
        w_o.t(),
        &mut logits.view_mut(),
        true,
    );
    let norm = batch.count.max(f64::MIN_POSITIVE);
    let mask = batch.mask.as_deref().map(|m| &m[rows.clone()]);
    let dense_rows = rows.start * v..rows.end * v;
    let sum = match (&batch.targets, cfg.output_kind) {
        (Targets::Classes(y), OutputKind::Softmax) => loss::softmax_cross_entropy(
            logits.view_mut(),
            &y[rows.clone()],
            mask,
            norm,
            dlogits.view_mut(),
        ),
        (Targets::Dense(y), OutputKind::Identity) => loss::squared_error(
            logits.view_mut(),
            &y[dense_rows],
            mask,
            norm,
            dlogits.view_mut(),
        ),
        (Targets::Dense(y), OutputKind::Sigmoid) => loss::sigmoid_binary_cross_entropy(
            logits.view_mut(),
            &y[dense_rows],
            mask,
            norm,
            dlogits.view_mut(),
        ),
        _ => return Err(Error::Shape("targets do not match the output kind".into())),
    };
    Ok((logits, dlogits, sum))
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
    /// Initial state of the next forward: per layer [B, H].
    h0: Vec<Array2<F>>,
    /// LSTM: initial memory of the next forward, per layer [B, H]; empty for other cells.
    c0: Vec<Array2<F>>,
    dropout: Option<Dropout>,
    /// The most logits the output layer holds at once.
    logit_budget: usize,
    /// Output arrays of an earlier forward, for the next one to fill.
    spare: Option<(Array2<F>, Array2<F>)>,
    /// The other arrays of earlier steps, for the next ones.
    pool: pool::Pool<F>,
    /// With a phase profile: the time per phase of the step.
    clock: Option<PhaseClock>,
    batch: Option<PreparedBatch<F>>,
    cache: Option<Cache<F>>,
}

impl<F: Float> CpuEngine<F> {
    /// How many step arrays (activations, gradients) the engine has allocated so far; once the
    /// batch shape repeats, steps take them from earlier steps instead.
    pub fn step_allocations(&self) -> u64 {
        self.pool.allocated()
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
        for lc in cache.layers {
            for a in [
                Some(lc.states),
                lc.cells,
                Some(lc.gates),
                Some(lc.a_hh),
                lc.input,
            ]
            .into_iter()
            .flatten()
            {
                self.pool.give(a);
            }
        }
        if let Some(x) = cache.embedded {
            self.pool.give(x);
        }
    }
}

fn view<F: Float>(buf: &[F], offset: usize, rows: usize, cols: usize) -> ArrayView2<'_, F> {
    ArrayView2::from_shape((rows, cols), &buf[offset..offset + rows * cols])
        .expect("layout ranges are in bounds")
}

/// An array of `steps` blocks of `b` rows ([steps * b, width], standard layout, as every array
/// of the engine is) seen per step: [steps, b, width].
fn per_step<F: Float>(a: ArrayView2<'_, F>, b: usize) -> ndarray::ArrayView3<'_, F> {
    let (rows, w) = a.dim();
    a.into_shape_with_order((rows / b.max(1), b, w))
        .expect("standard-layout arrays of whole steps")
}

/// [`per_step`], mutable.
fn per_step_mut<F: Float>(a: &mut Array2<F>, b: usize) -> ndarray::ArrayViewMut3<'_, F> {
    let (rows, w) = a.dim();
    a.view_mut()
        .into_shape_with_order((rows / b.max(1), b, w))
        .expect("standard-layout arrays of whole steps")
}

fn view_mut<F: Float>(
    buf: &mut [F],
    offset: usize,
    rows: usize,
    cols: usize,
) -> ArrayViewMut2<'_, F> {
    ArrayViewMut2::from_shape((rows, cols), &mut buf[offset..offset + rows * cols])
        .expect("layout ranges are in bounds")
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
            logit_budget: DEFAULT_LOGIT_BUDGET,
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

    /// The loss of the last forward, if one ran.
    fn cache(&self) -> Result<&Cache<F>> {
        self.cache
            .as_ref()
            .ok_or_else(|| Error::Config("no forward pass has run yet".into()))
    }

    fn rows(&self) -> usize {
        self.h0.first().map_or(0, |a| a.nrows())
    }
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
        format!(
            "cpu ({}, {} threads)",
            std::any::type_name::<F>(),
            std::thread::available_parallelism().map_or(1, |n| n.get())
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

    fn upload_batch(&mut self, batch: &Batch) -> Result<()> {
        batch.validate(&self.config)?;
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
        });
        self.recycle_cache();
        Ok(())
    }

    fn forward(&mut self) -> Result<()> {
        self.recycle_cache();
        let batch = self
            .batch
            .as_ref()
            .ok_or_else(|| Error::Config("forward called before upload_batch".into()))?;
        let pool = &mut self.pool;
        let clock = &mut self.clock;
        profile::enter(clock, StepPhase::Input);
        let cfg = &self.config;
        let (t_len, b, h) = (batch.steps, batch.rows, cfg.hidden_size);
        let n = t_len * b;
        let masks: Vec<MaskKey> = (0..cfg.layers.saturating_sub(1))
            .map(|k| MaskKey::new(self.dropout, k))
            .collect();
        // With an embedding, layer 0 reads the embedded tokens [N, E].
        let embedded = match (self.layout.embed(), cfg.embed, &batch.tokens) {
            (Some(off), Some(e), Some(tokens)) => {
                let mut x = pool.overwritten((n, e));
                rnn::embed_gather(
                    tokens,
                    view(&self.params, off, cfg.input_size, e),
                    x.view_mut(),
                );
                Some(x)
            }
            _ => None,
        };
        let mut layers: Vec<LayerCache<F>> = Vec::with_capacity(cfg.layers);
        for k in 0..cfg.layers {
            // The input of layer k > 0: the states of layer k-1, through dropout when it is on.
            profile::enter(clock, StepPhase::Input);
            let mask = k.checked_sub(1).and_then(|j| masks.get(j));
            let input = mask.filter(|m| !m.is_identity()).map(|&m| {
                let mut x = pool.overwritten((n, h));
                let below = layers[k - 1].states.slice(s![b.., ..]);
                dropout::dropout_forward(below, m, x.view_mut());
                x
            });
            let below = match (&input, k) {
                (Some(x), _) => Some(x.view()),
                (None, 0) => embedded.as_ref().map(|x| x.view()),
                (None, _) => Some(layers[k - 1].states.slice(s![b.., ..])),
            };
            let c0 = self.c0.get(k);
            let layer = layer_forward(
                cfg,
                (&self.layout, &self.params),
                k,
                batch,
                below,
                (&self.h0[k], c0),
                (pool, clock),
            );
            layers.push(LayerCache { input, ..layer });
        }
        // The output layer over all N rows, in chunks when the logits exceed the budget: the
        // projection, then the fused output nonlinearity + loss + gradient.
        profile::enter(clock, StepPhase::Output);
        let v = cfg.output_size;
        let top = layers[cfg.layers - 1].states.slice(s![b.., ..]);
        let chunk_rows = logit_chunk_rows(n, v, self.logit_budget);
        let reuse = self.spare.take();
        let (kept, sum) = if chunk_rows >= n {
            let (p, d, sum) =
                output_chunk(cfg, &self.layout, &self.params, top, batch, 0..n, reuse)?;
            (Some((p, d)), sum)
        } else {
            let mut sum = 0.0;
            for rows in logit_chunks(n, chunk_rows) {
                sum += output_chunk(cfg, &self.layout, &self.params, top, batch, rows, None)?.2;
            }
            (None, sum)
        };
        self.cache = Some(Cache {
            layers,
            masks,
            embedded,
            kept,
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
        let cache = self
            .cache
            .as_ref()
            .ok_or_else(|| Error::Config("backward called before forward".into()))?;
        let batch = self
            .batch
            .as_ref()
            .ok_or_else(|| Error::Config("backward called before upload_batch".into()))?;
        let cfg = &self.config;
        let (t_len, b, h, v) = (batch.steps, batch.rows, cfg.hidden_size, cfg.output_size);
        let n = t_len * b;
        let gh = cfg.cell.gates() * h;
        let p = &self.params;
        let g = &mut self.grads;
        let pool = &mut self.pool;
        let clock = &mut self.clock;
        profile::enter(clock, StepPhase::OutputBackward);
        let top = cache.layers[cfg.layers - 1].states.slice(s![b.., ..]);
        // Output layer, chunk by chunk (the kept gradient, or each chunk computed again):
        // dW_o += dlogits^T S, db_o += colsum(dlogits), dS = dlogits W_o.
        let (ow, ob) = (self.layout.out_weight(), self.layout.out_bias());
        // Written whole by the chunks' `dS = dlogits W_o` (not accumulated).
        let mut ds = pool.overwritten((n, h));
        for rows in logit_chunks(n, cache.chunk_rows) {
            let recomputed;
            let dlogits = match &cache.kept {
                Some((_, d)) => d.view(),
                None => {
                    profile::enter(clock, StepPhase::Output);
                    recomputed =
                        output_chunk(cfg, &self.layout, p, top, batch, rows.clone(), None)?.1;
                    profile::enter(clock, StepPhase::OutputBackward);
                    recomputed.view()
                }
            };
            let top_c = top.slice(s![rows.clone(), ..]);
            matmul(dlogits.t(), top_c, &mut view_mut(g, ow, v, h), true);
            reduce::column_sums_accumulate(dlogits, &mut g[ob..ob + v]);
            matmul(
                dlogits,
                view(p, ow, v, h),
                &mut ds.slice_mut(s![rows, ..]),
                false,
            );
        }
        for k in (0..cfg.layers).rev() {
            let lo = self.layout.layer(k);
            let input = cfg.layer_input_size(k);
            let lc = &cache.layers[k];
            // BPTT through the layer: the gradients of the input-side and recurrent-side
            // pre-activations, [N, G*H] each (the same array for the tanh cell and the LSTM).
            profile::enter(clock, StepPhase::BackwardRecurrence);
            let (da_ih, da_hh_own) =
                layer_backward(cfg, view(p, lo.weight_hh, gh, h), lc, b, ds, pool);
            profile::enter(clock, StepPhase::WeightGradients);
            let da_hh = da_hh_own.as_ref().unwrap_or(&da_ih);
            // Weight gradients over all N rows at once.
            matmul(
                da_hh.t(),
                lc.states.slice(s![0..n, ..]),
                &mut view_mut(g, lo.weight_hh, gh, h),
                true,
            );
            reduce::column_sums_accumulate(da_ih.view(), &mut g[lo.bias_ih..lo.bias_ih + gh]);
            reduce::column_sums_accumulate(da_hh.view(), &mut g[lo.bias_hh..lo.bias_hh + gh]);
            // The layer's input: the (dropped-out) states below, the embedded tokens, the dense
            // batch, or the one-hot tokens (whose gradient is a scatter-add).
            let below = match (&lc.input, k) {
                (Some(x), _) => Some(x.view()),
                (None, 0) => cache
                    .embedded
                    .as_ref()
                    .map(|x| x.view())
                    .or(batch.dense.as_ref().map(|x| x.view())),
                (None, _) => Some(cache.layers[k - 1].states.slice(s![b.., ..])),
            };
            let mut dw_ih = view_mut(g, lo.weight_ih, gh, input);
            match (below, &batch.tokens) {
                (Some(x), _) => matmul(da_ih.t(), x, &mut dw_ih, true),
                (None, Some(tokens)) => rnn::input_grad_onehot(tokens, da_ih.view(), dw_ih),
                (None, None) => {}
            }
            ds = Array2::<F>::zeros((0, h));
            // The gradient of the layer's input: passed down, or into the embedding.
            let embedded = k == 0 && cache.embedded.is_some();
            if k > 0 || embedded {
                let mut dx = pool.overwritten((n, input));
                matmul(
                    da_ih.view(),
                    view(p, lo.weight_ih, gh, input),
                    &mut dx.view_mut(),
                    false,
                );
                if k > 0 {
                    if lc.input.is_some() {
                        dropout::dropout_backward(cache.masks[k - 1], dx.view_mut());
                    }
                    ds = dx;
                } else {
                    if let (Some(off), Some(tokens)) = (self.layout.embed(), &batch.tokens) {
                        rnn::embed_grad(tokens, dx.view(), view_mut(g, off, cfg.input_size, input));
                    }
                    pool.give(dx);
                }
            }
            pool.give(da_ih);
            if let Some(a) = da_hh_own {
                pool.give(a);
            }
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
            return Err(Error::Data(format!(
                "gradient norm is {norm}: training diverged (lower the learning rate or clip); \
                 the update was skipped"
            )));
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
        let zeros = |_| Array2::zeros((rows, self.config.hidden_size));
        self.h0 = (0..self.config.layers).map(zeros).collect();
        self.c0 = if self.config.cell.has_memory() {
            (0..self.config.layers).map(zeros).collect()
        } else {
            Vec::new()
        };
        Ok(())
    }

    fn carry_state(&mut self) -> Result<()> {
        let cache = self
            .cache
            .as_ref()
            .ok_or_else(|| Error::Config("carry_state called before forward".into()))?;
        let b = self.rows();
        for (k, lc) in cache.layers.iter().enumerate() {
            let last = lc.states.nrows() - b;
            self.h0[k].assign(&lc.states.slice(s![last.., ..]));
            if let (Some(c0), Some(cells)) = (self.c0.get_mut(k), &lc.cells) {
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
        let per_part = rows * self.config.hidden_size;
        for (a, src) in self
            .h0
            .iter_mut()
            .chain(self.c0.iter_mut())
            .zip(state.chunks_exact(per_part))
        {
            for (d, &s) in a.iter_mut().zip(src) {
                *d = F::from_f32_lossless(s);
            }
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

    fn outputs(&mut self) -> Result<Vec<f32>> {
        let cache = self.cache()?;
        match &cache.kept {
            Some((p, _)) => Ok(p.iter().map(|v| v.to_f32_lossy()).collect()),
            None => {
                let n = cache.layers[0].states.nrows() - self.rows();
                Err(outputs_not_kept(
                    n,
                    self.config.output_size,
                    cache.chunk_rows,
                ))
            }
        }
    }

    fn set_logit_budget(&mut self, elements: usize) -> Result<()> {
        if elements == 0 {
            return Err(Error::Config("the logit budget must be at least 1".into()));
        }
        self.logit_budget = elements;
        Ok(())
    }
}

/// Batch rows per time loop: the rows of a batch are independent through the recurrence, so
/// each of the threads runs the whole time loop of its share of the rows, with no
/// synchronisation inside it (measured on two cores, B = 32, T = 64, against one loop whose step
/// products split their columns between threads: GRU and LSTM at H = 128 1.1-1.5x and 1.4-2x
/// the tokens/s, at H = 512 1.0-1.8x and 1.0-1.2x). At least [`ROW_SPLIT_MIN`] / 2 rows each.
fn row_parts(b: usize) -> usize {
    if b < ROW_SPLIT_MIN {
        1
    } else {
        rayon::current_num_threads()
            .min(b / (ROW_SPLIT_MIN / 2))
            .max(1)
    }
}

/// The fewest batch rows worth a time loop of their own on another thread (half this per part).
const ROW_SPLIT_MIN: usize = 8;

/// A layer's arrays for a block of batch rows, per time step ([steps, B', width] views), that
/// split into disjoint blocks of rows.
trait RowBlock: Sized + Send {
    /// B'.
    fn rows(&self) -> usize;
    /// Rows 0..r and r..B'.
    fn split_at(self, r: usize) -> (Self, Self);

    /// Runs `f` on `parts` disjoint blocks of rows, on as many threads.
    fn run_split(self, parts: usize, f: &(dyn Fn(Self) + Sync)) {
        let b = self.rows();
        if parts <= 1 || b < 2 {
            return f(self);
        }
        let (left, right) = self.split_at(b * (parts / 2) / parts);
        rayon::join(
            || left.run_split(parts / 2, f),
            || right.run_split(parts - parts / 2, f),
        );
    }
}

/// The tanh/relu layer's states [T+1, B', H] for a block of batch rows (the input projection in
/// rows 1..=T on entry).
struct TanhRows<'a, F: Float>(ndarray::ArrayViewMut3<'a, F>);

impl<F: Float> RowBlock for TanhRows<'_, F> {
    fn rows(&self) -> usize {
        self.0.len_of(Axis(1))
    }

    fn split_at(self, r: usize) -> (Self, Self) {
        let (a, b) = self.0.split_at(Axis(1), r);
        (TanhRows(a), TanhRows(b))
    }
}

/// The tanh/relu layer's BPTT for a block of batch rows: the states [T+1, B', H] and the state
/// gradient [T, B', H], which becomes dz in place.
struct TanhGradRows<'a, F: Float> {
    states: ndarray::ArrayView3<'a, F>,
    ds: ndarray::ArrayViewMut3<'a, F>,
}

impl<F: Float> RowBlock for TanhGradRows<'_, F> {
    fn rows(&self) -> usize {
        self.ds.len_of(Axis(1))
    }

    fn split_at(self, r: usize) -> (Self, Self) {
        let (s0, s1) = self.states.split_at(Axis(1), r);
        let (d0, d1) = self.ds.split_at(Axis(1), r);
        (
            TanhGradRows { states: s0, ds: d0 },
            TanhGradRows { states: s1, ds: d1 },
        )
    }
}

/// A gated layer's forward arrays for a block of batch rows, per time step: states and memories
/// [T+1, B', H], gates and a_hh [T, B', G*H].
struct GatedRows<'a, F: Float> {
    states: ndarray::ArrayViewMut3<'a, F>,
    cells: Option<ndarray::ArrayViewMut3<'a, F>>,
    gates: ndarray::ArrayViewMut3<'a, F>,
    a_hh: ndarray::ArrayViewMut3<'a, F>,
}

impl<F: Float> RowBlock for GatedRows<'_, F> {
    fn rows(&self) -> usize {
        self.states.len_of(Axis(1))
    }

    fn split_at(self, r: usize) -> (Self, Self) {
        let (s0, s1) = self.states.split_at(Axis(1), r);
        let (g0, g1) = self.gates.split_at(Axis(1), r);
        let (a0, a1) = self.a_hh.split_at(Axis(1), r);
        let (c0, c1) = match self.cells.map(|c| c.split_at(Axis(1), r)) {
            Some((c0, c1)) => (Some(c0), Some(c1)),
            None => (None, None),
        };
        (
            GatedRows {
                states: s0,
                cells: c0,
                gates: g0,
                a_hh: a0,
            },
            GatedRows {
                states: s1,
                cells: c1,
                gates: g1,
                a_hh: a1,
            },
        )
    }
}

impl<F: Float> GatedRows<'_, F> {
    /// Steps 0..T of these rows: a_hh = h_{t-1} W_hh^T + b_hh, then the gates and the state.
    fn forward(mut self, step_w: &packed::StepWeight<'_, F>, b_hh: &[F]) {
        for t in 0..self.gates.len_of(Axis(0)) {
            let (prev, mut cur) = self.states.view_mut().split_at(Axis(0), t + 1);
            let h_prev = prev.index_axis(Axis(0), t);
            let h_t = cur.index_axis_mut(Axis(0), 0);
            let mut a_hh_t = self.a_hh.index_axis_mut(Axis(0), t);
            for mut row in a_hh_t.outer_iter_mut() {
                row.assign(&ndarray::ArrayView1::from(b_hh));
            }
            step_w.product(h_prev.view(), &mut a_hh_t);
            let gates_t = self.gates.index_axis_mut(Axis(0), t);
            match self.cells.as_mut() {
                Some(c) => {
                    let (c_prev, mut c_cur) = c.view_mut().split_at(Axis(0), t + 1);
                    lstm::lstm_step_forward(
                        gates_t,
                        a_hh_t.view(),
                        c_prev.index_axis(Axis(0), t),
                        c_cur.index_axis_mut(Axis(0), 0),
                        h_t,
                    );
                }
                None => gru::gru_step_forward(gates_t, a_hh_t.view(), h_prev, h_t),
            }
        }
    }
}

/// A gated layer's BPTT arrays for a block of batch rows, per time step: the forward's gates
/// [T, B', G*H], the state gradient ds [T, B', H], da_ih [T, B', G*H], and the cell's own.
struct GatedGradRows<'a, F: Float> {
    gates: ndarray::ArrayView3<'a, F>,
    ds: ndarray::ArrayViewMut3<'a, F>,
    da_ih: ndarray::ArrayViewMut3<'a, F>,
    cell: CellGrad<'a, F>,
}

/// What the BPTT of one kind of gated cell reads and writes besides [`GatedGradRows`]'s arrays.
enum CellGrad<'a, F: Float> {
    /// The memories [T+1, B', H] and the gradient carried to c_{t-1} [B', H]; da_ih is also the
    /// recurrent side's gradient.
    Lstm {
        cells: ndarray::ArrayView3<'a, F>,
        dc: ArrayViewMut2<'a, F>,
    },
    /// a_hh [T, B', 3H], the states [T+1, B', H] and da_hh [T, B', 3H].
    Gru {
        a_hh: ndarray::ArrayView3<'a, F>,
        states: ndarray::ArrayView3<'a, F>,
        da_hh: ndarray::ArrayViewMut3<'a, F>,
    },
}

impl<F: Float> RowBlock for GatedGradRows<'_, F> {
    fn rows(&self) -> usize {
        self.ds.len_of(Axis(1))
    }

    fn split_at(self, r: usize) -> (Self, Self) {
        let (g0, g1) = self.gates.split_at(Axis(1), r);
        let (d0, d1) = self.ds.split_at(Axis(1), r);
        let (i0, i1) = self.da_ih.split_at(Axis(1), r);
        let (cell0, cell1) = match self.cell {
            CellGrad::Lstm { cells, dc } => {
                let (c0, c1) = cells.split_at(Axis(1), r);
                let (e0, e1) = dc.split_at(Axis(0), r);
                (
                    CellGrad::Lstm { cells: c0, dc: e0 },
                    CellGrad::Lstm { cells: c1, dc: e1 },
                )
            }
            CellGrad::Gru {
                a_hh,
                states,
                da_hh,
            } => {
                let (a0, a1) = a_hh.split_at(Axis(1), r);
                let (s0, s1) = states.split_at(Axis(1), r);
                let (h0, h1) = da_hh.split_at(Axis(1), r);
                (
                    CellGrad::Gru {
                        a_hh: a0,
                        states: s0,
                        da_hh: h0,
                    },
                    CellGrad::Gru {
                        a_hh: a1,
                        states: s1,
                        da_hh: h1,
                    },
                )
            }
        };
        (
            GatedGradRows {
                gates: g0,
                ds: d0,
                da_ih: i0,
                cell: cell0,
            },
            GatedGradRows {
                gates: g1,
                ds: d1,
                da_ih: i1,
                cell: cell1,
            },
        )
    }
}

impl<F: Float> GatedGradRows<'_, F> {
    /// Steps T-1..0 of these rows: the gate derivatives, then dh_{t-1} += da_hh W_hh.
    fn backward(mut self, step_w: &packed::StepWeight<'_, F>) {
        for t in (0..self.gates.len_of(Axis(0))).rev() {
            let (before, cur) = self.ds.view_mut().split_at(Axis(0), t);
            let dh = cur.index_axis(Axis(0), 0);
            let mut dh_prev = (t > 0).then(|| before.index_axis_move(Axis(0), t - 1));
            let gates_t = self.gates.index_axis(Axis(0), t);
            let da_ih_t = self.da_ih.index_axis_mut(Axis(0), t);
            let da_rec = match &mut self.cell {
                CellGrad::Lstm { cells, dc } => {
                    lstm::lstm_step_backward(
                        gates_t,
                        cells.index_axis(Axis(0), t),
                        cells.index_axis(Axis(0), t + 1),
                        dh,
                        dc.view_mut(),
                        da_ih_t,
                    );
                    self.da_ih.index_axis(Axis(0), t)
                }
                CellGrad::Gru {
                    a_hh,
                    states,
                    da_hh,
                } => {
                    gru::gru_step_backward(
                        gates_t,
                        a_hh.index_axis(Axis(0), t),
                        states.index_axis(Axis(0), t),
                        dh,
                        da_ih_t,
                        da_hh.index_axis_mut(Axis(0), t),
                        dh_prev.as_mut().map(|d| d.view_mut()),
                    );
                    da_hh.index_axis(Axis(0), t)
                }
            };
            // The recurrent part of the previous state's gradient: dh_{t-1} += da_hh W_hh.
            if let Some(dp) = dh_prev.as_mut() {
                step_w.product(da_rec, dp);
            }
        }
    }
}

/// One layer's forward pass over all T steps: the input projection over all N rows at once
/// (a column gather for one-hot input), then the recurrence one step at a time. `below` is the
/// input of layer k > 0 ([N, H]); layer 0 reads the batch. `init` is (h0, c0), [B, H] each.
fn layer_forward<F: Float>(
    cfg: &ModelConfig,
    (layout, p): (&ParamLayout, &[F]),
    k: usize,
    batch: &PreparedBatch<F>,
    below: Option<ArrayView2<F>>,
    (h0, c0): (&Array2<F>, Option<&Array2<F>>),
    (pool, clock): (&mut pool::Pool<F>, &mut Option<PhaseClock>),
) -> LayerCache<F> {
    let (t_len, b, h) = (batch.steps, batch.rows, cfg.hidden_size);
    let n = t_len * b;
    let gh = cfg.cell.gates() * h;
    let lo = layout.layer(k);
    let input = cfg.layer_input_size(k);
    let w_ih = view(p, lo.weight_ih, gh, input);
    let gated = cfg.cell != Cell::Rnn;
    // Every step's product h_{t-1} W_hh^T, with W_hh^T packed (or copied row-major) once for
    // all T steps.
    // With the rows split between threads, each product runs on its own thread.
    let parts = row_parts(b);
    let step_w = packed::StepWeight::reusing(
        view(p, lo.weight_hh, gh, h).reversed_axes(),
        pool.pack_buffer(),
    )
    .parallel(parts == 1);
    let b_ih = &p[lo.bias_ih..lo.bias_ih + gh];
    let b_hh = &p[lo.bias_hh..lo.bias_hh + gh];
    // Overwritten whole: rows 0..B by h0, the others by the input projection (tanh) or the
    // steps; likewise the gates (the input projection), a_hh (bias + product) and the memories.
    let mut states = pool.overwritten(((t_len + 1) * b, h));
    states.slice_mut(s![0..b, ..]).assign(h0);
    // Input projection over all N rows at once: the tanh cell writes it where its states go
    // (with both biases), a gated cell into its gate array (b_hh joins the recurrent product).
    let mut gates = pool.overwritten(if gated { (n, gh) } else { (0, 0) });
    {
        let (mut u, second) = if gated {
            (gates.view_mut(), None)
        } else {
            (states.slice_mut(s![b.., ..]), Some(b_hh))
        };
        match (below, &batch.tokens, &batch.dense) {
            (None, Some(tokens), _) => rnn::input_gather_onehot(tokens, w_ih, b_ih, second, u),
            (None, _, Some(x)) => rnn::input_projection_dense(x.view(), w_ih, b_ih, second, u),
            (Some(x), _, _) => rnn::input_projection_dense(x, w_ih, b_ih, second, u),
            (None, None, None) => u.fill(F::zero()),
        }
    }
    let mut a_hh = pool.overwritten(if gated { (n, gh) } else { (0, 0) });
    let mut cells = c0.map(|c0| {
        let mut c = pool.overwritten(((t_len + 1) * b, h));
        c.slice_mut(s![0..b, ..]).assign(c0);
        c
    });
    // The recurrence, one time step at a time.
    profile::enter(clock, StepPhase::ForwardRecurrence);
    if !gated {
        TanhRows(per_step_mut(&mut states, b)).run_split(parts, &|mut r: TanhRows<'_, F>| {
            for t in 0..r.0.len_of(Axis(0)) - 1 {
                let (prev, mut cur) = r.0.view_mut().split_at(Axis(0), t + 1);
                let h_t = cur.index_axis_mut(Axis(0), 0);
                let h_prev = prev.index_axis(Axis(0), t);
                rnn::rnn_step_forward_with(None, h_prev, &step_w, cfg.activation, h_t);
            }
        });
    } else {
        // Per time step and batch row: [T(+1), B, width].
        let rows = GatedRows {
            states: per_step_mut(&mut states, b),
            cells: cells.as_mut().map(|c| per_step_mut(c, b)),
            gates: per_step_mut(&mut gates, b),
            a_hh: per_step_mut(&mut a_hh, b),
        };
        rows.run_split(parts, &|r| r.forward(&step_w, b_hh));
    }
    pool.give_pack(step_w.into_buffer());
    LayerCache {
        states,
        cells,
        gates,
        a_hh,
        input: None,
    }
}

/// One layer's BPTT over all T steps, from the last step to the first. `ds` [N, H] is the
/// gradient reaching the layer's outputs h_1..h_T from above. Returns the gradients of the
/// input-side pre-activations [N, G*H] and, for the GRU, of the recurrent-side ones (for the
/// tanh cell and the LSTM they are the same array).
fn layer_backward<F: Float>(
    cfg: &ModelConfig,
    w_hh: ArrayView2<F>,
    lc: &LayerCache<F>,
    b: usize,
    mut ds: Array2<F>,
    pool: &mut pool::Pool<F>,
) -> (Array2<F>, Option<Array2<F>>) {
    let n = ds.nrows();
    // dh_{t-1} += dz_t W_hh at every step, W_hh packed once; with the rows split between
    // threads, each product runs on its own thread.
    let parts = row_parts(b);
    let step_w = packed::StepWeight::reusing(w_hh, pool.pack_buffer()).parallel(parts == 1);
    if cfg.cell == Cell::Rnn {
        // In place: ds becomes dz.
        let rows = TanhGradRows {
            states: per_step(lc.states.view(), b),
            ds: per_step_mut(&mut ds, b),
        };
        rows.run_split(parts, &|mut r: TanhGradRows<'_, F>| {
            let steps = r.ds.len_of(Axis(0));
            for t in (0..steps).rev() {
                let (cur, next) = r.ds.view_mut().split_at(Axis(0), t + 1);
                let dz_t = cur.index_axis_move(Axis(0), t);
                let dz_next = (t + 1 < steps).then(|| next.index_axis_move(Axis(0), 0));
                let s_t = r.states.index_axis(Axis(0), t + 1);
                rnn::rnn_step_backward_with(
                    None,
                    dz_next.as_ref().map(|d| d.view()),
                    &step_w,
                    s_t,
                    cfg.activation,
                    dz_t,
                );
            }
        });
        pool.give_pack(step_w.into_buffer());
        return (ds, None);
    }
    let gh = lc.gates.ncols();
    // Both written whole by the step kernels, row block by row block.
    let mut da_ih = pool.overwritten((n, gh));
    let mut da_hh = pool.overwritten(if lc.cells.is_some() { (0, 0) } else { (n, gh) });
    let mut dc = pool.zeros(if lc.cells.is_some() {
        (b, cfg.hidden_size)
    } else {
        (0, 0)
    });
    let cell = match &lc.cells {
        Some(c) => CellGrad::Lstm {
            cells: per_step(c.view(), b),
            dc: dc.view_mut(),
        },
        None => CellGrad::Gru {
            a_hh: per_step(lc.a_hh.view(), b),
            states: per_step(lc.states.view(), b),
            da_hh: per_step_mut(&mut da_hh, b),
        },
    };
    let rows = GatedGradRows {
        gates: per_step(lc.gates.view(), b),
        ds: per_step_mut(&mut ds, b),
        da_ih: per_step_mut(&mut da_ih, b),
        cell,
    };
    rows.run_split(parts, &|r| r.backward(&step_w));
    pool.give_pack(step_w.into_buffer());
    pool.give(dc);
    pool.give(ds);
    let da_hh = lc.cells.is_none().then_some(da_hh);
    (da_ih, da_hh)
}
