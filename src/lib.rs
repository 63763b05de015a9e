//! execd's server: every door onto the session manager (gRPC
//! `ExecStream`, CRI, Kubernetes, Docker, the browser and `/terminal/ws`
//! terminals), the admin, health and reflection services beside them, and
//! the connection layer, configuration and metrics they share. The session
//! manager itself (sessions, backends, limits) is `execd_session`.
//!
//! Public, for `main.rs` and tests: [`run`]/[`run_on`], [`Cli`] and
//! [`ServerConfig`] (with [`config::TlsConfig`], [`config::LogFormat`]),
//! [`Listener`], [`auth::TokenStore`], the errors these return, and the
//! few door constants and settings tests check against ([`doors`]).
//! Everything else is `pub(crate)`.
//!
//! - [`config`]: flags (with `EXECD_*` env twins and a TOML file) and
//!   [`ServerConfig`].
//! - `listener`: TCP or unix-socket [`Listener`]s.
//! - `transport`: the connection layer under every door: accept loops,
//!   connection and stream bounds, TLS, HTTP/1.1 vs HTTP/2, and the
//!   `:authority` fix for gRPC clients on unix sockets.
//! - [`auth`]: bearer tokens (and client certificates) for every door.
//! - [`doors`]: every way in to the session manager, one shape for all
//!   of them.
//! - `admin_service`: `execd.admin.v1.SessionAdmin`.
//! - `health`: `grpc.health.v1` status that follows the engine;
//!   `stream_limit` caps its concurrent `Watch` calls.
//! - `error_text`: session errors as clients read them (flag hints).
//! - `metrics`: Prometheus metrics on `--metrics-listen`.
//!
//! [`run`] serves all of it until the shutdown token fires, then ends
//! every session (ERROR "server shutting down", processes killed) and
//! returns.

#![warn(unreachable_pub)]

mod admin_service;
pub mod auth;
pub mod config;
pub mod doors;
mod error_text;
mod health;
mod listener;
mod metrics;
mod stream_limit;
mod transport;

use std::sync::Arc;
use std::time::{Duration, Instant};

use execd_proto::admin::session_admin_server::SessionAdminServer;
use execd_proto::cri::runtime_service_server::RuntimeServiceServer;
use execd_proto::exec_service::exec_service_server::ExecServiceServer;
use execd_session::SessionManager;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Routes;

pub use config::{Cli, ServerConfig};
// The errors of the public calls, nameable where their calls are.
pub use listener::{ListenError, Listener};
pub use transport::tls::TlsError;

/// Why [`run`] could not start serving.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("building the reflection service failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("binding the metrics listener {addr} failed: {source}")]
    MetricsBind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Serves every door on `listener` until `shutdown` is cancelled; then ends
/// all sessions and returns within about `config.shutdown_grace`.
pub async fn run(
    listener: Listener,
    config: ServerConfig,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    run_on(vec![listener], config, shutdown).await
}

/// Like [`run`], on several listeners at once (say a unix socket for
/// node-local clients and a TLS port for remote ones).
pub async fn run_on(
    listeners: Vec<Listener>,
    config: ServerConfig,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let manager = SessionManager::new(config.manager.clone(), shutdown.clone());
    let metrics = Arc::new(metrics::Metrics::new());
    serve_metrics(&config, &metrics, &shutdown).await?;
    let door_ctx = door_context(&config, &listeners, &manager, &metrics);
    tokio::spawn(door_ctx.streams.clone().sweep_until(shutdown.clone()));
    let grpc = grpc_routes(&config, &manager, metrics, &shutdown, &door_ctx)
        .await?
        .into_axum_router();
    let app = doors::app(grpc, door_ctx.clone());
    let transport_config = transport_config(&config)?;
    let socket_files: Vec<listener::SocketFile> = listeners
        .iter()
        .filter_map(|l| l.socket_file().cloned())
        .collect();
    let addresses: Vec<String> = listeners.iter().map(Listener::local_addr).collect();
    tracing::info!(listen = ?addresses, backend = ?manager.backend_config(), "execd serving");
    let connections = transport::serve(listeners, app, transport_config, shutdown.clone());
    shutdown.cancelled().await;
    drain(&connections, &manager, config.shutdown_grace).await;
    for file in &socket_files {
        file.remove();
    }
    tracing::info!("execd stopped");
    Ok(())
}

/// Serves `/metrics` on `--metrics-listen`, if given.
async fn serve_metrics(
    config: &ServerConfig,
    metrics: &Arc<metrics::Metrics>,
    shutdown: &CancellationToken,
) -> Result<(), ServerError> {
    let Some(addr) = config.metrics_listen else {
        return Ok(());
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::MetricsBind { addr, source })?;
    tracing::info!(%addr, "metrics at http://{addr}/metrics");
    tokio::spawn(metrics::serve(
        listener,
        metrics.clone(),
        config.handshake_timeout,
        shutdown.clone(),
    ));
    Ok(())
}

