//! Telling "the container is not there" apart from "the process exited 1".
//!
//! `docker exec` exits 1 both when the engine refuses the exec (no such
//! container, container stopped, engine down) and when the process inside
//! exits 1. execd asks the engine directly instead, at the same moment as
//! the exec starts, so it costs no latency on the happy path. STARTED is sent
//! only once the engine has confirmed a running container; otherwise the
//! session ends with the engine's own message.
//!
//! For `docker` talking to a local unix socket, the question goes straight
//! to the Engine API (`GET /containers/{id}/json`, about a millisecond and
//! no extra process competing with the exec for CPU). Any other runtime CLI,
//! or an API that cannot be reached, is asked with `<cli> container
//! inspect`, which knows the CLI's contexts and configuration.
//!
//! Doors that check a container before any session exists use
//! [`check_out_of_session`]: the same question behind the session
//! manager's [`EngineGate`], which every out-of-session engine query passes
//! (the `containers` module's too): at most [`MAX_ENGINE_CALLS`] at once,
//! a permit waited for at most [`PERMIT_WAIT`], then "busy". A session's
//! own start never waits there.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::process::Command;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::containers::{ContainerDocument, ContainerQueryError};
use crate::engine_api;
use crate::error::SessionError;

/// Most engine calls outside sessions at once, for every door together.
pub const MAX_ENGINE_CALLS: usize = 64;
/// How long a query waits for a permit before it is refused as busy.
pub const PERMIT_WAIT: Duration = Duration::from_secs(1);
/// How long an answer about a running container is reused.
pub const CACHE_TTL: Duration = Duration::from_millis(1500);
/// Most answers remembered per kind, and most bytes of documents.
const CACHE_ENTRIES: usize = 256;
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// The engine's view of the container, as far as execd needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    /// Host PID of the container's init (0 if the engine did not say).
    pub init_pid: i32,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PreflightError {
    #[error("{message}")]
    NotFound { message: String },
    #[error("container {container_id} is not running (state: {state})")]
    NotRunning { container_id: String, state: String },
    #[error("container engine unavailable: {message}")]
    EngineUnavailable { message: String },
    #[error("runtime CLI {program:?} was not found (install it or point --runtime-cli at it)")]
    CliNotFound { program: String },
    #[error("inspecting container {container_id} failed: {message}")]
    Failed {
        container_id: String,
        message: String,
    },
}

const FORMAT: &str = "{{.State.Status}} {{.State.Pid}}";

/// How long the Engine API gets before the CLI is asked instead.
const API_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// A hung engine fails the start instead of holding the client forever.
const INSPECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Asks the engine whether `container_id` exists and runs, through the
/// Engine API when possible, else through the CLI.
pub async fn check_container(
    runtime_cli: &str,
    api_socket: Option<&std::path::Path>,
    container_id: &str,
) -> Result<ContainerState, PreflightError> {
    if let Some(socket) = api_socket {
        // Short: a slow or odd answer falls back to the CLI, which has its
        // own, longer timeout.
        match tokio::time::timeout(API_TIMEOUT, inspect_via_api(socket, container_id)).await {
            Ok(Ok(answer)) => return answer,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, socket = %socket.display(), "Engine API not usable; asking the CLI");
            }
            Err(_) => {
                tracing::debug!(socket = %socket.display(), "Engine API slow; asking the CLI");
            }
        }
    }
    inspect_container(runtime_cli, container_id).await
}

/// [`check_container`] for a door that asks before any session exists
/// (the Docker door's create, CRI Exec and Attach, pod attach): through
/// the manager's [`EngineGate`], so such checks never run more than its
/// limit of engine calls at once, and reusing a "running" of the last
/// moments (its own or an inspect's: the docker CLI inspects right before
/// it creates, kubectl GETs the pod right before it attaches). Session
/// starts call [`check_container`] itself: they are not under the gate,
/// and a container seen running here is checked again by the start.
pub async fn check_out_of_session(
    gate: &EngineGate,
    runtime_cli: &str,
    api_socket: Option<&std::path::Path>,
    container_id: &str,
) -> Result<ContainerState, SessionError> {
    if let Some(state) = gate.recently_running(container_id) {
        return Ok(state);
    }
    let _permit = gate
        .enter(1)
        .await
        .map_err(|busy| busy.into_session_error(container_id))?;
    let state = check_container(runtime_cli, api_socket, container_id).await?;
    // Only "running" is reused: a container that was missing or stopped a
    // moment ago may have been created or started since.
    gate.remember_running(container_id, state.clone());
    Ok(state)
}

