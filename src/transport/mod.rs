//! The connection layer under every door: accepting, TLS, protocol
//! detection and the bounds that keep a flood of connections or streams
//! from exhausting execd.
//!
//! Every listener (TCP or unix socket, any number of them) feeds the same
//! accept loop shape:
//!
//! - at most `max_connections` connections at once, across all listeners;
//!   the loop stops accepting (the kernel backlog holds the rest) instead
//!   of refusing, and accept errors such as EMFILE back off exponentially
//!   instead of spinning;
//! - a connection must complete its TLS handshake and make its first
//!   request within `handshake_timeout`, so idle sockets (or ones
//!   trickling a preface) cannot hold slots;
//! - hyper-util's `auto` builder tells HTTP/2 (gRPC) from HTTP/1.1 (the REST
//!   and WebSocket doors) per connection by its preface, with upgrades
//!   enabled for WebSocket and hijacked streams;
//! - on a unix socket, [`h2_authority`] makes requests whose `:authority`
//!   is the socket path acceptable to h2.
//!
//! On shutdown every connection is asked to finish gracefully (GOAWAY);
//! the caller bounds how long it waits through the returned tracker.

/// The I/O wrappers below only look at what is read; writes go straight
/// to the wrapped stream (field `inner`).
macro_rules! delegate_async_write {
    ($wrapper:ident) => {
        impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $wrapper<T> {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
            }
        }
    };
}

pub mod h2_authority;
pub mod tls;

use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::listener::Listener;

/// HTTP/2 flow-control windows: large enough that one stream can move
/// hundreds of MiB/s on loopback, small enough to bound per-stream buffering.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;
/// Largest HTTP/2 frame execd accepts; clients that accept large frames too
/// get output in fewer, larger frames.
const MAX_FRAME: u32 = 1024 * 1024;
/// Streams a client may open and reset before execd has accepted them
/// (the "rapid reset" bound), and streams execd may reset for protocol
/// errors, per connection.
const MAX_PENDING_RESETS: usize = 32;
const MAX_LOCAL_RESETS: usize = 1024;
/// Bound on one request's headers (HTTP/2 header list, HTTP/1 header count).
const MAX_HEADER_LIST: u32 = 64 * 1024;
const MAX_HTTP1_HEADERS: usize = 100;
/// TCP keepalive: a peer that vanished (process killed after it
/// half-closed, host gone) is noticed within about idle + interval ×
/// retries even when no byte is due in either direction, which hijacked
/// Docker streams and quiet sessions rely on.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(2);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_RETRIES: u32 = 2;
/// Accept-error backoff: first wait and cap.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Waits after failed accepts, doubling up to a second: EMFILE, ENFILE or
/// ENOBUFS retried at once would spin a core, and waiting lets sessions
/// end and free files. Shared by every accept loop (the metrics one too).
pub struct AcceptBackoff {
    next: Duration,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        AcceptBackoff {
            next: ACCEPT_BACKOFF_MIN,
        }
    }
}

impl AcceptBackoff {
    /// An accept succeeded: the next failure waits the minimum again.
    pub fn reset(&mut self) {
        self.next = ACCEPT_BACKOFF_MIN;
    }

    /// Logs the failure and waits; false when `shutdown` fired meanwhile.
    pub async fn wait(
        &mut self,
        error: &std::io::Error,
        what: &str,
        shutdown: &CancellationToken,
    ) -> bool {
        tracing::warn!(%error, retry_in_ms = self.next.as_millis() as u64, "{what}: accept failed");
        let waited = tokio::select! {
            _ = tokio::time::sleep(self.next) => true,
            _ = shutdown.cancelled() => false,
        };
        self.next = (self.next * 2).min(ACCEPT_BACKOFF_MAX);
        waited
    }
}

/// A connection slot from `slots`, waiting while all are taken; `None` once
/// `shutdown` fired (or the slots were closed). Every accept loop takes one
/// before it accepts, so excess connections wait in the backlog.
pub async fn acquire_slot(
    slots: &std::sync::Arc<Semaphore>,
    shutdown: &CancellationToken,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    tokio::select! {
        permit = slots.clone().acquire_owned() => permit.ok(),
        _ = shutdown.cancelled() => None,
    }
}

/// Connection-level settings shared by every listener.
#[derive(Clone)]
pub struct TransportConfig {
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub max_connections: usize,
    pub max_streams_per_connection: u32,
    pub handshake_timeout: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
}

/// What a request knows about its connection (a request extension).
#[derive(Debug, Clone, Copy)]
pub struct Connection {
    /// Accepted on a unix socket (not reachable from a browser).
    pub unix: bool,
}

/// The service every connection gets: one router holding every door.
pub type AppService = axum::Router;

