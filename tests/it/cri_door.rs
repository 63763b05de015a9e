//! CRI `runtime.v1.RuntimeService` against the real engine, with a tonic
//! client generated from proto/cri_runtime.proto: ExecSync, Exec and
//! Attach URLs, then the streams on those URLs with a raw WebSocket client.

use crate::common::kube_ws;

use std::time::Duration;

use crate::common::*;
use execd_proto::cri::runtime_service_client::RuntimeServiceClient;
use execd_proto::cri::{AttachRequest, ExecRequest, ExecSyncRequest};
use kube_ws::*;
use tonic::transport::Channel;
use tonic::Code;

async fn cri(server: &TestServer) -> RuntimeServiceClient<Channel> {
    RuntimeServiceClient::new(server.channel().await)
}

fn exec_req(container: &str, cmd: &[&str]) -> ExecRequest {
    ExecRequest {
        container_id: container.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty: false,
        stdin: false,
        stdout: true,
        stderr: true,
    }
}

/// The path part of a streaming URL issued for `server`.
fn url_path(server: &TestServer, url: &str) -> String {
    url.strip_prefix(&server.addr)
        .unwrap_or_else(|| panic!("{url} is not under {}", server.addr))
        .to_string()
}

/// The path of the Exec URL `server` issues for `cmd` in the shared
/// container.
async fn exec_url_path(server: &TestServer, cmd: &[&str]) -> String {
    let url = cri(server)
        .await
        .exec(exec_req(shared_container(), cmd))
        .await
        .expect("Exec")
        .into_inner()
        .url;
    url_path(server, &url)
}

#[tokio::test]
async fn exec_sync_returns_output_and_exit_code_and_kills_on_timeout() {
    need_docker!();
    let server = start_server(config()).await;
    let mut client = cri(&server).await;
    let resp = client
        .exec_sync(ExecSyncRequest {
            container_id: shared_container().into(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "echo out; echo err >&2; exit 3".into(),
            ],
            timeout: 0,
        })
        .await
        .expect("ExecSync")
        .into_inner();
    assert_eq!(&resp.stdout[..], b"out\n");
    assert_eq!(&resp.stderr[..], b"err\n");
    assert_eq!(resp.exit_code, 3);

    let m = marker();
    let err = client
        .exec_sync(ExecSyncRequest {
            container_id: shared_container().into(),
            cmd: vec!["sleep".into(), m.to_string()],
            timeout: 1,
        })
        .await
        .expect_err("timeout");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    let left = wait_until_gone(shared_container(), &format!("sleep {m}"), PATIENCE).await;
    assert!(left.is_empty(), "killed on timeout: {left:?}");
    server.stop().await;
}

#[tokio::test]
async fn exec_url_streams_once_and_only_once() {
    need_docker!();
    let server = start_server(config()).await;
    let path = exec_url_path(&server, &["sh", "-c", "echo via-cri; exit 4"]).await;
    assert!(path.starts_with("/exec/"), "{path}");
    assert_eq!(path.len(), "/exec/".len() + 32, "128-bit token: {path}");
    let mut ws = connect(&server.addr, &path, V5, &[])
        .await
        .expect("upgraded");
    let t = read_all(&mut ws, PATIENCE).await;
    assert_eq!(t.stdout_str(), "via-cri\n");
    assert_eq!(t.status()["details"]["causes"][0]["message"], "4");
    let again = connect(&server.addr, &path, V5, &[])
        .await
        .err()
        .expect("used");
    assert_eq!(again.code, 404);
    let unknown = connect(
        &server.addr,
        "/exec/00000000000000000000000000000000",
        V5,
        &[],
    )
    .await
    .err()
    .expect("unknown");
    assert_eq!(unknown.code, 404);
    // An exec URL is not an attach URL.
    let path = exec_url_path(&server, &["true"]).await;
    let swapped = path.replacen("/exec/", "/attach/", 1);
    assert_eq!(
        connect(&server.addr, &swapped, V5, &[])
            .await
            .err()
            .unwrap()
            .code,
        404
    );
    server.stop().await;
}

