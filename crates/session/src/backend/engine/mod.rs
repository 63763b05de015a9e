//! The Docker Engine API backend: no process in execd's host per session,
//! and every question about containers asked on the same socket.
//!
//! - `exec`: a session's process, one exec (or the container's own
//!   stream for an attach) over a hijacked connection.
//! - `http`: the small HTTP/1.1 client it speaks, bounded in time.
//! - here: the backend itself, and its answers about containers: the
//!   state a start needs (`GET /containers/{id}/json`), the inspect
//!   document, the running containers (`GET /containers/json`, then an
//!   inspect of each, a few at once), `/_ping`, and a command run inside a
//!   container to its end (an exec started detached, then inspected).
//!
//! The CLI backend uses the same answers as its shortcut when its CLI is a
//! plain local docker (`state_answer`, `document_answer`, `list_answer`,
//! `ping_answer`): they tell "the socket did not answer" (`Err`, so the
//! CLI is asked instead) apart from "the engine answered" (`Ok`, whatever
//! it said).

mod exec;
pub(crate) mod http;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::OnceCell;

use super::inspect::{
    parse_state, ContainerDocument, ContainerInfo, ContainerState, PingError, PreflightError,
    QueryError, RunInsideError, MAX_LISTED,
};
use super::{Backend, BoxFuture, Process, SpawnRequest, StartError};
use crate::command::is_container_ref;

/// A hung engine fails a start (or a start's check) instead of holding
/// the client forever.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Inspects of a list asked at once.
pub(crate) const LIST_CONCURRENCY: u32 = 8;
/// How often a command run inside a container is looked at until it ends.
const RUN_INSIDE_POLL: Duration = Duration::from_millis(50);

/// Runs sessions through the Engine API on `socket`.
pub struct EngineBackend {
    socket: Arc<PathBuf>,
    /// `(major, minor)` of the engine's API, asked once.
    api_version: OnceCell<(u32, u32)>,
}

impl EngineBackend {
    pub fn new(socket: PathBuf) -> Self {
        EngineBackend {
            socket: Arc::new(socket),
            api_version: OnceCell::new(),
        }
    }

    async fn api_version(&self) -> Result<(u32, u32), PreflightError> {
        self.api_version
            .get_or_try_init(|| async {
                let (code, body) = call(http::get(&self.socket, "/version")).await?;
                if code != 200 {
                    return Err(unavailable(format!("GET /version answered {code}")));
                }
                let json: Value = serde_json::from_str(&body).unwrap_or_default();
                Ok(parse_version(json["ApiVersion"].as_str().unwrap_or("")))
            })
            .await
            .copied()
    }

    /// Whether `container_id` exists and runs. Transport errors come back
    /// as `Err`; any HTTP answer as `Ok`.
    pub(crate) async fn state_answer(
        &self,
        container_id: &str,
    ) -> io::Result<Result<ContainerState, PreflightError>> {
        // The id is validated to [A-Za-z0-9_.-]: safe in a URL path as is.
        let (code, body) =
            http::get(&self.socket, &format!("/containers/{container_id}/json")).await?;
        let json: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        Ok(match code {
            200 if json.get("State").is_none() => {
                return Err(io::Error::other("Engine API answer without State"));
            }
            200 => {
                let state = &json["State"];
                let status = state["Status"].as_str().unwrap_or_default();
                let pid = state["Pid"].as_i64().unwrap_or(0) as i32;
                parse_state(container_id, &format!("{status} {pid}"))
            }
            404 => Err(PreflightError::NotFound {
                message: format!("Error response from daemon: {}", http::error_message(&body)),
            }),
            _ => Err(PreflightError::Failed {
                container_id: container_id.to_string(),
                message: format!("Engine API answered {code}: {}", http::error_message(&body)),
            }),
        })
    }

    /// The inspect document of `reference` (validated). Transport errors
    /// come back as `Err`.
    pub(crate) async fn document_answer(
        &self,
        reference: &str,
    ) -> io::Result<Result<ContainerDocument, QueryError>> {
        let (code, body) =
            http::get(&self.socket, &format!("/containers/{reference}/json")).await?;
        Ok(match code {
            200 => Ok(ContainerDocument::Found(body.into())),
            404 => Ok(ContainerDocument::Missing(
                http::error_message(&body).into(),
            )),
            _ => Err(QueryError::Engine(http::error_message(&body))),
        })
    }

    /// The engine's containers, each inspected. `Err` when the socket did
    /// not answer the list itself.
    pub(crate) async fn list_answer(&self) -> io::Result<Result<Vec<ContainerInfo>, QueryError>> {
        let (code, body) = http::get(&self.socket, "/containers/json").await?;
        if code != 200 {
            return Ok(Err(QueryError::Engine(http::error_message(&body))));
        }
        let items: Vec<Value> = match serde_json::from_str(&body) {
            Ok(items) => items,
            Err(e) => {
                return Ok(Err(QueryError::Engine(format!(
                    "unreadable container list: {e}"
                ))))
            }
        };
        let ids: Vec<String> = items
            .iter()
            .filter_map(|i| i["Id"].as_str())
            .filter(|id| is_container_ref(id))
            .take(MAX_LISTED)
            .map(str::to_string)
            .collect();
        let inspected: Vec<_> = futures_util::stream::iter(ids)
            .map(|id| async move { self.document(&id).await?.info() })
            .buffer_unordered(LIST_CONCURRENCY as usize)
            .collect()
            .await;
        let mut list = Vec::new();
        for one in inspected {
            // A container removed between the list and its inspect is gone.
            match one {
                Ok(info) => list.extend(info),
                Err(e) => return Ok(Err(e)),
            }
        }
        Ok(Ok(list))
    }

