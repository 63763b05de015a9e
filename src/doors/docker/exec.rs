//! The exec handlers of the Docker door: create, start, resize, inspect,
//! for the Engine API paths and the pod paths alike.
//!
//! A create only checks and remembers (asking the engine whether the
//! container runs, as the engine itself would); the session starts with
//! the start, before its `101`, so that every refusal is still an HTTP
//! status with a `{"message"}` body.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use execd_session::{new_session_id, ContainerDocument, Door, ExecSpec, SessionKind};
use http::{header, HeaderMap, HeaderValue, StatusCode};
use serde::Deserialize;
use tracing::Instrument;

use super::api::{self, EngineExecConfig, ExecConfig, PodExecConfig};
use super::stream::{self, Started};
use super::table::Size;
use super::{containers_only, DockerError, DockerState};
use crate::doors::DoorContext;

type Shared = Arc<DockerState>;

#[derive(Deserialize)]
pub(crate) struct IdPath {
    id: String,
}

#[derive(Deserialize)]
pub(crate) struct PodPath {
    pod: String,
}

/// Docker-style exec ids: 256 random bits, hex.
fn engine_exec_id() -> String {
    format!("{}{}", new_session_id(), new_session_id())
}

/// Pod API exec ids: `exec-` and 128 random bits.
fn pod_exec_id() -> String {
    format!("exec-{}", new_session_id())
}

async fn read_body(body: Body) -> Result<bytes::Bytes, DockerError> {
    axum::body::to_bytes(body, api::MAX_BODY)
        .await
        .map_err(|e| DockerError::BadRequest(format!("reading the request body: {e}")))
}

fn created(id: String) -> Response {
    (
        StatusCode::CREATED,
        axum::Json(serde_json::json!({ "Id": id })),
    )
        .into_response()
}

/// Validates `config`, asks the engine about its container and remembers
/// the exec under `id` as `owner`'s.
async fn create(
    state: &DockerState,
    id: String,
    owner: &str,
    config: ExecConfig,
) -> Result<Response, DockerError> {
    let mode = state.ctx.manager.backend_config();
    config.validate(mode)?;
    containers_only(mode)?;
    if let Err(err) = state
        .ctx
        .manager
        .check_container(&config.container_id)
        .await
    {
        state.ctx.metrics.record_refused(Door::Docker, &err);
        return Err(err.into());
    }
    state.table.create(id.clone(), owner, config)?;
    Ok(created(id))
}

