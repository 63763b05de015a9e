//! Reading containers outside any session, for doors that describe or
//! check them (the Kubernetes door's pods, the Docker door's container
//! inspect and exec create, CRI and pod attach, the browser terminal's
//! picker, `/terminal/ws` instances): one container by name or id, and the
//! running ones.
//!
//! Like the rest of the runtime access, it asks the local Engine API socket
//! when execd has one, else the runtime CLI (`inspect`, `ps -q`); both give
//! the engine's own `ContainerInspect` document, read here into
//! [`ContainerInfo`], so no door knows which runtime is underneath.
//!
//! Every such query passes the [`EngineGate`] the session manager owns
//! (defined with the preflight, whose out-of-session checks pass it too):
//! at most [`MAX_ENGINE_CALLS`] engine calls (Engine API requests or CLI
//! processes) run at once for all doors together; a query that gets no
//! permit within [`PERMIT_WAIT`] is refused as busy, so a flood of cheap
//! requests can neither fork hundreds of `docker` processes nor queue
//! behind a slow engine. Session starts do not pass the gate: they are
//! bounded by the session limits, and a flood of queries must not keep a
//! session from starting. Answers about running containers are reused for
//! [`CACHE_TTL`] (kubectl GETs the pod right before its exec, the docker
//! CLI inspects right before its create).

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::command::{is_container_ref, ExecMode};
use crate::error::{EndReason, SessionError};
use crate::manager::SessionManager;
use crate::preflight::PreflightError;
#[cfg(doc)]
use crate::preflight::{EngineGate, CACHE_TTL, MAX_ENGINE_CALLS, PERMIT_WAIT};

/// A hung engine must not hold a request forever.
const QUERY_TIMEOUT: Duration = Duration::from_secs(15);
/// Most containers a list describes: lists are for people and tools that
/// pick one, not inventories.
pub const MAX_LISTED: usize = 500;
/// Inspects of a list asked of the Engine API at once.
const LIST_CONCURRENCY: u32 = 8;
/// Largest inspect document taken from the engine.
const MAX_DOCUMENT: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ContainerQueryError {
    #[error("execd runs commands on this host (--host-exec): there are no containers")]
    HostMode,
    #[error("{0:?} is not a container name or id")]
    BadReference(String),
    #[error("the container engine did not answer in time")]
    TimedOut,
    #[error("asking the container engine failed: {0}")]
    Engine(String),
    #[error(
        "the container engine is busy: {limit} engine queries for requests outside sessions \
         are running; retry in a moment"
    )]
    Busy { limit: usize },
}

impl ContainerQueryError {
    /// The same failure for doors that report session errors. Busy is a
    /// limit reached (RESOURCE_EXHAUSTED, HTTP 429 on every door); the rest
    /// is an inspect that failed.
    pub fn into_session_error(self, container_id: &str) -> SessionError {
        match self {
            // EndReason::TooLarge is the session crate's "a limit was
            // reached, here is why": ResourceExhausted with this message.
            ContainerQueryError::Busy { .. } => {
                SessionError::Ended(EndReason::TooLarge(self.to_string()))
            }
            other => SessionError::Preflight(PreflightError::Failed {
                container_id: container_id.to_string(),
                message: other.to_string(),
            }),
        }
    }
}

/// The engine's `ContainerInspect` document for one container, or its
/// "no such container".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerDocument {
    /// The JSON document as the engine wrote it.
    Found(Arc<str>),
    /// No such container: the engine's message.
    Missing(Arc<str>),
}

impl ContainerDocument {
    pub(crate) fn len(&self) -> usize {
        match self {
            ContainerDocument::Found(s) | ContainerDocument::Missing(s) => s.len(),
        }
    }
}

/// What the engine says about one container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    /// Without Docker's leading slash.
    pub name: String,
    pub image: String,
    /// `created`, `running`, `paused`, `restarting`, `exited`, `dead`, …
    pub status: String,
    pub exit_code: i32,
    /// RFC 3339, as the engine writes them ("0001-01-01T00:00:00Z" when never).
    pub created: String,
    pub started_at: String,
    pub finished_at: String,
    pub open_stdin: bool,
    pub tty: bool,
    pub labels: BTreeMap<String, String>,
}

impl ContainerInfo {
    pub fn running(&self) -> bool {
        self.status == "running"
    }