    /// `/_ping`. `Err` when the socket did not answer.
    pub(crate) async fn ping_answer(&self) -> io::Result<Result<(), PingError>> {
        let (code, body) = http::get(&self.socket, "/_ping").await?;
        Ok(if code == 200 {
            Ok(())
        } else {
            Err(PingError(format!(
                "the engine answered {code}: {}",
                body.trim()
            )))
        })
    }

    async fn document(&self, reference: &str) -> Result<ContainerDocument, QueryError> {
        self.document_answer(reference)
            .await
            .unwrap_or_else(|e| Err(QueryError::Engine(e.to_string())))
    }

    /// Runs `argv` in `container` to its end: an exec started detached,
    /// then inspected until it has an exit code. Bounded by the caller.
    async fn run_to_end(&self, container: &str, argv: &[String]) -> Result<(), RunInsideError> {
        let not_started = |e: String| RunInsideError::NotStarted(e);
        let create = serde_json::json!({
            "Cmd": argv,
            "AttachStdin": false,
            "AttachStdout": false,
            "AttachStderr": false,
        });
        let (code, body) = http::post_json(
            &self.socket,
            &format!("/containers/{container}/exec"),
            &create,
        )
        .await
        .map_err(|e| not_started(e.to_string()))?;
        if code != 201 {
            return Err(not_started(format!(
                "the engine answered {code}: {}",
                http::error_message(&body)
            )));
        }
        let json: Value = serde_json::from_str(&body).unwrap_or_default();
        let Some(id) = json["Id"].as_str().filter(|id| is_container_ref(id)) else {
            return Err(not_started("exec created without a usable Id".into()));
        };
        let start = serde_json::json!({"Detach": true, "Tty": false});
        let (code, body) = http::post_json(&self.socket, &format!("/exec/{id}/start"), &start)
            .await
            .map_err(|e| not_started(e.to_string()))?;
        if !(200..300).contains(&code) {
            return Err(not_started(format!(
                "the engine answered {code}: {}",
                http::error_message(&body)
            )));
        }
        loop {
            tokio::time::sleep(RUN_INSIDE_POLL).await;
            let (code, body) = http::get(&self.socket, &format!("/exec/{id}/json"))
                .await
                .map_err(|e| RunInsideError::Failed(e.to_string()))?;
            if code != 200 {
                return Err(RunInsideError::Failed(format!(
                    "inspecting the exec answered {code}: {}",
                    http::error_message(&body)
                )));
            }
            let json: Value = serde_json::from_str(&body).unwrap_or_default();
            if json["Running"].as_bool() == Some(false) {
                if let Some(code) = json["ExitCode"].as_i64() {
                    return match code {
                        0 => Ok(()),
                        code => Err(RunInsideError::Failed(format!("exited with {code}"))),
                    };
                }
            }
        }
    }
}

impl Backend for EngineBackend {
    fn spawn<'a>(
        &'a self,
        request: SpawnRequest<'a>,
    ) -> BoxFuture<'a, Result<Process, StartError>> {
        Box::pin(async move { Ok(self.start(request).await?) })
    }

    fn check<'a>(
        &'a self,
        container_id: &'a str,
    ) -> BoxFuture<'a, Result<ContainerState, PreflightError>> {
        Box::pin(async move { call(self.state_answer(container_id)).await? })
    }

    fn inspect<'a>(
        &'a self,
        reference: &'a str,
    ) -> BoxFuture<'a, Result<ContainerDocument, QueryError>> {
        Box::pin(self.document(reference))
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<ContainerInfo>, QueryError>> {
        Box::pin(async move {
            self.list_answer()
                .await
                .unwrap_or_else(|e| Err(QueryError::Engine(e.to_string())))
        })
    }

    fn list_calls(&self) -> u32 {
        LIST_CONCURRENCY
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), PingError>> {
        Box::pin(async move {
            self.ping_answer()
                .await
                .unwrap_or_else(|e| Err(PingError(e.to_string())))
        })
    }

    fn run_inside<'a>(
        &'a self,
        container_id: &'a str,
        argv: &'a [String],
    ) -> BoxFuture<'a, Result<(), RunInsideError>> {
        Box::pin(self.run_to_end(container_id, argv))
    }
}

fn unavailable(message: String) -> PreflightError {
    PreflightError::EngineUnavailable { message }
}

