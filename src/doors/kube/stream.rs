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
//! written by another (`doors::serve`), so input never waits for
//! output or vice versa.

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use execd_session::{ClientEvent, OutputStream, SessionError, SessionKind};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};

use crate::doors::serve::{Inbound, ReadUntil, WireReader, WireWriter};
use crate::doors::session::{DoorInput, DoorSession, End};
use crate::error_text::ClientText;

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// The subprotocols execd speaks, newest first (the order of preference).
pub(crate) const PROTOCOLS: [&str; 4] = [
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
];

/// A negotiated subprotocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
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
    pub(crate) fn from_name(name: &str) -> Option<Protocol> {
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
pub(crate) struct Streams {
    pub(crate) stdin: bool,
    pub(crate) stdout: bool,
    pub(crate) stderr: bool,
    pub(crate) tty: bool,
    pub(crate) kind: SessionKind,
}

/// Serves one upgraded connection until the session's end was delivered or
/// the client left. A client that leaves first ends the session: an exec's
/// processes are killed in the container, an attach only detaches.
pub(crate) async fn serve(
    socket: WebSocket,
    protocol: Protocol,
    streams: Streams,
    session: DoorSession,
    input: DoorInput,
) {
    let (sink, source) = socket.split();
    let reader = Reader {
        source,
        protocol,
        streams,
    };
    let writer = Writer {
        sink,
        protocol,
        streams,
    };
    crate::doors::serve::serve(session, input, reader, writer).await;
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
fn parse_frame(protocol: Protocol, raw: &Bytes) -> Option<(u8, Bytes)> {
    let (&first, rest) = raw.split_first()?;
    if protocol == Protocol::Base64 {
        let channel = first.checked_sub(b'0').filter(|c| *c <= 9)?;
        let data = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        return Some((channel, Bytes::from(data)));
    }
    Some((first, raw.slice(1..)))
}

/// A resize message: `{"Width": cols, "Height": rows}`.
#[derive(serde::Deserialize)]
struct TermSize {
    #[serde(rename = "Width", default)]
    width: u16,
    #[serde(rename = "Height", default)]
    height: u16,
}

/// The client's frames: stdin, resize and (v5) close.
struct Reader {
    source: SplitStream<WebSocket>,
    protocol: Protocol,
    streams: Streams,
}

impl WireReader for Reader {
    const UNTIL: ReadUntil = ReadUntil::WriterDone;

    fn sends_no_stdin(&self) -> bool {
        // Nothing will ever come: a pipe-mode process sees EOF at once, as
        // it would without an attached stdin.
        !self.streams.stdin && !self.streams.tty && self.streams.kind == SessionKind::Exec
    }

    async fn next(&mut self) -> Inbound {
        loop {
            let raw = match self.source.next().await {
                Some(Ok(Message::Binary(b))) => b,
                Some(Ok(Message::Text(t))) => Bytes::from(t),
                // tungstenite answers pings itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Err(e)) if crate::doors::ws_message_too_big(&e) => {
                    tracing::debug!(error = %e, "client message over --max-message-size");
                    return Inbound::Gone { too_big: true };
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    return Inbound::Gone { too_big: false }
                }
            };
            if let Some(event) = self.event(&raw) {
                return Inbound::Event(event);
            }
        }
    }

    async fn close(&mut self) {
        crate::doors::await_close_reply(&mut self.source).await;
    }
}

impl Reader {
    /// What a frame means to the session, if anything.
    fn event(&self, raw: &Bytes) -> Option<ClientEvent> {
        let Some((channel, data)) = parse_frame(self.protocol, raw) else {
            tracing::debug!("malformed frame ignored");
            return None;
        };
        match channel {
            STDIN if self.streams.stdin => Some(ClientEvent::Stdin(data)),
            RESIZE => match serde_json::from_slice::<TermSize>(&data) {
                Ok(size) => Some(ClientEvent::Resize {
                    rows: i32::from(size.height),
                    cols: i32::from(size.width),
                }),
                Err(e) => {
                    tracing::debug!(error = %e, "bad resize message ignored");
                    None
                }
            },
            // The session never passes an attach's EOF on to PID 1.
            CLOSE if self.protocol == Protocol::V5 && data.first() == Some(&STDIN) => {
                Some(ClientEvent::StdinEof)
            }
            other => {
                tracing::debug!(channel = other, "frame on an unused channel ignored");
                None
            }
        }
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

/// The session's output on the stdout and stderr channels, then exactly
/// one message on the error channel and a normal close.
struct Writer {
    sink: SplitSink<WebSocket, Message>,
    protocol: Protocol,
    streams: Streams,
}

impl WireWriter for Writer {
    async fn begin(&mut self) -> bool {
        // kubelet's greeting: an empty frame on the first output channel
        // tells the client the streams are ready.
        let hello = if self.streams.stdout {
            STDOUT
        } else if self.streams.stderr {
            STDERR
        } else {
            return true;
        };
        self.sink
            .send(frame(self.protocol, hello, &[]))
            .await
            .is_ok()
    }

    async fn output(&mut self, stream: OutputStream, data: Bytes) -> bool {
        let streams = self.streams;
        let channel = match stream {
            _ if streams.tty => STDOUT,
            OutputStream::Stdout => STDOUT,
            OutputStream::Stderr => STDERR,
        };
        let wanted = match channel {
            STDOUT => streams.stdout || (streams.tty && streams.stderr),
            _ => streams.stderr,
        };
        !wanted
            || self
                .sink
                .send(frame(self.protocol, channel, &data))
                .await
                .is_ok()
    }

    async fn end(&mut self, end: End) {
        let status = match &end {
            End::Exited(code) => exit_status(self.protocol, *code),
            End::Failed(err) | End::Lost(err) => Some(failure_status(self.protocol, err)),
        };
        if let Some(status) = status {
            let _ = self
                .sink
                .send(frame(self.protocol, ERROR, status.as_bytes()))
                .await;
        }
        let _ = self
            .sink
            .send(Message::Close(Some(CloseFrame {
                code: 1000,
                reason: "".into(),
            })))
            .await;
    }

    async fn gone(&mut self, too_big: bool) {
        if too_big {
            let _ = self.sink.send(crate::doors::ws_too_big_close()).await;
        }
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
            parse_frame(Protocol::V4, &Bytes::from_static(b"\x00abc")),
            Some((STDIN, Bytes::from_static(b"abc")))
        );
        let Message::Text(t) = frame(Protocol::Base64, STDOUT, b"hi") else {
            panic!("text expected")
        };
        assert_eq!(t.as_str(), "1aGk=");
        assert_eq!(
            parse_frame(Protocol::Base64, &Bytes::from_static(b"0aGk=")),
            Some((STDIN, Bytes::from_static(b"hi")))
        );
        assert_eq!(parse_frame(Protocol::V5, &Bytes::new()), None);
    }

    #[test]
    fn protocol_names() {
        assert_eq!(Protocol::from_name(PROTOCOLS[0]), Some(Protocol::V5));
        assert_eq!(Protocol::from_name("v3.channel.k8s.io"), None);
    }
}
