//! The churn scenario: many short sessions through several concurrent
//! clients, each ending one way (an exit, an error, a cancel in the middle
//! of output, and with `--churn-escapes` or on the OCI backend a process
//! that scrubbed the session marker and double-forked out of the session),
//! then a look at what is left once the load has dropped: execd's
//! descriptors and threads, any process in the bench container beyond its
//! own (those still carrying the marker counted apart), and the OCI
//! backend's session cgroups.
//!
//! "Once the load has dropped": ending sessions is work that goes on after
//! the clients are gone (the reaper's signals and grace, cgroup kills), and
//! on a small machine the churn leaves it behind. So the check polls until
//! everything is back, and only gives up once the 1-minute load average is
//! below the core count (after at least [`MIN_SETTLE`]) or the settle limit
//! has passed; how long it took and the load at the check are rows too.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tonic::transport::Channel;

use crate::report::Row;
use crate::scenarios::{Backend, Bench, Kind, Outcome};
use crate::session::{next_event, open, open_in, Event};
use crate::system::{load_average, threads, ContainerView, Execd, Stray};

/// The churn's shape, from the command line.
pub struct Options {
    /// Sessions per backend (default: 300 quick; 2,000 on cli, 10,000
    /// otherwise).
    pub sessions: Option<usize>,
    /// Concurrent clients.
    pub clients: usize,
    /// Escaped double-forks on every backend (always on for oci).
    pub escapes: bool,
    /// The longest wait for the leftovers check (default: 120 s quick,
    /// 600 s full).
    pub settle_limit: Option<Duration>,
}

/// The check waits at least this long before it takes a lower load as
/// the sign that the reaper's work is over.
const MIN_SETTLE: Duration = Duration::from_secs(30);

/// A session that does not end within this long is a failure, not a hung
/// bench.
const SESSION_LIMIT: Duration = Duration::from_secs(60);

/// The ways a churn session ends, in the order the kinds take turns.
#[derive(Clone, Copy)]
enum Ending {
    Exit,
    Error,
    Cancel { tty: bool },
    Escape,
}

const ENDING_NAMES: [&str; 4] = ["exit", "error", "cancel mid-output", "escaped double-fork"];

impl Ending {
    fn of(i: usize, escapes: bool) -> Ending {
        let kinds = if escapes { 4 } else { 3 };
        match i % kinds {
            0 => Ending::Exit,
            1 => Ending::Error,
            2 => Ending::Cancel {
                tty: (i / kinds) % 2 == 0,
            },
            _ => Ending::Escape,
        }
    }

    fn index(self) -> usize {
        match self {
            Ending::Exit => 0,
            Ending::Error => 1,
            Ending::Cancel { .. } => 2,
            Ending::Escape => 3,
        }
    }
}

/// A process that scrubs the session marker and runs in the background
/// still holding the session's stdout (`sleep 1000`, the OCI issue's
/// example), and one that also double-forks into a session of its own,
/// lets go of the session's stdio as a daemon does and is reparented to
/// the container's init (`sleep 1001`). The session must end when `sh`
/// does (the engine gives up on the open stdout after a drain of its
/// own); only a per-session cgroup catches both processes.
const ESCAPE: &str = "env -u EXECD_SESSION_ID sleep 1000 & \
     (setsid env -u EXECD_SESSION_ID sleep 1001 </dev/null >/dev/null 2>&1 &); echo x";

/// Runs one churn session; true if it ended as its kind should.
async fn churn_one(channel: &Channel, ending: Ending) -> bool {
    match ending {
        Ending::Exit => exits_zero(channel, &["echo", "x"]).await,
        Ending::Escape => exits_zero(channel, &["sh", "-c", ESCAPE]).await,
        Ending::Error => {
            match open_in(channel, "execd-bench-no-such-container", &["true"], false).await {
                Ok(mut s) => next_event(&mut s.rx).await.is_err(),
                Err(_) => true,
            }
        }
        Ending::Cancel { tty } => match open(channel, &["yes"], tty).await {
            Ok(mut s) => loop {
                match next_event(&mut s.rx).await {
                    // Dropping the stream mid-output is the cancel.
                    Ok(Event::Output(_)) => return true,
                    Ok(Event::Started) => {}
                    _ => return false,
                }
            },
            Err(_) => false,
        },
    }
}

