//! The runtime CLI backend: `docker exec` (or podman, nerdctl: the same
//! flags) as a child of execd, under a pseudo-terminal or with pipes; in
//! host-exec mode, the command itself as the child.
//!
//! The child leads its own process group, so killing it takes whatever the
//! CLI forked too. Sizes go to execd's own pseudo-terminal, which the CLI
//! forwards to the engine; because the CLI's first forward can be stale,
//! this backend asks for the container's terminal to be checked after
//! every change (see `resize`).

use std::os::unix::process::ExitStatusExt;

use nix::sys::signal::Signal;
use tokio::process::Child;

use super::output::SplitOutput;
use super::{BoxFuture, Process, ProcessControl, Resizer, SpawnRequest, WaitError};
use crate::command::{ExecMode, TermSize};
use crate::error::SessionError;
use crate::orphans::Tracked;
use crate::pty::PtyMaster;
use crate::spawn::{self, SpawnedChild};

/// Runs each session's process as a child of execd.
pub struct CliBackend;

impl super::Backend for CliBackend {
    fn spawn<'a>(
        &'a self,
        request: SpawnRequest<'a>,
    ) -> BoxFuture<'a, Result<Process, SessionError>> {
        Box::pin(spawn_child(request))
    }
}

async fn spawn_child(request: SpawnRequest<'_>) -> Result<Process, SessionError> {
    let SpawnRequest {
        spec,
        mode,
        marker,
        size,
    } = request;
    let runtime = spec.build_command(mode, marker);
    // Host sessions: user lookups may ask NSS (files, LDAP, network), so
    // they run on a blocking thread, never on the runtime.
    let host = match mode {
        ExecMode::Host => {
            let user = spec.user.clone();
            let resolved = tokio::task::spawn_blocking(move || spawn::HostSetup::resolve(&user))
                .await
                .map_err(|e| SessionError::Wait(std::io::Error::other(e)))??;
            Some(resolved)
        }
        ExecMode::Container { .. } => None,
    };
    let SpawnedChild { child, io, tracked } = if spec.tty {
        let terminal_mode = match mode {
            ExecMode::Container { .. } => spawn::TerminalMode::Raw,
            ExecMode::Host => spawn::TerminalMode::Cooked,
        };
        spawn::spawn_in_terminal_with(&runtime, size, terminal_mode, host.as_ref())?
    } else {
        spawn::spawn_piped_with(&runtime, host.as_ref())?
    };
    let group = child.id().map(|p| nix::unistd::Pid::from_raw(p as i32));
    let (resizer, eof_char) = match io.terminal {
        Some(terminal) => {
            let resizer: Box<dyn Resizer> = Box::new(PtyResizer {
                master: terminal.master,
                cli_group: group,
                in_container: matches!(mode, ExecMode::Container { .. }),
            });
            (Some(resizer), Some(terminal.eof_char))
        }
        None => (None, None),
    };
    Ok(Process {
        stdin: io.stdin,
        output: Box::new(SplitOutput::new(io.stdout, io.stderr)),
        eof_char,
        resizer,
        control: Box::new(CliControl {
            child,
            _tracked: tracked,
        }),
    })
}

/// Sizes execd's end of the child's terminal.
struct PtyResizer {
    master: PtyMaster,
    /// The CLI's process group, told with SIGWINCH to pass a size on again.
    cli_group: Option<nix::unistd::Pid>,
    in_container: bool,
}

impl Resizer for PtyResizer {
    fn resize(&self, size: TermSize) -> BoxFuture<'_, std::io::Result<()>> {
        let result = self.master.resize(size).map_err(std::io::Error::other);
        Box::pin(std::future::ready(result))
    }

    fn needs_checks(&self) -> bool {
        self.in_container
    }

    fn nudge(&self) {
        if let Some(group) = self.cli_group {
            let _ = nix::sys::signal::killpg(group, Signal::SIGWINCH);
        }
    }
}

/// The child: its exit, and killing its process group.
struct CliControl {
    child: Child,
    /// Keeps `child` known as execd's own for the orphan reaper; dropped
    /// with it, after it was waited for.
    _tracked: Tracked,
}

/// The exit code a shell would report: the code, or 128 + the signal.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255)
}

impl ProcessControl for CliControl {
    fn wait(&mut self) -> BoxFuture<'_, Result<i32, WaitError>> {
        Box::pin(async move {
            self.child
                .wait()
                .await
                .map(exit_code)
                .map_err(WaitError::Io)
        })
    }

    fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    fn kill(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if self.has_exited() {
                return;
            }
            if let Some(pid) = self.child.id() {
                // The child leads its own process group (host-exec children
                // too), so the whole group goes.
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    Signal::SIGKILL,
                );
            }
            let _ = self.child.start_kill();
            if let Err(e) = self.child.wait().await {
                tracing::warn!(error = %e, "reaping the runtime CLI failed");
            }
        })
    }
}
