//! The Kubernetes front door: the pod `exec`/`attach` paths of the API
//! server and the single-use streaming URLs that CRI `Exec`/`Attach`
//! ([`crate::doors::cri`]) hand out, all upgraded to the remotecommand
//! WebSocket protocol (`stream`).
//!
//! - `GET|POST /api/v1/namespaces/{ns}/pods/{pod}/exec?command=…&…` and
//!   `…/attach?…`: what kube clients open with `host = http://execd`. The
//!   container is `container` when given, else the pod name; the pod name is
//!   the session's `instance_id`; the namespace is not used. Only requests
//!   with `Upgrade: websocket` belong here: any other request on the exec
//!   path goes to the handler given to `router` (the Docker-style door's).
//! - `GET /exec/{token}`, `GET /attach/{token}`: the CRI streaming URLs;
//!   the token is the capability, no bearer token is needed.
//!
//! Everything that can be refused is refused before the upgrade, with an
//! HTTP code and a Kubernetes `Status` body (`status`): the session is
//! started first, and only a running session is upgraded.

pub mod api;
pub(crate) mod status;
pub(crate) mod stream;
pub mod tokens;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, MethodRouter};
use base64::Engine as _;
use execd_session::log_field::LogField;
use execd_session::{Door, ExecSpec, SessionError, SessionKind};
use http::{HeaderMap, StatusCode};
use tower::ServiceExt;
use tracing::Instrument;

use super::DoorContext;
pub(crate) use tokens::{StreamTokens, TokenError};

/// Prefix of the subprotocol that carries a bearer token (base64url), for
/// WebSocket clients that cannot set headers (browsers).
const BEARER_PROTOCOL: &str = "base64url.bearer.authorization.k8s.io.";

/// Query parameters that would carry a credential; refused outright, since
/// query strings end up in logs and histories.
const TOKEN_PARAMS: [&str; 4] = ["access_token", "token", "bearer", "authorization"];

#[derive(Debug, thiserror::Error)]
pub(crate) enum KubeError {
    #[error("{0}")]
    BadRequest(String),
    #[error("Unauthorized")]
    Unauthorized,
    #[error("streaming URL not found (unknown, already used or expired)")]
    UnknownToken,
    #[error("Upgrade request required")]
    UpgradeRequired,
    #[error("{}", crate::error_text::ClientText(.0))]
    Session(#[from] SessionError),
}

impl IntoResponse for KubeError {
    fn into_response(self) -> Response {
        let (code, reason) = match &self {
            KubeError::BadRequest(_) | KubeError::UpgradeRequired => {
                (StatusCode::BAD_REQUEST, "BadRequest")
            }
            KubeError::Unauthorized => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            KubeError::UnknownToken => (StatusCode::NOT_FOUND, "NotFound"),
            KubeError::Session(err) => status::http_status(err.kind()),
        };
        status::response(code, reason, &self.to_string())
    }
}

/// What to start when a stream is opened: from a pod path's query, or
/// stored under a CRI token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StreamRequest {
    pub(crate) door: Door,
    pub(crate) kind: SessionKind,
    pub(crate) container_id: String,
    /// Exec only.
    pub(crate) command: Vec<String>,
    pub(crate) instance_id: String,
    pub(crate) stdin: bool,
    pub(crate) stdout: bool,
    pub(crate) stderr: bool,
    /// For an attach: whether the container has a terminal (from inspect).
    pub(crate) tty: bool,
    /// Opaque key of the token that asked (empty without tokens): sessions
    /// count against `--max-sessions-per-token` whatever the door.
    pub(crate) owner: String,
    /// Pod paths only (`session=<id>`): the session's id, chosen by the
    /// client so that it can come back to the session with it when execd
    /// runs with `--reattach-grace`. CRI URLs are single-use: never.
    pub(crate) session_id: Option<String>,
}

