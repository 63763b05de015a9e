//! Authentication, TLS and safe defaults. Certificates are made at test
//! time; nothing secret is checked in.

use crate::common::pki;

use std::time::Duration;

use crate::common::*;
use execd::config::TlsConfig;
use execd_proto::admin::session_admin_client::SessionAdminClient;
use execd_proto::admin::ListSessionsRequest;
use execd_proto::exec_service::exec_service_client::ExecServiceClient;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

fn host_config() -> execd::ServerConfig {
    let mut cfg = config();
    cfg.manager.backend = execd_session::BackendConfig::Host;
    cfg
}

/// Runs `echo ok` through ExecStream with an optional bearer token and
/// returns the first error status, or the transcript's stdout.
async fn echo_with_token(channel: Channel, token: Option<&str>) -> Result<String, tonic::Status> {
    let t = exec_with_token(channel, token, req("", &["echo", "ok"])).await?;
    Ok(t.stdout_str())
}

#[tokio::test]
async fn tokens_guard_exec_and_admin_but_not_health() {
    let rotation = "# rotation: old and new\nold-token\nnew-token\n";
    let (cfg, _tokens) = with_tokens(host_config(), rotation);
    let server = start_server(cfg).await;
    let channel = server.channel().await;

    for bad in [
        None,
        Some("wrong"),
        Some("old-toke"),
        Some("old-token-and-more"),
    ] {
        let err = echo_with_token(channel.clone(), bad).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{bad:?}: {err:?}");
        assert!(
            !err.message().contains("old-token"),
            "tokens never appear in errors"
        );
    }
    assert_eq!(
        echo_with_token(channel.clone(), Some("old-token"))
            .await
            .unwrap(),
        "ok\n"
    );
    assert_eq!(
        echo_with_token(channel.clone(), Some("new-token"))
            .await
            .unwrap(),
        "ok\n"
    );

    let err = SessionAdminClient::new(channel.clone())
        .list_sessions(ListSessionsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // Probes need no token.
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await;
    assert!(health.is_ok());
}

async fn tls_channel(
    addr: &str,
    pki: &pki::ServerPki,
    with_client_cert: bool,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost");
    if with_client_cert {
        tls = tls.identity(Identity::from_pem(
            &pki.client_cert_pem,
            &pki.client_key_pem,
        ));
    }
    Endpoint::from_shared(addr.replace("http://", "https://"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

#[tokio::test]
async fn tls_and_mutual_tls() {
    let pki = pki::ServerPki::generate();
    let mut cfg = host_config();
    cfg.tls = Some(TlsConfig {
        cert_pem: pki.cert_pem.clone().into_bytes(),
        key_pem: pki.key_pem.clone().into_bytes(),
        client_ca_pem: None,
    });
    let server = start_server(cfg).await;
    let channel = tls_channel(&server.addr, &pki, false).await.unwrap();
    assert_eq!(echo_with_token(channel, None).await.unwrap(), "ok\n");
    // Plaintext against a TLS port fails.
    let plain = Channel::from_shared(server.addr.clone())
        .unwrap()
        .connect()
        .await;
    if let Ok(plain) = plain {
        assert!(echo_with_token(plain, None).await.is_err());
    }

    let mut cfg = host_config();
    cfg.tls = Some(TlsConfig {
        cert_pem: pki.cert_pem.clone().into_bytes(),
        key_pem: pki.key_pem.clone().into_bytes(),
        client_ca_pem: Some(pki.ca_pem.clone().into_bytes()),
    });
    let server = start_server(cfg).await;
    let without = match tls_channel(&server.addr, &pki, false).await {
        Ok(channel) => echo_with_token(channel, None).await.is_err(),
        Err(_) => true,
    };
    assert!(
        without,
        "mutual TLS must refuse a client without a certificate"
    );
    let channel = tls_channel(&server.addr, &pki, true).await.unwrap();
    assert_eq!(echo_with_token(channel, None).await.unwrap(), "ok\n");
}

/// The real binary: tokens are re-read on SIGHUP, the socket gets the
/// configured mode, and a stale socket file from a crashed run is replaced.
#[tokio::test]
async fn binary_reloads_tokens_on_sighup_and_honours_socket_mode() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "first\n").unwrap();
    let socket = dir.path().join("execd.sock");
    // A stale socket file nobody listens on: execd must replace it.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let tokens_arg = tokens.display().to_string();
    let admin_tokens = dir.path().join("admin-tokens");
    std::fs::write(&admin_tokens, "admin-first\n").unwrap();
    let admin_arg = admin_tokens.display().to_string();
    let execd = ExecdProcess::start_in(
        dir,
        &[
            "--host-exec",
            "--socket-mode",
            "0660",
            "--auth-token-file",
            &tokens_arg,
            "--admin-token-file",
            &admin_arg,
        ],
    )
    .await;
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o660
    );
    let channel = execd.channel.clone();
    assert_eq!(
        echo_with_token(channel.clone(), Some("first"))
            .await
            .unwrap(),
        "ok\n"
    );

    assert_eq!(admin_list(&channel, "admin-first").await, Ok(()));
    assert_eq!(
        admin_list(&channel, "first").await,
        Err(Code::PermissionDenied)
    );

    std::fs::write(&tokens, "second\n").unwrap();
    std::fs::write(&admin_tokens, "admin-second\n").unwrap();
    execd.signal(nix::sys::signal::Signal::SIGHUP);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let first = echo_with_token(channel.clone(), Some("first")).await;
        if matches!(&first, Err(s) if s.code() == Code::Unauthenticated) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "SIGHUP did not reload the tokens"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        echo_with_token(channel.clone(), Some("second"))
            .await
            .unwrap(),
        "ok\n"
    );
    // The admin file was reloaded by the same signal.
    assert_eq!(admin_list(&channel, "admin-second").await, Ok(()));
    assert_eq!(
        admin_list(&channel, "admin-first").await,
        Err(Code::Unauthenticated)
    );
    assert!(execd.terminate().await.success());
}

