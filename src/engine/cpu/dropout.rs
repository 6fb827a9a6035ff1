//! CPU twin of `shaders/dropout.wgsl`: dropout between stacked layers with a counter-based mask,
//! so both engines draw the same mask from the same key without storing or uploading it.
//!
//! Element `i` of layer k's output is kept when `hash(i, key_k) >> 8 >= threshold`, where
//! `threshold = round(p * 2^24)` and `key_k` is derived from the step's seed and k on the host;
//! a kept element is scaled by `1 / (1 - p)` (PyTorch's inverted dropout).
//!
//! The edge dropout ([`EdgeDropout`]) draws its masks the same way,
//! keyed by the step's seed and a site of its own in place of k: [`EMBED_SITE`] for the
//! embedded tokens, [`OUT_SITE`] for the top layer's output.
//!
//! An engine whose batch is a share of a larger one ([`RowWindow`]: data-parallel training)
//! keys each element by its index in the shared batch's block instead ([`MaskSpan`]), so the
//! engines that share a batch draw the masks one engine draws for all of it.

use ndarray::{ArrayView2, ArrayViewMut2};

use crate::engine::cpu::Float;
use crate::engine::{Dropout, EdgeDropout, RowWindow};

/// The integer hash of the mask (lowbias32), the same in WGSL.
pub fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// Where the elements of an engine's [N, W] block (N = T * Bl rows, time-major) lie in the
/// [T * B, W] block of the batch it shares row-wise ([`RowWindow`]): element `i` is keyed by
/// `(i / step) * shared_step + offset + i % step`, with `step = Bl * W`, `shared_step = B * W`
/// and `offset = first * W`, the index of the same element in the shared block (wrapping at
/// 2^32, as the index of an unshared block does). With `step == shared_step` and `offset = 0`
/// that is `i` itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaskSpan {
    pub step: usize,
    pub shared_step: usize,
    pub offset: usize,
}

impl MaskSpan {
    /// The engine alone: every element keyed by its own index, for a block of any shape
    /// (`(i / s) * s + i % s = i`; s = 2^32 - 1 fits the kernels' 32-bit arguments).
    pub const WHOLE: MaskSpan = MaskSpan {
        step: u32::MAX as usize,
        shared_step: u32::MAX as usize,
        offset: 0,
    };

    /// The span of a block `width` wide whose batch has `rows` rows (Bl) in `window`;
    /// [`MaskSpan::WHOLE`] without one.
    pub fn new(window: Option<RowWindow>, rows: usize, width: usize) -> Self {
        match window {
            Some(w) => MaskSpan {
                step: rows * width,
                shared_step: w.rows * width,
                offset: w.first * width,
            },
            None => MaskSpan::WHOLE,
        }
    }

    /// Whether every element is keyed by its own index.
    pub fn is_whole(&self) -> bool {
        self.step == self.shared_step && self.offset == 0
    }

    /// The key index of element `i` of the block (the kernels' u32 arithmetic).
    pub fn index(&self, i: usize) -> u32 {
        let step = self.step.max(1);
        ((i / step) * self.shared_step + self.offset + i % step) as u32
    }
}

/// The mask of one layer boundary as the kernels see it: the key, the 24-bit threshold, the
/// scale of a kept element and where the block's elements lie in a shared batch. With `None`
/// (no dropout, or evaluation) every element is kept with scale 1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MaskKey {
    pub key: u32,
    pub threshold: u32,
    pub scale: f32,
    pub span: MaskSpan,
}

/// The mask site of the embedded tokens (layer 0's input); the masks between layers are keyed by
/// the layer below them (0, 1, ...), far from it.
pub const EMBED_SITE: usize = u32::MAX as usize;
/// The mask site of the top layer's output (the output layer's input).
pub const OUT_SITE: usize = u32::MAX as usize - 1;

impl MaskKey {
    /// The mask at the edge site `site` ([`EMBED_SITE`], [`OUT_SITE`]) with probability `p`,
    /// keyed by the seed of the step's `dropout`; everything kept without one (evaluation).
    pub fn edge(dropout: Option<Dropout>, p: f32, site: usize) -> Self {
        MaskKey::new(dropout.map(|d| Dropout { p, seed: d.seed }), site)
    }

    /// The mask at `site` for `dropout` (the step's seed) and the edge dropout `edges`: after
    /// layer `site` with `dropout`'s probability, or at an edge site with its own.
    pub fn at(dropout: Option<Dropout>, edges: EdgeDropout, site: usize) -> Self {
        match site {
            EMBED_SITE => MaskKey::edge(dropout, edges.embed, site),
            OUT_SITE => MaskKey::edge(dropout, edges.out, site),
            layer => MaskKey::new(dropout, layer),
        }
    }

    /// The mask after layer `layer` for `dropout`.
    pub fn new(dropout: Option<Dropout>, layer: usize) -> Self {
        match dropout {
            Some(d) if d.p > 0.0 => {
                let lo = d.seed as u32;
                let hi = (d.seed >> 32) as u32;
                let key = mix32(lo ^ mix32(hi ^ mix32(layer as u32 ^ 0x9e37_79b9)));
                MaskKey {
                    key,
                    threshold: ((d.p as f64) * 16_777_216.0).round() as u32,
                    scale: 1.0 / (1.0 - d.p),
                    span: MaskSpan::WHOLE,
                }
            }
            _ => MaskKey {
                key: 0,
                threshold: 0,
                scale: 1.0,
                span: MaskSpan::WHOLE,
            },
        }
    }

    /// The same mask over a block that lies in a shared batch as `span` says.
    pub fn within(self, span: MaskSpan) -> Self {
        MaskKey { span, ..self }
    }

    /// Whether the mask keeps everything unscaled.
    pub fn is_identity(&self) -> bool {
        self.threshold == 0 && self.scale == 1.0
    }

    /// The multiplier of the element keyed by index `i`: 0 or the scale.
    pub fn value(&self, i: u32) -> f32 {
        if mix32(mix32(i) ^ self.key) >> 8 >= self.threshold {
            self.scale
        } else {
            0.0
        }
    }

    /// The multiplier of element `i` of the block: the value at its index in the span.
    pub fn of_element(&self, i: usize) -> f32 {
        if self.span.is_whole() {
            self.value(i as u32)
        } else {
            self.value(self.span.index(i))
        }
    }
}

/// `y = x ⊙ m` with m the mask of `key` over the flat index of [N, H] (in its span). Shapes:
/// x, y [N, H].
pub fn dropout_forward<F: Float>(x: ArrayView2<F>, key: MaskKey, mut y: ArrayViewMut2<F>) {
    for (i, (o, &v)) in y.iter_mut().zip(x.iter()).enumerate() {
        *o = v * F::from_f32_lossless(key.of_element(i));
    }
}

/// `dx = dy ⊙ m` in place (the same mask as the forward). Shape: d [N, H].
pub fn dropout_backward<F: Float>(key: MaskKey, mut d: ArrayViewMut2<F>) {
    for (i, v) in d.iter_mut().enumerate() {
        *v = *v * F::from_f32_lossless(key.of_element(i));
    }
}
