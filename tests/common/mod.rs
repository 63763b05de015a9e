//! Shared helpers for the integration tests: a real execd server on port 0,
//! a real Docker engine and a busybox test container, and a small client
//! that records everything a session sends back.
//!
//! Tests that need Docker call [`docker_or_skip`]. Without an engine they
//! skip with a message, except under `CI=true`, where they fail: CI must
//! never pass by skipping the real thing.
#![allow(dead_code)]

use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use execd::{Listener, ServerConfig};
use execd_client::{Addr, Connector};
use execd_proto::admin::session_admin_client::SessionAdminClient;
use execd_proto::exec_service::exec_message::Payload;
use execd_proto::exec_service::exec_output_data::StreamType;
use execd_proto::exec_service::exec_service_client::ExecServiceClient;
use execd_proto::exec_service::exec_status_response::Status as WireStatus;
use execd_proto::exec_service::{ExecMessage, ExecStartRequest};
use execd_session::{BackendKind, ExecMode};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::Streaming;

pub const IMAGE: &str = "execd-busybox:latest";
pub const SHARED_CONTAINER: &str = "execd-test-shared";

/// Generous upper bound for anything a test waits for; never a timing
/// assertion, only a guard against hanging forever.
pub const PATIENCE: Duration = Duration::from_secs(60);

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
/// `n + 1` … `n + 9` too, so markers are ten apart.
pub fn marker() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    100_000 + (std::process::id() % 5_000) * 1_000 + (n % 100) * 10
}

/// A running server on an ephemeral loopback port.
pub struct TestServer {
    /// One connection shared by every session of a test, like a real
    /// client multiplexing streams.
    shared: tokio::sync::OnceCell<Channel>,
    pub addr: String,
    pub shutdown: CancellationToken,
    pub handle: tokio::task::JoinHandle<Result<(), execd::ServerError>>,
}

pub fn config() -> ServerConfig {
    let mut config = ServerConfig::default();
    config.manager.lifecycle.kill_grace = Duration::from_millis(300);
    config
}

