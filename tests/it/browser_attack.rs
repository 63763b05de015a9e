//! What a web page can make a browser send to a token-less TCP listener
//! (what `scripts/serve --web` sets up), driven over the wire: a "simple"
//! cross-site POST to a gRPC path, DNS-rebinding requests that name execd
//! by the attacker's domain, and requests the browser marks cross-site.
//! None of them may start a process or read anything; every refusal is
//! counted in `/metrics`.

use crate::common;
use crate::common::docker_api;

use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use execd_proto::admin::session_admin_client::SessionAdminClient;
use execd_proto::admin::ListSessionsRequest;
use execd_proto::cri::runtime_service_client::RuntimeServiceClient;
use execd_proto::cri::ExecSyncRequest;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

/// A gRPC-framed message (uncompressed, length-prefixed), as a page can
/// put in a `text/plain` body.
fn grpc_frame(msg: &impl Message) -> Bytes {
    let body = msg.encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
    framed.extend_from_slice(&body);
    Bytes::from(framed)
}

/// How a request goes: HTTP/1.1, or HTTP/2 with prior knowledge.
#[derive(Clone, Copy, PartialEq)]
enum Http {
    V1,
    V2,
}

/// One POST over a fresh connection: status and body.
async fn post(
    http: Http,
    server: &TestServer,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> (u16, String) {
    // HTTP/2 names the authority in the URI; HTTP/1.1 in the `host`
    // header, which is the caller's to send.
    let uri = match http {
        Http::V1 => path.to_string(),
        Http::V2 => format!("http://{}{path}", server.host_port()),
    };
    let mut req = http::Request::builder().method("POST").uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body)).unwrap();
    let resp = match http {
        Http::V1 => {
            let mut sender = docker_api::http1_connect(server).await;
            sender.send_request(req).await
        }
        Http::V2 => {
            let stream = tokio::net::TcpStream::connect(server.host_port())
                .await
                .unwrap();
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            sender.send_request(req).await
        }
    }
    .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The cross-site POST a page can send without a preflight, and its
/// variants: none reaches ExecStream, CRI or the admin API, and the
/// command in the body never runs.
#[tokio::test]
async fn grpc_paths_take_only_http2_grpc_requests() {
    need_docker!();
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let mut cfg = config();
    cfg.metrics_listen = Some(metrics);
    let server = start_server(cfg).await;
    let pwned = format!("/tmp/execd-pwned-{}", marker());
    let start = grpc_frame(&start_msg("", req(shared_container(), &["touch", &pwned])));
    let exec_path = "/exec_service.ExecService/ExecStream";
    let host = server.host_port();

    // The attack as reported: HTTP/1.1, text/plain, a foreign Origin.
    let (status, body) = post(
        Http::V1,
        &server,
        exec_path,
        &[
            ("host", host),
            ("content-type", "text/plain"),
            ("origin", "http://evil.example"),
        ],
        start.clone(),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    // Without the Origin (an older browser, a form): still not gRPC.
    for content_type in ["text/plain", "application/grpc"] {
        let (status, body) = post(
            Http::V1,
            &server,
            exec_path,
            &[("host", host), ("content-type", content_type)],
            start.clone(),
        )
        .await;
        assert_eq!(status, 426, "{content_type}: {body}");
        assert!(body.contains("HTTP/2"), "{body}");
    }
    // HTTP/2 with anything but a gRPC content type: 415, on every service.
    for path in [
        exec_path,
        "/runtime.v1.RuntimeService/ExecSync",
        "/execd.admin.v1.SessionAdmin/ListSessions",
        "/grpc.health.v1.Health/Check",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    ] {
        let (status, body) = post(
            Http::V2,
            &server,
            path,
            &[("content-type", "text/plain")],
            start.clone(),
        )
        .await;
        assert_eq!(status, 415, "{path}: {body}");
        let (status, _) = post(
            Http::V1,
            &server,
            path,
            &[("host", host), ("content-type", "application/grpc")],
            Bytes::new(),
        )
        .await;
        assert_eq!(status, 426, "{path}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !exists_in(shared_container(), &pwned),
        "a refused request ran its command"
    );

    // A real gRPC client on the same listener is served.
    let t = server.run(req(shared_container(), &["echo", "fine"])).await;
    assert_eq!(t.stdout_str(), "fine\n");

    let scraped = scrape_metrics(metrics).await;
    for (labels, at_least) in [
        ("door=\"guard\",reason=\"origin\"", 1.0),
        ("door=\"grpc\",reason=\"http1\"", 7.0),
        ("door=\"grpc\",reason=\"content-type\"", 5.0),
    ] {
        let key = format!("execd_requests_refused_total{{{labels}}}");
        let got = scraped.get(&key).copied().unwrap_or_default();
        assert!(got >= at_least, "{key} = {got}");
    }
    server.stop().await;
}

/// A channel whose requests name execd as `authority` (what a
/// DNS-rebinding page's requests carry) and send `headers`.
async fn channel_as(server: &TestServer, authority: &str) -> Channel {
    Endpoint::from_shared(server.addr.clone())
        .unwrap()
        .origin(format!("http://{authority}").parse().unwrap())
        .connect()
        .await
        .unwrap()
}

fn with_header(
    key: &'static str,
    value: &'static str,
) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
    move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert(key, value.parse().unwrap());
        Ok(req)
    }
}

