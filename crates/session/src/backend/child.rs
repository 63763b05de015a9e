//! A local child process as a session's [`Process`]: the runtime CLI
//! (`docker exec`, podman, nerdctl: the CLI backend) or the command itself
//! (the host backend), under a pseudo-terminal or with pipes.
//!
//! The child leads its own process group, so killing it takes whatever it
//! forked too. Sizes go to execd's own end of the terminal; a CLI forwards
//! them to the engine, and because its first forward can be stale the
//! resizer then asks for the container's terminal to be checked after
//! every change (see `resize`).

use std::os::unix::process::ExitStatusExt;

use nix::sys::signal::Signal;
use tokio::process::Child;

use super::output::SplitOutput;
use super::{BoxFuture, Process, ProcessControl, Resizer, WaitError};
use crate::command::{RuntimeCommand, TermSize};
use crate::orphans::Tracked;
use crate::pty::PtyMaster;
use crate::spawn::{self, HostSetup, SpawnError, SpawnedChild, TerminalMode};

/// How to start one child.
pub(crate) struct ChildStart<'a> {
    pub command: &'a RuntimeCommand,
    /// The terminal's first size and mode; `None` runs with pipes.
    pub terminal: Option<(TermSize, TerminalMode)>,
    /// A host command's user and base environment.
    pub host: Option<&'a HostSetup>,
    /// Whether a size set on execd's end can be overwritten later behind
    /// the session's back (a runtime CLI's stale first forward), so that
    /// the container's terminal has to be checked after each change.
    pub size_needs_checks: bool,
}

/// Starts the child and hands it over as a [`Process`].
pub(crate) fn start(how: ChildStart<'_>) -> Result<Process, SpawnError> {
    let SpawnedChild { child, io, tracked } = match how.terminal {
        Some((size, mode)) => spawn::spawn_in_terminal_with(how.command, size, mode, how.host)?,
        None => spawn::spawn_piped_with(how.command, how.host)?,
    };
    let group = child.id().map(|p| nix::unistd::Pid::from_raw(p as i32));
    let (resizer, eof_char) = match io.terminal {
        Some(terminal) => {
            let resizer: Box<dyn Resizer> = Box::new(PtyResizer {
                master: terminal.master,
                cli_group: group,
                needs_checks: how.size_needs_checks,
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
        control: Box::new(ChildControl {
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
    needs_checks: bool,
}

impl Resizer for PtyResizer {
    fn resize(&self, size: TermSize) -> BoxFuture<'_, std::io::Result<()>> {
        let result = self.master.resize(size).map_err(std::io::Error::other);
        Box::pin(std::future::ready(result))
    }

    fn needs_checks(&self) -> bool {
        self.needs_checks
    }

    fn nudge(&self) {
        if let Some(group) = self.cli_group {
            let _ = nix::sys::signal::killpg(group, Signal::SIGWINCH);
        }
    }
}

/// The child: its exit, and killing its process group.
struct ChildControl {
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

impl ProcessControl for ChildControl {
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
                tracing::warn!(error = %e, "reaping the session's child failed");
            }
        })
    }
}
