//! `exec_service.ExecService/ExecStream`: drives one session per stream.
//!
//! The handler returns a response stream at once (so headers go out
//! immediately); that stream first waits for the first message and starts
//! the session, then begins with STARTED and relays the session's events. Client messages after the start are read by a separate task, so
//! a client pushing input never delays output (and vice versa).
//!
//! Every response stream ends with exactly one terminal status message: for
//! EXITED the RPC then ends OK; for ERROR it ends with a gRPC status of the
//! same message and a code that classifies it.
//!
//! Logs: every client-provided value (ids, command, error messages that
//! quote them) goes through [`LogField`]/[`LogCommand`], escaped and
//! bounded, and is logged before it was validated only in that form; the
//! command line is logged at debug only (it may carry secrets).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use execd_proto::exec_service::exec_message::Payload;
use execd_proto::exec_service::exec_service_server::ExecService;
use execd_proto::exec_service::ExecMessage;
use execd_session::log_field::{LogCommand, LogField, MAX_LOG_FIELD};
use execd_session::{
    new_session_id, Door, EndReason, ReplayFrom, SessionError, SessionEvent, SessionEvents,
    SessionInput, SessionManager, SessionStats, ValidationError,
};
use futures_util::Stream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::auth::Owner;
use crate::metrics::{ActiveSession, Metrics};
use crate::protocol;

/// The ExecService implementation.
pub struct ExecServiceImpl {
    opener: Opener,
}

impl ExecServiceImpl {
    pub fn new(
        manager: SessionManager,
        start_timeout: Duration,
        max_pending_starts: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        ExecServiceImpl {
            opener: Opener {
                manager,
                start_timeout,
                pending_starts: Arc::new(tokio::sync::Semaphore::new(max_pending_starts)),
                max_pending_starts,
                metrics,
            },
        }
    }
}

/// Everything needed to turn a fresh stream into a session.
#[derive(Clone)]
struct Opener {
    manager: SessionManager,
    start_timeout: Duration,
    /// Streams that have not sent their start yet hold one of these: an
    /// idle stream costs little, but thousands of them must not.
    pending_starts: Arc<tokio::sync::Semaphore>,
    max_pending_starts: usize,
    metrics: Arc<Metrics>,
}

type Item = Result<ExecMessage, Status>;

/// How long a stream may take to send its start when
/// `--max-pending-starts` streams are already waiting.
const CROWDED_START_GRACE: Duration = Duration::from_secs(1);

/// Error messages may quote client input; logged escaped, up to this long.
const MAX_LOGGED_ERROR: usize = 1024;

fn log_error(message: &str) -> LogField<'_> {
    LogField::with_limit(message, MAX_LOGGED_ERROR)
}

/// What the client reads: queued messages first (STARTED, or an early ERROR
/// and its status), then the session's events until the terminal one.
pub struct ExecResponseStream {
    /// Until the start is decided: waits for the first message and starts
    /// the session, then yields the stream to continue with.
    opening: Option<Pin<Box<dyn Future<Output = ExecResponseStream> + Send>>>,
    session_id: String,
    queued: VecDeque<Item>,
    events: Option<SessionEvents>,
    span: tracing::Span,
    started_at: Instant,
    /// Present once STARTED: metrics and counters of the running session.
    active: Option<(ActiveSession, Arc<SessionStats>)>,
}

impl ExecResponseStream {
    /// A stream that yields `queued` and then ends.
    fn ending(session_id: &str, queued: VecDeque<Item>) -> Self {
        ExecResponseStream {
            opening: None,
            session_id: session_id.to_string(),
            queued,
            events: None,
            span: tracing::Span::none(),
            started_at: Instant::now(),
            active: None,
        }
    }

    fn failed(session_id: &str, err: &SessionError) -> Self {
        let (msg, status) = protocol::error_pair(session_id, err);
        tracing::info!(session_id = %LogField::new(session_id), code = ?status.code(), error = %log_error(status.message()), "session refused");
        Self::ending(session_id, VecDeque::from([Ok(msg), Err(status)]))
    }

