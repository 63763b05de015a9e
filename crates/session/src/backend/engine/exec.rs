//! A session's process through the Engine API.
//!
//! A session is one exec (`POST /containers/{id}/exec`, then
//! `POST /exec/{id}/start` hijacked into a raw stream), or for an attach
//! the container's own stream (`POST /containers/{id}/attach`). Output
//! arrives raw with a tty and in 8-byte frames without; stdin EOF is the
//! half-close of the socket's write side (a terminal gets its EOF
//! character instead, as with the CLI). Sizes go to `exec/{id}/resize`
//! (or `containers/{id}/resize`), which the engine applies to the
//! process's terminal directly, so no later check is needed; engines from
//! API 1.42 also take the first size at creation. The exit code comes from
//! inspecting the exec once its stream has ended.
//!
//! Connection loss tells nothing about the process, so a stream that ends
//! is always followed by an inspect; an engine that does not answer it
//! ends the session as unavailable instead of leaving it hanging.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use super::http::{self, HijackAnswer};
use super::{call, refused, unavailable, EngineBackend, CALL_TIMEOUT};
use crate::backend::inspect::PreflightError;
use crate::backend::output::{FramedOutput, Reader, SplitOutput};
use crate::backend::{BoxFuture, OutputChunk, Process, ProcessControl, ProcessOutput, Resizer};
use crate::backend::{SpawnRequest, WaitError};
use crate::command::{SessionKind, TermSize, DETACH_KEYS};

/// The exit code can lag a moment behind the end of the stream.
const INSPECT_BACKOFF: [u64; 8] = [0, 5, 10, 20, 50, 100, 200, 500];
/// The first size, on engines that cannot take it at creation: retried
/// while the exec is still on its way (the engine refuses to resize a
/// process that is not running yet).
const FIRST_RESIZE_TRIES: u32 = 10;

/// What the session's stream is attached to.
#[derive(Clone)]
enum Target {
    Exec(String),
    Container(String),
}

impl Target {
    fn resize_path(&self, size: TermSize) -> String {
        let (h, w) = (size.rows, size.cols);
        match self {
            Target::Exec(id) => format!("/exec/{id}/resize?h={h}&w={w}"),
            Target::Container(id) => format!("/containers/{id}/resize?h={h}&w={w}"),
        }
    }

    fn inspect_path(&self) -> String {
        match self {
            Target::Exec(id) => format!("/exec/{id}/json"),
            Target::Container(id) => format!("/containers/{id}/json"),
        }
    }
}

impl EngineBackend {
    pub(super) async fn start(&self, request: SpawnRequest<'_>) -> Result<Process, PreflightError> {
        let spec = request.spec;
        let container = &spec.container_id;
        let version = self.api_version().await?;
        let console_at_create = version >= (1, 42);
        let (target, hijack_path, body) = if spec.kind == SessionKind::Attach {
            let stdin = u8::from(spec.attach_stdin);
            let path = format!(
                "/containers/{container}/attach?stream=1&stdin={stdin}&stdout=1&stderr=1&detachKeys={}",
                DETACH_KEYS.replace('^', "%5E")
            );
            (Target::Container(container.clone()), path, None)
        } else {
            let mut create = serde_json::json!({
                "AttachStdin": true,
                "AttachStdout": true,
                "AttachStderr": true,
                "Tty": spec.tty,
                "DetachKeys": DETACH_KEYS,
                "Env": spec
                    .effective_env(request.marker)
                    .into_iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>(),
                "Cmd": spec.effective_command(),
                "WorkingDir": spec.working_dir,
                "User": spec.user,
            });
            if spec.tty && console_at_create {
                create["ConsoleSize"] = serde_json::json!([request.size.rows, request.size.cols]);
            }
            let (code, answer) = call(http::post_json(
                &self.socket,
                &format!("/containers/{container}/exec"),
                &create,
            ))
            .await?;
            if code != 201 {
                return Err(refused(container, code, &answer));
            }
            let json: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
            let Some(id) = json["Id"].as_str().map(str::to_string) else {
                return Err(refused(container, code, "exec created without an Id"));
            };
            let mut start = serde_json::json!({"Detach": false, "Tty": spec.tty});
            if spec.tty && console_at_create {
                start["ConsoleSize"] = create["ConsoleSize"].clone();
            }
            let path = format!("/exec/{id}/start");
            (Target::Exec(id), path, Some(start))
        };
        let hijacked = match call(http::hijack(&self.socket, &hijack_path, body.as_ref())).await? {
            HijackAnswer::Upgraded(h) => h,
            HijackAnswer::Refused(code, answer) => return Err(refused(container, code, &answer)),
        };
        let resizer = EngineResizer {
            socket: self.socket.clone(),
            target: target.clone(),
        };
        if spec.tty && !console_at_create {
            resizer.first_size(request.size).await;
        }
        let std_stream = hijacked
            .stream
            .into_std()
            .map_err(|e| unavailable(e.to_string()))?;
        // A second handle on the socket: `kill` shuts it down under both
        // halves, whichever tasks hold them.
        let shutdown_handle = std_stream
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| unavailable(e.to_string()))?;
        let stream =
            tokio::net::UnixStream::from_std(std_stream).map_err(|e| unavailable(e.to_string()))?;
        let (read_half, write_half) = stream.into_split();
        let ended = CancellationToken::new();
        let already_read = hijacked.already_read;
        let output: Box<dyn ProcessOutput> = if spec.tty {
            let reader: Reader = Box::new(std::io::Cursor::new(already_read).chain(read_half));
            Box::new(EndSignal {
                inner: SplitOutput::new(reader, None),
                ended: ended.clone(),
            })
        } else {
            Box::new(EndSignal {
                inner: FramedOutput::new(Box::new(read_half), already_read),
                ended: ended.clone(),
            })
        };
        Ok(Process {
            stdin: Box::new(write_half),
            output,
            // The container's terminal has the usual default; there is no
            // way to ask for its VEOF from here.
            eof_char: spec.tty.then_some(0x04),
            resizer: spec.tty.then(|| Box::new(resizer) as Box<dyn Resizer>),
            control: Box::new(EngineControl {
                socket: self.socket.clone(),
                target,
                stream_ended: ended,
                socket_handle: Some(shutdown_handle),
                exit: None,
            }),
        })
    }
}