    /// From one `ContainerInspect` document.
    pub fn from_inspect(doc: &Value) -> Option<ContainerInfo> {
        let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let id = text(&doc["Id"]);
        if id.is_empty() {
            return None;
        }
        let config = &doc["Config"];
        let state = &doc["State"];
        let labels = config["Labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), text(v)))
                    .collect::<BTreeMap<_, _>>()
            })
            .unwrap_or_default();
        Some(ContainerInfo {
            name: text(&doc["Name"]).trim_start_matches('/').to_string(),
            image: text(&config["Image"]),
            status: text(&state["Status"]),
            exit_code: state["ExitCode"]
                .as_i64()
                .and_then(|c| i32::try_from(c).ok())
                .unwrap_or_default(),
            created: text(&doc["Created"]),
            started_at: text(&state["StartedAt"]),
            finished_at: text(&state["FinishedAt"]),
            open_stdin: config["OpenStdin"].as_bool().unwrap_or_default(),
            tty: config["Tty"].as_bool().unwrap_or_default(),
            labels,
            id,
        })
    }
}

impl SessionManager {
    /// The engine's inspect document for `reference` (name or id), through
    /// the gate; a running container's is reused for a moment (1.5 s).
    pub async fn container_document(
        &self,
        reference: &str,
    ) -> Result<ContainerDocument, ContainerQueryError> {
        if !is_container_ref(reference) {
            return Err(ContainerQueryError::BadReference(
                reference.chars().take(64).collect(),
            ));
        }
        let runtime_cli = self.runtime_cli()?;
        let gate = self.engine_gate();
        if let Some(document) = gate.recent_document(reference) {
            return Ok(document);
        }
        let _permit = gate.enter(1).await?;
        let document = bounded(fetch_document(
            runtime_cli,
            self.engine_api_socket(),
            reference,
        ))
        .await?;
        // Only a running container's: one just created, started or
        // removed is never shown in an old state.
        if let ContainerDocument::Found(text) = &document {
            let running = serde_json::from_str::<Value>(text)
                .is_ok_and(|doc| doc["State"]["Status"] == "running");
            if running {
                gate.remember_document(reference, document.clone());
            }
        }
        Ok(document)
    }

    /// The container named `reference` (name or id); `None` when the
    /// engine has no such container.
    pub async fn inspect_container(
        &self,
        reference: &str,
    ) -> Result<Option<ContainerInfo>, ContainerQueryError> {
        info_of(self.container_document(reference).await?)
    }

    /// The running containers, sorted by name, at most [`MAX_LISTED`].
    pub async fn running_containers(&self) -> Result<Vec<ContainerInfo>, ContainerQueryError> {
        let runtime_cli = self.runtime_cli()?;
        let socket = self.engine_api_socket();
        // Through the Engine API a list inspects several containers at
        // once, each an engine call; through the CLI it runs one process
        // at a time.
        let calls = if socket.is_some() {
            LIST_CONCURRENCY
        } else {
            1
        };
        let _permits = self.engine_gate().enter(calls).await?;
        let mut list = match socket {
            Some(socket) => bounded(engine_running(runtime_cli, socket)).await?,
            None => bounded(cli_running(runtime_cli)).await?,
        };
        list.retain(ContainerInfo::running);
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list.truncate(MAX_LISTED);
        Ok(list)
    }

    fn runtime_cli(&self) -> Result<&str, ContainerQueryError> {
        match self.mode() {
            ExecMode::Container { runtime_cli } => Ok(runtime_cli),
            ExecMode::Host => Err(ContainerQueryError::HostMode),
        }
    }
}

/// What a document says, `None` for a missing container.
fn info_of(document: ContainerDocument) -> Result<Option<ContainerInfo>, ContainerQueryError> {
    match document {
        ContainerDocument::Found(text) => {
            let doc: Value = serde_json::from_str(&text)
                .map_err(|e| ContainerQueryError::Engine(format!("unreadable inspect: {e}")))?;
            Ok(ContainerInfo::from_inspect(&doc))
        }
        ContainerDocument::Missing(_) => Ok(None),
    }
}

async fn bounded<T>(
    query: impl std::future::Future<Output = Result<T, ContainerQueryError>>,
) -> Result<T, ContainerQueryError> {
    tokio::time::timeout(QUERY_TIMEOUT, query)
        .await
        .map_err(|_| ContainerQueryError::TimedOut)?
}

