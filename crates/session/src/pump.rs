//! The pump: a session's output side and its end.
//!
//! It reads stdout/stderr (or the terminal), forwards chunks as
//! [`SessionEvent::Output`], waits for the exit, drains what is left and
//! sends exactly one terminal event; when the session ends any other way it
//! stops the session's processes first.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use nix::sys::signal::Signal;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Child;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{EndReason, SessionError};
use crate::reaper::{self, ContainerRef};
use crate::registry::{Registration, SessionControl, SessionStats};
use crate::session::{LifecycleConfig, OutputStream, SessionEvent, READ_CHUNK};
use crate::spawn::Terminal;

enum Outcome {
    Exited(i32),
    Ended(EndReason),
    WaitFailed(std::io::Error),
}

pub(crate) struct Pump {
    pub(crate) id: String,
    /// The session's process marker.
    pub(crate) marker: String,
    pub(crate) child: Child,
    /// Dropped with the pump, after the child was waited for.
    pub(crate) _tracked: crate::orphans::Tracked,
    pub(crate) stdout: Option<Box<dyn AsyncRead + Send + Unpin>>,
    pub(crate) stderr: Option<Box<dyn AsyncRead + Send + Unpin>>,
    pub(crate) terminal: Option<Terminal>,
    pub(crate) events: mpsc::Sender<SessionEvent>,
    pub(crate) control: Arc<SessionControl>,
    pub(crate) stats: Arc<SessionStats>,
    pub(crate) config: Arc<LifecycleConfig>,
    pub(crate) container: Option<ContainerRef>,
    pub(crate) registration: Option<Registration>,
    pub(crate) done: CancellationToken,
    /// Cancelled once the session's process has exited: what follows is
    /// draining and cleanup, which the idle timeout must not turn into an
    /// error.
    pub(crate) exited: CancellationToken,
    /// When the runtime CLI was spawned.
    pub(crate) started: std::time::Instant,
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255)
}

/// Reads one chunk into `buf` and splits it off without copying.
async fn read_chunk<R: AsyncRead + Unpin + ?Sized>(
    reader: &mut R,
    buf: &mut BytesMut,
) -> std::io::Result<Option<Bytes>> {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
    let n = reader.read_buf(buf).await?;
    if n == 0 {
        Ok(None)
    } else {
        Ok(Some(buf.split().freeze()))
    }
}

impl Pump {
    pub(crate) async fn run(mut self) {
        let outcome = self.forward().await;
        let event = match outcome {
            Outcome::Exited(code) => {
                if !self.config.keep_background_processes {
                    self.end_leftovers().await;
                }
                SessionEvent::Exited { code }
            }
            Outcome::Ended(reason) => {
                self.stop_processes().await;
                SessionEvent::Failed(SessionError::Ended(reason))
            }
            Outcome::WaitFailed(e) => {
                self.stop_processes().await;
                SessionEvent::Failed(SessionError::Wait(e))
            }
        };
        // The processes are gone: the session no longer counts, even if the
        // client is slow to take the final event.
        drop(self.registration.take());
        self.done.cancel();
        self.exited.cancel();
        // Bounded: a client that stopped reading must not pin this task.
        let _ = tokio::time::timeout(Duration::from_secs(30), self.events.send(event)).await;
    }

    /// Sends one event, giving up if the session is ended meanwhile.
    ///
    /// Takes the two fields it needs rather than `&self`: the pump also owns
    /// the child's stdio, which is `Send` but not `Sync`.
    async fn emit(
        events: &mpsc::Sender<SessionEvent>,
        control: &SessionControl,
        event: SessionEvent,
    ) -> Result<(), EndReason> {
        tokio::select! {
            biased;
            _ = control.token().cancelled() => Err(control.reason()),
            sent = events.send(event) => sent.map_err(|_| EndReason::ClientGone),
        }
    }

