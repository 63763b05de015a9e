//! Prometheus metrics, served at `/metrics` on `--metrics-listen`.
//!
//! Sessions are recorded for every door alike, by `doors::session`: the
//! start (started, start latency, active), every output/input chunk
//! (bytes), and the end (ended by outcome, exit code class). An RAII
//! [`ActiveSession`] makes sure a session that vanishes without a recorded
//! end (client gone) still leaves the gauge and counts right.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use execd_session::{Door, EndReason, OutputStream, SessionError};
use http_body_util::Full;
use hyper::body::Bytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SessionLabels {
    /// The front door: grpc, cri, kube, docker.
    pub(crate) door: String,
    pub(crate) tty: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabels {
    pub(crate) door: String,
    pub(crate) outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StreamLabels {
    pub(crate) stream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ExitClassLabels {
    pub(crate) class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RefusalLabels {
    /// Which part refused: a door (grpc, kube, docker, web, terminal), or
    /// `guard` for the checks in front of every route.
    pub(crate) door: String,
    pub(crate) reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct FailureLabels {
    pub(crate) kind: String,
}

/// All of execd's metrics and the registry that exposes them.
pub(crate) struct Metrics {
    registry: Registry,
    sessions_active: Family<SessionLabels, Gauge>,
    sessions_started: Family<SessionLabels, Counter>,
    sessions_ended: Family<OutcomeLabels, Counter>,
    start_latency: Histogram,
    /// Handles into the `bytes` family, made once: these are bumped per
    /// chunk, so no label allocation or family lookup on that path.
    bytes_stdin: Counter,
    bytes_stdout: Counter,
    bytes_stderr: Counter,
    exit_codes: Family<ExitClassLabels, Counter>,
    runtime_failures: Family<FailureLabels, Counter>,
    /// CRI streaming: URLs handed out by Exec/Attach and not yet used or
    /// expired (see [`Metrics::stream_tokens_pending`]).
    stream_tokens_pending: Gauge,
    /// `/proc` worker threads abandoned inside a stuck read (read at
    /// scrape time).
    procfs_stuck_workers: Gauge,
    /// HTTP requests answered with a refusal before any session: unserved
    /// paths, refused upgrades, guard refusals, auth failures.
    requests_refused: Family<RefusalLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn session_labels(door: Door, tty: bool) -> SessionLabels {
    SessionLabels {
        door: door.as_str().to_string(),
        tty: tty.to_string(),
    }
}

/// Exit codes by class: success, failure, not executable, not found, signal.
pub(crate) fn exit_class(code: i32) -> &'static str {
    match code {
        0 => "0",
        126 => "126",
        127 => "127",
        c if c > 128 => "signal",
        _ => "1-125",
    }
}

fn byte_counter(family: &Family<StreamLabels, Counter>, stream: &str) -> Counter {
    family
        .get_or_create(&StreamLabels {
            stream: stream.to_string(),
        })
        .clone()
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("execd");
        let sessions_active = Family::<SessionLabels, Gauge>::default();
        registry.register(
            "sessions_active",
            "Sessions currently running",
            sessions_active.clone(),
        );
        let sessions_started = Family::<SessionLabels, Counter>::default();
        registry.register(
            "sessions_started",
            "Sessions that reached STARTED",
            sessions_started.clone(),
        );
        let sessions_ended = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "sessions_ended",
            "Sessions that ended (refused ones included), by outcome",
            sessions_ended.clone(),
        );
        let start_latency = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        registry.register(
            "session_start_latency_seconds",
            "Time from start_request to STARTED",
            start_latency.clone(),
        );
        let bytes = Family::<StreamLabels, Counter>::default();
        registry.register(
            "bytes",
            "Bytes moved, by stream (stdin, stdout, stderr)",
            bytes.clone(),
        );
        let exit_codes = Family::<ExitClassLabels, Counter>::default();
        registry.register(
            "exit_codes",
            "Exit codes of EXITED sessions, by class",
            exit_codes.clone(),
        );
        let runtime_failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "runtime_failures",
            "Failures of the runtime CLI or engine, by kind",
            runtime_failures.clone(),
        );
        // CRI streaming (the kube door).
        let stream_tokens_pending = Gauge::default();
        registry.register(
            "stream_tokens_pending",
            "CRI Exec/Attach streaming URLs issued and not yet used or expired",
            stream_tokens_pending.clone(),
        );
        let requests_refused = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "requests_refused",
            "HTTP requests refused before any session (unserved path, refused upgrade, guard, auth), by door and reason",
            requests_refused.clone(),
        );
        let procfs_stuck_workers = Gauge::default();
        registry.register(
            "procfs_stuck_workers",
            "Threads abandoned inside a /proc read that never returned (replaced by fresh ones)",
            procfs_stuck_workers.clone(),
        );
        Metrics {
            procfs_stuck_workers,
            stream_tokens_pending,
            requests_refused,
            registry,
            sessions_active,
            sessions_started,
            sessions_ended,
            start_latency,
            bytes_stdin: byte_counter(&bytes, "stdin"),
            bytes_stdout: byte_counter(&bytes, "stdout"),
            bytes_stderr: byte_counter(&bytes, "stderr"),
            exit_codes,
            runtime_failures,
        }
    }

    /// The OpenMetrics text exposition.
    pub(crate) fn encode(&self) -> String {
        let stuck = execd_session::procfs_stuck_workers();
        self.procfs_stuck_workers
            .set(i64::try_from(stuck).unwrap_or(i64::MAX));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub(crate) fn record_stdin(&self, n: usize) {
        self.bytes_stdin.inc_by(n as u64);
    }

    pub(crate) fn record_output(&self, stream: OutputStream, n: usize) {
        match stream {
            OutputStream::Stdout => self.bytes_stdout.inc_by(n as u64),
            OutputStream::Stderr => self.bytes_stderr.inc_by(n as u64),
        };
    }

    /// An HTTP request was refused before any session existed.
    pub(crate) fn record_request_refused(&self, door: &str, reason: &str) {
        self.requests_refused
            .get_or_create(&RefusalLabels {
                door: door.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// A session was refused before it started.
    pub(crate) fn record_refused(&self, door: Door, err: &SessionError) {
        self.record_error_outcome(door, err);
    }

    fn record_error_outcome(&self, door: Door, err: &SessionError) {
        self.sessions_ended
            .get_or_create(&OutcomeLabels {
                door: door.as_str().to_string(),
                outcome: err.outcome().to_string(),
            })
            .inc();
        if let Some(failure) = err.runtime_failure() {
            self.runtime_failures
                .get_or_create(&FailureLabels {
                    kind: failure.as_str().to_string(),
                })
                .inc();
        }
    }

    /// A session reached STARTED; the returned guard ends it in the metrics.
    pub(crate) fn session_started(
        self: &Arc<Self>,
        door: Door,
        tty: bool,
        latency: std::time::Duration,
    ) -> ActiveSession {
        let labels = session_labels(door, tty);
        self.sessions_started.get_or_create(&labels).inc();
        self.sessions_active.get_or_create(&labels).inc();
        self.start_latency.observe(latency.as_secs_f64());
        self.attachment(door, tty)
    }

    /// A client came back to a detached session: active again, not a new
    /// start.
    pub(crate) fn session_reattached(self: &Arc<Self>, door: Door, tty: bool) -> ActiveSession {
        self.sessions_active
            .get_or_create(&session_labels(door, tty))
            .inc();
        self.attachment(door, tty)
    }

    fn attachment(self: &Arc<Self>, door: Door, tty: bool) -> ActiveSession {
        ActiveSession {
            metrics: self.clone(),
            door,
            tty,
            ended: AtomicBool::new(false),
            detachable: false,
        }
    }
}

// CRI streaming (the kube door).
impl Metrics {
    /// The gauge of outstanding CRI streaming tokens; the token store sets
    /// it on every change.
    pub(crate) fn stream_tokens_pending(&self) -> &Gauge {
        &self.stream_tokens_pending
    }
}

/// Keeps a session in the `sessions_active` gauge until it ends.
pub(crate) struct ActiveSession {
    metrics: Arc<Metrics>,
    door: Door,
    tty: bool,
    ended: AtomicBool,
    /// With reattach on, a client that goes away detaches the session
    /// rather than ending it: its outcome is then `detached`.
    detachable: bool,
}

impl ActiveSession {
    /// Marks the session as one a vanished client detaches (reattach on).
    pub(crate) fn detachable(mut self, detachable: bool) -> Self {
        self.detachable = detachable;
        self
    }

    pub(crate) fn exited(&self, code: i32) {
        if !self.ended.swap(true, Ordering::Relaxed) {
            let m = &self.metrics;
            m.sessions_ended
                .get_or_create(&OutcomeLabels {
                    door: self.door.as_str().into(),
                    outcome: "exited".into(),
                })
                .inc();
            m.exit_codes
                .get_or_create(&ExitClassLabels {
                    class: exit_class(code).into(),
                })
                .inc();
        }
    }

    pub(crate) fn failed(&self, err: &SessionError) {
        if !self.ended.swap(true, Ordering::Relaxed) {
            self.metrics.record_error_outcome(self.door, err);
        }
    }

    /// The client went away before the end: the session was detached
    /// (reattach on; returns true) or ended with it.
    pub(crate) fn client_gone(&self) -> bool {
        if !self.detachable {
            self.failed(&SessionError::Ended(EndReason::ClientGone));
            return false;
        }
        if !self.ended.swap(true, Ordering::Relaxed) {
            self.metrics
                .sessions_ended
                .get_or_create(&OutcomeLabels {
                    door: self.door.as_str().into(),
                    outcome: "detached".into(),
                })
                .inc();
        }
        true
    }
}

impl Drop for ActiveSession {
    fn drop(&mut self) {
        // No terminal status was delivered: the client went away.
        self.client_gone();
        self.metrics
            .sessions_active
            .get_or_create(&session_labels(self.door, self.tty))
            .dec();
    }
}

/// Scrapers are few; more connections than this wait in the backlog.
const MAX_METRICS_CONNECTIONS: usize = 64;

/// Serves `/metrics` until `shutdown`. Each connection must send its
/// request headers within `header_timeout`; accept errors (EMFILE) back off
/// instead of spinning.
pub(crate) async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    header_timeout: std::time::Duration,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_METRICS_CONNECTIONS));
    let mut backoff = crate::transport::AcceptBackoff::default();
    loop {
        let Some(permit) = crate::transport::acquire_slot(&slots, &shutdown).await else {
            return;
        };
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => {
                    backoff.reset();
                    conn
                }
                Err(e) => {
                    if !backoff.wait(&e, "metrics", &shutdown).await {
                        return;
                    }
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let (metrics, shutdown) = (metrics.clone(), shutdown.clone());
        tokio::spawn(async move {
            serve_connection(stream, metrics, header_timeout, shutdown).await;
            drop(permit);
        });
    }
}

/// The exposition for `/metrics`, a 404 for any other path.
fn respond(
    metrics: &Metrics,
    req: &hyper::Request<hyper::body::Incoming>,
) -> http::Result<hyper::Response<Full<Bytes>>> {
    if req.uri().path() == "/metrics" {
        hyper::Response::builder()
            .header(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
            .body(Full::new(Bytes::from(metrics.encode())))
    } else {
        hyper::Response::builder()
            .status(404)
            .body(Full::new(Bytes::from_static(b"not found; try /metrics\n")))
    }
}

/// One scraper's HTTP/1.1 connection, closed gracefully on `shutdown`.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    metrics: Arc<Metrics>,
    header_timeout: std::time::Duration,
    shutdown: CancellationToken,
) {
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let response = respond(&metrics, &req);
        async move { response }
    });
    let io = hyper_util::rt::TokioIo::new(stream);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "metrics connection failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_classes() {
        assert_eq!(exit_class(0), "0");
        assert_eq!(exit_class(3), "1-125");
        assert_eq!(exit_class(127), "127");
        assert_eq!(exit_class(137), "signal");
    }

    #[test]
    fn active_guard_counts_a_vanished_session_as_cancelled() {
        let m = Arc::new(Metrics::new());
        let guard = m.session_started(Door::Grpc, true, std::time::Duration::from_millis(10));
        assert!(m
            .encode()
            .contains("execd_sessions_active{door=\"grpc\",tty=\"true\"} 1"));
        drop(guard);
        let text = m.encode();
        assert!(
            text.contains("execd_sessions_active{door=\"grpc\",tty=\"true\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("execd_sessions_ended_total{door=\"grpc\",outcome=\"cancelled\"} 1"),
            "{text}"
        );
        let guard = m.session_started(Door::Grpc, false, std::time::Duration::from_millis(10));
        guard.exited(0);
        drop(guard);
        let text = m.encode();
        assert!(
            text.contains("execd_sessions_ended_total{door=\"grpc\",outcome=\"exited\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("execd_exit_codes_total{class=\"0\"} 1"),
            "{text}"
        );
    }
}
