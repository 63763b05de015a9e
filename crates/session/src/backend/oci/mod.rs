//! The OCI-runtime backend: what containerd's shim does for an exec, done
//! by execd itself.
//!
//! A start ([`start`]) resolves the container through the engine (name →
//! full id, cached briefly: [`container`]), asks the runtime for its state
//! (init pid, bundle), builds the process spec from the container's own
//! `process` the way `docker exec` does ([`spec`]), makes the session a
//! cgroup of its own inside the container's ([`cgroup`]) and runs
//! `<runtime> exec --detach --pid-file … --process … [--console-socket …]
//! --cgroup … <id>` ([`runtime`]). The runtime exits as soon as the
//! process runs: no host process per session stays. As the child
//! subreaper, execd inherits the process and waits for it through a pidfd
//! ([`child`], held by the session as [`process`]'s control). With a
//! terminal the runtime hands execd the pty master over
//! the console socket ([`console`]), so sizes go straight to it; without
//! one, the process's stdin, stdout and stderr are pipes execd owns, and
//! closing stdin closes the pipe.
//!
//! Ending the session kills its cgroup (nothing it started survives,
//! however it hid from the marker) and removes it. The marker reaper still
//! runs first, as for every backend, so the session's processes get their
//! polite signal and grace period.
//!
//! The engine names the containers and answers for them: the OCI backend
//! holds a CLI backend for `--runtime-cli` and passes it every question
//! about containers (check, inspect, list, ping, a command run inside).
//! Attaching to a container's PID 1 is the engine's business too (the
//! runtime has no attach): attach sessions go to the engine's API when it
//! is a local docker, else to the CLI.
//!
//! The spec file is written 0600 into a directory only execd's user can
//! enter, next to the console socket, and all of it is removed once the
//! runtime has exited; no shell runs anywhere.

mod cgroup;
mod child;
mod console;
mod container;
mod process;
mod runtime;
mod spec;
mod start;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::cli::CliBackend;
use super::inspect::{
    ContainerDocument, ContainerInfo, ContainerState, PingError, PreflightError, QueryError,
    RunInsideError,
};
use super::{Backend, BoxFuture, Process, SpawnRequest, StartError};
use crate::command::SessionKind;
use crate::spawn::SpawnError;
use container::Resolver;
use runtime::{Runtime, RuntimeError};

/// Docker's runtime state root.
pub const DOCKER_ROOT: &str = "/run/docker/runtime-runc/moby";
/// containerd's, for its Kubernetes (CRI) namespace.
pub const CONTAINERD_K8S_ROOT: &str = "/run/containerd/runc/k8s.io";

/// Reading the bundle and the container's account files, and making the
/// cgroup, must not hold a start forever (a stuck file system).
const PREPARE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a killed session's process gets to be reaped.
const REAP_WITHIN: Duration = Duration::from_secs(5);
/// Where the runtime is looked for when it is named without a path.
const SEARCH_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error(transparent)]
    Container(#[from] container::ContainerError),
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    #[error(transparent)]
    Console(#[from] console::ConsoleError),
    #[error(transparent)]
    Child(#[from] child::ChildError),
    #[error("preparing the start: {0}")]
    Io(#[from] std::io::Error),
    #[error("preparing the start took longer than {}s", PREPARE_TIMEOUT.as_secs())]
    Stuck,
    #[error("the runtime exited without sending the terminal")]
    NoTerminal,
    #[error(
        "the engine runs container {id}, but the OCI runtime root {} does not hold it \
         (is --oci-root the engine's?)", root.display()
    )]
    NotUnderRoot { id: String, root: PathBuf },
}

/// Where `program` is: as given if it has a slash, else the first
/// executable of that name on execd's `PATH` or the usual directories.
fn find_program(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = PathBuf::from(program);
        return executable(&path).then_some(path);
    }
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(SEARCH_PATH.split(':'))
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| executable(p))
}

/// Checks what `--backend oci` needs before execd starts serving: the
/// runtime's root, and a runtime that can put an exec into a sub-cgroup.
/// The message names the flag to fix.
pub fn check_setup(runtime: &str, root: &Path) -> Result<(), String> {
    if !root.is_dir() {
        return Err(format!(
            "--oci-root {}: no such directory (Docker's runtime root is {DOCKER_ROOT}, \
             containerd's Kubernetes namespace {CONTAINERD_K8S_ROOT})",
            root.display()
        ));
    }
    let Some(program) = find_program(runtime) else {
        return Err(format!(
            "--oci-runtime {runtime:?}: not found (install runc or crun, or give its path)"
        ));
    };
    let help = std::process::Command::new(&program)
        .args(["exec", "--help"])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("--oci-runtime {}: cannot be run: {e}", program.display()))?;
    let text = String::from_utf8_lossy(&help.stdout) + String::from_utf8_lossy(&help.stderr);
    if !text.contains("--cgroup") {
        return Err(format!(
            "--oci-runtime {}: its exec has no --cgroup (runc 1.1 or later, or crun, is needed)",
            program.display()
        ));
    }
    Ok(())
}

