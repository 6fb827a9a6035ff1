//! The memory guard of every command: the shapes a command runs, as [`unroll::memory`]
//! estimates them, checked before the engine, the parameters or the batches are allocated.

use unroll::data::pairs::Pairs;
use unroll::engine::select::{DeviceChoice, engine_uses_host_memory, logit_budget};
use unroll::memory::{self, Lower, Rows, Shape};
use unroll::model::ModelConfig;
use unroll::train::trainer::eval_rows;

/// The options that size a model, as a refusal names them.
const MODEL_OPTIONS: &str = "--hidden, --layers or --embed (or the vocabulary, --max-vocab)";

/// A shape with the logit budget the engines get and nothing kept besides, run by an engine of
/// `device` (whose buffers count as host memory unless it is a GPU with memory of its own).
fn shape(
    train: Option<Rows>,
    eval: Option<Rows>,
    lower: Lower,
    device: DeviceChoice,
) -> unroll::Result<Shape> {
    Ok(Shape {
        train,
        eval,
        logit_budget: logit_budget()?,
        inference_blocks: engine_is_cpu(device),
        kept: Vec::new(),
        lower,
        engine_on_host: engine_uses_host_memory(device),
    })
}

/// Whether `device` runs the CPU engine: `--device cpu`, or `auto` without a hardware GPU.
fn engine_is_cpu(device: DeviceChoice) -> bool {
    use unroll::engine::gpu::context::best_adapter_has_own_memory;
    match device {
        DeviceChoice::Cpu => true,
        DeviceChoice::Gpu => false,
        DeviceChoice::Auto => best_adapter_has_own_memory(false).is_none(),
    }
}

/// Refuses a training run of `config` over batches of `batch` rows of `steps` steps (evaluated
/// over `eval_steps`) that does not fit in memory. `steps_option` names what sets T (`--seq-len`,
/// or the longest pair of a pairs file); on a resume nothing can be lowered, which `resumed`
/// says instead.
pub fn check_training(
    config: &ModelConfig,
    (batch, steps): (usize, usize),
    eval_steps: usize,
    steps_option: &str,
    resumed: bool,
    device: DeviceChoice,
) -> unroll::Result<()> {
    // A process of a data-parallel run holds its share of the rows.
    let ranks = super::ranks::group().size();
    let train = Rows {
        rows: batch.div_ceil(ranks),
        steps,
    };
    let eval = Rows {
        rows: eval_rows(config, batch, eval_steps).div_ceil(ranks),
        steps: eval_steps,
    };
    let lower = if resumed {
        let kept = "nothing (a resumed run keeps its settings): free memory or raise the limit";
        Lower {
            model: kept.into(),
            train: kept.into(),
            eval: kept.into(),
            kept: kept.into(),
        }
    } else {
        Lower {
            model: MODEL_OPTIONS.into(),
            train: format!("--batch or {steps_option}"),
            eval: format!("--batch or {steps_option} (evaluation runs at least --batch rows)"),
            kept: String::new(),
        }
    };
    let shape = shape(Some(train), Some(eval), lower, device)?;
    memory::check("this training run", &memory::estimate(config, &shape))
}

/// Refuses a run of `command` that evaluates `config` over batches of `rows` x `steps` and keeps
/// `kept` besides, lowered with `lower` (the options of the batch).
pub fn check_evaluation(
    command: &str,
    config: &ModelConfig,
    eval: Rows,
    kept: Vec<(String, u128)>,
    lower: &str,
    device: DeviceChoice,
) -> unroll::Result<()> {
    let lower = Lower {
        model: "nothing of the model: free memory or raise the limit".into(),
        train: lower.into(),
        eval: lower.into(),
        kept: lower.into(),
    };
    let shape = Shape {
        kept,
        ..shape(None, Some(eval), lower, device)?
    };
    memory::check(command, &memory::estimate(config, &shape))
}

/// Refuses a benchmarked training step of `config` over `train` that does not fit in memory.
pub fn check_bench_step(config: &ModelConfig, train: Rows) -> unroll::Result<()> {
    let lower = Lower {
        model: "--hidden, --layers, --embed or --vocab-size".into(),
        train: "--batch or --seq-len".into(),
        eval: String::new(),
        kept: String::new(),
    };
    // The benchmark measures small shapes; its buffers count as host memory on every device.
    let shape = shape(Some(train), None, lower, DeviceChoice::Cpu)?;
    memory::check("bench", &memory::estimate(config, &shape))
}

/// Refuses a benchmarked product `C = A B` of `m x k` by `k x n` that does not fit in memory:
/// each operand is filled on the host and copied to the device.
pub fn check_bench_matmul((m, n, k): (usize, usize, usize)) -> unroll::Result<()> {
    let mut estimate = memory::Estimate::default();
    let p = |a: usize, b: usize| (a as u128).saturating_mul(b as u128).saturating_mul(2);
    let values = p(m, k).saturating_add(p(k, n)).saturating_add(p(m, n));
    estimate.push(
        format!("the operands of a {m}x{n}x{k} product"),
        values,
        "--matmul-shape",
    );
    memory::check("bench --matmul", &estimate)
}

/// The longest pair of `data`: its line in the file and its steps (line 0 and 1 step when there
/// is none).
pub fn longest_pair(data: &Pairs) -> (usize, usize) {
    data.pairs
        .iter()
        .max_by_key(|p| p.len)
        .map_or((0, 1), |p| (p.line, p.len.max(1)))
}

/// What sets T of a pairs run, for a refusal: the longest pair of the file.
pub fn pair_steps_option(data: &Pairs) -> String {
    let (line, len) = longest_pair(data);
    format!("the longest pair (line {line} of the pairs file, {len} steps)")
}
