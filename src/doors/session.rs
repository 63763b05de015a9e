//! A session as every door holds it, from its start to its one recorded
//! end. [`open`] starts it through the manager inside the door's span,
//! logging and counting a refusal or a start the same way for every door,
//! and hands the door two halves:
//!
//! - [`DoorInput`]: the client's side. Every [`ClientEvent`] goes through
//!   [`DoorInput::deliver`], which counts stdin bytes and applies the
//!   session core's client rules ([`execd_session::deliver`]).
//! - [`DoorSession`]: the session's side. [`DoorSession::next`] yields its
//!   output (counted) and then its [`End`]; [`DoorSession::finish`] records
//!   the end once (metrics and one log line with duration and bytes). A
//!   door session dropped unfinished records that its client went away.
//!
//! Doors keep only their wire format ([`super::serve`]).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use execd_session::log_field::{LogCommand, LogField, MAX_LOG_FIELD};
use execd_session::{
    ClientEvent, EndReason, ExecSpec, Flow, OutputStream, ReplayFrom, SessionError, SessionEvent,
    SessionEvents, SessionInput, SessionManager, SessionStats,
};
use tracing::Instrument;

use crate::error_text::ClientText;
use crate::metrics::{ActiveSession, Metrics};

/// Error messages may quote client input; logged escaped, up to this long.
pub(crate) const MAX_LOGGED_ERROR: usize = 1024;

/// Starts `spec` (as `id`, or a fresh id) within `span`; with `reattach`,
/// as a session its client can come back to. A refusal is counted under
/// the spec's door and logged before it is returned.
pub(crate) async fn open(
    manager: &SessionManager,
    metrics: &Arc<Metrics>,
    id: Option<String>,
    spec: ExecSpec,
    reattach: Option<ReplayFrom>,
    span: &tracing::Span,
) -> Result<(DoorSession, DoorInput), SessionError> {
    let (door, tty, command) = (spec.door, spec.tty, spec.effective_command());
    let requested_at = Instant::now();
    let started = match reattach {
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
    let active = if session.reattached {
        span.in_scope(|| tracing::info!(tty, "client reattached"));
        metrics.session_reattached(door, tty)
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
        metrics.session_started(door, tty, latency)
    };
    let detachable = reattach.is_some() && manager.reattach_table().is_some();
    let input = DoorInput {
        input: session.input,
        metrics: metrics.clone(),
    };
    let door_session = DoorSession {
        id: session.id,
        reattached: session.reattached,
        events: Some(session.output.into_receiver()),
        metrics: metrics.clone(),
        span: span.clone(),
        record: Some(EndRecord {
            active: active.detachable(detachable),
            stats: session.stats,
            requested_at,
        }),
    };
    Ok((door_session, input))
}

impl super::DoorContext {
    /// [`open`] with this server's session manager and metrics.
    pub(crate) async fn open_session(
        &self,
        id: Option<String>,
        spec: ExecSpec,
        reattach: Option<ReplayFrom>,
        span: &tracing::Span,
    ) -> Result<(DoorSession, DoorInput), SessionError> {
        open(&self.manager, &self.metrics, id, spec, reattach, span).await
    }
}

/// A session error as logged: the client text, escaped and bounded.
pub(crate) fn log_error(err: &SessionError) -> String {
    LogField::with_limit(&ClientText(err).to_string(), MAX_LOGGED_ERROR).to_string()
}

/// The client's side of a door session.
pub(crate) struct DoorInput {
    input: SessionInput,
    metrics: Arc<Metrics>,
}

impl DoorInput {
    /// Applies one client event (stdin bytes counted first). Waits while
    /// stdin is full: backpressure reaches the client through the door.
    pub(crate) async fn deliver(&mut self, event: ClientEvent) -> Flow {
        if let ClientEvent::Stdin(data) = &event {
            self.metrics.record_stdin(data.len());
        }
        execd_session::deliver(&mut self.input, event).await
    }

    /// No more stdin (see [`SessionInput::close_stdin`]).
    pub(crate) async fn close_stdin(&mut self) {
        self.input.close_stdin().await;
    }

    /// Ends the session with `reason`; its processes are killed.
    pub(crate) fn end(&self, reason: EndReason) {
        self.input.end(reason);
    }

    /// Resolves once the session takes no more input.
    pub(crate) async fn finished(&self) {
        self.input.finished().await;
    }
}

/// What the session said next.
pub(crate) enum Next {
    Output(OutputStream, Bytes),
    End(End),
}

/// How the session ended, as a door tells its client.
#[derive(Debug)]
pub(crate) enum End {
    Exited(i32),
    Failed(SessionError),
    /// The events stopped without a final one: the session gave up on a
    /// client that did not take them. Recorded as a failure; doors that
    /// show an error show this one.
    Lost(SessionError),
}

impl End {
    /// The end as recorded.
    pub(crate) fn ending(&self) -> Ending<'_> {
        match self {
            End::Exited(code) => Ending::Exited(*code),
            End::Failed(err) | End::Lost(err) => Ending::Failed(err),
        }
    }
}

