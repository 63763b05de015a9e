//! The Docker door with real clients against a real engine: the docker CLI
//! pointed at execd (`docker -H tcp://…`), docker-py, and raw HTTP/1.1 for
//! the pod exec API exactly as written (frames, upgrades, status codes).

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

macro_rules! need_docker {
    () => {
        if !docker_or_skip(module_path!()) {
            return;
        }
    };
}

fn host_port(server: &TestServer) -> String {
    server.addr.trim_start_matches("http://").to_string()
}

/// The docker CLI pointed at execd, with a config dir of its own.
struct DockerCli {
    host: String,
    config: tempfile::TempDir,
}

impl DockerCli {
    fn new(server: &TestServer) -> DockerCli {
        DockerCli {
            host: format!("tcp://{}", host_port(server)),
            config: tempfile::tempdir().unwrap(),
        }
    }

    /// Makes the CLI send `Authorization: Bearer <token>` on every request.
    fn with_token(self, token: &str) -> DockerCli {
        let config = serde_json::json!({
            "HttpHeaders": { "Authorization": format!("Bearer {token}") }
        });
        std::fs::write(self.config.path().join("config.json"), config.to_string()).unwrap();
        self
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("docker");
        cmd.env("DOCKER_CONFIG", self.config.path())
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .args(["-H", &self.host])
            .args(args);
        cmd
    }

    fn run(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("docker CLI");
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin).unwrap();
        drop(input);
        child.wait_with_output().unwrap()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

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

// ---- raw HTTP ----

/// One HTTP/1.1 exchange on a fresh connection.
async fn request(
    server: &TestServer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (http::StatusCode, http::HeaderMap, Bytes) {
    let response = send(server, method, path, headers, body).await;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, body)
}

async fn send(
    server: &TestServer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> http::Response<hyper::body::Incoming> {
    let stream = tokio::net::TcpStream::connect(host_port(server))
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", host_port(server))
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    sender.send_request(req).await.unwrap()
}

fn json(body: &Bytes) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("{e}: {}", text(body)))
}

/// Splits Docker frames into (stdout, stderr); zero-length frames are the
/// liveness probes and carry nothing.
fn unframe(mut raw: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    while !raw.is_empty() {
        assert!(raw.len() >= 8, "truncated header");
        let size = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]) as usize;
        assert_eq!(&raw[1..4], &[0, 0, 0]);
        let payload = &raw[8..8 + size];
        match raw[0] {
            1 => out.extend_from_slice(payload),
            2 => err.extend_from_slice(payload),
            other => panic!("stream type {other}"),
        }
        raw = &raw[8 + size..];
    }
    (out, err)
}

async fn pod_create(server: &TestServer, pod: &str, body: serde_json::Value) -> String {
    let (status, _, body) = request(
        server,
        "POST",
        &format!("/api/v1/namespaces/default/pods/{pod}/exec"),
        &[],
        &body.to_string(),
    )
    .await;
    assert_eq!(status, 201, "{}", text(&body));
    let id = json(&body)["Id"].as_str().unwrap().to_string();
    assert!(id.starts_with("exec-"), "{id}");
    id
}

