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

/// Processes on this host started by any execd session (they carry the
/// session marker in their environment), e.g. left behind in a container.
pub fn marked_processes() -> usize {
    pids()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                env.split(|b| *b == 0)
                    .any(|v| v.starts_with(b"EXECD_SESSION_ID="))
            })
        })
        .count()
}

/// Every process id in `/proc` (those that end meanwhile included).
fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
}

/// RSS of the direct children of `pid` (the `docker exec` processes), and
/// how many there are.
pub fn children_rss_kib(pid: u32) -> (u64, usize) {
    let children: Vec<u32> = pids()
        .filter(|&child| proc_status_field(child, "PPid:") == Some(u64::from(pid)))
        .collect();
    (children.iter().map(|&c| rss_kib(c)).sum(), children.len())
}

/// The execd under test, on a unix socket in its own temp dir; killed
/// when dropped.
pub struct Execd {
    child: tokio::process::Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Execd {
    /// Starts `binary` with `--backend backend`.
    pub async fn start(binary: &Path, backend: &str) -> Result<Execd> {
        Self::start_with(binary, backend, &[]).await
    }

    /// [`Execd::start`] with extra flags.
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
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
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
            .tune(|endpoint| {
                endpoint
                    .initial_stream_window_size(4 * 1024 * 1024)
                    .initial_connection_window_size(16 * 1024 * 1024)
                    .max_frame_size(1024 * 1024)
            })
            .connect()
            .await?;
        Ok(channel)
    }
}
