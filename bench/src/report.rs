//! Table rows and their targets, and the report: each section prints one
//! JSON object `{"section":..,"rows":[..],"raw":{..}}`; `pidvisor-bench
//! report` reads those lines and prints the table, or one JSON document
//! with `--json`. A row puts pidvisor's figure beside the baseline measured
//! in the same run, the ratio, the target and PASS/MISS.

use std::io::BufRead;

use serde_json::{json, Value};

use crate::opts::Opts;
use crate::Res;

/// How a figure is judged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// pidvisor / baseline must be at most this (latencies).
    RatioAtMost(f64),
    /// pidvisor / baseline must be at least this (throughputs).
    RatioAtLeast(f64),
    /// pidvisor's figure must be at most this, in the row's unit.
    AtMost(f64),
    /// No target: the figure is for information.
    None,
}

/// The unit of a row's figures, which decides how they print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Microseconds.
    Micros,
    /// Things per second.
    PerSecond,
    /// Wakeups per second.
    Wakeups,
    /// KiB of memory.
    Kib,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::Micros => "us",
            Unit::PerSecond => "per_s",
            Unit::Wakeups => "wakeups_per_s",
            Unit::Kib => "KiB",
        }
    }

    fn parse(name: &str) -> Unit {
        match name {
            "us" => Unit::Micros,
            "per_s" => Unit::PerSecond,
            "wakeups_per_s" => Unit::Wakeups,
            _ => Unit::Kib,
        }
    }

    /// A figure in this unit, for the table.
    pub fn show(self, v: f64) -> String {
        match self {
            Unit::Micros if v >= 10_000.0 => format!("{:.1} ms", v / 1000.0),
            Unit::Micros if v >= 1000.0 => format!("{:.2} ms", v / 1000.0),
            Unit::Micros => format!("{v:.1} µs"),
            Unit::PerSecond => format!("{v:.0}/s"),
            Unit::Wakeups => format!("{v:.2}/s"),
            Unit::Kib if v >= 1024.0 => format!("{:.2} MiB", v / 1024.0),
            Unit::Kib => format!("{v:.2} KiB"),
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    /// What is measured.
    pub name: String,
    /// The unit of `pidvisor` and `baseline`.
    pub unit: Unit,
    /// pidvisor's figure.
    pub pidvisor: f64,
    /// The baseline's figure, measured in the same run.
    pub baseline: Option<f64>,
    /// What the baseline is.
    pub baseline_name: String,
    /// The target.
    pub target: Target,
    /// A remark printed under the table (counts reached, rounds).
    pub note: Option<String>,
}

impl Row {
    /// pidvisor / baseline.
    pub fn ratio(&self) -> Option<f64> {
        self.baseline.filter(|b| *b > 0.0).map(|b| self.pidvisor / b)
    }

    /// Whether the target is met (None: no target, or no baseline to judge by).
    pub fn pass(&self) -> Option<bool> {
        match self.target {
            Target::RatioAtMost(max) => self.ratio().map(|r| r <= max),
            Target::RatioAtLeast(min) => self.ratio().map(|r| r >= min),
            Target::AtMost(max) => Some(self.pidvisor <= max),
            Target::None => None,
        }
    }

    fn target_text(&self) -> String {
        match self.target {
            Target::RatioAtMost(x) => format!("≤ {x:.2}× base"),
            Target::RatioAtLeast(x) => format!("≥ {:.0} % of base", x * 100.0),
            Target::AtMost(x) if x <= 0.0 => "0".into(),
            Target::AtMost(x) => format!("≤ {}", self.unit.show(x)),
            Target::None => "—".into(),
        }
    }

    /// The row as JSON (what the sections print and `--json` shows).
    pub fn to_json(&self) -> Value {
        let (kind, value) = match self.target {
            Target::RatioAtMost(x) => ("ratio_at_most", Some(x)),
            Target::RatioAtLeast(x) => ("ratio_at_least", Some(x)),
            Target::AtMost(x) => ("at_most", Some(x)),
            Target::None => ("none", None),
        };
        json!({
            "name": self.name,
            "unit": self.unit.name(),
            "pidvisor": round3(self.pidvisor),
            "baseline": self.baseline.map(round3),
            "baseline_name": self.baseline_name,
            "ratio": self.ratio().map(round3),
            "target": { "kind": kind, "value": value, "text": self.target_text() },
            "result": match self.pass() { Some(true) => "PASS", Some(false) => "MISS", None => "info" },
            "note": self.note,
        })
    }

    /// Reads a row back from its JSON.
    pub fn from_json(v: &Value) -> Res<Row> {
        let num = |key: &str| v[key].as_f64();
        let target_value = v["target"]["value"].as_f64().unwrap_or(0.0);
        let target = match v["target"]["kind"].as_str() {
            Some("ratio_at_most") => Target::RatioAtMost(target_value),
            Some("ratio_at_least") => Target::RatioAtLeast(target_value),
            Some("at_most") => Target::AtMost(target_value),
            _ => Target::None,
        };
        Ok(Row {
            name: v["name"].as_str().ok_or("row without a name")?.to_string(),
            unit: Unit::parse(v["unit"].as_str().unwrap_or("")),
            pidvisor: num("pidvisor").ok_or("row without a figure")?,
            baseline: num("baseline"),
            baseline_name: v["baseline_name"].as_str().unwrap_or("").to_string(),
            target,
            note: v["note"].as_str().map(String::from),
        })
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// A section's output line.
pub fn section(name: &str, rows: &[Row], raw: Value) -> Value {
    json!({ "section": name, "rows": rows.iter().map(Row::to_json).collect::<Vec<_>>(), "raw": raw })
}

/// `pidvisor-bench report --results FILE [--json] [--quick] [--seconds N]`.
pub fn run(opts: &Opts) -> Res<Value> {
    let path = opts.path("results")?;
    let file = std::fs::File::open(&path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let mut sections = Vec::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(|e| format!("read {}: {e}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line).map_err(|e| format!("{}: {e}", path.display()))?;
        sections.push(v);
    }
    let mut rows = Vec::new();
    for s in &sections {
        for r in s["rows"].as_array().into_iter().flatten() {
            rows.push(Row::from_json(r)?);
        }
    }
    let machine = machine();
    if opts.flag("json") {
        let doc = json!({
            "mode": if opts.flag("quick") { "quick" } else { "full" },
            "seconds": opts.number("seconds", 0)?,
            "machine": machine,
            "loadavg_end": machine["loadavg"],
            "temp_dir": opts.string("fs").ok(),
            "loadavg_start": opts.string("load-start").ok(),
            "rows": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
            "sections": sections,
        });
        println!("{}", serde_json::to_string_pretty(&doc).expect("serializes"));
    } else {
        let fs = opts.string("fs").unwrap_or("?");
        let load_start = opts.string("load-start").unwrap_or("?");
        print_table(&rows, &machine, opts.flag("quick"), opts.number("seconds", 0)?, fs, load_start);
    }
    Ok(Value::Null)
}

fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default().trim().to_string();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    json!({
        "kernel": read("/proc/sys/kernel/osrelease"),
        "cpus": cpus,
        "loadavg": read("/proc/loadavg"),
    })
}

fn print_table(rows: &[Row], machine: &Value, quick: bool, seconds: u64, fs: &str, load_start: &str) {
    // Only the load at the start is shown: the idle section's 10,000 exits
    // at shutdown inflate it by the end (the JSON has both).
    println!(
        "pidvisor benchmarks ({} run, {seconds} s) — Linux {}, {} CPUs, load average {load_start} at start",
        if quick { "quick" } else { "full" },
        machine["kernel"].as_str().unwrap_or("?"),
        machine["cpus"],
    );
    println!(
        "Roots and FIFOs in {fs}. Figures are medians over rounds; each baseline ran in the same run, interleaved."
    );
    println!();
    let header = ["measurement", "pidvisor", "baseline", "ratio", "target", "result"];
    let mut lines: Vec<[String; 6]> = vec![header.map(String::from)];
    for row in rows {
        let baseline = match row.baseline {
            Some(b) => format!("{} ({})", row.unit.show(b), row.baseline_name),
            None if row.baseline_name.is_empty() => "—".into(),
            None => row.baseline_name.clone(),
        };
        lines.push([
            row.name.clone(),
            row.unit.show(row.pidvisor),
            baseline,
            row.ratio().map_or("—".into(), |r| format!("{r:.2}×")),
            row.target_text(),
            match row.pass() {
                Some(true) => "PASS".into(),
                Some(false) => "MISS".into(),
                None => "info".into(),
            },
        ]);
    }
    let widths: Vec<usize> = (0..6).map(|c| lines.iter().map(|l| l[c].chars().count()).max().unwrap_or(0)).collect();
    for (i, line) in lines.iter().enumerate() {
        let cells: Vec<String> = line
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                let pad = widths[c] - cell.chars().count();
                // Figures right-aligned, words left-aligned.
                if (1..=3).contains(&c) {
                    format!("{}{cell}", " ".repeat(pad))
                } else {
                    format!("{cell}{}", " ".repeat(pad))
                }
            })
            .collect();
        println!("{}", cells.join("  ").trim_end());
        if i == 0 {
            println!("{}", widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  "));
        }
    }
    let notes: Vec<&Row> = rows.iter().filter(|r| r.note.is_some()).collect();
    if !notes.is_empty() {
        println!();
        for row in notes {
            println!("* {}: {}", row.name, row.note.as_deref().unwrap_or(""));
        }
    }
    let misses = rows.iter().filter(|r| r.pass() == Some(false)).count();
    let judged = rows.iter().filter(|r| r.pass().is_some()).count();
    println!();
    println!("{} of {judged} targets met, {misses} missed.", judged - misses);
}
