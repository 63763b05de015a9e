//! CRI `runtime.v1.RuntimeService`: `ExecSync`, `Exec` and `Attach`, as
//! kubelet-style tooling calls them, onto the same session manager. Every
//! other RuntimeService method is absent (UNIMPLEMENTED).
//!
//! - `ExecSync` runs the command to its end and returns its output (each
//!   stream capped at [`MAX_OUTPUT`]; more is dropped) and exit code. A
//!   `timeout` (seconds, 0 = none) that elapses kills the process in the
//!   container and answers DEADLINE_EXCEEDED.
//! - `Exec`/`Attach` validate the request and check the container, then
//!   return a single-use streaming URL ([`crate::doors::kube`]) where the
//!   client opens the WebSocket; the session starts when it does.

use std::time::Duration;

use execd_proto::cri::runtime_service_server::RuntimeService;
use execd_proto::cri::{
    AttachRequest, AttachResponse, ExecRequest, ExecResponse, ExecSyncRequest, ExecSyncResponse,
};
use execd_session::{
    Door, EndReason, ExecSpec, OutputStream, SessionError, SessionEvent, SessionKind,
};
use tonic::{Request, Response, Status};

use super::kube::{StreamRequest, TokenError};
use super::DoorContext;
use crate::door_session::{self, Ending, Opened};
use crate::error_text::ClientText;

/// Most bytes of each of stdout and stderr that ExecSync returns.
pub const MAX_OUTPUT: usize = 16 * 1024 * 1024;