/// How a session ended, as its door saw it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ending<'a> {
    Exited(i32),
    Failed(&'a SessionError),
    /// The client left before the end was delivered.
    ClientGone,
}

/// The session's side of a door session: its events, and its end recorded
/// once.
pub(crate) struct DoorSession {
    id: String,
    reattached: bool,
    /// Dropped when the end is recorded: a session whose client went away
    /// then ends (or, with reattach on, detaches).
    events: Option<SessionEvents>,
    metrics: Arc<Metrics>,
    span: tracing::Span,
    /// Taken when the end is recorded.
    record: Option<EndRecord>,
}

/// What a session's end is recorded with.
struct EndRecord {
    /// Keeps the session in the active gauge; counts its outcome.
    active: ActiveSession,
    stats: Arc<SessionStats>,
    /// When the start was asked for: durations count from here.
    requested_at: Instant,
}

impl DoorSession {
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// The client came back to a running (or detached-and-finished)
    /// session: doors announce it as running, not started.
    pub(crate) fn reattached(&self) -> bool {
        self.reattached
    }

    /// The span the session was started in; its end is logged there.
    pub(crate) fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// The session's next output chunk (its bytes counted), or its end.
    /// Cancel-safe.
    pub(crate) async fn next(&mut self) -> Next {
        let event = match self.events.as_mut() {
            Some(events) => events.recv().await,
            None => None,
        };
        match event {
            Some(SessionEvent::Output { stream, data }) => {
                self.metrics.record_output(stream, data.len());
                Next::Output(stream, data)
            }
            Some(SessionEvent::Exited { code }) => Next::End(End::Exited(code)),
            Some(SessionEvent::Failed(err)) => Next::End(End::Failed(err)),
            // Not a failed wait: the pump gave up delivering the final
            // event to a client that stopped reading, so the status is lost.
            None => Next::End(End::Lost(SessionError::Internal(
                "session ended without a final status".into(),
            ))),
        }
    }

    /// Records the end: its outcome in the metrics and one log line in the
    /// session's span. Then the session's events are dropped.
    pub(crate) fn finish(mut self, ending: Ending<'_>) {
        self.record(ending);
    }

    fn record(&mut self, ending: Ending<'_>) {
        let Some(record) = self.record.take() else {
            return;
        };
        self.events = None;
        record.log(&self.span, ending);
    }
}

impl Drop for DoorSession {
    fn drop(&mut self) {
        // Never finished: the door stopped serving before the end, which
        // is its client going away.
        self.record(Ending::ClientGone);
    }
}

impl EndRecord {
    fn log(self, span: &tracing::Span, ending: Ending<'_>) {
        let duration_ms = self.requested_at.elapsed().as_millis() as u64;
        let stats = &self.stats;
        let (stdin_bytes, output_bytes) = (stats.stdin_bytes(), stats.output_bytes());
        let _entered = span.enter();
        match ending {
            Ending::Exited(code) => {
                self.active.exited(code);
                tracing::info!(
                    exit_code = code,
                    duration_ms,
                    stdin_bytes,
                    output_bytes,
                    "session exited"
                );
            }
            Ending::Failed(err) => {
                self.active.failed(err);
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
                let detached = self.active.client_gone();
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
}
