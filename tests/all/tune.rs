//! Kernel variants and their tuning: every variant of both engines holds one training step to the
//! CPU engine's default; the tuner picks what the clock says is fastest and leaves the engine's
//! parameters, gradients and state as they were; the cache is keyed by device and shape and
//! survives corrupted, foreign and stale files with a note; `unroll tune` and
//! `train --tune cached` on both engines. Every test sets `UNROLL_TUNE_CACHE` (or its own
//! path): the user's cache is never touched.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use unroll::engine::cpu::CpuEngine;
use unroll::engine::gpu::GpuEngine;
use unroll::engine::variant::{CpuVariant, GpuVariant, StepProduct, Variant};
use unroll::engine::{Batch, Engine, Recurrence};
use unroll::model::{Cell, InputKind, ModelConfig, OutputKind, ParamLayout};
use unroll::train::optim::{OptimizerConfig, OptimizerKind};
use unroll::tune::cache::CACHE_VAR;
use unroll::tune::{
    CacheEntry, Clock, Source, TuneCache, TuneMode, TuneOptions, choose, shape_key, tune,
};

use crate::common::{self, close_steps, forward_backward_both};

/// A clock whose every reading advances by the cost of the variant the engine runs, so a timed
/// pass of variant v takes `cost(v)`.
struct FakeClock<F: Fn(&Variant) -> Duration> {
    now: Duration,
    cost: F,
}

impl<F: Fn(&Variant) -> Duration> Clock for FakeClock<F> {
    fn now(&mut self, variant: &Variant) -> Duration {
        self.now += (self.cost)(variant);
        self.now
    }
}