/// The container's state from the Engine API. Transport errors come back
/// as `Err`; any HTTP answer as `Ok`.
async fn inspect_via_api(
    socket: &std::path::Path,
    container_id: &str,
) -> std::io::Result<Result<ContainerState, PreflightError>> {
    // The id is validated to [A-Za-z0-9_.-]: safe in a URL path as is.
    let (code, body) = engine_api::get(socket, &format!("/containers/{container_id}/json")).await?;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
    let message = json
        .get("message")
        .and_then(|m| m.as_str())
        .unwrap_or_default()
        .to_string();
    Ok(match code {
        200 if json.get("State").is_none() => {
            return Err(std::io::Error::other("Engine API answer without State"));
        }
        200 => {
            let state = &json["State"];
            let status = state["Status"].as_str().unwrap_or_default();
            let pid = state["Pid"].as_i64().unwrap_or(0) as i32;
            parse_state(container_id, &format!("{status} {pid}"))
        }
        404 => Err(PreflightError::NotFound {
            message: format!("Error response from daemon: {message}"),
        }),
        _ => Err(PreflightError::Failed {
            container_id: container_id.to_string(),
            message: format!("Engine API answered {code}: {message}"),
        }),
    })
}

/// Asks the engine through the CLI whether `container_id` exists and runs.
pub async fn inspect_container(
    runtime_cli: &str,
    container_id: &str,
) -> Result<ContainerState, PreflightError> {
    let inspect = Command::new(runtime_cli)
        .args(["container", "inspect", "--format", FORMAT, container_id])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(INSPECT_TIMEOUT, inspect)
        .await
        .map_err(|_| PreflightError::EngineUnavailable {
            message: format!(
                "{runtime_cli} container inspect did not answer within {INSPECT_TIMEOUT:?}"
            ),
        })?
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                PreflightError::CliNotFound {
                    program: runtime_cli.to_string(),
                }
            }
            _ => PreflightError::Failed {
                container_id: container_id.to_string(),
                message: e.to_string(),
            },
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.success() {
        parse_state(container_id, stdout.trim())
    } else {
        Err(classify_failure(container_id, stderr.trim()))
    }
}

fn parse_state(container_id: &str, line: &str) -> Result<ContainerState, PreflightError> {
    // `inspect` of several objects prints one line each; ours names one.
    let line = line.lines().next().unwrap_or_default();
    let mut fields = line.split_whitespace();
    let state = fields.next().unwrap_or_default().to_string();
    let init_pid = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    if state == "running" {
        Ok(ContainerState { init_pid })
    } else {
        Err(PreflightError::NotRunning {
            container_id: container_id.to_string(),
            state: if state.is_empty() {
                "unknown".into()
            } else {
                state
            },
        })
    }
}

fn classify_failure(container_id: &str, stderr: &str) -> PreflightError {
    let message = stderr
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no error message")
        .trim()
        .to_string();
    let lower = stderr.to_ascii_lowercase();
    if lower.contains("no such container") || lower.contains("no such object") {
        PreflightError::NotFound { message }
    } else if lower.contains("cannot connect")
        || lower.contains("is the docker daemon running")
        || lower.contains("error during connect")
        || lower.contains("connection refused")
        || lower.contains("no such file or directory")
    {
        PreflightError::EngineUnavailable { message }
    } else {
        PreflightError::Failed {
            container_id: container_id.to_string(),
            message,
        }
    }
}

/// The shared bound on out-of-session engine calls and the answers they
/// leave for a moment. One per [`crate::SessionManager`], so every door
/// shares it.
pub struct EngineGate {
    permits: Arc<Semaphore>,
    limit: usize,
    wait: Duration,
    /// Out-of-session `check_container` answers that found it running.
    checks: Recent<ContainerState>,
    /// Inspect documents of running containers.
    documents: Recent<ContainerDocument>,
}

impl Default for EngineGate {
    fn default() -> Self {
        EngineGate::new(MAX_ENGINE_CALLS, PERMIT_WAIT)
    }
}

