//! Seeded initialisation, as PyTorch does it: every parameter of the recurrent layers uniform in
//! `±1/sqrt(H)` (`torch.nn.RNN`), the output layer uniform in `±1/sqrt(H)` (`torch.nn.Linear(H, V)`,
//! whose bound is `1/sqrt(fan_in)` for weight and bias alike). GRU and LSTM layers use the same
//! bound for every gate, as `torch.nn.GRU` / `nn.LSTM` do; [`set_forget_bias_one`] is char-rnn's
//! LSTM forget-gate bias of 1.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};
use crate::model::config::{Cell, ModelConfig};
use crate::model::layout::ParamLayout;

/// A fresh parameter buffer for `config`, drawn from a ChaCha8 stream seeded with `seed`
/// (the same seed gives the same parameters on every machine).
pub fn init_params(config: &ModelConfig, layout: &ParamLayout, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let bound = 1.0 / (config.hidden_size as f32).sqrt();
    let mut params = vec![0.0f32; layout.len()];
    for spec in layout.specs() {
        for p in &mut params[spec.range()] {
            *p = rng.random_range(-bound..bound);
        }
    }
    params
}

/// Sets every LSTM layer's forget-gate bias to 1, as char-rnn does: the f block (rows H..2H) of
/// `bias_ih_l{k}` becomes 1 and that of `bias_hh_l{k}` 0, so their sum, the bias the gate sees,
/// is exactly 1. Refuses other cells.
pub fn set_forget_bias_one(
    config: &ModelConfig,
    layout: &ParamLayout,
    params: &mut [f32],
) -> Result<()> {
    if config.cell != Cell::Lstm {
        return Err(Error::Config(
            "the forget-gate bias needs an LSTM".to_string(),
        ));
    }
    let h = config.hidden_size;
    for k in 0..config.layers {
        for d in 0..config.directions() {
            let (ih, hh) = layout.direction(k, d).biases()?;
            params[ih + h..ih + 2 * h].fill(1.0);
            params[hh + h..hh + 2 * h].fill(0.0);
        }
    }
    Ok(())
}

/// PyTorch's word_language_model initialisation of the model's edges: `embed.weight` (when the
/// model has one) and `out.weight` uniform in `±range`, `out.bias` zero; the recurrent layers
/// keep what [`init_params`] drew. The values come from their own ChaCha8 stream of `seed`, so
/// the recurrent layers are those of the same seed without it. Refuses a range that is not a
/// number > 0.
pub fn set_init_range(
    config: &ModelConfig,
    layout: &ParamLayout,
    params: &mut [f32],
    range: f32,
    seed: u64,
) -> Result<()> {
    if !(range.is_finite() && range > 0.0) {
        return Err(Error::Config(format!(
            "--init-range {range} must be a number > 0"
        )));
    }
    // A stream of its own: the seed's stream continues into the recurrent layers' draws.
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_1e55_ed9e_0000);
    let width = config.output_width();
    let out = layout.out_weight()..layout.out_weight() + config.output_size * width;
    // Tied weights are one tensor, drawn once.
    let embed = match (layout.embed(), config.embed) {
        (Some(e), Some(size)) if e != out.start => Some(e..e + config.input_size * size),
        _ => None,
    };
    let edges = embed.into_iter().chain(std::iter::once(out));
    for tensor in edges {
        for p in &mut params[tensor] {
            *p = rng.random_range(-range..range);
        }
    }
    let b = layout.out_bias();
    params[b..b + config.output_size].fill(0.0);
    Ok(())
}
