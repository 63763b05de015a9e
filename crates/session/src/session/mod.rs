//! A running session: the handle the server holds, and the tasks that move
//! bytes between it and the backend's process.
//!
//! Each session runs a few small tasks, none of which blocks a thread (and,
//! with reattach on, the relay of `reattach::replay`):
//!
//! - the **pump** ([`pump`]) reads stdout/stderr (or the terminal),
//!   forwards chunks as [`SessionEvent::Output`], waits for the exit, drains
//!   what is left and sends exactly one terminal event;
//! - the **stdin writer** writes client input in order and delivers EOF
//!   (with a small companion that stops it when the session ends);
//! - the **resizer** ([`resize`], terminals only) applies window
//!   sizes and re-announces them until the container has certainly seen
//!   them;
//! - the **idle watchdog** (when an idle timeout is set).
//!
//! Input and output run in separate tasks on purpose: a process that is
//! blocked writing output while the client is still pushing input would
//! deadlock a single loop that waits on one before the other.
//!
//! All channels are bounded, so a slow client stalls the process (through
//! the full pipe) instead of growing execd's memory, and a flood of input
//! stalls the client (through HTTP/2 flow control).

pub(crate) mod pump;
pub(crate) mod resize;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backend::Process;
use crate::command::TermSize;
use crate::error::SessionError;
use crate::reaper::ContainerRef;
use crate::reason::EndReason;
use crate::registry::{Registration, SessionControl, SessionStats};
use crate::term_size::SizeChannel;

// The backend defines what output is; the session passes it on.
pub use crate::backend::OutputStream;

/// Output events buffered between the pump and the server.
pub const OUTPUT_DEPTH: usize = 16;
/// Input chunks buffered between the server and the stdin writer.
pub const INPUT_DEPTH: usize = 16;
/// Largest piece of input queued for stdin: larger writes are split, so
/// the queue holds at most `INPUT_DEPTH × STDIN_PIECE` (1 MiB) whatever
/// size the client's messages have.
pub const STDIN_PIECE: usize = 64 * 1024;

/// What the session reports, in order: output chunks, then exactly one of
/// `Exited` or `Failed`, then nothing.
#[derive(Debug)]
pub enum SessionEvent {
    Output {
        stream: OutputStream,
        data: Bytes,
    },
    /// The process exited and all of its output was delivered before this.
    Exited {
        code: i32,
    },
    /// The session ended without the process exiting on its own.
    Failed(SessionError),
}

#[derive(Debug)]
pub(crate) enum StdinCommand {
    /// Bytes, and the number of the last resize the client sent before
    /// them (see [`crate::term_size`]).
    Data(Bytes, u64),
    Eof,
}

/// Tunables of a session's lifecycle.
#[derive(Debug, Clone)]
pub struct LifecycleConfig {
    /// After the exit, how long to wait for more output before giving up on
    /// a pipe still held open by a background process.
    pub drain_idle: Duration,
    /// Hard cap on draining after the exit.
    pub drain_max: Duration,
    /// Time between the polite signal and SIGKILL.
    pub kill_grace: Duration,
    /// End sessions without input or output for this long.
    pub idle_timeout: Option<Duration>,
    /// Delays after a size change at which the container's terminal is
    /// checked and, if needed, corrected.
    pub resize_nudges: Vec<Duration>,
    /// Longest a terminal session's start waits for the container's
    /// terminal to have the requested size before STARTED is sent anyway.
    pub start_size_wait: Duration,
    /// Leave processes the session's process started in the background
    /// running after it exits (Docker's own behaviour) instead of ending
    /// them.
    pub keep_background_processes: bool,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            drain_idle: Duration::from_millis(500),
            drain_max: Duration::from_secs(10),
            kill_grace: Duration::from_millis(500),
            idle_timeout: None,
            resize_nudges: [15, 40, 100, 200, 400, 800, 1600, 3200]
                .into_iter()
                .map(Duration::from_millis)
                .collect(),
            start_size_wait: Duration::from_secs(2),
            keep_background_processes: false,
        }
    }
}

