//! Learning-rate schedules: constant, step decay, cosine, and decay on validation plateau.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How the learning rate changes over training.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum LrSchedule {
    /// `lr` throughout.
    Constant,
    /// `lr * factor^floor(step / every)`.
    Step { every: u64, factor: f32 },
    /// `min + (lr - min) * (1 + cos(pi * step / total)) / 2`, reaching `min` at `total` steps.
    Cosine { total: u64, min: f32 },
    /// Multiply by `factor` when the validation loss has not improved for `patience`
    /// evaluations in a row, never going below `min`.
    Plateau {
        factor: f32,
        patience: u32,
        min: f32,
    },
}

impl LrSchedule {
    /// Checks the parameters.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        match *self {
            LrSchedule::Constant => Ok(()),
            LrSchedule::Step { every, factor } => {
                if every == 0 {
                    return bad("--lr-decay-every must be at least 1 for the step schedule".into());
                }
                check_factor(factor)
            }
            LrSchedule::Cosine { total, min } => {
                if total == 0 {
                    return bad("the cosine schedule needs at least one step".into());
                }
                check_min(min)
            }
            LrSchedule::Plateau {
                factor,
                patience,
                min,
            } => {
                if patience == 0 {
                    return bad("--patience must be at least 1".into());
                }
                check_factor(factor)?;
                check_min(min)
            }
        }
    }
}

fn check_factor(f: f32) -> Result<()> {
    if f > 0.0 && f <= 1.0 {
        Ok(())
    } else {
        Err(Error::Config(format!("--lr-decay {f} must be in (0, 1]")))
    }
}

fn check_min(m: f32) -> Result<()> {
    if m.is_finite() && m >= 0.0 {
        Ok(())
    } else {
        Err(Error::Config(format!("--lr-min {m} must be >= 0")))
    }
}

/// The schedule's state: what a plateau schedule has seen. Saved with the training state.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleState {
    /// Current multiplier of the base rate (plateau).
    pub scale: f32,
    /// Best validation loss so far.
    pub best: Option<f64>,
    /// Evaluations since the best one.
    pub bad_evals: u32,
}

impl Default for ScheduleState {
    fn default() -> Self {
        ScheduleState {
            scale: 1.0,
            best: None,
            bad_evals: 0,
        }
    }
}

impl ScheduleState {
    /// Learning rate for step `step` (0-based: the step about to be taken).
    pub fn lr(&self, schedule: &LrSchedule, base: f32, step: u64) -> f32 {
        match *schedule {
            LrSchedule::Constant => base,
            LrSchedule::Step { every, factor } => base * factor.powi((step / every) as i32),
            LrSchedule::Cosine { total, min } => {
                let x = (step.min(total) as f64 / total as f64) * std::f64::consts::PI;
                (min as f64 + (base - min) as f64 * 0.5 * (1.0 + x.cos())) as f32
            }
            LrSchedule::Plateau { min, .. } => (base * self.scale).max(min.min(base)),
        }
    }

    /// Records a validation loss; a plateau schedule may lower its scale.
    pub fn observe(&mut self, schedule: &LrSchedule, val_loss: f64) {
        if self.best.is_none_or(|b| val_loss < b) {
            self.best = Some(val_loss);
            self.bad_evals = 0;
            return;
        }
        self.bad_evals += 1;
        if let LrSchedule::Plateau {
            factor, patience, ..
        } = *schedule
            && self.bad_evals >= patience
        {
            self.scale *= factor;
            self.bad_evals = 0;
        }
    }
}
