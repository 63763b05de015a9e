//! ExecStream protocol against a real server and a real Docker engine:
//! what is refused and how (missing or stopped containers, bad requests,
//! protocol errors, a missing runtime or engine), and concurrency.

use std::time::Duration;

use crate::common::*;
use execd_proto::exec_service::exec_message::Payload;
use execd_proto::exec_service::{ExecMessage, ExecStartRequest};
use tonic::Code;

#[tokio::test]
async fn missing_container_is_not_found_without_started() {
    need_docker!();
    let server = start_server(config()).await;
    let t = server
        .run(req("execd-no-such-container", &["echo", "x"]))
        .await;
    let msg = t.assert_error(Code::NotFound);
    assert!(msg.contains("No such container"), "{msg}");
    assert_eq!(
        t.statuses.len(),
        1,
        "no STARTED for a container that is not there"
    );
    assert!(t.stdout.is_empty() && t.stderr.is_empty());
}

#[tokio::test]
async fn stopped_container_is_failed_precondition() {
    need_docker!();
    let stopped = ContainerSpec::new("stopped", &["true"]).create();
    let name = stopped.0.clone();
    let server = start_server(config()).await;
    let t = server.run(req(&name, &["echo", "x"])).await;
    let msg = t.assert_error(Code::FailedPrecondition);
    assert!(msg.contains("not running"), "{msg}");
}

#[tokio::test]
async fn flag_injection_in_container_id_is_refused() {
    // No Docker needed: nothing may be spawned at all.
    let server = start_server(config()).await;
    for bad in ["--privileged", "-it", "a/b", "a b"] {
        let t = server.run(req(bad, &["id"])).await;
        let msg = t.assert_error(Code::InvalidArgument);
        assert!(msg.contains("container_id"), "{msg}");
    }
}

#[tokio::test]
async fn empty_container_id_is_refused_without_host_exec() {
    let server = start_server(config()).await;
    let t = server.run(req("", &["id"])).await;
    t.assert_error(Code::InvalidArgument);
}

#[tokio::test]
async fn first_message_must_be_start() {
    let server = start_server(config()).await;
    for first in [
        input_msg("x"),
        resize_msg(1, 1),
        eof_msg(),
        ExecMessage::default(),
    ] {
        let t = server.open(first).await.finish().await;
        let msg = t.assert_error(Code::InvalidArgument);
        assert!(msg.contains("start_request"), "{msg}");
    }
    // The server keeps serving.
    let t = server.open(input_msg("x")).await.finish().await;
    t.assert_error(Code::InvalidArgument);
}

#[tokio::test]
async fn second_start_ends_the_session_and_kills_its_process() {
    need_docker!();
    let server = start_server(config()).await;
    let n = marker();
    let sleep = format!("sleep {n}");
    let mut exec = server
        .exec(req(shared_container(), &["sleep", &n.to_string()]))
        .await;
    exec.started().await;
    wait_until_running(shared_container(), &sleep).await;
    exec.send(start_msg("", req(shared_container(), &["true"])))
        .await;
    let t = exec.finish().await;
    let msg = t.assert_error(Code::InvalidArgument);
    assert!(msg.contains("a second start was sent"), "{msg}");
    let left = wait_until_gone(shared_container(), &sleep, Duration::from_secs(5)).await;
    assert!(left.is_empty(), "left in container: {left:?}");
}

#[tokio::test]
async fn client_session_id_in_use_is_refused() {
    need_docker!();
    let server = start_server(config()).await;
    let mut first = server
        .open(start_msg(
            "dup-id",
            req(shared_container(), &["sleep", "30"]),
        ))
        .await;
    assert_eq!(first.started().await, "dup-id");
    let t = server
        .open(start_msg("dup-id", req(shared_container(), &["true"])))
        .await
        .finish()
        .await;
    let msg = t.assert_error(Code::AlreadyExists);
    assert!(msg.contains("already in use"), "{msg}");
    assert_eq!(t.session_ids, ["dup-id"]);
    drop(first);
}

#[tokio::test]
async fn invalid_requests_get_clear_errors() {
    let server = start_server(config()).await;
    let cases: Vec<(ExecStartRequest, &str)> = vec![
        (
            {
                let mut r = req("c", &["echo"]);
                r.env.insert("".into(), "v".into());
                r
            },
            "env key",
        ),
        (
            {
                let mut r = req("c", &["echo"]);
                r.env.insert("A=B".into(), "v".into());
                r
            },
            "env key",
        ),
        (
            {
                let mut r = req("c", &["echo"]);
                r.env.insert("A".into(), "v\0".into());
                r
            },
            "NUL",
        ),
        (req("c", &["echo", "a\0b"]), "NUL"),
        (
            {
                let mut r = req("c", &["pwd"]);
                r.working_dir = "relative".into();
                r
            },
            "working_dir",
        ),
        (
            {
                let mut r = req("c", &["id"]);
                r.user = "-u".into();
                r
            },
            "user",
        ),
        (req(&"x".repeat(300), &["id"]), "container_id"),
        (req("\u{263a}", &["id"]), "container_id"),
    ];
    for (r, needle) in cases {
        let t = server.run(r).await;
        let msg = t.assert_error(Code::InvalidArgument);
        assert!(msg.contains(needle), "{msg} should mention {needle}");
    }
    let t = server
        .open(start_msg(&"s".repeat(10_000), req("c", &["id"])))
        .await
        .finish()
        .await;
    let msg = t.assert_error(Code::InvalidArgument);
    assert!(msg.contains("session_id"));
    assert_eq!(t.session_ids, [""], "an invalid id is not echoed");
}