    /// The client went away before a session existed: end with its status.
    fn aborted(status: Status) -> Self {
        Self::ending("", VecDeque::from([Err(status)]))
    }

    /// A stream whose first items come from `opening`.
    fn opening(opening: Pin<Box<dyn Future<Output = ExecResponseStream> + Send>>) -> Self {
        ExecResponseStream {
            opening: Some(opening),
            ..Self::ending("", VecDeque::new())
        }
    }

    fn started(
        session_id: &str,
        reattached: bool,
        events: SessionEvents,
        span: tracing::Span,
        active: ActiveSession,
        stats: Arc<SessionStats>,
    ) -> Self {
        ExecResponseStream {
            events: Some(events),
            span,
            active: Some((active, stats)),
            ..Self::ending(
                session_id,
                VecDeque::from([Ok(if reattached {
                    protocol::running(session_id)
                } else {
                    protocol::started(session_id)
                })]),
            )
        }
    }

    fn duration_ms(&self) -> u64 {
        self.started_at.elapsed().as_millis() as u64
    }

    fn bytes(&self) -> (u64, u64) {
        self.active
            .as_ref()
            .map(|(_, s)| (s.stdin_bytes(), s.output_bytes()))
            .unwrap_or_default()
    }
}

impl Stream for ExecResponseStream {
    type Item = Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        if let Some(opening) = self.opening.as_mut() {
            let opened = ready!(opening.as_mut().poll(cx));
            *self = opened;
        }
        if let Some(item) = self.queued.pop_front() {
            return Poll::Ready(Some(item));
        }
        let Some(events) = self.events.as_mut() else {
            return Poll::Ready(None);
        };
        let event = ready!(events.poll_recv(cx));
        let this = &mut *self;
        let id = this.session_id.as_str();
        let item = match event {
            Some(SessionEvent::Output { stream, data }) => {
                if let Some((active, _)) = &this.active {
                    active.metrics().record_output(stream, data.len());
                }
                return Poll::Ready(Some(Ok(protocol::output(id, stream, data))));
            }
            Some(SessionEvent::Exited { code }) => {
                let (stdin_bytes, output_bytes) = this.bytes();
                let duration_ms = this.duration_ms();
                this.span.in_scope(|| {
                    tracing::info!(
                        exit_code = code,
                        duration_ms,
                        stdin_bytes,
                        output_bytes,
                        "session exited"
                    )
                });
                if let Some((active, _)) = &this.active {
                    active.exited(code);
                }
                Ok(protocol::exited(id, code))
            }
            Some(SessionEvent::Failed(err)) => {
                let (msg, status) = protocol::error_pair(id, &err);
                let (stdin_bytes, output_bytes) = this.bytes();
                let duration_ms = this.duration_ms();
                this.span.in_scope(|| {
                    tracing::info!(code = ?status.code(), error = %log_error(status.message()), duration_ms, stdin_bytes, output_bytes, "session ended")
                });
                if let Some((active, _)) = &this.active {
                    active.failed(&err);
                }
                this.queued.push_back(Err(status));
                Ok(msg)
            }
            None => {
                // The session gave up delivering its final event (the client
                // did not read for a long time); still end with a status.
                let err = Status::internal("session ended without a final status");
                this.queued.push_back(Err(err.clone()));
                Ok(protocol::error(id, err.message()))
            }
        };
        this.events = None;
        Poll::Ready(Some(item))
    }
}

/// A message that is not a valid `ExecMessage` (tonic reports decode
/// failures as INTERNAL; resets and disconnects have other codes).
fn is_undecodable(status: &Status) -> bool {
    status.code() == tonic::Code::Internal
}

fn undecodable(status: &Status) -> EndReason {
    EndReason::Protocol(format!(
        "could not decode the client's message: {}",
        status.message()
    ))
}

/// A gRPC error the client caused by sending too large a message.
fn is_too_large(status: &Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
    )
}

#[tonic::async_trait]
impl ExecService for ExecServiceImpl {
    type ExecStreamStream = ExecResponseStream;

