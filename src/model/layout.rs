//! `ParamLayout`: the single table of parameter names, shapes and offsets in ONE flat f32 buffer.
//! Parameters, gradients and optimizer moments all use it, on the CPU and on the GPU alike.
//! Names and shapes are PyTorch's (`torch.nn.RNN` + `torch.nn.Linear`), so a checkpoint loads there.

use std::ops::Range;

use crate::error::{Error, Result};
use crate::model::config::ModelConfig;

/// One named tensor inside the flat buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    /// PyTorch's name, e.g. `rnn.weight_ih_l0`.
    pub name: String,
    /// Row-major shape, e.g. `[G*H, I]`.
    pub shape: Vec<usize>,
    /// Offset of the first element in the flat buffer.
    pub offset: usize,
}

impl ParamSpec {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor has no elements (never the case for a valid config).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Its range in the flat buffer.
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.len()
    }
}

/// Offsets of the tensors of one recurrent layer in one direction (`_reverse` names the second
/// direction of a bidirectional layer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerOffsets {
    /// `weight_ih_l{k}`: [G*H, I_k]
    pub weight_ih: usize,
    /// `weight_hh_l{k}`: [G*H, W] (W the state width: P with a projection, else H)
    pub weight_hh: usize,
    /// `bias_ih_l{k}`: `[G*H]`; `None` without biases.
    pub bias_ih: Option<usize>,
    /// `bias_hh_l{k}`: `[G*H]`; `None` without biases.
    pub bias_hh: Option<usize>,
    /// `weight_hr_l{k}`: [P, H], an LSTM's projection; `None` without one.
    pub weight_hr: Option<usize>,
}

impl LayerOffsets {
    /// The offsets of `bias_ih` and `bias_hh`, or an error for a model without biases (for code
    /// that needs them).
    pub fn biases(&self) -> Result<(usize, usize)> {
        match (self.bias_ih, self.bias_hh) {
            (Some(ih), Some(hh)) => Ok((ih, hh)),
            _ => Err(Error::Config(
                "this model has no biases (bias=False)".to_string(),
            )),
        }
    }
}

/// The layout of all parameters of a model in one flat buffer, in a fixed order:
/// `embed.weight` [I, E] when the model has an embedding; for each layer k and each direction
/// (PyTorch's order): `weight_ih_l{k}, weight_hh_l{k}, bias_ih_l{k}, bias_hh_l{k}` (the biases
/// only with `bias`), `weight_hr_l{k}` (only with a projection), each with the suffix
/// `_reverse` in the second direction; then `out.weight` [V, D*W] (absent with tied weights,
/// where the output layer uses `embed.weight`), `out.bias` `[V]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamLayout {
    specs: Vec<ParamSpec>,
    directions: usize,
    embed: Option<usize>,
    layers: Vec<LayerOffsets>,
    out_weight: usize,
    out_bias: usize,
    total: usize,
}

impl ParamLayout {
    /// The layout of `config`'s parameters.
    pub fn new(config: &ModelConfig) -> Result<Self> {
        config.validate()?;
        let gh = config.cell.gates() * config.hidden_size;
        let (h, w) = (config.hidden_size, config.state_width());
        let mut specs = Vec::new();
        let mut total = 0usize;
        let mut push = |name: String, shape: Vec<usize>| -> usize {
            let offset = total;
            total += shape.iter().product::<usize>();
            specs.push(ParamSpec {
                name,
                shape,
                offset,
            });
            offset
        };
        let embed = config
            .embed
            .map(|e| push("embed.weight".into(), vec![config.input_size, e]));
        let mut layers = Vec::with_capacity(config.layers * config.directions());
        for k in 0..config.layers {
            let input = config.layer_input_size(k);
            for d in 0..config.directions() {
                let sfx = if d == 1 { "_reverse" } else { "" };
                let weight_ih = push(format!("rnn.weight_ih_l{k}{sfx}"), vec![gh, input]);
                let weight_hh = push(format!("rnn.weight_hh_l{k}{sfx}"), vec![gh, w]);
                let (bias_ih, bias_hh) = if config.bias {
                    (
                        Some(push(format!("rnn.bias_ih_l{k}{sfx}"), vec![gh])),
                        Some(push(format!("rnn.bias_hh_l{k}{sfx}"), vec![gh])),
                    )
                } else {
                    (None, None)
                };
                let weight_hr = config
                    .proj_size
                    .map(|p| push(format!("rnn.weight_hr_l{k}{sfx}"), vec![p, h]));
                layers.push(LayerOffsets {
                    weight_ih,
                    weight_hh,
                    bias_ih,
                    bias_hh,
                    weight_hr,
                });
            }
        }
        let out_weight = match embed {
            Some(e) if config.tie_weights => e,
            _ => push(
                "out.weight".into(),
                vec![config.output_size, config.output_width()],
            ),
        };
        let out_bias = push("out.bias".into(), vec![config.output_size]);
        if total > u32::MAX as usize {
            return Err(Error::Config(format!(
                "{total} parameters do not fit in a 32-bit index"
            )));
        }
        Ok(ParamLayout {
            specs,
            directions: config.directions(),
            embed,
            layers,
            out_weight,
            out_bias,
            total,
        })
    }

    /// Total number of f32 elements in the flat buffer.
    pub fn len(&self) -> usize {
        self.total
    }

    /// Whether the layout is empty (never, for a valid config).
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// All tensors, in buffer order.
    pub fn specs(&self) -> &[ParamSpec] {
        &self.specs
    }

    /// The tensor called `name`, if any.
    pub fn get(&self, name: &str) -> Option<&ParamSpec> {
        self.specs.iter().find(|s| s.name == name)
    }

    /// The element at `index` of the flat buffer as PyTorch names it, e.g.
    /// `rnn.weight_hh_l0[3, 7]`.
    pub fn name_of(&self, index: usize) -> String {
        let Some(spec) = self.specs.iter().find(|s| s.range().contains(&index)) else {
            return format!("element {index} (past the {} parameters)", self.total);
        };
        let mut rest = index - spec.offset;
        let mut at = vec![0; spec.shape.len()];
        for (i, &n) in spec.shape.iter().enumerate().rev() {
            at[i] = rest % n;
            rest /= n;
        }
        let at: Vec<String> = at.iter().map(usize::to_string).collect();
        format!("{}[{}]", spec.name, at.join(", "))
    }

    /// The first value of `params` (a flat buffer of this layout) that is not finite, named:
    /// `Some("parameter rnn.weight_hh_l0[3, 7] is not finite (inf)")`.
    pub fn first_non_finite(&self, params: &[f32]) -> Option<String> {
        let i = params.iter().position(|v| !v.is_finite())?;
        Some(format!(
            "parameter {} is not finite ({})",
            self.name_of(i),
            params[i]
        ))
    }

    /// Offsets of layer `k`'s tensors (its forward direction).
    pub fn layer(&self, k: usize) -> LayerOffsets {
        self.direction(k, 0)
    }

    /// Offsets of the tensors of layer `k` in direction `d` (0 forward, 1 reverse).
    pub fn direction(&self, k: usize, d: usize) -> LayerOffsets {
        self.layers[k * self.directions + d]
    }

    /// Offset of `embed.weight` [I, E], when the model has an embedding.
    pub fn embed(&self) -> Option<usize> {
        self.embed
    }

    /// Offset of `out.weight` [V, D*W] (that of `embed.weight` with tied weights).
    pub fn out_weight(&self) -> usize {
        self.out_weight
    }

    /// Offset of `out.bias` `[V]`.
    pub fn out_bias(&self) -> usize {
        self.out_bias
    }
}
