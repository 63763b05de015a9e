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
//!
//! The same guard keeps a per-owner count: the owner is an opaque key the
//! server derives from the client's credential (for execd, a keyed hash of
//! the bearer token), so one client cannot take every slot. Sessions without
//! an owner are not counted per owner.

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
    /// Concurrent sessions per non-empty owner; 0 means unlimited.
    pub max_sessions_per_owner: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sessions: 1024,
            max_sessions_per_instance: 64,
            max_sessions_per_owner: 256,
        }
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RegistryError {
    #[error("session_id {0:?} is already in use")]
    SessionIdInUse(String),
    #[error("too many sessions: the limit of {limit} sessions is reached")]
    TooManySessions { limit: usize },
    #[error("too many sessions for instance {instance_id:?}: the limit of {limit} sessions per instance is reached")]
    TooManyForInstance { instance_id: String, limit: usize },
    // The owner key is not shown: it is derived from a credential.
    #[error(
        "too many sessions for this client: the limit of {limit} sessions per client is reached"
    )]
    TooManyForOwner { limit: usize },
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
    pub door: crate::command::Door,
    pub kind: crate::command::SessionKind,
    pub instance_id: String,
    /// Opaque key of whoever started the session; empty: not counted per
    /// owner. Never listed.
    pub owner: String,
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
    pub door: crate::command::Door,
    pub kind: crate::command::SessionKind,
    pub instance_id: String,
    pub container_id: String,
    /// The command, shortened for listings; see [`PageRequest`].
    pub command: Vec<String>,
    /// Whether `command` was shortened (its last element is then a marker).
    pub command_truncated: bool,
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

/// Which sessions to list: one page in session id order.
#[derive(Debug, Clone, Copy)]
pub struct PageRequest<'a> {
    /// Only sessions of this instance.
    pub instance_id: Option<&'a str>,
    /// Only sessions whose id sorts after this one (the previous page's last).
    pub after: Option<&'a str>,
    /// Most sessions on the page.
    pub limit: usize,
    /// Commands longer than this (bytes of all arguments) are shortened with
    /// a marker, so a page's size is bounded whatever clients ran.
    pub max_command_bytes: usize,
}

/// One page of sessions, ordered by session id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    pub sessions: Vec<SessionSnapshot>,
    /// More sessions follow the last one on this page.
    pub more: bool,
}

/// `argv` cut to at most `max` bytes (each argument counting its length
/// plus one, as in [`MAX_ARGV_BYTES`](crate::command::MAX_ARGV_BYTES), so
/// thousands of empty arguments are bounded too), cut at a char boundary and
/// followed by a marker element saying how much was left out.
pub fn shorten_command(argv: &[String], max: usize) -> (Vec<String>, bool) {
    let counted: usize = argv.iter().map(|a| a.len() + 1).sum();
    if counted <= max {
        return (argv.to_vec(), false);
    }
    let mut out = Vec::new();
    let mut budget = max;
    for arg in argv {
        if budget > arg.len() {
            out.push(arg.clone());
            budget -= arg.len() + 1;
            continue;
        }
        let mut end = budget.saturating_sub(1);
        while !arg.is_char_boundary(end) {
            end -= 1;
        }
        if end > 0 {
            out.push(arg[..end].to_string());
        }
        break;
    }
    let total: usize = argv.iter().map(String::len).sum();
    let shown: usize = out.iter().map(String::len).sum();
    out.push(format!(
        "…[execd: command truncated; {} more arguments, {} of {total} bytes not shown]",
        argv.len() - out.len(),
        total - shown
    ));
    (out, true)
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_instance: HashMap<String, u32>,
    per_owner: HashMap<String, u32>,
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
        let owner_limit = self.limits.max_sessions_per_owner;
        if !entry.owner.is_empty()
            && owner_limit > 0
            && counts.per_owner.get(&entry.owner).copied().unwrap_or(0) as usize >= owner_limit
        {
            return Err(RegistryError::TooManyForOwner { limit: owner_limit });
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
        if !entry.owner.is_empty() {
            *counts.per_owner.entry(entry.owner.clone()).or_insert(0) += 1;
        }
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
        if let Some(active) = counts.per_owner.get_mut(&entry.owner) {
            *active = active.saturating_sub(1);
            if *active == 0 {
                counts.per_owner.remove(&entry.owner);
            }
        }
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

    /// Active sessions of one owner.
    pub fn owner_active(&self, owner: &str) -> u32 {
        self.counts().per_owner.get(owner).copied().unwrap_or(0)
    }

    /// Instances with at least one session.
    pub fn active_per_instance(&self) -> HashMap<String, u32> {
        self.counts().per_instance.clone()
    }

    /// One page of live sessions in session id order. Only the page's own
    /// sessions are copied, with their commands already shortened, so a
    /// listing costs little however large the registered commands are.
    pub fn page(&self, request: &PageRequest<'_>) -> ListPage {
        let mut matching: Vec<Arc<SessionEntry>> = self
            .sessions
            .iter()
            .filter(|e| request.instance_id.is_none_or(|i| e.instance_id == i))
            .filter(|e| request.after.is_none_or(|a| e.session_id.as_str() > a))
            .map(|e| e.value().clone())
            .collect();
        matching.sort_unstable_by(|a, b| a.session_id.cmp(&b.session_id));
        let more = matching.len() > request.limit;
        matching.truncate(request.limit);
        let sessions = matching
            .iter()
            .map(|e| {
                let (command, command_truncated) =
                    shorten_command(&e.command, request.max_command_bytes);
                SessionSnapshot {
                    session_id: e.session_id.clone(),
                    door: e.door,
                    kind: e.kind,
                    instance_id: e.instance_id.clone(),
                    container_id: e.container_id.clone(),
                    command,
                    command_truncated,
                    tty: e.tty,
                    started_at_unix_ms: e.started_at_unix_ms,
                    last_activity_unix_ms: e.stats.last_activity_ms(),
                    stdin_bytes: e.stats.stdin_bytes(),
                    output_bytes: e.stats.output_bytes(),
                }
            })
            .collect();
        ListPage { sessions, more }
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
mod tests;
