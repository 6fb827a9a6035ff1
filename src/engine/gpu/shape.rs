//! The device buffers of one batch shape (T, B), named as the CPU engine names its caches
//! (`LayerCache`, `Cache`, `CellGrad` in `engine::cpu`), and the recurrence form the shape runs.
//!
//! Shapes: T time steps, B rows, H state size, G gates, V output size, N = T * B. Every buffer
//! is allocated once, when the shape is first used, and only where the model's configuration
//! and the recurrence form read it: the per-cell buffers are one enum ([`CellBuffers`]), so a
//! tanh layer has no gate arrays and an LSTM in the fused form no a_hh.

use crate::engine::gpu::buffers::storage;
use crate::engine::gpu::context::GpuContext;
use crate::engine::gpu::recording::ShapePlans;
use crate::engine::gpu::rnn::{self, TokenLayout};
use crate::engine::{ROWS_BELOW_HIDDEN, Recurrence, logit_chunk_rows};
use crate::error::{Error, Result};
use crate::model::{Cell, InputKind, ModelConfig, OutputKind, ParamLayout};

/// How the recurrent products of a shape run, resolved once from the [`Recurrence`] setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecurrenceKernel {
    /// tanh/relu only: one dispatch per layer (both directions), a workgroup per batch row and
    /// direction.
    Rows,
    /// One dispatch per time step spread over the output columns; a gated step's product is
    /// fused into its gate kernel.
    Wide,
    /// One dispatch per time step, the product tiled (for a gated cell a GEMM into a_hh, then
    /// the gate kernel).
    Steps,
}

impl RecurrenceKernel {
    /// The form `setting` gives a layer of `cell` with `rows` batch rows of H = `hidden` on this
    /// device: gated cells run `Steps` when asked and `Wide` otherwise; tanh/relu runs `Rows`
    /// where asked (an error where it does not fit) or, under `Auto`, below
    /// [`ROWS_BELOW_HIDDEN`] where it fits, and `Wide` otherwise.
    pub fn resolve(
        ctx: &GpuContext,
        setting: Recurrence,
        cell: Cell,
        rows: usize,
        hidden: usize,
    ) -> Result<Self> {
        use RecurrenceKernel::{Rows, Steps, Wide};
        if cell != Cell::Rnn {
            return Ok(if setting == Recurrence::Steps {
                Steps
            } else {
                Wide
            });
        }
        let fits = || rnn::rows_kernels_fit(ctx, rows, hidden);
        match setting {
            Recurrence::Steps => Ok(Steps),
            Recurrence::Wide => Ok(Wide),
            Recurrence::Auto if hidden < ROWS_BELOW_HIDDEN && fits() => Ok(Rows),
            Recurrence::Auto => Ok(Wide),
            Recurrence::Rows if fits() => Ok(Rows),
            Recurrence::Rows => Err(Error::Config(format!(
                "the rows-per-workgroup recurrence does not fit B={rows} rows of H={hidden} on {}",
                ctx.info.name
            ))),
        }
    }

    /// The form a layer with an LSTM projection runs: `Steps`, whose per-step products are
    /// GEMMs of their own (the projection is one more), under any setting but `Wide`, which
    /// fuses the product into the gate kernel and cannot project; `self` without a projection.
    pub fn for_projection(self, projected: bool, setting: Recurrence) -> Result<Self> {
        match (projected, setting) {
            (false, _) => Ok(self),
            (true, Recurrence::Wide) => Err(Error::Config(
                "the wide recurrence does not run LSTM projections (--proj-size); \
                 use the steps recurrence (or auto, which picks it)"
                    .into(),
            )),
            (true, _) => Ok(RecurrenceKernel::Steps),
        }
    }

    /// "rows", "wide" or "steps".
    pub fn name(self) -> &'static str {
        match self {
            RecurrenceKernel::Rows => "rows",
            RecurrenceKernel::Wide => "wide",
            RecurrenceKernel::Steps => "steps",
        }
    }

    /// Whether a gated step's recurrent product runs inside its gate kernel: in `Wide` (a
    /// gated cell never resolves to `Rows`).
    pub fn fuses_gates(self) -> bool {
        self != RecurrenceKernel::Steps
    }
}

/// The uploaded batch.
pub struct BatchBuffers {
    /// Token ids and per-token row lists (one-hot, [`TokenLayout`]) or values [N, I] (dense).
    pub inputs: wgpu::Buffer,
    /// Class ids `[N]` or target values [N, V] as f32 bits.
    pub targets: wgpu::Buffer,
    /// The mask `[N]` (all ones without one).
    pub mask: wgpu::Buffer,
    /// Each row's length `[B]` (u32, `engine::reverse::sequence_lengths`), written for
    /// bidirectional models, whose second direction reads each sequence reversed within it.
    pub lengths: wgpu::Buffer,
}