/// DNS rebinding and cross-site marks reach no gRPC service either: a
/// rebound page reads neither ExecSync's output nor ListSessions, and
/// nothing runs.
#[tokio::test]
async fn rebinding_and_cross_site_requests_reach_no_service() {
    need_docker!();
    let server = start_server(config()).await;
    let port = server
        .host_port()
        .rsplit_once(':')
        .map(|(_, p)| p.to_string())
        .unwrap();
    let pwned = format!("/tmp/execd-pwned-{}", marker());
    let exec_sync = ExecSyncRequest {
        container_id: shared_container().into(),
        cmd: vec!["sh".into(), "-c".into(), format!("touch {pwned}; id")],
        timeout: 0,
    };

    let rebound = channel_as(&server, &format!("rebind.attacker.example:{port}")).await;
    let err = RuntimeServiceClient::new(rebound.clone())
        .exec_sync(exec_sync.clone())
        .await
        .expect_err("a rebound ExecSync is refused");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = SessionAdminClient::new(rebound)
        .list_sessions(ListSessionsRequest::default())
        .await
        .expect_err("a rebound ListSessions is refused");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    let own = channel_as(&server, &format!("127.0.0.1:{port}")).await;
    for (key, value) in [
        ("origin", "http://evil.example"),
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-site", "same-site"),
    ] {
        let mut cri = RuntimeServiceClient::with_interceptor(own.clone(), with_header(key, value));
        let err = cri
            .exec_sync(exec_sync.clone())
            .await
            .expect_err("a cross-site ExecSync is refused");
        assert_eq!(
            err.code(),
            Code::PermissionDenied,
            "{key}: {value}: {err:?}"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !exists_in(shared_container(), &pwned),
        "a refused request ran its command"
    );

    // The same calls by execd's own name, without browser marks, work.
    let out = RuntimeServiceClient::new(own.clone())
        .exec_sync(ExecSyncRequest {
            cmd: vec!["echo".into(), "ok".into()],
            ..exec_sync
        })
        .await
        .expect("ExecSync by address")
        .into_inner();
    assert_eq!(&out.stdout[..], b"ok\n");
    SessionAdminClient::new(own)
        .list_sessions(ListSessionsRequest::default())
        .await
        .expect("ListSessions by address");
    server.stop().await;
}

/// Unserved paths and refused upgrades are counted by door and reason.
#[tokio::test]
async fn unserved_paths_are_counted() {
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let mut cfg = config();
    cfg.metrics_listen = Some(metrics);
    let server = start_server(cfg).await;
    let host = server.host_port();
    let (status, body) = post(
        Http::V1,
        &server,
        "/no/such/path?secret=1",
        &[("host", host)],
        Bytes::new(),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert!(!body.contains("secret"), "{body}");
    let scraped = scrape_metrics(metrics).await;
    let key = "execd_requests_refused_total{door=\"http\",reason=\"unserved\"}";
    assert_eq!(scraped.get(key).copied(), Some(1.0), "{scraped:?}");
    // Stuck /proc workers are shown (none here).
    assert_eq!(
        scraped.get("execd_procfs_stuck_workers").copied(),
        Some(0.0)
    );
    server.stop().await;
}
