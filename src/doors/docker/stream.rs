//! One started exec: session output to the client (raw with a terminal,
//! else in Docker's 8-byte-header frames), client bytes to stdin, resizes
//! to the terminal, and the end recorded before the stream closes.
//!
//! Two ways out: a hijacked connection (`101 Switching Protocols`, both
//! directions) or a `200` response body (output only). A client that
//! half-closed its side (`docker exec` without `-i` does so at once) sends
//! nothing more, so a vanished one is noticed by writing: a zero-length
//! frame (or, raw, a zero-length write, which reports a connection the
//! transport's keepalive found dead) whenever output was quiet for
//! [`PROBE_EVERY`]. Writing to a closed peer fails by the second write.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use execd_session::{
    deliver, ClientEvent, EndReason, Flow, OutputStream, SessionEvent, SessionInput,
};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use super::table::Size;
use super::DockerState;
use crate::door_session::{record_end, Ending, Opened};
use crate::error_text::ClientText;
use crate::metrics::Metrics;

/// Quiet time after which the client is probed.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Exit code reported for a session execd ended (its processes were
/// killed): what a shell reports for SIGKILL.
pub const KILLED_EXIT_CODE: i32 = 137;
/// Bytes read from the client per chunk.
const READ_CHUNK: usize = 64 * 1024;
/// Chunks queued for a response body.
pub const BODY_DEPTH: usize = 4;

/// A running exec, ready to be connected to its client.
pub struct Started {
    pub id: String,
    pub opened: Opened,
    pub tty: bool,
    pub attach_stdin: bool,
    pub attach_stdout: bool,
    pub attach_stderr: bool,
    pub resizes: watch::Receiver<Option<Size>>,
    pub span: tracing::Span,
    pub state: Arc<DockerState>,
}

/// Where output goes.
enum Sink<W> {
    Conn(W),
    Body(mpsc::Sender<Bytes>),
}

impl<W: AsyncWrite + Unpin> Sink<W> {
    /// False once the client is gone.
    async fn send(&mut self, chunk: Bytes) -> bool {
        match self {
            Sink::Conn(w) => w.write_all(&chunk).await.is_ok() && w.flush().await.is_ok(),
            Sink::Body(tx) => tx.send(chunk).await.is_ok(),
        }
    }

    /// Writes nothing the client would see, to learn whether it is there.
    async fn probe(&mut self, tty: bool) -> bool {
        match (self, tty) {
            (sink, false) => sink.send(frame(1, &[])).await,
            (Sink::Conn(w), true) => w.write(&[]).await.is_ok(),
            // A raw body has no empty write; hyper notices on the next one.
            (Sink::Body(tx), true) => !tx.is_closed(),
        }
    }

    async fn close(self) {
        if let Sink::Conn(mut w) = self {
            let _ = w.shutdown().await;
        }
    }
}

/// Docker's stream frame: `[type, 0, 0, 0, size u32 BE]`, then the bytes.
pub fn frame(kind: u8, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(8 + data.len());
    out.put_u8(kind);
    out.put_bytes(0, 3);
    // Session output chunks are at most 256 KiB.
    out.put_u32(u32::try_from(data.len()).unwrap_or(u32::MAX));
    out.put_slice(data);
    out.freeze()
}

/// Serves the exec over the connection hijacked by `101`.
pub async fn over_connection(started: Started, upgrade: hyper::upgrade::OnUpgrade) {
    let span = started.span.clone();
    match upgrade.await {
        Ok(upgraded) => {
            let (reader, writer) = tokio::io::split(TokioIo::new(upgraded));
            run(started, Some(reader), Sink::Conn(writer)).await
        }
        Err(e) => {
            span.in_scope(|| tracing::info!(error = %e, "connection upgrade failed"));
            // Dropping the session ends it and kills its processes.
            started.state.table.finish(&started.id, None);
        }
    }
}

/// Serves the exec on a response body; returns the body's receiving end.
pub fn over_body(started: Started) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(BODY_DEPTH);
    tokio::spawn(run::<tokio::io::Empty, tokio::io::Sink>(
        started,
        None,
        Sink::Body(tx),
    ));
    rx
}

/// Which output the client asked for, and how it is sent.
#[derive(Clone, Copy)]
struct Wanted {
    /// Raw: a terminal has one stream and no frames.
    tty: bool,
    stdout: bool,
    stderr: bool,
}

impl Wanted {
    /// What to send for one output chunk, if the client wants it.
    fn chunk(self, stream: OutputStream, data: Bytes) -> Option<Bytes> {
        match (self.tty, stream) {
            (true, _) => Some(data),
            (false, OutputStream::Stdout) => self.stdout.then(|| frame(1, &data)),
            (false, OutputStream::Stderr) => self.stderr.then(|| frame(2, &data)),
        }
    }
}

