//! Training learns: on a small generated corpus the validation loss falls far below ln(V); the
//! optimizer rules follow PyTorch's equations.

use rand::RngExt;
use unroll::data::corpus::{Corpus, Tokens};
use unroll::data::lm::{StreamEval, StreamSource};
use unroll::data::vocab::{Vocab, VocabKind};
use unroll::engine::Engine;
use unroll::engine::cpu::CpuEngine;
use unroll::engine::cpu::optim::optimizer_update;
use unroll::model::{ModelConfig, ParamLayout, init_params};
use unroll::train::metrics::Metrics;
use unroll::train::optim::{OptimizerConfig, OptimizerKind};
use unroll::train::schedule::LrSchedule;
use unroll::train::state::{Progress, RunSpec};
use unroll::train::trainer::{Outcome, Trainer, Validation, evaluate_lm};

use crate::common;

/// Sentences drawn from a tiny grammar: low entropy per character once the words are known.
pub fn generated_corpus(rng: &mut rand_chacha::ChaCha8Rng, sentences: usize) -> String {
    let subjects = ["the cat", "a dog", "my friend", "the king"];
    let verbs = ["sees", "likes", "finds"];
    let objects = ["the moon.", "a red ball.", "the sea."];
    let mut s = String::new();
    for _ in 0..sentences {
        s.push_str(subjects[rng.random_range(0..subjects.len())]);
        s.push(' ');
        s.push_str(verbs[rng.random_range(0..verbs.len())]);
        s.push(' ');
        s.push_str(objects[rng.random_range(0..objects.len())]);
        s.push('\n');
    }
    s
}

/// Trains a fresh model on `train` for `run.steps` steps into a temporary directory.
pub fn train_into(
    dir: &std::path::Path,
    engine: &mut dyn Engine,
    vocab: &Vocab,
    train: &dyn Tokens,
    val: &dyn Tokens,
    run: &RunSpec,
) -> Outcome {
    let mut metrics = Metrics::open(dir, None).unwrap();
    let mut trainer = Trainer {
        engine,
        vocab: Some(vocab),
        run,
        out: dir,
        interrupt: None,
        group: &unroll::dist::Solo,
    };
    let mut source = StreamSource::new(train, run.batch, run.seq_len).unwrap();
    let val = StreamEval {
        tokens: val,
        rows: run.batch,
        steps: run.seq_len,
        limit: None,
    };
    trainer
        .run(
            &mut source,
            Validation::whole(&val),
            Progress::start(),
            &mut metrics,
            |_| {},
        )
        .unwrap()
}

/// A run specification for tests.
pub fn run_spec(
    steps: u64,
    batch: usize,
    seq_len: usize,
    optimizer: OptimizerConfig,
    lr: f32,
    corpus_tokens: usize,
) -> RunSpec {
    RunSpec {
        steps,
        batch,
        seq_len,
        optimizer,
        lr,
        schedule: LrSchedule::Constant,
        eval_every: 0,
        checkpoint_every: 0,
        log_every: 10,
        seed: 1,
        corpus: None,
        corpus_tokens,
        val_frac: 0.1,
        val_limit: None,
        final_val_limit: None,
        sequences: Default::default(),
        on_nan: Default::default(),
        dropout: 0.0,
        corpus_path_bytes: None,
        corpus_fingerprint: None,
        eval_each_epoch: false,
        dropout_embed: 0.0,
        dropout_out: 0.0,
        val_file: None,
    }
}

#[test]
fn training_lowers_the_loss_far_below_uniform() {
    let mut rng = common::rng("training");
    let corpus = Corpus::from_string(generated_corpus(&mut rng, 1500), VocabKind::Chars).unwrap();
    let v = corpus.vocab().len();
    let cfg = ModelConfig::language_model(v, 48, 1);
    let params = init_params(&cfg, &ParamLayout::new(&cfg).unwrap(), rng.random());
    let mut engine = CpuEngine::<f32>::new(&cfg, &params).unwrap();
    let split = corpus.len() * 9 / 10;
    let (train, val) = (
        corpus.slice(0, split),
        corpus.slice(split, corpus.len() - split),
    );
    let before = evaluate_lm(&mut engine, &val, 8, 32).unwrap().mean();
    let run = run_spec(
        400,
        16,
        32,
        OptimizerConfig::new(OptimizerKind::Adam).with_clip(5.0),
        1e-2,
        corpus.len(),
    );
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        train_into(dir.path(), &mut engine, corpus.vocab(), &train, &val, &run),
        Outcome::Finished
    );
    let after = evaluate_lm(&mut engine, &val, 8, 32).unwrap().mean();
    let uniform = (v as f64).ln();
    eprintln!("V={v} ln V={uniform:.3} before={before:.3} after={after:.3}");
    assert!(
        (before - uniform).abs() < 0.3,
        "an untrained model is near uniform"
    );
    assert!(
        after < 0.35 * uniform,
        "validation loss {after} is not far below ln V = {uniform}"
    );
    // The run directory holds the model, the best model, the state, the metrics and the plot.
    for f in [
        "model.safetensors",
        "best.safetensors",
        "state.safetensors",
        "metrics.jsonl",
        "loss.svg",
    ] {
        assert!(dir.path().join(f).is_file(), "{f} is missing");
    }
}

