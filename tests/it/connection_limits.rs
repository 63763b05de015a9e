//! Connection-level bounds: thousands of idle connections, idle streams
//! and health watches cannot exhaust execd or lock out real clients, and
//! the metrics endpoint drops clients that never send their headers.
//!
//! Each test runs the real binary (its RSS is what is bounded) with small
//! limits, floods it, and then starts a real session through the same
//! socket.

use crate::common::kube_ws;

use std::time::Duration;

use crate::common::h2_peer::{Peer, Seen};
use crate::common::*;
use crate::common::{free_port, Reach, SpawnedExecd};
use execd_proto::exec_service::exec_service_client::ExecServiceClient;
use execd_proto::exec_service::ExecMessage;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::wrappers::ReceiverStream;

/// A session through `channel` that must work despite the flood.
async fn echo_works(channel: tonic::transport::Channel) {
    let mut client = ExecServiceClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(start_msg(
        "",
        req(shared_container(), &["echo", "still-serving"]),
    ))
    .await
    .unwrap();
    let mut stream = tokio::time::timeout(PATIENCE, client.exec_stream(ReceiverStream::new(rx)))
        .await
        .expect("the call is admitted in time")
        .expect("ExecStream call")
        .into_inner();
    let mut out = Vec::new();
    while let Some(msg) = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("no stall")
        .expect("no error")
    {
        if let Some(execd_proto::exec_service::exec_message::Payload::OutputData(d)) = msg.payload {
            out.extend_from_slice(&d.data);
        }
    }
    assert_eq!(String::from_utf8_lossy(&out), "still-serving\n");
}

#[tokio::test]
async fn thousands_of_idle_connections_neither_grow_memory_nor_lock_out_clients() {
    if !docker_or_skip("idle-connections") {
        return;
    }
    shared_container();
    let execd =
        ExecdProcess::start(&["--max-connections", "100", "--handshake-timeout", "1s"]).await;
    let base = execd.rss_mib();
    // 3,000 connections that never send a byte: far over the cap. The
    // kernel's backlog holds what execd does not accept; accepted ones are
    // dropped after the handshake timeout, freeing their slots.
    let mut idle = Vec::new();
    for _ in 0..3_000 {
        match tokio::net::UnixStream::connect(&execd.socket).await {
            Ok(s) => idle.push(s),
            Err(_) => break, // backlog full: that is the bound working
        }
    }
    assert!(idle.len() >= 500, "only {} connections got in", idle.len());
    // A real client still gets served, on a fresh connection.
    let channel = connect_unix(execd.socket.clone()).await;
    echo_works(channel).await;
    let growth = execd.rss_mib() - base;
    assert!(growth < 64.0, "execd grew by {growth:.1} MiB");
    // The first idle connections were closed by execd.
    let mut closed = 0;
    for s in idle.iter_mut().take(50) {
        let mut buf = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await
        {
            closed += 1;
        }
    }
    assert!(closed > 0, "idle connections are never closed");
    assert!(execd.alive());
}

