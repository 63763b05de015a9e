//! An independent client: Python grpcio (C-core HTTP/2, stubs generated from
//! proto/exec_service.proto at test time) against the real execd binary,
//! over TCP, the unix socket and TLS with a bearer token, with default
//! channel options, the way the function system and other Python users
//! connect. The scripts in tests/python record what happened as JSON; the
//! assertions are here.
//!
//! The interpreter comes from `EXECD_TEST_PYTHON` (scripts/test makes a venv
//! from tests/python/requirements.txt), else `python3`. Without grpcio the
//! tests skip, except under `CI=true`, where they fail.

use crate::common::pki;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::*;
use crate::common::{free_port, Reach, SpawnedExecd};
use pki::ServerPki;
use serde::Deserialize;

macro_rules! need_docker_and_python {
    () => {{
        need_docker!();
        match python_with(
            module_path!(),
            "import grpc, grpc_tools.protoc",
            "grpcio and grpcio-tools",
        ) {
            Some(python) => python,
            None => return,
        }
    }};
}

/// The Python client's working set: interpreter plus stubs generated from
/// the contract into a temp dir.
struct PyClient {
    python: PathBuf,
    stubs: tempfile::TempDir,
}

impl PyClient {
    fn new(python: PathBuf) -> PyClient {
        let stubs = tempfile::tempdir().unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = Command::new(&python)
            .arg("-m")
            .arg("grpc_tools.protoc")
            .arg(format!("-I{}", root.join("proto").display()))
            .arg(format!("--python_out={}", stubs.path().display()))
            .arg(format!("--grpc_python_out={}", stubs.path().display()))
            .arg("exec_service.proto")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "grpc_tools.protoc: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PyClient { python, stubs }
    }

    /// Runs tests/python/`script` against `target` and parses its JSON.
    async fn run<T: serde::de::DeserializeOwned>(
        &self,
        script: &str,
        target: &str,
        extra: &[&str],
    ) -> T {
        let mut run = python_script(&self.python, script);
        run.arg("--stubs")
            .arg(self.stubs.path())
            .args(["--target", target, "--container", shared_container()])
            .args(extra)
            // C-core's own diagnostics stay in stderr, shown on failure.
            .env("GRPC_VERBOSITY", "ERROR");
        json_of(&mut run, Duration::from_secs(300)).await
    }
}

#[derive(Debug, Deserialize)]
struct PyStatus {
    status: String,
    exit_code: i32,
    error_message: String,
}

#[derive(Debug, Deserialize)]
struct PyRpc {
    code: String,
    details: String,
}

#[derive(Debug, Deserialize)]
struct PyTranscript {
    sent_session_id: String,
    session_ids: Vec<String>,
    statuses: Vec<PyStatus>,
    stdout: String,
    stderr: String,
    rpc: Option<PyRpc>,
}

impl PyTranscript {
    fn statuses(&self) -> Vec<(&str, i32)> {
        self.statuses
            .iter()
            .map(|s| (s.status.as_str(), s.exit_code))
            .collect()
    }

    /// STARTED, EXITED 0, the RPC ended OK, every message carried the
    /// client's session id; returns stdout.
    fn assert_exited_0(&self, what: &str) -> &str {
        assert!(self.rpc.is_none(), "{what}: {self:#?}");
        assert_eq!(
            self.statuses(),
            [("STARTED", 0), ("EXITED", 0)],
            "{what}: {self:#?}"
        );
        assert_eq!(
            self.session_ids,
            std::slice::from_ref(&self.sent_session_id),
            "{what}: {self:#?}"
        );
        &self.stdout
    }
}

#[derive(Debug, Deserialize)]
struct BasicSessions {
    echo: PyTranscript,
    stdin_eof: PyTranscript,
    tty_resize: PyTranscript,
    error: PyTranscript,
}

