//! Finding a detached session again: the table of sessions a client may
//! come back to, and the checks a reattach must pass.
//!
//! A session is in the table from its launch (with reattach on) until its
//! relay ends: when its last event was delivered, or when the grace after
//! a detach ran out. A reattach must come from the same owner (bearer
//! token, with mutual TLS together with the client certificate), which is
//! checked first, so another client learns nothing about the session (not
//! its container, instance or whether a client is attached) whatever
//! door started it; then it must name the same container and instance as
//! the start did. A session whose client is still attached is refused as
//! taken, exactly as a second start with its id is, and of reattaches
//! racing for a detached session exactly one claims it: an attachment is
//! never replaced under its client.

pub mod replay;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::command::TermSize;
use crate::registry::{SessionControl, SessionEntry, SessionStats};
use crate::session::{Session, SessionEvent, SessionEvents, SessionInput, SessionOutput};
use replay::{
    Attachment, DetachInfo, ReattachConfig, Relay, RelayCommand, ReplayBudget, ReplayFrom,
    ATTACHED_DEPTH,
};

/// Why a reattach was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ReattachError {
    #[error("session {0} has a client attached")]
    Attached(String),
    #[error("session {session_id} runs in {field} {expected:?}, not {given:?}")]
    Mismatch {
        session_id: String,
        field: &'static str,
        expected: String,
        given: String,
    },
    // The same words whatever state the session is in, and nothing of
    // what it runs: the asker is not the client that started it.
    #[error("session {0} was started by another client")]
    NotOwner(String),
}

/// What a client coming back names.
#[derive(Debug, Clone)]
pub struct ReattachRequest {
    pub session_id: String,
    pub container_id: String,
    pub instance_id: String,
    /// Who asks (token or certificate identity); see [`crate::ExecSpec::owner`].
    pub owner: String,
    pub from: ReplayFrom,
    /// New terminal size, if the client sent one.
    pub size: Option<TermSize>,
}

/// A session as the table keeps it: what a new door needs to drive it.
struct Detachable {
    commands: mpsc::Sender<RelayCommand>,
    stdin: mpsc::Sender<crate::session::StdinCommand>,
    size: Arc<crate::term_size::SizeChannel>,
    control: Arc<SessionControl>,
    done: CancellationToken,
    redraw: Arc<Notify>,
    stats: Arc<SessionStats>,
    info: Arc<DetachInfo>,
    tty: bool,
    attach: bool,
    container_id: String,
    instance_id: String,
    owner: String,
}

/// What `launch` hands over to make a session reattachable.
pub(crate) struct Parts<'a> {
    pub session_id: String,
    pub entry: &'a SessionEntry,
    pub stdin: mpsc::Sender<crate::session::StdinCommand>,
    pub size: Arc<crate::term_size::SizeChannel>,
    pub done: CancellationToken,
    pub redraw: Arc<Notify>,
}

/// Every reattachable session, by id.
pub struct ReattachTable {
    config: ReattachConfig,
    budget: Arc<ReplayBudget>,
    shutdown: CancellationToken,
    sessions: Mutex<HashMap<String, Arc<Detachable>>>,
}

impl ReattachTable {
    pub(crate) fn new(config: ReattachConfig, shutdown: CancellationToken) -> Arc<Self> {
        Arc::new(ReattachTable {
            budget: ReplayBudget::new(config.total),
            config,
            shutdown,
            sessions: Mutex::new(HashMap::new()),
        })
    }

    /// How long a detached session waits for its client.
    pub fn grace(&self) -> std::time::Duration {
        self.config.grace
    }

    /// Output bytes held for replay by all sessions together.
    pub fn replay_bytes(&self) -> usize {
        self.budget.used()
    }

