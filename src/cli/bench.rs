//! `unroll bench`: training throughput of the char-LM step on the chosen engines, as a table or
//! JSON, optionally with a per-phase profile, the PyTorch baseline side by side, or the WGSL
//! matmul's TFLOP/s. The measurement itself lives in `unroll::bench`.

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde_json::json;
use unroll::bench::pytorch::{self, TorchInfo, TorchReport};
use unroll::bench::{
    DeviceKind, StepBench, StepReport, StepShape, Timing, cell_name, default_sweep, matmul,
    parse_cell,
};
use unroll::engine::gpu::GpuContext;

use super::options::with_default;
use super::sizes::{check_bench_matmul, check_bench_step};
use super::tune::TuneArg;
use super::{bench_parallel, ranks};
use unroll::memory::Rows;

/// `--recurrence`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RecurrenceArg {
    Auto,
    Steps,
    Wide,
    Rows,
}

impl From<RecurrenceArg> for unroll::engine::Recurrence {
    fn from(r: RecurrenceArg) -> Self {
        match r {
            RecurrenceArg::Auto => Self::Auto,
            RecurrenceArg::Steps => Self::Steps,
            RecurrenceArg::Wide => Self::Wide,
            RecurrenceArg::Rows => Self::Rows,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchDevice {
    /// A hardware GPU when there is one, else the CPU.
    Auto,
    /// The GPU engine (any adapter, software ones included).
    Gpu,
    /// The CPU reference engine.
    Cpu,
}

/// A baseline to run side by side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Baseline {
    /// benches/pytorch_baseline.py: nn.RNN/GRU/LSTM + Linear + cross-entropy, same protocol.
    Pytorch,
}

/// The one configuration measured when --hidden, --batch, --seq-len or --quick is given: H, B
/// and T, each when not given.
const ONE_HIDDEN: usize = 128;
const ONE_BATCH: usize = 32;
const ONE_SEQ_LEN: usize = 64;
/// Steps per timed sample on the GPU (and per submission of --matmul).
const GPU_BLOCK: usize = 10;
/// Steps per timed sample on the CPU, whose engine is synchronous.
const CPU_BLOCK: usize = 1;

/// What the help says of the defaults of `unroll bench` that are not a single value, after
/// each option's own text.
fn defaults() -> Vec<(&'static str, String)> {
    let shapes: Vec<String> = matmul::DEFAULT_SHAPES
        .iter()
        .map(|(m, n, k)| format!("{m}x{n}x{k}"))
        .collect();
    vec![
        ("cell", "[default: every cell of this build]".into()),
        ("batch", format!("(one configuration; default {ONE_BATCH})")),
        (
            "seq_len",
            format!("(one configuration; default {ONE_SEQ_LEN})"),
        ),
        (
            "block",
            format!(
                "[default: {GPU_BLOCK} on the GPU, {CPU_BLOCK} on the CPU, whose engine is \
                 synchronous]"
            ),
        ),
        (
            "quick",
            format!("(H={ONE_HIDDEN}, B={ONE_BATCH}, T={ONE_SEQ_LEN})"),
        ),
        (
            "threads",
            "[default: the available cores (under an MPI launcher, shared among the ranks of \
             the machine), or RAYON_NUM_THREADS when set]"
                .into(),
        ),
        ("matmul_shape", format!("[default: {}]", shapes.join(","))),
    ]
}

/// The `unroll bench` command with its defaults written into the help.
pub fn with_defaults(c: clap::Command) -> clap::Command {
    let defaults = defaults();
    c.mut_args(|a| {
        let default = defaults
            .iter()
            .find(|(id, _)| a.get_id() == *id)
            .map(|(_, d)| d.as_str());
        with_default(a, default)
    })
}

/// The model and batch shapes of `unroll bench` and `unroll tune`.
#[derive(Args, Debug)]
pub struct ShapeArgs {
    /// Recurrent cells, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub cell: Vec<String>,
    /// State size H: with --batch/--seq-len, one configuration instead of the default sweep
    /// (docs/ARCHITECTURE.md, "Tuning numbers": the GPU anchors, or B=32 T=64 H=128 and 512 on
    /// the CPU).
    #[arg(long)]
    pub hidden: Option<usize>,
    /// Streams per batch, B.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Time steps per batch, T.
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Stacked recurrent layers.
    #[arg(long, default_value_t = 1)]
    pub layers: usize,
    /// Vocabulary size V (one-hot inputs, softmax outputs).
    #[arg(long, default_value_t = 65)]
    pub vocab_size: usize,
    /// Embed the tokens in E dimensions before the first layer (`nn.Embedding` in the PyTorch
    /// baseline), as word-level models do.
    #[arg(long)]
    pub embed: Option<usize>,
    /// Bidirectional layers (`bidirectional=True` in the PyTorch baseline). The step is then a
    /// labelling step: random labels on every step, and the state reset to zero before every
    /// batch instead of carried.
    #[arg(long)]
    pub bidirectional: bool,
    /// LSTM: project the state to P values (`proj_size=P`).
    #[arg(long, value_name = "P")]
    pub proj_size: Option<usize>,
    /// Recurrent layers without biases (`bias=False`).
    #[arg(long)]
    pub no_bias: bool,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Engines to measure, comma-separated (e.g. cpu,gpu).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "auto")]
    pub device: Vec<BenchDevice>,
    #[command(flatten)]
    pub shape: ShapeArgs,
    /// GPU: how the recurrent products are dispatched: `wide` (one dispatch per time step, a
    /// few output columns per workgroup; a gated step's gate work fused in), `steps` (one tiled
    /// product per time step, and a gate kernel for gated cells), `rows` (tanh/relu: one
    /// dispatch per layer, a workgroup per batch row; gated cells run `wide`), or `auto`
    /// (tanh/relu: rows below H = 512 where they fit, else wide; gated cells: wide).
    #[arg(long, value_enum, default_value_t = RecurrenceArg::Auto)]
    pub recurrence: RecurrenceArg,
    /// Untimed steps first.
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// Timed samples.
    #[arg(long, default_value_t = 20)]
    pub repeats: usize,
    /// Steps per timed sample, waited for once and divided.
    #[arg(long)]
    pub block: Option<usize>,
    /// A smoke run: few repeats of one small configuration.
    #[arg(long)]
    pub quick: bool,
    /// Measure unroll and the baseline this many times, alternating, and pool the samples of
    /// all rounds (on a shared, noisy machine the two then see the same conditions).
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Add a per-phase breakdown of the step.
    #[arg(long)]
    pub profile: bool,
    /// Also run this baseline on the same configurations and print the ratio.
    #[arg(long, value_enum)]
    pub baseline: Option<Baseline>,
    /// Python interpreter for the PyTorch baseline.
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// CPU threads for the CPU engine's GEMMs and for PyTorch (1 to 1024).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Seed of the parameters and of the random tokens.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Time the WGSL matmul alone instead of training steps (GPU), in TFLOP/s.
    #[arg(long)]
    pub matmul: bool,
    /// GEMM shapes for --matmul, MxNxK, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub matmul_shape: Vec<String>,
    /// Also measure each configuration on its kernel choice (`unroll tune`): `on` measures
    /// the variants where none is cached, `again` always, `cached` takes a cached choice only;
    /// the table and the JSON give the default's figure beside the tuned one's.
    #[arg(long, value_enum, default_value_t = TuneArg::Off)]
    pub tune: TuneArg,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON to this file (the table still goes to stdout).
    #[arg(long)]
    pub json_out: Option<std::path::PathBuf>,
}

