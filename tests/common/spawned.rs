//! The real `execd` binary started with exactly the arguments and
//! environment a test gives it (unlike `ExecdProcess`, which always adds its
//! own unix listener), waited for until every listener answers.
//!
//! Included with `#[path]` by the tests that need it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

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
        log_dir: &std::path::Path,
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
        let deadline = Instant::now() + Duration::from_secs(60);
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
                if let Some(status) = execd.child.try_wait().unwrap() {
                    panic!(
                        "execd {args:?} exited ({status}) before {target:?} answered:\n{}",
                        execd.log()
                    );
                }
                assert!(
                    Instant::now() < deadline,
                    "execd never answered on {target:?}:\n{}",
                    execd.log()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        execd
    }

    /// What execd logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGTERM, then the exit status.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("execd still running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("execd exits in time")
            .unwrap()
    }
}
