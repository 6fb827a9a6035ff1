//! The model options of PyTorch's recurrent layers (`bidirectional`, `proj_size`, `bias`) at the
//! level of the model: parameter names, shapes and order as PyTorch's `state_dict()` lists them,
//! the carried state's size, the checks of the options on the command line, and the commands that
//! refuse a bidirectional model because a language model must be causal.

use std::process::Command;

use unroll::data::vocab::Vocab;
use unroll::model::{Cell, Checkpoint, InputKind, ModelConfig, ParamLayout, init_params};

use crate::cli::{fails_with, ok};

/// A model over `vocab` tokens with the given options.
fn model(
    cell: Cell,
    layers: usize,
    (bidirectional, proj_size, bias): (bool, Option<usize>, bool),
) -> ModelConfig {
    ModelConfig {
        cell,
        bidirectional,
        proj_size,
        bias,
        ..ModelConfig::language_model(7, 5, layers)
    }
}

/// Every combination of the options, with an embedding or not.
fn all_variants() -> Vec<ModelConfig> {
    let mut out = Vec::new();
    for cell in [Cell::Rnn, Cell::Gru, Cell::Lstm] {
        for bidirectional in [false, true] {
            for proj in [None, Some(3)] {
                if proj.is_some() && cell != Cell::Lstm {
                    continue;
                }
                for bias in [true, false] {
                    for embed in [None, Some(4)] {
                        let mut c = model(cell, 2, (bidirectional, proj, bias));
                        c.embed = embed;
                        out.push(c);
                    }
                }
            }
        }
    }
    out
}

/// The names and shapes of PyTorch's `state_dict()` for `c`, written out from PyTorch's rules
/// (`torch.nn.RNNBase._flat_weights_names`), for the case where torch is not installed.
fn pytorch_names(c: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (g, h) = (c.cell.gates(), c.hidden_size);
    let w = c.proj_size.unwrap_or(h);
    let d = if c.bidirectional { 2 } else { 1 };
    let mut out = Vec::new();
    if let Some(e) = c.embed {
        out.push(("embed.weight".to_string(), vec![c.input_size, e]));
    }
    for k in 0..c.layers {
        let input = if k == 0 {
            c.embed.unwrap_or(c.input_size)
        } else {
            d * w
        };
        for sfx in ["", "_reverse"].iter().take(d) {
            out.push((format!("rnn.weight_ih_l{k}{sfx}"), vec![g * h, input]));
            out.push((format!("rnn.weight_hh_l{k}{sfx}"), vec![g * h, w]));
            if c.bias {
                out.push((format!("rnn.bias_ih_l{k}{sfx}"), vec![g * h]));
                out.push((format!("rnn.bias_hh_l{k}{sfx}"), vec![g * h]));
            }
            if let Some(p) = c.proj_size {
                out.push((format!("rnn.weight_hr_l{k}{sfx}"), vec![p, h]));
            }
        }
    }
    out.push(("out.weight".to_string(), vec![c.output_size, d * w]));
    out.push(("out.bias".to_string(), vec![c.output_size]));
    out
}

fn layout_names(c: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let layout = ParamLayout::new(c).unwrap();
    let mut at = 0;
    layout
        .specs()
        .iter()
        .map(|s| {
            assert_eq!(s.offset, at, "{}: tensors are contiguous, in order", s.name);
            at += s.len();
            (s.name.clone(), s.shape.clone())
        })
        .collect()
}

#[test]
fn the_layout_lists_pytorchs_names_shapes_and_order_for_every_option() {
    for c in all_variants() {
        assert_eq!(layout_names(&c), pytorch_names(&c), "{c:?}");
        // The carried state: h of every layer and direction, then c of an LSTM, each B rows.
        let w = c.proj_size.unwrap_or(c.hidden_size);
        let per_direction = w + if c.cell == Cell::Lstm {
            c.hidden_size
        } else {
            0
        };
        let d = if c.bidirectional { 2 } else { 1 };
        assert_eq!(c.state_size_per_row(), c.layers * d * per_direction);
    }
}