#[tokio::test]
async fn expired_urls_are_gone_and_outstanding_ones_are_bounded() {
    need_docker!();
    let mut cfg = config();
    cfg.stream_token_ttl = Duration::from_millis(300);
    let server = start_server(cfg).await;
    let path = exec_url_path(&server, &["true"]).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let r = connect(&server.addr, &path, V5, &[])
        .await
        .err()
        .expect("expired");
    assert_eq!(r.code, 404);
    server.stop().await;

    let mut cfg = config();
    cfg.stream_token_ttl = Duration::from_secs(600);
    let server = start_server(cfg).await;
    let client = cri(&server).await;
    let mut calls = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let mut client = client.clone();
        calls.spawn(async move {
            for _ in 0..125 {
                client
                    .exec(exec_req(shared_container(), &["true"]))
                    .await
                    .unwrap_or_else(|e| panic!("worker {worker}: {e:?}"));
            }
        });
    }
    while let Some(done) = calls.join_next().await {
        done.unwrap();
    }
    let err = client
        .clone()
        .exec(exec_req(shared_container(), &["true"]))
        .await
        .expect_err("1001st");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    server.stop().await;
}

#[tokio::test]
async fn requests_are_validated_before_a_url_is_issued() {
    need_docker!();
    let server = start_server(config()).await;
    let mut client = cri(&server).await;
    let c = shared_container();
    let mut none = exec_req(c, &["true"]);
    none.stdout = false;
    none.stderr = false;
    let mut tty_stderr = exec_req(c, &["true"]);
    tty_stderr.tty = true;
    // What a session start refuses for its spec is refused here, before a
    // URL exists: the same validation, not a 400 on the URL later.
    let many_args = vec!["x"; 5000];
    let huge_arg = "x".repeat(300 * 1024);
    for (req, code) in [
        (none, Code::InvalidArgument),
        (tty_stderr, Code::InvalidArgument),
        (exec_req(c, &[]), Code::InvalidArgument),
        (exec_req(c, &[""]), Code::InvalidArgument),
        (exec_req(c, &["echo", "a\0b"]), Code::InvalidArgument),
        (exec_req(c, &many_args), Code::InvalidArgument),
        (exec_req(c, &["echo", &huge_arg]), Code::InvalidArgument),
        (exec_req("-bad", &["true"]), Code::InvalidArgument),
        (
            exec_req("execd-no-such-container", &["true"]),
            Code::NotFound,
        ),
    ] {
        let err = client.exec(req.clone()).await.expect_err("refused");
        let shown: String = format!("{req:?}").chars().take(200).collect();
        assert_eq!(err.code(), code, "{shown}: {err:?}");
    }
    // Created, never started: not running.
    let created = ContainerSpec::new("cri-created", &["true"]).create();
    let name = created.0.clone();
    let err = client
        .exec(exec_req(&name, &["true"]))
        .await
        .expect_err("not running");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let err = client
        .exec_sync(ExecSyncRequest {
            container_id: name.clone(),
            cmd: vec!["true".into()],
            timeout: 0,
        })
        .await
        .expect_err("not running");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    drop(created);
    // Attach asking for stdin on a container without an open stdin.
    let err = client
        .attach(AttachRequest {
            container_id: c.into(),
            stdin: true,
            tty: false,
            stdout: true,
            stderr: false,
        })
        .await
        .expect_err("no open stdin");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    // Other upstream methods are absent.
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    grpc.ready().await.unwrap();
    let codec =
        tonic_prost::ProstCodec::<AttachRequest, execd_proto::cri::AttachResponse>::default();
    let err = grpc
        .unary(
            tonic::Request::new(AttachRequest::default()),
            http::uri::PathAndQuery::from_static("/runtime.v1.RuntimeService/Version"),
            codec,
        )
        .await
        .expect_err("unimplemented");
    assert_eq!(err.code(), Code::Unimplemented);
    server.stop().await;
}

