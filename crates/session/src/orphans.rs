//! Reaping orphans when execd is PID 1 (a host-exec sidecar).
//!
//! A session's process may leave children behind that outlive it; when
//! they are orphaned the kernel makes PID 1 their parent, and if PID 1 never
//! waits for them they stay zombies for good, filling the pid space. A real
//! init would call `waitpid(-1)`; execd must not: that would also collect
//! the exit status of its own children (the sessions' processes), which
//! tokio is waiting for, and the session would then report a failed wait
//! instead of its exit code.
//!
//! So execd reaps only zombies that are *not* its own children: every child
//! the session manager spawns goes through [`spawn_tracked`], which records
//! its pid under a lock held across the fork, and the reaper, under the
//! same lock, skips recorded pids. A child can therefore never be seen by
//! the reaper before it is recorded, and stays recorded until the
//! [`Tracked`] guard next to its `Child` is dropped (after tokio has waited
//! for it, or after the child was handed to tokio's own orphan queue, which
//! tolerates losing it).
//!
//! This is only switched on in host-exec mode, where the manager's
//! children are the only ones execd has: elsewhere other components spawn
//! processes of their own through tokio, and those are not recorded.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::process::{Child, Command};

fn tracked() -> MutexGuard<'static, HashSet<u32>> {
    static TRACKED: OnceLock<Mutex<HashSet<u32>>> = OnceLock::new();
    TRACKED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// Keeps a child's pid recorded as "execd's own" while it lives.
#[derive(Debug)]
pub struct Tracked(Option<u32>);

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            tracked().remove(&pid);
        }
    }
}

/// Spawns `cmd` and records the child before anyone could reap it.
pub fn spawn_tracked(cmd: &mut Command) -> std::io::Result<(Child, Tracked)> {
    let mut set = tracked();
    let child = cmd.spawn()?;
    let pid = child.id();
    if let Some(pid) = pid {
        set.insert(pid);
    }
    Ok((child, Tracked(pid)))
}

/// This process's zombie children, from `/proc/<pid>/stat` (state and
/// parent pid). Blocking.
fn zombie_children() -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // Fields after the command name, which may contain anything.
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                return false;
            };
            let mut fields = rest.split_whitespace();
            let state = fields.next();
            let ppid = fields.next().and_then(|p| p.parse::<i32>().ok());
            state == Some("Z") && ppid == Some(me)
        })
        .collect()
}

/// Reaps every zombie child of this process that is not a tracked child;
/// returns how many. Blocking.
pub fn reap_orphans_once() -> usize {
    let candidates = zombie_children();
    if candidates.is_empty() {
        return 0;
    }
    // Under the lock no tracked spawn is half-way: every child of ours
    // forked through `spawn_tracked` is in the set.
    let set = tracked();
    let mut reaped = 0;
    for pid in candidates {
        if set.contains(&(pid as u32)) {
            continue;
        }
        let pid = nix::unistd::Pid::from_raw(pid);
        if let Ok(status) = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG))
        {
            if status != nix::sys::wait::WaitStatus::StillAlive {
                reaped += 1;
            }
        }
    }
    reaped
}

/// When execd is PID 1, reaps orphaned zombies on every SIGCHLD (and once a
/// second, as signals coalesce) for as long as the runtime runs.
pub fn spawn_reaper_if_init() {
    if std::process::id() != 1 {
        return;
    }
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    handle.spawn(async {
        let mut sigchld =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch SIGCHLD; orphans will not be reaped");
                    return;
                }
            };
        tracing::info!("execd runs as PID 1: reaping orphaned processes");
        loop {
            tokio::select! {
                _ = sigchld.recv() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            if let Some(n) = crate::procfs::run(reap_orphans_once).await {
                if n > 0 {
                    tracing::debug!(reaped = n, "orphaned processes reaped");
                }
            }
        }
    });
}
