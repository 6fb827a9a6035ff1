//! Language-model batches: streams, windows, carried positions, and evaluation that counts every
//! prediction once.

use rand::RngExt;
use unroll::data::lm::{EvalBatches, StreamBatches};
use unroll::data::vocab::Vocab;
use unroll::engine::{Inputs, Targets};

use crate::common;

fn tokens_of(batch: &unroll::engine::Batch) -> (&[u32], &[u32]) {
    match (&batch.inputs, &batch.targets) {
        (Inputs::Tokens(x), Targets::Classes(y)) => (x, y),
        _ => panic!("language-model batches hold tokens"),
    }
}

#[test]
fn first_batch_of_one_stream_is_the_corpus_start() {
    let tokens: Vec<u32> = (0..100).collect();
    let mut batches = StreamBatches::new(tokens.len(), 1, 7).unwrap();
    let (batch, reset) = batches.next_batch(&tokens);
    assert!(reset);
    let (x, y) = tokens_of(&batch);
    assert_eq!(x, &(0..7).collect::<Vec<u32>>()[..]);
    assert_eq!(y, &(1..8).collect::<Vec<u32>>()[..]);
    let (batch, reset) = batches.next_batch(&tokens);
    assert!(!reset);
    assert_eq!(tokens_of(&batch).0, &(7..14).collect::<Vec<u32>>()[..]);
}

#[test]
fn streams_continue_across_windows_and_cover_each_token_once_per_epoch() {
    let mut rng = common::rng("streams");
    let n = rng.random_range(200..400);
    let rows = rng.random_range(1..5);
    let steps = rng.random_range(1..9);
    let tokens: Vec<u32> = (0..n as u32).collect();
    let mut batches = StreamBatches::new(n, rows, steps).unwrap();
    let windows = batches.windows_per_epoch();
    let mut seen = vec![0u32; n];
    let mut last_of_row = vec![None; rows];
    for w in 0..windows {
        let (batch, reset) = batches.next_batch(&tokens);
        assert_eq!(reset, w == 0);
        let (x, y) = tokens_of(&batch);
        for t in 0..steps {
            for b in 0..rows {
                let (xi, yi) = (x[t * rows + b], y[t * rows + b]);
                assert_eq!(yi, xi + 1, "target is the next token");
                if let Some(prev) = last_of_row[b] {
                    assert_eq!(xi, prev + 1, "row {b} continues where it stopped");
                }
                last_of_row[b] = Some(xi);
                seen[xi as usize] += 1;
            }
        }
    }
    assert!(
        seen.iter().all(|&c| c <= 1),
        "no input token is used twice in an epoch"
    );
    let stream_len = n / rows;
    assert_eq!(
        seen.iter().filter(|&&c| c == 1).count(),
        rows * windows * steps
    );
    assert!(
        stream_len - 1 - windows * steps < steps,
        "fewer than T tokens per stream are left over"
    );
    // The next batch starts a new epoch from the beginning.
    let (batch, reset) = batches.next_batch(&tokens);
    assert!(reset);
    assert_eq!(tokens_of(&batch).0[0], 0);
    assert_eq!(batches.position().epoch, 1);
}

#[test]
fn too_short_corpus_is_refused_with_advice() {
    let err = StreamBatches::new(50, 8, 10).unwrap_err().to_string();
    assert!(
        err.contains("--batch") && err.contains("--seq-len"),
        "{err}"
    );
}

#[test]
fn evaluation_counts_every_prediction_exactly_once() {
    let mut rng = common::rng("eval batches");
    for _ in 0..20 {
        let n = rng.random_range(2..300);
        let rows = rng.random_range(1..9);
        let steps = rng.random_range(1..20);
        let tokens: Vec<u32> = (0..n as u32).collect();
        let mut seen = vec![0u32; n];
        let batches = EvalBatches::new(&tokens, rows, steps).unwrap();
        let b_rows = batches.rows();
        let mut last_of_row: Vec<Option<u32>> = vec![None; b_rows];
        for batch in batches {
            let (x, y) = tokens_of(&batch);
            let mask = batch.mask.as_ref().unwrap();
            for r in 0..x.len() {
                if mask[r] == 1.0 {
                    assert_eq!(y[r], x[r] + 1);
                    seen[x[r] as usize] += 1;
                    let b = r % b_rows;
                    if let Some(prev) = last_of_row[b] {
                        assert_eq!(x[r], prev + 1, "streams are contiguous");
                    }
                    last_of_row[b] = Some(x[r]);
                } else {
                    assert_eq!(mask[r], 0.0);
                }
            }
        }
        assert!(
            seen[..n - 1].iter().all(|&c| c == 1),
            "n={n} B={rows} T={steps}: {seen:?}"
        );
        assert_eq!(seen[n - 1], 0);
    }
}

#[test]
fn character_vocabulary_is_sorted_and_round_trips() {
    let text = "zebra, Ärger & 🎉 abc\nzz";
    let vocab = Vocab::chars_of(text);
    let symbols = vocab.chars().unwrap();
    assert!(symbols.windows(2).all(|w| w[0] < w[1]));
    let (ids, unknown) = vocab.encode(text);
    assert_eq!(unknown, 0);
    assert_eq!(vocab.decode(&ids), text);
    let (ids, unknown) = vocab.encode("zq🎉");
    assert_eq!(unknown, 1, "q is not in the vocabulary and is skipped");
    assert_eq!(vocab.decode(&ids), "z🎉");
    assert_eq!(Vocab::from_json(&vocab.to_json()).unwrap(), vocab);
    assert!(Vocab::from_json(r#"{"kind":"chars","symbols":["b","a"]}"#).is_err());
    let lines = Vocab::chars_of("ab").with_line_tokens();
    assert_eq!(
        (lines.len(), lines.start_token(), lines.end_token()),
        (4, Some(2), Some(3))
    );
    assert_eq!(lines.decode(&[2, 0, 1, 3]), "ab\n");
    assert_eq!(Vocab::from_json(&lines.to_json()).unwrap(), lines);
}