async fn exits_zero(channel: &Channel, command: &[&str]) -> bool {
    let Ok(mut s) = open(channel, command, false).await else {
        return false;
    };
    loop {
        match next_event(&mut s.rx).await {
            Ok(Event::Exited(code)) => return code == 0,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
}

/// What is left at one look.
struct Leftovers {
    fds: usize,
    threads: u64,
    marked: usize,
    strays: Vec<Stray>,
    cgroups: usize,
}

impl Leftovers {
    fn look(execd: &Execd, view: &ContainerView) -> Leftovers {
        let strays = view.strays();
        Leftovers {
            fds: execd.fds(),
            threads: threads(execd.pid()),
            marked: strays.iter().filter(|s| s.marked).count(),
            strays,
            cgroups: view.session_cgroups(),
        }
    }

    /// Drops the strays that were there before the churn: they are an
    /// earlier scenario's (noted apart), not the churn's.
    fn beyond(mut self, before: &Leftovers) -> Leftovers {
        self.strays
            .retain(|s| !before.strays.iter().any(|b| b.pid == s.pid));
        self.marked = self.strays.iter().filter(|s| s.marked).count();
        self
    }

    fn none_beyond(&self, before: &Leftovers) -> bool {
        self.fds <= before.fds
            && self.threads <= before.threads
            && self.marked == 0
            && self.strays.is_empty()
            && self.cgroups <= before.cgroups
    }
}

struct ChurnResult {
    sessions: usize,
    per_second: f64,
    failures: [usize; 4],
    before: Leftovers,
    after: Leftovers,
    /// Seconds from the last client's end until nothing was left, if it
    /// came to that.
    settled: Option<f64>,
    /// Seconds from the last client's end until the check.
    waited: f64,
    load_at_check: f64,
    /// The most escaped processes seen alive at once during the churn.
    escapes_seen: usize,
}

/// Strays the container has before the churn: the last scenario's
/// sessions may still be ending. Waits for them a while, bounded.
async fn quiet_container(view: &ContainerView) -> Vec<Stray> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let strays = view.strays();
        if strays.is_empty() || Instant::now() > deadline {
            return strays;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn churn(
    execd: &Execd,
    channel: &Channel,
    n: usize,
    options: &Options,
    escapes: bool,
    settle_limit: Duration,
) -> Result<ChurnResult> {
    let view = ContainerView::new()?;
    quiet_container(&view).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = Leftovers::look(execd, &view);
    let next = Arc::new(AtomicUsize::new(0));
    let failures: Arc<[AtomicUsize; 4]> = Arc::new(Default::default());
    // Escapes seen alive while the churn runs: proof that they ran, so
    // none left afterwards means they were ended, not never started.
    let seen = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = escapes.then(|| {
        let (seen, stop, view) = (seen.clone(), stop.clone(), view.clone());
        tokio::task::spawn_blocking(move || {
            while !stop.load(Ordering::Relaxed) {
                let alive = view
                    .strays()
                    .iter()
                    .filter(|s| s.command.starts_with("sleep 100"))
                    .count();
                seen.fetch_max(alive, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    });
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..options.clients.max(1) {
        let (next, failures, channel) = (next.clone(), failures.clone(), channel.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let ending = Ending::of(i, escapes);
                let ended = tokio::time::timeout(SESSION_LIMIT, churn_one(&channel, ending));
                if !ended.await.unwrap_or(false) {
                    failures[ending.index()].fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let per_second = n as f64 / t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    if let Some(sampler) = sampler {
        let _ = sampler.await;
    }

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let done = Instant::now();
    let (after, settled) = loop {
        let now = Leftovers::look(execd, &view).beyond(&before);
        if now.none_beyond(&before) {
            break (now, Some(done.elapsed().as_secs_f64()));
        }
        let waited = done.elapsed();
        if waited >= settle_limit || (waited >= MIN_SETTLE && load_average() < cores) {
            break (now, None);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    Ok(ChurnResult {
        sessions: n,
        per_second,
        failures: std::array::from_fn(|i| failures[i].load(Ordering::Relaxed)),
        before,
        after,
        settled,
        waited: done.elapsed().as_secs_f64(),
        load_at_check: load_average(),
        escapes_seen: seen.load(Ordering::Relaxed),
    })
}

/// "sleep 1000 ×3, sleep 1001 ×2": what was left, counted by command.
fn describe(strays: &[Stray]) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for s in strays {
        match counts.iter_mut().find(|(c, _)| *c == s.command) {
            Some((_, n)) => *n += 1,
            None => counts.push((&s.command, 1)),
        }
    }
    counts
        .iter()
        .map(|(c, n)| format!("`{c}` ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn scenario(b: &Bench) -> Result<Outcome> {
    let options = &b.churn;
    let mut outcome = Outcome::default();
    for backend in &b.backends {
        // A process per session makes the CLI backend ~10× slower to churn.
        let n = options.sessions.unwrap_or(match (backend.kind, b.quick) {
            (_, true) => 300,
            (Kind::Cli, false) => 2_000,
            (_, false) => 10_000,
        });
        let escapes = options.escapes || backend.kind == Kind::Oci;
        let limit = options
            .settle_limit
            .unwrap_or(Duration::from_secs(if b.quick { 120 } else { 600 }));
        let r = churn(&backend.execd, &backend.channel, n, options, escapes, limit).await?;
        add_rows(&mut outcome, backend, &r, escapes, options.clients);
        // The bench's own leftovers must not weigh on what runs next.
        ContainerView::kill(&r.after.strays);
    }
    Ok(outcome)
}

fn add_rows(
    outcome: &mut Outcome,
    backend: &Backend,
    r: &ChurnResult,
    escapes: bool,
    clients: usize,
) {
    let kinds = if escapes { 4 } else { 3 };
    let scenario = backend.label(&format!(
        "churn ({} sessions: {})",
        r.sessions,
        ENDING_NAMES[..kinds].join(", ")
    ));
    let row =
        |metric: &str, value: f64, unit: &str| Row::execd_only(&scenario, metric, value, unit);
    let failures: usize = r.failures.iter().sum();
    let (before, after) = (&r.before, &r.after);
    outcome.rows.extend([
        row(
            &format!("sessions per second ({clients} clients)"),
            r.per_second,
            "sessions/s",
        ),
        row(
            "sessions not ending as they should",
            failures as f64,
            "sessions",
        )
        .target("0", failures == 0),
        row(
            "execd fds after",
            after.fds as f64,
            &format!("fds (from {})", before.fds),
        )
        .target("back to baseline", after.fds <= before.fds),
        row(
            "execd threads after",
            after.threads as f64,
            &format!("threads (from {})", before.threads),
        )
        .target("back to baseline", after.threads <= before.threads),
        row(
            "session processes left (marked)",
            after.marked as f64,
            "processes",
        )
        .target("0", after.marked == 0),
        row(
            "processes left in the container",
            after.strays.len() as f64,
            "processes (beyond those before)",
        )
        .target("0", after.strays.is_empty()),
    ]);
    if escapes {
        outcome.rows.push(
            row(
                "escaped processes seen running during the churn (peak)",
                r.escapes_seen as f64,
                "processes",
            )
            .target("> 0 (the escapes ran)", r.escapes_seen > 0),
        );
    }
    if backend.kind == Kind::Oci {
        outcome.rows.push(
            row(
                "session cgroups left",
                after.cgroups as f64,
                &format!("cgroups (from {})", before.cgroups),
            )
            .target("0 new", after.cgroups <= before.cgroups),
        );
    }
    outcome.rows.extend([
        row(
            "time until nothing was left",
            r.settled.unwrap_or(f64::NAN),
            "s after the last session",
        ),
        row("load average (1 min) at the check", r.load_at_check, "load"),
    ]);
    let name = backend.name();
    if failures > 0 {
        let by_kind: Vec<String> = (0..kinds)
            .filter(|&k| r.failures[k] > 0)
            .map(|k| format!("{} {}", r.failures[k], ENDING_NAMES[k]))
            .collect();
        outcome.notes.push(format!(
            "churn ({name}): sessions that did not end as they should, by kind: {}.",
            by_kind.join(", ")
        ));
    }
    if r.settled.is_none() {
        outcome.notes.push(format!(
            "churn ({name}): still not clean {:.0} s after the last session (load {:.2} at the check); left in the container: {}.",
            r.waited,
            r.load_at_check,
            if after.strays.is_empty() { "nothing".to_string() } else { describe(&after.strays) }
        ));
    }
    if !before.strays.is_empty() {
        outcome.notes.push(format!(
            "churn ({name}): the container already held {} before the churn (an earlier scenario's; not counted as the churn's, and left alone).",
            describe(&before.strays)
        ));
    }
}
