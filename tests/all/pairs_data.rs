//! Pairs files and their batches: malformed files are refused with the line and the field;
//! padded batches from the batcher give exactly the loss and gradients of the pairs run one by
//! one; the batch order is seeded and a saved position continues it exactly; the example tasks
//! are deterministic and say what they claim.

use rand::RngExt;
use unroll::data::TrainBatches;
use unroll::data::pairs::{Expect, PairBatches, Pairs, StepKind};
use unroll::data::tasks::{Task, TaskOptions, generate};
use unroll::engine::Engine;
use unroll::engine::cpu::CpuEngine;
use unroll::model::{Activation, ParamLayout};

use crate::common;

fn expect(kind: StepKind) -> Expect {
    Expect { kind, size: None }
}

fn parse(text: &str, x: StepKind, y: StepKind) -> Result<Pairs, String> {
    Pairs::parse(text.as_bytes(), expect(x), Some(expect(y))).map_err(|e| e.to_string())
}

#[test]
fn malformed_pairs_files_are_refused_with_the_line_and_field() {
    use StepKind::{Binary, Class, Real};
    let good = "{\"x\": [1, 2], \"y\": [0, 1]}\n";
    let cases: &[(&str, StepKind, StepKind, &str)] = &[
        ("", Real, Real, "the file is empty"),
        ("\n  \n\n", Real, Real, "no pairs, only blank lines"),
        (
            "{\"x\": [1, 2], \"y\": [1]",
            Real,
            Real,
            "line 1: invalid JSON",
        ),
        ("[1, 2]", Real, Real, "line 1: expected an object"),
        (
            "{\"y\": [1]}",
            Real,
            Real,
            "line 1: the \"x\" field is missing",
        ),
        (
            "{\"x\": [1]}",
            Real,
            Real,
            "line 1: the \"y\" field is missing",
        ),
        (
            "{\"x\": 3, \"y\": [1]}",
            Real,
            Real,
            "line 1: \"x\" must be an array",
        ),
        (
            "{\"x\": [], \"y\": []}",
            Real,
            Real,
            "line 1: \"x\" is empty",
        ),
        (
            "{\"x\": [1, 2], \"y\": [1]}",
            Real,
            Real,
            "x has 2 time steps but y has 1",
        ),
        (
            "{\"x\": [1, \"a\"], \"y\": [1, 2]}",
            Real,
            Real,
            "line 1: x[1] is a string, not a number",
        ),
        (
            "{\"x\": [[1, 2], [3]], \"y\": [1, 2]}",
            Real,
            Real,
            "line 1: x[1] has 1 number, but the steps before",
        ),
        (
            "{\"x\": [[1, null]], \"y\": [1]}",
            Real,
            Real,
            "line 1: x[0][1] is null, not a number",
        ),
        (
            "{\"x\": [[]], \"y\": [1]}",
            Real,
            Real,
            "line 1: x[0] is an empty vector",
        ),
        (
            "{\"x\": [1e39], \"y\": [1]}",
            Real,
            Real,
            "line 1: x[0] = 1e+39 does not fit in a 32-bit float",
        ),
        (
            "{\"x\": [1.5], \"y\": [1]}",
            Class,
            Class,
            "line 1: x[0] = 1.5 is not a class id",
        ),
        (
            "{\"x\": [-1], \"y\": [1]}",
            Class,
            Class,
            "line 1: x[0] = -1 is not a class id",
        ),
        (
            "{\"x\": [[1]], \"y\": [1]}",
            Class,
            Class,
            "x[0] is an array, but class ids are single integers",
        ),
        (
            "{\"x\": [1], \"y\": [2]}",
            Real,
            Binary,
            "line 1: y[0] = 2 is not in [0, 1]",
        ),
        (
            "{\"x\": [1], \"y\": [0.5]}",
            Real,
            Class,
            "line 1: y[0] = 0.5 is not a class id",
        ),
    ];
    for (text, x, y, needle) in cases {
        let err = parse(text, *x, *y).expect_err(text);
        assert!(err.contains(needle), "{text:?}: {needle:?} not in {err:?}");
    }
    // Later lines: the error names the line of the file (blank lines count), and the size set
    // by an earlier line.
    let text = format!("{good}\n{good}{{\"x\": [[1, 2]], \"y\": [3]}}\n");
    let err = parse(&text, Real, Real).unwrap_err();
    assert!(
        err.contains("line 4: x[0] has 2 numbers, but the steps before it (from line 1) have 1"),
        "{err}"
    );
    // Sizes given by the model (or an option) are enforced with the line.
    let fixed = Expect {
        kind: Class,
        size: Some(2),
    };
    let err = Pairs::parse(good.as_bytes(), fixed, Some(fixed))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 1: x[1] = 2 is outside the 2 classes (ids 0 to 1)"),
        "{err}"
    );
    // Reading a real file names the file, and not UTF-8 is a clear error.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.jsonl");
    std::fs::write(&path, b"{\"x\": [1], \"y\": [1]}\n\xff\xfe\n").unwrap();
    let err = Pairs::read(&path, expect(Real), Some(expect(Real)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("bad.jsonl: line 2: is not UTF-8"), "{err}");
}