#[tokio::test]
async fn idle_streams_and_health_watches_are_capped_and_sessions_still_start() {
    if !docker_or_skip("idle-streams") {
        return;
    }
    shared_container();
    let execd = ExecdProcess::start(&[
        "--max-pending-starts",
        "200",
        "--max-streams-per-connection",
        "100",
        "--max-health-watches",
        "20",
    ])
    .await;
    let base = execd.rss_mib();
    // 2,000 ExecStreams that never send their start, over 20 connections.
    let mut held = Vec::new();
    let mut refused = 0;
    let mut calls = Vec::new();
    for _ in 0..20 {
        let channel = connect_unix(execd.socket.clone()).await;
        for _ in 0..100 {
            let mut client = ExecServiceClient::new(channel.clone());
            let (tx, rx) = tokio::sync::mpsc::channel::<ExecMessage>(1);
            held.push(tx);
            calls.push(tokio::spawn(async move {
                let mut stream = client
                    .exec_stream(ReceiverStream::new(rx))
                    .await?
                    .into_inner();
                // A refused stream ends at once; an admitted one waits.
                match tokio::time::timeout(Duration::from_secs(5), stream.message()).await {
                    Ok(Err(status)) => Err(status),
                    Ok(Ok(Some(_))) => match stream.message().await {
                        Err(status) => Err(status),
                        Ok(_) => Ok(()),
                    },
                    _ => Ok(()),
                }
            }));
        }
    }
    for call in calls {
        if let Err(status) = call.await.unwrap() {
            assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
            assert!(status
                .message()
                .contains("waiting to send their start_request"));
            refused += 1;
        }
    }
    assert_eq!(refused, 1_800, "all but --max-pending-starts are refused");
    // With the pending slots all taken, a client that sends its start at
    // once (as every real client does) is still served.
    // Health Watch needs no token, so it is capped too.
    let channel = connect_unix(execd.socket.clone()).await;
    let mut watches = Vec::new();
    let mut watch_refused = 0;
    for _ in 0..30 {
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        match health
            .watch(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
        {
            Ok(stream) => watches.push(stream),
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                watch_refused += 1;
            }
        }
    }
    assert_eq!((watches.len(), watch_refused), (20, 10));
    // A watch that ends frees its slot.
    watches.pop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    assert!(health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: String::new()
        })
        .await
        .is_ok());
    echo_works(connect_unix(execd.socket.clone()).await).await;
    let growth = execd.rss_mib() - base;
    assert!(growth < 64.0, "execd grew by {growth:.1} MiB");
    drop(held);
}

#[tokio::test]
async fn metrics_clients_must_send_their_headers_in_time() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics = format!("127.0.0.1:{port}");
    let execd =
        ExecdProcess::start(&["--metrics-listen", &metrics, "--handshake-timeout", "1s"]).await;
    let mut slow = tokio::net::TcpStream::connect(&metrics).await.unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "a client that never finishes its headers is kept forever"
    );
    // A well-behaved scrape works.
    let mut ok = tokio::net::TcpStream::connect(&metrics).await.unwrap();
    ok.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    ok.read_to_string(&mut body).await.unwrap();
    assert!(
        body.contains("execd_session_start_latency_seconds"),
        "{body}"
    );
    assert!(execd.alive());
}