/// The backend the suite runs against: `EXECD_BACKEND=engine-api` (the
/// same variable the binary reads, so spawned servers follow too) runs the
/// whole suite through the Engine API backend. Tests that point the CLI
/// backend at a stub or missing CLI keep it: they test that CLI.
pub fn with_test_backend(mut config: ServerConfig) -> ServerConfig {
    let default_cli = matches!(
        &config.manager.mode,
        ExecMode::Container { runtime_cli } if runtime_cli == "docker"
    );
    if default_cli && config.manager.backend == BackendKind::Cli {
        match std::env::var("EXECD_BACKEND").as_deref() {
            Ok("engine-api") => {
                config.manager.backend = BackendKind::EngineApi {
                    socket: "/var/run/docker.sock".into(),
                };
            }
            Ok("oci") => {
                config.manager.backend = BackendKind::Oci {
                    runtime: "runc".into(),
                    root: test_oci_root(),
                };
            }
            _ => {}
        }
    }
    config
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

pub async fn start_server(config: ServerConfig) -> TestServer {
    let config = with_test_backend(config);
    // EXECD_TEST_LOG=debug (or any filter) shows the server's logs.
    if let Ok(filter) = std::env::var("EXECD_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
    let listener = Listener::bind("127.0.0.1:0").await.expect("bind port 0");
    let addr = format!("http://{}", listener.local_addr());
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(execd::run(listener, config, shutdown.clone()));
    TestServer {
        shared: tokio::sync::OnceCell::new(),
        addr,
        shutdown,
        handle,
    }
}

impl TestServer {
    pub async fn channel(&self) -> Channel {
        let addr: Addr = self.addr.parse().expect("the test server's address");
        Connector::new(&addr, None)
            .expect("a usable address")
            .connect()
            .await
            .expect("connect to test server")
    }

    /// A channel on a connection of its own that the test can cut, the
    /// way a client's network or process dies: no half-close, no reset,
    /// the socket just ends.
    #[allow(dead_code)]
    pub async fn cuttable_channel(&self) -> (Channel, Cutter) {
        let target = self
            .addr
            .strip_prefix("http://")
            .expect("the test server listens on TCP")
            .to_string();
        let cutter = Cutter::default();
        let sockets = cutter.0.clone();
        let channel = tonic::transport::Endpoint::from_shared(self.addr.clone())
            .expect("endpoint")
            .connect_with_connector(tower::service_fn(move |_| {
                let (target, sockets) = (target.clone(), sockets.clone());
                async move {
                    let stream = tokio::net::TcpStream::connect(target).await?;
                    let handle = std::os::fd::AsFd::as_fd(&stream).try_clone_to_owned()?;
                    sockets
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(handle);
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .expect("connect to test server");
        (channel, cutter)
    }

    pub async fn client(&self) -> ExecServiceClient<Channel> {
        let channel = self.shared.get_or_init(|| self.channel()).await.clone();
        ExecServiceClient::new(channel).max_decoding_message_size(64 * 1024 * 1024)
    }

    pub async fn admin(&self) -> SessionAdminClient<Channel> {
        SessionAdminClient::new(self.channel().await)
    }

    /// Opens a session stream that starts with `first`.
    pub async fn open(&self, first: ExecMessage) -> Exec {
        let mut client = self.client().await;
        let (tx, rx) = mpsc::channel(64);
        tx.send(first).await.unwrap();
        let stream = client
            .exec_stream(ReceiverStream::new(rx))
            .await
            .expect("ExecStream call")
            .into_inner();
        Exec {
            started_seen: false,
            tx: Some(tx),
            rx: stream,
            _client: client,
        }
    }

    pub async fn exec(&self, req: ExecStartRequest) -> Exec {
        self.open(start_msg("", req)).await
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(PATIENCE, self.handle)
            .await
            .expect("server stops in time")
            .expect("server task")
            .expect("server result");
    }
}

// The message builders live in execd-client (shared with the example
// client and the bench); these names are the ones the tests use. Each test
// binary uses only some of them.
#[allow(unused_imports)]
pub use execd_client::message::{
    eof as eof_msg, input as input_msg, request as req, resize as resize_msg, start as start_msg,
};

/// Cuts the connections of a [`TestServer::cuttable_channel`].
#[derive(Default, Clone)]
pub struct Cutter(std::sync::Arc<std::sync::Mutex<Vec<std::os::fd::OwnedFd>>>);

impl Cutter {
    #[allow(dead_code)]
    pub fn cut(&self) {
        for socket in self.0.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = socket2::SockRef::from(socket).shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Everything a session sent, in order.
#[derive(Debug, Default)]
pub struct Transcript {
    pub session_ids: Vec<String>,
    /// Status messages in order: (status, exit_code, error_message).
    pub statuses: Vec<(WireStatus, i32, String)>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Index in the message sequence of the first output message.
    pub first_output_at: Option<usize>,
    pub messages: usize,
    /// How the RPC ended.
    pub rpc: Option<tonic::Status>,
}

impl Transcript {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    pub fn terminal(&self) -> &(WireStatus, i32, String) {
        self.statuses.last().expect("a terminal status")
    }

    /// Asserts the shape every session must have, then returns the exit code.
    pub fn assert_exited(&self) -> i32 {
        assert_eq!(
            self.statuses.first().map(|s| s.0),
            Some(WireStatus::Started),
            "{self:#?}"
        );
        assert_eq!(
            self.statuses.len(),
            2,
            "exactly STARTED + one terminal: {self:#?}"
        );
        let (status, code, _) = self.terminal();
        assert_eq!(*status, WireStatus::Exited, "{self:#?}");
        assert!(self.rpc.is_none(), "RPC should end OK: {self:#?}");
        assert!(self.first_output_at.is_none_or(|i| i > 0));
        *code
    }

    /// Asserts the session ended with ERROR and a matching gRPC status.
    pub fn assert_error(&self, code: tonic::Code) -> String {
        let (status, _, message) = self.terminal();
        assert_eq!(*status, WireStatus::Error, "{self:#?}");
        assert_eq!(
            self.statuses
                .iter()
                .filter(|s| matches!(s.0, WireStatus::Error | WireStatus::Exited))
                .count(),
            1,
            "{self:#?}"
        );
        let rpc = self.rpc.as_ref().expect("RPC ends with an error status");
        assert_eq!(rpc.code(), code, "{self:#?}");
        assert_eq!(rpc.message(), message);
        message.clone()
    }
}

/// A client end of one ExecStream.
pub struct Exec {
    /// Set once `started()` consumed the STARTED message.
    started_seen: bool,
    pub tx: Option<mpsc::Sender<ExecMessage>>,
    pub rx: Streaming<ExecMessage>,
    _client: ExecServiceClient<Channel>,
}

impl Exec {
    pub async fn send(&self, msg: ExecMessage) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(msg).await;
        }
    }

    /// Half-closes the request stream.
    pub fn close_send(&mut self) {
        self.tx = None;
    }

    /// Reads the next message, failing the test if none comes in time.
    pub async fn next(&mut self) -> Option<Result<ExecMessage, tonic::Status>> {
        tokio::time::timeout(PATIENCE, self.rx.message())
            .await
            .expect("a message in time")
            .transpose()
    }

    /// Waits for STARTED (the first message) and returns the session id.
    pub async fn started(&mut self) -> String {
        let msg = self.next().await.expect("a message").expect("no RPC error");
        match &msg.payload {
            Some(Payload::Status(s)) if s.status == WireStatus::Started as i32 => {
                self.started_seen = true;
                msg.session_id
            }
            other => panic!("expected STARTED first, got {other:?}"),
        }
    }

    /// Reads output until `needle` appears (returns everything read so far).
    pub async fn read_until(&mut self, needle: &str) -> String {
        let mut seen = Vec::new();
        loop {
            let msg = self
                .next()
                .await
                .expect("stream open")
                .expect("no RPC error");
            match msg.payload {
                Some(Payload::OutputData(o)) => seen.extend_from_slice(&o.data),
                Some(Payload::Status(s)) => panic!(
                    "session ended ({s:?}) before {needle:?} appeared; output: {}",
                    String::from_utf8_lossy(&seen)
                ),
                _ => {}
            }
            if String::from_utf8_lossy(&seen).contains(needle) {
                return String::from_utf8_lossy(&seen).into_owned();
            }
        }
    }

    /// In a tty shell session: asks `stty size` until the container's
    /// terminal reports `expected` ("rows cols"), or gives up after a while.
    pub async fn wait_for_terminal_size(&mut self, expected: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = String::new();
        while Instant::now() < deadline {
            self.send(input_msg("stty size\n")).await;
            if let Ok(chunk) =
                tokio::time::timeout(Duration::from_millis(300), self.read_until("\n")).await
            {
                seen.push_str(&chunk);
            }
            if seen.contains(expected) {
                break;
            }
        }
        seen
    }

    /// Reads to the end of the RPC and records everything.
    pub async fn finish(mut self) -> Transcript {
        let mut t = Transcript::default();
        if self.started_seen {
            t.statuses.push((WireStatus::Started, 0, String::new()));
            t.messages = 1;
        }
        loop {
            match self.next().await {
                None => break,
                Some(Err(status)) => {
                    t.rpc = Some(status);
                    break;
                }
                Some(Ok(msg)) => {
                    t.session_ids.push(msg.session_id.clone());
                    match msg.payload {
                        Some(Payload::Status(s)) => t.statuses.push((
                            WireStatus::try_from(s.status).expect("known status"),
                            s.exit_code,
                            s.error_message,
                        )),
                        Some(Payload::OutputData(o)) => {
                            t.first_output_at.get_or_insert(t.messages);
                            if o.stream_type == StreamType::Stderr as i32 {
                                t.stderr.extend_from_slice(&o.data);
                            } else {
                                t.stdout.extend_from_slice(&o.data);
                            }
                        }
                        other => panic!("server sent {other:?}"),
                    }
                    t.messages += 1;
                }
            }
        }
        t
    }
}

/// A channel to a server on a unix socket.
pub async fn connect_unix(path: std::path::PathBuf) -> Channel {
    Connector::new(&Addr::Unix(path), None)
        .expect("a usable socket path")
        .connect()
        .await
        .expect("connect to the unix socket")
}

/// The real `execd` binary, serving on a unix socket in its own temp dir.
pub struct ExecdProcess {
    pub child: tokio::process::Child,
    pub socket: std::path::PathBuf,
    pub channel: Channel,
    /// Where stderr (the logs) goes, for processes started with
    /// [`ExecdProcess::start_logging`].
    pub log: Option<std::path::PathBuf>,
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
        let child = command.spawn().expect("spawn execd");
        let deadline = Instant::now() + PATIENCE;
        while tokio::net::UnixStream::connect(&socket).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "execd never answered on {}",
                socket.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
            .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
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
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait().await
    }

    /// The exit status, once it exits.
    pub async fn wait(mut self) -> std::process::ExitStatus {
        tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("execd exits in time")
            .unwrap()
    }
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

/// The `/metrics` of a server started with `metrics_listen = addr`, as
/// `name{labels}` → value.
pub async fn scrape_metrics(addr: std::net::SocketAddr) -> std::collections::HashMap<String, f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The server binds its metrics listener in its own task: retry briefly.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut stream = loop {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => break s,
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("metrics endpoint {addr}: {e}"),
        }
    };
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}
