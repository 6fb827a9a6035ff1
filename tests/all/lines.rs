//! Lines mode: every line one sequence framed by start and end tokens, padded and masked; a
//! model trained on lines learns to end them.

use rand::RngExt;
use unroll::data::corpus::Corpus;
use unroll::data::lines::{Lines, LinesSource};
use unroll::data::vocab::{Vocab, VocabKind};
use unroll::data::{EvalSet, TrainBatches};
use unroll::engine::cpu::CpuEngine;
use unroll::engine::{Batch, Inputs, Targets};
use unroll::model::{ModelConfig, ParamLayout, init_params};
use unroll::sample::{SampleOptions, sample};
use unroll::train::optim::{OptimizerConfig, OptimizerKind};

use crate::common;

fn lines_corpus(text: &str) -> Corpus {
    let vocab = Vocab::chars_of(text).for_lines();
    Corpus::from_text(
        unroll::data::corpus::CorpusText::Owned(text.as_bytes().to_vec()),
        "lines",
        VocabKind::Chars,
        Some(vocab),
    )
    .unwrap()
}

/// The framed sequences a batch holds, row by row: (inputs, targets) of the masked steps.
fn rows_of(batch: &Batch) -> Vec<(Vec<u32>, Vec<u32>)> {
    let (Inputs::Tokens(x), Targets::Classes(y)) = (&batch.inputs, &batch.targets) else {
        panic!("token batch")
    };
    let mask = batch.mask.as_ref().unwrap();
    (0..batch.rows)
        .map(|b| {
            let steps: Vec<usize> = (0..batch.steps)
                .filter(|t| mask[t * batch.rows + b] == 1.0)
                .collect();
            for (i, &t) in steps.iter().enumerate() {
                assert_eq!(t, i, "masked steps are a prefix of the row");
            }
            (
                steps.iter().map(|t| x[t * batch.rows + b]).collect(),
                steps.iter().map(|t| y[t * batch.rows + b]).collect(),
            )
        })
        .collect()
}

#[test]
fn lines_are_framed_masked_and_each_used_once_per_epoch() {
    let mut rng = common::rng("lines");
    let n_lines = rng.random_range(20..60);
    let lines: Vec<String> = (0..n_lines)
        .map(|i| {
            (0..rng.random_range(0..30))
                .map(|j| (b'a' + ((i + j) % 7) as u8) as char)
                .collect()
        })
        .collect();
    let text = lines.join("\r\n") + "\n";
    let corpus = lines_corpus(&text);
    let vocab = corpus.vocab().clone();
    let (start, end) = (vocab.start_token().unwrap(), vocab.end_token().unwrap());
    let seq_len = 12;
    let rows = rng.random_range(1..6);
    let set = Lines::new(&corpus, 0..text.len(), rows, seq_len).unwrap();
    // Reassemble every line from its pieces, stream by stream.
    let mut rebuilt: Vec<Vec<String>> = vec![Vec::new(); rows];
    let mut open: Vec<Vec<u32>> = vec![Vec::new(); rows];
    let mut predictions = 0.0;
    for batch in set.batches().unwrap() {
        assert!(batch.steps <= seq_len);
        predictions += batch.count();
        for (b, (x, y)) in rows_of(&batch).into_iter().enumerate() {
            if x.is_empty() {
                continue;
            }
            assert_eq!(
                &x[1..],
                &y[..y.len() - 1],
                "targets are the inputs shifted by one"
            );
            if open[b].is_empty() {
                assert_eq!(x[0], start, "a line starts with the start token");
            } else {
                assert_eq!(x[0], *open[b].last().unwrap(), "a piece continues its line");
            }
            open[b].extend(&y);
            if *y.last().unwrap() == end {
                let line: Vec<u32> = open[b][..open[b].len() - 1].to_vec();
                rebuilt[b].push(vocab.decode(&line));
                open[b].clear();
            }
        }
    }
    let all: Vec<String> = rebuilt.concat();
    assert_eq!(
        all, lines,
        "every line once, in order, without its line break"
    );
    let chars: usize = lines.iter().map(|l| l.len() + 1).sum();
    assert_eq!(
        predictions as usize, chars,
        "each character and each line end predicted once"
    );

    // Training batches: the same lines per epoch, the state reset for every batch, and a seek
    // back to a saved position gives the same batches again.
    let mut source =
        LinesSource::new(Lines::new(&corpus, 0..text.len(), rows, seq_len).unwrap()).unwrap();
    let (_, reset) = source.next_batch().unwrap();
    assert!(reset);
    let saved = source.position();
    let next: Vec<Batch> = (0..5).map(|_| source.next_batch().unwrap().0).collect();
    source.seek(&saved).unwrap();
    let again: Vec<Batch> = (0..5).map(|_| source.next_batch().unwrap().0).collect();
    assert_eq!(next, again);
}

#[test]
fn a_model_trained_on_lines_learns_to_end_them() {
    let mut rng = common::rng("end lines");
    let words = ["red", "blue", "green"];
    // Lines of exactly three words: the end comes after the third.
    let text: String = (0..400)
        .map(|_| {
            (0..3)
                .map(|_| words[rng.random_range(0..3)])
                .collect::<Vec<_>>()
                .join(" ")
                + "\n"
        })
        .collect();
    let corpus = lines_corpus(&text);
    let vocab = corpus.vocab().clone();
    let cfg = ModelConfig::language_model(vocab.len(), 32, 1);
    let params = init_params(&cfg, &ParamLayout::new(&cfg).unwrap(), 3);
    let mut engine = CpuEngine::<f32>::new(&cfg, &params).unwrap();
    let mut source = LinesSource::new(Lines::new(&corpus, 0..text.len(), 16, 32).unwrap()).unwrap();
    let opt = OptimizerConfig::new(OptimizerKind::Adam).with_clip(5.0);
    for _ in 0..800 {
        let (batch, reset) = source.next_batch().unwrap();
        unroll::train::trainer::train_step(&mut engine, &batch, reset, &opt, 3e-3).unwrap();
    }
    // A sample may go astray now and then (it is sampled); most must be whole lines.
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for seed in 0..10 {
        let opts = SampleOptions {
            length: 60,
            temperature: 0.5,
            top_k: 0,
            seed,
        };
        let mut out = String::new();
        let toks = sample(
            &mut engine,
            &vocab,
            &[vocab.start_token().unwrap()],
            &opts,
            &mut |p| {
                out.push_str(p);
                std::ops::ControlFlow::Continue(())
            },
        )
        .unwrap();
        let line = out.trim_end_matches('\n').to_string();
        let ended = toks.last == vocab.end_token();
        let words_ok = line.split(' ').count() == 3 && line.split(' ').all(|w| words.contains(&w));
        if ended && words_ok {
            good.push(line);
        } else {
            bad.push(line);
        }
    }
    assert!(
        good.len() >= 8,
        "only {} of 10 samples are ended lines of three words; the others: {bad:?}",
        good.len()
    );
}
