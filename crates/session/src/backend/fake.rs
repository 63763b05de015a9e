//! A backend for the session core's unit tests: no Docker, no process.
//! The test holds the other ends — what the session wrote to stdin (a
//! `tokio::io::duplex`), the output to feed, the exit to report, the sizes
//! applied — and drives the session's tasks (pump, stdin writer, resizer)
//! exactly as a real backend's process would.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::DuplexStream;
use tokio::sync::{mpsc, watch};

use super::{
    BoxFuture, OutputChunk, OutputStream, Process, ProcessControl, ProcessOutput, Resizer,
    WaitError,
};
use crate::command::TermSize;

/// The test's side of one fake process.
pub(crate) struct FakeHandle {
    /// What the session wrote to the process's stdin; EOF when the session
    /// closed it.
    pub stdin: DuplexStream,
    output: mpsc::Sender<Option<(OutputStream, Bytes)>>,
    exit: watch::Sender<Option<i32>>,
    pub killed: Arc<AtomicBool>,
    /// How often the session let go of the process (`finish`).
    pub finished: Arc<AtomicUsize>,
    pub sizes: Arc<Mutex<Vec<TermSize>>>,
    /// How long applying a size takes (a slow runtime), zero at first.
    pub resize_delay: Arc<Mutex<Duration>>,
}

impl FakeHandle {
    /// The process prints `data`.
    pub async fn print(&self, stream: OutputStream, data: &'static [u8]) {
        let _ = self
            .output
            .send(Some((stream, Bytes::from_static(data))))
            .await;
    }

    /// Every output stream ends.
    pub async fn close_output(&self) {
        let _ = self.output.send(None).await;
    }

    /// The process exits with `code`.
    pub fn exit(&self, code: i32) {
        self.exit.send_replace(Some(code));
    }
}

/// A fake process: pipes, or a terminal (EOF character ^D, sizes recorded).
/// `stdin_buffer` is how much the process's stdin holds before the writer
/// has to wait (a process that does not read).
pub(crate) fn process(tty: bool, stdin_buffer: usize) -> (Process, FakeHandle) {
    let (ours, theirs) = tokio::io::duplex(stdin_buffer);
    let (output_tx, output_rx) = mpsc::channel(64);
    let (exit_tx, exit_rx) = watch::channel(None);
    let killed = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(AtomicUsize::new(0));
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let resize_delay = Arc::new(Mutex::new(Duration::ZERO));
    let process = Process {
        stdin: Box::new(ours),
        output: Box::new(FakeOutput { rx: output_rx }),
        eof_char: tty.then_some(4),
        resizer: tty.then(|| {
            Box::new(FakeResizer {
                sizes: sizes.clone(),
                delay: resize_delay.clone(),
            }) as Box<dyn Resizer>
        }),
        control: Box::new(FakeControl {
            exit: exit_rx,
            killed: killed.clone(),
            finished: finished.clone(),
        }),
    };
    let handle = FakeHandle {
        stdin: theirs,
        output: output_tx,
        exit: exit_tx,
        killed,
        finished,
        sizes,
        resize_delay,
    };
    (process, handle)
}

struct FakeOutput {
    rx: mpsc::Receiver<Option<(OutputStream, Bytes)>>,
}

impl ProcessOutput for FakeOutput {
    fn next_chunk(&mut self) -> BoxFuture<'_, std::io::Result<OutputChunk>> {
        Box::pin(async move {
            Ok(match self.rx.recv().await {
                Some(Some((stream, data))) => OutputChunk::Data(stream, data),
                Some(None) | None => OutputChunk::End,
            })
        })
    }
}

struct FakeResizer {
    sizes: Arc<Mutex<Vec<TermSize>>>,
    delay: Arc<Mutex<Duration>>,
}

impl Resizer for FakeResizer {
    fn resize(&self, size: TermSize) -> BoxFuture<'_, std::io::Result<()>> {
        let delay = *self.delay.lock().unwrap_or_else(|p| p.into_inner());
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            self.sizes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(size);
            Ok(())
        })
    }

    fn needs_checks(&self) -> bool {
        false
    }
}

struct FakeControl {
    exit: watch::Receiver<Option<i32>>,
    killed: Arc<AtomicBool>,
    finished: Arc<AtomicUsize>,
}

impl ProcessControl for FakeControl {
    fn wait(&mut self) -> BoxFuture<'_, Result<i32, WaitError>> {
        Box::pin(async move {
            match self.exit.wait_for(Option::is_some).await {
                Ok(code) => Ok(code.unwrap_or_default()),
                // The test dropped its handle: the process is gone.
                Err(_) => Ok(137),
            }
        })
    }

    fn has_exited(&mut self) -> bool {
        self.exit.borrow().is_some()
    }

    fn kill(&mut self) -> BoxFuture<'_, ()> {
        self.killed.store(true, Ordering::SeqCst);
        Box::pin(async {})
    }

    fn finish(&mut self) -> BoxFuture<'_, ()> {
        self.finished.fetch_add(1, Ordering::SeqCst);
        Box::pin(async {})
    }
}