impl StreamRequest {
    /// The spec the stream's session starts with.
    pub(crate) fn spec(&self) -> ExecSpec {
        ExecSpec {
            door: self.door,
            kind: self.kind,
            container_id: self.container_id.clone(),
            command: self.command.clone(),
            tty: self.tty,
            instance_id: self.instance_id.clone(),
            attach_stdin: self.stdin,
            owner: self.owner.clone(),
            ..ExecSpec::default()
        }
    }
}

/// The door's routes. `plain_exec` serves requests on the pod exec path
/// that are not WebSocket upgrades (the Docker-style door's `POST`);
/// without one they get 400 "Upgrade request required", as from the API
/// server.
pub(crate) fn router(ctx: DoorContext, plain_exec: Option<MethodRouter>) -> axum::Router {
    let exec = move |State(ctx): State<DoorContext>, Path(path): Path<PodPath>, req: Request| {
        let plain = plain_exec.clone();
        async move {
            if api::is_spdy(req.headers()) {
                return spdy_fallback(ctx, path, SessionKind::Exec, req).await;
            }
            if !wants_websocket(req.headers()) {
                // Only a POST is the Docker-style create; anything else
                // without an upgrade is a Kubernetes client that must upgrade.
                let plain = plain.filter(|_| req.method() == http::Method::POST);
                return match plain {
                    Some(plain) => match plain.oneshot(req).await {
                        Ok(resp) => resp,
                        Err(never) => match never {},
                    },
                    None => KubeError::UpgradeRequired.into_response(),
                };
            }
            pod_stream(ctx, path, SessionKind::Exec, req).await
        }
    };
    let attach = |State(ctx): State<DoorContext>, Path(path): Path<PodPath>, req: Request| async move {
        if api::is_spdy(req.headers()) {
            return spdy_fallback(ctx, path, SessionKind::Attach, req).await;
        }
        if !wants_websocket(req.headers()) {
            return KubeError::UpgradeRequired.into_response();
        }
        pod_stream(ctx, path, SessionKind::Attach, req).await
    };
    axum::Router::new()
        .route("/api/v1/namespaces/{namespace}/pods/{pod}/exec", any(exec))
        .route(
            "/api/v1/namespaces/{namespace}/pods/{pod}/attach",
            any(attach),
        )
        .route("/exec/{token}", token_route(SessionKind::Exec))
        .route("/attach/{token}", token_route(SessionKind::Attach))
        .with_state(ctx.clone())
        .merge(api::router(ctx))
}

#[derive(Debug, serde::Deserialize)]
struct PodPath {
    #[allow(dead_code)]
    namespace: String,
    pod: String,
}

fn wants_websocket(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// `strconv.ParseBool`, as the API server parses these parameters.
fn parse_bool(name: &str, value: &str) -> Result<bool, KubeError> {
    match value {
        "1" | "t" | "T" | "true" | "True" | "TRUE" => Ok(true),
        "" | "0" | "f" | "F" | "false" | "False" | "FALSE" => Ok(false),
        _ => Err(KubeError::BadRequest(format!(
            "query parameter {name}={:?} is not a boolean",
            value.chars().take(32).collect::<String>()
        ))),
    }
}

/// The bearer token of a request: exactly one `Authorization: Bearer …`,
/// or else one base64url subprotocol ([`crate::auth::bearer_or_subprotocol`]);
/// none when it is missing, malformed or ambiguous.
fn bearer(headers: &HeaderMap) -> Option<Vec<u8>> {
    crate::auth::bearer_or_subprotocol(headers, BEARER_PROTOCOL, |b64| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(b64.trim_end_matches('='))
            .ok()
    })
    .ok()
    .flatten()
}

/// Admits the request: its bearer token, or `None` when the server runs
/// without tokens. Refusals are counted and logged (rate-limited) by the
/// token store.
fn check_auth(ctx: &DoorContext, headers: &HeaderMap) -> Result<Option<Vec<u8>>, KubeError> {
    let Some(store) = &ctx.auth else {
        return Ok(None);
    };
    let presented = match bearer(headers) {
        Some(token) => Ok(Some(token)),
        // Why there is none (missing, malformed, ambiguous), for the log.
        None => crate::auth::bearer_or_subprotocol(headers, BEARER_PROTOCOL, |_| None),
    };
    match store.admit(presented, &ctx.metrics, "kube") {
        Ok(token) => Ok(Some(token)),
        Err(_) => Err(KubeError::Unauthorized),
    }
}

