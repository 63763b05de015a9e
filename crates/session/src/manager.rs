//! The session manager: validates a request, registers the session, starts
//! its process through the backend and confirms the container before
//! handing back a running [`Session`]. It is also the one door to the
//! runtime for everything outside sessions: checks, inspects and lists
//! (behind its engine gate, see `preflight` and `containers`) and the
//! engine's health ([`SessionManager::ping`]).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::backend::{
    self, Backend, BackendConfig, ContainerState, PingError, PreflightError, Process, SpawnRequest,
    StartError,
};
use crate::command::{validate_session_id, ExecSpec, SessionKind, TermSize};
use crate::error::SessionError;
use crate::preflight::EngineGate;
use crate::reaper::{self, ContainerRef};
use crate::reattach::ReattachTable;
use crate::registry::{Limits, Registration, Registry, SessionControl, SessionEntry};
use crate::session::resize::{self, SizeWait};
use crate::session::{self, Launch, LifecycleConfig, Session};

/// Everything the manager is configured with. The default runs `docker
/// exec` children with the default limits.
#[derive(Debug, Clone, Default)]
pub struct ManagerConfig {
    /// What runs the sessions' processes, and where.
    pub backend: BackendConfig,
    pub limits: Limits,
    pub lifecycle: LifecycleConfig,
    /// Detach and reattach; `None` ends a session with its client.
    pub reattach: Option<crate::ReattachConfig>,
}

/// Starts sessions and owns the registry. Cheap to clone.
#[derive(Clone)]
pub struct SessionManager {
    backend_config: Arc<BackendConfig>,
    backend: Arc<dyn Backend>,
    lifecycle: Arc<LifecycleConfig>,
    registry: Arc<Registry>,
    reattach: Option<Arc<ReattachTable>>,
    shutdown: CancellationToken,
    /// Bounds the engine calls doors make outside sessions.
    engine_gate: Arc<EngineGate>,
}

/// Generates a session id: 128 random bits, hex.
pub fn new_session_id() -> String {
    let bits: u128 = rand::random();
    format!("{bits:032x}")
}

/// Generates a session's process marker: 128 random bits, hex, never shown
/// to clients.
///
/// Not the session id: a client chooses that, and it is unique only among
/// one execd's live sessions. A finished id used again, or the same id on a
/// second execd of the node, would let one session's cleanup kill another's
/// processes. A fresh random value per session can only ever match the
/// processes that session started.
fn new_marker() -> String {
    new_session_id()
}

/// Kills whatever an abandoned start may have left in the container, when a
/// start is dropped half-way (client gone during the preflight).
struct AbandonGuard {
    /// The session's process marker.
    marker: String,
    container: Option<ContainerRef>,
    tty: bool,
    grace: Duration,
    started: std::time::Instant,
    armed: bool,
    /// Kept until the reaping is done: the session counts (and shutdown
    /// waits for it) until its processes are gone.
    registration: Option<Registration>,
}

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let marker = std::mem::take(&mut self.marker);
        let container = self.container.take();
        let polite = if self.tty {
            nix::sys::signal::Signal::SIGHUP
        } else {
            nix::sys::signal::Signal::SIGTERM
        };
        let grace = self.grace;
        let started = self.started;
        // The registration goes with the cleanup: until the processes are
        // gone the session id stays taken (a retry with the same id cannot
        // overlap them), the instance stays counted (no early IDLE), and
        // shutdown, which waits for the count to reach zero, waits for them.
        let registration = self.registration.take();
        handle.spawn(async move {
            reaper::reap_session(&marker, polite, grace, container.as_ref()).await;
            reaper::reap_late_starters(
                &marker,
                started,
                Duration::from_millis(300),
                polite,
                grace,
                container.as_ref(),
            )
            .await;
            drop(registration);
        });
    }
}

