//! `GET /terminal/ws`: the function system's own WebSocket protocol, so its
//! clients — `yr exec`, `yr cp`, the sandbox SDK's PTY — reach execd
//! without the frontend's bridge in between. Wire-compatible with that
//! bridge as its clients use it:
//!
//! - **Query.** `instance` (required) names the instance: the container
//!   whose label `--terminal-instance-label KEY` equals it, else the
//!   container with that name or id; it is the session's `instance_id`.
//!   `command` repeated is the argv; a single value is split on whitespace
//!   (as the bridge does); none runs the bridge's default shell, `/bin/bash`,
//!   or `/bin/sh` where the container has no bash. `tty` is on unless
//!   `false`; `rows`/`cols` the first size; `protocol` empty (legacy) or
//!   `sandbox.pty.v1`. `tenant_id` is accepted and not used.
//! - **Before the upgrade** the session is started, so every refusal
//!   (unknown instance, bad query, token, limits) is an HTTP status with a
//!   JSON message, never a successful-looking close (`yr cp` takes a close
//!   as success).
//! - **Frames in.** Text `RESIZE:<cols>:<rows>` resizes, text `STDIN_EOF`
//!   is stdin EOF (a tty gets its EOF character), any other text or binary
//!   frame is input. A client that goes away without ending the session
//!   ends it (processes killed); with `--reattach-grace`, a
//!   `sandbox.pty.v1` session is detached instead, and a gRPC client can
//!   come back to it with the `session_id` of its `started` event (legacy
//!   clients are never told a session id, so theirs end).
//! - **Frames out.** Output as binary frames, stdout and stderr merged (as
//!   the bridge does). At the end, legacy clients get the text
//!   `\r\n[Process exited]\r\n` and close 1000; `sandbox.pty.v1` clients a
//!   JSON `exited` event (with `exit_code`) and close 1000, or an `error`
//!   event and close 1011. `sandbox.pty.v1` also gets `started` first.
//! - **Tokens.** With tokens configured: `X-Auth`, `token=` in the query
//!   (what the clients send) or the first WebSocket subprotocol, compared
//!   in constant time, never logged. The bridge's 1-second wait for a
//!   first RESIZE is not copied: the session starts at the query's size
//!   and a RESIZE that follows is applied before any input after it.

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use execd_session::log_field::LogField;
use execd_session::{ClientEvent, Door, ExecSpec, OutputStream, ReplayFrom, SessionError};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, StatusCode};
use serde::Serialize;
use tracing::Instrument;

use super::serve::{Inbound, ReadUntil, WireReader, WireWriter};
use super::session::{DoorInput, DoorSession, End};
use super::DoorContext;
use crate::error_text::ClientText;

const V1: &str = "sandbox.pty.v1";
/// What legacy clients wait for before they trust an upload.
const EXITED_TEXT: &str = "\r\n[Process exited]\r\n";
/// The bridge's default shell, where the container has one.
const DEFAULT_SHELL: &str = "if [ -x /bin/bash ]; then exec /bin/bash; else exec /bin/sh; fi";

#[derive(Debug, thiserror::Error)]
pub(crate) enum TerminalError {
    #[error("{0}")]
    BadRequest(String),
    #[error(
        "authentication failed: send the token as token=, X-Auth or the WebSocket subprotocol"
    )]
    Unauthorized,
    #[error("instance {0:?} not found: no running container has {1}={0:?}")]
    NoInstance(String, String),
    #[error("{0}")]
    Engine(String),
    #[error("{}", ClientText(.0))]
    Session(#[from] SessionError),
}

impl IntoResponse for TerminalError {
    fn into_response(self) -> Response {
        let code = match &self {
            TerminalError::BadRequest(_) => StatusCode::BAD_REQUEST,
            TerminalError::Unauthorized => StatusCode::UNAUTHORIZED,
            TerminalError::NoInstance(..) => StatusCode::NOT_FOUND,
            TerminalError::Engine(_) => StatusCode::BAD_GATEWAY,
            TerminalError::Session(err) => super::kube::status::http_status(err.kind()).0,
        };
        super::json_error(code, &self.to_string())
    }
}

pub(crate) fn router(ctx: DoorContext) -> axum::Router {
    axum::Router::new()
        .route("/terminal/ws", get(terminal))
        .with_state(ctx)
}

/// Which of the bridge's two wire protocols a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Legacy,
    PtyV1,
}