/// CPU time (user + system) of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Out of file descriptors (EMFILE), the accept loop backs off instead of
/// retrying at once: a flood of connections must not turn into a core
/// spinning on failed accepts, and accepting resumes once files are free.
#[tokio::test]
async fn accept_errors_back_off_instead_of_spinning() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("execd.sock");
    let mut execd = tokio::process::Command::new("prlimit")
        .arg("--nofile=64:64")
        .arg(env!("CARGO_BIN_EXE_execd"))
        .args(["--listen", &format!("unix:{}", socket.display())])
        .args(["--log-level", "error", "--handshake-timeout", "60s"])
        .kill_on_drop(true)
        .spawn()
        .expect("prlimit (util-linux) runs execd");
    let pid = execd.id().unwrap();
    let deadline = std::time::Instant::now() + PATIENCE;
    while tokio::net::UnixStream::connect(&socket).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "execd never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // More connections than execd has descriptors: the rest wait in the
    // backlog while every accept fails with EMFILE.
    let mut held = Vec::new();
    for _ in 0..150 {
        held.push(tokio::net::UnixStream::connect(&socket).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spent = cpu_ticks(pid) - before;
    // A spinning loop burns ~200 ticks in 2 s; backing off, a handful.
    assert!(
        spent < 40,
        "execd used {spent} ticks of CPU in 2 s while out of files"
    );
    // Files freed: accepting works again.
    drop(held);
    let channel = connect_unix(socket.clone()).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let answered = tokio::time::timeout(
        PATIENCE,
        health.check(tonic_health::pb::HealthCheckRequest {
            service: "execd.admin.v1.SessionAdmin".into(),
        }),
    )
    .await
    .expect("answers in time");
    assert!(answered.is_ok(), "{answered:?}");
    execd.start_kill().unwrap();
}

// ---------------------------------------------------------------------------
// Who holds the slots: unix sockets apart from TCP, a cap per address, idle
// connections sent away, unauthenticated ones on a budget of their own.

/// The execd binary on a loopback port and a unix socket at once.
struct TwoListeners {
    tcp: std::net::SocketAddr,
    unix: std::path::PathBuf,
    _execd: SpawnedExecd,
    _dir: tempfile::TempDir,
}

/// Exec tokens (`--auth-token-file`) in [`two_listeners`]' `{tokens}`.
const TOKEN: &str = "connection-limits-token-0123456789";

async fn two_listeners(args: &[&str]) -> TwoListeners {
    let dir = tempfile::tempdir().unwrap();
    let unix = dir.path().join("execd.sock");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{TOKEN}\n")).unwrap();
    let port = free_port();
    let mut all = vec![
        format!("--listen=unix:{}", unix.display()),
        format!("--listen=127.0.0.1:{port}"),
    ];
    all.extend(
        args.iter()
            .map(|a| a.replace("{tokens}", &tokens.display().to_string())),
    );
    // Only what is given configures a spawned execd: the suite's backend
    // too.
    let env: Vec<(String, String)> = std::env::var("EXECD_BACKEND")
        .map(|b| vec![("EXECD_BACKEND".to_string(), b)])
        .unwrap_or_default();
    let execd = SpawnedExecd::start(
        dir.path(),
        &all,
        &env,
        &[Reach::Unix(unix.clone()), Reach::Tcp(port)],
    )
    .await;
    TwoListeners {
        tcp: ([127, 0, 0, 1], port).into(),
        unix,
        _execd: execd,
        _dir: dir,
    }
}

/// Every TCP slot held by idle HTTP/2 connections that answer PINGs (and
/// never ask for anything): a session over the unix socket still starts,
/// since unix sockets keep slots of their own.
#[tokio::test(flavor = "multi_thread")]
async fn idle_h2_connections_holding_every_tcp_slot_do_not_lock_out_the_unix_socket() {
    if !docker_or_skip("unix-slots") {
        return;
    }
    shared_container();
    let execd = two_listeners(&[
        "--max-connections=4",
        "--max-connections-per-ip=4",
        // Longer than the test: the holders are never dropped as silent.
        "--handshake-timeout=10m",
    ])
    .await;
    let mut holders = Vec::new();
    for _ in 0..4 {
        holders.push(Peer::open(execd.tcp).await.expect("served"));
    }
    echo_works(connect_unix(execd.unix.clone()).await).await;
    for holder in &mut holders {
        assert!(holder.quiet(), "the TCP connections stay");
    }
}

/// One address holds at most --max-connections-per-ip connections: the
/// next is closed at once, a freed one can be taken again, and the unix
/// socket is not counted.
#[tokio::test(flavor = "multi_thread")]
async fn one_address_holds_at_most_its_cap_of_connections() {
    let execd = two_listeners(&["--max-connections-per-ip=3"]).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut peer = Peer::open(execd.tcp).await.expect("served");
        assert_eq!(peer.get("/version", None).await, 200);
        held.push(peer);
    }
    assert!(Peer::open(execd.tcp).await.is_none(), "a fourth is closed");
    let unix = connect_unix(execd.unix.clone()).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(unix);
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("the unix socket is not capped");
    drop(held.pop());
    // execd notices the close on its own time.
    let deadline = std::time::Instant::now() + PATIENCE;
    while Peer::open(execd.tcp).await.is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the slot is never freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A connection without an open request for --idle-connection-timeout gets
/// GOAWAY (NO_ERROR) though it answers every PING; one with an open stream
/// (a health Watch) keeps its connection until the stream ends.
#[tokio::test(flavor = "multi_thread")]
async fn connections_without_open_requests_are_sent_away() {
    let execd = two_listeners(&["--idle-connection-timeout=1s"]).await;
    let mut watching = Peer::open(execd.tcp).await.expect("served");
    let watch = watching
        .request("/grpc.health.v1.Health/Watch", None, true)
        .await;
    assert_eq!(watching.next().await, Seen::Status(watch, 200));
    let mut idle = Peer::open(execd.tcp).await.expect("served");
    assert_eq!(idle.get("/version", None).await, 200);
    assert_eq!(idle.next().await, Seen::GoAway(0));
    // Two more idle timeouts: the watching connection is still left alone.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        watching.quiet(),
        "a connection with an open stream was sent away"
    );
    watching.reset(watch).await;
    assert_eq!(watching.next().await, Seen::GoAway(0));
}

