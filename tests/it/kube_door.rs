//! The kube door against the real engine, with independent clients: the
//! remotecommand WebSocket protocol spoken raw (tokio-tungstenite) on the
//! pod exec/attach paths, and the official Python `kubernetes` client
//! (tests/python/kube_client.py) pointed at execd as its API server.

use crate::common::kube_ws;

use std::time::Duration;

use crate::common::*;
use kube_ws::*;

const OUT_ERR: &str = "stdout=true&stderr=true";

#[tokio::test]
async fn exec_v5_splits_stdout_and_stderr_and_ends_with_success() {
    need_docker!();
    let server = start_server(config()).await;
    let path = exec_path(
        shared_container(),
        &["sh", "-c", "echo out; echo err >&2"],
        OUT_ERR,
    );
    let mut ws = connect(&server.addr, &path, &format!("{V5}, {V4}"), &[])
        .await
        .expect("upgraded");
    assert_eq!(ws.protocol.as_deref(), Some(V5), "newest protocol chosen");
    assert_eq!(ws.connection.as_deref(), Some("Upgrade"));
    let t = read_all(&mut ws, PATIENCE).await;
    assert_eq!(t.stdout_str(), "out\n");
    assert_eq!(t.stderr_str(), "err\n");
    assert_eq!(
        t.status().to_string(),
        r#"{"metadata":{},"status":"Success"}"#
    );
    assert_eq!(t.close_code, Some(normal_close()));
    assert_eq!(t.after_status, 0);
    server.stop().await;
}

#[tokio::test]
async fn exec_v4_non_zero_exit_is_a_failure_status_with_the_exit_code_first() {
    need_docker!();
    let server = start_server(config()).await;
    let path = exec_path(shared_container(), &["sh", "-c", "exit 3"], "stdout=1");
    let mut ws = connect(&server.addr, &path, V4, &[])
        .await
        .expect("upgraded");
    assert_eq!(ws.protocol.as_deref(), Some(V4));
    let status = read_all(&mut ws, PATIENCE).await.status();
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["reason"], "ExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "3");
    assert!(status["message"]
        .as_str()
        .unwrap()
        .starts_with("command terminated with non-zero exit code"));
    server.stop().await;
}

#[tokio::test]
async fn one_mib_of_stdin_round_trips_then_v5_closes_stdin() {
    need_docker!();
    let server = start_server(config()).await;
    let path = exec_path(shared_container(), &["cat"], "stdin=true&stdout=true");
    let ws = connect(&server.addr, &path, V5, &[])
        .await
        .expect("upgraded");
    let data: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    // Written while reading, so neither side's buffers decide the outcome.
    let (mut tx, mut rx) = {
        use futures_util::StreamExt;
        let Ws {
            socket, protocol, ..
        } = ws;
        let (tx, rx) = socket.split();
        (tx, Ws_reader { rx, protocol })
    };
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        use futures_util::SinkExt;
        use tokio_tungstenite::tungstenite::Message;
        for chunk in sent.chunks(64 * 1024) {
            let mut f = vec![0u8];
            f.extend_from_slice(chunk);
            tx.send(Message::Binary(f.into())).await.unwrap();
        }
        tx.send(Message::Binary(vec![255u8, 0].into()))
            .await
            .unwrap();
        tx
    });
    let t = rx.read_all().await;
    let _tx = writer.await.unwrap();
    assert_eq!(t.stdout.len(), data.len());
    assert!(t.stdout == data, "stdin came back byte for byte");
    assert_eq!(t.status()["status"], "Success");
    server.stop().await;
}

/// Reading half of a split socket (the writing half lives in a task).
#[allow(non_camel_case_types)]
struct Ws_reader {
    rx: futures_util::stream::SplitStream<Socket>,
    protocol: Option<String>,
}

impl Ws_reader {
    async fn read_all(&mut self) -> WsTranscript {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let mut t = WsTranscript::default();
        let _ = &self.protocol;
        tokio::time::timeout(PATIENCE, async {
            while let Some(Ok(msg)) = self.rx.next().await {
                if let Message::Binary(b) = msg {
                    match b.first() {
                        Some(1) => t.stdout.extend_from_slice(&b[1..]),
                        Some(2) => t.stderr.extend_from_slice(&b[1..]),
                        Some(3) => t.errors.push(b[1..].to_vec()),
                        _ => {}
                    }
                }
            }
        })
        .await
        .expect("stream ends");
        t
    }
}

