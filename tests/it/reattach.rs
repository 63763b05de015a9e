//! Reattach after a dropped connection (`--reattach-grace`): the process
//! keeps running, its output is kept, and the same client comes back to it.

use crate::common::kube_ws;
use crate::common::proxy;

use std::time::Duration;

use crate::common::*;
use execd_proto::exec_service::exec_status_response::Status as WireStatus;
use execd_proto::exec_service::ExecMessage;
use execd_session::ReattachConfig;
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

/// The usual reattach server: a grace of 10 s and a 1 MiB ring.
async fn reattach_server() -> TestServer {
    start_server(reattach_config(Duration::from_secs(10), 1 << 20)).await
}

/// A start message naming `id` (what a returning client sends).
fn start_named(id: &str, command: &[&str], tty: bool) -> ExecMessage {
    let mut r = req(shared_container(), command);
    r.tty = tty;
    start_msg(id, r)
}

/// Comes back to a session with `first` on a connection of its own (with
/// the bearer `token` and the output `offset` kept, if any) and reads the
/// stream to its end.
async fn come_back(
    server: &TestServer,
    first: ExecMessage,
    token: Option<&str>,
    offset: Option<u64>,
) -> Transcript {
    let channel = server.channel().await;
    let stream = open_stream(channel, first, token, offset).await;
    stream.expect("the call").finish().await
}

/// Asserts that a returning client came back to the running session
/// (RUNNING first) and saw it exit with `code`.
fn assert_resumed_until_exit(back: &Transcript, code: i32) {
    let statuses = &back.statuses;
    let first = statuses.first().map(|s| s.0);
    assert_eq!(first, Some(WireStatus::Running), "{statuses:?}");
    let last = statuses.last().map(|s| (s.0, s.1));
    assert_eq!(last, Some((WireStatus::Exited, code)), "{statuses:?}");
}

fn refusal(back: &Transcript) -> Option<Code> {
    back.rpc.as_ref().map(|s| s.code())
}

#[tokio::test]
async fn a_cancelled_client_comes_back_to_late_output_and_the_exit_code() {
    need_docker!();
    let server = reattach_server().await;
    let id = format!("reattach-{}", marker());
    let cmd = ["sh", "-c", "sleep 1; echo late; exit 4"];
    server
        .start_and_vanish(start_named(&id, &cmd, false), None)
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let back = come_back(&server, start_named(&id, &cmd, false), None, None).await;
    assert_resumed_until_exit(&back, 4);
    assert_eq!(String::from_utf8_lossy(&back.stdout), "late\n");
    assert_eq!(back.statuses.last().unwrap().2, "");
    assert!(back.rpc.is_none(), "{:?}", back.rpc);
}

#[tokio::test]
async fn a_tty_shell_keeps_what_was_typed_across_a_dropped_connection() {
    need_docker!();
    let server = reattach_server().await;
    let id = format!("reattach-tty-{}", marker());
    let mut first = server
        .open_cuttable(start_named(&id, &["sh"], true), None)
        .await;
    first.started().await;
    first.send(input_msg("echo a-$((40+2))\n")).await;
    first.read_until("a-42").await;
    first.vanish(Duration::from_millis(500)).await;
    let mut again = server.open(start_named(&id, &["sh"], true)).await;
    assert_eq!(again.first_status().await.unwrap(), WireStatus::Running);
    again.send(input_msg("echo b-$((50+5))\n")).await;
    let seen = again.read_until("b-55").await;
    again.send(input_msg("exit 3\n")).await;
    let t = again.finish().await;
    assert_eq!(t.terminal().0, WireStatus::Exited, "{t:?} after {seen:?}");
    assert_eq!(t.terminal().1, 3);
}

