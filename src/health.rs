//! gRPC health (`grpc.health.v1`): SERVING for the overall server and
//! `exec_service.ExecService` while the runtime CLI and its engine answer,
//! NOT_SERVING while they do not (checked every `--health-interval`) and
//! from the moment shutdown begins.

use std::process::Stdio;
use std::time::Duration;

use std::path::Path;

use execd_session::{ExecMode, SessionManager};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// The service names whose health follows the engine ("" is the whole
/// server; probes that check readiness use it).
pub const SERVICES: [&str; 2] = ["", "exec_service.ExecService"];

/// Reported SERVING from start to shutdown whatever the engine does, so a
/// liveness probe can tell "execd is stuck" from "the engine is down".
pub const LIVENESS_SERVICE: &str = "execd.admin.v1.SessionAdmin";

/// Whether the engine behind `runtime_cli` answers: `/_ping` on the local
/// Engine API socket if there is one (no process spawned every interval),
/// else — or if that socket does not answer — `<cli> version`.
pub async fn engine_answers(
    runtime_cli: &str,
    api_socket: Option<&Path>,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(socket) = api_socket {
        // An answer settles it; no answer is double-checked with the CLI,
        // whose configuration may point elsewhere.
        if let Ok(Ok((code, body))) =
            tokio::time::timeout(timeout, execd_session::engine_api_get(socket, "/_ping")).await
        {
            return if code == 200 {
                Ok(())
            } else {
                Err(format!("the engine answered {code}: {}", body.trim()))
            };
        }
    }
    let probe = Command::new(runtime_cli)
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(timeout, probe).await {
        Err(_) => Err(format!(
            "{runtime_cli} version did not answer within {timeout:?}"
        )),
        Ok(Err(e)) => Err(format!("{runtime_cli} cannot run: {e}")),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
    }
}

async fn set_all(reporter: &HealthReporter, status: ServingStatus) {
    for service in SERVICES {
        reporter.set_service_status(service, status).await;
    }
}

/// Keeps the health status current until `shutdown`, then NOT_SERVING.
pub async fn monitor(
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
        let healthy = match manager.mode() {
            ExecMode::Host => Ok(()),
            ExecMode::Container { runtime_cli } => {
                let timeout = interval.max(Duration::from_secs(2));
                engine_answers(runtime_cli, manager.engine_api_socket(), timeout).await
            }
        };
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