/// Admits the request and names its owner (empty without tokens) as every
/// door does ([`crate::auth::Owner::of_request`]): the token's key, with
/// mutual TLS together with the connection's client certificate.
fn check_owner(ctx: &DoorContext, parts: &http::request::Parts) -> Result<String, KubeError> {
    let owner = check_auth(ctx, &parts.headers)?
        .map(|token| crate::auth::Owner::of_request(&token, &parts.extensions).into_key());
    Ok(owner.unwrap_or_default())
}

/// The pod exec/attach request from its query string.
fn pod_request(
    kind: SessionKind,
    pod: &str,
    query: &[(String, String)],
) -> Result<StreamRequest, KubeError> {
    let mut request = StreamRequest {
        door: Door::Kube,
        kind,
        container_id: pod.to_string(),
        command: Vec::new(),
        instance_id: pod.to_string(),
        stdin: false,
        stdout: false,
        stderr: false,
        tty: false,
        owner: String::new(),
        session_id: None,
    };
    for (key, value) in query {
        match key.as_str() {
            "command" if kind == SessionKind::Exec => request.command.push(value.clone()),
            "container" if !value.is_empty() => request.container_id = value.clone(),
            "stdin" => request.stdin = parse_bool(key, value)?,
            "stdout" => request.stdout = parse_bool(key, value)?,
            "stderr" => request.stderr = parse_bool(key, value)?,
            "tty" => request.tty = parse_bool(key, value)?,
            "session" if !value.is_empty() => request.session_id = Some(value.clone()),
            k if TOKEN_PARAMS.contains(&k.to_ascii_lowercase().as_str()) => {
                return Err(KubeError::BadRequest(
                    "tokens are not accepted in the query string; send Authorization: Bearer or the base64url.bearer.authorization.k8s.io subprotocol".into(),
                ));
            }
            _ => {}
        }
    }
    if kind == SessionKind::Exec && request.command.is_empty() {
        return Err(KubeError::BadRequest(
            "you must specify at least one command for the container".into(),
        ));
    }
    if !(request.stdin || request.stdout || request.stderr) {
        return Err(KubeError::BadRequest(
            "you must specify at least one of stdin, stdout, stderr".into(),
        ));
    }
    Ok(request)
}

/// Everything a pod stream checks before its upgrade: the query, the
/// token, and for an attach the container's stdin and terminal.
async fn admit_pod(
    ctx: &DoorContext,
    path: &PodPath,
    kind: SessionKind,
    parts: &http::request::Parts,
) -> Result<StreamRequest, KubeError> {
    let query = Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
        .map_err(|e| KubeError::BadRequest(e.body_text()))?
        .0;
    // A token in the query string is refused even when it would be valid.
    let mut request = pod_request(kind, &path.pod, &query)?;
    request.owner = check_owner(ctx, parts)?;
    if kind == SessionKind::Attach {
        let target = ctx.manager.attach_target(&request.container_id).await?;
        if request.stdin && !target.open_stdin {
            return Err(KubeError::BadRequest(format!(
                "container {} was not created with an open stdin (docker run -i); attach without stdin",
                request.container_id
            )));
        }
        request.tty = target.tty;
    }
    Ok(request)
}

async fn pod_stream(ctx: DoorContext, path: PodPath, kind: SessionKind, req: Request) -> Response {
    let (mut parts, _body) = req.into_parts();
    let result = async {
        let request = admit_pod(&ctx, &path, kind, &parts).await?;
        // WebSocket is GET; some clients upgrade a POST (the exec verb).
        parts.method = http::Method::GET;
        let ws = WebSocketUpgrade::from_request_parts(&mut parts, &())
            .await
            .map_err(|e| KubeError::BadRequest(e.body_text()))?;
        Ok::<_, KubeError>((request, ws))
    }
    .await;
    match result {
        Ok((request, ws)) => upgrade(ctx, request, ws).await,
        Err(e) => refuse(&ctx, Door::Kube, e),
    }
}

