//! The runtime CLI backend: `docker exec` (or podman, nerdctl: the same
//! flags) as a child of execd per session, under a pseudo-terminal or with
//! pipes (`backend::child`), and `<cli> attach` for an attach.
//!
//! Questions about containers (a start's check, an inspect, the running
//! containers, a ping) go to the engine's API socket when the CLI is a
//! plain local docker (no other host or context: `http::local_socket`),
//! which costs no process; an answer there settles the question, and a
//! socket that cannot be reached (or, for a start's check and a ping,
//! does not answer within [`API_PATIENCE`]) passes it to the CLI, whose
//! own configuration may point elsewhere (`query`). That rule is written
//! once, in `CliBackend::first_answer`.

mod query;

use std::future::Future;
use std::io;
use std::time::Duration;

use super::child::{self, ChildStart};
use super::engine::{http, EngineBackend, LIST_CONCURRENCY};
use super::inspect::{
    ContainerDocument, ContainerInfo, ContainerState, PingError, PreflightError, QueryError,
    RunInsideError,
};
use super::{Backend, BoxFuture, Process, SpawnRequest, StartError};
use crate::spawn::TerminalMode;

/// How long the API socket gets, for a start's check and a ping, before
/// the CLI is asked instead: both are on a path where latency counts.
/// Documents and lists are bounded by their caller.
pub const API_PATIENCE: Duration = Duration::from_secs(3);

/// Runs each session's process as a `<program> exec` child.
pub struct CliBackend {
    program: String,
    /// The engine's own socket, when `program` would talk to a local one.
    api: Option<EngineBackend>,
}

impl CliBackend {
    /// Decides once whether the CLI's engine can be asked directly (it
    /// reads the CLI's configuration file).
    pub fn new(program: &str) -> CliBackend {
        CliBackend {
            program: program.to_string(),
            api: http::local_socket(program).map(EngineBackend::new),
        }
    }

    /// The runtime CLI.
    pub fn program(&self) -> &str {
        &self.program
    }

    /// The engine's API, when the CLI is a plain local docker.
    pub(crate) fn api(&self) -> Option<&EngineBackend> {
        self.api.as_ref()
    }

    /// The API's answer when there is an API socket and it answers (within
    /// `patience`, if given), else the CLI's.
    async fn first_answer<'a, T, F>(
        &'a self,
        patience: Option<Duration>,
        api: impl FnOnce(&'a EngineBackend) -> F,
        cli: impl Future<Output = T>,
    ) -> T
    where
        F: Future<Output = io::Result<T>>,
    {
        if let Some(engine) = &self.api {
            let asked = api(engine);
            let answer = match patience {
                Some(limit) => tokio::time::timeout(limit, asked).await,
                None => Ok(asked.await),
            };
            match answer {
                Ok(Ok(answer)) => return answer,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, program = %self.program, "Engine API not usable; asking the CLI");
                }
                Err(_) => {
                    tracing::debug!(program = %self.program, "Engine API slow; asking the CLI");
                }
            }
        }
        cli.await
    }
}

impl Backend for CliBackend {
    fn spawn<'a>(
        &'a self,
        request: SpawnRequest<'a>,
    ) -> BoxFuture<'a, Result<Process, StartError>> {
        let SpawnRequest { spec, marker, size } = request;
        let command = spec.cli_command(&self.program, marker);
        let started = child::start(ChildStart {
            command: &command,
            // Raw: the CLI relays to the container's own terminal, which
            // echoes and handles signals.
            terminal: spec.tty.then_some((size, TerminalMode::Raw)),
            host: None,
            size_needs_checks: true,
        });
        Box::pin(std::future::ready(started.map_err(StartError::from)))
    }

    fn check<'a>(
        &'a self,
        container_id: &'a str,
    ) -> BoxFuture<'a, Result<ContainerState, PreflightError>> {
        Box::pin(self.first_answer(
            Some(API_PATIENCE),
            |api| api.state_answer(container_id),
            query::state(&self.program, container_id),
        ))
    }

    fn inspect<'a>(
        &'a self,
        reference: &'a str,
    ) -> BoxFuture<'a, Result<ContainerDocument, QueryError>> {
        Box::pin(self.first_answer(
            None,
            |api| api.document_answer(reference),
            query::document(&self.program, reference),
        ))
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<ContainerInfo>, QueryError>> {
        Box::pin(self.first_answer(None, |api| api.list_answer(), query::running(&self.program)))
    }

    fn list_calls(&self) -> u32 {
        // Through the API a list inspects several containers at once, each
        // an engine call; through the CLI it runs one process at a time.
        if self.api.is_some() {
            LIST_CONCURRENCY
        } else {
            1
        }
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), PingError>> {
        Box::pin(self.first_answer(
            Some(API_PATIENCE),
            |api| api.ping_answer(),
            query::version(&self.program),
        ))
    }

    fn run_inside<'a>(
        &'a self,
        container_id: &'a str,
        argv: &'a [String],
    ) -> BoxFuture<'a, Result<(), RunInsideError>> {
        Box::pin(query::run_inside(&self.program, container_id, argv))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a plain local docker is asked through its socket; the API's
    /// answer settles a question, an unreachable socket passes it to the
    /// CLI.
    #[tokio::test]
    async fn the_api_answers_first_and_the_cli_after_it() {
        assert!(CliBackend::new("podman").api().is_none());
        assert!(CliBackend::new("/tmp/docker-wrapper").api().is_none());
        let dir = tempfile::tempdir().unwrap();
        let stub = dir.path().join("cli");
        std::fs::write(&stub, "#!/bin/sh\necho 'running 9'\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
        let unreachable = CliBackend {
            program: stub.to_string_lossy().into_owned(),
            api: Some(EngineBackend::new(dir.path().join("no.sock"))),
        };
        assert_eq!(
            unreachable.check("c").await,
            Ok(ContainerState { init_pid: 9 })
        );
        assert_eq!(unreachable.list_calls(), LIST_CONCURRENCY);
        let answered = unreachable
            .first_answer(None, |_| async { Ok("api") }, async { "cli" })
            .await;
        assert_eq!(answered, "api");
    }
}
