//! CRI `runtime.v1.RuntimeService`: `ExecSync`, `Exec` and `Attach`, as
//! kubelet-style tooling calls them, onto the same session manager. Every
//! other RuntimeService method is absent (UNIMPLEMENTED).
//!
//! - `ExecSync` runs the command to its end and returns its output (each
//!   stream capped at [`MAX_OUTPUT`]; more is dropped) and exit code. A
//!   `timeout` (seconds, 0 = none) that elapses kills the process in the
//!   container and answers DEADLINE_EXCEEDED. The output all calls hold
//!   at once is bounded by [`OUTPUT_BUDGET`]: a call whose output does not
//!   fit in what is left is ended (its process killed) with
//!   RESOURCE_EXHAUSTED, so many concurrent calls cannot exhaust memory.
//! - `Exec`/`Attach` run every check a session start runs (the spec
//!   validates, the container exists and runs), then return a single-use
//!   streaming URL ([`crate::doors::kube`]) where the client opens the
//!   WebSocket; the session starts when it does.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use execd_proto::cri::runtime_service_server::RuntimeService;
use execd_proto::cri::{
    AttachRequest, AttachResponse, ExecRequest, ExecResponse, ExecSyncRequest, ExecSyncResponse,
};
use execd_session::{Door, EndReason, ExecSpec, OutputStream, SessionError, SessionKind};
use tonic::{Request, Response, Status};

use super::kube::{StreamRequest, TokenError};
use super::session::{DoorInput, DoorSession, End, Ending, Next};
use super::DoorContext;
use crate::error_text::ClientText;

/// Most bytes of each of stdout and stderr that one ExecSync returns. Both
/// together stay inside the 16 MiB gRPC message limit of kubelet's and
/// crictl's CRI clients, which refuse a larger reply anyway.
pub const MAX_OUTPUT: usize = 4 * 1024 * 1024;

/// Most output bytes (buffer capacity) all ExecSync calls hold at once:
/// 16 calls with both streams full. A reply is only as large as its call's
/// share, so this also bounds the encoded replies of the calls it admits.
pub const OUTPUT_BUDGET: usize = 128 * 1024 * 1024;

/// The first allocation for a stream's output; later ones double it (up to
/// [`MAX_OUTPUT`]) so a large output is not copied chunk by chunk.
const FIRST_ALLOCATION: usize = 64 * 1024;

/// How long a timed-out ExecSync waits for its processes to be gone.
const KILL_WAIT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub(crate) enum CriError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Tokens(#[from] TokenError),
    #[error("{}", ClientText(.0))]
    Session(#[from] SessionError),
    #[error("command timed out after {0}s")]
    Timeout(i64),
}

/// A budget of bytes shared by the calls of one server.
#[derive(Clone)]
struct OutputBudget {
    used: Arc<AtomicUsize>,
    limit: usize,
}

impl OutputBudget {
    fn new(limit: usize) -> Self {
        OutputBudget {
            used: Arc::default(),
            limit,
        }
    }

    fn hold(&self) -> BudgetHold {
        BudgetHold {
            budget: self.clone(),
            held: 0,
        }
    }

    /// What a refused call is told.
    fn exceeded(&self) -> String {
        format!(
            "ExecSync output of the calls running at once is over execd's budget of {} MiB; the command was ended. Retry later, or have it print less (at most {} MiB per stream is returned)",
            self.limit >> 20,
            MAX_OUTPUT >> 20
        )
    }
}

/// One call's share of the budget, given back when it is dropped.
struct BudgetHold {
    budget: OutputBudget,
    held: usize,
}

/// The budget has no room for what a call needs.
#[derive(Debug)]
struct OverBudget;

impl BudgetHold {
    fn take(&mut self, bytes: usize) -> Result<(), OverBudget> {
        self.budget
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes)
                    .filter(|&total| total <= self.budget.limit)
            })
            .map_err(|_| OverBudget)?;
        self.held += bytes;
        Ok(())
    }
}

impl Drop for BudgetHold {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.held, Ordering::AcqRel);
    }
}

