//! The PyTorch baseline: runs `benches/pytorch_baseline.py` (embedded in the binary, fed to
//! Python on stdin) on the same configuration and protocol as [`super::StepBench`], and reads
//! its JSON. PyTorch is optional: [`probe`] says whether `python3` can import torch, and the
//! caller prints unroll's numbers alone when it cannot.

use std::io::Write;
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use super::{BENCH_CLIP, BENCH_LR, DeviceKind, StepShape, Timing, cell_name};
use crate::error::{Error, Result};

/// The benchmark script, the same file as in the repository.
pub const SCRIPT: &str = include_str!("../../benches/pytorch_baseline.py");

/// What the Python side reports about itself.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct TorchInfo {
    pub torch: String,
    pub cuda: bool,
    /// The CUDA device's name, when there is one.
    pub cuda_device: Option<String>,
}

/// One configuration measured by PyTorch.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct TorchReport {
    pub tokens_per_s: f64,
    pub step_ms: super::Spread,
    pub device: String,
    pub threads: usize,
    pub torch: String,
    /// The per-step samples behind `step_ms`.
    #[serde(default)]
    pub samples_ms: Vec<f64>,
}

impl TorchReport {
    /// Adds the samples of a later round of the same configuration and recomputes the spread.
    pub fn merge(&mut self, later: TorchReport) -> Result<()> {
        let tokens = self.tokens_per_s * self.step_ms.median * 1e-3;
        self.samples_ms.extend(later.samples_ms);
        self.step_ms = super::Spread::of(&self.samples_ms)?;
        self.tokens_per_s = tokens / (self.step_ms.median * 1e-3);
        Ok(())
    }
}

/// Whether `python` imports torch: its version and CUDA device, or why not.
pub fn probe(python: &str) -> std::result::Result<TorchInfo, String> {
    let code = "import json, torch\n\
                cuda = torch.cuda.is_available()\n\
                print(json.dumps({'torch': torch.__version__, 'cuda': cuda, \
                'cuda_device': torch.cuda.get_device_name(0) if cuda else None}))";
    let out = Command::new(python)
        .args(["-c", code])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {python}: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("").trim().to_string();
        return Err(format!("{python} cannot import torch ({last})"));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim())
        .map_err(|e| format!("unexpected answer from {python} ({e}): {text}"))
}

/// Runs the script for `shape` on `device` (the CPU with `threads` threads, or CUDA) with
/// the same warm-up, repeats and block as unroll's measurement.
pub fn run(
    python: &str,
    device: DeviceKind,
    shape: &StepShape,
    timing: Timing,
    threads: usize,
    seed: u64,
) -> Result<TorchReport> {
    let args: Vec<String> = [
        ("--cell", cell_name(shape.cell)),
        ("--vocab-size", shape.vocab.to_string()),
        ("--hidden", shape.hidden.to_string()),
        ("--batch", shape.batch.to_string()),
        ("--seq-len", shape.seq_len.to_string()),
        ("--layers", shape.layers.to_string()),
        ("--warmup", timing.warmup.to_string()),
        ("--repeats", timing.repeats.to_string()),
        ("--block", timing.block.to_string()),
        ("--threads", threads.to_string()),
        ("--lr", BENCH_LR.to_string()),
        ("--clip", BENCH_CLIP.to_string()),
        ("--seed", seed.to_string()),
        (
            "--device",
            match device {
                DeviceKind::Cpu => "cpu".into(),
                DeviceKind::Gpu => "cuda".into(),
            },
        ),
    ]
    .into_iter()
    .chain(shape.embed.map(|e| ("--embed", e.to_string())))
    .chain(shape.proj_size.map(|p| ("--proj-size", p.to_string())))
    .flat_map(|(k, v)| [k.to_string(), v])
    .chain(shape.bidirectional.then(|| "--bidirectional".to_string()))
    .chain((!shape.bias).then(|| "--no-bias".to_string()))
    .collect();
    let fail = |m: String| Error::Config(format!("PyTorch baseline: {m}"));
    let mut child = Command::new(python)
        .arg("-")
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run {python}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(SCRIPT.as_bytes())
            .map_err(|e| fail(format!("writing the script to {python}: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| fail(format!("waiting for {python}: {e}")))?;
    if !out.status.success() {
        return Err(fail(format!(
            "the script failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or("");
    serde_json::from_str(line).map_err(|e| fail(format!("unexpected output ({e}): {text}")))
}