/// With tokens, connections that never presented a valid one (or only
/// wrong ones) are on a budget: past it the oldest is sent away, however
/// many come; a connection that presented a token is never counted.
#[tokio::test(flavor = "multi_thread")]
async fn unauthenticated_connections_make_room_and_authenticated_ones_stay() {
    let execd = two_listeners(&[
        "--auth-token-file={tokens}",
        "--max-unauthenticated-connections=2",
    ])
    .await;
    let mut proven = Peer::open(execd.tcp).await.expect("served");
    assert_eq!(proven.get("/version", Some(TOKEN)).await, 200);
    let mut oldest = Peer::open(execd.tcp).await.expect("served");
    assert_eq!(oldest.get("/version", None).await, 200);
    let mut refused = Peer::open(execd.tcp).await.expect("served");
    let code = refused.get("/containers/x/json", Some("wrong")).await;
    assert_eq!(code, 401);
    let _newest = Peer::open(execd.tcp).await.expect("served");
    assert_eq!(
        oldest.next().await,
        Seen::GoAway(0),
        "the oldest makes room"
    );
    // A flood of them, one after another, only ever pushes out its own
    // kind: refused requests do not count as a token.
    for _ in 0..20 {
        let mut flood = Peer::open(execd.tcp).await.expect("served");
        assert_eq!(flood.get("/version", None).await, 200);
    }
    assert_eq!(refused.next().await, Seen::GoAway(0));
    assert!(proven.quiet(), "the authenticated connection stays");
    assert_eq!(proven.get("/version", None).await, 200);
}

/// Health Watch needs no token, but clients without one have their own
/// --max-health-watches slots: they cannot take those of clients with one.
#[tokio::test(flavor = "multi_thread")]
async fn health_watch_slots_are_not_shared_with_unauthenticated_clients() {
    let execd = two_listeners(&["--auth-token-file={tokens}", "--max-health-watches=2"]).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", execd.tcp))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {TOKEN}").parse().unwrap();
    let mut held = Vec::new();
    for token in [None, Some(bearer)] {
        let mut health = tonic_health::pb::health_client::HealthClient::with_interceptor(
            channel.clone(),
            move |mut req: tonic::Request<()>| {
                if let Some(t) = &token {
                    req.metadata_mut().insert("authorization", t.clone());
                }
                Ok(req)
            },
        );
        let mut refused = Vec::new();
        for _ in 0..3 {
            match health
                .watch(tonic_health::pb::HealthCheckRequest::default())
                .await
            {
                Ok(stream) => held.push(stream),
                Err(status) => refused.push(status),
            }
        }
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(refused[0].code(), tonic::Code::ResourceExhausted);
    }
    assert_eq!(held.len(), 4, "two watches each, with and without a token");
}

// ---------------------------------------------------------------------------
// WebSocket input is bounded by --max-message-size on every door.

