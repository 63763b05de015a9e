//! The admin API's bounds and rights: validated and bounded request fields,
//! paged listings that fit a default client, admin tokens apart from exec
//! tokens, and the per-token session limit. Host-exec mode, so no Docker.

use crate::common::*;
use execd_proto::admin::session_admin_client::SessionAdminClient;
use execd_proto::admin::{
    close_sessions_request::Target, CloseSessionsRequest, ListSessionsRequest,
    ListSessionsResponse, WatchInstancesRequest,
};
use execd_proto::exec_service::exec_message::Payload;
use execd_proto::exec_service::exec_service_client::ExecServiceClient;
use execd_proto::exec_service::exec_status_response::Status as WireStatus;
use execd_proto::exec_service::{ExecMessage, ExecStartRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Status, Streaming};

fn host_config() -> execd::ServerConfig {
    let mut cfg = config();
    cfg.manager.backend = execd_session::BackendConfig::Host;
    cfg
}

fn sleeper(instance: &str, extra: &[String]) -> ExecStartRequest {
    let mut r = req("", &["sh", "-c", "sleep 60"]);
    r.command.extend_from_slice(extra);
    r.instance_id = instance.to_string();
    r
}

/// Adds `authorization: Bearer <token>` when a token is given.
#[derive(Clone)]
struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

