//! The session manager's error type and the reasons a session can be ended.
//!
//! Each module has its own error enum naming its failure sites; this module
//! gathers them into [`SessionError`] and classifies every failure with an
//! [`ErrorKind`], which the server maps onto a gRPC status code in one place.
//! [`SessionError::outcome`] and [`SessionError::runtime_failure`] are the
//! finer classification that metrics and logs use, so nothing outside this
//! crate needs to match on the variants of the modules' own enums.
//!
//! Messages say what happened in the session's own terms; naming the
//! server setting that would change the outcome (a flag) is the server's
//! part.

use crate::command::ValidationError;
use crate::preflight::PreflightError;
use crate::registry::RegistryError;
use crate::spawn::SpawnError;

/// Transport-neutral classification of a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The client sent something execd refuses.
    InvalidArgument,
    /// The client's session id is taken by a live session.
    AlreadyExists,
    /// The container does not exist.
    NotFound,
    /// The container or runtime is not in a state to run the exec.
    FailedPrecondition,
    /// A limit was reached.
    ResourceExhausted,
    /// The client may not touch this session (another client started it).
    PermissionDenied,
    /// The engine cannot be reached, or the server is going away.
    Unavailable,
    /// An operator closed the session.
    Aborted,
    /// The session was idle for too long.
    DeadlineExceeded,
    /// The client went away; nobody is left to tell.
    Cancelled,
    /// A failure inside execd or the host.
    Internal,
}

/// Why a session ended before its process exited on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// The RPC was cancelled or the connection dropped.
    ClientGone,
    /// A second start arrived for a session that already runs.
    SecondStart,
    /// The client broke the protocol (the message says how).
    Protocol(String),
    /// A client message exceeded a size limit.
    TooLarge(String),
    /// An operator closed it through the admin API.
    Closed(String),
    /// No input and no output for the idle timeout.
    IdleTimeout,
    /// The server is shutting down.
    Shutdown,
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndReason::ClientGone => f.write_str("client went away"),
            EndReason::SecondStart => {
                f.write_str("a second start was sent for this session; the session was ended")
            }
            EndReason::Protocol(msg) | EndReason::TooLarge(msg) => f.write_str(msg),
            EndReason::Closed(reason) => write!(f, "closed: {reason}"),
            EndReason::IdleTimeout => f.write_str("idle timeout"),
            EndReason::Shutdown => f.write_str("server shutting down"),
        }
    }
}

impl EndReason {
    pub fn kind(&self) -> ErrorKind {
        match self {
            EndReason::ClientGone => ErrorKind::Cancelled,
            EndReason::SecondStart | EndReason::Protocol(_) => ErrorKind::InvalidArgument,
            EndReason::TooLarge(_) => ErrorKind::ResourceExhausted,
            EndReason::Closed(_) => ErrorKind::Aborted,
            EndReason::IdleTimeout => ErrorKind::DeadlineExceeded,
            EndReason::Shutdown => ErrorKind::Unavailable,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error("{0}")]
    Ended(EndReason),
    #[error("waiting for the session's process failed: {0}")]
    Wait(#[source] std::io::Error),
    #[error(transparent)]
    Process(#[from] crate::backend::WaitError),
    #[error(transparent)]
    Reattach(#[from] crate::reattach::ReattachError),
}

impl SessionError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            SessionError::Invalid(_) => ErrorKind::InvalidArgument,
            SessionError::Registry(RegistryError::SessionIdInUse(_)) => ErrorKind::AlreadyExists,
            SessionError::Registry(_) => ErrorKind::ResourceExhausted,
            SessionError::Spawn(SpawnError::ProgramNotFound { .. })
            | SessionError::Spawn(SpawnError::NotExecutable { .. }) => {
                ErrorKind::FailedPrecondition
            }
            SessionError::Spawn(SpawnError::UnknownUser(_))
            | SessionError::Spawn(SpawnError::UnknownGroup(_)) => ErrorKind::InvalidArgument,
            SessionError::Spawn(_) => ErrorKind::Internal,
            SessionError::Preflight(PreflightError::NotFound { .. }) => ErrorKind::NotFound,
            SessionError::Preflight(PreflightError::NotRunning { .. })
            | SessionError::Preflight(PreflightError::CliNotFound { .. })
            | SessionError::Preflight(PreflightError::Failed { .. }) => {
                ErrorKind::FailedPrecondition
            }
            SessionError::Preflight(PreflightError::EngineUnavailable { .. }) => {
                ErrorKind::Unavailable
            }
            SessionError::Ended(reason) => reason.kind(),
            SessionError::Wait(_) => ErrorKind::Internal,
            SessionError::Process(crate::backend::WaitError::Io(_)) => ErrorKind::Internal,
            SessionError::Reattach(crate::reattach::ReattachError::Attached(_)) => {
                ErrorKind::AlreadyExists
            }
            SessionError::Reattach(crate::reattach::ReattachError::Mismatch { .. }) => {
                ErrorKind::InvalidArgument
            }
            SessionError::Reattach(crate::reattach::ReattachError::NotOwner(_)) => {
                ErrorKind::PermissionDenied
            }
            SessionError::Process(crate::backend::WaitError::EngineGone(_)) => {
                ErrorKind::Unavailable
            }
        }
    }
}

/// What failed in the runtime or the engine, when that is why a session
/// could not start or ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeFailure {
    ContainerNotFound,
    ContainerNotRunning,
    EngineUnavailable,
    /// The runtime CLI (or the host command) is missing or not executable.
    CliMissing,
    InspectFailed,
    SpawnFailed,
}

