//! `unroll bench` under an MPI launcher of several processes: every rank runs its share of the
//! global batch through the engine data-parallel training runs, and rank 0 alone runs the whole
//! batch in the same invocation (`unroll::bench::parallel`). Rank 0 prints the job's tokens/s,
//! each rank's, the all-reduce time per step and the scaling efficiency against one process.

use std::rc::Rc;

use anyhow::Context;
use serde_json::json;
use unroll::bench::parallel::{ParallelBench, ParallelReport};
use unroll::bench::{DeviceKind, StepShape, Timing};
use unroll::dist::{self, Group};

use super::bench::{
    BenchArgs, Machine, Row, devices, emit_json, fmt_tokens, label, model_name, print_table,
    shapes, timing,
};
use super::ranks;
use super::tune::TuneArg;

/// The engines and their configurations, each with its note (`--device auto` without a GPU).
type Plan = Vec<(DeviceKind, Option<String>, Vec<StepShape>)>;

/// The benchmark on every rank of this run; `threads` per rank, the load `before` it started.
pub fn bench(
    a: &BenchArgs,
    threads: usize,
    before: (Option<f64>, Option<f64>),
) -> anyhow::Result<u8> {
    let group = ranks::group();
    let plan = ranks::agree(group.as_ref(), plan(a))?;
    let mut notes: Vec<String> = Vec::new();
    let mut reports = Vec::new();
    let mut measured = 0;
    for (device, note, shapes) in plan {
        notes.extend(note);
        for shape in shapes {
            let Some(report) = measure(a, device, shape, &group, &mut notes)? else {
                continue;
            };
            measured += 1;
            reports.extend(report);
        }
    }
    if measured == 0 {
        return ranks::agree(group.as_ref(), nothing_measured());
    }
    if group.is_root() {
        let machine = Machine::after(threads, before);
        for n in &notes {
            eprintln!("note: {n}");
        }
        print(a, &machine, &reports, &notes)?;
    }
    Ok(0)
}

fn nothing_measured() -> anyhow::Result<u8> {
    usage!("nothing was measured: no engine asked for runs this configuration (see the notes)");
}

/// What every rank measures, checked: the options a run of several processes takes, and
/// batches that split into one equal share per process.
fn plan(a: &BenchArgs) -> anyhow::Result<Plan> {
    if a.matmul || a.baseline.is_some() {
        usage!(
            "--matmul and --baseline measure one process; run them without the MPI launcher \
             (under it, `unroll bench` measures the data-parallel step)"
        );
    }
    if a.tune != TuneArg::Off {
        usage!("--tune measures one process; run `unroll bench --tune` without the MPI launcher");
    }
    let mut plan = Vec::new();
    for (device, note) in devices(&a.device) {
        let shapes = shapes(a, device)?;
        for s in &shapes {
            ranks::check_split(s.batch)?;
        }
        plan.push((device, note, shapes));
    }
    Ok(plan)
}

/// One configuration on every rank: `None` when an engine does not run it (a note says why),
/// else the report, on rank 0.
fn measure(
    a: &BenchArgs,
    device: DeviceKind,
    shape: StepShape,
    group: &Rc<dyn Group>,
    notes: &mut Vec<String>,
) -> anyhow::Result<Option<Option<ParallelReport>>> {
    let label = format!("{} on {} processes", label(device, &shape), group.size());
    eprintln!("measuring {label} ...");
    let made = match ParallelBench::new(device, shape, a.seed, Rc::clone(group)) {
        Err(e @ unroll::Error::Config(_)) => {
            notes.push(format!("{label}: not measured: {e}"));
            None
        }
        made => Some(made.with_context(|| format!("setting up {label}"))),
    };
    // Every rank skips the configuration when one does, or none: they must stay in step.
    let skip = dist::any(group.as_ref(), made.is_none())?;
    let made = ranks::agree(group.as_ref(), made.transpose())?;
    let Some(mut bench) = made.filter(|_| !skip) else {
        return Ok(None);
    };
    let timing = timing(a, device);
    start(a, &mut bench, settings_hash(a, device, &shape, timing))?;
    for round in 0..a.rounds.max(1) {
        bench
            .round(timing, a.profile && round == 0)
            .with_context(|| format!("measuring {label}"))?;
    }
    Ok(Some(bench.report()?))
}

