//! The real `execd` binary in a process of its own, for what only a
//! process shows: its memory, its signals, its exit status, its logs.
//!
//! Two ways to start it, sharing one wait for its listeners
//! ([`wait_until_answers`]): [`ExecdProcess`] serves on a unix socket of its
//! own in a temp dir and follows the suite's backend choice;
//! [`SpawnedExecd`] gets exactly the arguments and environment a test
//! gives it (nothing added), as a launcher would start it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use tonic::transport::Channel;

use super::{connect_unix, test_oci_root, PATIENCE};

/// Where a listener can be reached from this host.
#[derive(Clone, Debug)]
pub enum Reach {
    Unix(PathBuf),
    Tcp(u16),
}

/// An unused loopback port. Another process may take it before execd binds
/// it; that shows as a bind error in execd's log, never as a false pass.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Returns once every `reach` accepts connections. Panics, with what execd
/// logged to `log` (if it logs to a file), when execd exits first or
/// nothing answers within [`PATIENCE`].
pub async fn wait_until_answers(
    child: &mut tokio::process::Child,
    reach: &[Reach],
    log: Option<&Path>,
) {
    let logged = || {
        log.map(|l| std::fs::read_to_string(l).unwrap_or_default())
            .unwrap_or_else(|| "(stderr not captured)".into())
    };
    let deadline = Instant::now() + PATIENCE;
    for target in reach {
        loop {
            let answered = match target {
                Reach::Unix(path) => tokio::net::UnixStream::connect(path).await.is_ok(),
                Reach::Tcp(port) => tokio::net::TcpStream::connect(("127.0.0.1", *port))
                    .await
                    .is_ok(),
            };
            if answered {
                break;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "execd exited ({status}) before {target:?} answered:\n{}",
                    logged()
                );
            }
            assert!(
                Instant::now() < deadline,
                "execd never answered on {target:?}:\n{}",
                logged()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// SIGTERM to `pid`.
fn sigterm(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}

/// The exit status of `child`, once it exits.
async fn exit_status(child: &mut tokio::process::Child) -> std::process::ExitStatus {
    tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("execd exits in time")
        .unwrap()
}

/// The real `execd` binary, serving on a unix socket in its own temp dir.
pub struct ExecdProcess {
    pub child: tokio::process::Child,
    pub socket: PathBuf,
    pub channel: Channel,
    /// Where stderr (the logs) goes, for processes started with
    /// [`ExecdProcess::start_logging`].
    pub log: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl ExecdProcess {
    pub async fn start(args: &[&str]) -> ExecdProcess {
        Self::start_in(tempfile::tempdir().unwrap(), args).await
    }

    /// Starts in `dir` (the socket is `dir/execd.sock`, which the caller may
    /// have prepared) and waits until it answers.
    pub async fn start_in(dir: tempfile::TempDir, args: &[&str]) -> ExecdProcess {
        Self::spawn_in(dir, args, false).await
    }

    /// Like [`ExecdProcess::start`], with stderr written to a file; read it
    /// with [`ExecdProcess::log_text`].
    pub async fn start_logging(args: &[&str]) -> ExecdProcess {
        Self::spawn_in(tempfile::tempdir().unwrap(), args, true).await
    }

    /// Everything execd logged so far (needs [`ExecdProcess::start_logging`]).
    pub fn log_text(&self) -> Vec<u8> {
        std::fs::read(self.log.as_ref().expect("started with start_logging")).unwrap()
    }

    async fn spawn_in(dir: tempfile::TempDir, args: &[&str], logging: bool) -> ExecdProcess {
        let socket = dir.path().join("execd.sock");
        let log = logging.then(|| dir.path().join("execd.log"));
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_execd"));
        command
            .args(["--listen", &format!("unix:{}", socket.display())])
            .args(args)
            .kill_on_drop(true);
        if args
            .iter()
            .any(|a| a.starts_with("--host-exec") || a.starts_with("--runtime-cli"))
        {
            // Host exec has no engine, and a chosen CLI is what is tested:
            // the suite's backend choice does not apply.
            command.env_remove("EXECD_BACKEND");
        } else if std::env::var("EXECD_BACKEND").as_deref() == Ok("oci") {
            // The test engine's runtime root, wherever its dockerd keeps it.
            command.env("EXECD_OCI_ROOT", test_oci_root());
        }
        if let Some(log) = &log {
            command.stderr(std::fs::File::create(log).expect("create the log file"));
        }
        let mut child = command.spawn().expect("spawn execd");
        wait_until_answers(&mut child, &[Reach::Unix(socket.clone())], log.as_deref()).await;
        let channel = connect_unix(socket.clone()).await;
        ExecdProcess {
            child,
            socket,
            channel,
            log,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("execd still running")
    }

    pub fn alive(&self) -> bool {
        self.child
            .id()
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
    }

    pub fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kib: f64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap();
        kib / 1024.0
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), signal).unwrap();
    }

    /// SIGTERM, then the exit status.
    pub async fn terminate(self) -> std::process::ExitStatus {
        sigterm(self.pid());
        self.wait().await
    }

    /// The exit status, once it exits.
    pub async fn wait(mut self) -> std::process::ExitStatus {
        exit_status(&mut self.child).await
    }
}

/// The real `execd` binary started with exactly the arguments and
/// environment a test gives it, waited for until every listener answers.
pub struct SpawnedExecd {
    pub child: tokio::process::Child,
    /// execd's stderr goes to a file: a pipe nobody reads could fill up and
    /// block its logging.
    log: PathBuf,
}

impl SpawnedExecd {
    /// Starts execd with `args` and, on top of this process's environment
    /// minus every `EXECD_*` variable (so only `env` configures it), `env`.
    /// Returns once every `reach` accepts connections; panics with execd's
    /// log if it exits first.
    pub async fn start(
        log_dir: &Path,
        args: &[String],
        env: &[(String, String)],
        reach: &[Reach],
    ) -> SpawnedExecd {
        let log = log_dir.join("execd.log");
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_execd"));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("EXECD_") {
                command.env_remove(key);
            }
        }
        let mut execd = SpawnedExecd {
            child: command
                .args(args)
                .envs(env.iter().map(|(k, v)| (k, v)))
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .kill_on_drop(true)
                .spawn()
                .expect("spawn execd"),
            log,
        };
        wait_until_answers(&mut execd.child, reach, Some(&execd.log)).await;
        execd
    }

    /// What execd logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit status.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        sigterm(self.child.id().expect("execd still running"));
        exit_status(&mut self.child).await
    }
}
