//! What the bench runs and watches outside itself: the docker CLI, the
//! bench container, the execd process it starts, and `/proc` figures.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use execd_client::{Addr, Connector};
use tonic::transport::Channel;

/// The container every scenario runs in, through execd and directly.
pub const CONTAINER: &str = "execd-bench";
const IMAGE: &str = "execd-busybox:latest";

/// Runs the docker CLI and returns its trimmed stdout.
pub fn docker(args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("docker")
        .args(args)
        .output()
        .context("running docker")?;
    if !out.status.success() {
        bail!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Starts the bench container unless it already runs.
pub fn ensure_container() -> Result<()> {
    if docker(&[
        "container",
        "inspect",
        "--format",
        "{{.State.Status}}",
        CONTAINER,
    ])
    .is_ok_and(|s| s == "running")
    {
        return Ok(());
    }
    // A stopped or half-made leftover would make `docker run` fail on the name.
    let _ = docker(&["rm", "-f", CONTAINER]);
    docker(&[
        "run",
        "-d",
        "--init",
        "--network",
        "none",
        "--name",
        CONTAINER,
        IMAGE,
        "sleep",
        "infinity",
    ])
    .context("starting the bench container (run scripts/docker-up first)")?;
    Ok(())
}

fn proc_status_field(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    first_number_after(&text, field)
}

/// The number after `field` on the first line starting with it, as
/// `/proc/*/status` and `/proc/meminfo` write them.
pub fn first_number_after(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

pub fn rss_kib(pid: u32) -> u64 {
    proc_status_field(pid, "VmRSS:").unwrap_or(0)
}

pub fn threads(pid: u32) -> u64 {
    proc_status_field(pid, "Threads:").unwrap_or(0)
}

/// Whether `pid` carries the session marker in its environment (every
/// process a session starts does, unless it scrubbed it).
fn marked(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
        env.split(|b| *b == 0)
            .any(|v| v.starts_with(b"EXECD_SESSION_ID="))
    })
}

/// Every process id in `/proc` (those that end meanwhile included).
fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
}

/// The direct children of `pid`.
fn children(pid: u32) -> impl Iterator<Item = u32> {
    pids().filter(move |&child| proc_status_field(child, "PPid:") == Some(u64::from(pid)))
}

/// The pid namespace `pid` lives in (the link's text names its inode).
fn pid_namespace(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()
}

/// How many direct children `pid` has, container processes included (the
/// OCI backend's session processes are execd's children).
pub fn child_count(pid: u32) -> usize {
    children(pid).count()
}

/// RSS of the direct children of `pid` that live in its own pid namespace,
/// i.e. on the host (the CLI backend's `docker exec` processes), and how
/// many there are. Children inside a container (the OCI backend's session
/// processes, reparented to execd as the child subreaper) are the
/// session's own processes, not a cost of execd's host.
pub fn host_children_rss_kib(pid: u32) -> (u64, usize) {
    let own = pid_namespace(pid);
    let host: Vec<u32> = children(pid)
        .filter(|&child| own.is_some() && pid_namespace(child) == own)
        .collect();
    (host.iter().map(|&c| rss_kib(c)).sum(), host.len())
}

/// The 1-minute load average.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The bench container as the host sees it: its init process, and from
/// there its processes and cgroups.
#[derive(Clone)]
pub struct ContainerView {
    init: u32,
    namespace: PathBuf,
}

/// One process in the bench container that is not part of the container
/// itself (its init and the `sleep infinity` it runs).
pub struct Stray {
    pub pid: u32,
    pub command: String,
    /// It carries the session marker.
    pub marked: bool,
}

impl ContainerView {
    pub fn new() -> Result<ContainerView> {
        let init: u32 = docker(&["inspect", "--format", "{{.State.Pid}}", CONTAINER])?
            .parse()
            .context("the bench container's pid")?;
        let namespace = pid_namespace(init).context("the bench container's pid namespace")?;
        Ok(ContainerView { init, namespace })
    }

    /// Processes in the container other than its init and the `sleep
    /// infinity` it was started with: a session's, or what one left.
    pub fn strays(&self) -> Vec<Stray> {
        pids()
            .filter(|&pid| pid != self.init)
            .filter(|&pid| pid_namespace(pid).as_ref() == Some(&self.namespace))
            .filter_map(|pid| {
                let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                let command = String::from_utf8_lossy(&raw)
                    .trim_end_matches('\0')
                    .replace('\0', " ");
                let own = command == "sleep infinity"
                    && proc_status_field(pid, "PPid:") == Some(u64::from(self.init));
                (!own).then(|| Stray {
                    pid,
                    command,
                    marked: marked(pid),
                })
            })
            .collect()
    }