/// kubectl retries a refused WebSocket upgrade with `Upgrade: SPDY/3.1`,
/// and shows its user only that second answer. So the retry runs the same
/// checks and answers the real reason (NotFound, BadRequest, Unauthorized,
/// …); when everything would have worked, it says that execd speaks only
/// the WebSocket protocol.
async fn spdy_fallback(
    ctx: DoorContext,
    path: PodPath,
    kind: SessionKind,
    req: Request,
) -> Response {
    let (parts, _body) = req.into_parts();
    crate::doors::log_refusal(
        &ctx.metrics,
        &http::Request::from_parts(parts.clone(), ()),
        "kube",
        "spdy",
    );
    let why = match admit_pod(&ctx, &path, kind, &parts).await {
        Err(e) => e,
        Ok(request) => match ctx.manager.check_container(&request.container_id).await {
            Err(e) => KubeError::Session(e),
            Ok(()) => KubeError::BadRequest(
                "execd speaks the WebSocket remotecommand protocol (v5.channel.k8s.io, used by kubectl 1.30 and later), not SPDY".into(),
            ),
        },
    };
    refuse(&ctx, Door::Kube, why)
}

/// `GET /exec/{token}` or `GET /attach/{token}`.
fn token_route(kind: SessionKind) -> MethodRouter<DoorContext> {
    get(
        move |State(ctx): State<DoorContext>, Path(token): Path<String>, req: Request| {
            token_stream(ctx, kind, token, req)
        },
    )
}

async fn token_stream(
    ctx: DoorContext,
    kind: SessionKind,
    token: String,
    req: Request,
) -> Response {
    let (mut parts, _body) = req.into_parts();
    // The upgrade and its subprotocol are checked before the token is
    // spent: a prefetcher's or a proxy's plain GET, or a client offering
    // only protocols execd does not speak, must not use up the single-use
    // URL. (`upgrade` negotiates again, with the same outcome.)
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(ws) => ws,
        Err(e) => return refuse(&ctx, Door::Cri, KubeError::BadRequest(e.body_text())),
    };
    let ws = match negotiate(ws) {
        Ok((ws, _)) => ws,
        Err(e) => return refuse(&ctx, Door::Cri, e),
    };
    // Removed under the store's lock: of concurrent upgrades of one URL,
    // exactly one gets the request.
    let Some(request) = ctx.streams.redeem(kind.as_str(), &token) else {
        return refuse(&ctx, Door::Cri, KubeError::UnknownToken);
    };
    upgrade(ctx, request, ws).await
}

fn refuse(ctx: &DoorContext, door: Door, err: KubeError) -> Response {
    match &err {
        KubeError::Session(e) => ctx.metrics.record_refused(door, e),
        // Counted and logged by the credential check ([`check_auth`]), at a
        // bounded rate: a flood of wrong tokens must not flood the log.
        KubeError::Unauthorized => {}
        _ => tracing::info!(error = %err, "kube stream refused"),
    }
    err.into_response()
}

/// Picks the newest subprotocol both sides speak; no offer at all means
/// the original binary protocol.
fn negotiate(ws: WebSocketUpgrade) -> Result<(WebSocketUpgrade, stream::Protocol), KubeError> {
    let offered = ws.requested_protocols().next().is_some();
    let ws = ws.protocols(stream::PROTOCOLS);
    let chosen = ws
        .selected_protocol()
        .and_then(|p| p.to_str().ok())
        .map(str::to_string);
    match chosen.as_deref().and_then(stream::Protocol::from_name) {
        Some(p) => Ok((ws, p)),
        // Only a bearer-token subprotocol was offered: like no offer.
        None if !offered || only_bearer(&ws) => Ok((ws, stream::Protocol::V1)),
        None => Err(KubeError::BadRequest(format!(
            "none of the offered WebSocket subprotocols is supported (supported: {})",
            stream::PROTOCOLS.join(", ")
        ))),
    }
}

