//! Training metrics: `metrics.jsonl` (one JSON object per report) and the loss-curve picture
//! `loss.svg`, redrawn from all records at every evaluation.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::checkpoint::write_atomic;

/// File name of the metrics inside a run directory.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// File name of the loss curve inside a run directory.
pub const PLOT_FILE: &str = "loss.svg";

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub step: u64,
    /// The passes over the training data completed, on an evaluation at the end of one
    /// (`--eval-every epoch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    /// Fraction of correct validation predictions (class and binary outputs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_accuracy: Option<f64>,
    /// Predictions (tokens, or steps of pairs) the validation scored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_tokens: Option<u64>,
    /// Lines the validation scored (lines mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_lines: Option<u64>,
    /// Pairs the validation scored (a run on pairs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_pairs: Option<u64>,
    /// `true` on the closing evaluation after the last step of a run whose periodic
    /// evaluations score a subset of the validation part (by default it scores all of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_final: Option<bool>,
    /// Bits per token of the loss on this line (validation when present, else training).
    pub bits_per_token: f64,
    /// `exp(loss)` of the same loss, for class (softmax) outputs: the perplexity per token
    /// (per word for a word-level model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perplexity: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_per_sec: Option<f64>,
    pub lr: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f32>,
}

impl Record {
    /// A record at `step` of a loss in nats per token, with its bits per token and, for class
    /// outputs (`perplexity`), its perplexity.
    pub fn of_loss(step: u64, loss: f64, perplexity: bool, lr: f32) -> Self {
        Record {
            step,
            bits_per_token: loss / std::f64::consts::LN_2,
            perplexity: perplexity.then(|| loss.exp()),
            lr,
            ..Record::default()
        }
    }
}

/// The metrics of a run: appended to `metrics.jsonl`, kept in memory for the plot.
pub struct Metrics {
    path: PathBuf,
    svg: PathBuf,
    records: Vec<Record>,
    /// `None`: the records are kept in memory only (the ranks of a data-parallel run other
    /// than rank 0, which writes the files).
    file: Option<File>,
}

impl Metrics {
    /// Opens `dir/metrics.jsonl`, keeping the records up to `keep_until` (the step a resumed
    /// run continues from) and dropping any later ones left by an interrupted run.
    pub fn open(dir: &Path, keep_until: Option<u64>) -> Result<Self> {
        let path = dir.join(METRICS_FILE);
        let mut records = Vec::new();
        if let Some(limit) = keep_until
            && let Ok(f) = File::open(&path)
        {
            for line in BufReader::new(f).lines() {
                let line = line.map_err(|e| Error::io("read", &path, e))?;
                if let Ok(r) = serde_json::from_str::<Record>(&line)
                    && r.step <= limit
                {
                    records.push(r);
                }
            }
        }
        let mut text = String::new();
        for r in &records {
            text.push_str(&serde_json::to_string(r).unwrap_or_default());
            text.push('\n');
        }
        write_atomic(&path, text.as_bytes())?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        Ok(Metrics {
            svg: dir.join(PLOT_FILE),
            path,
            records,
            file: Some(file),
        })
    }

    /// Metrics kept in memory only, writing no file.
    pub fn in_memory() -> Self {
        Metrics {
            path: PathBuf::new(),
            svg: PathBuf::new(),
            records: Vec::new(),
            file: None,
        }
    }

    /// Appends a record.
    pub fn push(&mut self, r: Record) -> Result<()> {
        if let Some(file) = &mut self.file {
            let line = serde_json::to_string(&r).unwrap_or_default();
            writeln!(file, "{line}").map_err(|e| Error::io("append to", &self.path, e))?;
        }
        self.records.push(r);
        Ok(())
    }

    /// All records so far.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// Redraws `loss.svg`.
    pub fn plot(&self) -> Result<()> {
        if self.file.is_none() {
            return Ok(());
        }
        write_atomic(&self.svg, loss_svg(&self.records).as_bytes())
    }
}

/// An SVG line chart of training and validation loss (bits per token) against the step.
pub fn loss_svg(records: &[Record]) -> String {
    const LN2: f64 = std::f64::consts::LN_2;
    let (w, h, left, right, top, bottom) = (720.0, 400.0, 64.0, 16.0, 28.0, 44.0);
    let train: Vec<(f64, f64)> = records
        .iter()
        .filter_map(|r| r.train_loss.map(|l| (r.step as f64, l / LN2)))
        .collect();
    // The closing evaluation is not a point of the periodic curve.
    let val: Vec<(f64, f64)> = records
        .iter()
        .filter(|r| r.val_final != Some(true))
        .filter_map(|r| r.val_loss.map(|l| (r.step as f64, l / LN2)))
        .collect();
    let all = train.iter().chain(&val);
    let x_max = all.clone().map(|p| p.0).fold(1.0, f64::max);
    let y_max = all.clone().map(|p| p.1).fold(0.0, f64::max).max(1e-3) * 1.05;
    let y_min = all.map(|p| p.1).fold(y_max, f64::min).min(y_max * 0.5) * 0.95;
    let sx = |x: f64| left + (w - left - right) * x / x_max;
    let sy = |y: f64| top + (h - top - bottom) * (1.0 - (y - y_min) / (y_max - y_min).max(1e-9));
    let line = |pts: &[(f64, f64)], color: &str| -> String {
        if pts.is_empty() {
            return String::new();
        }
        let d: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.8\" points=\"{}\"/>\n",
            d.join(" ")
        )
    };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"18\" font-size=\"14\">loss (bits per token) against step</text>\n"
    );
    for i in 0..=5 {
        let y = y_min + (y_max - y_min) * i as f64 / 5.0;
        let x = x_max * i as f64 / 5.0;
        svg.push_str(&format!(
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{py:.1}\" y2=\"{py:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{y:.2}</text>\
             <text x=\"{px:.1}\" y=\"{}\" text-anchor=\"{anchor}\">{x:.0}</text>\n",
            w - right,
            left - 6.0,
            sy(y) + 4.0,
            h - bottom + 18.0,
            py = sy(y),
            px = sx(x),
            // The last step label ends at the plot's right edge instead of running past it.
            anchor = if i == 5 { "end" } else { "middle" },
        ));
    }
    svg.push_str(&line(&train, "#1f77b4"));
    svg.push_str(&line(&val, "#d62728"));
    svg.push_str(&format!(
        "<text x=\"{}\" y=\"18\" fill=\"#1f77b4\">train</text><text x=\"{}\" y=\"18\" fill=\"#d62728\">validation</text>\n</svg>\n",
        w - 150.0,
        w - 100.0
    ));
    svg
}
