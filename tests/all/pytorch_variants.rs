//! PyTorch's `nn.RNN/GRU/LSTM(..., bidirectional=True | proj_size=P | bias=False)` + `nn.Linear`,
//! loaded from unroll's checkpoint with `load_state_dict(strict=True)`, against the CPU engine
//! in f64 on both sides: the output probabilities, the loss and its gradient w.r.t. every
//! parameter agree to about 1e-6 relative. Padded batches of unequal lengths go through
//! `pack_padded_sequence(enforce_sorted=False)` on PyTorch's side; batches without padding also
//! compare the final state of every layer and direction. Skipped, with a notice, where
//! `python3` with `torch` is not installed.

use std::path::Path;
use std::process::Command;

use unroll::engine::cpu::CpuEngine;
use unroll::engine::{Engine, Inputs, Targets};
use unroll::model::{Cell, Checkpoint, InputKind, ModelConfig, OutputKind, ParamLayout};

use crate::common::{self, assert_close};

/// Reads the checkpoint by hand (no Python package beyond torch), runs the batch of the case in
/// float64 and prints the probabilities of the counted steps, the loss, every parameter's
/// gradient and (without padding) the final state.
const SCRIPT: &str = r#"
import json, struct, sys
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
def run(path, case):
    case = json.load(open(case))
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    cfg = json.loads(header.pop("__metadata__")["config"])
    state = {}
    for name, t in header.items():
        a, b = t["data_offsets"]
        state[name] = torch.frombuffer(bytearray(raw[8 + n + a:8 + n + b]), dtype=torch.float32).reshape(t["shape"]).double()
    I, H, L, V = cfg["input_size"], cfg["hidden_size"], cfg["layers"], cfg["output_size"]
    D = 2 if cfg.get("bidirectional") else 1
    P = cfg.get("proj_size") or 0
    kw = dict(num_layers=L, bias=cfg.get("bias", True), bidirectional=D == 2)
    if cfg["cell"] == "rnn":
        kw["nonlinearity"] = cfg["activation"]
    if P:
        kw["proj_size"] = P
    rnn = getattr(torch.nn, cfg["cell"].upper())(I, H, **kw).double()
    out = torch.nn.Linear(D * (P or H), V).double()
    model = torch.nn.ModuleDict({"rnn": rnn, "out": out})
    model.load_state_dict(state, strict=True)
    T, B = case["steps"], case["rows"]
    x = torch.tensor(case["x"], dtype=torch.float64).reshape(T, B, I)
    lengths = case["lengths"]
    mask = torch.tensor([[1.0 if t < lengths[b] else 0.0 for b in range(B)] for t in range(T)], dtype=torch.float64)
    s = torch.tensor(case["state"], dtype=torch.float64)
    nh = L * D * (P or H) * B
    h0 = s[:nh].reshape(L * D, B, P or H)
    init = (h0, s[nh:].reshape(L * D, B, H)) if cfg["cell"] == "lstm" else h0
    padded = min(lengths) < T
    if padded:
        packed = pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False)
        y, last = rnn(packed, init)
        y, _ = pad_packed_sequence(y, total_length=T)
    else:
        y, last = rnn(x, init)
    z = out(y)
    kind = cfg["output_kind"]
    if kind == "softmax":
        target = torch.tensor(case["y"]).reshape(T, B)
        p = torch.softmax(z, dim=-1)
        per_step = torch.nn.functional.cross_entropy(z.reshape(T * B, V), target.reshape(-1), reduction="none").reshape(T, B)
    else:
        target = torch.tensor(case["y"], dtype=torch.float64).reshape(T, B, V)
        if kind == "identity":
            p = z
            per_step = 0.5 * ((z - target) ** 2).sum(-1)
        else:
            p = torch.sigmoid(z)
            per_step = torch.nn.functional.binary_cross_entropy_with_logits(z, target, reduction="none").sum(-1)
    loss = (per_step * mask).sum() / mask.sum()
    loss.backward()
    keep = mask.reshape(T, B, 1).expand(T, B, V).reshape(-1) > 0
    final = torch.cat([t.reshape(-1) for t in last]) if cfg["cell"] == "lstm" else last
    result = {
        "probs": p.detach().reshape(-1)[keep].tolist(),
        "loss": loss.item(),
        "grads": {k: v.grad.reshape(-1).tolist() for k, v in model.named_parameters()},
        "final": None if padded else final.detach().reshape(-1).tolist(),
    }
    return result

