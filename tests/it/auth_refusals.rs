//! Refused credentials: a request with two `Authorization` fields (one
//! right, one wrong, in either order) is refused on every door and runs
//! nothing; refusals are counted in `/metrics` by door and reason; the log
//! holds a bounded number of lines however many are refused; a token too
//! short to resist guessing is warned about at start.

use crate::common;

use std::time::{Duration, Instant};

use crate::common::*;
use execd_proto::exec_service::exec_service_client::ExecServiceClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

const RIGHT: &str = "right-0123456789abcdef0123456789abcdef";
const WRONG: &str = "wrong-0123456789abcdef0123456789abcdef";

/// The status code of a raw HTTP/1.1 request to `host_port`.
async fn status_of(host_port: &str, head: &str) -> u16 {
    let mut conn = tokio::net::TcpStream::connect(host_port).await.unwrap();
    let request = format!("{head}Host: {host_port}\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.windows(2).any(|w| w == b"\r\n") {
        let n = tokio::time::timeout(PATIENCE, conn.read(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "closed without a status line: {answer:?}");
        answer.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&answer);
    line.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {line:?}"))
}

/// Header lines carrying `tokens` in `field`, one field each.
fn fields(field: &str, tokens: &[&str]) -> String {
    tokens.iter().map(|t| format!("{field}: {t}\r\n")).collect()
}

const UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

/// One request of each HTTP door, carrying `auth` (header lines); `n`
/// makes its command findable in the container.
fn door_requests(container: &str, n: u32, auth: &str) -> Vec<(&'static str, String)> {
    let pod_exec = format!(
        "/api/v1/namespaces/default/pods/{container}/exec?command=sleep&command={n}&stdout=1"
    );
    let terminal = format!("/terminal/ws?instance={container}&command=sleep%20{n}");
    let body = format!(r#"{{"Cmd":["sleep","{n}"],"AttachStdout":true}}"#);
    vec![
        (
            "docker",
            format!(
                "POST /v1.44/containers/{container}/exec HTTP/1.1\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        ),
        ("kube", format!("GET {pod_exec} HTTP/1.1\r\n{auth}{UPGRADE}")),
        ("web", format!("GET /api/containers HTTP/1.1\r\n{auth}")),
        ("terminal", format!("GET {terminal} HTTP/1.1\r\n{auth}{UPGRADE}")),
    ]
}

/// `ExecStream` running `sleep n` with these `authorization` entries.
async fn grpc_with(server: &TestServer, n: u32, auth: &[&str]) -> Result<(), tonic::Status> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let sleep = n.to_string();
    tx.send(start_msg("", req(shared_container(), &["sleep", &sleep])))
        .await
        .unwrap();
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    for value in auth {
        request
            .metadata_mut()
            .append("authorization", value.parse().unwrap());
    }
    let mut stream = ExecServiceClient::new(server.channel().await)
        .exec_stream(request)
        .await?
        .into_inner();
    // STARTED is enough: the session ends with the call.
    stream.message().await?;
    Ok(())
}

/// Two `Authorization` fields, the right token in either one, are refused
/// by gRPC and by every HTTP door (401), nothing is started, and each
/// door's refusals show in `/metrics`; one right field passes.
#[tokio::test]
async fn two_authorization_fields_are_refused_on_every_door() {
    need_docker!();
    let metrics_port = common::free_port();
    let (mut cfg, _tokens) = with_tokens(config(), &format!("{RIGHT}\n"));
    cfg.web.enabled = true;
    cfg.metrics_listen = Some(format!("127.0.0.1:{metrics_port}").parse().unwrap());
    let server = start_server(cfg).await;
    let host_port = server.host_port().to_string();
    let container = shared_container();
    let right = format!("Bearer {RIGHT}");
    let wrong = format!("Bearer {WRONG}");
    let n = marker();

    let orders = [[&right, &wrong], [&wrong, &right]];
    for (i, order) in orders.iter().enumerate() {
        let both = fields("Authorization", &[order[0], order[1]]);
        for (door, request) in door_requests(container, n + i as u32, &both) {
            assert_eq!(
                status_of(&host_port, &request).await,
                401,
                "{door} {order:?}"
            );
        }
        // The terminal's own header, twice, is as ambiguous.
        let x_auth = fields("X-Auth", &[order[0], order[1]]);
        let (_, terminal) = door_requests(container, n + i as u32, &x_auth)
            .pop()
            .unwrap();
        assert_eq!(
            status_of(&host_port, &terminal).await,
            401,
            "X-Auth {order:?}"
        );
        let err = grpc_with(&server, n + i as u32, &[order[0], order[1]])
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
        assert!(err.message().contains("ambiguous"), "{err:?}");
        for secret in [RIGHT, WRONG] {
            assert!(!err.message().contains(secret), "{err:?}");
        }
    }
    for i in 0..2 {
        let left = container_processes(container, &format!("sleep {}", n + i));
        assert!(
            left.is_empty(),
            "an ambiguous request ran something: {left:?}"
        );
    }

    // One right field passes every door.
    let one = fields("Authorization", &[&right]);
    for (door, request) in door_requests(container, n + 2, &one) {
        let code = status_of(&host_port, &request).await;
        let expected = match door {
            "docker" => 201,
            "web" => 200,
            _ => 101,
        };
        assert_eq!(code, expected, "{door}");
    }
    grpc_with(&server, n + 2, &[&right]).await.unwrap();

    let text = reqwest_metrics(metrics_port).await;
    for door in ["docker", "kube", "web", "terminal"] {
        let line =
            format!(r#"execd_requests_refused_total{{door="{door}",reason="unauthenticated"}}"#);
        let count: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {line} in {text}"));
        let expected = if door == "terminal" { 4 } else { 2 };
        assert_eq!(count, expected, "{door}");
    }
    server.stop().await;
}

/// `GET /metrics` on the metrics port.
async fn reqwest_metrics(port: u16) -> String {
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(PATIENCE, conn.read_to_end(&mut out))
        .await
        .expect("metrics in time")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// The `suppressed=N` of a refusal log line.
fn suppressed(line: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("suppressed="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no suppressed= in {line:?}"))
}

/// A flood of wrong tokens writes at most a few warning lines a second;
/// the next line written says how many were left out.
#[tokio::test]
async fn refused_credentials_are_logged_at_a_bounded_rate() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{RIGHT}\n")).unwrap();
    let tokens_arg = tokens.display().to_string();
    let execd =
        ExecdProcess::start_logging(&["--host-exec", "--auth-token-file", &tokens_arg]).await;
    let refuse = || async {
        let mut client = ExecServiceClient::new(execd.channel.clone());
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(start_msg("", req("", &["true"]))).await.unwrap();
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {WRONG}").parse().unwrap());
        let err = client.exec_stream(request).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    };
    let flood = 300;
    let began = Instant::now();
    for _ in 0..flood {
        refuse().await;
    }
    let took = began.elapsed();
    // A later window: its first line reports what the flood left out.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    refuse().await;
    let log = String::from_utf8_lossy(&execd.log_text()).into_owned();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("request refused"))
        .collect();
    let windows = took.as_secs() + 3;
    let allowed = execd::auth::MAX_LINES_PER_SECOND as u64 * windows;
    assert!(
        (lines.len() as u64) <= allowed,
        "{} lines for {flood} refusals in {took:?}",
        lines.len()
    );
    let written = lines.len() as u64;
    let left_out: u64 = lines.iter().map(|l| suppressed(l)).sum();
    assert_eq!(
        written + left_out,
        flood + 1,
        "every refusal is written or counted"
    );
    assert!(!log.contains(WRONG), "a token reached the log");
    execd.terminate().await;
}

/// The counter of `door`'s refused credentials in a scrape (0 before the
/// first).
fn refused(metrics: &std::collections::HashMap<String, f64>, door: &str) -> f64 {
    let series =
        format!(r#"execd_requests_refused_total{{door="{door}",reason="unauthenticated"}}"#);
    metrics.get(&series).copied().unwrap_or(0.0)
}

/// One call with a wrong token to a gRPC service (ExecStream, CRI
/// ExecSync, admin ListSessions), which must answer UNAUTHENTICATED.
async fn wrong_token_on(door: &str, channel: tonic::transport::Channel) {
    use execd_proto::admin::session_admin_client::SessionAdminClient;
    use execd_proto::admin::ListSessionsRequest;
    use execd_proto::cri::runtime_service_client::RuntimeServiceClient;
    use execd_proto::cri::ExecSyncRequest;
    fn wrong<T>(message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {WRONG}").parse().unwrap());
        request
    }
    let err = match door {
        "grpc" => {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tx.send(start_msg("", req("", &["true"]))).await.unwrap();
            ExecServiceClient::new(channel)
                .exec_stream(wrong(ReceiverStream::new(rx)))
                .await
                .map(drop)
        }
        "cri" => RuntimeServiceClient::new(channel)
            .exec_sync(wrong(ExecSyncRequest {
                container_id: String::new(),
                cmd: vec!["true".into()],
                timeout: 0,
            }))
            .await
            .map(drop),
        "admin" => SessionAdminClient::new(channel)
            .list_sessions(wrong(ListSessionsRequest::default()))
            .await
            .map(drop),
        other => unreachable!("no gRPC door {other}"),
    }
    .expect_err("a wrong token is refused");
    assert_eq!(err.code(), Code::Unauthenticated, "{door}: {err:?}");
}

/// A wrong token on ExecStream, on CRI ExecSync and on the admin API's
/// ListSessions each counts once in `/metrics` under its own door, like
/// the HTTP doors' refusals; a flood over all three writes a bounded
/// number of log lines that, with the `suppressed` counts, account for
/// every refusal.
#[tokio::test]
async fn grpc_cri_and_admin_refusals_are_counted_per_door_and_logged_at_a_bounded_rate() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{RIGHT}\n")).unwrap();
    let tokens_arg = tokens.display().to_string();
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .unwrap();
    let metrics_arg = metrics.to_string();
    let execd = ExecdProcess::start_logging(&[
        "--host-exec",
        "--auth-token-file",
        &tokens_arg,
        "--metrics-listen",
        &metrics_arg,
    ])
    .await;
    let doors = ["grpc", "cri", "admin"];
    for door in doors {
        let before = scrape_metrics(metrics).await;
        wrong_token_on(door, execd.channel.clone()).await;
        let after = scrape_metrics(metrics).await;
        for other in doors {
            let bump = if other == door { 1.0 } else { 0.0 };
            assert_eq!(
                refused(&after, other),
                refused(&before, other) + bump,
                "a wrong token on {door}, counted under {other}"
            );
        }
    }

    let rounds = 100;
    let began = Instant::now();
    for _ in 0..rounds {
        for door in doors {
            wrong_token_on(door, execd.channel.clone()).await;
        }
    }
    let took = began.elapsed();
    // A later window: its first line reports what the flood left out.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    wrong_token_on("admin", execd.channel.clone()).await;
    let after = scrape_metrics(metrics).await;
    for door in doors {
        let expected = 1 + rounds + u64::from(door == "admin");
        assert_eq!(refused(&after, door), expected as f64, "{door}");
    }

    let total = doors.len() as u64 * (1 + rounds) + 1;
    let log = String::from_utf8_lossy(&execd.log_text()).into_owned();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("request refused"))
        .collect();
    let allowed = execd::auth::MAX_LINES_PER_SECOND as u64 * (took.as_secs() + 3);
    assert!(
        (lines.len() as u64) <= allowed,
        "{} lines for {total} refusals in {took:?}",
        lines.len()
    );
    let left_out: u64 = lines.iter().map(|l| suppressed(l)).sum();
    assert_eq!(
        lines.len() as u64 + left_out,
        total,
        "every refusal is written or counted"
    );
    // The first three refusals fit in the first second's lines: each
    // door's is written.
    for door in doors {
        let named = format!("door=\"{door}\"");
        assert!(
            lines.iter().any(|l| l.contains(&named)),
            "no line names {door}: {lines:?}"
        );
    }
    assert!(!log.contains(WRONG), "a token reached the log");
    execd.terminate().await;
}

/// Tokens under 128 bits are named by file and line at start (never
/// shown); long ones are not.
#[tokio::test]
async fn short_tokens_are_warned_about_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("# rotation\ntiny9\n{RIGHT}\n")).unwrap();
    let tokens_arg = tokens.display().to_string();
    let execd =
        ExecdProcess::start_logging(&["--host-exec", "--auth-token-file", &tokens_arg]).await;
    let log = String::from_utf8_lossy(&execd.log_text()).into_owned();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("too short to resist guessing"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(warnings[0].contains("line=2"), "{}", warnings[0]);
    assert!(!log.contains("tiny9"), "a token reached the log: {log}");
    execd.terminate().await;
}
