//! The two shapes process output arrives in.
//!
//! - [`SplitOutput`]: one reader per stream (pipes), or a single one for a
//!   terminal or the engine's raw tty stream.
//! - [`FramedOutput`]: the engine's multiplexed stream without a tty, 8-byte
//!   frame headers (`[stream, 0, 0, 0, size: u32 BE]`) before each payload.
//!   No crate decodes these frames on a bare byte stream without taking
//!   over the whole Engine API client, so the few lines are here.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{BoxFuture, OutputChunk, ProcessOutput};
use super::{OutputStream, READ_CHUNK};

pub(crate) type Reader = Box<dyn AsyncRead + Send + Unpin>;

/// The first read buffer of a stream. An idle terminal session reads a
/// few bytes at a time and should not hold a large buffer; a stream that
/// fills its buffer gets a larger one, up to [`READ_CHUNK`].
const FIRST_READ: usize = 4 * 1024;

/// A stream's read buffer, grown while reads fill it.
#[derive(Default)]
struct ReadBuf {
    buf: BytesMut,
    /// What the next refill reserves.
    size: usize,
}

impl ReadBuf {
    /// Reads into the buffer (cancel-safe: data lands in it only when the
    /// read completes) and splits the new bytes off without copying.
    async fn read(&mut self, reader: &mut Reader) -> std::io::Result<Option<Bytes>> {
        let size = self.size.max(FIRST_READ);
        if self.buf.capacity() - self.buf.len() < size / 4 {
            self.buf.reserve(size);
        }
        let room = self.buf.capacity() - self.buf.len();
        let n = reader.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Ok(None);
        }
        self.size = if n == room {
            (size * 2).min(READ_CHUNK)
        } else {
            size
        };
        Ok(Some(self.buf.split().freeze()))
    }
}

async fn read_opt(
    reader: Option<&mut Reader>,
    buf: &mut ReadBuf,
) -> std::io::Result<Option<Bytes>> {
    match reader {
        Some(r) => buf.read(r).await,
        None => std::future::pending().await,
    }
}

/// Output with a reader per stream.
pub(crate) struct SplitOutput {
    stdout: Option<Reader>,
    stderr: Option<Reader>,
    out_buf: ReadBuf,
    err_buf: ReadBuf,
}

impl SplitOutput {
    pub(crate) fn new(stdout: Reader, stderr: Option<Reader>) -> Self {
        SplitOutput {
            stdout: Some(stdout),
            stderr,
            out_buf: ReadBuf::default(),
            err_buf: ReadBuf::default(),
        }
    }
}

impl ProcessOutput for SplitOutput {
    fn next_chunk(&mut self) -> BoxFuture<'_, std::io::Result<OutputChunk>> {
        Box::pin(async move {
            loop {
                if self.stdout.is_none() && self.stderr.is_none() {
                    return Ok(OutputChunk::End);
                }
                // A read error counts as that stream's end: the process
                // side is gone either way.
                tokio::select! {
                    r = read_opt(self.stdout.as_mut(), &mut self.out_buf), if self.stdout.is_some() => match r {
                        Ok(Some(data)) => return Ok(OutputChunk::Data(OutputStream::Stdout, data)),
                        Ok(None) => self.stdout = None,
                        Err(e) => {
                            tracing::debug!(error = %e, "stdout read failed");
                            self.stdout = None;
                        }
                    },
                    r = read_opt(self.stderr.as_mut(), &mut self.err_buf), if self.stderr.is_some() => match r {
                        Ok(Some(data)) => return Ok(OutputChunk::Data(OutputStream::Stderr, data)),
                        Ok(None) => self.stderr = None,
                        Err(e) => {
                            tracing::debug!(error = %e, "stderr read failed");
                            self.stderr = None;
                        }
                    },
                }
            }
        })
    }
}

/// Output multiplexed in 8-byte-header frames.
pub(crate) struct FramedOutput {
    reader: Reader,
    buf: BytesMut,
    /// The frame being read: its stream and how much payload is left.
    current: Option<(OutputStream, usize)>,
    ended: bool,
}

const HEADER: usize = 8;

impl FramedOutput {
    pub(crate) fn new(reader: Reader, already_read: Bytes) -> Self {
        FramedOutput {
            reader,
            buf: BytesMut::from(&already_read[..]),
            current: None,
            ended: false,
        }
    }

