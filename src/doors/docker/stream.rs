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
//!
//! On a hijacked connection the first output waits [`FIRST_OUTPUT_HOLD`]
//! after the `101`, so that it never reaches the client in the same read
//! as the `101`'s headers (see there why).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use execd_session::{ClientEvent, EndReason, OutputStream, SessionError};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use super::table::Size;
use super::DockerState;
use crate::doors::serve::{Inbound, ReadUntil, WireReader, WireWriter};
use crate::doors::session::{DoorInput, DoorSession, End};
use crate::error_text::ClientText;

/// Quiet time after which the client is probed.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Exit code reported for a session execd ended (its processes were
/// killed): what a shell reports for SIGKILL.
const KILLED_EXIT_CODE: i32 = 137;
/// Bytes read from the client per chunk.
const READ_CHUNK: usize = 64 * 1024;
/// Chunks queued for a response body.
const BODY_DEPTH: usize = 4;
/// How long output waits after the `101` has gone out, on a hijacked
/// connection only.
///
/// docker-py reads the `101` through http.client's buffered reader and
/// then, for `exec_run`, `exec_start(socket=False)`, `demux` and `attach`
/// (`_read_from_socket`, `_get_raw_response_socket`), reads the raw socket
/// *beneath* that buffer: whatever arrived in the same read as the headers
/// stays in the buffer and is lost. The client says nothing once it has
/// read the headers, so no signal can replace a wait here. dockerd never
/// sends that early because it starts the exec only after writing its
/// `101` (its runtime takes some 30 ms or more to start a process); execd
/// starts the session first, so that a refusal is still an HTTP error, and
/// with a fast backend (the OCI runtime: a few ms) output is ready at once.
/// The wait runs from the moment the `101` was flushed, so later output is
/// not delayed at all; held output waits in the session's bounded queue,
/// in order, with the end behind it. The docker CLI (Go) reads the hijacked
/// connection through the same `bufio.Reader` it read the `101` with and
/// needs no wait; a response body (no upgrade) has HTTP's own framing.
/// 60 ms is the top of the gap dockerd leaves (measured 29–62 ms): a
/// docker-py that is not scheduled within it loses bytes against dockerd
/// too (docker-py #3332); 30 ms still lost one exec in 60 on a loaded
/// 2-core machine.
const FIRST_OUTPUT_HOLD: Duration = Duration::from_millis(60);

/// A running exec, ready to be connected to its client.
pub(crate) struct Started {
    pub(crate) id: String,
    pub(crate) session: DoorSession,
    pub(crate) input: DoorInput,
    pub(crate) tty: bool,
    pub(crate) attach_stdin: bool,
    pub(crate) attach_stdout: bool,
    pub(crate) attach_stderr: bool,
    pub(crate) resizes: watch::Receiver<Option<Size>>,
    pub(crate) state: Arc<DockerState>,
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
pub(crate) fn frame(kind: u8, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(8 + data.len());
    out.put_u8(kind);
    out.put_bytes(0, 3);
    // Session output chunks are at most 256 KiB.
    out.put_u32(u32::try_from(data.len()).unwrap_or(u32::MAX));
    out.put_slice(data);
    out.freeze()
}

/// Serves the exec over the connection hijacked by `101`.
pub(crate) async fn over_connection(started: Started, upgrade: hyper::upgrade::OnUpgrade) {
    match upgrade.await {
        Ok(upgraded) => {
            // hyper hands the connection over once the 101 is flushed.
            let hold_until = tokio::time::Instant::now() + FIRST_OUTPUT_HOLD;
            let (reader, writer) = tokio::io::split(TokioIo::new(upgraded));
            run(started, Some(reader), Sink::Conn(writer), Some(hold_until)).await
        }
        Err(e) => {
            let span = started.session.span().clone();
            span.in_scope(|| tracing::info!(error = %e, "connection upgrade failed"));
            // Dropping the session ends it and kills its processes.
            started.state.table.finish(&started.id, None);
        }
    }
}

/// Serves the exec on a response body; returns the body's receiving end.
pub(crate) fn over_body(started: Started) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(BODY_DEPTH);
    let span = started.session.span().clone();
    tokio::spawn(
        run::<tokio::io::Empty, tokio::io::Sink>(started, None, Sink::Body(tx), None)
            .instrument(span),
    );
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
fn failure_note(tty: bool, err: &SessionError) -> Bytes {
    let err = ClientText(err);
    if tty {
        Bytes::from(format!("\r\nexecd: {err}\r\n"))
    } else {
        frame(2, format!("execd: {err}\n").as_bytes())
    }
}

/// Serves the exec; `hold_until`: no output before then.
async fn run<R, W>(
    started: Started,
    reader: Option<R>,
    sink: Sink<W>,
    hold_until: Option<tokio::time::Instant>,
) where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    let Started {
        id,
        session,
        input,
        tty,
        attach_stdin,
        attach_stdout,
        attach_stderr,
        resizes,
        state,
    } = started;
    let reader = Reader {
        reader,
        resizes: Some(resizes),
        attach_stdin,
        buf: vec![0u8; READ_CHUNK],
    };
    let writer = Writer {
        sink: Some(sink),
        wanted: Wanted {
            tty,
            stdout: attach_stdout,
            stderr: attach_stderr,
        },
        last_write: Instant::now(),
        hold_until,
        id,
        state,
    };
    crate::doors::serve::serve(session, input, reader, writer).await;
}