/// What `torch.nn.{RNN,GRU,LSTM}(...).state_dict()` lists, names and shapes, as JSON lines.
const STATE_DICT: &str = r#"
import json, sys, torch
for c in json.load(sys.stdin):
    kw = dict(num_layers=c["layers"], bias=c["bias"], bidirectional=c["bidirectional"])
    if c["proj_size"]:
        kw["proj_size"] = c["proj_size"]
    rnn = getattr(torch.nn, c["cell"].upper())(c["input"], c["hidden_size"], **kw)
    print(json.dumps([[k, list(v.shape)] for k, v in rnn.state_dict().items()]))
"#;

#[test]
fn the_layout_matches_the_state_dict_of_pytorch_itself() {
    let torch = Command::new("python3")
        .args(["-c", "import torch"])
        .output();
    if !torch.is_ok_and(|o| o.status.success()) {
        eprintln!(
            "python3 with torch is not installed: checked against the written-out rules only"
        );
        return;
    }
    let cases: Vec<ModelConfig> = all_variants()
        .into_iter()
        .filter(|c| c.embed.is_none())
        .collect();
    let json: Vec<serde_json::Value> = cases
        .iter()
        .map(|c| {
            serde_json::json!({
                "cell": format!("{:?}", c.cell).to_lowercase(), "layers": c.layers,
                "bias": c.bias, "bidirectional": c.bidirectional,
                "proj_size": c.proj_size.unwrap_or(0), "input": c.input_size,
                "hidden_size": c.hidden_size,
            })
        })
        .collect();
    let mut child = Command::new("python3")
        .args(["-c", STATE_DICT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    serde_json::to_writer(stdin, &json).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the PyTorch script failed");
    let lines: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    assert_eq!(lines.len(), cases.len());
    for (c, line) in cases.iter().zip(lines) {
        let torch: Vec<(String, Vec<usize>)> = serde_json::from_str(line).unwrap();
        let ours: Vec<(String, Vec<usize>)> = layout_names(c)
            .into_iter()
            .filter_map(|(n, s)| n.strip_prefix("rnn.").map(|n| (n.to_string(), s)))
            .collect();
        assert_eq!(ours, torch, "{c:?}");
    }
}

#[test]
fn a_checkpoint_of_each_option_saves_and_loads_and_old_configs_read_as_before() {
    let dir = tempfile::tempdir().unwrap();
    for (i, c) in all_variants().into_iter().enumerate() {
        let layout = ParamLayout::new(&c).unwrap();
        let params = init_params(&c, &layout, i as u64);
        let path = dir.path().join(format!("m{i}.safetensors"));
        Checkpoint {
            config: c.clone(),
            vocab: None,
            params: params.clone(),
        }
        .save(&path)
        .unwrap();
        let back = Checkpoint::load(&path).unwrap();
        assert_eq!((back.config, back.params), (c, params));
    }
    // A configuration written before these options existed reads as the model it was.
    let old = r#"{"cell":"lstm","activation":"tanh","input_kind":"onehot","input_size":7,
        "hidden_size":5,"layers":2,"output_kind":"softmax","output_size":7}"#;
    let c: ModelConfig = serde_json::from_str(old).unwrap();
    assert_eq!(c, model(Cell::Lstm, 2, (false, None, true)));
    // ... and the default options are not written, so such a file stays as it was.
    let json = serde_json::to_string(&c).unwrap();
    for key in ["bidirectional", "proj_size", "bias"] {
        assert!(!json.contains(key), "{key} in {json}");
    }
}

#[test]
fn invalid_projections_and_tying_are_refused_by_the_configuration() {
    let cases = [
        (model(Cell::Gru, 1, (false, Some(3), true)), "needs an LSTM"),
        (
            model(Cell::Lstm, 1, (false, Some(5), true)),
            "smaller than the hidden",
        ),
        (model(Cell::Lstm, 1, (false, Some(0), true)), "at least 1"),
        (
            ModelConfig {
                embed: Some(5),
                tie_weights: true,
                ..model(Cell::Lstm, 1, (true, None, true))
            },
            "output width (10)",
        ),
    ];
    for (c, needle) in cases {
        let err = ParamLayout::new(&c).unwrap_err().to_string();
        assert!(err.contains(needle), "{c:?}: {err}");
    }
}

fn pairs_file(dir: &std::path::Path) -> String {
    let text: String = (0..40)
        .map(|i| {
            format!(
                "{{\"x\": [{}, {}, 1], \"y\": [0, 1, {}]}}\n",
                i % 3,
                i % 2,
                i % 4
            )
        })
        .collect();
    let path = dir.join("pairs.jsonl");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn the_command_line_refuses_what_the_options_cannot_build() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = pairs_file(dir.path());
    let out = dir.path().join("run");
    let out = out.to_str().unwrap();
    let pairs_run = |extra: &[&'static str]| {
        let mut a = vec![
            "train", "--pairs", &pairs, "--input", "class", "--output", "class",
        ];
        a.extend(["--steps", "1", "--device", "cpu", "--out", out]);
        a.extend(extra.iter().copied());
        a.into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    let cases: [(&[&str], &str); 4] = [
        (
            &["--cell", "gru", "--proj-size", "3"],
            "--proj-size needs --cell lstm",
        ),
        (
            &["--cell", "lstm", "--hidden", "8", "--proj-size", "8"],
            "must be smaller than --hidden 8",
        ),
        (
            &["--cell", "lstm", "--proj-size", "0"],
            "--proj-size must be at least 1",
        ),
        (
            &[
                "--bidirectional",
                "--embed",
                "8",
                "--hidden",
                "8",
                "--tie-weights",
            ],
            "twice --hidden",
        ),
    ];
    for (extra, needle) in cases {
        let args = pairs_run(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails_with(&args, needle, true);
        assert!(!std::path::Path::new(out).exists(), "{extra:?} wrote {out}");
    }
    // A corpus is a language model's: a bidirectional one is refused before anything is read.
    let corpus = dir.path().join("c.txt");
    std::fs::write(&corpus, "abc ".repeat(100)).unwrap();
    let c = corpus.to_str().unwrap();
    for extra in [&[][..], &["--cell", "gru"][..]] {
        let mut args = vec!["train", "--corpus", c, "--bidirectional", "--out", out];
        args.extend(extra);
        fails_with(&args, "a language model predicts each token", true);
    }
    assert!(!std::path::Path::new(out).exists());
}

#[test]
fn eval_and_sample_refuse_a_bidirectional_model() {
    let dir = tempfile::tempdir().unwrap();
    let config = ModelConfig {
        bidirectional: true,
        ..ModelConfig::language_model(4, 5, 1)
    };
    assert_eq!(config.input_kind, InputKind::OneHot);
    let layout = ParamLayout::new(&config).unwrap();
    let model = dir.path().join("bi.safetensors");
    Checkpoint {
        params: init_params(&config, &layout, 3),
        config,
        vocab: Some(Vocab::chars_of("abc ")),
    }
    .save(&model)
    .unwrap();
    let corpus = dir.path().join("c.txt");
    std::fs::write(&corpus, "abc ".repeat(10)).unwrap();
    let (m, c) = (model.to_str().unwrap(), corpus.to_str().unwrap());
    fails_with(
        &["eval", "--model", m, "--corpus", c],
        "bidirectional",
        true,
    );
    fails_with(
        &["sample", "--model", m, "--length", "5"],
        "bidirectional",
        true,
    );
}

#[test]
fn a_model_without_biases_trains_resumes_and_saves_no_bias_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = pairs_file(dir.path());
    let out = dir.path().join("run");
    let out = out.to_str().unwrap();
    for cell in ["rnn", "gru", "lstm"] {
        ok(&[
            "train",
            "--pairs",
            &pairs,
            "--input",
            "class",
            "--output",
            "class",
            "--cell",
            cell,
            "--no-bias",
            "--hidden",
            "6",
            "--steps",
            "3",
            "--device",
            "cpu",
            "--out",
            out,
            "--force",
        ]);
        ok(&["train", "--resume", out, "--steps", "5", "--device", "cpu"]);
        let ckpt = Checkpoint::load(&std::path::Path::new(out).join("model.safetensors")).unwrap();
        assert!(!ckpt.config.bias);
        let layout = ParamLayout::new(&ckpt.config).unwrap();
        assert!(
            layout.specs().iter().all(|s| !s.name.contains("bias_")),
            "{cell}"
        );
        assert!(layout.get("out.bias").is_some());
    }
}