/// ListSessions with a bearer token: Ok, or the refusal's code.
async fn admin_list(channel: &Channel, token: &str) -> Result<(), Code> {
    let value = tonic::metadata::MetadataValue::try_from(format!("Bearer {token}")).unwrap();
    let mut client =
        SessionAdminClient::with_interceptor(channel.clone(), move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", value.clone());
            Ok(req)
        });
    client
        .list_sessions(ListSessionsRequest::default())
        .await
        .map(|_| ())
        .map_err(|s| s.code())
}

#[test]
fn remote_listening_without_tls_and_token_is_refused() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_execd"))
        .args(["--listen", "0.0.0.0:50999"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to listen on 0.0.0.0:50999"), "{err}");
    assert!(err.contains("--insecure-allow-remote"), "{err}");

    use clap::Parser;
    let cli =
        execd::Cli::try_parse_from(["execd", "--listen", "0.0.0.0:1", "--insecure-allow-remote"])
            .unwrap();
    assert!(
        !cli.check_exposure().unwrap().is_empty(),
        "allowed, flagged as insecure"
    );
    let cli = execd::Cli::try_parse_from([
        "execd",
        "--listen",
        "[::]:1",
        "--tls-cert",
        "c",
        "--tls-key",
        "k",
        "--auth-token-file",
        "t",
    ])
    .unwrap();
    assert!(
        cli.check_exposure().unwrap().is_empty(),
        "TLS + token is fine"
    );
    let cli = execd::Cli::try_parse_from([
        "execd",
        "--listen",
        "10.1.2.3:1",
        "--tls-cert",
        "c",
        "--tls-key",
        "k",
    ])
    .unwrap();
    assert!(cli.check_exposure().is_err(), "TLS alone is not enough");
    // Loopback without a token is allowed only because it was asked for,
    // and named as a risk; a unix socket is the safe default.
    for local in ["127.0.0.1:1", "[::1]:1"] {
        let cli = execd::Cli::try_parse_from(["execd", "--listen", local]).unwrap();
        let warnings = cli.check_exposure().unwrap();
        assert!(
            warnings.iter().any(|w| w.contains("every local user")),
            "{local}: {warnings:?}"
        );
        let cli =
            execd::Cli::try_parse_from(["execd", "--listen", local, "--auth-token-file", "t"])
                .unwrap();
        assert!(
            cli.check_exposure().unwrap().is_empty(),
            "{local} with token"
        );
    }
    let cli = execd::Cli::try_parse_from(["execd", "--listen", "unix:/tmp/x.sock"]).unwrap();
    assert!(cli.check_exposure().unwrap().is_empty());
    let cli = execd::Cli::try_parse_from(["execd"]).unwrap();
    assert_eq!(cli.listen, ["unix:/run/execd/execd.sock"], "safe default");
    assert!(cli.check_exposure().unwrap().is_empty());
    // The metrics port counts too.
    let cli = execd::Cli::try_parse_from(["execd", "--metrics-listen", "0.0.0.0:9464"]).unwrap();
    assert!(
        cli.check_exposure().is_err(),
        "remote metrics need the opt-in"
    );
}

/// The real binary's logs: client values with newlines and ANSI escapes
/// cannot forge log lines or reach a terminal raw, and the command line is
/// logged at debug only.
#[tokio::test]
async fn client_values_are_logged_escaped() {
    let execd = ExecdProcess::start_logging(&["--host-exec", "--log-level", "debug"]).await;
    let channel = execd.channel.clone();
    let forged = |what: &str| format!("x\nINFO forged-{what} \u{1b}[2J\r");
    let run = |session_id: String, r: execd_proto::exec_service::ExecStartRequest| {
        let mut client = ExecServiceClient::new(channel.clone());
        async move {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tx.send(start_msg(&session_id, r)).await.unwrap();
            let mut stream = client
                .exec_stream(ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => return Code::Ok,
                    Err(status) => return status.code(),
                }
            }
        }
    };
    let mut r = req(&forged("container"), &["true"]);
    assert_eq!(run(String::new(), r.clone()).await, Code::InvalidArgument);
    r.container_id.clear();
    r.instance_id = forged("instance");
    assert_eq!(run(String::new(), r.clone()).await, Code::InvalidArgument);
    r.instance_id = "fn-log".into();
    assert_eq!(
        run(forged("session"), r.clone()).await,
        Code::InvalidArgument
    );
    r.command = vec!["echo".into(), forged("command"), "y".repeat(100_000)];
    assert_eq!(run(String::new(), r).await, Code::Ok);
    // Every line about these sessions is written before their RPCs end.
    let log = String::from_utf8(execd.log_text()).unwrap();
    assert!(execd.terminate().await.success());

    assert!(!log.contains('\u{1b}'), "raw escape in the log:\n{log}");
    assert!(!log.contains('\r'), "raw CR in the log:\n{log}");
    for what in ["container", "instance", "session", "command"] {
        assert!(
            log.contains(&format!("x\\nINFO forged-{what} \\u{{1b}}[2J\\r")),
            "{what} not logged escaped:\n{log}"
        );
    }
    for line in log.lines() {
        assert!(!line.starts_with("INFO forged"), "forged line: {line}");
        assert!(line.len() < 4096, "unbounded line: {}…", &line[..200]);
        if line.contains("forged-command") {
            assert!(line.contains(" DEBUG "), "command at info: {line}");
        }
    }
}

/// A socket directory that others may write to could let them swap the
/// socket for their own: the binary refuses to start there, saying why,
/// and leaves no socket behind.
#[tokio::test]
async fn an_unsafe_socket_directory_stops_execd_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let socket = shared.join("execd.sock");
    let out = tokio::time::timeout(
        PATIENCE,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_execd"))
            // Host exec has no engine: the suite's backend does not apply.
            .env_remove("EXECD_BACKEND")
            .args(["--host-exec", "--listen"])
            .arg(format!("unix:{}", socket.display()))
            .output(),
    )
    .await
    .expect("execd exits at once")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("refusing the socket directory"), "{stderr}");
    assert!(stderr.contains("may write to it (mode 1777)"), "{stderr}");
    assert!(!socket.exists());
}
