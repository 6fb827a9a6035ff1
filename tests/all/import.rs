//! `unroll import`: state dicts saved by PyTorch (where `python3` with `torch` and
//! `safetensors` is installed; skipped with a notice otherwise) import into the configuration
//! they were built with and give PyTorch's outputs on the CPU engine, sequence by sequence over a
//! padded batch; an unroll checkpoint taken through PyTorch's modules and back imports with
//! identical parameters; and every state dict that fits no unroll model is refused with the
//! tensor named, exit status 2 and nothing written.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rand::RngExt;
use unroll::data::vocab::Vocab;
use unroll::engine::cpu::CpuEngine;
use unroll::engine::{Engine, Inputs};
use unroll::model::{
    Activation, Cell, Checkpoint, InputKind, ModelConfig, OutputKind, ParamLayout, init_params,
};

use crate::common;

/// Builds the model a case describes (modules `embed`, `rnn`, `out`), draws its parameters
/// uniform in ±0.5, saves its state dict (`save_file` of the state dict, or `save_model`, which
/// keeps one name of tied tensors), then prints its outputs in float64 for every sequence run
/// alone over its own length, time-major, zeros at the padding.
const BUILD: &str = r#"
import json, sys
import torch, safetensors.torch as st

def build(case):
    torch.manual_seed(case["seed"])
    cls = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[case["cell"]]
    kw = dict(num_layers=case["layers"], bias=case["bias"], bidirectional=case["bidirectional"])
    if case["cell"] == "rnn":
        kw["nonlinearity"] = case["activation"]
    if case["proj_size"]:
        kw["proj_size"] = case["proj_size"]
    I, H, E, V = case["input_size"], case["hidden_size"], case["embed"], case["output_size"]
    m = torch.nn.Module()
    if E:
        m.embed = torch.nn.Embedding(I, E)
    m.rnn = cls(E or I, H, **kw)
    m.out = torch.nn.Linear((2 if case["bidirectional"] else 1) * (case["proj_size"] or H), V)
    if case["tie_weights"]:
        m.out.weight = m.embed.weight
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(-0.5, 0.5)
    if case["save"] == "model":
        st.save_model(m, case["path"])
    else:
        st.save_file({k: v.clone().contiguous() for k, v in m.state_dict().items()}, case["path"])
    m = m.double()
    T, B = case["steps"], case["rows"]
    if case["tokens"] is not None:
        t = torch.tensor(case["tokens"]).reshape(T, B)
        x = m.embed(t) if E else torch.nn.functional.one_hot(t, I).double()
    else:
        x = torch.tensor(case["dense"], dtype=torch.float64).reshape(T, B, I)
    y = torch.zeros(T, B, V, dtype=torch.float64)
    with torch.no_grad():
        for b, n in enumerate(case["lengths"]):
            o = m.out(m.rnn(x[:n, b:b + 1])[0])[:, 0]
            if case["output_kind"] == "softmax":
                o = torch.softmax(o, -1)
            elif case["output_kind"] == "sigmoid":
                o = torch.sigmoid(o)
            y[:n, b] = o
    return y.reshape(-1).tolist()

print(json.dumps([build(c) for c in json.load(open(sys.argv[1]))]))
"#;

/// Reads an unroll checkpoint's tensors, loads them into PyTorch's modules with
/// `strict=True` and saves the modules' state dict with `save_model` (for a tied model, one of
/// the shared names), or its tensors as `dtype` with `save_file`.
const THROUGH_TORCH: &str = r#"
import json, sys
import torch, safetensors.torch as st

def through(cfg, src, dst, dtype):
    state = st.load_file(src)
    cls = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cfg["cell"]]
    I, H, E, V = cfg["input_size"], cfg["hidden_size"], cfg.get("embed"), cfg["output_size"]
    tied = cfg.get("tie_weights", False)
    m = torch.nn.Module()
    if E:
        m.embed = torch.nn.Embedding(I, E)
    m.rnn = cls(E or I, H, num_layers=cfg["layers"])
    m.out = torch.nn.Linear(H, V)
    if tied:
        m.out.weight = m.embed.weight
        state["out.weight"] = state["embed.weight"]
    m.load_state_dict(state, strict=True)
    if dtype == "float32":
        st.save_model(m, dst)
        return
    kept = {k: v.to(getattr(torch, dtype)) for k, v in state.items() if k != "out.weight" or not tied}
    st.save_file(kept, dst)
    st.save_file({k: v.float() for k, v in kept.items()}, dst + ".f32")

