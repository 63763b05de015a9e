//! `execd.admin.v1.SessionAdmin`: list and close sessions, watch
//! per-instance session counts.

use std::pin::Pin;

use execd_proto::admin::session_admin_server::SessionAdmin;
use execd_proto::admin::{
    close_sessions_request::Target, instance_event::Kind, CloseSessionsRequest,
    CloseSessionsResponse, InstanceEvent, ListSessionsRequest, ListSessionsResponse, SessionInfo,
    WatchInstancesRequest,
};
use execd_session::{CloseTarget, InstanceEventKind, SessionManager};
use futures_util::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// Events queued per watcher in front of the gRPC stream. Behind it sits
/// the registry's broadcast buffer; a watcher that falls further behind than
/// both is ended with RESOURCE_EXHAUSTED and must re-subscribe.
const WATCH_QUEUE: usize = 64;

pub struct SessionAdminImpl {
    manager: SessionManager,
}

impl SessionAdminImpl {
    pub fn new(manager: SessionManager) -> Self {
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
        let filter = request.into_inner().instance_id;
        let filter = (!filter.is_empty()).then_some(filter);
        let registry = self.manager.registry();
        let sessions = registry
            .list(filter.as_deref())
            .into_iter()
            .map(|s| SessionInfo {
                session_id: s.session_id,
                instance_id: s.instance_id,
                container_id: s.container_id,
                command: s.command,
                tty: s.tty,
                started_at_unix_ms: s.started_at_unix_ms,
                last_activity_unix_ms: s.last_activity_unix_ms,
                stdin_bytes: s.stdin_bytes,
                output_bytes: s.output_bytes,
            })
            .collect();
        let active_per_instance = registry
            .active_per_instance()
            .into_iter()
            .filter(|(id, _)| filter.as_deref().is_none_or(|f| f == id))
            .collect();
        Ok(Response::new(ListSessionsResponse {
            sessions,
            active_per_instance,
        }))
    }

    async fn close_sessions(
        &self,
        request: Request<CloseSessionsRequest>,
    ) -> Result<Response<CloseSessionsResponse>, Status> {
        let request = request.into_inner();
        let target = match request.target {
            Some(Target::SessionId(id)) if !id.is_empty() => CloseTarget::Session(id),
            Some(Target::InstanceId(id)) if !id.is_empty() => CloseTarget::Instance(id),
            _ => {
                return Err(Status::invalid_argument(
                    "set target: a non-empty session_id or instance_id",
                ))
            }
        };
        let reason = if request.reason.is_empty() {
            "by operator".to_string()
        } else {
            request.reason
        };
        let closed = self.manager.registry().close(&target, &reason);
        tracing::info!(?target, %reason, closed, "sessions closed by admin request");
        Ok(Response::new(CloseSessionsResponse {
            closed: closed as u32,
        }))
    }

    type WatchInstancesStream = WatchStream;

    async fn watch_instances(
        &self,
        request: Request<WatchInstancesRequest>,
    ) -> Result<Response<Self::WatchInstancesStream>, Status> {
        let filter = request.into_inner().instance_id;
        let filter = (!filter.is_empty()).then_some(filter);
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
    use execd_session::registry::{SessionControl, SessionEntry, SessionStats};
    use execd_session::{ManagerConfig, SessionManager};
    use futures_util::StreamExt;
    use std::sync::Arc;
    use tokio_util::sync::CancellationToken;

    fn entry(id: usize, instance: &str) -> SessionEntry {
        SessionEntry {
            session_id: format!("s{id}"),
            instance_id: instance.to_string(),
            container_id: "c".into(),
            command: vec!["sh".into()],
            tty: false,
            started_at_unix_ms: 0,
            stats: Arc::new(SessionStats::new()),
            control: Arc::new(SessionControl::new(&CancellationToken::new())),
        }
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
                    .register(entry(i, "busy-instance"))
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
