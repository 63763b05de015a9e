//! The Docker door: the Docker Engine's exec API, so that the docker CLI
//! and Docker SDKs exec *through* execd (`docker -H tcp://execd:50051 exec
//! -it web sh`), and the same API under pod paths (`/api/v1/…`).
//!
//! Served: `GET|HEAD /_ping`, `GET /version` (both open), and behind the
//! bearer token when tokens are configured: `GET /containers/{id}/json`
//! (the engine's answer, which the CLI asks before an exec),
//! `POST /containers/{id}/exec`, `POST /exec/{id}/start|resize`,
//! `GET /exec/{id}/json`; each also under any `/vN.NN` prefix. The pod
//! API adds `POST /api/v1/namespaces/{ns}/pods/{pod}/exec` and
//! `/api/v1/exec/{id}/…`. Everything else falls through to execd's 404.
//!
//! - `api`: request bodies and their validation;
//! - `table`: the exec instances between create, start and inspect;
//! - `exec`: the handlers;
//! - `stream`: one started exec, over a hijacked connection or a
//!   response body.

mod api;
pub(crate) mod exec;
mod stream;
mod table;

pub use table::{MAX_CREATED_PER_OWNER, SHOWN_COMMAND};

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::routing::{get, post};
use execd_session::{BackendConfig, ErrorKind, SessionError};
use http::{header, HeaderValue, StatusCode};

use super::{json_error, DoorContext};

/// The Engine API version execd speaks: exec `ConsoleSize` (1.42) and
/// everything older. Clients negotiate down to it.
pub const API_VERSION: &str = "1.44";
/// The oldest API version accepted in a `/vN.NN` prefix (exec env, 1.25;
/// older clients are refused as the engine refuses them).
pub const MIN_API_VERSION: &str = "1.24";

/// What can go wrong in the door, each with its HTTP status.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DockerError {
    #[error("{0}")]
    BadRequest(String),
    #[error("No such exec instance: {0}")]
    NoSuchExec(String),
    #[error("exec {0} has already been started")]
    AlreadyStarted(String),
    #[error("privileged execs are not allowed through execd")]
    Privileged,
    #[error("detached execs are not supported by execd: a session ends when its client goes")]
    Detach,
    #[error("more than {0} execs are created and not started; start or let them expire")]
    TooManyCreated(usize),
    #[error("this client has {0} execs created and not started; start them or let them expire")]
    TooManyCreatedByClient(usize),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("client version {0} is too old. Minimum supported API version is {MIN_API_VERSION}, please upgrade your client to a newer version")]
    OldClient(String),
    /// The engine answered with an error; passed on as it is.
    #[error("{message}")]
    Engine { status: StatusCode, message: String },
    #[error("{}", crate::error_text::ClientText(.0))]
    Session(#[from] SessionError),
}

/// Container queries outside a session: busy is a limit reached (429),
/// an engine that failed or did not answer a server error, as the engine's
/// own 500.
impl From<execd_session::ContainerQueryError> for DockerError {
    fn from(e: execd_session::ContainerQueryError) -> Self {
        use execd_session::ContainerQueryError as E;
        let status = match &e {
            E::Busy { .. } => StatusCode::TOO_MANY_REQUESTS,
            E::BadReference(_) | E::HostMode => StatusCode::BAD_REQUEST,
            E::TimedOut | E::Engine(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        DockerError::Engine {
            status,
            message: e.to_string(),
        }
    }
}

/// Session failures as HTTP statuses, the engine's way (the Kubernetes
/// door has its own, `kube::status`).
pub(crate) fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::InvalidArgument => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        // The engine says 409 for a container that is not running.
        ErrorKind::AlreadyExists | ErrorKind::FailedPrecondition | ErrorKind::Aborted => {
            StatusCode::CONFLICT
        }
        ErrorKind::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
        ErrorKind::DeadlineExceeded => StatusCode::REQUEST_TIMEOUT,
        ErrorKind::Cancelled => StatusCode::BAD_REQUEST,
        // An engine that cannot be reached is a server error (the pod API's 500).
        ErrorKind::Unavailable | ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl DockerError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            DockerError::BadRequest(_) | DockerError::Detach | DockerError::OldClient(_) => {
                StatusCode::BAD_REQUEST
            }
            DockerError::NoSuchExec(_) => StatusCode::NOT_FOUND,
            DockerError::AlreadyStarted(_) => StatusCode::CONFLICT,
            DockerError::Privileged => StatusCode::FORBIDDEN,
            DockerError::TooManyCreated(_) | DockerError::TooManyCreatedByClient(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            DockerError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            DockerError::Engine { status, .. } => *status,
            DockerError::Session(e) => status_of(e.kind()),
        }
    }
}

