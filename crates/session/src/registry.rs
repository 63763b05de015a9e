//! The registry of live sessions and per-instance reference counts.
//!
//! The platform keeps an instance alive while anyone is exec'd into it, so the
//! counts must be exact: a session is registered before anything is spawned
//! and released by dropping its [`Registration`], an RAII guard, which every
//! exit path (normal exit, error, client gone, panic, cancelled future) does.
//!
//! Counts and the event stream change together under one short lock that is
//! never held across an `.await`, so watchers see every transition of an
//! instance in order: BUSY on 0→1, COUNT while above zero, IDLE on →0.
//! Sessions without an `instance_id` are listed but never counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::error::EndReason;

/// Buffered events per watcher before it is considered too slow.
pub const WATCH_BUFFER: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_sessions: usize,
    pub max_sessions_per_instance: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sessions: 1024,
            max_sessions_per_instance: 64,
        }
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RegistryError {
    #[error("session_id {0:?} is already in use")]
    SessionIdInUse(String),
    #[error("too many sessions: the server limit --max-sessions={limit} is reached")]
    TooManySessions { limit: usize },
    #[error("too many sessions for instance {instance_id:?}: the limit --max-sessions-per-instance={limit} is reached")]
    TooManyForInstance { instance_id: String, limit: usize },
}

pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}

/// Live counters of one session, updated by its I/O paths.
#[derive(Debug)]
pub struct SessionStats {
    last_activity_ms: AtomicI64,
    stdin_bytes: AtomicU64,
    output_bytes: AtomicU64,
}

impl Default for SessionStats {
    fn default() -> Self {
        Self::new()
    }
}

impl SessionStats {
    pub fn new() -> Self {
        SessionStats {
            last_activity_ms: AtomicI64::new(now_ms()),
            stdin_bytes: AtomicU64::new(0),
            output_bytes: AtomicU64::new(0),
        }
    }

    pub fn record_input(&self, n: usize) {
        self.stdin_bytes.fetch_add(n as u64, Ordering::Relaxed);
        self.touch();
    }

    pub fn record_output(&self, n: usize) {
        self.output_bytes.fetch_add(n as u64, Ordering::Relaxed);
        self.touch();
    }

    pub fn touch(&self) {
        self.last_activity_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub fn last_activity_ms(&self) -> i64 {
        self.last_activity_ms.load(Ordering::Relaxed)
    }

    pub fn stdin_bytes(&self) -> u64 {
        self.stdin_bytes.load(Ordering::Relaxed)
    }

    pub fn output_bytes(&self) -> u64 {
        self.output_bytes.load(Ordering::Relaxed)
    }
}

/// How a session is asked to end from outside its own task. The first reason
/// given wins; cancelling the token wakes every part of the session.
#[derive(Debug)]
pub struct SessionControl {
    cancel: CancellationToken,
    reason: OnceLock<EndReason>,
}

impl SessionControl {
    pub fn new(parent: &CancellationToken) -> Self {
        SessionControl {
            cancel: parent.child_token(),
            reason: OnceLock::new(),
        }
    }

    /// Asks the session to end. Returns false if it was already ending.
    pub fn end(&self, reason: EndReason) -> bool {
        let first = self.reason.set(reason).is_ok() && !self.cancel.is_cancelled();
        self.cancel.cancel();
        first
    }

