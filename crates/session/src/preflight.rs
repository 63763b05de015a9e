//! The bound on engine calls outside sessions, and what they leave for a
//! moment.
//!
//! A session's start asks its backend whether the container exists and
//! runs ([`crate::backend::Backend::check`], at the same moment as the
//! exec starts, so it costs no latency on the happy path); STARTED is sent
//! only once the engine has confirmed a running container. Doors also ask
//! before any session exists (the Docker door's create and inspect, CRI
//! Exec and Attach, pod attach, the container lists): every such question
//! passes the session manager's [`EngineGate`]: at most
//! [`MAX_ENGINE_CALLS`] at once for all doors together, a permit waited for
//! at most [`PERMIT_WAIT`], then [`EngineBusy`]. A session's own start
//! never waits there. Answers about running containers are reused for
//! [`CACHE_TTL`] (kubectl GETs the pod right before its exec, the docker
//! CLI inspects right before its create).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::backend::inspect::{ContainerDocument, ContainerState};
// Where the OCI backend's start finds it.
pub use crate::backend::inspect::PreflightError;

/// Most engine calls outside sessions at once, for every door together.
pub const MAX_ENGINE_CALLS: usize = 64;
/// How long a query waits for a permit before it is refused as busy.
pub const PERMIT_WAIT: Duration = Duration::from_secs(1);
/// How long an answer about a running container is reused.
pub const CACHE_TTL: Duration = Duration::from_millis(1500);
/// Most answers remembered per kind, and most bytes of documents.
const CACHE_ENTRIES: usize = 256;
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// The gate was full for a moment (a second): a limit reached, the client
/// is to retry in a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the container engine is busy: {limit} engine queries for requests outside sessions \
     are running; retry in a moment"
)]
pub struct EngineBusy {
    /// The gate's size ([`MAX_ENGINE_CALLS`]).
    pub limit: usize,
}

/// The shared bound on out-of-session engine calls and the answers they
/// leave for a moment. One per [`crate::SessionManager`], so every door
/// shares it.
pub struct EngineGate {
    permits: Arc<Semaphore>,
    limit: usize,
    wait: Duration,
    /// Out-of-session `check_container` answers that found it running.
    checks: Recent<ContainerState>,
    /// Inspect documents of running containers.
    documents: Recent<ContainerDocument>,
}

impl Default for EngineGate {
    fn default() -> Self {
        EngineGate::new(MAX_ENGINE_CALLS, PERMIT_WAIT)
    }
}

