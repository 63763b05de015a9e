//! The gRPC door's two halves of [`crate::doors::serve`]: `ExecMessage`s
//! from the request stream to client events ([`Reader`]), session events
//! to `ExecMessage`s on the response stream ([`Writer`]).

use std::time::Duration;

use bytes::Bytes;
use execd_proto::exec_service::exec_message::Payload;
use execd_proto::exec_service::ExecMessage;
use execd_session::log_field::LogField;
use execd_session::{ClientEvent, EndReason, OutputStream};
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

use super::body::Yield;
use super::protocol;
use crate::doors::serve::{Inbound, ReadUntil, WireReader, WireWriter};
use crate::doors::session::{End, MAX_LOGGED_ERROR};

/// One item of the response stream.
pub(crate) type Item = Result<ExecMessage, Status>;

/// How long a request stream that ended waits for its response to be
/// dropped before the end counts as a half-close (see [`request_end`]).
const RESET_SETTLE: Duration = Duration::from_millis(200);

/// What a failed read of the client's stream means for the session, if
/// the client caused it: too large a message (tonic reports OUT_OF_RANGE or
/// RESOURCE_EXHAUSTED), or one that is not a valid `ExecMessage` (tonic
/// reports decode failures as INTERNAL; resets and disconnects have other
/// codes). `None`: the client went away.
pub(super) fn read_failure(status: &Status) -> Option<EndReason> {
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

/// The request stream after its start request. Half-closing it is stdin
/// EOF; a cancelled call is not.
pub(super) struct Reader {
    pub(super) inbound: Streaming<ExecMessage>,
    /// Fires when the response stream is dropped (see [`request_end`]).
    pub(super) response_gone: CancellationToken,
}

impl WireReader for Reader {
    const UNTIL: ReadUntil = ReadUntil::SessionOver;

    async fn next(&mut self) -> Inbound {
        loop {
            match self.inbound.message().await {
                Ok(Some(msg)) => match client_event(msg.payload) {
                    Some(event) => return Inbound::Event(event),
                    None => tracing::debug!("message without payload ignored"),
                },
                Ok(None) => return Inbound::Last(request_end(&self.response_gone).await),
                Err(status) => {
                    let reason = read_failure(&status).unwrap_or_else(|| {
                        tracing::debug!(code = ?status.code(), message = %LogField::with_limit(status.message(), MAX_LOGGED_ERROR), "client stream failed");
                        EndReason::ClientGone
                    });
                    return Inbound::Event(ClientEvent::End(reason));
                }
            }
        }
    }
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

/// The response stream once the session started: STARTED (or RUNNING for
/// a client that came back), the output, then exactly one terminal status
/// message. After EXITED the call ends OK; after ERROR with a gRPC status
/// of the same words. A client that resets the call drops the stream and
/// this with it, which is how the session hears that its client left.
pub(super) struct Writer {
    pub(super) out: Yield<Item>,
    pub(super) session_id: String,
    pub(super) reattached: bool,
}

impl WireWriter for Writer {
    async fn begin(&mut self) -> bool {
        let id = self.session_id.as_str();
        let first = if self.reattached {
            protocol::running(id)
        } else {
            protocol::started(id)
        };
        self.out.send(Ok(first)).await;
        true
    }

    async fn output(&mut self, stream: OutputStream, data: Bytes) -> bool {
        let msg = protocol::output(&self.session_id, stream, data);
        self.out.send(Ok(msg)).await;
        true
    }

    async fn end(&mut self, end: End) {
        let id = self.session_id.as_str();
        let (msg, status) = match &end {
            End::Exited(code) => return self.out.send(Ok(protocol::exited(id, *code))).await,
            End::Failed(err) => protocol::error_pair(id, err),
            End::Lost(_) => {
                // The session gave up delivering its final event (the
                // client did not read for a long time).
                let status = Status::internal("session ended without a final status");
                (protocol::error(id, status.message()), status)
            }
        };
        self.out.send(Ok(msg)).await;
        self.out.send(Err(status)).await;
    }
}