    pub fn token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Why the session is ending. A cancel without a reason can only come
    /// from the parent token: the server is shutting down.
    pub fn reason(&self) -> EndReason {
        self.reason.get().cloned().unwrap_or(EndReason::Shutdown)
    }
}

/// What the registry knows about a session.
#[derive(Debug)]
pub struct SessionEntry {
    pub session_id: String,
    pub instance_id: String,
    pub container_id: String,
    pub command: Vec<String>,
    pub tty: bool,
    pub started_at_unix_ms: i64,
    pub stats: Arc<SessionStats>,
    pub control: Arc<SessionControl>,
}

/// A point-in-time copy of a [`SessionEntry`] for listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSnapshot {
    pub session_id: String,
    pub instance_id: String,
    pub container_id: String,
    pub command: Vec<String>,
    pub tty: bool,
    pub started_at_unix_ms: i64,
    pub last_activity_unix_ms: i64,
    pub stdin_bytes: u64,
    pub output_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceEventKind {
    /// Sent once per active instance when a watch starts.
    Snapshot,
    /// 0 → 1 sessions.
    Busy,
    /// → 0 sessions.
    Idle,
    /// Any other change while above zero.
    Count,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceEvent {
    pub kind: InstanceEventKind,
    pub instance_id: String,
    pub active_sessions: u32,
    pub at_unix_ms: i64,
}

/// Whom to close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseTarget {
    Session(String),
    Instance(String),
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_instance: HashMap<String, u32>,
}

/// The concurrent map of live sessions plus per-instance counts.
pub struct Registry {
    sessions: DashMap<String, Arc<SessionEntry>>,
    counts: Mutex<Counts>,
    events: broadcast::Sender<InstanceEvent>,
    limits: Limits,
}

impl Registry {
    pub fn new(limits: Limits) -> Arc<Self> {
        let (events, _) = broadcast::channel(WATCH_BUFFER);
        Arc::new(Registry {
            sessions: DashMap::new(),
            counts: Mutex::new(Counts::default()),
            events,
            limits,
        })
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        // A panic while holding this lock cannot leave the counts half
        // updated (each update is a single insert/remove), so recover.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a session, enforcing the id's uniqueness and the limits.
    /// The session counts until the returned guard is dropped.
    pub fn register(self: &Arc<Self>, entry: SessionEntry) -> Result<Registration, RegistryError> {
        let entry = Arc::new(entry);
        let mut counts = self.counts();
        if counts.total >= self.limits.max_sessions {
            return Err(RegistryError::TooManySessions {
                limit: self.limits.max_sessions,
            });
        }
        let instance_active = counts
            .per_instance
            .get(&entry.instance_id)
            .copied()
            .unwrap_or(0);
        if !entry.instance_id.is_empty()
            && instance_active as usize >= self.limits.max_sessions_per_instance
        {
            return Err(RegistryError::TooManyForInstance {
                instance_id: entry.instance_id.clone(),
                limit: self.limits.max_sessions_per_instance,
            });
        }
        match self.sessions.entry(entry.session_id.clone()) {
            Entry::Occupied(_) => {
                return Err(RegistryError::SessionIdInUse(entry.session_id.clone()))
            }
            Entry::Vacant(slot) => {
                slot.insert(entry.clone());
            }
        }
        counts.total += 1;
        if !entry.instance_id.is_empty() {
            let active = counts
                .per_instance
                .entry(entry.instance_id.clone())
                .or_insert(0);
            *active += 1;
            let kind = if *active == 1 {
                InstanceEventKind::Busy
            } else {
                InstanceEventKind::Count
            };
            self.publish(kind, &entry.instance_id, *active);
        }
        drop(counts);
        Ok(Registration {
            registry: self.clone(),
            entry,
        })
    }

    fn release(&self, entry: &SessionEntry) {
        let mut counts = self.counts();
        self.sessions
            .remove_if(&entry.session_id, |_, e| std::ptr::eq(e.as_ref(), entry));
        counts.total = counts.total.saturating_sub(1);
        if entry.instance_id.is_empty() {
            return;
        }
        let remaining = match counts.per_instance.get_mut(&entry.instance_id) {
            Some(active) => {
                *active = active.saturating_sub(1);
                *active
            }
            None => return,
        };
        if remaining == 0 {
            counts.per_instance.remove(&entry.instance_id);
            self.publish(InstanceEventKind::Idle, &entry.instance_id, 0);
        } else {
            self.publish(InstanceEventKind::Count, &entry.instance_id, remaining);
        }
    }

    /// Called with the counts lock held, so events leave in count order.
    fn publish(&self, kind: InstanceEventKind, instance_id: &str, active: u32) {
        // No receivers is fine: nobody is watching.
        let _ = self.events.send(InstanceEvent {
            kind,
            instance_id: instance_id.to_string(),
            active_sessions: active,
            at_unix_ms: now_ms(),
        });
    }

    /// Number of live sessions.
    pub fn total(&self) -> usize {
        self.counts().total
    }

    /// Active sessions of one instance.
    pub fn active(&self, instance_id: &str) -> u32 {
        self.counts()
            .per_instance
            .get(instance_id)
            .copied()
            .unwrap_or(0)
    }

    /// Instances with at least one session.
    pub fn active_per_instance(&self) -> HashMap<String, u32> {
        self.counts().per_instance.clone()
    }

    /// Live sessions, optionally of one instance, oldest first.
    pub fn list(&self, instance_id: Option<&str>) -> Vec<SessionSnapshot> {
        let mut out: Vec<SessionSnapshot> = self
            .sessions
            .iter()
            .filter(|e| instance_id.is_none_or(|i| e.instance_id == i))
            .map(|e| SessionSnapshot {
                session_id: e.session_id.clone(),
                instance_id: e.instance_id.clone(),
                container_id: e.container_id.clone(),
                command: e.command.clone(),
                tty: e.tty,
                started_at_unix_ms: e.started_at_unix_ms,
                last_activity_unix_ms: e.stats.last_activity_ms(),
                stdin_bytes: e.stats.stdin_bytes(),
                output_bytes: e.stats.output_bytes(),
            })
            .collect();
        out.sort_by(|a, b| {
            (a.started_at_unix_ms, &a.session_id).cmp(&(b.started_at_unix_ms, &b.session_id))
        });
        out
    }

    /// Ends matching sessions with `EndReason::Closed`; returns how many were
    /// asked to end (sessions already ending are not counted again).
    pub fn close(&self, target: &CloseTarget, reason: &str) -> usize {
        // Collect first: never hold a map guard while poking sessions.
        let controls: Vec<Arc<SessionControl>> = match target {
            CloseTarget::Session(id) => self
                .sessions
                .get(id)
                .map(|e| vec![e.control.clone()])
                .unwrap_or_default(),
            CloseTarget::Instance(instance) => self
                .sessions
                .iter()
                .filter(|e| !instance.is_empty() && &e.instance_id == instance)
                .map(|e| e.control.clone())
                .collect(),
        };
        controls
            .iter()
            .filter(|c| c.end(EndReason::Closed(reason.to_string())))
            .count()
    }

    /// Starts a watch: the current active instances (matching `filter`, if
    /// any) as SNAPSHOT events, and a receiver of every later change. Taken
    /// under the counts lock, so no change falls between the two.
    pub fn watch(
        &self,
        filter: Option<&str>,
    ) -> (Vec<InstanceEvent>, broadcast::Receiver<InstanceEvent>) {
        let counts = self.counts();
        let rx = self.events.subscribe();
        let at = now_ms();
        let mut snapshot: Vec<InstanceEvent> = counts
            .per_instance
            .iter()
            .filter(|(id, _)| filter.is_none_or(|f| f == id.as_str()))
            .map(|(id, n)| InstanceEvent {
                kind: InstanceEventKind::Snapshot,
                instance_id: id.clone(),
                active_sessions: *n,
                at_unix_ms: at,
            })
            .collect();
        drop(counts);
        snapshot.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        (snapshot, rx)
    }
}

/// Keeps a session registered and counted; dropping it releases both.
pub struct Registration {
    registry: Arc<Registry>,
    entry: Arc<SessionEntry>,
}

impl Registration {
    pub fn entry(&self) -> &Arc<SessionEntry> {
        &self.entry
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.release(&self.entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, instance: &str) -> SessionEntry {
        SessionEntry {
            session_id: id.into(),
            instance_id: instance.into(),
            container_id: "c".into(),
            command: vec!["sh".into()],
            tty: false,
            started_at_unix_ms: now_ms(),
            stats: Arc::new(SessionStats::new()),
            control: Arc::new(SessionControl::new(&CancellationToken::new())),
        }
    }

    fn kinds(rx: &mut broadcast::Receiver<InstanceEvent>) -> Vec<(InstanceEventKind, String, u32)> {
        let mut out = Vec::new();
        while let Ok(e) = rx.try_recv() {
            out.push((e.kind, e.instance_id, e.active_sessions));
        }
        out
    }

    #[test]
    fn counts_and_events_follow_registrations() {
        use InstanceEventKind::*;
        let reg = Registry::new(Limits::default());
        let (snap, mut rx) = reg.watch(None);
        assert!(snap.is_empty());
        let a = reg.register(entry("a", "i1")).unwrap();
        let b = reg.register(entry("b", "i1")).unwrap();
        let c = reg.register(entry("c", "")).unwrap();
        assert_eq!(reg.active("i1"), 2);
        assert_eq!(reg.total(), 3);
        assert!(!reg.active_per_instance().contains_key(""));
        let (snap, _) = reg.watch(Some("i1"));
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].kind, Snapshot);
        drop(a);
        drop(b);
        drop(c);
        assert_eq!(reg.total(), 0);
        assert_eq!(
            kinds(&mut rx),
            vec![
                (Busy, "i1".into(), 1),
                (Count, "i1".into(), 2),
                (Count, "i1".into(), 1),
                (Idle, "i1".into(), 0)
            ]
        );
    }

