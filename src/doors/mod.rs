//! The front doors: every way in to the session manager, on the same
//! listeners and connections (the transport tells HTTP/1.1 from HTTP/2
//! per connection).
//!
//! - `grpc`: `ExecService/ExecStream`; [`cri`]: `runtime.v1` ExecSync,
//!   Exec and Attach (both tonic services, routed beside the others);
//! - [`kube`]: pod exec/attach WebSockets and CRI streaming URLs;
//!   [`docker`]: the Engine exec API; [`web`]: the browser terminal;
//!   `terminal`: `/terminal/ws`;
//! - `grpc_only`, `browser_guard`, [`web::origin`]: the guards in front
//!   of them.
//!
//! Each door maps its protocol onto session events and nothing else. What
//! they share: `session` (a session from its start to its one recorded
//! end, bytes counted), `serve` (the reader/writer loop every streaming
//! door runs), and `DoorContext` (the session manager, metrics, tokens).
//! Requests no door claims get a 404 with a JSON body, or gRPC
//! UNIMPLEMENTED when they are gRPC calls.

pub(crate) mod browser_guard;
pub mod cri;
pub mod docker;
pub(crate) mod grpc;
pub(crate) mod grpc_only;
pub mod kube;
pub(crate) mod serve;
pub(crate) mod session;
pub(crate) mod terminal;
pub mod web;

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use execd_session::log_field::LogField;
use execd_session::SessionManager;

use crate::auth::TokenStore;
use crate::metrics::Metrics;

/// What every door needs from the server.
#[derive(Clone)]
pub(crate) struct DoorContext {
    pub(crate) manager: SessionManager,
    pub(crate) metrics: Arc<Metrics>,
    /// Bearer tokens; `None` when the server runs without them.
    pub(crate) auth: Option<TokenStore>,
    /// CRI streaming URLs: issued by the CRI service, redeemed by the kube
    /// door.
    pub(crate) streams: kube::StreamTokens,
    /// The browser terminal (`--web`) and the WebSocket origin guard.
    pub(crate) web: web::WebConfig,
    /// `/terminal/ws`: the container label that names instances, if any.
    pub(crate) terminal_instance_label: Option<String>,
    /// `--max-message-size`: the largest WebSocket message (and frame) a
    /// client may send; larger ones end the stream with close 1009.
    pub(crate) max_message_size: usize,
}

/// The routes of every HTTP door.
pub(crate) fn router(ctx: DoorContext) -> axum::Router {
    // The pod exec path is shared: the Kubernetes door claims WebSocket
    // upgrades there and hands every other request (the Docker-style
    // create) to the Docker door's method router.
    let (docker, docker_pod_exec) = docker::router(ctx.clone());
    let routes = axum::Router::new()
        .merge(docker)
        .merge(kube::router(ctx.clone(), Some(docker_pod_exec)))
        .merge(web::router(ctx.clone()))
        .merge(terminal::router(ctx.clone()));
    // Every WebSocket upgrade, on any door's path, passes the origin check.
    web::guard_upgrades(routes, &ctx.web)
}

/// The whole application: the gRPC services (reachable by gRPC only), the
/// HTTP doors, the 404 for the rest, and in front of all of them, on a
/// token-less TCP listener, the guard against web pages.
pub(crate) fn app(grpc: axum::Router, ctx: DoorContext) -> axum::Router {
    let metrics = ctx.metrics.clone();
    let unserved = metrics.clone();
    let app = grpc_only::guard(grpc, metrics.clone())
        .merge(router(ctx.clone()))
        .fallback(move |req: axum::extract::Request| fallback(unserved, req));
    browser_guard::guard(app, ctx.auth.is_some(), &ctx.web.allowed_origins, metrics)
}

/// Answers what no door claims: gRPC calls get UNIMPLEMENTED (as tonic
/// would), everything else a JSON 404; both logged at debug and counted.
pub(crate) async fn fallback(metrics: Arc<Metrics>, req: axum::extract::Request) -> Response {
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(grpc_only::is_grpc);
    if grpc {
        log_refusal(&metrics, &req, "grpc", "unknown-service");
        return tonic::Status::unimplemented("").into_http::<axum::body::Body>();
    }
    // Debug-quoted and cut short: the path is the client's text.
    let path: String = req.uri().path().chars().take(256).collect();
    let message = format!("{} {path:?} is not served by execd", req.method());
    refuse(
        &metrics,
        &req,
        "http",
        "unserved",
        http::StatusCode::NOT_FOUND,
        &message,
    )
}

/// A request refused before any session: logged at debug with its method,
/// path (never the query, which may carry tokens or commands) and reason,
/// counted in `execd_requests_refused` by door and reason, and answered
/// with a JSON body — or, to a gRPC call, with the gRPC status a client
/// library can read.
pub(crate) fn refuse<B>(
    metrics: &Metrics,
    req: &http::Request<B>,
    door: &'static str,
    reason: &'static str,
    status: http::StatusCode,
    message: &str,
) -> Response {
    log_refusal(metrics, req, door, reason);
    let grpc_call = req.version() == http::Version::HTTP_2
        && req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(grpc_only::is_grpc);
    if grpc_call {
        let code = match status {
            http::StatusCode::UNAUTHORIZED => tonic::Code::Unauthenticated,
            http::StatusCode::FORBIDDEN => tonic::Code::PermissionDenied,
            http::StatusCode::NOT_FOUND => tonic::Code::Unimplemented,
            http::StatusCode::TOO_MANY_REQUESTS => tonic::Code::ResourceExhausted,
            _ => tonic::Code::InvalidArgument,
        };
        return tonic::Status::new(code, message).into_http::<axum::body::Body>();
    }
    json_error(status, message)
}

/// The log line and the count of [`refuse`], for doors that answer in
/// their own shape.
pub(crate) fn log_refusal<B>(
    metrics: &Metrics,
    req: &http::Request<B>,
    door: &'static str,
    reason: &'static str,
) {
    metrics.record_request_refused(door, reason);
    let path = LogField::with_limit(req.uri().path(), 256);
    tracing::debug!(method = %req.method(), path = %path, door, reason, "request refused");
}

/// Whether a WebSocket read failed because a message (or frame) was over
/// `--max-message-size` (the limit set on every door's upgrade).
pub(crate) fn ws_message_too_big(e: &axum::Error) -> bool {
    // tungstenite's CapacityError::MessageTooLong, the only error it
    // reports for a size limit; axum does not expose the type.
    e.to_string().contains("Message too long")
}

/// The close frame for such a client: 1009 (Message Too Big).
pub(crate) fn ws_too_big_close() -> axum::extract::ws::Message {
    axum::extract::ws::Message::Close(Some(axum::extract::ws::CloseFrame {
        code: axum::extract::ws::close_code::SIZE,
        reason: "message larger than --max-message-size".into(),
    }))
}

/// An error response with a `{"message": …}` body (Docker's error shape).
pub(crate) fn json_error(status: http::StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "message": message });
    (status, axum::Json(body)).into_response()
}

/// How long a WebSocket door waits for the client's answer to its close
/// frame.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// After a WebSocket door sent its close frame: reads (and drops) what the
/// client still sends until its close answer, for at most [`CLOSE_WAIT`],
/// since closing the TCP connection first looks like an error to clients.
pub(crate) async fn await_close_reply(
    source: &mut futures_util::stream::SplitStream<axum::extract::ws::WebSocket>,
) {
    use futures_util::StreamExt;
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        while let Some(Ok(msg)) = source.next().await {
            if matches!(msg, axum::extract::ws::Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}
