//! Ending a session's processes, including the ones inside the container.
//!
//! Killing the `docker exec` child is not enough: the engine has no API to
//! kill an exec, and the process it started in the container keeps running
//! after the CLI is gone. execd therefore marks every session's process with
//! `EXECD_SESSION_ID=<marker>` in its environment (inherited by everything it
//! starts), where the marker is a random 128-bit value execd draws for that
//! session alone (not the client's session id, which a client may use again
//! or share with another execd's session) and, when a session ends for any reason other than the process
//! exiting, finds every process carrying that exact marker in `/proc` and
//! signals it: politely first (SIGHUP for terminals, SIGTERM otherwise), then
//! SIGKILL after a grace period.
//!
//! This needs execd to see the container's processes, i.e. to share the host
//! PID namespace (a node agent, or a pod with `hostPID: true`) and to run as
//! root (or with CAP_KILL and CAP_SYS_PTRACE). When it cannot, the reaper
//! falls back to running a small signalling script inside the container
//! through the session's backend ([`Backend::run_inside`]: `<cli> exec`,
//! or an exec through the Engine API), and says so in the log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::backend::{Backend, RunInsideError};
use crate::command::SESSION_ENV;
use crate::pidfd::ProcHandle;
use crate::procfs::EnvironRead;

/// How to reach processes that execd cannot see itself.
#[derive(Clone)]
pub struct ContainerRef {
    /// The backend that runs the container's sessions.
    pub backend: Arc<dyn Backend>,
    pub container_id: String,
    /// Host PID of the container's init, from the engine; 0 if unknown.
    pub init_pid: i32,
}

impl std::fmt::Debug for ContainerRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerRef")
            .field("container_id", &self.container_id)
            .field("init_pid", &self.init_pid)
            .finish_non_exhaustive()
    }
}

/// What a kill pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReapReport {
    /// Marked processes found in `/proc` on the first pass.
    pub found: usize,
    /// Of those, how many still lived after the grace period.
    pub killed: usize,
    /// Whether the in-container fallback ran.
    pub used_fallback: bool,
    /// The `/proc` scan did not answer in time.
    pub scan_failed: bool,
    /// Every process in scope was looked at.
    pub complete: bool,
}

/// Which processes a scan looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every process execd can see (host-exec mode, or a container whose
    /// namespace is unknown or the host's own).
    All,
    /// Only the processes in this PID namespace (the `ns/pid` link's
    /// target): a container's. Every `docker exec` joins its container's
    /// PID namespace, so nothing of a session's is missed, and processes
    /// elsewhere on the host (whose reads might stall) are never read.
    PidNamespace(std::ffi::OsString),
}

fn pid_namespace(pid: &str) -> Option<std::ffi::OsString> {
    // A link read, not the process's memory: it cannot stall on a process
    // stuck in the kernel.
    std::fs::read_link(format!("/proc/{pid}/ns/pid"))
        .ok()
        .map(|p| p.into_os_string())
}

impl Scope {
    /// The processes of the container whose init has host pid `init_pid`
    /// (0 or less: unknown, so every process).
    pub fn of_container(init_pid: i32) -> Scope {
        if init_pid <= 0 {
            return Scope::All;
        }
        match (pid_namespace(&init_pid.to_string()), pid_namespace("self")) {
            (Some(theirs), Some(ours)) if theirs != ours => Scope::PidNamespace(theirs),
            _ => Scope::All,
        }
    }

    fn includes(&self, pid: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::PidNamespace(ns) => pid_namespace(pid).as_ref() == Some(ns),
        }
    }
}

/// What a scan found.
#[derive(Debug, Default)]
pub struct Found {
    /// The marked processes, pinned (see [`ProcHandle`]).
    pub procs: Vec<ProcHandle>,
    /// False when some process could not be looked at because a read of it
    /// is stuck elsewhere.
    pub complete: bool,
}

