//! `execd.admin.v1.SessionAdmin`: list and close sessions, watch
//! per-instance session counts.
//!
//! Every request field is bounded: ids are validated like the ExecStream's,
//! a close reason (which reaches other clients' statuses) is short printable
//! ASCII, and listings come in pages small enough for any default client.
//!
//! What a caller may see follows its [`AdminRights`]: an admin token (or a
//! server without tokens) sees and closes every session; an exec token on a
//! server without admin tokens lists, counts and closes only the sessions
//! it started, and may not watch every instance's counts. Another client's
//! session is then as if it did not exist.

use std::pin::Pin;

use execd_proto::admin::session_admin_server::SessionAdmin;
use execd_proto::admin::{
    close_sessions_request::Target, instance_event::Kind, CloseSessionsRequest,
    CloseSessionsResponse, InstanceEvent, ListSessionsRequest, ListSessionsResponse, SessionInfo,
    WatchInstancesRequest,
};
use execd_session::command::{validate_instance_id, validate_session_id};
use execd_session::log_field::LogField;
use execd_session::{CloseTarget, InstanceEventKind, PageRequest, SessionManager};
use futures_util::Stream;
use prost::Message;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::auth::AdminRights;

/// Events queued per watcher in front of the gRPC stream. Behind it sits
/// the registry's broadcast buffer; a watcher that falls further behind than
/// both is ended with RESOURCE_EXHAUSTED and must re-subscribe.
const WATCH_QUEUE: usize = 64;

/// Sessions per ListSessions page when the request does not say.
pub(crate) const DEFAULT_PAGE_SIZE: usize = 100;
/// Most sessions per ListSessions page.
pub(crate) const MAX_PAGE_SIZE: usize = 1000;
/// A page stops before its encoding passes this, leaving room below the
/// 4 MiB a default gRPC client accepts.
pub(crate) const MAX_PAGE_BYTES: usize = 3 * 1024 * 1024;
/// Listed commands are cut to this (each argument counting length + 1).
pub(crate) const MAX_LISTED_COMMAND_BYTES: usize = 4 * 1024;
/// Longest close reason: it is sent to every closed client.
pub(crate) const MAX_REASON_LEN: usize = 256;

/// Why an admin request was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AdminError {
    #[error(transparent)]
    Invalid(#[from] execd_session::ValidationError),
    #[error("set target: a non-empty session_id or instance_id")]
    NoTarget,
    #[error("reason is invalid (allowed: printable ASCII, at most {MAX_REASON_LEN} bytes)")]
    BadReason,
    #[error("page_token is not one this server issued")]
    BadPageToken,
}

impl From<AdminError> for Status {
    fn from(err: AdminError) -> Self {
        Status::invalid_argument(err.to_string())
    }
}

/// The owner a request is limited to, if any (see the module header).
fn own_only<T>(request: &Request<T>) -> Option<String> {
    match request.extensions().get::<AdminRights>() {
        Some(AdminRights::Own(owner)) => Some(owner.clone().into_key()),
        Some(AdminRights::All) | None => None,
    }
}

/// An optional instance filter: empty means all.
fn instance_filter(instance_id: String) -> Result<Option<String>, AdminError> {
    validate_instance_id(&instance_id)?;
    Ok((!instance_id.is_empty()).then_some(instance_id))
}

fn check_reason(reason: &str) -> Result<(), AdminError> {
    let printable = reason.bytes().all(|b| matches!(b, b' '..=b'~'));
    if printable && reason.len() <= MAX_REASON_LEN {
        Ok(())
    } else {
        Err(AdminError::BadReason)
    }
}

