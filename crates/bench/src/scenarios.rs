//! The scenario table: each row names a scenario (`--only` takes these
//! names), says what it measures, and runs it into table rows and notes.

use std::future::Future;
use std::pin::Pin;

use anyhow::Result;
use tonic::transport::Channel;

use crate::churn;
use crate::measure;
use crate::report::{Row, Samples};
use crate::session::open;
use crate::system::Execd;
use crate::throughput;

/// The backends the bench measures, in the order their rows appear.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Cli,
    EngineApi,
    Oci,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Cli, Kind::EngineApi, Kind::Oci];

    /// `--backend`'s value.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Cli => "cli",
            Kind::EngineApi => "engine-api",
            Kind::Oci => "oci",
        }
    }
}

/// One execd under test, with the backend it runs.
pub struct Backend {
    pub kind: Kind,
    pub execd: Execd,
    pub channel: Channel,
}

impl Backend {
    pub fn name(&self) -> &'static str {
        self.kind.name()
    }

    /// No process in execd's host per session (no `docker exec` child).
    fn hostless(&self) -> bool {
        self.kind != Kind::Cli
    }

    /// The scenario's label in the table, with this backend.
    pub fn label(&self, scenario: &str) -> String {
        format!("{scenario} · {}", self.name())
    }
}

/// What every scenario runs against: one execd per backend, and plain
/// `docker exec` in the same run.
pub struct Bench {
    pub backends: Vec<Backend>,
    /// The execd binary, for scenarios that need one of their own.
    pub binary: std::path::PathBuf,
    /// The example client, for the throughput rows it drives.
    pub client: Option<std::path::PathBuf>,
    /// Smaller sample counts and sizes: a smoke run.
    pub quick: bool,
    pub churn: churn::Options,
}

impl Bench {
    pub fn size<T>(&self, quick: T, full: T) -> T {
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
        run: |b| Box::pin(throughput::scenario(b, false)),
    },
    Scenario {
        name: "tty",
        measures: "tty throughput",
        run: |b| Box::pin(throughput::scenario(b, true)),
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
        name: "churn",
        measures: "churn: exit, error, cancel mid-output (and escaped double-forks), then what is left once the load drops",
        run: |b| Box::pin(churn::scenario(b)),
    },
    Scenario {
        name: "replay",
        measures: "memory of detached sessions (--reattach-grace)",
        run: |b| Box::pin(replay(b)),
    },
    Scenario {
        name: "slow",
        measures: "memory under a slow reader",
        run: |b| Box::pin(slow(b)),
    },
];

/// Notes that hold for every run.
pub const NOTES: &[&str] = &[
    "RSS per idle session is the growth of execd's VmRSS from before opening the sessions to after, divided by their number. Processes in execd's host are its direct children in its own pid namespace (the CLI backend's `docker exec` children, reported separately with their RSS); the OCI backend's session processes are execd's children too (it is their subreaper) but live in the container, so they are not counted. The engine-api and oci backends have none.",
    "`· cli` rows run execd with `--backend cli` (a `docker exec` child per session), `· engine-api` rows with `--backend engine-api` (the Engine API directly), `· oci` rows with `--backend oci` (runc directly, `--oci-root` of the engine's runtime state); the docker exec column is the same baseline for all.",
    "How rows are driven: rows whose scenario says `exec client` spawn the example client (`examples/exec.rs`, built as the `exec` example) once per run as a separate process, read its stdout pipe to the end (pipe) or the PTY it runs under with `-i -t` (tty), and time spawn → exit; their docker exec column is `docker exec` (`-i -t` under the same PTY code for tty) driven the same way at the same size. Every other row is driven by the bench's in-process tonic client with 4 MiB stream and 16 MiB connection windows. The OCI issue's throughput targets sit on the `exec client` rows.",
    "Detached sessions: execd's RSS growth divided by their number, after each printed more than its ring holds; it includes the ring (`--replay-buffer`, 1 MiB) and the session's engine read buffer (256 KiB, touched by the flood).",
    "Terminal baselines drive `docker exec -t` under a PTY opened by the bench with the same code execd uses.",
    "Churn: the leftovers are checked once nothing is left, or once the 1-minute load average is below the core count (after at least 30 s) or the settle limit (`--churn-settle`) has passed, whichever comes first. Processes left in the container are those beyond its init and `sleep infinity`, found from the host by pid namespace (markerless escapes included); marked ones are those of them that still carry `EXECD_SESSION_ID` (only the bench container is looked at: other containers on the host are not the bench's). The escaped double-fork sessions run `env -u EXECD_SESSION_ID sleep 1000 &` (holding the session's stdout) and `(setsid env -u EXECD_SESSION_ID sleep 1001 </dev/null >/dev/null 2>&1 &)` (double-forked, reparented to the container's init), then `echo x`; they are part of the mix on oci always, on the other backends with `--churn-escapes` (where only the marker reaper runs, so they are expected to stay); the bench kills what the churn left after the check.",
];

