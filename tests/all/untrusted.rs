//! Files that unroll did not write are read with a bound: a checkpoint or training state that
//! is a device, a pipe or longer or shorter than its header says, a pairs file of random bytes
//! or zeros, a vocabulary whose size does not match its model. Each is refused with a message
//! and exit status 1 after a bounded read; every run is under an address-space limit, so a
//! read that does not stop shows as a failing test (an abort), never as a machine out of
//! memory. A pairs file that starts with a UTF-8 byte order mark is read.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use unroll::data::vocab::Vocab;
use unroll::model::{Checkpoint, ModelConfig, ParamLayout};

use crate::common;

/// The address space each run may take: 4 GiB.
const LIMIT_KB: u64 = 4 << 20;
/// The address space of the vocabulary's run: 384 MiB.
const VOCAB_LIMIT_KB: u64 = 384 << 10;

/// Runs unroll on `args` under an address-space limit of `limit_kb` and a minute's timeout.
fn unroll_limited(limit_kb: u64, args: &[&str]) -> Output {
    let script = format!("ulimit -v {limit_kb}; exec timeout 60 \"$0\" \"$@\"");
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_unroll"))
        .args(args)
        .output()
        .expect("sh runs")
}

/// Asserts that `out` is a clean failure: exit status 1 (not a signal, not the timeout's 124),
/// no panic, and a message containing every one of `needles`.
fn refused(what: &str, out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: {:?}\n{err}",
        out.status
    );
    assert!(!err.contains("panicked"), "{what} panicked:\n{err}");
    for n in needles {
        assert!(err.contains(n), "{what}: {n:?} not in:\n{err}");
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A small pairs file (echo of 4 symbols).
fn pairs_file(dir: &Path) -> PathBuf {
    let file = dir.join("pairs.jsonl");
    let line = "{\"x\": [1, 2, 3], \"y\": [1, 2, 3]}\n";
    std::fs::write(&file, line.repeat(12)).unwrap();
    file
}

/// Trains a two-step pairs model into `dir/run` and returns the run directory.
fn trained(dir: &Path, pairs: &Path) -> PathBuf {
    let run = dir.join("run");
    let out = unroll_limited(
        LIMIT_KB,
        &[
            "train",
            "--pairs",
            path(pairs),
            "--input",
            "class",
            "--output",
            "class",
            "--steps",
            "2",
            "--hidden",
            "4",
            "--device",
            "cpu",
            "--out",
            path(&run),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    run
}

fn mkfifo(p: &Path) {
    let ok = Command::new("mkfifo").arg(p).status().unwrap().success();
    assert!(ok, "mkfifo {}", p.display());
}

#[test]
fn checkpoints_and_states_that_are_not_regular_files_or_disagree_with_their_header_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = pairs_file(dir.path());
    let run = trained(dir.path(), &pairs);
    let model = std::fs::read(run.join("model.safetensors")).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let truncated = write("truncated.safetensors", &model[..model.len() - 4]);
    let longer = write("longer.safetensors", &[&model[..], b"more"].concat());
    let fifo = dir.path().join("fifo.safetensors");
    mkfifo(&fifo);
    // A resumable run whose state is a pipe: opening it would wait for a writer.
    let piped = dir.path().join("piped");
    std::fs::create_dir(&piped).unwrap();
    for entry in std::fs::read_dir(&run).unwrap() {
        let from = entry.unwrap().path();
        std::fs::copy(&from, piped.join(from.file_name().unwrap())).unwrap();
    }
    std::fs::remove_file(piped.join("state.safetensors")).unwrap();
    mkfifo(&piped.join("state.safetensors"));
    let p = path(&pairs);
    let not_regular = "is not a regular file";
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["predict", "--model", "/dev/zero", "--inputs", p],
            vec!["/dev/zero", not_regular],
        ),
        (vec!["sample", "--model", "/dev/zero"], vec![not_regular]),
        (
            vec!["eval", "--model", "/dev/zero", "--corpus", p],
            vec![not_regular],
        ),
        (
            vec![
                "train",
                "--pairs",
                p,
                "--input",
                "class",
                "--output",
                "class",
                "--init",
                "/dev/zero",
            ],
            vec![not_regular],
        ),
        (
            vec!["predict", "--model", path(&fifo), "--inputs", p],
            vec![not_regular],
        ),
        (
            vec!["train", "--resume", path(&piped), "--steps", "4"],
            vec!["state.safetensors", not_regular],
        ),
        (
            vec!["predict", "--model", path(&truncated), "--inputs", p],
            vec!["not a valid safetensors file", "but its header describes"],
        ),
        (
            vec!["predict", "--model", path(&longer), "--inputs", p],
            vec!["not a valid safetensors file", "but its header describes"],
        ),
    ];
    let never = dir.path().join("never");
    for (args, needles) in &cases {
        let mut args = args.clone();
        if args[0] == "train" && !args.contains(&"--resume") {
            args.extend(["--device", "cpu", "--out", path(&never)]);
        }
        let out = unroll_limited(LIMIT_KB, &args);
        refused(&format!("{args:?}"), &out, needles);
    }
    assert!(
        !dir.path().join("never").exists(),
        "a refused run wrote its directory"
    );
}

