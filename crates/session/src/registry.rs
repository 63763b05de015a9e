//! The registry of live sessions and per-instance reference counts.
//!
//! The platform keeps an instance alive while anyone is exec'd into it, so the
//! counts must be exact: a session is registered before anything is spawned
//! and released by dropping its [`Registration`], an RAII guard, which every
//! exit path (normal exit, error, client gone, panic, cancelled future) does.
//!
//! The sessions, their counts and the event stream change together under
//! one short lock that is never held across an `.await`, so watchers see
//! every transition of an instance in order: BUSY on 0→1, COUNT while above
//! zero, IDLE on →0. Sessions without an `instance_id` are listed but never
//! counted per instance. Every registration also holds a receiver of one
//! watch channel, so shutdown learns that the last session is gone from
//! that channel closing ([`Registry::drained`]), without polling.
//!
//! The same guard keeps a per-owner count: the owner is an opaque key the
//! server derives from the client's credential (for execd, a keyed hash of
//! the bearer token), so one client cannot take every slot. Sessions without
//! an owner are not counted per owner.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::command::{Door, ExecSpec, SessionKind};
use crate::reason::EndReason;

mod live;

pub(crate) use live::SessionControl;
pub use live::SessionStats;

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

pub(crate) fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(crate) fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}

/// What the registry knows about a session. Built by the manager; outside
/// the crate only through [`SessionEntry::new`] (tools and tests that fill
/// the registry without starting processes).
#[derive(Debug)]
pub struct SessionEntry {
    pub(crate) session_id: String,
    pub(crate) door: Door,
    pub(crate) kind: SessionKind,
    pub(crate) instance_id: String,
    /// Opaque key of whoever started the session; empty: not counted per
    /// owner. Never listed.
    pub(crate) owner: String,
    pub(crate) container_id: String,
    pub(crate) command: Vec<String>,
    pub(crate) tty: bool,
    pub(crate) started_at_unix_ms: i64,
    pub(crate) stats: Arc<SessionStats>,
    pub(crate) control: Arc<SessionControl>,
}

impl SessionEntry {
    /// The entry of a session `session_id` running `spec`, started now and
    /// ended when `shutdown` is cancelled.
    pub fn new(session_id: String, spec: &ExecSpec, shutdown: &CancellationToken) -> Self {
        SessionEntry {
            session_id,
            door: spec.door,
            kind: spec.kind,
            instance_id: spec.instance_id.clone(),
            owner: spec.owner.clone(),
            container_id: spec.container_id.clone(),
            command: spec.effective_command(),
            tty: spec.tty,
            started_at_unix_ms: now_ms(),
            stats: Arc::new(SessionStats::new()),
            control: Arc::new(SessionControl::new(shutdown)),
        }
    }
}