/// The embedding's buffers: layer 0's input and its gradient.
pub struct Embedding {
    /// Element offset of the table [I, E] in the parameters (and gradients).
    pub table: usize,
    /// E.
    pub width: usize,
    /// The embedded tokens [N, E].
    pub embedded: wgpu::Buffer,
    /// Their gradient [N, E].
    pub d_embedded: wgpu::Buffer,
}

/// The buffers every layer has, whatever its cell (the CPU's `LayerCache` less the per-cell
/// arrays, which are in [`CellBuffers`]).
pub struct LayerBuffers {
    /// h: [(T+1) * B, H], rows 0..B the initial state, per direction (the second direction's
    /// [(T+1) * B, H] after the first, in its reversed time order).
    pub states: wgpu::Buffer,
    /// A bidirectional layer's output [N, 2H], `[h_fwd; h_rev]` per row in time order; `None`
    /// for one direction, whose output is its states' rows B.. .
    pub output: Option<wgpu::Buffer>,
    /// Layer k > 0: its input, the output of layer k-1 after dropout [N, D*H] (an unscaled copy
    /// when dropout is off); `None` for layer 0, which reads the batch or the embedding.
    pub input: Option<wgpu::Buffer>,
}

/// A bidirectional model's work arrays for its second direction, shared by the layers.
pub struct ReverseBuffers {
    /// The state gradient of each direction, the second in reversed time order, each in
    /// [(T+1) * B, H] (its rows 0..N used), so it has the states' direction stride.
    pub ds: wgpu::Buffer,
    /// [N, G*H]: the second direction's input projection before its reversal, and its da_ih
    /// after it is taken back to time order.
    pub work: wgpu::Buffer,
}

/// A GRU layer's forward arrays.
pub struct GruLayer {
    /// The gate activations (r, z, n) [N, 3H] (the input projection a_ih on entry).
    pub gates: wgpu::Buffer,
    /// The recurrent pre-activations `h_{t-1} W_hh^T + b_hh` [N, 3H], kept in both forms (the
    /// BPTT reads them).
    pub a_hh: wgpu::Buffer,
}

/// An LSTM layer's forward arrays.
pub struct LstmLayer {
    /// c: [(T+1) * B, H], rows 0..B the initial memory.
    pub cells: wgpu::Buffer,
    /// The gate activations (i, f, g, o) [N, 4H] (the input projection a_ih on entry).
    pub gates: wgpu::Buffer,
    /// Where the recurrent product goes.
    pub product: LstmProduct,
    /// With a projection: m = o ⊙ tanh(c) [(T+1) * B, H] (rows B.., laid out as the memories),
    /// which `h_t = m_t W_hr^T` projects to the P-wide state; `None` without one.
    pub unprojected: Option<wgpu::Buffer>,
}

/// The LSTM's recurrent product per step: fused into the gate kernel, which keeps no a_hh, or
/// a product of its own into a_hh [N, 4H].
pub enum LstmProduct {
    /// [`RecurrenceKernel::Wide`].
    Fused,
    /// [`RecurrenceKernel::Steps`].
    Separate { a_hh: wgpu::Buffer },
}

/// The per-cell buffers: each layer's forward arrays and the BPTT's work arrays, shared by the
/// layers (the CPU's `CellGrad` and the per-cell fields of its `LayerCache`).
pub enum CellBuffers {
    /// tanh/relu: the states alone; the BPTT runs in place in the state gradient.
    Tanh,
    Gru {
        layers: Vec<GruLayer>,
        /// The gradient of the input-side pre-activations [N, 3H].
        da_ih: wgpu::Buffer,
        /// The gradient of the recurrent-side pre-activations [N, 3H].
        da_hh: wgpu::Buffer,
    },
    Lstm {
        layers: Vec<LstmLayer>,
        /// The gradient of the pre-activations [N, 4H], both sides alike.
        da: wgpu::Buffer,
        /// The gradient carried to c_{t-1} [B, H].
        dc: wgpu::Buffer,
        /// With a projection: dm_t = dh_t W_hr, laid out as the memories; `None` without one.
        dm: Option<wgpu::Buffer>,
    },
}

impl CellBuffers {
    /// The gate activations of layer k; `None` for the tanh cell.
    pub fn gates(&self, k: usize) -> Option<&wgpu::Buffer> {
        match self {
            CellBuffers::Tanh => None,
            CellBuffers::Gru { layers, .. } => Some(&layers[k].gates),
            CellBuffers::Lstm { layers, .. } => Some(&layers[k].gates),
        }
    }

    /// The LSTM's memories per layer; empty for the other cells.
    pub fn memories(&self) -> Vec<&wgpu::Buffer> {
        match self {
            CellBuffers::Lstm { layers, .. } => layers.iter().map(|l| &l.cells).collect(),
            _ => Vec::new(),
        }
    }

