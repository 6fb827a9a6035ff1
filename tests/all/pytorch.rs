//! PyTorch compatibility, where `python3` with `torch` is installed (skipped otherwise): GRU and
//! LSTM checkpoints of two layers (plain, with an embedding, with tied weights) load into
//! `torch.nn.GRU` / `nn.LSTM(num_layers=2)` + `nn.Linear` (+ `nn.Embedding`) with
//! `load_state_dict(strict=True)` and give the CPU engine's output probabilities and final
//! (h, c) from the same carried-in state.

use std::process::Command;

use unroll::engine::Engine;
use unroll::engine::cpu::CpuEngine;
use unroll::model::{Cell, Checkpoint, ModelConfig, ParamLayout};

use crate::common;

/// Reads the safetensors file by hand (no Python package needed), runs the model in float64.
const SCRIPT: &str = r#"
import json, struct, sys
import torch
path, case = sys.argv[1], json.load(open(sys.argv[2]))
raw = open(path, "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
header = json.loads(raw[8:8 + n])
meta = header.pop("__metadata__")
cfg = json.loads(meta["config"])
state = {}
for name, t in header.items():
    a, b = t["data_offsets"]
    state[name] = torch.frombuffer(bytearray(raw[8 + n + a:8 + n + b]), dtype=torch.float32).reshape(t["shape"]).double()
V, H, L, E = cfg["input_size"], cfg["hidden_size"], cfg["layers"], cfg.get("embed")
rnn = getattr(torch.nn, cfg["cell"].upper())(E or V, H, num_layers=L).double()
out = torch.nn.Linear(H, cfg["output_size"]).double()
model = torch.nn.ModuleDict({"rnn": rnn, "out": out})
if E:
    model["embed"] = torch.nn.Embedding(V, E).double()
if cfg.get("tie_weights"):
    model["out"].weight = model["embed"].weight
    state["out.weight"] = state["embed.weight"]
model.load_state_dict(state, strict=True)
T, B = case["steps"], case["rows"]
tokens = torch.tensor(case["tokens"]).reshape(T, B)
x = model["embed"](tokens) if E else torch.nn.functional.one_hot(tokens, V).double()
s = torch.tensor(case["state"], dtype=torch.float64).reshape(-1, B, H)
init = (s[:L].contiguous(), s[L:].contiguous()) if cfg["cell"] == "lstm" else s
with torch.no_grad():
    y, last = rnn(x, init)
    p = torch.softmax(out(y), dim=-1).reshape(-1)
    final = torch.cat(last) if cfg["cell"] == "lstm" else last
err_p = (p - torch.tensor(case["probs"], dtype=torch.float64)).abs().max().item()
err_s = (final.reshape(-1) - torch.tensor(case["final"], dtype=torch.float64)).abs().max().item()
print(json.dumps({"probs": err_p, "state": err_s}))
"#;

pub fn has_torch() -> bool {
    Command::new("python3")
        .args(["-c", "import torch"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn gated_checkpoints_load_into_pytorch_and_give_the_same_outputs() {
    if !has_torch() {
        eprintln!("pytorch: skipped, python3 with torch is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Plain gated cells; an embedding under a GRU; an LSTM whose output layer is its embedding.
    for (cell, embed, tie_weights) in [
        (Cell::Gru, None, false),
        (Cell::Lstm, None, false),
        (Cell::Gru, Some(4), false),
        (Cell::Lstm, Some(6), true),
    ] {
        let name = format!("pytorch {cell:?} embed {embed:?} tied {tie_weights}");
        let mut rng = common::rng(&name);
        let cfg = ModelConfig {
            cell,
            embed,
            tie_weights,
            bidirectional: false,
            proj_size: None,
            bias: true,
            ..ModelConfig::language_model(7, 6, 2)
        };
        let params = common::uniform(&mut rng, ParamLayout::new(&cfg).unwrap().len(), 0.5);
        let (steps, rows) = (5, 3);
        let mut engine = CpuEngine::<f32>::new(&cfg, &params).unwrap();
        let state = common::uniform(&mut rng, rows * cfg.state_size_per_row(), 0.8);
        engine.set_state(rows, &state).unwrap();
        let batch = common::random_batch(&mut rng, &cfg, steps, rows, None);
        engine.upload_batch(&batch).unwrap();
        engine.forward().unwrap();
        engine.carry_state().unwrap();
        let unroll::engine::Inputs::Tokens(tokens) = &batch.inputs else {
            unreachable!("a language model has token inputs")
        };
        let ckpt = dir.path().join(format!("{cell:?}-{embed:?}"));
        let path = Checkpoint {
            config: cfg.clone(),
            vocab: None,
            params,
        }
        .save_dir(&ckpt)
        .unwrap();
        let case = serde_json::json!({
            "steps": steps,
            "rows": rows,
            "tokens": tokens,
            "state": state,
            "probs": engine.outputs().unwrap(),
            "final": engine.state().unwrap(),
        });
        let case_path = dir.path().join(format!("{cell:?}-{embed:?}.json"));
        std::fs::write(&case_path, case.to_string()).unwrap();
        let out = Command::new("python3")
            .args([
                "-c",
                SCRIPT,
                path.to_str().unwrap(),
                case_path.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let errs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        eprintln!("{name}: max |diff| {errs}");
        for what in ["probs", "state"] {
            let e = errs[what].as_f64().unwrap();
            assert!(e < 1e-5, "{name}: {what} differ from PyTorch by {e}");
        }
    }
}