/// `POST /containers/{id}/exec`.
pub(crate) async fn engine_create(
    State(state): State<Shared>,
    Path(p): Path<IdPath>,
    req: Request,
) -> Response {
    let result = async {
        let owner = owner_of(&req);
        let body = read_body(req.into_body()).await?;
        let config = api::parse_json::<EngineExecConfig>(&body)?.into_config(&p.id)?;
        create(&state, engine_exec_id(), &owner, config).await
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

/// `POST /api/v1/namespaces/{ns}/pods/{pod}/exec`, shared with the
/// Kubernetes door: a WebSocket upgrade is theirs, anything else a create.
pub(crate) async fn pod_exec_post(
    State(state): State<Shared>,
    Path(p): Path<PodPath>,
    Query(query): Query<HashMap<String, String>>,
    req: Request,
) -> Response {
    let websocket = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if websocket {
        // the Kubernetes door claims WebSocket upgrades here
        return super::super::fallback(state.ctx.metrics.clone(), req).await;
    }
    let owner = owner_of(&req);
    create_pod_exec(
        &state,
        &p.pod,
        query.get("container").map(String::as_str),
        &owner,
        req.into_body(),
    )
    .await
}

/// The pod API's create: container from `container` or else the pod,
/// counted under the pod as its instance; the exec is `owner`'s.
pub(crate) async fn create_pod_exec(
    state: &DockerState,
    pod: &str,
    container: Option<&str>,
    owner: &str,
    body: Body,
) -> Response {
    let result = async {
        let body = read_body(body).await?;
        let config = api::parse_json::<PodExecConfig>(&body)?.into_config(pod, container)?;
        create(state, pod_exec_id(), owner, config).await
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

/// Whether the client asked to hijack the connection (`Upgrade: tcp`).
fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
}

/// `POST /exec/{id}/start` and `/api/v1/exec/{id}/start`.
pub(crate) async fn start(
    State(state): State<Shared>,
    Path(p): Path<IdPath>,
    req: Request,
) -> Response {
    start_exec(state, p.id, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// The connection to hijack, when the client asked for it and the
/// connection can be taken over (HTTP/1.1).
fn take_upgrade(req: &mut Request) -> Option<hyper::upgrade::OnUpgrade> {
    if !wants_upgrade(req.headers()) {
        return None;
    }
    req.extensions()
        .get::<hyper::upgrade::OnUpgrade>()
        .is_some()
        .then(|| hyper::upgrade::on(req))
}

async fn start_exec(state: Shared, id: String, mut req: Request) -> Result<Response, DockerError> {
    let upgrade = take_upgrade(&mut req);
    let owner = owner_of(&req);
    let body = read_body(req.into_body()).await?;
    let request = api::parse_start(&body)?;
    if request.detach {
        return Err(DockerError::Detach);
    }
    let claimed = state.table.claim(&id, &owner)?;
    let mut config = claimed.config;
    if let Some(size) = request.console_size.filter(|(h, w)| *h > 0 && *w > 0) {
        config.size = Some(size);
    }
    let mut spec = config.spec();
    spec.owner = owner;
    launch(state, id, config, spec, claimed.resizes, upgrade).await
}

/// `POST /containers/{id}/attach?stream=1&stdin=…&stdout=…&stderr=…`: the
/// container's main process, as the CRI attach. Only the attach client is
/// ever killed (the session crate never reaps inside the container for an
/// attach), so leaving, or being cut off, never stops PID 1; no detach
/// keys are honoured. Tracked in the exec table under an `attach-…` id.
pub(crate) async fn engine_attach(
    State(state): State<Shared>,
    Path(p): Path<IdPath>,
    Query(query): Query<HashMap<String, String>>,
    mut req: Request,
) -> Response {
    let result = async {
        let flag = |k: &str| {
            query
                .get(k)
                .is_some_and(|v| matches!(v.as_str(), "1" | "true" | "True"))
        };
        if !flag("stream") {
            return Err(DockerError::BadRequest(
                "only stream=1 attaches are served (execd keeps no logs to replay)".into(),
            ));
        }
        let upgrade = take_upgrade(&mut req);
        let owner = owner_of(&req);
        let target = state
            .ctx
            .manager
            .attach_target(&p.id)
            .await
            .map_err(DockerError::Session)?;
        let config = ExecConfig {
            container_id: p.id.clone(),
            instance_id: p.id.clone(),
            tty: target.tty,
            // Without an open stdin there is nothing to write to.
            attach_stdin: flag("stdin") && target.open_stdin,
            attach_stdout: flag("stdout"),
            attach_stderr: flag("stderr"),
            ..ExecConfig::default()
        };
        let id = format!("attach-{}", new_session_id());
        state.table.create(id.clone(), &owner, config.clone())?;
        let claimed = state.table.claim(&id, &owner)?;
        let mut spec = config.spec();
        spec.kind = SessionKind::Attach;
        spec.attach_stdin = config.attach_stdin;
        spec.command.clear();
        spec.owner = owner;
        launch(state, id, config, spec, claimed.resizes, upgrade).await
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

/// The owner key the token check put on the request (empty without
/// tokens).
fn owner_of(req: &Request) -> String {
    owner_key(req.extensions().get::<crate::auth::Owner>().cloned())
}

fn owner_key(owner: Option<crate::auth::Owner>) -> String {
    owner.map(crate::auth::Owner::into_key).unwrap_or_default()
}

/// The owner key as an extractor, for handlers that take no body.
type OwnerOf = Option<axum::Extension<crate::auth::Owner>>;

/// Marks a claimed exec finished when dropped while still armed.
struct Unfinished {
    state: Shared,
    id: Option<String>,
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.state.table.finish(&id, None);
        }
    }
}

/// Starts the session and answers with its stream: 101 and the hijacked
/// connection, or 200 and the stream as the body.
async fn launch(
    state: Shared,
    id: String,
    config: ExecConfig,
    spec: ExecSpec,
    resizes: tokio::sync::watch::Receiver<Option<Size>>,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Result<Response, DockerError> {
    let span = tracing::info_span!(
        "session",
        session_id = %id,
        door = "docker",
        instance_id = %execd_session::log_field::LogField::new(&spec.instance_id),
        container_id = %execd_session::log_field::LogField::new(&spec.container_id),
        tty = spec.tty,
    );
    // Until the stream takes over, a start abandoned by its client (the
    // request dropped while the session starts) must still leave the
    // table: otherwise the entry stays "running" forever.
    let mut unfinished = Unfinished {
        state: state.clone(),
        id: Some(id.clone()),
    };
    // A refusal is counted and logged by the start itself.
    let opened = state
        .ctx
        .open_session(Some(id.clone()), spec, None, &span)
        .await;
    let (session, input) = match opened {
        Ok(opened) => opened,
        Err(err) => {
            state.table.finish(&id, None);
            return Err(err.into());
        }
    };
    span.in_scope(|| tracing::debug!(upgraded = upgrade.is_some(), "stream transport"));
    unfinished.id = None;
    let started = Started {
        id,
        session,
        input,
        tty: config.tty,
        attach_stdin: config.attach_stdin,
        attach_stdout: config.attach_stdout,
        attach_stderr: config.attach_stderr,
        resizes,
        state: state.clone(),
    };
    Ok(stream_response(started, upgrade))
}

/// The answer that carries a started exec: `101` and the hijacked
/// connection when the client asked to upgrade, else `200` with the output
/// as the body.
fn stream_response(started: Started, upgrade: Option<hyper::upgrade::OnUpgrade>) -> Response {
    let content_type = HeaderValue::from_static(if started.tty {
        "application/vnd.docker.raw-stream"
    } else {
        "application/vnd.docker.multiplexed-stream"
    });
    match upgrade {
        Some(upgrade) => {
            let span = started.session.span().clone();
            tokio::spawn(stream::over_connection(started, upgrade).instrument(span));
            let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
            let h = response.headers_mut();
            h.insert(header::CONTENT_TYPE, content_type);
            h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            h.insert(header::UPGRADE, HeaderValue::from_static("tcp"));
            response
        }
        None => {
            let chunks = stream::over_body(started);
            let body = futures_util::stream::unfold(chunks, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|chunk| (Ok::<_, std::convert::Infallible>(chunk), rx))
            });
            let mut response = Body::from_stream(body).into_response();
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, content_type);
            response
        }
    }
}

/// `POST /exec/{id}/resize?h=…&w=…`.
pub(crate) async fn resize(
    State(state): State<Shared>,
    Path(p): Path<IdPath>,
    owner: OwnerOf,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let owner = owner_key(owner.map(|axum::Extension(o)| o));
    let result = (|| {
        // Unknown ids first: a 404 says more than a 400 about the query.
        state.table.inspect(&p.id, &owner)?;
        let Query(query) =
            query.map_err(|e| DockerError::BadRequest(format!("invalid query: {e}")))?;
        let dim = |name: &str| -> Result<i32, DockerError> {
            let value = query
                .get(name)
                .ok_or_else(|| DockerError::BadRequest(format!("{name} is missing")))?;
            value.parse::<u16>().map(i32::from).map_err(|_| {
                DockerError::BadRequest(format!(
                    "{name}={value:?} is not a terminal size (0 to 65535)"
                ))
            })
        };
        let (h, w) = (dim("h")?, dim("w")?);
        state.table.resize(&p.id, &owner, (h, w))
    })();
    match result {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /exec/{id}/json`: the engine's `ExecInspect` shape.
pub(crate) async fn inspect(
    State(state): State<Shared>,
    Path(p): Path<IdPath>,
    owner: OwnerOf,
) -> Response {
    let owner = owner_key(owner.map(|axum::Extension(o)| o));
    let i = match state.table.inspect(&p.id, &owner) {
        Ok(i) => i,
        Err(e) => return e.into_response(),
    };
    let c = &i.shown;
    axum::Json(serde_json::json!({
        "ID": p.id,
        "Running": i.running,
        "ExitCode": i.exit_code,
        "Pid": 0,
        "OpenStdin": c.attach_stdin,
        "OpenStdout": c.attach_stdout,
        "OpenStderr": c.attach_stderr,
        "CanRemove": false,
        "DetachKeys": "",
        "ProcessConfig": {
            "tty": c.tty,
            "entrypoint": c.entrypoint,
            "arguments": c.arguments,
            "user": c.user,
            "privileged": false,
        },
        "ContainerID": c.container_id,
    }))
    .into_response()
}

/// The engine's `GET /containers/{id}/json` answer, from the local Engine
/// API or else `<cli> container inspect`, through the session manager (and
/// so its engine gate and its short reuse of a running container's answer).
pub(crate) async fn engine_inspect(ctx: &DoorContext, id: &str) -> Result<String, DockerError> {
    let mode = ctx.manager.backend_config();
    containers_only(mode)?;
    // The session's own words for a name that is no container reference.
    let probe = execd_session::ExecSpec {
        container_id: id.to_string(),
        ..Default::default()
    };
    probe
        .validate(mode)
        .map_err(|e| DockerError::Session(e.into()))?;
    match ctx.manager.container_document(id).await {
        Ok(ContainerDocument::Found(body)) => Ok(body.to_string()),
        Ok(ContainerDocument::Missing(message)) => Err(DockerError::Engine {
            status: StatusCode::NOT_FOUND,
            message: message.to_string(),
        }),
        Err(e) => Err(e.into()),
    }
}