    /// The detach state of session `id`, if it is in the table.
    pub fn info(&self, id: &str) -> Option<Arc<DetachInfo>> {
        self.lock().get(id).map(|d| d.info.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Detachable>>> {
        // The map holds plain data; a panic elsewhere cannot leave it
        // half-written, so a poisoned lock is still usable.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts a launched session's relay between its pump and the door.
    pub(crate) fn relay(
        self: &Arc<Self>,
        parts: Parts<'_>,
        from_pump: mpsc::Receiver<SessionEvent>,
    ) -> (SessionEvents, mpsc::Sender<RelayCommand>) {
        let (commands_tx, commands_rx) = mpsc::channel(4);
        let (door_tx, door_rx) = mpsc::channel(ATTACHED_DEPTH);
        let taken = Arc::new(AtomicU64::new(0));
        let info = Arc::new(DetachInfo::default());
        let entry = Arc::new(Detachable {
            commands: commands_tx.clone(),
            stdin: parts.stdin,
            size: parts.size,
            control: parts.entry.control.clone(),
            done: parts.done,
            redraw: parts.redraw,
            stats: parts.entry.stats.clone(),
            info: info.clone(),
            tty: parts.entry.tty,
            attach: parts.entry.kind == crate::command::SessionKind::Attach,
            container_id: parts.entry.container_id.clone(),
            instance_id: parts.entry.instance_id.clone(),
            owner: parts.entry.owner.clone(),
        });
        self.lock().insert(parts.session_id.clone(), entry.clone());
        let relay = Relay {
            from_pump,
            commands: commands_rx,
            config: self.config.clone(),
            budget: self.budget.clone(),
            control: parts.entry.control.clone(),
            info,
            shutdown: self.shutdown.clone(),
            session_id: parts.session_id.clone(),
            owner: parts.entry.owner.clone(),
        };
        let table = self.clone();
        let id = parts.session_id;
        let relay_taken = taken.clone();
        tokio::spawn(async move {
            relay
                .run(Attachment {
                    events: door_tx,
                    taken: relay_taken,
                    from: ReplayFrom::Undelivered,
                })
                .await;
            // Only this session's entry: a later session may use the id.
            let mut sessions = table.lock();
            if sessions.get(&id).is_some_and(|e| Arc::ptr_eq(e, &entry)) {
                sessions.remove(&id);
            }
        });
        (SessionEvents::new(door_rx, taken), commands_tx)
    }

    /// Reattaches to session `request.session_id`: `Ok(None)` if the
    /// table does not know it (the caller starts a new session instead).
    pub(crate) async fn reattach(
        &self,
        request: &ReattachRequest,
    ) -> Result<Option<Session>, ReattachError> {
        let Some(d) = self.lock().get(&request.session_id).cloned() else {
            return Ok(None);
        };
        let id = &request.session_id;
        // Owner first: to anyone else the session looks the same whatever
        // its state, and nothing it runs is named.
        if d.owner != request.owner {
            return Err(ReattachError::NotOwner(id.clone()));
        }
        if d.info.is_abandoned() {
            // Being ended: a start with its id is refused as taken until
            // it is gone.
            return Ok(None);
        }
        for (field, expected, given) in [
            ("container", &d.container_id, &request.container_id),
            ("instance", &d.instance_id, &request.instance_id),
        ] {
            if expected != given {
                return Err(ReattachError::Mismatch {
                    session_id: id.clone(),
                    field,
                    expected: expected.clone(),
                    given: given.clone(),
                });
            }
        }
        // Checked and taken in one step: of two reattaches racing here,
        // the second finds the session attached.
        if !d.info.claim() {
            return Err(ReattachError::Attached(id.clone()));
        }
        let (door_tx, door_rx) = mpsc::channel(ATTACHED_DEPTH);
        let taken = Arc::new(AtomicU64::new(0));
        let attachment = Attachment {
            events: door_tx,
            taken: taken.clone(),
            from: request.from,
        };
        if d.commands
            .send(RelayCommand::Attach(attachment))
            .await
            .is_err()
        {
            // The relay ended meanwhile: the session is gone.
            return Ok(None);
        }
        if d.tty {
            match request.size {
                Some(size) if size != d.size.current() => {
                    d.size.request(size);
                }
                _ => d.redraw.notify_one(),
            }
        }
        Ok(Some(Session {
            id: id.clone(),
            reattached: true,
            stats: d.stats.clone(),
            input: SessionInput::reattached(
                d.stdin.clone(),
                d.size.clone(),
                d.control.clone(),
                d.done.clone(),
                d.tty,
                d.attach,
                d.commands.clone(),
            ),
            output: SessionOutput::new(SessionEvents::new(door_rx, taken)),
        }))
    }
}
