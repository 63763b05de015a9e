//! The seam between sessions and whatever runs their process: the one
//! place that knows which runtime is underneath.
//!
//! A [`Backend`] is built once per server from the one [`BackendConfig`]
//! and does, for the session manager, everything that touches the runtime:
//!
//! - [`Backend::spawn`] starts a process for a validated [`ExecSpec`] and
//!   hands back a [`Process`], containerd's shim `Process` in small: its
//!   input ([`Process::stdin`]; writing is "write stdin", `shutdown` is
//!   "close stdin"), its output ([`ProcessOutput`]), its terminal
//!   ([`Resizer`], "resize") and its runtime side ([`ProcessControl`]:
//!   "wait" and "kill"). The session's tasks (pump, stdin writer, resizer)
//!   drive only these, so neither they nor any door know which backend
//!   runs.
//! - [`Backend::check`] says whether a container exists and runs (a
//!   start's preflight), [`Backend::inspect`] gives the engine's document
//!   for one, [`Backend::list`] the running ones, [`Backend::ping`] whether
//!   the engine answers, and [`Backend::run_inside`] runs a command in a
//!   container to its end (the reaper's fallback where `/proc` does not
//!   show the container). The session manager puts its gate and its short
//!   memory in front of these; doors and health ask the manager.
//!
//! Four backends, one per [`BackendConfig`] variant:
//!
//! - [`host`]: the command itself, a child of execd on this host; no
//!   containers.
//! - [`cli`]: a `docker exec` child (or podman, nerdctl: same flags) under
//!   a pseudo-terminal or with pipes; questions go to the engine's socket
//!   when the CLI is a plain local docker, else to the CLI.
//! - [`engine`]: the Docker Engine API over its unix socket; no process
//!   per session in execd's host, one hijacked connection instead.
//! - [`oci`]: the OCI runtime (runc, crun) directly, as containerd's shim
//!   does: the exec'd process becomes execd's own child, its terminal's
//!   master or its pipes are execd's, and the session gets a cgroup of its
//!   own inside the container's. Names, questions and attaches go to the
//!   engine through a [`cli::CliBackend`] inside it.
//!
//! Ending what runs *inside* the container is not a backend's job: every
//! backend marks the process with the session's marker and the reaper
//! finds it by that, whichever backend started it. The OCI backend also
//! kills the session's cgroup when the session is over, which catches
//! what hid from the marker.
//!
//! Below the session layer: nothing here imports the session, its
//! registry or its errors. What a backend can fail with is its own
//! ([`StartError`], [`WaitError`], [`inspect`]'s errors); the session
//! manager wraps them.

mod child;
pub mod cli;
pub(crate) mod config;
pub mod engine;
#[cfg(test)]
pub(crate) mod fake;
pub mod host;
pub mod inspect;
pub mod oci;
pub(crate) mod output;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::AsyncWrite;

use crate::command::{ExecSpec, TermSize};
use crate::spawn::SpawnError;
pub use config::BackendConfig;
pub use inspect::{
    ContainerDocument, ContainerInfo, ContainerState, PingError, PreflightError, QueryError,
    RunInsideError,
};

/// A boxed future, so the traits below stay object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Bytes read from a process per chunk (one output message at most).
pub const READ_CHUNK: usize = 256 * 1024;

/// What a backend needs to start one session's process.
pub struct SpawnRequest<'a> {
    pub spec: &'a ExecSpec,
    /// The session's process marker, put in its environment.
    pub marker: &'a str,
    pub size: TermSize,
}

/// Why a backend could not start a process. On error nothing runs that
/// the backend knows of; an engine that stopped answering half-way may
/// still have started an exec, which the caller's reaper ends.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The engine or runtime refused: no such container, not running,
    /// unavailable.
    #[error(transparent)]
    Refused(#[from] PreflightError),
    /// The local process (the runtime CLI, the OCI runtime, a host
    /// command) could not be started.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// A failure inside execd.
    #[error("{0}")]
    Internal(String),
}

