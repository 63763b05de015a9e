//! The API-server surface a kube client reads around the stream: discovery
//! (`/api`, `/apis`, `/api/v1`) and pods (`GET …/pods/{pod}`, `GET …/pods`,
//! `GET /api/v1/pods`). kubectl reads discovery before `exec` and `attach`,
//! and GETs the pod (its phase, its containers, for `attach` its stdin and
//! tty) before it upgrades; `kubectl cp` GETs the pod too.
//!
//! A pod here is a container, as the exec path already maps it (pod =
//! container = `instance_id`): the pod's one container is the container
//! itself, its phase follows the container's state (Running, Pending for
//! created, Succeeded or Failed for exited). Discovery lists `pods` with
//! the verbs get and list and the subresources `pods/exec` and
//! `pods/attach` — nothing more, so clients do not expect more. Namespaces
//! are accepted and ignored. The same token rule as the stream paths.
//!
//! Human output (`kubectl get pods`, `-o wide`) needs the server-side
//! `Table` that kubectl asks for in its `Accept`; `-o json` and other
//! clients get the `Pod`/`PodList` itself.

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use execd_session::ContainerInfo;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use serde_json::{json, Value};

use super::{check_auth, status};
use crate::doors::DoorContext;

/// The Kubernetes API level the door implements: the WebSocket
/// remotecommand protocol (v5) kubectl speaks from 1.30 on.
pub const KUBE_MAJOR: &str = "1";
pub const KUBE_MINOR: &str = "33";

/// Content type of an aggregated discovery answer: client-go decides the
/// format by it, not by the body.
const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io";

pub(crate) fn router(ctx: DoorContext) -> axum::Router {
    axum::Router::new()
        .route("/api", get(api))
        .route("/apis", get(apis))
        .route("/api/v1", get(api_v1))
        .route("/api/v1/pods", get(all_pods))
        .route("/api/v1/namespaces/{namespace}/pods", get(pods))
        .route("/api/v1/namespaces/{namespace}/pods/{pod}", get(pod))
        .with_state(ctx)
}

fn accepts(headers: &HeaderMap, what: &str) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let params: Vec<&str> = item.split(';').map(str::trim).collect();
            what.split(';')
                .all(|want| params.iter().any(|p| p.eq_ignore_ascii_case(want)))
        })
}

fn wants_aggregated(headers: &HeaderMap) -> bool {
    accepts(
        headers,
        "g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
    )
}

fn wants_table(headers: &HeaderMap) -> bool {
    accepts(headers, "g=meta.k8s.io;v=v1;as=Table")
}

fn typed(content_type: &'static str, body: Value) -> Response {
    let mut resp = axum::Json(body).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// A discovery answer: the aggregated form for a client that asks for it
/// (client-go does), else the legacy one.
fn discovery(headers: &HeaderMap, aggregated: Value, legacy: Value) -> Response {
    if wants_aggregated(headers) {
        return typed(AGGREGATED, aggregated);
    }
    axum::Json(legacy).into_response()
}

/// The token check of the stream paths: the `Status` refusal, if any.
fn refusal(ctx: &DoorContext, req: &Request) -> Option<Response> {
    check_auth(ctx, req.headers())
        .err()
        .map(|e| super::refuse(ctx, execd_session::Door::Kube, e))
}

fn pods_resource() -> Value {
    json!({
        "resource": "pods",
        "responseKind": {"group": "", "version": "v1", "kind": "Pod"},
        "scope": "Namespaced",
        "singularResource": "pod",
        "verbs": ["get", "list"],
        "shortNames": ["po"],
        "subresources": [
            {"subresource": "attach", "responseKind": {"group": "", "version": "v1", "kind": "PodAttachOptions"}, "verbs": ["create", "get"]},
            {"subresource": "exec", "responseKind": {"group": "", "version": "v1", "kind": "PodExecOptions"}, "verbs": ["create", "get"]},
        ],
    })
}

async fn api(State(ctx): State<DoorContext>, req: Request) -> Response {
    if let Some(refused) = refusal(&ctx, &req) {
        return refused;
    }
    discovery(
        req.headers(),
        json!({
            "kind": "APIGroupDiscoveryList",
            "apiVersion": "apidiscovery.k8s.io/v2",
            "metadata": {},
            "items": [{
                "metadata": {"creationTimestamp": null},
                "versions": [{"version": "v1", "resources": [pods_resource()], "freshness": "Current"}],
            }],
        }),
        json!({"kind": "APIVersions", "versions": ["v1"]}),
    )
}

/// No API groups besides the core one.
async fn apis(State(ctx): State<DoorContext>, req: Request) -> Response {
    if let Some(refused) = refusal(&ctx, &req) {
        return refused;
    }
    discovery(
        req.headers(),
        json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": []}),
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []}),
    )
}