print(json.dumps([run(p, c) for p, c in zip(sys.argv[1::2], sys.argv[2::2])]))
"#;

/// What the CPU engine computed for one case, and the files PyTorch reads it from.
struct Case {
    name: String,
    layout: ParamLayout,
    /// The output probabilities of the counted steps.
    probs: Vec<f64>,
    loss: f64,
    grads: Vec<f64>,
    /// Without padding: the final state of every layer and direction.
    final_state: Option<Vec<f64>>,
    files: [std::path::PathBuf; 2],
}

/// One configuration on the CPU engine in f64: a batch of `lengths` (padded where some are
/// shorter than T) from a random initial state; writes the checkpoint and the batch into `dir`.
fn run_ours(cfg: &ModelConfig, (steps, lengths): (usize, &[usize]), dir: &Path) -> Case {
    let name = format!("{cfg:?}");
    let mut rng = common::rng(&name);
    let layout = ParamLayout::new(cfg).unwrap();
    let params = common::uniform(&mut rng, layout.len(), 0.5);
    let rows = lengths.len();
    let padded = lengths.iter().any(|&l| l < steps);
    let batch = common::random_batch(&mut rng, cfg, steps, rows, padded.then_some(lengths));
    let state = common::uniform(&mut rng, rows * cfg.state_size_per_row(), 0.8);
    let mut engine = CpuEngine::<f64>::new(cfg, &params).unwrap();
    engine.set_state(rows, &state).unwrap();
    engine.upload_batch(&batch).unwrap();
    engine.zero_grads().unwrap();
    engine.forward().unwrap();
    engine.backward().unwrap();
    let v = cfg.output_size;
    let counted = |r: usize| r / rows < lengths[r % rows];
    let probs: Vec<f64> = (engine.outputs().unwrap().chunks(v).enumerate())
        .filter(|(r, _)| counted(*r))
        .flat_map(|(_, p)| common::to_f64(p))
        .collect();
    assert_eq!(probs.len(), lengths.iter().sum::<usize>() * v, "{name}");
    engine.carry_state().unwrap();
    let final_state = (!padded).then(|| common::to_f64(&engine.state().unwrap()));
    let Inputs::Dense(x) = &batch.inputs else {
        unreachable!("dense input")
    };
    // f32 values widened to f64, so that Python reads exactly the values the engine ran.
    let y = match &batch.targets {
        Targets::Classes(c) => serde_json::json!(c),
        Targets::Dense(d) => serde_json::json!(common::to_f64(d)),
    };
    let (x, state) = (common::to_f64(x), common::to_f64(&state));
    let case = serde_json::json!({
        "steps": steps, "rows": rows, "lengths": lengths, "x": x, "y": y, "state": state,
    });
    let stem = dir.join(format!("case{:016x}", tag(&name)));
    let checkpoint = Checkpoint {
        config: cfg.clone(),
        vocab: None,
        params,
    };
    let model_path = checkpoint.save_dir(&stem).unwrap();
    let case_path = stem.join("case.json");
    std::fs::write(&case_path, case.to_string()).unwrap();
    Case {
        name,
        probs,
        loss: engine.loss().unwrap().mean(),
        grads: engine.grads_native().to_vec(),
        final_state,
        layout,
        files: [model_path, case_path],
    }
}

/// PyTorch's results of every case, in one run of the script.
fn run_torch(cases: &[Case]) -> Vec<serde_json::Value> {
    let out = Command::new("python3")
        .args(["-c", SCRIPT])
        .args(cases.iter().flat_map(|c| &c.files))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    all.as_array().unwrap().clone()
}

