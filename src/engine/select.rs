//! Engine selection for `--device auto|gpu|cpu`.

use crate::engine::Engine;
use crate::engine::cpu::CpuEngine;
use crate::engine::gpu::GpuEngine;
use crate::engine::gpu::context::GpuContext;
use crate::error::Result;
use crate::model::ModelConfig;

/// Which engine a command runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    /// A hardware GPU when there is one and it starts, else the CPU engine.
    Auto,
    /// The GPU engine on the best adapter wgpu finds (software adapters included).
    Gpu,
    /// The CPU reference engine.
    Cpu,
}

fn cpu(config: &ModelConfig, params: &[f32], why: &str) -> Result<(Box<dyn Engine>, String)> {
    let e = CpuEngine::<f32>::new(config, params)?;
    let note = format!("device: {}{why}", e.describe());
    Ok((Box::new(e), note))
}

/// An engine for `config` with `params` on the chosen device, and a line saying which it took.
pub fn create_engine(
    choice: DeviceChoice,
    config: &ModelConfig,
    params: &[f32],
) -> Result<(Box<dyn Engine>, String)> {
    match choice {
        DeviceChoice::Cpu => cpu(config, params, ""),
        DeviceChoice::Gpu => {
            let e = GpuEngine::new(GpuContext::open(true)?, config, params)?;
            let note = format!("device: {}", e.describe());
            Ok((Box::new(e), note))
        }
        DeviceChoice::Auto => match GpuContext::open_hardware() {
            None => cpu(config, params, " (no hardware GPU found)"),
            Some(ctx) => match GpuEngine::new(ctx, config, params) {
                Ok(e) => {
                    let note = format!("device: {}", e.describe());
                    Ok((Box::new(e), note))
                }
                Err(err) => cpu(
                    config,
                    params,
                    &format!(" (the GPU could not start: {err})"),
                ),
            },
        },
    }
}
