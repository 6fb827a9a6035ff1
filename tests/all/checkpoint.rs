//! Checkpoints: bit-exact round trips, PyTorch names and shapes, and clear refusals of corrupted
//! or mismatched files.

use std::path::Path;

use rand::RngExt;

use unroll::data::vocab::Vocab;
use unroll::model::{Activation, Checkpoint, InputKind, ModelConfig, OutputKind, ParamLayout};

use crate::common;

fn random_checkpoint(name: &str) -> Checkpoint {
    let mut rng = common::rng(name);
    let config = common::config(
        Activation::Relu,
        InputKind::OneHot,
        OutputKind::Softmax,
        (7, 5, 7, 2),
    );
    let layout = ParamLayout::new(&config).unwrap();
    let mut params = common::uniform(&mut rng, layout.len(), 3.0);
    // Values whose bits a lossy path would change.
    params[0] = -0.0;
    params[1] = f32::MIN_POSITIVE / 8.0;
    params[2] = f32::MAX;
    Checkpoint {
        config,
        // Seven characters, one per input of the model.
        vocab: Some(Vocab::chars_of("wörld, ")),
        params,
    }
}

fn error_of(bytes: &[u8]) -> String {
    Checkpoint::from_bytes(bytes, Path::new("x.safetensors"))
        .expect_err("the checkpoint must be refused")
        .to_string()
}

#[test]
fn checkpoint_round_trip_is_bit_exact() {
    let ckpt = random_checkpoint("round trip");
    let dir = tempfile::tempdir().unwrap();
    let path = ckpt.save_dir(dir.path()).unwrap();
    let back = Checkpoint::load(dir.path()).unwrap();
    assert_eq!(back.config, ckpt.config);
    assert_eq!(back.vocab, ckpt.vocab);
    let a: Vec<u32> = ckpt.params.iter().map(|v| v.to_bits()).collect();
    let b: Vec<u32> = back.params.iter().map(|v| v.to_bits()).collect();
    assert_eq!(a, b);
    // Written through a temporary file that is gone afterwards.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("model.safetensors")]);
    assert_eq!(Checkpoint::load(&path).unwrap(), back);
}

#[test]
fn checkpoint_uses_pytorch_names_and_shapes() {
    let ckpt = random_checkpoint("names");
    let dir = tempfile::tempdir().unwrap();
    let path = ckpt.save_dir(dir.path()).unwrap();
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<(String, Vec<usize>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.shape().to_vec()))
        .collect();
    names.sort();
    let want = vec![
        ("out.bias".to_string(), vec![7]),
        ("out.weight".to_string(), vec![7, 5]),
        ("rnn.bias_hh_l0".to_string(), vec![5]),
        ("rnn.bias_hh_l1".to_string(), vec![5]),
        ("rnn.bias_ih_l0".to_string(), vec![5]),
        ("rnn.bias_ih_l1".to_string(), vec![5]),
        ("rnn.weight_hh_l0".to_string(), vec![5, 5]),
        ("rnn.weight_hh_l1".to_string(), vec![5, 5]),
        ("rnn.weight_ih_l0".to_string(), vec![5, 7]),
        ("rnn.weight_ih_l1".to_string(), vec![5, 5]),
    ];
    assert_eq!(names, want);
    // The layout's offsets address the same values the file holds under each name.
    let layout = ParamLayout::new(&ckpt.config).unwrap();
    let spec = layout.get("rnn.weight_hh_l1").unwrap();
    let t = st.tensor("rnn.weight_hh_l1").unwrap();
    let first = f32::from_le_bytes(t.data()[0..4].try_into().unwrap());
    assert_eq!(first.to_bits(), ckpt.params[spec.offset].to_bits());
}

