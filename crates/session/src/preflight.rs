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

use std::process::Stdio;

use tokio::process::Command;

use crate::engine_api;

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
}