/// What every HTTP door shares, CRI streaming URLs included.
fn door_context(
    config: &ServerConfig,
    listeners: &[Listener],
    manager: &SessionManager,
    metrics: &Arc<metrics::Metrics>,
) -> doors::DoorContext {
    let stream_base_url = config
        .stream_base_url
        .clone()
        .or_else(|| doors::kube::tokens::default_base_url(listeners, config.tls.is_some()));
    if stream_base_url.is_none() {
        tracing::warn!("no TCP listener and no --stream-base-url: CRI Exec/Attach will refuse to issue streaming URLs");
    }
    if config.web.enabled && !doors::web::assets::BUNDLED {
        tracing::warn!(
            reason = doors::web::assets::MISSING_REASON,
            "--web: this execd was built without its web assets; / serves only a page saying so. \
             Build them with scripts/web-assets (npm ci && npm run build in web/), then rebuild execd"
        );
    }
    doors::DoorContext {
        manager: manager.clone(),
        metrics: metrics.clone(),
        auth: config.auth.clone(),
        streams: doors::kube::StreamTokens::new(
            stream_base_url,
            config.stream_token_ttl,
            metrics.stream_tokens_pending().clone(),
        ),
        web: config.web.clone(),
        terminal_instance_label: config.terminal_instance_label.clone(),
        max_message_size: config.max_message_size,
    }
}

/// The connection layer's settings (TLS acceptor built here).
fn transport_config(config: &ServerConfig) -> Result<transport::TransportConfig, ServerError> {
    Ok(transport::TransportConfig {
        tls: config
            .tls
            .as_ref()
            .map(transport::tls::acceptor)
            .transpose()?,
        max_connections: config.max_connections,
        max_connections_per_ip: config.max_connections_per_ip.unwrap_or(
            transport::admission::default_max_per_peer(config.max_connections),
        ),
        max_unauthenticated_connections: config.max_unauthenticated_connections.unwrap_or(
            transport::admission::default_max_unproven(config.max_connections),
        ),
        credentials: transport::admission::Credentials {
            exec: config.auth.clone(),
            admin: config.admin_auth.clone(),
        },
        idle_timeout: config.idle_connection_timeout,
        max_streams_per_connection: config.max_streams_per_connection,
        handshake_timeout: config.handshake_timeout,
        keepalive_interval: config.keepalive_interval,
        keepalive_timeout: config.keepalive_timeout,
    })
}

/// After the shutdown token fired: sessions got their ERROR and are killing
/// their processes; the connections drain their streams (GOAWAY), but not
/// forever. Then the sessions themselves: the streams may be gone before
/// the processes are, and returning would drop the runtime under the
/// reapers. Both within `grace` in all.
async fn drain(
    connections: &tokio_util::task::TaskTracker,
    manager: &SessionManager,
    grace: Duration,
) {
    let deadline = Instant::now() + grace;
    if tokio::time::timeout_at(deadline.into(), connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace elapsed; dropping remaining connections");
    }
    let drained = tokio::time::timeout_at(deadline.into(), manager.registry().drained()).await;
    if drained.is_err() {
        tracing::warn!(
            left = manager.registry().total(),
            "shutdown grace elapsed with sessions left"
        );
    }
}

/// Every gRPC service, with tokens required where configured: ExecService
/// and SessionAdmin behind the check; health and reflection open for
/// probes and tooling (health Watch streams bounded in number).
async fn grpc_routes(
    config: &ServerConfig,
    manager: &SessionManager,
    metrics: Arc<metrics::Metrics>,
    shutdown: &CancellationToken,
    door_ctx: &doors::DoorContext,
) -> Result<Routes, ServerError> {
    let exec = ExecServiceServer::new(doors::grpc::ExecServiceImpl::new(
        manager.clone(),
        config.start_timeout,
        config.max_pending_starts,
        metrics.clone(),
    ))
    .max_decoding_message_size(config.max_message_size);
    let admin = SessionAdminServer::new(admin_service::SessionAdminImpl::new(manager.clone()));
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
    let health = stream_limit::StreamLimit::new(health, "Watch", config.max_health_watches);
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(execd_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let mut routes = Routes::new(health)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?);
    // With tokens configured, the services sit behind their checks (the
    // admin API behind admin tokens when given); health and reflection stay
    // open for probes and tooling. The CRI RuntimeService (ExecSync, Exec,
    // Attach) starts sessions, so it takes the exec tokens. Each check
    // counts its refusals under its own door, like the HTTP doors' checks.
    let cri = RuntimeServiceServer::new(doors::cri::CriRuntime::new(door_ctx.clone()));
    let exec_guard = |tokens: &auth::TokenStore, door| {
        auth::ExecGuard::new(tokens.clone()).reporting(metrics.clone(), door)
    };
    routes = match &config.auth {
        None => routes.add_service(exec).add_service(cri),
        Some(tokens) => routes
            .add_service(InterceptedService::new(exec, exec_guard(tokens, "grpc")))
            .add_service(InterceptedService::new(cri, exec_guard(tokens, "cri"))),
    };
    routes = match auth::AdminGuard::new(config.auth.as_ref(), config.admin_auth.as_ref()) {
        None => routes.add_service(admin),
        Some(guard) => routes.add_service(InterceptedService::new(admin, guard.reporting(metrics))),
    };
    Ok(routes)
}