/// Runs processes and answers for the runtime. One per server, shared by
/// every session and door.
pub trait Backend: Send + Sync + 'static {
    /// Starts the process. On success it runs (or is on its way into the
    /// container).
    fn spawn<'a>(&'a self, request: SpawnRequest<'a>)
        -> BoxFuture<'a, Result<Process, StartError>>;

    /// Whether `container_id` (validated) exists and runs, with the engine's
    /// own words when not.
    fn check<'a>(
        &'a self,
        container_id: &'a str,
    ) -> BoxFuture<'a, Result<ContainerState, PreflightError>>;

    /// The engine's inspect document of `reference` (a validated name or
    /// id), or its "no such container".
    fn inspect<'a>(
        &'a self,
        reference: &'a str,
    ) -> BoxFuture<'a, Result<ContainerDocument, QueryError>>;

    /// The engine's containers, each described (at most
    /// [`inspect::MAX_LISTED`]).
    fn list(&self) -> BoxFuture<'_, Result<Vec<ContainerInfo>, QueryError>>;

    /// How many engine calls one [`Backend::list`] makes at once.
    fn list_calls(&self) -> u32 {
        1
    }

    /// Whether the engine answers.
    fn ping(&self) -> BoxFuture<'_, Result<(), PingError>>;

    /// Runs `argv` inside `container_id` to its end; the caller bounds it.
    fn run_inside<'a>(
        &'a self,
        container_id: &'a str,
        argv: &'a [String],
    ) -> BoxFuture<'a, Result<(), RunInsideError>>;
}

/// A started process, as the session's tasks see it.
pub struct Process {
    /// The process's input; `shutdown` delivers EOF where the transport
    /// has a half-close (pipes, the engine's hijacked connection).
    pub stdin: Box<dyn AsyncWrite + Send + Unpin>,
    pub output: Box<dyn ProcessOutput>,
    /// `Some` with a terminal: the byte that types end-of-file, because a
    /// terminal has no half-close.
    pub eof_char: Option<u8>,
    /// `Some` with a terminal.
    pub resizer: Option<Box<dyn Resizer>>,
    pub control: Box<dyn ProcessControl>,
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// One read of a process's output.
pub enum OutputChunk {
    Data(OutputStream, Bytes),
    /// Every output stream reached its end.
    End,
}

/// A process's output, stdout and stderr told apart where the backend can.
pub trait ProcessOutput: Send {
    /// The next chunk. Cancel-safe: a dropped call loses no data, since the
    /// pump races it against the exit and the session's end.
    fn next_chunk(&mut self) -> BoxFuture<'_, io::Result<OutputChunk>>;
}

/// Sizes the process's terminal.
pub trait Resizer: Send + Sync {
    fn resize(&self, size: TermSize) -> BoxFuture<'_, io::Result<()>>;
    /// Whether a size set this way can be overwritten later behind the
    /// session's back (the CLI's stale first resize), so that the container's
    /// terminal has to be checked after each change (see `resize`).
    fn needs_checks(&self) -> bool;
    /// Tells the runtime side to pass the current size on again, after
    /// execd corrected the container's terminal directly.
    fn nudge(&self) {}
}

/// The runtime side of a process: its exit and how to stop it.
pub trait ProcessControl: Send {
    /// Resolves with the exit code once the process has exited.
    /// Cancel-safe.
    fn wait(&mut self) -> BoxFuture<'_, Result<i32, WaitError>>;
    /// Whether the process is known to have exited, without waiting.
    fn has_exited(&mut self) -> bool;
    /// Stops the runtime side (the CLI and its process group, or the
    /// engine connection). What runs inside the container is the reaper's.
    fn kill(&mut self) -> BoxFuture<'_, ()>;
    /// The session is over (its process exited, or `kill` ran): lets go of
    /// what the process held, once, before the session's last event. The
    /// OCI backend ends the session's cgroup here (everything in it dies,
    /// unless an exited process's leftovers are kept on purpose) and
    /// removes it; the other backends hold nothing beyond the process.
    fn finish(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// Why waiting for the exit failed.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// Waiting on a local child failed.
    #[error("waiting for the session's process failed: {0}")]
    Io(#[source] io::Error),
    /// The engine went away while the process ran (restart, socket gone).
    #[error("container engine unavailable: {0}")]
    EngineGone(String),
}

/// Builds the backend `config` names. The OCI backend, which owns the
/// session's cgroup, is told whether an exited process's leftovers are
/// kept (`--keep-background-processes`).
pub fn build(config: &BackendConfig, keep_background_processes: bool) -> Arc<dyn Backend> {
    match config {
        BackendConfig::Host => Arc::new(host::HostBackend::new()),
        BackendConfig::Cli { program } => Arc::new(cli::CliBackend::new(program)),
        BackendConfig::EngineApi { socket } => Arc::new(engine::EngineBackend::new(socket.clone())),
        BackendConfig::Oci { runtime, root, cli } => Arc::new(oci::OciBackend::new(
            runtime,
            root,
            cli::CliBackend::new(cli),
            keep_background_processes,
        )),
    }
}
