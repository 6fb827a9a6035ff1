//! Helpers shared by the test modules: fresh random seeds (printed, and fixed with
//! `UNROLL_TEST_SEED`), random models and batches, and comparisons that name the worst element.

#![allow(dead_code)]

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use unroll::engine::{Batch, Engine, Inputs, Targets};
use unroll::model::{Activation, InputKind, ModelConfig, OutputKind};
use unroll::train::optim::OptimizerKind;

/// A fresh seed for this test, printed so a failure can be replayed with `UNROLL_TEST_SEED`.
pub fn rng(test: &str) -> ChaCha8Rng {
    let seed = std::env::var("UNROLL_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            t ^ (test.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        });
    eprintln!("{test}: UNROLL_TEST_SEED={seed}");
    ChaCha8Rng::seed_from_u64(seed)
}

/// A model configuration with the given kinds and sizes.
pub fn config(
    activation: Activation,
    input_kind: InputKind,
    output_kind: OutputKind,
    (i, h, v, layers): (usize, usize, usize, usize),
) -> ModelConfig {
    ModelConfig {
        cell: unroll::model::Cell::Rnn,
        activation,
        input_kind,
        input_size: i,
        hidden_size: h,
        layers,
        output_kind,
        output_size: v,
        embed: None,
        tie_weights: false,
        bidirectional: false,
        proj_size: None,
        bias: true,
    }
}

/// A model of `cell` (tanh for the plain cell) with the given kinds and sizes.
pub fn cell_config(
    cell: unroll::model::Cell,
    input_kind: InputKind,
    output_kind: OutputKind,
    sizes: (usize, usize, usize, usize),
) -> ModelConfig {
    ModelConfig {
        cell,
        ..config(Activation::Tanh, input_kind, output_kind, sizes)
    }
}

/// Uniform random values in `[-a, a)`.
pub fn uniform(rng: &mut ChaCha8Rng, n: usize, a: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-a..a)).collect()
}

/// A random batch for `cfg` of T steps and B rows; with `lengths`, row b counts only its first
/// `lengths[b]` steps (the rest is padding with mask 0 and random garbage data).
pub fn random_batch(
    rng: &mut ChaCha8Rng,
    cfg: &ModelConfig,
    steps: usize,
    rows: usize,
    lengths: Option<&[usize]>,
) -> Batch {
    let n = steps * rows;
    let inputs = match cfg.input_kind {
        InputKind::OneHot => Inputs::Tokens(
            (0..n)
                .map(|_| rng.random_range(0..cfg.input_size as u32))
                .collect(),
        ),
        InputKind::Dense => Inputs::Dense(uniform(rng, n * cfg.input_size, 1.0)),
    };
    let targets = match cfg.output_kind {
        OutputKind::Softmax => Targets::Classes(
            (0..n)
                .map(|_| rng.random_range(0..cfg.output_size as u32))
                .collect(),
        ),
        OutputKind::Identity => Targets::Dense(uniform(rng, n * cfg.output_size, 1.0)),
        OutputKind::Sigmoid => Targets::Dense(
            (0..n * cfg.output_size)
                .map(|i| {
                    if i % 3 == 0 {
                        rng.random_range(0.0..1.0)
                    } else {
                        rng.random_range(0..2) as f32
                    }
                })
                .collect(),
        ),
    };
    let mask = lengths.map(|ls| {
        (0..n)
            .map(|r| if r / rows < ls[r % rows] { 1.0 } else { 0.0 })
            .collect()
    });
    Batch {
        steps,
        rows,
        inputs,
        targets,
        mask,
    }
}

/// Asserts `|a - b| <= atol + rtol * max(|a|, |b|)` element-wise, naming the worst element.
pub fn assert_close(what: &str, a: &[f64], b: &[f64], rtol: f64, atol: f64) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    let mut worst = (0usize, 0.0f64);
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        assert!(
            x.is_finite() && y.is_finite(),
            "{what}[{i}]: {x} vs {y} is not finite"
        );
        let excess = (x - y).abs() / (atol + rtol * x.abs().max(y.abs()));
        if excess > worst.1 {
            worst = (i, excess);
        }
    }
    let i = worst.0;
    assert!(
        worst.1 <= 1.0,
        "{what}: element {i} differs: {} vs {} (|diff| = {:e}, rtol {rtol:e}, atol {atol:e})",
        a[i],
        b[i],
        (a[i] - b[i]).abs()
    );
}

/// f32 slice as f64.
pub fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// The GPU the tests run on: whatever adapter wgpu finds (software ones included). With none,
/// prints a notice and returns `None` so the test can return early, unless
/// `UNROLL_REQUIRE_GPU=1`, where it fails.
pub fn gpu(test: &str) -> Option<unroll::engine::gpu::GpuContext> {
    match unroll::engine::gpu::GpuContext::open(true) {
        Ok(ctx) => Some(ctx),
        Err(e) => {
            if std::env::var("UNROLL_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("{test}: UNROLL_REQUIRE_GPU=1 but no GPU adapter: {e}");
            }
            eprintln!("{test}: skipped, no GPU adapter ({e})");
            None
        }
    }
}

/// The options of a tiny language model trained on the CPU (H = 8, B = 2, T = 8, no sample
/// after training), for command-line tests that need a run, not its quality.
pub const TINY_CPU_RUN: [(&str, &str); 5] = [
    ("--hidden", "8"),
    ("--batch", "2"),
    ("--seq-len", "8"),
    ("--sample", "0"),
    ("--device", "cpu"),
];

