//! Mapping between the wire contract (`exec_service` messages) and the
//! session manager's types, in both directions. No I/O here.

use bytes::Bytes;
use execd_proto::exec_service::{
    exec_message::Payload, exec_output_data::StreamType,
    exec_status_response::Status as WireStatus, ExecMessage, ExecOutputData, ExecStartRequest,
    ExecStatusResponse,
};
use execd_session::{ExecSpec, OutputStream, SessionError};

/// The request as the session manager wants it.
pub(crate) fn spec_from_start(req: ExecStartRequest) -> ExecSpec {
    ExecSpec {
        container_id: req.container_id,
        command: req.command,
        tty: req.tty,
        rows: req.rows,
        cols: req.cols,
        env: req.env.into_iter().collect(),
        working_dir: req.working_dir,
        user: req.user,
        instance_id: req.instance_id,
        ..ExecSpec::default()
    }
}

fn message(session_id: &str, payload: Payload) -> ExecMessage {
    ExecMessage {
        session_id: session_id.to_string(),
        payload: Some(payload),
    }
}

fn status(
    session_id: &str,
    status: WireStatus,
    exit_code: i32,
    error_message: String,
) -> ExecMessage {
    message(
        session_id,
        Payload::Status(ExecStatusResponse {
            status: status as i32,
            exit_code,
            error_message,
        }),
    )
}

pub(crate) fn started(session_id: &str) -> ExecMessage {
    status(session_id, WireStatus::Started, 0, String::new())
}

/// Sent instead of STARTED to a client that reattached: the process did
/// not start again.
pub(crate) fn running(session_id: &str) -> ExecMessage {
    status(session_id, WireStatus::Running, 0, String::new())
}

pub(crate) fn exited(session_id: &str, code: i32) -> ExecMessage {
    status(session_id, WireStatus::Exited, code, String::new())
}

pub(crate) fn error(session_id: &str, message: &str) -> ExecMessage {
    status(session_id, WireStatus::Error, 0, message.to_string())
}

/// The terminal ERROR message and the matching gRPC status that ends the
/// RPC: the same words, a code that classifies them.
pub(crate) fn error_pair(session_id: &str, err: &SessionError) -> (ExecMessage, tonic::Status) {
    let status = crate::error_text::grpc_status(err);
    (error(session_id, status.message()), status)
}

pub(crate) fn output(session_id: &str, stream: OutputStream, data: Bytes) -> ExecMessage {
    let stream_type = match stream {
        OutputStream::Stdout => StreamType::Stdout,
        OutputStream::Stderr => StreamType::Stderr,
    };
    message(
        session_id,
        Payload::OutputData(ExecOutputData {
            stream_type: stream_type as i32,
            data,
        }),
    )
}

/// Short name of a payload for logs and protocol errors.
pub(crate) fn payload_name(payload: &Option<Payload>) -> &'static str {
    match payload {
        None => "an empty message",
        Some(Payload::StartRequest(_)) => "start_request",
        Some(Payload::InputData(_)) => "input_data",
        Some(Payload::Resize(_)) => "resize",
        Some(Payload::OutputData(_)) => "output_data",
        Some(Payload::Status(_)) => "status",
        Some(Payload::StdinEof(_)) => "stdin_eof",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_request_maps_every_field() {
        let req = ExecStartRequest {
            container_id: "c".into(),
            command: vec!["ls".into()],
            tty: true,
            rows: 10,
            cols: 20,
            env: [("A".to_string(), "1".to_string())].into_iter().collect(),
            working_dir: "/w".into(),
            user: "u".into(),
            instance_id: "i".into(),
        };
        let spec = spec_from_start(req);
        assert_eq!(spec.container_id, "c");
        assert_eq!(spec.command, ["ls"]);
        assert!(spec.tty);
        assert_eq!((spec.rows, spec.cols), (10, 20));
        assert_eq!(spec.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(spec.working_dir, "/w");
        assert_eq!(spec.user, "u");
        assert_eq!(spec.instance_id, "i");
    }

    #[test]
    fn status_messages_carry_id_and_fields() {
        let m = exited("s1", 3);
        assert_eq!(m.session_id, "s1");
        match m.payload {
            Some(Payload::Status(s)) => {
                assert_eq!(s.status, WireStatus::Exited as i32);
                assert_eq!(s.exit_code, 3);
            }
            other => panic!("unexpected {other:?}"),
        }
        let m = output("s1", OutputStream::Stderr, Bytes::from_static(b"x"));
        match m.payload {
            Some(Payload::OutputData(o)) => assert_eq!(o.stream_type, StreamType::Stderr as i32),
            other => panic!("unexpected {other:?}"),
        }
    }
}
