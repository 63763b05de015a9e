//! The Docker engine side of the tests: whether an engine and the test
//! image are there ([`docker_or_skip`], [`need_docker!`]), the container
//! most tests share, the containers of a test's own ([`ContainerSpec`]),
//! and what runs inside them.
//!
//! Without an engine, tests skip with a message, except under `CI=true`,
//! where they fail: CI must never pass by skipping the real thing.

use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::PATIENCE;

/// Returns from the calling test unless Docker and the test image are
/// there (see [`docker_or_skip`]).
macro_rules! need_docker {
    () => {
        if !$crate::common::docker_or_skip(module_path!()) {
            return;
        }
    };
}

pub const IMAGE: &str = "execd-busybox:latest";
pub const SHARED_CONTAINER: &str = "execd-test-shared";

pub fn docker_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let engine = Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .output()
            .is_ok_and(|o| o.status.success());
        let image = Command::new("docker")
            .args(["image", "inspect", IMAGE])
            .output()
            .is_ok_and(|o| o.status.success());
        engine && image
    })
}

/// True when Docker and the test image are there. Otherwise: panics under
/// `CI=true`, else prints why the test is skipped and returns false.
pub fn docker_or_skip(test: &str) -> bool {
    if docker_available() {
        return true;
    }
    let why = format!("no Docker engine or image {IMAGE} (run scripts/docker-up)");
    super::skip(test, &why);
    false
}

/// The docker CLI with `args`, and what it said.
pub fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("running the docker CLI")
}

/// `docker inspect --format <format>` of `container`, trimmed.
pub fn inspect(container: &str, format: &str) -> String {
    let out = docker(&["inspect", "--format", format, container]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Whether `path` exists in `container`.
pub fn exists_in(container: &str, path: &str) -> bool {
    docker(&["exec", container, "test", "-e", path])
        .status
        .success()
}

/// A container of a test's own, made by [`ContainerSpec::run`] or
/// [`ContainerSpec::create`]: what every test container has (no network,
/// the test image, the `execd-test=1` label the test script sweeps up by)
/// is here once, and a test adds only its `docker run` options and
/// command.
pub struct ContainerSpec {
    name: String,
    options: Vec<String>,
    command: Vec<String>,
}

impl ContainerSpec {
    /// A container named `execd-test-<tag>-<pid>` that runs `command`. The
    /// process id keeps concurrent test processes apart; the tag, tests.
    pub fn new(tag: &str, command: &[&str]) -> ContainerSpec {
        ContainerSpec::named(test_name(tag), command)
    }

    /// An idle container: `sleep infinity` under `--init`, a reaper for
    /// orphans, so killed processes do not linger as zombies in `ps`
    /// output.
    pub fn idle(tag: &str) -> ContainerSpec {
        ContainerSpec::idle_named(test_name(tag))
    }

    fn idle_named(name: String) -> ContainerSpec {
        ContainerSpec::named(name, &["sleep", "infinity"]).options(&["--init"])
    }

    /// A shell as PID 1 with stdin open and a terminal (`docker run -dit`),
    /// for the tests that attach to a container's main process.
    pub fn shell(tag: &str) -> ContainerSpec {
        ContainerSpec::new(tag, &["sh"]).options(&["-i", "-t"])
    }

    fn named(name: String, command: &[&str]) -> ContainerSpec {
        ContainerSpec {
            name,
            options: Vec::new(),
            command: command.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// More `docker run` options (`--user`, `--read-only`, `--cap-drop`,
    /// `--label`, ...).
    pub fn options(mut self, options: &[&str]) -> ContainerSpec {
        self.options.extend(options.iter().map(|s| s.to_string()));
        self
    }

    /// The container's hostname is its name, so a session can tell from
    /// the inside where it runs.
    pub fn hostname_is_name(self) -> ContainerSpec {
        let name = self.name.clone();
        self.options(&["--hostname", &name])
    }

    /// `docker <verb>` of this container (`run` detached).
    fn invoke(&self, verb: &str) -> std::process::Output {
        let mut args = vec![verb];
        if verb == "run" {
            args.push("-d");
        }
        args.extend(self.options.iter().map(String::as_str));
        args.extend([
            "--network",
            "none",
            "--label",
            "execd-test=1",
            "--name",
            self.name.as_str(),
            IMAGE,
        ]);
        args.extend(self.command.iter().map(String::as_str));
        docker(&args)
    }

    /// Runs the container (after removing any left by an earlier run).
    pub fn run(self) -> TestContainer {
        self.make("run")
    }

    /// Creates the container and never starts it (so it is not running).
    pub fn create(self) -> TestContainer {
        self.make("create")
    }

    fn make(self, verb: &str) -> TestContainer {
        let _ = docker(&["rm", "-f", &self.name]);
        // Removed on drop from here on, even when the assertion fails.
        let out = self.invoke(verb);
        let container = TestContainer(self.name);
        assert!(out.status.success(), "{out:?}");
        container
    }
}

fn test_name(tag: &str) -> String {
    format!("execd-test-{tag}-{}", std::process::id())
}

/// A container of a test's own (see [`ContainerSpec`]), by name; removed
/// when dropped.
pub struct TestContainer(pub String);

impl TestContainer {
    pub fn running(&self) -> bool {
        inspect(&self.0, "{{.State.Running}}") == "true"
    }
}

impl Drop for TestContainer {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.0]);
    }
}

/// The container most tests share; created once per test process, and
/// re-created if a previous run left it stopped.
pub fn shared_container() -> &'static str {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        for _ in 0..20 {
            let state = docker(&[
                "container",
                "inspect",
                "--format",
                "{{.State.Status}}",
                SHARED_CONTAINER,
            ]);
            if state.status.success() && String::from_utf8_lossy(&state.stdout).trim() == "running"
            {
                return;
            }
            if !state.status.success() {
                let out = ContainerSpec::idle_named(SHARED_CONTAINER.into()).invoke("run");
                // Another test binary may have won the race: look again.
                if out.status.success() {
                    return;
                }
            } else {
                let _ = docker(&["start", SHARED_CONTAINER]);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("could not get {SHARED_CONTAINER} running");
    });
    SHARED_CONTAINER
}

