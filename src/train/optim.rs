//! Optimizer settings and state. The update rules themselves live in the engines
//! (`engine/cpu/optim.rs`, `shaders/optim.wgsl`): one loop over the flat buffer that knows nothing
//! of the layout. The rules are PyTorch's (`torch.optim.SGD`, `SGD(momentum)`, `Adam`, `RMSprop`,
//! `Adagrad`), with gradients first scaled by the clip factor and L2 weight decay added after.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which update rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// `p -= lr * g`
    Sgd,
    /// `m = mu * m + g; p -= lr * m`
    Momentum,
    /// `m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
    ///  p -= lr / (1-b1^t) * m / (sqrt(v) / sqrt(1-b2^t) + eps)`
    Adam,
    /// `v = a v + (1-a) g^2; p -= lr * g / (sqrt(v) + eps)`
    Rmsprop,
    /// `v += g^2; p -= lr * g / (sqrt(v) + eps)`
    Adagrad,
}

impl OptimizerKind {
    /// Index used by the GPU kernel's `kind` uniform.
    pub fn index(self) -> u32 {
        match self {
            OptimizerKind::Sgd => 0,
            OptimizerKind::Momentum => 1,
            OptimizerKind::Adam => 2,
            OptimizerKind::Rmsprop => 3,
            OptimizerKind::Adagrad => 4,
        }
    }
}

/// The hyper-parameters of an update (the learning rate is passed per step, for schedules).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimizerConfig {
    pub kind: OptimizerKind,
    /// Momentum factor mu (momentum).
    pub momentum: f32,
    /// Adam's beta1.
    pub beta1: f32,
    /// Adam's beta2.
    pub beta2: f32,
    /// RMSprop's smoothing constant alpha.
    pub alpha: f32,
    /// Denominator term (Adam, RMSprop, Adagrad).
    pub eps: f32,
    /// L2 weight decay added to the (clipped) gradient: `g += wd * p`.
    pub weight_decay: f32,
    /// Clip by global norm: 0 disables clipping.
    pub clip: f32,
}

impl OptimizerConfig {
    /// PyTorch's defaults for `kind` (momentum 0.9, betas (0.9, 0.999), alpha 0.99,
    /// eps 1e-8, 1e-10 for Adagrad), no weight decay, no clipping.
    pub fn new(kind: OptimizerKind) -> Self {
        OptimizerConfig {
            kind,
            momentum: 0.9,
            beta1: 0.9,
            beta2: 0.999,
            alpha: 0.99,
            eps: if kind == OptimizerKind::Adagrad {
                1e-10
            } else {
                1e-8
            },
            weight_decay: 0.0,
            clip: 0.0,
        }
    }

    /// Sets the clip norm.
    pub fn with_clip(mut self, clip: f32) -> Self {
        self.clip = clip;
        self
    }

    /// Checks the ranges of every hyper-parameter.
    pub fn validate(&self) -> Result<()> {
        let unit = |name: &str, v: f32| {
            if (0.0..1.0).contains(&v) {
                Ok(())
            } else {
                Err(Error::Config(format!("{name} = {v} must be in [0, 1)")))
            }
        };
        unit("momentum", self.momentum)?;
        unit("beta1", self.beta1)?;
        unit("beta2", self.beta2)?;
        unit("alpha", self.alpha)?;
        for (name, v) in [
            ("eps", self.eps),
            ("weight decay", self.weight_decay),
            ("clip", self.clip),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::Config(format!("{name} = {v} must be >= 0")));
            }
        }
        Ok(())
    }
}

/// Optimizer state over the flat buffer: the number of updates taken and two moment buffers
/// (`m`: momentum or Adam's first moment; `v`: second moments or Adagrad's sum), each in
/// `ParamLayout` order.
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerState {
    pub step: u64,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

impl OptimizerState {
    /// Fresh state for `n` parameters.
    pub fn zeros(n: usize) -> Self {
        OptimizerState {
            step: 0,
            m: vec![0.0; n],
            v: vec![0.0; n],
        }
    }
}

/// Clip factor for gradient norm `norm`: `min(1, clip / (norm + 1e-6))`, or 1 without clipping
/// (PyTorch's `clip_grad_norm_`).
pub fn clip_scale(norm: f64, clip: f32) -> f64 {
    if clip > 0.0 {
        (clip as f64 / (norm + 1e-6)).min(1.0)
    } else {
        1.0
    }
}
