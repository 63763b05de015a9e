//! Refused credentials, counted and logged without letting a flood of
//! them flood the log.
//!
//! Every refusal is counted in `execd_requests_refused_total{door,reason}`
//! (reason `unauthenticated`: no, a malformed, an ambiguous or an unknown
//! credential; `forbidden`: a known token where it is not allowed), so a
//! guessing attack shows in the metrics however fast it runs. The log gets
//! a warning per refusal, but at most [`MAX_LINES_PER_SECOND`] of them per
//! second over the whole process; the lines left out are counted and the
//! next line that is written says how many (`suppressed`). Neither ever
//! holds a token.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::metrics::Metrics;

use super::BearerError;

/// Warning lines about refused credentials per second, at most.
pub const MAX_LINES_PER_SECOND: u32 = 10;

/// Why a request's credentials were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub(crate) enum AuthFailure {
    Missing,
    Unreadable(#[from] BearerError),
    Unknown,
    /// A known token where it is not allowed (an exec token on the admin
    /// API when admin tokens are configured).
    Forbidden,
}

impl AuthFailure {
    /// What the client is told (never the token).
    pub(crate) fn message(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing authorization (Bearer token)",
            AuthFailure::Unreadable(BearerError::Ambiguous) => {
                "ambiguous credentials: the request carries more than one of them (send exactly one Authorization: Bearer <token>)"
            }
            AuthFailure::Unreadable(BearerError::Malformed) => {
                "authorization must be \"Bearer <token>\""
            }
            AuthFailure::Unknown => "invalid token",
            AuthFailure::Forbidden => {
                "this token may open exec sessions but not use the admin API (that needs a token from --admin-token-file)"
            }
        }
    }

    /// The `reason` label of the refusal counter.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            AuthFailure::Forbidden => "forbidden",
            _ => "unauthenticated",
        }
    }

    /// The failure as a gRPC status (the message names no token).
    pub(crate) fn status(self) -> tonic::Status {
        match self {
            AuthFailure::Forbidden => tonic::Status::permission_denied(self.to_string()),
            _ => tonic::Status::unauthenticated(self.to_string()),
        }
    }
}

/// Counts `failure` on `door` in `metrics` (when the caller has them) and
/// logs it, rate-limited.
pub(crate) fn record_failure(metrics: Option<&Metrics>, door: &'static str, failure: AuthFailure) {
    if let Some(metrics) = metrics {
        metrics.record_request_refused(door, failure.reason());
    }
    if let Some(suppressed) = LOG_LIMIT.admit(Instant::now()) {
        tracing::warn!(
            door,
            reason = failure.reason(),
            suppressed,
            "request refused: {failure}"
        );
    }
}

/// A fixed one-second window of log lines.
struct LogLimit {
    window: Mutex<Window>,
}

struct Window {
    started: Option<Instant>,
    written: u32,
    /// Lines left out since the last one written.
    suppressed: u64,
}

static LOG_LIMIT: LogLimit = LogLimit {
    window: Mutex::new(Window {
        started: None,
        written: 0,
        suppressed: 0,
    }),
};

impl LogLimit {
    /// Whether a line may be written at `now`: `Some(lines left out
    /// before it)`, or `None` (then it is counted as left out).
    fn admit(&self, now: Instant) -> Option<u64> {
        // Plain counters: a panic elsewhere cannot leave them torn.
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let expired = w
            .started
            .is_none_or(|s| now.saturating_duration_since(s) >= Duration::from_secs(1));
        if expired {
            w.started = Some(now);
            w.written = 0;
        }
        if w.written >= MAX_LINES_PER_SECOND {
            w.suppressed += 1;
            return None;
        }
        w.written += 1;
        Some(std::mem::take(&mut w.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_n_lines_a_second_and_the_rest_counted() {
        let limit = LogLimit {
            window: Mutex::new(Window {
                started: None,
                written: 0,
                suppressed: 0,
            }),
        };
        let t0 = Instant::now();
        let written: Vec<Option<u64>> = (0..25).map(|_| limit.admit(t0)).collect();
        assert_eq!(written.iter().filter(|w| w.is_some()).count(), 10);
        assert!(written[..10].iter().all(|w| *w == Some(0)));
        // The next window's first line reports the 15 left out.
        assert_eq!(limit.admit(t0 + Duration::from_millis(1000)), Some(15));
        assert_eq!(limit.admit(t0 + Duration::from_millis(1001)), Some(0));
    }

    #[test]
    fn failures_are_counted_by_door_and_reason() {
        let metrics = Metrics::new();
        record_failure(Some(&metrics), "grpc", AuthFailure::Unknown);
        record_failure(
            Some(&metrics),
            "grpc",
            AuthFailure::Unreadable(BearerError::Ambiguous),
        );
        record_failure(Some(&metrics), "admin", AuthFailure::Forbidden);
        let text = metrics.encode();
        assert!(
            text.contains(
                r#"execd_requests_refused_total{door="grpc",reason="unauthenticated"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"execd_requests_refused_total{door="admin",reason="forbidden"} 1"#),
            "{text}"
        );
    }
}