for job in json.loads(sys.argv[1]):
    through(*job)
"#;

fn has_torch() -> bool {
    Command::new("python3")
        .args(["-c", "import torch, safetensors.torch"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether the test must be skipped for want of PyTorch (saying so).
fn skipped_without_torch() -> bool {
    let skip = !has_torch();
    if skip {
        eprintln!("import: skipped, python3 with torch and safetensors is not installed");
    }
    skip
}

fn unroll(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_unroll"))
        .args(args)
        .output()
        .expect("the unroll binary runs")
}

/// `unroll import --state-dict DICT --out OUT ARGS`.
fn run_import(dict: &Path, out: &Path, args: &[&str]) -> Output {
    let mut all = vec![
        "import",
        "--state-dict",
        dict.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    all.extend(args);
    unroll(&all)
}

/// `unroll import --state-dict DICT --out OUT ARGS`, which must succeed.
fn import(dict: &Path, out: &Path, args: &[&str]) -> Output {
    let o = run_import(dict, out, args);
    assert!(
        o.status.success(),
        "unroll import {args:?} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// One model built in PyTorch and the options that import it.
struct Case {
    name: &'static str,
    config: ModelConfig,
    /// How PyTorch saves it: "file" (`save_file`, tied tensors twice) or "model".
    save: &'static str,
    args: Vec<String>,
}

/// A two-layer model of `cell` over `(I, H, V)` with the given input and output kinds.
fn base(
    cell: Cell,
    input: InputKind,
    output: OutputKind,
    (i, h, v): (usize, usize, usize),
) -> ModelConfig {
    common::cell_config(cell, input, output, (i, h, v, 2))
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// Characters of the corpus the language-model cases are imported with: 7 distinct ones.
const TEXT: &str = "abc defg\nfed cba\n";

/// The cases every engine runs today: each cell, two layers, embeddings tied and untied (saved
/// both ways), no biases, every input and output kind.
fn plain_cases(corpus: &str, pairs: &str) -> Vec<Case> {
    let vocab = Vocab::chars_of(TEXT).len();
    let (dense, onehot) = (InputKind::Dense, InputKind::OneHot);
    vec![
        Case {
            name: "rnn relu, real in and out",
            config: ModelConfig {
                activation: Activation::Relu,
                ..base(Cell::Rnn, dense, OutputKind::Identity, (3, 6, 4))
            },
            save: "file",
            args: args(&[
                "--input",
                "real",
                "--output",
                "real",
                "--activation",
                "relu",
            ]),
        },
        Case {
            name: "gru without biases, binary out",
            config: ModelConfig {
                bias: false,
                ..base(Cell::Gru, dense, OutputKind::Sigmoid, (3, 5, 2))
            },
            save: "file",
            args: args(&["--input", "real", "--output", "binary"]),
        },
        Case {
            name: "lstm with an embedding, checked against a pairs file",
            config: ModelConfig {
                embed: Some(4),
                ..base(Cell::Lstm, onehot, OutputKind::Softmax, (5, 6, 3))
            },
            save: "file",
            args: args(&["--pairs", pairs, "--input", "class", "--output", "class"]),
        },
        Case {
            name: "rnn, one-hot in, class counts given",
            config: base(Cell::Rnn, onehot, OutputKind::Softmax, (5, 4, 3)),
            save: "file",
            args: args(&[
                "--input",
                "class",
                "--output",
                "class",
                "--input-classes",
                "5",
                "--output-classes",
                "3",
            ]),
        },
        Case {
            name: "gru language model, tied, saved with save_model",
            config: ModelConfig {
                embed: Some(5),
                tie_weights: true,
                ..base(Cell::Gru, onehot, OutputKind::Softmax, (vocab, 5, vocab))
            },
            save: "model",
            args: args(&["--corpus", corpus]),
        },
        Case {
            name: "lstm language model, tied, both names saved",
            config: ModelConfig {
                embed: Some(6),
                tie_weights: true,
                ..base(Cell::Lstm, onehot, OutputKind::Softmax, (vocab, 6, vocab))
            },
            save: "file",
            args: args(&["--corpus", corpus, "--vocab", "chars"]),
        },
    ]
}

/// Bidirectional layers of each cell, and LSTM projections (with and without tying).
fn two_way_and_projected_cases(corpus: &str) -> Vec<Case> {
    let vocab = Vocab::chars_of(TEXT).len();
    let (dense, onehot) = (InputKind::Dense, InputKind::OneHot);
    let two_way = |c: ModelConfig| ModelConfig {
        bidirectional: true,
        ..c
    };
    vec![
        Case {
            name: "bidirectional rnn",
            config: two_way(base(Cell::Rnn, dense, OutputKind::Identity, (3, 5, 2))),
            save: "file",
            args: args(&["--input", "real", "--output", "real"]),
        },
        Case {
            name: "bidirectional gru with an embedding",
            config: two_way(ModelConfig {
                embed: Some(3),
                ..base(Cell::Gru, onehot, OutputKind::Softmax, (6, 4, 3))
            }),
            save: "file",
            args: args(&["--input", "class", "--output", "class"]),
        },
        Case {
            name: "bidirectional lstm, projected, without biases",
            config: two_way(ModelConfig {
                proj_size: Some(3),
                bias: false,
                ..base(Cell::Lstm, dense, OutputKind::Identity, (4, 5, 2))
            }),
            save: "file",
            args: args(&["--input", "real", "--output", "real"]),
        },
        Case {
            name: "projected lstm language model, tied to its embedding",
            config: ModelConfig {
                proj_size: Some(3),
                embed: Some(3),
                tie_weights: true,
                ..base(Cell::Lstm, onehot, OutputKind::Softmax, (vocab, 5, vocab))
            },
            save: "model",
            args: args(&["--corpus", corpus]),
        },
    ]
}

fn kind_name<T: serde::Serialize>(v: T) -> serde_json::Value {
    serde_json::to_value(v).unwrap()
}

/// A case ready for PyTorch: its batch, the lengths of its sequences and what the script reads.
struct Prepared {
    batch: unroll::engine::Batch,
    lengths: Vec<usize>,
    json: serde_json::Value,
    dict: PathBuf,
}

/// Draws `case`'s padded batch and the parameters' seed.
fn prepare(case: &Case, dir: &Path) -> Prepared {
    let mut rng = common::rng(case.name);
    let cfg = &case.config;
    let (steps, rows) = (5, 3);
    let mut lengths: Vec<usize> = (0..rows).map(|_| rng.random_range(1..=steps)).collect();
    lengths[rng.random_range(0..rows)] = steps;
    let batch = common::random_batch(&mut rng, cfg, steps, rows, Some(&lengths));
    let (tokens, dense) = match &batch.inputs {
        Inputs::Tokens(t) => (Some(t.clone()), None),
        Inputs::Dense(d) => (None, Some(d.clone())),
    };
    let dict = dir.join(format!(
        "{}.safetensors",
        case.name.replace([' ', ','], "_")
    ));
    let mut json = serde_json::to_value(cfg).unwrap();
    let extra = serde_json::json!({
        "seed": rng.random_range(0..1u64 << 31),
        "path": dict,
        "save": case.save,
        "steps": steps,
        "rows": rows,
        "lengths": lengths,
        "tokens": tokens,
        "dense": dense,
        "embed": cfg.embed,
        "proj_size": cfg.proj_size,
        "bias": cfg.bias,
        "bidirectional": cfg.bidirectional,
        "tie_weights": cfg.tie_weights,
        "cell": kind_name(cfg.cell),
        "activation": kind_name(cfg.activation),
        "output_kind": kind_name(cfg.output_kind),
    });
    for (k, v) in extra.as_object().unwrap() {
        json[k] = v.clone();
    }
    Prepared {
        batch,
        lengths,
        json,
        dict,
    }
}

/// Builds every case in PyTorch (one Python process), imports each, and compares the CPU
/// engine's outputs on its padded batch with PyTorch's, sequence by sequence.
fn check_cases(cases: &[Case], dir: &Path) {
    let prepared: Vec<Prepared> = cases.iter().map(|c| prepare(c, dir)).collect();
    let list: Vec<&serde_json::Value> = prepared.iter().map(|p| &p.json).collect();
    let list_path = dir.join("cases.json");
    std::fs::write(&list_path, serde_json::to_string(&list).unwrap()).unwrap();
    let out = Command::new("python3")
        .args(["-c", BUILD, list_path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected: Vec<Vec<f64>> = serde_json::from_slice(&out.stdout).unwrap();
    for ((case, p), expected) in cases.iter().zip(&prepared).zip(expected) {
        check_case(case, p, expected, dir);
    }
}

/// Imports one case and compares its outputs on the real steps with `expected`.
fn check_case(case: &Case, p: &Prepared, expected: Vec<f64>, dir: &Path) {
    let (name, cfg) = (case.name, &case.config);
    let run = dir.join(p.dict.file_stem().unwrap());
    let a: Vec<&str> = case.args.iter().map(String::as_str).collect();
    import(&p.dict, &run, &a);
    let ckpt = Checkpoint::load(&run).unwrap();
    assert_eq!(&ckpt.config, cfg, "{name}: the imported configuration");
    let rows = p.batch.rows;
    let mut engine = CpuEngine::<f64>::new(cfg, &ckpt.params).unwrap();
    engine.reset_state(rows).unwrap();
    engine.upload_batch(&p.batch).unwrap();
    engine.forward().unwrap();
    let got = engine.outputs().unwrap();
    let real = |r: usize| r / rows < p.lengths[r % rows];
    let pick = |x: Vec<f64>| -> Vec<f64> {
        x.chunks(cfg.output_size)
            .enumerate()
            .filter(|(r, _)| real(*r))
            .flat_map(|(_, c)| c.to_vec())
            .collect()
    };
    let (got, expected) = (pick(common::to_f64(&got)), pick(expected));
    common::assert_close(name, &got, &expected, 1e-5, 1e-6);
}

/// The files the language-model and pairs cases read: the corpus, and a pairs file of class ids
/// 0..5 in and 0..3 out.
fn inputs(dir: &Path) -> (PathBuf, PathBuf) {
    let corpus = dir.join("corpus.txt");
    std::fs::write(&corpus, TEXT).unwrap();
    let pairs = dir.join("pairs.jsonl");
    std::fs::write(
        &pairs,
        "{\"x\": [0, 4, 2], \"y\": [1, 2, 0]}\n{\"x\": [3], \"y\": [2]}\n",
    )
    .unwrap();
    (corpus, pairs)
}

#[test]
fn pytorch_state_dicts_of_each_cell_import_and_give_pytorch_outputs() {
    if skipped_without_torch() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (corpus, pairs) = inputs(dir.path());
    let cases = plain_cases(corpus.to_str().unwrap(), pairs.to_str().unwrap());
    check_cases(&cases, dir.path());
}

#[test]
fn bidirectional_and_projected_pytorch_state_dicts_import_and_give_pytorch_outputs() {
    if skipped_without_torch() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (corpus, _) = inputs(dir.path());
    let cases = two_way_and_projected_cases(corpus.to_str().unwrap());
    check_cases(&cases, dir.path());
}

/// An unroll checkpoint of `config` (with `vocab`) with fresh parameters, saved in `dir`.
fn checkpoint(config: &ModelConfig, vocab: Option<Vocab>, dir: &Path) -> (Checkpoint, PathBuf) {
    let layout = ParamLayout::new(config).unwrap();
    let ckpt = Checkpoint {
        config: config.clone(),
        vocab,
        params: init_params(config, &layout, rand::random()),
    };
    let path = ckpt.save_dir(dir).unwrap();
    (ckpt, path)
}

/// Takes each `(config, src, dst, dtype)` through PyTorch's modules (one Python process; see
/// [`THROUGH_TORCH`]).
fn through_torch(jobs: &[(&ModelConfig, &Path, &Path, &str)]) {
    let jobs: Vec<serde_json::Value> = jobs
        .iter()
        .map(|(c, src, dst, dtype)| serde_json::json!([c, src, dst, dtype]))
        .collect();
    let jobs = serde_json::to_string(&jobs).unwrap();
    let out = Command::new("python3")
        .args(["-c", THROUGH_TORCH, &jobs])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn checkpoints_taken_through_pytorch_import_with_identical_parameters() {
    if skipped_without_torch() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (corpus, _) = inputs(dir.path());
    let corpus = corpus.to_str().unwrap();
    let vocab = Vocab::chars_of(TEXT);
    let n = vocab.len();
    let lm = ModelConfig {
        cell: Cell::Lstm,
        embed: Some(4),
        tie_weights: true,
        ..ModelConfig::language_model(n, 4, 2)
    };
    let seq = base(Cell::Gru, InputKind::Dense, OutputKind::Identity, (3, 5, 2));
    let real = ["--input", "real", "--output", "real"];
    let cases: [(&ModelConfig, Option<Vocab>, &[&str]); 2] = [
        (&lm, Some(vocab), &["--corpus", corpus]),
        (&seq, None, &real),
    ];
    let at = |name: String| dir.path().join(name);
    let saved: Vec<(Checkpoint, PathBuf)> = (0..3)
        .map(|i| {
            let (config, vocab) = match cases.get(i) {
                Some((c, v, _)) => (*c, v.clone()),
                None => (&seq, None),
            };
            checkpoint(config, vocab, &at(format!("unroll{i}")))
        })
        .collect();
    let dicts: Vec<PathBuf> = (0..3)
        .map(|i| at(format!("torch{i}.safetensors")))
        .collect();
    let mut jobs: Vec<(&ModelConfig, &Path, &Path, &str)> = (0..2)
        .map(|i| {
            (
                cases[i].0,
                saved[i].1.as_path(),
                dicts[i].as_path(),
                "float32",
            )
        })
        .collect();
    jobs.push((&seq, saved[2].1.as_path(), dicts[2].as_path(), "float16"));
    through_torch(&jobs);
    for (i, (config, _, args)) in cases.iter().enumerate() {
        let back = at(format!("back{i}"));
        import(&dicts[i], &back, args);
        assert_eq!(Checkpoint::load(&back).unwrap(), saved[i].0, "{config:?}");
    }
    // Half-precision tensors import as the f32 values they stand for, with a note.
    let (half, full) = (at("half".into()), at("full".into()));
    let out = import(&dicts[2], &half, &real);
    let note = String::from_utf8_lossy(&out.stderr);
    assert!(
        note.contains("stored as f16 are converted to f32"),
        "{note}"
    );
    let f32_dict = PathBuf::from(format!("{}.f32", dicts[2].display()));
    import(&f32_dict, &full, &real);
    let (a, b) = (
        Checkpoint::load(&half).unwrap(),
        Checkpoint::load(&full).unwrap(),
    );
    assert_eq!(a.params, b.params, "f16 converted as PyTorch converts it");
}

/// A tensor to write into a hand-made safetensors file: name, dtype, shape, values (as f64,
/// written in the dtype).
type Raw<'a> = (&'a str, &'a str, Vec<usize>, Vec<f64>);

/// Writes a safetensors file of `tensors`.
fn write_dict(path: &Path, tensors: &[Raw]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, values) in tensors {
        let start = data.len();
        for &v in values {
            match *dtype {
                "F32" => data.extend((v as f32).to_le_bytes()),
                "F64" => data.extend(v.to_le_bytes()),
                "I32" => data.extend((v as i32).to_le_bytes()),
                other => panic!("no writer for {other}"),
            }
        }
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut h = serde_json::Value::Object(header).to_string().into_bytes();
    h.resize(h.len().next_multiple_of(8), b' ');
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend(h);
    bytes.extend(data);
    std::fs::write(path, bytes).unwrap();
}

/// A valid one-layer tanh RNN over 3 inputs, H = 4, 2 outputs, in `dtype`.
fn rnn_dict(dtype: &'static str) -> Vec<Raw<'static>> {
    let values = |n: usize| (0..n).map(|i| (i as f64 * 0.37).sin() * 0.3).collect();
    vec![
        ("rnn.weight_ih_l0", dtype, vec![4, 3], values(12)),
        ("rnn.weight_hh_l0", dtype, vec![4, 4], values(16)),
        ("rnn.bias_ih_l0", dtype, vec![4], values(4)),
        ("rnn.bias_hh_l0", dtype, vec![4], values(4)),
        ("out.weight", dtype, vec![2, 4], values(8)),
        ("out.bias", dtype, vec![2], values(2)),
    ]
}

/// Imports `tensors` with `args`, which must be refused with exit status 2, a message holding
/// every one of `needles`, and nothing written.
fn refused(dir: &Path, tensors: &[Raw], args: &[&str], needles: &[&str]) {
    let dict = dir.join("refused.safetensors");
    write_dict(&dict, tensors);
    let out = dir.join("refused-run");
    let o = run_import(&dict, &out, args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{needles:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.exists(), "{needles:?}: {} was created", out.display());
}

#[test]
fn state_dicts_that_fit_no_unroll_model_are_refused_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let seq = ["--input", "real", "--output", "real"];
    let with = |extra: Raw<'static>| {
        let mut t = rnn_dict("F32");
        t.push(extra);
        t
    };
    let without = |name: &str| {
        let mut t = rnn_dict("F32");
        t.retain(|x| x.0 != name);
        t
    };
    let reshaped = |name: &str, shape: Vec<usize>| {
        let mut t = rnn_dict("F32");
        for x in &mut t {
            if x.0 == name {
                x.3 = vec![0.1; shape.iter().product()];
                x.2 = shape.clone();
            }
        }
        t
    };
    let unknown = with(("rnn.weight_xy_l0", "F32", vec![4], vec![0.0; 4]));
    refused(d, &unknown, &seq, &["rnn.weight_xy_l0", "not a parameter"]);
    let prefixed = with(("model.rnn.weight_ih_l0", "F32", vec![4, 3], vec![0.0; 12]));
    refused(
        d,
        &prefixed,
        &seq,
        &["model.rnn.weight_ih_l0", "rnn, out and embed"],
    );
    refused(
        d,
        &reshaped("out.weight", vec![2, 5]),
        &seq,
        &["out.weight", "[2, 5]", "[2, 4]"],
    );
    refused(
        d,
        &reshaped("rnn.weight_hh_l0", vec![6, 4]),
        &seq,
        &["rnn.weight_hh_l0", "no RNN, GRU or LSTM"],
    );
    refused(
        d,
        &without("rnn.bias_hh_l0"),
        &seq,
        &["tensor rnn.bias_hh_l0 is missing"],
    );
    refused(
        d,
        &without("out.bias"),
        &seq,
        &["tensor out.bias is missing"],
    );
    let second = with(("rnn.weight_ih_l2", "F32", vec![4, 4], vec![0.0; 16]));
    refused(d, &second, &seq, &["rnn.weight_ih_l1 is missing"]);
    let mut nan = rnn_dict("F32");
    nan[1].3[5] = f64::NAN;
    refused(d, &nan, &seq, &["rnn.weight_hh_l0", "not finite"]);
    let mut big = rnn_dict("F64");
    big[4].3[0] = 1e300;
    refused(d, &big, &seq, &["out.weight", "not finite in f32"]);
    let mut ints = rnn_dict("F32");
    ints[5].1 = "I32";
    refused(d, &ints, &seq, &["out.bias", "I32"]);
    // A language model whose vocabulary does not have the model's size.
    refused(
        d,
        &rnn_dict("F32"),
        &["--vocab", "bytes"],
        &["256 tokens", "reads 3"],
    );
    // A file that is not one: refused before it is read, nothing written.
    let o = run_import(Path::new("/dev/zero"), &d.join("zero"), &seq);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not a regular file"), "{err}");
    assert!(!o.status.success() && !d.join("zero").exists(), "{err}");
    // Nothing says how the model reads and writes.
    refused(d, &rnn_dict("F32"), &[], &["--input real|class"]);
    refused(
        d,
        &rnn_dict("F32"),
        &[
            "--input",
            "class",
            "--output",
            "class",
            "--input-classes",
            "4",
        ],
        &["--input-classes 4", "has 3"],
    );
}

#[test]
fn a_state_dict_in_f64_is_converted_with_a_note() {
    let dir = tempfile::tempdir().unwrap();
    let dict = dir.path().join("f64.safetensors");
    let tensors = rnn_dict("F64");
    write_dict(&dict, &tensors);
    let run = dir.path().join("run");
    let out = import(&dict, &run, &["--input", "real", "--output", "real"]);
    let note = String::from_utf8_lossy(&out.stderr);
    assert!(
        note.contains("6 tensors stored as f64 are converted to f32"),
        "{note}"
    );
    let ckpt = Checkpoint::load(&run).unwrap();
    let layout = ParamLayout::new(&ckpt.config).unwrap();
    for (name, _, _, values) in &tensors {
        let spec = layout.get(name).unwrap();
        let want: Vec<f32> = values.iter().map(|&v| v as f32).collect();
        assert_eq!(&ckpt.params[spec.range()], want.as_slice(), "{name}");
    }
    // The imported directory is a run: a second import is refused without --force.
    let again = run_import(&dict, &run, &["--input", "real", "--output", "real"]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
}

/// `unroll bench ARGS --json` on a tiny LSTM of two layers: its exit status and output.
fn bench(args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let tiny = [
        "bench",
        "--cell",
        "lstm",
        "--layers",
        "2",
        "--hidden",
        "6",
        "--batch",
        "3",
        "--seq-len",
        "4",
        "--vocab-size",
        "5",
        "--warmup",
        "1",
        "--repeats",
        "2",
        "--rounds",
        "1",
        "--json",
    ];
    let o = unroll(&[&tiny[..], args].concat());
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!err.contains("panicked"), "{err}");
    let json = serde_json::from_slice(&o.stdout).unwrap_or_default();
    (o.status.code(), json, err)
}

#[test]
fn bench_runs_layers_without_biases_beside_pytorch_on_the_cpu() {
    let (code, v, err) = bench(&["--device", "cpu", "--no-bias", "--baseline", "pytorch"]);
    assert_eq!(code, Some(0), "{err}");
    let r = &v["results"][0];
    assert_eq!(r["shape"]["bias"], false, "{v}");
    assert!(r["tokens_per_s"].as_f64().unwrap() > 0.0, "{v}");
    if has_torch() {
        assert!(r["pytorch"]["tokens_per_s"].as_f64().unwrap() > 0.0, "{v}");
    }
}

#[test]
fn bench_runs_bidirectional_projected_layers_beside_pytorch_on_the_cpu() {
    let options = [
        "--bidirectional",
        "--proj-size",
        "4",
        "--baseline",
        "pytorch",
    ];
    let (code, v, err) = bench(&[&["--device", "cpu"], &options[..]].concat());
    assert_eq!(code, Some(0), "{err}");
    let r = &v["results"][0];
    assert_eq!(r["shape"]["bidirectional"], true, "{v}");
    assert_eq!(r["shape"]["proj_size"], 4, "{v}");
    let loss = r["loss"].as_f64().unwrap();
    assert!(loss.is_finite() && loss > 0.0, "{v}");
    if has_torch() {
        assert!(r["pytorch"]["tokens_per_s"].as_f64().unwrap() > 0.0, "{v}");
    }
}

#[test]
fn an_engine_that_refuses_a_benchmarked_option_says_which_and_the_bench_goes_on() {
    if common::gpu("an_engine_that_refuses_a_benchmarked_option").is_none() {
        return;
    }
    let options = ["--bidirectional", "--proj-size", "4", "--no-bias"];
    let (code, v, err) = bench(&[&["--device", "gpu"], &options[..]].concat());
    match code {
        // The GPU engine runs every option: a measurement.
        Some(0) => assert_eq!(v["results"][0]["device"], "gpu", "{v}"),
        // It refuses one: the note names it, and nothing measured is a usage error.
        _ => {
            assert_eq!(code, Some(2), "{err}");
            assert!(
                err.contains("not measured") && err.contains("does not run"),
                "{err}"
            );
            assert!(err.contains("nothing was measured"), "{err}");
        }
    }
    // Beside an engine that runs the options, a refusal is a note and the others are measured.
    let (code, v, err) = bench(&["--device", "cpu,gpu", "--no-bias"]);
    assert_eq!(code, Some(0), "{err}");
    let devices: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["device"].as_str().unwrap())
        .collect();
    assert!(devices.contains(&"cpu"), "{v}");
    if !devices.contains(&"gpu") {
        let notes = v["notes"].to_string();
        assert!(
            notes.contains("does not run layers without biases"),
            "{notes}"
        );
    }
}