/// Prints `value` (with --json) and writes it to --json-out (rank 0 alone under an MPI launcher;
/// the others' output is silenced).
pub(super) fn emit_json(a: &BenchArgs, value: &serde_json::Value) -> anyhow::Result<()> {
    if a.json {
        println!("{value}");
    }
    if let Some(path) = a.json_out.as_ref().filter(|_| ranks::group().is_root()) {
        std::fs::write(path, format!("{value}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// One measured configuration, with the baseline when it ran.
pub(super) struct Row {
    pub(super) report: StepReport,
    pub(super) torch: Option<TorchReport>,
    /// unroll / PyTorch tokens/s of each round.
    pub(super) round_ratios: Vec<f64>,
    /// The kernel variant the report ran.
    pub(super) variant: Option<String>,
    /// With `--tune`: the same configuration on its kernel choice.
    pub(super) tuned: Option<TunedRow>,
}

/// A configuration measured again on the kernel variant `--tune` chose.
pub(super) struct TunedRow {
    pub(super) variant: String,
    /// "cached" or "tuned in N s".
    pub(super) source: String,
    pub(super) report: StepReport,
}

/// The number of threads the CPU engine's GEMMs use. They run on rayon's global pool, which
/// reads RAYON_NUM_THREADS once, when it is first used, so it is set here, before any engine
/// exists.
/// The most CPU threads a benchmark may ask for: each thread reserves its stack, so an absurd
/// count would exhaust the address space before the first step.
const MAX_THREADS: usize = 1024;

pub(super) fn cpu_threads(asked: Option<usize>, several: bool) -> anyhow::Result<usize> {
    const VAR: &str = "RAYON_NUM_THREADS";
    let env = std::env::var(VAR).ok();
    if let Some(v) = env.as_deref().filter(|v| !v.is_empty()) {
        let n: usize = v
            .parse()
            .with_context(|| format!("{VAR}={v:?} is not a number"))?;
        if let Some(a) = asked.filter(|&a| a != n) {
            bail!("--threads {a} contradicts {VAR}={n}; give one of them");
        }
        return Ok(n.max(1));
    }
    // Ranks on one machine share its cores, as in training.
    let n = asked.unwrap_or_else(ranks::cores_per_rank);
    if n == 0 {
        usage!("--threads must be at least 1");
    }
    if n > MAX_THREADS {
        usage!("--threads {n} is more than {MAX_THREADS}");
    }
    if several {
        // The MPI library's threads run already: the pool is sized without the environment.
        ranks::size_thread_pool(n)?;
        return Ok(n);
    }
    // SAFETY: called at the start of the command, before this process starts any thread
    // (no engine, device or pool exists yet), so nothing reads the environment concurrently.
    unsafe { std::env::set_var(VAR, n.to_string()) };
    Ok(n)
}

pub(super) fn devices(asked: &[BenchDevice]) -> Vec<(DeviceKind, Option<String>)> {
    let mut out: Vec<(DeviceKind, Option<String>)> = Vec::new();
    for d in asked {
        let pick = match d {
            BenchDevice::Cpu => (DeviceKind::Cpu, None),
            BenchDevice::Gpu => (DeviceKind::Gpu, None),
            BenchDevice::Auto => match GpuContext::open_hardware() {
                Some(_) => (DeviceKind::Gpu, None),
                None => (
                    DeviceKind::Cpu,
                    Some("--device auto: no hardware GPU, measuring the CPU engine".to_string()),
                ),
            },
        };
        if !out.iter().any(|(k, _)| *k == pick.0) {
            out.push(pick);
        }
    }
    out
}

pub(super) fn shapes(a: &BenchArgs, device: DeviceKind) -> anyhow::Result<Vec<StepShape>> {
    shapes_of(&a.shape, a.quick, device)
}

/// The configurations of `a` on `device`: one per cell when H, B or T is given (or `quick`),
/// else the default sweep; each checked against the memory guard.
pub(super) fn shapes_of(
    a: &ShapeArgs,
    quick: bool,
    device: DeviceKind,
) -> anyhow::Result<Vec<StepShape>> {
    let cells = a
        .cell
        .iter()
        .map(|c| parse_cell(c))
        .collect::<Result<Vec<_>, _>>()?;
    let one = quick || a.hidden.is_some() || a.batch.is_some() || a.seq_len.is_some();
    let mut out = if one {
        let cells = if cells.is_empty() {
            vec![parse_cell("rnn")?]
        } else {
            cells
        };
        cells
            .into_iter()
            .map(|cell| {
                StepShape::new(
                    cell,
                    a.vocab_size,
                    a.hidden.unwrap_or(ONE_HIDDEN),
                    a.batch.unwrap_or(ONE_BATCH),
                    a.seq_len.unwrap_or(ONE_SEQ_LEN),
                )
            })
            .collect()
    } else {
        default_sweep(device, &cells, a.vocab_size)
    };
    for s in &mut out {
        s.layers = a.layers;
        s.embed = a.embed;
        s.bidirectional = a.bidirectional;
        s.proj_size = a.proj_size;
        s.bias = !a.no_bias;
        let rows = Rows {
            rows: s.batch,
            steps: s.seq_len,
        };
        check_bench_step(&s.config()?, rows)?;
    }
    Ok(out)
}

pub(super) fn timing(a: &BenchArgs, device: DeviceKind) -> Timing {
    let block = a.block.unwrap_or(match device {
        DeviceKind::Cpu => CPU_BLOCK,
        DeviceKind::Gpu => GPU_BLOCK,
    });
    if a.quick {
        Timing {
            warmup: a.warmup.min(2),
            repeats: a.repeats.min(5),
            block: block.min(3),
        }
    } else {
        Timing {
            warmup: a.warmup,
            repeats: a.repeats,
            block,
        }
    }
}

pub(super) fn fmt_tokens(t: f64) -> String {
    if t >= 1e6 {
        format!("{:.2} M", t / 1e6)
    } else if t >= 1e3 {
        format!("{:.1} k", t / 1e3)
    } else {
        format!("{t:.0}")
    }
}

/// The cell and the layer options of `s`, as the table's cell column shows them.
pub(super) fn model_name(s: &StepShape) -> String {
    let mut name = cell_name(s.cell);
    if s.bidirectional {
        name.push_str(" bidirectional");
    }
    if let Some(p) = s.proj_size {
        name.push_str(&format!(" P={p}"));
    }
    if !s.bias {
        name.push_str(" no-bias");
    }
    name
}

pub(super) fn print_table(rows: &[Row], with_torch: bool) {
    let mut head = vec![
        "device",
        "cell",
        "H",
        "B",
        "T",
        "L",
        "V",
        "E",
        "tokens/s",
        "ms/step",
        "p10-p90 ms",
        "latency ms",
    ];
    if with_torch {
        head.extend([
            "PyTorch tokens/s",
            "PyTorch ms/step",
            "PyTorch p10-p90 ms",
            "ratio",
        ]);
    }
    let with_tuned = rows.iter().any(|r| r.tuned.is_some());
    if with_tuned {
        head.extend(["tuned variant", "tuned tokens/s", "tuned ms/step"]);
    }
    println!("| {} |", head.join(" | "));
    println!("|{}", "---|".repeat(head.len()));
    for r in rows {
        let (s, st) = (&r.report.shape, &r.report.step_ms);
        let device = format!("{:?}", r.report.device).to_lowercase();
        let mut cells = vec![
            match &r.report.recurrence {
                Some(k) => format!("{device} ({k})"),
                None => device,
            },
            model_name(s),
            s.hidden.to_string(),
            s.batch.to_string(),
            s.seq_len.to_string(),
            s.layers.to_string(),
            s.vocab.to_string(),
            s.embed.map_or("-".into(), |e| e.to_string()),
            fmt_tokens(r.report.tokens_per_s),
            format!("{:.3}", st.median),
            format!("{:.3}-{:.3}", st.p10, st.p90),
            format!("{:.3}", r.report.latency_ms.median),
        ];
        if with_torch {
            match &r.torch {
                Some(t) => cells.extend([
                    fmt_tokens(t.tokens_per_s),
                    format!("{:.3}", t.step_ms.median),
                    format!("{:.3}-{:.3}", t.step_ms.p10, t.step_ms.p90),
                    format!("{:.2}x", r.report.tokens_per_s / t.tokens_per_s),
                ]),
                None => cells.extend(["-".into(), "-".into(), "-".into(), "-".into()]),
            }
        }
        if with_tuned {
            cells.extend(tuned_cells(r.tuned.as_ref()));
        }
        println!("| {} |", cells.join(" | "));
    }
    for r in rows {
        for p in &r.report.profile {
            let s = &r.report.shape;
            println!(
                "\nprofile, {:?} {} H={} B={} T={} ({}):",
                r.report.device,
                cell_name(s.cell),
                s.hidden,
                s.batch,
                s.seq_len,
                p.method
            );
            for ph in &p.phases {
                println!(
                    "  {:<52} {:>10.3} ms  {:>5.1}%",
                    ph.name,
                    ph.ms,
                    100.0 * ph.share
                );
            }
        }
    }
}

/// The tuned columns of a row: the variant and where it came from, its tokens/s and ms.
fn tuned_cells(tuned: Option<&TunedRow>) -> [String; 3] {
    match tuned {
        Some(t) => [
            format!("{} ({})", t.variant, t.source),
            fmt_tokens(t.report.tokens_per_s),
            format!("{:.3}", t.report.step_ms.median),
        ],
        None => ["-".into(), "-".into(), "-".into()],
    }
}

fn run_matmul(a: &BenchArgs) -> anyhow::Result<u8> {
    let shapes = if a.matmul_shape.is_empty() {
        matmul::DEFAULT_SHAPES.to_vec()
    } else {
        a.matmul_shape
            .iter()
            .map(|s| matmul::parse_shape(s))
            .collect::<Result<Vec<_>, _>>()?
    };
    for &shape in &shapes {
        check_bench_matmul(shape)?;
    }
    let ctx = GpuContext::open(true).context("--matmul needs a GPU adapter")?;
    eprintln!("adapter: {}", ctx.info);
    let per_submit = a.block.unwrap_or(GPU_BLOCK);
    let reports = shapes
        .into_iter()
        .map(|s| matmul::measure(&ctx, s, per_submit, a.repeats))
        .collect::<Result<Vec<_>, _>>()?;
    emit_json(a, &json!({ "matmul": reports }))?;
    if !a.json {
        println!("| M | N | K | ms | TFLOP/s |\n|---|---|---|---|---|");
        for r in &reports {
            println!(
                "| {} | {} | {} | {:.3} | {:.3} |",
                r.m, r.n, r.k, r.ms.median, r.tflops
            );
        }
    }
    Ok(0)
}

/// The 1-minute load average (Linux), to tell a quiet machine from a busy one.
pub(super) fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The share of the last 10 s in which some runnable task waited for a CPU (Linux PSI, percent).
pub(super) fn cpu_pressure() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/pressure/cpu").ok()?;
    let some = text.lines().find(|l| l.starts_with("some"))?;
    some.split_whitespace()
        .find_map(|f| f.strip_prefix("avg10="))?
        .parse()
        .ok()
}

/// The PyTorch baseline when --baseline asks for it and it runs (else a note says why not).
fn probe_baseline(a: &BenchArgs, notes: &mut Vec<String>) -> Option<TorchInfo> {
    match a.baseline {
        None => None,
        Some(Baseline::Pytorch) => match pytorch::probe(&a.python) {
            Ok(info) => {
                eprintln!(
                    "baseline: PyTorch {} (CUDA: {})",
                    info.torch,
                    info.cuda_device.as_deref().unwrap_or("none")
                );
                Some(info)
            }
            Err(why) => {
                notes.push(format!(
                    "no PyTorch baseline: {why}; printing unroll's numbers alone"
                ));
                None
            }
        },
    }
}

/// How the log and the notes name a configuration on an engine.
pub(super) fn label(device: DeviceKind, shape: &StepShape) -> String {
    format!(
        "{:?} {} H={} B={} T={} L={} V={}{}",
        device,
        model_name(shape),
        shape.hidden,
        shape.batch,
        shape.seq_len,
        shape.layers,
        shape.vocab,
        shape.embed.map_or(String::new(), |e| format!(" E={e}"))
    )
}

/// What one configuration is measured with.
struct Measure<'a> {
    a: &'a BenchArgs,
    device: DeviceKind,
    timing: Timing,
    torch: Option<&'a TorchInfo>,
    threads: usize,
}

impl Measure<'_> {
    /// The baseline's measurement of `shape` in round `round` (`None` when it does not run).
    fn torch_round(
        &self,
        shape: &StepShape,
        label: &str,
        round: usize,
        notes: &mut Vec<String>,
    ) -> Option<TorchReport> {
        let (a, device) = (self.a, self.device);
        match (self.torch, device) {
            (Some(info), DeviceKind::Gpu) if !info.cuda => {
                if round == 0 {
                    notes.push(format!(
                        "{label}: no PyTorch baseline, torch sees no CUDA device"
                    ));
                }
                None
            }
            (Some(_), _) => {
                match pytorch::run(&a.python, device, shape, self.timing, self.threads, a.seed) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        notes.push(format!("{label}: {e}"));
                        None
                    }
                }
            }
            (None, _) => None,
        }
    }

    /// Measures `shape` for every round, alternating with the baseline.
    fn shape(&self, shape: StepShape, notes: &mut Vec<String>) -> anyhow::Result<Option<Row>> {
        let (a, device) = (self.a, self.device);
        let label = label(device, &shape);
        eprintln!("measuring {label} ...");
        let mut bench = match StepBench::new(device, shape, a.seed) {
            Ok(b) => b,
            // The configuration was checked: the engine does not run one of its options.
            Err(e @ unroll::Error::Config(_)) => {
                notes.push(format!("{label}: not measured: {e}"));
                return Ok(None);
            }
            Err(e) => return Err(e).with_context(|| format!("setting up {label}")),
        };
        bench.engine.engine().set_recurrence(a.recurrence.into())?;
        let mut row: Option<Row> = None;
        for round in 0..a.rounds.max(1) {
            let report = bench
                .measure(self.timing, a.profile && round == 0)
                .with_context(|| format!("measuring {label}"))?;
            let torch = self.torch_round(&shape, &label, round, notes);
            row = Some(match row.take() {
                None => Row::new(report, torch),
                Some(mut r) => {
                    r.add(report, torch)?;
                    r
                }
            });
        }
        if let Some(r) = row.as_mut() {
            r.variant = Some(bench.engine.engine().variant().name());
            r.tuned = self.tuned(&mut bench, &label, notes)?;
        }
        Ok(row)
    }

    /// With `--tune`: the configuration measured again on its kernel choice (`None` when it
    /// has none: `--tune off`, or nothing cached for `--tune cached`).
    fn tuned(
        &self,
        bench: &mut StepBench,
        label: &str,
        notes: &mut Vec<String>,
    ) -> anyhow::Result<Option<TunedRow>> {
        let mode = unroll::tune::TuneMode::from(self.a.tune);
        if mode == unroll::tune::TuneMode::Off {
            return Ok(None);
        }
        let shape = bench.shape;
        let batch = unroll::bench::random_batches(&shape, 1, self.a.seed).remove(0);
        let path = unroll::tune::cache::cache_path();
        let engine = bench.engine.engine();
        let chosen = unroll::tune::choose(engine, mode, &batch, path.as_deref())
            .with_context(|| format!("tuning {label}"))?;
        engine.reset_state(shape.batch)?;
        notes.extend(chosen.notes.iter().map(|n| format!("{label}: {n}")));
        if chosen.source == unroll::tune::Source::Default {
            notes.push(format!(
                "{label}: no kernel choice cached for this device (bench --tune on measures one)"
            ));
            return Ok(None);
        }
        let report = bench
            .measure(self.timing, false)
            .with_context(|| format!("measuring {label} on its kernel choice"))?;
        Ok(Some(TunedRow {
            variant: chosen.variant.name(),
            source: chosen.source_text(),
            report,
        }))
    }
}

