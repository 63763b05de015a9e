//! The Kubernetes remotecommand protocol over WebSocket (what kubelet's
//! streaming server and the API server speak for exec and attach), on top
//! of a started session.
//!
//! Every WebSocket message is one channel frame: the first byte names the
//! channel (0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize, 255 close in
//! v5), the rest is the payload. Under `base64.channel.k8s.io` frames are
//! text: an ASCII digit for the channel, then the payload in base64.
//!
//! The stream ends with exactly one message on the error channel, sent
//! after the process exited and all of its output went out: a `Status`
//! object (v4/v5), or for the older protocols nothing on success and the
//! message text on failure. Then a normal close (1000).
//!
//! The client's frames are read by one future and the session's events
//! written by another, so input never waits for output or vice versa.

use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use execd_session::{
    deliver, ClientEvent, OutputStream, SessionError, SessionEvent, SessionInput, SessionKind,
};
use futures_util::{SinkExt, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::door_session::{record_end, Ending, Opened};
use crate::error_text::ClientText;
use crate::metrics::Metrics;

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// The subprotocols execd speaks, newest first (the order of preference).
pub const PROTOCOLS: [&str; 4] = [
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
];

/// A negotiated subprotocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Adds the close channel (`[255, 0]`: stdin closed).
    V5,
    /// JSON `Status` on the error channel; resize channel.
    V4,
    /// The original binary channels; plain text errors.
    V1,
    /// V1 in text frames with base64 payloads, for browsers.
    Base64,
}

impl Protocol {
    pub fn from_name(name: &str) -> Option<Protocol> {
        Some(match name {
            "v5.channel.k8s.io" => Protocol::V5,
            "v4.channel.k8s.io" => Protocol::V4,
            "channel.k8s.io" | "" => Protocol::V1,
            "base64.channel.k8s.io" => Protocol::Base64,
            _ => return None,
        })
    }

    /// Whether the error channel carries a JSON `Status`.
    fn status_json(self) -> bool {
        matches!(self, Protocol::V5 | Protocol::V4)
    }
}

/// Which streams the client asked for.
#[derive(Debug, Clone, Copy)]
pub struct Streams {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
    pub kind: SessionKind,
}

/// A started session and everything needed to report on it.
pub struct Relay {
    pub protocol: Protocol,
    pub streams: Streams,
    pub opened: Opened,
    pub metrics: Arc<Metrics>,
    pub span: tracing::Span,
}

/// Serves one upgraded connection until the session's end was delivered or
/// the client left. A client that leaves first ends the session: an exec's
/// processes are killed in the container, an attach only detaches.
pub async fn serve(socket: WebSocket, relay: Relay) {
    let Relay {
        protocol,
        streams,
        opened:
            Opened {
                session,
                active,
                requested_at,
                ..
            },
        metrics,
        span,
    } = relay;
    let (sink, source) = socket.split();
    let gone = CancellationToken::new();
    let too_big = CancellationToken::new();
    let finished = CancellationToken::new();
    let mut input = session.input;
    if !streams.stdin && !streams.tty && streams.kind == SessionKind::Exec {
        // Nothing will ever come: a pipe-mode process sees EOF at once, as
        // it would without an attached stdin.
        input.close_stdin().await;
    }
    let reader = read_client(
        source,
        input,
        protocol,
        streams,
        metrics.clone(),
        gone.clone(),
        too_big.clone(),
        finished.clone(),
    );
    let writer = async {
        let end = write_events(
            sink,
            session.output.into_receiver(),
            protocol,
            streams,
            &metrics,
            gone.clone(),
            too_big.clone(),
        )
        .await;
        finished.cancel();
        end
    };
    let ((), end) = tokio::join!(reader, writer);
    let ending = match &end {
        End::Exited(code) => Ending::Exited(*code),
        End::Failed(err) => Ending::Failed(err),
        End::ClientGone => Ending::ClientGone,
    };
    record_end(&active, &span, requested_at, &session.stats, ending);
}

enum End {
    Exited(i32),
    Failed(SessionError),
    ClientGone,
}

/// One channel frame in the negotiated encoding.
fn frame(protocol: Protocol, channel: u8, data: &[u8]) -> Message {
    if protocol == Protocol::Base64 {
        let mut text = String::with_capacity(1 + data.len().div_ceil(3) * 4);
        text.push(char::from(b'0' + channel));
        base64::engine::general_purpose::STANDARD.encode_string(data, &mut text);
        return Message::Text(text.into());
    }
    let mut buf = BytesMut::with_capacity(1 + data.len());
    buf.put_u8(channel);
    buf.put_slice(data);
    Message::Binary(buf.freeze())
}

/// Splits a client frame into channel and payload. Text frames are taken
/// like binary ones (the Python client sends stdin and resize as text).
fn parse_frame(protocol: Protocol, raw: &[u8]) -> Option<(u8, Bytes)> {
    let (&first, rest) = raw.split_first()?;
    if protocol == Protocol::Base64 {
        let channel = first.checked_sub(b'0').filter(|c| *c <= 9)?;
        let data = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        return Some((channel, Bytes::from(data)));
    }
    Some((first, Bytes::copy_from_slice(rest)))
}

/// A resize message: `{"Width": cols, "Height": rows}`.
#[derive(serde::Deserialize)]
struct TermSize {
    #[serde(rename = "Width", default)]
    width: u16,
    #[serde(rename = "Height", default)]
    height: u16,
}