/// Passes the output through and tells the control when it has ended: the
/// exec is only inspected for its exit code after that.
struct EndSignal<O> {
    inner: O,
    ended: CancellationToken,
}

impl<O: ProcessOutput> ProcessOutput for EndSignal<O> {
    fn next_chunk(&mut self) -> BoxFuture<'_, std::io::Result<OutputChunk>> {
        Box::pin(async move {
            let chunk = self.inner.next_chunk().await;
            if !matches!(chunk, Ok(OutputChunk::Data(..))) {
                self.ended.cancel();
            }
            chunk
        })
    }
}

struct EngineResizer {
    socket: Arc<PathBuf>,
    target: Target,
}

impl EngineResizer {
    async fn post(&self, size: TermSize) -> std::io::Result<()> {
        let path = self.target.resize_path(size);
        let (code, body) = http::post_json(&self.socket, &path, &serde_json::json!({})).await?;
        if (200..300).contains(&code) {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "resize answered {code}: {}",
                http::error_message(&body)
            )))
        }
    }

    /// Sets the first size, retrying while the engine is still starting
    /// the process.
    async fn first_size(&self, size: TermSize) {
        for attempt in 0..FIRST_RESIZE_TRIES {
            match self.post(size).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::debug!(error = %e, attempt, "first resize refused; retrying");
                    tokio::time::sleep(Duration::from_millis(5 * u64::from(attempt + 1))).await;
                }
            }
        }
        tracing::warn!(?size, "the engine did not take the terminal's first size");
    }
}

impl Resizer for EngineResizer {
    fn resize(&self, size: TermSize) -> BoxFuture<'_, std::io::Result<()>> {
        Box::pin(async move {
            tokio::time::timeout(CALL_TIMEOUT, self.post(size))
                .await
                .map_err(|_| std::io::Error::other("resize timed out"))?
        })
    }

    fn needs_checks(&self) -> bool {
        false
    }
}

struct EngineControl {
    socket: Arc<PathBuf>,
    target: Target,
    stream_ended: CancellationToken,
    /// Shut down on `kill`; `None` once done.
    socket_handle: Option<OwnedFd>,
    exit: Option<i32>,
}

impl EngineControl {
    /// Asks the engine whether the process is still running; its exit code
    /// if not.
    async fn inspect(&self) -> Result<Option<i32>, WaitError> {
        let path = self.target.inspect_path();
        let (code, body) = call(http::get(&self.socket, &path))
            .await
            .map_err(|e| WaitError::EngineGone(e.to_string()))?;
        if code != 200 {
            return Err(WaitError::EngineGone(format!(
                "GET {path} answered {code}: {}",
                http::error_message(&body)
            )));
        }
        let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let state = match self.target {
            Target::Exec(_) => &json,
            Target::Container(_) => &json["State"],
        };
        if state["Running"].as_bool().unwrap_or(false) {
            return Ok(None);
        }
        Ok(Some(state["ExitCode"].as_i64().unwrap_or(255) as i32))
    }
}

impl ProcessControl for EngineControl {
    fn wait(&mut self) -> BoxFuture<'_, Result<i32, WaitError>> {
        Box::pin(async move {
            if let Some(code) = self.exit {
                return Ok(code);
            }
            self.stream_ended.cancelled().await;
            let mut step = 0;
            loop {
                let delay = INSPECT_BACKOFF[step.min(INSPECT_BACKOFF.len() - 1)];
                tokio::time::sleep(Duration::from_millis(delay)).await;
                step += 1;
                if let Some(code) = self.inspect().await? {
                    self.exit = Some(code);
                    return Ok(code);
                }
            }
        })
    }

    fn has_exited(&mut self) -> bool {
        self.exit.is_some()
    }

    fn kill(&mut self) -> BoxFuture<'_, ()> {
        if let Some(fd) = self.socket_handle.take() {
            // Both halves see the end at once; the engine sees the client
            // go (it does not stop the exec: the reaper does).
            let _ = nix::sys::socket::shutdown(fd.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        }
        Box::pin(std::future::ready(()))
    }
}
