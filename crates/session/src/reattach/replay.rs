//! Detach and reattach: a session outlives its client's connection for a
//! grace period, with its output kept in a bounded ring for the client
//! that comes back.
//!
//! With reattach on, a relay task sits between the pump and the door:
//!
//! - **attached**, it takes the pump's next event only once the door has
//!   the previous ones (so a slow client still holds the process back, as
//!   without reattach), and keeps what it forwarded in the ring too, for a
//!   client that reconnects and says how much it really received;
//! - **detached** (the door's receiver was dropped, or the door reported
//!   its client gone), it takes everything the pump sends and keeps the
//!   newest `buffer` bytes: a full ring drops its oldest bytes and never
//!   holds the process back. If nobody reattaches within the grace, the
//!   session is ended as a client-gone session always was.
//!
//! All rings together stay under one budget (`total`), and the rings of
//! one owner (the credential that started their sessions) under a share of
//! it (`total / OWNER_SHARE_DIVISOR`), so one client flooding many detached
//! sessions cannot squeeze every other client's replay out: past either,
//! the ring that grows drops its own oldest bytes.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::deadline::sleep_until_opt;
use crate::reason::EndReason;
use crate::registry::SessionControl;
use crate::session::{OutputStream, SessionEvent};

/// Reattach settings (off unless the server sets them).
#[derive(Debug, Clone)]
pub struct ReattachConfig {
    /// How long a detached session waits for its client.
    pub grace: Duration,
    /// Output kept per session while detached (and for replay), bytes.
    pub buffer: usize,
    /// Output kept by all sessions together, bytes; the sessions of one
    /// owner keep at most `total / OWNER_SHARE_DIVISOR` of it.
    pub total: usize,
}

/// One owner may hold at most `total / OWNER_SHARE_DIVISOR` replay bytes
/// over all its sessions: at least this many owners always find room.
pub const OWNER_SHARE_DIVISOR: usize = 4;

/// The bytes every ring holds, against the configured total, and per owner
/// against its share.
#[derive(Debug)]
pub(crate) struct ReplayBudget {
    used: AtomicUsize,
    total: usize,
    per_owner: usize,
    /// Owners with at least one ring; an entry goes with its last ring.
    owners: Mutex<HashMap<String, Arc<AtomicUsize>>>,
}

impl ReplayBudget {
    pub(crate) fn new(total: usize) -> Arc<Self> {
        Arc::new(ReplayBudget {
            used: AtomicUsize::new(0),
            total,
            per_owner: (total / OWNER_SHARE_DIVISOR).max(1),
            owners: Mutex::new(HashMap::new()),
        })
    }

    /// Bytes held by all rings now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Bytes held by the rings of `owner` now.
    #[cfg(test)]
    fn owner_used(&self, owner: &str) -> usize {
        self.lock_owners()
            .get(owner)
            .map_or(0, |u| u.load(Ordering::Relaxed))
    }

