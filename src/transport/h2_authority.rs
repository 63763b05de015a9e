//! Makes HTTP/2 requests with a socket path as `:authority` acceptable to h2.
//!
//! gRPC C-core (Python, Ruby, PHP, C++) since 1.57 sends the percent-encoded
//! socket path as `:authority` on a unix socket (`%2Frun%2Fexecd%2Fexecd.sock`)
//! and grpc-java sends the raw path. Neither is a valid URI authority, and
//! the h2 crate rejects such a request with RST_STREAM(PROTOCOL_ERROR) while
//! decoding its headers, before any of execd's code runs (hyperium/h2#487,
//! grpc/grpc#38142). A unix socket has no authority worth checking, so for
//! connections accepted on a unix socket execd rewrites an invalid
//! `:authority` to `localhost` (what grpc-go sends) before h2 sees it.
//!
//! Why this is hand-written: the fix has to sit between the socket and h2
//! (h2 offers no hook, and a patched h2 is not an option), and a header
//! block can only be edited after HPACK decoding. The HPACK codec itself
//! comes from `loona-hpack`; this module only walks the HTTP/2 framing on
//! the client-to-server direction:
//!
//! - the connection preface decides: anything but HTTP/2 (an HTTP/1.1
//!   request) passes through untouched;
//! - every frame except HEADERS and CONTINUATION passes through as it is
//!   (DATA frames are not parsed, only counted);
//! - each header block (HEADERS plus its CONTINUATIONs) is decoded with the
//!   client's dynamic table and re-encoded as literals without indexing, so
//!   h2's dynamic table stays empty and can never disagree with the
//!   client's. Only an `:authority` that `http` rejects is changed.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// The largest frame payload every HTTP/2 peer must accept.
const DEFAULT_MAX_FRAME: usize = 16_384;
/// Bound on one header block (HEADERS plus CONTINUATIONs) held here; h2's
/// own header-list limit is far below this.
const MAX_HEADER_BLOCK: usize = 1024 * 1024;
/// Bound on the client's HPACK table (its encoder follows the 4 KiB that h2
/// announces; this leaves room without trusting the client).
const MAX_CLIENT_TABLE: usize = 4096;
/// Bound on one decoded header block: HPACK lets a few bytes refer to large
/// table entries, so the decoded size is bounded on its own (h2 itself
/// refuses header lists over 64 KiB; this only has to stay above that).
const MAX_DECODED_BLOCK: usize = 256 * 1024;
const REPLACEMENT_AUTHORITY: &[u8] = b"localhost";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the first bytes: HTTP/2 preface or not.
    Preface,
    /// Not HTTP/2: everything passes.
    Plain,
    /// At a frame boundary.
    FrameHeader,
    /// Inside the payload of a frame that passes through.
    Payload(usize),
}

/// A header block waiting for its CONTINUATION frames.
struct PendingBlock {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: BytesMut,
}

/// An I/O stream whose inbound HTTP/2 header blocks get a valid `:authority`.
pub(crate) struct AuthorityFix<T> {
    inner: T,
    state: State,
    /// Read from `inner`, not yet looked at.
    raw: BytesMut,
    /// Looked at, ready for the reader.
    ready: BytesMut,
    decoder: loona_hpack::Decoder<'static>,
    pending: Option<PendingBlock>,
    rewritten: u64,
}

