//! Why a session ends, and the transport-neutral kinds of failure: the
//! leaf every layer may name (the registry, the replay relay and the
//! client rules record end reasons; the doors map kinds onto their wire
//! codes) without reaching up into the session manager's errors.

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
