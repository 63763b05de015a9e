//! Session lifecycle against a real engine: no orphans in the container,
//! exact instance counts and events, admin close, limits, idle timeout,
//! keepalive loss and shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use execd_proto::admin::close_sessions_request::Target;
use execd_proto::admin::instance_event::Kind;
use execd_proto::admin::{CloseSessionsRequest, InstanceEvent, WatchInstancesRequest};
use execd_proto::exec_service::exec_status_response::Status as WireStatus;
use tonic::Code;

/// Bound for "the process is gone"; the requirement is 2 s, the slack only
/// keeps a loaded CI machine from flaking.
const GONE_WITHIN: Duration = Duration::from_secs(6);

/// The admin API's instance events (of `instance`; every instance's if
/// empty).
async fn instance_events(server: &TestServer, instance: &str) -> tonic::Streaming<InstanceEvent> {
    let request = WatchInstancesRequest {
        instance_id: instance.to_string(),
    };
    let events = server.admin().await.watch_instances(request).await;
    events.unwrap().into_inner()
}

async fn wait_active(server: &TestServer, instance: &str, want: u32) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while server.active(instance).await != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{instance} never reached {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn cancel_leaves_nothing(tty: bool) {
    let server = start_server(config()).await;
    let n = marker();
    let script = format!("sleep {n} & sleep {}", n + 1);
    let mut r = req(shared_container(), &["sh", "-c", &script]);
    r.tty = tty;
    r.instance_id = format!("inst-cancel-{n}");
    let mut exec = server.exec(r.clone()).await;
    exec.started().await;
    wait_until_running(shared_container(), &format!("sleep {}", n + 1)).await;
    wait_until_running(shared_container(), &format!("sleep {n}")).await;
    assert_eq!(server.active(&r.instance_id).await, 1);
    drop(exec);
    let left = wait_until_gone(shared_container(), &format!("sleep {}", n), GONE_WITHIN).await;
    assert!(left.is_empty(), "left in container after cancel: {left:?}");
    let left = wait_until_gone(shared_container(), &format!("sleep {}", n + 1), GONE_WITHIN).await;
    assert!(left.is_empty(), "left in container after cancel: {left:?}");
    wait_active(&server, &r.instance_id, 0).await;
}

#[tokio::test]
async fn cancel_in_pipe_mode_leaves_no_process_in_the_container() {
    need_docker!();
    cancel_leaves_nothing(false).await;
}

#[tokio::test]
async fn cancel_in_tty_mode_leaves_no_process_in_the_container() {
    need_docker!();
    cancel_leaves_nothing(true).await;
}

/// Ending a session the instant it started must still catch its process,
/// which may only be coming up inside the container at that moment.
#[tokio::test]
async fn cancel_right_after_started_leaves_nothing() {
    need_docker!();
    let server = start_server(config()).await;
    let n = marker();
    for (i, tty) in [(0, false), (1, true)] {
        let mut r = req(shared_container(), &["sleep", &(n + i).to_string()]);
        r.tty = tty;
        let mut exec = server.exec(r).await;
        exec.started().await;
        drop(exec);
    }
    // Give a late starter the chance to show up before looking.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..2 {
        let left =
            wait_until_gone(shared_container(), &format!("sleep {}", n + i), GONE_WITHIN).await;
        assert!(left.is_empty(), "left in container: {left:?}");
    }
}

#[tokio::test]
async fn admin_lists_and_closes_sessions() {
    need_docker!();
    let server = start_server(config()).await;
    let n = marker();
    let instance = format!("inst-admin-{n}");
    let mut sessions = Vec::new();
    for i in 0..2 {
        let mut r = req(shared_container(), &["sleep", &(n + i).to_string()]);
        r.instance_id = instance.clone();
        r.tty = i == 1;
        let mut exec = server.open(start_msg(&format!("adm-{n}-{i}"), r)).await;
        exec.started().await;
        sessions.push(exec);
    }
    let list = server.sessions(&instance).await;
    assert_eq!(list.sessions.len(), 2);
    assert_eq!(list.active_per_instance.get(&instance), Some(&2));
    assert_eq!(list.sessions[0].container_id, shared_container());
    assert_eq!(list.sessions[0].command, ["sleep", &n.to_string()]);
    assert!(list.sessions[1].tty);

    let close = |target: Option<Target>, reason: &str| {
        let server = &server;
        let request = CloseSessionsRequest {
            target,
            reason: reason.into(),
        };
        async move {
            let closed = server.admin().await.close_sessions(request).await;
            closed.map(|r| r.into_inner().closed)
        }
    };
    // Unknown targets close nothing and are not errors.
    let nope = Some(Target::SessionId("nope".into()));
    assert_eq!(close(nope, "x").await.unwrap(), 0);
    let err = close(None, "").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let by_id = Some(Target::SessionId(format!("adm-{n}-0")));
    assert_eq!(close(by_id, "maintenance").await.unwrap(), 1);
    let first = sessions.remove(0).finish().await;
    let msg = first.assert_error(Code::Aborted);
    assert_eq!(msg, "closed: maintenance");

    let by_instance = Some(Target::InstanceId(instance.clone()));
    assert_eq!(close(by_instance, "evicted").await.unwrap(), 1);
    let second = sessions.remove(0).finish().await;
    assert_eq!(second.assert_error(Code::Aborted), "closed: evicted");
    for i in 0..2 {
        let left =
            wait_until_gone(shared_container(), &format!("sleep {}", n + i), GONE_WITHIN).await;
        assert!(left.is_empty(), "{left:?}");
    }
    wait_active(&server, &instance, 0).await;
}