impl From<CriError> for Status {
    fn from(err: CriError) -> Status {
        match err {
            CriError::Invalid(m) => Status::invalid_argument(m),
            CriError::Tokens(e @ (TokenError::TooMany | TokenError::TooManyForOwner)) => {
                Status::resource_exhausted(e.to_string())
            }
            CriError::Tokens(e @ TokenError::NoBaseUrl) => {
                Status::failed_precondition(e.to_string())
            }
            CriError::Session(e) => crate::error_text::grpc_status(&e),
            e @ CriError::Timeout(_) => Status::deadline_exceeded(e.to_string()),
        }
    }
}

/// The RuntimeService implementation.
pub(crate) struct CriRuntime {
    ctx: DoorContext,
    /// What the ExecSync calls running at once may hold.
    budget: OutputBudget,
}

impl CriRuntime {
    pub(crate) fn new(ctx: DoorContext) -> Self {
        CriRuntime {
            ctx,
            budget: OutputBudget::new(OUTPUT_BUDGET),
        }
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

/// The stream a CRI `Exec` or `Attach` asks for, once its streams pass
/// the CRI rules. Its URL is single-use: no instance, no session id to
/// come back with.
fn stream_request(
    kind: SessionKind,
    container_id: String,
    command: Vec<String>,
    owner: String,
    (stdin, stdout, stderr, tty): (bool, bool, bool, bool),
) -> Result<StreamRequest, CriError> {
    check_streams(stdin, stdout, stderr, tty)?;
    Ok(StreamRequest {
        door: Door::Cri,
        kind,
        container_id,
        command,
        instance_id: String::new(),
        stdin,
        stdout,
        stderr,
        tty,
        owner,
        session_id: None,
    })
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

/// Appends what fits under [`MAX_OUTPUT`] (the rest is dropped), growing
/// `buf` only with budget for its whole new allocation, so what the budget
/// counts is what is allocated.
fn append_capped(buf: &mut Vec<u8>, data: &[u8], hold: &mut BudgetHold) -> Result<(), OverBudget> {
    let room = MAX_OUTPUT.saturating_sub(buf.len());
    let data = &data[..data.len().min(room)];
    let needed = buf.len() + data.len();
    if needed > buf.capacity() {
        let capacity = needed
            .max(buf.capacity().saturating_mul(2))
            .clamp(FIRST_ALLOCATION, MAX_OUTPUT);
        hold.take(capacity - buf.capacity())?;
        buf.reserve_exact(capacity - buf.len());
    }
    buf.extend_from_slice(data);
    Ok(())
}

/// How collecting a session's output ended.
enum Collected {
    Exited(i32),
    Failed(SessionError),
    OverBudget,
}

/// Gathers the session's output (each stream capped, all of it within the
/// budget) until its end: the exit code, or why it ended without one.
async fn collect_output(
    session: &mut DoorSession,
    hold: &mut BudgetHold,
    stdout: &mut Vec<u8>,
    stderr: &mut Vec<u8>,
) -> Collected {
    loop {
        match session.next().await {
            Next::Output(stream, data) => {
                let buf = match stream {
                    OutputStream::Stdout => &mut *stdout,
                    OutputStream::Stderr => &mut *stderr,
                };
                if append_capped(buf, &data, hold).is_err() {
                    return Collected::OverBudget;
                }
            }
            Next::End(End::Exited(code)) => return Collected::Exited(code),
            Next::End(End::Failed(e) | End::Lost(e)) => return Collected::Failed(e),
        }
    }
}

/// Ends a session execd gives up on and waits for the kill, so the
/// process is gone in the container when the caller hears why.
async fn end_and_wait(input: &DoorInput, reason: EndReason) -> SessionError {
    input.end(reason.clone());
    let _ = tokio::time::timeout(KILL_WAIT, input.finished()).await;
    SessionError::Ended(reason)
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
        // A refusal is counted and logged by the start itself. ExecSync has
        // no frames to serve: the answer is one message after the end.
        let (mut session, mut input) = self.ctx.open_session(None, spec, None, &span).await?;
        span.record("session_id", session.id());
        input.close_stdin().await;
        let mut hold = self.budget.hold();
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let collect = collect_output(&mut session, &mut hold, &mut stdout, &mut stderr);
        let outcome = if req.timeout > 0 {
            let limit = Duration::from_secs(req.timeout.unsigned_abs());
            match tokio::time::timeout(limit, collect).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    let reason = EndReason::Closed(format!("timeout after {}s", req.timeout));
                    session.finish(Ending::Failed(&end_and_wait(&input, reason).await));
                    return Err(CriError::Timeout(req.timeout));
                }
            }
        } else {
            collect.await
        };
        match outcome {
            Collected::Exited(exit_code) => {
                session.finish(Ending::Exited(exit_code));
                Ok(ExecSyncResponse {
                    stdout: stdout.into(),
                    stderr: stderr.into(),
                    exit_code,
                })
            }
            Collected::Failed(e) => {
                session.finish(Ending::Failed(&e));
                Err(e.into())
            }
            Collected::OverBudget => {
                // What was gathered goes before the kill is awaited.
                drop((stdout, stderr, hold));
                let reason = EndReason::TooLarge(self.budget.exceeded());
                let e = end_and_wait(&input, reason).await;
                session.finish(Ending::Failed(&e));
                Err(e.into())
            }
        }
    }

