//! The connection layer under every door: accepting, TLS, protocol
//! detection and the bounds that keep a flood of connections or streams
//! from exhausting execd.
//!
//! Every listener (TCP or unix socket, any number of them) feeds the same
//! accept loop shape:
//!
//! - at most `max_connections` connections at once over all TCP
//!   listeners, and as many over all unix sockets ([`admission`]: the two
//!   pools, the per-address cap and the budget of connections that have
//!   not presented a token); at the cap the loop stops accepting (the
//!   kernel backlog holds the rest) instead of refusing, and accept errors
//!   such as EMFILE back off exponentially instead of spinning. A slot is
//!   held as long as the socket is open, upgraded connections included;
//! - a connection must complete its TLS handshake and make its first
//!   request within `handshake_timeout`, so idle sockets (or ones
//!   trickling a preface) cannot hold slots; later, a connection without
//!   an open request for `idle_timeout` ([`activity`]) is asked to go away
//!   (GOAWAY), so answering keepalive PINGs does not hold one either;
//! - hyper-util's `auto` builder tells HTTP/2 (gRPC) from HTTP/1.1 (the REST
//!   and WebSocket doors) per connection by its preface, with upgrades
//!   enabled for WebSocket and hijacked streams;
//! - on a unix socket, [`h2_authority`] makes requests whose `:authority`
//!   is the socket path acceptable to h2;
//! - under mutual TLS, every request of a connection carries its client
//!   certificate ([`ClientCertificate`], a request extension), so that a
//!   session's owner is the token *and* the certificate on every door.
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

pub(crate) mod activity;
pub(crate) mod admission;
pub(crate) mod h2_authority;
pub(crate) mod tls;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::ClientCertificate;
use crate::listener::{Bound, Listener};
use admission::{Admission, Standing, Ticket};

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
pub(crate) struct AcceptBackoff {
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
    pub(crate) fn reset(&mut self) {
        self.next = ACCEPT_BACKOFF_MIN;
    }