#[test]
fn sizes_are_inferred_and_blank_lines_and_other_keys_are_skipped() {
    let text = "{\"x\": [[1, 2], [3, 4]], \"y\": [0, 6], \"id\": \"a\"}\n\n{\"x\": [[0, 0]], \"y\": [2]}\n";
    let p = parse(text, StepKind::Real, StepKind::Class).unwrap();
    assert_eq!((p.input.size, p.output.unwrap().size), (2, 7));
    assert_eq!(p.len(), 2);
    assert_eq!(p.pairs[1].line, 3);
    assert_eq!(p.pairs[0].x, [1.0, 2.0, 3.0, 4.0]);
    // Without y (prediction inputs), a y is not read.
    let x_only = Pairs::parse(text.as_bytes(), expect(StepKind::Real), None).unwrap();
    assert!(x_only.output.is_none() && x_only.pairs[0].y.is_empty());
}

/// A pairs file of `n` random pairs of lengths 1..=7 for the given kinds (sizes 3 in, 2 out).
fn random_pairs(rng: &mut rand_chacha::ChaCha8Rng, n: usize, x: StepKind, y: StepKind) -> Pairs {
    let mut text = String::new();
    let step = |rng: &mut rand_chacha::ChaCha8Rng, kind: StepKind, size: usize| match kind {
        StepKind::Class => rng.random_range(0..size).to_string(),
        StepKind::Real => format!(
            "[{}]",
            common::uniform(rng, size, 1.0)
                .iter()
                .map(f32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ),
        StepKind::Binary => format!(
            "[{}]",
            (0..size)
                .map(|_| rng.random_range(0..2).to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
    };
    for _ in 0..n {
        let len = rng.random_range(1..=7);
        let xs: Vec<String> = (0..len).map(|_| step(rng, x, 3)).collect();
        let ys: Vec<String> = (0..len).map(|_| step(rng, y, 2)).collect();
        text.push_str(&format!(
            "{{\"x\":[{}],\"y\":[{}]}}\n",
            xs.join(","),
            ys.join(",")
        ));
    }
    let sized = |kind, size| Expect {
        kind,
        size: Some(size),
    };
    Pairs::parse(text.as_bytes(), sized(x, 3), Some(sized(y, 2))).unwrap()
}

#[test]
fn batcher_batches_give_the_loss_and_gradients_of_pairs_run_one_by_one() {
    use StepKind::{Binary, Class, Real};
    for (x, y, layers) in [(Class, Class, 2), (Real, Real, 1), (Real, Binary, 2)] {
        let name = format!("pairs batches {x:?} -> {y:?}");
        let mut rng = common::rng(&name);
        // 11 pairs in batches of 4: the last batch has an empty, fully masked row.
        let data = random_pairs(&mut rng, 11, x, y);
        let cfg = data
            .format()
            .unwrap()
            .model_config(5, layers, Activation::Tanh)
            .unwrap();
        let params = common::uniform(&mut rng, ParamLayout::new(&cfg).unwrap().len(), 0.5);
        let run = |batch: &unroll::engine::Batch| {
            let mut e = CpuEngine::<f64>::new(&cfg, &params).unwrap();
            e.reset_state(batch.rows).unwrap();
            e.upload_batch(batch).unwrap();
            e.zero_grads().unwrap();
            e.forward().unwrap();
            e.backward().unwrap();
            let l = e.loss().unwrap();
            let grads: Vec<f64> = e.grads_native().iter().map(|g| g * l.count).collect();
            (l.sum, l.count, grads)
        };
        let total = |runs: Vec<(f64, f64, Vec<f64>)>| {
            let mut acc = (0.0, 0.0, vec![0.0; params.len()]);
            for (s, c, g) in runs {
                acc.0 += s;
                acc.1 += c;
                acc.2.iter_mut().zip(g).for_each(|(a, g)| *a += g);
            }
            acc
        };
        let mut batcher = PairBatches::new(&data, (0..data.len()).collect(), 4, 7).unwrap();
        assert_eq!(batcher.batches_per_epoch(), 3);
        let batched = total(
            (0..3)
                .map(|_| {
                    let (batch, reset) = batcher.next_batch().unwrap();
                    assert!(reset && batch.rows == 4);
                    run(&batch)
                })
                .collect(),
        );
        let single = total((0..data.len()).map(|i| run(&data.batch(&[i], 1))).collect());
        assert_eq!(
            batched.1,
            data.steps() as f64,
            "{name}: every step counted once"
        );
        assert_eq!(batched.1, single.1);
        common::assert_close(
            &format!("{name} loss"),
            &[batched.0],
            &[single.0],
            1e-12,
            1e-12,
        );
        common::assert_close(
            &format!("{name} gradients"),
            &batched.2,
            &single.2,
            1e-10,
            1e-12,
        );
    }
}

#[test]
fn batch_order_is_seeded_and_a_saved_position_continues_exactly() {
    let mut rng = common::rng("pairs order");
    let data = random_pairs(&mut rng, 50, StepKind::Class, StepKind::Class);
    let (train, val) = data.split(0.2, 3);
    assert_eq!((train.len(), val.len()), (40, 10));
    assert_eq!(data.split(0.2, 3), (train.clone(), val.clone()));
    let draw = |b: &mut PairBatches, n: usize| -> Vec<unroll::engine::Batch> {
        (0..n).map(|_| b.next_batch().unwrap().0).collect()
    };
    let mut a = PairBatches::new(&data, train.clone(), 6, 9).unwrap();
    let mut b = PairBatches::new(&data, train.clone(), 6, 9).unwrap();
    let first = draw(&mut a, 7);
    assert_eq!(first, draw(&mut b, 7));
    // An epoch (7 batches of 6 over 40 pairs) counts every training pair's steps once.
    let steps: usize = train.iter().map(|&i| data.pairs[i].len).sum();
    assert_eq!(first.iter().map(|b| b.count()).sum::<f64>(), steps as f64);
    // Another epoch is another order.
    assert_ne!(a.epoch_order(0), a.epoch_order(1));
    // Seek: a fresh batcher continues from a saved position (mid-epoch) exactly.
    let pos = a.position();
    let mut c = PairBatches::new(&data, train.clone(), 6, 9).unwrap();
    c.seek(&pos).unwrap();
    assert_eq!(draw(&mut a, 10), draw(&mut c, 10));
    // Other data refuses the position.
    let mut other = PairBatches::new(&data, val, 6, 9).unwrap();
    let err = other.seek(&pos).unwrap_err().to_string();
    assert!(err.contains("the training pairs changed"), "{err}");
}

#[test]
fn example_tasks_are_deterministic_and_hold_their_rule() {
    let opts = TaskOptions {
        count: 50,
        seed: 5,
        ..TaskOptions::default()
    };
    for task in [Task::Echo, Task::Sum, Task::Parity, Task::Count] {
        let text = generate(task, &opts).unwrap();
        assert_eq!(text, generate(task, &opts).unwrap());
        assert_ne!(
            text,
            generate(task, &TaskOptions { seed: 6, ..opts }).unwrap()
        );
        let (x, y) = task.kinds();
        let p = parse(&text, x, y).unwrap();
        assert_eq!(p.len(), 50);
        for pair in &p.pairs {
            assert!((5..=20).contains(&pair.len));
            let mut acc = 0.0f32;
            for t in 0..pair.len {
                let (xt, yt) = (pair.x[t], pair.y[t]);
                let want = match task {
                    Task::Echo => {
                        if t < 3 {
                            0.0
                        } else {
                            pair.x[t - 3]
                        }
                    }
                    Task::Sum => {
                        acc += xt;
                        acc
                    }
                    Task::Parity => {
                        acc = (acc + xt) % 2.0;
                        acc
                    }
                    Task::Count => {
                        acc += f32::from(xt == 0.0);
                        acc
                    }
                };
                assert!(
                    (yt - want).abs() < 1e-3,
                    "{task:?} step {t}: {yt} vs {want}"
                );
            }
        }
    }
}

#[test]
fn mutated_pairs_files_never_panic_the_reader() {
    let mut rng = common::rng("pairs fuzz");
    let good = concat!(
        "{\"x\": [[0.5, 1], [2, -3e2]], \"y\": [1, 0]}\n",
        "{\"x\": [[1, 2]], \"y\": [2], \"id\": \"a\"}\n",
        "\n",
        "{\"y\": [0, 0, 1], \"x\": [[0, 0], [1e-3, 4], [5, 6]]}\n",
    )
    .as_bytes()
    .to_vec();
    let alphabet = b"{}[],:\"xy0123456789.-e \n";
    let (mut refused, mut read) = (0, 0);
    for _ in 0..3000 {
        let mut bytes = good.clone();
        for _ in 0..rng.random_range(1..5) {
            let i = rng.random_range(0..=bytes.len());
            match rng.random_range(0..3) {
                0 if i < bytes.len() => bytes[i] = alphabet[rng.random_range(0..alphabet.len())],
                1 if i < bytes.len() => {
                    bytes.remove(i);
                }
                _ => bytes.insert(i, alphabet[rng.random_range(0..alphabet.len())]),
            }
        }
        let sides = [expect(StepKind::Real), expect(StepKind::Class)];
        let result = std::panic::catch_unwind(|| Pairs::parse(&bytes, sides[0], Some(sides[1])));
        match result {
            Err(_) => panic!(
                "the reader panicked on {:?}",
                String::from_utf8_lossy(&bytes)
            ),
            Ok(Err(e)) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("line") || msg.contains("empty"),
                    "no line in: {msg}"
                );
                refused += 1;
            }
            Ok(Ok(p)) => {
                assert!(
                    p.pairs
                        .iter()
                        .all(|q| q.len > 0 && q.x.iter().all(|v| v.is_finite()))
                );
                read += 1;
            }
        }
    }
    assert!(refused > 500 && read > 0, "refused {refused}, read {read}");
}