    fn lock_owners(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<AtomicUsize>>> {
        // Plain counters: a panic elsewhere cannot leave the map torn.
        self.owners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The counter a new ring of `owner` adds to. Sessions without an
    /// owner (no tokens: every client is the same anonymous one) have no
    /// share of their own and are bounded by the total only.
    fn share(&self, owner: &str) -> Option<Arc<AtomicUsize>> {
        if owner.is_empty() {
            return None;
        }
        Some(
            self.lock_owners()
                .entry(owner.to_string())
                .or_default()
                .clone(),
        )
    }

    /// A ring of `owner` is gone: forget the owner with its last ring.
    /// Clones are made under the lock only, so the count is exact here.
    fn release(&self, owner: &str, share: &Arc<AtomicUsize>) {
        let mut owners = self.lock_owners();
        if Arc::strong_count(share) <= 2 && owners.get(owner).is_some_and(|s| Arc::ptr_eq(s, share))
        {
            owners.remove(owner);
        }
    }
}

/// Events the door's side may hold: few, so that little of what was
/// handed over is still in flight when a client vanishes.
pub(crate) const ATTACHED_DEPTH: usize = 4;

/// A session's output by byte offset (stdout and stderr counted together).
struct Ring {
    chunks: VecDeque<(u64, OutputStream, Bytes)>,
    /// Offset of the first byte still kept.
    start: u64,
    /// Offset after the last byte received.
    end: u64,
    held: usize,
    budget: Arc<ReplayBudget>,
    owner: String,
    /// What the owner's rings hold together; `None` without an owner.
    share: Option<Arc<AtomicUsize>>,
}

impl Ring {
    fn new(budget: Arc<ReplayBudget>, owner: &str) -> Ring {
        Ring {
            chunks: VecDeque::new(),
            start: 0,
            end: 0,
            held: 0,
            share: budget.share(owner),
            owner: owner.to_string(),
            budget,
        }
    }

    fn push(&mut self, stream: OutputStream, data: Bytes) {
        let len = data.len();
        self.chunks.push_back((self.end, stream, data));
        self.end += len as u64;
        self.held += len;
        self.budget.used.fetch_add(len, Ordering::Relaxed);
        if let Some(share) = &self.share {
            share.fetch_add(len, Ordering::Relaxed);
        }
    }

    /// Drops the oldest chunk; returns the range it covered.
    fn pop(&mut self) -> Option<(u64, u64)> {
        let (offset, _, data) = self.chunks.pop_front()?;
        let len = data.len();
        self.held -= len;
        self.budget.used.fetch_sub(len, Ordering::Relaxed);
        if let Some(share) = &self.share {
            share.fetch_sub(len, Ordering::Relaxed);
        }
        self.start = offset + len as u64;
        Some((offset, self.start))
    }

    /// Drops the first `n` bytes of the oldest chunk; returns the range
    /// they covered.
    fn cut_front(&mut self, n: usize) -> Option<(u64, u64)> {
        let (offset, _, data) = self.chunks.front_mut()?;
        let n = n.min(data.len());
        let from = *offset;
        *data = data.slice(n..);
        *offset += n as u64;
        self.held -= n;
        self.budget.used.fetch_sub(n, Ordering::Relaxed);
        if let Some(share) = &self.share {
            share.fetch_sub(n, Ordering::Relaxed);
        }
        self.start = from + n as u64;
        Some((from, self.start))
    }

    /// Whether this ring must give bytes back: it holds some, and all
    /// rings together are over the total, or its owner's over their share.
    fn over_budget(&self) -> bool {
        self.held > 0
            && (self.budget.used() > self.budget.total
                || self
                    .share
                    .as_ref()
                    .is_some_and(|s| s.load(Ordering::Relaxed) > self.budget.per_owner))
    }

    /// Keeps the ring within `limit` bytes and the budgets; bytes no
    /// client took (below `taken`) are added to `dropped`. With a client
    /// attached, what it has not been handed yet (from `unsent`) stays,
    /// even past the limits: an attached session never loses output.
    fn trim(&mut self, limit: usize, taken: u64, unsent: Option<u64>, dropped: &AtomicU64) {
        while self.held > limit || self.over_budget() {
            let front_end = self
                .chunks
                .front()
                .map(|(offset, _, data)| offset + data.len() as u64);
            if let (Some(end), Some(unsent)) = (front_end, unsent) {
                if end > unsent {
                    break;
                }
            }
            // One chunk alone over the limit (a read that caught up on a
            // backlog can be larger than a small ring): its newest bytes
            // stay, so that a returning client gets the latest output and
            // not nothing. Over the budgets, chunks still go whole.
            let cut = if self.chunks.len() == 1 && self.held > limit && !self.over_budget() {
                self.cut_front(self.held - limit)
            } else {
                self.pop()
            };
            let Some((from, to)) = cut else {
                break;
            };
            if to > taken {
                dropped.fetch_add(to - from.max(taken), Ordering::Relaxed);
            }
        }
    }

    /// The chunk holding `offset`, cut to start there.
    fn at(&self, offset: u64) -> Option<(OutputStream, Bytes)> {
        let idx = self
            .chunks
            .partition_point(|(o, _, d)| o + d.len() as u64 <= offset);
        let (o, stream, data) = self.chunks.get(idx)?;
        let skip = offset.checked_sub(*o)? as usize;
        Some((*stream, data.slice(skip.min(data.len())..)))
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.held, Ordering::Relaxed);
        if let Some(share) = &self.share {
            share.fetch_sub(self.held, Ordering::Relaxed);
            self.budget.release(&self.owner, share);
        }
    }
}

/// Where a reattaching client's replay starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayFrom {
    /// After what execd handed to the previous client's transport.
    Undelivered,
    /// From this byte offset (the client says what it received).
    Offset(u64),
}

/// The door's end of an attachment: events, and how many output bytes it
/// has taken (handed to its transport).
pub(crate) struct Attachment {
    pub events: mpsc::Sender<SessionEvent>,
    pub taken: Arc<AtomicU64>,
    pub from: ReplayFrom,
}