#[allow(clippy::too_many_arguments)]
async fn read_client(
    mut source: futures_util::stream::SplitStream<WebSocket>,
    mut input: SessionInput,
    protocol: Protocol,
    streams: Streams,
    metrics: Arc<Metrics>,
    gone: CancellationToken,
    too_big: CancellationToken,
    finished: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            biased;
            _ = finished.cancelled() => {
                crate::doors::await_close_reply(&mut source).await;
                return;
            }
            next = source.next() => next,
        };
        let raw = match next {
            Some(Ok(Message::Binary(b))) => b,
            Some(Ok(Message::Text(t))) => Bytes::from(t),
            // tungstenite answers pings itself.
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Err(e)) if crate::doors::ws_message_too_big(&e) && !finished.is_cancelled() => {
                tracing::debug!(error = %e, "client message over --max-message-size");
                too_big.cancel();
                gone.cancel();
                return;
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                if !finished.is_cancelled() {
                    tracing::debug!("client closed the stream before the end");
                    gone.cancel();
                }
                return;
            }
        };
        let Some((channel, data)) = parse_frame(protocol, &raw) else {
            tracing::debug!("malformed frame ignored");
            continue;
        };
        let event = match channel {
            STDIN if streams.stdin => {
                metrics.record_stdin(data.len());
                ClientEvent::Stdin(data)
            }
            RESIZE => match serde_json::from_slice::<TermSize>(&data) {
                Ok(size) => ClientEvent::Resize {
                    rows: i32::from(size.height),
                    cols: i32::from(size.width),
                },
                Err(e) => {
                    tracing::debug!(error = %e, "bad resize message ignored");
                    continue;
                }
            },
            // The session never passes an attach's EOF on to PID 1.
            CLOSE if protocol == Protocol::V5 && data.first() == Some(&STDIN) => {
                ClientEvent::StdinEof
            }
            other => {
                tracing::debug!(channel = other, "frame on an unused channel ignored");
                continue;
            }
        };
        // Backpressure: while the process does not read, neither do we. Once
        // the session is over, reading goes on only until the close
        // handshake is done.
        let _ = deliver(&mut input, event).await;
    }
}

/// The error channel's message for an exit: a `Status` (v4/v5), else
/// nothing on success and the message text on failure.
fn exit_status(protocol: Protocol, code: i32) -> Option<String> {
    if protocol.status_json() {
        Some(super::status::exited(code).to_string())
    } else {
        (code != 0)
            .then(|| format!("command terminated with non-zero exit code: exit status {code}"))
    }
}

/// The error channel's message for a session that ended without an exit.
fn failure_status(protocol: Protocol, err: &SessionError) -> String {
    if protocol.status_json() {
        super::status::ended(err).to_string()
    } else {
        ClientText(err).to_string()
    }
}

async fn write_events(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut events: execd_session::SessionEvents,
    protocol: Protocol,
    streams: Streams,
    metrics: &Metrics,
    gone: CancellationToken,
    too_big: CancellationToken,
) -> End {
    // kubelet's greeting: an empty frame on the first output channel tells
    // the client the streams are ready.
    let hello = if streams.stdout {
        Some(STDOUT)
    } else if streams.stderr {
        Some(STDERR)
    } else {
        None
    };
    if let Some(channel) = hello {
        if sink.send(frame(protocol, channel, &[])).await.is_err() {
            return End::ClientGone;
        }
    }
    loop {
        let event = tokio::select! {
            biased;
            // Dropping the receiver (on return) ends the session.
            _ = gone.cancelled() => {
                if too_big.is_cancelled() {
                    let _ = sink.send(crate::doors::ws_too_big_close()).await;
                }
                return End::ClientGone;
            }
            event = events.recv() => event,
        };
        let (end, status) = match event {
            Some(SessionEvent::Output { stream, data }) => {
                metrics.record_output(stream, data.len());
                let channel = match stream {
                    _ if streams.tty => STDOUT,
                    OutputStream::Stdout => STDOUT,
                    OutputStream::Stderr => STDERR,
                };
                let wanted = match channel {
                    STDOUT => streams.stdout || (streams.tty && streams.stderr),
                    _ => streams.stderr,
                };
                if wanted && sink.send(frame(protocol, channel, &data)).await.is_err() {
                    return End::ClientGone;
                }
                continue;
            }
            Some(SessionEvent::Exited { code }) => (End::Exited(code), exit_status(protocol, code)),
            Some(SessionEvent::Failed(err)) => {
                let status = failure_status(protocol, &err);
                (End::Failed(err), Some(status))
            }
            None => {
                let err = SessionError::Wait(std::io::Error::other(
                    "session ended without a final status",
                ));
                let status = failure_status(protocol, &err);
                (End::Failed(err), Some(status))
            }
        };
        if let Some(status) = status {
            let _ = sink.send(frame(protocol, ERROR, status.as_bytes())).await;
        }
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: 1000,
                reason: "".into(),
            })))
            .await;
        return end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_in_both_encodings() {
        let Message::Binary(b) = frame(Protocol::V4, STDERR, b"hi") else {
            panic!("binary expected")
        };
        assert_eq!(&b[..], b"\x02hi");
        assert_eq!(
            parse_frame(Protocol::V4, b"\x00abc"),
            Some((STDIN, Bytes::from_static(b"abc")))
        );
        let Message::Text(t) = frame(Protocol::Base64, STDOUT, b"hi") else {
            panic!("text expected")
        };
        assert_eq!(t.as_str(), "1aGk=");
        assert_eq!(
            parse_frame(Protocol::Base64, b"0aGk="),
            Some((STDIN, Bytes::from_static(b"hi")))
        );
        assert_eq!(parse_frame(Protocol::V5, b""), None);
    }

    #[test]
    fn protocol_names() {
        assert_eq!(Protocol::from_name(PROTOCOLS[0]), Some(Protocol::V5));
        assert_eq!(Protocol::from_name("v3.channel.k8s.io"), None);
    }
}
