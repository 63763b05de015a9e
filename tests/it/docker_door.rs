//! The Docker door with real clients against a real engine: the docker CLI
//! pointed at execd (`docker -H tcp://…`) and docker-py. Raw HTTP/1.1 (the
//! pod exec API and Engine API paths as written) is in
//! `docker_engine_door.rs`; both share `common/docker_api.rs`.

use crate::common::docker_api;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use docker_api::*;

#[tokio::test(flavor = "multi_thread")]
async fn cli_exec_streams_and_exit_codes() {
    need_docker!();
    let c = shared_container();
    let server = start_server(config()).await;
    let cli = DockerCli::new(&server);
    let out = tokio::task::spawn_blocking(move || {
        let hi = cli.run(&["exec", c, "echo", "hi"], b"");
        let split = cli.run(
            &["exec", c, "sh", "-c", "echo out; echo err >&2; exit 3"],
            b"",
        );
        let cat = cli.run(&["exec", "-i", c, "cat"], b"data\nmore");
        let nosuch = cli.run(&["exec", "nosuch-container", "true"], b"");
        (hi, split, cat, nosuch)
    })
    .await
    .unwrap();
    let (hi, split, cat, nosuch) = out;
    assert_eq!(text(&hi.stdout), "hi\n", "{hi:?}");
    assert_eq!(hi.status.code(), Some(0));
    assert_eq!(text(&split.stdout), "out\n", "{split:?}");
    assert_eq!(text(&split.stderr), "err\n", "{split:?}");
    assert_eq!(split.status.code(), Some(3));
    assert_eq!(text(&cat.stdout), "data\nmore", "{cat:?}");
    assert_eq!(cat.status.code(), Some(0));
    assert_ne!(nosuch.status.code(), Some(0));
    assert!(
        text(&nosuch.stderr).contains("No such container: nosuch-container"),
        "{nosuch:?}"
    );
    server.stop().await;
}

/// A pseudo-terminal for the CLI, as an interactive user would give it.
struct Pty {
    master: OwnedFd,
    seen: Arc<Mutex<String>>,
}

fn winsize(rows: u16, cols: u16) -> libc::winsize {
    libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

impl Pty {
    /// Spawns `cmd` as the session leader of a new terminal of the size.
    fn spawn(mut cmd: Command, rows: u16, cols: u16) -> (Pty, std::process::Child) {
        let (mut master, mut slave) = (0, 0);
        let ws = winsize(rows, cols);
        // SAFETY: openpty writes two fds; the null name/termios are allowed.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &ws,
            )
        };
        assert_eq!(rc, 0, "openpty");
        // SAFETY: fresh fds from openpty, owned here.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        cmd.stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(slave);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                libc::ioctl(0, libc::TIOCSCTTY, 0);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("docker CLI on a pty");
        let seen = Arc::new(Mutex::new(String::new()));
        let mut reader = std::fs::File::from(master.try_clone().unwrap());
        let sink = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        (Pty { master, seen }, child)
    }

    fn write(&self, s: &str) {
        let mut f = std::fs::File::from(self.master.try_clone().unwrap());
        f.write_all(s.as_bytes()).unwrap();
    }

    /// Sets the terminal's size; the kernel sends SIGWINCH to the CLI.
    fn resize(&self, rows: u16, cols: u16) {
        let ws = winsize(rows, cols);
        // SAFETY: TIOCSWINSZ reads one winsize.
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        assert_eq!(rc, 0);
    }

    /// Sends `input` until `needle` shows up (the shell may not be ready).
    async fn ask_until(&self, input: &str, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            self.write(input);
            tokio::time::sleep(Duration::from_millis(300)).await;
            if self.seen.lock().unwrap().contains(needle) {
                return true;
            }
        }
        false
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_interactive_tty_with_resize() {
    need_docker!();
    let c = shared_container();
    let server = start_server(config()).await;
    let cli = DockerCli::new(&server);
    let (pty, mut child) = Pty::spawn(cli.command(&["exec", "-it", c, "sh"]), 33, 111);
    assert!(
        pty.ask_until("stty size\n", "33 111").await,
        "initial size: {}",
        pty.seen.lock().unwrap()
    );
    pty.resize(40, 120);
    assert!(
        pty.ask_until("stty size\n", "40 120").await,
        "after resize: {}",
        pty.seen.lock().unwrap()
    );
    pty.write("exit 7\n");
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(7), "{}", pty.seen.lock().unwrap());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_cli_kills_the_process_in_the_container() {
    need_docker!();
    let c = shared_container();
    let server = start_server(config()).await;
    let cli = DockerCli::new(&server);
    let needle = format!("sleep {}", marker());
    // Without -i the CLI half-closes at once: nothing more comes from it.
    let mut child = cli
        .command(&["exec", c, "sh", "-c", &needle])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until_running(c, &needle).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    child.kill().unwrap();
    let _ = child.wait();
    let killed_at = Instant::now();
    let left = wait_until_gone(c, &needle, Duration::from_secs(10)).await;
    assert!(left.is_empty(), "still running: {left:?}");
    assert!(
        killed_at.elapsed() < Duration::from_secs(6),
        "took {:?}",
        killed_at.elapsed()
    );
    server.stop().await;
}