async fn api_v1(State(ctx): State<DoorContext>, req: Request) -> Response {
    if let Some(refused) = refusal(&ctx, &req) {
        return refused;
    }
    let sub = |name: &str, kind: &str| json!({"name": name, "singularName": "", "namespaced": true, "kind": kind, "verbs": ["create", "get"]});
    axum::Json(json!({
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod",
             "verbs": ["get", "list"], "shortNames": ["po"]},
            sub("pods/attach", "PodAttachOptions"),
            sub("pods/exec", "PodExecOptions"),
        ],
    }))
    .into_response()
}

#[derive(Debug, serde::Deserialize)]
struct PodPath {
    namespace: String,
    pod: String,
}

#[derive(Debug, serde::Deserialize)]
struct NamespacePath {
    namespace: String,
}

fn engine_error(e: execd_session::ContainerQueryError) -> Response {
    use execd_session::ContainerQueryError as E;
    let (code, reason) = match e {
        E::HostMode => (StatusCode::NOT_FOUND, "NotFound"),
        E::BadReference(_) => (StatusCode::BAD_REQUEST, "BadRequest"),
        E::TimedOut => (StatusCode::GATEWAY_TIMEOUT, "Timeout"),
        E::Engine(_) => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
        // Too many engine queries at once: the API server's 429.
        E::Busy { .. } => (StatusCode::TOO_MANY_REQUESTS, "TooManyRequests"),
    };
    status::response(code, reason, &e.to_string())
}

/// `pods "x" not found`, as the API server writes it.
fn not_found(pod: &str) -> Response {
    let mut body = status::failure(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("pods \"{pod}\" not found"),
    );
    body["details"] = json!({"name": pod, "kind": "pods"});
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

async fn pod(State(ctx): State<DoorContext>, Path(p): Path<PodPath>, req: Request) -> Response {
    if let Some(refused) = refusal(&ctx, &req) {
        return refused;
    }
    let info = match ctx.manager.inspect_container(&p.pod).await {
        Ok(Some(info)) => info,
        Ok(None) => return not_found(&p.pod),
        // A name no container can have is no pod either.
        Err(execd_session::ContainerQueryError::BadReference(_)) => return not_found(&p.pod),
        Err(e) => return engine_error(e),
    };
    let pod = pod_object(&info, &p.pod, &p.namespace);
    if wants_table(req.headers()) {
        return typed(TABLE, table(&[pod]));
    }
    axum::Json(pod).into_response()
}

async fn pods(
    State(ctx): State<DoorContext>,
    Path(p): Path<NamespacePath>,
    req: Request,
) -> Response {
    list(ctx, &p.namespace, req).await
}

async fn all_pods(State(ctx): State<DoorContext>, req: Request) -> Response {
    list(ctx, "default", req).await
}

/// The running containers as pods.
async fn list(ctx: DoorContext, namespace: &str, req: Request) -> Response {
    if let Some(refused) = refusal(&ctx, &req) {
        return refused;
    }
    let containers = match ctx.manager.running_containers().await {
        Ok(list) => list,
        Err(e) => return engine_error(e),
    };
    let pods: Vec<Value> = containers
        .iter()
        .map(|c| pod_object(c, &c.name, namespace))
        .collect();
    if wants_table(req.headers()) {
        return typed(TABLE, table(&pods));
    }
    axum::Json(json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": ""},
        "items": pods,
    }))
    .into_response()
}

/// `2026-12-02T07:25:12.715825123Z` → `2026-12-02T07:25:12Z` (the API
/// server's precision); the engine's "never" stays out.
fn timestamp(engine: &str) -> Option<String> {
    let time = humantime::parse_rfc3339_weak(engine.trim_end_matches('Z')).ok()?;
    let secs = time.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    (secs > 0).then(|| {
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
        )
        .to_string()
    })
}

