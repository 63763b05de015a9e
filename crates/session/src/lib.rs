//! execd's session manager: everything about running a process for a
//! client, shared by every front door (gRPC, CRI, Kubernetes, Docker, the
//! browser terminal), with no knowledge of gRPC or HTTP.
//!
//! Layout, in the order a session meets it (modules in backticks are
//! internal; what doors need is re-exported at the crate root):
//!
//! - [`command`]: the client's request ([`ExecSpec`]) and its validation
//!   (`command::request`, every door), and the runtime command line built
//!   from it (`command::cli`: `docker exec -i [-t] …`).
//! - [`client`]: what every door does with its client alike: waiting for
//!   the start ([`await_start`]) and the rules for its input
//!   ([`ClientEvent`], [`deliver`]).
//! - [`registry`]: live sessions, per-instance counts and their change
//!   events; a session counts for exactly as long as its RAII
//!   [`Registration`] lives, and shutdown waits for the last one
//!   ([`Registry::drained`]).
//! - [`backend`]: the one seam to whatever runs the process: `backend::cli`
//!   (`docker exec` or host-exec children) and `backend::engine` (the
//!   Docker Engine API, no process per session).
//! - `spawn` and `pty`: the CLI backend's child with pipes or under a
//!   pseudo-terminal, with non-blocking I/O on the tokio reactor;
//!   [`orphans`] reaps orphaned processes when execd is PID 1.
//! - `preflight`: asking the engine whether the container exists and runs,
//!   so a missing container is an error rather than "exit 1"; `engine_api`
//!   asks a local Docker engine directly, without spawning a CLI (doors
//!   that pass the engine's own answers on use [`engine_api_get`]);
//!   `attach_target` reads what an attach to PID 1 needs (open stdin,
//!   tty) through the same routes, so doors never talk to the runtime.
//! - `session`: the running session's tasks and the [`Session`] handle
//!   (input side, output side) the server drives; `pump` (output and the
//!   end) and `resize` (getting the size into the container) are its parts.
//! - [`replay`] and [`reattach`]: with reattach on, a session outlives a
//!   vanished client for a grace period, its output kept in a bounded
//!   ring, until the same client comes back.
//! - `reaper`: ending a session's processes inside the container too;
//!   `procfs` runs its `/proc` scans on a small bounded pool, and `pidfd`
//!   pins the processes found so a reused pid is never signalled.
//! - `manager`: [`SessionManager::start`], which ties the above together.
//! - `error`: [`SessionError`], its transport-neutral [`ErrorKind`] and the
//!   finer classification metrics use ([`SessionError::outcome`],
//!   [`RuntimeFailure`]).
//! - [`log_field`]: client-provided strings escaped and bounded for logs.
//! - `status` (feature `grpc-status`): the single mapping of those kinds
//!   onto gRPC codes, kept behind a feature so the manager stays gRPC-free.

mod attach_target;
pub mod backend;
mod client;
pub mod command;
mod containers;
mod engine_api;
mod error;
pub mod log_field;
mod manager;
pub mod orphans;
mod pidfd;
mod preflight;
mod procfs;
mod pty;
mod pump;
mod reaper;
pub mod reattach;
pub mod registry;
pub mod replay;
mod resize;
mod session;
mod spawn;
#[cfg(feature = "grpc-status")]
mod status;
mod term_size;

pub use attach_target::AttachTarget;
pub use backend::BackendKind;
pub use client::{await_start, deliver, ClientEvent, Flow, StartWaitError};
pub use command::{
    validate_instance_id, validate_session_id, Door, ExecMode, ExecSpec, SessionKind, TermSize,
    ValidationError,
};
pub use containers::{ContainerDocument, ContainerInfo, ContainerQueryError};
pub use engine_api::get as engine_api_get;
pub use error::{EndReason, ErrorKind, RuntimeFailure, SessionError};
pub use manager::{new_session_id, ManagerConfig, SessionManager};
pub use preflight::{EngineGate, PreflightError, MAX_ENGINE_CALLS};
pub use procfs::stuck_workers as procfs_stuck_workers;
pub use reattach::{ReattachError, ReattachRequest, ReattachTable};
pub use registry::{
    CloseTarget, InstanceEvent, InstanceEventKind, Limits, ListPage, PageRequest, Registration,
    Registry, RegistryError, SessionEntry, SessionSnapshot, SessionStats,
};
pub use replay::{DetachInfo, ReattachConfig, ReplayFrom};
pub use session::{
    LifecycleConfig, OutputStream, Session, SessionEvent, SessionEvents, SessionInput,
    SessionOutput,
};
// Spawning directly, without a session: the benchmark measures it, and the
// orphan reaper's test needs children it did not start.
pub use spawn::{spawn_in_terminal, spawn_piped, SpawnError, SpawnedChild, TerminalMode};