/// Commands to the relay.
pub(crate) enum RelayCommand {
    Attach(Attachment),
    /// The door saw its client go without ending the session.
    Detach,
}

/// A session's detach state, as the admin API shows it.
#[derive(Debug, Default)]
pub struct DetachInfo {
    /// Wall-clock ms when the client went; 0 while attached.
    detached_at_ms: std::sync::atomic::AtomicI64,
    /// Output bytes no client received because the ring was full.
    dropped: AtomicU64,
    /// Nobody can come back any more (grace over, or shutdown).
    abandoned: std::sync::atomic::AtomicBool,
}

impl DetachInfo {
    /// When the session detached (Unix ms), if it is detached.
    pub fn detached_at_ms(&self) -> Option<i64> {
        Some(self.detached_at_ms.load(Ordering::Relaxed)).filter(|&t| t != 0)
    }

    pub(crate) fn is_abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Relaxed)
    }

    pub fn dropped_bytes(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn set_detached(&self, at: Option<i64>) {
        // 0 means attached: a clock before 1970 still reads as detached.
        let stored = at.map_or(0, |t| t.max(1));
        self.detached_at_ms.store(stored, Ordering::SeqCst);
    }

    /// Claims a detached session for one returning client: of several
    /// reattaches racing for it, exactly one gets true (the others find
    /// it attached), so no attachment is ever replaced under a client.
    pub(crate) fn claim(&self) -> bool {
        let at = self.detached_at_ms.load(Ordering::SeqCst);
        at != 0
            && self
                .detached_at_ms
                .compare_exchange(at, 0, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
    }
}

pub(crate) struct Relay {
    pub from_pump: mpsc::Receiver<SessionEvent>,
    pub commands: mpsc::Receiver<RelayCommand>,
    pub config: ReattachConfig,
    pub budget: Arc<ReplayBudget>,
    pub control: Arc<SessionControl>,
    pub info: Arc<DetachInfo>,
    pub shutdown: CancellationToken,
    pub session_id: String,
    /// Whose replay share the ring counts against (empty: none).
    pub owner: String,
}

struct Current {
    events: mpsc::Sender<SessionEvent>,
    taken: Arc<AtomicU64>,
    /// Offset of the first byte of this attachment.
    base: u64,
    /// Next offset to hand to the door.
    next: u64,
}

impl Relay {
    pub(crate) async fn run(mut self, first: Attachment) {
        let mut ring = Ring::new(self.budget.clone(), &self.owner);
        let mut current = Some(Current {
            events: first.events,
            taken: first.taken,
            base: 0,
            next: 0,
        });
        let mut last_taken: u64 = 0;
        let mut final_event: Option<SessionEvent> = None;
        let mut pump_done = false;
        let mut grace_until: Option<tokio::time::Instant> = None;
        // Nobody will come back: shutdown, or the grace ran out.
        let mut abandoned = false;
        loop {
            if pump_done && current.is_none() && (final_event.is_none() || abandoned) {
                return;
            }
            let caught_up = current.as_ref().is_none_or(|c| c.next >= ring.end);
            let forward = current
                .as_ref()
                .filter(|c| c.next < ring.end)
                .and_then(|c| ring.at(c.next.max(ring.start)));
            let deliver_final = caught_up && current.is_some() && final_event.is_some();
            // A handle of its own, so a permit does not borrow `current`.
            let door = current.as_ref().map(|c| c.events.clone());
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled(), if current.is_none() && !abandoned => {
                    // The pump ends the session; its last event closes this.
                    self.control.end(EndReason::Shutdown);
                    grace_until = None;
                    abandoned = true;
                    self.info.abandoned.store(true, Ordering::Relaxed);
                }
                cmd = self.commands.recv() => match cmd {
                    Some(RelayCommand::Attach(a)) => {
                        if let Some(c) = current.take() {
                            last_taken = c.base + c.taken.load(Ordering::Relaxed);
                        }
                        let wanted = match a.from {
                            ReplayFrom::Undelivered => last_taken,
                            ReplayFrom::Offset(n) => n.min(ring.end),
                        };
                        if wanted < ring.start {
                            tracing::info!(session_id = %self.session_id, lost = ring.start - wanted, "replay starts after output the ring no longer holds");
                        }
                        let next = wanted.max(ring.start);
                        self.info.set_detached(None);
                        grace_until = None;
                        abandoned = false;
                        current = Some(Current { events: a.events, taken: a.taken, base: next, next });
                    }
                    Some(RelayCommand::Detach) => {
                        self.detach(&mut current, &mut last_taken, &mut grace_until);
                    }
                    None => {}
                },
                permit = reserve_opt(door.as_ref()), if forward.is_some() || deliver_final => {
                    match permit {
                        Ok(permit) => {
                            if let (Some((stream, data)), Some(c)) = (forward.clone(), current.as_mut()) {
                                c.next += data.len() as u64;
                                permit.send(SessionEvent::Output { stream, data });
                            } else if let Some(event) = final_event.take() {
                                permit.send(event);
                                // Delivered: nothing is left to reattach to.
                                return;
                            }
                        }
                        Err(()) => self.detach(&mut current, &mut last_taken, &mut grace_until),
                    }
                }
                _ = closed_opt(door.as_ref()) => {
                    self.detach(&mut current, &mut last_taken, &mut grace_until);
                }
                event = self.from_pump.recv(), if !pump_done && (caught_up || current.is_none()) => match event {
                    Some(SessionEvent::Output { stream, data }) => {
                        // A copy of its own: the chunk may be a small slice
                        // of a large read buffer, which it would otherwise
                        // keep alive for as long as the ring holds it.
                        ring.push(stream, Bytes::copy_from_slice(&data));
                        let taken = current.as_ref().map(|c| c.base + c.taken.load(Ordering::Relaxed)).unwrap_or(last_taken);
                        ring.trim(self.config.buffer, taken, current.as_ref().map(|c| c.next), &self.info.dropped);
                    }
                    Some(event) => {
                        final_event = Some(event);
                        pump_done = true;
                    }
                    None => pump_done = true,
                },
                _ = sleep_until_opt(grace_until) => {
                    grace_until = None;
                    abandoned = true;
                    self.info.abandoned.store(true, Ordering::Relaxed);
                    tracing::info!(session_id = %self.session_id, "nobody reattached within the grace; ending the session");
                    self.control.end(EndReason::ClientGone);
                }
            }
        }
    }

    fn detach(
        &mut self,
        current: &mut Option<Current>,
        last_taken: &mut u64,
        grace_until: &mut Option<tokio::time::Instant>,
    ) {
        let Some(c) = current.take() else {
            return;
        };
        *last_taken = c.base + c.taken.load(Ordering::Relaxed);
        self.info.set_detached(Some(crate::registry::now_ms()));
        *grace_until = Some(tokio::time::Instant::now() + self.config.grace);
        tracing::info!(session_id = %self.session_id, grace = ?self.config.grace, "client gone; session detached");
    }
}

