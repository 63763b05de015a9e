//! What an attach needs to know about the container beyond "it runs": was
//! it created with an open stdin (`Config.OpenStdin`, else there is no input
//! to attach to) and with a terminal (`Config.Tty`, then the attach runs
//! under a PTY and takes resizes).
//!
//! The preflight answers "exists and runs" with the engine's own errors;
//! this only reads two more fields, through the same two routes (the local
//! Engine API socket when there is one, else `<cli> container inspect`), so
//! no door needs to know which runtime is underneath.

use std::process::Stdio;
use std::time::Duration;

use crate::command::{ExecMode, ValidationError};
use crate::error::SessionError;
use crate::manager::SessionManager;
use crate::preflight::PreflightError;

/// The container's configuration, as far as attaching goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttachTarget {
    pub open_stdin: bool,
    pub tty: bool,
}

/// A hung engine must not hold the request forever.
const INSPECT_TIMEOUT: Duration = Duration::from_secs(15);

impl SessionManager {
    /// Checks that `container_id` is valid, exists and runs (the same
    /// errors as a session start), then reads its stdin and terminal
    /// settings, so a door can refuse or shape an attach before it starts.
    pub async fn attach_target(&self, container_id: &str) -> Result<AttachTarget, SessionError> {
        attach_target(self, container_id).await
    }
}

async fn attach_target(
    manager: &SessionManager,
    container_id: &str,
) -> Result<AttachTarget, SessionError> {
    manager.check_container(container_id).await?;
    let ExecMode::Container { runtime_cli } = manager.mode() else {
        return Err(ValidationError::AttachInHostMode.into());
    };
    let failed = |message: String| {
        SessionError::Preflight(PreflightError::Failed {
            container_id: container_id.to_string(),
            message,
        })
    };
    if let Some(socket) = manager.engine_api_socket() {
        // The id is validated (check_container) to [A-Za-z0-9_.-].
        let path = format!("/containers/{container_id}/json");
        if let Ok(Ok((200, body))) =
            tokio::time::timeout(INSPECT_TIMEOUT, crate::engine_api::get(socket, &path)).await
        {
            let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let config = &json["Config"];
            if let (Some(open_stdin), Some(tty)) =
                (config["OpenStdin"].as_bool(), config["Tty"].as_bool())
            {
                return Ok(AttachTarget { open_stdin, tty });
            }
        }
        tracing::debug!("Engine API gave no container config; asking the CLI");
    }
    let inspect = tokio::process::Command::new(runtime_cli)
        .args([
            "container",
            "inspect",
            "--format",
            "{{.Config.OpenStdin}} {{.Config.Tty}}",
            container_id,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(INSPECT_TIMEOUT, inspect)
        .await
        .map_err(|_| failed("container inspect did not answer in time".into()))?
        .map_err(|e| failed(e.to_string()))?;
    if !output.status.success() {
        return Err(failed(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ));
    }
    parse_cli(&String::from_utf8_lossy(&output.stdout))
        .ok_or_else(|| failed("unexpected container inspect output".into()))
}

fn parse_cli(line: &str) -> Option<AttachTarget> {
    let mut fields = line.split_whitespace().map(str::parse::<bool>);
    Some(AttachTarget {
        open_stdin: fields.next()?.ok()?,
        tty: fields.next()?.ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_answer_parses() {
        assert_eq!(
            parse_cli("true false\n"),
            Some(AttachTarget {
                open_stdin: true,
                tty: false
            })
        );
        assert_eq!(parse_cli("yes"), None);
    }
}