/// The last words of a session that ended without an exit, where a
/// Docker client shows them: in the terminal, or on stderr.
fn failure_note(tty: bool, err: &execd_session::SessionError) -> Bytes {
    let err = ClientText(err);
    if tty {
        Bytes::from(format!("\r\nexecd: {err}\r\n"))
    } else {
        frame(2, format!("execd: {err}\n").as_bytes())
    }
}

async fn run<R, W>(started: Started, reader: Option<R>, mut sink: Sink<W>)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin,
{
    let Started {
        id,
        opened:
            Opened {
                session,
                active,
                requested_at,
                ..
            },
        tty,
        attach_stdin,
        attach_stdout,
        attach_stderr,
        resizes,
        span,
        state,
    } = started;
    let wanted = Wanted {
        tty,
        stdout: attach_stdout,
        stderr: attach_stderr,
    };
    let metrics = state.ctx.metrics.clone();
    let stats = session.stats.clone();
    {
        let _entered = span.enter();
        tokio::spawn(feed_input(
            session.input,
            reader,
            resizes,
            attach_stdin,
            metrics.clone(),
        ));
    }
    let mut events = session.output.into_receiver();
    let mut last_write = Instant::now();
    let mut probe = tokio::time::interval(PROBE_EVERY);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let record = |ending| record_end(&active, &span, requested_at, &stats, ending);
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = probe.tick() => {
                if last_write.elapsed() >= PROBE_EVERY && !sink.probe(tty).await {
                    break;
                }
                continue;
            }
        };
        match event {
            Some(SessionEvent::Output { stream, data }) => {
                metrics.record_output(stream, data.len());
                if let Some(chunk) = wanted.chunk(stream, data) {
                    if !sink.send(chunk).await {
                        break;
                    }
                    last_write = Instant::now();
                }
            }
            Some(SessionEvent::Exited { code }) => {
                record(Ending::Exited(code));
                // Before the close: clients inspect right after EOF.
                state.table.finish(&id, Some(code));
                sink.close().await;
                return;
            }
            Some(SessionEvent::Failed(err)) => {
                record(Ending::Failed(&err));
                state.table.finish(&id, Some(KILLED_EXIT_CODE));
                let _ = sink.send(failure_note(tty, &err)).await;
                sink.close().await;
                return;
            }
            None => {
                state.table.finish(&id, None);
                record(Ending::ClientGone);
                sink.close().await;
                return;
            }
        }
    }
    // The client is gone: dropping the events ends the session, which
    // kills its processes in the container; the metrics guard records it.
    state.table.finish(&id, None);
    record(Ending::ClientGone);
    drop(events);
}

/// Client bytes to stdin (a half-close is stdin EOF) and resizes to the
/// terminal, until the session is over.
async fn feed_input<R: AsyncRead + Unpin>(
    mut input: SessionInput,
    mut reader: Option<R>,
    mut resizes: watch::Receiver<Option<Size>>,
    attach_stdin: bool,
    metrics: Arc<Metrics>,
) {
    if !attach_stdin || reader.is_none() {
        input.close_stdin().await;
    }
    let mut buf = vec![0u8; READ_CHUNK];
    let mut resizing = true;
    loop {
        tokio::select! {
            biased;
            _ = input.finished() => return,
            changed = resizes.changed(), if resizing => {
                if changed.is_err() {
                    resizing = false;
                    continue;
                }
                let size = *resizes.borrow_and_update();
                if let Some((rows, cols)) = size {
                    let _ = deliver(&mut input, ClientEvent::Resize { rows, cols }).await;
                }
            }
            read = read_some(&mut reader, &mut buf) => match read {
                Ok(0) => {
                    tracing::debug!("client half-closed; stdin EOF");
                    reader = None;
                    let _ = deliver(&mut input, ClientEvent::StdinEof).await;
                }
                Ok(n) if attach_stdin => {
                    metrics.record_stdin(n);
                    let data = Bytes::copy_from_slice(&buf[..n]);
                    if deliver(&mut input, ClientEvent::Stdin(data)).await == Flow::Stop {
                        return;
                    }
                }
                // Docker drops what a client sends without AttachStdin.
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "client connection failed");
                    let _ = deliver(&mut input, ClientEvent::End(EndReason::ClientGone)).await;
                    return;
                }
            },
        }
    }
}

async fn read_some<R: AsyncRead + Unpin>(
    reader: &mut Option<R>,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    match reader {
        Some(r) => r.read(buf).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        assert_eq!(
            &frame(2, b"abc")[..],
            &[2, 0, 0, 0, 0, 0, 0, 3, b'a', b'b', b'c']
        );
        assert_eq!(&frame(1, b"")[..], &[1, 0, 0, 0, 0, 0, 0, 0]);
    }
}
