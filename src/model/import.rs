//! Models from PyTorch: a `model.state_dict()` saved with `safetensors.torch.save_file`, whose
//! modules are called `rnn` (`nn.RNN`, `nn.GRU` or `nn.LSTM`), `out` (`nn.Linear`) and, for
//! token inputs read through an embedding, `embed` (`nn.Embedding`).
//!
//! The tensors tell the cell, the layers, the sizes, the directions, the projection, the biases,
//! the embedding and whether the output layer is tied to it ([`Inferred::of`]); what they cannot
//! tell (how the inputs and outputs are read, and the plain cell's nonlinearity) comes from the
//! caller ([`Ends`]). [`StateDict::params`] then fills unroll's flat buffer by PyTorch's names,
//! so every tensor is checked against the layout of the configuration it implies. A file that
//! does not fit one of unroll's models is refused with the tensor named (`Error::Config`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::model::config::{Activation, Cell, InputKind, ModelConfig, OutputKind};
use crate::model::file::{SafetensorsKind, read_safetensors};
use crate::model::layout::ParamLayout;

/// One tensor of a state dict, in f32.
#[derive(Clone, Debug, PartialEq)]
pub struct DictTensor {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// The tensors of a state dict, by name, in f32; `converted` names the tensors stored in
/// another float type (f64, f16, bf16) with that type.
#[derive(Clone, Debug, PartialEq)]
pub struct StateDict {
    pub path: PathBuf,
    pub tensors: BTreeMap<String, DictTensor>,
    pub converted: Vec<(String, String)>,
}

/// The recurrent tensors of one layer and direction, as PyTorch names them.
const RNN_KINDS: [&str; 5] = ["weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr"];

/// The names a state dict may hold, for messages.
const EXPECTED: &str = "rnn.weight_ih_l{k}, rnn.weight_hh_l{k}, rnn.bias_ih_l{k}, \
                        rnn.bias_hh_l{k}, rnn.weight_hr_l{k} (each also with _reverse), \
                        out.weight, out.bias and embed.weight";

impl StateDict {
    /// Reads the safetensors file at `path` (with the bounds of `model::file`).
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = read_safetensors(path, SafetensorsKind::StateDict)?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses the bytes of a safetensors file; `path` names it in messages.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let file = SafeTensors::deserialize(bytes)
            .map_err(|e| Error::checkpoint(path, format!("not a valid safetensors file ({e})")))?;
        let mut dict = StateDict {
            path: path.to_path_buf(),
            tensors: BTreeMap::new(),
            converted: Vec::new(),
        };
        for (name, view) in file.tensors() {
            let values = dict.read_values(&name, view.dtype(), view.data())?;
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                return Err(dict.refuse(format!(
                    "tensor {name} holds a value that is not finite in f32 ({} at flat index \
                     {i}); unroll imports finite parameters only",
                    values[i]
                )));
            }
            let shape = view.shape().to_vec();
            dict.tensors.insert(name, DictTensor { shape, values });
        }
        Ok(dict)
    }

    /// An error about this file.
    fn refuse(&self, message: String) -> Error {
        Error::Config(format!("state dict {}: {message}", self.path.display()))
    }

    /// The values of tensor `name` of type `dtype` as f32, recording a conversion.
    fn read_values(&mut self, name: &str, dtype: Dtype, data: &[u8]) -> Result<Vec<f32>> {
        let values: Vec<f32> = match dtype {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F64 => data
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32)
                .collect(),
            Dtype::F16 => halves(data).map(f16_to_f32).collect(),
            Dtype::BF16 => halves(data)
                .map(|h| f32::from_bits(u32::from(h) << 16))
                .collect(),
            other => {
                return Err(self.refuse(format!(
                    "tensor {name} has dtype {other:?}: parameters must be F32, F64, F16 or BF16"
                )));
            }
        };
        if dtype != Dtype::F32 {
            self.converted
                .push((name.to_string(), format!("{dtype:?}").to_lowercase()));
        }
        Ok(values)
    }

    /// The tensor called `name`, or an error saying it is missing.
    fn need(&self, name: &str) -> Result<&DictTensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| self.refuse(format!("tensor {name} is missing")))
    }

    /// The two sizes of the matrix `name`, or an error naming its shape.
    fn matrix(&self, name: &str) -> Result<(usize, usize)> {
        match self.need(name)?.shape.as_slice() {
            &[rows, cols] => Ok((rows, cols)),
            shape => Err(self.refuse(format!("tensor {name} has shape {shape:?}, not a matrix"))),
        }
    }

    /// The flat parameter buffer of `config` (see [`ParamLayout`]) filled from the tensors,
    /// each checked to have the shape the layout gives it; every tensor of the file must be
    /// used (`out.weight` of a tied model only when it equals `embed.weight`).
    pub fn params(&self, config: &ModelConfig) -> Result<Vec<f32>> {
        let layout = ParamLayout::new(config).map_err(|e| self.refuse(e.to_string()))?;
        let mut params = vec![0.0f32; layout.len()];
        for spec in layout.specs() {
            let t = self.need(&spec.name)?;
            if t.shape != spec.shape {
                return Err(self.refuse(format!(
                    "tensor {} has shape {:?}, but the model the other tensors describe needs \
                     {:?}",
                    spec.name, t.shape, spec.shape
                )));
            }
            params[spec.range()].copy_from_slice(&t.values);
        }
        let used =
            |name: &str| layout.get(name).is_some() || (config.tie_weights && name == "out.weight");
        if let Some(name) = self.tensors.keys().find(|n| !used(n)) {
            return Err(self.refuse(format!(
                "tensor {name} does not belong to the model the other tensors describe"
            )));
        }
        Ok(params)
    }
}

