//! Helpers of the Docker door tests: the docker CLI pointed at execd, and
//! raw HTTP/1.1 exchanges (upgrades included) with Docker's stream frames.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{TestServer, PATIENCE};

/// An upgraded (hijacked) connection, as a client reads and writes it.
pub type Upgraded = TokioIo<hyper::upgrade::Upgraded>;

/// The docker CLI pointed at execd, with a config dir of its own.
pub struct DockerCli {
    host: String,
    config: tempfile::TempDir,
}

impl DockerCli {
    pub fn new(server: &TestServer) -> DockerCli {
        DockerCli {
            host: format!("tcp://{}", server.host_port()),
            config: tempfile::tempdir().unwrap(),
        }
    }

    /// Makes the CLI send `Authorization: Bearer <token>` on every request.
    pub fn with_token(self, token: &str) -> DockerCli {
        let config = serde_json::json!({
            "HttpHeaders": { "Authorization": format!("Bearer {token}") }
        });
        std::fs::write(self.config.path().join("config.json"), config.to_string()).unwrap();
        self
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("docker");
        cmd.env("DOCKER_CONFIG", self.config.path())
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .args(["-H", &self.host])
            .args(args);
        cmd
    }

    pub fn run(&self, args: &[&str], stdin: &[u8]) -> Output {
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

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// One HTTP/1.1 exchange on a fresh connection.
pub async fn request(
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

/// A fresh HTTP/1.1 connection to `server`, driven in the background
/// (upgrades included).
pub async fn http1_connect(server: &TestServer) -> SendRequest<Full<Bytes>> {
    let stream = tokio::net::TcpStream::connect(server.host_port())
        .await
        .unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    sender
}

/// One HTTP/1.1 request on a fresh connection; the answer's body is left
/// to read (or to upgrade).
pub async fn send(
    server: &TestServer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> http::Response<hyper::body::Incoming> {
    let mut sender = http1_connect(server).await;
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", server.host_port())
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    sender.send_request(req).await.unwrap()
}

pub fn json(body: &Bytes) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("{e}: {}", text(body)))
}

/// Splits Docker frames into (stdout, stderr); zero-length frames are the
/// liveness probes and carry nothing.
pub fn unframe(mut raw: &[u8]) -> (Vec<u8>, Vec<u8>) {
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

/// Creates an exec (`POST` of `body` to a create `path` of either API)
/// with `headers`, and returns its id.
pub async fn exec_create(
    server: &TestServer,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> String {
    let (status, _, answer) = request(server, "POST", path, headers, body).await;
    assert_eq!(status, 201, "{}", text(&answer));
    json(&answer)["Id"].as_str().unwrap().to_string()
}

/// Creates an exec through the pod API, in `pod` itself.
pub async fn pod_create(server: &TestServer, pod: &str, body: serde_json::Value) -> String {
    let path = format!("/api/v1/namespaces/default/pods/{pod}/exec");
    let id = exec_create(server, &path, &[], &body.to_string()).await;
    assert!(id.starts_with("exec-"), "{id}");
    id
}

/// POSTs `body` to `path` asking for `Upgrade: tcp` (with `headers` as
/// well) and asserts the `101`.
pub async fn post_upgrade(
    server: &TestServer,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> http::Response<hyper::body::Incoming> {
    let mut all = vec![("connection", "Upgrade"), ("upgrade", "tcp")];
    all.extend_from_slice(headers);
    let response = send(server, "POST", path, &all, body).await;
    assert_eq!(response.status(), 101);
    response
}

/// The raw stream a `101` hands over.
pub async fn upgraded(response: http::Response<hyper::body::Incoming>) -> Upgraded {
    TokioIo::new(hyper::upgrade::on(response).await.unwrap())
}

/// Everything `io` sends until it ends.
pub async fn read_to_end(io: &mut Upgraded) -> Vec<u8> {
    let mut raw = Vec::new();
    tokio::time::timeout(PATIENCE, io.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    raw
}

/// Starts with `Upgrade: tcp`, writes `stdin` and half-closes, reads all.
pub async fn start_hijacked(server: &TestServer, path: &str, stdin: &[u8]) -> Vec<u8> {
    let body = r#"{"Detach":false,"Tty":false}"#;
    let mut io = upgraded(post_upgrade(server, path, &[], body).await).await;
    io.write_all(stdin).await.unwrap();
    io.shutdown().await.unwrap();
    read_to_end(&mut io).await
}

/// Types `line` into an attached shell (raw tty stream) until its output
/// shows `needle`: right after attaching, the attach client may still be
/// setting up its terminal and drop what arrives meanwhile, so like a
/// person this types again.
pub async fn type_until(io: &mut Upgraded, line: &[u8], needle: &str) {
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
