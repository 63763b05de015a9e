//! `exec_service.ExecService/ExecStream`: drives one session per stream.
//!
//! The handler returns a response stream at once (so headers go out
//! immediately); that stream first waits for the first message and starts
//! the session, then begins with STARTED and relays the session's events.
//! Client messages after the start are read by a separate task, so a client
//! pushing input never delays output (and vice versa). Waiting for the
//! start, applying input and recording the end are shared with the other
//! doors ([`execd_session::client`], [`crate::door_session`]); this module
//! translates `ExecMessage`s.
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
use execd_proto::exec_service::{ExecMessage, ExecStartRequest};
use execd_session::log_field::LogField;
use execd_session::{
    await_start, deliver, ClientEvent, Door, EndReason, Flow, ReplayFrom, SessionError,
    SessionEvent, SessionEvents, SessionInput, SessionManager, SessionStats, StartWaitError,
    ValidationError,
};
use futures_util::Stream;
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::auth::Owner;
use crate::door_session::{self, Ending, Opened};
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

/// A stream refused before its session started, ready to be returned.
type Refused = Box<ExecResponseStream>;

/// How long a stream may take to send its start when
/// `--max-pending-starts` streams are already waiting.
const CROWDED_START_GRACE: Duration = Duration::from_secs(1);

/// The running session behind a stream: what its end is recorded with.
struct Running {
    active: ActiveSession,
    stats: Arc<SessionStats>,
    span: tracing::Span,
    requested_at: Instant,
    /// Fires when the response stream is dropped (see [`relay_input`]).
    _response_gone: DropGuard,
}

impl Running {
    fn record_end(&self, ending: Ending<'_>) {
        door_session::record_end(
            &self.active,
            &self.span,
            self.requested_at,
            &self.stats,
            ending,
        );
    }
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
    /// Present once STARTED.
    running: Option<Running>,
}

impl ExecResponseStream {
    /// A stream that yields `queued` and then ends.
    fn ending(session_id: &str, queued: VecDeque<Item>) -> Self {
        ExecResponseStream {
            opening: None,
            session_id: session_id.to_string(),
            queued,
            events: None,
            running: None,
        }
    }