#[test]
fn pairs_files_of_random_bytes_or_zeros_are_refused_at_their_first_line() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = pairs_file(dir.path());
    let run = trained(dir.path(), &pairs);
    let out_dir = dir.path().join("never");
    for file in ["/dev/urandom", "/dev/zero"] {
        let train = [
            "train",
            "--pairs",
            file,
            "--input",
            "class",
            "--output",
            "class",
            "--device",
            "cpu",
            "--out",
            path(&out_dir),
        ];
        let inputs = [
            "predict",
            "--model",
            path(&run),
            "--inputs",
            file,
            "--device",
            "cpu",
        ];
        let with_y = [
            "predict",
            "--model",
            path(&run),
            "--pairs",
            file,
            "--device",
            "cpu",
        ];
        for args in [&train[..], &inputs, &with_y] {
            let out = unroll_limited(LIMIT_KB, args);
            refused(&format!("{args:?}"), &out, &[file, "line "]);
            // Random bytes are not UTF-8 (or, rarely, a short line of them is no JSON); zeros
            // cannot open a JSON object.
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("is not UTF-8 text") || err.contains("invalid JSON"),
                "{args:?}: {err}"
            );
        }
    }
    assert!(!out_dir.exists(), "a refused run wrote its directory");
}

#[test]
fn a_pairs_file_that_starts_with_a_byte_order_mark_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let plain = pairs_file(dir.path());
    let text = std::fs::read(&plain).unwrap();
    let bom = dir.path().join("bom.jsonl");
    std::fs::write(&bom, [&b"\xEF\xBB\xBF"[..], &text[..]].concat()).unwrap();
    let run = trained(dir.path(), &bom);
    let predict = |file: &Path| {
        let args = [
            "predict",
            "--model",
            path(&run),
            "--pairs",
            path(file),
            "--device",
            "cpu",
        ];
        let out = unroll_limited(LIMIT_KB, &args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    assert_eq!(predict(&bom), predict(&plain));
    // Only at the start of the file: further on, it is not JSON.
    let inside = dir.path().join("inside.jsonl");
    std::fs::write(&inside, [&text[..], b"\xEF\xBB\xBF", &text].concat()).unwrap();
    let args = [
        "predict",
        "--model",
        path(&run),
        "--pairs",
        path(&inside),
        "--device",
        "cpu",
    ];
    let out = unroll_limited(LIMIT_KB, &args);
    refused("a mark inside the file", &out, &["line 13: invalid JSON"]);
}

/// A checkpoint of `config` whose metadata holds a word vocabulary of `words` tokens, written
/// without building the vocabulary (its JSON is written directly).
fn checkpoint_with_words(dir: &Path, config: &ModelConfig, words: usize) -> PathBuf {
    let small = Checkpoint {
        config: config.clone(),
        vocab: Some(Vocab::chars_of("abcdefg")),
        params: vec![0.1; ParamLayout::new(config).unwrap().len()],
    };
    let path = dir.join("words.safetensors");
    small.save(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta = header.metadata().clone().unwrap();
    let mut vocab = String::from("{\"kind\":\"words\",\"symbols\":[\"<unk>\"");
    for i in 1..words {
        vocab.push_str(&format!(",\"w{i:x}\""));
    }
    vocab.push_str("]}");
    meta.insert("vocab".into(), vocab);
    let tensors: Vec<_> = st.tensors();
    let out = safetensors::serialize(tensors, Some(meta)).unwrap();
    std::fs::write(&path, out).unwrap();
    path
}

#[test]
fn a_vocabulary_of_the_wrong_size_is_refused_before_it_is_built() {
    // Four million words for a model of 7 inputs: a 47 MB header, which built as a vocabulary
    // took over 600 MB (an abort under the limit); counted, it takes no more than the file's
    // own copies. The limit leaves room for those and the binary, not for the vocabulary.
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(
        unroll::model::Activation::Tanh,
        unroll::model::InputKind::OneHot,
        unroll::model::OutputKind::Softmax,
        (7, 4, 7, 1),
    );
    let file = checkpoint_with_words(dir.path(), &config, 4_000_000);
    let args = ["sample", "--model", path(&file), "--device", "cpu"];
    let out = unroll_limited(VOCAB_LIMIT_KB, &args);
    refused(
        "a vocabulary of 4,000,000 words",
        &out,
        &["vocabulary of 4000000 tokens for a model of 7 inputs"],
    );
}

#[test]
fn a_corpus_that_is_a_device_or_a_pipe_is_refused_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("corpus.fifo");
    mkfifo(&fifo);
    let out_dir = dir.path().join("never");
    for corpus in ["/dev/zero", "/dev/urandom", path(&fifo)] {
        let args = [
            "train", "--corpus", corpus, "--steps", "2", "--device", "cpu", "--out",
        ];
        let out = unroll_limited(LIMIT_KB, &[&args[..], &[path(&out_dir)]].concat());
        refused(corpus, &out, &[corpus, "is not a regular file"]);
    }
    assert!(!out_dir.exists(), "a refused run wrote its directory");
}
