//! CPU twin of `shaders/optim.wgsl`: one loop over the flat buffer, PyTorch's update rules.

use crate::engine::cpu::Float;
use crate::engine::cpu::reduce::FLAT_BLOCK;
use crate::engine::cpu::simd::simd_dispatch;
use crate::train::optim::{OptimizerConfig, OptimizerKind};

/// Applies one update to every element: `g' = scale * g + wd * p`, then the rule of `cfg.kind`
/// (see [`OptimizerKind`]). `step` is the 1-based update count (for Adam's bias correction);
/// `m`, `v` are the moment buffers (as long as `p`), updated in place. Each element's update
/// is on its own, so blocks of them run on rayon's threads.
#[allow(clippy::too_many_arguments)]
pub fn optimizer_update<F: Float>(
    cfg: &OptimizerConfig,
    lr: f64,
    step: u64,
    scale: f64,
    p: &mut [F],
    g: &[F],
    m: &mut [F],
    v: &mut [F],
) {
    use rayon::prelude::*;
    let block = FLAT_BLOCK;
    p.par_chunks_mut(block)
        .zip(g.par_chunks(block))
        .zip(m.par_chunks_mut(block).zip(v.par_chunks_mut(block)))
        .for_each(|((p, g), (m, v))| update_block(cfg, lr, step, scale, p, g, m, v));
}

simd_dispatch! {
/// [`optimizer_update`] of one block, on the calling thread.
#[allow(clippy::too_many_arguments)]
fn update_block<F: Float>(
    cfg: &OptimizerConfig,
    lr: f64,
    step: u64,
    scale: f64,
    p: &mut [F],
    g: &[F],
    m: &mut [F],
    v: &mut [F],
) {
    let f = |x: f64| F::from_f64(x).unwrap_or_else(F::zero);
    let (lr_, scale_, wd) = (f(lr), f(scale), f(cfg.weight_decay as f64));
    let (mu, b1, b2, alpha, eps) = (
        f(cfg.momentum as f64),
        f(cfg.beta1 as f64),
        f(cfg.beta2 as f64),
        f(cfg.alpha as f64),
        f(cfg.eps as f64),
    );
    let one = F::one();
    let grad = |i: usize, p: &[F]| g[i] * scale_ + wd * p[i];
    match cfg.kind {
        OptimizerKind::Sgd => {
            for i in 0..p.len() {
                let gi = grad(i, p);
                p[i] -= lr_ * gi;
            }
        }
        OptimizerKind::Momentum => {
            for i in 0..p.len() {
                let gi = grad(i, p);
                m[i] = mu * m[i] + gi;
                p[i] -= lr_ * m[i];
            }
        }
        OptimizerKind::Adam => {
            let t = step as i32;
            let bc1 = 1.0 - (cfg.beta1 as f64).powi(t);
            let bc2 = (1.0 - (cfg.beta2 as f64).powi(t)).sqrt();
            let (step_size, bc2) = (f(lr / bc1), f(bc2));
            for i in 0..p.len() {
                let gi = grad(i, p);
                m[i] = b1 * m[i] + (one - b1) * gi;
                v[i] = b2 * v[i] + (one - b2) * gi * gi;
                p[i] -= step_size * m[i] / (v[i].sqrt() / bc2 + eps);
            }
        }
        OptimizerKind::Rmsprop => {
            for i in 0..p.len() {
                let gi = grad(i, p);
                v[i] = alpha * v[i] + (one - alpha) * gi * gi;
                p[i] -= lr_ * gi / (v[i].sqrt() + eps);
            }
        }
        OptimizerKind::Adagrad => {
            for i in 0..p.len() {
                let gi = grad(i, p);
                v[i] += gi * gi;
                p[i] -= lr_ * gi / (v[i].sqrt() + eps);
            }
        }
    }
}
}
