//! Reading containers outside any session, for doors that describe or
//! check them (the Kubernetes door's pods, the Docker door's container
//! inspect and exec create, CRI and pod attach, the browser terminal's
//! picker, `/terminal/ws` instances): one container by name or id, and the
//! running ones.
//!
//! The backend answers ([`crate::backend::Backend::inspect`] and
//! [`crate::backend::Backend::list`]: the engine's own `ContainerInspect`
//! documents, read into [`ContainerInfo`]), so no door knows which runtime
//! is underneath. In front of it, every such query passes the
//! [`EngineGate`] the session manager owns (see `preflight`): at most
//! [`MAX_ENGINE_CALLS`] engine calls (Engine API requests or CLI processes)
//! run at once for all doors together; a query that gets no permit within
//! [`PERMIT_WAIT`] is refused as busy, so a flood of cheap requests can
//! neither fork hundreds of `docker` processes nor queue behind a slow
//! engine. Session starts do not pass the gate: they are bounded by the
//! session limits, and a flood of queries must not keep a session from
//! starting. Answers about running containers are reused for
//! [`CACHE_TTL`].

use std::time::Duration;

use crate::backend::inspect::{ContainerDocument, ContainerInfo, QueryError};
use crate::command::is_container_ref;
use crate::error::SessionError;
use crate::manager::SessionManager;
use crate::preflight::{EngineBusy, PreflightError};
#[cfg(doc)]
use crate::preflight::{EngineGate, CACHE_TTL, MAX_ENGINE_CALLS, PERMIT_WAIT};

pub use crate::backend::inspect::MAX_LISTED;

/// A hung engine must not hold a request forever.
const QUERY_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a door's question about containers has no answer.
#[derive(Debug, thiserror::Error)]
pub enum ContainerQueryError {
    #[error("execd runs commands on this host (--host-exec): there are no containers")]
    HostMode,
    #[error("{0:?} is not a container name or id")]
    BadReference(String),
    #[error("the container engine did not answer in time")]
    TimedOut,
    #[error("asking the container engine failed: {0}")]
    Engine(String),
    #[error("{}", busy(.limit))]
    Busy { limit: usize },
}

/// Busy's words are the gate's.
fn busy(limit: &usize) -> EngineBusy {
    EngineBusy { limit: *limit }
}

impl From<EngineBusy> for ContainerQueryError {
    fn from(busy: EngineBusy) -> Self {
        ContainerQueryError::Busy { limit: busy.limit }
    }
}

impl From<QueryError> for ContainerQueryError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::NoContainers => ContainerQueryError::HostMode,
            QueryError::TimedOut => ContainerQueryError::TimedOut,
            other => ContainerQueryError::Engine(other.to_string()),
        }
    }
}

impl ContainerQueryError {
    /// The same failure for doors that report session errors. Busy is a
    /// limit reached ([`SessionError::EngineBusy`]: RESOURCE_EXHAUSTED,
    /// HTTP 429 on every door); the rest is an inspect that failed.
    pub fn into_session_error(self, container_id: &str) -> SessionError {
        match self {
            ContainerQueryError::Busy { limit } => EngineBusy { limit }.into(),
            other => SessionError::Preflight(PreflightError::Failed {
                container_id: container_id.to_string(),
                message: other.to_string(),
            }),
        }
    }
}

impl SessionManager {
    /// The engine's inspect document for `reference` (name or id), through
    /// the gate; a running container's is reused for a moment (1.5 s).
    pub async fn container_document(
        &self,
        reference: &str,
    ) -> Result<ContainerDocument, ContainerQueryError> {
        if !is_container_ref(reference) {
            return Err(ContainerQueryError::BadReference(
                reference.chars().take(64).collect(),
            ));
        }
        self.containers_only()?;
        let gate = self.engine_gate();
        if let Some(document) = gate.recent_document(reference) {
            return Ok(document);
        }
        let _permit = gate.enter(1).await?;
        let document = bounded(self.backend().inspect(reference)).await?;
        // Only a running container's: one just created, started or
        // removed is never shown in an old state.
        if document.running_state().is_some() {
            gate.remember_document(reference, document.clone());
        }
        Ok(document)
    }

    /// The container named `reference` (name or id); `None` when the
    /// engine has no such container.
    pub async fn inspect_container(
        &self,
        reference: &str,
    ) -> Result<Option<ContainerInfo>, ContainerQueryError> {
        Ok(self.container_document(reference).await?.info()?)
    }

    /// The running containers, sorted by name, at most [`MAX_LISTED`].
    pub async fn running_containers(&self) -> Result<Vec<ContainerInfo>, ContainerQueryError> {
        self.containers_only()?;
        let backend = self.backend();
        let _permits = self.engine_gate().enter(backend.list_calls()).await?;
        let mut list = bounded(backend.list()).await?;
        list.retain(ContainerInfo::running);
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list.truncate(MAX_LISTED);
        Ok(list)
    }

    fn containers_only(&self) -> Result<(), ContainerQueryError> {
        match self.backend_config().has_containers() {
            true => Ok(()),
            false => Err(ContainerQueryError::HostMode),
        }
    }
}

async fn bounded<T>(
    query: impl std::future::Future<Output = Result<T, QueryError>>,
) -> Result<T, ContainerQueryError> {
    tokio::time::timeout(QUERY_TIMEOUT, query)
        .await
        .map_err(|_| ContainerQueryError::TimedOut)?
        .map_err(ContainerQueryError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_is_a_limit_reached_everywhere() {
        let busy = ContainerQueryError::from(EngineBusy { limit: 2 });
        assert!(busy.to_string().contains("busy"), "{busy}");
        let err = busy.into_session_error("c");
        assert!(matches!(
            err,
            SessionError::EngineBusy(EngineBusy { limit: 2 })
        ));
        assert_eq!(err.kind(), crate::ErrorKind::ResourceExhausted);
        assert!(err.to_string().contains("busy"), "{err}");
        let failed = ContainerQueryError::from(QueryError::Engine("boom".into()));
        assert_eq!(
            failed.to_string(),
            "asking the container engine failed: boom"
        );
        assert!(matches!(
            ContainerQueryError::from(QueryError::NoContainers),
            ContainerQueryError::HostMode
        ));
    }
}
