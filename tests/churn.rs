//! Churn without leaks: 2,000 sessions (sequential and concurrent; normal
//! exits, errors, cancels mid-output) against one real `execd` process, then
//! its open files, threads and child processes are back to their baseline,
//! the registry is empty, and nothing is left in the container.
//!
//! A binary of its own, not a module of the suite in `tests/it`: it is a
//! load test that measures execd's footprint going back to its baseline,
//! and must not share the machine with the suite's other tests, which one
//! test binary would run beside it.

// This test uses a few of the shared helpers; the rest serve the suite.
#[allow(dead_code, unused_imports, unused_macros)]
#[macro_use]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use execd_proto::admin::session_admin_client::SessionAdminClient;
use execd_proto::admin::ListSessionsRequest;
use execd_proto::exec_service::exec_message::Payload;
use execd_proto::exec_service::exec_service_client::ExecServiceClient;
use execd_proto::exec_service::ExecMessage;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

const TOTAL: usize = 2_000;
const SEQUENTIAL: usize = 200;
const CONCURRENCY: usize = 12;
const CANCEL_MARKER: &str = "seq 1 7777777";

fn count_dir(path: String) -> usize {
    std::fs::read_dir(path).map(|d| d.count()).unwrap_or(0)
}

fn children_of(pid: u32) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(") ")
                        .map(|(_, rest)| rest.split(' ').nth(1).map(str::to_string))
                })
                .flatten()
                .is_some_and(|ppid| ppid == pid.to_string())
        })
        .count()
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Footprint {
    fds: usize,
    threads: usize,
    children: usize,
}

fn footprint(pid: u32) -> Footprint {
    Footprint {
        fds: count_dir(format!("/proc/{pid}/fd")),
        threads: count_dir(format!("/proc/{pid}/task")),
        children: children_of(pid),
    }
}

/// One session of kind `i % 6`: exit 0, exit 3, missing container, or a
/// cancel in the middle of a large output.
async fn one(channel: Channel, container: &'static str, i: usize) {
    let mut client = ExecServiceClient::new(channel);
    let (command, target): (Vec<&str>, &str) = match i % 6 {
        0 | 1 => (vec!["echo", "hello"], container),
        2 => (
            vec!["sh", "-c", "echo out; echo err >&2; exit 3"],
            container,
        ),
        3 => (vec!["true"], "execd-churn-no-such-container"),
        _ => (vec!["seq", "1", "7777777"], container),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tx.send(start_msg("", req(target, &command))).await.unwrap();
    drop(tx);
    let mut stream = client
        .exec_stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut terminal = 0;
    loop {
        match tokio::time::timeout(PATIENCE, stream.message())
            .await
            .expect("answer in time")
        {
            Ok(Some(ExecMessage {
                payload: Some(Payload::OutputData(_)),
                ..
            })) if i % 6 >= 4 => {
                // Cancel mid-output: drop the stream.
                return;
            }
            Ok(Some(ExecMessage {
                payload: Some(Payload::Status(s)),
                ..
            })) if s.status >= 2 => {
                terminal += 1;
                match i % 6 {
                    0 | 1 => assert_eq!((s.status, s.exit_code), (2, 0)),
                    2 => assert_eq!((s.status, s.exit_code), (2, 3)),
                    3 => assert_eq!(s.status, 3),
                    _ => {}
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(status) => {
                assert_eq!(i % 6, 3, "unexpected RPC error {status:?}");
                break;
            }
        }
    }
    assert_eq!(terminal, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_sessions_leave_no_trace() {
    if !docker_or_skip("churn") {
        return;
    }
    let container = shared_container();
    let execd = ExecdProcess::start(&[
        "--log-level",
        "warn",
        "--max-sessions-per-instance",
        "10000",
        "--kill-grace",
        "200ms",
    ])
    .await;
    let pid = execd.pid();
    let channel = execd.channel.clone();

    // Warm up every path once (lazily created workers count as baseline).
    for i in 0..6 {
        one(channel.clone(), container, i).await;
    }
    let settle = || async {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let list = SessionAdminClient::new(channel.clone())
                .list_sessions(ListSessionsRequest::default())
                .await
                .unwrap()
                .into_inner();
            if list.sessions.is_empty() && children_of(pid) == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sessions never drained: {}",
                list.sessions.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    settle().await;
    // The baseline is the idle steady state: workers the warm-up started
    // beyond the pools' resident ones retire first (the /proc pool after
    // 5 s idle, tokio's blocking pool after 10 s).
    tokio::time::sleep(Duration::from_secs(11)).await;
    let baseline = footprint(pid);

    for i in 0..SEQUENTIAL {
        one(channel.clone(), container, i).await;
    }
    let permits = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut tasks = Vec::new();
    for i in SEQUENTIAL..TOTAL {
        let permit = permits.clone().acquire_owned().await.unwrap();
        let channel = channel.clone();
        tasks.push(tokio::spawn(async move {
            one(channel, container, i).await;
            drop(permit);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    settle().await;

    // Idle blocking-pool threads retire after a while; give them the time.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut now = footprint(pid);
    while now != baseline && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        now = footprint(pid);
    }
    assert_eq!(now, baseline, "execd's footprint after {TOTAL} sessions");
    let left = wait_until_gone(container, CANCEL_MARKER, Duration::from_secs(10)).await;
    assert!(left.is_empty(), "left in container: {left:?}");

    assert!(execd.terminate().await.success());
}
