//! The session manager's error type and the reasons a session can be ended.
//!
//! Each module has its own error enum naming its failure sites; this module
//! gathers them into [`SessionError`] and classifies every failure with an
//! [`ErrorKind`], which the server maps onto a gRPC status code in one place.

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
    /// A second start_request arrived on the same stream.
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
                f.write_str("a second start_request was sent on this stream; the session was ended")
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