/// Warms both paths (CLI binaries in the page cache, engine caches), so
/// the first scenario does not pay for it.
pub async fn warm_up(b: &Bench) -> Result<()> {
    measure::start_latency_docker(3).await?;
    for backend in &b.backends {
        measure::start_latency_execd(&backend.channel, 3).await?;
    }
    Ok(())
}

async fn start(b: &Bench) -> Result<Outcome> {
    let n = b.size(10, 50);
    // Interleaved, so drift on the machine hits every side alike.
    let mut execd: Vec<(Vec<f64>, Vec<f64>)> = vec![Default::default(); b.backends.len()];
    let (mut df, mut de) = (Vec::new(), Vec::new());
    for _ in 0..n {
        for (backend, (first, exit)) in b.backends.iter().zip(execd.iter_mut()) {
            let (f, e) = measure::start_latency_execd(&backend.channel, 1).await?;
            first.extend(f.0);
            exit.extend(e.0);
        }
        let (first, exit) = measure::start_latency_docker(1).await?;
        df.extend(first.0);
        de.extend(exit.0);
    }
    let (d_first, d_exit) = (Samples(df), Samples(de));
    let mut rows = Vec::new();
    for (backend, (first, exit)) in b.backends.iter().zip(execd) {
        let scenario = backend.label(&format!("start ({n}× echo x)"));
        let row = |metric: &str, e: f64, d: f64| Row::compared(&scenario, metric, e, d, "ms");
        let (e_first, e_exit) = (Samples(first), Samples(exit));
        let (ef, df) = (e_first.median(), d_first.median());
        let (ef99, df99) = (e_first.p99(), d_first.p99());
        let median_target = match backend.kind {
            Kind::Cli => 1.05,
            Kind::EngineApi => 0.95,
            Kind::Oci => 0.6,
        };
        rows.extend([
            row("first byte, median", ef, df).target(
                &format!("ratio ≤ {median_target}"),
                ef / df <= median_target,
            ),
            row("first byte, p99", ef99, df99).target("ratio ≤ 1.2", ef99 / df99 <= 1.2),
            row("exit, median", e_exit.median(), d_exit.median()),
            row("exit, p99", e_exit.p99(), d_exit.p99()),
        ]);
    }
    Ok(rows.into())
}

async fn keys(b: &Bench) -> Result<Outcome> {
    let n = b.size(200, 1000);
    let d = measure::keystrokes_docker(n).await?;
    let d99 = d.p99();
    let mut rows = Vec::new();
    for backend in &b.backends {
        let mut s = open(&backend.channel, &["cat"], true).await?;
        let e = measure::keystrokes_execd(&mut s, n).await?;
        drop(s);
        let scenario = backend.label(&format!("keystroke round trip ({n}× 1 byte, tty cat)"));
        let e99 = e.p99();
        rows.extend([
            Row::compared(&scenario, "median", e.median(), d.median(), "ms"),
            Row::compared(&scenario, "p99", e99, d99, "ms")
                .target("≤ docker + 2 ms", e99 <= d99 + 2.0),
        ]);
    }
    Ok(rows.into())
}

