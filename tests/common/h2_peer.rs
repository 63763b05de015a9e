//! [`Peer`], a raw HTTP/2 client for poking at execd's connection layer:
//! it sends only what a test asks for and reports what came back.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a [`Peer`] saw the server send.
#[derive(Debug, PartialEq)]
pub enum Seen {
    /// Response headers: stream and `:status`.
    Status(u32, u16),
    /// GOAWAY with its error code.
    GoAway(u32),
    Closed,
}

/// A raw HTTP/2 client: it answers the server's SETTINGS and PINGs (so it
/// looks alive forever), sends only what a test asks for, and reports
/// responses and GOAWAYs. Dropping it closes the connection.
pub struct Peer {
    out: tokio::sync::mpsc::Sender<Vec<u8>>,
    seen: tokio::sync::mpsc::Receiver<Seen>,
    next_stream: u32,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl Drop for Peer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

async fn read_h2_frame(rd: &mut tokio::net::tcp::OwnedReadHalf) -> Option<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    rd.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    rd.read_exact(&mut payload).await.ok()?;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    Some((head[3], head[4], stream, payload))
}

/// HPACK literal without indexing, new name, no Huffman (short strings).
fn literal(block: &mut Vec<u8>, name: &str, value: &str) {
    assert!(name.len() < 127 && value.len() < 127);
    block.push(0);
    block.push(name.len() as u8);
    block.extend(name.as_bytes());
    block.push(value.len() as u8);
    block.extend(value.as_bytes());
}

impl Peer {
    /// Connects and waits for the server's SETTINGS; `None` when execd
    /// closes the connection instead of serving it.
    pub async fn open(addr: std::net::SocketAddr) -> Option<Peer> {
        let (mut rd, mut wr) = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap()
            .into_split();
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(h2_frame(0x4, 0, 0, &[]));
        wr.write_all(&hello).await.ok()?;
        let first = tokio::time::timeout(Duration::from_secs(60), read_h2_frame(&mut rd))
            .await
            .expect("execd answers or closes");
        if first?.0 != 0x4 {
            panic!("the server's first frame is not SETTINGS");
        }
        let (out, mut outgoing) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
        let (report, seen) = tokio::sync::mpsc::channel(64);
        let writer = tokio::spawn(async move {
            while let Some(bytes) = outgoing.recv().await {
                if wr.write_all(&bytes).await.is_err() {
                    return;
                }
            }
        });
        let acks = out.clone();
        let reader = tokio::spawn(async move {
            let _ = acks.send(h2_frame(0x4, 0x1, 0, &[])).await;
            let mut decoder = loona_hpack::Decoder::new();
            while let Some((kind, flags, stream, payload)) = read_h2_frame(&mut rd).await {
                let ack = flags & 0x1 != 0;
                let event = match kind {
                    0x4 if !ack => {
                        let _ = acks.send(h2_frame(0x4, 0x1, 0, &[])).await;
                        continue;
                    }
                    0x6 if !ack => {
                        let _ = acks.send(h2_frame(0x6, 0x1, 0, &payload)).await;
                        continue;
                    }
                    0x7 => Seen::GoAway(u32::from_be_bytes(payload[4..8].try_into().unwrap())),
                    0x1 => {
                        let headers = decoder.decode(&payload).expect("HPACK");
                        let status = headers
                            .iter()
                            .find(|(n, _)| n == b":status")
                            .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse().ok());
                        match status {
                            Some(code) => Seen::Status(stream, code),
                            None => continue, // trailers
                        }
                    }
                    _ => continue,
                };
                let _ = report.send(event).await;
            }
            let _ = report.send(Seen::Closed).await;
        });
        Some(Peer {
            out,
            seen,
            next_stream: 1,
            tasks: [writer, reader],
        })
    }

    /// Sends a request; its stream id. A `grpc` one is a POST with one empty
    /// message (the request of a unary or server-streaming call).
    pub async fn request(&mut self, path: &str, token: Option<&str>, grpc: bool) -> u32 {
        let stream = self.next_stream;
        self.next_stream += 2;
        let mut block = vec![if grpc { 0x83 } else { 0x82 }, 0x86];
        literal(&mut block, ":path", path);
        literal(&mut block, ":authority", "localhost");
        if let Some(token) = token {
            literal(&mut block, "authorization", &format!("Bearer {token}"));
        }
        if grpc {
            literal(&mut block, "content-type", "application/grpc");
            literal(&mut block, "te", "trailers");
            let mut frames = h2_frame(0x1, 0x4, stream, &block);
            frames.extend(h2_frame(0x0, 0x1, stream, &[0, 0, 0, 0, 0]));
            self.send(frames).await;
        } else {
            self.send(h2_frame(0x1, 0x4 | 0x1, stream, &block)).await;
        }
        stream
    }

    /// Cancels a stream (RST_STREAM CANCEL).
    pub async fn reset(&mut self, stream: u32) {
        self.send(h2_frame(0x3, 0, stream, &8u32.to_be_bytes()))
            .await;
    }

    async fn send(&self, bytes: Vec<u8>) {
        self.out.send(bytes).await.expect("the connection is open");
    }

    pub async fn next(&mut self) -> Seen {
        tokio::time::timeout(Duration::from_secs(60), self.seen.recv())
            .await
            .expect("execd sends something")
            .unwrap_or(Seen::Closed)
    }

    /// A request and its response status.
    pub async fn get(&mut self, path: &str, token: Option<&str>) -> u16 {
        let stream = self.request(path, token, false).await;
        match self.next().await {
            Seen::Status(s, code) if s == stream => code,
            other => panic!("expected the response to stream {stream}, got {other:?}"),
        }
    }

    /// Nothing arrived so far (no GOAWAY, no close).
    pub fn quiet(&mut self) -> bool {
        self.seen.try_recv().is_err()
    }
}
