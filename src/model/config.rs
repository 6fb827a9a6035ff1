//! The model configuration: which cell, how many layers, the sizes, and the output kind.
//! Everything else (the parameter layout, the engines, checkpoints) is derived from it.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The state nonlinearity f1 of the recurrent cell `s_t = f1(W_ih x_t + W_hh s_{t-1} + b)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// `tanh`, PyTorch's default `nonlinearity='tanh'`.
    Tanh,
    /// `max(0, z)`, PyTorch's `nonlinearity='relu'`.
    Relu,
}

/// The recurrent cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cell {
    /// The plain (Elman) cell of `torch.nn.RNN`: one gate, G = 1.
    Rnn,
    /// `torch.nn.GRU`: gates r, z, n (G = 3), the reset applied after the recurrent matmul.
    Gru,
    /// `torch.nn.LSTM`: gates i, f, g, o (G = 4); the state is the pair (h, c).
    Lstm,
}

impl Cell {
    /// Number of gate blocks stacked along the first axis of `weight_ih` / `weight_hh` (G).
    pub fn gates(self) -> usize {
        match self {
            Cell::Rnn => 1,
            Cell::Gru => 3,
            Cell::Lstm => 4,
        }
    }

    /// Whether the cell carries a memory c beside h (LSTM).
    pub fn has_memory(self) -> bool {
        self == Cell::Lstm
    }
}

/// How the input x_t is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputKind {
    /// x_t is a token id in `0..input_size`, read as a one-hot vector: `W_ih x_t` is a column gather.
    OneHot,
    /// x_t is a real vector of `input_size` numbers.
    Dense,
}

/// The output nonlinearity f2 and its loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// Softmax over `output_size` classes with cross-entropy against a class id.
    Softmax,
    /// Identity with squared error `1/2 ||p - y||^2` against a real vector.
    Identity,
    /// Element-wise sigmoid with binary cross-entropy against a vector of 0/1 (or soft) targets.
    Sigmoid,
}

/// The whole description of a model's shape; stored in every checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub cell: Cell,
    pub activation: Activation,
    pub input_kind: InputKind,
    /// I: the vocabulary size for one-hot inputs, the vector size for dense inputs.
    pub input_size: usize,
    /// H: the state size of every layer.
    pub hidden_size: usize,
    /// Number of stacked recurrent layers; layer k+1 reads the states of layer k.
    pub layers: usize,
    pub output_kind: OutputKind,
    /// V: number of classes (softmax) or output vector size.
    pub output_size: usize,
    /// E: with one-hot input, a learned embedding `embed.weight` [I, E] turns token x_t into the
    /// dense vector `embed.weight[x_t]` that layer 0 reads (PyTorch's `nn.Embedding`); `None`
    /// reads the one-hot vector itself (`W_ih x_t` is then a column gather).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embed: Option<usize>,
    /// Tied input and output weights: `out.weight` IS `embed.weight` (needs E equal to the top
    /// layer's output width and V = I).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tie_weights: bool,
    /// Each layer runs a forward and a reverse direction over the sequence, with parameters of
    /// its own (`weight_ih_l{k}_reverse`, ...); the layer's output is `[h_fwd; h_rev]`, twice the
    /// state width (PyTorch's `bidirectional=True`). Sequence labelling only: a language model
    /// must be causal.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bidirectional: bool,
    /// P: an LSTM's projection size (PyTorch's `proj_size`): `h_t = W_hr (o * tanh(c_t))` with
    /// `weight_hr_l{k}` [P, H], so h (and what the next layer reads) is P wide while c stays H
    /// wide. `None`: no projection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proj_size: Option<usize>,
    /// Whether the recurrent layers have `bias_ih_l{k}` and `bias_hh_l{k}` (PyTorch's `bias`).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub bias: bool,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

