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
///
/// One allocation serves many chunks: each chunk is split off the front
/// (sharing the allocation, no copy) and the next read goes into the
/// unused rest. A refill is reserved only when that rest is nearly used
/// up; `BytesMut::reserve` then takes the old allocation back when every
/// chunk cut from it is gone, and allocates only while some is still on
/// its way to the client. A fresh buffer per chunk would cost a large
/// allocation (and its page faults) per read on a busy stream.
#[derive(Default)]
struct ReadBuf {
    buf: BytesMut,
    /// What the next refill reserves.
    size: usize,
}

impl ReadBuf {
    /// Makes room for the next read, returning how much there is.
    fn make_room(&mut self) -> usize {
        let size = self.size.max(FIRST_READ);
        if self.buf.capacity() - self.buf.len() < size / 4 {
            self.buf.reserve(size);
        }
        self.size = size;
        self.buf.capacity() - self.buf.len()
    }

    /// A read of `n` bytes went into `room`: one that filled it doubles
    /// the next refill, up to [`READ_CHUNK`]; the size never shrinks back.
    fn grow_if_filled(&mut self, n: usize, room: usize) {
        if n == room {
            self.size = (self.size * 2).min(READ_CHUNK);
        }
    }

    /// Reads into the buffer (cancel-safe: data lands in it only when the
    /// read completes) and splits the new bytes off without copying.
    async fn read(&mut self, reader: &mut Reader) -> std::io::Result<Option<Bytes>> {
        let room = self.make_room();
        let n = reader.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Ok(None);
        }
        self.grow_if_filled(n, room);
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
    /// Frames are decoded in place; payloads are split off it. Grown by the
    /// same rule as a pipe's buffer, so an idle session holds little.
    read: ReadBuf,
    /// The frame being read: its stream and how much payload is left.
    current: Option<(OutputStream, usize)>,
    ended: bool,
}

const HEADER: usize = 8;