/// One element's update computed from PyTorch's documented equations, in f64.
fn reference_update(
    kind: OptimizerKind,
    cfg: &OptimizerConfig,
    lr: f64,
    steps: &[f64],
    p0: f64,
) -> f64 {
    let (mut p, mut m, mut v) = (p0, 0.0, 0.0);
    for (i, &g) in steps.iter().enumerate() {
        let g = g + cfg.weight_decay as f64 * p;
        let t = (i + 1) as i32;
        match kind {
            OptimizerKind::Sgd => p -= lr * g,
            OptimizerKind::Momentum => {
                m = if i == 0 {
                    g
                } else {
                    cfg.momentum as f64 * m + g
                };
                p -= lr * m;
            }
            OptimizerKind::Adam => {
                let (b1, b2) = (cfg.beta1 as f64, cfg.beta2 as f64);
                m = b1 * m + (1.0 - b1) * g;
                v = b2 * v + (1.0 - b2) * g * g;
                let m_hat = m / (1.0 - b1.powi(t));
                let v_hat = v / (1.0 - b2.powi(t));
                p -= lr * m_hat / (v_hat.sqrt() + cfg.eps as f64);
            }
            OptimizerKind::Rmsprop => {
                let a = cfg.alpha as f64;
                v = a * v + (1.0 - a) * g * g;
                p -= lr * g / (v.sqrt() + cfg.eps as f64);
            }
            OptimizerKind::Adagrad => {
                v += g * g;
                p -= lr * g / (v.sqrt() + cfg.eps as f64);
            }
        }
    }
    p
}

#[test]
fn optimizer_rules_follow_pytorch_equations() {
    let mut rng = common::rng("optimizers");
    for kind in [
        OptimizerKind::Sgd,
        OptimizerKind::Momentum,
        OptimizerKind::Adam,
        OptimizerKind::Rmsprop,
        OptimizerKind::Adagrad,
    ] {
        let mut cfg = OptimizerConfig::new(kind);
        cfg.weight_decay = 0.01;
        let n = 5;
        let grads: Vec<Vec<f64>> = (0..4)
            .map(|_| (0..n).map(|_| rng.random_range(-2.0..2.0)).collect())
            .collect();
        let p0: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let (mut p, mut m, mut v) = (p0.clone(), vec![0.0; n], vec![0.0; n]);
        for (s, g) in grads.iter().enumerate() {
            optimizer_update(&cfg, 0.03, s as u64 + 1, 1.0, &mut p, g, &mut m, &mut v);
        }
        let want: Vec<f64> = (0..n)
            .map(|i| {
                reference_update(
                    kind,
                    &cfg,
                    0.03,
                    &grads.iter().map(|g| g[i]).collect::<Vec<_>>(),
                    p0[i],
                )
            })
            .collect();
        common::assert_close(&format!("{kind:?}"), &p, &want, 1e-12, 1e-14);
    }
}

#[test]
fn clipping_scales_the_gradient_to_the_clip_norm() {
    let cfg = ModelConfig::language_model(4, 3, 1);
    let layout = ParamLayout::new(&cfg).unwrap();
    let params = vec![0.0f32; layout.len()];
    let mut rng = common::rng("clip");
    let mut engine = CpuEngine::<f64>::new(&cfg, &params).unwrap();
    let batch = common::random_batch(&mut rng, &cfg, 3, 2, None);
    engine.reset_state(2).unwrap();
    engine.upload_batch(&batch).unwrap();
    engine.zero_grads().unwrap();
    engine.forward().unwrap();
    engine.backward().unwrap();
    let g = engine.grads_native().to_vec();
    let norm = g.iter().map(|x| x * x).sum::<f64>().sqrt();
    let clip = (norm / 3.0) as f32;
    engine
        .optimizer_step(
            &OptimizerConfig::new(OptimizerKind::Sgd).with_clip(clip),
            1.0,
        )
        .unwrap();
    let moved: Vec<f64> = engine.params_native().to_vec();
    let moved_norm = moved.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!((engine.grad_norm().unwrap() as f64 - norm).abs() < 1e-6 * norm);
    assert!(
        (moved_norm - clip as f64).abs() < 1e-5 * clip as f64,
        "{moved_norm} vs clip {clip}"
    );
}

/// A 2-layer language model of `cell` (V = 6, H = 5) and random parameters for it.
fn small_model(
    cell: unroll::model::Cell,
    rng: &mut rand_chacha::ChaCha8Rng,
) -> (ModelConfig, Vec<f32>) {
    let cfg = ModelConfig {
        cell,
        ..ModelConfig::language_model(6, 5, 2)
    };
    let params = common::uniform(rng, ParamLayout::new(&cfg).unwrap().len(), 0.5);
    (cfg, params)
}

#[test]
fn a_non_finite_gradient_is_a_typed_divergence_on_the_cpu() {
    let mut rng = common::rng("cpu_divergence");
    for cell in [unroll::model::Cell::Rnn, unroll::model::Cell::Gru] {
        let (cfg, params) = small_model(cell, &mut rng);
        let mut f32_engine = CpuEngine::<f32>::new(&cfg, &params).unwrap();
        common::assert_divergence_is_typed_and_skips_the_update(&mut f32_engine, &mut rng);
        let mut f64_engine = CpuEngine::<f64>::new(&cfg, &params).unwrap();
        common::assert_divergence_is_typed_and_skips_the_update(&mut f64_engine, &mut rng);
    }
}

#[test]
fn engine_calls_out_of_order_are_misuse_on_the_cpu() {
    let mut rng = common::rng("cpu_misuse");
    for cell in [unroll::model::Cell::Rnn, unroll::model::Cell::Lstm] {
        let (cfg, params) = small_model(cell, &mut rng);
        let mut engine = CpuEngine::<f32>::new(&cfg, &params).unwrap();
        common::assert_calls_out_of_order_are_misuse(&mut engine, &mut rng);
    }
}
