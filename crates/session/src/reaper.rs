//! Ending a session's processes, including the ones inside the container.
//!
//! Killing the `docker exec` child is not enough: the engine has no API to
//! kill an exec, and the process it started in the container keeps running
//! after the CLI is gone. execd therefore marks every session's process with
//! `EXECD_SESSION_ID=<id>` in its environment (inherited by everything it
//! starts) and, when a session ends for any reason other than the process
//! exiting, finds every process carrying that exact marker in `/proc` and
//! signals it: politely first (SIGHUP for terminals, SIGTERM otherwise), then
//! SIGKILL after a grace period.
//!
//! This needs execd to see the container's processes, i.e. to share the host
//! PID namespace (a node agent, or a pod with `hostPID: true`) and to run as
//! root (or with CAP_KILL and CAP_SYS_PTRACE). When it cannot, the reaper
//! falls back to running a small signalling script inside the container
//! through the runtime CLI, and says so in the log.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::Command;

use crate::command::SESSION_ENV;

/// How to reach processes that execd cannot see itself.
#[derive(Debug, Clone)]
pub struct ContainerRef {
    pub runtime_cli: String,
    pub container_id: String,
    /// Host PID of the container's init, from the engine; 0 if unknown.
    pub init_pid: i32,
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
}

/// Host PIDs whose environment holds exactly `EXECD_SESSION_ID=<session_id>`.
pub fn find_marked(session_id: &str) -> Vec<i32> {
    find_marked_in(Path::new("/proc"), session_id)
}

fn find_marked_in(proc_root: &Path, session_id: &str) -> Vec<i32> {
    let marker = format!("{SESSION_ENV}={session_id}");
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        // Processes come and go while we scan; unreadable ones are skipped.
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ
            .split(|b| *b == 0)
            .any(|var| var == marker.as_bytes())
        {
            pids.push(pid);
        }
    }
    pids
}

fn alive(pid: i32) -> bool {
    // A zombie has an empty environ and cannot run; only count processes that
    // still carry the marker, which a dead process no longer exposes.
    kill(Pid::from_raw(pid), None).is_ok()
        && std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|e| !e.is_empty())
}

fn signal_all(pids: &[i32], signal: Signal) {
    for pid in pids {
        // ESRCH just means it already exited.
        let _ = kill(Pid::from_raw(*pid), signal);
    }
}

/// Whether this process can see the container's processes in its `/proc`.
fn container_visible(container: &ContainerRef) -> bool {
    if container.init_pid <= 0 {
        return false;
    }
    std::fs::read(format!("/proc/{}/environ", container.init_pid)).is_ok()
}

/// Signals every process of the session and waits until they are gone,
/// escalating to SIGKILL after `grace`. Never blocks the async runtime: the
/// `/proc` scans run on the [`crate::procfs`] worker.
pub async fn reap_session(
    session_id: &str,
    polite: Signal,
    grace: Duration,
    container: Option<&ContainerRef>,
) -> ReapReport {
    let id = session_id.to_string();
    let first = scan(&id).await;
    let mut report = ReapReport {
        found: first.len(),
        ..Default::default()
    };
    if first.is_empty() {
        if let Some(container) = container {
            if !container_visible(container) {
                tracing::warn!(
                    session_id,
                    container_id = %container.container_id,
                    "execd cannot see the container's processes (different PID namespace or no \
                     permission); signalling inside the container through the runtime CLI instead"
                );
                report.used_fallback = true;
                signal_inside_container(container, session_id, polite, grace).await;
            }
        }
        return report;
    }
    signal_all(&first, polite);
    let deadline = Instant::now() + grace;
    loop {
        let pids = first.clone();
        let survivors =
            crate::procfs::run(move || pids.into_iter().filter(|p| alive(*p)).collect::<Vec<_>>())
                .await
                .unwrap_or_default();
        if survivors.is_empty() || Instant::now() >= deadline {
            report.killed = survivors.len();
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A shell may have forked while it was being told to stop: take a fresh
    // look and kill whatever still carries the marker.
    let rest = scan(&id).await;
    signal_all(&rest, Signal::SIGKILL);
    report.killed = report.killed.max(rest.len());
    report
}

/// How long after a session started its exec may still be coming up: the
/// runtime CLI may have asked the engine to start it just before it was
/// killed, and the process then appears a little later.
pub const LATE_START_WINDOW: Duration = Duration::from_secs(3);

/// After the runtime CLI is gone, watches for processes of the session that
/// appear late (until `started + LATE_START_WINDOW`, and for at least
/// `min_watch`) and ends them too. Returns how many it caught.
pub async fn reap_late_starters(
    session_id: &str,
    started: Instant,
    min_watch: Duration,
    polite: Signal,
    grace: Duration,
) -> usize {
    let until = (started + LATE_START_WINDOW).max(Instant::now() + min_watch);
    let mut caught = 0;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if !scan(session_id).await.is_empty() {
            caught += reap_session(session_id, polite, grace, None).await.found;
        }
    }
    caught
}

async fn scan(session_id: &str) -> Vec<i32> {
    let id = session_id.to_string();
    crate::procfs::run(move || find_marked(&id))
        .await
        .unwrap_or_default()
}

/// How long the engine may take to run the in-container fallback.
const FALLBACK_TIMEOUT: Duration = Duration::from_secs(10);

/// Fallback when `/proc` does not show the container: a busybox/POSIX shell
/// loop inside the container does the same marker search there.
async fn signal_inside_container(
    container: &ContainerRef,
    session_id: &str,
    polite: Signal,
    grace: Duration,
) {
    let polite_name = polite.as_str().trim_start_matches("SIG");
    let grace_s = format!("{:.1}", grace.as_secs_f32());
    // The session id is validated to [A-Za-z0-9_.:-] so it is safe to embed.
    let script = format!(
        "m='{SESSION_ENV}={session_id}'; pids=''; \
         for d in /proc/[0-9]*; do \
           if tr '\\0' '\\n' < $d/environ 2>/dev/null | grep -qx \"$m\"; then pids=\"$pids ${{d#/proc/}}\"; fi; \
         done; \
         [ -z \"$pids\" ] && exit 0; \
         kill -{polite_name} $pids 2>/dev/null; sleep {grace_s}; kill -KILL $pids 2>/dev/null; exit 0"
    );
    let run = Command::new(&container.runtime_cli)
        .args(["exec", &container.container_id, "/bin/sh", "-c", &script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .output();
    // A hung engine must not hold the session (and its count) forever.
    let Ok(result) = tokio::time::timeout(grace + FALLBACK_TIMEOUT, run).await else {
        tracing::warn!(
            session_id,
            "in-container signalling timed out; the session's process may survive"
        );
        return;
    };
    match result {
        Ok(out) if out.status.success() => {}
        Ok(out) => tracing::warn!(
            session_id,
            stderr = %String::from_utf8_lossy(&out.stderr).trim(),
            "in-container signalling failed; the session's process may survive"
        ),
        Err(e) => tracing::warn!(session_id, error = %e, "in-container signalling could not run"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            found = find_marked(&id);
            if found.len() >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(found.len() >= 3, "found {found:?}");
        // A different id must not match by prefix.
        assert!(find_marked(&format!("{id}x")).is_empty());
        let report = reap_session(&id, Signal::SIGTERM, Duration::from_millis(500), None).await;
        assert!(report.found >= 3);
        let status = child.wait().await.unwrap();
        assert!(!status.success());
        for _ in 0..50 {
            if find_marked(&id).is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("marked processes survived: {:?}", find_marked(&id));
    }
}