/// Runs sessions with the OCI runtime directly.
pub struct OciBackend {
    runtime: Runtime,
    keep_background: bool,
    /// Why no session can start (missing root or runtime, no subreaper),
    /// said at every start.
    unusable: Option<String>,
    resolver: Resolver,
    /// The engine that names the containers, answers for them and runs
    /// attach sessions (see the module docs).
    engine: Arc<CliBackend>,
}

impl OciBackend {
    /// Makes execd the child subreaper (the exec'd processes become its
    /// children). `engine` names the containers; `keep_background` leaves
    /// what an exited process left running alone
    /// (`--keep-background-processes`).
    pub fn new(
        runtime: &str,
        root: &Path,
        engine: CliBackend,
        keep_background: bool,
    ) -> OciBackend {
        let program = find_program(runtime);
        let unusable = if !root.is_dir() {
            Some(format!(
                "the OCI runtime root {} does not exist",
                root.display()
            ))
        } else if program.is_none() {
            Some(format!("the OCI runtime {runtime:?} was not found"))
        } else if let Err(e) = child::become_subreaper() {
            Some(format!("execd cannot become the child subreaper: {e}"))
        } else {
            None
        };
        if let Some(why) = &unusable {
            tracing::error!(reason = %why, "--backend oci cannot start sessions");
        }
        let engine = Arc::new(engine);
        OciBackend {
            runtime: Runtime {
                program: program
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_else(|| runtime.to_string()),
                root: root.to_path_buf(),
            },
            keep_background,
            unusable,
            resolver: Resolver::new(engine.clone()),
            engine,
        }
    }
}

impl Backend for OciBackend {
    fn spawn<'a>(
        &'a self,
        request: SpawnRequest<'a>,
    ) -> BoxFuture<'a, Result<Process, StartError>> {
        Box::pin(async move {
            if request.spec.kind == SessionKind::Attach {
                return match self.engine.api() {
                    Some(api) => api.spawn(request).await,
                    None => self.engine.spawn(request).await,
                };
            }
            if let Some(why) = &self.unusable {
                return Err(StartError::Spawn(SpawnError::NotExecutable {
                    program: self.runtime.program.clone(),
                    source: std::io::Error::other(why.clone()),
                }));
            }
            let container = request.spec.container_id.clone();
            self.start(request)
                .await
                .map_err(|e| self.start_error(&container, e))
        })
    }

    fn check<'a>(
        &'a self,
        container_id: &'a str,
    ) -> BoxFuture<'a, Result<ContainerState, PreflightError>> {
        self.engine.check(container_id)
    }

    fn inspect<'a>(
        &'a self,
        reference: &'a str,
    ) -> BoxFuture<'a, Result<ContainerDocument, QueryError>> {
        self.engine.inspect(reference)
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<ContainerInfo>, QueryError>> {
        self.engine.list()
    }

    fn list_calls(&self) -> u32 {
        self.engine.list_calls()
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), PingError>> {
        self.engine.ping()
    }

    fn run_inside<'a>(
        &'a self,
        container_id: &'a str,
        argv: &'a [String],
    ) -> BoxFuture<'a, Result<(), RunInsideError>> {
        self.engine.run_inside(container_id, argv)
    }
}

impl OciBackend {
    fn start_error(&self, name: &str, e: OciError) -> StartError {
        let internal = |message: String| {
            StartError::Spawn(SpawnError::Io {
                program: self.runtime.program.clone(),
                source: std::io::Error::other(message),
            })
        };
        match e {
            OciError::Container(container::ContainerError::Engine(p)) => StartError::Refused(p),
            OciError::Runtime(RuntimeError::Missing(_)) => {
                StartError::Refused(PreflightError::NotFound {
                    message: format!("Error response from daemon: No such container: {name}"),
                })
            }
            OciError::Runtime(RuntimeError::Timeout { program }) => {
                StartError::Refused(PreflightError::EngineUnavailable {
                    message: format!("the OCI runtime {program:?} did not answer in time"),
                })
            }
            OciError::Runtime(RuntimeError::Spawn { program, source }) => {
                StartError::Spawn(SpawnError::NotExecutable { program, source })
            }
            e @ OciError::NotUnderRoot { .. } => StartError::Refused(PreflightError::Failed {
                container_id: name.to_string(),
                message: e.to_string(),
            }),
            other => internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_problems_name_the_flag() {
        let missing = check_setup("runc", Path::new("/no/such/root")).unwrap_err();
        assert!(missing.contains("--oci-root"), "{missing}");
        assert!(missing.contains(DOCKER_ROOT), "{missing}");
        let dir = std::env::temp_dir();
        let no_runtime = check_setup("/no/such/runc", &dir).unwrap_err();
        assert!(no_runtime.contains("--oci-runtime"), "{no_runtime}");
        let no_cgroup = check_setup("/bin/true", &dir).unwrap_err();
        assert!(no_cgroup.contains("--cgroup"), "{no_cgroup}");
    }
}
