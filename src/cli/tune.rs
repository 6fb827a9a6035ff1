//! `--tune` of `unroll train` and `unroll bench`, and `unroll tune`: the kernel choice measured
//! on the device and cached (`unroll::tune`).

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde_json::json;
use unroll::bench::{BenchEngine, DeviceKind, StepShape, random_batches};
use unroll::engine::Engine;
use unroll::model::{ParamLayout, init_params};
use unroll::tune::cache::cache_path;
use unroll::tune::{
    CacheEntry, Chosen, Source, TuneCache, TuneMode, TuneOptions, Tuning, WallClock, choose,
    probe_batch, shape_key, tune,
};

use super::bench::{BenchDevice, ShapeArgs, devices, label, shapes_of};
use super::ranks;

/// The seed of the batch a run tunes on (its own tokens are not read yet).
const PROBE_SEED: u64 = 0x7475_6e65;

/// `--tune`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum TuneArg {
    /// The engine's default kernels; the cache is not read.
    Off,
    /// The choice cached for this device and shape, when there is one; nothing is measured.
    #[default]
    Cached,
    /// The cached choice, or (when there is none) measure every variant now and cache the
    /// fastest.
    On,
    /// Measure every variant now and replace the cached choice.
    Again,
}

impl From<TuneArg> for TuneMode {
    fn from(t: TuneArg) -> Self {
        match t {
            TuneArg::Off => TuneMode::Off,
            TuneArg::Cached => TuneMode::Cached,
            TuneArg::On => TuneMode::On,
            TuneArg::Again => TuneMode::Again,
        }
    }
}

/// Applies `--tune` to the engine of a training run of batches of `rows` rows and `steps`
/// steps: prints the notes (a cache ignored or not written) and returns what the first log
/// line says of the variant. Under several processes, `on` and `again` are refused and rank
/// 0's cached choice is every rank's.
pub fn for_run(
    engine: &mut dyn Engine,
    mode: TuneArg,
    (rows, steps): (usize, usize),
) -> anyhow::Result<String> {
    let group = ranks::group();
    if group.size() > 1 && matches!(mode, TuneArg::On | TuneArg::Again) {
        usage!(
            "--tune on and --tune again measure on one process; run `unroll tune` (or train \
             with --tune on) alone first, then the data-parallel run with --tune cached"
        );
    }
    let batch = probe_batch(engine.config(), rows, steps, PROBE_SEED);
    let chosen = if group.is_root() {
        let path = cache_path();
        choose(engine, mode.into(), &batch, path.as_deref())?
    } else {
        unchosen(engine)
    };
    for note in &chosen.notes {
        eprintln!("{note}");
    }
    if group.size() > 1 {
        return share_choice(engine, chosen, group.as_ref());
    }
    Ok(chosen.describe())
}

/// The default choice, as a rank other than 0 holds it before rank 0's arrives.
fn unchosen(engine: &dyn Engine) -> Chosen {
    Chosen {
        variant: engine.variant(),
        source: Source::Default,
        notes: Vec::new(),
        tuning: None,
    }
}

/// Rank 0's choice, sent to every rank and applied there.
fn share_choice(
    engine: &mut dyn Engine,
    mut chosen: Chosen,
    group: &dyn unroll::dist::Group,
) -> anyhow::Result<String> {
    let cached = chosen.source == Source::Cached;
    let mut bytes = serde_json::to_vec(&(chosen.variant, cached))?;
    group.broadcast_bytes(&mut bytes)?;
    let (variant, cached): (unroll::engine::variant::Variant, bool) =
        serde_json::from_slice(&bytes).context("reading rank 0's kernel choice")?;
    engine
        .set_variant(&variant)
        .context("applying rank 0's cached kernel choice")?;
    chosen.variant = variant;
    chosen.source = if cached {
        Source::Cached
    } else {
        Source::Default
    };
    Ok(chosen.describe())
}

/// `unroll tune`: measures every kernel variant of each configuration and caches the fastest.
#[derive(Args, Debug)]
pub struct TuneArgs {
    /// Engines to tune, comma-separated (e.g. cpu,gpu).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "auto")]
    pub device: Vec<BenchDevice>,
    #[command(flatten)]
    pub shape: ShapeArgs,
    /// CPU threads for the CPU engine (1 to 1024).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Seed of the parameters and of the random tokens.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON to this file, rewritten after each configuration (the table still
    /// goes to stdout).
    #[arg(long)]
    pub json_out: Option<std::path::PathBuf>,
}