    /// Returns at once, so response headers go out immediately (clients
    /// that wait for them before sending their first message do not stall);
    /// the start happens as the response stream is first polled.
    async fn exec_stream(
        &self,
        request: Request<Streaming<ExecMessage>>,
    ) -> Result<Response<Self::ExecStreamStream>, Status> {
        let opener = self.opener.clone();
        // Set by the token check; without tokens nobody is counted per token.
        let owner = request.extensions().get::<Owner>().cloned();
        let from = replay_from(request.metadata())?;
        let inbound = request.into_inner();
        let grace = opener
            .manager
            .reattach_table()
            .map(|t| u64::try_from(t.grace().as_millis()).unwrap_or(u64::MAX));
        let mut response = Response::new(ExecResponseStream::opening(Box::pin(
            opener.open(inbound, owner, from),
        )));
        if let Some(ms) = grace {
            // Tells a client that a dropped connection can come back to
            // its session within this many milliseconds.
            response
                .metadata_mut()
                .insert(REATTACH_GRACE_HEADER, ms.into());
        }
        Ok(response)
    }
}

impl Opener {
    fn refuse(&self, session_id: &str, err: SessionError) -> ExecResponseStream {
        self.metrics.record_refused(Door::Grpc, &err);
        ExecResponseStream::failed(session_id, &err)
    }

    async fn open(
        self,
        mut inbound: Streaming<ExecMessage>,
        owner: Option<Owner>,
        from: ReplayFrom,
    ) -> ExecResponseStream {
        let shutdown = self.manager.shutdown_token().clone();
        // Past the cap of streams allowed to wait the full start timeout,
        // a stream must bring its start at once (real clients send it with
        // the call); idle streams are refused quickly instead.
        let pending = self.pending_starts.clone().try_acquire_owned().ok();
        let start_timeout = if pending.is_some() {
            self.start_timeout
        } else {
            self.start_timeout.min(CROWDED_START_GRACE)
        };
        let first = tokio::select! {
            first = inbound.message() => first,
            _ = tokio::time::sleep(start_timeout) => {
                let reason = if pending.is_some() {
                    EndReason::Protocol(format!(
                        "no start_request within {}s of opening the stream",
                        self.start_timeout.as_secs()
                    ))
                } else {
                    EndReason::TooLarge(format!(
                        "more than {} streams are waiting to send their start_request",
                        self.max_pending_starts
                    ))
                };
                return self.refuse("", SessionError::Ended(reason));
            }
            _ = shutdown.cancelled() => {
                return self.refuse("", SessionError::Ended(EndReason::Shutdown));
            }
        };
        drop(pending);
        let msg = match first {
            Ok(Some(msg)) => msg,
            Ok(None) => {
                let reason =
                    EndReason::Protocol("the stream was closed before a start_request".into());
                return self.refuse("", SessionError::Ended(reason));
            }
            Err(status) if is_too_large(&status) => {
                let reason = EndReason::TooLarge(status.message().to_string());
                return self.refuse("", SessionError::Ended(reason));
            }
            Err(status) if is_undecodable(&status) => {
                return self.refuse("", SessionError::Ended(undecodable(&status)));
            }
            Err(status) => return ExecResponseStream::aborted(status),
        };
        let requested_id = msg.session_id;
        let request = match msg.payload {
            Some(Payload::StartRequest(req)) => req,
            other => {
                let reason = EndReason::Protocol(format!(
                    "the first message must carry start_request, got {}",
                    protocol::payload_name(&other)
                ));
                let echo = if execd_session::command::validate_session_id(&requested_id).is_ok() {
                    requested_id.as_str()
                } else {
                    ""
                };
                return self.refuse(echo, SessionError::Ended(reason));
            }
        };
        let session_id = if requested_id.is_empty() {
            new_session_id()
        } else {
            requested_id
        };
        let mut spec = protocol::spec_from_start(request);
        spec.owner = owner.map(Owner::into_key).unwrap_or_default();
        // Not validated yet: the span shows the values escaped and bounded.
        let span = tracing::info_span!(
            "session",
            session_id = %LogField::new(&session_id),
            instance_id = %LogField::new(&spec.instance_id),
            container_id = %LogField::new(&spec.container_id),
            tty = spec.tty,
        );
        let (tty, command) = (spec.tty, spec.effective_command());
        let requested_at = Instant::now();
        match self
            .manager
            .open(Some(session_id.clone()), spec, from)
            .instrument(span.clone())
            .await
        {
            Ok(session) => {
                let latency = requested_at.elapsed();
                span.in_scope(|| {
                    if session.reattached {
                        tracing::info!(tty, "client reattached");
                    } else {
                        tracing::info!(tty, start_ms = latency.as_millis() as u64, "session started");
                    }
                    // Command lines can carry secrets: debug only.
                    tracing::debug!(command = %LogCommand::new(&command, MAX_LOG_FIELD), "session command");
                });
                let active = if session.reattached {
                    self.metrics.session_reattached(Door::Grpc, tty)
                } else {
                    self.metrics.session_started(Door::Grpc, tty, latency)
                }
                .detachable(self.manager.reattach_table().is_some());
                tokio::spawn(
                    relay_input(inbound, session.input, self.metrics.clone())
                        .instrument(span.clone()),
                );
                ExecResponseStream::started(
                    &session.id,
                    session.reattached,
                    session.output.into_receiver(),
                    span,
                    active,
                    session.stats,
                )
            }
            Err(err) => {
                // An invalid id is not echoed back.
                let echo = match err {
                    SessionError::Invalid(ValidationError::BadSessionId(_)) => "",
                    _ => session_id.as_str(),
                };
                let _entered = span.enter();
                self.refuse(echo, err)
            }
        }
    }
}

