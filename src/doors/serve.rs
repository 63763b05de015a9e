//! The one shape of a streaming door: a reader that maps the client's
//! frames to [`ClientEvent`]s ([`WireReader`]), a writer that maps the
//! session's output and end to frames ([`WireWriter`]), and between them
//! the shared loop ([`serve`]): it delivers what the reader got through
//! the session core's client rules ([`DoorInput::deliver`]), hands the
//! writer what the session said, and records the end once
//! ([`DoorSession::finish`]) before the writer tells the client.
//!
//! Reader and writer run as two futures, so input never waits for output
//! or the other way round; they tell each other only that the client is
//! gone (the reader saw its transport close) and that the writer is done
//! (a WebSocket reader then waits for the client's close reply).
//!
//! The gRPC door runs the two halves ([`read_client`], [`write_events`])
//! apart, because tonic pulls its response (see [`super::grpc`]); CRI
//! `ExecSync` has no frames at all and uses [`DoorSession`] directly.
//! The WebSocket doors answer their upgrade with [`websocket_response`].

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::response::Response;
use bytes::Bytes;
use execd_session::{ClientEvent, Flow, OutputStream};
use http::HeaderValue;
use tokio_util::sync::CancellationToken;

use super::session::{DoorInput, DoorSession, End, Ending, Next};

/// The 101 of a WebSocket door, once its session has started: messages
/// and frames bounded by `--max-message-size`, the socket handed to
/// `serve`. If the upgrade never completes `serve` is dropped with the
/// session in it, which ends the session like a client leaving.
pub(crate) fn websocket_response<F, Fut>(
    ws: WebSocketUpgrade,
    max_message_size: usize,
    serve: F,
) -> Response
where
    F: FnOnce(WebSocket) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut response = ws
        .max_message_size(max_message_size)
        .max_frame_size(max_message_size)
        .on_upgrade(serve);
    // kube-rs and others compare this header exactly.
    response.headers_mut().insert(
        http::header::CONNECTION,
        HeaderValue::from_static("Upgrade"),
    );
    response
}

/// What a reader got from its client.
pub(crate) enum Inbound {
    /// Something for the session; reading goes on.
    Event(ClientEvent),
    /// The client's input ended with this (a gRPC half-close or reset): it
    /// is delivered and nothing more is read.
    Last(ClientEvent),
    /// The client closed its transport, or broke it (`too_big`: it sent a
    /// message over the size limit). The writer stops too and the session
    /// ends as its client left.
    Gone { too_big: bool },
}

/// How long a door reads its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadUntil {
    /// Until the session takes no more input; then the client's side is
    /// simply no longer read (byte streams, gRPC).
    SessionOver,
    /// Until the writer sent its last frame, and then
    /// [`WireReader::close`] (a WebSocket answers the close handshake).
    WriterDone,
}

/// A door's client side: frames in, session events out.
pub(crate) trait WireReader: Send {
    const UNTIL: ReadUntil;

    /// True when no stdin will ever come: the process sees EOF at once.
    fn sends_no_stdin(&self) -> bool {
        false
    }

    /// The next frame that means something to the session. Cancel-safe:
    /// the loop drops it when the reading is over.
    fn next(&mut self) -> impl Future<Output = Inbound> + Send;

