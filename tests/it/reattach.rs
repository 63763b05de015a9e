//! Reattach after a dropped connection (`--reattach-grace`): the process
//! keeps running, its output is kept, and the same client comes back to it.

use crate::common::kube_ws;
use crate::common::proxy;

use std::time::Duration;

use crate::common::*;
use execd_proto::admin::ListSessionsRequest;
use execd_proto::exec_service::exec_message::Payload;
use execd_proto::exec_service::exec_service_client::ExecServiceClient;
use execd_proto::exec_service::exec_status_response::Status as WireStatus;
use execd_proto::exec_service::ExecMessage;
use execd_session::ReattachConfig;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

const GONE_WITHIN: Duration = Duration::from_secs(6);

fn reattach_config(grace: Duration, buffer: usize) -> execd::ServerConfig {
    let mut cfg = config();
    cfg.manager.reattach = Some(ReattachConfig {
        grace,
        buffer,
        total: 64 << 20,
    });
    cfg
}

/// Opens the first stream of a session on a connection of its own;
/// cutting it is the client vanishing.
async fn first_stream(server: &TestServer, first: ExecMessage) -> (Exec2, Cutter) {
    let (channel, cutter) = server.cuttable_channel().await;
    let (tx, rx) = open_with(channel, first, None, None).await;
    (
        Exec2 {
            _tx: tx,
            rx: rx.expect("the call"),
        },
        cutter,
    )
}

/// Starts a session whose client vanishes right after STARTED.
async fn start_and_vanish(server: &TestServer, first: ExecMessage) {
    let (mut stream, cut) = first_stream(server, first).await;
    stream.started().await;
    cut.cut();
    drop(stream);
    // The server notices the connection is gone.
    tokio::time::sleep(Duration::from_millis(300)).await;
}

struct Exec2 {
    _tx: tokio::sync::mpsc::Sender<ExecMessage>,
    rx: tonic::Streaming<ExecMessage>,
}

impl Exec2 {
    async fn next_payload(&mut self) -> Payload {
        tokio::time::timeout(PATIENCE, self.rx.message())
            .await
            .expect("a message in time")
            .expect("no RPC error")
            .expect("stream open")
            .payload
            .expect("a payload")
    }

    async fn started(&mut self) {
        match self.next_payload().await {
            Payload::Status(s) => assert_eq!(s.status, WireStatus::Started as i32),
            other => panic!("expected STARTED, got {other:?}"),
        }
    }

    async fn send(&self, text: &str) {
        self._tx.send(input_msg(text.to_string())).await.unwrap();
    }

    async fn read_until(&mut self, needle: &str) {
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).contains(needle) {
            match self.next_payload().await {
                Payload::OutputData(o) => seen.extend_from_slice(&o.data),
                other => panic!("{other:?} before {needle:?}"),
            }
        }
    }
}

/// A start message naming `id` (what a returning client sends).
fn start_named(id: &str, command: &[&str], tty: bool) -> ExecMessage {
    let mut r = req(shared_container(), command);
    r.tty = tty;
    start_msg(id, r)
}

/// Opens a stream on `channel` with `first`, optional token and output
/// offset metadata; returns the sender (kept open) and the response stream.
async fn open_with(
    channel: tonic::transport::Channel,
    first: ExecMessage,
    token: Option<&str>,
    offset: Option<u64>,
) -> (
    tokio::sync::mpsc::Sender<ExecMessage>,
    Result<tonic::Streaming<ExecMessage>, tonic::Status>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(first).await.unwrap();
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    if let Some(offset) = offset {
        request
            .metadata_mut()
            .insert("execd-output-offset", offset.to_string().parse().unwrap());
    }
    let answer = ExecServiceClient::new(channel)
        .exec_stream(request)
        .await
        .map(|r| r.into_inner());
    (tx, answer)
}

