//! What an attach needs to know about the container beyond "it runs": was
//! it created with an open stdin (`Config.OpenStdin`, else there is no input
//! to attach to) and with a terminal (`Config.Tty`, then the attach runs
//! under a PTY and takes resizes).
//!
//! The check answers "exists and runs" with the engine's own errors; this
//! only reads two more fields of the container's inspect document, which
//! the backend gives ([`SessionManager::container_document`]), so no door
//! needs to know which runtime is underneath. Both questions are asked
//! before any session exists, so both pass the manager's engine gate, and
//! share its short memory of running containers (kubectl GETs the pod
//! right before it attaches).

use crate::backend::inspect::{ContainerDocument, PreflightError};
use crate::command::ValidationError;
use crate::error::SessionError;
use crate::manager::SessionManager;

/// The container's configuration, as far as attaching goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttachTarget {
    pub open_stdin: bool,
    pub tty: bool,
}

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
    if !manager.backend_config().has_containers() {
        return Err(ValidationError::AttachInHostMode.into());
    }
    let failed = |message: String| {
        SessionError::Preflight(PreflightError::Failed {
            container_id: container_id.to_string(),
            message,
        })
    };
    let document = manager
        .container_document(container_id)
        .await
        .map_err(|e| e.into_session_error(container_id))?;
    let text = match document {
        ContainerDocument::Found(text) => text,
        // Removed since the check a moment ago.
        ContainerDocument::Missing(message) => return Err(failed(message.to_string())),
    };
    parse_document(&text).ok_or_else(|| failed("unexpected container inspect output".into()))
}

/// `Config.OpenStdin` and `Config.Tty` of an inspect document.
fn parse_document(text: &str) -> Option<AttachTarget> {
    let json: serde_json::Value = serde_json::from_str(text).ok()?;
    let config = &json["Config"];
    Some(AttachTarget {
        open_stdin: config["OpenStdin"].as_bool()?,
        tty: config["Tty"].as_bool()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspect_document_parses() {
        assert_eq!(
            parse_document(r#"{"Config":{"OpenStdin":true,"Tty":false}}"#),
            Some(AttachTarget {
                open_stdin: true,
                tty: false
            })
        );
        assert_eq!(parse_document(r#"{"Config":{"Tty":true}}"#), None);
        assert_eq!(parse_document("yes"), None);
    }
}