/// Echo, stdin EOF, tty resize and a missing container, one after another
/// on one grpcio channel to `target`.
async fn assert_basic_sessions(client: &PyClient, target: &str, extra: &[&str]) {
    let got: BasicSessions = client.run("basic_sessions.py", target, extra).await;

    assert_eq!(got.echo.assert_exited_0("echo hi"), "hi\n");

    // Binary-safe both ways, and stdin_eof alone ends `cat` (the script keeps
    // its side of the stream open).
    assert_eq!(
        got.stdin_eof.assert_exited_0("cat with stdin_eof"),
        "line one\nline two\u{0}\u{fffd} end"
    );

    let size = got.tty_resize.assert_exited_0("tty resize");
    assert_eq!(size.trim_end(), "40 100", "{:#?}", got.tty_resize);
    assert!(got.tty_resize.stderr.is_empty(), "a tty merges stderr");

    let error = &got.error;
    assert_eq!(error.statuses(), [("ERROR", 0)], "{error:#?}");
    let rpc = error.rpc.as_ref().expect("the RPC ends with a status");
    assert_eq!(rpc.code, "NOT_FOUND", "{error:#?}");
    assert_eq!(rpc.details, error.statuses[0].error_message);
    assert!(
        rpc.details.contains("execd-interop-no-such-container"),
        "{error:#?}"
    );
}

#[derive(Debug, Deserialize)]
struct Bridge {
    rounds: Vec<Vec<PyTranscript>>,
    states: Vec<String>,
}

const BRIDGE_SESSIONS: usize = 12;

/// Two rounds of twelve concurrent tty sessions on one grpcio channel, each
/// cancelled right after its EXITED.
async fn assert_bridge_pattern(client: &PyClient, target: &str) {
    let sessions = BRIDGE_SESSIONS.to_string();
    let got: Bridge = client
        .run(
            "bridge.py",
            target,
            &["--sessions", &sessions, "--rounds", "2"],
        )
        .await;
    assert_eq!(got.rounds.len(), 2);
    for (round, transcripts) in got.rounds.iter().enumerate() {
        assert_eq!(transcripts.len(), BRIDGE_SESSIONS);
        for (n, t) in transcripts.iter().enumerate() {
            let what = format!("round {round}, session {n}");
            let out = t.assert_exited_0(&what);
            // The shell computes the text, so the terminal's echo of the
            // typed line cannot satisfy this.
            let expected = format!("hello-{}\r\n", 100 + n);
            assert!(out.contains(&expected), "{what}: {t:#?}");
        }
    }
    // Any change would mean the connection broke (a cancel taking the
    // connection down) and grpcio reconnected behind the test's back.
    assert_eq!(
        got.states,
        ["READY"],
        "the one connection must survive every cancel"
    );
}

/// execd on `--listen unix:<dir>/execd.sock` (and nothing else), and the
/// grpcio target for it: `unix:` + path, no authority option.
async fn start_unix(dir: &tempfile::TempDir) -> (SpawnedExecd, String) {
    let socket = dir.path().join("execd.sock");
    let listen = format!("unix:{}", socket.display());
    let execd = SpawnedExecd::start(
        dir.path(),
        &["--listen".into(), listen.clone()],
        &[],
        &[Reach::Unix(socket)],
    )
    .await;
    (execd, listen)
}

async fn start_tcp(dir: &tempfile::TempDir, extra: &[String]) -> (SpawnedExecd, String) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut args = vec!["--listen".to_string(), addr.clone()];
    args.extend_from_slice(extra);
    let execd = SpawnedExecd::start(dir.path(), &args, &[], &[Reach::Tcp(port)]).await;
    (execd, addr)
}

async fn stop(execd: SpawnedExecd) {
    let log = execd.log();
    assert!(
        execd.terminate().await.success(),
        "execd ends cleanly:\n{log}"
    );
}

#[tokio::test]
async fn python_client_over_tcp() {
    let python = need_docker_and_python!();
    let client = PyClient::new(python);
    let dir = tempfile::tempdir().unwrap();
    let (execd, target) = start_tcp(&dir, &[]).await;
    assert_basic_sessions(&client, &target, &[]).await;
    stop(execd).await;
}

/// grpcio (C-core ≥ 1.57) sends the percent-encoded socket path as
/// `:authority` (e.g. `tmp%2F…%2Fexecd.sock`) on `unix:` targets. That is no
/// valid authority, and an HTTP/2 server that validates it strictly resets
/// every stream with PROTOCOL_ERROR (grpcio: INTERNAL "Received RST_STREAM
/// with error code 1"). execd must serve such clients: the socket is how
/// node-local clients reach it.
#[tokio::test]
async fn python_client_over_unix_socket_with_default_options() {
    let python = need_docker_and_python!();
    let client = PyClient::new(python);
    let dir = tempfile::tempdir().unwrap();
    let (execd, target) = start_unix(&dir).await;
    assert_basic_sessions(&client, &target, &[]).await;
    stop(execd).await;
}