    #[test]
    fn duplicate_ids_and_limits_are_refused() {
        let reg = Registry::new(Limits {
            max_sessions: 3,
            max_sessions_per_instance: 2,
        });
        let _a = reg.register(entry("a", "i")).unwrap();
        assert_eq!(
            reg.register(entry("a", "j")).err(),
            Some(RegistryError::SessionIdInUse("a".into()))
        );
        let _b = reg.register(entry("b", "i")).unwrap();
        assert!(matches!(
            reg.register(entry("c", "i")).err(),
            Some(RegistryError::TooManyForInstance { limit: 2, .. })
        ));
        let _c = reg.register(entry("c", "")).unwrap();
        assert!(matches!(
            reg.register(entry("d", "k")).err(),
            Some(RegistryError::TooManySessions { limit: 3 })
        ));
        // Refusals left nothing behind.
        assert_eq!(reg.total(), 3);
    }

    #[test]
    fn close_by_instance_ends_each_once() {
        let reg = Registry::new(Limits::default());
        let a = reg.register(entry("a", "i")).unwrap();
        let _b = reg.register(entry("b", "i")).unwrap();
        let _c = reg.register(entry("c", "other")).unwrap();
        assert_eq!(reg.close(&CloseTarget::Instance("i".into()), "bye"), 2);
        assert_eq!(reg.close(&CloseTarget::Instance("i".into()), "again"), 0);
        assert_eq!(reg.close(&CloseTarget::Session("nope".into()), "x"), 0);
        assert!(a.entry().control.token().is_cancelled());
        assert_eq!(a.entry().control.reason(), EndReason::Closed("bye".into()));
    }

