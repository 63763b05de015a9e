//! A running session: the handle the server holds, and the tasks that move
//! bytes between it and the child process.
//!
//! Each session runs up to four small tasks, none of which blocks a thread:
//!
//! - the **pump** reads stdout/stderr (or the terminal), forwards chunks as
//!   [`SessionEvent::Output`], waits for the exit, drains what is left and
//!   sends exactly one terminal event;
//! - the **stdin writer** writes client input in order and delivers EOF;
//! - the **resizer** (terminals only) applies window sizes and re-announces
//!   them until the container has certainly seen them;
//! - the **idle watchdog** (when an idle timeout is set).
//!
//! Input and output run in separate tasks on purpose: a process that is
//! blocked writing output while the client is still pushing input would
//! deadlock a single loop that waits on one before the other.
//!
//! All channels are bounded, so a slow client stalls the process (through
//! the full pipe) instead of growing execd's memory, and a flood of input
//! stalls the client (through HTTP/2 flow control).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use nix::sys::signal::Signal;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::Child;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::command::TermSize;
use crate::error::{EndReason, SessionError};
use crate::reaper::{self, ContainerRef};
use crate::registry::{Registration, SessionControl, SessionStats};
use crate::spawn::{ChildIo, Terminal};

/// Bytes read from the child per chunk (one output message at most).
pub const READ_CHUNK: usize = 256 * 1024;
/// Output events buffered between the pump and the server.
pub const OUTPUT_DEPTH: usize = 16;
/// Input chunks buffered between the server and the stdin writer.
pub const INPUT_DEPTH: usize = 8;

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

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
enum StdinCommand {
    Data(Bytes),
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
        }
    }
}

/// A started session, split so that input and output can live in
/// different tasks.
pub struct Session {
    pub id: String,
    pub input: SessionInput,
    pub output: SessionOutput,
    /// Live byte and activity counters (also shown by the admin API).
    pub stats: Arc<SessionStats>,
}

/// The client-facing input side: stdin, EOF, resize, ending.
pub struct SessionInput {
    stdin: mpsc::Sender<StdinCommand>,
    size: watch::Sender<TermSize>,
    control: Arc<SessionControl>,
    done: CancellationToken,
    tty: bool,
    eof_sent: bool,
}

impl SessionInput {
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
        tokio::select! {
            sent = self.stdin.send(StdinCommand::Data(data)) => sent.is_ok(),
            _ = self.done.cancelled() => false,
        }
    }

    /// No more stdin: closes the pipe, or types the terminal's EOF
    /// character. Only the first call has an effect.
    pub async fn close_stdin(&mut self) {
        if std::mem::replace(&mut self.eof_sent, true) {
            return;
        }
        tokio::select! {
            _ = self.stdin.send(StdinCommand::Eof) => {}
            _ = self.done.cancelled() => {}
        }
    }

    /// Sets the terminal size (clamped). Ignored without a terminal.
    pub fn resize(&self, rows: i32, cols: i32) -> TermSize {
        let size = TermSize::from_client(rows, cols);
        if self.tty {
            self.size.send_replace(size);
        } else {
            tracing::debug!(rows, cols, "resize ignored: session has no terminal");
        }
        size
    }

    /// Asks the session to end; its processes are killed.
    pub fn end(&self, reason: EndReason) {
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
    events: mpsc::Receiver<SessionEvent>,
}

impl SessionOutput {
    pub fn into_receiver(self) -> mpsc::Receiver<SessionEvent> {
        self.events
    }
}

/// Everything the tasks need, handed over by the manager after a successful
/// start.
pub(crate) struct Launch {
    pub id: String,
    pub child: Child,
    pub io: ChildIo,
    pub initial_size: TermSize,
    pub registration: Registration,
    pub container: Option<ContainerRef>,
    pub config: Arc<LifecycleConfig>,
    pub spawned_at: std::time::Instant,
}

