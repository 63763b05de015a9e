//! Kubernetes `Status` objects: the body of every refusal on the kube
//! door, and the final message on the error channel of a stream.
//!
//! `http_status` is the door's one mapping from a session failure's
//! [`ErrorKind`] to an HTTP code and a Kubernetes reason.

use axum::response::{IntoResponse, Response};
use execd_session::{ErrorKind, SessionError};
use http::StatusCode;
use serde_json::{json, Value};

/// HTTP code and Kubernetes `reason` for a kind of failure.
pub(crate) fn http_status(kind: ErrorKind) -> (StatusCode, &'static str) {
    match kind {
        ErrorKind::InvalidArgument => (StatusCode::BAD_REQUEST, "BadRequest"),
        ErrorKind::AlreadyExists => (StatusCode::CONFLICT, "AlreadyExists"),
        ErrorKind::NotFound => (StatusCode::NOT_FOUND, "NotFound"),
        // What the API server answers for "container not running".
        ErrorKind::FailedPrecondition => (StatusCode::BAD_REQUEST, "BadRequest"),
        ErrorKind::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "TooManyRequests"),
        ErrorKind::PermissionDenied => (StatusCode::FORBIDDEN, "Forbidden"),
        ErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
        ErrorKind::Aborted => (StatusCode::CONFLICT, "Conflict"),
        ErrorKind::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "Timeout"),
        // Nobody is left to read it; "client closed request" in the logs.
        ErrorKind::Cancelled => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
        ErrorKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
    }
}

/// A full `Status` object, as the API server sends it in HTTP bodies.
pub(crate) fn failure(code: StatusCode, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    })
}

/// An HTTP refusal with a `Status` body.
pub(crate) fn response(code: StatusCode, reason: &str, message: &str) -> Response {
    (code, axum::Json(failure(code, reason, message))).into_response()
}

/// The error-channel message for a process that exited with `code`.
pub(crate) fn exited(code: i32) -> Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("command terminated with non-zero exit code: exit status {code}"),
        "reason": "NonZeroExitCode",
        // Clients (the Python client, client-go) read the first cause.
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

/// The error-channel message for a session that ended without an exit.
pub(crate) fn ended(err: &SessionError) -> Value {
    let (code, reason) = http_status(err.kind());
    json!({
        "metadata": {},
        "status": "Failure",
        "message": crate::error_text::ClientText(err).to_string(),
        "reason": reason,
        "code": code.as_u16(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_have_the_upstream_shape() {
        assert_eq!(
            exited(0).to_string(),
            r#"{"metadata":{},"status":"Success"}"#
        );
        let v = exited(3);
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "3");
        let err = SessionError::Ended(execd_session::EndReason::Shutdown);
        let v = ended(&err);
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["code"], 503);
        assert!(v.get("details").is_none());
    }
}