impl RuntimeFailure {
    /// A stable label (for metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeFailure::ContainerNotFound => "container_not_found",
            RuntimeFailure::ContainerNotRunning => "container_not_running",
            RuntimeFailure::EngineUnavailable => "engine_unavailable",
            RuntimeFailure::CliMissing => "cli_missing",
            RuntimeFailure::InspectFailed => "inspect_failed",
            RuntimeFailure::SpawnFailed => "spawn_failed",
        }
    }
}

impl ErrorKind {
    /// A stable label (for metrics and logs).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::NotFound => "not_found",
            ErrorKind::FailedPrecondition => "failed_precondition",
            ErrorKind::ResourceExhausted => "resource_exhausted",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Aborted => "aborted",
            ErrorKind::DeadlineExceeded => "deadline_exceeded",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Internal => "internal",
        }
    }
}

impl SessionError {
    /// How a session that ended with this error ended, as a stable label:
    /// the end reasons operators tell apart (`cancelled`, `closed`, `idle`,
    /// `shutdown`), else the error's kind.
    pub fn outcome(&self) -> &'static str {
        match self.kind() {
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Aborted => "closed",
            ErrorKind::DeadlineExceeded => "idle",
            _ if matches!(self, SessionError::Ended(EndReason::Shutdown)) => "shutdown",
            kind => kind.as_str(),
        }
    }

    /// The runtime or engine failure behind this error, if it was one.
    pub fn runtime_failure(&self) -> Option<RuntimeFailure> {
        Some(match self {
            SessionError::Preflight(PreflightError::NotFound { .. }) => {
                RuntimeFailure::ContainerNotFound
            }
            SessionError::Preflight(PreflightError::NotRunning { .. }) => {
                RuntimeFailure::ContainerNotRunning
            }
            SessionError::Preflight(PreflightError::EngineUnavailable { .. }) => {
                RuntimeFailure::EngineUnavailable
            }
            SessionError::Preflight(PreflightError::CliNotFound { .. })
            | SessionError::Spawn(SpawnError::ProgramNotFound { .. })
            | SessionError::Spawn(SpawnError::NotExecutable { .. }) => RuntimeFailure::CliMissing,
            SessionError::Preflight(PreflightError::Failed { .. }) => RuntimeFailure::InspectFailed,
            SessionError::Spawn(_) => RuntimeFailure::SpawnFailed,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_name_end_reasons_then_kinds() {
        let ended = |r| SessionError::Ended(r).outcome();
        assert_eq!(ended(EndReason::ClientGone), "cancelled");
        assert_eq!(ended(EndReason::Closed("x".into())), "closed");
        assert_eq!(ended(EndReason::IdleTimeout), "idle");
        assert_eq!(ended(EndReason::Shutdown), "shutdown");
        assert_eq!(ended(EndReason::SecondStart), "invalid_argument");
        assert_eq!(ended(EndReason::TooLarge("x".into())), "resource_exhausted");
        let refused = SessionError::Registry(RegistryError::TooManySessions { limit: 1 });
        assert_eq!(refused.outcome(), "resource_exhausted");
        assert_eq!(refused.runtime_failure(), None);
        let missing = SessionError::Preflight(PreflightError::NotFound {
            message: "no such container".into(),
        });
        assert_eq!(missing.outcome(), "not_found");
        assert_eq!(
            missing.runtime_failure(),
            Some(RuntimeFailure::ContainerNotFound)
        );
    }
}
