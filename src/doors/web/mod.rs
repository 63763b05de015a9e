//! The browser terminal (`--web`): one page at `/` that opens tty sessions
//! through the Kubernetes door's pod exec path, and the container list it
//! picks from.
//!
//! - `GET /`, `GET /assets/app.js`, `GET /assets/app.css`: the page, built
//!   from `web/` (xterm.js and its fit addon, bundled by esbuild) and
//!   embedded at build time ([`assets`]); served with a strict
//!   Content-Security-Policy (scripts only from this origin, no eval).
//! - `GET /api/containers`: running containers as JSON (`containers`),
//!   behind the same bearer token as sessions.
//! - [`origin`]: the guard against cross-site WebSocket hijacking, layered
//!   over every door whether or not the page is on.
//!
//! Without `--web` none of these routes exist and `/` is a 404.

pub mod assets;
pub(crate) mod containers;
pub mod origin;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{header, HeaderMap, HeaderValue, StatusCode};

use super::DoorContext;

/// The page's policy: its own scripts only (no inline code, no eval);
/// inline styles are allowed because xterm's DOM renderer sets them.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; font-src 'self'; \
base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The web terminal's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebConfig {
    /// Serve the page and `/api/containers`.
    pub enabled: bool,
    /// Other origins allowed to open WebSockets, normalized by
    /// [`origin::parse_allowed`].
    pub allowed_origins: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum WebError {
    #[error("Unauthorized: send Authorization: Bearer <token>")]
    Unauthorized,
    #[error("execd runs commands on this host (--host-exec): there are no containers to pick")]
    HostMode,
    #[error("{0}")]
    Engine(String),
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let code = match &self {
            WebError::Unauthorized => StatusCode::UNAUTHORIZED,
            WebError::HostMode => StatusCode::NOT_FOUND,
            WebError::Engine(_) => StatusCode::BAD_GATEWAY,
        };
        let mut resp = super::json_error(code, &self.to_string());
        if matches!(self, WebError::Unauthorized) {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// The page's routes; empty without `--web`.
pub(crate) fn router(ctx: DoorContext) -> axum::Router {
    if !ctx.web.enabled {
        return axum::Router::new();
    }
    axum::Router::new()
        .route("/", get(page))
        .route("/assets/app.js", get(script))
        .route("/assets/app.css", get(style))
        .route("/api/containers", get(list_containers))
        .with_state(ctx)
}

/// Wraps `routes` (every door) in the cross-origin WebSocket guard.
pub(crate) fn guard_upgrades(routes: axum::Router, web: &WebConfig) -> axum::Router {
    routes.layer(axum::middleware::from_fn_with_state(
        web.allowed_origins.clone(),
        origin::guard,
    ))
}

fn asset(content_type: &'static str, body: &'static [u8]) -> Response {
    let mut resp = body.into_response();
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The file names carry no hash: ask again each time (cheap, local).
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

async fn page() -> Response {
    let mut resp = asset("text/html; charset=utf-8", assets::INDEX_HTML);
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", assets::APP_JS)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", assets::APP_CSS)
}

/// Same token rule as sessions: with tokens configured, exactly one valid
/// `Authorization: Bearer` is required.
fn check_auth(ctx: &DoorContext, headers: &HeaderMap) -> Result<(), WebError> {
    let Some(store) = &ctx.auth else {
        return Ok(());
    };
    store
        .admit(crate::auth::bearer_token(headers), &ctx.metrics, "web")
        .map(|_| ())
        .map_err(|_| WebError::Unauthorized)
}

async fn list_containers(State(ctx): State<DoorContext>, headers: HeaderMap) -> Response {
    if let Err(e) = check_auth(&ctx, &headers) {
        return e.into_response();
    }
    match containers::list(&ctx.manager).await {
        Ok(list) => axum::Json(serde_json::json!({ "containers": list })).into_response(),
        Err(e) => containers::refusal(e),
    }
}
