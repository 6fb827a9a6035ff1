//! Bounded validation: the windows, lines and pairs a periodic evaluation scores are a fixed set
//! spread over the whole validation part, the same at every evaluation and across a resume;
//! `--val-tokens all` (or a bound above the part's size) is the full pass, bit for bit.

use std::path::Path;
use std::process::Command;

use rand::RngExt;
use unroll::data::corpus::{Corpus, CorpusText, Tokens};
use unroll::data::lines::Lines;
use unroll::data::lm::{EvalBatches, Segment, StreamEval};
use unroll::data::pairs::{Expect, PairEval, Pairs, StepKind};
use unroll::data::vocab::{Vocab, VocabKind};
use unroll::data::{EvalSet, spread};
use unroll::engine::Batch;
use unroll::engine::cpu::CpuEngine;
use unroll::model::{ModelConfig, ParamLayout, init_params};
use unroll::train::trainer::{eval_rows, evaluate};

use crate::common;

fn all_batches(set: &dyn EvalSet) -> Vec<Batch> {
    set.batches().unwrap().collect()
}

/// The predictions (input positions) each row of `batches` scores, in order.
fn scored_inputs(tokens: &[u32], rows: usize, batches: Vec<Batch>) -> Vec<Vec<u32>> {
    let mut seen = vec![Vec::new(); rows];
    for batch in batches {
        let unroll::engine::Inputs::Tokens(x) = &batch.inputs else {
            panic!("tokens")
        };
        let mask = batch.mask.as_ref().unwrap();
        for (r, &m) in mask.iter().enumerate() {
            if m == 1.0 {
                seen[r % rows].push(x[r]);
            }
        }
    }
    assert!(tokens.len() > 1);
    seen
}

#[test]
fn bounded_stream_windows_are_fixed_disjoint_and_spread_over_the_whole_part() {
    let mut rng = common::rng("spread windows");
    for _ in 0..40 {
        let n = rng.random_range(3..5000);
        let rows = rng.random_range(1..40);
        let steps = rng.random_range(1..30);
        let limit = rng.random_range(1..n);
        let tokens: Vec<u32> = (0..n as u32).collect();
        let preds = n - 1;
        let a = EvalBatches::bounded(&tokens, rows, steps, Some(limit)).unwrap();
        let segments: Vec<Segment> = a.segments().to_vec();
        let b_rows = a.rows();
        let first = scored_inputs(&tokens, b_rows, a.collect());
        let again = EvalBatches::bounded(&tokens, rows, steps, Some(limit)).unwrap();
        assert_eq!(
            first,
            scored_inputs(&tokens, b_rows, again.collect()),
            "deterministic"
        );
        let total: usize = first.iter().map(Vec::len).sum();
        assert_eq!(total, limit.min(preds), "n {n} rows {rows} limit {limit}");
        for (b, (row, seg)) in first.iter().zip(&segments).enumerate() {
            let want: Vec<u32> = (seg.start..seg.start + seg.len).map(|i| i as u32).collect();
            assert_eq!(row, &want, "row {b} scores its contiguous segment");
            if b > 0 {
                let prev = segments[b - 1];
                assert!(prev.start + prev.len <= seg.start, "disjoint");
            }
            // Row b starts within one segment of b * preds / rows.
            let even = b * preds / b_rows;
            assert!(
                seg.start.abs_diff(even) <= limit.div_ceil(b_rows) + 1,
                "row {b} at {} is near {even}",
                seg.start
            );
        }
        let last = segments[b_rows - 1];
        assert!(last.start + last.len <= preds);
        if limit >= b_rows * 4 {
            // The segments reach the last part of the sequence, not only its beginning.
            assert!(
                last.start + 3 >= preds - preds / b_rows,
                "spread to the end"
            );
        }
    }
}

#[test]
fn a_bound_at_or_above_the_part_is_exactly_the_full_pass() {
    let mut rng = common::rng("bounded full");
    for _ in 0..20 {
        let n = rng.random_range(2..400);
        let rows = rng.random_range(1..12);
        let steps = rng.random_range(1..20);
        let tokens: Vec<u32> = (0..n as u32).collect();
        let full: Vec<Batch> = EvalBatches::new(&tokens, rows, steps).unwrap().collect();
        for limit in [None, Some(n - 1), Some(n), Some(usize::MAX)] {
            let bounded: Vec<Batch> = EvalBatches::bounded(&tokens, rows, steps, limit)
                .unwrap()
                .collect();
            assert_eq!(bounded, full, "limit {limit:?}");
        }
    }
}