fn only_bearer(ws: &WebSocketUpgrade) -> bool {
    ws.requested_protocols()
        .all(|p| p.to_str().is_ok_and(|p| p.starts_with(BEARER_PROTOCOL)))
}

/// Starts the session, then answers 101 and hands the socket over.
async fn upgrade(ctx: DoorContext, request: StreamRequest, ws: WebSocketUpgrade) -> Response {
    let (ws, protocol) = match negotiate(ws) {
        Ok(n) => n,
        Err(e) => return refuse(&ctx, request.door, e),
    };
    let session_id = request
        .session_id
        .clone()
        .unwrap_or_else(execd_session::new_session_id);
    let span = tracing::info_span!(
        "session",
        session_id = %LogField::new(&session_id),
        door = request.door.as_str(),
        kind = request.kind.as_str(),
        instance_id = %LogField::new(&request.instance_id),
        container_id = %LogField::new(&request.container_id),
        tty = request.tty,
    );
    // A refusal is counted and logged by the start itself. Only a session
    // the client named (`session=`) can be come back to.
    let reattach = request
        .session_id
        .is_some()
        .then_some(execd_session::ReplayFrom::Undelivered);
    let opened = ctx
        .open_session(Some(session_id), request.spec(), reattach, &span)
        .await;
    let (session, input) = match opened {
        Ok(opened) => opened,
        Err(e) => return KubeError::Session(e).into_response(),
    };
    span.in_scope(|| tracing::debug!(?protocol, "stream protocol"));
    let streams = stream::Streams {
        stdin: request.stdin,
        stdout: request.stdout,
        stderr: request.stderr,
        tty: request.tty,
        kind: request.kind,
    };
    crate::doors::serve::websocket_response(ws, ctx.max_message_size, move |socket| {
        stream::serve(socket, protocol, streams, session, input).instrument(span)
    })
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn pod_queries_parse_like_the_api_server() {
        let r = pod_request(
            SessionKind::Exec,
            "web",
            &q(&[
                ("command", "sh"),
                ("command", "-c"),
                ("command", "echo hi"),
                ("stdout", "True"),
                ("stderr", "1"),
                ("tty", "false"),
            ]),
        )
        .unwrap();
        assert_eq!(r.command, ["sh", "-c", "echo hi"]);
        assert_eq!(r.container_id, "web");
        assert_eq!(r.instance_id, "web");
        assert!(r.stdout && r.stderr && !r.stdin && !r.tty);
        let r = pod_request(
            SessionKind::Attach,
            "pod",
            &q(&[("container", "c1"), ("stdin", "true")]),
        )
        .unwrap();
        assert_eq!(
            (r.container_id.as_str(), r.instance_id.as_str()),
            ("c1", "pod")
        );
        for bad in [
            q(&[("stdout", "true")]),
            q(&[("command", "x")]),
            q(&[("command", "x"), ("stdout", "yes")]),
            q(&[("command", "x"), ("stdout", "1"), ("access_token", "t")]),
        ] {
            assert!(
                pod_request(SessionKind::Exec, "p", &bad).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn bearer_from_header_or_subprotocol() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer s3cret"));
        assert_eq!(bearer(&h).as_deref(), Some(&b"s3cret"[..]));
        let mut h = HeaderMap::new();
        let proto = format!(
            "v4.channel.k8s.io, {BEARER_PROTOCOL}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("s3cret")
        );
        h.insert(
            "sec-websocket-protocol",
            HeaderValue::from_str(&proto).unwrap(),
        );
        assert_eq!(bearer(&h).as_deref(), Some(&b"s3cret"[..]));
        assert_eq!(bearer(&HeaderMap::new()), None);
    }
}
