//! The scenario table: each row names a scenario (`--only` takes these
//! names), says what it measures, and runs it into table rows and notes.

use std::future::Future;
use std::pin::Pin;

use anyhow::Result;
use tonic::transport::Channel;

use crate::measure;
use crate::report::{Row, Samples};
use crate::session::open;
use crate::system::Execd;

/// What every scenario runs against.
pub struct Bench {
    pub execd: Execd,
    pub channel: Channel,
    /// Smaller sample counts and sizes: a smoke run.
    pub quick: bool,
}

impl Bench {
    fn size<T>(&self, quick: T, full: T) -> T {
        if self.quick {
            quick
        } else {
            full
        }
    }
}

/// A scenario's rows for the table, and notes for below it.
#[derive(Default)]
pub struct Outcome {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

impl From<Vec<Row>> for Outcome {
    fn from(rows: Vec<Row>) -> Outcome {
        Outcome {
            rows,
            notes: Vec::new(),
        }
    }
}

pub type Run<'a> = Pin<Box<dyn Future<Output = Result<Outcome>> + 'a>>;

pub struct Scenario {
    /// The name `--only` selects it by.
    pub name: &'static str,
    /// What it measures, for progress lines and `--help`.
    pub measures: &'static str,
    pub run: fn(&Bench) -> Run<'_>,
}

/// Every scenario, in the order they run and appear in the report.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "start",
        measures: "start latency (first byte, exit)",
        run: |b| Box::pin(start(b)),
    },
    Scenario {
        name: "pipe",
        measures: "pipe throughput",
        run: |b| Box::pin(throughput(b, false)),
    },
    Scenario {
        name: "tty",
        measures: "tty throughput",
        run: |b| Box::pin(throughput(b, true)),
    },
    Scenario {
        name: "keys",
        measures: "keystroke round trip",
        run: |b| Box::pin(keys(b)),
    },
    Scenario {
        name: "concurrency",
        measures: "cost of idle tty sessions",
        run: |b| Box::pin(concurrency(b)),
    },
    Scenario {
        name: "slow",
        measures: "memory under a slow reader",
        run: |b| Box::pin(slow(b)),
    },
];

/// Notes that hold for every run.
pub const NOTES: &[&str] = &[
    "RSS per idle session is the growth of execd's VmRSS from before opening the sessions to after, divided by their number; the `docker exec` children are reported separately.",
    "Terminal baselines drive `docker exec -t` under a PTY opened by the bench with the same code execd uses.",
];

/// Warms both paths (CLI binaries in the page cache, engine caches), so
/// the first scenario does not pay for it.
pub async fn warm_up(b: &Bench) -> Result<()> {
    measure::start_latency_docker(3).await?;
    measure::start_latency_execd(&b.channel, 3).await?;
    Ok(())
}

async fn start(b: &Bench) -> Result<Outcome> {
    let n = b.size(10, 50);
    // Interleaved, so drift on the machine hits both sides alike.
    let (mut ef, mut ee, mut df, mut de) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let (first, exit) = measure::start_latency_execd(&b.channel, 1).await?;
        ef.extend(first.0);
        ee.extend(exit.0);
        let (first, exit) = measure::start_latency_docker(1).await?;
        df.extend(first.0);
        de.extend(exit.0);
    }
    let (e_first, e_exit, d_first, d_exit) = (Samples(ef), Samples(ee), Samples(df), Samples(de));
    let scenario = format!("start ({n}× echo x)");
    let row = |metric: &str, e: f64, d: f64| Row::compared(&scenario, metric, e, d, "ms");
    let within = |e: f64, d: f64, max: f64| e / d <= max;
    let (ef, df) = (e_first.median(), d_first.median());
    let (ef99, df99) = (e_first.p99(), d_first.p99());
    Ok(vec![
        row("first byte, median", ef, df).target("ratio ≤ 1.05", within(ef, df, 1.05)),
        row("first byte, p99", ef99, df99).target("ratio ≤ 1.2", within(ef99, df99, 1.2)),
        row("exit, median", e_exit.median(), d_exit.median()),
        row("exit, p99", e_exit.p99(), d_exit.p99()),
    ]
    .into())
}

/// Throughput through execd and through plain `docker exec`, median of 3
/// alternating runs each.
async fn throughput(b: &Bench, tty: bool) -> Result<Outcome> {
    let count = match tty {
        false => b.size(1024, 8192),
        true => b.size(512, 2048),
    };
    let mut e = Vec::new();
    let mut d = Vec::new();
    for _ in 0..3 {
        e.push(measure::throughput_execd(&b.channel, tty, count).await?);
        d.push(if tty {
            measure::throughput_docker_tty(count).await?
        } else {
            measure::throughput_docker_pipe(count).await?
        });
    }
    let (e, d) = (Samples(e).median(), Samples(d).median());
    let kind = if tty { "tty" } else { "pipe" };
    let scenario = format!("{kind} throughput ({} MiB, median of 3)", count / 16);
    let row = Row::compared(&scenario, "rate", e, d, "MiB/s").target("ratio ≥ 0.95", e / d >= 0.95);
    Ok(vec![row].into())
}

async fn keys(b: &Bench) -> Result<Outcome> {
    let n = b.size(200, 1000);
    let mut s = open(&b.channel, &["cat"], true).await?;
    let e = measure::keystrokes_execd(&mut s, n).await?;
    drop(s);
    let d = measure::keystrokes_docker(n).await?;
    let scenario = format!("keystroke round trip ({n}× 1 byte, tty cat)");
    let (e99, d99) = (e.p99(), d.p99());
    Ok(vec![
        Row::compared(&scenario, "median", e.median(), d.median(), "ms"),
        Row::compared(&scenario, "p99", e99, d99, "ms").target("≤ docker + 2 ms", e99 <= d99 + 2.0),
    ]
    .into())
}

async fn concurrency(b: &Bench) -> Result<Outcome> {
    let levels: &[usize] = b.size(&[20, 50], &[50, 100, 200]);
    let mut rows = Vec::new();
    for &level in levels {
        let r = measure::concurrency(&b.execd, &b.channel, level, b.size(50, 200)).await?;
        let scenario = format!("{} idle tty sessions", r.sessions);
        let threads_unit = format!("threads (from {})", r.threads_before);
        let children = format!("docker exec children RSS ({} processes)", r.children);
        let row =
            |metric: &str, value: f64, unit: &str| Row::execd_only(&scenario, metric, value, unit);
        let rss = r.rss_per_session_kib;
        let (before, after) = (r.threads_before, r.threads_after);
        rows.extend([
            row("execd RSS per session", rss, "KiB").target("≤ 64 KiB", rss <= 64.0),
            row(
                "execd threads with sessions open",
                after as f64,
                &threads_unit,
            )
            .target("no growth per session", after <= before + 2),
            row(&children, r.children_rss_mib, "MiB"),
            row("keystroke p99 on one session", r.rtt_p99_ms, "ms"),
        ]);
    }
    Ok(rows.into())
}

async fn slow(b: &Bench) -> Result<Outcome> {
    let seconds = b.size(4, 10);
    let (growth, rate) = measure::slow_reader(&b.execd, &b.channel, seconds).await?;
    let scenario = format!("slow reader (1 GiB at 1 MiB/s for {seconds} s)");
    Ok(Outcome {
        rows: vec![Row::execd_only(&scenario, "execd RSS growth", growth, "MiB")
            .target("< 16 MiB", growth < 16.0)],
        notes: vec![format!("slow reader: the client actually read {rate:.2} MiB/s; the process was held back by the full pipe (backpressure), not killed.")],
    })
}