/// A UID for the pod, stable per container: its id as a UUID.
fn uid(id: &str) -> String {
    let hex: String = id
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(32)
        .collect();
    if hex.len() < 32 {
        return id.to_string();
    }
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn phase(info: &ContainerInfo) -> &'static str {
    match info.status.as_str() {
        "running" | "paused" | "restarting" => "Running",
        "created" => "Pending",
        "exited" | "dead" if info.exit_code == 0 => "Succeeded",
        "exited" | "dead" => "Failed",
        _ => "Unknown",
    }
}

fn container_state(info: &ContainerInfo) -> Value {
    match phase(info) {
        "Running" => json!({"running": {"startedAt": timestamp(&info.started_at)}}),
        "Pending" => json!({"waiting": {"reason": "ContainerCreating"}}),
        "Succeeded" | "Failed" => json!({"terminated": {
            "exitCode": info.exit_code,
            "reason": if info.exit_code == 0 { "Completed" } else { "Error" },
            "startedAt": timestamp(&info.started_at),
            "finishedAt": timestamp(&info.finished_at),
        }}),
        _ => json!({"waiting": {"reason": info.status}}),
    }
}

fn node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// The `v1.Pod` for a container; `name` is how the client named it.
fn pod_object(info: &ContainerInfo, name: &str, namespace: &str) -> Value {
    let running = info.running();
    json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid(&info.id),
            "creationTimestamp": timestamp(&info.created),
            "labels": info.labels,
            "annotations": {"kubectl.kubernetes.io/default-container": info.name},
        },
        "spec": {
            "containers": [{
                "name": info.name,
                "image": info.image,
                "stdin": info.open_stdin,
                "tty": info.tty,
            }],
            "nodeName": node_name(),
            "restartPolicy": "Never",
        },
        "status": {
            "phase": phase(info),
            "startTime": timestamp(&info.started_at),
            "containerStatuses": [{
                "name": info.name,
                "ready": running,
                "started": running,
                "restartCount": 0,
                "image": info.image,
                "imageID": "",
                "containerID": format!("docker://{}", info.id),
                "state": container_state(info),
            }],
        },
    })
}

/// kubectl's `AGE`: `45s`, `3m20s`, `5h`, `12d`.
fn age(created: Option<&str>) -> String {
    let Some(created) = created.and_then(|c| humantime::parse_rfc3339(c).ok()) else {
        return "<unknown>".into();
    };
    let secs = std::time::SystemTime::now()
        .duration_since(created)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86_400);
    match () {
        _ if secs < 120 => format!("{secs}s"),
        _ if m < 10 && secs % 60 != 0 => format!("{m}m{}s", secs % 60),
        _ if m < 180 => format!("{m}m"),
        _ if h < 8 && m % 60 != 0 => format!("{h}h{}m", m % 60),
        _ if h < 48 => format!("{h}h"),
        _ if d < 8 && h % 24 != 0 => format!("{d}d{}h", h % 24),
        _ if d < 730 => format!("{d}d"),
        _ => format!("{}y", d / 365),
    }
}

