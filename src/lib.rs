//! execd's server: the gRPC face of the session manager.
//!
//! - [`auth`]: bearer-token check for every session and admin call.
//! - [`config`]: flags (with `EXECD_*` env twins) and [`ServerConfig`].
//! - [`listener`]: TCP or unix-socket [`Listener`].
//! - [`protocol`]: mapping between `exec_service` messages and sessions.
//! - [`exec_service`] serves `ExecService/ExecStream`, one session per stream.
//! - [`health`]: `grpc.health.v1` status that follows the engine.
//! - [`metrics`]: Prometheus metrics on `--metrics-listen`.
//! - [`admin_service`] serves `execd.admin.v1.SessionAdmin`.
//! - [`run`]: serves both until the shutdown token fires, then ends every
//!   session (ERROR "server shutting down", processes killed) and returns.

pub mod admin_service;
pub mod auth;
pub mod config;
pub mod exec_service;
pub mod health;
pub mod listener;
pub mod metrics;
pub mod protocol;

use std::sync::Arc;
use std::time::{Duration, Instant};

use execd_proto::admin::session_admin_server::SessionAdminServer;
use execd_proto::exec_service::exec_service_server::ExecServiceServer;
use execd_session::SessionManager;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

pub use config::{Cli, ServerConfig};
pub use listener::Listener;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("serving gRPC failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("building the reflection service failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("binding the metrics listener {addr} failed: {source}")]
    MetricsBind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// HTTP/2 flow-control windows: large enough that one stream can move
/// hundreds of MiB/s on loopback, small enough to bound per-stream buffering.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;
/// Largest HTTP/2 frame execd accepts; clients that accept large frames too
/// get output in fewer, larger frames.
const MAX_FRAME: u32 = 1024 * 1024;

/// Serves ExecService and SessionAdmin on `listener` until `shutdown` is
/// cancelled; then ends all sessions and returns within about
/// `config.shutdown_grace`.
pub async fn run(
    listener: Listener,
    config: ServerConfig,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let manager = SessionManager::new(config.manager.clone(), shutdown.clone());
    let metrics = Arc::new(metrics::Metrics::new());
    if let Some(addr) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::MetricsBind { addr, source })?;
        tracing::info!(%addr, "metrics at http://{addr}/metrics");
        tokio::spawn(metrics::serve(listener, metrics.clone(), shutdown.clone()));
    }
    let exec = ExecServiceServer::new(exec_service::ExecServiceImpl::new(
        manager.clone(),
        config.start_timeout,
        metrics,
    ))
    .max_decoding_message_size(config.max_message_size);
    let admin = SessionAdminServer::new(admin_service::SessionAdminImpl::new(manager.clone()));
    // With tokens configured, both services sit behind the check; health and
    // reflection stay open for probes and tooling.
    let (open_exec, open_admin, guarded_exec, guarded_admin) = match &config.auth {
        None => (Some(exec), Some(admin), None, None),
        Some(tokens) => {
            let (a, b) = (tokens.clone(), tokens.clone());
            (
                None,
                None,
                Some(InterceptedService::new(exec, move |r| a.check(r))),
                Some(InterceptedService::new(admin, move |r| b.check(r))),
            )
        }
    };
    let (health_reporter, health) = tonic_health::server::health_reporter();
    // NOT_SERVING until the first engine check has answered.
    for service in health::SERVICES {
        health_reporter
            .set_service_status(service, tonic_health::ServingStatus::NotServing)
            .await;
    }
    tokio::spawn(health::monitor(
        health_reporter,
        manager.clone(),
        config.health_interval,
        shutdown.clone(),
    ));
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(execd_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let mut builder = Server::builder();
    if let Some(tls) = &config.tls {
        let mut tls_config =
            ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem));
        if let Some(ca) = &tls.client_ca_pem {
            tls_config = tls_config.client_ca_root(Certificate::from_pem(ca));
        }
        builder = builder.tls_config(tls_config)?;
    }
    let router = builder
        .http2_keepalive_interval(Some(config.keepalive_interval))
        .http2_keepalive_timeout(Some(config.keepalive_timeout))
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .add_optional_service(open_exec)
        .add_optional_service(open_admin)
        .add_optional_service(guarded_exec)
        .add_optional_service(guarded_admin)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let signal = shutdown.clone().cancelled_owned();
    let local = listener.local_addr();
    tracing::info!(listen = %local, mode = ?manager.mode(), "execd serving");
    let (serve, socket_path) = match listener {
        Listener::Tcp(l) => {
            let incoming = TcpIncoming::from(l).with_nodelay(Some(true));
            (
                Box::pin(router.serve_with_incoming_shutdown(incoming, signal))
                    as std::pin::Pin<
                        Box<
                            dyn std::future::Future<Output = Result<(), tonic::transport::Error>>
                                + Send,
                        >,
                    >,
                None,
            )
        }
        Listener::Unix(l, path) => (
            Box::pin(router.serve_with_incoming_shutdown(UnixListenerStream::new(l), signal)) as _,
            Some(path),
        ),
    };
    let mut serve = serve;
    let mut shutdown_at = None;
    let result = tokio::select! {
        r = &mut serve => r,
        _ = shutdown.cancelled() => {
            shutdown_at = Some(Instant::now());
            // Sessions got their ERROR and are killing their processes; the
            // server drains the streams, but not forever.
            match tokio::time::timeout(config.shutdown_grace, &mut serve).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!("shutdown grace elapsed; dropping remaining connections");
                    Ok(())
                }
            }
        }
    };
    if shutdown.is_cancelled() {
        // The streams may be gone before the processes are: returning now
        // would drop the runtime under the reapers.
        let deadline = shutdown_at.unwrap_or_else(Instant::now) + config.shutdown_grace;
        if !wait_for_sessions(&manager, deadline).await {
            tracing::warn!(
                left = manager.registry().total(),
                "shutdown grace elapsed with sessions left"
            );
        }
    }
    if let Some(path) = socket_path {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!("execd stopped");
    result.map_err(ServerError::from)
}

async fn wait_for_sessions(manager: &SessionManager, deadline: Instant) -> bool {
    while manager.registry().total() > 0 {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}
