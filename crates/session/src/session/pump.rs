//! The pump: a session's output side and its end.
//!
//! It reads the process's output (whichever backend runs it), forwards chunks as
//! [`SessionEvent::Output`], waits for the exit, drains what is left and
//! sends exactly one terminal event; when the session ends any other way it
//! stops the session's processes first.

use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backend::{OutputChunk, ProcessControl, ProcessOutput, WaitError};
use crate::deadline::sleep_until_opt;
use crate::error::{EndReason, SessionError};
use crate::reaper::{self, ContainerRef};
use crate::registry::{Registration, SessionControl, SessionStats};
use crate::session::{LifecycleConfig, SessionEvent};

enum Outcome {
    Exited(i32),
    Ended(EndReason),
    WaitFailed(WaitError),
}

pub(crate) struct Pump {
    pub(crate) id: String,
    /// The session's process marker.
    pub(crate) marker: String,
    pub(crate) output: Box<dyn ProcessOutput>,
    pub(crate) control: Box<dyn ProcessControl>,
    pub(crate) tty: bool,
    pub(crate) events: mpsc::Sender<SessionEvent>,
    pub(crate) session: Arc<SessionControl>,
    pub(crate) stats: Arc<SessionStats>,
    pub(crate) config: Arc<LifecycleConfig>,
    pub(crate) container: Option<ContainerRef>,
    pub(crate) registration: Option<Registration>,
    pub(crate) done: CancellationToken,
    /// Cancelled once the session's process has exited: what follows is
    /// draining and cleanup, which the idle timeout must not turn into an
    /// error.
    pub(crate) exited: CancellationToken,
    /// When the backend was asked to start the process.
    pub(crate) started: std::time::Instant,
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
                SessionEvent::Failed(e.into())
            }
        };
        self.control.finish().await;
        // The processes are gone: the session no longer counts, even if the
        // client is slow to take the final event.
        drop(self.registration.take());
        self.done.cancel();
        self.exited.cancel();
        // Bounded: a client that stopped reading must not pin this task.
        let _ = tokio::time::timeout(Duration::from_secs(30), self.events.send(event)).await;
    }

    /// Sends one event, giving up if the session is ended meanwhile.
    async fn emit(
        events: &mpsc::Sender<SessionEvent>,
        session: &SessionControl,
        event: SessionEvent,
    ) -> Result<(), EndReason> {
        tokio::select! {
            biased;
            _ = session.token().cancelled() => Err(session.reason()),
            sent = events.send(event) => sent.map_err(|_| EndReason::ClientGone),
        }
    }

    fn polite_signal(&self) -> Signal {
        if self.tty {
            Signal::SIGHUP
        } else {
            Signal::SIGTERM
        }
    }

    async fn forward(&mut self) -> Outcome {
        let mut output_open = true;
        let mut exit: Option<(i32, Instant)> = None;
        let mut last_data = Instant::now();
        loop {
            if let Some((code, _)) = exit {
                if !output_open {
                    return Outcome::Exited(code);
                }
            }
            let drain_deadline = exit.map(|(_, at)| {
                (last_data.max(at) + self.config.drain_idle).min(at + self.config.drain_max)
            });
            tokio::select! {
                biased;
                _ = self.session.token().cancelled() => return Outcome::Ended(self.session.reason()),
                _ = self.events.closed() => {
                    self.session.end(EndReason::ClientGone);
                    return Outcome::Ended(self.session.reason());
                }
                chunk = self.output.next_chunk(), if output_open => match chunk {
                    Ok(OutputChunk::Data(stream, data)) => {
                        last_data = Instant::now();
                        self.stats.record_output(data.len());
                        let event = SessionEvent::Output { stream, data };
                        if let Err(reason) = Self::emit(&self.events, &self.session, event).await {
                            self.session.end(reason);
                            return Outcome::Ended(self.session.reason());
                        }
                    }
                    Ok(OutputChunk::End) | Err(_) => {
                        // The end of output is the process finishing: the
                        // wait for its exit status (the CLI or execd asks
                        // the engine for it, slow on a busy engine) is not
                        // idleness.
                        self.stats.touch();
                        output_open = false;
                    }
                },
                status = self.control.wait(), if exit.is_none() => match status {
                    Ok(code) => {
                        exit = Some((code, Instant::now()));
                        self.exited.cancel();
                    }
                    Err(e) => return Outcome::WaitFailed(e),
                },
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
    async fn end_leftovers(&mut self) {
        let report = reaper::reap_visible(
            &self.marker,
            self.polite_signal(),
            self.config.kill_grace,
            self.container.as_ref(),
        )
        .await;
        if report.found > 0 {
            tracing::debug!(session_id = %self.id, ?report, "background processes ended after the exit");
        }
    }

    /// Kills everything the session started: the processes inside the
    /// container (by marker), then the runtime side (the CLI, or the
    /// engine connection).
    async fn stop_processes(&mut self) {
        let polite = self.polite_signal();
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
        let was_running = !self.control.has_exited();
        self.control.kill().await;
        // Ended right after STARTED: the exec may still have been on its way
        // into the container when its runtime side was stopped.
        if was_running
            && self.container.is_some()
            && self.started.elapsed() < reaper::late_start_window()
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