#[tokio::test]
async fn python_client_over_tls_with_bearer_token() {
    let python = need_docker_and_python!();
    let client = PyClient::new(python);
    let dir = tempfile::tempdir().unwrap();
    let pki = ServerPki::generate();
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let ca = file("ca.pem", &pki.ca_pem);
    let args = [
        "--tls-cert".to_string(),
        file("server.pem", &pki.cert_pem),
        "--tls-key".into(),
        file("server.key", &pki.key_pem),
        "--auth-token-file".into(),
        file("tokens", "python-interop-token\n"),
    ];
    let (execd, target) = start_tcp(&dir, &args).await;

    assert_basic_sessions(
        &client,
        &target,
        &["--tls-ca", &ca, "--token", "python-interop-token"],
    )
    .await;

    // The token is what lets the sessions above in.
    let refused: BasicSessions = client
        .run(
            "basic_sessions.py",
            &target,
            &["--tls-ca", &ca, "--token", "wrong-token"],
        )
        .await;
    for t in [
        &refused.echo,
        &refused.stdin_eof,
        &refused.tty_resize,
        &refused.error,
    ] {
        assert!(t.statuses.is_empty(), "{t:#?}");
        assert_eq!(
            t.rpc.as_ref().map(|r| r.code.as_str()),
            Some("UNAUTHENTICATED"),
            "{t:#?}"
        );
    }
    stop(execd).await;
}

#[tokio::test]
async fn bridge_pattern_over_tcp() {
    let python = need_docker_and_python!();
    let client = PyClient::new(python);
    let dir = tempfile::tempdir().unwrap();
    let (execd, target) = start_tcp(&dir, &[]).await;
    assert_bridge_pattern(&client, &target).await;
    stop(execd).await;
}

/// The function system's bridge reaches execd over the node-local socket.
/// Fails while unix-socket requests from grpcio are reset (see
/// `python_client_over_unix_socket_with_default_options`).
#[tokio::test]
async fn bridge_pattern_over_unix_socket() {
    let python = need_docker_and_python!();
    let client = PyClient::new(python);
    let dir = tempfile::tempdir().unwrap();
    let (execd, target) = start_unix(&dir).await;
    assert_bridge_pattern(&client, &target).await;
    stop(execd).await;
}

#[derive(Debug, Deserialize)]
struct CancelReattach {
    first_seen: bool,
    second_seen: bool,
    reattached: PyTranscript,
}

/// grpcio's `call.cancel()` (RST_STREAM CANCEL, what Envoy or nginx send
/// when their client vanishes) in the middle of a tty shell and of `cat`
/// is not stdin EOF: with a reattach grace both keep running, and the same
/// session_id comes back to them (RUNNING, the new input answered, then
/// the exit the client asked for).
#[tokio::test]
async fn python_cancel_detaches_without_stdin_eof() {
    let python = need_docker_and_python!();
    let client = PyClient::new(python);
    let dir = tempfile::tempdir().unwrap();
    // Spawned servers drop EXECD_* variables: the suite's backend is passed.
    let mut args: Vec<String> = ["--reattach-grace", "20s", "--log-level", "info,execd=debug"]
        .map(String::from)
        .to_vec();
    if let Ok(backend) = std::env::var("EXECD_BACKEND") {
        args.extend(["--backend".to_string(), backend]);
    }
    let (execd, target) = start_tcp(&dir, &args).await;
    let got: std::collections::HashMap<String, CancelReattach> =
        client.run("cancel_reattach.py", &target, &[]).await;
    for scenario in ["tty_shell", "pipe_cat"] {
        let run = &got[scenario];
        assert!(run.first_seen, "{scenario}: {run:#?}");
        assert!(run.second_seen, "{scenario}: {run:#?}");
        assert!(run.reattached.rpc.is_none(), "{scenario}: {run:#?}");
        assert_eq!(
            run.reattached.statuses(),
            [("RUNNING", 0), ("EXITED", 0)],
            "{scenario}: {run:#?}"
        );
    }
    let log = execd.log();
    assert!(log.contains("stdin left open"), "{log}");
    stop(execd).await;
}
