//! The session manager: validates a request, registers the session, spawns
//! the runtime command and confirms the container before handing back a
//! running [`Session`].

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::command::{validate_session_id, ExecMode, ExecSpec, TermSize};
use crate::error::SessionError;
use crate::preflight;
use crate::reaper::{self, ContainerRef};
use crate::registry::{
    now_ms, Limits, Registration, Registry, SessionControl, SessionEntry, SessionStats,
};
use crate::session::{self, Launch, LifecycleConfig, Session};
use crate::spawn;

/// Everything the manager is configured with.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub mode: ExecMode,
    pub limits: Limits,
    pub lifecycle: LifecycleConfig,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            mode: ExecMode::Container {
                runtime_cli: "docker".into(),
            },
            limits: Limits::default(),
            lifecycle: LifecycleConfig::default(),
        }
    }
}

/// Starts sessions and owns the registry. Cheap to clone.
#[derive(Clone)]
pub struct SessionManager {
    mode: Arc<ExecMode>,
    /// The local Engine API socket, if the runtime CLI is a plain local
    /// docker; decided once (it reads the CLI's config file).
    engine_api: Option<Arc<std::path::Path>>,
    lifecycle: Arc<LifecycleConfig>,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
}

/// Generates a session id: 128 random bits, hex.
pub fn new_session_id() -> String {
    let bits: u128 = rand::random();
    format!("{bits:032x}")
}

/// Kills whatever an abandoned start may have left in the container, when a
/// start is dropped half-way (client gone during the preflight).
struct AbandonGuard {
    session_id: String,
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
        let id = std::mem::take(&mut self.session_id);
        let container = self.container.take();
        let polite = if self.tty {
            nix::sys::signal::Signal::SIGHUP
        } else {
            nix::sys::signal::Signal::SIGTERM
        };
        let grace = self.grace;
        let started = self.started;
        handle.spawn(async move {
            reaper::reap_session(&id, polite, grace, container.as_ref()).await;
            reaper::reap_late_starters(&id, started, Duration::from_millis(300), polite, grace)
                .await;
        });
    }
}

impl SessionManager {
    /// `shutdown` ends every session (with "server shutting down") when
    /// cancelled.
    pub fn new(config: ManagerConfig, shutdown: CancellationToken) -> Self {
        let engine_api = match &config.mode {
            ExecMode::Container { runtime_cli } => {
                crate::engine_api::local_socket(runtime_cli).map(Arc::from)
            }
            ExecMode::Host => None,
        };
        SessionManager {
            engine_api,
            mode: Arc::new(config.mode),
            lifecycle: Arc::new(config.lifecycle),
            registry: Registry::new(config.limits),
            shutdown,
        }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn mode(&self) -> &ExecMode {
        &self.mode
    }

    /// The local Engine API socket used for preflights and health, if any.
    pub fn engine_api_socket(&self) -> Option<&std::path::Path> {
        self.engine_api.as_deref()
    }

    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Starts a session. On success the process runs, the engine confirmed
    /// the container, and the session is registered; the caller may announce
    /// STARTED. On error nothing is left running.
    pub async fn start(
        &self,
        requested_id: Option<String>,
        spec: ExecSpec,
    ) -> Result<Session, SessionError> {
        if self.shutdown.is_cancelled() {
            return Err(SessionError::Ended(crate::EndReason::Shutdown));
        }
        spec.validate(&self.mode)?;
        let id = match requested_id.filter(|id| !id.is_empty()) {
            Some(id) => {
                validate_session_id(&id)?;
                id
            }
            None => new_session_id(),
        };
        let command = spec.effective_command();
        let registration = self.registry.register(SessionEntry {
            session_id: id.clone(),
            instance_id: spec.instance_id.clone(),
            container_id: spec.container_id.clone(),
            command,
            tty: spec.tty,
            started_at_unix_ms: now_ms(),
            stats: Arc::new(SessionStats::new()),
            control: Arc::new(SessionControl::new(&self.shutdown)),
        })?;

        let runtime = spec.build_command(&self.mode, &id);
        let size = TermSize::from_client(spec.rows, spec.cols);
        let spawned_at = std::time::Instant::now();
        let mut spawned = if spec.tty {
            let mode = match self.mode.as_ref() {
                ExecMode::Container { .. } => spawn::TerminalMode::Raw,
                ExecMode::Host => spawn::TerminalMode::Cooked,
            };
            spawn::spawn_in_terminal(&runtime, size, mode)?
        } else {
            spawn::spawn_piped(&runtime)?
        };
        let control = registration.entry().control.clone();
        let mut abandon = AbandonGuard {
            session_id: id.clone(),
            // init_pid unknown yet: if execd cannot see the container's
            // processes, the reaper falls back to the runtime CLI.
            container: match self.mode.as_ref() {
                ExecMode::Container { runtime_cli } => Some(ContainerRef {
                    runtime_cli: runtime_cli.clone(),
                    container_id: spec.container_id.clone(),
                    init_pid: 0,
                }),
                ExecMode::Host => None,
            },
            tty: spec.tty,
            grace: self.lifecycle.kill_grace,
            started: spawned_at,
            armed: true,
            registration: Some(registration),
        };

        // The exec is already on its way; the inspect runs alongside it.
        let container = match self.mode.as_ref() {
            ExecMode::Container { runtime_cli } => {
                let inspected = tokio::select! {
                    r = preflight::check_container(runtime_cli, self.engine_api_socket(), &spec.container_id) => r,
                    _ = control.token().cancelled() => {
                        Err(preflight::PreflightError::Failed {
                            container_id: spec.container_id.clone(),
                            message: control.reason().to_string(),
                        })
                    }
                };
                match inspected {
                    Ok(state) => Some(ContainerRef {
                        runtime_cli: runtime_cli.clone(),
                        container_id: spec.container_id.clone(),
                        init_pid: state.init_pid,
                    }),
                    Err(e) => {
                        let _ = spawned.child.start_kill();
                        let _ = spawned.child.wait().await;
                        if control.token().is_cancelled() {
                            // Ended while the exec was under way: it may have
                            // started, so the guard (still armed) reaps it and
                            // keeps the session counted until then.
                            return Err(SessionError::Ended(control.reason()));
                        }
                        // The engine refused the container, so the exec
                        // cannot have started; only the CLI needed to go.
                        abandon.armed = false;
                        return Err(e.into());
                    }
                }
            }
            ExecMode::Host => None,
        };
        abandon.armed = false;
        let Some(registration) = abandon.registration.take() else {
            return Err(SessionError::Wait(std::io::Error::other(
                "session registration lost during start",
            )));
        };

        Ok(session::launch(Launch {
            id,
            child: spawned.child,
            io: spawned.io,
            initial_size: size,
            registration,
            container,
            config: self.lifecycle.clone(),
            spawned_at,
        }))
    }
}