/// The `meta.k8s.io/v1` Table kubectl prints, with the API server's pod
/// columns (the last four only for `-o wide`).
fn table(pods: &[Value]) -> Value {
    let column = |name: &str, priority: u8| json!({"name": name, "type": "string", "format": if name == "Name" { "name" } else { "" }, "description": "", "priority": priority});
    let rows: Vec<Value> = pods
        .iter()
        .map(|pod| {
            let phase = pod["status"]["phase"].as_str().unwrap_or_default();
            let ready = pod["status"]["containerStatuses"][0]["ready"].as_bool() == Some(true);
            let shown = match phase {
                "Succeeded" => "Completed",
                "Failed" => "Error",
                other => other,
            };
            json!({
                "cells": [
                    pod["metadata"]["name"],
                    if ready { "1/1" } else { "0/1" },
                    shown,
                    "0",
                    age(pod["metadata"]["creationTimestamp"].as_str()),
                    "<none>",
                    pod["spec"]["nodeName"],
                    "<none>",
                    "<none>",
                ],
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": pod["metadata"],
                },
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": ""},
        "columnDefinitions": [
            column("Name", 0), column("Ready", 0), column("Status", 0), column("Restarts", 0),
            column("Age", 0), column("IP", 1), column("Node", 1), column("Nominated Node", 1),
            column("Readiness Gates", 1),
        ],
        "rows": rows,
    })
}

/// `/version` without an API prefix: one document that a kube client
/// reads as `version.Info` and the Docker clients as their own (they ask
/// `/vN.NN/version`, which keeps Docker's document). Go matches JSON keys
/// case-insensitively: Docker's `Platform` object would collide with
/// kube's `platform` string, so it is left out here; `GitCommit` and
/// `GoVersion` carry the same values under both spellings.
pub(crate) fn merge_version(mut docker: Value) -> Value {
    if let Some(map) = docker.as_object_mut() {
        map.remove("Platform");
        let arch = map
            .get("Arch")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let pkg = env!("CARGO_PKG_VERSION");
        let git_commit = map.get("GitCommit").cloned().unwrap_or(json!(""));
        let go_version = map.get("GoVersion").cloned().unwrap_or(json!(""));
        for (key, value) in [
            ("major", json!(KUBE_MAJOR)),
            ("minor", json!(KUBE_MINOR)),
            (
                "gitVersion",
                json!(format!("v{KUBE_MAJOR}.{KUBE_MINOR}.0+execd.{pkg}")),
            ),
            ("gitCommit", git_commit),
            ("gitTreeState", json!("")),
            ("buildDate", json!("")),
            ("goVersion", go_version),
            ("compiler", json!("rustc")),
            ("platform", json!(format!("linux/{arch}"))),
        ] {
            map.insert(key.to_string(), value);
        }
    }
    docker
}

/// An `Upgrade: SPDY/3.1` request: kubectl's retry after a refused
/// WebSocket upgrade (see [`super::spdy_fallback`]).
pub(crate) fn is_spdy(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().to_ascii_uppercase().starts_with("SPDY/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_forms() {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"));
        assert!(wants_aggregated(&h));
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"));
        assert!(!wants_aggregated(&h));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static(
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
            ),
        );
        assert!(wants_table(&h));
        assert!(!wants_table(&HeaderMap::new()));
    }

    #[test]
    fn pods_from_containers() {
        let info = ContainerInfo {
            id: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into(),
            name: "web".into(),
            image: "busybox".into(),
            status: "exited".into(),
            exit_code: 2,
            created: "2026-01-01T00:00:00.123456789Z".into(),
            started_at: "2026-01-01T00:00:01Z".into(),
            finished_at: "0001-01-01T00:00:00Z".into(),
            ..ContainerInfo::default()
        };
        let pod = pod_object(&info, "web", "ns");
        assert_eq!(pod["status"]["phase"], "Failed");
        assert_eq!(pod["metadata"]["creationTimestamp"], "2026-01-01T00:00:00Z");
        assert_eq!(
            pod["metadata"]["uid"],
            "01234567-89ab-cdef-0123-456789abcdef"
        );
        assert_eq!(
            pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"],
            2
        );
        assert_eq!(
            pod["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"],
            Value::Null
        );
        let t = table(&[pod]);
        assert_eq!(t["rows"][0]["cells"][2], "Error");
        assert_eq!(t["columnDefinitions"].as_array().unwrap().len(), 9);
    }

    #[test]
    fn one_version_document_for_both_clients() {
        let merged = merge_version(
            json!({"Platform": {"Name": "execd"}, "Version": "0.1.0", "Arch": "amd64", "GitCommit": "", "GoVersion": ""}),
        );
        assert!(merged.get("Platform").is_none());
        assert_eq!(merged["platform"], "linux/amd64");
        assert_eq!(merged["Version"], "0.1.0");
        assert_eq!(merged["major"], "1");
        let git_version = merged["gitVersion"].as_str().unwrap();
        assert!(git_version.starts_with("v1.33.0+"), "{git_version}");
    }

    #[test]
    fn ages_read_like_kubectl() {
        let ago = |secs: u64| {
            let t = std::time::SystemTime::now() - std::time::Duration::from_secs(secs);
            age(Some(&humantime::format_rfc3339_seconds(t).to_string()))
        };
        assert_eq!(ago(45), "45s");
        assert_eq!(ago(200), "3m20s");
        assert_eq!(ago(5 * 3600), "5h");
        assert_eq!(ago(12 * 86_400), "12d");
    }
}