async fn concurrency(b: &Bench) -> Result<Outcome> {
    let mut rows = Vec::new();
    for backend in &b.backends {
        // The CLI backend pays ~25 MB and a process per session, so it
        // stops at 200; the engine-api and oci backends are held to 1,000.
        let levels: &[usize] = match (backend.hostless(), b.quick) {
            (false, true) => &[20, 50],
            (false, false) => &[50, 100, 200],
            (true, true) => &[50, 200],
            (true, false) => &[200, 1000],
        };
        for &level in levels {
            let r = measure::concurrency(&backend.execd, &backend.channel, level, b.size(50, 200))
                .await?;
            let scenario = backend.label(&format!("{} idle tty sessions", r.sessions));
            let threads_unit = format!("threads (from {})", r.threads_before);
            let row = |metric: &str, value: f64, unit: &str| {
                Row::execd_only(&scenario, metric, value, unit)
            };
            let rss = r.rss_per_session_kib;
            let (before, after) = (r.threads_before, r.threads_after);
            let children = r.children as f64;
            let mut children_row = row(
                "processes in execd's host per session",
                children / r.sessions as f64,
                "processes",
            );
            if backend.hostless() {
                children_row = children_row.target("0", r.children == 0);
            }
            let p99 = r.rtt_p99_ms;
            let mut rtt_row = row("keystroke p99 on one session", p99, "ms");
            if backend.hostless() {
                rtt_row = rtt_row.target("≤ 5 ms", p99 <= 5.0);
            }
            rows.extend([
                row("execd RSS per session", rss, "KiB").target("≤ 64 KiB", rss <= 64.0),
                row(
                    "execd threads with sessions open",
                    after as f64,
                    &threads_unit,
                )
                .target("no growth per session", after <= before + 2),
                children_row,
                row(
                    "their RSS (host processes: docker exec children)",
                    r.children_rss_mib,
                    "MiB",
                ),
                rtt_row,
            ]);
        }
    }
    Ok(rows.into())
}

async fn replay(b: &Bench) -> Result<Outcome> {
    let n = b.size(20, 100);
    let mib = 2;
    let binary = b.binary.as_path();
    // Its own execd: reattach changes nothing else the table measures.
    let execd = Execd::start_with(binary, "engine-api", &["--reattach-grace", "60s"]).await?;
    let channel = execd.channel().await?;
    let (per_session, replayed) = measure::detached_replay(&execd, &channel, n, mib).await?;
    let scenario =
        format!("{n} detached sessions, {mib} MiB printed each while detached · engine-api");
    let ring_kib = 1024.0;
    Ok(vec![
        Row::execd_only(
            &scenario,
            "execd RSS per detached session",
            per_session,
            "KiB",
        )
        .target(
            "≤ ring (1 MiB) + one read buffer (256 KiB) + 25%",
            per_session <= (ring_kib + 256.0) * 1.25,
        ),
        Row::execd_only(
            &scenario,
            "bytes replayed to a returning client",
            replayed as f64 / 1024.0,
            "KiB",
        )
        .target(
            "the newest ≤ 1 MiB (whole chunks)",
            (1 << 19..=1 << 20).contains(&replayed),
        ),
    ]
    .into())
}

async fn slow(b: &Bench) -> Result<Outcome> {
    let seconds = b.size(4, 10);
    let mut outcome = Outcome::default();
    for backend in &b.backends {
        let (growth, rate) =
            measure::slow_reader(&backend.execd, &backend.channel, seconds).await?;
        let scenario = backend.label(&format!("slow reader (1 GiB at 1 MiB/s for {seconds} s)"));
        outcome.rows.push(
            Row::execd_only(&scenario, "execd RSS growth", growth, "MiB")
                .target("< 16 MiB", growth < 16.0),
        );
        outcome.notes.push(format!("slow reader ({}): the client actually read {rate:.2} MiB/s; the process was held back by backpressure, not killed.", backend.name()));
    }
    Ok(outcome)
}