/// Processes in `scope` whose environment holds exactly
/// `EXECD_SESSION_ID=<marker>`. Blocking: run it on [`crate::procfs`].
pub fn find_marked(marker: &str, scope: &Scope) -> Found {
    let needle = format!("{SESSION_ENV}={marker}");
    let me = std::process::id() as i32;
    let mut found = Found {
        procs: Vec::new(),
        complete: true,
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        found.complete = false;
        return found;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let Ok(pid) = name.parse::<i32>() else {
            continue;
        };
        if pid == me || !scope.includes(name) {
            continue;
        }
        // Pinned before reading, and checked alive after: then the
        // environment read was this very process's, whatever happens to
        // the pid later. Processes come and go while we scan; gone ones
        // are skipped.
        let Some(handle) = ProcHandle::open(pid) else {
            continue;
        };
        match crate::procfs::read_environ(pid) {
            Ok(environ) => {
                let marked = environ
                    .split(|b| *b == 0)
                    .any(|var| var == needle.as_bytes());
                if marked && handle.alive() {
                    found.procs.push(handle);
                }
            }
            Err(EnvironRead::Skipped) => found.complete = false,
            Err(EnvironRead::Unreadable) => {}
        }
    }
    found
}

/// Whether this process can see the container's processes in its `/proc`.
pub(crate) fn container_visible(container: &ContainerRef) -> bool {
    container.init_pid > 0 && pid_namespace(&container.init_pid.to_string()).is_some()
}