#[tokio::test]
async fn idle_sessions_are_ended_and_killed() {
    need_docker!();
    let mut cfg = config();
    // Well above the chatty session's gaps *and* the time a busy engine
    // takes to report an exit after the output ended (the Engine API
    // backend asks for it): seconds, with the suite running in parallel.
    cfg.manager.lifecycle.idle_timeout = Some(Duration::from_secs(6));
    let server = start_server(cfg).await;
    let n = marker();
    // A chatty session is not idle.
    let chatty = server
        .exec(req(
            shared_container(),
            &[
                "sh",
                "-c",
                "for i in 1 2 3 4 5 6; do echo $i; sleep 0.3; done",
            ],
        ))
        .await
        .finish()
        .await;
    assert_eq!(chatty.assert_exited(), 0);
    let t = server
        .run(req(shared_container(), &["sleep", &n.to_string()]))
        .await;
    assert_eq!(t.assert_error(Code::DeadlineExceeded), "idle timeout");
    let left = wait_until_gone(shared_container(), &format!("sleep {n}"), GONE_WITHIN).await;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn limits_refuse_new_sessions_with_resource_exhausted() {
    need_docker!();
    let mut cfg = config();
    cfg.manager.limits.max_sessions = 3;
    cfg.manager.limits.max_sessions_per_instance = 2;
    let server = start_server(cfg).await;
    let mut live = Vec::new();
    for instance in ["lim-a", "lim-a"] {
        let mut r = req(shared_container(), &["sleep", "60"]);
        r.instance_id = instance.into();
        let mut exec = server.exec(r).await;
        exec.started().await;
        live.push(exec);
    }
    let mut r = req(shared_container(), &["true"]);
    r.instance_id = "lim-a".into();
    let t = server.run(r).await;
    assert!(t
        .assert_error(Code::ResourceExhausted)
        .contains("--max-sessions-per-instance=2"));

    let mut r = req(shared_container(), &["sleep", "60"]);
    r.instance_id = "lim-b".into();
    let mut third = server.exec(r).await;
    third.started().await;
    live.push(third);
    let t = server.run(req(shared_container(), &["true"])).await;
    assert!(t
        .assert_error(Code::ResourceExhausted)
        .contains("--max-sessions=3"));
    drop(live);
    wait_active(&server, "lim-a", 0).await;
    // Capacity is back.
    let t = server.run(req(shared_container(), &["true"])).await;
    t.assert_exited();
}

/// Hundreds of sessions across a few instances, some cancelled mid-run:
/// counts return to zero and every instance's events form a consistent
/// sequence (BUSY at 0→1, COUNT ±1, IDLE at →0, none missed or doubled).
#[tokio::test]
async fn counts_and_events_are_exact_under_concurrency() {
    need_docker!();
    let server = Arc::new(start_server(config()).await);
    let mut watch = instance_events(&server, "").await;
    let prefix = format!("conc-{}", marker());
    let total = 200;
    let permits = Arc::new(tokio::sync::Semaphore::new(24));
    let mut tasks = Vec::new();
    for i in 0..total {
        let server = server.clone();
        let permits = permits.clone();
        let instance = format!("{prefix}-{}", i % 4);
        tasks.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await.unwrap();
            let cancel = i % 3 == 0;
            let command: &[&str] = if cancel {
                &["sleep", "30"]
            } else {
                &["echo", "done"]
            };
            let mut r = req(shared_container(), command);
            r.instance_id = instance;
            let mut exec = server.exec(r).await;
            exec.started().await;
            if cancel {
                tokio::time::sleep(Duration::from_millis(50)).await;
                drop(exec);
            } else {
                let t = exec.finish().await;
                assert_eq!(t.assert_exited(), 0);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for i in 0..4 {
        wait_active(&server, &format!("{prefix}-{i}"), 0).await;
    }
    let mut level: HashMap<String, u32> = HashMap::new();
    let mut busy = 0;
    let mut idle = 0;
    loop {
        let next = tokio::time::timeout(Duration::from_millis(500), watch.message()).await;
        let Ok(Ok(Some(ev))) = next else { break };
        if !ev.instance_id.starts_with(&prefix) {
            continue;
        }
        let l = level.entry(ev.instance_id.clone()).or_default();
        match Kind::try_from(ev.kind).unwrap() {
            Kind::Busy => {
                assert_eq!((*l, ev.active_sessions), (0, 1), "{ev:?}");
                busy += 1;
            }
            Kind::Idle => {
                assert_eq!((*l, ev.active_sessions), (1, 0), "{ev:?}");
                idle += 1;
            }
            Kind::Count => {
                assert!(*l >= 1 && ev.active_sessions >= 1, "{ev:?} at level {l}");
                assert_eq!(
                    (*l as i64 - ev.active_sessions as i64).abs(),
                    1,
                    "{ev:?} at level {l}"
                );
            }
            Kind::Snapshot => panic!("snapshot after start: {ev:?}"),
        }
        *l = ev.active_sessions;
    }
    assert_eq!(level.len(), 4, "{level:?}");
    assert!(level.values().all(|l| *l == 0), "{level:?}");
    assert_eq!(busy, idle);
    assert!(busy >= 4);
}

#[tokio::test]
async fn watch_starts_with_a_snapshot_and_filters_by_instance() {
    need_docker!();
    let server = start_server(config()).await;
    let instance = format!("snap-{}", marker());
    let mut r = req(shared_container(), &["sleep", "60"]);
    r.instance_id = instance.clone();
    let mut exec = server.exec(r.clone()).await;
    exec.started().await;
    let mut watch = instance_events(&server, &instance).await;
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(Kind::try_from(first.kind).unwrap(), Kind::Snapshot);
    assert_eq!(
        (first.instance_id.as_str(), first.active_sessions),
        (instance.as_str(), 1)
    );
    // Another instance's session does not show up; ours does.
    let mut other = r.clone();
    other.instance_id = format!("{instance}-other");
    other.command = vec!["true".into()];
    server.run(other).await.assert_exited();
    let mut second = server.exec(r).await;
    second.started().await;
    let ev = watch.message().await.unwrap().unwrap();
    assert_eq!(
        (Kind::try_from(ev.kind).unwrap(), ev.active_sessions),
        (Kind::Count, 2)
    );
    drop(second);
    drop(exec);
    let mut kinds = Vec::new();
    while kinds.last() != Some(&Kind::Idle) {
        let ev = tokio::time::timeout(PATIENCE, watch.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(ev.instance_id, instance);
        kinds.push(Kind::try_from(ev.kind).unwrap());
    }
    assert_eq!(kinds, [Kind::Count, Kind::Idle]);
}

#[tokio::test]
async fn a_watcher_that_never_reads_does_not_stall_sessions() {
    // Host-exec sessions are cheap, so many state changes happen quickly.
    let mut cfg = config();
    cfg.manager.backend = execd_session::BackendConfig::Host;
    let server = Arc::new(start_server(cfg).await);
    let _stalled = instance_events(&server, "").await;
    let run = async {
        let mut tasks = Vec::new();
        for i in 0..400 {
            let server = server.clone();
            tasks.push(tokio::spawn(async move {
                let mut r = req("", &["true"]);
                r.instance_id = format!("stall-{}", i % 8);
                server.run(r).await.assert_exited();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    };
    tokio::time::timeout(PATIENCE, run)
        .await
        .expect("sessions were not stalled by the watcher");
}

/// A client that vanishes without closing its connection is detected by
/// HTTP/2 keepalive, and its session ends like a cancel.
#[tokio::test]
async fn keepalive_loss_ends_the_session() {
    need_docker!();
    let mut cfg = config();
    cfg.keepalive_interval = Duration::from_millis(500);
    cfg.keepalive_timeout = Duration::from_millis(500);
    let server = start_server(cfg).await;
    // A loopback proxy that can go silent, like a peer that lost power.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = proxy.local_addr().unwrap();
    let upstream = server.addr.trim_start_matches("http://").to_string();
    let silence = tokio_util::sync::CancellationToken::new();
    let gate = silence.clone();
    tokio::spawn(async move {
        let (client, _) = proxy.accept().await.unwrap();
        let server = tokio::net::TcpStream::connect(upstream).await.unwrap();
        let (mut cr, mut cw) = client.into_split();
        let (mut sr, mut sw) = server.into_split();
        let g1 = gate.clone();
        let a = tokio::spawn(async move {
            tokio::select! { _ = tokio::io::copy(&mut cr, &mut sw) => {}, _ = g1.cancelled() => {} }
            // Keep the socket open but silent.
            std::future::pending::<()>().await;
            drop((cr, sw));
        });
        let b = tokio::spawn(async move {
            tokio::select! { _ = tokio::io::copy(&mut sr, &mut cw) => {}, _ = gate.cancelled() => {} }
            std::future::pending::<()>().await;
            drop((sr, cw));
        });
        let _ = tokio::join!(a, b);
    });
    let channel = tonic::transport::Channel::from_shared(format!("http://{proxy_addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client =
        execd_proto::exec_service::exec_service_client::ExecServiceClient::new(channel);
    let n = marker();
    let mut r = req(shared_container(), &["sleep", &n.to_string()]);
    r.instance_id = format!("ka-{n}");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(start_msg("", r.clone())).await.unwrap();
    let mut stream = client
        .exec_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(
        matches!(first.payload, Some(execd_proto::exec_service::exec_message::Payload::Status(ref s)) if s.status == WireStatus::Started as i32)
    );
    wait_until_running(shared_container(), &format!("sleep {n}")).await;
    silence.cancel();
    wait_active(&server, &r.instance_id, 0).await;
    let left = wait_until_gone(shared_container(), &format!("sleep {n}"), GONE_WITHIN).await;
    assert!(left.is_empty(), "{left:?}");
    drop((tx, stream));
}

#[tokio::test]
async fn shutdown_ends_sessions_with_unavailable_and_kills_them() {
    need_docker!();
    let server = start_server(config()).await;
    let n = marker();
    let mut exec = server
        .exec(req(shared_container(), &["sleep", &n.to_string()]))
        .await;
    exec.started().await;
    wait_until_running(shared_container(), &format!("sleep {n}")).await;
    server.shutdown.cancel();
    let t = exec.finish().await;
    assert_eq!(t.assert_error(Code::Unavailable), "server shutting down");
    let left = wait_until_gone(shared_container(), &format!("sleep {n}"), GONE_WITHIN).await;
    assert!(left.is_empty(), "{left:?}");
    tokio::time::timeout(PATIENCE, server.handle)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// The real binary: SIGTERM with live pipe and tty sessions on a unix
/// socket. Every session gets ERROR, the container is clean, execd exits 0
/// and removes its socket.
#[tokio::test]
async fn sigterm_of_the_binary_cleans_up_and_exits_zero() {
    need_docker!();
    let execd = ExecdProcess::start(&["--shutdown-grace", "5s"]).await;
    let socket = execd.socket.clone();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let channel = execd.channel.clone();
    let n = marker();
    let mut sessions = Vec::new();
    for (i, tty) in [(0, false), (1, true)] {
        let mut client =
            execd_proto::exec_service::exec_service_client::ExecServiceClient::new(channel.clone());
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut r = req(shared_container(), &["sleep", &(n + i).to_string()]);
        r.tty = tty;
        tx.send(start_msg("", r)).await.unwrap();
        let stream = client
            .exec_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        sessions.push((tx, stream));
    }
    for i in 0..2 {
        wait_until_running(shared_container(), &format!("sleep {}", n + i)).await;
    }
    execd.signal(nix::sys::signal::Signal::SIGTERM);
    for (_tx, mut stream) in sessions {
        let mut last = None;
        let mut rpc = None;
        loop {
            match tokio::time::timeout(PATIENCE, stream.message())
                .await
                .unwrap()
            {
                Ok(Some(m)) => last = Some(m),
                Ok(None) => break,
                Err(status) => {
                    rpc = Some(status);
                    break;
                }
            }
        }
        let last = last.unwrap();
        match last.payload {
            Some(execd_proto::exec_service::exec_message::Payload::Status(s)) => {
                assert_eq!(s.status, WireStatus::Error as i32);
                assert_eq!(s.error_message, "server shutting down");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(rpc.unwrap().code(), Code::Unavailable);
    }
    let status = execd.wait().await;
    assert!(status.success(), "execd exit status {status:?}");
    for i in 0..2 {
        let left =
            wait_until_gone(shared_container(), &format!("sleep {}", n + i), GONE_WITHIN).await;
        assert!(left.is_empty(), "{left:?}");
    }
    assert!(!socket.exists(), "socket file removed on shutdown");
}
