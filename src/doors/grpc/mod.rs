//! The gRPC door: `exec_service.ExecService/ExecStream`, one session per
//! stream.
//!
//! The handler returns the response stream at once (so headers go out
//! immediately; clients that wait for them before sending their first
//! message do not stall). That stream's body ([`body`]) first waits for
//! the first message and starts the session, then writes STARTED and the
//! session's events ([`wire::Writer`]); the client's later messages are
//! read by a task of their own ([`wire::Reader`]), so a client pushing
//! input never delays output (and vice versa).
//!
//! The two halves are the shared ones of [`crate::doors::serve`], run
//! apart rather than joined: tonic pulls the response stream, and a reset
//! call shows only as that stream being dropped, so the writer lives in
//! the stream and the reader in its task.
//!
//! - [`protocol`]: `ExecMessage`s to and from the session's types.
//!
//! Logs: every client-provided value (ids, command, error messages that
//! quote them) goes through [`LogField`], escaped and bounded, and is
//! logged before it was validated only in that form; the command line is
//! logged at debug only (it may carry secrets).

mod body;
pub(crate) mod protocol;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use execd_proto::exec_service::exec_message::Payload;
use execd_proto::exec_service::exec_service_server::ExecService;
use execd_proto::exec_service::{ExecMessage, ExecStartRequest};
use execd_session::log_field::LogField;
use execd_session::{
    await_start, Door, EndReason, ReplayFrom, SessionError, SessionManager, StartWaitError,
    ValidationError,
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use self::body::{BodyStream, Yield};
use self::wire::Item;
use crate::auth::Owner;
use crate::doors::serve::{self, Signals};
use crate::doors::session::{self, DoorInput, DoorSession};
use crate::metrics::Metrics;

/// Metadata a reattaching client sends: how many output bytes of the
/// session it received, so that the replay starts right after them.
pub(crate) const OUTPUT_OFFSET_HEADER: &str = "execd-output-offset";

/// Response metadata with `--reattach-grace` on: the grace in milliseconds.
pub(crate) const REATTACH_GRACE_HEADER: &str = "execd-reattach-grace-ms";

/// How long a stream may take to send its start when
/// `--max-pending-starts` streams are already waiting.
const CROWDED_START_GRACE: Duration = Duration::from_secs(1);

/// The ExecService implementation.
pub(crate) struct ExecServiceImpl {
    opener: Opener,
}

impl ExecServiceImpl {
    pub(crate) fn new(
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

/// A stream that ends before its session started: its last items (an
/// ERROR and its status, or only a status).
struct Refused(Vec<Item>);

impl Refused {
    /// The terminal ERROR and its status. An invalid id is not echoed.
    fn failed(session_id: &str, err: &SessionError) -> Self {
        let (msg, status) = protocol::error_pair(session_id, err);
        Refused(vec![Ok(msg), Err(status)])
    }
}

#[tonic::async_trait]
impl ExecService for ExecServiceImpl {
    type ExecStreamStream = BodyStream<Item>;

    /// Returns at once, so response headers go out immediately; the start
    /// happens as the response stream is first polled.
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
        let mut response = Response::new(BodyStream::new(move |out| {
            opener.serve(inbound, owner, from, out)
        }));
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
    /// The whole response stream: the start, then the session.
    async fn serve(
        self,
        mut inbound: Streaming<ExecMessage>,
        owner: Option<Owner>,
        from: ReplayFrom,
        out: Yield<Item>,
    ) {
        let (session, input) = match self.open(&mut inbound, owner, from).await {
            Ok(opened) => opened,
            Err(Refused(items)) => {
                for item in items {
                    out.send(item).await;
                }
                return;
            }
        };
        // Fires when the response stream is dropped, this body with it.
        let response_gone = CancellationToken::new();
        let _response_gone = response_gone.clone().drop_guard();
        let reader = wire::Reader {
            inbound,
            response_gone,
        };
        tokio::spawn(
            serve::read_client(reader, input, Signals::default())
                .instrument(session.span().clone()),
        );
        let writer = wire::Writer {
            out,
            session_id: session.id().to_string(),
            reattached: session.reattached(),
        };
        serve::write_events(writer, session, &Signals::default()).await;
    }

    async fn open(
        &self,
        inbound: &mut Streaming<ExecMessage>,
        owner: Option<Owner>,
        from: ReplayFrom,
    ) -> Result<(DoorSession, DoorInput), Refused> {
        let msg = self.first_message(inbound).await?;
        let (session_id, request) = self.start_request(msg)?;
        self.start(owner, session_id, request, from).await
    }

    /// Refuses a stream before its session started (counted and logged).
    fn refuse(&self, session_id: &str, err: SessionError) -> Refused {
        self.metrics.record_refused(Door::Grpc, &err);
        tracing::info!(session_id = %LogField::new(session_id), kind = err.kind().as_str(), error = %session::log_error(&err), "session refused");
        Refused::failed(session_id, &err)
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
            Ok(Err(status)) => match wire::read_failure(&status) {
                Some(reason) => reason,
                // The client went away before a session existed.
                None => return Err(Refused(vec![Err(status)])),
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
        Err(self.refuse("", SessionError::Ended(reason)))
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
                Err(self.refuse(echo, SessionError::Ended(reason)))
            }
        }
    }

    /// Starts the session; with reattach on, as one its client can come
    /// back to.
    async fn start(
        &self,
        owner: Option<Owner>,
        requested_id: Option<String>,
        request: ExecStartRequest,
        from: ReplayFrom,
    ) -> Result<(DoorSession, DoorInput), Refused> {
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
        // A refusal is counted and logged by the start itself.
        let opened = session::open(
            &self.manager,
            &self.metrics,
            Some(session_id.clone()),
            spec,
            Some(from),
            &span,
        )
        .await;
        opened.map_err(|err| {
            // An invalid id is not echoed back.
            let echo = match err {
                SessionError::Invalid(ValidationError::BadSessionId(_)) => "",
                _ => session_id.as_str(),
            };
            Refused::failed(echo, &err)
        })
    }
}

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