    /// Handles one read of an output stream: forwards data, or marks the
    /// stream closed at its end (a read error counts as the end).
    ///
    /// Borrows only the `Sync` parts of the pump (the readers are not).
    fn forward_chunk<'a>(
        &'a self,
        stream: OutputStream,
        chunk: std::io::Result<Option<Bytes>>,
        open: &'a mut bool,
        last_data: &'a mut Instant,
    ) -> impl std::future::Future<Output = Result<(), EndReason>> + Send + 'a {
        let (events, control, stats) = (&self.events, &self.control, &self.stats);
        async move {
            match chunk {
                Ok(Some(data)) => {
                    *last_data = Instant::now();
                    stats.record_output(data.len());
                    Self::emit(events, control, SessionEvent::Output { stream, data }).await
                }
                Ok(None) => {
                    // The end of output is the process finishing: the wait
                    // for its exit status (the CLI asks the engine for it,
                    // slow on a busy engine) is not idleness.
                    stats.touch();
                    *open = false;
                    Ok(())
                }
                Err(e) => {
                    tracing::debug!(error = %e, ?stream, "output read failed");
                    *open = false;
                    Ok(())
                }
            }
        }
    }

    async fn forward(&mut self) -> Outcome {
        let mut out_buf = BytesMut::with_capacity(READ_CHUNK);
        let mut err_buf = BytesMut::new();
        // Owned locally so the select below can borrow them next to `self`.
        let mut stdout = self.stdout.take();
        let mut stderr = self.stderr.take();
        let mut out_open = stdout.is_some();
        let mut err_open = stderr.is_some();
        let mut exit: Option<(i32, Instant)> = None;
        let mut last_data = Instant::now();
        loop {
            if let Some((code, _)) = exit {
                if !out_open && !err_open {
                    return Outcome::Exited(code);
                }
            }
            let drain_deadline = exit.map(|(_, at)| {
                (last_data.max(at) + self.config.drain_idle).min(at + self.config.drain_max)
            });
            tokio::select! {
                biased;
                _ = self.control.token().cancelled() => return Outcome::Ended(self.control.reason()),
                _ = self.events.closed() => {
                    self.control.end(EndReason::ClientGone);
                    return Outcome::Ended(self.control.reason());
                }
                chunk = read_chunk_opt(stdout.as_mut(), &mut out_buf), if out_open => {
                    if let Err(reason) = self.forward_chunk(OutputStream::Stdout, chunk, &mut out_open, &mut last_data).await {
                        self.control.end(reason);
                        return Outcome::Ended(self.control.reason());
                    }
                }
                chunk = read_chunk_opt(stderr.as_mut(), &mut err_buf), if err_open => {
                    if let Err(reason) = self.forward_chunk(OutputStream::Stderr, chunk, &mut err_open, &mut last_data).await {
                        self.control.end(reason);
                        return Outcome::Ended(self.control.reason());
                    }
                }
                status = self.child.wait(), if exit.is_none() => {
                    match status {
                        Ok(status) => {
                            exit = Some((exit_code(status), Instant::now()));
                            self.exited.cancel();
                        }
                        Err(e) => return Outcome::WaitFailed(e),
                    }
                }
                _ = sleep_until_opt(drain_deadline) => {
                    // A background process still holds the output open; the
                    // session's own process is done, so is the session.
                    tracing::debug!(session_id = %self.id, "output still open after exit; drain bounded");
                    if let Some((code, _)) = exit {
                        return Outcome::Exited(code);
                    }
                }
            }
        }
    }

    /// After a normal exit: ends what the session's process left running
    /// (`sh -c 'daemon & exit 0'`), which nobody would observe or stop
    /// otherwise. Looks only where execd can see (`/proc`); a marked process
    /// that execd cannot see is left, as plain `docker exec` would.
    ///
    /// `&mut self`: the pump holds the child's stdio, `Send` but not `Sync`.
    async fn end_leftovers(&mut self) {
        let polite = if self.terminal.is_some() {
            Signal::SIGHUP
        } else {
            Signal::SIGTERM
        };
        let report = reaper::reap_visible(
            &self.marker,
            polite,
            self.config.kill_grace,
            self.container.as_ref(),
        )
        .await;
        if report.found > 0 {
            tracing::debug!(session_id = %self.id, ?report, "background processes ended after the exit");
        }
    }

    /// Kills everything the session started: the processes inside the
    /// container (by marker), then the runtime CLI, which is reaped.
    async fn stop_processes(&mut self) {
        let polite = if self.terminal.is_some() {
            Signal::SIGHUP
        } else {
            Signal::SIGTERM
        };
        // Even when the session's own process already exited (the session
        // was ended while draining), what it left running must go too.
        let report = reaper::reap_session(
            &self.marker,
            polite,
            self.config.kill_grace,
            self.container.as_ref(),
        )
        .await;
        tracing::debug!(session_id = %self.id, ?report, "session processes signalled");
        let reaped = matches!(self.child.try_wait(), Ok(Some(_)));
        let cli_was_running = !reaped;
        if !reaped {
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
                tracing::warn!(session_id = %self.id, error = %e, "reaping the runtime CLI failed");
            }
        }
        // Ended right after STARTED: the exec may still have been on its way
        // into the container when the CLI died.
        if cli_was_running
            && self.container.is_some()
            && self.started.elapsed() < reaper::LATE_START_WINDOW
        {
            let caught = reaper::reap_late_starters(
                &self.marker,
                self.started,
                Duration::from_millis(300),
                polite,
                self.config.kill_grace,
                self.container.as_ref(),
            )
            .await;
            if caught > 0 {
                tracing::debug!(session_id = %self.id, caught, "late-starting processes ended");
            }
        }
    }
}

async fn read_chunk_opt<R: AsyncRead + Unpin + ?Sized>(
    reader: Option<&mut R>,
    buf: &mut BytesMut,
) -> std::io::Result<Option<Bytes>> {
    match reader {
        Some(r) => read_chunk(r, buf).await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `deadline`, or forever without one.
pub(crate) async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