#[test]
fn corrupted_checkpoints_are_refused_with_a_reason() {
    let ckpt = random_checkpoint("corrupt");
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(ckpt.save_dir(dir.path()).unwrap()).unwrap();
    assert!(error_of(&bytes[..bytes.len() - 3]).contains("not a valid safetensors file"));
    assert!(error_of(&bytes[..5]).contains("not a valid safetensors file"));
    assert!(error_of(b"hello, this is no checkpoint at all").contains("not a valid safetensors"));
    let mut flipped = bytes.clone();
    flipped[10] ^= 0x55;
    let msg = error_of(&flipped);
    assert!(msg.contains("x.safetensors"), "{msg}");
    // A NaN smuggled into the data is refused.
    let mut nan = bytes.clone();
    let at = nan.len() - 4;
    nan[at..].copy_from_slice(&f32::NAN.to_le_bytes());
    assert!(error_of(&nan).contains("not finite"));
    // A missing file names the path.
    let err = Checkpoint::load(&dir.path().join("nope"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope"), "{err}");
}

fn serialize(tensors: Vec<(&str, Vec<usize>)>, meta: Option<Vec<(&str, String)>>) -> Vec<u8> {
    let datas: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, s)| vec![0u8; s.iter().product::<usize>() * 4])
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .zip(&datas)
        .map(|((n, s), d)| {
            (
                n.to_string(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                    .unwrap(),
            )
        })
        .collect();
    let meta = meta.map(|m| m.into_iter().map(|(k, v)| (k.to_string(), v)).collect());
    safetensors::serialize(views, meta).unwrap()
}

#[test]
fn mismatched_checkpoints_are_refused_naming_the_tensor() {
    let config = ModelConfig::language_model(3, 2, 1);
    let cfg_json = serde_json::to_string(&config).unwrap();
    let meta = || {
        Some(vec![
            ("format", "unroll/1".to_string()),
            ("config", cfg_json.clone()),
        ])
    };
    let good = vec![
        ("rnn.weight_ih_l0", vec![2, 3]),
        ("rnn.weight_hh_l0", vec![2, 2]),
        ("rnn.bias_ih_l0", vec![2]),
        ("rnn.bias_hh_l0", vec![2]),
        ("out.weight", vec![3, 2]),
        ("out.bias", vec![3]),
    ];
    Checkpoint::from_bytes(&serialize(good.clone(), meta()), Path::new("ok")).unwrap();

    let mut wrong_shape = good.clone();
    wrong_shape[1].1 = vec![2, 3];
    let msg = error_of(&serialize(wrong_shape, meta()));
    assert!(
        msg.contains("rnn.weight_hh_l0") && msg.contains("[2, 3]"),
        "{msg}"
    );

    let msg = error_of(&serialize(good[1..].to_vec(), meta()));
    assert!(msg.contains("rnn.weight_ih_l0 is missing"), "{msg}");

    let mut extra = good.clone();
    extra.push(("rnn.weight_ih_l1", vec![2, 2]));
    assert!(error_of(&serialize(extra, meta())).contains("unexpected tensor rnn.weight_ih_l1"));

    assert!(error_of(&serialize(good.clone(), None)).contains("not an unroll checkpoint"));
    let bad_cfg = Some(vec![
        ("format", "unroll/1".to_string()),
        ("config", "{\"cell\":\"lstmx\"}".to_string()),
    ]);
    assert!(error_of(&serialize(good.clone(), bad_cfg)).contains("model config is invalid"));

    let ckpt = Checkpoint::from_bytes(&serialize(good, meta()), Path::new("ok")).unwrap();
    let other = ModelConfig::language_model(3, 4, 1);
    let msg = ckpt
        .check_config(&other, Path::new("m"))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("hidden_size: checkpoint has 2, expected 4"),
        "{msg}"
    );
}

#[test]
fn mutated_checkpoints_never_panic_the_loader() {
    let ckpt = random_checkpoint("fuzz");
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(ckpt.save_dir(dir.path()).unwrap()).unwrap();
    let mut rng = common::rng("fuzz mutations");
    let mut refused = 0;
    for _ in 0..3000 {
        let mut bytes = good.clone();
        for _ in 0..rng.random_range(1..6) {
            match rng.random_range(0..4) {
                0 => {
                    let i = rng.random_range(0..bytes.len());
                    bytes[i] = rng.random();
                }
                1 => bytes.truncate(rng.random_range(0..bytes.len().max(1))),
                2 => {
                    let i = rng.random_range(0..=bytes.len());
                    bytes.insert(i, rng.random());
                }
                _ => {
                    // Mutate the header's length prefix or a digit inside the JSON header.
                    let i = rng.random_range(0..bytes.len().min(400));
                    bytes[i] = if bytes[i].is_ascii_digit() {
                        b'0' + rng.random_range(0..10)
                    } else {
                        bytes[i] ^ 1
                    };
                }
            }
            if bytes.is_empty() {
                break;
            }
        }
        let result = std::panic::catch_unwind(|| Checkpoint::from_bytes(&bytes, Path::new("m")));
        match result {
            Err(_) => panic!("the loader panicked on a mutated file"),
            Ok(Err(_)) => refused += 1,
            Ok(Ok(c)) => assert!(c.params.iter().all(|v| v.is_finite())),
        }
    }
    assert!(refused > 1000, "most mutations are refused ({refused})");
}
