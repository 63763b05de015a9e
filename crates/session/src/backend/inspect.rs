//! What a runtime tells about containers, whichever runtime it is: the
//! state a start needs ([`ContainerState`]), the engine's own inspect
//! document ([`ContainerDocument`]), the summary doors show
//! ([`ContainerInfo`]), and how each question can fail.
//!
//! Every engine execd speaks to (dockerd through its API or its CLI,
//! podman, nerdctl) writes Docker's `ContainerInspect` document, so it is
//! read here once for all of them.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

/// Most containers a list describes: lists are for people and tools that
/// pick one, not inventories.
pub const MAX_LISTED: usize = 500;

/// The engine's view of a container that runs, as far as a start needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    /// Host PID of the container's init (0 if the engine did not say).
    pub init_pid: i32,
}

/// Why "does the container exist and run" has no "yes": the answer a
/// session start (or a door's check before one) gets.
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

impl PreflightError {
    /// Whether this verdict means no exec can have started in the
    /// container: it is missing or stopped. Any other failure (an engine
    /// error, a timeout) says nothing about an exec that ran alongside.
    pub fn rules_out_a_start(&self) -> bool {
        matches!(
            self,
            PreflightError::NotFound { .. } | PreflightError::NotRunning { .. }
        )
    }
}

/// Why a runtime could not answer a question about containers (an
/// inspect, a list).
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The runtime runs commands on this host: it has no containers.
    #[error("execd runs commands on this host (--host-exec): there are no containers")]
    NoContainers,
    #[error("the container engine did not answer in time")]
    TimedOut,
    /// The runtime CLI could not be run at all.
    #[error("running {program}: {source}")]
    Cli {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// The engine answered with an error, or could not be reached: its
    /// message.
    #[error("{0}")]
    Engine(String),
}

/// Why the engine does not answer a ping.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PingError(pub String);

/// Why a command run inside a container (the reaper's fallback) did not
/// succeed.
#[derive(Debug, thiserror::Error)]
pub enum RunInsideError {
    /// It ran and failed: the runtime's message or its exit code.
    #[error("{0}")]
    Failed(String),
    /// It could not be started.
    #[error("{0}")]
    NotStarted(String),
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

    /// What the document says, `None` for a missing container.
    pub fn info(&self) -> Result<Option<ContainerInfo>, QueryError> {
        match self {
            ContainerDocument::Found(text) => {
                let doc: Value = serde_json::from_str(text)
                    .map_err(|e| QueryError::Engine(format!("unreadable inspect: {e}")))?;
                Ok(ContainerInfo::from_inspect(&doc))
            }
            ContainerDocument::Missing(_) => Ok(None),
        }
    }

    /// The state of a running container, read from its document; `None`
    /// for any other.
    pub(crate) fn running_state(&self) -> Option<ContainerState> {
        let ContainerDocument::Found(text) = self else {
            return None;
        };
        let doc: Value = serde_json::from_str(text).ok()?;
        let state = &doc["State"];
        (state["Status"] == "running").then(|| ContainerState {
            init_pid: state["Pid"]
                .as_i64()
                .and_then(|p| i32::try_from(p).ok())
                .unwrap_or(0),
        })
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

/// A `State.Status State.Pid` pair (the CLI's `--format` line, or the
/// same two fields of an API answer) as a start's verdict.
pub(crate) fn parse_state(
    container_id: &str,
    line: &str,
) -> Result<ContainerState, PreflightError> {
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
        let found = ContainerDocument::Found(doc.to_string().into());
        assert_eq!(found.info().unwrap().unwrap().id, "0123abcd");
        assert_eq!(found.running_state(), None);
        let running = r#"{"Id":"x","State":{"Status":"running","Pid":42}}"#;
        assert_eq!(
            ContainerDocument::Found(running.into()).running_state(),
            Some(ContainerState { init_pid: 42 })
        );
        assert!(ContainerDocument::Missing("gone".into())
            .info()
            .unwrap()
            .is_none());
    }

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
}
