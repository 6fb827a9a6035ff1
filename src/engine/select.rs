//! Engine selection for `--device auto|gpu|cpu`.

use crate::engine::Engine;
use crate::engine::cpu::CpuEngine;
use crate::error::{Error, Result};
use crate::model::ModelConfig;

/// Which engine a command runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    /// A hardware GPU when there is one, else the CPU engine.
    Auto,
    /// The GPU engine on the best adapter wgpu finds (software adapters included).
    Gpu,
    /// The CPU reference engine.
    Cpu,
}

/// An engine for `config` with `params` on the chosen device, and a line saying which it took.
pub fn create_engine(
    choice: DeviceChoice,
    config: &ModelConfig,
    params: &[f32],
) -> Result<(Box<dyn Engine>, String)> {
    match choice {
        DeviceChoice::Cpu | DeviceChoice::Auto => {
            let e = CpuEngine::<f32>::new(config, params)?;
            let note = match choice {
                DeviceChoice::Auto => {
                    format!("device: {} (no GPU engine in this build)", e.describe())
                }
                _ => format!("device: {}", e.describe()),
            };
            Ok((Box::new(e), note))
        }
        DeviceChoice::Gpu => Err(Error::Gpu(
            "the GPU engine is not part of this build".into(),
        )),
    }
}
