//! A real execd server in the test process, on an ephemeral loopback port
//! ([`start_server`], with tokens: [`with_tokens`]), and a small client
//! that records everything a session sends back ([`Exec`], [`Transcript`]).

use std::time::{Duration, Instant};

use execd::{Listener, ServerConfig};
use execd_client::{Addr, Connector};
use execd_proto::admin::session_admin_client::SessionAdminClient;
use execd_proto::admin::{ListSessionsRequest, ListSessionsResponse};
use execd_proto::exec_service::exec_message::Payload;
use execd_proto::exec_service::exec_output_data::StreamType;
use execd_proto::exec_service::exec_service_client::ExecServiceClient;
use execd_proto::exec_service::exec_status_response::Status as WireStatus;
use execd_proto::exec_service::{ExecMessage, ExecStartRequest};
use execd_session::BackendConfig;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::Streaming;

use super::{test_oci_root, PATIENCE};

/// The largest message the tests' clients take: more than the server
/// sends, so that a test sees the server's limits, never the client's.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

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
        &config.manager.backend,
        BackendConfig::Cli { program } if program == "docker"
    );
    if default_cli {
        match std::env::var("EXECD_BACKEND").as_deref() {
            Ok("engine-api") => {
                config.manager.backend = BackendConfig::EngineApi {
                    socket: "/var/run/docker.sock".into(),
                };
            }
            Ok("oci") => {
                config.manager.backend = BackendConfig::Oci {
                    runtime: "runc".into(),
                    root: test_oci_root(),
                    cli: "docker".into(),
                };
            }
            _ => {}
        }
    }
    config
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
        ExecServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE)
    }

    pub async fn admin(&self) -> SessionAdminClient<Channel> {
        SessionAdminClient::new(self.channel().await)
    }

    /// Opens a session stream that starts with `first`.
    pub async fn open(&self, first: ExecMessage) -> Exec {
        open_on(self.client().await, first, None, None)
            .await
            .expect("ExecStream call")
    }

    /// Opens a session stream that starts with `first`, with the bearer
    /// `token` if any, on a connection of its own that [`Exec::vanish`]
    /// cuts.
    pub async fn open_cuttable(&self, first: ExecMessage, token: Option<&str>) -> Exec {
        let (channel, cut) = self.cuttable_channel().await;
        let mut exec = open_stream(channel, first, token, None)
            .await
            .expect("ExecStream call");
        exec.cut = Some(cut);
        exec
    }

    /// Starts a session whose client vanishes right after STARTED.
    pub async fn start_and_vanish(&self, first: ExecMessage, token: Option<&str>) {
        let mut exec = self.open_cuttable(first, token).await;
        exec.started().await;
        exec.vanish(Duration::from_millis(300)).await;
    }

    pub async fn exec(&self, req: ExecStartRequest) -> Exec {
        self.open(start_msg("", req)).await
    }

    /// Runs `req` to its end.
    pub async fn run(&self, req: ExecStartRequest) -> Transcript {
        self.exec(req).await.finish().await
    }

    /// Starts `req` and reads its output until `needle` shows, so that the
    /// process is known to run.
    pub async fn exec_until(&self, req: ExecStartRequest, needle: &str) -> Exec {
        let mut exec = self.exec(req).await;
        exec.started().await;
        exec.read_until(needle).await;
        exec
    }

    /// Starts `sleep <marker>` in `container` as the session's own process
    /// and returns the session once it runs, and the marker.
    pub async fn exec_sleeper(&self, container: &str) -> (Exec, u32) {
        let n = super::marker();
        let script = format!("echo up; exec sleep {n}");
        let sleeper = req(container, &["sh", "-c", &script]);
        (self.exec_until(sleeper, "up").await, n)
    }

    /// The admin API's session list (of `instance`; every instance's if
    /// empty).
    pub async fn sessions(&self, instance: &str) -> ListSessionsResponse {
        self.admin()
            .await
            .list_sessions(ListSessionsRequest {
                instance_id: instance.to_string(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// How many sessions the admin API counts for `instance`.
    pub async fn active(&self, instance: &str) -> u32 {
        let listed = self.sessions(instance).await;
        listed
            .active_per_instance
            .get(instance)
            .copied()
            .unwrap_or(0)
    }

    /// `host:port` of the listener, as HTTP clients name it.
    pub fn host_port(&self) -> &str {
        self.addr.trim_start_matches("http://")
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

/// Opens an ExecStream with `client` that starts with `first`, sending the
/// bearer `token` and the output `offset` a returning client kept, if any;
/// the status a refused call ends with is the `Err`.
async fn open_on(
    mut client: ExecServiceClient<Channel>,
    first: ExecMessage,
    token: Option<&str>,
    offset: Option<u64>,
) -> Result<Exec, tonic::Status> {
    let (tx, rx) = mpsc::channel(64);
    tx.send(first).await.unwrap();
    let mut call = tonic::Request::new(ReceiverStream::new(rx));
    let metadata = call.metadata_mut();
    if let Some(token) = token {
        let bearer = format!("Bearer {token}");
        metadata.insert("authorization", bearer.parse().unwrap());
    }
    if let Some(offset) = offset {
        metadata.insert("execd-output-offset", offset.to_string().parse().unwrap());
    }
    let rx = client.exec_stream(call).await?.into_inner();
    Ok(Exec {
        started_seen: false,
        tx: Some(tx),
        rx,
        cut: None,
        _client: client,
    })
}

/// [`open_on`] a client of `channel` of the tests' own.
pub async fn open_stream(
    channel: Channel,
    first: ExecMessage,
    token: Option<&str>,
    offset: Option<u64>,
) -> Result<Exec, tonic::Status> {
    let client = ExecServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
    open_on(client, first, token, offset).await
}

/// Runs `req` to its end on `channel` as a client with the bearer `token`
/// (if any) would; the status a refused call or the session's RPC ended
/// with is the `Err`.
pub async fn exec_with_token(
    channel: Channel,
    token: Option<&str>,
    req: ExecStartRequest,
) -> Result<Transcript, tonic::Status> {
    let mut t = open_stream(channel, start_msg("", req), token, None)
        .await?
        .finish()
        .await;
    match t.rpc.take() {
        Some(status) => Err(status),
        None => Ok(t),
    }
}

/// `cfg` with tokens required: `tokens` (a token file's text, a token a
/// line) in a file of a fresh temporary directory, which the caller keeps
/// for as long as the server may read the file again.
pub fn with_tokens(mut cfg: ServerConfig, tokens: &str) -> (ServerConfig, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    std::fs::write(&path, tokens).unwrap();
    cfg.auth = Some(execd::auth::TokenStore::load(&path).unwrap());
    (cfg, dir)
}

// The message builders live in execd-client (shared with the example
// client and the bench); these names are the ones the tests use.
pub use execd_client::message::{
    eof as eof_msg, input as input_msg, request as req, resize as resize_msg, start as start_msg,
};

/// Cuts the connections of a [`TestServer::cuttable_channel`].
#[derive(Default, Clone)]
pub struct Cutter(std::sync::Arc<std::sync::Mutex<Vec<std::os::fd::OwnedFd>>>);

impl Cutter {
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
    /// Set when opened by [`TestServer::open_cuttable`].
    cut: Option<Cutter>,
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

    /// The first status (skipping anything before it), or the status the
    /// RPC ended with instead.
    pub async fn first_status(&mut self) -> Result<WireStatus, tonic::Status> {
        loop {
            let msg = self.next().await.expect("a status before the end")?;
            if let Some(Payload::Status(s)) = msg.payload {
                let status = WireStatus::try_from(s.status).expect("known status");
                self.started_seen |= status == WireStatus::Started;
                return Ok(status);
            }
        }
    }

    /// The client vanishes (its connection just ends: no half-close, no
    /// reset); the server is given `notice` to see that.
    pub async fn vanish(mut self, notice: Duration) {
        let cut = self.cut.take().expect("a stream of open_cuttable");
        cut.cut();
        drop(self);
        tokio::time::sleep(notice).await;
    }

    /// Reads output until at least `n` bytes arrived.
    pub async fn read_bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while out.len() < n {
            let msg = self
                .next()
                .await
                .expect("stream open")
                .expect("no RPC error");
            if let Some(Payload::OutputData(o)) = msg.payload {
                out.extend_from_slice(&o.data);
            }
        }
        out
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