impl EngineGate {
    /// At most `limit` calls at once (at least one); a call waits at most
    /// `wait` for its permit.
    pub fn new(limit: usize, wait: Duration) -> Self {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        EngineGate {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            wait,
            checks: Recent::new(CACHE_TTL, CACHE_ENTRIES, CACHE_BYTES),
            documents: Recent::new(CACHE_TTL, CACHE_ENTRIES, CACHE_BYTES),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Engine calls running now.
    pub fn in_use(&self) -> usize {
        self.limit.saturating_sub(self.permits.available_permits())
    }

    /// The state of a container seen running in the last moments, by a
    /// check or in an inspect document.
    pub(crate) fn recently_running(&self, container_id: &str) -> Option<ContainerState> {
        if let Some(state) = self.checks.get(container_id) {
            return Some(state);
        }
        self.documents.get(container_id)?.running_state()
    }

    /// A running container's inspect document of the last moments.
    pub(crate) fn recent_document(&self, reference: &str) -> Option<ContainerDocument> {
        self.documents.get(reference)
    }

    /// Remembers a running container's inspect document.
    pub(crate) fn remember_document(&self, reference: &str, document: ContainerDocument) {
        let size = document.len();
        self.documents.put(reference, document, size);
    }

    /// Remembers that a check found `container_id` running.
    pub(crate) fn remember_running(&self, container_id: &str, state: ContainerState) {
        self.checks.put(container_id, state, 0);
    }

    /// Permits for `calls` engine calls at once, held until dropped; busy
    /// after [`PERMIT_WAIT`] without them.
    pub(crate) async fn enter(&self, calls: u32) -> Result<OwnedSemaphorePermit, EngineBusy> {
        let calls = calls.clamp(1, u32::try_from(self.limit).unwrap_or(u32::MAX));
        let busy = EngineBusy { limit: self.limit };
        match tokio::time::timeout(self.wait, self.permits.clone().acquire_many_owned(calls)).await
        {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; a closed one is busy forever.
            Ok(Err(_)) | Err(_) => Err(busy),
        }
    }
}

/// Answers kept for a short while, bounded in count and bytes; the oldest
/// go first.
struct Recent<V> {
    ttl: Duration,
    max_entries: usize,
    max_bytes: usize,
    inner: Mutex<RecentInner<V>>,
}

struct RecentInner<V> {
    entries: HashMap<String, Remembered<V>>,
    bytes: usize,
}

struct Remembered<V> {
    at: Instant,
    value: V,
    bytes: usize,
}

impl<V: Clone> Recent<V> {
    fn new(ttl: Duration, max_entries: usize, max_bytes: usize) -> Self {
        Recent {
            ttl,
            max_entries,
            max_bytes,
            inner: Mutex::new(RecentInner {
                entries: HashMap::new(),
                bytes: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RecentInner<V>> {
        // A panic elsewhere must not take every door down with it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, key: &str) -> Option<V> {
        let inner = self.lock();
        let hit = inner.entries.get(key)?;
        (hit.at.elapsed() < self.ttl).then(|| hit.value.clone())
    }

    /// Remembers `value` (of about `size` bytes) under `key`.
    fn put(&self, key: &str, value: V, size: usize) {
        // Key, value and the map's own share.
        let bytes = key.len() + size + 64;
        if bytes > self.max_bytes / 4 {
            return;
        }
        let mut inner = self.lock();
        let inner = &mut *inner;
        let ttl = self.ttl;
        inner.entries.retain(|_, e| e.at.elapsed() < ttl);
        inner.entries.remove(key);
        inner.bytes = inner.entries.values().map(|e| e.bytes).sum();
        while !inner.entries.is_empty()
            && (inner.entries.len() >= self.max_entries || inner.bytes + bytes > self.max_bytes)
        {
            let Some(oldest) = inner
                .entries
                .iter()
                .min_by_key(|(_, e)| e.at)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(gone) = inner.entries.remove(&oldest) {
                inner.bytes -= gone.bytes;
            }
        }
        inner.bytes += bytes;
        inner.entries.insert(
            key.to_string(),
            Remembered {
                at: Instant::now(),
                value,
                bytes,
            },
        );
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_answers_are_bounded_and_expire() {
        let recent = Recent::new(Duration::from_millis(200), 3, 4096);
        for key in ["a", "b", "c", "d"] {
            recent.put(key, key.to_string(), 10);
        }
        assert_eq!(recent.len(), 3);
        assert_eq!(recent.get("a"), None, "the oldest goes first");
        assert_eq!(recent.get("d").as_deref(), Some("d"));
        // Over a quarter of the byte budget is never kept; bytes bound too.
        recent.put("huge", "x".into(), 2000);
        assert_eq!(recent.get("huge"), None);
        for key in ["e", "f", "g"] {
            recent.put(key, key.to_string(), 900);
        }
        assert!(recent.len() <= 3 && recent.lock().bytes <= 4096);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(recent.get("g"), None);
    }

    #[tokio::test]
    async fn the_gate_refuses_when_full_and_frees_with_its_permits() {
        let gate = EngineGate::new(2, Duration::from_millis(50));
        let first = gate.enter(1).await.unwrap();
        let _second = gate.enter(1).await.unwrap();
        assert_eq!(gate.in_use(), 2);
        assert_eq!(gate.enter(1).await.err(), Some(EngineBusy { limit: 2 }));
        drop(first);
        let _third = gate.enter(1).await.unwrap();
        // A list asks for more than the gate has: it gets the whole gate.
        drop(_third);
        drop(_second);
        let all = gate.enter(8).await.unwrap();
        assert_eq!((gate.in_use(), all.num_permits()), (2, 2));
    }
}
