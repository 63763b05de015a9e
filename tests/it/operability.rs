//! Health, reflection, metrics and configuration (deployment files: tests/deploy.rs).

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::*;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

async fn health(server: &TestServer, service: &str) -> ServingStatus {
    let mut client = HealthClient::new(server.channel().await);
    let resp = client
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    ServingStatus::try_from(resp.status).unwrap()
}

async fn wait_health(server: &TestServer, service: &str, want: ServingStatus) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let got = health(server, service).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{service:?} stuck at {got:?}, wanted {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The engine "stops" and "starts" for this server only: its runtime CLI
/// talks to the engine through a symlink the test removes and restores, so
/// other tests keep their engine.
#[tokio::test]
async fn health_follows_the_engine() {
    need_docker!();
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("engine.sock");
    let real = ["/var/run/docker.sock", "/run/docker.sock"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("docker socket");
    std::os::unix::fs::symlink(real, &link).unwrap();
    let cli = dir.path().join("docker-via-link");
    std::fs::write(
        &cli,
        format!(
            "#!/bin/sh\nexec docker -H unix://{} \"$@\"\n",
            link.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&cli, std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut cfg = config();
    cfg.manager.backend = execd_session::BackendConfig::Cli {
        program: cli.to_string_lossy().into_owned(),
    };
    cfg.health_interval = Duration::from_millis(200);
    let server = start_server(cfg).await;
    for service in [
        "",
        "exec_service.ExecService",
        "execd.admin.v1.SessionAdmin",
    ] {
        wait_health(&server, service, ServingStatus::Serving).await;
    }
    std::fs::remove_file(&link).unwrap();
    wait_health(&server, "", ServingStatus::NotServing).await;
    wait_health(
        &server,
        "exec_service.ExecService",
        ServingStatus::NotServing,
    )
    .await;
    // Liveness does not follow the engine.
    assert_eq!(
        health(&server, "execd.admin.v1.SessionAdmin").await,
        ServingStatus::Serving
    );
    // Sessions meanwhile fail with UNAVAILABLE, not "exit 1".
    let t = server.run(req(shared_container(), &["true"])).await;
    t.assert_error(tonic::Code::Unavailable);
    std::os::unix::fs::symlink(real, &link).unwrap();
    wait_health(&server, "", ServingStatus::Serving).await;
    wait_health(&server, "exec_service.ExecService", ServingStatus::Serving).await;
    server.stop().await;
}

/// The answer of reflection API `$api` (`v1` or `v1alpha`: the same
/// messages in two packages) on `$server` to the request `$ask($arg)`.
macro_rules! reflect {
    ($api:ident, $server:expr, $ask:ident($arg:expr)) => {{
        use tonic_reflection::pb::$api::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$api::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$api::ServerReflectionRequest;
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::$ask($arg)),
        };
        let mut client = ServerReflectionClient::new($server.channel().await);
        let mut responses = client
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        responses.message().await.unwrap().unwrap().message_response
    }};
}

/// The services reflection API `$api` on `$server` lists.
macro_rules! listed_services {
    ($api:ident, $server:expr) => {{
        use tonic_reflection::pb::$api::server_reflection_response::MessageResponse;
        match reflect!($api, $server, ListServices(String::new())) {
            Some(MessageResponse::ListServicesResponse(list)) => list
                .service
                .into_iter()
                .map(|s| s.name)
                .collect::<BTreeSet<String>>(),
            other => panic!("unexpected {other:?}"),
        }
    }};
}

#[tokio::test]
async fn reflection_lists_every_service_in_v1_and_v1alpha() {
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let server = start_server(config()).await;
    let expected: BTreeSet<String> = [
        "exec_service.ExecService",
        "execd.admin.v1.SessionAdmin",
        "grpc.health.v1.Health",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let names = listed_services!(v1, server);
    assert!(names.is_superset(&expected), "{names:?}");
    // `describe` needs the file that defines a symbol.
    let symbol = "exec_service.ExecMessage".to_string();
    let found = reflect!(v1, server, FileContainingSymbol(symbol));
    assert!(matches!(
        found,
        Some(MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()
    ));
    let names = listed_services!(v1alpha, server);
    assert!(names.is_superset(&expected), "{names:?}");
}

#[tokio::test]
async fn metrics_count_sessions_bytes_and_outcomes_exactly() {
    need_docker!();
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut cfg = config();
    cfg.metrics_listen = Some(addr);
    let server = start_server(cfg).await;
    let before = scrape_metrics(addr).await;
    assert_eq!(
        before.get("execd_sessions_started_total{door=\"grpc\",tty=\"false\"}"),
        None
    );

    let t = server
        .run(req(shared_container(), &["echo", "hello"]))
        .await;
    assert_eq!(t.assert_exited(), 0);
    let t = server
        .exec(req(
            shared_container(),
            &["sh", "-c", "echo oops >&2; exit 3"],
        ))
        .await
        .finish()
        .await;
    assert_eq!(t.assert_exited(), 3);
    let mut tty = req(shared_container(), &["cat"]);
    tty.tty = true;
    let mut exec = server.exec(tty).await;
    exec.started().await;
    exec.send(input_msg("abc")).await;
    exec.read_until("abc").await;
    drop(exec);
    let t = server.run(req("execd-no-such-container", &["true"])).await;
    t.assert_error(tonic::Code::NotFound);

    let deadline = tokio::time::Instant::now() + PATIENCE;
    let m = loop {
        let m = scrape_metrics(addr).await;
        if m.get("execd_sessions_active{door=\"grpc\",tty=\"true\"}") == Some(&0.0) {
            break m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "tty session never ended: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
    assert_eq!(
        get("execd_sessions_started_total{door=\"grpc\",tty=\"false\"}"),
        2.0
    );
    assert_eq!(
        get("execd_sessions_started_total{door=\"grpc\",tty=\"true\"}"),
        1.0
    );
    assert_eq!(
        get("execd_sessions_active{door=\"grpc\",tty=\"false\"}"),
        0.0
    );
    assert_eq!(
        get("execd_sessions_ended_total{door=\"grpc\",outcome=\"exited\"}"),
        2.0
    );
    assert_eq!(
        get("execd_sessions_ended_total{door=\"grpc\",outcome=\"cancelled\"}"),
        1.0
    );
    assert_eq!(
        get("execd_sessions_ended_total{door=\"grpc\",outcome=\"not_found\"}"),
        1.0
    );
    assert_eq!(get("execd_exit_codes_total{class=\"0\"}"), 1.0);
    assert_eq!(get("execd_exit_codes_total{class=\"1-125\"}"), 1.0);
    assert_eq!(get("execd_bytes_total{stream=\"stderr\"}"), 5.0);
    assert!(get("execd_bytes_total{stream=\"stdout\"}") >= 6.0 + 3.0);
    assert_eq!(get("execd_bytes_total{stream=\"stdin\"}"), 3.0);
    assert_eq!(
        get("execd_runtime_failures_total{kind=\"container_not_found\"}"),
        1.0
    );
    assert_eq!(get("execd_session_start_latency_seconds_count"), 3.0);
}

#[test]
fn config_precedence_is_flag_then_env_then_file_then_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("execd.toml");
    std::fs::write(
        &file,
        "max-sessions = 11\nmax-sessions-per-instance = 12\nkill-grace = \"1s\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_execd"))
        .args([
            "--config",
            file.to_str().unwrap(),
            "--print-config",
            "--max-sessions",
            "21",
        ])
        .env("EXECD_MAX_SESSIONS", "31")
        .env("EXECD_MAX_SESSIONS_PER_INSTANCE", "32")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("max-sessions = 21\n"), "flag wins: {text}");
    assert!(
        text.contains("max-sessions-per-instance = 32\n"),
        "env beats file: {text}"
    );
    assert!(
        text.contains("kill-grace = \"1s\"\n"),
        "file beats default: {text}"
    );
    assert!(
        text.contains("shutdown-grace = \"10s\"\n"),
        "default: {text}"
    );
    // The output is itself a valid config file.
    std::fs::write(&file, &text).unwrap();
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_execd"))
        .args(["--config", file.to_str().unwrap(), "--print-config"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(again.stdout).unwrap(), text);

    std::fs::write(&file, "max-sessions = \"lots\"\n").unwrap();
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_execd"))
        .args(["--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("max-sessions"), "{err}");
}
