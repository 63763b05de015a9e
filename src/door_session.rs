//! A session as every door starts and ends it: started through the manager
//! inside the door's span, its start and any refusal logged and counted
//! the same way, and its end recorded once (metrics and one log line with
//! duration and bytes). Doors keep only their wire format.

use std::sync::Arc;
use std::time::{Duration, Instant};

use execd_session::log_field::{LogCommand, LogField, MAX_LOG_FIELD};
use execd_session::{ExecSpec, ReplayFrom, Session, SessionError, SessionManager, SessionStats};
use tracing::Instrument;

use crate::error_text::ClientText;
use crate::metrics::{ActiveSession, Metrics};

/// Error messages may quote client input; logged escaped, up to this long.
pub const MAX_LOGGED_ERROR: usize = 1024;

/// A session that reached STARTED, with what its end is recorded against.
pub struct Opened {
    pub session: Session,
    /// Keeps the session in the active gauge; records its end.
    pub active: ActiveSession,
    /// When the start was asked for: durations count from here.
    pub requested_at: Instant,
    pub latency: Duration,
}

/// Starts `spec` (as `id`, or a fresh id) within `span`. A refusal is
/// counted under the spec's door and logged before it is returned.
pub async fn open(
    manager: &SessionManager,
    metrics: &Arc<Metrics>,
    id: Option<String>,
    spec: ExecSpec,
    reattach: Option<ReplayFrom>,
    span: &tracing::Span,
) -> Result<Opened, SessionError> {
    let (door, tty, command) = (spec.door, spec.tty, spec.effective_command());
    let requested_at = Instant::now();
    let started = match reattach {
        // A session its client can name again, and come back to.
        Some(from) => manager.open(id, spec, from).instrument(span.clone()).await,
        None => manager.start(id, spec).instrument(span.clone()).await,
    };
    let session = match started {
        Ok(session) => session,
        Err(err) => {
            metrics.record_refused(door, &err);
            span.in_scope(|| {
                tracing::info!(kind = err.kind().as_str(), error = %log_error(&err), "session refused")
            });
            return Err(err);
        }
    };
    let latency = requested_at.elapsed();
    if session.reattached {
        span.in_scope(|| tracing::info!(tty, "client reattached"));
    } else {
        span.in_scope(|| {
            tracing::info!(
                tty,
                start_ms = latency.as_millis() as u64,
                "session started"
            );
            // Command lines can carry secrets: debug only.
            tracing::debug!(command = %LogCommand::new(&command, MAX_LOG_FIELD), "session command");
        });
    }
    let active = if session.reattached {
        metrics.session_reattached(door, tty)
    } else {
        metrics.session_started(door, tty, latency)
    };
    let detachable = reattach.is_some() && manager.reattach_table().is_some();
    Ok(Opened {
        session,
        active: active.detachable(detachable),
        requested_at,
        latency,
    })
}

/// A session error as logged: the client text, escaped and bounded.
pub fn log_error(err: &SessionError) -> String {
    LogField::with_limit(&ClientText(err).to_string(), MAX_LOGGED_ERROR).to_string()
}

/// How a session ended, as its door saw it.
#[derive(Debug, Clone, Copy)]
pub enum Ending<'a> {
    Exited(i32),
    Failed(&'a SessionError),
    /// The client left before the end was delivered.
    ClientGone,
}

/// Records the end of a session once: its outcome in the metrics and one
/// log line in `span`.
pub fn record_end(
    active: &ActiveSession,
    span: &tracing::Span,
    requested_at: Instant,
    stats: &SessionStats,
    ending: Ending<'_>,
) {
    let duration_ms = requested_at.elapsed().as_millis() as u64;
    let (stdin_bytes, output_bytes) = (stats.stdin_bytes(), stats.output_bytes());
    let _entered = span.enter();
    match ending {
        Ending::Exited(code) => {
            active.exited(code);
            tracing::info!(
                exit_code = code,
                duration_ms,
                stdin_bytes,
                output_bytes,
                "session exited"
            );
        }
        Ending::Failed(err) => {
            active.failed(err);
            tracing::info!(
                kind = err.kind().as_str(),
                error = %log_error(err),
                duration_ms,
                stdin_bytes,
                output_bytes,
                "session ended"
            );
        }
        Ending::ClientGone => {
            let detached = active.client_gone();
            tracing::info!(
                duration_ms,
                stdin_bytes,
                output_bytes,
                "client went away; session {}",
                if detached { "detached" } else { "ended" }
            );
        }
    }
}