/// A WebSocket door under test: where a session running `command` is
/// opened, and how it frames stdin, its end, and output.
struct WsDoor {
    name: &'static str,
    path: fn(&str, &[&str]) -> String,
    protocols: &'static str,
    /// Bytes of framing around stdin in one message.
    overhead: usize,
    stdin: fn(Vec<u8>) -> Message,
    eof: fn() -> Message,
    /// The output bytes of a binary message, if it carries any.
    output: fn(&[u8]) -> Option<&[u8]>,
}

use tokio_tungstenite::tungstenite::Message;

const WS_DOORS: [WsDoor; 2] = [
    WsDoor {
        name: "kube",
        path: |c, cmd| kube_ws::exec_path(c, cmd, "stdin=true&stdout=true"),
        protocols: kube_ws::V5,
        overhead: 1,
        stdin: |data| Message::Binary([&[0u8][..], &data].concat().into()),
        eof: || Message::Binary(vec![255u8, 0].into()),
        output: |m| m.strip_prefix(&[1u8]),
    },
    WsDoor {
        name: "terminal",
        path: |c, cmd| {
            let args: String = cmd.iter().map(|a| format!("&command={a}")).collect();
            format!("/terminal/ws?instance={c}&tty=false{args}")
        },
        protocols: "",
        overhead: 0,
        stdin: |data| Message::Binary(data.into()),
        eof: || Message::Text("STDIN_EOF".into()),
        output: |m| Some(m),
    },
];

/// Output and close code once the server closes (or drops) the stream.
async fn ws_until_close(door: &WsDoor, ws: &mut kube_ws::Ws) -> (Vec<u8>, Option<u16>) {
    use futures_util::StreamExt;
    let (mut out, mut code) = (Vec::new(), None);
    let read = async {
        while let Some(Ok(msg)) = ws.socket.next().await {
            match msg {
                Message::Binary(b) => out.extend_from_slice((door.output)(&b).unwrap_or(&[])),
                Message::Close(frame) => code = frame.map(|f| u16::from(f.code)),
                _ => {}
            }
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("the server closes");
    (out, code)
}

/// A message over --max-message-size gets close 1009 (Message Too Big) on
/// every WebSocket door, and the server keeps serving: the next session on
/// the same door takes a message of exactly the limit.
#[tokio::test]
async fn websocket_messages_over_the_max_message_size_get_close_1009() {
    use futures_util::SinkExt;
    if !docker_or_skip("ws-message-size") {
        return;
    }
    const LIMIT: usize = 64 * 1024;
    let mut cfg = config();
    cfg.max_message_size = LIMIT;
    let server = start_server(cfg).await;
    let c = shared_container();
    for door in &WS_DOORS {
        let mut ws = kube_ws::connect(&server.addr, &(door.path)(c, &["cat"]), door.protocols, &[])
            .await
            .unwrap_or_else(|r| panic!("{}: {r:?}", door.name));
        let too_big = vec![b'x'; LIMIT + 1 - door.overhead];
        // The server may close before it has read all of it.
        let _ = ws.socket.send((door.stdin)(too_big)).await;
        let (_, code) = ws_until_close(door, &mut ws).await;
        assert_eq!(code, Some(1009), "{}", door.name);

        let mut ws = kube_ws::connect(
            &server.addr,
            &(door.path)(c, &["wc", "-c"]),
            door.protocols,
            &[],
        )
        .await
        .unwrap_or_else(|r| panic!("{} after the refusal: {r:?}", door.name));
        let just_fits = vec![b'x'; LIMIT - door.overhead];
        ws.socket.send((door.stdin)(just_fits)).await.unwrap();
        ws.socket.send((door.eof)()).await.unwrap();
        let (out, code) = ws_until_close(door, &mut ws).await;
        let counted = String::from_utf8_lossy(&out);
        assert_eq!(
            counted.trim(),
            (LIMIT - door.overhead).to_string(),
            "{}",
            door.name
        );
        assert_eq!(code, Some(1000), "{}", door.name);
    }
    server.stop().await;
}