fn fake_clock<F: Fn(&Variant) -> Duration>(cost: F) -> FakeClock<F> {
    FakeClock {
        now: Duration::ZERO,
        cost,
    }
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn tiny_config(cell: Cell) -> ModelConfig {
    common::cell_config(cell, InputKind::OneHot, OutputKind::Softmax, (7, 9, 7, 2))
}

fn random_params(rng: &mut ChaCha8Rng, cfg: &ModelConfig) -> Vec<f32> {
    let n = ParamLayout::new(cfg).unwrap().len();
    common::uniform(rng, n, 0.4)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// One training step of `engine` on `variant` against the CPU engine's default: a first step
/// on `stale` fills the variant's buffers with another batch's values, the gradients are
/// poisoned with NaN before they are zeroed, so an element the variant does not write shows.
fn step_matches_cpu_default(
    engine: &mut dyn Engine,
    variant: &Variant,
    params: &[f32],
    (stale, batch): (&Batch, &Batch),
) {
    let what = format!("{} {}", engine.describe(), variant);
    let cfg = engine.config().clone();
    let mut reference = CpuEngine::<f32>::new(&cfg, params).unwrap();
    engine.set_params(params).unwrap();
    engine.reset_state(batch.rows).unwrap();
    engine.set_variant(variant).unwrap();
    assert_eq!(engine.variant(), *variant, "{what}");
    engine.upload_batch(stale).unwrap();
    engine.zero_grads().unwrap();
    engine.forward().unwrap();
    engine.backward().unwrap();
    let nan = vec![f32::NAN; engine.layout().len()];
    engine.set_grads(&nan).unwrap();
    reference.reset_state(batch.rows).unwrap();
    forward_backward_both(
        [&mut reference as &mut dyn Engine, engine],
        batch,
        None,
        &what,
    );
    close_steps(
        &format!("{what} grads"),
        &engine.grads().unwrap(),
        &reference.grads().unwrap(),
    );
    let opt = OptimizerConfig::new(OptimizerKind::Sgd);
    for e in [&mut reference as &mut dyn Engine, &mut *engine] {
        e.optimizer_step(&opt, 0.1).unwrap();
        e.carry_state().unwrap();
    }
    close_steps(
        &format!("{what} params"),
        &engine.params().unwrap(),
        &reference.params().unwrap(),
    );
    close_steps(
        &format!("{what} state"),
        &engine.state().unwrap(),
        &reference.state().unwrap(),
    );
}

/// Every variant of `engine` (for batches of `rows` rows) on two shapes, T = 1 and B = 1 among
/// them.
fn every_variant_matches(engine: &mut dyn Engine, rng: &mut ChaCha8Rng) -> usize {
    let cfg = engine.config().clone();
    let params = random_params(rng, &cfg);
    let mut count = 0;
    for (t, b) in [(4, 3), (1, 1)] {
        engine.reset_state(b).unwrap();
        let variants = engine.variants();
        assert!(variants[0].is_default(), "{:?}", variants[0]);
        for v in &variants {
            let stale = common::random_batch(rng, &cfg, t, b, None);
            let batch = common::random_batch(rng, &cfg, t, b, None);
            step_matches_cpu_default(engine, v, &params, (&stale, &batch));
        }
        count += variants.len();
    }
    count
}

#[test]
fn every_cpu_variant_matches_the_cpu_default_on_a_training_step() {
    let mut rng = common::rng("every_cpu_variant_matches_the_cpu_default_on_a_training_step");
    for cell in [Cell::Rnn, Cell::Gru, Cell::Lstm] {
        let cfg = tiny_config(cell);
        let mut e = CpuEngine::<f32>::new(&cfg, &random_params(&mut rng, &cfg)).unwrap();
        assert!(every_variant_matches(&mut e, &mut rng) >= 2 * 2);
    }
}

#[test]
fn every_gpu_variant_matches_the_cpu_default_on_a_training_step() {
    let test = "every_gpu_variant_matches_the_cpu_default_on_a_training_step";
    let mut rng = common::rng(test);
    for cell in [Cell::Rnn, Cell::Gru, Cell::Lstm] {
        let Some(ctx) = common::gpu(test) else {
            return;
        };
        let cfg = tiny_config(cell);
        let mut e = GpuEngine::new(ctx, &cfg, &random_params(&mut rng, &cfg)).unwrap();
        assert!(every_variant_matches(&mut e, &mut rng) >= 2 * 4, "{cell:?}");
    }
}

fn is_config_error(r: unroll::Result<()>, needle: &str) {
    match r {
        Err(unroll::Error::Config(m)) => assert!(m.contains(needle), "{needle:?} not in {m}"),
        other => panic!("expected a configuration error with {needle:?}, got {other:?}"),
    }
}

#[test]
fn engines_refuse_the_variants_they_cannot_run() {
    let mut rng = common::rng("engines_refuse_the_variants_they_cannot_run");
    let cfg = tiny_config(Cell::Gru);
    let params = random_params(&mut rng, &cfg);
    let mut cpu = CpuEngine::<f32>::new(&cfg, &params).unwrap();
    is_config_error(cpu.set_variant(&Variant::GPU), "GPU variant");
    assert_eq!(cpu.variant(), Variant::CPU);
    let Some(ctx) = common::gpu("engines_refuse_the_variants_they_cannot_run") else {
        return;
    };
    let mut gpu = GpuEngine::new(ctx, &cfg, &params).unwrap();
    is_config_error(gpu.set_variant(&Variant::CPU), "CPU variant");
    let gpu_variant = |g: GpuVariant| Variant::Gpu(g);
    let rows = gpu_variant(GpuVariant {
        recurrence: Recurrence::Rows,
        ..GpuVariant::default()
    });
    is_config_error(gpu.set_variant(&rows), "tanh/relu");
    let huge = gpu_variant(GpuVariant {
        matmul_wg: Some(4096),
        ..GpuVariant::default()
    });
    is_config_error(gpu.set_variant(&huge), "cannot run");
    let odd = gpu_variant(GpuVariant {
        rows_product_wg: Some(12),
        ..GpuVariant::default()
    });
    is_config_error(gpu.set_variant(&odd), "cannot run");
    assert_eq!(gpu.variant(), Variant::GPU);
    assert!(!gpu.variants().contains(&rows));
}

/// A CPU engine of a tiny GRU with a step taken, its state carried and gradients left in it.
fn used_cpu_engine(rng: &mut ChaCha8Rng) -> (CpuEngine<f32>, Batch) {
    let cfg = tiny_config(Cell::Gru);
    let mut e = CpuEngine::<f32>::new(&cfg, &random_params(rng, &cfg)).unwrap();
    e.reset_state(3).unwrap();
    let batch = common::random_batch(rng, &cfg, 4, 3, None);
    e.upload_batch(&batch).unwrap();
    e.zero_grads().unwrap();
    e.forward().unwrap();
    e.backward().unwrap();
    e.carry_state().unwrap();
    (e, batch)
}

fn quick() -> TuneOptions {
    TuneOptions {
        warmup: 0,
        repeats: 3,
        ..TuneOptions::default()
    }
}

#[test]
fn the_tuner_picks_what_the_clock_says_is_fastest() {
    let mut rng = common::rng("the_tuner_picks_what_the_clock_says_is_fastest");
    let (mut e, batch) = used_cpu_engine(&mut rng);
    let variants = e.variants();
    assert!(variants.len() >= 3, "{variants:?}");
    let n = variants.len();
    for target in [0, n / 2, n - 1] {
        let fast = variants[target];
        let mut clock = fake_clock(|v: &Variant| if *v == fast { ms(1) } else { ms(10) });
        let t = tune(&mut e, &batch, &mut clock, &quick()).unwrap();
        assert_eq!(t.winner, fast, "target {target}");
        assert_eq!(e.variant(), fast);
        assert_eq!(t.measured.len(), n);
        let median = t.median_of(&fast).unwrap();
        assert!((median - 1.0).abs() < 1e-9, "{median}");
        // Once a fast variant is known, the slow ones stop after one pass.
        let slow_after = t.measured.iter().skip(target + 1);
        assert!(slow_after.clone().all(|m| m.samples == 1), "{t:?}");
    }
}

#[test]
fn the_default_stays_when_another_is_faster_only_within_the_margin() {
    let mut rng = common::rng("the_default_stays_when_another_is_faster_only_within_the_margin");
    let (mut e, batch) = used_cpu_engine(&mut rng);
    let last = *e.variants().last().unwrap();
    let cost = |v: &Variant| if *v == last { ms(99) } else { ms(100) };
    let t = tune(&mut e, &batch, &mut fake_clock(cost), &quick()).unwrap();
    assert_eq!(t.winner, Variant::CPU);
    let cost = |v: &Variant| if *v == last { ms(90) } else { ms(100) };
    let t = tune(&mut e, &batch, &mut fake_clock(cost), &quick()).unwrap();
    assert_eq!(t.winner, last);
}

fn snapshot(e: &mut dyn Engine) -> [Vec<u32>; 3] {
    [
        bits(&e.params().unwrap()),
        bits(&e.grads().unwrap()),
        bits(&e.state().unwrap()),
    ]
}

#[test]
fn tuning_leaves_parameters_gradients_and_state_as_they_were() {
    let mut rng = common::rng("tuning_leaves_parameters_gradients_and_state_as_they_were");
    let (mut e, batch) = used_cpu_engine(&mut rng);
    let before = snapshot(&mut e);
    // A batch of another B than the carried state's.
    let other = common::random_batch(&mut rng, &e.config().clone(), 2, 5, None);
    for b in [&batch, &other] {
        let mut clock = fake_clock(|_: &Variant| ms(1));
        tune(&mut e, b, &mut clock, &quick()).unwrap();
        assert_eq!(snapshot(&mut e), before, "CPU, B = {}", b.rows);
    }
    let Some(ctx) = common::gpu("tuning_leaves_parameters_gradients_and_state_as_they_were") else {
        return;
    };
    let cfg = e.config().clone();
    let mut g = GpuEngine::new(ctx, &cfg, &e.params().unwrap()).unwrap();
    g.set_grads(&e.grads().unwrap()).unwrap();
    g.set_state(3, &e.state().unwrap()).unwrap();
    let before = snapshot(&mut g);
    let slowest_default = |v: &Variant| if v.is_default() { ms(5) } else { ms(1) };
    let t = tune(&mut g, &batch, &mut fake_clock(slowest_default), &quick()).unwrap();
    assert!(!t.winner.is_default());
    assert_eq!(snapshot(&mut g), before, "GPU");
    // The engine runs on from there, on the winner.
    g.upload_batch(&batch).unwrap();
    g.forward().unwrap();
    assert!(g.loss().unwrap().sum.is_finite());
}

fn entry(device: &str, shape: &str, winner: Variant) -> CacheEntry {
    CacheEntry {
        device: device.into(),
        shape: shape.into(),
        winner,
        times: Vec::new(),
    }
}

#[test]
fn the_cache_is_keyed_by_device_and_shape_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub").join("tune.json");
    let cfg = tiny_config(Cell::Lstm);
    let mut rng = common::rng("the_cache_is_keyed_by_device_and_shape_and_round_trips");
    let batch = common::random_batch(&mut rng, &cfg, 4, 3, None);
    let key = shape_key(&cfg, &batch);
    let wider = ModelConfig {
        hidden_size: 10,
        ..cfg.clone()
    };
    let variant = Variant::Cpu(CpuVariant {
        product: StepProduct::Gemm,
        row_parts: Some(3),
    });
    let mut cache = TuneCache::open(Some(&path));
    assert!(cache.notes.is_empty() && cache.entries().is_empty());
    cache.insert(entry("cpu A", &key, variant));
    cache.insert(entry("cpu A", &key, variant));
    cache.save().unwrap();
    let read = TuneCache::open(Some(&path));
    assert!(read.notes.is_empty(), "{:?}", read.notes);
    assert_eq!(read.entries().len(), 1);
    assert_eq!(read.lookup("cpu A", &key).map(|e| e.winner), Some(variant));
    assert!(read.lookup("cpu B", &key).is_none(), "another device");
    assert!(
        read.lookup("cpu A", &shape_key(&wider, &batch)).is_none(),
        "another H"
    );
    let longer = common::random_batch(&mut rng, &cfg, 5, 3, None);
    assert!(
        read.lookup("cpu A", &shape_key(&cfg, &longer)).is_none(),
        "another T"
    );
}

fn note_of(cache: &TuneCache, needle: &str) {
    assert_eq!(cache.notes.len(), 1, "{:?}", cache.notes);
    assert!(cache.notes[0].contains(needle), "{:?}", cache.notes);
    assert!(cache.entries().is_empty());
}

#[test]
fn a_corrupted_foreign_or_stale_cache_is_ignored_with_a_note_and_rewritten() {
    let test = "a_corrupted_foreign_or_stale_cache_is_ignored_with_a_note_and_rewritten";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tune.json");
    std::fs::write(&path, "{ not json").unwrap();
    note_of(&TuneCache::open(Some(&path)), "not JSON");
    std::fs::write(&path, r#"{"version": 999, "entries": []}"#).unwrap();
    note_of(&TuneCache::open(Some(&path)), "version 999");
    std::fs::write(&path, r#"{"version": 1, "entries": 3}"#).unwrap();
    note_of(&TuneCache::open(Some(&path)), "not a kernel-choice cache");
    // Stale: the entry of this device and shape names a variant the engine refuses.
    let mut rng = common::rng(test);
    let (mut e, batch) = used_cpu_engine(&mut rng);
    let key = (e.device_key(), shape_key(e.config(), &batch));
    let mut cache = TuneCache::open(Some(&path));
    cache.insert(entry(&key.0, &key.1, Variant::GPU));
    cache.save().unwrap();
    let chosen = choose(&mut e, TuneMode::Cached, &batch, Some(&path)).unwrap();
    assert_eq!(chosen.source, Source::Default);
    assert_eq!(chosen.variant, Variant::CPU);
    assert!(
        chosen
            .notes
            .iter()
            .any(|n| n.contains("ignoring the cached"))
    );
    // `on` measures and replaces it; `cached` then applies it.
    let chosen = choose(&mut e, TuneMode::On, &batch, Some(&path)).unwrap();
    assert!(matches!(chosen.source, Source::Tuned(_)), "{chosen:?}");
    let winner = chosen.variant;
    let read = TuneCache::open(Some(&path));
    assert_eq!(read.lookup(&key.0, &key.1).map(|x| x.winner), Some(winner));
    e.set_variant(&Variant::CPU).unwrap();
    let chosen = choose(&mut e, TuneMode::Cached, &batch, Some(&path)).unwrap();
    assert_eq!((chosen.source, chosen.variant), (Source::Cached, winner));
    assert_eq!(e.variant(), winner);
    let off = choose(&mut e, TuneMode::Off, &batch, Some(&path)).unwrap();
    assert_eq!(off.source, Source::Default);
}

fn run(cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_unroll"))
        .args(args)
        .env(CACHE_VAR, cache)
        .output()
        .expect("the unroll binary runs")
}

fn succeeds(cache: &Path, args: &[&str]) -> String {
    let out = run(cache, args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "unroll {args:?} failed:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// A training run of 2 steps of a tiny language model over the corpus at `corpus`.
fn train_args<'a>(device: &'a str, corpus: &'a str, out: &'a str) -> Vec<&'a str> {
    let args = "train --corpus {c} --out {o} --hidden 8 --batch 2 --seq-len 5 --steps 2 \
                --sample 0 --device {d} --tune cached";
    args.split_whitespace()
        .map(|a| match a {
            "{c}" => corpus,
            "{o}" => out,
            "{d}" => device,
            a => a,
        })
        .collect()
}

/// A corpus of exactly `letters` distinct characters (a vocabulary of that size).
fn corpus(dir: &Path, rng: &mut ChaCha8Rng, letters: u8) -> String {
    let text: String = (0..400)
        .map(|i| match i {
            _ if (i as u8) < letters => (b'a' + i as u8) as char,
            _ => (b'a' + rng.random_range(0..letters)) as char,
        })
        .collect();
    let path = dir.join("corpus.txt");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn train_with_a_garbage_cache_runs_on_with_a_note() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = common::rng("train_with_a_garbage_cache_runs_on_with_a_note");
    let cache = dir.path().join("tune.json");
    std::fs::write(&cache, [0xff, 0x00, 0x13]).unwrap();
    let corpus = corpus(dir.path(), &mut rng, 6);
    let out = dir.path().join("run");
    let err = succeeds(&cache, &train_args("cpu", &corpus, out.to_str().unwrap()));
    assert!(
        err.contains("note: ignoring the kernel-choice cache"),
        "{err}"
    );
    assert!(err.contains("variant default (default)"), "{err}");
}

/// `unroll tune` on `device` for the shape of [`train_args`] caches a winner, and a training
/// run of that shape names it in its first log line.
fn tune_then_train_uses_the_cached_choice(device: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = common::rng("tune_then_train_uses_the_cached_choice");
    let cache = dir.path().join("tune.json");
    let corpus = corpus(dir.path(), &mut rng, 6);
    let args = format!(
        "tune --device {device} --cell rnn --hidden 8 --batch 2 --seq-len 5 --vocab-size 6 --json"
    );
    let tuned = run(&cache, &args.split_whitespace().collect::<Vec<_>>());
    let err = String::from_utf8_lossy(&tuned.stderr);
    assert!(tuned.status.success(), "unroll tune failed:\n{err}");
    let report: serde_json::Value = serde_json::from_slice(&tuned.stdout).unwrap();
    let variants = report["results"][0]["variants"].as_array().unwrap();
    assert!(variants.len() >= 2, "{report}");
    assert!(variants.iter().any(|v| v["median_ms"].as_f64().is_some()));
    let read = TuneCache::open(Some(&cache));
    assert!(read.notes.is_empty(), "{:?}", read.notes);
    assert_eq!(read.entries().len(), 1);
    let winner = read.entries()[0].winner;
    assert_eq!(report["results"][0]["winner"], winner.name());
    let out = dir.path().join("run");
    let log = succeeds(&cache, &train_args(device, &corpus, out.to_str().unwrap()));
    let first = log.lines().find(|l| l.starts_with("device:")).unwrap_or("");
    let want = format!("variant {} (cached)", winner.name());
    assert!(
        first.contains(&want),
        "{want:?} not in the first line of:\n{log}"
    );
}

#[test]
fn unroll_tune_on_the_cpu_caches_a_choice_that_train_applies() {
    tune_then_train_uses_the_cached_choice("cpu");
}

#[test]
fn unroll_tune_on_the_gpu_caches_a_choice_that_train_applies() {
    if common::gpu("unroll_tune_on_the_gpu_caches_a_choice_that_train_applies").is_some() {
        tune_then_train_uses_the_cached_choice("gpu");
    }
}

#[test]
fn bench_reports_the_default_and_the_tuned_figures() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("tune.json");
    let args = "bench --device cpu --cell gru --hidden 8 --batch 2 --seq-len 4 --vocab-size 5 \
                --warmup 1 --repeats 2 --tune on --json";
    let out = run(&cache, &args.split_whitespace().collect::<Vec<_>>());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = &v["results"][0];
    assert_eq!(row["variant"], "default", "{v}");
    assert!(row["tokens_per_s"].as_f64().unwrap() > 0.0);
    let tuned = &row["tuned"];
    assert!(tuned["tokens_per_s"].as_f64().unwrap() > 0.0, "{v}");
    assert!(
        tuned["source"].as_str().unwrap().starts_with("tuned in"),
        "{v}"
    );
    assert!(tuned["variant"].is_string());
    assert_eq!(TuneCache::open(Some(&cache)).entries().len(), 1);
}