impl TunedRow {
    fn json(&self) -> serde_json::Value {
        json!({
            "variant": self.variant,
            "source": self.source,
            "tokens_per_s": self.report.tokens_per_s,
            "step_ms": self.report.step_ms,
            "latency_ms": self.report.latency_ms,
        })
    }
}

impl Row {
    fn new(report: StepReport, torch: Option<TorchReport>) -> Self {
        let ratio = torch.as_ref().map(|t| report.tokens_per_s / t.tokens_per_s);
        Row {
            report,
            torch,
            round_ratios: ratio.into_iter().collect(),
            variant: None,
            tuned: None,
        }
    }

    /// Pools a later round's samples into this row.
    fn add(&mut self, report: StepReport, torch: Option<TorchReport>) -> anyhow::Result<()> {
        let ratio = torch.as_ref().map(|t| report.tokens_per_s / t.tokens_per_s);
        self.report.merge(report)?;
        self.torch = match (self.torch.take(), torch) {
            (Some(mut all), Some(t)) => {
                all.merge(t)?;
                Some(all)
            }
            (all, t) => all.or(t),
        };
        self.round_ratios.extend(ratio);
        Ok(())
    }

    pub(super) fn json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.report).unwrap_or_default();
        if let Some(obj) = v.as_object_mut() {
            obj.insert("pytorch".into(), json!(self.torch));
            obj.insert(
                "ratio".into(),
                json!(
                    self.torch
                        .as_ref()
                        .map(|t| self.report.tokens_per_s / t.tokens_per_s)
                ),
            );
            obj.insert("round_ratios".into(), json!(self.round_ratios));
            obj.insert("variant".into(), json!(self.variant));
            if let Some(t) = &self.tuned {
                obj.insert("tuned".into(), t.json());
            }
        }
        v
    }
}