/// Starts with `Upgrade: tcp`, writes `stdin` and half-closes, reads all.
async fn start_hijacked(server: &TestServer, path: &str, stdin: &[u8]) -> Vec<u8> {
    let response = send(
        server,
        "POST",
        path,
        &[("connection", "Upgrade"), ("upgrade", "tcp")],
        r#"{"Detach":false,"Tty":false}"#,
    )
    .await;
    assert_eq!(response.status(), 101);
    let upgraded = hyper::upgrade::on(response).await.unwrap();
    let mut io = TokioIo::new(upgraded);
    io.write_all(stdin).await.unwrap();
    io.shutdown().await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(PATIENCE, io.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    raw
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_api_upgrade_frames_and_exit_code() {
    need_docker!();
    let c = shared_container();
    let server = start_server(config()).await;
    // 1 MiB on each stream, written concurrently so frames interleave.
    let script = "head -c 1048576 /dev/zero | tr '\\0' a & \
                  head -c 1048576 /dev/zero | tr '\\0' b >&2; wait; exit 4";
    let id = pod_create(
        &server,
        c,
        serde_json::json!({"tty": false, "attachStdout": true, "attachStderr": true,
                           "cmd": ["sh", "-c", script]}),
    )
    .await;
    // The pod is the container here (no ?container=).
    let raw = start_hijacked(&server, &format!("/api/v1/exec/{id}/start"), b"").await;
    let (out, err) = unframe(&raw);
    assert_eq!(out.len(), 1 << 20);
    assert!(out.iter().all(|b| *b == b'a'));
    assert_eq!(err.len(), 1 << 20);
    assert!(err.iter().all(|b| *b == b'b'));
    // Right after EOF the exit code is there.
    let (status, _, body) =
        request(&server, "GET", &format!("/api/v1/exec/{id}/json"), &[], "").await;
    assert_eq!(status, 200);
    let v = json(&body);
    assert_eq!(v["ExitCode"], 4, "{v}");
    assert_eq!(v["Running"], false);
    assert_eq!(v["ProcessConfig"]["entrypoint"], "sh");
    assert_eq!(v["ContainerID"], c);
    // A second start is a conflict.
    let (status, _, body) = request(
        &server,
        "POST",
        &format!("/api/v1/exec/{id}/start"),
        &[],
        "{}",
    )
    .await;
    assert_eq!(status, 409, "{}", text(&body));
    assert!(json(&body)["message"].is_string());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_api_stdin_half_close_and_plain_200() {
    need_docker!();
    let c = shared_container();
    let server = start_server(config()).await;
    // The pod counts the session; ?container= names the container.
    let (status, _, body) = request(
        &server,
        "POST",
        &format!("/api/v1/namespaces/default/pods/my-pod/exec?container={c}"),
        &[],
        r#"{"attachStdin":true,"attachStdout":true,"cmd":["cat"]}"#,
    )
    .await;
    assert_eq!(status, 201, "{}", text(&body));
    let cat = json(&body)["Id"].as_str().unwrap().to_string();
    let raw = start_hijacked(
        &server,
        &format!("/api/v1/exec/{cat}/start"),
        b"hello\x00bytes",
    )
    .await;
    assert_eq!(unframe(&raw).0, b"hello\x00bytes");

    // Without the upgrade header: 200 and the frames on the body.
    let (status, _, body) = request(
        &server,
        "POST",
        &format!("/api/v1/namespaces/default/pods/x/exec?container={c}"),
        &[],
        r#"{"attachStdout":true,"attachStderr":true,"cmd":["sh","-c","echo hi; echo oops >&2"]}"#,
    )
    .await;
    assert_eq!(status, 201);
    let plain = json(&body)["Id"].as_str().unwrap().to_string();
    let (status, headers, body) = request(
        &server,
        "POST",
        &format!("/api/v1/exec/{plain}/start"),
        &[],
        "{}",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        headers["content-type"],
        "application/vnd.docker.multiplexed-stream"
    );
    let (out, err) = unframe(&body);
    assert_eq!((text(&out), text(&err)), ("hi\n".into(), "oops\n".into()));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_api_refusals_and_resize() {
    need_docker!();
    let c = shared_container();
    let server = start_server(config()).await;
    let create = |body: &'static str| {
        let server = &server;
        async move {
            request(
                server,
                "POST",
                &format!("/api/v1/namespaces/default/pods/p/exec?container={c}"),
                &[],
                body,
            )
            .await
        }
    };
    for bad in [
        "{",
        r#"{"cmd":"sh"}"#,
        r#"{"cmd":[]}"#,
        r#"{"cmd":["sh"],"workingDir":"relative"}"#,
        r#"{"cmd":["sh"],"user":"-u"}"#,
    ] {
        let (status, _, body) = create(bad).await;
        assert_eq!(status, 400, "{bad}: {}", text(&body));
        assert!(json(&body)["message"].is_string(), "{bad}");
    }
    let (status, _, body) = request(
        &server,
        "POST",
        "/api/v1/namespaces/default/pods/p/exec?container=nosuch-container",
        &[],
        r#"{"cmd":["true"]}"#,
    )
    .await;
    assert_eq!(status, 404, "{}", text(&body));
    assert!(json(&body)["message"]
        .as_str()
        .unwrap()
        .contains("No such container"));

    for path in [
        "/api/v1/exec/exec-nope/start",
        "/api/v1/exec/exec-nope/resize?h=1&w=1",
    ] {
        let (status, _, _) = request(&server, "POST", path, &[], "").await;
        assert_eq!(status, 404, "{path}");
    }
    let (status, _, _) = request(&server, "GET", "/api/v1/exec/exec-nope/json", &[], "").await;
    assert_eq!(status, 404);

    // Resize before the start becomes the initial size; one right after
    // the start is applied too.
    let (_, _, body) = create(r#"{"tty":true,"attachStdin":true,"attachStdout":true,"cmd":["sh","-c","sleep 1; stty size"]}"#).await;
    let id = json(&body)["Id"].as_str().unwrap().to_string();
    for bad in ["h=-1&w=5", "h=5", "w=5", "h=x&w=5", ""] {
        let (status, _, body) = request(
            &server,
            "POST",
            &format!("/api/v1/exec/{id}/resize?{bad}"),
            &[],
            "",
        )
        .await;
        assert_eq!(status, 400, "{bad}: {}", text(&body));
    }
    let (status, _, _) = request(
        &server,
        "POST",
        &format!("/api/v1/exec/{id}/resize?h=20&w=70"),
        &[],
        "",
    )
    .await;
    assert_eq!(status, 200);
    let response = send(
        &server,
        "POST",
        &format!("/api/v1/exec/{id}/start"),
        &[("connection", "Upgrade"), ("upgrade", "tcp")],
        "",
    )
    .await;
    assert_eq!(response.status(), 101);
    assert_eq!(
        response.headers()["content-type"],
        "application/vnd.docker.raw-stream"
    );
    let (status, _, _) = request(
        &server,
        "POST",
        &format!("/api/v1/exec/{id}/resize?h=25&w=90"),
        &[],
        "",
    )
    .await;
    assert_eq!(status, 200);
    let mut io = TokioIo::new(hyper::upgrade::on(response).await.unwrap());
    let mut raw = Vec::new();
    tokio::time::timeout(PATIENCE, io.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    assert!(text(&raw).contains("25 90"), "{}", text(&raw));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn engine_api_paths_versions_and_privileged() {
    need_docker!();
    let c = shared_container();
    let server = start_server(config()).await;
    for path in ["/_ping", "/v1.41/_ping", "/v1.53/_ping"] {
        let (status, headers, body) = request(&server, "GET", path, &[], "").await;
        assert_eq!((status.as_u16(), text(&body)), (200, "OK".into()), "{path}");
        assert_eq!(headers["api-version"], execd::doors::docker::API_VERSION);
        assert_eq!(headers["ostype"], "linux");
    }
    let (status, _, _) = request(&server, "HEAD", "/_ping", &[], "").await;
    assert_eq!(status, 200);
    let (_, _, body) = request(&server, "GET", "/v1.44/version", &[], "").await;
    assert_eq!(json(&body)["ApiVersion"], execd::doors::docker::API_VERSION);
    assert_eq!(
        json(&body)["MinAPIVersion"],
        execd::doors::docker::MIN_API_VERSION
    );
    let (status, _, body) = request(&server, "GET", "/v1.12/version", &[], "").await;
    assert_eq!(status, 400, "{}", text(&body));
    let (status, _, body) = request(&server, "GET", "/nope/version", &[], "").await;
    assert_eq!(status, 404);
    assert!(json(&body)["message"]
        .as_str()
        .unwrap()
        .contains("is not served by execd"));
    let (status, _, body) = request(
        &server,
        "GET",
        &format!("/v1.44/containers/{c}/json"),
        &[],
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["Name"], format!("/{c}"));
    // Attach is served for live streams only: no logs to replay.
    let (status, _, body) =
        request(&server, "POST", &format!("/containers/{c}/attach"), &[], "").await;
    assert_eq!(status, 400, "{}", text(&body));
    assert!(json(&body)["message"]
        .as_str()
        .unwrap()
        .contains("stream=1"));
    let (status, _, body) = request(
        &server,
        "POST",
        &format!("/v1.44/containers/{c}/exec"),
        &[],
        r#"{"Cmd":["id"],"Privileged":true}"#,
    )
    .await;
    assert_eq!(status, 403, "{}", text(&body));
    let (status, _, body) = request(
        &server,
        "POST",
        &format!("/v1.44/containers/{c}/exec"),
        &[],
        r#"{"Cmd":["true"],"AttachStdout":true}"#,
    )
    .await;
    assert_eq!(status, 201);
    let id = json(&body)["Id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 64);
    let (_, _, body) = request(&server, "GET", &format!("/exec/{id}/json"), &[], "").await;
    assert_eq!(json(&body)["Running"], false);
    assert!(json(&body)["ExitCode"].is_null());
    let (status, _, body) = request(
        &server,
        "POST",
        &format!("/v1.44/exec/{id}/start"),
        &[],
        r#"{"Detach":true}"#,
    )
    .await;
    assert_eq!(status, 400, "{}", text(&body));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_guard_every_path_but_ping_and_version() {
    need_docker!();
    let c = shared_container();
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "s3cret\n").unwrap();
    let mut cfg = config();
    cfg.auth = Some(execd::auth::TokenStore::load(&tokens).unwrap());
    let server = start_server(cfg).await;
    for path in ["/_ping", "/version", "/v1.44/_ping", "/v1.44/version"] {
        let (status, _, _) = request(&server, "GET", path, &[], "").await;
        assert_eq!(status, 200, "{path}");
    }
    let guarded = [
        ("GET", format!("/containers/{c}/json")),
        ("GET", format!("/v1.44/containers/{c}/json")),
        ("POST", format!("/containers/{c}/exec")),
        ("POST", format!("/v1.44/containers/{c}/exec")),
        ("POST", "/exec/x/start".into()),
        ("POST", "/v1.44/exec/x/resize?h=1&w=1".into()),
        ("GET", "/exec/x/json".into()),
        ("POST", format!("/api/v1/namespaces/default/pods/{c}/exec")),
        ("POST", "/api/v1/exec/x/start".into()),
        ("POST", "/api/v1/exec/x/resize?h=1&w=1".into()),
        ("GET", "/api/v1/exec/x/json".into()),
    ];
    for (method, path) in &guarded {
        for auth in [None, Some("Bearer wrong"), Some("s3cret")] {
            let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", *a)).collect();
            let (status, _, body) = request(&server, method, path, &headers, "{}").await;
            assert_eq!(status, 401, "{method} {path} {auth:?}");
            assert!(json(&body)["message"].is_string());
        }
        let (status, _, _) = request(
            &server,
            method,
            path,
            &[("authorization", "Bearer s3cret")],
            r#"{"Cmd":["true"],"cmd":["true"]}"#,
        )
        .await;
        assert_ne!(status, 401, "{method} {path}");
    }
    // The docker CLI, with and without the token in its config.
    let without = DockerCli::new(&server);
    let with = DockerCli::new(&server).with_token("s3cret");
    let (denied, allowed) = tokio::task::spawn_blocking(move || {
        (
            without.run(&["exec", c, "echo", "hi"], b""),
            with.run(&["exec", c, "echo", "hi"], b""),
        )
    })
    .await
    .unwrap();
    assert_ne!(denied.status.code(), Some(0));
    assert!(text(&denied.stderr).contains("Bearer"), "{denied:?}");
    assert_eq!(text(&allowed.stdout), "hi\n", "{allowed:?}");
    server.stop().await;
}

/// docker-py's low-level API (`exec_create`, `exec_start`, `exec_inspect`),
/// with the interpreter the interop tests use.
#[tokio::test(flavor = "multi_thread")]
async fn docker_py_exec_through_execd() {
    need_docker!();
    let python = std::env::var_os("EXECD_TEST_PYTHON").unwrap_or_else(|| "python3".into());
    let usable = Command::new(&python)
        .args(["-c", "import docker"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !usable {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "{python:?} cannot import docker and CI=true (pip install -r tests/python/requirements.txt)"
        );
        eprintln!("SKIPPED docker_py_exec_through_execd: no docker-py in {python:?}");
        return;
    }
    let c = shared_container();
    let server = start_server(config()).await;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/docker_sdk.py");
    let addr = host_port(&server);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .arg("-B")
            .arg(script)
            .args([addr.as_str(), c])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["api_version"], execd::doors::docker::API_VERSION);
    assert_eq!(v["stdout"], "out\n", "{v}");
    assert_eq!(v["stderr"], "err\n", "{v}");
    assert_eq!(v["exit_code"], 3, "{v}");
    assert_eq!(v["running"], false);
    assert_eq!(v["greeting"], "hi\n");
    server.stop().await;
}

/// Types `line` into an attached shell (raw tty stream) until its output
/// shows `needle`: right after attaching, the attach client may still be
/// setting up its terminal and drop what arrives meanwhile, so like a
/// person this types again.
async fn type_until(io: &mut TokioIo<hyper::upgrade::Upgraded>, line: &[u8], needle: &str) {
    let mut seen = Vec::new();
    for _ in 0..10 {
        io.write_all(line).await.unwrap();
        let found = tokio::time::timeout(Duration::from_secs(3), async {
            let mut buf = [0u8; 4096];
            loop {
                match io.read(&mut buf).await {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
                if text(&seen).contains(needle) {
                    return true;
                }
            }
        })
        .await
        .unwrap_or(false);
        if found {
            return;
        }
    }
    panic!("{needle:?} not seen in {:?}", text(&seen));
}

/// `POST /containers/{id}/attach` reaches the container's main process, and
/// neither a half-close nor leaving stops it (no ^D is typed into it).
#[tokio::test(flavor = "multi_thread")]
async fn engine_attach_reaches_pid1_and_leaving_keeps_it_running() {
    need_docker!();
    let server = start_server(config()).await;
    let c = InteractiveContainer::start("docker");
    let name = c.0.clone();
    let path = format!("/v1.41/containers/{name}/attach?stream=1&stdin=1&stdout=1&stderr=1");
    let response = send(
        &server,
        "POST",
        &path,
        &[("connection", "Upgrade"), ("upgrade", "tcp")],
        "",
    )
    .await;
    assert_eq!(response.status(), 101);
    let mut io = TokioIo::new(hyper::upgrade::on(response).await.unwrap());
    // $((6*7)) is computed by the shell: seeing 42 means PID 1 ran it.
    type_until(&mut io, b"echo attached-$((6*7))\n", "attached-42").await;
    io.shutdown().await.unwrap();
    drop(io);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(c.running(), "PID 1 keeps running");
    let (status, _, body) = request(
        &server,
        "POST",
        "/containers/no-such-container/attach?stream=1&stdout=1",
        &[],
        "",
    )
    .await;
    assert_eq!(status, 404, "{}", text(&body));
    server.stop().await;
}

/// Without tokens, a request that names execd by a domain (what a DNS
/// rebinding page sends) is refused on TCP; addresses and localhost pass.
#[tokio::test]
async fn token_less_tcp_answers_only_addresses_and_localhost() {
    let server = start_server(config()).await;
    let stream = tokio::net::TcpStream::connect(host_port(&server))
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    for (host, expected) in [
        ("rb.attacker.example:50051", 403),
        ("localhost:50051", 200),
        ("127.0.0.1", 200),
    ] {
        let req = http::Request::builder()
            .method("GET")
            .uri("/_ping")
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = sender.send_request(req).await.unwrap();
        assert_eq!(response.status(), expected, "{host}");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        if expected == 403 {
            assert!(text(&body).contains("DNS rebinding"), "{}", text(&body));
        }
    }
    server.stop().await;
}