/// Bytes a length-delimited field of `len` bytes adds to a message.
fn field_cost(len: usize) -> usize {
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

pub(crate) struct SessionAdminImpl {
    manager: SessionManager,
}

impl SessionAdminImpl {
    pub(crate) fn new(manager: SessionManager) -> Self {
        SessionAdminImpl { manager }
    }
}

fn to_wire(event: execd_session::InstanceEvent) -> InstanceEvent {
    let kind = match event.kind {
        InstanceEventKind::Snapshot => Kind::Snapshot,
        InstanceEventKind::Busy => Kind::Busy,
        InstanceEventKind::Idle => Kind::Idle,
        InstanceEventKind::Count => Kind::Count,
    };
    InstanceEvent {
        kind: kind as i32,
        instance_id: event.instance_id,
        active_sessions: event.active_sessions,
        at_unix_ms: event.at_unix_ms,
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<InstanceEvent, Status>> + Send>>;

#[tonic::async_trait]
impl SessionAdmin for SessionAdminImpl {
    async fn list_sessions(
        &self,
        request: Request<ListSessionsRequest>,
    ) -> Result<Response<ListSessionsResponse>, Status> {
        let owner = own_only(&request);
        let request = request.into_inner();
        let filter = instance_filter(request.instance_id)?;
        // The token is the last session id of the previous page.
        let after = (!request.page_token.is_empty()).then_some(request.page_token);
        if let Some(after) = &after {
            validate_session_id(after).map_err(|_| AdminError::BadPageToken)?;
        }
        let limit = match request.page_size as usize {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let registry = self.manager.registry();
        let page = registry.page(&PageRequest {
            instance_id: filter.as_deref(),
            owner: owner.as_deref(),
            after: after.as_deref(),
            limit,
            max_command_bytes: MAX_LISTED_COMMAND_BYTES,
        });
        // Limited to its own sessions, a caller learns no one else's counts.
        let counts = match &owner {
            Some(owner) => registry.active_per_instance_of(owner),
            None => registry.active_per_instance(),
        };
        let mut response = ListSessionsResponse::default();
        // Room for the next_page_token field.
        let mut bytes = field_cost(execd_session::command::MAX_SESSION_ID_LEN);
        let mut more = page.more;
        for s in page.sessions {
            let detach = self
                .manager
                .reattach_table()
                .and_then(|t| t.info(&s.session_id));
            let info = SessionInfo {
                detached_at_unix_ms: detach
                    .as_ref()
                    .and_then(|d| d.detached_at_ms())
                    .unwrap_or(0),
                replay_dropped_bytes: detach.as_ref().map_or(0, |d| d.dropped_bytes()),
                session_id: s.session_id,
                instance_id: s.instance_id,
                container_id: s.container_id,
                command: s.command,
                command_truncated: s.command_truncated,
                tty: s.tty,
                started_at_unix_ms: s.started_at_unix_ms,
                last_activity_unix_ms: s.last_activity_unix_ms,
                stdin_bytes: s.stdin_bytes,
                output_bytes: s.output_bytes,
                door: s.door.as_str().to_string(),
                kind: s.kind.as_str().to_string(),
            };
            let count = counts.get(&info.instance_id).copied();
            let new_instance =
                count.filter(|_| !response.active_per_instance.contains_key(&info.instance_id));
            let mut cost = field_cost(info.encoded_len());
            if new_instance.is_some() {
                // Key, value (≤ 5-byte varint) and the entry's own framing.
                cost += field_cost(field_cost(info.instance_id.len()) + 6);
            }
            // Always at least one session, so paging makes progress.
            if !response.sessions.is_empty() && bytes + cost > MAX_PAGE_BYTES {
                more = true;
                break;
            }
            bytes += cost;
            if let Some(n) = new_instance {
                response
                    .active_per_instance
                    .insert(info.instance_id.clone(), n);
            }
            response.sessions.push(info);
        }
        if more {
            if let Some(last) = response.sessions.last() {
                response.next_page_token = last.session_id.clone();
            }
        }
        Ok(Response::new(response))
    }

    async fn close_sessions(
        &self,
        request: Request<CloseSessionsRequest>,
    ) -> Result<Response<CloseSessionsResponse>, Status> {
        let owner = own_only(&request);
        let request = request.into_inner();
        let target = match request.target {
            Some(Target::SessionId(id)) if !id.is_empty() => {
                validate_session_id(&id).map_err(AdminError::from)?;
                CloseTarget::Session(id)
            }
            Some(Target::InstanceId(id)) if !id.is_empty() => {
                validate_instance_id(&id).map_err(AdminError::from)?;
                CloseTarget::Instance(id)
            }
            _ => return Err(AdminError::NoTarget.into()),
        };
        check_reason(&request.reason)?;
        let reason = if request.reason.is_empty() {
            "by operator".to_string()
        } else {
            request.reason
        };
        let closed = self
            .manager
            .registry()
            .close_of(&target, &reason, owner.as_deref());
        let (kind, id) = match &target {
            CloseTarget::Session(id) => ("session", id),
            CloseTarget::Instance(id) => ("instance", id),
        };
        tracing::info!(
            target = kind,
            id = %LogField::new(id),
            reason = %LogField::new(&reason),
            closed,
            own_only = owner.is_some(),
            "sessions closed by admin request"
        );
        Ok(Response::new(CloseSessionsResponse {
            closed: closed as u32,
        }))
    }

    type WatchInstancesStream = WatchStream;

    async fn watch_instances(
        &self,
        request: Request<WatchInstancesRequest>,
    ) -> Result<Response<Self::WatchInstancesStream>, Status> {
        if own_only(&request).is_some() {
            // Instance counts include every client's sessions.
            return Err(Status::permission_denied(
                "watching instances needs an admin token (--admin-token-file); an exec token may list and close its own sessions only",
            ));
        }
        let filter = instance_filter(request.into_inner().instance_id)?;
        let (snapshot, mut events) = self.manager.registry().watch(filter.as_deref());
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        let shutdown = self.manager.shutdown_token().clone();
        tokio::spawn(async move {
            for event in snapshot {
                if tx.send(Ok(to_wire(event))).await.is_err() {
                    return;
                }
            }
            loop {
                let event = tokio::select! {
                    event = events.recv() => event,
                    _ = tx.closed() => return,
                    _ = shutdown.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("server shutting down"))).await;
                        return;
                    }
                };
                match event {
                    Ok(event) => {
                        if filter.as_deref().is_some_and(|f| f != event.instance_id) {
                            continue;
                        }
                        // Waiting here is fine: the registry never waits
                        // for us; if we fall behind, `recv` reports it.
                        if tx.send(Ok(to_wire(event))).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        let _ = tx
                            .send(Err(Status::resource_exhausted(format!(
                                "watcher fell behind by {missed} events; re-subscribe for a fresh snapshot"
                            ))))
                            .await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use execd_session::registry::SessionEntry;
    use execd_session::{ExecSpec, ManagerConfig, SessionManager};
    use futures_util::StreamExt;
    use tokio_util::sync::CancellationToken;

    /// A registry entry of session `id` (no process behind it).
    fn entry(id: &str, instance: &str, container: &str, command: Vec<String>) -> SessionEntry {
        let spec = ExecSpec {
            instance_id: instance.to_string(),
            container_id: container.to_string(),
            command,
            ..ExecSpec::default()
        };
        SessionEntry::new(id.to_string(), &spec, &CancellationToken::new())
    }

    /// Whatever was registered, a page of the largest page size stays
    /// below a default client's 4 MiB, and paging still reaches everyone.
    #[tokio::test]
    async fn worst_case_pages_fit_a_default_client() {
        let manager = SessionManager::new(ManagerConfig::default(), CancellationToken::new());
        let admin = SessionAdminImpl::new(manager.clone());
        let mut guards = Vec::new();
        for i in 0..1000 {
            let id = format!("{i:0>128}");
            // Many short arguments cost the most per listed byte.
            let e = entry(&id, &id, &"c".repeat(255), vec!["ab".to_string(); 4000]);
            guards.push(manager.registry().register(e).unwrap());
        }
        let mut token = String::new();
        let mut seen = 0;
        loop {
            let page = admin
                .list_sessions(Request::new(ListSessionsRequest {
                    page_size: 5000,
                    page_token: token.clone(),
                    ..Default::default()
                }))
                .await
                .unwrap()
                .into_inner();
            assert!(
                page.encoded_len() <= MAX_PAGE_BYTES,
                "{}",
                page.encoded_len()
            );
            assert!(page.sessions.len() <= MAX_PAGE_SIZE);
            assert_eq!(page.active_per_instance.len(), page.sessions.len());
            seen += page.sessions.len();
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(seen, 1000);
    }

    /// A watcher that stops reading falls behind without blocking anyone,
    /// and is then told to re-subscribe.
    #[tokio::test]
    async fn a_lagging_watcher_ends_with_resource_exhausted() {
        let manager = SessionManager::new(ManagerConfig::default(), CancellationToken::new());
        let admin = SessionAdminImpl::new(manager.clone());
        let mut stream = admin
            .watch_instances(Request::new(WatchInstancesRequest::default()))
            .await
            .unwrap()
            .into_inner();
        // Far more changes than the queue and the broadcast buffer hold;
        // registering never waits for the watcher.
        for i in 0..(execd_session::registry::WATCH_BUFFER * 2) {
            drop(
                manager
                    .registry()
                    .register(entry(
                        &format!("s{i}"),
                        "busy-instance",
                        "c",
                        vec!["sh".into()],
                    ))
                    .unwrap(),
            );
        }
        let mut events = 0;
        let status = loop {
            match tokio::time::timeout(std::time::Duration::from_secs(10), stream.next())
                .await
                .expect("the watch ends")
            {
                Some(Ok(_)) => events += 1,
                Some(Err(status)) => break status,
                None => panic!("watch ended without an error after {events} events"),
            }
        };
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(
            status.message().contains("re-subscribe"),
            "{}",
            status.message()
        );
        assert!(events < execd_session::registry::WATCH_BUFFER * 4);
    }
}