    /// Whether layer k's cell writes m = o ⊙ tanh(c) apart from its states (an LSTM with a
    /// projection).
    pub fn projected(&self, k: usize) -> bool {
        matches!(self, CellBuffers::Lstm { layers, .. } if layers[k].unprojected.is_some())
    }
}

/// The output layer's buffers, for one chunk of rows at a time.
pub struct OutputBuffers {
    /// Logits, then probabilities, of one chunk [chunk_rows, V].
    pub logits: wgpu::Buffer,
    /// The gradient of the objective w.r.t. them [chunk_rows, V].
    pub dlogits: wgpu::Buffer,
    /// The masked loss of each row `[N]`, summed into the loss slot.
    pub row_loss: wgpu::Buffer,
    /// Rows per chunk (N when the output layer runs in one).
    pub chunk_rows: usize,
}

/// Every buffer a batch shape owns.
pub struct ShapeBuffers {
    /// T.
    pub steps: usize,
    /// B.
    pub rows: usize,
    pub batch: BatchBuffers,
    pub embedding: Option<Embedding>,
    pub layers: Vec<LayerBuffers>,
    pub cell: CellBuffers,
    pub output: OutputBuffers,
    /// With dropout on the top layer's output: the output layer's input, the top layer's output
    /// h_1..h_T through its mask [N, D*W] (allocated by the engine, which knows the setting).
    pub out_input: Option<wgpu::Buffer>,
    /// The gradient reaching a layer's outputs [N, D*H], two of them: layer k reads one and
    /// writes the gradient of the layer below into the other.
    pub ds: [wgpu::Buffer; 2],
    /// A bidirectional model's work arrays; `None` for one direction.
    pub reverse: Option<ReverseBuffers>,
}