/// A point-in-time copy of a [`SessionEntry`] for listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSnapshot {
    pub session_id: String,
    pub door: Door,
    pub kind: SessionKind,
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
    /// Only sessions of this owner (a caller that may see its own only).
    pub owner: Option<&'a str>,
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
pub(crate) fn shorten_command(argv: &[String], max: usize) -> (Vec<String>, bool) {
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

/// Everything that changes when a session comes or goes, under one lock.
#[derive(Default)]
struct State {
    /// Live sessions in session id order (listings page through it).
    sessions: BTreeMap<String, Arc<SessionEntry>>,
    per_instance: HashMap<String, u32>,
    per_owner: HashMap<String, u32>,
}

/// Live sessions, their counts and the instance events.
pub struct Registry {
    state: Mutex<State>,
    events: broadcast::Sender<InstanceEvent>,
    limits: Limits,
    /// Each [`Registration`] holds a receiver: the channel closes when the
    /// last session is gone.
    live: watch::Sender<()>,
}

impl Registry {
    pub fn new(limits: Limits) -> Arc<Self> {
        let (events, _) = broadcast::channel(WATCH_BUFFER);
        let (live, _) = watch::channel(());
        Arc::new(Registry {
            state: Mutex::new(State::default()),
            events,
            limits,
            live,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state half
        // updated (each update is a single insert/remove), so recover.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The limit `entry` would break, if any.
    fn check_limits(&self, state: &State, entry: &SessionEntry) -> Result<(), RegistryError> {
        if state.sessions.len() >= self.limits.max_sessions {
            return Err(RegistryError::TooManySessions {
                limit: self.limits.max_sessions,
            });
        }
        let count = |map: &HashMap<String, u32>, key: &str| map.get(key).copied().unwrap_or(0);
        if !entry.instance_id.is_empty()
            && count(&state.per_instance, &entry.instance_id) as usize
                >= self.limits.max_sessions_per_instance
        {
            return Err(RegistryError::TooManyForInstance {
                instance_id: entry.instance_id.clone(),
                limit: self.limits.max_sessions_per_instance,
            });
        }
        let owner_limit = self.limits.max_sessions_per_owner;
        if !entry.owner.is_empty()
            && owner_limit > 0
            && count(&state.per_owner, &entry.owner) as usize >= owner_limit
        {
            return Err(RegistryError::TooManyForOwner { limit: owner_limit });
        }
        if state.sessions.contains_key(&entry.session_id) {
            return Err(RegistryError::SessionIdInUse(entry.session_id.clone()));
        }
        Ok(())
    }

    /// Registers a session, enforcing the id's uniqueness and the limits.
    /// The session counts until the returned guard is dropped.
    pub fn register(self: &Arc<Self>, entry: SessionEntry) -> Result<Registration, RegistryError> {
        let entry = Arc::new(entry);
        let mut state = self.state();
        self.check_limits(&state, &entry)?;
        state
            .sessions
            .insert(entry.session_id.clone(), entry.clone());
        if !entry.owner.is_empty() {
            *state.per_owner.entry(entry.owner.clone()).or_insert(0) += 1;
        }
        if !entry.instance_id.is_empty() {
            let active = state
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
        drop(state);
        Ok(Registration {
            registry: self.clone(),
            entry,
            _live: self.live.subscribe(),
        })
    }

    fn release(&self, entry: &SessionEntry) {
        let mut state = self.state();
        let ours = state
            .sessions
            .get(&entry.session_id)
            .is_some_and(|e| std::ptr::eq(e.as_ref(), entry));
        if ours {
            state.sessions.remove(&entry.session_id);
        }
        if let Some(active) = state.per_owner.get_mut(&entry.owner) {
            *active = active.saturating_sub(1);
            if *active == 0 {
                state.per_owner.remove(&entry.owner);
            }
        }
        if entry.instance_id.is_empty() {
            return;
        }
        let remaining = match state.per_instance.get_mut(&entry.instance_id) {
            Some(active) => {
                *active = active.saturating_sub(1);
                *active
            }
            None => return,
        };
        if remaining == 0 {
            state.per_instance.remove(&entry.instance_id);
            self.publish(InstanceEventKind::Idle, &entry.instance_id, 0);
        } else {
            self.publish(InstanceEventKind::Count, &entry.instance_id, remaining);
        }
    }

    /// Called with the state lock held, so events leave in count order.
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
        self.state().sessions.len()
    }

    /// Resolves once no session is registered (at once if none is): every
    /// registration, cleanups of abandoned starts included, has been
    /// dropped. Shutdown waits on this before the runtime goes away.
    pub async fn drained(&self) {
        self.live.closed().await
    }

    /// Active sessions of one instance.
    pub fn active(&self, instance_id: &str) -> u32 {
        self.state()
            .per_instance
            .get(instance_id)
            .copied()
            .unwrap_or(0)
    }

    /// Active sessions of one owner.
    pub fn owner_active(&self, owner: &str) -> u32 {
        self.state().per_owner.get(owner).copied().unwrap_or(0)
    }

    /// Instances with at least one session.
    pub fn active_per_instance(&self) -> HashMap<String, u32> {
        self.state().per_instance.clone()
    }

    /// One page of live sessions in session id order. Only the page's own
    /// sessions are copied, with their commands already shortened, so a
    /// listing costs little however large the registered commands are.
    pub fn page(&self, request: &PageRequest<'_>) -> ListPage {
        let mut matching: Vec<Arc<SessionEntry>> = {
            let state = self.state();
            let from = match request.after {
                Some(after) => Bound::Excluded(after),
                None => Bound::Unbounded,
            };
            state
                .sessions
                .range::<str, _>((from, Bound::Unbounded))
                .map(|(_, e)| e)
                .filter(|e| request.instance_id.is_none_or(|i| e.instance_id == i))
                .filter(|e| request.owner.is_none_or(|o| e.owner == o))
                .take(request.limit.saturating_add(1))
                .cloned()
                .collect()
        };
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

    /// Active sessions per instance, counting only `owner`'s sessions:
    /// what a caller that may see its own sessions only is shown.
    pub fn active_per_instance_of(&self, owner: &str) -> HashMap<String, u32> {
        let state = self.state();
        let mut counts = HashMap::new();
        for e in state.sessions.values() {
            if e.owner == owner && !e.instance_id.is_empty() {
                *counts.entry(e.instance_id.clone()).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Ends matching sessions with `EndReason::Closed`; returns how many were
    /// asked to end (sessions already ending are not counted again).
    pub fn close(&self, target: &CloseTarget, reason: &str) -> usize {
        self.close_of(target, reason, None)
    }

    /// Like [`Registry::close`], touching only `owner`'s sessions when
    /// given: another client's session is left alone, as if unknown.
    pub fn close_of(&self, target: &CloseTarget, reason: &str, owner: Option<&str>) -> usize {
        let mine = |e: &&Arc<SessionEntry>| owner.is_none_or(|o| e.owner == o);
        // Collect first: never hold the lock while poking sessions.
        let controls: Vec<Arc<SessionControl>> = {
            let state = self.state();
            match target {
                CloseTarget::Session(id) => state
                    .sessions
                    .get(id)
                    .filter(mine)
                    .map(|e| vec![e.control.clone()])
                    .unwrap_or_default(),
                CloseTarget::Instance(instance) => state
                    .sessions
                    .values()
                    .filter(|e| !instance.is_empty() && &e.instance_id == instance)
                    .filter(mine)
                    .map(|e| e.control.clone())
                    .collect(),
            }
        };
        controls
            .iter()
            .filter(|c| c.end(EndReason::Closed(reason.to_string())))
            .count()
    }

    /// Starts a watch: the current active instances (matching `filter`, if
    /// any) as SNAPSHOT events, and a receiver of every later change. Taken
    /// under the state lock, so no change falls between the two.
    pub fn watch(
        &self,
        filter: Option<&str>,
    ) -> (Vec<InstanceEvent>, broadcast::Receiver<InstanceEvent>) {
        let counts = self.state();
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
    /// Keeps [`Registry::drained`] waiting.
    _live: watch::Receiver<()>,
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