/// Starts an accept loop per listener. Connections are tracked by the
/// returned tracker (closed already: it becomes empty once every
/// connection is gone); loops stop accepting when `shutdown` fires.
pub fn serve(
    listeners: Vec<Listener>,
    app: AppService,
    config: TransportConfig,
    shutdown: CancellationToken,
) -> TaskTracker {
    let tracker = TaskTracker::new();
    let slots = std::sync::Arc::new(Semaphore::new(config.max_connections.max(1)));
    for listener in listeners {
        tracker.spawn(accept_loop(
            listener,
            app.clone(),
            config.clone(),
            slots.clone(),
            tracker.clone(),
            shutdown.clone(),
        ));
    }
    tracker.close();
    tracker
}

/// An accepted connection before TLS and protocol detection.
enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept_one(listener: &Listener) -> std::io::Result<Accepted> {
    match listener {
        Listener::Tcp(l) => {
            let (stream, _) = l.accept().await?;
            // Interactive sessions send keystrokes: no Nagle delay.
            let _ = stream.set_nodelay(true);
            let keepalive = socket2::TcpKeepalive::new()
                .with_time(KEEPALIVE_IDLE)
                .with_interval(KEEPALIVE_INTERVAL)
                .with_retries(KEEPALIVE_RETRIES);
            if let Err(e) = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
                tracing::debug!(error = %e, "TCP keepalive not set");
            }
            Ok(Accepted::Tcp(stream))
        }
        Listener::Unix(l, _) => Ok(Accepted::Unix(l.accept().await?.0)),
    }
}

async fn accept_loop(
    listener: Listener,
    app: AppService,
    config: TransportConfig,
    slots: std::sync::Arc<Semaphore>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let mut backoff = AcceptBackoff::default();
    let what = listener.local_addr();
    loop {
        let Some(permit) = acquire_slot(&slots, &shutdown).await else {
            return;
        };
        let accepted = tokio::select! {
            accepted = accept_one(&listener) => accepted,
            _ = shutdown.cancelled() => return,
        };
        match accepted {
            Ok(conn) => {
                backoff.reset();
                let (app, config, shutdown) = (app.clone(), config.clone(), shutdown.clone());
                tracker.spawn(async move {
                    handle(conn, app, config, shutdown).await;
                    drop(permit);
                });
            }
            Err(e) => {
                if !backoff.wait(&e, &what, &shutdown).await {
                    return;
                }
            }
        }
    }
}

async fn handle(
    conn: Accepted,
    app: AppService,
    config: TransportConfig,
    shutdown: CancellationToken,
) {
    match (conn, config.tls.clone()) {
        (Accepted::Tcp(stream), None) => serve_io(stream, app, &config, shutdown, false).await,
        (Accepted::Tcp(stream), Some(acceptor)) => {
            let handshake = acceptor.accept(stream);
            match tokio::time::timeout(config.handshake_timeout, handshake).await {
                Ok(Ok(tls)) => serve_io(tls, app, &config, shutdown, false).await,
                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!("TLS handshake timed out"),
            }
        }
        // A unix socket is guarded by its file mode and never crosses a
        // network: it stays plaintext, like Docker's own socket next to a
        // TLS port.
        (Accepted::Unix(stream), _) => {
            let io = h2_authority::AuthorityFix::new(stream);
            serve_io(io, app, &config, shutdown, true).await
        }
    }
}

fn builder(config: &TransportConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.handshake_timeout)
        .max_headers(MAX_HTTP1_HEADERS)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(config.keepalive_interval)
        .keep_alive_timeout(config.keepalive_timeout)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_concurrent_streams(config.max_streams_per_connection)
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .max_local_error_reset_streams(MAX_LOCAL_RESETS)
        .max_header_list_size(MAX_HEADER_LIST);
    builder
}

async fn serve_io<I>(
    io: I,
    app: AppService,
    config: &TransportConfig,
    shutdown: CancellationToken,
    unix: bool,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let builder = builder(config);
    let heard = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = heard.clone();
    let service = tower::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        seen.store(true, std::sync::atomic::Ordering::Relaxed);
        req.extensions_mut().insert(Connection { unix });
        tower::ServiceExt::oneshot(app.clone(), req)
    });
    let service = TowerToHyperService::new(service);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    // A connection that has not made a request by the handshake timeout is
    // dropped: otherwise idle sockets (or ones trickling a preface) would
    // hold connection slots forever. Clients reconnect when they need to.
    let silent = async {
        tokio::time::sleep(config.handshake_timeout).await;
        if heard.load(std::sync::atomic::Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    };
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = silent => {
            tracing::debug!("connection made no request within the handshake timeout");
            return;
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