fn f64s(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// One case against PyTorch's results: probabilities, loss, every gradient, the final state.
fn check(ours: &Case, torch: &serde_json::Value) {
    let name = &ours.name;
    assert_close(
        &format!("{name} probs"),
        &ours.probs,
        &f64s(&torch["probs"]),
        1e-6,
        1e-9,
    );
    let loss = torch["loss"].as_f64().unwrap();
    assert_close(&format!("{name} loss"), &[ours.loss], &[loss], 1e-9, 1e-12);
    let grads = torch["grads"].as_object().unwrap();
    assert_eq!(grads.len(), ours.layout.specs().len(), "{name}: tensors");
    for spec in ours.layout.specs() {
        let what = format!("{name} d{}", spec.name);
        let theirs = f64s(&grads[&spec.name]);
        assert_close(&what, &ours.grads[spec.range()], &theirs, 1e-6, 1e-10);
    }
    if let Some(state) = &ours.final_state {
        let theirs = f64s(&torch["final"]);
        assert_close(&format!("{name} final state"), state, &theirs, 1e-6, 1e-7);
    }
}

/// A short tag of a case's name for its folder.
fn tag(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// A dense-input model of `cell` with output `kind`, sizes (I, H, V, layers) and the options.
fn model(
    cell: Cell,
    kind: OutputKind,
    sizes: (usize, usize, usize, usize),
    options: (bool, Option<usize>, bool),
) -> ModelConfig {
    crate::directions::model(cell, (InputKind::Dense, kind), sizes, options)
}

#[test]
fn pytorch_variants_give_the_cpu_engines_outputs_and_gradients() {
    if !crate::pytorch::has_torch() {
        eprintln!("pytorch variants: skipped, python3 with torch is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let padded: (usize, &[usize]) = (5, &[5, 2, 4, 1]);
    let full: (usize, &[usize]) = (4, &[4, 4, 4]);
    let relu = ModelConfig {
        activation: unroll::model::Activation::Relu,
        ..model(
            Cell::Rnn,
            OutputKind::Identity,
            (3, 4, 2, 1),
            (false, None, false),
        )
    };
    let cases = [
        (
            model(
                Cell::Rnn,
                OutputKind::Softmax,
                (3, 4, 3, 2),
                (true, None, true),
            ),
            padded,
        ),
        (relu, padded),
        (
            model(
                Cell::Rnn,
                OutputKind::Softmax,
                (3, 4, 3, 2),
                (true, None, false),
            ),
            full,
        ),
        (
            model(
                Cell::Gru,
                OutputKind::Identity,
                (3, 4, 2, 2),
                (true, None, true),
            ),
            padded,
        ),
        (
            model(
                Cell::Gru,
                OutputKind::Softmax,
                (3, 5, 3, 1),
                (true, None, false),
            ),
            full,
        ),
        (
            model(
                Cell::Gru,
                OutputKind::Sigmoid,
                (2, 3, 3, 2),
                (false, None, false),
            ),
            padded,
        ),
        (
            model(
                Cell::Lstm,
                OutputKind::Softmax,
                (3, 5, 3, 2),
                (false, Some(3), true),
            ),
            padded,
        ),
        (
            model(
                Cell::Lstm,
                OutputKind::Identity,
                (3, 5, 2, 2),
                (true, Some(2), true),
            ),
            padded,
        ),
        (
            model(
                Cell::Lstm,
                OutputKind::Softmax,
                (3, 4, 3, 2),
                (true, Some(3), false),
            ),
            full,
        ),
        (
            model(
                Cell::Lstm,
                OutputKind::Sigmoid,
                (3, 4, 2, 2),
                (true, None, true),
            ),
            padded,
        ),
        (
            model(
                Cell::Lstm,
                OutputKind::Identity,
                (2, 3, 2, 1),
                (false, Some(1), false),
            ),
            full,
        ),
    ];
    let ours: Vec<Case> = cases
        .iter()
        .map(|(cfg, shape)| run_ours(cfg, *shape, dir.path()))
        .collect();
    let torch = run_torch(&ours);
    assert_eq!(torch.len(), ours.len());
    for (case, theirs) in ours.iter().zip(&torch) {
        check(case, theirs);
    }
}
