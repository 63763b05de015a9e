//! Figures and their table: samples and percentiles, result rows, the
//! machine description, and the markdown written to BENCHMARKS.md.

use crate::system::{docker, first_number_after};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Measurements of one quantity.
pub struct Samples(pub Vec<f64>);

impl Samples {
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        v
    }

    pub fn median(&self) -> f64 {
        percentile(&self.sorted(), 50.0)
    }

    pub fn p99(&self) -> f64 {
        percentile(&self.sorted(), 99.0)
    }
}

/// One line of the table.
pub struct Row {
    scenario: String,
    metric: String,
    execd: f64,
    docker: Option<f64>,
    unit: String,
    /// Target, in words, and whether it is met.
    target: String,
    met: Option<bool>,
}

impl Row {
    /// A figure through execd next to the same through `docker exec`.
    pub fn compared(scenario: &str, metric: &str, execd: f64, docker: f64, unit: &str) -> Row {
        Row {
            docker: Some(docker),
            ..Row::execd_only(scenario, metric, execd, unit)
        }
    }

    /// A figure of execd's alone (`docker exec` has no counterpart).
    pub fn execd_only(scenario: &str, metric: &str, execd: f64, unit: &str) -> Row {
        Row {
            scenario: scenario.to_string(),
            metric: metric.to_string(),
            execd,
            docker: None,
            unit: unit.to_string(),
            target: String::new(),
            met: None,
        }
    }

    /// The target this figure is held to, and whether it meets it.
    pub fn target(self, target: &str, met: bool) -> Row {
        Row {
            target: target.to_string(),
            met: Some(met),
            ..self
        }
    }

    fn ratio(&self) -> String {
        match self.docker {
            Some(d) if d != 0.0 => format!("{:.3}", self.execd / d),
            _ => "—".into(),
        }
    }

    fn verdict(&self) -> &'static str {
        match self.met {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "",
        }
    }
}

fn fmt_num(v: f64) -> String {
    if v.is_nan() {
        "n/a".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// CPU, cores, memory, kernel and Docker versions, for the report.
pub fn machine_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| first_number_after(&t, "MemTotal:"))
        .unwrap_or(0);
    let mem_gib = mem_kib as f64 / (1024.0 * 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let engine = docker(&[
        "version",
        "--format",
        "{{.Server.Version}} (API {{.Server.APIVersion}}), CLI {{.Client.Version}}",
    ])
    .unwrap_or_else(|_| "unknown".into());
    format!("{cpu}, {cores} cores, {mem_gib:.0} GiB RAM, Linux {kernel}; Docker engine {engine}")
}

/// The markdown report: machine, how it was made (the bench's arguments,
/// `--out` left out), the table, the notes.
pub fn render(rows: &[Row], notes: &[String], machine: &str, invocation: &[String]) -> String {
    let mut out = String::new();
    out.push_str("# execd benchmarks\n\n");
    out.push_str(&format!("Machine: {machine}.\n\n"));
    out.push_str("Produced by `cargo run --release -p execd-bench");
    let mut args = invocation.iter();
    let mut shown = Vec::new();
    while let Some(arg) = args.next() {
        if arg == "--out" {
            args.next();
        } else if !arg.starts_with("--out=") {
            shown.push(arg.as_str());
        }
    }
    if !shown.is_empty() {
        out.push_str(" -- ");
        out.push_str(&shown.join(" "));
    }
    out.push('`');
    if invocation.iter().any(|a| a == "--quick") {
        out.push_str(" (reduced sizes: a smoke run)");
    }
    out.push_str(". Each scenario runs through execd and through plain `docker exec` in the same run, on the same container; ratio = execd ÷ docker exec.\n\n");
    out.push_str("| scenario | metric | execd | docker exec | unit | ratio | target | |\n|---|---|---:|---:|---|---:|---|---|\n");
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.scenario,
            r.metric,
            fmt_num(r.execd),
            r.docker.map(fmt_num).unwrap_or_else(|| "—".into()),
            r.unit,
            r.ratio(),
            r.target,
            r.verdict()
        ));
    }
    if !notes.is_empty() {
        out.push_str("\nNotes:\n\n");
        for n in notes {
            out.push_str(&format!("- {n}\n"));
        }
    }
    out
}
