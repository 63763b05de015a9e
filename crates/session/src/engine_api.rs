//! The smallest Engine API client that does the job: one HTTP/1.0 GET over
//! the local Docker socket.
//!
//! Used where asking the CLI would spawn a process per question (the start
//! preflight, health checks). Only for `docker` on a local unix socket with
//! no context override; everything else goes through the CLI, which knows
//! its own configuration.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest answer read (container inspect data is a few KiB).
const MAX_ANSWER: u64 = 4 * 1024 * 1024;

/// The Engine API socket, if `runtime_cli` is docker and would talk to a
/// local unix socket: no other host, no context chosen by environment or in
/// the CLI's config file (`docker context use`), no other config dir.
pub fn local_socket(runtime_cli: &str) -> Option<PathBuf> {
    let name = Path::new(runtime_cli).file_name()?.to_str()?;
    if name != "docker"
        || std::env::var_os("DOCKER_CONTEXT").is_some()
        || std::env::var_os("DOCKER_CONFIG").is_some()
        || uses_named_context()
    {
        return None;
    }
    match std::env::var("DOCKER_HOST") {
        Ok(host) => host.strip_prefix("unix://").map(PathBuf::from),
        Err(_) => Some(PathBuf::from("/var/run/docker.sock")),
    }
}

/// Whether `~/.docker/config.json` selects a context other than the default.
fn uses_named_context() -> bool {
    let Some(home) = std::env::var_os("HOME") else {
        return false;
    };
    let Ok(text) = std::fs::read_to_string(Path::new(&home).join(".docker/config.json")) else {
        return false;
    };
    let config: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    config["currentContext"]
        .as_str()
        .is_some_and(|c| !c.is_empty() && c != "default")
}

/// GETs `path`; returns the status code and body. HTTP/1.0 keeps the answer
/// unchunked and the connection one-shot.
pub async fn get(socket: &Path, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::net::UnixStream::connect(socket).await?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::with_capacity(16 * 1024);
    stream.take(MAX_ANSWER).read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("malformed Engine API answer"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("malformed Engine API status line"))?;
    // Anything but a plain, complete body is not understood here: the
    // caller then asks the CLI instead.
    let lower = head.to_ascii_lowercase();
    if lower.contains("transfer-encoding: chunked") {
        return Err(std::io::Error::other("chunked Engine API answer"));
    }
    if let Some(len) = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        if body.len() != len {
            return Err(std::io::Error::other("truncated Engine API answer"));
        }
    }
    Ok((code, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_for_plain_local_docker() {
        assert_eq!(local_socket("podman"), None);
        assert_eq!(local_socket("/opt/bin/nerdctl"), None);
        assert_eq!(local_socket("/tmp/docker-wrapper"), None);
        if std::env::var_os("DOCKER_HOST").is_none() && std::env::var_os("DOCKER_CONTEXT").is_none()
        {
            assert_eq!(
                local_socket("/usr/bin/docker"),
                Some(PathBuf::from("/var/run/docker.sock"))
            );
        }
    }
}