/// A started session, split so that input and output can live in
/// different tasks.
pub struct Session {
    pub id: String,
    /// The client came back to a running (or detached-and-finished)
    /// session: announce RUNNING, not STARTED; the output that follows
    /// starts with the replay.
    pub reattached: bool,
    pub input: SessionInput,
    pub output: SessionOutput,
    /// Live byte and activity counters (also shown by the admin API).
    pub stats: Arc<SessionStats>,
}

/// The client-facing input side: stdin, EOF, resize, ending.
pub struct SessionInput {
    stdin: mpsc::Sender<StdinCommand>,
    size: Arc<SizeChannel>,
    /// Number of the last resize this client asked for.
    last_resize: u64,
    control: Arc<SessionControl>,
    done: CancellationToken,
    tty: bool,
    eof_sent: bool,
    /// Attached to the container's main process: EOF is never passed on.
    attach: bool,
    /// With reattach on: where "the client is gone" goes (a detach, not
    /// an end).
    relay: Option<mpsc::Sender<crate::reattach::replay::RelayCommand>>,
}

impl SessionInput {
    /// The input side for a client that reattached.
    pub(crate) fn reattached(
        stdin: mpsc::Sender<StdinCommand>,
        size: Arc<SizeChannel>,
        control: Arc<SessionControl>,
        done: CancellationToken,
        tty: bool,
        attach: bool,
        relay: mpsc::Sender<crate::reattach::replay::RelayCommand>,
    ) -> Self {
        SessionInput {
            last_resize: size.latest_seq(),
            stdin,
            size,
            control,
            done,
            tty,
            eof_sent: false,
            attach,
            relay: Some(relay),
        }
    }

    /// Queues bytes for stdin, waiting while the queue is full (backpressure).
    /// Returns false once the session is over.
    pub async fn write(&mut self, data: Bytes) -> bool {
        if data.is_empty() {
            return !self.done.is_cancelled();
        }
        if self.eof_sent {
            tracing::debug!("input after stdin EOF dropped");
            return !self.done.is_cancelled();
        }
        let mut rest = data;
        let split = rest.len() > STDIN_PIECE;
        while !rest.is_empty() {
            let piece = rest.split_to(rest.len().min(STDIN_PIECE));
            // A slice would keep the whole message alive while it waits:
            // pieces of a split message are copies, so the queue's bound
            // is a bound on memory.
            let piece = if split {
                Bytes::copy_from_slice(&piece)
            } else {
                piece
            };
            let sent = tokio::select! {
                sent = self.stdin.send(StdinCommand::Data(piece, self.last_resize)) => sent.is_ok(),
                _ = self.done.cancelled() => false,
            };
            if !sent {
                return false;
            }
        }
        true
    }

    /// No more stdin: closes the pipe, or types the terminal's EOF
    /// character. Only the first call has an effect.
    pub async fn close_stdin(&mut self) {
        if self.attach {
            // An attach shares PID 1's input with everyone else: one
            // client leaving must not end it (a ^D would end a shell).
            tracing::debug!("stdin EOF of an attach is not passed on");
            return;
        }
        if std::mem::replace(&mut self.eof_sent, true) {
            return;
        }
        tokio::select! {
            _ = self.stdin.send(StdinCommand::Eof) => {}
            _ = self.done.cancelled() => {}
        }
    }

    /// Sets the terminal size (clamped). Ignored without a terminal. Input
    /// sent after it reaches the process once the terminal has the size.
    pub fn resize(&mut self, rows: i32, cols: i32) -> TermSize {
        let size = TermSize::from_client(rows, cols);
        if self.tty {
            self.last_resize = self.size.request(size);
        } else {
            tracing::debug!(rows, cols, "resize ignored: session has no terminal");
        }
        size
    }

    /// Asks the session to end; its processes are killed. With reattach
    /// on, a client that went away ([`EndReason::ClientGone`]) detaches
    /// the session instead, for the grace period.
    pub fn end(&self, reason: EndReason) {
        if let (EndReason::ClientGone, Some(relay)) = (&reason, &self.relay) {
            if relay
                .try_send(crate::reattach::replay::RelayCommand::Detach)
                .is_ok()
            {
                return;
            }
        }
        self.control.end(reason);
    }

    /// Resolves when the session is over (terminal event produced).
    pub async fn finished(&self) {
        self.done.cancelled().await
    }
}

