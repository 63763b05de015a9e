//! Builders for the messages a client sends on `ExecStream`: the start
//! request first, then input, stdin EOF and terminal resizes.
//!
//! Only the first message's `session_id` means anything to execd, so the
//! later ones leave it empty.

use bytes::Bytes;
use execd_proto::exec_service::exec_message::Payload;
use execd_proto::exec_service::{
    ExecInputData, ExecMessage, ExecResizeRequest, ExecStartRequest, ExecStdinEof,
};

/// A start request for `command` in `container`, everything else default
/// (no tty, no env); fill in more with struct update syntax.
pub fn request(container: &str, command: &[&str]) -> ExecStartRequest {
    ExecStartRequest {
        container_id: container.to_string(),
        command: command.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// The first message of a stream; an empty `session_id` lets execd pick one.
pub fn start(session_id: &str, request: ExecStartRequest) -> ExecMessage {
    with_session(session_id, Payload::StartRequest(request))
}

/// Bytes for the process's stdin.
pub fn input(data: impl Into<Bytes>) -> ExecMessage {
    with_session("", Payload::InputData(ExecInputData { data: data.into() }))
}

/// The end of stdin (in tty mode execd types the terminal's EOF character).
pub fn eof() -> ExecMessage {
    with_session("", Payload::StdinEof(ExecStdinEof {}))
}

/// A new terminal size; values ≤ 0 mean execd's default.
pub fn resize(rows: i32, cols: i32) -> ExecMessage {
    with_session("", Payload::Resize(ExecResizeRequest { rows, cols }))
}

fn with_session(session_id: &str, payload: Payload) -> ExecMessage {
    ExecMessage {
        session_id: session_id.to_string(),
        payload: Some(payload),
    }
}