/// Lines of `ps` inside `container` that contain `needle`.
pub fn container_processes(container: &str, needle: &str) -> Vec<String> {
    let out = docker(&["exec", container, "ps", "-o", "pid,stat,args"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(needle) && !l.contains("ps -o"))
        .map(str::to_string)
        .collect()
}

/// Waits until no process in `container` mentions `needle`.
pub async fn wait_until_gone(container: &str, needle: &str, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let left = container_processes(container, needle);
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until a process in `container` mentions `needle`.
pub async fn wait_until_running(container: &str, needle: &str) {
    let deadline = Instant::now() + PATIENCE;
    while container_processes(container, needle).is_empty() {
        assert!(
            Instant::now() < deadline,
            "{needle} never started in {container}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A unique number for process markers like `sleep <n>`. Tests may use
/// `n + 1` … `n + 9` too, so markers are ten apart. Every test of the suite
/// shares one process, so a process draws from 10,000 markers before one
/// comes back; the process id part keeps concurrent test processes (the
/// suite and the churn test, or a second run) in ranges of their own.
pub fn marker() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    100_000 + (std::process::id() % 20_000) * 100_000 + (n % 10_000) * 10
}

/// The runtime root of the engine the tests use. `EXECD_OCI_ROOT` wins;
/// else the root under the running dockerd's `--exec-root` (a private
/// engine another checkout started has its root there, not under this
/// one's `target/`), else Docker's default.
pub fn test_oci_root() -> std::path::PathBuf {
    if let Some(root) = std::env::var_os("EXECD_OCI_ROOT") {
        return root.into();
    }
    running_engine_exec_roots()
        .into_iter()
        .map(|exec_root| exec_root.join("runtime-runc/moby"))
        .find(|root| root.is_dir())
        .unwrap_or_else(|| "/run/docker/runtime-runc/moby".into())
}

/// The `--exec-root` of every dockerd running on the host (Docker's
/// default, `/var/run/docker`, when it has none), read from its command
/// line: the engine API does not say where its runtime keeps state.
fn running_engine_exec_roots() -> Vec<std::path::PathBuf> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter(|p| {
            std::fs::read_to_string(p.path().join("comm")).is_ok_and(|c| c.trim() == "dockerd")
        })
        .filter_map(|p| std::fs::read(p.path().join("cmdline")).ok())
        .map(|cmdline| {
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let flag = args.iter().enumerate().find_map(|(i, a)| match a.as_str() {
                "--exec-root" => args.get(i + 1).cloned(),
                _ => a.strip_prefix("--exec-root=").map(str::to_string),
            });
            flag.unwrap_or_else(|| "/var/run/docker".into()).into()
        })
        .collect()
}
