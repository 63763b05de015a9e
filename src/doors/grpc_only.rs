//! Only gRPC reaches the gRPC services.
//!
//! tonic serves whatever arrives on a service's path: it does not look at
//! the HTTP version, and takes any `content-type`. A browser cannot speak
//! HTTP/2 without TLS nor send `application/grpc` cross-site without a
//! CORS preflight, but it can send an HTTP/1.1 `text/plain` POST to any
//! address, and a gRPC-framed body in it was enough to start a session.
//! So every gRPC route (ExecStream, CRI, admin, health, reflection) sits
//! behind this layer, which runs before any token check or service:
//!
//! - HTTP/1.x: 426 Upgrade Required (gRPC is HTTP/2 only);
//! - a `content-type` other than `application/grpc`,
//!   `application/grpc+<codec>` or `application/grpc;<params>`: 415.
//!
//! Both with a JSON body, logged at debug and counted (`door="grpc"`).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::{header, HeaderValue, StatusCode, Version};

use crate::metrics::Metrics;

/// Wraps the gRPC services' router with the check.
pub(crate) fn guard(grpc: axum::Router, metrics: Arc<Metrics>) -> axum::Router {
    grpc.layer(axum::middleware::from_fn_with_state(metrics, check))
}

async fn check(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    if req.version() < Version::HTTP_2 {
        let mut resp = super::refuse(
            &metrics,
            &req,
            "grpc",
            "http1",
            StatusCode::UPGRADE_REQUIRED,
            "gRPC needs HTTP/2; this HTTP/1.x request reached a gRPC service path",
        );
        resp.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        return resp;
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if !content_type.is_some_and(is_grpc) {
        return super::refuse(
            &metrics,
            &req,
            "grpc",
            "content-type",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "gRPC service paths take only content-type application/grpc (or application/grpc+<codec>)",
        );
    }
    next.run(req).await
}

/// `application/grpc`, `application/grpc+proto`, `application/grpc; …`.
pub(crate) fn is_grpc(content_type: &str) -> bool {
    let lower = content_type.trim().to_ascii_lowercase();
    match lower.strip_prefix("application/grpc") {
        Some(rest) => rest.is_empty() || rest.starts_with('+') || rest.starts_with(';'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_content_types() {
        for ok in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC; charset=utf-8",
        ] {
            assert!(is_grpc(ok), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/grpc-web",
            "application/grpc-web+proto",
            "application/grpcx",
            "",
            "application/json",
        ] {
            assert!(!is_grpc(bad), "{bad}");
        }
    }
}
