//! Seeded initialisation, as PyTorch does it: every parameter of the recurrent layers uniform in
//! `±1/sqrt(H)` (`torch.nn.RNN`), the output layer uniform in `±1/sqrt(H)` (`torch.nn.Linear(H, V)`,
//! whose bound is `1/sqrt(fan_in)` for weight and bias alike).

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::model::config::ModelConfig;
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