impl<T> AuthorityFix<T> {
    pub(crate) fn new(inner: T) -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(MAX_CLIENT_TABLE);
        AuthorityFix {
            inner,
            state: State::Preface,
            raw: BytesMut::new(),
            ready: BytesMut::new(),
            decoder,
            pending: None,
            rewritten: 0,
        }
    }

    /// Moves what can be decided from `raw` into `ready`. Returns whether
    /// anything moved.
    fn process(&mut self) -> io::Result<bool> {
        let mut progressed = false;
        loop {
            match self.state {
                State::Preface => {
                    let n = self.raw.len().min(PREFACE.len());
                    if self.raw[..n] != PREFACE[..n] {
                        self.state = State::Plain;
                    } else if n == PREFACE.len() {
                        self.ready.put(self.raw.split_to(n));
                        self.state = State::FrameHeader;
                        progressed = true;
                    } else {
                        return Ok(progressed);
                    }
                }
                State::Plain => {
                    if self.raw.is_empty() {
                        return Ok(progressed);
                    }
                    let all = self.raw.split();
                    self.ready.put(all);
                    return Ok(true);
                }
                State::Payload(left) => {
                    if self.raw.is_empty() {
                        return Ok(progressed);
                    }
                    let n = left.min(self.raw.len());
                    self.ready.put(self.raw.split_to(n));
                    self.state = match left - n {
                        0 => State::FrameHeader,
                        rest => State::Payload(rest),
                    };
                    progressed = true;
                }
                State::FrameHeader => {
                    if self.raw.len() < FRAME_HEADER {
                        return Ok(progressed);
                    }
                    let len = u32::from_be_bytes([0, self.raw[0], self.raw[1], self.raw[2]]);
                    let len = len as usize;
                    let kind = self.raw[3];
                    if kind != TYPE_HEADERS && kind != TYPE_CONTINUATION {
                        if self.pending.is_some() {
                            // RFC 9113 §6.10: nothing may interleave a
                            // header block.
                            return Err(malformed("frame inside a header block"));
                        }
                        self.ready.put(self.raw.split_to(FRAME_HEADER));
                        self.state = if len == 0 {
                            State::FrameHeader
                        } else {
                            State::Payload(len)
                        };
                        progressed = true;
                        continue;
                    }
                    if len > MAX_HEADER_BLOCK {
                        return Err(too_large());
                    }
                    if self.raw.len() < FRAME_HEADER + len {
                        return Ok(progressed);
                    }
                    let header = self.raw.split_to(FRAME_HEADER);
                    let payload = self.raw.split_to(len);
                    let flags = header[4];
                    let stream_id =
                        u32::from_be_bytes([header[5], header[6], header[7], header[8]])
                            & 0x7fff_ffff;
                    if kind == TYPE_HEADERS {
                        self.headers(flags, stream_id, payload)?;
                    } else {
                        self.continuation(flags, header, payload)?;
                    }
                    progressed = true;
                }
            }
        }
    }

    fn headers(&mut self, flags: u8, stream_id: u32, mut payload: BytesMut) -> io::Result<()> {
        if self.pending.is_some() {
            return Err(malformed("HEADERS inside a header block"));
        }
        if flags & FLAG_PADDED != 0 {
            let pad = payload
                .first()
                .copied()
                .map(usize::from)
                .unwrap_or(usize::MAX);
            if pad >= payload.len() {
                return Err(malformed("HEADERS padding longer than the frame"));
            }
            payload.advance(1);
            payload.truncate(payload.len() - pad);
        }
        let priority = if flags & FLAG_PRIORITY != 0 {
            if payload.len() < 5 {
                return Err(malformed("HEADERS priority fields missing"));
            }
            let mut p = [0u8; 5];
            p.copy_from_slice(&payload[..5]);
            payload.advance(5);
            Some(p)
        } else {
            None
        };
        self.pending = Some(PendingBlock {
            stream_id,
            end_stream: flags & FLAG_END_STREAM != 0,
            priority,
            fragment: payload,
        });
        if flags & FLAG_END_HEADERS != 0 {
            self.finish_block()?;
        }
        Ok(())
    }

    fn continuation(&mut self, flags: u8, header: BytesMut, payload: BytesMut) -> io::Result<()> {
        let stream_id =
            u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        let Some(pending) = self.pending.as_mut() else {
            // Out of place; h2 rejects it as sent.
            self.ready.put(header);
            self.ready.put(payload);
            return Ok(());
        };
        if pending.stream_id != stream_id {
            return Err(malformed("CONTINUATION of another stream"));
        }
        if pending.fragment.len() + payload.len() > MAX_HEADER_BLOCK {
            return Err(too_large());
        }
        pending.fragment.put(payload);
        if flags & FLAG_END_HEADERS != 0 {
            self.finish_block()?;
        }
        Ok(())
    }

    /// Decodes the complete block, fixes `:authority`, and queues it again
    /// as HEADERS (+ CONTINUATION) frames.
    fn finish_block(&mut self) -> io::Result<()> {
        let Some(block) = self.pending.take() else {
            return Ok(());
        };
        let mut encoded = BytesMut::with_capacity(block.fragment.len() * 2 + 16);
        let mut rewritten = false;
        let mut write_err = None;
        self.decoder
            .decode_with_cb(&block.fragment, |name, value| {
                if write_err.is_some() {
                    return;
                }
                if encoded.len() + name.len() + value.len() + 16 > MAX_DECODED_BLOCK {
                    write_err = Some(malformed("decoded header block larger than 256 KiB"));
                    return;
                }
                let value: &[u8] = if name.as_ref() == b":authority" && !valid_authority(&value) {
                    rewritten = true;
                    REPLACEMENT_AUTHORITY
                } else {
                    &value
                };
                if let Err(e) = encode_literal(&name, value, &mut encoded) {
                    write_err = Some(e);
                }
            })
            .map_err(|e| malformed(&format!("undecodable header block: {e:?}")))?;
        if let Some(e) = write_err {
            return Err(e);
        }
        if rewritten {
            self.rewritten += 1;
            if self.rewritten == 1 {
                tracing::debug!(
                    "request :authority is not a valid authority (a socket path); using localhost"
                );
            }
        }
        let mut block_bytes = encoded.freeze();
        let prio_len = if block.priority.is_some() { 5 } else { 0 };
        let first_len = block_bytes.len().min(DEFAULT_MAX_FRAME - prio_len);
        let mut flags = 0;
        if block.end_stream {
            flags |= FLAG_END_STREAM;
        }
        if block.priority.is_some() {
            flags |= FLAG_PRIORITY;
        }
        if first_len == block_bytes.len() {
            flags |= FLAG_END_HEADERS;
        }
        self.put_frame_header(first_len + prio_len, TYPE_HEADERS, flags, block.stream_id);
        if let Some(p) = block.priority {
            self.ready.put_slice(&p);
        }
        self.ready.put(block_bytes.split_to(first_len));
        while !block_bytes.is_empty() {
            let n = block_bytes.len().min(DEFAULT_MAX_FRAME);
            let flags = if n == block_bytes.len() {
                FLAG_END_HEADERS
            } else {
                0
            };
            self.put_frame_header(n, TYPE_CONTINUATION, flags, block.stream_id);
            self.ready.put(block_bytes.split_to(n));
        }
        Ok(())
    }

    fn put_frame_header(&mut self, len: usize, kind: u8, flags: u8, stream_id: u32) {
        let len = (len as u32).to_be_bytes();
        self.ready.put_slice(&len[1..]);
        self.ready.put_u8(kind);
        self.ready.put_u8(flags);
        self.ready.put_u32(stream_id);
    }
}

