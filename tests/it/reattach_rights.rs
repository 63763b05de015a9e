//! Who may come back to a detached session (`--reattach-grace`), and how
//! much replay each client may keep: another client is refused before it
//! learns anything about the session, whichever door started it; racing
//! reattaches cannot take an attachment from each other; one client's
//! floods cannot squeeze out another client's replay.

use crate::common::kube_ws;
use crate::common::pki;

use std::time::Duration;

use crate::common::*;
use execd_proto::admin::session_admin_client::SessionAdminClient;
use execd_proto::admin::{ListSessionsRequest, SessionInfo};
use execd_proto::exec_service::exec_status_response::Status as WireStatus;
use execd_proto::exec_service::ExecMessage;
use execd_session::ReattachConfig;
use tonic::transport::Channel;
use tonic::Code;

const ALICE: &str = "alice-0123456789abcdef0123456789abcdef";
const BOB: &str = "bob-0123456789abcdef0123456789abcdef";

/// A reattach-enabled server with `total` bytes of replay in all.
fn server_config(total: usize) -> execd::ServerConfig {
    let mut cfg = config();
    cfg.manager.reattach = Some(ReattachConfig {
        grace: Duration::from_secs(30),
        buffer: 1 << 20,
        total,
    });
    cfg
}

/// `cfg` with the tokens of alice and bob (see [`with_tokens`]).
fn with_owners(cfg: execd::ServerConfig) -> (execd::ServerConfig, tempfile::TempDir) {
    with_tokens(cfg, &format!("{ALICE}\n{BOB}\n"))
}

/// A start naming session `id` in the shared container, instance `instance`.
fn start(id: &str, command: &[&str], instance: &str) -> ExecMessage {
    let mut r = req(shared_container(), command);
    r.instance_id = instance.to_string();
    start_msg(id, r)
}

fn bearer<T>(request: &mut tonic::Request<T>, token: Option<&str>) {
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
}

/// A stream on `channel` that starts with `first`, as `token` (if any).
async fn open(channel: Channel, first: ExecMessage, token: Option<&str>) -> Exec {
    let stream = open_stream(channel, first, token, None).await;
    stream.expect("the call is accepted")
}

/// The terminal status and exit code a stream ended with.
fn ending(t: &Transcript) -> Option<(WireStatus, i32)> {
    t.statuses.last().map(|s| (s.0, s.1))
}

async fn listed(server: &TestServer, token: &str) -> Vec<SessionInfo> {
    let mut request = tonic::Request::new(ListSessionsRequest::default());
    bearer(&mut request, Some(token));
    SessionAdminClient::new(server.channel().await)
        .list_sessions(request)
        .await
        .unwrap()
        .into_inner()
        .sessions
}

/// Another client gets the same PERMISSION_DENIED whether the session is
/// attached or detached and whatever container it names, and the answer
/// names neither the container nor the instance; the owner still comes
/// back.
#[tokio::test]
async fn another_client_is_told_nothing_about_the_session() {
    need_docker!();
    let (cfg, _tokens) = with_owners(server_config(64 << 20));
    let server = start_server(cfg).await;
    let n = marker();
    let id = format!("rights-{n}");
    let instance = format!("secret-instance-{n}");
    let cmd = ["sleep", &n.to_string()];
    let first = start(&id, &cmd, &instance);
    let mut first = server.open_cuttable(first, Some(ALICE)).await;
    assert_eq!(first.first_status().await.unwrap(), WireStatus::Started);

    let denied = |end: Transcript| {
        let status = end.rpc.expect("the call fails");
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        for secret in [shared_container(), instance.as_str()] {
            assert!(!status.message().contains(secret), "{status:?}");
        }
    };
    // Attached: not "taken" (ALREADY_EXISTS), the same refusal as below.
    let channel = server.channel().await;
    denied(
        open(channel.clone(), start(&id, &cmd, &instance), Some(BOB))
            .await
            .finish()
            .await,
    );
    first.vanish(Duration::from_millis(300)).await;
    // Detached, naming the right container or another one: the same.
    let mut elsewhere = req("some-other-container", &cmd);
    elsewhere.instance_id = "other".into();
    for probe in [start(&id, &cmd, &instance), start_msg(&id, elsewhere)] {
        denied(open(channel.clone(), probe, Some(BOB)).await.finish().await);
    }
    let mut back = open(channel, start(&id, &cmd, &instance), Some(ALICE)).await;
    assert_eq!(back.first_status().await.unwrap(), WireStatus::Running);
    drop(back);
    server.stop().await;
}

