//! The one place where the kinds of session failures become gRPC codes.
//! The status message is the server's (it may add a flag hint to the
//! error's text), so only the code is mapped here.

#[cfg(test)]
use crate::error::SessionError;
use crate::reason::ErrorKind;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preflight::PreflightError;
    use crate::EndReason;

    #[test]
    fn kinds_map_onto_codes() {
        let err = SessionError::Preflight(PreflightError::NotFound {
            message: "Error: No such container: x".into(),
        });
        assert_eq!(tonic::Code::from(err.kind()), tonic::Code::NotFound);
        let err = SessionError::Ended(EndReason::Shutdown);
        assert_eq!(tonic::Code::from(err.kind()), tonic::Code::Unavailable);
        // The engine gate's refusal is a limit reached, like a session cap.
        let err = SessionError::from(crate::preflight::EngineBusy { limit: 64 });
        assert_eq!(
            tonic::Code::from(err.kind()),
            tonic::Code::ResourceExhausted
        );
    }
}