/// The machine a bench ran on, and how busy it was before and after.
pub(super) struct Machine {
    cpu: String,
    cores: usize,
    threads: usize,
    load: (Option<f64>, Option<f64>),
    pressure: (Option<f64>, Option<f64>),
}

impl Machine {
    /// The machine now, with the load and pressure `before` measured at the start.
    pub(super) fn after(threads: usize, before: (Option<f64>, Option<f64>)) -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|m| m.trim().to_string())
            })
            .unwrap_or_else(|| std::env::consts::ARCH.to_string());
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            threads,
            load: (before.0, load_average()),
            pressure: (before.1, cpu_pressure()),
        }
    }

    pub(super) fn json(&self) -> serde_json::Value {
        json!({
            "cpu": self.cpu,
            "cores": self.cores,
            "threads": self.threads,
            "load_before": self.load.0,
            "load_after": self.load.1,
            "cpu_pressure_before": self.pressure.0,
            "cpu_pressure_after": self.pressure.1,
        })
    }

    pub(super) fn print(&self) {
        let load = |l: Option<f64>| l.map_or("?".to_string(), |v| format!("{v:.2}"));
        println!(
            "machine: {}, {} cores; CPU threads: {}; load average {} before, {} \
             after; CPU pressure (some, avg10) {}% before, {}% after",
            self.cpu,
            self.cores,
            self.threads,
            load(self.load.0),
            load(self.load.1),
            load(self.pressure.0),
            load(self.pressure.1)
        );
    }
}