fn valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// "Literal header field without indexing — new name", no Huffman coding
/// (RFC 7541 §6.2.2).
fn encode_literal(name: &[u8], value: &[u8], out: &mut BytesMut) -> io::Result<()> {
    let mut w = out.writer();
    loona_hpack::encoder::encode_integer_into(0, 4, 0, &mut w)?;
    loona_hpack::encoder::encode_integer_into(name.len(), 7, 0, &mut w)?;
    io::Write::write_all(&mut w, name)?;
    loona_hpack::encoder::encode_integer_into(value.len(), 7, 0, &mut w)?;
    io::Write::write_all(&mut w, value)?;
    Ok(())
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("HTTP/2: {what}"))
}

fn too_large() -> io::Error {
    malformed("header block larger than 1 MiB")
}

impl<T: AsyncRead + Unpin> AsyncRead for AuthorityFix<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.process()? {
                continue;
            }
            this.raw.reserve(DEFAULT_MAX_FRAME);
            let n =
                match tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.raw) {
                    Poll::Ready(Ok(n)) => n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                };
            if n == 0 {
                // End of stream: whatever is left (a cut-off frame) goes to
                // h2 as it is, which reports it.
                let rest = this.raw.split();
                if rest.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                this.ready.put(rest);
                this.state = State::Plain;
            }
        }
    }
}

