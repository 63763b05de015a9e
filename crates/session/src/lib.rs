//! execd's session manager: everything about running a process for a
//! client, shared by every front door (gRPC, CRI, Kubernetes, Docker, the
//! browser terminal), with no knowledge of gRPC or HTTP.
//!
//! Layout, in the order a session meets it:
//!
//! - [`command`]: the client's request ([`ExecSpec`]), its validation, and the
//!   runtime command line built from it (`docker exec -i [-t] …`).
//! - [`registry`]: live sessions, per-instance counts and their change
//!   events; a session counts for exactly as long as its RAII
//!   [`Registration`] lives.
//! - [`spawn`] and [`pty`]: starting the child with pipes or under a
//!   pseudo-terminal, with non-blocking I/O on the tokio reactor;
//!   [`orphans`] reaps orphaned processes when execd is PID 1.
//! - [`preflight`]: asking the engine whether the container exists and runs,
//!   so a missing container is an error rather than "exit 1"; [`engine_api`]
//!   asks a local Docker engine directly, without spawning a CLI;
//!   [`attach_target`] reads what an attach to PID 1 needs (open stdin,
//!   tty) through the same routes, so doors never talk to the runtime.
//! - [`session`]: the running session's tasks and the [`Session`] handle
//!   (input side, output side) the server drives; `pump` (output and the
//!   end) and `resize` (getting the size into the container) are its parts.
//! - [`reaper`]: ending a session's processes inside the container too;
//!   [`procfs`] runs its `/proc` scans on a small bounded pool, and
//!   [`pidfd`] pins the processes found so a reused pid is never signalled.
//! - [`manager`]: [`SessionManager::start`], which ties the above together.
//! - [`error`]: [`SessionError`] and its transport-neutral [`ErrorKind`].
//! - [`log_field`]: client-provided strings escaped and bounded for logs.
//! - `status` (feature `grpc-status`): the single mapping of those onto
//!   `tonic::Status`, kept behind a feature so the manager stays gRPC-free.

pub mod attach_target;
pub mod client;
pub mod command;
pub mod engine_api;
pub mod error;
pub mod log_field;
pub mod manager;
pub mod orphans;
pub mod pidfd;
pub mod preflight;
pub mod procfs;
pub mod pty;
mod pump;
pub mod reaper;
pub mod registry;
mod resize;
pub mod session;
pub mod spawn;
#[cfg(feature = "grpc-status")]
pub mod status;

pub use attach_target::AttachTarget;
pub use client::{await_start, deliver, ClientEvent, Flow, StartWaitError};
pub use command::{Door, ExecMode, ExecSpec, SessionKind, TermSize, ValidationError};
pub use error::{EndReason, ErrorKind, RuntimeFailure, SessionError};
pub use manager::{new_session_id, ManagerConfig, SessionManager};
pub use registry::{
    CloseTarget, InstanceEvent, InstanceEventKind, Limits, ListPage, PageRequest, Registration,
    Registry, RegistryError, SessionSnapshot, SessionStats,
};
pub use session::{
    LifecycleConfig, OutputStream, Session, SessionEvent, SessionInput, SessionOutput,
};
