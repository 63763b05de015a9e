//! The seam between sessions and whatever runs their process.
//!
//! A [`Backend`] starts a process for a validated [`ExecSpec`] and hands back
//! a [`Process`]: its input ([`Process::stdin`]; writing is "write stdin",
//! `shutdown` is "close stdin"), its output ([`ProcessOutput`]), its
//! terminal ([`Resizer`], "resize") and its runtime side
//! ([`ProcessControl`]: "wait" and "kill"). The session's tasks (pump, stdin
//! writer, resizer) drive only these, so neither they nor any front door
//! know which backend runs.
//!
//! Three backends:
//!
//! - [`cli`]: a `docker exec` child (or podman, nerdctl: same flags) under a
//!   pseudo-terminal or with pipes, and the host-exec mode's plain child.
//! - [`engine`]: the Docker Engine API over its unix socket; no process per
//!   session in execd's host, one hijacked connection instead.
//! - [`oci`]: the OCI runtime (runc, crun) directly, as containerd's shim
//!   does: the exec'd process becomes execd's own child, its terminal's
//!   master or its pipes are execd's, and the session gets a cgroup of its
//!   own inside the container's.
//!
//! Ending what runs *inside* the container is not a backend's job: every
//! backend marks the process with the session's marker and the reaper
//! finds it by that, whichever backend started it. The OCI backend also
//! kills the session's cgroup when the session is over, which catches
//! what hid from the marker.

pub mod cli;
pub mod engine;
#[cfg(test)]
pub(crate) mod fake;
pub mod oci;
mod output;

use std::future::Future;
use std::io;
use std::pin::Pin;

use bytes::Bytes;
use tokio::io::AsyncWrite;

use crate::command::{ExecMode, ExecSpec, TermSize};
use crate::error::SessionError;
use crate::session::OutputStream;

/// A boxed future, so the traits below stay object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which backend runs sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendKind {
    /// The runtime CLI (`docker exec`, or host-exec's plain child).
    Cli,
    /// The Docker Engine API on this unix socket.
    EngineApi { socket: std::path::PathBuf },
    /// The OCI runtime `runtime` (`runc`, `crun`; a name on `PATH` or a
    /// path) with its container state under `root`: Docker's is
    /// [`oci::DOCKER_ROOT`] (`/run/docker/runtime-runc/moby`), containerd's
    /// Kubernetes namespace [`oci::CONTAINERD_K8S_ROOT`]
    /// (`/run/containerd/runc/k8s.io`). Container names still resolve
    /// through the engine the runtime CLI reaches.
    Oci {
        runtime: String,
        root: std::path::PathBuf,
    },
}

/// What a backend needs to start one session's process.
pub struct SpawnRequest<'a> {
    pub spec: &'a ExecSpec,
    pub mode: &'a ExecMode,
    /// The session's process marker, put in its environment.
    pub marker: &'a str,
    pub size: TermSize,
}

/// Starts processes. One per server, shared by every session.
pub trait Backend: Send + Sync + 'static {
    /// Starts the process. On success it runs (or is on its way into the
    /// container); on error nothing was started.
    fn spawn<'a>(
        &'a self,
        request: SpawnRequest<'a>,
    ) -> BoxFuture<'a, Result<Process, SessionError>>;
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

/// Builds the backend `kind` names. `lifecycle` tells the OCI backend,
/// which owns the session's cgroup, whether an exited process's leftovers
/// are to be kept (`keep_background_processes`).
pub fn build(
    kind: &BackendKind,
    lifecycle: &crate::session::LifecycleConfig,
) -> std::sync::Arc<dyn Backend> {
    match kind {
        BackendKind::Cli => std::sync::Arc::new(cli::CliBackend),
        BackendKind::EngineApi { socket } => {
            std::sync::Arc::new(engine::EngineBackend::new(socket.clone()))
        }
        BackendKind::Oci { runtime, root } => std::sync::Arc::new(oci::OciBackend::new(
            runtime,
            root,
            lifecycle.keep_background_processes,
        )),
    }
}