/// Signals every process of the session and waits until they are gone,
/// escalating to SIGKILL after `grace`; where execd cannot see the
/// container's processes, does the same inside the container through the
/// backend. Never blocks the async runtime: the `/proc` scans run on the
/// [`crate::procfs`] workers.
pub async fn reap_session(
    marker: &str,
    polite: Signal,
    grace: Duration,
    container: Option<&ContainerRef>,
) -> ReapReport {
    // Under heavy load (a busy 2-core node at a load average of 60) a scan
    // can miss its time budget, and a pass that could not look everywhere
    // may leave the session's processes running. The first pass decides
    // what the client is told, at once; a failed or incomplete one is then
    // tried again in the background, with backoff, until a pass completes
    // or PERSIST_FOR has passed.
    let first = reap_pass(marker, polite, grace, container).await;
    if !settled(&first) {
        let (marker, container) = (marker.to_string(), container.cloned());
        tokio::spawn(async move {
            let deadline = Instant::now() + PERSIST_FOR;
            let mut backoff = Duration::from_millis(100);
            while Instant::now() + backoff < deadline {
                tokio::time::sleep(backoff).await;
                let pass = reap_pass(&marker, polite, grace, container.as_ref()).await;
                tracing::debug!(marker, ?pass, "reap pass tried again");
                if settled(&pass) {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            tracing::warn!(marker, "the session's processes could not all be looked at");
        });
    }
    first
}

/// Whether a pass looked everywhere it had to.
fn settled(pass: &ReapReport) -> bool {
    pass.used_fallback || (!pass.scan_failed && pass.complete)
}

/// How long [`reap_session`] keeps trying when its scans fail.
pub const PERSIST_FOR: Duration = Duration::from_secs(60);

/// One pass of [`reap_session`].
async fn reap_pass(
    marker: &str,
    polite: Signal,
    grace: Duration,
    container: Option<&ContainerRef>,
) -> ReapReport {
    let mut report = reap_visible(marker, polite, grace, container).await;
    if report.found == 0 {
        if let Some(container) = container {
            let visible = {
                let container = container.clone();
                crate::procfs::run(move || container_visible(&container))
                    .await
                    .unwrap_or(false)
            };
            if !visible {
                tracing::warn!(
                    marker,
                    container_id = %container.container_id,
                    "execd cannot see the container's processes (different PID namespace or no \
                     permission); signalling inside the container through the runtime instead"
                );
                report.used_fallback = true;
                signal_inside_container(container, marker, polite, grace).await;
            }
        }
    }
    report
}

/// The `/proc` part of [`reap_session`]: only the marked processes execd
/// can see itself, no fallback.
pub async fn reap_visible(
    marker: &str,
    polite: Signal,
    grace: Duration,
    container: Option<&ContainerRef>,
) -> ReapReport {
    let init_pid = container.map_or(0, |c| c.init_pid);
    let mut report = ReapReport::default();
    let Some(first) = scan(marker, init_pid).await else {
        report.scan_failed = true;
        return report;
    };
    report.found = first.procs.len();
    report.complete = first.complete;
    if first.procs.is_empty() {
        return report;
    }
    for proc in &first.procs {
        // False just means it already exited.
        proc.signal(polite);
    }
    // Polling a pidfd is a non-blocking syscall: no /proc read needed.
    let deadline = Instant::now() + grace;
    let mut survivors: Vec<&ProcHandle> = first.procs.iter().collect();
    loop {
        survivors.retain(|p| p.alive());
        if survivors.is_empty() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    report.killed = survivors.len();
    for proc in &survivors {
        proc.signal(Signal::SIGKILL);
    }
    // A shell may have forked while it was being told to stop: take a fresh
    // look and kill whatever still carries the marker.
    if let Some(rest) = scan(marker, init_pid).await {
        for proc in &rest.procs {
            proc.signal(Signal::SIGKILL);
        }
        report.killed = report.killed.max(rest.procs.len());
        report.complete &= rest.complete;
    }
    if !report.complete {
        tracing::warn!(
            marker,
            "some processes could not be looked at (a read of their /proc entry is stuck); \
             the session's processes among them may survive"
        );
    }
    report
}

/// How long after a session started its exec may still be coming up: the
/// runtime CLI may have asked the engine to start it just before it was
/// killed, and the process then appears a little later.
pub const LATE_START_WINDOW: Duration = Duration::from_secs(3);
/// The same on an overloaded host, where the engine may take far longer to
/// start an exec it was asked for.
pub const LATE_START_WINDOW_LOADED: Duration = Duration::from_secs(30);

/// [`LATE_START_WINDOW`], or [`LATE_START_WINDOW_LOADED`] while the
/// 1-minute load average is above four runnable tasks per CPU.
pub fn late_start_window() -> Duration {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    if load > 4.0 * cpus {
        LATE_START_WINDOW_LOADED
    } else {
        LATE_START_WINDOW
    }
}

/// After the runtime CLI is gone, watches for processes of the session that
/// appear late (until `started + LATE_START_WINDOW`, and for at least
/// `min_watch`) and ends them too. Returns how many it caught.
pub async fn reap_late_starters(
    marker: &str,
    started: Instant,
    min_watch: Duration,
    polite: Signal,
    grace: Duration,
    container: Option<&ContainerRef>,
) -> usize {
    let init_pid = container.map_or(0, |c| c.init_pid);
    let until = (started + late_start_window()).max(Instant::now() + min_watch);
    let mut caught = 0;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if scan(marker, init_pid)
            .await
            .is_some_and(|f| !f.procs.is_empty())
        {
            caught += reap_visible(marker, polite, grace, container).await.found;
        }
    }
    caught
}

/// One bounded scan on the [`crate::procfs`] pool; `None` if it did not
/// answer in time.
async fn scan(marker: &str, init_pid: i32) -> Option<Found> {
    let marker = marker.to_string();
    crate::procfs::run(move || find_marked(&marker, &Scope::of_container(init_pid))).await
}

/// How long the engine may take to run the in-container fallback.
const FALLBACK_TIMEOUT: Duration = Duration::from_secs(10);

/// Fallback when `/proc` does not show the container: a busybox/POSIX shell
/// loop inside the container does the same marker search there.
async fn signal_inside_container(
    container: &ContainerRef,
    marker: &str,
    polite: Signal,
    grace: Duration,
) {
    let polite_name = polite.as_str().trim_start_matches("SIG");
    let grace_s = format!("{:.1}", grace.as_secs_f32());
    // The marker is execd's own hex string, so it is safe to embed.
    let script = format!(
        "m='{SESSION_ENV}={marker}'; pids=''; \
         for d in /proc/[0-9]*; do \
           if tr '\\0' '\\n' < $d/environ 2>/dev/null | grep -qx \"$m\"; then pids=\"$pids ${{d#/proc/}}\"; fi; \
         done; \
         [ -z \"$pids\" ] && exit 0; \
         kill -{polite_name} $pids 2>/dev/null; sleep {grace_s}; kill -KILL $pids 2>/dev/null; exit 0"
    );
    let argv = ["/bin/sh".to_string(), "-c".to_string(), script];
    let run = container.backend.run_inside(&container.container_id, &argv);
    // A hung engine must not hold the session (and its count) forever.
    let Ok(result) = tokio::time::timeout(grace + FALLBACK_TIMEOUT, run).await else {
        tracing::warn!(
            marker,
            "in-container signalling timed out; the session's process may survive"
        );
        return;
    };
    match result {
        Ok(()) => {}
        Err(RunInsideError::Failed(message)) => tracing::warn!(
            marker,
            stderr = %message,
            "in-container signalling failed; the session's process may survive"
        ),
        Err(e @ RunInsideError::NotStarted(_)) => {
            tracing::warn!(marker, error = %e, "in-container signalling could not run")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pids(marker: &str, scope: &Scope) -> Vec<i32> {
        let mut pids: Vec<i32> = find_marked(marker, scope)
            .procs
            .iter()
            .map(ProcHandle::pid)
            .collect();
        pids.sort();
        pids
    }

    #[tokio::test]
    async fn finds_and_kills_marked_host_processes_including_children() {
        let id = format!("reaper-test-{}", std::process::id());
        let mut child = tokio::process::Command::new("/bin/sh")
            .args(["-c", "sleep 300 & sleep 300; wait"])
            .env(SESSION_ENV, &id)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut found = Vec::new();
        for _ in 0..100 {
            found = pids(&id, &Scope::All);
            if found.len() >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(found.len() >= 3, "found {found:?}");
        // A different id must not match by prefix.
        assert!(pids(&format!("{id}x"), &Scope::All).is_empty());
        let report = reap_session(&id, Signal::SIGTERM, Duration::from_millis(500), None).await;
        assert!(report.found >= 3);
        assert!(report.complete);
        let status = child.wait().await.unwrap();
        assert!(!status.success());
        for _ in 0..50 {
            if pids(&id, &Scope::All).is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("marked processes survived: {:?}", pids(&id, &Scope::All));
    }

    /// A scan scoped to a container's PID namespace finds the marked
    /// processes in it and never looks at the rest of the host.
    #[tokio::test]
    async fn a_container_scope_covers_its_pid_namespace_only() {
        let id = format!("scope-test-{}", std::process::id());
        // `unshare` needs privileges; without them there is nothing to test.
        let Ok(mut inside) = tokio::process::Command::new("unshare")
            .args(["--pid", "--fork", "sleep", "300"])
            .env(SESSION_ENV, &id)
            .kill_on_drop(true)
            .spawn()
        else {
            return;
        };
        let mut outside = tokio::process::Command::new("sleep")
            .arg("300")
            .env(SESSION_ENV, &id)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut all = Vec::new();
        for _ in 0..100 {
            all = pids(&id, &Scope::All);
            if all.len() >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if all.len() < 3 {
            // unshare refused (no privileges): nothing to compare.
            return;
        }
        // The forked child is the namespace's init; unshare itself stays
        // outside.
        let init = all
            .iter()
            .copied()
            .find(|p| pid_namespace(&p.to_string()) != pid_namespace("self"))
            .expect("a process in the new namespace");
        let scope = Scope::of_container(init);
        assert!(matches!(scope, Scope::PidNamespace(_)));
        assert_eq!(pids(&id, &scope), vec![init]);
        assert_eq!(Scope::of_container(std::process::id() as i32), Scope::All);
        assert_eq!(Scope::of_container(0), Scope::All);
        let _ = inside.start_kill();
        let _ = outside.start_kill();
        let _ = inside.wait().await;
        let _ = outside.wait().await;
    }
}
