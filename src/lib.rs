//! execd's server: the gRPC face of the session manager.
//!
//! - [`config`]: flags (with `EXECD_*` env twins) and [`ServerConfig`].
//! - [`listener`]: TCP or unix-socket [`Listener`].
//! - [`protocol`]: mapping between `exec_service` messages and sessions.
//! - [`exec_service`] serves `ExecService/ExecStream`, one session per stream.
//! - [`admin_service`] serves `execd.admin.v1.SessionAdmin`.
//! - [`run`]: serves both until the shutdown token fires, then ends every
//!   session (ERROR "server shutting down", processes killed) and returns.

pub mod admin_service;
pub mod config;
pub mod exec_service;
pub mod listener;
pub mod protocol;

use std::time::{Duration, Instant};

use execd_proto::admin::session_admin_server::SessionAdminServer;
use execd_proto::exec_service::exec_service_server::ExecServiceServer;
use execd_session::SessionManager;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

pub use config::{Cli, ServerConfig};
pub use listener::Listener;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("serving gRPC failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// HTTP/2 flow-control windows: large enough that one stream can move
/// hundreds of MiB/s on loopback, small enough to bound per-stream buffering.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;

/// Serves ExecService and SessionAdmin on `listener` until `shutdown` is
/// cancelled; then ends all sessions and returns within about
/// `config.shutdown_grace`.
pub async fn run(
    listener: Listener,
    config: ServerConfig,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let manager = SessionManager::new(config.manager.clone(), shutdown.clone());
    let exec = ExecServiceServer::new(exec_service::ExecServiceImpl::new(
        manager.clone(),
        config.start_timeout,
    ))
    .max_decoding_message_size(config.max_message_size);
    let admin = SessionAdminServer::new(admin_service::SessionAdminImpl::new(manager.clone()));
    let router = Server::builder()
        .http2_keepalive_interval(Some(config.keepalive_interval))
        .http2_keepalive_timeout(Some(config.keepalive_timeout))
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .add_service(exec)
        .add_service(admin);
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
    let result = tokio::select! {
        r = &mut serve => r,
        _ = shutdown.cancelled() => {
            // Sessions got their ERROR and are killing their processes; the
            // server drains the streams. Wait for both, but not forever.
            let deadline = Instant::now() + config.shutdown_grace;
            let drained = wait_for_sessions(&manager, deadline).await;
            if !drained {
                tracing::warn!(left = manager.registry().total(), "shutdown grace elapsed with sessions left");
            }
            let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(200));
            match tokio::time::timeout(remaining, &mut serve).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!("shutdown grace elapsed; dropping remaining connections");
                    Ok(())
                }
            }
        }
    };
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
