//! The host backend (`--host-exec`, a sidecar): the session's command
//! runs on execd's own host as its child, as the user the request names,
//! under a normal (cooked) terminal or with pipes. There are no
//! containers: nothing to check, inspect or list, and an engine that is
//! always "up".

use super::child::{self, ChildStart};
use super::inspect::{
    ContainerDocument, ContainerInfo, ContainerState, PingError, PreflightError, QueryError,
    RunInsideError,
};
use super::{Backend, BoxFuture, Process, SpawnRequest, StartError};
use crate::spawn::{HostSetup, TerminalMode};

/// Runs each session's command directly on this host.
pub struct HostBackend {
    _private: (),
}

impl HostBackend {
    /// A sidecar's execd is often PID 1 of its namespace: then it has to
    /// reap what sessions orphan, and starts doing so here.
    pub fn new() -> HostBackend {
        crate::orphans::spawn_reaper_if_init();
        HostBackend { _private: () }
    }
}

impl Default for HostBackend {
    fn default() -> Self {
        HostBackend::new()
    }
}

async fn start(request: SpawnRequest<'_>) -> Result<Process, StartError> {
    let SpawnRequest { spec, marker, size } = request;
    let command = spec.host_command(marker);
    // User lookups may ask NSS (files, LDAP, network), so they run on a
    // blocking thread, never on the runtime.
    let user = spec.user.clone();
    let setup = tokio::task::spawn_blocking(move || HostSetup::resolve(&user))
        .await
        .map_err(|e| StartError::Internal(format!("resolving the session's user failed: {e}")))??;
    Ok(child::start(ChildStart {
        command: &command,
        terminal: spec.tty.then_some((size, TerminalMode::Cooked)),
        host: Some(&setup),
        size_needs_checks: false,
    })?)
}

impl Backend for HostBackend {
    fn spawn<'a>(
        &'a self,
        request: SpawnRequest<'a>,
    ) -> BoxFuture<'a, Result<Process, StartError>> {
        Box::pin(start(request))
    }

    fn check<'a>(
        &'a self,
        container_id: &'a str,
    ) -> BoxFuture<'a, Result<ContainerState, PreflightError>> {
        let refused = PreflightError::Failed {
            container_id: container_id.to_string(),
            message: QueryError::NoContainers.to_string(),
        };
        Box::pin(std::future::ready(Err(refused)))
    }

    fn inspect<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<ContainerDocument, QueryError>> {
        Box::pin(std::future::ready(Err(QueryError::NoContainers)))
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<ContainerInfo>, QueryError>> {
        Box::pin(std::future::ready(Err(QueryError::NoContainers)))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), PingError>> {
        // No engine: this host runs the commands, and it runs.
        Box::pin(std::future::ready(Ok(())))
    }

    fn run_inside<'a>(
        &'a self,
        _: &'a str,
        _: &'a [String],
    ) -> BoxFuture<'a, Result<(), RunInsideError>> {
        let refused = RunInsideError::NotStarted(QueryError::NoContainers.to_string());
        Box::pin(std::future::ready(Err(refused)))
    }
}
