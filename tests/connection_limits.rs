//! Connection-level bounds: thousands of idle connections, idle streams
//! and health watches cannot exhaust execd or lock out real clients, and
//! the metrics endpoint drops clients that never send their headers.
//!
//! Each test runs the real binary (its RSS is what is bounded) with small
//! limits, floods it, and then starts a real session through the same
//! socket.

mod common;

use std::time::Duration;

use common::*;
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