#[tokio::test]
async fn attach_url_joins_pid1_and_leaving_keeps_it_running() {
    need_docker!();
    let server = start_server(config()).await;
    let c = ContainerSpec::shell("attach-cri").run();
    let name = c.0.clone();
    let mut client = cri(&server).await;
    let url = client
        .attach(AttachRequest {
            container_id: name.clone(),
            stdin: true,
            tty: true,
            stdout: true,
            stderr: false,
        })
        .await
        .expect("Attach")
        .into_inner()
        .url;
    let path = url_path(&server, &url);
    assert!(path.starts_with("/attach/"), "{url}");
    let mut ws = connect(&server.addr, &path, V5, &[])
        .await
        .expect("attached");
    type_until(&mut ws, b"echo cri-attached-$((6*7))\n", "cri-attached-42").await;
    drop(ws);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(c.running(), "PID 1 keeps running");
    server.stop().await;
}

#[tokio::test]
async fn cri_calls_need_the_token_but_urls_are_the_capability() {
    need_docker!();
    let (cfg, _tokens) = with_tokens(config(), "cri-s3cret\n");
    let server = start_server(cfg).await;
    let mut client = cri(&server).await;
    let err = client
        .exec(exec_req(shared_container(), &["echo", "x"]))
        .await
        .expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut req = tonic::Request::new(exec_req(shared_container(), &["echo", "x"]));
    req.metadata_mut()
        .insert("authorization", "Bearer cri-s3cret".parse().unwrap());
    let url = client.exec(req).await.expect("with token").into_inner().url;
    let mut ws = connect(&server.addr, &url_path(&server, &url), V4, &[])
        .await
        .expect("the URL needs no token");
    assert_eq!(read_all(&mut ws, PATIENCE).await.stdout_str(), "x\n");
    server.stop().await;
}

#[tokio::test]
async fn a_url_survives_refused_requests_and_upgrades_exactly_once() {
    need_docker!();
    let server = start_server(config()).await;
    let path = exec_url_path(&server, &["echo", "only-once"]).await;
    // A prefetcher's plain GET, and an offer of nothing execd speaks, are
    // refused without spending the URL.
    let plain = plain_get(&server.addr, &path).await;
    assert!(plain.starts_with("HTTP/1.1 400"), "{plain}");
    let bad = connect(&server.addr, &path, "v9.bogus.k8s.io", &[])
        .await
        .err()
        .expect("no common subprotocol");
    assert_eq!(bad.code, 400, "{:?}", bad.body);
    // Then 20 clients race for it: one stream, 19 NotFound.
    let mut racers = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (addr, path) = (server.addr.clone(), path.clone());
        racers.spawn(async move { connect(&addr, &path, V5, &[]).await });
    }
    let (mut winners, mut refused) = (Vec::new(), Vec::new());
    while let Some(done) = racers.join_next().await {
        match done.unwrap() {
            Ok(ws) => winners.push(ws),
            Err(r) => refused.push(r.code),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one 101; refused: {refused:?}");
    assert!(refused.iter().all(|&c| c == 404), "{refused:?}");
    let t = read_all(&mut winners[0], PATIENCE).await;
    assert_eq!(t.stdout_str(), "only-once\n");
    server.stop().await;
}

#[tokio::test]
async fn outstanding_urls_are_capped_per_token() {
    need_docker!();
    use execd::doors::kube::tokens::MAX_PENDING_PER_OWNER;
    let (mut cfg, _tokens) = with_tokens(config(), "cri-a\ncri-b\n");
    cfg.stream_token_ttl = Duration::from_secs(600);
    let server = start_server(cfg).await;
    let client = cri(&server).await;
    let exec_as = |token: &'static str| {
        let mut client = client.clone();
        async move {
            let mut req = tonic::Request::new(exec_req(shared_container(), &["echo", token]));
            req.metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            client.exec(req).await.map(|r| r.into_inner().url)
        }
    };
    let mut urls = Vec::new();
    for _ in 0..MAX_PENDING_PER_OWNER {
        urls.push(exec_as("cri-a").await.expect("within the cap"));
    }
    let err = exec_as("cri-a").await.expect_err("over the cap");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("this token"), "{err:?}");
    // Another token is not held back by the first one's URLs.
    exec_as("cri-b").await.expect("the other token");
    // A used URL gives its slot back.
    let mut ws = connect(&server.addr, &url_path(&server, &urls[0]), V5, &[])
        .await
        .expect("upgraded");
    assert_eq!(read_all(&mut ws, PATIENCE).await.stdout_str(), "cri-a\n");
    exec_as("cri-a").await.expect("a slot again");
    server.stop().await;
}
