//! execd's session manager: everything about running a process for a
//! client, with no knowledge of gRPC.
//!
//! Layout, in the order a session meets it:
//!
//! - [`command`]: the client's request ([`ExecSpec`]), its validation, and the
//!   runtime command line built from it (`docker exec -i [-t] …`).
//! - [`registry`]: live sessions, per-instance counts and their change
//!   events; a session counts for exactly as long as its RAII
//!   [`Registration`] lives.
//! - [`spawn`] and [`pty`]: starting the child with pipes or under a
//!   pseudo-terminal, with non-blocking I/O on the tokio reactor.
//! - [`preflight`]: asking the engine whether the container exists and runs,
//!   so a missing container is an error rather than "exit 1"; [`engine_api`]
//!   asks a local Docker engine directly, without spawning a CLI.
//! - [`session`]: the running session's tasks and the [`Session`] handle
//!   (input side, output side) the server drives.
//! - [`reaper`]: ending a session's processes inside the container too;
//!   [`procfs`] runs its `/proc` scans on one dedicated thread.
//! - [`manager`]: [`SessionManager::start`], which ties the above together.
//! - [`error`]: [`SessionError`] and its transport-neutral [`ErrorKind`].
//! - `status` (feature `grpc-status`): the single mapping of those onto
//!   `tonic::Status`, kept behind a feature so the manager stays gRPC-free.

pub mod command;
pub mod engine_api;
pub mod error;
pub mod manager;
pub mod preflight;
pub mod procfs;
pub mod pty;
pub mod reaper;
pub mod registry;
pub mod session;
pub mod spawn;
#[cfg(feature = "grpc-status")]
pub mod status;

pub use command::{ExecMode, ExecSpec, TermSize, ValidationError};
pub use error::{EndReason, ErrorKind, SessionError};
pub use manager::{new_session_id, ManagerConfig, SessionManager};
pub use registry::{
    CloseTarget, InstanceEvent, InstanceEventKind, Limits, Registration, Registry, SessionSnapshot,
    SessionStats,
};
pub use session::{
    LifecycleConfig, OutputStream, Session, SessionEvent, SessionInput, SessionOutput,
};
