//! The HTTP front doors: every door that is not gRPC, on the same
//! listeners and connections as gRPC (the transport tells HTTP/1.1 from
//! HTTP/2 per connection), onto the same session manager.
//!
//! Each door is one module that maps its protocol onto session events and
//! nothing else; what they share (the session manager, metrics, tokens)
//! travels in [`DoorContext`]. Requests no door claims get a 404 with a JSON
//! body, or gRPC UNIMPLEMENTED when they are gRPC calls.

pub mod cri;
pub mod docker;
pub mod kube;
pub mod rebinding;
pub mod web;

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use execd_session::SessionManager;

use crate::auth::TokenStore;
use crate::metrics::Metrics;

/// What every door needs from the server.
#[derive(Clone)]
pub struct DoorContext {
    pub manager: SessionManager,
    pub metrics: Arc<Metrics>,
    /// Bearer tokens; `None` when the server runs without them.
    pub auth: Option<TokenStore>,
    /// CRI streaming URLs: issued by the CRI service, redeemed by the kube
    /// door.
    pub streams: kube::StreamTokens,
    /// The browser terminal (`--web`) and the WebSocket origin guard.
    pub web: web::WebConfig,
}

/// The routes of every HTTP door.
pub fn router(ctx: DoorContext) -> axum::Router {
    // The pod exec path is shared: the Kubernetes door claims WebSocket
    // upgrades there and hands every other request (the Docker-style
    // create) to the Docker door's method router.
    let (docker, docker_pod_exec) = docker::router(ctx.clone());
    let routes = axum::Router::new()
        .merge(docker)
        .merge(kube::router(ctx.clone(), Some(docker_pod_exec)))
        .merge(web::router(ctx.clone()));
    // Every WebSocket upgrade, on any door's path, passes the origin check;
    // without tokens, every request over TCP the DNS-rebinding check.
    let routes = rebinding::guard(routes, ctx.auth.is_some(), &ctx.web.allowed_origins);
    web::guard_upgrades(routes, &ctx.web)
}

/// Answers what no door claims: gRPC calls get UNIMPLEMENTED (as tonic
/// would), everything else a JSON 404.
pub async fn fallback(req: axum::extract::Request) -> Response {
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        return tonic::Status::unimplemented("").into_http::<axum::body::Body>();
    }
    // Debug-quoted and cut short: the path is the client's text.
    let path: String = req.uri().path().chars().take(256).collect();
    let message = format!("{} {path:?} is not served by execd", req.method());
    json_error(http::StatusCode::NOT_FOUND, &message)
}

/// An error response with a `{"message": …}` body (Docker's error shape).
pub fn json_error(status: http::StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "message": message });
    (status, axum::Json(body)).into_response()
}
