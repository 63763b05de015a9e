//! One start: the blocking preparation (bundle, user, spec file, cgroup),
//! the runtime's `exec --detach` with the process's pipes or the console
//! socket, and what is taken down again when a start does not get to the
//! end.

use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::cgroup::SessionCgroup;
use super::child::Child;
use super::console::ConsoleSocket;
use super::process::{finished, MasterResizer, OciControl};
use super::runtime::{self, ExecArgs, RuntimeError, WorkDir};
use super::{container, spec, OciBackend, OciError, PREPARE_TIMEOUT};
use crate::backend::inspect::PreflightError;
use crate::backend::output::SplitOutput;
use crate::backend::{Process, SpawnRequest};
use crate::command::TermSize;
use crate::pty::PtyMaster;

/// What a start has set up and must take down again if it does not get to
/// the end: the runtime (left to finish), the cgroup (killed: it holds
/// whatever the runtime may have started) and the start's directory.
struct Pending {
    runc: Option<tokio::process::Child>,
    pid_file: PathBuf,
    cgroup: Option<SessionCgroup>,
    dir: Option<WorkDir>,
    /// The start got to the end: the process belongs to the session now.
    finished: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let (runc, mut cgroup, dir) = (self.runc.take(), self.cgroup.take(), self.dir.take());
        if self.finished {
            return;
        }
        if runc.is_none() {
            // The runtime is done: its process, if any, is in the cgroup;
            // ended here in the common case, as a spawned task might never
            // run (a server shutting down).
            cgroup = cgroup.and_then(|c| c.end_within(super::process::DROP_WAIT));
        }
        let may_have_started = runc.is_some() || self.pid_file.exists();
        if cgroup.is_none() && !may_have_started {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pid_file = std::mem::take(&mut self.pid_file);
        handle.spawn(async move {
            // Killing the runtime half-way would orphan its helpers: let
            // it finish (bounded), then end what it started.
            if let Some(mut runc) = runc {
                let _ = tokio::time::timeout(runtime::RUNTIME_TIMEOUT, runc.wait()).await;
            }
            let pid = runtime::read_pid(&pid_file).ok();
            let started = pid.and_then(|pid| Child::adopt(pid).ok());
            match (cgroup, &started) {
                (Some(cgroup), _) => {
                    let _ = tokio::task::spawn_blocking(move || cgroup.end()).await;
                }
                (None, Some(child)) => {
                    child.signal(Signal::SIGKILL);
                }
                (None, None) => {
                    // Started but not execd's child (no subreaper took it):
                    // still the session's, still killed.
                    if let Some(process) = pid.and_then(crate::pidfd::ProcHandle::open) {
                        process.signal(Signal::SIGKILL);
                    }
                }
            }
            // Reaped whenever it dies: an unreaped child in the container's
            // PID namespace would keep the container from stopping.
            if let Some(mut child) = started {
                let _ = child.wait().await;
            }
            drop(dir);
        });
    }
}

/// The three pipes of a process without a terminal: execd's ends and the
/// process's.
struct Pipes {
    stdin: tokio::net::unix::pipe::Sender,
    stdout: tokio::net::unix::pipe::Receiver,
    stderr: tokio::net::unix::pipe::Receiver,
    theirs: [std::os::fd::OwnedFd; 3],
}

impl Pipes {
    fn new() -> std::io::Result<Pipes> {
        use nix::fcntl::OFlag;
        use std::os::fd::AsRawFd;
        let pipe = || nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(std::io::Error::from);
        let (in_r, in_w) = pipe()?;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        for fd in [&out_r, &err_r] {
            // SAFETY: F_SETPIPE_SZ takes an int and only changes the
            // pipe's buffer size; the fd is owned for the whole call. A
            // refusal (pipe-max-size) just keeps the default size.
            unsafe {
                libc::fcntl(
                    fd.as_raw_fd(),
                    libc::F_SETPIPE_SZ,
                    crate::spawn::PIPE_CAPACITY,
                )
            };
        }
        Ok(Pipes {
            stdin: tokio::net::unix::pipe::Sender::from_owned_fd(in_w)?,
            stdout: tokio::net::unix::pipe::Receiver::from_owned_fd(out_r)?,
            stderr: tokio::net::unix::pipe::Receiver::from_owned_fd(err_r)?,
            theirs: [in_r, out_w, err_w],
        })
    }
}

/// What the blocking preparation hands back.
enum Prepared {
    Ready {
        dir: WorkDir,
        process: PathBuf,
        cgroup: Option<SessionCgroup>,
        systemd: bool,
    },
    /// The engine would refuse this exec's start (an unknown `-u`): the
    /// session exits 126 with the engine's message, as `docker exec` does.
    Refused(String),
}

/// Everything a start reads and writes on disk. Blocking.
struct Preparation {
    bundle: PathBuf,
    init_pid: i32,
    target: container::Target,
    argv: Vec<String>,
    env: std::collections::BTreeMap<String, String>,
    cwd: String,
    user: String,
    tty: bool,
    size: TermSize,
    marker: String,
}

