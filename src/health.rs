//! gRPC health (`grpc.health.v1`): SERVING for the overall server and
//! `exec_service.ExecService` while the runtime CLI and its engine answer,
//! NOT_SERVING while they do not (checked every `--health-interval`) and
//! from the moment shutdown begins.

use std::process::Stdio;
use std::time::Duration;

use execd_session::ExecMode;
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

/// Whether the engine behind `runtime_cli` answers: `/_ping` on a local
/// Docker socket (no process spawned every interval), else `<cli> version`.
pub async fn engine_answers(runtime_cli: &str, timeout: Duration) -> Result<(), String> {
    if let Some(socket) = execd_session::engine_api::local_socket(runtime_cli) {
        return match tokio::time::timeout(
            timeout,
            execd_session::engine_api::get(&socket, "/_ping"),
        )
        .await
        {
            Err(_) => Err(format!(
                "the engine at {} did not answer within {timeout:?}",
                socket.display()
            )),
            Ok(Err(e)) => Err(format!(
                "cannot reach the engine at {}: {e}",
                socket.display()
            )),
            Ok(Ok((200, _))) => Ok(()),
            Ok(Ok((code, body))) => Err(format!("the engine answered {code}: {}", body.trim())),
        };
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
    mode: ExecMode,
    interval: Duration,
    shutdown: CancellationToken,
) {
    reporter
        .set_service_status(LIVENESS_SERVICE, ServingStatus::Serving)
        .await;
    let mut last: Option<bool> = None;
    loop {
        let healthy = match &mode {
            ExecMode::Host => Ok(()),
            ExecMode::Container { runtime_cli } => {
                engine_answers(runtime_cli, interval.max(Duration::from_secs(2))).await
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