/// A parsed `/terminal/ws` query.
#[derive(Debug, PartialEq, Eq)]
struct TerminalQuery {
    instance: String,
    command: Vec<String>,
    tty: bool,
    rows: i32,
    cols: i32,
    token: Option<String>,
    protocol: Protocol,
}

fn parse_query(pairs: Vec<(String, String)>) -> Result<TerminalQuery, TerminalError> {
    let mut q = TerminalQuery {
        instance: String::new(),
        command: Vec::new(),
        tty: true,
        rows: 24,
        cols: 80,
        token: None,
        protocol: Protocol::Legacy,
    };
    let mut commands = Vec::new();
    for (key, value) in pairs {
        match key.as_str() {
            "instance" => q.instance = value,
            "command" => commands.push(value),
            "tty" => q.tty = value != "false",
            // A bad size keeps the default, as the bridge does.
            "rows" => q.rows = value.parse().unwrap_or(q.rows),
            "cols" => q.cols = value.parse().unwrap_or(q.cols),
            "token" if !value.is_empty() => q.token = Some(value),
            "protocol" => {
                q.protocol = match value.as_str() {
                    "" => Protocol::Legacy,
                    V1 => Protocol::PtyV1,
                    other => {
                        let shown: String = other.chars().take(64).collect();
                        return Err(TerminalError::BadRequest(format!(
                            "unsupported terminal protocol {shown:?}"
                        )));
                    }
                }
            }
            _ => {}
        }
    }
    if q.instance.is_empty() {
        return Err(TerminalError::BadRequest(
            "instance is required (/terminal/ws?instance=…)".into(),
        ));
    }
    q.command = match commands.len() {
        0 => Vec::new(),
        1 => commands[0].split_whitespace().map(str::to_string).collect(),
        _ => commands,
    };
    if q.command.is_empty() {
        q.command = ["/bin/sh", "-c", DEFAULT_SHELL].map(String::from).to_vec();
    }
    Ok(q)
}

/// The token a client presented: `Authorization: Bearer` (read like on
/// every door), else `X-Auth`, `token=`, or the first subprotocol it
/// offered (the bridge's order). Two `Authorization` or two `X-Auth`
/// fields are ambiguous.
fn presented_token(
    headers: &HeaderMap,
    query: &TerminalQuery,
) -> Result<Option<Vec<u8>>, crate::auth::BearerError> {
    if let Some(token) = crate::auth::bearer_token(headers)? {
        return Ok(Some(token.to_vec()));
    }
    if let Some(v) = crate::auth::single_header(headers, "x-auth")? {
        return Ok(Some(v.to_vec()));
    }
    if let Some(t) = &query.token {
        return Ok(Some(t.as_bytes().to_vec()));
    }
    Ok(headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|p| !p.is_empty())
        .map(|p| p.as_bytes().to_vec()))
}

/// The container an instance names.
async fn resolve(ctx: &DoorContext, instance: &str) -> Result<String, TerminalError> {
    let Some(label) = &ctx.terminal_instance_label else {
        // A name or id: the session's start checks it like any other.
        return Ok(instance.to_string());
    };
    let running = ctx
        .manager
        .running_containers()
        .await
        .map_err(|e| match e {
            // Busy is a limit (429), not an engine failure.
            execd_session::ContainerQueryError::Busy { .. } => {
                TerminalError::Session(e.into_session_error(instance))
            }
            e => TerminalError::Engine(e.to_string()),
        })?;
    running
        .into_iter()
        .find(|c| c.labels.get(label).is_some_and(|v| v == instance))
        .map(|c| c.id)
        .ok_or_else(|| TerminalError::NoInstance(instance.to_string(), label.clone()))
}

