//! The one place where session failures become gRPC statuses.

use crate::error::{ErrorKind, SessionError};

impl From<ErrorKind> for tonic::Code {
    fn from(kind: ErrorKind) -> Self {
        match kind {
            ErrorKind::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorKind::AlreadyExists => tonic::Code::AlreadyExists,
            ErrorKind::NotFound => tonic::Code::NotFound,
            ErrorKind::FailedPrecondition => tonic::Code::FailedPrecondition,
            ErrorKind::ResourceExhausted => tonic::Code::ResourceExhausted,
            ErrorKind::PermissionDenied => tonic::Code::PermissionDenied,
            ErrorKind::Unavailable => tonic::Code::Unavailable,
            ErrorKind::Aborted => tonic::Code::Aborted,
            ErrorKind::DeadlineExceeded => tonic::Code::DeadlineExceeded,
            ErrorKind::Cancelled => tonic::Code::Cancelled,
            ErrorKind::Internal => tonic::Code::Internal,
        }
    }
}

impl From<&SessionError> for tonic::Status {
    fn from(err: &SessionError) -> Self {
        tonic::Status::new(err.kind().into(), err.to_string())
    }
}

impl From<SessionError> for tonic::Status {
    fn from(err: SessionError) -> Self {
        tonic::Status::from(&err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preflight::PreflightError;
    use crate::EndReason;

    #[test]
    fn status_carries_code_and_message() {
        let err = SessionError::Preflight(PreflightError::NotFound {
            message: "Error: No such container: x".into(),
        });
        let status = tonic::Status::from(&err);
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert_eq!(status.message(), "Error: No such container: x");
        let status = tonic::Status::from(SessionError::Ended(EndReason::Shutdown));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.message(), "server shutting down");
    }
}
