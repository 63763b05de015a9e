//! Questions about containers asked through the runtime CLI, one process
//! each: `container inspect` (a start's check, with `--format`, and the
//! whole document), `ps -q` for the running ones, `version` for a ping,
//! and `exec` for a command run inside a container to its end.
//!
//! `docker exec` exits 1 both when the engine refuses (no such container,
//! container stopped, engine down) and when the process inside exits 1;
//! the check asks the engine itself and reads its words, so a missing
//! container is an error rather than "exit 1".

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::Command;

use crate::backend::inspect::{
    parse_state, ContainerDocument, ContainerInfo, ContainerState, PingError, PreflightError,
    QueryError, RunInsideError, MAX_LISTED,
};
use crate::command::is_container_ref;

const FORMAT: &str = "{{.State.Status}} {{.State.Pid}}";

/// A hung engine fails the start instead of holding the client forever.
const INSPECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest inspect document taken from the engine.
const MAX_DOCUMENT: usize = 4 * 1024 * 1024;

/// Whether `container_id` exists and runs.
pub(super) async fn state(
    program: &str,
    container_id: &str,
) -> Result<ContainerState, PreflightError> {
    let inspect = Command::new(program)
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
                "{program} container inspect did not answer within {INSPECT_TIMEOUT:?}"
            ),
        })?
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                PreflightError::CliNotFound {
                    program: program.to_string(),
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

/// Runs the CLI with `args` to its end (killed if the caller gives up).
async fn run(program: &str, args: &[&str]) -> Result<std::process::Output, QueryError> {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| QueryError::Cli {
            program: program.to_string(),
            source,
        })
}

/// The inspect document of `reference` (validated).
pub(super) async fn document(
    program: &str,
    reference: &str,
) -> Result<ContainerDocument, QueryError> {
    let out = run(program, &["container", "inspect", reference]).await?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let message = stderr.trim().trim_start_matches("Error: ");
        if message.contains("No such") || message.contains("no such") {
            return Ok(ContainerDocument::Missing(message.into()));
        }
        return Err(QueryError::Engine(message.to_string()));
    }
    let docs: Vec<Value> = serde_json::from_slice(&out.stdout).map_err(|e| {
        QueryError::Engine(format!("{program} container inspect printed no JSON: {e}"))
    })?;
    let Some(first) = docs.into_iter().next() else {
        return Ok(ContainerDocument::Missing(
            format!("No such container: {reference}").into(),
        ));
    };
    let text = first.to_string();
    if text.len() > MAX_DOCUMENT {
        return Err(QueryError::Engine(
            "the container inspect answer is too large".into(),
        ));
    }
    Ok(ContainerDocument::Found(text.into()))
}

/// The running containers: their ids (`ps -q`), then one inspect of all.
pub(super) async fn running(program: &str) -> Result<Vec<ContainerInfo>, QueryError> {
    let out = run(program, &["ps", "-q", "--no-trunc"]).await?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(QueryError::Engine(stderr.trim().to_string()));
    }
    let listed = String::from_utf8_lossy(&out.stdout);
    let ids: Vec<&str> = listed
        .lines()
        .map(str::trim)
        .filter(|id| is_container_ref(id))
        .take(MAX_LISTED)
        .collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut args = vec!["container", "inspect"];
    args.extend(ids);
    let out = run(program, &args).await?;
    // Missing containers make inspect fail but still print the others.
    let docs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    if !out.status.success() && docs.is_empty() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("No such") || stderr.contains("no such") {
            return Ok(Vec::new());
        }
        return Err(QueryError::Engine(stderr.trim().to_string()));
    }
    Ok(docs
        .iter()
        .filter_map(ContainerInfo::from_inspect)
        .collect())
}

/// Whether the engine behind the CLI answers (`version` asks the server).
pub(super) async fn version(program: &str) -> Result<(), PingError> {
    let out = run(program, &["version", "--format", "{{.Server.Version}}"])
        .await
        .map_err(|e| match e {
            QueryError::Cli { source, .. } => PingError(format!("{program} cannot run: {source}")),
            other => PingError(other.to_string()),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(PingError(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// Runs `argv` inside `container_id` to its end (`<cli> exec`).
pub(super) async fn run_inside(
    program: &str,
    container_id: &str,
    argv: &[String],
) -> Result<(), RunInsideError> {
    let out = Command::new(program)
        .arg("exec")
        .arg(container_id)
        .args(argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| RunInsideError::NotStarted(format!("{program}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(RunInsideError::Failed(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[tokio::test]
    async fn missing_cli_is_reported() {
        let err = state("/nonexistent/docker", "c").await.unwrap_err();
        assert!(matches!(err, PreflightError::CliNotFound { .. }));
        assert!(matches!(
            document("/nonexistent/docker", "c").await,
            Err(QueryError::Cli { .. })
        ));
        let down = version("/nonexistent/docker").await.unwrap_err();
        assert!(down.to_string().contains("cannot run"), "{down}");
        assert!(matches!(
            run_inside("/nonexistent/docker", "c", &[]).await,
            Err(RunInsideError::NotStarted(_))
        ));
    }

    /// A stub CLI stands in for the engine to exercise each answer.
    #[tokio::test]
    async fn stub_cli_answers_are_mapped() {
        let dir = tempfile::tempdir().unwrap();
        let stub = dir.path().join("fake-cli");
        std::fs::write(
            &stub,
            "#!/bin/sh\n\
             case \"$1 $2 $3\" in\n\
             'container inspect --format') case \"$5\" in\n\
               up) echo 'running 77';;\n\
               down) echo 'exited 0';;\n\
               gone) echo 'Error: No such container: gone' >&2; exit 1;;\n\
               *) echo 'Cannot connect to the Docker daemon' >&2; exit 1;;\n\
               esac;;\n\
             'container inspect up') echo '[{\"Id\":\"up1\",\"Name\":\"/up\",\"State\":{\"Status\":\"running\"}}]';;\n\
             'container inspect gone') echo 'Error: No such container: gone' >&2; exit 1;;\n\
             'ps -q --no-trunc') echo up; echo 'not/a/ref';;\n\
             'version --format {{.Server.Version}}') echo 'Error response from daemon: down' >&2; exit 1;;\n\
             'exec up /bin/true') exit 0;;\n\
             'exec up /bin/false') echo 'it failed' >&2; exit 3;;\n\
             esac\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cli = stub.to_str().unwrap();
        assert_eq!(state(cli, "up").await, Ok(ContainerState { init_pid: 77 }));
        assert!(matches!(
            state(cli, "down").await,
            Err(PreflightError::NotRunning { .. })
        ));
        assert!(matches!(
            state(cli, "gone").await,
            Err(PreflightError::NotFound { .. })
        ));
        assert!(matches!(
            state(cli, "other").await,
            Err(PreflightError::EngineUnavailable { .. })
        ));
        let up = document(cli, "up").await.unwrap();
        assert_eq!(up.info().unwrap().unwrap().name, "up");
        assert!(matches!(
            document(cli, "gone").await,
            Ok(ContainerDocument::Missing(m)) if m.contains("No such container: gone")
        ));
        let listed = running(cli).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, "up1");
        let down = version(cli).await.unwrap_err();
        assert!(down.to_string().contains("down"), "{down}");
        run_inside(cli, "up", &["/bin/true".into()]).await.unwrap();
        match run_inside(cli, "up", &["/bin/false".into()]).await {
            Err(RunInsideError::Failed(message)) => assert_eq!(message, "it failed"),
            other => panic!("{other:?}"),
        }
    }
}