    /// After the writer is done ([`ReadUntil::WriterDone`] only).
    fn close(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// A door's session side: output and the end, in frames. Each `false`
/// means the client is gone.
pub(crate) trait WireWriter: Send {
    /// Before any output: a greeting, if the protocol has one.
    fn begin(&mut self) -> impl Future<Output = bool> + Send {
        async { true }
    }

    fn output(&mut self, stream: OutputStream, data: Bytes) -> impl Future<Output = bool> + Send;

    /// The session's end (already recorded), and the transport's close.
    fn end(&mut self, end: End) -> impl Future<Output = ()> + Send;

    /// The client is gone: what is left to say or do (a WebSocket's 1009
    /// close when it sent a message over the limit).
    fn gone(&mut self, too_big: bool) -> impl Future<Output = ()> + Send {
        let _ = too_big;
        async {}
    }

    /// For transports where a vanished client is only noticed by writing:
    /// how often [`WireWriter::probe`] runs.
    fn probe_every(&self) -> Option<Duration> {
        None
    }

    fn probe(&mut self) -> impl Future<Output = bool> + Send {
        async { true }
    }
}

/// What the reader and the writer tell each other.
#[derive(Clone, Default)]
pub(crate) struct Signals {
    /// The reader found the client gone.
    gone: CancellationToken,
    too_big: Arc<AtomicBool>,
    /// The writer sent its last frame.
    writer_done: CancellationToken,
}

impl Signals {
    fn client_gone(&self, too_big: bool) {
        if too_big {
            self.too_big.store(true, Ordering::Relaxed);
        }
        self.gone.cancel();
    }
}

/// Serves one session over `reader` and `writer` until the end was
/// delivered (or the client left) and the reader is done.
pub(crate) async fn serve<R: WireReader, W: WireWriter>(
    session: DoorSession,
    input: DoorInput,
    reader: R,
    writer: W,
) {
    let signals = Signals::default();
    let write = async {
        write_events(writer, session, &signals).await;
        signals.writer_done.cancel();
    };
    tokio::join!(read_client(reader, input, signals.clone()), write);
}

/// The reader half: client events into the session until
/// [`WireReader::UNTIL`], the client's input ends, or the client is gone.
pub(crate) async fn read_client<R: WireReader>(
    mut reader: R,
    mut input: DoorInput,
    signals: Signals,
) {
    if reader.sends_no_stdin() {
        input.close_stdin().await;
    }
    let session_over = R::UNTIL == ReadUntil::SessionOver;
    loop {
        let next = tokio::select! {
            biased;
            _ = signals.writer_done.cancelled(), if !session_over => {
                reader.close().await;
                return;
            }
            _ = input.finished(), if session_over => return,
            _ = signals.gone.cancelled() => return,
            next = reader.next() => next,
        };
        match next {
            Inbound::Event(event) => {
                // Backpressure: while the process does not read, neither
                // do we. A WebSocket reader reads on after the session is
                // over, until its close handshake is done.
                if input.deliver(event).await == Flow::Stop && session_over {
                    return;
                }
            }
            Inbound::Last(event) => {
                let _ = input.deliver(event).await;
                return;
            }
            Inbound::Gone { too_big } => {
                if !signals.writer_done.is_cancelled() {
                    if !too_big {
                        tracing::debug!("client closed the stream before the end");
                    }
                    signals.client_gone(too_big);
                }
                return;
            }
        }
    }
}

/// The writer half: the session's output to the client, then its end,
/// recorded first. A client that leaves first ends the session (or, with
/// reattach on, detaches it): its events are dropped.
pub(crate) async fn write_events<W: WireWriter>(
    mut writer: W,
    mut session: DoorSession,
    signals: &Signals,
) {
    if !writer.begin().await {
        return client_left(writer, session, false).await;
    }
    let mut probe = writer.probe_every().map(|every| {
        let mut probe = tokio::time::interval(every);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        probe
    });
    loop {
        let next = tokio::select! {
            biased;
            _ = signals.gone.cancelled() => {
                let too_big = signals.too_big.load(Ordering::Relaxed);
                return client_left(writer, session, too_big).await;
            }
            // Before the events: a steady flow of output the client did
            // not ask for must not keep the probe from running.
            _ = tick(probe.as_mut()) => {
                if writer.probe().await {
                    continue;
                }
                return client_left(writer, session, false).await;
            }
            next = session.next() => next,
        };
        match next {
            Next::Output(stream, data) => {
                if !writer.output(stream, data).await {
                    return client_left(writer, session, false).await;
                }
            }
            Next::End(end) => {
                // Recorded before the client hears it: whoever saw the end
                // finds it counted.
                session.finish(end.ending());
                return writer.end(end).await;
            }
        }
    }
}

async fn client_left<W: WireWriter>(mut writer: W, session: DoorSession, too_big: bool) {
    writer.gone(too_big).await;
    session.finish(Ending::ClientGone);
}

async fn tick(probe: Option<&mut tokio::time::Interval>) {
    match probe {
        Some(probe) => {
            probe.tick().await;
        }
        None => std::future::pending().await,
    }
}