/// The client-facing output side. Dropping it means the client is gone:
/// the session then ends and its processes are killed.
pub struct SessionOutput {
    events: SessionEvents,
}

impl SessionOutput {
    pub(crate) fn new(events: SessionEvents) -> Self {
        SessionOutput { events }
    }

    pub fn into_receiver(self) -> SessionEvents {
        self.events
    }
}

/// The session's events as a door takes them. Counts the output bytes
/// taken, which is where a reattaching client's replay starts.
pub struct SessionEvents {
    events: mpsc::Receiver<SessionEvent>,
    taken: Arc<std::sync::atomic::AtomicU64>,
}

impl SessionEvents {
    pub(crate) fn new(
        events: mpsc::Receiver<SessionEvent>,
        taken: Arc<std::sync::atomic::AtomicU64>,
    ) -> Self {
        SessionEvents { events, taken }
    }

    fn count(&self, event: &Option<SessionEvent>) {
        if let Some(SessionEvent::Output { data, .. }) = event {
            self.taken
                .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub async fn recv(&mut self) -> Option<SessionEvent> {
        let event = self.events.recv().await;
        self.count(&event);
        event
    }

    pub fn poll_recv(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<SessionEvent>> {
        let polled = self.events.poll_recv(cx);
        if let std::task::Poll::Ready(event) = &polled {
            self.count(event);
        }
        polled
    }
}

/// Everything the tasks need, handed over by the manager after a successful
/// start.
pub(crate) struct Launch {
    pub id: String,
    /// The value of the session's process marker (see the reaper).
    pub marker: String,
    pub process: Process,
    pub initial_size: TermSize,
    pub registration: Registration,
    pub container: Option<ContainerRef>,
    pub config: Arc<LifecycleConfig>,
    pub spawned_at: std::time::Instant,
    /// With reattach on: the table the session can be found in again.
    pub reattach: Option<Arc<crate::reattach::ReattachTable>>,
}

/// Starts the session's tasks and returns its handle.
pub(crate) fn launch(l: Launch) -> Session {
    let entry = l.registration.entry().clone();
    let control = entry.control.clone();
    let stats = entry.stats.clone();
    // The idle clock starts with the session, not with its registration:
    // a slow start (busy engine) is not idleness.
    stats.touch();
    let Process {
        stdin,
        output,
        eof_char,
        resizer,
        control: runtime,
    } = l.process;
    let tty = resizer.is_some();
    let done = CancellationToken::new();
    let (stdin_tx, stdin_rx) = mpsc::channel(INPUT_DEPTH);
    let (events_tx, events_rx) = mpsc::channel(OUTPUT_DEPTH);
    let (size, size_rx) = SizeChannel::new(l.initial_size);

    // The writer stops when the session is ended or finished, whichever
    // comes first.
    let writer_stop = CancellationToken::new();
    {
        let (cancel, done, stop) = (control.token().clone(), done.clone(), writer_stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = done.cancelled() => {}
            }
            stop.cancel();
        });
    }
    tokio::spawn(write_stdin(
        stdin,
        stdin_rx,
        eof_char,
        tty.then(|| size.clone()),
        stats.clone(),
        writer_stop,
    ));
    let redraw = Arc::new(tokio::sync::Notify::new());
    if let Some(resizer) = resizer {
        tokio::spawn(resize::resize_terminal(
            resizer,
            redraw.clone(),
            l.marker.clone(),
            l.container.as_ref().map(|c| c.init_pid),
            (size.clone(), size_rx),
            l.config.resize_nudges.clone(),
            done.clone(),
        ));
    }
    let exited = CancellationToken::new();
    if let Some(idle) = l.config.idle_timeout {
        tokio::spawn(watch_idle(
            idle,
            stats.clone(),
            control.clone(),
            exited.clone(),
        ));
    }
    let pump = pump::Pump {
        id: l.id.clone(),
        marker: l.marker,
        output,
        control: runtime,
        tty,
        events: events_tx,
        session: control.clone(),
        stats,
        config: l.config,
        container: l.container,
        registration: Some(l.registration),
        done: done.clone(),
        exited: exited.clone(),
        started: l.spawned_at,
    };
    tokio::spawn(pump.run());
    let attach = entry.kind == crate::command::SessionKind::Attach;
    let (events, relay) = match l.reattach {
        None => (SessionEvents::new(events_rx, Arc::default()), None),
        Some(reattach) => {
            let parts = crate::reattach::Parts {
                session_id: l.id.clone(),
                entry: &entry,
                stdin: stdin_tx.clone(),
                size: size.clone(),
                done: done.clone(),
                redraw: redraw.clone(),
            };
            let (events, relay) = reattach.relay(parts, events_rx);
            (events, Some(relay))
        }
    };
    Session {
        stats: entry.stats.clone(),
        id: l.id,
        reattached: false,
        input: SessionInput {
            stdin: stdin_tx,
            size,
            last_resize: 0,
            control,
            done,
            tty,
            eof_sent: false,
            attach,
            relay,
        },
        output: SessionOutput { events },
    }
}

/// Writes client input to the child, in order, completely.
///
/// Every wait also watches `stop` (the session ending for any reason,
/// including a normal exit): a process that stopped reading must not pin
/// this task and the pipe or terminal it holds.
async fn write_stdin(
    mut stdin: Box<dyn AsyncWrite + Send + Unpin>,
    mut rx: mpsc::Receiver<StdinCommand>,
    eof_char: Option<u8>,
    size: Option<Arc<SizeChannel>>,
    stats: Arc<SessionStats>,
    stop: CancellationToken,
) {
    let mut broken = false;
    // Whether the terminal's current input line is empty: a terminal only
    // turns EOF into end-of-file at the start of a line.
    let mut at_line_start = true;
    loop {
        let cmd = tokio::select! {
            cmd = rx.recv() => cmd,
            _ = stop.cancelled() => return,
        };
        match cmd {
            None => {
                if eof_char.is_some() {
                    // A terminal's input stays open until the session ends:
                    // the engine closes a tty exec's console (output
                    // included) when its input is closed.
                    stop.cancelled().await;
                }
                return;
            }
            Some(StdinCommand::Data(data, after_resize)) => {
                if broken {
                    // The process closed its stdin; keep accepting so the
                    // client is not stalled, as a closed pipe would do.
                    continue;
                }
                if let Some(size) = &size {
                    let applied = tokio::select! {
                        applied = size.wait_applied(after_resize) => applied,
                        _ = stop.cancelled() => return,
                    };
                    if !applied {
                        tracing::debug!(
                            after_resize,
                            "input written before its resize was applied (resize is slow)"
                        );
                    }
                }
                let len = data.len();
                let written = tokio::select! {
                    r = stdin.write_all(&data) => r,
                    _ = stop.cancelled() => return,
                };
                match written {
                    Ok(()) => {
                        stats.record_input(len);
                        at_line_start = matches!(data.last(), Some(b'\n' | b'\r'));
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "stdin closed by the process; further input is discarded");
                        broken = true;
                    }
                }
            }
            Some(StdinCommand::Eof) => match eof_char {
                // A terminal has no half-close: the line discipline inside
                // the container turns this character into end-of-file.
                Some(ch) if !broken => {
                    // Mid-line, the first EOF only hands over the pending
                    // text; the second ends the input.
                    let eof = [ch, ch];
                    let eof = if at_line_start { &eof[..1] } else { &eof[..] };
                    tokio::select! {
                        _ = stdin.write_all(eof) => {}
                        _ = stop.cancelled() => return,
                    }
                }
                Some(_) => {}
                None => {
                    // Dropping the pipe's write end is the EOF the process sees.
                    drop(stdin);
                    return;
                }
            },
        }
    }
}
/// Ends the session when neither input nor output moved for `idle`, until
/// its process has exited (`exited` also fires when the session ends).
async fn watch_idle(
    idle: Duration,
    stats: Arc<SessionStats>,
    control: Arc<SessionControl>,
    exited: CancellationToken,
) {
    // The monotonic clock decides: a wall-clock step must not end a
    // session early or keep an idle one alive.
    loop {
        let quiet = stats.idle_for();
        if quiet >= idle {
            control.end(EndReason::IdleTimeout);
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(idle - quiet) => {}
            _ = exited.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests;