    /// Takes the payload bytes already buffered, up to the first frame of
    /// another stream (frames of one stream are joined into one chunk).
    fn take_buffered(&mut self) -> Option<(OutputStream, Bytes)> {
        let mut out: Option<(OutputStream, BytesMut)> = None;
        loop {
            match self.current {
                Some((stream, left)) if left > 0 => {
                    if self.buf.is_empty() {
                        break;
                    }
                    match &mut out {
                        Some((s, _)) if *s != stream => break,
                        Some((_, data)) if data.len() >= READ_CHUNK => break,
                        _ => {}
                    }
                    let n = left.min(self.buf.len());
                    let piece = self.buf.split_to(n);
                    match &mut out {
                        Some((_, data)) => data.extend_from_slice(&piece),
                        None => out = Some((stream, piece)),
                    }
                    self.current = (left > n).then_some((stream, left - n));
                }
                _ => {
                    if self.buf.len() < HEADER {
                        break;
                    }
                    let header = self.buf.split_to(HEADER);
                    let size = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
                    // 2 is stderr; 1 (stdout) and anything else (0, stdin,
                    // is never sent by the engine) are stdout.
                    let stream = if header[0] == 2 {
                        OutputStream::Stderr
                    } else {
                        OutputStream::Stdout
                    };
                    self.current = Some((stream, size as usize));
                }
            }
        }
        out.map(|(s, d)| (s, d.freeze()))
    }
}

impl ProcessOutput for FramedOutput {
    fn next_chunk(&mut self) -> BoxFuture<'_, std::io::Result<OutputChunk>> {
        Box::pin(async move {
            loop {
                if let Some((stream, data)) = self.take_buffered() {
                    return Ok(OutputChunk::Data(stream, data));
                }
                if self.ended {
                    return Ok(OutputChunk::End);
                }
                self.buf.reserve(READ_CHUNK);
                match self.reader.read_buf(&mut self.buf).await {
                    Ok(0) => {
                        if !self.buf.is_empty() || self.current.is_some_and(|(_, left)| left > 0) {
                            tracing::debug!("engine stream ended inside a frame");
                        }
                        self.buf.clear();
                        self.current = None;
                        self.ended = true;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "engine stream read failed");
                        self.buf.advance(self.buf.len());
                        self.ended = true;
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(stream: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![stream, 0, 0, 0];
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    async fn collect(out: &mut FramedOutput) -> Vec<(OutputStream, Vec<u8>)> {
        let mut got: Vec<(OutputStream, Vec<u8>)> = Vec::new();
        while let OutputChunk::Data(s, d) = out.next_chunk().await.unwrap() {
            match got.last_mut() {
                Some((last, data)) if *last == s => data.extend_from_slice(&d),
                _ => got.push((s, d.to_vec())),
            }
        }
        got
    }

    #[tokio::test]
    async fn frames_are_split_by_stream_across_any_read_boundary() {
        let mut wire = frame(1, b"hello ");
        wire.extend(frame(1, b"world\n"));
        wire.extend(frame(2, b"oops\n"));
        wire.extend(frame(1, b""));
        wire.extend(frame(1, b"end"));
        // Every split point, including inside headers, gives the same result.
        for cut in 0..wire.len() {
            let (head, tail) = wire.split_at(cut);
            let (mut tx, rx) = tokio::io::duplex(4);
            let tail = tail.to_vec();
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let _ = tx.write_all(&tail).await;
            });
            let mut out = FramedOutput::new(Box::new(rx), Bytes::copy_from_slice(head));
            assert_eq!(
                collect(&mut out).await,
                vec![
                    (OutputStream::Stdout, b"hello world\n".to_vec()),
                    (OutputStream::Stderr, b"oops\n".to_vec()),
                    (OutputStream::Stdout, b"end".to_vec()),
                ],
                "cut at {cut}"
            );
        }
    }

    #[tokio::test]
    async fn a_truncated_frame_ends_the_output_with_what_arrived() {
        let mut wire = frame(1, b"abc");
        wire.extend(&frame(2, b"defgh")[..10]);
        let mut out = FramedOutput::new(Box::new(tokio::io::empty()), Bytes::from(wire));
        assert_eq!(
            collect(&mut out).await,
            vec![
                (OutputStream::Stdout, b"abc".to_vec()),
                (OutputStream::Stderr, b"de".to_vec()),
            ]
        );
    }
}