    /// Kills the given strays (the bench's own leftovers), so they do not
    /// weigh on what runs next.
    pub fn kill(strays: &[Stray]) {
        if strays.is_empty() {
            return;
        }
        let _ = std::process::Command::new("kill")
            .arg("-KILL")
            .args(strays.iter().map(|s| s.pid.to_string()))
            .stderr(Stdio::null())
            .status();
    }

    /// Session cgroups (`execd-*`) below the container's: the OCI backend
    /// makes one per session (in the unified hierarchy, or in the v1
    /// `freezer` and `pids` ones) and removes it at the session's end.
    pub fn session_cgroups(&self) -> usize {
        let Ok(membership) = std::fs::read_to_string(format!("/proc/{}/cgroup", self.init)) else {
            return 0;
        };
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let mut found = 0;
        for line in membership.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let dir = match controllers {
                "" if v2 => format!("/sys/fs/cgroup{path}"),
                c if c.split(',').any(|c| c == "pids" || c == "freezer") => {
                    format!("/sys/fs/cgroup/{c}{path}")
                }
                _ => continue,
            };
            found += std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("execd-"))
                .count();
        }
        found
    }
}

/// The OCI runtime's state root for the engine the bench talks to: the
/// first of `given` (`--oci-root`, else `EXECD_OCI_ROOT`), the private
/// engine's (`$EXECD_DOCKER_STATE/exec/…`, or `target/dockerd/exec/…` as
/// `scripts/docker-up` starts it, found from the current directory or
/// from the bench binary's place in `target/`) and Docker's default that
/// holds the bench container's state; Docker's default if none does.
pub fn oci_root(given: Option<PathBuf>) -> Result<PathBuf> {
    const SUFFIX: &str = "exec/runtime-runc/moby";
    const DOCKER_ROOT: &str = "/run/docker/runtime-runc/moby";
    if let Some(root) = given.or_else(|| std::env::var_os("EXECD_OCI_ROOT").map(PathBuf::from)) {
        return Ok(root);
    }
    let id = docker(&["inspect", "--format", "{{.Id}}", CONTAINER])?;
    let mut candidates = Vec::new();
    if let Some(state) = std::env::var_os("EXECD_DOCKER_STATE") {
        candidates.push(PathBuf::from(state).join(SUFFIX));
    }
    candidates.push(Path::new("target/dockerd").join(SUFFIX));
    // <target>/release/execd-bench → <target>/dockerd/…
    if let Some(target) = std::env::current_exe()?.parent().and_then(Path::parent) {
        candidates.push(target.join("dockerd").join(SUFFIX));
    }
    candidates.push(PathBuf::from(DOCKER_ROOT));
    let found = candidates
        .into_iter()
        .find(|root| root.join(&id).join("state.json").exists());
    Ok(match found {
        Some(root) => std::path::absolute(&root).unwrap_or(root),
        None => PathBuf::from(DOCKER_ROOT),
    })
}

/// The execd under test, on a unix socket in its own temp dir; killed
/// when dropped.
pub struct Execd {
    child: tokio::process::Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Execd {
    /// Starts `binary` with `--backend backend` and `extra` flags.
    pub async fn start_with(binary: &Path, backend: &str, extra: &[&str]) -> Result<Execd> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("execd.sock");
        // `--listen` always: the default listener is a system-wide socket.
        let child = tokio::process::Command::new(binary)
            .args([
                "--listen",
                &format!("unix:{}", socket.display()),
                "--log-level",
                "warn",
                "--backend",
                backend,
                "--max-sessions",
                "1100",
                "--max-sessions-per-instance",
                "1100",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut child = child;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            // It says why on stderr (the bench's own), e.g. no OCI root.
            if let Some(status) = child.try_wait()? {
                bail!("execd --backend {backend} exited at start ({status})");
            }
            if Instant::now() > deadline {
                bail!("execd did not create its socket");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Execd {
            child,
            socket,
            _dir: dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Its address as clients (the example client's `--addr`) write it.
    pub fn addr(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    /// Open file descriptors of the execd process.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// One connection for every session, with HTTP/2 windows large enough
    /// that the client is never what limits throughput.
    pub async fn channel(&self) -> Result<Channel> {
        let channel = Connector::new(&Addr::Unix(self.socket.clone()), None)?
            .large_windows()
            .connect()
            .await?;
        Ok(channel)
    }
}
