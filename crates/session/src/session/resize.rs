//! Getting the client's terminal size into the container.
//!
//! Why this needs more than sizing execd's own pseudo-terminal:
//! `docker exec -t` ignores SIGWINCH until its own first resize round trip
//! has finished, and engines before API 1.42 cannot size the console at
//! creation (docker/cli#1492): the process inside the container starts on a
//! 0×0 terminal, and the CLI sizes it a little later. execd therefore looks
//! at the terminal of the session's process inside the container (found by
//! its marker, through `/proc`) and sets the size there directly when it
//! differs:
//!
//! - at start ([`await_container_size`]), so that STARTED, which tells the
//!   client it may type, is only sent once that terminal is sized;
//! - after every later change, on a backoff schedule ([`resize_terminal`]),
//!   because a size set early can be overwritten by the CLI's stale first
//!   resize.
//!
//! Where execd cannot see the container's processes it can only nudge the
//! CLI with SIGWINCH.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backend::{ProcessControl, Resizer};
use crate::command::TermSize;
use crate::deadline::sleep_until_opt;
use crate::pidfd::ProcHandle;
use crate::pty::ForeignTerminal;
use crate::reaper;
use crate::term_size::SizeChannel;
use std::sync::Arc;

/// Time between the two sizes of a redraw, so the CLI backend's CLI reads
/// (and forwards) each of them.
const REDRAW_STEP: Duration = Duration::from_millis(50);

/// Least time between two applied sizes: a client dragging a window sends
/// dozens per second, and with the Engine API each one is a request to the
/// engine. Sizes arriving meanwhile are coalesced (the latest wins), so a
/// session resizes at most about 20 times a second.
pub(crate) const MIN_RESIZE_GAP: Duration = Duration::from_millis(50);

/// Applies sizes to the terminal and, for container sessions, makes sure
/// the container's own terminal ends up with them: after every change, on
/// a backoff schedule, it checks the container's terminal, corrects it when
/// it differs and sends SIGWINCH to the CLI so the engine agrees.
pub(crate) async fn resize_terminal(
    resizer: Box<dyn Resizer>,
    redraw: std::sync::Arc<tokio::sync::Notify>,
    marker: String,
    // `Some(init pid)` for container sessions (0 if unknown).
    container_init: Option<i32>,
    // The session's sizes, and the receiving end the resizer follows.
    (channel, mut sizes): (Arc<SizeChannel>, watch::Receiver<TermSize>),
    schedule: Vec<Duration>,
    done: CancellationToken,
) {
    let checks = resizer.needs_checks();
    // Not marked seen: a size asked for between the spawn (which applied
    // the first size) and this task's first poll must still be applied.
    let mut target = *sizes.borrow();
    let mut changed_at = Instant::now();
    let mut step = 0usize;
    let mut inner: Option<ProcHandle> = None;
    let mut last_applied: Option<Instant> = None;
    // After the client half-closes no new sizes come, but the checks for
    // the last one still run to the end of their schedule.
    let mut watching = true;
    loop {
        let next_check = schedule
            .get(step)
            .filter(|_| checks && container_init.is_some())
            .map(|d| changed_at + *d);
        if !watching && next_check.is_none() {
            return;
        }
        tokio::select! {
            _ = redraw.notified() => {
                // A client came back: full-screen programs repaint on
                // SIGWINCH, which a terminal only sends when its size
                // changes. One row less, then the size again.
                let shrunk = TermSize {
                    rows: target.rows.saturating_sub(1).max(1),
                    ..target
                };
                if shrunk != target {
                    let _ = resizer.resize(shrunk).await;
                    tokio::time::sleep(REDRAW_STEP).await;
                }
                if let Err(e) = resizer.resize(target).await {
                    tracing::debug!(error = %e, "resize failed");
                }
                changed_at = Instant::now();
                step = 0;
            }
            changed = sizes.changed(), if watching => {
                if changed.is_err() {
                    watching = false;
                    continue;
                }
                if let Some(at) = last_applied {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at + MIN_RESIZE_GAP) => {}
                        _ = done.cancelled() => return,
                    }
                }
                let seq;
                (target, seq) = channel.take_latest(&mut sizes);
                last_applied = Some(Instant::now());
                if let Err(e) = resizer.resize(target).await {
                    tracing::debug!(error = %e, "resize failed");
                }
                if checks {
                    // The CLI relays the size later: set it in the
                    // container at once, so input after it sees it.
                    inner = check_now(&marker, container_init, inner.take(), target, &*resizer).await;
                }
                channel.applied(seq);
                changed_at = Instant::now();
                step = 0;
            }
            _ = sleep_until_opt(next_check) => {
                step += 1;
                inner = check_now(&marker, container_init, inner.take(), target, &*resizer).await;
            }
            _ = done.cancelled() => return,
        }
    }
}

