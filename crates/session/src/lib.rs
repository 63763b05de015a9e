//! execd's session manager: everything about running a process for a
//! client, shared by every front door (gRPC, CRI, Kubernetes, Docker, the
//! browser terminal), with no knowledge of gRPC or HTTP.
//!
//! Layout, from the bottom up (modules in backticks are internal; what
//! doors need is re-exported at the crate root):
//!
//! - `reason`: why a session ends ([`EndReason`]) and the
//!   transport-neutral kinds of failure ([`ErrorKind`]): the leaf every
//!   layer names.
//! - [`command`]: the client's request ([`ExecSpec`]) and its validation
//!   (`command::request`, every door), and the command line a local child
//!   runs (`command::cli`: `docker exec -i [-t] …`, or the command itself).
//! - [`backend`]: the one seam to whatever runs the process, and the only
//!   code that talks to a runtime: [`Backend`] spawns a session's process
//!   and answers about containers (check, inspect, list, ping, a command
//!   run inside). One per [`BackendConfig`] variant: `backend::host`,
//!   `backend::cli` (`docker exec` children), `backend::engine` (the
//!   Docker Engine API, no process per session), `backend::oci` (runc or
//!   crun directly). `spawn` and `pty` are the local children's pipes and
//!   pseudo-terminals, with non-blocking I/O on the tokio reactor;
//!   [`orphans`] reaps orphaned processes when execd is PID 1.
//! - [`registry`]: live sessions, per-instance counts and their change
//!   events; a session counts for exactly as long as its RAII
//!   [`Registration`] lives, and shutdown waits for the last one
//!   ([`Registry::drained`]).
//! - `reaper`: ending a session's processes inside the container too;
//!   `procfs` runs its `/proc` scans on a small bounded pool, and `pidfd`
//!   pins the processes found so a reused pid is never signalled.
//! - `session`: the running session's tasks and the [`Session`] handle
//!   (input side, output side) the server drives; `session::pump` (output
//!   and the end) and `session::resize` (getting the size into the
//!   container) are its parts; `deadline` is the optional timer their
//!   loops share.
//! - [`reattach`]: with reattach on, a session outlives a vanished client
//!   for a grace period, its output kept in a bounded ring
//!   ([`reattach::replay`]), until the same client comes back.
//! - `client`: what every door does with its client alike: waiting for
//!   the start ([`await_start`]) and the rules for its input
//!   ([`ClientEvent`], [`deliver`]).
//! - `manager`: [`SessionManager::start`], which ties the above together,
//!   and the doors' one way to the runtime outside sessions: `preflight`
//!   (the [`EngineGate`] every out-of-session engine call passes, with its
//!   short memory of running containers), `containers` (inspect, list) and
//!   `attach_target` (what an attach to PID 1 needs), and
//!   [`SessionManager::ping`] for health. No door and no health check
//!   talks to the runtime itself.
//! - `error`: [`SessionError`] and the finer classification metrics use
//!   ([`SessionError::outcome`], [`RuntimeFailure`]).
//! - [`log_field`]: client-provided strings escaped and bounded for logs.
//! - `status` (feature `grpc-status`): the single mapping of those kinds
//!   onto gRPC codes, kept behind a feature so the manager stays gRPC-free.

mod attach_target;
pub mod backend;
mod client;
pub mod command;
mod containers;
mod deadline;
mod error;
pub mod log_field;
mod manager;
pub mod orphans;
mod pidfd;
mod preflight;
mod procfs;
mod pty;
mod reaper;
mod reason;
pub mod reattach;
pub mod registry;
mod session;
mod spawn;
#[cfg(feature = "grpc-status")]
mod status;
mod term_size;

pub use attach_target::AttachTarget;
pub use backend::{
    Backend, BackendConfig, ContainerDocument, ContainerInfo, PingError, StartError,
};
pub use client::{await_start, deliver, ClientEvent, Flow, StartWaitError};
pub use command::{
    validate_instance_id, validate_session_id, Door, ExecSpec, SessionKind, TermSize,
    ValidationError,
};
pub use containers::ContainerQueryError;
pub use error::{RuntimeFailure, SessionError};
pub use manager::{new_session_id, ManagerConfig, SessionManager};
pub use preflight::{EngineBusy, EngineGate, PreflightError, MAX_ENGINE_CALLS};
pub use procfs::stuck_workers as procfs_stuck_workers;
pub use reason::{EndReason, ErrorKind};
pub use reattach::replay::{DetachInfo, ReattachConfig, ReplayFrom};
pub use reattach::{ReattachError, ReattachRequest, ReattachTable};
pub use registry::{
    CloseTarget, InstanceEvent, InstanceEventKind, Limits, ListPage, PageRequest, Registration,
    Registry, RegistryError, SessionEntry, SessionSnapshot, SessionStats,
};
pub use session::{
    LifecycleConfig, OutputStream, Session, SessionEvent, SessionEvents, SessionInput,
    SessionOutput,
};
// Spawning directly, without a session: the benchmark measures it, and the
// orphan reaper's test needs children it did not start.
pub use spawn::{spawn_in_terminal, spawn_piped, SpawnError, SpawnedChild, TerminalMode};