/// How long a timed-out ExecSync waits for its processes to be gone.
const KILL_WAIT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Tokens(#[from] TokenError),
    #[error("{}", ClientText(.0))]
    Session(#[from] SessionError),
    #[error("command timed out after {0}s")]
    Timeout(i64),
}

impl From<CriError> for Status {
    fn from(err: CriError) -> Status {
        match err {
            CriError::Invalid(m) => Status::invalid_argument(m),
            CriError::Tokens(e @ TokenError::TooMany) => Status::resource_exhausted(e.to_string()),
            CriError::Tokens(e @ TokenError::NoBaseUrl) => {
                Status::failed_precondition(e.to_string())
            }
            CriError::Session(e) => crate::error_text::grpc_status(&e),
            e @ CriError::Timeout(_) => Status::deadline_exceeded(e.to_string()),
        }
    }
}

/// The RuntimeService implementation.
pub struct CriRuntime {
    ctx: DoorContext,
}

impl CriRuntime {
    pub fn new(ctx: DoorContext) -> Self {
        CriRuntime { ctx }
    }
}

/// The CRI rules for the requested streams.
fn check_streams(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> Result<(), CriError> {
    if !(stdin || stdout || stderr) {
        return Err(CriError::Invalid(
            "one of stdin, stdout, or stderr must be set".into(),
        ));
    }
    if tty && stderr {
        return Err(CriError::Invalid(
            "tty and stderr cannot both be true (a terminal merges stderr into stdout)".into(),
        ));
    }
    Ok(())
}

/// The owner key the exec token check put on the call (empty without
/// tokens), so CRI sessions count per token like every other door's.
fn owner_of<T>(request: &Request<T>) -> String {
    request
        .extensions()
        .get::<crate::auth::Owner>()
        .cloned()
        .map(crate::auth::Owner::into_key)
        .unwrap_or_default()
}

fn append_capped(buf: &mut Vec<u8>, data: &[u8]) {
    let room = MAX_OUTPUT.saturating_sub(buf.len());
    buf.extend_from_slice(&data[..data.len().min(room)]);
}

/// Gathers the session's output (each stream capped) until its end: the
/// exit code, or why it ended without one.
async fn collect_output(
    events: &mut execd_session::SessionEvents,
    metrics: &crate::metrics::Metrics,
    stdout: &mut Vec<u8>,
    stderr: &mut Vec<u8>,
) -> Result<i32, SessionError> {
    loop {
        match events.recv().await {
            Some(SessionEvent::Output { stream, data }) => {
                metrics.record_output(stream, data.len());
                let buf = match stream {
                    OutputStream::Stdout => &mut *stdout,
                    OutputStream::Stderr => &mut *stderr,
                };
                append_capped(buf, &data);
            }
            Some(SessionEvent::Exited { code }) => return Ok(code),
            Some(SessionEvent::Failed(e)) => return Err(e),
            None => {
                return Err(SessionError::Wait(std::io::Error::other(
                    "session ended without a final status",
                )))
            }
        }
    }
}

impl CriRuntime {
    async fn exec_sync(
        &self,
        owner: String,
        req: ExecSyncRequest,
    ) -> Result<ExecSyncResponse, CriError> {
        if req.cmd.is_empty() {
            return Err(CriError::Invalid("cmd is empty".into()));
        }
        let spec = ExecSpec {
            door: Door::Cri,
            kind: SessionKind::Exec,
            container_id: req.container_id,
            command: req.cmd,
            owner,
            ..ExecSpec::default()
        };
        let span = tracing::info_span!(
            "session",
            door = "cri",
            kind = "exec_sync",
            session_id = tracing::field::Empty,
            container_id = %execd_session::log_field::LogField::new(&spec.container_id),
        );
        // A refusal is counted and logged by the start itself.
        let Opened {
            session,
            active,
            requested_at,
            ..
        } = door_session::open(
            &self.ctx.manager,
            &self.ctx.metrics,
            None,
            spec,
            None,
            &span,
        )
        .await?;
        span.record("session_id", session.id.as_str());
        let stats = session.stats.clone();
        let record =
            |ending| door_session::record_end(&active, &span, requested_at, &stats, ending);
        let mut input = session.input;
        input.close_stdin().await;
        let mut events = session.output.into_receiver();
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let collect = collect_output(&mut events, &self.ctx.metrics, &mut stdout, &mut stderr);
        let outcome = if req.timeout > 0 {
            let limit = Duration::from_secs(req.timeout.unsigned_abs());
            match tokio::time::timeout(limit, collect).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    // End it and wait for the kill, so the process is gone
                    // in the container when the caller hears of the timeout.
                    let reason = EndReason::Closed(format!("timeout after {}s", req.timeout));
                    input.end(reason.clone());
                    let _ = tokio::time::timeout(KILL_WAIT, input.finished()).await;
                    record(Ending::Failed(&SessionError::Ended(reason)));
                    return Err(CriError::Timeout(req.timeout));
                }
            }
        } else {
            collect.await
        };
        match outcome {
            Ok(exit_code) => {
                record(Ending::Exited(exit_code));
                Ok(ExecSyncResponse {
                    stdout: stdout.into(),
                    stderr: stderr.into(),
                    exit_code,
                })
            }
            Err(e) => {
                record(Ending::Failed(&e));
                Err(e.into())
            }
        }
    }

    async fn exec(&self, owner: String, req: ExecRequest) -> Result<ExecResponse, CriError> {
        check_streams(req.stdin, req.stdout, req.stderr, req.tty)?;
        if req.cmd.is_empty() {
            return Err(CriError::Invalid("cmd is empty".into()));
        }
        if let Some(index) = req.cmd.iter().position(|a| a.contains('\0')) {
            return Err(CriError::Invalid(format!(
                "cmd[{index}] contains a NUL byte"
            )));
        }
        self.ctx.manager.check_container(&req.container_id).await?;
        let url = self.ctx.streams.issue(
            "exec",
            StreamRequest {
                door: Door::Cri,
                kind: SessionKind::Exec,
                container_id: req.container_id,
                command: req.cmd,
                instance_id: String::new(),
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr,
                tty: req.tty,
                owner,
                session_id: None,
            },
        )?;
        Ok(ExecResponse { url })
    }

    async fn attach(&self, owner: String, req: AttachRequest) -> Result<AttachResponse, CriError> {
        check_streams(req.stdin, req.stdout, req.stderr, req.tty)?;
        let target = self.ctx.manager.attach_target(&req.container_id).await?;
        if req.stdin && !target.open_stdin {
            return Err(CriError::Invalid(format!(
                "container {} was not created with an open stdin; attach without stdin",
                req.container_id
            )));
        }
        let url = self.ctx.streams.issue(
            "attach",
            StreamRequest {
                door: Door::Cri,
                kind: SessionKind::Attach,
                container_id: req.container_id,
                command: Vec::new(),
                instance_id: String::new(),
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr,
                // What the container has decides how to attach to it.
                tty: target.tty,
                owner,
                session_id: None,
            },
        )?;
        Ok(AttachResponse { url })
    }
}

#[tonic::async_trait]
impl RuntimeService for CriRuntime {
    async fn exec_sync(
        &self,
        request: Request<ExecSyncRequest>,
    ) -> Result<Response<ExecSyncResponse>, Status> {
        Ok(Response::new(
            CriRuntime::exec_sync(self, owner_of(&request), request.into_inner()).await?,
        ))
    }

    async fn exec(&self, request: Request<ExecRequest>) -> Result<Response<ExecResponse>, Status> {
        Ok(Response::new(
            CriRuntime::exec(self, owner_of(&request), request.into_inner()).await?,
        ))
    }

    async fn attach(
        &self,
        request: Request<AttachRequest>,
    ) -> Result<Response<AttachResponse>, Status> {
        Ok(Response::new(
            CriRuntime::attach(self, owner_of(&request), request.into_inner()).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_rules() {
        assert!(check_streams(false, false, false, false).is_err());
        assert!(check_streams(false, true, true, true).is_err());
        assert!(check_streams(true, true, false, true).is_ok());
        let mut buf = vec![0u8; MAX_OUTPUT - 1];
        append_capped(&mut buf, b"abc");
        assert_eq!(buf.len(), MAX_OUTPUT);
    }
}