impl IntoResponse for DockerError {
    fn into_response(self) -> Response {
        let mut response = json_error(self.status(), &self.to_string());
        if matches!(self, DockerError::Unauthorized(_)) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Shared by every handler of the door.
pub(crate) struct DockerState {
    pub(crate) ctx: DoorContext,
    pub(crate) table: table::ExecTable,
}

type Shared = Arc<DockerState>;

/// The door's routes, and its create on the pod exec path, which it shares
/// with the Kubernetes door (that door claims WebSocket upgrades there and
/// hands every other request to this method router).
pub(crate) fn router(ctx: DoorContext) -> (axum::Router, MethodRouter) {
    let state: Shared = Arc::new(DockerState {
        ctx,
        table: table::ExecTable::default(),
    });
    let open = || {
        axum::Router::new()
            .route("/_ping", get(ping))
            .route("/version", get(version))
    };
    // Without an API prefix, /version is read by kube clients too.
    let bare = || {
        axum::Router::new()
            .route("/_ping", get(ping))
            .route("/version", get(version_for_all))
            .route("/version/", get(version_for_all))
    };
    let engine = || {
        axum::Router::new()
            .route("/containers/{id}/json", get(inspect_container))
            .route("/containers/{id}/exec", post(exec::engine_create))
            .route("/containers/{id}/attach", post(exec::engine_attach))
            .route("/exec/{id}/start", post(exec::start))
            .route("/exec/{id}/resize", post(exec::resize))
            .route("/exec/{id}/json", get(exec::inspect))
    };
    let pod_exec = post(exec::pod_exec_post)
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ))
        .with_state(state.clone());
    let pod = axum::Router::new()
        .route("/api/v1/exec/{id}/start", post(exec::start))
        .route("/api/v1/exec/{id}/resize", post(exec::resize))
        .route("/api/v1/exec/{id}/json", get(exec::inspect));
    let guarded = engine()
        .merge(pod)
        .nest(
            "/{version}",
            engine().route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                api_version,
            )),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ));
    let routes = bare()
        .nest(
            "/{version}",
            open().route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                api_version,
            )),
        )
        .merge(guarded)
        .with_state(state);
    (routes, pod_exec)
}

/// `/vN.NN/…`: refuses versions older than execd serves and sends paths
/// whose first segment is no version to the common 404.
async fn api_version(
    State(state): State<Shared>,
    Path(params): Path<std::collections::HashMap<String, String>>,
    req: Request,
    next: Next,
) -> Response {
    let first = params
        .get("version")
        .map(String::as_str)
        .unwrap_or_default();
    let Some(version) = first.strip_prefix('v').and_then(parse_version) else {
        return super::fallback(state.ctx.metrics.clone(), req).await;
    };
    if parse_version(MIN_API_VERSION).is_some_and(|min| version < min) {
        return DockerError::OldClient(first.trim_start_matches('v').to_string()).into_response();
    }
    next.run(req).await
}

fn parse_version(v: &str) -> Option<(u32, u32)> {
    let (major, minor) = v.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Bearer token check for everything but `_ping` and `version`, when tokens
/// are configured. The docker CLI sends one from its config file's
/// `HttpHeaders`.
async fn require_token(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let Some(tokens) = &state.ctx.auth else {
        return next.run(req).await;
    };
    let presented = crate::auth::bearer_token(req.headers());
    // Sessions count against --max-sessions-per-token, as on every door.
    let owner = tokens
        .admit(presented, &state.ctx.metrics, "docker")
        .map(|token| crate::auth::Owner::of_request(token, req.extensions()));
    match owner {
        Ok(owner) => {
            let mut req = req;
            req.extensions_mut().insert(owner);
            next.run(req).await
        }
        Err(failure) => DockerError::Unauthorized(failure.message()).into_response(),
    }
}

/// Headers the engine puts on `_ping` and that clients negotiate with.
fn ping_headers(response: &mut Response) {
    let h = response.headers_mut();
    h.insert("api-version", HeaderValue::from_static(API_VERSION));
    h.insert("ostype", HeaderValue::from_static("linux"));
    h.insert("docker-experimental", HeaderValue::from_static("false"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store, must-revalidate"),
    );
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// `GET|HEAD /_ping` (axum answers HEAD from the GET route, without body).
async fn ping() -> Response {
    let mut response =
        ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "OK").into_response();
    ping_headers(&mut response);
    response
}

/// The Engine API's architecture names.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// `GET /vN.NN/version`: execd's own, not the engine's.
async fn version() -> Response {
    let mut response = axum::Json(version_document()).into_response();
    ping_headers(&mut response);
    response
}

/// `GET /version`: Docker's document merged with Kubernetes' `version.Info`
/// ([`crate::doors::kube::api::merge_version`]).
async fn version_for_all() -> Response {
    let merged = crate::doors::kube::api::merge_version(version_document());
    let mut response = axum::Json(merged).into_response();
    ping_headers(&mut response);
    response
}

fn version_document() -> serde_json::Value {
    let v = env!("CARGO_PKG_VERSION");
    serde_json::json!({
        "Platform": {"Name": "execd"},
        "Components": [{
            "Name": "execd",
            "Version": v,
            "Details": {"ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION},
        }],
        "Version": v,
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "Os": "linux",
        "Arch": go_arch(),
        "KernelVersion": "",
        "GitCommit": "",
        "GoVersion": "",
        "BuildTime": "",
    })
}

#[derive(serde::Deserialize)]
struct ContainerPath {
    id: String,
}

/// `GET /containers/{id}/json`: the engine's own answer, status and body.
async fn inspect_container(State(state): State<Shared>, Path(p): Path<ContainerPath>) -> Response {
    match exec::engine_inspect(&state.ctx, &p.id).await {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The refusal of host mode, which has no containers.
fn containers_only(backend: &BackendConfig) -> Result<(), DockerError> {
    match backend.has_containers() {
        true => Ok(()),
        false => Err(DockerError::Session(
            execd_session::ValidationError::ContainerInHostMode.into(),
        )),
    }
}
