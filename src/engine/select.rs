//! Engine selection for `--device auto|gpu|cpu`.

use crate::engine::cpu::CpuEngine;
use crate::engine::gpu::GpuEngine;
use crate::engine::gpu::context::GpuContext;
use crate::engine::{DEFAULT_LOGIT_BUDGET, Engine};
use crate::error::{Error, Result};
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

/// The environment variable that sets the logit budget ([`Engine::set_logit_budget`]) of the
/// engines [`create_engine`] makes: the most logits the output layer holds at once. Lowering it
/// trades memory for one more output GEMM per chunk; the tests use it to run small output
/// layers in chunks.
pub const LOGIT_BUDGET_VAR: &str = "UNROLL_LOGIT_BUDGET";

/// The logit budget of the engines [`create_engine`] makes: [`LOGIT_BUDGET_VAR`] when it is
/// set and not empty, else [`DEFAULT_LOGIT_BUDGET`].
pub fn logit_budget() -> Result<usize> {
    match std::env::var(LOGIT_BUDGET_VAR) {
        Err(std::env::VarError::NotPresent) => Ok(DEFAULT_LOGIT_BUDGET),
        Ok(v) if v.is_empty() => Ok(DEFAULT_LOGIT_BUDGET),
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(Error::Config(format!(
                "{LOGIT_BUDGET_VAR}={v:?} is not a number of logits >= 1; set a positive number \
                 or unset it"
            ))),
        },
        Err(_) => Err(Error::Config(format!(
            "{LOGIT_BUDGET_VAR} is not UTF-8; set a positive number or unset it"
        ))),
    }
}

/// Whether an engine of `choice` keeps its buffers (activations, logits, moments) in the host's
/// memory: the CPU engine, a software GPU adapter and an integrated GPU do; a discrete GPU does
/// not. Found without opening a device; `--device auto` without a hardware GPU runs on the CPU.
pub fn engine_uses_host_memory(choice: DeviceChoice) -> bool {
    use crate::engine::gpu::context::best_adapter_has_own_memory;
    match choice {
        DeviceChoice::Cpu => true,
        DeviceChoice::Gpu => best_adapter_has_own_memory(true) != Some(true),
        DeviceChoice::Auto => best_adapter_has_own_memory(false) != Some(true),
    }
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
    create_engine_nth(choice, config, params, 0)
}

/// [`create_engine`] on GPU `nth` (modulo their number) of the machine's best kind: the GPU of
/// the `nth` process of a data-parallel run on this machine (see [`GpuContext::open_nth`]).
pub fn create_engine_nth(
    choice: DeviceChoice,
    config: &ModelConfig,
    params: &[f32],
    nth: usize,
) -> Result<(Box<dyn Engine>, String)> {
    let budget = logit_budget()?;
    let (mut engine, note) = create_engine_on(choice, config, params, nth)?;
    engine.set_logit_budget(budget)?;
    Ok((engine, note))
}

fn create_engine_on(
    choice: DeviceChoice,
    config: &ModelConfig,
    params: &[f32],
    nth: usize,
) -> Result<(Box<dyn Engine>, String)> {
    match choice {
        DeviceChoice::Cpu => cpu(config, params, ""),
        DeviceChoice::Gpu => {
            let e = GpuEngine::new(GpuContext::open_nth(true, nth)?, config, params)?;
            let note = format!("device: {}", e.describe());
            Ok((Box::new(e), note))
        }
        DeviceChoice::Auto => match GpuContext::open_nth(false, nth).ok() {
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
