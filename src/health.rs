//! gRPC health (`grpc.health.v1`): SERVING for the overall server and
//! `exec_service.ExecService` while the container engine answers, NOT_SERVING
//! while it does not (asked every `--health-interval`) and from the moment
//! shutdown begins.
//!
//! The question goes to the session manager ([`SessionManager::ping`]),
//! whose backend knows how to reach its engine; nothing here runs or
//! connects to anything itself.

use std::time::Duration;

use execd_session::SessionManager;
use tokio_util::sync::CancellationToken;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// The service names whose health follows the engine ("" is the whole
/// server; probes that check readiness use it).
pub(crate) const SERVICES: [&str; 2] = ["", "exec_service.ExecService"];

/// Reported SERVING from start to shutdown whatever the engine does, so a
/// liveness probe can tell "execd is stuck" from "the engine is down".
pub(crate) const LIVENESS_SERVICE: &str = "execd.admin.v1.SessionAdmin";

/// Whether the manager's engine answers within `timeout` (always, in
/// host-exec mode).
pub(crate) async fn engine_answers(
    manager: &SessionManager,
    timeout: Duration,
) -> Result<(), String> {
    match tokio::time::timeout(timeout, manager.ping()).await {
        Ok(answer) => answer.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "the container engine did not answer within {timeout:?}"
        )),
    }
}

async fn set_all(reporter: &HealthReporter, status: ServingStatus) {
    for service in SERVICES {
        reporter.set_service_status(service, status).await;
    }
}

/// Keeps the health status current until `shutdown`, then NOT_SERVING.
pub(crate) async fn monitor(
    reporter: HealthReporter,
    manager: SessionManager,
    interval: Duration,
    shutdown: CancellationToken,
) {
    reporter
        .set_service_status(LIVENESS_SERVICE, ServingStatus::Serving)
        .await;
    let mut last: Option<bool> = None;
    loop {
        let healthy = engine_answers(&manager, interval.max(Duration::from_secs(2))).await;
        if shutdown.is_cancelled() {
            break;
        }
        let ok = healthy.is_ok();
        if last != Some(ok) {
            match &healthy {
                Ok(()) => tracing::info!("container engine answers: SERVING"),
                Err(e) => tracing::warn!(error = %e, "container engine unreachable: NOT_SERVING"),
            }
            let status = if ok {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            set_all(&reporter, status).await;
            last = Some(ok);
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    set_all(&reporter, ServingStatus::NotServing).await;
    reporter
        .set_service_status(LIVENESS_SERVICE, ServingStatus::NotServing)
        .await;
}