delegate_async_write!(AuthorityFix);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend([kind, flags]);
        f.extend(stream.to_be_bytes());
        f.extend(payload);
        f
    }

    /// Feeds `input` in `chunk`-byte pieces and returns what comes out.
    async fn run(input: Vec<u8>, chunk: usize) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for piece in input.chunks(chunk) {
                client.write_all(piece).await.unwrap();
            }
        });
        let mut fixed = AuthorityFix::new(server);
        let mut out = Vec::new();
        fixed.read_to_end(&mut out).await.unwrap();
        writer.await.unwrap();
        out
    }

    /// Splits the output into frames and decodes every header block.
    fn headers_in(out: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        assert_eq!(&out[..PREFACE.len()], PREFACE);
        let mut rest = &out[PREFACE.len()..];
        let mut decoder = loona_hpack::Decoder::new();
        let mut blocks = Vec::new();
        let mut block = Vec::new();
        while !rest.is_empty() {
            let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            let (kind, flags) = (rest[3], rest[4]);
            let payload = &rest[9..9 + len];
            if kind == TYPE_HEADERS || kind == TYPE_CONTINUATION {
                let skip = if flags & FLAG_PRIORITY != 0 { 5 } else { 0 };
                block.extend_from_slice(&payload[skip..]);
                if flags & FLAG_END_HEADERS != 0 {
                    blocks.push(decoder.decode(&block).unwrap());
                    block.clear();
                }
            }
            rest = &rest[9 + len..];
        }
        blocks
    }

    fn authority(block: &[(Vec<u8>, Vec<u8>)]) -> String {
        let (_, v) = block.iter().find(|(n, _)| n == b":authority").unwrap();
        String::from_utf8(v.clone()).unwrap()
    }

    fn request(path_authority: &[u8], encoder: &mut loona_hpack::Encoder) -> Vec<u8> {
        encoder.encode(vec![
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", b"/exec_service.ExecService/ExecStream"),
            (b":authority", path_authority),
            (b"te", b"trailers"),
        ])
    }

    #[tokio::test]
    async fn socket_path_authorities_become_localhost_across_indexed_requests() {
        // The client's encoder indexes the bad authority on the first
        // request and refers to its table on the second: both must come out
        // fixed, whatever the chunking.
        let mut encoder = loona_hpack::Encoder::new();
        let first = request(b"%2Frun%2Fexecd%2Fexecd.sock", &mut encoder);
        let second = request(b"%2Frun%2Fexecd%2Fexecd.sock", &mut encoder);
        let java = request(b"/run/execd/execd.sock", &mut encoder);
        let good = request(b"127.0.0.1:50051", &mut encoder);
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &first));
        input.extend(frame(0x0, 0, 1, b"some data that is not parsed"));
        // Split over HEADERS + CONTINUATION, with padding and priority.
        let (a, b) = second.split_at(second.len() / 2);
        let mut padded = vec![3u8];
        padded.extend([0, 0, 0, 0, 16]);
        padded.extend(a);
        padded.extend([0, 0, 0]);
        input.extend(frame(TYPE_HEADERS, FLAG_PADDED | FLAG_PRIORITY, 3, &padded));
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 3, b));
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            5,
            &java,
        ));
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 7, &good));
        for chunk in [1, 7, 4096] {
            let out = run(input.clone(), chunk).await;
            let blocks = headers_in(&out);
            let authorities: Vec<String> = blocks.iter().map(|b| authority(b)).collect();
            assert_eq!(
                authorities,
                ["localhost", "localhost", "localhost", "127.0.0.1:50051"]
            );
            assert!(out
                .windows(b"some data that is not parsed".len())
                .any(|w| w == b"some data that is not parsed"));
            assert_eq!(blocks[0].len(), 5, "other headers kept");
        }
    }

    #[tokio::test]
    async fn indexed_expansion_is_bounded() {
        // One literal indexed into the table, then referred to over and
        // over: a few bytes each, a whole entry each once decoded.
        let mut block = vec![0x40, 0x01, b'x'];
        loona_hpack::encoder::encode_integer_into(3000, 7, 0, &mut block).unwrap();
        block.extend(std::iter::repeat_n(b'v', 3000));
        block.extend(std::iter::repeat_n(0xbe, 100_000));
        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block));
        let (mut client, server) = tokio::io::duplex(1 << 20);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = client.write_all(&input).await;
        });
        let mut fixed = AuthorityFix::new(server);
        let mut out = Vec::new();
        let err = fixed.read_to_end(&mut out).await.unwrap_err();
        assert!(err.to_string().contains("256 KiB"), "{err}");
        assert!(out.len() < MAX_DECODED_BLOCK, "{}", out.len());
    }

    #[tokio::test]
    async fn frames_interleaving_a_header_block_are_refused() {
        let mut encoder = loona_hpack::Encoder::new();
        let block = request(b"%2Ftmp%2Fs", &mut encoder);
        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_HEADERS, 0, 1, &block[..4]));
        input.extend(frame(0x0, 0, 1, b"data"));
        let (mut client, server) = tokio::io::duplex(1 << 20);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = client.write_all(&input).await;
        });
        let mut out = Vec::new();
        let err = AuthorityFix::new(server)
            .read_to_end(&mut out)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    #[tokio::test]
    async fn http1_passes_untouched() {
        let input = b"GET /metrics HTTP/1.1\r\nHost: /weird/path\r\n\r\n".to_vec();
        assert_eq!(run(input.clone(), 3).await, input);
    }

    #[tokio::test]
    async fn large_blocks_are_split_into_continuations() {
        let mut encoder = loona_hpack::Encoder::new();
        let big = vec![b'x'; 40_000];
        let block = encoder.encode(vec![
            (&b":method"[..], &b"POST"[..]),
            (b":authority", b"%2Ftmp%2Fs"),
            (b"x-big", &big),
        ]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block));
        let out = run(input, 1000).await;
        let blocks = headers_in(&out);
        assert_eq!(authority(&blocks[0]), "localhost");
        assert_eq!(blocks[0][2].1.len(), 40_000);
    }
}