/// Bounds one Engine API call; a refused or vanished socket is an
/// unavailable engine.
async fn call<T>(f: impl std::future::Future<Output = io::Result<T>>) -> Result<T, PreflightError> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(unavailable(e.to_string())),
        Err(_) => Err(unavailable(format!(
            "no answer within {}s",
            CALL_TIMEOUT.as_secs()
        ))),
    }
}

/// "1.41" → (1, 41); unknown → (1, 0), i.e. no optional features.
fn parse_version(v: &str) -> (u32, u32) {
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor),
        _ => (1, 0),
    }
}

/// The engine's answer to a create or attach, as a start's refusal.
fn refused(container_id: &str, code: u16, body: &str) -> PreflightError {
    let message = http::error_message(body);
    match code {
        404 => PreflightError::NotFound { message },
        409 => PreflightError::NotRunning {
            container_id: container_id.to_string(),
            state: if message.contains("paused") {
                "paused".into()
            } else {
                "not running".into()
            },
        },
        _ => PreflightError::Failed {
            container_id: container_id.to_string(),
            message: format!("the engine answered {code}: {message}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions() {
        assert_eq!(parse_version("1.41"), (1, 41));
        assert_eq!(parse_version("1.47"), (1, 47));
        assert_eq!(parse_version("garbage"), (1, 0));
        assert!(parse_version("1.42") >= (1, 42));
        assert!(parse_version("1.41") < (1, 42));
    }

    #[test]
    fn refusals_keep_the_engine_message() {
        let e = refused("web", 404, r#"{"message":"No such container: web"}"#);
        assert_eq!(e.to_string(), "No such container: web");
        let e = refused(
            "web",
            409,
            r#"{"message":"Container web is paused, unpause the container before exec"}"#,
        );
        assert!(e.to_string().contains("paused"), "{e}");
    }

    /// A fake engine on a unix socket answers like the Engine API does:
    /// every question's answer is read the way the real one's is.
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
                    "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"Id\":\"up1\",\"Name\":\"/up\",\"State\":{\"Status\":\"running\",\"Pid\":4321}}"
                } else if req.contains("/containers/down/json") {
                    "HTTP/1.0 200 OK\r\n\r\n{\"Id\":\"down1\",\"State\":{\"Status\":\"exited\",\"Pid\":0}}"
                } else if req.contains("GET /containers/json") {
                    "HTTP/1.0 200 OK\r\n\r\n[{\"Id\":\"up\"},{\"Id\":\"gone\"},{\"Id\":\"../x\"}]"
                } else if req.contains("POST /containers/up/exec") {
                    "HTTP/1.0 201 Created\r\n\r\n{\"Id\":\"e1\"}"
                } else if req.contains("POST /containers/down/exec") {
                    "HTTP/1.0 201 Created\r\n\r\n{\"Id\":\"e2\"}"
                } else if req.contains("POST /exec/") {
                    "HTTP/1.0 200 OK\r\n\r\n"
                } else if req.contains("GET /exec/e1/json") {
                    "HTTP/1.0 200 OK\r\n\r\n{\"Running\":false,\"ExitCode\":0}"
                } else if req.contains("GET /exec/e2/json") {
                    "HTTP/1.0 200 OK\r\n\r\n{\"Running\":false,\"ExitCode\":3}"
                } else if req.contains("/_ping") {
                    "HTTP/1.0 500 Internal Server Error\r\n\r\nstarting"
                } else {
                    "HTTP/1.0 404 Not Found\r\n\r\n{\"message\":\"No such container: gone\"}"
                };
                conn.write_all(reply.as_bytes()).await.unwrap();
            }
        });
        let engine = EngineBackend::new(socket.clone());
        assert_eq!(
            engine.state_answer("up").await.unwrap(),
            Ok(ContainerState { init_pid: 4321 })
        );
        assert!(matches!(
            engine.state_answer("down").await.unwrap(),
            Err(PreflightError::NotRunning { .. })
        ));
        match engine.state_answer("gone").await.unwrap() {
            Err(PreflightError::NotFound { message }) => {
                assert!(message.contains("No such container: gone"))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            engine.inspect("gone").await,
            Ok(ContainerDocument::Missing(m)) if m.contains("No such container")
        ));
        // The list skips what vanished since (and what is no reference).
        let list = engine.list().await.unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!((list[0].id.as_str(), list[0].name.as_str()), ("up1", "up"));
        // A command run inside: its exit code, or the engine's refusal.
        let argv = ["/bin/sh".to_string()];
        engine.run_inside("up", &argv).await.unwrap();
        match engine.run_inside("down", &argv).await {
            Err(RunInsideError::Failed(m)) => assert!(m.contains('3'), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            engine.run_inside("gone", &argv).await,
            Err(RunInsideError::NotStarted(m)) if m.contains("404")
        ));
        let down = engine.ping().await.unwrap_err();
        assert!(down.to_string().contains("500"), "{down}");
        let nowhere = EngineBackend::new(dir.path().join("nothing.sock"));
        assert!(nowhere.state_answer("up").await.is_err());
        assert!(matches!(
            nowhere.check("up").await,
            Err(PreflightError::EngineUnavailable { .. })
        ));
    }
}