impl Preparation {
    fn run(self) -> Result<Prepared, OciError> {
        let bundle = container::read_bundle(&self.bundle)?;
        let user = if self.user.is_empty() {
            None
        } else {
            let passwd = spec::read_container_file(self.init_pid, "etc/passwd")?;
            let group = spec::read_container_file(self.init_pid, "etc/group")?;
            let resolved = spec::resolve_user(
                &self.user,
                passwd.as_deref(),
                group.as_deref(),
                &self.target.group_add,
            );
            match resolved {
                Ok(user) => Some(user),
                Err(e) => return Ok(Prepared::Refused(e.to_string())),
            }
        };
        let process = spec::exec_process(
            &bundle.process,
            &spec::Overrides {
                argv: self.argv,
                env: &self.env,
                marker: &self.marker,
                cwd: &self.cwd,
                user,
                tty: self.tty,
                size: self.size,
                configured_term: self.target.configured_term,
            },
        )?;
        let dir = WorkDir::create()?;
        let bytes = serde_json::to_vec(&process).map_err(std::io::Error::other)?;
        let process = dir.write_private("process.json", &bytes)?;
        // Last, so that nothing above can fail and leave it behind.
        let cgroup = match SessionCgroup::create(self.init_pid, &format!("execd-{}", self.marker)) {
            Ok(Some(cgroup)) => Some(cgroup),
            Ok(None) => {
                tracing::warn!(
                    "no writable freezer, pids or unified cgroup for the container: the session \
                     runs in the container's cgroup and only the marker reaper ends it"
                );
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "the session's cgroup could not be made; only the marker reaper ends it");
                None
            }
        };
        Ok(Prepared::Ready {
            dir,
            process,
            cgroup,
            systemd: bundle.systemd,
        })
    }
}

impl OciBackend {
    pub(super) async fn start(&self, request: SpawnRequest<'_>) -> Result<Process, OciError> {
        let SpawnRequest {
            spec, marker, size, ..
        } = request;
        let name = &spec.container_id;
        let root = &self.runtime.root;
        let mut target = self.resolver.resolve(root, name).await?;
        let state = match self.runtime.state(&target.id).await {
            Err(RuntimeError::Missing(_)) => {
                // The name may have moved on to a new container since it
                // was cached: ask the engine again, once.
                self.resolver.forget(name);
                target = self.resolver.resolve(root, name).await?;
                match self.runtime.state(&target.id).await {
                    // The engine runs it, the runtime root does not have
                    // it: the root is not this engine's.
                    Err(RuntimeError::Missing(id)) if target.configured_term.is_some() => {
                        return Err(OciError::NotUnderRoot {
                            id,
                            root: root.clone(),
                        });
                    }
                    other => other?,
                }
            }
            other => other?,
        };
        if state.status != "running" {
            return Err(OciError::Container(container::ContainerError::Engine(
                PreflightError::NotRunning {
                    container_id: name.clone(),
                    state: state.status,
                },
            )));
        }
        let argv = spec.effective_command();
        let program = argv.first().cloned().unwrap_or_default();
        let preparation = Preparation {
            bundle: state.bundle.clone(),
            init_pid: state.pid,
            target: target.clone(),
            argv,
            env: spec.env.clone(),
            cwd: spec.working_dir.clone(),
            user: spec.user.clone(),
            tty: spec.tty,
            size,
            marker: marker.to_string(),
        };
        let prepared = tokio::time::timeout(
            PREPARE_TIMEOUT,
            tokio::task::spawn_blocking(move || preparation.run()),
        )
        .await
        .map_err(|_| OciError::Stuck)?
        .map_err(std::io::Error::other)??;
        let (dir, process_file, cgroup, systemd) = match prepared {
            Prepared::Ready {
                dir,
                process,
                cgroup,
                systemd,
            } => (dir, process, cgroup, systemd),
            Prepared::Refused(message) => return Ok(finished(spec.tty, message, 126)),
        };
        let log = dir.join("log.json");
        let mut pending = Pending {
            runc: None,
            pid_file: dir.join("pid"),
            cgroup,
            dir: None,
            finished: false,
        };
        let console = match spec.tty {
            true => Some(ConsoleSocket::bind(&dir.join("console.sock"))?),
            false => None,
        };
        let console_path = dir.join("console.sock");
        let mut pipes = match spec.tty {
            true => None,
            false => Some(Pipes::new()?),
        };
        let no_cgroups = Vec::new();
        let mut cmd = self.runtime.exec_command(&ExecArgs {
            id: &target.id,
            process: &process_file,
            pid_file: &pending.pid_file,
            log: &log,
            console: spec.tty.then_some(console_path.as_path()),
            cgroups: pending
                .cgroup
                .as_ref()
                .map_or(&no_cgroups, |c| c.runtime_args()),
            systemd,
        });
        match pipes.as_mut() {
            Some(p) => {
                let [stdin, stdout, stderr] = &p.theirs;
                cmd.stdin(stdin.try_clone()?)
                    .stdout(stdout.try_clone()?)
                    .stderr(stderr.try_clone()?);
            }
            None => {
                cmd.stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null());
            }
        }
        pending.dir = Some(dir);
        let spawned = cmd.spawn().map_err(|source| RuntimeError::Spawn {
            program: self.runtime.program.clone(),
            source,
        })?;
        // Only the runtime (and then the process) may hold the process's
        // ends: with a copy here, its output would never end.
        drop(cmd);
        let pipes = pipes.map(|p| {
            let Pipes {
                stdin,
                stdout,
                stderr,
                theirs,
            } = p;
            drop(theirs);
            (stdin, stdout, stderr)
        });
        pending.runc = Some(spawned);
        let (status, master) =
            run_runtime(&mut pending, console.as_ref(), &self.runtime.program).await?;
        if !status.success() {
            let message = runtime::log_error(&log);
            drop(pending);
            // A container that stopped meanwhile is an error, as anywhere.
            match self.runtime.state(&target.id).await {
                Ok(s) if s.status != "running" => {
                    return Err(OciError::Container(container::ContainerError::Engine(
                        PreflightError::NotRunning {
                            container_id: name.clone(),
                            state: s.status,
                        },
                    )))
                }
                Err(e @ RuntimeError::Missing(_)) => return Err(e.into()),
                _ => {}
            }
            let code = start_failure_code(&message, &program);
            return Ok(finished(
                spec.tty,
                format!("OCI runtime exec failed: {message}"),
                code,
            ));
        }
        let child = Child::adopt(runtime::read_pid(&pending.pid_file)?)?;
        let control = Box::new(OciControl {
            child: Some(child),
            cgroup: pending.cgroup.take(),
            keep_background: self.keep_background,
            killed: false,
        });
        // The runtime is gone and the files served their purpose.
        pending.finished = true;
        drop(pending);
        Ok(match (master, pipes) {
            (Some(master), _) => {
                // Already the size with runtimes that honour consoleSize.
                let _ = master.resize(size);
                Process {
                    stdin: Box::new(master.writer()),
                    output: Box::new(SplitOutput::new(Box::new(master.reader()), None)),
                    eof_char: Some(master.eof_char()),
                    resizer: Some(Box::new(MasterResizer(master))),
                    control,
                }
            }
            (None, Some((stdin, stdout, stderr))) => Process {
                stdin: Box::new(stdin),
                output: Box::new(SplitOutput::new(Box::new(stdout), Some(Box::new(stderr)))),
                eof_char: None,
                resizer: None,
                control,
            },
            (None, None) => return Err(OciError::NoTerminal),
        })
    }
}

