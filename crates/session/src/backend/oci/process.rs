//! What a start hands the session: the exec'd process's control (its
//! exit through the pidfd, its cgroup killed when the session is over),
//! the terminal's resizer, and the stand-in for a process that never
//! started.

use std::time::Duration;

use bytes::Bytes;
use nix::sys::signal::Signal;

use super::cgroup::SessionCgroup;
use super::child::Child;
use super::REAP_WITHIN;
use crate::backend::OutputStream;
use crate::backend::WaitError;
use crate::backend::{BoxFuture, OutputChunk, Process, ProcessControl, ProcessOutput, Resizer};
use crate::command::TermSize;
use crate::pty::{PtyError, PtyMaster};

/// A session whose process never started: the message on its output, then
/// `code`.
pub(super) fn finished(tty: bool, message: String, code: i32) -> Process {
    let (stream, line) = if tty {
        (OutputStream::Stdout, format!("{message}\r\n"))
    } else {
        (OutputStream::Stderr, format!("{message}\n"))
    };
    Process {
        stdin: Box::new(tokio::io::sink()),
        output: Box::new(Message(Some((stream, Bytes::from(line))))),
        eof_char: tty.then_some(0x04),
        resizer: tty.then(|| Box::new(NoTerminal) as Box<dyn Resizer>),
        control: Box::new(Exited(code)),
    }
}

struct Message(Option<(OutputStream, Bytes)>);

impl ProcessOutput for Message {
    fn next_chunk(&mut self) -> BoxFuture<'_, std::io::Result<OutputChunk>> {
        let chunk = match self.0.take() {
            Some((stream, data)) => OutputChunk::Data(stream, data),
            None => OutputChunk::End,
        };
        Box::pin(std::future::ready(Ok(chunk)))
    }
}

struct NoTerminal;

impl Resizer for NoTerminal {
    fn resize(&self, _size: TermSize) -> BoxFuture<'_, std::io::Result<()>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn needs_checks(&self) -> bool {
        false
    }
}

struct Exited(i32);

impl ProcessControl for Exited {
    fn wait(&mut self) -> BoxFuture<'_, Result<i32, WaitError>> {
        Box::pin(std::future::ready(Ok(self.0)))
    }

    fn has_exited(&mut self) -> bool {
        true
    }

    fn kill(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// Sizes the terminal on its master, which execd holds: applied at once,
/// nothing to check later.
pub(super) struct MasterResizer(pub(super) PtyMaster);

impl Resizer for MasterResizer {
    fn resize(&self, size: TermSize) -> BoxFuture<'_, std::io::Result<()>> {
        let resized = self.0.resize(size).map_err(|e| match e {
            PtyError::Resize(e) => e,
            other => std::io::Error::other(other),
        });
        Box::pin(std::future::ready(resized))
    }

    fn needs_checks(&self) -> bool {
        false
    }
}

/// The exec'd process (execd's child) and the session's cgroup.
pub(super) struct OciControl {
    /// `None` only while dropping.
    pub(super) child: Option<Child>,
    pub(super) cgroup: Option<SessionCgroup>,
    pub(super) keep_background: bool,
    /// The session was ended (not a plain exit): nothing of it may stay.
    pub(super) killed: bool,
}

impl ProcessControl for OciControl {
    fn wait(&mut self) -> BoxFuture<'_, Result<i32, WaitError>> {
        Box::pin(async move {
            match self.child.as_mut() {
                Some(child) => child.wait().await.map_err(WaitError::Io),
                None => Err(WaitError::Io(std::io::Error::other("no process"))),
            }
        })
    }

    fn has_exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| matches!(c.try_reap(), Ok(Some(_)) | Err(_)))
    }

    /// Kills everything of the session at once: its cgroup (after the
    /// reaper's polite round), or without one its process; then reaps the
    /// process.
    fn kill(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.killed = true;
            if let Some(cgroup) = self.cgroup.take() {
                let _ = tokio::task::spawn_blocking(move || cgroup.end()).await;
            } else if let Some(child) = &self.child {
                child.signal(Signal::SIGKILL);
            }
            if let Some(child) = self.child.as_mut() {
                if tokio::time::timeout(REAP_WITHIN, child.wait())
                    .await
                    .is_err()
                {
                    tracing::warn!(pid = child.pid(), "the session's process did not die");
                }
            }
        })
    }

    /// Ends the session's cgroup on a blocking thread (the writes and the
    /// wait for the killed members stay off the runtime), or, when an
    /// exited process's leftovers are kept, removes it only if empty.
    fn finish(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let kill = self.killed || !self.keep_background;
            match self.cgroup.take() {
                Some(cgroup) if kill => {
                    let _ = tokio::task::spawn_blocking(move || cgroup.end()).await;
                }
                // Dropped: removed if nothing lives in it any more.
                Some(cgroup) => drop(cgroup),
                None => {}
            }
            if let Some(child) = self.child.as_mut() {
                if matches!(child.try_reap(), Ok(Some(_)) | Err(_)) {
                    self.child = None;
                }
            }
        })
    }
}

/// How long dropping a control may wait for the killed leftovers to go
/// before handing the rest to a blocking thread.
pub(super) const DROP_WAIT: Duration = Duration::from_millis(50);

impl Drop for OciControl {
    /// The fallback for a session that never reached its `finish` (its
    /// task dropped at shutdown): what its process left running goes with
    /// the cgroup (unless kept on purpose), and the process is reaped.
    ///
    /// The cgroup is killed and, in the common case, removed right here:
    /// a task spawned now might never run (a server shutting down), and a
    /// removal left to it would leak the cgroup. A few writes to the
    /// cgroup file system and a bounded wait ([`DROP_WAIT`]) are the cost,
    /// paid only on this path.
    fn drop(&mut self) {
        let kill = self.killed || !self.keep_background;
        // Not killing, it is dropped at once: removed if empty, else kept
        // for the leftovers that are meant to stay.
        let cgroup = match self.cgroup.take() {
            Some(cgroup) if kill => cgroup.end_within(DROP_WAIT),
            Some(_) => None,
            None => {
                if let (Some(child), true) = (&self.child, kill) {
                    // Without a cgroup, the process itself at least.
                    child.signal(Signal::SIGKILL);
                }
                None
            }
        };
        let mut child = self.child.take();
        if let Some(c) = child.as_mut() {
            if matches!(c.try_reap(), Ok(Some(_)) | Err(_)) {
                child = None;
            }
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if let Some(cgroup) = cgroup {
            handle.spawn_blocking(move || cgroup.end());
        }
        // Reaped whenever it dies: an unreaped child in the container's
        // PID namespace would keep the container from stopping.
        if let Some(mut child) = child {
            handle.spawn(async move {
                let _ = child.wait().await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_process_that_never_started_says_why_and_exits() {
        let mut p = finished(false, "OCI runtime exec failed: boom".into(), 127);
        match p.output.next_chunk().await.unwrap() {
            OutputChunk::Data(OutputStream::Stderr, data) => {
                assert_eq!(&data[..], b"OCI runtime exec failed: boom\n")
            }
            _ => panic!("expected the message on stderr"),
        }
        assert!(matches!(
            p.output.next_chunk().await.unwrap(),
            OutputChunk::End
        ));
        assert_eq!(p.control.wait().await.unwrap(), 127);
        assert!(p.resizer.is_none());
    }
}