#[tokio::test]
async fn a_flood_while_detached_keeps_the_newest_bytes_and_counts_the_rest() {
    need_docker!();
    let ring = 64 * 1024;
    let server = start_server(reattach_config(Duration::from_secs(10), ring)).await;
    let id = format!("reattach-flood-{}", marker());
    // 4 MiB of numbered lines, then a last line to look for.
    let cmd = ["sh", "-c", "sleep 0.5; seq 1 600000; echo the-end; sleep 4"];
    server
        .start_and_vanish(start_named(&id, &cmd, false), None)
        .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let listed = server.sessions("").await;
    let info = listed
        .sessions
        .iter()
        .find(|s| s.session_id == id)
        .unwrap_or_else(|| panic!("a detached session is listed: {listed:?}"));
    assert!(info.detached_at_unix_ms > 0, "{info:?}");
    assert!(info.replay_dropped_bytes > 3 << 20, "{info:?}");
    let back = come_back(&server, start_named(&id, &cmd, false), None, None).await;
    assert_resumed_until_exit(&back, 0);
    let out = back.stdout;
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
    need_docker!();
    let server = start_server(reattach_config(Duration::from_secs(1), 1 << 20)).await;
    let n = marker();
    let id = format!("reattach-expire-{n}");
    let cmd = ["sleep", &n.to_string()];
    server
        .start_and_vanish(start_named(&id, &cmd, false), None)
        .await;
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
    need_docker!();
    let (cfg, _tokens) = with_tokens(
        reattach_config(Duration::from_secs(10), 1 << 20),
        "alice-token\nbob-token\n",
    );
    let server = start_server(cfg).await;
    let n = marker();
    let id = format!("reattach-owner-{n}");
    let cmd = ["sleep", &n.to_string()];
    let first = start_named(&id, &cmd, false);
    let mut alice = server.open_cuttable(first, Some("alice-token")).await;
    alice.started().await;
    alice.vanish(Duration::from_millis(300)).await;

    let bob = come_back(
        &server,
        start_named(&id, &cmd, false),
        Some("bob-token"),
        None,
    )
    .await;
    assert_eq!(refusal(&bob), Some(Code::PermissionDenied));

    let mut other = req("some-other-container", &cmd);
    other.tty = false;
    let elsewhere = come_back(&server, start_msg(&id, other), Some("alice-token"), None).await;
    assert_eq!(refusal(&elsewhere), Some(Code::InvalidArgument));

    let again = start_named(&id, &cmd, false);
    let mut attached = server.open_cuttable(again, Some("alice-token")).await;
    assert_eq!(attached.first_status().await.unwrap(), WireStatus::Running);
    let twice = come_back(
        &server,
        start_named(&id, &cmd, false),
        Some("alice-token"),
        None,
    )
    .await;
    assert_eq!(refusal(&twice), Some(Code::AlreadyExists));
    attached.vanish(Duration::ZERO).await;
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
    need_docker!();
    let server = reattach_server().await;
    let id = format!("reattach-offset-{}", marker());
    let cmd = ["sh", "-c", "echo 0123456789; sleep 2"];
    let mut first = server
        .open_cuttable(start_named(&id, &cmd, false), None)
        .await;
    first.started().await;
    first.read_until("9").await;
    first.vanish(Duration::from_millis(300)).await;
    // The client says it kept only 4 bytes of what it was sent.
    let back = come_back(&server, start_named(&id, &cmd, false), None, Some(4)).await;
    assert_eq!(String::from_utf8_lossy(&back.stdout), "456789\n");
    assert_resumed_until_exit(&back, 0);
}

#[tokio::test]
async fn without_reattach_a_dropped_client_still_ends_the_session() {
    need_docker!();
    let server = start_server(config()).await;
    let n = marker();
    let id = format!("no-reattach-{n}");
    let cmd = ["sleep", &n.to_string()];
    server
        .start_and_vanish(start_named(&id, &cmd, false), None)
        .await;
    let left = wait_until_gone(shared_container(), &format!("sleep {n}"), GONE_WITHIN).await;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn a_pod_exec_websocket_comes_back_with_session_in_the_query() {
    need_docker!();
    let server = reattach_server().await;
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
    need_docker!();
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
    need_docker!();
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
    need_docker!();
    let server = reattach_server().await;
    let id = format!("reattach-winch-{}", marker());
    let script = "trap 'echo got-winch' WINCH; echo ready; while true; do sleep 0.1; done";
    let mut first = server
        .open_cuttable(start_named(&id, &["sh", "-c", script], true), None)
        .await;
    first.started().await;
    first.read_until("ready").await;
    first.vanish(Duration::from_millis(300)).await;
    let mut again = server
        .open(start_named(&id, &["sh", "-c", script], true))
        .await;
    assert_eq!(again.first_status().await.unwrap(), WireStatus::Running);
    again.read_until("got-winch").await;
}

#[tokio::test]
async fn shutdown_ends_detached_sessions_too() {
    need_docker!();
    let server = start_server(reattach_config(Duration::from_secs(60), 1 << 20)).await;
    let n = marker();
    let id = format!("reattach-shutdown-{n}");
    let cmd = ["sleep", &n.to_string()];
    server
        .start_and_vanish(start_named(&id, &cmd, false), None)
        .await;
    server.stop().await;
    let left = wait_until_gone(shared_container(), &format!("sleep {n}"), GONE_WITHIN).await;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn a_ring_smaller_than_a_read_never_holds_back_an_attached_session() {
    need_docker!();
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