/// The engines' recurrence form, and the start of the ranks from one set of parameters after
/// checking that they all measure the same thing.
fn start(a: &BenchArgs, bench: &mut ParallelBench, hash: u64) -> anyhow::Result<()> {
    let (ranks_engine, alone) = bench.engines();
    ranks_engine.engine().set_recurrence(a.recurrence.into())?;
    if let Some(alone) = alone {
        alone.engine().set_recurrence(a.recurrence.into())?;
    }
    ranks::start(ranks_engine.engine(), hash)
}

/// A hash of what a rank measures, which every rank must share.
fn settings_hash(a: &BenchArgs, device: DeviceKind, shape: &StepShape, timing: Timing) -> u64 {
    let parts = [
        serde_json::to_vec(&(device, shape, timing)).unwrap_or_default(),
        a.seed.to_le_bytes().to_vec(),
        a.rounds.to_le_bytes().to_vec(),
        [u8::from(a.profile)].to_vec(),
        format!("{:?}", a.recurrence).into_bytes(),
    ];
    dist::settings_hash(&parts.iter().map(Vec::as_slice).collect::<Vec<_>>())
}

/// Rank 0's output: the JSON (with --json or --json-out) and the tables.
fn print(
    a: &BenchArgs,
    machine: &Machine,
    reports: &[ParallelReport],
    notes: &[String],
) -> anyhow::Result<()> {
    let rows: Vec<Row> = reports
        .iter()
        .map(|r| Row {
            report: r.job.clone(),
            torch: None,
            round_ratios: Vec::new(),
            variant: None,
            tuned: None,
        })
        .collect();
    let results: Vec<serde_json::Value> = (rows.iter().zip(reports))
        .map(|(row, r)| {
            let mut v = row.json();
            if let Some(obj) = v.as_object_mut() {
                obj.insert("data_parallel".into(), json!(r.scaling));
            }
            v
        })
        .collect();
    let out = json!({
        "machine": machine.json(),
        "pytorch": null,
        "results": results,
        "notes": notes,
    });
    emit_json(a, &out)?;
    if !a.json {
        machine.print();
        print_table(&rows, false);
        print_scaling(reports);
    }
    Ok(())
}

/// The table of the job against one process.
fn print_scaling(reports: &[ParallelReport]) {
    let head = [
        "device",
        "cell",
        "H",
        "B",
        "T",
        "processes",
        "job tokens/s",
        "per-rank tokens/s",
        "one process tokens/s",
        "speedup",
        "efficiency",
        "all-reduce ms/step",
        "of which the sum",
        "gradient",
    ];
    if let Some(r) = reports.first() {
        println!("\ndata-parallel: {}", r.scaling.group);
    }
    println!("| {} |", head.join(" | "));
    println!("|{}", "---|".repeat(head.len()));
    for r in reports {
        let (s, sc) = (&r.job.shape, &r.scaling);
        let per_rank: Vec<String> = sc
            .per_rank
            .iter()
            .map(|p| fmt_tokens(p.tokens_per_s))
            .collect();
        let cells = [
            format!("{:?}", r.job.device).to_lowercase(),
            model_name(s),
            s.hidden.to_string(),
            s.batch.to_string(),
            s.seq_len.to_string(),
            sc.processes.to_string(),
            fmt_tokens(r.job.tokens_per_s),
            per_rank.join(" / "),
            fmt_tokens(sc.one_process.tokens_per_s),
            format!("{:.2}x", sc.speedup),
            format!("{:.0}%", 100.0 * sc.efficiency),
            format!("{:.3}", 1e3 * sc.allreduce.seconds_per_step),
            format!("{:.3}", 1e3 * sc.allreduce.sum_seconds_per_step),
            format!("{:.2} MB", sc.allreduce.gradient_bytes as f64 / 1e6),
        ];
        println!("| {} |", cells.join(" | "));
    }
}