/// Starts the session's tasks and returns its handle.
pub(crate) fn launch(l: Launch) -> Session {
    let entry = l.registration.entry().clone();
    let control = entry.control.clone();
    let stats = entry.stats.clone();
    let tty = l.io.terminal.is_some();
    let done = CancellationToken::new();
    let (stdin_tx, stdin_rx) = mpsc::channel(INPUT_DEPTH);
    let (events_tx, events_rx) = mpsc::channel(OUTPUT_DEPTH);
    let (size_tx, size_rx) = watch::channel(l.initial_size);

    let ChildIo {
        stdin,
        stdout,
        stderr,
        terminal,
    } = l.io;
    let eof_char = terminal.as_ref().map(|t| t.eof_char);
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
        stats.clone(),
        writer_stop,
    ));
    if let Some(terminal) = &terminal {
        tokio::spawn(resize_terminal(
            terminal.master.clone(),
            l.id.clone(),
            l.child.id(),
            l.container.is_some(),
            size_rx,
            l.config.resize_nudges.clone(),
            done.clone(),
        ));
    }
    if let Some(idle) = l.config.idle_timeout {
        tokio::spawn(watch_idle(
            idle,
            stats.clone(),
            control.clone(),
            done.clone(),
        ));
    }
    let pump = Pump {
        id: l.id.clone(),
        child: l.child,
        stdout: Some(stdout),
        stderr,
        terminal,
        events: events_tx,
        control: control.clone(),
        stats,
        config: l.config,
        container: l.container,
        registration: Some(l.registration),
        done: done.clone(),
        started: l.spawned_at,
    };
    tokio::spawn(pump.run());
    Session {
        stats: entry.stats.clone(),
        id: l.id,
        input: SessionInput {
            stdin: stdin_tx,
            size: size_tx,
            control,
            done,
            tty,
            eof_sent: false,
        },
        output: SessionOutput { events: events_rx },
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
            None => return,
            Some(StdinCommand::Data(data)) => {
                if broken {
                    // The process closed its stdin; keep accepting so the
                    // client is not stalled, as a closed pipe would do.
                    continue;
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

/// Applies sizes to the terminal and, for container sessions, makes sure
/// the container's own terminal ends up with them.
///
/// Why: `docker exec -t` ignores SIGWINCH until its own first resize round
/// trip has finished, and engines before API 1.42 cannot size the console
/// at creation (docker/cli#1492), so a size set early can be lost or
/// overwritten by the CLI's stale first resize. After every change, on a
/// backoff schedule, the resizer looks at the terminal of the session's
/// process inside the container (found by its marker, through `/proc`);
/// when the size differs it sets it there directly and sends SIGWINCH to
/// the CLI so the engine agrees. Where execd cannot see the container's
/// processes it can only nudge the CLI.
async fn resize_terminal(
    master: crate::pty::PtyMaster,
    session_id: String,
    child_pid: Option<u32>,
    in_container: bool,
    mut sizes: watch::Receiver<TermSize>,
    schedule: Vec<Duration>,
    done: CancellationToken,
) {
    let cli_group = child_pid.map(|p| nix::unistd::Pid::from_raw(p as i32));
    let mut target = *sizes.borrow_and_update();
    let mut changed_at = Instant::now();
    let mut step = 0usize;
    let mut inner_pid: Option<i32> = None;
    // After the client half-closes no new sizes come, but the checks for
    // the last one still run to the end of their schedule.
    let mut watching = true;
    loop {
        let next_check = schedule
            .get(step)
            .filter(|_| in_container)
            .map(|d| changed_at + *d);
        if !watching && next_check.is_none() {
            return;
        }
        tokio::select! {
            changed = sizes.changed(), if watching => {
                if changed.is_err() {
                    watching = false;
                    continue;
                }
                target = *sizes.borrow_and_update();
                if let Err(e) = master.resize(target) {
                    tracing::debug!(error = %e, "resize failed");
                }
                changed_at = Instant::now();
                step = 0;
            }
            _ = sleep_until_opt(next_check) => {
                step += 1;
                let id = session_id.clone();
                let cached = inner_pid;
                let (pid, verdict) = crate::procfs::run(move || {
                    check_container_terminal(&id, cached, target)
                })
                .await
                .unwrap_or((None, TerminalCheck::NotVisible));
                inner_pid = pid;
                if verdict != TerminalCheck::Right {
                    tracing::trace!(?verdict, ?target, "container terminal size re-applied");
                    if let Some(group) = cli_group {
                        let _ = nix::sys::signal::killpg(group, Signal::SIGWINCH);
                    }
                }
            }
            _ = done.cancelled() => return,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TerminalCheck {
    /// The container's terminal already has the size.
    Right,
    /// It had another size; execd set it.
    Fixed,
    /// The session's process or its terminal is not visible from here.
    NotVisible,
}

fn check_container_terminal(
    session_id: &str,
    cached: Option<i32>,
    target: TermSize,
) -> (Option<i32>, TerminalCheck) {
    let terminal = cached
        .and_then(|pid| crate::pty::ForeignTerminal::of_process(pid).map(|t| (pid, t)))
        .or_else(|| {
            reaper::find_marked(session_id)
                .into_iter()
                .find_map(|pid| crate::pty::ForeignTerminal::of_process(pid).map(|t| (pid, t)))
        });
    let Some((pid, terminal)) = terminal else {
        return (None, TerminalCheck::NotVisible);
    };
    match terminal.size() {
        Ok(size) if size == target => (Some(pid), TerminalCheck::Right),
        _ => {
            let _ = terminal.resize(target);
            (Some(pid), TerminalCheck::Fixed)
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Ends the session when neither input nor output moved for `idle`.
async fn watch_idle(
    idle: Duration,
    stats: Arc<SessionStats>,
    control: Arc<SessionControl>,
    done: CancellationToken,
) {
    loop {
        let last = stats.last_activity_ms();
        let idle_ms = idle.as_millis() as i64;
        let wait_ms = (last + idle_ms - crate::registry::now_ms()).max(0);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(wait_ms as u64)) => {}
            _ = done.cancelled() => return,
        }
        if crate::registry::now_ms() - stats.last_activity_ms() >= idle_ms {
            control.end(EndReason::IdleTimeout);
            return;
        }
    }
}

enum Outcome {
    Exited(i32),
    Ended(EndReason),
    WaitFailed(std::io::Error),
}

struct Pump {
    id: String,
    child: Child,
    stdout: Option<Box<dyn AsyncRead + Send + Unpin>>,
    stderr: Option<Box<dyn AsyncRead + Send + Unpin>>,
    terminal: Option<Terminal>,
    events: mpsc::Sender<SessionEvent>,
    control: Arc<SessionControl>,
    stats: Arc<SessionStats>,
    config: Arc<LifecycleConfig>,
    container: Option<ContainerRef>,
    registration: Option<Registration>,
    done: CancellationToken,
    /// When the runtime CLI was spawned.
    started: std::time::Instant,
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
    async fn run(mut self) {
        let outcome = self.forward().await;
        let event = match outcome {
            Outcome::Exited(code) => SessionEvent::Exited { code },
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
                        Ok(status) => exit = Some((exit_code(status), Instant::now())),
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
            &self.id,
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
                &self.id,
                self.started,
                Duration::from_millis(300),
                polite,
                self.config.kill_grace,
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