impl ShapeBuffers {
    /// Allocates the buffers of shape (T, B) = (`steps`, `rows`) for `kernel`, the output layer
    /// in chunks of at most `logit_budget` logits.
    pub fn allocate(
        ctx: &GpuContext,
        (cfg, layout): (&ModelConfig, &ParamLayout),
        (steps, rows): (usize, usize),
        kernel: RecurrenceKernel,
        logit_budget: usize,
    ) -> Result<Self> {
        let (w, n, dirs) = (cfg.state_width(), steps * rows, cfg.directions());
        let dh = cfg.output_width();
        let batch = allocate_batch(ctx, cfg, (n, rows))?;
        let layers = (0..cfg.layers)
            .map(|k| {
                Ok(LayerBuffers {
                    states: storage(ctx, &format!("states_l{k}"), dirs * (steps + 1) * rows * w)?,
                    output: cfg
                        .bidirectional
                        .then(|| storage(ctx, &format!("output_l{k}"), n * dh))
                        .transpose()?,
                    input: (k > 0)
                        .then(|| storage(ctx, &format!("dropped_l{k}"), n * dh))
                        .transpose()?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let cell = allocate_cell(ctx, cfg, (steps, rows), kernel)?;
        let embedding = match (layout.embed(), cfg.embed) {
            (Some(table), Some(e)) => Some(Embedding {
                table,
                width: e,
                embedded: storage(ctx, "embedded", n * e)?,
                d_embedded: storage(ctx, "d_embedded", n * e)?,
            }),
            _ => None,
        };
        let output = allocate_output(ctx, cfg, n, logit_budget)?;
        let ds = [storage(ctx, "ds_a", n * dh)?, storage(ctx, "ds_b", n * dh)?];
        let reverse = if cfg.bidirectional {
            Some(ReverseBuffers {
                ds: storage(ctx, "ds_dirs", dirs * (steps + 1) * rows * w)?,
                work: storage(ctx, "reverse_work", n * cfg.cell.gates() * cfg.hidden_size)?,
            })
        } else {
            None
        };
        Ok(ShapeBuffers {
            steps,
            rows,
            batch,
            embedding,
            layers,
            cell,
            output,
            out_input: None,
            ds,
            reverse,
        })
    }

    /// Where the initial states are, in the order of the engine's `h0`: every layer's and
    /// direction's states, then (LSTM) memories, each as (buffer, element offset of its
    /// [(T+1) * B, width] block, width). Its first B rows are the initial state and its last B
    /// rows are carried to the next batch.
    pub fn carried(&self, cfg: &ModelConfig) -> Vec<(&wgpu::Buffer, usize, usize)> {
        let (h, w, dirs) = (cfg.hidden_size, cfg.state_width(), cfg.directions());
        let rows = (self.steps + 1) * self.rows;
        let states = self.layers.iter().map(|l| (&l.states, w));
        let memories = self.cell.memories().into_iter().map(|c| (c, h));
        states
            .chain(memories)
            .flat_map(|(b, width)| (0..dirs).map(move |d| (b, d * rows * width, width)))
            .collect()
    }
}

fn allocate_batch(
    ctx: &GpuContext,
    cfg: &ModelConfig,
    (n, rows): (usize, usize),
) -> Result<BatchBuffers> {
    let (i0, v) = (cfg.input_size, cfg.output_size);
    Ok(BatchBuffers {
        inputs: match cfg.input_kind {
            InputKind::OneHot => storage(ctx, "tokens", TokenLayout::new(n, i0).len())?,
            InputKind::Dense => storage(ctx, "inputs", n * i0)?,
        },
        targets: match cfg.output_kind {
            OutputKind::Softmax => storage(ctx, "targets", n)?,
            _ => storage(ctx, "targets", n * v)?,
        },
        mask: storage(ctx, "mask", n)?,
        lengths: storage(ctx, "lengths", rows)?,
    })
}

/// The per-cell buffers: a gated layer's gates and (where read) a_hh, an LSTM layer's memories,
/// and the BPTT work arrays.
fn allocate_cell(
    ctx: &GpuContext,
    cfg: &ModelConfig,
    (steps, rows): (usize, usize),
    kernel: RecurrenceKernel,
) -> Result<CellBuffers> {
    let (h, dirs) = (cfg.hidden_size, cfg.directions());
    // Every array per direction, the second after the first.
    let n = dirs * steps * rows;
    let gh = cfg.cell.gates() * h;
    let (projected, cells) = (cfg.proj_size.is_some(), dirs * (steps + 1) * rows * h);
    let per_layer = |name: &str, k: usize, len: usize| storage(ctx, &format!("{name}_l{k}"), len);
    Ok(match cfg.cell {
        Cell::Rnn => CellBuffers::Tanh,
        Cell::Gru => CellBuffers::Gru {
            layers: (0..cfg.layers)
                .map(|k| {
                    Ok(GruLayer {
                        gates: per_layer("gates", k, n * gh)?,
                        a_hh: per_layer("a_hh", k, n * gh)?,
                    })
                })
                .collect::<Result<_>>()?,
            da_ih: storage(ctx, "da_ih", n * gh)?,
            da_hh: storage(ctx, "da_hh", n * gh)?,
        },
        Cell::Lstm => CellBuffers::Lstm {
            layers: (0..cfg.layers)
                .map(|k| {
                    Ok(LstmLayer {
                        cells: per_layer("cells", k, cells)?,
                        gates: per_layer("gates", k, n * gh)?,
                        product: if kernel.fuses_gates() {
                            LstmProduct::Fused
                        } else {
                            LstmProduct::Separate {
                                a_hh: per_layer("a_hh", k, n * gh)?,
                            }
                        },
                        unprojected: projected
                            .then(|| per_layer("unprojected", k, cells))
                            .transpose()?,
                    })
                })
                .collect::<Result<_>>()?,
            da: storage(ctx, "da_ih", n * gh)?,
            dc: storage(ctx, "dc", dirs * rows * h)?,
            dm: projected.then(|| storage(ctx, "dm", cells)).transpose()?,
        },
    })
}

/// The output layer's buffers: it runs in chunks of rows when N * V logits exceed the budget
/// (or what one buffer binds).
fn allocate_output(
    ctx: &GpuContext,
    cfg: &ModelConfig,
    n: usize,
    logit_budget: usize,
) -> Result<OutputBuffers> {
    let v = cfg.output_size;
    let bindable = (ctx.limits.max_storage_buffer_binding_size / 4) as usize;
    let chunk_rows = logit_chunk_rows(n, v, logit_budget.min(bindable));
    Ok(OutputBuffers {
        logits: storage(ctx, "logits", chunk_rows * v)?,
        dlogits: storage(ctx, "dlogits", chunk_rows * v)?,
        row_loss: storage(ctx, "row_loss", n)?,
        chunk_rows,
    })
}

/// A batch shape: its buffers, its recurrence form and its two plans.
pub struct Shape {
    pub buffers: ShapeBuffers,
    pub recurrence: RecurrenceKernel,
    pub plans: ShapePlans,
    /// When it was last made current (for eviction).
    pub last_used: u64,
}

#[cfg(test)]
mod tests {
    use super::RecurrenceKernel;

    #[test]
    fn recurrence_kernels_keep_their_names_and_only_steps_separates_the_gates() {
        let all = [
            RecurrenceKernel::Rows,
            RecurrenceKernel::Wide,
            RecurrenceKernel::Steps,
        ];
        let names: Vec<&str> = all.iter().map(|k| k.name()).collect();
        assert_eq!(names, ["rows", "wide", "steps"]);
        let fused: Vec<bool> = all.iter().map(|k| k.fuses_gates()).collect();
        assert_eq!(fused, [true, true, false]);
    }
}