/// The 16-bit words of `data` (little-endian).
fn halves(data: &[u8]) -> impl Iterator<Item = u16> + '_ {
    data.chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
}

/// An IEEE half-precision value as f32 (exact: every f16 is an f32).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let frac = u32::from(h & 0x3ff);
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: frac * 2^-24.
            let v = frac as f32 * f32::from_bits(0x3380_0000);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, _) => sign | 0x7fc0_0000 | (frac << 13),
        _ => sign | ((exp + 112) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

/// One parsed tensor name: `rnn.{kind}_l{layer}[_reverse]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RnnName<'a> {
    kind: &'a str,
    layer: usize,
    reverse: bool,
}

/// The recurrent tensor `name` parsed, `None` for `out.*` and `embed.weight`, or an error for a
/// name no unroll model has.
fn parse_name<'a>(dict: &StateDict, name: &'a str) -> Result<Option<RnnName<'a>>> {
    if ["out.weight", "out.bias", "embed.weight"].contains(&name) {
        return Ok(None);
    }
    let unknown = || {
        dict.refuse(format!(
            "tensor {name} is not a parameter of an unroll model (expected {EXPECTED}: name \
             the modules rnn, out and embed)"
        ))
    };
    let rest = name.strip_prefix("rnn.").ok_or_else(unknown)?;
    let (rest, reverse) = match rest.strip_suffix("_reverse") {
        Some(r) => (r, true),
        None => (rest, false),
    };
    let (kind, layer) = rest.rsplit_once("_l").ok_or_else(unknown)?;
    let layer: usize = match layer.parse() {
        Ok(k) if layer.bytes().all(|b| b.is_ascii_digit()) => k,
        _ => return Err(unknown()),
    };
    if !RNN_KINDS.contains(&kind) {
        return Err(unknown());
    }
    Ok(Some(RnnName {
        kind,
        layer,
        reverse,
    }))
}

/// What the tensors of a state dict say about the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inferred {
    pub cell: Cell,
    pub layers: usize,
    pub hidden: usize,
    /// The width of layer 0's input: E with an embedding, else the input size I.
    pub input_width: usize,
    /// `(I, E)` of `embed.weight`.
    pub embed: Option<(usize, usize)>,
    /// `out.weight` is absent, or equal to `embed.weight`.
    pub tied: bool,
    pub bidirectional: bool,
    pub proj_size: Option<usize>,
    pub bias: bool,
    /// V, from `out.bias`.
    pub output_size: usize,
}

impl Inferred {
    /// Reads the model's structure from the names and shapes of `dict`'s tensors (their
    /// consistency is checked when [`StateDict::params`] lays them out).
    pub fn of(dict: &StateDict) -> Result<Self> {
        let mut layers = 0;
        let (mut bidirectional, mut bias, mut projection) = (false, false, false);
        for name in dict.tensors.keys() {
            if let Some(n) = parse_name(dict, name)? {
                layers = layers.max(n.layer + 1);
                bidirectional |= n.reverse;
                bias |= n.kind.starts_with("bias");
                projection |= n.kind == "weight_hr";
            }
        }
        if layers == 0 {
            return Err(dict.refuse(format!(
                "it has no recurrent layer (no rnn.weight_ih_l0; expected {EXPECTED})"
            )));
        }
        let (cell, hidden, proj_size) = cell_and_sizes(dict, projection)?;
        let input_width = dict.matrix("rnn.weight_ih_l0")?.1;
        let embed = match dict.tensors.contains_key("embed.weight") {
            true => Some(dict.matrix("embed.weight")?),
            false => None,
        };
        if let Some((_, e)) = embed.filter(|&(_, e)| e != input_width) {
            return Err(dict.refuse(format!(
                "embed.weight is {e} wide but rnn.weight_ih_l0 reads {input_width} inputs"
            )));
        }
        let out_bias = dict.tensors.get("out.bias").ok_or_else(|| {
            dict.refuse(
                "tensor out.bias is missing: unroll's output layer is an nn.Linear with a bias"
                    .into(),
            )
        })?;
        let output_size = match out_bias.shape.as_slice() {
            &[v] => v,
            shape => return Err(dict.refuse(format!("tensor out.bias has shape {shape:?}"))),
        };
        Ok(Inferred {
            cell,
            layers,
            hidden,
            input_width,
            embed,
            tied: embed.is_some() && tied(dict),
            bidirectional,
            proj_size,
            bias,
            output_size,
        })
    }
}

