//! What a running session shares with the registry: its live counters
//! ([`SessionStats`], shown by listings, read by the idle timeout) and the
//! way it is asked to end from outside its own tasks ([`SessionControl`]).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

// tokio's clock is the system's monotonic clock, except that tests can
// pause and advance it: the idle timeout is tested to the millisecond.
use tokio::time::Instant;

use tokio_util::sync::CancellationToken;

use super::now_ms;
use crate::reason::EndReason;

/// Live counters of one session, updated by its I/O paths.
///
/// The last activity is kept twice: on the wall clock for listings, and on
/// the monotonic clock for the idle timeout, so that a clock step (NTP, a
/// suspended VM) never ends a session early or keeps it alive too long.
#[derive(Debug)]
pub struct SessionStats {
    last_activity_ms: AtomicI64,
    /// Nanoseconds from `created` to the last activity.
    last_activity_mono_ns: AtomicU64,
    created: Instant,
    stdin_bytes: AtomicU64,
    output_bytes: AtomicU64,
}

impl Default for SessionStats {
    fn default() -> Self {
        Self::new()
    }
}

impl SessionStats {
    pub fn new() -> Self {
        SessionStats {
            last_activity_ms: AtomicI64::new(now_ms()),
            last_activity_mono_ns: AtomicU64::new(0),
            created: Instant::now(),
            stdin_bytes: AtomicU64::new(0),
            output_bytes: AtomicU64::new(0),
        }
    }

    pub fn record_input(&self, n: usize) {
        self.stdin_bytes.fetch_add(n as u64, Ordering::Relaxed);
        self.touch();
    }

    pub fn record_output(&self, n: usize) {
        self.output_bytes.fetch_add(n as u64, Ordering::Relaxed);
        self.touch();
    }

    pub fn touch(&self) {
        self.last_activity_ms.store(now_ms(), Ordering::Relaxed);
        let since_created = u64::try_from(self.created.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_activity_mono_ns
            .store(since_created, Ordering::Relaxed);
    }

    /// Wall-clock time of the last activity (Unix ms), for display.
    pub fn last_activity_ms(&self) -> i64 {
        self.last_activity_ms.load(Ordering::Relaxed)
    }

    /// How long nothing moved, on the monotonic clock.
    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_nanos(self.last_activity_mono_ns.load(Ordering::Relaxed));
        self.created.elapsed().saturating_sub(last)
    }

    pub fn stdin_bytes(&self) -> u64 {
        self.stdin_bytes.load(Ordering::Relaxed)
    }

    pub fn output_bytes(&self) -> u64 {
        self.output_bytes.load(Ordering::Relaxed)
    }
}

/// How a session is asked to end from outside its own task. The first reason
/// given wins; cancelling the token wakes every part of the session.
#[derive(Debug)]
pub(crate) struct SessionControl {
    cancel: CancellationToken,
    reason: OnceLock<EndReason>,
}

impl SessionControl {
    pub fn new(parent: &CancellationToken) -> Self {
        SessionControl {
            cancel: parent.child_token(),
            reason: OnceLock::new(),
        }
    }

    /// Asks the session to end. Returns false if it was already ending.
    pub fn end(&self, reason: EndReason) -> bool {
        let first = self.reason.set(reason).is_ok() && !self.cancel.is_cancelled();
        self.cancel.cancel();
        first
    }

    pub fn token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Why the session is ending. A cancel without a reason can only come
    /// from the parent token: the server is shutting down.
    pub fn reason(&self) -> EndReason {
        self.reason.get().cloned().unwrap_or(EndReason::Shutdown)
    }
}