/// Reads a stream to its end: statuses, output, and the RPC status.
async fn drain(
    mut rx: tonic::Streaming<ExecMessage>,
) -> (
    Vec<(WireStatus, i32, String)>,
    Vec<u8>,
    Option<tonic::Status>,
) {
    let (mut statuses, mut out) = (Vec::new(), Vec::new());
    loop {
        match tokio::time::timeout(PATIENCE, rx.message())
            .await
            .expect("a message in time")
        {
            Ok(Some(msg)) => match msg.payload {
                Some(Payload::Status(s)) => statuses.push((
                    WireStatus::try_from(s.status).unwrap(),
                    s.exit_code,
                    s.error_message,
                )),
                Some(Payload::OutputData(o)) => out.extend_from_slice(&o.data),
                _ => {}
            },
            Ok(None) => return (statuses, out, None),
            Err(status) => return (statuses, out, Some(status)),
        }
    }
}

#[tokio::test]
async fn a_cancelled_client_comes_back_to_late_output_and_the_exit_code() {
    if !docker_or_skip(module_path!()) {
        return;
    }
    let server = start_server(reattach_config(Duration::from_secs(10), 1 << 20)).await;
    let id = format!("reattach-{}", marker());
    let cmd = ["sh", "-c", "sleep 1; echo late; exit 4"];
    start_and_vanish(&server, start_named(&id, &cmd, false)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_tx, rx) = open_with(
        server.channel().await,
        start_named(&id, &cmd, false),
        None,
        None,
    )
    .await;
    let (statuses, out, rpc) = drain(rx.unwrap()).await;
    assert_eq!(
        statuses.first().map(|s| s.0),
        Some(WireStatus::Running),
        "{statuses:?}"
    );
    assert_eq!(String::from_utf8_lossy(&out), "late\n");
    assert_eq!(
        statuses.last(),
        Some(&(WireStatus::Exited, 4, String::new()))
    );
    assert!(rpc.is_none(), "{rpc:?}");
}

#[tokio::test]
async fn a_tty_shell_keeps_what_was_typed_across_a_dropped_connection() {
    if !docker_or_skip(module_path!()) {
        return;
    }
    let server = start_server(reattach_config(Duration::from_secs(10), 1 << 20)).await;
    let id = format!("reattach-tty-{}", marker());
    let (mut first, cut) = first_stream(&server, start_named(&id, &["sh"], true)).await;
    first.started().await;
    first.send("echo a-$((40+2))\n").await;
    first.read_until("a-42").await;
    cut.cut();
    drop(first);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut again = server.open(start_named(&id, &["sh"], true)).await;
    match again.next().await.unwrap().unwrap().payload {
        Some(Payload::Status(s)) => assert_eq!(s.status, WireStatus::Running as i32),
        other => panic!("expected RUNNING, got {other:?}"),
    }
    again.send(input_msg("echo b-$((50+5))\n")).await;
    let seen = again.read_until("b-55").await;
    again.send(input_msg("exit 3\n")).await;
    let t = again.finish().await;
    assert_eq!(t.terminal().0, WireStatus::Exited, "{t:?} after {seen:?}");
    assert_eq!(t.terminal().1, 3);
}

#[tokio::test]
async fn a_flood_while_detached_keeps_the_newest_bytes_and_counts_the_rest() {
    if !docker_or_skip(module_path!()) {
        return;
    }
    let ring = 64 * 1024;
    let server = start_server(reattach_config(Duration::from_secs(10), ring)).await;
    let id = format!("reattach-flood-{}", marker());
    // 4 MiB of numbered lines, then a last line to look for.
    let cmd = ["sh", "-c", "sleep 0.5; seq 1 600000; echo the-end; sleep 4"];
    start_and_vanish(&server, start_named(&id, &cmd, false)).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let listed = server
        .admin()
        .await
        .list_sessions(ListSessionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let info = listed
        .sessions
        .iter()
        .find(|s| s.session_id == id)
        .unwrap_or_else(|| panic!("a detached session is listed: {listed:?}"));
    assert!(info.detached_at_unix_ms > 0, "{info:?}");
    assert!(info.replay_dropped_bytes > 3 << 20, "{info:?}");
    let (_tx, rx) = open_with(
        server.channel().await,
        start_named(&id, &cmd, false),
        None,
        None,
    )
    .await;
    let (statuses, out, _) = drain(rx.unwrap()).await;
    assert_eq!(statuses.first().map(|s| s.0), Some(WireStatus::Running));
    assert_eq!(
        statuses.last().map(|s| (s.0, s.1)),
        Some((WireStatus::Exited, 0))
    );
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.ends_with("599999\n600000\nthe-end\n"),
        "{}",
        &text[text.len().saturating_sub(64)..]
    );
    assert!(
        out.len() <= ring,
        "{} bytes replayed from a {ring}-byte ring",
        out.len()
    );
}