    /// The terminal ERROR and its status, for a session that never started.
    fn failed(session_id: &str, err: &SessionError) -> Self {
        let (msg, status) = protocol::error_pair(session_id, err);
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
        running: Running,
    ) -> Self {
        ExecResponseStream {
            events: Some(events),
            running: Some(running),
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

    fn record_end(&self, ending: Ending<'_>) {
        if let Some(running) = &self.running {
            running.record_end(ending);
        }
    }

    /// The message for one session event; a terminal one queues the RPC's
    /// status after it where there is one.
    fn relay(&mut self, event: Option<SessionEvent>) -> Item {
        let id = self.session_id.as_str();
        match event {
            Some(SessionEvent::Output { stream, data }) => {
                if let Some(running) = &self.running {
                    running.active.metrics().record_output(stream, data.len());
                }
                Ok(protocol::output(id, stream, data))
            }
            Some(SessionEvent::Exited { code }) => {
                let msg = protocol::exited(id, code);
                self.record_end(Ending::Exited(code));
                Ok(msg)
            }
            Some(SessionEvent::Failed(err)) => {
                let (msg, status) = protocol::error_pair(id, &err);
                self.record_end(Ending::Failed(&err));
                self.queued.push_back(Err(status));
                Ok(msg)
            }
            None => {
                // The session gave up delivering its final event (the client
                // did not read for a long time); still end with a status.
                let err = Status::internal("session ended without a final status");
                self.queued.push_back(Err(err.clone()));
                Ok(protocol::error(id, err.message()))
            }
        }
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
        let terminal = !matches!(event, Some(SessionEvent::Output { .. }));
        let item = self.relay(event);
        if terminal {
            self.events = None;
        }
        Poll::Ready(Some(item))
    }
}

/// What a failed read of the client's stream means for the session, if
/// the client caused it: too large a message (tonic reports OUT_OF_RANGE or
/// RESOURCE_EXHAUSTED), or one that is not a valid `ExecMessage` (tonic
/// reports decode failures as INTERNAL; resets and disconnects have other
/// codes). `None`: the client went away.
fn read_failure(status: &Status) -> Option<EndReason> {
    match status.code() {
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => {
            Some(EndReason::TooLarge(status.message().to_string()))
        }
        tonic::Code::Internal => Some(EndReason::Protocol(format!(
            "could not decode the client's message: {}",
            status.message()
        ))),
        _ => None,
    }
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
    /// Refuses a stream before its session started (counted and logged).
    fn refuse(&self, session_id: &str, err: SessionError) -> ExecResponseStream {
        self.metrics.record_refused(Door::Grpc, &err);
        tracing::info!(session_id = %LogField::new(session_id), kind = err.kind().as_str(), error = %door_session::log_error(&err), "session refused");
        ExecResponseStream::failed(session_id, &err)
    }

    async fn open(
        self,
        mut inbound: Streaming<ExecMessage>,
        owner: Option<Owner>,
        from: ReplayFrom,
    ) -> ExecResponseStream {
        let msg = match self.first_message(&mut inbound).await {
            Ok(msg) => msg,
            Err(refused) => return *refused,
        };
        let (session_id, request) = match self.start_request(msg) {
            Ok(start) => start,
            Err(refused) => return *refused,
        };
        self.start(inbound, owner, session_id, request, from).await
    }

    /// The stream's first message, within the start timeout.
    async fn first_message(
        &self,
        inbound: &mut Streaming<ExecMessage>,
    ) -> Result<ExecMessage, Refused> {
        // Past the cap of streams allowed to wait the full start timeout,
        // a stream must bring its start at once (real clients send it with
        // the call); idle streams are refused quickly instead.
        let pending = self.pending_starts.clone().try_acquire_owned().ok();
        let wait = if pending.is_some() {
            self.start_timeout
        } else {
            self.start_timeout.min(CROWDED_START_GRACE)
        };
        let first = await_start(inbound.message(), wait, self.manager.shutdown_token()).await;
        let reason = match first {
            Ok(Ok(Some(msg))) => return Ok(msg),
            Ok(Ok(None)) => {
                EndReason::Protocol("the stream was closed before a start_request".into())
            }
            Ok(Err(status)) => match read_failure(&status) {
                Some(reason) => reason,
                None => return Err(Box::new(ExecResponseStream::aborted(status))),
            },
            Err(StartWaitError::TimedOut) if pending.is_some() => EndReason::Protocol(format!(
                "no start_request within {}s of opening the stream",
                self.start_timeout.as_secs()
            )),
            Err(StartWaitError::TimedOut) => EndReason::TooLarge(format!(
                "more than {} streams are waiting to send their start_request",
                self.max_pending_starts
            )),
            Err(StartWaitError::Shutdown) => EndReason::Shutdown,
        };
        Err(Box::new(self.refuse("", SessionError::Ended(reason))))
    }

    /// The session id (the client's, or a fresh one) and the start request
    /// the first message must carry.
    fn start_request(
        &self,
        msg: ExecMessage,
    ) -> Result<(Option<String>, ExecStartRequest), Refused> {
        match msg.payload {
            Some(Payload::StartRequest(req)) => {
                Ok(((!msg.session_id.is_empty()).then_some(msg.session_id), req))
            }
            other => {
                let reason = EndReason::Protocol(format!(
                    "the first message must carry start_request, got {}",
                    protocol::payload_name(&other)
                ));
                let echo = if execd_session::validate_session_id(&msg.session_id).is_ok() {
                    msg.session_id.as_str()
                } else {
                    ""
                };
                Err(Box::new(self.refuse(echo, SessionError::Ended(reason))))
            }
        }
    }

    /// Starts the session and, once STARTED, the task relaying input.
    async fn start(
        self,
        inbound: Streaming<ExecMessage>,
        owner: Option<Owner>,
        requested_id: Option<String>,
        request: ExecStartRequest,
        from: ReplayFrom,
    ) -> ExecResponseStream {
        // The span needs the id before the start: a fresh one is made here.
        let session_id = requested_id.unwrap_or_else(execd_session::new_session_id);
        let mut spec = protocol::spec_from_start(request);
        spec.door = Door::Grpc;
        spec.owner = owner.map(Owner::into_key).unwrap_or_default();
        // Not validated yet: the span shows the values escaped and bounded.
        let span = tracing::info_span!(
            "session",
            session_id = %LogField::new(&session_id),
            instance_id = %LogField::new(&spec.instance_id),
            container_id = %LogField::new(&spec.container_id),
            tty = spec.tty,
        );
        let opened = door_session::open(
            &self.manager,
            &self.metrics,
            Some(session_id.clone()),
            spec,
            Some(from),
            &span,
        )
        .await;
        let Opened {
            session,
            active,
            requested_at,
            ..
        } = match opened {
            Ok(opened) => opened,
            Err(err) => {
                // An invalid id is not echoed back.
                let echo = match err {
                    SessionError::Invalid(ValidationError::BadSessionId(_)) => "",
                    _ => session_id.as_str(),
                };
                return ExecResponseStream::failed(echo, &err);
            }
        };
        let response_gone = CancellationToken::new();
        tokio::spawn(
            relay_input(
                inbound,
                session.input,
                self.metrics.clone(),
                response_gone.clone(),
            )
            .instrument(span.clone()),
        );
        let running = Running {
            active,
            stats: session.stats,
            span,
            requested_at,
            _response_gone: response_gone.drop_guard(),
        };
        ExecResponseStream::started(
            &session.id,
            session.reattached,
            session.output.into_receiver(),
            running,
        )
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

/// What the end of the request stream means. hyper reports a client's
/// RST_STREAM(CANCEL) — `call.cancel()`, or a proxy whose own client
/// vanished — as the end of the request body, exactly like a half-close
/// (END_STREAM). Only a half-close is stdin EOF: a cancelled call must
/// leave stdin alone (ended, or detached with reattach on). What tells them
/// apart is the response: a reset drops it at once, a half-close leaves it
/// open.
async fn request_end(response_gone: &CancellationToken) -> ClientEvent {
    match tokio::time::timeout(RESET_SETTLE, response_gone.cancelled()).await {
        Ok(()) => {
            tracing::debug!("client cancelled the call (stream reset); stdin left open");
            ClientEvent::End(EndReason::ClientGone)
        }
        Err(_) => {
            tracing::debug!("client half-closed; stdin EOF");
            ClientEvent::StdinEof
        }
    }
}

/// The session event a client message stands for.
fn client_event(payload: Option<Payload>) -> Option<ClientEvent> {
    Some(match payload {
        Some(Payload::InputData(data)) => ClientEvent::Stdin(data.data),
        Some(Payload::StdinEof(_)) => ClientEvent::StdinEof,
        Some(Payload::Resize(size)) => ClientEvent::Resize {
            rows: size.rows,
            cols: size.cols,
        },
        Some(Payload::StartRequest(_)) => ClientEvent::End(EndReason::SecondStart),
        other @ (Some(Payload::OutputData(_)) | Some(Payload::Status(_))) => {
            ClientEvent::End(EndReason::Protocol(format!(
                "clients must not send {}",
                protocol::payload_name(&other)
            )))
        }
        None => return None,
    })
}

/// How long a request stream that ended waits for its response to be
/// dropped before the end counts as a half-close (see [`request_end`]).
const RESET_SETTLE: Duration = Duration::from_millis(200);

/// Feeds client messages into the session until it ends or the client stops
/// sending. Half-closing the request stream counts as stdin EOF; a
/// cancelled call does not.
async fn relay_input(
    mut inbound: Streaming<ExecMessage>,
    mut input: SessionInput,
    metrics: Arc<Metrics>,
    response_gone: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            biased;
            _ = input.finished() => return,
            next = inbound.message() => next,
        };
        let event = match next {
            Ok(Some(msg)) => match client_event(msg.payload) {
                Some(event) => event,
                None => {
                    tracing::debug!("message without payload ignored");
                    continue;
                }
            },
            Ok(None) => {
                let event = tokio::select! {
                    biased;
                    _ = input.finished() => return,
                    event = request_end(&response_gone) => event,
                };
                let _ = deliver(&mut input, event).await;
                return;
            }
            Err(status) => {
                let reason = read_failure(&status).unwrap_or_else(|| {
                    tracing::debug!(code = ?status.code(), message = %LogField::with_limit(status.message(), door_session::MAX_LOGGED_ERROR), "client stream failed");
                    EndReason::ClientGone
                });
                ClientEvent::End(reason)
            }
        };
        if let ClientEvent::Stdin(data) = &event {
            metrics.record_stdin(data.len());
        }
        if deliver(&mut input, event).await == Flow::Stop {
            return;
        }
    }
}