/// Every optimizer the engines implement.
pub const OPTIMIZERS: [OptimizerKind; 5] = [
    OptimizerKind::Sgd,
    OptimizerKind::Momentum,
    OptimizerKind::Adam,
    OptimizerKind::Rmsprop,
    OptimizerKind::Adagrad,
];

/// A NaN in the output bias makes the gradient norm NaN: the engine must skip the update (the
/// parameters stay bit for bit) and report `Error::Diverged` from `grad_norm`.
pub fn assert_divergence_is_typed_and_skips_the_update(
    engine: &mut dyn Engine,
    rng: &mut ChaCha8Rng,
) {
    use unroll::train::optim::OptimizerConfig;
    let mut params = engine.params().unwrap();
    params[engine.layout().out_bias()] = f32::NAN;
    engine.set_params(&params).unwrap();
    engine.reset_state(2).unwrap();
    let batch = random_batch(rng, &engine.config().clone(), 3, 2, None);
    engine.upload_batch(&batch).unwrap();
    engine.zero_grads().unwrap();
    engine.forward().unwrap();
    engine.backward().unwrap();
    engine
        .optimizer_step(&OptimizerConfig::new(OptimizerKind::Adam), 0.1)
        .unwrap();
    match engine.grad_norm() {
        Err(unroll::Error::Diverged { norm }) => assert!(!norm.is_finite(), "norm {norm}"),
        other => panic!(
            "{}: expected a divergence error, got {other:?}",
            engine.describe()
        ),
    }
    let after = engine.params().unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&after), bits(&params), "the update was not skipped");
}

/// Calls out of the contract's order are `Error::Misuse` (a bug in the caller), never a usage
/// error, and leave the engine usable: the same engine then runs a whole step.
pub fn assert_calls_out_of_order_are_misuse(engine: &mut dyn Engine, rng: &mut ChaCha8Rng) {
    let who = engine.describe();
    let misuse = |what: &str, r: unroll::Result<()>| match r {
        Err(unroll::Error::Misuse(msg)) => assert!(!msg.is_empty(), "{who}: {what}"),
        other => panic!("{who}: {what}: expected Error::Misuse, got {other:?}"),
    };
    misuse("forward before upload_batch", engine.forward());
    misuse("backward before forward", engine.backward());
    misuse("loss before forward", engine.loss().map(|_| ()));
    misuse("carry_state before forward", engine.carry_state());
    misuse("outputs before forward", engine.outputs().map(|_| ()));
    engine.reset_state(2).unwrap();
    let batch = random_batch(rng, &engine.config().clone(), 3, 2, None);
    engine.upload_batch(&batch).unwrap();
    misuse(
        "backward after upload_batch, before forward",
        engine.backward(),
    );
    engine.zero_grads().unwrap();
    engine.forward().unwrap();
    engine.backward().unwrap();
    assert!(engine.loss().unwrap().sum.is_finite(), "{who}");
}

/// GPU against CPU within the tolerance of whole training steps (f32 on both sides): rounding
/// compounds over steps, layers and the update; a wrong mask, gate, bias or direction would be
/// off by orders of magnitude more.
pub fn close_steps(what: &str, gpu: &[f32], cpu: &[f32]) {
    assert_close(what, &to_f64(gpu), &to_f64(cpu), 5e-4, 5e-5);
}

/// One step's forward and backward on both engines (`[cpu, gpu]`) with `batch` and `dropout`,
/// comparing the losses and returning `what` for the later comparisons.
pub fn forward_backward_both(
    engines: [&mut dyn Engine; 2],
    batch: &Batch,
    dropout: Option<unroll::engine::Dropout>,
    what: &str,
) {
    let [cpu, gpu] = engines;
    for e in [&mut *cpu, &mut *gpu] {
        e.set_dropout(dropout).unwrap();
        e.upload_batch(batch).unwrap();
        e.zero_grads().unwrap();
        e.forward().unwrap();
        e.backward().unwrap();
    }
    let (lc, lg) = (cpu.loss().unwrap(), gpu.loss().unwrap());
    assert_close(
        &format!("{what} loss"),
        &[lg.mean()],
        &[lc.mean()],
        1e-4,
        1e-5,
    );
}

/// The gradients of both engines compared, then the update applied on both (and the state
/// carried when `carry`), and the parameters (and carried states) compared.
pub fn update_both(
    engines: [&mut dyn Engine; 2],
    opt: &unroll::train::optim::OptimizerConfig,
    carry: bool,
    what: &str,
) {
    let [cpu, gpu] = engines;
    let grads = format!("{what} grads");
    close_steps(&grads, &gpu.grads().unwrap(), &cpu.grads().unwrap());
    for e in [&mut *cpu, &mut *gpu] {
        e.optimizer_step(opt, 0.1).unwrap();
        if carry {
            e.carry_state().unwrap();
        }
    }
    let params = format!("{what} params");
    close_steps(&params, &gpu.params().unwrap(), &cpu.params().unwrap());
    if carry {
        let state = format!("{what} state");
        close_steps(&state, &gpu.state().unwrap(), &cpu.state().unwrap());
    }
}

/// Peak resident memory of a child process, polled from /proc until it exits (Linux).
pub fn peak_rss_kib(child: &mut std::process::Child) -> (u64, std::process::ExitStatus) {
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    loop {
        if let Ok(s) = std::fs::read_to_string(&status_path)
            && let Some(line) = s.lines().find(|l| l.starts_with("VmHWM:"))
        {
            let kib: u64 = line
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait().unwrap() {
            return (peak, status);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