async fn reserve_opt(
    tx: Option<&mpsc::Sender<SessionEvent>>,
) -> Result<mpsc::Permit<'_, SessionEvent>, ()> {
    match tx {
        Some(tx) => tx.reserve().await.map_err(|_| ()),
        None => std::future::pending().await,
    }
}

async fn closed_opt(tx: Option<&mpsc::Sender<SessionEvent>>) {
    match tx {
        Some(tx) => tx.closed().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring_in(budget: Arc<ReplayBudget>) -> Ring {
        Ring::new(budget, "")
    }

    fn ring() -> Ring {
        ring_in(ReplayBudget::new(1 << 20))
    }

    #[test]
    fn offsets_find_the_right_chunk_and_cut_it() {
        let mut r = ring();
        r.push(OutputStream::Stdout, Bytes::from_static(b"hello "));
        r.push(OutputStream::Stderr, Bytes::from_static(b"world"));
        assert_eq!(r.at(0).unwrap().1, Bytes::from_static(b"hello "));
        assert_eq!(r.at(3).unwrap().1, Bytes::from_static(b"lo "));
        let (stream, data) = r.at(8).unwrap();
        assert_eq!(
            (stream, data),
            (OutputStream::Stderr, Bytes::from_static(b"rld"))
        );
        assert!(r.at(11).is_none());
        assert_eq!(r.pop(), Some((0, 6)));
        assert_eq!(r.start, 6);
        assert_eq!(r.at(6).unwrap().1, Bytes::from_static(b"world"));
    }

    /// The ring keeps whole chunks within its limit (a single chunk over it
    /// keeps its newest bytes), oldest out first;
    /// offsets keep counting from the session's first byte, bytes no
    /// client took are counted as dropped, and what an attached client was
    /// not handed yet is kept even past the limit.
    #[test]
    fn the_ring_is_bounded_by_whole_chunks_and_keeps_offsets() {
        let mut r = ring();
        let dropped = AtomicU64::new(0);
        for chunk in [&b"aaaa"[..], b"bbbb", b"cccc"] {
            r.push(OutputStream::Stdout, Bytes::copy_from_slice(chunk));
            r.trim(10, 4, None, &dropped);
        }
        assert_eq!((r.start, r.end, r.held), (4, 12, 8));
        assert_eq!(dropped.load(Ordering::Relaxed), 0, "bytes 0..4 were taken");
        r.push(OutputStream::Stdout, Bytes::from_static(b"dddd"));
        r.trim(10, 4, None, &dropped);
        assert_eq!((r.start, r.end, r.held), (8, 16, 8));
        assert_eq!(dropped.load(Ordering::Relaxed), 4, "bytes 4..8 nobody took");
        assert_eq!(r.at(8).unwrap().1, Bytes::from_static(b"cccc"));
        assert_eq!(r.at(13).unwrap().1, Bytes::from_static(b"ddd"));
        assert!(r.at(4).is_none(), "dropped bytes are not found");
        // Attached, the client not yet handed 8..: nothing goes.
        r.push(OutputStream::Stdout, Bytes::from_static(b"eeee"));
        r.trim(10, 8, Some(8), &dropped);
        assert_eq!((r.start, r.end, r.held), (8, 20, 12));
        // A chunk larger than the limit keeps its newest bytes: the older
        // chunks go whole, then its head.
        let mut tail = vec![b'f'; 30];
        tail[29] = b'z';
        r.push(OutputStream::Stdout, Bytes::from(tail));
        r.trim(10, 20, None, &dropped);
        assert_eq!((r.start, r.end, r.held), (40, 50, 10));
        assert_eq!(r.at(40).unwrap().1, Bytes::from_static(b"fffffffffz"));
        assert!(r.at(39).is_none());
        assert_eq!(
            dropped.load(Ordering::Relaxed),
            4 + 20,
            "bytes 20..40 nobody took"
        );
    }

    #[test]
    fn the_budget_counts_every_ring() {
        let budget = ReplayBudget::new(100);
        {
            let mut a = ring_in(budget.clone());
            a.push(OutputStream::Stdout, Bytes::from(vec![0u8; 40]));
            assert_eq!(budget.used(), 40);
            a.pop();
            a.push(OutputStream::Stdout, Bytes::from(vec![0u8; 7]));
            assert_eq!(budget.used(), 7);
        }
        assert_eq!(budget.used(), 0, "a ring gives its bytes back when dropped");
    }

    /// One owner's rings together stay within a quarter of the total, so
    /// another owner's ring keeps everything it may hold.
    #[test]
    fn one_owner_cannot_take_the_whole_budget() {
        let budget = ReplayBudget::new(400);
        let dropped = AtomicU64::new(0);
        let mut greedy: Vec<Ring> = (0..8).map(|_| Ring::new(budget.clone(), "a")).collect();
        for ring in &mut greedy {
            ring.push(OutputStream::Stdout, Bytes::from(vec![0u8; 60]));
            ring.trim(1000, 0, None, &dropped);
        }
        assert!(budget.owner_used("a") <= 100, "{}", budget.owner_used("a"));
        assert!(dropped.load(Ordering::Relaxed) >= 380);
        let mut other = Ring::new(budget.clone(), "b");
        for _ in 0..5 {
            other.push(OutputStream::Stdout, Bytes::from(vec![0u8; 20]));
            other.trim(1000, 0, None, &dropped);
        }
        assert_eq!(other.held, 100, "the other owner keeps its whole share");
        // Anonymous sessions (no tokens) are bounded by the total only.
        let mut anonymous = Ring::new(budget.clone(), "");
        anonymous.push(OutputStream::Stdout, Bytes::from(vec![0u8; 150]));
        anonymous.trim(1000, 0, None, &dropped);
        assert_eq!(anonymous.held, 150);
        drop(greedy);
        assert_eq!(budget.owner_used("a"), 0);
        assert!(
            budget.lock_owners().get("a").is_none(),
            "forgotten with its last ring"
        );
        drop((other, anonymous));
        assert_eq!(budget.used(), 0);
    }

    /// Of two reattaches racing for one detached session, one wins.
    #[test]
    fn a_detached_session_is_claimed_once() {
        let info = DetachInfo::default();
        assert!(!info.claim(), "attached: nothing to claim");
        info.set_detached(Some(1234));
        assert!(info.claim());
        assert!(!info.claim(), "the second finds it attached");
        assert_eq!(info.detached_at_ms(), None);
    }
}