/// Checks (and fixes) the container's terminal once, nudging the CLI when
/// it had another size; returns the handle to keep for the next check.
async fn check_now(
    marker: &str,
    container_init: Option<i32>,
    cached: Option<ProcHandle>,
    target: TermSize,
    resizer: &dyn Resizer,
) -> Option<ProcHandle> {
    let Some(init_pid) = container_init else {
        return cached;
    };
    let id = marker.to_string();
    let (found, verdict) =
        crate::procfs::run(move || check_container_terminal(&id, init_pid, cached, target))
            .await
            .unwrap_or((None, TerminalCheck::NotVisible));
    if verdict != TerminalCheck::Right {
        tracing::trace!(?verdict, ?target, "container terminal size re-applied");
        resizer.nudge();
    }
    found
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TerminalCheck {
    /// The container's terminal already has the size.
    Right,
    /// It had another size; execd set it.
    Fixed,
    /// The session's process or its terminal is not visible from here.
    NotVisible,
}

/// Looks at (and fixes) the terminal of the session's process inside the
/// container. The process found last time is asked first; it is held by a
/// [`ProcHandle`], so a pid reused meanwhile is never mistaken for it.
fn check_container_terminal(
    marker: &str,
    init_pid: i32,
    cached: Option<ProcHandle>,
    target: TermSize,
) -> (Option<ProcHandle>, TerminalCheck) {
    let terminal = cached.and_then(terminal_of).or_else(|| {
        reaper::find_marked(marker, &reaper::Scope::of_container(init_pid))
            .procs
            .into_iter()
            .find_map(terminal_of)
    });
    let Some((proc, terminal)) = terminal else {
        return (None, TerminalCheck::NotVisible);
    };
    match terminal.size() {
        Ok(size) if size == target => (Some(proc), TerminalCheck::Right),
        _ => {
            let _ = terminal.resize(target);
            (Some(proc), TerminalCheck::Fixed)
        }
    }
}

/// The terminal on the pinned process's fd 0. Alive after opening it means
/// the fd was that process's, not a later holder's of the same pid.
fn terminal_of(proc: ProcHandle) -> Option<(ProcHandle, ForeignTerminal)> {
    let terminal = ForeignTerminal::of_process(proc.pid())?;
    proc.alive().then_some((proc, terminal))
}

/// What [`await_container_size`] ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SizeWait {
    /// The container's terminal has the size (possibly set by execd).
    Sized,
    /// The runtime CLI exited first: there is nothing left to size.
    CliExited,
    /// The start was cancelled meanwhile.
    Cancelled,
    /// The session's process or its terminal did not show up in time.
    TimedOut,
}

/// How often the start looks for the container's terminal.
const SIZE_POLL: Duration = Duration::from_millis(10);

/// Waits, at most `within`, until the terminal of the session's process
/// inside the container has `target`, setting it there when it differs.
///
/// Until then the process may read its size as 0×0 (old engines), so a
/// client typing on STARTED would feed a program that believes it has no
/// terminal size. The CLI's own first resize sends the same size (it reads
/// it from execd's pseudo-terminal, which nobody resizes before STARTED),
/// so a size set here stays.
pub(crate) async fn await_container_size(
    marker: &str,
    init_pid: i32,
    target: TermSize,
    runtime: &mut dyn ProcessControl,
    resizer: &dyn Resizer,
    cancel: &CancellationToken,
    within: Duration,
) -> SizeWait {
    let deadline = Instant::now() + within;
    let mut inner: Option<ProcHandle> = None;
    loop {
        if cancel.is_cancelled() {
            return SizeWait::Cancelled;
        }
        // A short-lived process may be gone before it was ever seen; its
        // CLI's exit ends the wait instead of the deadline.
        if runtime.has_exited() {
            return SizeWait::CliExited;
        }
        let id = marker.to_string();
        let cached = inner.take();
        let (found, verdict) =
            crate::procfs::run(move || check_container_terminal(&id, init_pid, cached, target))
                .await
                .unwrap_or((None, TerminalCheck::NotVisible));
        inner = found;
        match verdict {
            TerminalCheck::Right => return SizeWait::Sized,
            TerminalCheck::Fixed => {
                // Set directly; tell the CLI too so the engine agrees. The
                // next round confirms the size held.
                resizer.nudge();
            }
            TerminalCheck::NotVisible => {}
        }
        if Instant::now() >= deadline {
            return SizeWait::TimedOut;
        }
        tokio::select! {
            _ = tokio::time::sleep(SIZE_POLL) => {}
            _ = cancel.cancelled() => return SizeWait::Cancelled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BoxFuture;
    use std::sync::Mutex;

    /// Records every size it is asked to apply.
    struct Recorder(Arc<Mutex<Vec<TermSize>>>);

    impl Resizer for Recorder {
        fn resize(&self, size: TermSize) -> BoxFuture<'_, std::io::Result<()>> {
            self.0.lock().unwrap().push(size);
            Box::pin(async { Ok(()) })
        }
        fn needs_checks(&self) -> bool {
            false
        }
    }

    /// A window dragged for a second (a size every 10 ms) is applied about
    /// 20 times, the last size last; input after it is released.
    #[tokio::test(start_paused = true)]
    async fn sizes_are_coalesced_and_the_latest_wins() {
        let applied = Arc::new(Mutex::new(Vec::new()));
        let (channel, rx) = SizeChannel::new(TermSize::default());
        let done = CancellationToken::new();
        let task = tokio::spawn(resize_terminal(
            Box::new(Recorder(applied.clone())),
            Arc::new(tokio::sync::Notify::new()),
            String::new(),
            None,
            (channel.clone(), rx),
            Vec::new(),
            done.clone(),
        ));
        let mut last = 0;
        for i in 0..100u16 {
            last = channel.request(TermSize {
                rows: 10 + i,
                cols: 80,
            });
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(channel.wait_applied(last).await);
        let applied = applied.lock().unwrap().clone();
        assert!(applied.len() <= 22, "{} resizes", applied.len());
        assert!(applied.len() >= 15, "{} resizes", applied.len());
        assert_eq!(applied.last().map(|s| s.rows), Some(109));
        done.cancel();
        task.await.unwrap();
    }
}
