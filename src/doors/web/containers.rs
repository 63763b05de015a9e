//! The container picker's list: running containers with name, image and
//! status, read through the session manager
//! ([`SessionManager::running_containers`]), so the list passes the same
//! engine gate as every other out-of-session query and the web door never
//! runs the runtime CLI or asks the engine itself.

use std::time::{Duration, SystemTime};

use axum::response::{IntoResponse, Response};
use execd_session::{ContainerInfo, ContainerQueryError, SessionManager};
use http::StatusCode;
use serde::Serialize;

use super::WebError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Container {
    pub(crate) name: String,
    pub(crate) image: String,
    pub(crate) status: String,
}

/// The running containers, sorted by name (at most 500).
pub(crate) async fn list(manager: &SessionManager) -> Result<Vec<Container>, ContainerQueryError> {
    let now = SystemTime::now();
    Ok(manager
        .running_containers()
        .await?
        .iter()
        .map(|c| Container {
            name: c.name.clone(),
            image: c.image.clone(),
            status: status(c, now),
        })
        .collect())
}

/// The answer for a list that failed: busy is a limit (429), the rest the
/// page's usual errors.
pub(crate) fn refusal(e: ContainerQueryError) -> Response {
    match e {
        ContainerQueryError::HostMode => WebError::HostMode.into_response(),
        ContainerQueryError::Busy { .. } => {
            crate::doors::json_error(StatusCode::TOO_MANY_REQUESTS, &e.to_string())
        }
        e => WebError::Engine(e.to_string()).into_response(),
    }
}

/// `docker ps`'s status column: "Up 5 minutes" for a running container.
fn status(c: &ContainerInfo, now: SystemTime) -> String {
    match humantime::parse_rfc3339_weak(c.started_at.trim_end_matches('Z')) {
        // A start "in the future" is clock skew between engine and execd.
        Ok(started) => format!(
            "Up {}",
            human_duration(now.duration_since(started).unwrap_or_default())
        ),
        Err(_) => "Up".into(),
    }
}

/// Docker's `units.HumanDuration`, which `docker ps` uses.
fn human_duration(d: Duration) -> String {
    let seconds = d.as_secs();
    let minutes = seconds / 60;
    // Docker rounds hours to the nearest one.
    let hours = (d.as_secs_f64() / 3600.0 + 0.5) as u64;
    match () {
        _ if seconds < 1 => "Less than a second".into(),
        _ if seconds == 1 => "1 second".into(),
        _ if seconds < 60 => format!("{seconds} seconds"),
        _ if minutes == 1 => "About a minute".into(),
        _ if minutes < 60 => format!("{minutes} minutes"),
        _ if hours == 1 => "About an hour".into(),
        _ if hours < 48 => format!("{hours} hours"),
        _ if hours < 24 * 7 * 2 => format!("{} days", hours / 24),
        _ if hours < 24 * 30 * 2 => format!("{} weeks", hours / 24 / 7),
        _ if hours < 24 * 365 * 2 => format!("{} months", hours / 24 / 30),
        _ => format!("{} years", hours / 24 / 365),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_reads_like_docker_ps() {
        let info = ContainerInfo {
            started_at: "2026-01-01T00:00:00.123456789Z".into(),
            status: "running".into(),
            ..ContainerInfo::default()
        };
        let started = humantime::parse_rfc3339("2026-01-01T00:00:00.123456789Z").unwrap();
        let at = |secs| started + Duration::from_secs(secs);
        assert_eq!(status(&info, at(0)), "Up Less than a second");
        assert_eq!(status(&info, at(1)), "Up 1 second");
        assert_eq!(status(&info, at(45)), "Up 45 seconds");
        assert_eq!(status(&info, at(90)), "Up About a minute");
        assert_eq!(status(&info, at(600)), "Up 10 minutes");
        assert_eq!(status(&info, at(3_600)), "Up About an hour");
        assert_eq!(status(&info, at(5 * 3_600)), "Up 5 hours");
        assert_eq!(status(&info, at(3 * 86_400)), "Up 3 days");
        let never = ContainerInfo::default();
        assert_eq!(status(&never, at(0)), "Up");
    }
}