/// Metadata a reattaching client sends: how many output bytes of the
/// session it received, so that the replay starts right after them.
pub const OUTPUT_OFFSET_HEADER: &str = "execd-output-offset";

/// Response metadata with `--reattach-grace` on: the grace in milliseconds.
pub const REATTACH_GRACE_HEADER: &str = "execd-reattach-grace-ms";

fn replay_from(metadata: &tonic::metadata::MetadataMap) -> Result<ReplayFrom, Status> {
    let Some(value) = metadata.get(OUTPUT_OFFSET_HEADER) else {
        return Ok(ReplayFrom::Undelivered);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(ReplayFrom::Offset)
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "{OUTPUT_OFFSET_HEADER} must be a byte count (a non-negative integer)"
            ))
        })
}

/// Feeds client messages into the session until it ends or the client stops
/// sending. Half-closing the request stream counts as stdin EOF.
async fn relay_input(
    mut inbound: Streaming<ExecMessage>,
    mut input: SessionInput,
    metrics: Arc<Metrics>,
) {
    loop {
        let next = tokio::select! {
            biased;
            _ = input.finished() => return,
            next = inbound.message() => next,
        };
        let msg = match next {
            Ok(Some(msg)) => msg,
            Ok(None) => {
                tracing::debug!("client half-closed; stdin EOF");
                input.close_stdin().await;
                return;
            }
            Err(status) if is_too_large(&status) => {
                input.end(EndReason::TooLarge(status.message().to_string()));
                return;
            }
            Err(status) if is_undecodable(&status) => {
                input.end(undecodable(&status));
                return;
            }
            Err(status) => {
                tracing::debug!(code = ?status.code(), message = %log_error(status.message()), "client stream failed");
                input.end(EndReason::ClientGone);
                return;
            }
        };
        match msg.payload {
            Some(Payload::InputData(data)) => {
                metrics.record_stdin(data.data.len());
                if !input.write(data.data).await {
                    return;
                }
            }
            Some(Payload::StdinEof(_)) => input.close_stdin().await,
            Some(Payload::Resize(size)) => {
                let applied = input.resize(size.rows, size.cols);
                tracing::debug!(rows = size.rows, cols = size.cols, ?applied, "resize");
            }
            Some(Payload::StartRequest(_)) => {
                input.end(EndReason::SecondStart);
                return;
            }
            other @ (Some(Payload::OutputData(_)) | Some(Payload::Status(_))) => {
                input.end(EndReason::Protocol(format!(
                    "clients must not send {}",
                    protocol::payload_name(&other)
                )));
                return;
            }
            None => tracing::debug!("message without payload ignored"),
        }
    }
}