#[test]
fn all_evaluates_to_the_full_pass_bit_for_bit() {
    let mut rng = common::rng("bounded loss");
    let text = crate::training::generated_corpus(&mut rng, 200);
    let corpus = Corpus::from_string(text, VocabKind::Chars).unwrap();
    let cfg = ModelConfig::language_model(corpus.vocab().len(), 16, 1);
    let params = init_params(&cfg, &ParamLayout::new(&cfg).unwrap(), 3);
    let mut engine = CpuEngine::<f32>::new(&cfg, &params).unwrap();
    let set = |limit| StreamEval {
        tokens: &corpus,
        rows: 8,
        steps: 16,
        limit,
    };
    let full = evaluate(&mut engine, &set(None)).unwrap();
    let bits = |l: unroll::engine::LossStats| (l.sum.to_bits(), l.count.to_bits());
    let capped = evaluate(&mut engine, &set(Some(corpus.len() * 2))).unwrap();
    assert_eq!(bits(capped), bits(full));
    assert!(set(Some(corpus.len() * 2)).is_whole());
    let part = set(Some(500));
    assert!(!part.is_whole());
    let a = evaluate(&mut engine, &part).unwrap();
    let b = evaluate(&mut engine, &part).unwrap();
    assert_eq!(bits(a), bits(b), "the same windows at every evaluation");
    assert_eq!(a.count, 500.0);
}

#[test]
fn the_eval_batch_is_larger_than_training_within_the_output_budget() {
    let chars = ModelConfig::language_model(65, 128, 1);
    assert_eq!(eval_rows(&chars, 32, 64), 256);
    assert_eq!(eval_rows(&chars, 512, 64), 512, "never fewer than training");
    let words = ModelConfig::language_model(50_000, 128, 1);
    assert_eq!(eval_rows(&words, 4, 64), (1 << 24) / (64 * 50_000));
    assert_eq!(eval_rows(&words, 32, 64), 32);
}

#[test]
fn spread_takes_every_kth_item() {
    assert_eq!(spread(10, Some(5)), [0, 2, 4, 6, 8]);
    assert_eq!(spread(10, Some(3)), [0, 3, 6]);
    assert_eq!(spread(4, Some(9)), [0, 1, 2, 3]);
    assert_eq!(spread(4, None), [0, 1, 2, 3]);
}

fn lines_corpus(text: &str) -> Corpus {
    let vocab = Vocab::chars_of(text).for_lines();
    Corpus::from_text(
        CorpusText::Owned(text.as_bytes().to_vec()),
        "lines",
        VocabKind::Chars,
        Some(vocab),
    )
    .unwrap()
}

/// The first input after the start token of every scored line piece that starts a line.
fn line_heads(batches: Vec<Batch>, start: u32) -> Vec<u32> {
    let mut heads = Vec::new();
    for batch in batches {
        let (unroll::engine::Inputs::Tokens(x), Some(mask)) = (&batch.inputs, &batch.mask) else {
            panic!("masked tokens")
        };
        for b in 0..batch.rows {
            if mask[b] == 1.0 && x[b] == start {
                heads.push(x[batch.rows + b]);
            }
        }
    }
    heads.sort_unstable();
    heads
}

#[test]
fn bounded_lines_are_every_kth_line_and_the_bound_above_them_is_the_full_pass() {
    // 40 lines, each starting with its own character.
    let heads: Vec<char> = ('A'..='Z').chain('a'..='n').collect();
    let text: String = heads.iter().map(|c| format!("{c}xy{c}z\n")).collect();
    let corpus = lines_corpus(&text);
    let start = corpus.vocab().start_token().unwrap();
    let lines = || Lines::new(&corpus, 0..text.len(), 3, 4).unwrap();
    let full = all_batches(&lines());
    for limit in [None, Some(40), Some(1000)] {
        let set = lines().spread(limit);
        assert!(set.is_whole());
        assert_eq!(all_batches(&set), full, "{limit:?}");
        assert_eq!(set.sequences().map(|s| s.0), Some(40));
    }
    let set = lines().spread(Some(10));
    assert!(!set.is_whole());
    assert_eq!(set.sequences().map(|s| s.0), Some(10));
    let scored = line_heads(all_batches(&set), start);
    let mut want: Vec<u32> = (0..10)
        .map(|i| corpus.vocab().encode(&heads[i * 4].to_string()).0[0])
        .collect();
    want.sort_unstable();
    assert_eq!(scored, want, "every 4th line, the last quarter included");
    assert_eq!(line_heads(all_batches(&set), start), scored, "fixed");
}

