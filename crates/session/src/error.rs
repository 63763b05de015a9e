//! The session manager's error type.
//!
//! Each module has its own error enum naming its failure sites; this module
//! gathers them into [`SessionError`] and classifies every failure with an
//! [`ErrorKind`] (defined with the end reasons in `reason`), which the
//! server maps onto a gRPC status code in one place.
//! [`SessionError::outcome`] and [`SessionError::runtime_failure`] are the
//! finer classification that metrics and logs use, so nothing outside this
//! crate needs to match on the variants of the modules' own enums.
//!
//! Messages say what happened in the session's own terms; naming the
//! server setting that would change the outcome (a flag) is the server's
//! part.

use crate::backend::{StartError, WaitError};
use crate::command::ValidationError;
use crate::preflight::{EngineBusy, PreflightError};
use crate::reattach::ReattachError;
use crate::registry::RegistryError;
use crate::spawn::SpawnError;

pub use crate::reason::{EndReason, ErrorKind};

/// Everything that can keep a session from starting or end it early, by
/// where it happened.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The request was refused as it is.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// A session limit, or the session id is taken.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The local process (the runtime CLI, the OCI runtime, the host
    /// command) could not be started.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// The engine says no: no such container, not running, unavailable.
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    /// The gate in front of engine calls outside sessions was full: a
    /// limit reached, to retry in a moment.
    #[error(transparent)]
    EngineBusy(#[from] EngineBusy),
    /// The session was ended before its process exited on its own.
    #[error("{0}")]
    Ended(EndReason),
    /// Waiting for the session's process failed, or the engine went away
    /// under it.
    #[error(transparent)]
    Process(#[from] WaitError),
    /// The client's reattach was refused.
    #[error(transparent)]
    Reattach(#[from] ReattachError),
    /// A failure inside execd that no other variant names: a backend's own
    /// failure, a registration lost during start, a session whose final
    /// status never arrived.
    #[error("{0}")]
    Internal(String),
}

/// A backend's start failure, in the session's terms.
impl From<StartError> for SessionError {
    fn from(e: StartError) -> Self {
        match e {
            StartError::Refused(e) => SessionError::Preflight(e),
            StartError::Spawn(e) => SessionError::Spawn(e),
            StartError::Internal(message) => SessionError::Internal(message),
        }
    }
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
            SessionError::EngineBusy(_) => ErrorKind::ResourceExhausted,
            SessionError::Ended(reason) => reason.kind(),
            SessionError::Internal(_) => ErrorKind::Internal,
            SessionError::Process(WaitError::Io(_)) => ErrorKind::Internal,
            SessionError::Reattach(ReattachError::Attached(_)) => ErrorKind::AlreadyExists,
            SessionError::Reattach(ReattachError::Mismatch { .. }) => ErrorKind::InvalidArgument,
            SessionError::Reattach(ReattachError::NotOwner(_)) => ErrorKind::PermissionDenied,
            SessionError::Process(WaitError::EngineGone(_)) => ErrorKind::Unavailable,
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
        let busy = SessionError::from(EngineBusy { limit: 64 });
        assert_eq!(busy.kind(), ErrorKind::ResourceExhausted);
        assert_eq!(busy.outcome(), "resource_exhausted");
        assert_eq!(busy.runtime_failure(), None);
        assert!(busy.to_string().contains("busy"), "{busy}");
        let lost = SessionError::from(StartError::Internal("lost".into()));
        assert_eq!(
            (lost.kind(), lost.to_string().as_str()),
            (ErrorKind::Internal, "lost")
        );
    }
}