/// The cell, H and P: with a projection, `weight_hr_l0` is [P, H]; without, `weight_hh_l0` is
/// [G*H, H]; G (1, 3 or 4) names the cell.
fn cell_and_sizes(dict: &StateDict, projection: bool) -> Result<(Cell, usize, Option<usize>)> {
    let (rows, cols) = dict.matrix("rnn.weight_hh_l0")?;
    let (hidden, proj) = if projection {
        let (p, h) = dict.matrix("rnn.weight_hr_l0")?;
        (h, Some(p))
    } else {
        (cols, None)
    };
    let gates = (hidden > 0 && rows % hidden == 0).then(|| rows / hidden);
    let cell = match gates {
        Some(1) => Cell::Rnn,
        Some(3) => Cell::Gru,
        Some(4) => Cell::Lstm,
        _ => {
            return Err(dict.refuse(format!(
                "tensor rnn.weight_hh_l0 has shape [{rows}, {cols}]: its rows are not 1, 3 or 4 \
                 times the hidden size {hidden}, so it is no RNN, GRU or LSTM"
            )));
        }
    };
    if proj.is_some() && cell != Cell::Lstm {
        return Err(dict.refuse(format!(
            "tensor rnn.weight_hr_l0 is a projection, which only an LSTM has (rnn.weight_hh_l0 \
             is [{rows}, {cols}], a {cell:?})"
        )));
    }
    Ok((cell, hidden, proj))
}

/// Whether the output layer is tied to the embedding: `out.weight` absent, or equal to
/// `embed.weight` in shape and value.
fn tied(dict: &StateDict) -> bool {
    match (
        dict.tensors.get("out.weight"),
        dict.tensors.get("embed.weight"),
    ) {
        (None, _) => true,
        (Some(out), Some(embed)) => out == embed,
        (Some(_), None) => false,
    }
}

/// What the tensors cannot tell: how the inputs and outputs are read, and the plain cell's
/// nonlinearity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ends {
    pub input: InputKind,
    pub output: OutputKind,
    pub activation: Activation,
}

impl Inferred {
    /// The model configuration of these tensors read as `ends` say.
    pub fn config(&self, ends: Ends, dict: &StateDict) -> Result<ModelConfig> {
        if self.embed.is_some() && ends.input != InputKind::OneHot {
            return Err(dict.refuse(
                "embed.weight embeds token ids: the input must be class ids (tokens), not real \
                 vectors"
                    .into(),
            ));
        }
        if self.cell != Cell::Rnn && ends.activation != Activation::Tanh {
            return Err(dict.refuse(format!(
                "the nonlinearity applies to the plain RNN cell only; this is a {:?}",
                self.cell
            )));
        }
        // An out.weight that merely equals embed.weight ties a softmax output only.
        let has_out = dict.tensors.contains_key("out.weight");
        let tie_weights = self.tied && (!has_out || ends.output == OutputKind::Softmax);
        let config = ModelConfig {
            cell: self.cell,
            activation: ends.activation,
            input_kind: ends.input,
            input_size: self.embed.map_or(self.input_width, |(i, _)| i),
            hidden_size: self.hidden,
            layers: self.layers,
            output_kind: ends.output,
            output_size: self.output_size,
            embed: self.embed.map(|(_, e)| e),
            tie_weights,
            bidirectional: self.bidirectional,
            proj_size: self.proj_size,
            bias: self.bias,
        };
        config.validate().map_err(|e| {
            let why = e.to_string();
            match tie_weights && !has_out {
                true => dict.refuse(format!(
                    "tensor out.weight is missing, and the output layer cannot be tied to \
                     embed.weight: {why}"
                )),
                false => dict.refuse(why),
            }
        })?;
        Ok(config)
    }
}