async fn terminal(State(ctx): State<DoorContext>, req: Request) -> Response {
    let (mut parts, _body) = req.into_parts();
    let admitted = async {
        let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
            .map_err(|e| TerminalError::BadRequest(e.body_text()))?;
        let query = parse_query(pairs)?;
        let owner = match &ctx.auth {
            None => String::new(),
            // Counted and logged by the token store.
            Some(store) => match store.admit(
                presented_token(&parts.headers, &query),
                &ctx.metrics,
                "terminal",
            ) {
                Ok(token) => crate::auth::Owner::of_request(&token, &parts.extensions).into_key(),
                Err(_) => return Err(TerminalError::Unauthorized),
            },
        };
        let ws = WebSocketUpgrade::from_request_parts(&mut parts, &())
            .await
            .map_err(|e| TerminalError::BadRequest(e.body_text()))?;
        let container_id = resolve(&ctx, &query.instance).await?;
        Ok::<_, TerminalError>((query, owner, container_id, ws))
    }
    .await;
    let (query, owner, container_id, ws) = match admitted {
        Ok(admitted) => admitted,
        Err(e) => {
            // Credential refusals are counted where they are checked.
            if !matches!(e, TerminalError::Session(_) | TerminalError::Unauthorized) {
                let reason = match e {
                    TerminalError::NoInstance(..) => "no-instance",
                    _ => "bad-request",
                };
                super::log_refusal(
                    &ctx.metrics,
                    &http::Request::from_parts(parts, ()),
                    "terminal",
                    reason,
                );
            }
            return e.into_response();
        }
    };
    let session_id = execd_session::new_session_id();
    let span = tracing::info_span!(
        "session",
        session_id = %session_id,
        door = "terminal",
        instance_id = %LogField::new(&query.instance),
        container_id = %LogField::new(&container_id),
        tty = query.tty,
    );
    let spec = ExecSpec {
        door: Door::Terminal,
        container_id,
        command: query.command.clone(),
        tty: query.tty,
        rows: query.rows,
        cols: query.cols,
        instance_id: query.instance.clone(),
        attach_stdin: true,
        owner,
        ..ExecSpec::default()
    };
    // Only a client that is told its session id can come back to it.
    let reattach = (query.protocol == Protocol::PtyV1).then_some(ReplayFrom::Undelivered);
    let opened = ctx
        .open_session(Some(session_id), spec, reattach, &span)
        .await;
    let (session, input) = match opened {
        Ok(opened) => opened,
        Err(e) => return TerminalError::Session(e).into_response(),
    };
    // The bridge answers with the first offered subprotocol (browsers
    // need one back when they offered any).
    let offered = ws
        .requested_protocols()
        .next()
        .and_then(|p| p.to_str().ok())
        .map(str::to_string);
    let ws = match offered {
        Some(p) => ws.protocols([p]),
        None => ws,
    };
    let protocol = query.protocol;
    super::serve::websocket_response(ws, ctx.max_message_size, move |socket| {
        serve(socket, protocol, session, input).instrument(span)
    })
}

/// A `sandbox.pty.v1` control event, as the SDK parses it.
#[derive(Serialize)]
struct Control<'a> {
    version: u8,
    #[serde(rename = "type")]
    kind: &'a str,
    session_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

fn control(
    kind: &str,
    session_id: &str,
    exit_code: Option<i32>,
    message: Option<String>,
) -> Message {
    let event = Control {
        version: 1,
        kind,
        session_id,
        exit_code,
        message,
    };
    Message::Text(serde_json::to_string(&event).unwrap_or_default().into())
}

async fn serve(socket: WebSocket, protocol: Protocol, session: DoorSession, input: DoorInput) {
    let (sink, source) = socket.split();
    let writer = Writer {
        sink,
        protocol,
        session_id: session.id().to_string(),
    };
    super::serve::serve(session, input, Reader { source }, writer).await;
}

/// What one client frame means.
fn client_event(msg: Message) -> Option<ClientEvent> {
    match msg {
        Message::Binary(data) => Some(ClientEvent::Stdin(data)),
        Message::Text(text) => {
            let text = text.as_str();
            if text == "STDIN_EOF" {
                return Some(ClientEvent::StdinEof);
            }
            if let Some(size) = text.strip_prefix("RESIZE:") {
                if let Some((cols, rows)) = size.split_once(':') {
                    if let (Ok(cols), Ok(rows)) = (cols.trim().parse(), rows.trim().parse()) {
                        return Some(ClientEvent::Resize { rows, cols });
                    }
                }
            }
            Some(ClientEvent::Stdin(Bytes::copy_from_slice(text.as_bytes())))
        }
        Message::Ping(_) | Message::Pong(_) | Message::Close(_) => None,
    }
}

/// The client's frames: input, `RESIZE:`, `STDIN_EOF`.
struct Reader {
    source: SplitStream<WebSocket>,
}

impl WireReader for Reader {
    const UNTIL: ReadUntil = ReadUntil::WriterDone;

    async fn next(&mut self) -> Inbound {
        loop {
            match self.source.next().await {
                Some(Err(e)) if super::ws_message_too_big(&e) => {
                    tracing::debug!(error = %e, "client message over --max-message-size");
                    return Inbound::Gone { too_big: true };
                }
                // Closed without the session's end: never stdin EOF.
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    return Inbound::Gone { too_big: false }
                }
                Some(Ok(msg)) => {
                    if let Some(event) = client_event(msg) {
                        return Inbound::Event(event);
                    }
                }
            }
        }
    }

    async fn close(&mut self) {
        super::await_close_reply(&mut self.source).await;
    }
}