/// One configuration tuned on one engine.
struct Tuned {
    device: DeviceKind,
    engine: String,
    shape: StepShape,
    tuning: Tuning,
}

pub fn tune_command(a: TuneArgs) -> anyhow::Result<u8> {
    super::bench::cpu_threads(a.threads, false)?;
    let path = cache_path();
    let mut cache = TuneCache::open(path.as_deref());
    for note in &cache.notes {
        eprintln!("{note}");
    }
    if !a.json {
        print_header();
    }
    let mut results = Vec::new();
    for (device, note) in devices(&a.device) {
        if let Some(n) = note {
            eprintln!("note: {n}");
        }
        for shape in shapes_of(&a.shape, false, device)? {
            let (tuned, entry) = tune_shape(device, shape, a.seed)?;
            // Each configuration is kept as soon as it is measured: a run cut short keeps
            // what it measured.
            cache.insert(entry);
            if let Err(e) = cache.save() {
                eprintln!("note: the tuning was not cached: {e}");
            }
            if !a.json {
                print_rows(&tuned);
            }
            results.push(tuned);
            write_json_out(&a, &results, &cache)?;
        }
    }
    if a.json {
        println!("{}", results_json(&results, &cache));
    } else {
        println!("cached in {}", cache.path_text());
    }
    Ok(0)
}

fn write_json_out(a: &TuneArgs, results: &[Tuned], cache: &TuneCache) -> anyhow::Result<()> {
    if let Some(p) = &a.json_out {
        let text = format!("{}\n", results_json(results, cache));
        std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

fn tune_shape(
    device: DeviceKind,
    shape: StepShape,
    seed: u64,
) -> anyhow::Result<(Tuned, CacheEntry)> {
    let label = label(device, &shape);
    eprintln!("tuning {label} ...");
    let config = shape.config()?;
    let params = init_params(&config, &ParamLayout::new(&config)?, seed);
    let mut opened = BenchEngine::open(device, &config, &params)
        .with_context(|| format!("setting up {label}"))?;
    let engine = opened.engine();
    engine.reset_state(shape.batch)?;
    let batch = random_batches(&shape, 1, seed.wrapping_add(1)).remove(0);
    let tuning = tune(
        engine,
        &batch,
        &mut WallClock::default(),
        &TuneOptions::default(),
    )
    .with_context(|| format!("tuning {label}"))?;
    let entry = CacheEntry::new(engine.device_key(), shape_key(&config, &batch), &tuning);
    let tuned = Tuned {
        device,
        engine: engine.describe(),
        shape,
        tuning,
    };
    Ok((tuned, entry))
}

fn results_json(results: &[Tuned], cache: &TuneCache) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = results
        .iter()
        .map(|r| {
            let variants: Vec<serde_json::Value> = r
                .tuning
                .measured
                .iter()
                .map(|m| {
                    json!({
                        "name": m.variant.name(),
                        "variant": m.variant,
                        "median_ms": m.median_ms,
                        "samples": m.samples,
                        "refused": m.refused,
                    })
                })
                .collect();
            json!({
                "device": format!("{:?}", r.device).to_lowercase(),
                "engine": r.engine,
                "shape": r.shape,
                "winner": r.tuning.winner.name(),
                "seconds": r.tuning.seconds,
                "variants": variants,
            })
        })
        .collect();
    json!({ "cache": cache.path_text(), "results": rows })
}

fn print_header() {
    println!("| device | configuration | variant | ms per forward + backward | winner |");
    println!("|---|---|---|---|---|");
}

/// The table's rows of one configuration, each variant's median and the winner starred.
fn print_rows(r: &Tuned) {
    let config = label(r.device, &r.shape);
    for m in &r.tuning.measured {
        let time = match (&m.median_ms, &m.refused) {
            (Some(ms), _) => format!("{ms:.3}"),
            (None, Some(why)) => format!("not run: {why}"),
            (None, None) => "-".into(),
        };
        let winner = if m.variant == r.tuning.winner {
            "*"
        } else {
            ""
        };
        println!(
            "| {} | {config} | {} | {time} | {winner} |",
            r.engine,
            m.variant.name()
        );
    }
}