impl ModelConfig {
    /// A character- or byte-level language model: one-hot input over `vocab` tokens, softmax output
    /// over the same tokens.
    pub fn language_model(vocab: usize, hidden: usize, layers: usize) -> Self {
        ModelConfig {
            cell: Cell::Rnn,
            activation: Activation::Tanh,
            input_kind: InputKind::OneHot,
            input_size: vocab,
            hidden_size: hidden,
            layers,
            output_kind: OutputKind::Softmax,
            output_size: vocab,
            embed: None,
            tie_weights: false,
            bidirectional: false,
            proj_size: None,
            bias: true,
        }
    }

    /// Directions per layer: 2 when bidirectional, else 1.
    pub fn directions(&self) -> usize {
        if self.bidirectional { 2 } else { 1 }
    }

    /// The width of a layer's state h in one direction: P with a projection, else H.
    pub fn state_width(&self) -> usize {
        self.proj_size.unwrap_or(self.hidden_size)
    }

    /// The width of a layer's output, which the next layer and the output layer read:
    /// `directions * state_width` (`[h_fwd; h_rev]` when bidirectional).
    pub fn output_width(&self) -> usize {
        self.directions() * self.state_width()
    }

    /// Whether layer 0 reads the one-hot input directly, so that `W_ih x_t` is a column gather
    /// (one-hot input without an embedding).
    pub fn gathers_input(&self) -> bool {
        self.input_kind == InputKind::OneHot && self.embed.is_none()
    }

    /// Checks that every size is usable; says which one is not.
    pub fn validate(&self) -> Result<()> {
        let check = |name: &str, v: usize| {
            if v == 0 {
                Err(Error::Config(format!("{name} must be at least 1")))
            } else if v > (1 << 24) {
                Err(Error::Config(format!("{name} = {v} is larger than 2^24")))
            } else {
                Ok(())
            }
        };
        check("input size", self.input_size)?;
        check("hidden size", self.hidden_size)?;
        check("layers", self.layers)?;
        check("output size", self.output_size)?;
        if let Some(e) = self.embed {
            check("embedding size", e)?;
            if self.input_kind != InputKind::OneHot {
                return Err(Error::Config(
                    "an embedding needs one-hot (token) input".into(),
                ));
            }
        }
        if let Some(p) = self.proj_size {
            check("projection size", p)?;
            if self.cell != Cell::Lstm {
                return Err(Error::Config(
                    "a projection (proj_size) needs an LSTM".into(),
                ));
            }
            if p >= self.hidden_size {
                return Err(Error::Config(format!(
                    "the projection size ({p}) must be smaller than the hidden size ({})",
                    self.hidden_size
                )));
            }
        }
        if self.tie_weights {
            if self.embed != Some(self.output_width()) {
                return Err(Error::Config(format!(
                    "tied weights need an embedding of the top layer's output width ({}), not {}",
                    self.output_width(),
                    self.embed.map_or("none".to_string(), |e| e.to_string())
                )));
            }
            if self.output_kind != OutputKind::Softmax || self.output_size != self.input_size {
                return Err(Error::Config(
                    "tied weights need a softmax output over the input vocabulary".into(),
                ));
            }
        }
        if self.layers > 64 {
            return Err(Error::Config(format!(
                "{} layers is more than the 64 supported",
                self.layers
            )));
        }
        Ok(())
    }

    /// Values of the carried state per sequence (row): `layers * directions * W` of h (W the
    /// state width, P or H), and `layers * directions * H` of c for an LSTM. The state is laid
    /// out as h of every layer and direction (layer-major, then direction, then row-major),
    /// followed by c in the same order.
    pub fn state_size_per_row(&self) -> usize {
        let memory = if self.cell.has_memory() {
            self.hidden_size
        } else {
            0
        };
        self.layers * self.directions() * (self.state_width() + memory)
    }

    /// Input size of layer `k`: for layer 0 the embedding size E, or the input size without an
    /// embedding; the output width of the layer below above it.
    pub fn layer_input_size(&self, k: usize) -> usize {
        if k == 0 {
            self.embed.unwrap_or(self.input_size)
        } else {
            self.output_width()
        }
    }
}