impl SessionManager {
    /// `shutdown` ends every session (with "server shutting down") when
    /// cancelled.
    pub fn new(config: ManagerConfig, shutdown: CancellationToken) -> Self {
        SessionManager {
            backend: backend::build(&config.backend, config.lifecycle.keep_background_processes),
            backend_config: Arc::new(config.backend),
            lifecycle: Arc::new(config.lifecycle),
            registry: Registry::new(config.limits),
            reattach: config
                .reattach
                .map(|c| ReattachTable::new(c, shutdown.clone())),
            shutdown,
            engine_gate: Arc::new(EngineGate::default()),
        }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// What runs the sessions (and whether there are containers at all).
    pub fn backend_config(&self) -> &BackendConfig {
        &self.backend_config
    }

    pub(crate) fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Whether the engine answers (always, without containers). Callers
    /// bound it in time.
    pub async fn ping(&self) -> Result<(), PingError> {
        self.backend.ping().await
    }

    /// The bound on engine calls outside sessions, shared by every door.
    pub fn engine_gate(&self) -> &Arc<EngineGate> {
        &self.engine_gate
    }

    /// The reattachable sessions, when reattach is on.
    pub fn reattach_table(&self) -> Option<&Arc<ReattachTable>> {
        self.reattach.as_ref()
    }

    /// Starts a session, or, when reattach is on and `requested_id` names
    /// a detached session, reattaches to it (then the session says
    /// [`Session::reattached`] and `spec`'s command, tty and environment
    /// are not used). `from` is where the replay starts.
    pub async fn open(
        &self,
        requested_id: Option<String>,
        spec: ExecSpec,
        from: crate::ReplayFrom,
    ) -> Result<Session, SessionError> {
        if let (Some(table), Some(id)) = (&self.reattach, requested_id.as_deref()) {
            let request = crate::ReattachRequest {
                session_id: id.to_string(),
                container_id: spec.container_id.clone(),
                instance_id: spec.instance_id.clone(),
                owner: spec.owner.clone(),
                from,
                size: (spec.rows > 0 && spec.cols > 0)
                    .then(|| TermSize::from_client(spec.rows, spec.cols)),
            };
            if let Some(session) = table.reattach(&request).await? {
                return Ok(session);
            }
        }
        self.start_session(requested_id, spec, true).await
    }

    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Validates `container_id` like a session's and asks the engine
    /// whether it exists and runs, without starting anything (for doors
    /// that hand out a URL before the session starts). Host-exec mode has
    /// no containers to check.
    ///
    /// Such checks pass the engine gate, so they never run more than its
    /// limit of engine calls at once, and reuse a "running" of the last
    /// moments (a check's own or an inspect's: the docker CLI inspects
    /// right before it creates, kubectl GETs the pod right before it
    /// attaches). A session's start checks again, outside the gate.
    pub async fn check_container(&self, container_id: &str) -> Result<(), SessionError> {
        if !self.backend_config.has_containers() {
            return Ok(());
        }
        let spec = ExecSpec {
            container_id: container_id.to_string(),
            ..ExecSpec::default()
        };
        spec.validate(&self.backend_config)?;
        let gate = &self.engine_gate;
        if gate.recently_running(container_id).is_some() {
            return Ok(());
        }
        let _permit = gate.enter(1).await?;
        let state = self.backend.check(container_id).await?;
        // Only "running" is reused: a container that was missing or stopped
        // a moment ago may have been created or started since.
        gate.remember_running(container_id, state);
        Ok(())
    }

    /// Starts a session. On success the process runs, the engine confirmed
    /// the container, the session is registered and, for a terminal, the
    /// process inside the container has the requested size (bounded by
    /// [`LifecycleConfig::start_size_wait`]); the caller may announce
    /// STARTED. On error nothing is left running.
    ///
    /// The session ends with its client even with reattach on: doors whose
    /// clients cannot name a session again use this; [`SessionManager::open`]
    /// starts sessions a client can come back to.
    pub async fn start(
        &self,
        requested_id: Option<String>,
        spec: ExecSpec,
    ) -> Result<Session, SessionError> {
        self.start_session(requested_id, spec, false).await
    }

    async fn start_session(
        &self,
        requested_id: Option<String>,
        spec: ExecSpec,
        reattachable: bool,
    ) -> Result<Session, SessionError> {
        if self.shutdown.is_cancelled() {
            return Err(SessionError::Ended(crate::EndReason::Shutdown));
        }
        spec.validate(&self.backend_config)?;
        let id = match requested_id.filter(|id| !id.is_empty()) {
            Some(id) => {
                validate_session_id(&id)?;
                id
            }
            None => new_session_id(),
        };
        let registration =
            self.registry
                .register(SessionEntry::new(id.clone(), &spec, &self.shutdown))?;
        let control = registration.entry().control.clone();
        let size = TermSize::from_client(spec.rows, spec.cols);
        let mut abandon = self.abandon_guard(&spec, registration);
        let mut process = self
            .spawn_confirmed(&spec, size, &control, &mut abandon)
            .await?;
        let container = abandon.container.clone();
        if spec.tty {
            self.await_terminal_size(&abandon, &mut process, size, &control)
                .await?;
        }
        abandon.armed = false;
        let Some(registration) = abandon.registration.take() else {
            return Err(SessionError::Internal(
                "session registration lost during start".into(),
            ));
        };
        Ok(session::launch(Launch {
            id,
            marker: abandon.marker.clone(),
            process,
            initial_size: size,
            registration,
            container,
            config: self.lifecycle.clone(),
            spawned_at: abandon.started,
            reattach: self.reattach.clone().filter(|_| reattachable),
        }))
    }

    /// The guard that ends whatever a start leaves behind if it does not
    /// get to the end; armed from the first moment something may run.
    fn abandon_guard(&self, spec: &ExecSpec, registration: Registration) -> AbandonGuard {
        // An attach starts nothing in the container: its end must never
        // reach in there (PID 1 and everything else keep running). Without
        // a container reference only the runtime side itself is stopped.
        let reaps_in_container = spec.kind != SessionKind::Attach;
        AbandonGuard {
            marker: new_marker(),
            // init_pid unknown yet: if execd cannot see the container's
            // processes, the reaper runs its search inside the container.
            container: (self.backend_config.has_containers() && reaps_in_container).then(|| {
                ContainerRef {
                    backend: self.backend.clone(),
                    container_id: spec.container_id.clone(),
                    init_pid: 0,
                }
            }),
            tty: spec.tty,
            grace: self.lifecycle.kill_grace,
            started: std::time::Instant::now(),
            armed: true,
            registration: Some(registration),
        }
    }

    /// Starts the process and, side by side, asks the backend about the
    /// container: the check costs no latency on the happy path and tells
    /// a missing container apart from a process that exits 1.
    async fn spawn_confirmed(
        &self,
        spec: &ExecSpec,
        size: TermSize,
        control: &SessionControl,
        abandon: &mut AbandonGuard,
    ) -> Result<Process, SessionError> {
        let request = SpawnRequest {
            spec,
            marker: &abandon.marker,
            size,
        };
        let (spawned, inspected) = tokio::select! {
            both = async { tokio::join!(self.backend.spawn(request), self.check_for_start(spec)) } => both,
            // The guard (still armed) ends whatever may have started.
            _ = control.token().cancelled() => return Err(SessionError::Ended(control.reason())),
        };
        match (spawned, inspected) {
            (Ok(process), Ok(state)) => {
                if let (Some(c), Some(state)) = (abandon.container.as_mut(), state) {
                    // From here on the guard's cleanup looks at the
                    // container's processes only.
                    c.init_pid = state.init_pid;
                }
                Ok(process)
            }
            (Ok(mut process), Err(e)) => {
                process.control.kill().await;
                if control.token().is_cancelled() {
                    return Err(SessionError::Ended(control.reason()));
                }
                // Only a definite "no such container" or "not running" means
                // the exec cannot have started. Any other failure (an engine
                // error, a timeout, an unreadable answer) says nothing about
                // the exec, which ran alongside: the guard stays armed and
                // ends whatever it may have started.
                if e.rules_out_a_start() {
                    abandon.armed = false;
                }
                Err(e.into())
            }
            (Err(e), _) => {
                // A refusal means nothing started; an engine that stopped
                // answering half-way may have started the exec, which the
                // guard (still armed) then ends.
                if !matches!(&e, StartError::Refused(p) if !p.rules_out_a_start()) {
                    abandon.armed = false;
                }
                Err(e.into())
            }
        }
    }

    /// The engine's view of the container (`None` in host-exec mode).
    async fn check_for_start(
        &self,
        spec: &ExecSpec,
    ) -> Result<Option<ContainerState>, PreflightError> {
        if !self.backend_config.has_containers() {
            return Ok(None);
        }
        self.backend.check(&spec.container_id).await.map(Some)
    }

    /// For a terminal whose size can be overwritten behind execd's back
    /// (the CLI's), waits until the container's terminal has `size`, so
    /// that STARTED never reaches a client before its size did.
    async fn await_terminal_size(
        &self,
        abandon: &AbandonGuard,
        process: &mut Process,
        size: TermSize,
        control: &SessionControl,
    ) -> Result<(), SessionError> {
        let (Some(container), Some(resizer)) =
            (abandon.container.clone(), process.resizer.as_deref())
        else {
            return Ok(());
        };
        if !resizer.needs_checks() {
            return Ok(());
        }
        let init_pid = container.init_pid;
        let visible = crate::procfs::run(move || reaper::container_visible(&container))
            .await
            .unwrap_or(false);
        // Where the container's processes cannot be seen there is nothing
        // to wait for: the resizer can only nudge the CLI.
        if !visible {
            return Ok(());
        }
        let waited = resize::await_container_size(
            &abandon.marker,
            init_pid,
            size,
            process.control.as_mut(),
            resizer,
            control.token(),
            self.lifecycle.start_size_wait,
        )
        .await;
        match waited {
            SizeWait::Sized | SizeWait::CliExited => Ok(()),
            SizeWait::TimedOut => {
                tracing::warn!(
                    wait = ?self.lifecycle.start_size_wait,
                    ?size,
                    "the container's terminal did not get the requested size in time; \
                     announcing the session anyway"
                );
                Ok(())
            }
            SizeWait::Cancelled => {
                // The guard (still armed) ends what was started.
                process.control.kill().await;
                Err(SessionError::Ended(control.reason()))
            }
        }
    }
}