/// Several reattaches race for one detached session: exactly one gets
/// RUNNING and every byte up to EXITED, the others ALREADY_EXISTS.
#[tokio::test]
async fn racing_reattaches_cannot_take_the_session_from_each_other() {
    need_docker!();
    let server = start_server(server_config(64 << 20)).await;
    let id = format!("race-{}", marker());
    let script =
        "sleep 1; i=0; while [ $i -lt 20 ]; do echo line-$i; i=$((i+1)); sleep 0.05; done; exit 7";
    let cmd = ["sh", "-c", script];
    server.start_and_vanish(start(&id, &cmd, ""), None).await;
    // Connected first, then all at once, so the requests overlap.
    let racing = 8;
    let gate = std::sync::Arc::new(tokio::sync::Barrier::new(racing));
    let mut racers = Vec::new();
    for _ in 0..racing {
        let channel = server.channel().await;
        let first = start(&id, &cmd, "");
        let gate = gate.clone();
        racers.push(tokio::spawn(async move {
            gate.wait().await;
            let mut stream = open(channel, first, None).await;
            // A refusal is an ERROR status, then the RPC's code.
            let status = stream.first_status().await;
            let end = stream.finish().await;
            match status {
                Ok(WireStatus::Running) => Ok(end),
                _ => Err(end.rpc.expect("a refusal ends the call with a code")),
            }
        }));
    }
    let mut winners = Vec::new();
    for racer in racers {
        match racer.await.unwrap() {
            Ok(won) => winners.push(won),
            Err(rpc) => assert_eq!(rpc.code(), Code::AlreadyExists, "{rpc:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one reattach wins");
    let end = winners.pop().unwrap();
    let expected: String = (0..20).map(|i| format!("line-{i}\n")).collect();
    assert_eq!(String::from_utf8_lossy(&end.stdout), expected);
    assert_eq!(ending(&end), Some((WireStatus::Exited, 7)));
    server.stop().await;
}

/// One client floods four detached sessions; another's detached session
/// still keeps every byte of its output for replay: a client holds at
/// most a quarter of `--replay-buffer-total`.
#[tokio::test]
async fn one_client_cannot_take_every_replay_byte() {
    need_docker!();
    let (cfg, _tokens) = with_owners(server_config(1 << 20));
    let server = start_server(cfg).await;
    let n = marker();
    for i in 0..4 {
        // About 1.3 MB each, more than the whole total.
        let flood = start(
            &format!("flood-{n}-{i}"),
            &["sh", "-c", "seq 1 200000; sleep 60"],
            "",
        );
        server.start_and_vanish(flood, Some(ALICE)).await;
    }
    let wanted = 150_000;
    let quiet_id = format!("quiet-{n}");
    // Written once the floods sit in their rings.
    let script = format!("sleep 3; head -c {wanted} /dev/zero | tr '\\0' b; sleep 60");
    let quiet = start(&quiet_id, &["sh", "-c", &script], "");
    server.start_and_vanish(quiet.clone(), Some(BOB)).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let bobs = loop {
        let bobs = listed(&server, BOB).await;
        if bobs.iter().any(|s| s.output_bytes >= wanted as u64) {
            break bobs;
        }
        assert!(tokio::time::Instant::now() < deadline, "{bobs:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Each token lists its own sessions only.
    assert_eq!(bobs.len(), 1, "{bobs:?}");
    assert_eq!(bobs[0].replay_dropped_bytes, 0, "{bobs:?}");
    let alices = listed(&server, ALICE).await;
    assert_eq!(alices.len(), 4, "{alices:?}");
    let dropped: u64 = alices.iter().map(|s| s.replay_dropped_bytes).sum();
    assert!(dropped > 4 * 1_000_000, "{alices:?}");

    let mut back = open(server.channel().await, quiet, Some(BOB)).await;
    assert_eq!(back.first_status().await.unwrap(), WireStatus::Running);
    let replayed = back.read_bytes(wanted).await;
    assert_eq!(replayed.len(), wanted);
    assert!(replayed.iter().all(|&b| b == b'b'));
    drop(back);
    server.stop().await;
}

/// A session started through the pod exec path (`session=<id>`) is its
/// token's like any other: gRPC with another token is refused, with the
/// same token it comes back.
#[tokio::test]
async fn a_pod_exec_session_obeys_the_owner_rule_from_grpc() {
    need_docker!();
    let (cfg, _tokens) = with_owners(server_config(64 << 20));
    let server = start_server(cfg).await;
    let id = format!("kube-owner-{}", marker());
    let pod = shared_container();
    let path = kube_ws::exec_path(
        pod,
        &["sh"],
        &format!("stdin=1&stdout=1&tty=1&session={id}"),
    );
    let auth = format!("Bearer {ALICE}");
    let mut ws = kube_ws::connect(
        &server.addr,
        &path,
        kube_ws::V5,
        &[("authorization", &auth)],
    )
    .await
    .expect("upgrade");
    kube_ws::type_until(&mut ws, b"echo a-$((40+2))\n", "a-42").await;
    drop(ws);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The pod name is the instance, the container the pod's.
    let mut again = req(pod, &["sh"]);
    again.tty = true;
    again.instance_id = pod.to_string();
    let channel = server.channel().await;
    let end = open(channel.clone(), start_msg(&id, again.clone()), Some(BOB))
        .await
        .finish()
        .await;
    assert_eq!(end.rpc.map(|s| s.code()), Some(Code::PermissionDenied));
    let mut back = open(channel, start_msg(&id, again), Some(ALICE)).await;
    assert_eq!(back.first_status().await.unwrap(), WireStatus::Running);
    back.send(input_msg("exit 3\n")).await;
    let end = back.finish().await;
    assert_eq!(ending(&end), Some((WireStatus::Exited, 3)));
    server.stop().await;
}

/// A TLS channel to `addr` presenting `identity`'s client certificate
/// (each call a connection of its own).
async fn mtls_channel(addr: &str, server: &pki::ServerPki, identity: &pki::ServerPki) -> Channel {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&server.ca_pem))
        .domain_name("localhost")
        .identity(Identity::from_pem(
            &identity.client_cert_pem,
            &identity.client_key_pem,
        ));
    Endpoint::from_shared(addr.replace("http://", "https://"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("mutual TLS connection")
}

/// A server with tokens and reattach, on TLS requiring a client
/// certificate from `ours`' CA or `theirs`' (so both clients get in); the
/// directory of its token file.
fn mtls_config(
    ours: &pki::ServerPki,
    theirs: &pki::ServerPki,
) -> (execd::ServerConfig, tempfile::TempDir) {
    let (mut cfg, tokens) = with_owners(server_config(64 << 20));
    let client_cas = format!("{}{}", ours.ca_pem, theirs.ca_pem);
    cfg.tls = Some(execd::config::TlsConfig {
        cert_pem: ours.cert_pem.clone().into_bytes(),
        key_pem: ours.key_pem.clone().into_bytes(),
        client_ca_pem: Some(client_cas.into_bytes()),
    });
    (cfg, tokens)
}

/// The admin API's ListSessions and CloseSessions as `token` over `channel`:
/// the ids listed, and how many sessions a close of `id` closed.
async fn list_and_close(
    channel: Channel,
    token: &str,
    id: &str,
    close: bool,
) -> (Vec<String>, u32) {
    use execd_proto::admin::close_sessions_request::Target;
    use execd_proto::admin::CloseSessionsRequest;
    let mut admin = SessionAdminClient::new(channel);
    let mut request = tonic::Request::new(ListSessionsRequest::default());
    bearer(&mut request, Some(token));
    let ids = admin
        .list_sessions(request)
        .await
        .expect("an exec token lists its own sessions")
        .into_inner()
        .sessions
        .into_iter()
        .map(|s| s.session_id)
        .collect();
    if !close {
        return (ids, 0);
    }
    let mut request = tonic::Request::new(CloseSessionsRequest {
        target: Some(Target::SessionId(id.to_string())),
        reason: "test".into(),
    });
    bearer(&mut request, Some(token));
    let closed = admin
        .close_sessions(request)
        .await
        .expect("an exec token may close its own sessions")
        .into_inner()
        .closed;
    (ids, closed)
}

/// With mutual TLS the client certificate is part of the owner: the same
/// token from another certificate neither lists, closes nor reattaches
/// the session; the same certificate, on a new connection, does all three.
#[tokio::test]
async fn with_mutual_tls_the_certificate_is_part_of_the_owner() {
    let (ours, theirs) = (pki::ServerPki::generate(), pki::ServerPki::generate());
    let (mut cfg, _tokens) = mtls_config(&ours, &theirs);
    cfg.manager.backend = execd_session::BackendConfig::Host;
    let server = start_server(cfg).await;
    let id = format!("mtls-owner-{}", marker());
    let first = || start_msg(&id, req("", &["sleep", "30"]));
    let alice = || mtls_channel(&server.addr, &ours, &ours);
    let stranger = || mtls_channel(&server.addr, &ours, &theirs);
    let mut started = open(alice().await, first(), Some(ALICE)).await;
    assert_eq!(started.first_status().await.unwrap(), WireStatus::Started);
    // The call is cancelled: the session detaches.
    drop(started);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (listed, closed) = list_and_close(stranger().await, ALICE, &id, true).await;
    assert!(!listed.contains(&id), "{listed:?}");
    assert_eq!(closed, 0, "another certificate closed the session");
    let end = open(stranger().await, first(), Some(ALICE))
        .await
        .finish()
        .await;
    assert_eq!(end.rpc.map(|s| s.code()), Some(Code::PermissionDenied));

    let (listed, _) = list_and_close(alice().await, ALICE, &id, false).await;
    assert_eq!(listed, std::slice::from_ref(&id));
    let mut back = open(alice().await, first(), Some(ALICE)).await;
    assert_eq!(back.first_status().await.unwrap(), WireStatus::Running);
    // Attached now: still not the stranger's to close.
    let (_, closed) = list_and_close(stranger().await, ALICE, &id, true).await;
    assert_eq!(closed, 0, "another certificate closed the session");
    let (_, closed) = list_and_close(alice().await, ALICE, &id, true).await;
    assert_eq!(closed, 1);
    let end = back.finish().await;
    assert_eq!(
        end.statuses.last().map(|s| s.0),
        Some(WireStatus::Error),
        "the owner's close ends the session"
    );
    server.stop().await;
}

/// The Kubernetes door (HTTP/1.1 WebSocket) derives the owner the same
/// way: a pod exec started over mutual TLS comes back over gRPC with the
/// same token and certificate, not with another certificate.
#[tokio::test]
async fn with_mutual_tls_a_pod_exec_session_is_the_certificates_too() {
    need_docker!();
    let (ours, theirs) = (pki::ServerPki::generate(), pki::ServerPki::generate());
    let (cfg, _tokens) = mtls_config(&ours, &theirs);
    let server = start_server(cfg).await;
    let id = format!("mtls-kube-{}", marker());
    let pod = shared_container();
    let path = kube_ws::exec_path(
        pod,
        &["sh"],
        &format!("stdin=1&stdout=1&tty=1&session={id}"),
    );
    let port = server.addr.rsplit(':').next().unwrap().parse().unwrap();
    let ws = pki::wss_connect(port, &path, kube_ws::V5, ALICE, &ours, &ours).await;
    // Answered 101 only once the session runs; leaving detaches it.
    drop(ws);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut again = req(pod, &["sh"]);
    again.tty = true;
    again.instance_id = pod.to_string();
    let stranger = mtls_channel(&server.addr, &ours, &theirs).await;
    let end = open(stranger, start_msg(&id, again.clone()), Some(ALICE))
        .await
        .finish()
        .await;
    assert_eq!(end.rpc.map(|s| s.code()), Some(Code::PermissionDenied));
    let alice = mtls_channel(&server.addr, &ours, &ours).await;
    let mut back = open(alice, start_msg(&id, again), Some(ALICE)).await;
    assert_eq!(back.first_status().await.unwrap(), WireStatus::Running);
    back.send(input_msg("exit 3\n")).await;
    let end = back.finish().await;
    assert_eq!(ending(&end), Some((WireStatus::Exited, 3)));
    server.stop().await;
}
