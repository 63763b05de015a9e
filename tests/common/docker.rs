//! The Docker engine side of the tests: whether an engine and the test
//! image are there ([`docker_or_skip`], [`need_docker!`]), the container
//! most tests share, throwaway containers, and what runs inside them.
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
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: Docker engine or image {IMAGE} missing and CI=true; run scripts/docker-up");
    }
    eprintln!("SKIPPED {test}: no Docker engine or image {IMAGE} (run scripts/docker-up)");
    false
}

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("running the docker CLI")
}

/// A test container that was created and never started (so it is not
/// running); removed when dropped.
pub struct CreatedContainer(pub String);

impl CreatedContainer {
    pub fn new(tag: &str) -> CreatedContainer {
        let name = format!("execd-test-{tag}-{}", std::process::id());
        let _ = docker(&["rm", "-f", &name]);
        let out = docker(&[
            "create",
            "--network",
            "none",
            "--label",
            "execd-test=1",
            "--name",
            &name,
            IMAGE,
            "true",
        ]);
        assert!(out.status.success(), "{out:?}");
        CreatedContainer(name)
    }
}

impl Drop for CreatedContainer {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.0]);
    }
}

/// `docker run` of an idle test container named `name`, with
/// `--network none`; `--init` gives it a reaper for orphans, so killed
/// processes do not linger as zombies in `ps` output.
fn run_idle_container(name: &str) -> std::process::Output {
    docker(&[
        "run",
        "-d",
        "--init",
        "--network",
        "none",
        "--label",
        "execd-test=1",
        "--name",
        name,
        IMAGE,
        "sleep",
        "infinity",
    ])
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
                let out = run_idle_container(SHARED_CONTAINER);
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

/// The runtime root of the engine the tests use: the private dockerd's
/// (scripts/docker-up, `--exec-root target/dockerd/exec`) if there is
/// one, else Docker's default. `EXECD_OCI_ROOT` wins.
pub fn test_oci_root() -> std::path::PathBuf {
    if let Some(root) = std::env::var_os("EXECD_OCI_ROOT") {
        return root.into();
    }
    let private = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/dockerd/exec/runtime-runc/moby");
    if private.is_dir() {
        return private;
    }
    "/run/docker/runtime-runc/moby".into()
}

/// A `docker run -dit` shell container, removed on drop.
pub struct InteractiveContainer(pub String);

impl InteractiveContainer {
    pub fn start(tag: &str) -> InteractiveContainer {
        let name = format!("execd-test-attach-{tag}-{}", std::process::id());
        let _ = docker(&["rm", "-f", &name]);
        let out = docker(&[
            "run",
            "-dit",
            "--network",
            "none",
            "--label",
            "execd-test=1",
            "--name",
            &name,
            IMAGE,
            "sh",
        ]);
        assert!(out.status.success(), "{out:?}");
        InteractiveContainer(name)
    }

    pub fn running(&self) -> bool {
        let out = docker(&["inspect", "--format", "{{.State.Running}}", &self.0]);
        String::from_utf8_lossy(&out.stdout).trim() == "true"
    }
}

impl Drop for InteractiveContainer {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.0]);
    }
}
