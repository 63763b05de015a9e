//! The server's words for session failures.
//!
//! The session manager's messages say what happened. Where a server setting
//! decided the outcome (a session limit, the exec mode), the text a client
//! reads also names the flag that changes it; that is the server's part, and
//! it happens here only. Every door shows a session error through
//! [`ClientText`], and gRPC doors turn one into a status through
//! [`grpc_status`], so a refusal reads the same whichever door it came by.

use std::fmt;

use execd_session::{RegistryError, SessionError, ValidationError};

/// A session error as clients see it: the manager's message, then the
/// server flag behind it, if any.
pub(crate) struct ClientText<'a>(pub &'a SessionError);

impl fmt::Display for ClientText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        match flag_hint(self.0) {
            Some(hint) => write!(f, " ({hint})"),
            None => Ok(()),
        }
    }
}

/// The server flag that would have changed the outcome.
fn flag_hint(err: &SessionError) -> Option<String> {
    match err {
        SessionError::Registry(RegistryError::TooManySessions { limit }) => {
            Some(format!("--max-sessions={limit}"))
        }
        SessionError::Registry(RegistryError::TooManyForInstance { limit, .. }) => {
            Some(format!("--max-sessions-per-instance={limit}"))
        }
        SessionError::Registry(RegistryError::TooManyForOwner { limit }) => {
            Some(format!("--max-sessions-per-token={limit}"))
        }
        SessionError::Invalid(ValidationError::MissingContainer) => {
            Some("set one, or run execd with --host-exec".into())
        }
        _ => None,
    }
}

/// The gRPC status of a session error: the code its kind maps to, the
/// client text as message.
pub(crate) fn grpc_status(err: &SessionError) -> tonic::Status {
    tonic::Status::new(err.kind().into(), ClientText(err).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use execd_session::EndReason;

    #[test]
    fn limits_name_their_flag() {
        let err = SessionError::Registry(RegistryError::TooManySessions { limit: 3 });
        let status = grpc_status(&err);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "too many sessions: the limit of 3 sessions is reached (--max-sessions=3)"
        );
        let err = SessionError::Invalid(ValidationError::MissingContainer);
        assert_eq!(
            ClientText(&err).to_string(),
            "container_id is empty (set one, or run execd with --host-exec)"
        );
        let err = SessionError::Ended(EndReason::Shutdown);
        assert_eq!(grpc_status(&err).message(), "server shutting down");
        assert_eq!(grpc_status(&err).code(), tonic::Code::Unavailable);
    }
}