/// Waits for the runtime to exit (bounded), receiving the terminal on the
/// way when there is one.
async fn run_runtime(
    pending: &mut Pending,
    console: Option<&ConsoleSocket>,
    program: &str,
) -> Result<(std::process::ExitStatus, Option<PtyMaster>), OciError> {
    let Some(runc) = pending.runc.as_mut() else {
        return Err(OciError::NoTerminal);
    };
    let deadline = tokio::time::Instant::now() + runtime::RUNTIME_TIMEOUT;
    let mut master = None;
    let status = loop {
        tokio::select! {
            // The terminal first: the runtime sends it before it exits,
            // and a receive cut off half-way would lose it.
            biased;
            received = async {
                match console {
                    Some(c) => c.receive().await,
                    None => std::future::pending().await,
                }
            }, if master.is_none() => master = Some(received?),
            status = runc.wait() => break status?,
            _ = tokio::time::sleep_until(deadline) => {
                return Err(RuntimeError::Timeout { program: program.to_string() }.into());
            }
        }
    };
    pending.runc = None;
    if let (Some(console), None, true) = (console, &master, status.success()) {
        // Sent just before the exit: still queued on the socket.
        master = Some(
            tokio::time::timeout(Duration::from_secs(1), console.receive())
                .await
                .map_err(|_| OciError::NoTerminal)??,
        );
    }
    Ok((status, master))
}

/// The exit code `docker exec` reports for a process that could not be
/// started (the engine's `translateContainerdStartErr`).
fn start_failure_code(message: &str, program: &str) -> i32 {
    let lower = message.to_lowercase();
    let mut code = 126;
    if !program.is_empty()
        && lower.contains(&program.to_lowercase())
        && (lower.contains("executable file not found")
            || lower.contains("no such file or directory"))
    {
        code = 127;
    }
    if lower.contains("permission denied") {
        code = 126;
    }
    if lower.contains("not a directory") {
        code = 127;
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_failures_get_dockers_exit_codes() {
        let not_found = "exec failed: unable to start container process: exec: \
                         \"/no/such\": stat /no/such: no such file or directory";
        assert_eq!(start_failure_code(not_found, "/no/such"), 127);
        let in_path = "exec: \"nosuch\": executable file not found in $PATH";
        assert_eq!(start_failure_code(in_path, "nosuch"), 127);
        let denied = "exec: \"/etc/passwd\": permission denied";
        assert_eq!(start_failure_code(denied, "/etc/passwd"), 126);
        let cwd = "chdir to cwd (\"/nope\") set in config.json failed: no such file or directory";
        assert_eq!(start_failure_code(cwd, "sh"), 126);
    }
}
