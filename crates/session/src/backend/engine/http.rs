//! A small Docker Engine API client over a local unix socket, on hyper:
//! what the Engine API backend speaks, and the CLI backend's shortcut
//! when its CLI is a plain local docker ([`local_socket`]: questions about
//! containers go straight to the socket, no process per question). Besides
//! plain requests it opens the hijacked streams of `exec/{id}/start` and
//! `containers/{id}/attach`.
//!
//! Every call is bounded in time whatever its caller does: connecting
//! (with the HTTP handshake) within [`CONNECT_TIMEOUT`], and the answer,
//! head and body, within [`REQUEST_TIMEOUT`] (for a hijack: until the
//! engine's `101`; the raw stream after it is the session's). An engine
//! that accepts and never answers (hung dockerd, a socket whose backlog
//! is full) thus fails a call instead of holding a session start, a
//! health check or a listing forever.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1;
use hyper::{header, Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

/// Largest answer read (container inspect data is a few KiB).
const MAX_ANSWER: usize = 4 * 1024 * 1024;
/// Connecting to the socket and the HTTP/1.1 handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// From sending a request to having read its whole answer (for a hijack,
/// to the `101`). Generous: a loaded engine can take seconds to create an
/// exec; callers with a tighter deadline wrap calls in their own.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The bounds of one call.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    connect: Duration,
    request: Duration,
}

const TIMEOUTS: Timeouts = Timeouts {
    connect: CONNECT_TIMEOUT,
    request: REQUEST_TIMEOUT,
};

/// `f` within `limit`, else a `TimedOut` error naming what took too long.
async fn within<T>(
    limit: Duration,
    what: &str,
    f: impl Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    match tokio::time::timeout(limit, f).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("Engine API: {what} took longer than {limit:?}"),
        )),
    }
}

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

/// GETs `path`; returns the status code and body.
pub async fn get(socket: &Path, path: &str) -> std::io::Result<(u16, String)> {
    request(socket, Method::GET, path, None, TIMEOUTS).await
}

/// POSTs `body` as JSON to `path`; returns the status code and body.
pub async fn post_json(
    socket: &Path,
    path: &str,
    body: &serde_json::Value,
) -> std::io::Result<(u16, String)> {
    request(socket, Method::POST, path, Some(body), TIMEOUTS).await
}

/// Opens one HTTP/1.1 connection to the engine. One connection per call:
/// a unix-socket connect costs microseconds, and a session's hijacked
/// stream owns its connection anyway.
async fn connect(
    socket: &Path,
    upgrades: bool,
    limit: Duration,
) -> std::io::Result<http1::SendRequest<Full<Bytes>>> {
    let (sender, conn) = within(limit, "connecting", async {
        let stream = UnixStream::connect(socket).await?;
        http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)
    })
    .await?;
    tokio::spawn(async move {
        let result = if upgrades {
            conn.with_upgrades().await
        } else {
            conn.await
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "Engine API connection ended");
        }
    });
    Ok(sender)
}

fn build(
    method: Method,
    path: &str,
    body: Option<&serde_json::Value>,
) -> std::io::Result<Request<Full<Bytes>>> {
    let builder = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "docker");
    let request = match body {
        Some(json) => builder
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(json.to_string()))),
        None => builder.body(Full::new(Bytes::new())),
    };
    request.map_err(std::io::Error::other)
}

async fn request(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<&serde_json::Value>,
    timeouts: Timeouts,
) -> std::io::Result<(u16, String)> {
    let mut sender = connect(socket, false, timeouts.connect).await?;
    let request = build(method, path, body)?;
    within(timeouts.request, "answering", async move {
        let response = sender
            .send_request(request)
            .await
            .map_err(std::io::Error::other)?;
        let code = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        Ok((code, String::from_utf8_lossy(&body).into_owned()))
    })
    .await
}

/// A hijacked connection: the raw socket after the engine's `101`, and the
/// bytes hyper had already read past the response head.
pub struct Hijacked {
    pub stream: UnixStream,
    pub already_read: Bytes,
}

/// The result of asking for a hijacked stream.
pub enum HijackAnswer {
    Upgraded(Hijacked),
    /// The engine refused: status and body.
    Refused(u16, String),
}

/// POSTs `body` to `path` asking for the connection to be upgraded to a raw
/// stream (`exec/{id}/start`, `containers/{id}/attach`), as the docker CLI
/// does.
pub async fn hijack(
    socket: &Path,
    path: &str,
    body: Option<&serde_json::Value>,
) -> std::io::Result<HijackAnswer> {
    within(
        TIMEOUTS.request,
        "answering",
        hijack_inner(socket, path, body),
    )
    .await
}

async fn hijack_inner(
    socket: &Path,
    path: &str,
    body: Option<&serde_json::Value>,
) -> std::io::Result<HijackAnswer> {
    let mut sender = connect(socket, true, TIMEOUTS.connect).await?;
    let mut request = build(Method::POST, path, body)?;
    let headers = request.headers_mut();
    headers.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("Upgrade"),
    );
    headers.insert(header::UPGRADE, header::HeaderValue::from_static("tcp"));
    let response = sender
        .send_request(request)
        .await
        .map_err(std::io::Error::other)?;
    let code = response.status().as_u16();
    if code != 101 {
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        return Ok(HijackAnswer::Refused(code, body));
    }
    let upgraded = hyper::upgrade::on(response)
        .await
        .map_err(std::io::Error::other)?;
    // Back to the plain socket: the stream is raw bytes from here on, and
    // owning the socket gives a real half-close (stdin EOF) and lets the
    // two directions live in different tasks without a lock.
    let parts = upgraded
        .downcast::<TokioIo<UnixStream>>()
        .map_err(|_| std::io::Error::other("upgraded Engine API stream is not a unix socket"))?;
    Ok(HijackAnswer::Upgraded(Hijacked {
        stream: parts.io.into_inner(),
        already_read: parts.read_buf,
    }))
}

/// The engine's error message from an error body (`{"message": "..."}`),
/// or the body itself.
pub fn error_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An engine that accepts and then says nothing fails the call once
    /// the request timeout passes, instead of holding it forever.
    #[tokio::test]
    async fn a_silent_engine_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("engine.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        let short = Timeouts {
            connect: Duration::from_secs(5),
            request: Duration::from_millis(200),
        };
        let err = request(&socket, Method::GET, "/_ping", None, short)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
        assert!(err.to_string().contains("Engine API"), "{err}");
        silent.abort();
    }

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
