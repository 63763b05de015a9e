//! A raw remotecommand WebSocket client (tokio-tungstenite) for the kube
//! door tests: connects with chosen subprotocols and headers, and records
//! every channel frame, the error-channel status and the close code.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

pub const V5: &str = "v5.channel.k8s.io";
pub const V4: &str = "v4.channel.k8s.io";

/// An open stream and what the 101 answer said.
pub struct Ws {
    pub socket: Socket,
    pub protocol: Option<String>,
    pub connection: Option<String>,
}

/// A refusal before the upgrade: HTTP code and JSON body.
#[derive(Debug)]
pub struct Refused {
    pub code: u16,
    pub body: serde_json::Value,
}

/// `http://host:port` + path → a `ws://` request with these subprotocols
/// and extra headers.
pub async fn connect(
    base: &str,
    path: &str,
    protocols: &str,
    headers: &[(&str, &str)],
) -> Result<Ws, Refused> {
    let url = format!("{}{path}", base.replacen("http://", "ws://", 1));
    let mut req = url.into_client_request().expect("request");
    if !protocols.is_empty() {
        req.headers_mut()
            .insert("sec-websocket-protocol", protocols.parse().unwrap());
    }
    for (k, v) in headers {
        let name = http::HeaderName::from_bytes(k.as_bytes()).expect("header name");
        req.headers_mut()
            .insert(name, v.parse().expect("header value"));
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((socket, resp)) => {
            let header = |name: &str| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            Ok(Ws {
                protocol: header("sec-websocket-protocol"),
                connection: header("connection"),
                socket,
            })
        }
        Err(WsError::Http(resp)) => {
            let body = resp
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(serde_json::Value::Null);
            Err(Refused {
                code: resp.status().as_u16(),
                body,
            })
        }
        Err(e) => panic!("websocket connect failed: {e}"),
    }
}

/// Everything a stream delivered until the server closed it.
#[derive(Debug, Default)]
pub struct WsTranscript {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Raw error-channel messages (exactly one expected).
    pub errors: Vec<Vec<u8>>,
    pub close_code: Option<u16>,
    /// Output arriving after the error-channel message (must stay empty).
    pub after_status: usize,
}

impl WsTranscript {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    /// The single JSON status on the error channel.
    pub fn status(&self) -> serde_json::Value {
        assert_eq!(self.errors.len(), 1, "exactly one status: {self:?}");
        serde_json::from_slice(&self.errors[0]).expect("status is JSON")
    }
}

/// Sends one channel frame (binary).
pub async fn send(ws: &mut Ws, channel: u8, data: &[u8]) {
    let mut frame = vec![channel];
    frame.extend_from_slice(data);
    ws.socket
        .send(Message::Binary(frame.into()))
        .await
        .expect("send frame");
}

/// Sends one channel frame as a text message, like the Python client.
pub async fn send_text(ws: &mut Ws, channel: u8, text: &str) {
    let mut s = String::from(char::from(channel));
    s.push_str(text);
    ws.socket
        .send(Message::Text(s.into()))
        .await
        .expect("send text frame");
}

/// Reads until the server closes (answering its close), within `patience`.
pub async fn read_all(ws: &mut Ws, patience: Duration) -> WsTranscript {
    let mut t = WsTranscript::default();
    let base64 = ws.protocol.as_deref() == Some("base64.channel.k8s.io");
    let result = tokio::time::timeout(patience, async {
        while let Some(msg) = ws.socket.next().await {
            let raw: Vec<u8> = match msg {
                Ok(Message::Binary(b)) => b.to_vec(),
                Ok(Message::Text(s)) if base64 => {
                    use base64::Engine as _;
                    let s = s.as_str();
                    let channel = s.as_bytes()[0] - b'0';
                    let mut v = vec![channel];
                    v.extend(
                        base64::engine::general_purpose::STANDARD
                            .decode(&s[1..])
                            .expect("base64 payload"),
                    );
                    v
                }
                Ok(Message::Text(s)) => s.as_bytes().to_vec(),
                Ok(Message::Close(frame)) => {
                    t.close_code = frame.map(|f| u16::from(f.code));
                    continue;
                }
                Ok(_) => continue,
                Err(_) => break,
            };
            let Some((&channel, data)) = raw.split_first() else {
                continue;
            };
            if !t.errors.is_empty() && !data.is_empty() {
                t.after_status += 1;
            }
            match channel {
                1 => t.stdout.extend_from_slice(data),
                2 => t.stderr.extend_from_slice(data),
                3 => t.errors.push(data.to_vec()),
                _ => {}
            }
        }
    })
    .await;
    assert!(result.is_ok(), "stream did not end in time: {t:?}");
    t
}

pub fn normal_close() -> u16 {
    u16::from(CloseCode::Normal)
}

/// A pod exec path for `container` with `command` and extra query pairs.
pub fn exec_path(container: &str, command: &[&str], extra: &str) -> String {
    let mut path = format!("/api/v1/namespaces/default/pods/{container}/exec?");
    for c in command {
        path.push_str("command=");
        path.push_str(&urlencode(c));
        path.push('&');
    }
    path.push_str(extra);
    path
}

/// A plain HTTP/1.1 GET (no upgrade, what a prefetcher sends), answered
/// status line first.
pub async fn plain_get(base: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(super::PATIENCE, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Reads stdout frames until `needle` shows up or `patience` runs out.
pub async fn read_within(ws: &mut Ws, needle: &str, patience: Duration) -> (bool, String) {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(patience, async {
        while let Some(Ok(msg)) = ws.socket.next().await {
            if let Message::Binary(b) = msg {
                if b.first() == Some(&1) {
                    seen.extend_from_slice(&b[1..]);
                    if String::from_utf8_lossy(&seen).contains(needle) {
                        return true;
                    }
                }
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    (found, String::from_utf8_lossy(&seen).into_owned())
}

/// Types `line` into an attached shell until its output shows `needle`.
/// Right after attaching, the attach client may still be setting up its
/// terminal and can drop what arrives meanwhile (as typing into a fresh
/// `docker attach` can); a person would type again, and so does this.
pub async fn type_until(ws: &mut Ws, line: &[u8], needle: &str) {
    let mut seen = String::new();
    for _ in 0..10 {
        send(ws, 0, line).await;
        let (found, text) = read_within(ws, needle, Duration::from_secs(3)).await;
        if found {
            return;
        }
        seen.push_str(&text);
    }
    panic!("{needle:?} not seen in {seen:?}");
}