/// Runs `tests/python/docker_sdk.py` (docker-py) with `python` against
/// `server` and reads its JSON.
async fn docker_sdk(
    python: &std::path::Path,
    server: &TestServer,
    container: &str,
    args: &[&str],
) -> serde_json::Value {
    let mut sdk = python_script(python, "docker_sdk.py");
    sdk.args([server.host_port(), container]).args(args);
    // Only stops a hang: docker-py bounds its own calls.
    json_of(&mut sdk, Duration::from_secs(300)).await
}

/// docker-py's low-level API (`exec_create`, `exec_start`, `exec_inspect`),
/// with the interpreter the interop tests use.
#[tokio::test(flavor = "multi_thread")]
async fn docker_py_exec_through_execd() {
    need_docker!();
    let Some(python) = python_with("docker_py_exec_through_execd", "import docker", "docker-py")
    else {
        return;
    };
    let c = shared_container();
    let server = start_server(config()).await;
    let v = docker_sdk(&python, &server, c, &[]).await;
    assert_eq!(v["api_version"], execd::doors::docker::API_VERSION);
    assert_eq!(v["stdout"], "out\n", "{v}");
    assert_eq!(v["stderr"], "err\n", "{v}");
    assert_eq!(v["exit_code"], 3, "{v}");
    assert_eq!(v["running"], false);
    assert_eq!(v["greeting"], "hi\n");
    assert!(v["resized"].as_str().unwrap().contains("33 101"), "{v}");
    server.stop().await;
}

/// docker-py's `exec_run` reads the hijacked socket beneath the buffered
/// reader it read the `101` with: output that came in the same read as the
/// headers would be lost. Short execs, whose output is ready at once on a
/// fast backend, each checked byte for byte with its exit code, with a
/// terminal and without one (demultiplexed). Without execd's hold after the
/// `101` most of them lose their output; with it, one docker-py that the
/// machine did not schedule within the hold may still lose it, as it would
/// against dockerd (the race is docker-py's own), so at most 2 of 60 may.
#[tokio::test(flavor = "multi_thread")]
async fn docker_py_exec_run_keeps_every_byte() {
    need_docker!();
    let Some(python) = python_with(
        "docker_py_exec_run_keeps_every_byte",
        "import docker",
        "docker-py",
    ) else {
        return;
    };
    let c = shared_container();
    let server = start_server(config()).await;
    let v = docker_sdk(&python, &server, c, &["every-byte", "30"]).await;
    assert_eq!(v["execs"], 60, "{v}");
    let wrong = v["wrong"].as_array().map_or(usize::MAX, Vec::len);
    assert!(wrong <= 2, "{v}");
    server.stop().await;
}