#[tokio::test]
async fn messages_after_the_terminal_status_are_ignored() {
    need_docker!();
    let server = start_server(config()).await;
    let mut exec = server.exec(req(shared_container(), &["true"])).await;
    exec.started().await;
    // Wait for the end, then keep sending.
    loop {
        let msg = exec.next().await.expect("msg").expect("ok");
        if matches!(msg.payload, Some(Payload::Status(_))) {
            break;
        }
    }
    exec.send(input_msg("late")).await;
    exec.send(resize_msg(10, 10)).await;
    exec.send(start_msg("", req(shared_container(), &["true"])))
        .await;
    assert!(exec.next().await.is_none_or(|r| r.is_ok()));
    // Still serving.
    let t = server.run(req(shared_container(), &["true"])).await;
    t.assert_exited();
}

#[tokio::test]
async fn forty_concurrent_sessions_keep_their_own_output() {
    need_docker!();
    let server = std::sync::Arc::new(start_server(config()).await);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("conc-{i}");
            let t = server
                .open(start_msg(
                    &id,
                    req(
                        shared_container(),
                        &["sh", "-c", &format!("echo out-{i}; echo err-{i} >&2")],
                    ),
                ))
                .await
                .finish()
                .await;
            assert_eq!(t.assert_exited(), 0);
            assert_eq!(t.stdout_str(), format!("out-{i}\n"));
            assert_eq!(t.stderr_str(), format!("err-{i}\n"));
            assert!(t.session_ids.iter().all(|s| *s == id));
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test]
async fn missing_runtime_cli_is_failed_precondition() {
    let mut cfg = config();
    cfg.manager.backend = execd_session::BackendConfig::Cli {
        program: "/nonexistent/docker".into(),
    };
    let server = start_server(cfg).await;
    let t = server.run(req("web", &["id"])).await;
    let msg = t.assert_error(Code::FailedPrecondition);
    assert!(msg.contains("not found"), "{msg}");
}

#[tokio::test]
async fn unreachable_engine_is_unavailable() {
    need_docker!();
    // A CLI pointed at a socket nobody serves.
    let dir = tempfile::tempdir().unwrap();
    let cli = dir.path().join("docker-nowhere");
    std::fs::write(
        &cli,
        format!(
            "#!/bin/sh\nexec docker -H unix://{}/none.sock \"$@\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&cli, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cfg = config();
    cfg.manager.backend = execd_session::BackendConfig::Cli {
        program: cli.to_string_lossy().into_owned(),
    };
    let server = start_server(cfg).await;
    let t = server.run(req("web", &["id"])).await;
    let msg = t.assert_error(Code::Unavailable);
    assert!(msg.to_lowercase().contains("docker"), "{msg}");
}

#[tokio::test]
async fn host_exec_runs_on_the_host_with_env_and_workdir() {
    let mut cfg = config();
    cfg.manager.backend = execd_session::BackendConfig::Host;
    let server = start_server(cfg).await;
    let mut r = req(
        "",
        &[
            "sh",
            "-c",
            "echo \"$GREETING $(pwd)\"; echo oops >&2; exit 2",
        ],
    );
    r.env.insert("GREETING".into(), "hi".into());
    r.working_dir = "/".into();
    let t = server.run(r).await;
    assert_eq!(t.assert_exited(), 2);
    assert_eq!(t.stdout_str(), "hi /\n");
    assert_eq!(t.stderr_str(), "oops\n");
    // And with a terminal.
    let mut r = req("", &["sh", "-c", "stty size; test -t 0 && echo is-a-tty"]);
    r.tty = true;
    r.rows = 12;
    r.cols = 34;
    let t = server.run(r).await;
    assert_eq!(t.assert_exited(), 0);
    assert!(
        t.stdout_str().contains("12 34") && t.stdout_str().contains("is-a-tty"),
        "{}",
        t.stdout_str()
    );
    // A container id makes no sense here.
    let t = server.run(req("web", &["id"])).await;
    t.assert_error(Code::InvalidArgument);
}

#[tokio::test]
async fn background_child_holding_stdout_does_not_hang_the_session() {
    // Host mode: the background sleep inherits our pipe and keeps it open.
    let mut cfg = config();
    cfg.manager.backend = execd_session::BackendConfig::Host;
    let server = start_server(cfg).await;
    let t = tokio::time::timeout(
        Duration::from_secs(20),
        server
            .exec(req("", &["sh", "-c", "sleep 30 & echo started"]))
            .await
            .finish(),
    )
    .await
    .expect("session ends although a background child holds stdout");
    assert_eq!(t.assert_exited(), 0);
    assert_eq!(t.stdout_str(), "started\n");
}

#[tokio::test]
async fn oversized_input_message_is_resource_exhausted() {
    need_docker!();
    let mut cfg = config();
    cfg.max_message_size = 64 * 1024;
    let server = start_server(cfg).await;
    let mut exec = server.exec(req(shared_container(), &["cat"])).await;
    exec.started().await;
    exec.send(input_msg(vec![b'a'; 128 * 1024])).await;
    let t = exec.finish().await;
    t.assert_error(Code::ResourceExhausted);
    let t = server.run(req(shared_container(), &["true"])).await;
    t.assert_exited();
}
