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