#[test]
fn bounded_pairs_are_every_kth_pair_and_the_bound_above_them_is_the_full_pass() {
    let text: String = (0..30)
        .map(|i| format!("{{\"x\": [{}], \"y\": [{}]}}\n", i % 7, i % 3))
        .collect();
    let expect = |kind| Expect { kind, size: None };
    let data = Pairs::parse(
        text.as_bytes(),
        expect(StepKind::Class),
        Some(expect(StepKind::Class)),
    )
    .unwrap();
    let indices: Vec<usize> = (0..30).collect();
    let full = PairEval::new(&data, indices.clone(), 4).unwrap();
    let capped = PairEval::spread(&data, indices.clone(), 4, Some(30)).unwrap();
    assert!(capped.is_whole());
    assert_eq!(all_batches(&capped), all_batches(&full));
    let part = PairEval::spread(&data, indices, 4, Some(6)).unwrap();
    assert!(!part.is_whole());
    let mut chosen: Vec<usize> = part.batch_indices().concat();
    chosen.sort_unstable();
    assert_eq!(chosen, [0, 5, 10, 15, 20, 25]);
    assert_eq!(part.sequences().map(|s| s.0), Some(6));
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_unroll"))
}

fn train(args: &[&str]) -> String {
    let out = bin().arg("train").args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "unroll train {args:?}:\n{stderr}");
    stderr
}

fn evaluations(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r.get("val_loss").is_some())
        .collect()
}

const RUN: [&str; 12] = [
    "--hidden",
    "12",
    "--batch",
    "4",
    "--seq-len",
    "8",
    "--eval-every",
    "3",
    "--sample",
    "0",
    "--device",
    "cpu",
];

#[test]
fn the_bound_is_recorded_kept_across_a_resume_and_the_end_scores_everything() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = common::rng("val cli");
    let corpus = dir.path().join("corpus.txt");
    std::fs::write(&corpus, crate::training::generated_corpus(&mut rng, 300)).unwrap();
    let corpus = corpus.to_str().unwrap();
    let run = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let args = [
            &RUN[..],
            &["--corpus", corpus, "--out", out.to_str().unwrap()],
            extra,
        ]
        .concat();
        (train(&args), out)
    };
    let (log, whole) = run("whole", &["--steps", "9", "--val-tokens", "200"]);
    assert!(log.contains("(200 tokens in "), "{log}");
    assert!(
        log.contains("step       9  final validation loss "),
        "{log}"
    );
    let evals = evaluations(&whole);
    assert_eq!(evals.len(), 4, "steps 3, 6, 9 and the closing full pass");
    for e in &evals[..3] {
        assert_eq!(e["val_tokens"], 200);
    }
    let full_count = evals[3]["val_tokens"].as_u64().unwrap();
    assert!(full_count > 200);
    assert_eq!(evals[3]["val_final"], true);

    let (_, half) = run("half", &["--steps", "5", "--val-tokens", "200"]);
    let refused = bin()
        .args([
            "train",
            "--resume",
            half.to_str().unwrap(),
            "--val-tokens",
            "all",
        ])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2), "a resume keeps the bound");
    train(&[
        "--resume",
        half.to_str().unwrap(),
        "--steps",
        "9",
        "--sample",
        "0",
        "--device",
        "cpu",
    ]);
    let loss = |evals: &[serde_json::Value]| -> Vec<(u64, u64)> {
        evals
            .iter()
            .map(|e| {
                (
                    e["step"].as_u64().unwrap(),
                    e["val_loss"].as_f64().unwrap().to_bits(),
                )
            })
            .collect()
    };
    // The half run also evaluated at its end, step 5; the evaluations of steps 3, 6 and 9
    // (and the closing pass) match the uninterrupted run's.
    let resumed: Vec<(u64, u64)> = loss(&evaluations(&half))
        .into_iter()
        .filter(|(step, _)| step % 3 == 0)
        .collect();
    assert_eq!(
        resumed,
        loss(&evals),
        "the same windows before and after the resume"
    );

    // A closing bound equal to the periodic one: the last periodic evaluation closes the run.
    let (_, same) = run(
        "same",
        &[
            "--steps",
            "6",
            "--val-tokens",
            "200",
            "--final-val-tokens",
            "200",
        ],
    );
    let same = evaluations(&same);
    assert_eq!(same.len(), 2);
    assert!(
        same.iter()
            .all(|e| e["val_tokens"] == 200 && e.get("val_final").is_none())
    );

    // `all`, and a bound above the part, score everything at every evaluation.
    let (_, all) = run("all", &["--steps", "6", "--val-tokens", "all"]);
    let (_, above) = run("above", &["--steps", "6", "--val-tokens", "100000000"]);
    let (all, above) = (evaluations(&all), evaluations(&above));
    assert_eq!(
        all.len(),
        2,
        "no second pass when the evaluations score everything"
    );
    assert_eq!(loss(&all), loss(&above));
    assert_eq!(all[1]["val_tokens"].as_u64(), Some(full_count));
}