/// Output as binary frames, stdout and stderr merged; `started` first and
/// the end last as the client's protocol has them, then the close.
struct Writer {
    sink: SplitSink<WebSocket, Message>,
    protocol: Protocol,
    session_id: String,
}

impl WireWriter for Writer {
    async fn begin(&mut self) -> bool {
        if self.protocol != Protocol::PtyV1 {
            return true;
        }
        let started = control("started", &self.session_id, None, None);
        self.sink.send(started).await.is_ok()
    }

    async fn output(&mut self, _stream: OutputStream, data: Bytes) -> bool {
        self.sink.send(Message::Binary(data)).await.is_ok()
    }

    async fn end(&mut self, end: End) {
        let id = self.session_id.as_str();
        let (last, close_code) = match (&end, self.protocol) {
            (End::Exited(code), Protocol::PtyV1) => {
                (control("exited", id, Some(*code), None), 1000)
            }
            (End::Failed(err) | End::Lost(err), Protocol::PtyV1) => (
                control("error", id, None, Some(ClientText(err).to_string())),
                1011,
            ),
            // Legacy clients cannot tell an error from an exit: the
            // bridge sends the same text for both.
            _ => (Message::Text(EXITED_TEXT.into()), 1000),
        };
        let _ = self.sink.send(last).await;
        let _ = self
            .sink
            .send(Message::Close(Some(CloseFrame {
                code: close_code,
                reason: "".into(),
            })))
            .await;
    }

    async fn gone(&mut self, too_big: bool) {
        if too_big {
            let _ = self.sink.send(super::ws_too_big_close()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn queries_parse_like_the_bridge() {
        let q = parse_query(pairs(&[("instance", "i"), ("command", "ls  -l /tmp")])).unwrap();
        assert_eq!(q.command, ["ls", "-l", "/tmp"]);
        assert!(q.tty);
        assert_eq!((q.rows, q.cols), (24, 80));
        let q = parse_query(pairs(&[
            ("instance", "i"),
            ("command", "sh"),
            ("command", "-c"),
            ("command", "echo a b"),
            ("tty", "false"),
            ("rows", "x"),
            ("cols", "100"),
            ("protocol", V1),
        ]))
        .unwrap();
        assert_eq!(q.command, ["sh", "-c", "echo a b"]);
        assert!(!q.tty);
        assert_eq!((q.rows, q.cols), (24, 100));
        assert_eq!(q.protocol, Protocol::PtyV1);
        let q = parse_query(pairs(&[("instance", "i")])).unwrap();
        assert_eq!(q.command[0], "/bin/sh");
        assert!(parse_query(pairs(&[("command", "ls")])).is_err());
        assert!(parse_query(pairs(&[("instance", "i"), ("protocol", "x")])).is_err());
    }

    #[test]
    fn frames_mean_what_the_bridge_makes_of_them() {
        let text = |t: &str| client_event(Message::Text(t.into()));
        assert_eq!(
            text("RESIZE:100:30"),
            Some(ClientEvent::Resize {
                rows: 30,
                cols: 100
            })
        );
        assert_eq!(text("STDIN_EOF"), Some(ClientEvent::StdinEof));
        assert_eq!(
            text("ls\n"),
            Some(ClientEvent::Stdin(Bytes::from_static(b"ls\n")))
        );
        assert_eq!(
            text("RESIZE:x"),
            Some(ClientEvent::Stdin(Bytes::from_static(b"RESIZE:x")))
        );
        let bin = client_event(Message::Binary(Bytes::from_static(b"STDIN_EOF")));
        assert_eq!(
            bin,
            Some(ClientEvent::Stdin(Bytes::from_static(b"STDIN_EOF")))
        );
    }

    #[test]
    fn control_events_are_the_sdk_shapes() {
        let Message::Text(t) = control("exited", "s1", Some(0), None) else {
            panic!("text expected")
        };
        assert_eq!(
            t.as_str(),
            r#"{"version":1,"type":"exited","session_id":"s1","exit_code":0}"#
        );
        let Message::Text(t) = control("started", "s1", None, None) else {
            panic!("text expected")
        };
        assert_eq!(
            t.as_str(),
            r#"{"version":1,"type":"started","session_id":"s1"}"#
        );
    }
}