    /// Logs the failure and waits; false when `shutdown` fired meanwhile.
    pub(crate) async fn wait(
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
pub(crate) async fn acquire_slot(
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
pub(crate) struct TransportConfig {
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
    /// Per pool: TCP listeners together, unix sockets together.
    pub(crate) max_connections: usize,
    /// TCP connections per client address.
    pub(crate) max_connections_per_ip: usize,
    /// With exec tokens: TCP connections that have not presented one.
    pub(crate) max_unauthenticated_connections: usize,
    /// The tokens that prove a connection.
    pub(crate) credentials: admission::Credentials,
    /// GOAWAY after this long without an open request; `None`: never.
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) max_streams_per_connection: u32,
    pub(crate) handshake_timeout: Duration,
    pub(crate) keepalive_interval: Duration,
    pub(crate) keepalive_timeout: Duration,
}

/// What a request knows about its connection (a request extension).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Connection {
    /// Accepted on a unix socket (not reachable from a browser).
    pub(crate) unix: bool,
    /// The connection has proven itself (see [`admission`]): this request
    /// or an earlier one carried a valid token, or it came over a unix
    /// socket, or the server takes every client.
    pub(crate) authenticated: bool,
}

/// The service every connection gets: one router holding every door.
pub(crate) type AppService = axum::Router;

/// Starts an accept loop per listener. Connections are tracked by the
/// returned tracker (closed already: it becomes empty once every
/// connection is gone); loops stop accepting when `shutdown` fires.
pub(crate) fn serve(
    listeners: Vec<Listener>,
    app: AppService,
    config: TransportConfig,
    shutdown: CancellationToken,
) -> TaskTracker {
    let tracker = TaskTracker::new();
    let admission = Admission::new(
        config.max_connections,
        config.max_connections_per_ip,
        config.max_unauthenticated_connections,
        config.credentials.clone(),
    );
    for listener in listeners {
        tracker.spawn(accept_loop(
            listener,
            app.clone(),
            config.clone(),
            admission.clone(),
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

/// The next connection, with its peer's address when it has one.
async fn accept_one(listener: &Listener) -> std::io::Result<(Accepted, Option<IpAddr>)> {
    match &listener.0 {
        Bound::Tcp(l) => {
            let (stream, peer) = l.accept().await?;
            // Interactive sessions send keystrokes: no Nagle delay.
            let _ = stream.set_nodelay(true);
            let keepalive = socket2::TcpKeepalive::new()
                .with_time(KEEPALIVE_IDLE)
                .with_interval(KEEPALIVE_INTERVAL)
                .with_retries(KEEPALIVE_RETRIES);
            if let Err(e) = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
                tracing::debug!(error = %e, "TCP keepalive not set");
            }
            Ok((Accepted::Tcp(stream), Some(peer.ip())))
        }
        Bound::Unix(l, _) => Ok((Accepted::Unix(l.accept().await?.0), None)),
    }
}

async fn accept_loop(
    listener: Listener,
    app: AppService,
    config: TransportConfig,
    admission: Admission,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let mut backoff = AcceptBackoff::default();
    let what = listener.local_addr();
    let slots = admission
        .pool(matches!(listener.0, Bound::Unix(..)))
        .clone();
    loop {
        let Some(permit) = acquire_slot(&slots, &shutdown).await else {
            return;
        };
        let accepted = tokio::select! {
            accepted = accept_one(&listener) => accepted,
            _ = shutdown.cancelled() => return,
        };
        match accepted {
            Ok((conn, peer)) => {
                backoff.reset();
                let ticket = match admission.admit(permit, peer) {
                    Ok(ticket) => ticket,
                    Err(over) => {
                        // Closed at once (the client sees the connection
                        // end); at debug, since the client picks the rate.
                        tracing::debug!(error = %over, "connection refused");
                        continue;
                    }
                };
                let (app, config, shutdown) = (app.clone(), config.clone(), shutdown.clone());
                tracker.spawn(handle(conn, ticket, app, config, shutdown));
            }
            Err(e) => {
                if !backoff.wait(&e, &what, &shutdown).await {
                    return;
                }
            }
        }
    }
}

/// Serves one connection. Its ticket (slot and counts) travels inside the
/// I/O stream, so it is freed when the socket closes: at the end of this
/// function, or later if a door took the connection over (an upgrade).
async fn handle(
    conn: Accepted,
    ticket: Ticket,
    app: AppService,
    config: TransportConfig,
    shutdown: CancellationToken,
) {
    let standing = ticket.standing.clone();
    let serve = Serve {
        app,
        config: &config,
        shutdown,
        standing,
    };
    match (conn, config.tls.clone()) {
        (Accepted::Tcp(stream), None) => serve.io(Held::new(stream, ticket), false, None).await,
        (Accepted::Tcp(stream), Some(acceptor)) => {
            let handshake = acceptor.accept(Held::new(stream, ticket));
            match tokio::time::timeout(config.handshake_timeout, handshake).await {
                Ok(Ok(tls)) => {
                    let cert = client_certificate(tls.get_ref().1);
                    serve.io(tls, false, cert).await
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!("TLS handshake timed out"),
            }
        }
        // A unix socket is guarded by its file mode and never crosses a
        // network: it stays plaintext, like Docker's own socket next to a
        // TLS port.
        (Accepted::Unix(stream), _) => {
            let io = h2_authority::AuthorityFix::new(Held::new(stream, ticket));
            serve.io(io, true, None).await
        }
    }
}

/// The client certificate the peer presented in the handshake (the leaf;
/// only with `--tls-client-ca`, which makes one mandatory), as every
/// request of the connection carries it.
fn client_certificate(tls: &rustls::ServerConnection) -> Option<ClientCertificate> {
    let leaf = tls.peer_certificates()?.first()?;
    Some(ClientCertificate::from_der(leaf.as_ref()))
}

/// A connection's socket with its ticket: the slot is held as long as the
/// socket is.
struct Held<T> {
    inner: T,
    _ticket: Ticket,
}

impl<T> Held<T> {
    fn new(inner: T, ticket: Ticket) -> Self {
        Held {
            inner,
            _ticket: ticket,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Held<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

delegate_async_write!(Held);

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

/// What serving one connection needs besides its socket.
struct Serve<'a> {
    app: AppService,
    config: &'a TransportConfig,
    shutdown: CancellationToken,
    standing: Arc<Standing>,
}

/// Why a connection stopped being served before it ended by itself.
enum Stop {
    /// No request within the handshake timeout: dropped at once.
    Silent,
    /// Idle, or pushed out by newer unauthenticated connections: GOAWAY,
    /// then dropped if the client lingers.
    GoAway(&'static str),
    Shutdown,
}

impl Serve<'_> {
    /// Serves `io`; every request gets the [`Connection`] extension and,
    /// with mutual TLS, the connection's [`ClientCertificate`], which the
    /// doors derive a session's owner from.
    async fn io<I>(self, io: I, unix: bool, cert: Option<ClientCertificate>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Serve {
            app,
            config,
            shutdown,
            standing,
        } = self;
        let builder = builder(config);
        let heard = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let activity = activity::Activity::default();
        let seen = heard.clone();
        let (requests, proof) = (activity.clone(), standing.clone());
        let service = tower::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            seen.store(true, std::sync::atomic::Ordering::Relaxed);
            let authenticated = proof.note_request(req.headers());
            req.extensions_mut().insert(Connection {
                unix,
                authenticated,
            });
            // Every request of the connection, HTTP/1.1 or HTTP/2: the
            // handshake vouched for all of them.
            if let Some(cert) = cert {
                req.extensions_mut().insert(cert);
            }
            let open = requests.open();
            let (app, proof) = (app.clone(), proof.clone());
            async move {
                let response = tower::ServiceExt::oneshot(app, req).await?;
                // Doors upgrade only what passed their credential check.
                if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                    proof.prove();
                }
                Ok::<_, std::convert::Infallible>(
                    response
                        .map(|body| axum::body::Body::new(activity::TrackedBody::new(body, open))),
                )
            }
        });
        let service = TowerToHyperService::new(service);
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(conn);
        // A connection that has not made a request by the handshake timeout
        // is dropped: otherwise idle sockets (or ones trickling a preface)
        // would hold connection slots forever. Clients reconnect when they
        // need to.
        let silent = async {
            tokio::time::sleep(config.handshake_timeout).await;
            if heard.load(std::sync::atomic::Ordering::Relaxed) {
                std::future::pending::<()>().await;
            }
        };
        // A connection that proved itself just as it was pushed out stays:
        // its place among the unproven is already gone.
        let evicted = async {
            standing.evicted().cancelled().await;
            if standing.is_proven() {
                std::future::pending::<()>().await;
            }
        };
        let stop = tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = silent => Stop::Silent,
            _ = activity.idle_for(config.idle_timeout) => Stop::GoAway("idle"),
            _ = evicted => Stop::GoAway("unauthenticated, making room"),
            _ = shutdown.cancelled() => Stop::Shutdown,
        };
        let result = match stop {
            Stop::Silent => {
                tracing::debug!("connection made no request within the handshake timeout");
                return;
            }
            Stop::GoAway(why) => {
                tracing::debug!(why, "asking the connection to go away");
                conn.as_mut().graceful_shutdown();
                // A client has as long to leave as it had to arrive; what
                // is still open after that is cut.
                match tokio::time::timeout(config.handshake_timeout, conn).await {
                    Ok(r) => r,
                    Err(_) => return,
                }
            }
            Stop::Shutdown => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
}