impl EngineGate {
    /// At most `limit` calls at once (at least one); a call waits at most
    /// `wait` for its permit.
    pub fn new(limit: usize, wait: Duration) -> Self {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        EngineGate {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            wait,
            checks: Recent::new(CACHE_TTL, CACHE_ENTRIES, CACHE_BYTES),
            documents: Recent::new(CACHE_TTL, CACHE_ENTRIES, CACHE_BYTES),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Engine calls running now.
    pub fn in_use(&self) -> usize {
        self.limit.saturating_sub(self.permits.available_permits())
    }

    /// The state of a container seen running in the last moments, by a
    /// check or in an inspect document.
    pub(crate) fn recently_running(&self, container_id: &str) -> Option<ContainerState> {
        if let Some(state) = self.checks.get(container_id) {
            return Some(state);
        }
        let ContainerDocument::Found(text) = self.documents.get(container_id)? else {
            return None;
        };
        let doc: Value = serde_json::from_str(&text).ok()?;
        let state = &doc["State"];
        (state["Status"] == "running").then(|| ContainerState {
            init_pid: state["Pid"]
                .as_i64()
                .and_then(|p| i32::try_from(p).ok())
                .unwrap_or(0),
        })
    }

    /// A running container's inspect document of the last moments.
    pub(crate) fn recent_document(&self, reference: &str) -> Option<ContainerDocument> {
        self.documents.get(reference)
    }

    /// Remembers a running container's inspect document.
    pub(crate) fn remember_document(&self, reference: &str, document: ContainerDocument) {
        let size = document.len();
        self.documents.put(reference, document, size);
    }

    /// Remembers that a check found `container_id` running.
    pub(crate) fn remember_running(&self, container_id: &str, state: ContainerState) {
        self.checks.put(container_id, state, 0);
    }

    /// Permits for `calls` engine calls at once, held until dropped; busy
    /// after [`PERMIT_WAIT`] without them.
    pub(crate) async fn enter(
        &self,
        calls: u32,
    ) -> Result<OwnedSemaphorePermit, ContainerQueryError> {
        let calls = calls.clamp(1, u32::try_from(self.limit).unwrap_or(u32::MAX));
        let busy = ContainerQueryError::Busy { limit: self.limit };
        match tokio::time::timeout(self.wait, self.permits.clone().acquire_many_owned(calls)).await
        {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; a closed one is busy forever.
            Ok(Err(_)) | Err(_) => Err(busy),
        }
    }
}

/// Answers kept for a short while, bounded in count and bytes; the oldest
/// go first.
struct Recent<V> {
    ttl: Duration,
    max_entries: usize,
    max_bytes: usize,
    inner: Mutex<RecentInner<V>>,
}

struct RecentInner<V> {
    entries: HashMap<String, Remembered<V>>,
    bytes: usize,
}

struct Remembered<V> {
    at: Instant,
    value: V,
    bytes: usize,
}

impl<V: Clone> Recent<V> {
    fn new(ttl: Duration, max_entries: usize, max_bytes: usize) -> Self {
        Recent {
            ttl,
            max_entries,
            max_bytes,
            inner: Mutex::new(RecentInner {
                entries: HashMap::new(),
                bytes: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RecentInner<V>> {
        // A panic elsewhere must not take every door down with it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, key: &str) -> Option<V> {
        let inner = self.lock();
        let hit = inner.entries.get(key)?;
        (hit.at.elapsed() < self.ttl).then(|| hit.value.clone())
    }

    /// Remembers `value` (of about `size` bytes) under `key`.
    fn put(&self, key: &str, value: V, size: usize) {
        // Key, value and the map's own share.
        let bytes = key.len() + size + 64;
        if bytes > self.max_bytes / 4 {
            return;
        }
        let mut inner = self.lock();
        let inner = &mut *inner;
        let ttl = self.ttl;
        inner.entries.retain(|_, e| e.at.elapsed() < ttl);
        inner.entries.remove(key);
        inner.bytes = inner.entries.values().map(|e| e.bytes).sum();
        while !inner.entries.is_empty()
            && (inner.entries.len() >= self.max_entries || inner.bytes + bytes > self.max_bytes)
        {
            let Some(oldest) = inner
                .entries
                .iter()
                .min_by_key(|(_, e)| e.at)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(gone) = inner.entries.remove(&oldest) {
                inner.bytes -= gone.bytes;
            }
        }
        inner.bytes += bytes;
        inner.entries.insert(
            key.to_string(),
            Remembered {
                at: Instant::now(),
                value,
                bytes,
            },
        );
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_state_parses_pid() {
        assert_eq!(
            parse_state("c", "running 4242"),
            Ok(ContainerState { init_pid: 4242 })
        );
        assert!(matches!(
            parse_state("c", "exited 0"),
            Err(PreflightError::NotRunning { .. })
        ));
        assert!(matches!(
            parse_state("c", "paused 12"),
            Err(PreflightError::NotRunning { .. })
        ));
    }

    #[test]
    fn engine_messages_are_classified() {
        assert!(matches!(
            classify_failure("x", "Error: No such container: x"),
            PreflightError::NotFound { .. }
        ));
        assert!(matches!(
            classify_failure(
                "x",
                "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?"
            ),
            PreflightError::EngineUnavailable { .. }
        ));
        assert!(matches!(
            classify_failure("x", "permission denied while trying to connect"),
            PreflightError::Failed { .. }
        ));
    }

    /// A fake engine on a unix socket answers like the Engine API does.
    #[tokio::test]
    async fn api_answers_are_mapped() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("engine.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 1024];
                let n = conn.read(&mut buf).await.unwrap();
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let reply = if req.contains("/containers/up/json") {
                    "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"State\":{\"Status\":\"running\",\"Pid\":4321}}"
                } else if req.contains("/containers/down/json") {
                    "HTTP/1.0 200 OK\r\n\r\n{\"State\":{\"Status\":\"exited\",\"Pid\":0}}"
                } else {
                    "HTTP/1.0 404 Not Found\r\n\r\n{\"message\":\"No such container: gone\"}"
                };
                conn.write_all(reply.as_bytes()).await.unwrap();
            }
        });
        assert_eq!(
            inspect_via_api(&socket, "up").await.unwrap(),
            Ok(ContainerState { init_pid: 4321 })
        );
        assert!(matches!(
            inspect_via_api(&socket, "down").await.unwrap(),
            Err(PreflightError::NotRunning { .. })
        ));
        match inspect_via_api(&socket, "gone").await.unwrap() {
            Err(PreflightError::NotFound { message }) => {
                assert!(message.contains("No such container: gone"))
            }
            other => panic!("{other:?}"),
        }
        assert!(inspect_via_api(&dir.path().join("nothing.sock"), "up")
            .await
            .is_err());
    }

    #[tokio::test]
    async fn missing_cli_is_reported() {
        let err = inspect_container("/nonexistent/docker", "c")
            .await
            .unwrap_err();
        assert!(matches!(err, PreflightError::CliNotFound { .. }));
    }

    /// A stub CLI stands in for the engine to exercise each answer.
    #[tokio::test]
    async fn stub_cli_answers_are_mapped() {
        let dir = tempfile::tempdir().unwrap();
        let stub = dir.path().join("fake-cli");
        std::fs::write(
            &stub,
            "#!/bin/sh\ncase \"$5\" in\n  up) echo 'running 77';;\n  down) echo 'exited 0';;\n  gone) echo 'Error: No such container: gone' >&2; exit 1;;\n  *) echo 'Cannot connect to the Docker daemon' >&2; exit 1;;\nesac\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cli = stub.to_str().unwrap();
        assert_eq!(
            inspect_container(cli, "up").await,
            Ok(ContainerState { init_pid: 77 })
        );
        assert!(matches!(
            inspect_container(cli, "down").await,
            Err(PreflightError::NotRunning { .. })
        ));
        assert!(matches!(
            inspect_container(cli, "gone").await,
            Err(PreflightError::NotFound { .. })
        ));
        assert!(matches!(
            inspect_container(cli, "other").await,
            Err(PreflightError::EngineUnavailable { .. })
        ));
    }

    #[test]
    fn recent_answers_are_bounded_and_expire() {
        let recent = Recent::new(Duration::from_millis(200), 3, 4096);
        for key in ["a", "b", "c", "d"] {
            recent.put(key, key.to_string(), 10);
        }
        assert_eq!(recent.len(), 3);
        assert_eq!(recent.get("a"), None, "the oldest goes first");
        assert_eq!(recent.get("d").as_deref(), Some("d"));
        // Over a quarter of the byte budget is never kept; bytes bound too.
        recent.put("huge", "x".into(), 2000);
        assert_eq!(recent.get("huge"), None);
        for key in ["e", "f", "g"] {
            recent.put(key, key.to_string(), 900);
        }
        assert!(recent.len() <= 3 && recent.lock().bytes <= 4096);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(recent.get("g"), None);
    }

    #[tokio::test]
    async fn the_gate_refuses_when_full_and_frees_with_its_permits() {
        let gate = EngineGate::new(2, Duration::from_millis(50));
        let first = gate.enter(1).await.unwrap();
        let _second = gate.enter(1).await.unwrap();
        assert_eq!(gate.in_use(), 2);
        assert!(matches!(
            gate.enter(1).await,
            Err(ContainerQueryError::Busy { limit: 2 })
        ));
        drop(first);
        let _third = gate.enter(1).await.unwrap();
        // A list asks for more than the gate has: it gets the whole gate.
        drop(_third);
        drop(_second);
        let all = gate.enter(8).await.unwrap();
        assert_eq!((gate.in_use(), all.num_permits()), (2, 2));
        let err = ContainerQueryError::Busy { limit: 2 }.into_session_error("c");
        assert_eq!(err.kind(), crate::ErrorKind::ResourceExhausted);
    }
}