/// Client bytes to stdin (a half-close is stdin EOF) and resizes (from
/// `POST /exec/{id}/resize`) to the terminal, until the session is over.
struct Reader<R> {
    /// `None` once the client half-closed, or for a response body.
    reader: Option<R>,
    /// `None` once the exec table dropped its end.
    resizes: Option<watch::Receiver<Option<Size>>>,
    attach_stdin: bool,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin + Send> WireReader for Reader<R> {
    const UNTIL: ReadUntil = ReadUntil::SessionOver;

    fn sends_no_stdin(&self) -> bool {
        !self.attach_stdin || self.reader.is_none()
    }

    async fn next(&mut self) -> Inbound {
        loop {
            tokio::select! {
                biased;
                size = next_size(&mut self.resizes) => match size {
                    Some(Some((rows, cols))) => {
                        return Inbound::Event(ClientEvent::Resize { rows, cols })
                    }
                    Some(None) => {}
                    None => self.resizes = None,
                },
                read = read_some(&mut self.reader, &mut self.buf) => match read {
                    Ok(0) => {
                        tracing::debug!("client half-closed; stdin EOF");
                        self.reader = None;
                        return Inbound::Event(ClientEvent::StdinEof);
                    }
                    Ok(n) if self.attach_stdin => {
                        let data = Bytes::copy_from_slice(&self.buf[..n]);
                        return Inbound::Event(ClientEvent::Stdin(data));
                    }
                    // Docker drops what a client sends without AttachStdin.
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "client connection failed");
                        return Inbound::Last(ClientEvent::End(EndReason::ClientGone));
                    }
                },
            }
        }
    }
}

/// The next size set through the exec table: `None` once it is gone.
async fn next_size(resizes: &mut Option<watch::Receiver<Option<Size>>>) -> Option<Option<Size>> {
    let Some(rx) = resizes else {
        return std::future::pending().await;
    };
    match rx.changed().await {
        Ok(()) => Some(*rx.borrow_and_update()),
        Err(_) => None,
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

/// Output to the client, the exec's end in the table before the stream
/// closes (clients inspect right after EOF), and probes while quiet.
struct Writer<W> {
    /// Taken by the close.
    sink: Option<Sink<W>>,
    wanted: Wanted,
    last_write: Instant,
    /// [`FIRST_OUTPUT_HOLD`]'s end, on a hijacked connection.
    hold_until: Option<tokio::time::Instant>,
    id: String,
    state: Arc<DockerState>,
}

impl<W: AsyncWrite + Unpin + Send> WireWriter for Writer<W> {
    async fn begin(&mut self) -> bool {
        if let Some(until) = self.hold_until.take() {
            tokio::time::sleep_until(until).await;
        }
        true
    }

    async fn output(&mut self, stream: OutputStream, data: Bytes) -> bool {
        let (Some(chunk), Some(sink)) = (self.wanted.chunk(stream, data), self.sink.as_mut())
        else {
            return true;
        };
        if !sink.send(chunk).await {
            return false;
        }
        self.last_write = Instant::now();
        true
    }

    async fn end(&mut self, end: End) {
        let table = &self.state.table;
        let note = match &end {
            End::Exited(code) => {
                table.finish(&self.id, Some(*code));
                None
            }
            End::Failed(err) => {
                table.finish(&self.id, Some(KILLED_EXIT_CODE));
                Some(failure_note(self.wanted.tty, err))
            }
            End::Lost(_) => {
                table.finish(&self.id, None);
                None
            }
        };
        if let Some(mut sink) = self.sink.take() {
            if let Some(note) = note {
                let _ = sink.send(note).await;
            }
            sink.close().await;
        }
    }

    async fn gone(&mut self, _too_big: bool) {
        // Dropping the session's events then ends it, which kills its
        // processes in the container.
        self.state.table.finish(&self.id, None);
    }

    fn probe_every(&self) -> Option<Duration> {
        Some(PROBE_EVERY)
    }

    async fn probe(&mut self) -> bool {
        match self.sink.as_mut() {
            Some(sink) if self.last_write.elapsed() >= PROBE_EVERY => {
                sink.probe(self.wanted.tty).await
            }
            _ => true,
        }
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