    #[test]
    fn counts_are_exact_under_concurrency() {
        let reg = Registry::new(Limits {
            max_sessions: 100_000,
            max_sessions_per_instance: 100_000,
        });
        let (_, mut rx) = reg.watch(None);
        std::thread::scope(|s| {
            for t in 0..8 {
                let reg = reg.clone();
                s.spawn(move || {
                    for n in 0..200 {
                        let g = reg
                            .register(entry(&format!("{t}-{n}"), &format!("i{}", n % 3)))
                            .unwrap();
                        drop(g);
                    }
                });
            }
        });
        assert_eq!(reg.total(), 0);
        assert!(reg.active_per_instance().is_empty());
        let mut level: HashMap<String, i64> = HashMap::new();
        for (kind, inst, n) in kinds(&mut rx) {
            let l = level.entry(inst).or_default();
            match kind {
                InstanceEventKind::Busy => {
                    assert_eq!(*l, 0);
                    *l = 1;
                }
                InstanceEventKind::Idle => {
                    assert_eq!(*l, 1);
                    *l = 0;
                }
                InstanceEventKind::Count => {
                    assert!(*l >= 1 && (n as i64 - *l).abs() == 1);
                    *l = n as i64;
                }
                InstanceEventKind::Snapshot => unreachable!(),
            }
            assert_eq!(*l, n as i64);
        }
        assert!(level.values().all(|l| *l == 0));
    }
}