/// One container's document from the Engine API, or from the CLI when
/// there is no API socket or it cannot be reached.
async fn fetch_document(
    runtime_cli: &str,
    socket: Option<&std::path::Path>,
    reference: &str,
) -> Result<ContainerDocument, ContainerQueryError> {
    if let Some(socket) = socket {
        // `reference` is validated: [A-Za-z0-9][A-Za-z0-9_.-]*.
        match crate::engine_api::get(socket, &format!("/containers/{reference}/json")).await {
            Ok((200, body)) => return Ok(ContainerDocument::Found(body.into())),
            Ok((404, body)) => {
                return Ok(ContainerDocument::Missing(
                    crate::engine_api::error_message(&body).into(),
                ))
            }
            Ok((_, body)) => {
                return Err(ContainerQueryError::Engine(
                    crate::engine_api::error_message(&body),
                ))
            }
            Err(e) => {
                tracing::debug!(error = %e, socket = %socket.display(), "Engine API not usable; asking the CLI");
            }
        }
    }
    let out = run_cli(
        runtime_cli,
        &["container".into(), "inspect".into(), reference.into()],
    )
    .await?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let message = stderr.trim().trim_start_matches("Error: ");
        if message.contains("No such") || message.contains("no such") {
            return Ok(ContainerDocument::Missing(message.into()));
        }
        return Err(ContainerQueryError::Engine(message.to_string()));
    }
    let docs: Vec<Value> = serde_json::from_slice(&out.stdout).map_err(|e| {
        ContainerQueryError::Engine(format!(
            "{runtime_cli} container inspect printed no JSON: {e}"
        ))
    })?;
    let Some(first) = docs.into_iter().next() else {
        return Ok(ContainerDocument::Missing(
            format!("No such container: {reference}").into(),
        ));
    };
    let text = first.to_string();
    if text.len() > MAX_DOCUMENT {
        return Err(ContainerQueryError::Engine(
            "the container inspect answer is too large".into(),
        ));
    }
    Ok(ContainerDocument::Found(text.into()))
}

async fn engine_running(
    runtime_cli: &str,
    socket: &std::path::Path,
) -> Result<Vec<ContainerInfo>, ContainerQueryError> {
    use futures_util::StreamExt;
    let (code, body) = crate::engine_api::get(socket, "/containers/json")
        .await
        .map_err(|e| ContainerQueryError::Engine(e.to_string()))?;
    if code != 200 {
        return Err(ContainerQueryError::Engine(
            crate::engine_api::error_message(&body),
        ));
    }
    let items: Vec<Value> = serde_json::from_str(&body)
        .map_err(|e| ContainerQueryError::Engine(format!("unreadable container list: {e}")))?;
    let ids: Vec<String> = items
        .iter()
        .filter_map(|i| i["Id"].as_str())
        .filter(|id| is_container_ref(id))
        .take(MAX_LISTED)
        .map(str::to_string)
        .collect();
    let inspected: Vec<_> = futures_util::stream::iter(ids)
        .map(|id| async move { info_of(fetch_document(runtime_cli, Some(socket), &id).await?) })
        .buffer_unordered(LIST_CONCURRENCY as usize)
        .collect()
        .await;
    let mut list = Vec::new();
    for one in inspected {
        // A container removed between the list and its inspect is gone.
        list.extend(one?);
    }
    Ok(list)
}

async fn run_cli(
    runtime_cli: &str,
    args: &[String],
) -> Result<std::process::Output, ContainerQueryError> {
    tokio::process::Command::new(runtime_cli)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| ContainerQueryError::Engine(format!("running {runtime_cli}: {e}")))
}

async fn cli_inspect(
    runtime_cli: &str,
    references: &[String],
) -> Result<Vec<ContainerInfo>, ContainerQueryError> {
    if references.is_empty() {
        return Ok(Vec::new());
    }
    let mut args = vec!["container".to_string(), "inspect".to_string()];
    args.extend(references.iter().cloned());
    let out = run_cli(runtime_cli, &args).await?;
    // Missing containers make inspect fail but still print the others.
    let docs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    if !out.status.success() && docs.is_empty() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("No such") || stderr.contains("no such") {
            return Ok(Vec::new());
        }
        return Err(ContainerQueryError::Engine(stderr.trim().to_string()));
    }
    Ok(docs
        .iter()
        .filter_map(ContainerInfo::from_inspect)
        .collect())
}

async fn cli_running(runtime_cli: &str) -> Result<Vec<ContainerInfo>, ContainerQueryError> {
    let out = run_cli(
        runtime_cli,
        &["ps".into(), "-q".into(), "--no-trunc".into()],
    )
    .await?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(ContainerQueryError::Engine(stderr.trim().to_string()));
    }
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|id| is_container_ref(id))
        .take(MAX_LISTED)
        .map(str::to_string)
        .collect();
    cli_inspect(runtime_cli, &ids).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspect_documents_read() {
        let doc = serde_json::json!({
            "Id": "0123abcd", "Name": "/web-1", "Created": "2026-01-01T00:00:00Z",
            "State": {"Status": "exited", "Running": false, "ExitCode": 3,
                      "StartedAt": "2026-01-01T00:00:01Z", "FinishedAt": "2026-01-01T00:00:02Z"},
            "Config": {"Image": "busybox", "OpenStdin": true, "Tty": false,
                       "Labels": {"app": "x"}}
        });
        let info = ContainerInfo::from_inspect(&doc).unwrap();
        assert_eq!(info.name, "web-1");
        assert_eq!(info.status, "exited");
        assert_eq!(info.exit_code, 3);
        assert!(info.open_stdin && !info.tty && !info.running());
        assert_eq!(info.labels["app"], "x");
        assert!(ContainerInfo::from_inspect(&serde_json::json!({})).is_none());
    }
}