#[tokio::test]
async fn tty_takes_resizes_sent_as_text_frames() {
    need_docker!();
    let server = start_server(config()).await;
    let path = exec_path(
        shared_container(),
        &["sh", "-c", "sleep 1; stty size"],
        "stdin=true&stdout=true&stderr=true&tty=true",
    );
    let mut ws = connect(&server.addr, &path, V5, &[])
        .await
        .expect("upgraded");
    // The Python client sends resize as a text frame starting with "\x04".
    send_text(&mut ws, 4, r#"{"Width":100,"Height":30}"#).await;
    let t = read_all(&mut ws, PATIENCE).await;
    assert!(t.stdout_str().contains("30 100"), "{:?}", t.stdout_str());
    assert!(t.stderr.is_empty(), "a terminal merges stderr");
    assert_eq!(t.status()["status"], "Success");
    server.stop().await;
}

#[tokio::test]
async fn older_protocols_and_base64_for_browsers() {
    need_docker!();
    let server = start_server(config()).await;
    let path = exec_path(
        shared_container(),
        &["sh", "-c", "echo hi; exit 2"],
        OUT_ERR,
    );
    let mut ws = connect(&server.addr, &path, "channel.k8s.io", &[])
        .await
        .expect("upgraded");
    let t = read_all(&mut ws, PATIENCE).await;
    assert_eq!(t.stdout_str(), "hi\n");
    assert_eq!(t.errors.len(), 1);
    assert!(String::from_utf8_lossy(&t.errors[0]).contains("non-zero exit code"));

    let mut ws = connect(&server.addr, &path, "base64.channel.k8s.io", &[])
        .await
        .expect("upgraded");
    assert_eq!(ws.protocol.as_deref(), Some("base64.channel.k8s.io"));
    let t = read_all(&mut ws, PATIENCE).await;
    assert_eq!(t.stdout_str(), "hi\n");

    let refused = connect(&server.addr, &path, "v3.channel.k8s.io", &[])
        .await
        .err()
        .expect("unknown protocol refused");
    assert_eq!(refused.code, 400);
    assert_eq!(refused.body["kind"], "Status");
    server.stop().await;
}

#[tokio::test]
async fn pings_are_answered() {
    need_docker!();
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let server = start_server(config()).await;
    let path = exec_path(shared_container(), &["sleep", "2"], "stdout=true");
    let mut ws = connect(&server.addr, &path, V5, &[])
        .await
        .expect("upgraded");
    ws.socket
        .send(Message::Ping(b"are-you-there"[..].into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(PATIENCE, async {
        while let Some(Ok(msg)) = ws.socket.next().await {
            if let Message::Pong(p) = msg {
                return p.to_vec();
            }
        }
        Vec::new()
    })
    .await
    .unwrap();
    assert_eq!(pong, b"are-you-there");
    server.stop().await;
}

#[tokio::test]
async fn disconnect_kills_the_exec_in_the_container() {
    need_docker!();
    let server = start_server(config()).await;
    let container = shared_container();
    let m = marker();
    let path = exec_path(container, &["sleep", &m.to_string()], "stdout=true");
    let ws = connect(&server.addr, &path, V5, &[])
        .await
        .expect("upgraded");
    wait_until_running(container, &format!("sleep {m}")).await;
    drop(ws);
    let left = wait_until_gone(container, &format!("sleep {m}"), PATIENCE).await;
    assert!(left.is_empty(), "still running: {left:?}");
    server.stop().await;
}

#[tokio::test]
async fn refusals_come_before_the_upgrade_as_status_objects() {
    need_docker!();
    let server = start_server(config()).await;
    let nosuch = exec_path("execd-no-such-container", &["true"], "stdout=true");
    let r = connect(&server.addr, &nosuch, V5, &[])
        .await
        .err()
        .expect("404");
    assert_eq!(r.code, 404);
    assert_eq!(r.body["reason"], "NotFound");
    assert_eq!(r.body["status"], "Failure");
    assert_eq!(r.body["code"], 404);
    let no_streams = exec_path(shared_container(), &["true"], "");
    let r = connect(&server.addr, &no_streams, V5, &[])
        .await
        .err()
        .expect("400");
    assert_eq!(
        (r.code, r.body["reason"].as_str()),
        (400, Some("BadRequest"))
    );
    let no_command = exec_path(shared_container(), &[], "stdout=true");
    assert_eq!(
        connect(&server.addr, &no_command, V5, &[])
            .await
            .err()
            .unwrap()
            .code,
        400
    );
    // A plain request (no upgrade) on the path is not the kube door's.
    let plain = plain_get(
        &server.addr,
        &exec_path(shared_container(), &["true"], "stdout=1"),
    )
    .await;
    assert!(plain.starts_with("HTTP/1.1 400"), "{plain}");
    server.stop().await;
}

/// A server configuration that takes the token `kube-s3cret`, and the
/// directory of its token file.
fn auth_config() -> (execd::ServerConfig, tempfile::TempDir) {
    with_tokens(config(), "kube-s3cret\n")
}

#[tokio::test]
async fn bearer_token_in_header_or_subprotocol_never_in_the_query() {
    need_docker!();
    use base64::Engine as _;
    let (cfg, _tokens) = auth_config();
    let server = start_server(cfg).await;
    let path = exec_path(shared_container(), &["echo", "ok"], "stdout=true");
    for (protocols, headers) in [
        (V5.to_string(), vec![]),
        (V5.to_string(), vec![("authorization", "Bearer wrong")]),
    ] {
        let r = connect(&server.addr, &path, &protocols, &headers)
            .await
            .err()
            .expect("refused");
        assert_eq!(r.code, 401);
        assert_eq!(r.body["reason"], "Unauthorized");
    }
    let mut ws = connect(
        &server.addr,
        &path,
        V5,
        &[("authorization", "Bearer kube-s3cret")],
    )
    .await
    .expect("header token accepted");
    assert_eq!(read_all(&mut ws, PATIENCE).await.stdout_str(), "ok\n");
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("kube-s3cret");
    let protocols = format!("{V4}, base64url.bearer.authorization.k8s.io.{b64}");
    let mut ws = connect(&server.addr, &path, &protocols, &[])
        .await
        .expect("subprotocol token accepted");
    assert_eq!(ws.protocol.as_deref(), Some(V4), "the token is not echoed");
    assert_eq!(read_all(&mut ws, PATIENCE).await.stdout_str(), "ok\n");
    let with_query = format!("{path}&access_token=kube-s3cret");
    let r = connect(
        &server.addr,
        &with_query,
        V5,
        &[("authorization", "Bearer kube-s3cret")],
    )
    .await
    .err()
    .expect("query token refused");
    assert_eq!(r.code, 400);
    server.stop().await;
}

#[tokio::test]
async fn attach_to_pid1_shell_twice_and_leaving_keeps_it_running() {
    need_docker!();
    let server = start_server(config()).await;
    let c = ContainerSpec::shell("attach-kube").run();
    let path = format!(
        "/api/v1/namespaces/default/pods/pod-x/attach?container={}&stdin=true&stdout=true&tty=true",
        c.0
    );
    let mut first = connect(&server.addr, &path, V5, &[])
        .await
        .expect("attached");
    let mut second = connect(&server.addr, &path, V5, &[])
        .await
        .expect("second attacher");
    // $((6*7)) is computed by the shell: seeing 42 means PID 1 ran it.
    type_until(&mut first, b"echo attached-$((6*7))\n", "attached-42").await;
    // The second client sees PID 1's output too (typing through it as
    // well, since its attach may have come up after the first echo).
    type_until(&mut second, b"echo attached-$((6*7))\n", "attached-42").await;
    // Closing stdin (v5) on an attach must not type ^D into PID 1's shell.
    send(&mut first, 255, &[0]).await;
    drop(first);
    drop(second);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(c.running(), "PID 1 survives the attachers leaving");
    // Not open-stdin: attaching with stdin is refused before the upgrade.
    let path = format!(
        "/api/v1/namespaces/default/pods/p/attach?container={}&stdin=true&stdout=true",
        shared_container()
    );
    let r = connect(&server.addr, &path, V5, &[])
        .await
        .err()
        .expect("400");
    assert_eq!(r.code, 400);
    assert!(r.body["message"].as_str().unwrap().contains("open stdin"));
    server.stop().await;
}

/// The official Python client, as a kube user would run it.
#[tokio::test]
async fn python_kubernetes_client_exec_and_attach() {
    need_docker!();
    let Some(python) = python_with(module_path!(), "import kubernetes", "kubernetes package")
    else {
        return;
    };
    let (cfg, _tokens) = auth_config();
    let server = start_server(cfg).await;
    let c = ContainerSpec::shell("attach-py").run();
    let mut client = python_script(&python, "kube_client.py");
    client.args([&server.addr, "kube-s3cret", shared_container(), &c.0]);
    // Only stops a hang: the client bounds its own calls.
    let report: serde_json::Value = json_of(&mut client, Duration::from_secs(300)).await;
    assert_eq!(report["split"]["stdout"], "out\n", "{report}");
    assert_eq!(report["split"]["stderr"], "err\n", "{report}");
    assert_eq!(report["split"]["returncode"], 3, "{report}");
    assert_eq!(report["preload"], "hello-preload\n", "{report}");
    assert_eq!(
        report["stdin"]["stdout"], "line one\nline two\n",
        "{report}"
    );
    assert_eq!(report["stdin"]["returncode"], 0, "{report}");
    assert!(
        report["tty"].as_str().unwrap().contains("33 111"),
        "{report}"
    );
    assert!(
        report["attach"]
            .as_str()
            .unwrap()
            .contains("py-attached-42"),
        "{report}"
    );
    let unauthorized = report["unauthorized"].to_string();
    assert!(unauthorized.contains("401"), "{report}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(c.running(), "PID 1 survives the Python attacher");
    server.stop().await;
}

/// One registry under every door: a gRPC session and a kube session are
/// listed side by side with their door and kind, and one admin close ends
/// both (the WebSocket client gets a Failure status naming the reason).
#[tokio::test]
async fn sessions_of_every_door_are_listed_and_closed_by_the_admin_api() {
    need_docker!();
    let server = start_server(config()).await;
    let container = shared_container();
    let (m1, m2) = (marker(), marker());
    let mut grpc_req = req(container, &["sleep", &m1.to_string()]);
    grpc_req.instance_id = container.to_string();
    let mut grpc = server.exec(grpc_req).await;
    grpc.started().await;
    let path = exec_path(container, &["sleep", &m2.to_string()], "stdout=true");
    let mut ws = connect(&server.addr, &path, V5, &[])
        .await
        .expect("upgraded");
    wait_until_running(container, &format!("sleep {m2}")).await;

    let mut admin = server.admin().await;
    let listed = admin
        .list_sessions(execd_proto::admin::ListSessionsRequest {
            instance_id: container.to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut doors: Vec<(String, String)> = listed
        .sessions
        .iter()
        .map(|s| (s.door.clone(), s.kind.clone()))
        .collect();
    doors.sort();
    assert_eq!(
        doors,
        [
            ("grpc".to_string(), "exec".to_string()),
            ("kube".to_string(), "exec".to_string())
        ]
    );
    assert_eq!(listed.active_per_instance.get(container), Some(&2));

    let closed = admin
        .close_sessions(execd_proto::admin::CloseSessionsRequest {
            target: Some(
                execd_proto::admin::close_sessions_request::Target::InstanceId(
                    container.to_string(),
                ),
            ),
            reason: "door-test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(closed.closed, 2);
    let t = read_all(&mut ws, PATIENCE).await;
    let status = t.status();
    assert_eq!(status["status"], "Failure", "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap_or_default()
            .contains("door-test"),
        "{status}"
    );
    assert_eq!(
        grpc.finish().await.assert_error(tonic::Code::Aborted),
        "closed: door-test"
    );
    for m in [m1, m2] {
        let left = wait_until_gone(container, &format!("sleep {m}"), PATIENCE).await;
        assert!(left.is_empty(), "{left:?}");
    }
    server.stop().await;
}

/// `--max-sessions-per-token` holds on this door too: a token's second
/// session is refused (429) while its first runs.
#[tokio::test]
async fn the_per_token_limit_holds_on_the_kube_door() {
    need_docker!();
    let (mut cfg, _tokens) = auth_config();
    cfg.manager.limits.max_sessions_per_owner = 1;
    let server = start_server(cfg).await;
    let m = marker();
    let auth = [("authorization", "Bearer kube-s3cret")];
    let path = exec_path(
        shared_container(),
        &["sleep", &m.to_string()],
        "stdout=true",
    );
    let first = connect(&server.addr, &path, V5, &auth)
        .await
        .expect("the first session");
    wait_until_running(shared_container(), &format!("sleep {m}")).await;
    let refused = connect(&server.addr, &path, V5, &auth)
        .await
        .err()
        .expect("the second is over the limit");
    assert_eq!(refused.code, 429, "{:?}", refused.body);
    assert!(
        refused.body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("max-sessions-per-token"),
        "{:?}",
        refused.body
    );
    drop(first);
    server.stop().await;
}