#[tokio::test]
async fn nobody_back_within_the_grace_ends_the_session_and_its_processes() {
    if !docker_or_skip(module_path!()) {
        return;
    }
    let server = start_server(reattach_config(Duration::from_secs(1), 1 << 20)).await;
    let n = marker();
    let id = format!("reattach-expire-{n}");
    let cmd = ["sleep", &n.to_string()];
    start_and_vanish(&server, start_named(&id, &cmd, false)).await;
    assert_eq!(
        container_processes(shared_container(), &format!("sleep {n}")).len(),
        1,
        "the process runs on while detached"
    );
    let left = wait_until_gone(shared_container(), &format!("sleep {n}"), GONE_WITHIN).await;
    assert!(left.is_empty(), "{left:?}");
    // The id is free again once the session is gone: a new start with it
    // is a new session.
    let deadline = std::time::Instant::now() + GONE_WITHIN;
    loop {
        let t = server
            .open(start_named(&id, &["true"], false))
            .await
            .finish()
            .await;
        if t.statuses.first().map(|s| s.0) == Some(WireStatus::Started) {
            assert_eq!(t.assert_exited(), 0);
            break;
        }
        t.assert_error(Code::AlreadyExists);
        assert!(std::time::Instant::now() < deadline, "the id stays taken");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn only_the_same_client_may_reattach_and_only_once_at_a_time() {
    if !docker_or_skip(module_path!()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "alice-token\nbob-token\n").unwrap();
    let mut cfg = reattach_config(Duration::from_secs(10), 1 << 20);
    cfg.auth = Some(execd::auth::TokenStore::load(&tokens).unwrap());
    let server = start_server(cfg).await;
    let n = marker();
    let id = format!("reattach-owner-{n}");
    let cmd = ["sleep", &n.to_string()];
    let channel = server.channel().await;
    let (alice, cut) = server.cuttable_channel().await;
    let (tx, rx) = open_with(
        alice,
        start_named(&id, &cmd, false),
        Some("alice-token"),
        None,
    )
    .await;
    let mut rx = rx.unwrap();
    rx.message().await.unwrap().unwrap(); // STARTED
    cut.cut();
    drop((tx, rx));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (_tx, rx) = open_with(
        channel.clone(),
        start_named(&id, &cmd, false),
        Some("bob-token"),
        None,
    )
    .await;
    let (_, _, rpc) = drain(rx.unwrap()).await;
    assert_eq!(rpc.map(|s| s.code()), Some(Code::PermissionDenied));

    let mut other = req("some-other-container", &cmd);
    other.tty = false;
    let (_tx, rx) = open_with(
        channel.clone(),
        start_msg(&id, other),
        Some("alice-token"),
        None,
    )
    .await;
    let (_, _, rpc) = drain(rx.unwrap()).await;
    assert_eq!(rpc.map(|s| s.code()), Some(Code::InvalidArgument));

    let (alice_again, cut) = server.cuttable_channel().await;
    let (_keep, rx) = open_with(
        alice_again,
        start_named(&id, &cmd, false),
        Some("alice-token"),
        None,
    )
    .await;
    let mut attached = rx.unwrap();
    let msg = attached.message().await.unwrap().unwrap();
    assert!(
        matches!(msg.payload, Some(Payload::Status(s)) if s.status == WireStatus::Running as i32)
    );
    let (_tx, rx) = open_with(
        channel,
        start_named(&id, &cmd, false),
        Some("alice-token"),
        None,
    )
    .await;
    let (_, _, rpc) = drain(rx.unwrap()).await;
    assert_eq!(rpc.map(|s| s.code()), Some(Code::AlreadyExists));
    cut.cut();
    drop(attached);
    let left = wait_until_gone(
        shared_container(),
        &format!("sleep {n}"),
        Duration::from_secs(20),
    )
    .await;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn an_output_offset_replays_from_that_byte() {
    if !docker_or_skip(module_path!()) {
        return;
    }
    let server = start_server(reattach_config(Duration::from_secs(10), 1 << 20)).await;
    let id = format!("reattach-offset-{}", marker());
    let cmd = ["sh", "-c", "echo 0123456789; sleep 2"];
    let (mut first, cut) = first_stream(&server, start_named(&id, &cmd, false)).await;
    first.started().await;
    first.read_until("9").await;
    cut.cut();
    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The client says it kept only 4 bytes of what it was sent.
    let (_tx, rx) = open_with(
        server.channel().await,
        start_named(&id, &cmd, false),
        None,
        Some(4),
    )
    .await;
    let (statuses, out, _) = drain(rx.unwrap()).await;
    assert_eq!(statuses.first().map(|s| s.0), Some(WireStatus::Running));
    assert_eq!(String::from_utf8_lossy(&out), "456789\n");
    assert_eq!(
        statuses.last().map(|s| (s.0, s.1)),
        Some((WireStatus::Exited, 0))
    );
}

#[tokio::test]
async fn without_reattach_a_dropped_client_still_ends_the_session() {
    if !docker_or_skip(module_path!()) {
        return;
    }
    let server = start_server(config()).await;
    let n = marker();
    let id = format!("no-reattach-{n}");
    let cmd = ["sleep", &n.to_string()];
    start_and_vanish(&server, start_named(&id, &cmd, false)).await;
    let left = wait_until_gone(shared_container(), &format!("sleep {n}"), GONE_WITHIN).await;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn a_pod_exec_websocket_comes_back_with_session_in_the_query() {
    if !docker_or_skip(module_path!()) {
        return;
    }
    let server = start_server(reattach_config(Duration::from_secs(10), 1 << 20)).await;
    let id = format!("reattach-ws-{}", marker());
    let path = kube_ws::exec_path(
        shared_container(),
        &["sh"],
        &format!("stdin=1&stdout=1&tty=1&session={id}"),
    );
    let base = server.addr.clone();
    let mut ws = kube_ws::connect(&base, &path, kube_ws::V5, &[])
        .await
        .expect("upgrade");
    kube_ws::type_until(&mut ws, b"echo a-$((40+2))\n", "a-42").await;
    // The connection drops: no close frame, no stdin EOF.
    drop(ws);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut ws = kube_ws::connect(&base, &path, kube_ws::V5, &[])
        .await
        .expect("upgrade again");
    kube_ws::type_until(&mut ws, b"echo b-$((50+5))\n", "b-55").await;
    kube_ws::send(&mut ws, 0, b"exit 3\n").await;
    let t = kube_ws::read_all(&mut ws, PATIENCE).await;
    assert_eq!(
        t.status()["details"]["causes"][0]["message"],
        "3",
        "{:?}",
        t.status()
    );
}

/// The example client, a separate process like any user's.
fn example_client(socket: &std::path::Path) -> tokio::process::Command {
    let example = std::path::Path::new(env!("CARGO_BIN_EXE_execd"))
        .parent()
        .unwrap()
        .join("examples/exec");
    let mut command = tokio::process::Command::new(example);
    command
        .arg("--addr")
        .arg(format!("unix:{}", socket.display()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    command
}

/// What `seq 1 n` prints.
fn seq(n: u32) -> String {
    (1..=n).map(|i| format!("{i}\n")).collect()
}

#[tokio::test]
async fn the_example_client_reconnects_through_a_dropped_connection_without_loss() {
    if !docker_or_skip(module_path!()) {
        return;
    }
    let execd = ExecdProcess::start(&["--reattach-grace", "20s"]).await;
    let dir = tempfile::tempdir().unwrap();
    let front = dir.path().join("flaky.sock");
    let flaky = proxy::UnixProxy::start(&front, execd.socket.clone());
    let script = "for i in $(seq 1 40); do echo $i; sleep 0.05; done; exit 7";
    let client = example_client(&front)
        .args([shared_container(), "sh", "-c", script])
        .spawn()
        .unwrap();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        flaky.cut();
    }
    let out = tokio::time::timeout(PATIENCE, client.wait_with_output())
        .await
        .expect("the client finishes")
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        seq(40),
        "every line once, in order"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("reconnecting"),
        "the connection did drop: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn the_example_client_reattaches_by_id_after_being_killed() {
    if !docker_or_skip(module_path!()) {
        return;
    }
    let execd = ExecdProcess::start(&["--reattach-grace", "20s"]).await;
    let id = format!("example-{}", marker());
    let script = "sleep 1; echo after; exit 5";
    let mut first = example_client(&execd.socket)
        .args(["--session", &id, shared_container(), "sh", "-c", script])
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    let out = example_client(&execd.socket)
        .args(["--reattach", &id, shared_container()])
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "after\n");
    let gone = example_client(&execd.socket)
        .args(["--reattach", "no-such-session", shared_container()])
        .output()
        .await
        .unwrap();
    assert_eq!(gone.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&gone.stderr).contains("nothing to reattach"));
}

#[tokio::test]
async fn a_tty_client_coming_back_gets_a_sigwinch_to_redraw() {
    if !docker_or_skip(module_path!()) {
        return;
    }
    let server = start_server(reattach_config(Duration::from_secs(10), 1 << 20)).await;
    let id = format!("reattach-winch-{}", marker());
    let script = "trap 'echo got-winch' WINCH; echo ready; while true; do sleep 0.1; done";
    let (mut first, cut) =
        first_stream(&server, start_named(&id, &["sh", "-c", script], true)).await;
    first.started().await;
    first.read_until("ready").await;
    cut.cut();
    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut again = server
        .open(start_named(&id, &["sh", "-c", script], true))
        .await;
    match again.next().await.unwrap().unwrap().payload {
        Some(Payload::Status(s)) => assert_eq!(s.status, WireStatus::Running as i32),
        other => panic!("expected RUNNING, got {other:?}"),
    }
    again.read_until("got-winch").await;
}

#[tokio::test]
async fn shutdown_ends_detached_sessions_too() {
    if !docker_or_skip(module_path!()) {
        return;
    }
    let server = start_server(reattach_config(Duration::from_secs(60), 1 << 20)).await;
    let n = marker();
    let id = format!("reattach-shutdown-{n}");
    let cmd = ["sleep", &n.to_string()];
    start_and_vanish(&server, start_named(&id, &cmd, false)).await;
    server.stop().await;
    let left = wait_until_gone(shared_container(), &format!("sleep {n}"), GONE_WITHIN).await;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn a_ring_smaller_than_a_read_never_holds_back_an_attached_session() {
    if !docker_or_skip(module_path!()) {
        return;
    }
    let server = start_server(reattach_config(Duration::from_secs(10), 16 * 1024)).await;
    let id = format!("reattach-small-ring-{}", marker());
    let t = server
        .open(start_named(&id, &["sh", "-c", "seq 1 300000"], false))
        .await
        .finish()
        .await;
    assert_eq!(t.assert_exited(), 0);
    assert_eq!(t.stdout_str(), seq(300000), "every byte, in order");
}