    async fn exec(&self, owner: String, req: ExecRequest) -> Result<ExecResponse, CriError> {
        let request = stream_request(
            SessionKind::Exec,
            req.container_id,
            req.cmd,
            owner,
            (req.stdin, req.stdout, req.stderr, req.tty),
        )?;
        if request.command.is_empty() {
            return Err(CriError::Invalid("cmd is empty".into()));
        }
        self.validate(&request)?;
        self.ctx
            .manager
            .check_container(&request.container_id)
            .await?;
        Ok(ExecResponse {
            url: self.ctx.streams.issue("exec", request)?,
        })
    }

    async fn attach(&self, owner: String, req: AttachRequest) -> Result<AttachResponse, CriError> {
        let mut request = stream_request(
            SessionKind::Attach,
            req.container_id,
            Vec::new(),
            owner,
            (req.stdin, req.stdout, req.stderr, req.tty),
        )?;
        self.validate(&request)?;
        let target = self
            .ctx
            .manager
            .attach_target(&request.container_id)
            .await?;
        if request.stdin && !target.open_stdin {
            return Err(CriError::Invalid(format!(
                "container {} was not created with an open stdin; attach without stdin",
                request.container_id
            )));
        }
        // What the container has decides how to attach to it.
        request.tty = target.tty;
        Ok(AttachResponse {
            url: self.ctx.streams.issue("attach", request)?,
        })
    }

    /// Validates the spec the stream's session will start with
    /// ([`StreamRequest::spec`], as the kube door starts it), so a URL is
    /// only issued for a request whose start would not be refused for its
    /// content.
    fn validate(&self, request: &StreamRequest) -> Result<(), CriError> {
        request
            .spec()
            .validate(self.ctx.manager.backend_config())
            .map_err(|e| CriError::Session(e.into()))
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
    }

    #[test]
    fn output_is_capped_and_its_allocations_budgeted() {
        let budget = OutputBudget::new(MAX_OUTPUT + FIRST_ALLOCATION);
        let mut hold = budget.hold();
        let mut buf = Vec::new();
        append_capped(&mut buf, b"abc", &mut hold).unwrap();
        assert_eq!(hold.held, FIRST_ALLOCATION, "first allocation counted");
        let chunk = vec![7u8; 1 << 20];
        for _ in 0..8 {
            append_capped(&mut buf, &chunk, &mut hold).unwrap();
        }
        assert_eq!(buf.len(), MAX_OUTPUT, "capped; the rest dropped");
        assert!(buf.capacity() <= hold.held, "every allocated byte counted");
        assert_eq!(hold.held, MAX_OUTPUT);
        // A second call gets what is left, then is refused.
        let mut other = budget.hold();
        let mut buf2 = Vec::new();
        append_capped(&mut buf2, b"x", &mut other).unwrap();
        assert!(append_capped(&mut buf2, &chunk, &mut other).is_err());
        drop((hold, other));
        assert_eq!(budget.used.load(Ordering::Acquire), 0, "given back on drop");
    }
}