impl FramedOutput {
    pub(crate) fn new(reader: Reader, already_read: Bytes) -> Self {
        FramedOutput {
            reader,
            read: ReadBuf {
                buf: BytesMut::from(&already_read[..]),
                size: FIRST_READ,
            },
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
                    if self.read.buf.is_empty() {
                        break;
                    }
                    match &mut out {
                        Some((s, _)) if *s != stream => break,
                        Some((_, data)) if data.len() >= READ_CHUNK => break,
                        _ => {}
                    }
                    let n = left.min(self.read.buf.len());
                    let piece = self.read.buf.split_to(n);
                    match &mut out {
                        Some((_, data)) => data.extend_from_slice(&piece),
                        None => out = Some((stream, piece)),
                    }
                    self.current = (left > n).then_some((stream, left - n));
                }
                _ => {
                    if self.read.buf.len() < HEADER {
                        break;
                    }
                    let header = self.read.buf.split_to(HEADER);
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
                let room = self.read.make_room();
                match self.reader.read_buf(&mut self.read.buf).await {
                    Ok(0) => {
                        if !self.read.buf.is_empty()
                            || self.current.is_some_and(|(_, left)| left > 0)
                        {
                            tracing::debug!("engine stream ended inside a frame");
                        }
                        self.read.buf.clear();
                        self.current = None;
                        self.ended = true;
                    }
                    Ok(n) => self.read.grow_if_filled(n, room),
                    Err(e) => {
                        tracing::debug!(error = %e, "engine stream read failed");
                        self.read.buf.advance(self.read.buf.len());
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

    /// A reader handing out `sizes` bytes per read, in turn, forever.
    struct Steady {
        sizes: Vec<usize>,
        next: usize,
    }

    impl AsyncRead for Steady {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let want = self.sizes[self.next % self.sizes.len()];
            self.next += 1;
            let n = want.min(buf.remaining());
            buf.put_slice(&vec![b'x'; n]);
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// Reads `count` chunks, keeping them all (as the channel to the client
    /// does), and returns them with the number of allocations they came
    /// from (a chunk not right after the one before starts a new one).
    async fn read_kept(sizes: Vec<usize>, count: usize) -> (Vec<Bytes>, usize, ReadBuf) {
        let mut reader: Reader = Box::new(Steady { sizes, next: 0 });
        let mut buf = ReadBuf::default();
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut allocations = 0;
        for _ in 0..count {
            let chunk = buf.read(&mut reader).await.unwrap().unwrap();
            let follows = chunks
                .last()
                .is_some_and(|last| last.as_ptr().wrapping_add(last.len()) == chunk.as_ptr());
            if !follows {
                allocations += 1;
            }
            chunks.push(chunk);
        }
        (chunks, allocations, buf)
    }

    /// Small reads (an idle or chatty terminal) share one 4 KiB buffer
    /// until it is used up, and the buffer never grows for them.
    #[tokio::test]
    async fn small_reads_share_one_buffer_which_stays_small() {
        let (chunks, allocations, buf) = read_kept(vec![1000], 40).await;
        assert!(chunks.iter().all(|c| c.len() == 1000));
        // Four 1000-byte chunks per 4 KiB buffer (the fifth read finds
        // less than a quarter left and gets a fresh one).
        assert_eq!(allocations, 10);
        assert_eq!(buf.size, FIRST_READ);
        assert!(buf.buf.capacity() <= FIRST_READ, "{}", buf.buf.capacity());
    }

    /// Reads that fill the buffer grow it to READ_CHUNK; a small read
    /// after that does not shrink it, so the next large read is not
    /// refilled small and regrown.
    #[tokio::test]
    async fn a_grown_buffer_does_not_shrink_and_regrow_per_chunk() {
        let mut sizes = vec![usize::MAX; 8];
        sizes.extend([10, usize::MAX, 10, usize::MAX]);
        let (chunks, _, buf) = read_kept(sizes, 12).await;
        let lens: Vec<usize> = chunks.iter().map(Bytes::len).collect();
        assert_eq!(lens[..7], [4096, 8192, 16384, 32768, 65536, 131072, 262144]);
        assert_eq!(buf.size, READ_CHUNK);
        // After the small read, the rest of the buffer serves the next
        // large read; after that, a full READ_CHUNK again.
        assert_eq!(lens[8], 10);
        assert_eq!(lens[9], READ_CHUNK - 10);
        assert_eq!(lens[10], 10);
        assert_eq!(lens[11], READ_CHUNK - 10);
    }

    /// Once the chunks cut from it are gone, the same allocation is taken
    /// back for the next reads instead of a fresh one.
    #[tokio::test]
    async fn a_buffer_whose_chunks_are_gone_is_reused() {
        let mut reader: Reader = Box::new(Steady {
            sizes: vec![usize::MAX],
            next: 0,
        });
        let mut buf = ReadBuf {
            buf: BytesMut::new(),
            size: READ_CHUNK,
        };
        let first = buf.read(&mut reader).await.unwrap().unwrap();
        let base = first.as_ptr();
        assert_eq!(first.len(), READ_CHUNK);
        drop(first);
        for _ in 0..5 {
            let chunk = buf.read(&mut reader).await.unwrap().unwrap();
            assert_eq!(chunk.as_ptr(), base, "the same allocation");
            assert_eq!(chunk.len(), READ_CHUNK);
        }
    }

    /// The engine's framed stream follows the same rule: an idle session's
    /// buffer stays small.
    #[tokio::test]
    async fn framed_output_starts_small() {
        let wire = frame(1, b"hi");
        let (mut tx, rx) = tokio::io::duplex(64);
        use tokio::io::AsyncWriteExt;
        tx.write_all(&wire).await.unwrap();
        let mut out = FramedOutput::new(Box::new(rx), Bytes::new());
        match out.next_chunk().await.unwrap() {
            OutputChunk::Data(OutputStream::Stdout, d) => assert_eq!(&d[..], b"hi"),
            _ => panic!("expected the payload"),
        }
        assert!(
            out.read.buf.capacity() <= FIRST_READ,
            "{}",
            out.read.buf.capacity()
        );
        drop(tx);
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