fn with_token(token: Option<&str>) -> Bearer {
    Bearer(token.map(|t| format!("Bearer {t}").parse().unwrap()))
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

type AdminClient =
    SessionAdminClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

/// A running session: dropping it cancels the stream.
struct Live {
    id: String,
    _tx: mpsc::Sender<ExecMessage>,
    rx: Streaming<ExecMessage>,
}

/// Opens a session with `token` and waits for STARTED, or returns the
/// status the RPC ended with.
async fn open_with(
    channel: &Channel,
    token: Option<&str>,
    start: ExecStartRequest,
) -> Result<Live, Status> {
    let mut client = ExecServiceClient::with_interceptor(channel.clone(), with_token(token));
    let (tx, rx) = mpsc::channel(4);
    tx.send(start_msg("", start)).await.unwrap();
    let mut stream = client
        .exec_stream(ReceiverStream::new(rx))
        .await?
        .into_inner();
    loop {
        let msg = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .expect("an answer in time")?
            .expect("STARTED or an error status");
        // An ERROR message is followed by the RPC's status, returned above.
        if let Some(Payload::Status(s)) = &msg.payload {
            if s.status != WireStatus::Started as i32 {
                continue;
            }
            return Ok(Live {
                id: msg.session_id,
                _tx: tx,
                rx: stream,
            });
        }
    }
}

/// The status a refused session's RPC ends with.
async fn refused(channel: &Channel, token: Option<&str>, start: ExecStartRequest) -> Status {
    match open_with(channel, token, start).await {
        Ok(live) => panic!("session {} started", live.id),
        Err(status) => status,
    }
}

fn admin(channel: &Channel, token: Option<&str>) -> AdminClient {
    SessionAdminClient::with_interceptor(channel.clone(), with_token(token))
}

fn list(instance: &str, page_size: u32, page_token: &str) -> ListSessionsRequest {
    ListSessionsRequest {
        instance_id: instance.to_string(),
        page_size,
        page_token: page_token.to_string(),
    }
}

fn close(target: Target, reason: &str) -> CloseSessionsRequest {
    CloseSessionsRequest {
        target: Some(target),
        reason: reason.to_string(),
    }
}

/// 20 sessions with ~240 KiB commands each would make a 4.8 MB listing,
/// past a default client's 4 MiB: listed commands are shortened with a
/// marker and the listing comes in pages, in session id order.
#[tokio::test]
async fn listings_of_many_large_sessions_fit_a_default_client() {
    let server = start_server(host_config()).await;
    let channel = server.channel().await;
    let instance = format!("big-{}", marker());
    // Each argument stays below Linux's 128 KiB limit per argument.
    let big = vec!["a".repeat(120_000), "b".repeat(120_000)];
    let mut live = Vec::new();
    for _ in 0..20 {
        live.push(
            open_with(&channel, None, sleeper(&instance, &big))
                .await
                .unwrap(),
        );
    }
    let mut started: Vec<String> = live.iter().map(|l| l.id.clone()).collect();
    started.sort();

    // A default client (4 MiB decoding limit) gets one page of everything.
    let mut client = server.admin().await;
    let all = client
        .list_sessions(list("", 0, ""))
        .await
        .expect("the listing fits a default client")
        .into_inner();
    assert_eq!(all.sessions.len(), 20);
    assert!(all.next_page_token.is_empty());
    assert_eq!(all.active_per_instance.get(&instance), Some(&20));
    for s in &all.sessions {
        assert!(s.command_truncated);
        assert_eq!(s.command[..3], ["sh", "-c", "sleep 60"]);
        let shown: usize = s.command.iter().map(|a| a.len() + 1).sum();
        assert!(shown < 4096 + 200, "{shown} bytes of command listed");
        let marker = s.command.last().unwrap();
        assert!(marker.contains("command truncated"), "{marker}");
    }

    // Pages of 7 in session id order: 7, 7, 6, nothing twice or missed.
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page: ListSessionsResponse = client
            .list_sessions(list(&instance, 7, &token))
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.sessions.len() <= 7);
        seen.extend(page.sessions.iter().map(|s| s.session_id.clone()));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, started, "every session once, in id order");

    let err = client
        .list_sessions(list("", 0, "not a token\n"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // The reason reaches every closed client: bounded and printable.
    for bad in ["x".repeat(257), "line\nbreak".into(), "\u{1b}[2J".into()] {
        let err = client
            .close_sessions(close(Target::InstanceId(instance.clone()), &bad))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}: {err:?}");
        assert!(err.message().contains("reason"), "{err:?}");
    }
    for bad_target in [
        Target::InstanceId("a\nb".into()),
        Target::SessionId("x".repeat(200)),
    ] {
        let err = client
            .close_sessions(close(bad_target, "ok"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    }
    let reason = "r".repeat(256);
    let closed = client
        .close_sessions(close(Target::InstanceId(instance.clone()), &reason))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(closed.closed, 20);
    let mut first = live.swap_remove(0);
    let status = loop {
        match first.rx.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Aborted);
    assert_eq!(status.message(), format!("closed: {reason}"));
    drop(live);
    server.stop().await;
}

/// instance_id is validated like session_id; nothing is registered or
/// spawned for a bad one.
#[tokio::test]
async fn oversized_or_control_character_instance_ids_are_refused() {
    let server = start_server(host_config()).await;
    let channel = server.channel().await;
    for bad in [
        "i".repeat(5 * 1024 * 1024 / 2),
        "x".repeat(129),
        "fn\nINFO forged".into(),
        "fn 42".into(),
    ] {
        let status = refused(&channel, None, sleeper(&bad, &[])).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with("instance_id"), "{status:?}");
        assert!(
            status.message().len() < 400,
            "bad input is not echoed whole"
        );
    }
    let mut client = server.admin().await;
    let listed = client.list_sessions(list("", 0, "")).await.unwrap();
    assert!(listed.into_inner().sessions.is_empty());
    for call in ["list", "watch"] {
        let bad = "fn\n42".to_string();
        let err = match call {
            "list" => client.list_sessions(list(&bad, 0, "")).await.unwrap_err(),
            _ => client
                .watch_instances(WatchInstancesRequest { instance_id: bad })
                .await
                .unwrap_err(),
        };
        assert_eq!(err.code(), Code::InvalidArgument, "{call}: {err:?}");
    }
    // An empty instance id stays allowed (and uncounted); a valid one runs.
    for instance in ["", "fn-42.a:b_c"] {
        drop(
            open_with(&channel, None, sleeper(instance, &[]))
                .await
                .unwrap(),
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn exec_tokens_cannot_administer_and_each_token_is_limited() {
    let (mut cfg, dir) = with_tokens(host_config(), "exec-a\nexec-b\n");
    let admin_file = dir.path().join("admin-tokens");
    std::fs::write(&admin_file, "admin-1\n").unwrap();
    cfg.admin_auth = Some(execd::auth::TokenStore::load(&admin_file).unwrap());
    cfg.manager.limits.max_sessions_per_owner = 2;
    let server = start_server(cfg).await;
    let channel = server.channel().await;
    let instance = format!("rights-{}", marker());

    let a1 = open_with(&channel, Some("exec-a"), sleeper(&instance, &[]))
        .await
        .unwrap();
    let _a2 = open_with(&channel, Some("exec-a"), sleeper(&instance, &[]))
        .await
        .unwrap();
    let status = refused(&channel, Some("exec-a"), sleeper(&instance, &[])).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("--max-sessions-per-token=2"),
        "{status:?}"
    );
    assert!(!status.message().contains("exec-a"), "{status:?}");
    // Another token is not affected.
    let _b1 = open_with(&channel, Some("exec-b"), sleeper(&instance, &[]))
        .await
        .unwrap();

    // An exec token is known but not allowed on the admin API.
    let mut as_exec = admin(&channel, Some("exec-a"));
    let err = as_exec.list_sessions(list("", 0, "")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = as_exec
        .close_sessions(close(Target::InstanceId(instance.clone()), "mine now"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = as_exec
        .watch_instances(WatchInstancesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    for token in [None, Some("wrong")] {
        let err = admin(&channel, token)
            .list_sessions(list("", 0, ""))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{token:?}: {err:?}");
    }
    // The admin token is for the admin API only.
    let status = refused(&channel, Some("admin-1"), sleeper(&instance, &[])).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // The admin token lists and closes.
    let mut as_admin = admin(&channel, Some("admin-1"));
    let listed = as_admin
        .list_sessions(list(&instance, 0, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.sessions.len(), 3, "the exec token closed nothing");
    let closed = as_admin
        .close_sessions(close(Target::SessionId(a1.id.clone()), "admin"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(closed.closed, 1);
    // The closed session's slot is free again once it has ended.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let _a3 = loop {
        match open_with(&channel, Some("exec-a"), sleeper(&instance, &[])).await {
            Ok(live) => break live,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(tokio::time::Instant::now() < deadline, "slot never freed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };
    drop(a1);
    server.stop().await;
}

/// Without `--admin-token-file`, an exec token on the admin API sees,
/// counts and closes only the sessions it started, and may not watch
/// every instance; another token's session is as if unknown.
#[tokio::test]
async fn without_admin_tokens_an_exec_token_administers_its_own_sessions_only() {
    let (cfg, _tokens) = with_tokens(host_config(), "exec-a\nexec-b\n");
    let server = start_server(cfg).await;
    let channel = server.channel().await;
    let instance = format!("own-{}", marker());
    let mut mine = Vec::new();
    for _ in 0..2 {
        mine.push(
            open_with(&channel, Some("exec-a"), sleeper(&instance, &[]))
                .await
                .unwrap(),
        );
    }
    let mut theirs = open_with(&channel, Some("exec-b"), sleeper(&instance, &[]))
        .await
        .unwrap();

    let mut as_a = admin(&channel, Some("exec-a"));
    let listed = as_a
        .list_sessions(list("", 0, ""))
        .await
        .unwrap()
        .into_inner();
    let mut ids: Vec<String> = listed
        .sessions
        .iter()
        .map(|s| s.session_id.clone())
        .collect();
    ids.sort();
    let mut expected: Vec<String> = mine.iter().map(|l| l.id.clone()).collect();
    expected.sort();
    assert_eq!(ids, expected, "only exec-a's sessions");
    assert_eq!(listed.active_per_instance.get(&instance), Some(&2));
    // exec-b's session: not closed by id, nor with the shared instance.
    let closed = as_a
        .close_sessions(close(Target::SessionId(theirs.id.clone()), "mine now"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(closed.closed, 0);
    let closed = as_a
        .close_sessions(close(Target::InstanceId(instance.clone()), "cleanup"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(closed.closed, 2);
    let err = as_a
        .watch_instances(WatchInstancesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    for l in &mut mine {
        let status = loop {
            match l.rx.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("ended without a status"),
                Err(status) => break status,
            }
        };
        assert_eq!(status.code(), Code::Aborted, "{status:?}");
    }
    // exec-b's session still runs, and exec-b sees it alone.
    let listed = admin(&channel, Some("exec-b"))
        .list_sessions(list("", 0, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.sessions.len(), 1);
    assert_eq!(listed.sessions[0].session_id, theirs.id);
    let still =
        tokio::time::timeout(std::time::Duration::from_millis(300), theirs.rx.message()).await;
    assert!(still.is_err(), "exec-b's session was touched: {still:?}");
    drop(theirs);
    server.stop().await;
}

/// The per-token limit counts every session of the token, whatever
/// instance ids it names: inventing new ones (or none) does not dodge it.
#[tokio::test]
async fn invented_instance_ids_do_not_dodge_the_per_token_limit() {
    let (mut cfg, _tokens) = with_tokens(host_config(), "exec-a\n");
    cfg.manager.limits.max_sessions_per_owner = 3;
    let server = start_server(cfg).await;
    let channel = server.channel().await;
    let n = marker();
    let mut live = Vec::new();
    for instance in [format!("a-{n}"), format!("b-{n}"), String::new()] {
        live.push(
            open_with(&channel, Some("exec-a"), sleeper(&instance, &[]))
                .await
                .unwrap(),
        );
    }
    for instance in [format!("c-{n}"), String::new()] {
        let status = refused(&channel, Some("exec-a"), sleeper(&instance, &[])).await;
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("--max-sessions-per-token=3"),
            "{status:?}"
        );
    }
    drop(live);
    server.stop().await;
}
