//! A session's terminal size: what the client asked for last, and how far
//! the terminal inside the container has caught up.
//!
//! Sizes and input travel separately (the resizer task and the stdin
//! writer), and a resize takes a round trip the input does not (the
//! engine's resize call, or the CLI's SIGWINCH relay). A client that
//! resizes and then types (`stty size` after a resize, a full-screen
//! program's first keystroke) expects the process to see the new size when
//! it reads that input, as the real engine gives it: its resize call
//! returns once the terminal has the size. So every resize gets a sequence
//! number, the resizer reports the number it has applied, and the stdin
//! writer holds input that followed a resize until that resize is applied
//! (bounded by [`INPUT_WAITS_FOR_RESIZE`], so a stuck engine cannot stall
//! input).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::command::TermSize;

/// Longest input waits for the resize before it to be applied.
pub(crate) const INPUT_WAITS_FOR_RESIZE: Duration = Duration::from_secs(1);

/// The size channel of one terminal session.
pub(crate) struct SizeChannel {
    requested: watch::Sender<TermSize>,
    /// Sequence number of the latest request; changed only while the
    /// watch's write lock is held, read while a read guard is held, so a
    /// size and its number are always seen together.
    seq: AtomicU64,
    applied: watch::Sender<u64>,
}

impl SizeChannel {
    /// A channel starting at `initial` (sequence 0, applied), and the
    /// resizer's end of it.
    pub(crate) fn new(initial: TermSize) -> (Arc<SizeChannel>, watch::Receiver<TermSize>) {
        let (requested, rx) = watch::channel(initial);
        let channel = SizeChannel {
            requested,
            seq: AtomicU64::new(0),
            applied: watch::channel(0).0,
        };
        (Arc::new(channel), rx)
    }

    /// Asks for `size`; returns its sequence number. Every request counts,
    /// the same size again too (the terminal may have drifted).
    pub(crate) fn request(&self, size: TermSize) -> u64 {
        let mut seq = 0;
        self.requested.send_modify(|current| {
            seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
            *current = size;
        });
        seq
    }

    /// The size asked for last.
    pub(crate) fn current(&self) -> TermSize {
        *self.requested.borrow()
    }

    /// The latest size and its number, marked seen on `rx`.
    pub(crate) fn take_latest(&self, rx: &mut watch::Receiver<TermSize>) -> (TermSize, u64) {
        let guard = rx.borrow_and_update();
        let seq = self.seq.load(Ordering::SeqCst);
        (*guard, seq)
    }

    /// The resizer applied request `seq` (and every one before it).
    pub(crate) fn applied(&self, seq: u64) {
        self.applied.send_if_modified(|done| {
            let newer = seq > *done;
            if newer {
                *done = seq;
            }
            newer
        });
    }

    /// Waits (at most [`INPUT_WAITS_FOR_RESIZE`]) until request `seq` is
    /// applied; true if it was.
    pub(crate) async fn wait_applied(&self, seq: u64) -> bool {
        let mut rx = self.applied.subscribe();
        let waited =
            tokio::time::timeout(INPUT_WAITS_FOR_RESIZE, rx.wait_for(|done| *done >= seq)).await;
        matches!(waited, Ok(Ok(_)))
    }

    /// Number of the latest request.
    pub(crate) fn latest_seq(&self) -> u64 {
        self.seq.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(rows: u16, cols: u16) -> TermSize {
        TermSize { rows, cols }
    }

    #[tokio::test(start_paused = true)]
    async fn input_waits_for_the_resize_before_it() {
        let (channel, mut rx) = SizeChannel::new(size(24, 80));
        assert!(channel.wait_applied(0).await, "the initial size is applied");
        let seq = channel.request(size(33, 101));
        assert_eq!(seq, 1);
        assert!(rx.has_changed().unwrap());
        let resizer = {
            let channel = channel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let (target, seq) = channel.take_latest(&mut rx);
                assert_eq!(target, size(33, 101));
                channel.applied(seq);
            })
        };
        let started = tokio::time::Instant::now();
        assert!(channel.wait_applied(seq).await);
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        resizer.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_resize_never_applied_holds_input_only_so_long() {
        let (channel, _rx) = SizeChannel::new(size(24, 80));
        let seq = channel.request(size(10, 10));
        let started = tokio::time::Instant::now();
        assert!(!channel.wait_applied(seq).await);
        assert_eq!(started.elapsed(), INPUT_WAITS_FOR_RESIZE);
    }

    #[test]
    fn the_same_size_again_is_a_new_request_and_applied_only_grows() {
        let (channel, mut rx) = SizeChannel::new(size(24, 80));
        channel.request(size(24, 80));
        assert!(rx.has_changed().unwrap());
        assert_eq!(channel.take_latest(&mut rx), (size(24, 80), 1));
        channel.applied(1);
        channel.applied(0);
        assert_eq!(*channel.applied.borrow(), 1);
        assert_eq!(channel.latest_seq(), 1);
        assert_eq!(channel.current(), size(24, 80));
    }
}