pub fn bench(a: BenchArgs) -> anyhow::Result<u8> {
    let several = ranks::group().size() > 1;
    let threads = cpu_threads(a.threads, several)?;
    let before = (load_average(), cpu_pressure());
    if several {
        return bench_parallel::bench(&a, threads, before);
    }
    if a.matmul {
        return run_matmul(&a);
    }
    let mut notes: Vec<String> = Vec::new();
    let torch = probe_baseline(&a, &mut notes);
    let mut rows = Vec::new();
    for (device, note) in devices(&a.device) {
        notes.extend(note);
        let measure = Measure {
            a: &a,
            device,
            timing: timing(&a, device),
            torch: torch.as_ref(),
            threads,
        };
        for shape in shapes(&a, device)? {
            rows.extend(measure.shape(shape, &mut notes)?);
        }
    }
    let machine = Machine::after(threads, before);
    for n in &notes {
        eprintln!("note: {n}");
    }
    if rows.is_empty() {
        usage!("nothing was measured: no engine asked for runs this configuration (see the notes)");
    }
    let out = json!({
        "machine": machine.json(),
        "pytorch": torch.as_ref().map(|t| &t.torch),
        "results": rows.iter().map(Row::json).collect::<Vec<_>>(),
        "notes": notes,
    });
    emit_json(&a, &out)?;
    if !a.json {
        machine.print();
        if let Some(r) = rows.iter().find(|r| r.report.device == DeviceKind::Gpu) {
            println!("gpu: {}", r.report.engine);
        }
        print_table(&rows, torch.is_some());
    }
    Ok(0)
}
