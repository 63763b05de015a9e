//! ExecStream protocol against a real server and a real Docker engine.

mod common;

use std::time::Duration;

use common::*;
use execd_proto::exec_service::exec_message::Payload;
use execd_proto::exec_service::exec_status_response::Status as WireStatus;
use execd_proto::exec_service::{ExecMessage, ExecStartRequest};
use tonic::Code;

macro_rules! need_docker {
    () => {
        if !docker_or_skip(module_path!()) {
            return;
        }
    };
}

#[tokio::test]
async fn echo_reports_started_output_exited_with_session_id_everywhere() {
    need_docker!();
    let server = start_server(config()).await;
    let t = server
        .open(start_msg(
            "my-session-1",
            req(shared_container(), &["echo", "x"]),
        ))
        .await
        .finish()
        .await;
    assert_eq!(t.assert_exited(), 0);
    assert_eq!(t.stdout_str(), "x\n");
    assert!(
        t.session_ids.iter().all(|id| id == "my-session-1"),
        "{t:#?}"
    );
}

#[tokio::test]
async fn generated_session_id_is_128_bit_hex() {
    need_docker!();
    let server = start_server(config()).await;
    let t = server
        .exec(req(shared_container(), &["true"]))
        .await
        .finish()
        .await;
    t.assert_exited();
    let id = &t.session_ids[0];
    assert_eq!(id.len(), 32, "{id}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(t.session_ids.iter().all(|i| i == id));
}

#[tokio::test]
async fn stdout_and_stderr_are_split_and_exit_code_kept() {
    need_docker!();
    let server = start_server(config()).await;
    let t = server
        .exec(req(
            shared_container(),
            &["sh", "-c", "echo out; echo err >&2; exit 7"],
        ))
        .await
        .finish()
        .await;
    assert_eq!(t.assert_exited(), 7);
    assert_eq!(t.stdout_str(), "out\n");
    assert_eq!(t.stderr_str(), "err\n");
}

#[tokio::test]
async fn killed_by_signal_is_128_plus_signal() {
    need_docker!();
    let server = start_server(config()).await;
    let t = server
        .exec(req(shared_container(), &["sh", "-c", "kill -KILL $$"]))
        .await
        .finish()
        .await;
    assert_eq!(t.assert_exited(), 137);
}

#[tokio::test]
async fn command_not_found_exits_127() {
    need_docker!();
    let server = start_server(config()).await;
    let t = server
        .exec(req(shared_container(), &["/no/such/binary"]))
        .await
        .finish()
        .await;
    let code = t.assert_exited();
    assert!(code == 127 || code == 126, "{t:#?}");
}

#[tokio::test]
async fn default_shell_is_driven_by_input() {
    need_docker!();
    let server = start_server(config()).await;
    let exec = server.exec(req(shared_container(), &[])).await;
    exec.send(input_msg("echo hello-from-sh; exit 4\n")).await;
    let t = exec.finish().await;
    assert_eq!(t.assert_exited(), 4);
    assert_eq!(t.stdout_str(), "hello-from-sh\n");
}

#[tokio::test]
async fn binary_stdin_round_trips_through_cat_with_stdin_eof() {
    need_docker!();
    let server = start_server(config()).await;
    // 1 MiB holding every byte value, in uneven chunk sizes.
    let data: Vec<u8> = (0..1024 * 1024u32).map(|i| (i * 7 % 256) as u8).collect();
    let mut exec = server.exec(req(shared_container(), &["cat"])).await;
    exec.started().await;
    let sender = exec.tx.clone().unwrap();
    let payload = data.clone();
    let feeder = tokio::spawn(async move {
        for chunk in payload.chunks(65_521) {
            sender.send(input_msg(chunk.to_vec())).await.unwrap();
        }
        sender.send(eof_msg()).await.unwrap();
    });
    let t = exec.finish().await;
    feeder.await.unwrap();
    assert_eq!(t.assert_exited(), 0);
    assert_eq!(t.stdout.len(), data.len());
    assert!(t.stdout == data, "bytes differ");
}

#[tokio::test]
async fn half_close_is_stdin_eof() {
    need_docker!();
    let server = start_server(config()).await;
    let mut exec = server
        .exec(req(
            shared_container(),
            &["sh", "-c", "cat; echo after-eof"],
        ))
        .await;
    exec.send(input_msg("line\n")).await;
    exec.close_send();
    let t = exec.finish().await;
    assert_eq!(t.assert_exited(), 0);
    assert_eq!(t.stdout_str(), "line\nafter-eof\n");
}

#[tokio::test]
async fn no_trailing_output_is_lost() {
    need_docker!();
    let server = start_server(config()).await;
    let t = server
        .exec(req(shared_container(), &["seq", "1", "200000"]))
        .await
        .finish()
        .await;
    assert_eq!(t.assert_exited(), 0);
    let expected: String = (1..=200_000).map(|i| format!("{i}\n")).collect();
    assert_eq!(t.stdout.len(), expected.len());
    assert!(t.stdout_str() == expected);
}

#[tokio::test]
async fn hundred_megabytes_of_output_arrive_whole() {
    need_docker!();
    let server = start_server(config()).await;
    let t = server
        .exec(req(
            shared_container(),
            &[
                "sh",
                "-c",
                "dd if=/dev/zero bs=1048576 count=100 2>/dev/null",
            ],
        ))
        .await
        .finish()
        .await;
    assert_eq!(t.assert_exited(), 0);
    assert_eq!(t.stdout.len(), 100 * 1024 * 1024);
    assert!(t.stdout.iter().all(|b| *b == 0));
}

#[tokio::test]
async fn env_workdir_and_user_are_honoured() {
    need_docker!();
    let server = start_server(config()).await;
    let mut r = req(
        shared_container(),
        &["sh", "-c", "echo \"$FOO|$(pwd)|$(id -u)|$TERM\""],
    );
    r.env.insert("FOO".into(), "bar baz".into());
    r.working_dir = "/tmp".into();
    r.user = "1000".into();
    let t = server.exec(r).await.finish().await;
    assert_eq!(t.assert_exited(), 0);
    // No TERM is added without a terminal.
    assert_eq!(t.stdout_str(), "bar baz|/tmp|1000|\n");
}

#[tokio::test]
async fn tty_gets_term_and_merged_output() {
    need_docker!();
    let server = start_server(config()).await;
    let mut r = req(
        shared_container(),
        &[
            "sh",
            "-c",
            "echo $TERM; test -t 0 && echo is-a-tty; echo err >&2",
        ],
    );
    r.tty = true;
    let t = server.exec(r).await.finish().await;
    assert_eq!(t.assert_exited(), 0);
    let out = t.stdout_str();
    assert!(out.contains("xterm\r\n"), "{out:?}");
    assert!(out.contains("is-a-tty"), "{out:?}");
    assert!(
        out.contains("err"),
        "stderr merges into stdout under a tty: {out:?}"
    );
    assert!(t.stderr.is_empty());
}

/// Engines before API 1.42 cannot size an exec's console at creation, so
/// the size arrives just after the process starts; a shell that asks for
/// it must see the client's initial size.
#[tokio::test]
async fn tty_initial_size_reaches_the_container() {
    need_docker!();
    let server = start_server(config()).await;
    for (rows, cols, expected) in [
        (33, 101, "33 101"),
        (0, 0, "24 80"),
        (-5, 1_000_000, "24 4096"),
    ] {
        let mut r = req(shared_container(), &["sh"]);
        r.tty = true;
        r.rows = rows;
        r.cols = cols;
        let mut exec = server.exec(r).await;
        exec.started().await;
        let seen = exec.wait_for_terminal_size(expected).await;
        assert!(seen.contains(expected), "wanted {expected}, saw {seen:?}");
        exec.send(input_msg("exit 0\n")).await;
        let t = exec.finish().await;
        assert_eq!(t.assert_exited(), 0);
    }
}

/// A resize sent right after STARTED must reach the container even though
/// the docker CLI ignores window changes until its own first resize is done.
#[tokio::test]
async fn resize_right_after_start_reaches_the_container() {
    need_docker!();
    let server = start_server(config()).await;
    let mut r = req(shared_container(), &["sh"]);
    r.tty = true;
    r.rows = 24;
    r.cols = 80;
    let mut exec = server.exec(r).await;
    exec.started().await;
    exec.send(resize_msg(51, 131)).await;
    // Bad sizes in between must not crash or stick.
    exec.send(resize_msg(-1, 0)).await;
    exec.send(resize_msg(51, 131)).await;
    let seen = exec.wait_for_terminal_size("51 131").await;
    assert!(
        seen.contains("51 131"),
        "container never saw the resize: {seen:?}"
    );
    exec.send(input_msg("exit 0\n")).await;
    let t = exec.finish().await;
    assert_eq!(t.terminal().0, WireStatus::Exited);
}

#[tokio::test]
async fn ctrl_c_interrupts_sleep_under_tty() {
    need_docker!();
    let server = start_server(config()).await;
    let n = marker();
    let mut r = req(shared_container(), &["sleep", &format!("{n}")]);
    r.tty = true;
    let mut exec = server.exec(r).await;
    exec.started().await;
    wait_until_running(shared_container(), &format!("sleep {n}")).await;
    exec.send(input_msg(vec![0x03u8])).await;
    let t = exec.finish().await;
    assert_eq!(t.terminal().0, WireStatus::Exited, "{t:#?}");
    assert_eq!(t.terminal().1, 130);
}

/// Runs `cat` under a tty: sends `input`, waits until `echo` came back,
/// sends stdin_eof, and expects `cat` to exit 0.
async fn tty_cat_ends_on_eof(input: &[u8], echo: &str) {
    let server = start_server(config()).await;
    let mut r = req(shared_container(), &["cat"]);
    r.tty = true;
    let mut exec = server.exec(r).await;
    exec.started().await;
    exec.send(input_msg(input.to_vec())).await;
    exec.read_until(echo).await;
    exec.send(eof_msg()).await;
    let t = exec.finish().await;
    assert_eq!(t.terminal().0, WireStatus::Exited, "{t:#?}");
    assert_eq!(t.terminal().1, 0);
}

#[tokio::test]
async fn tty_stdin_eof_ends_cat() {
    need_docker!();
    tty_cat_ends_on_eof(b"typed\n", "typed\r\ntyped").await;
}

/// Docker's default detach keys (ctrl-p ctrl-q) are just bytes for the
/// process: a client cannot accidentally detach and leave it orphaned.
#[tokio::test]
async fn ctrl_p_ctrl_q_do_not_detach() {
    need_docker!();
    tty_cat_ends_on_eof(b"\x10\x11still-attached\n", "still-attached\r\n").await;
}

/// EOF after a partial line still ends the input.
#[tokio::test]
async fn tty_stdin_eof_mid_line_ends_cat() {
    need_docker!();
    tty_cat_ends_on_eof(b"partial", "partial").await;
}

#[tokio::test]
async fn missing_container_is_not_found_without_started() {
    need_docker!();
    let server = start_server(config()).await;
    let t = server
        .exec(req("execd-no-such-container", &["echo", "x"]))
        .await
        .finish()
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
    let name = format!("execd-test-stopped-{}", std::process::id());
    let _ = std::process::Command::new("docker")
        .args(["rm", "-f", &name])
        .output();
    let created = std::process::Command::new("docker")
        .args([
            "create",
            "--network",
            "none",
            "--label",
            "execd-test=1",
            "--name",
            &name,
            IMAGE,
            "true",
        ])
        .output()
        .unwrap();
    assert!(created.status.success());
    let server = start_server(config()).await;
    let t = server.exec(req(&name, &["echo", "x"])).await.finish().await;
    let msg = t.assert_error(Code::FailedPrecondition);
    assert!(msg.contains("not running"), "{msg}");
    let _ = std::process::Command::new("docker")
        .args(["rm", "-f", &name])
        .output();
}

#[tokio::test]
async fn flag_injection_in_container_id_is_refused() {
    // No Docker needed: nothing may be spawned at all.
    let server = start_server(config()).await;
    for bad in ["--privileged", "-it", "a/b", "a b"] {
        let t = server.exec(req(bad, &["id"])).await.finish().await;
        let msg = t.assert_error(Code::InvalidArgument);
        assert!(msg.contains("container_id"), "{msg}");
    }
}

#[tokio::test]
async fn empty_container_id_is_refused_without_host_exec() {
    let server = start_server(config()).await;
    let t = server.exec(req("", &["id"])).await.finish().await;
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
        let t = server.exec(r).await.finish().await;
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
    let t = server
        .exec(req(shared_container(), &["true"]))
        .await
        .finish()
        .await;
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
    cfg.manager.mode = execd_session::ExecMode::Container {
        runtime_cli: "/nonexistent/docker".into(),
    };
    let server = start_server(cfg).await;
    let t = server.exec(req("web", &["id"])).await.finish().await;
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
    cfg.manager.mode = execd_session::ExecMode::Container {
        runtime_cli: cli.to_string_lossy().into_owned(),
    };
    let server = start_server(cfg).await;
    let t = server.exec(req("web", &["id"])).await.finish().await;
    let msg = t.assert_error(Code::Unavailable);
    assert!(msg.to_lowercase().contains("docker"), "{msg}");
}

#[tokio::test]
async fn host_exec_runs_on_the_host_with_env_and_workdir() {
    let mut cfg = config();
    cfg.manager.mode = execd_session::ExecMode::Host;
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
    let t = server.exec(r).await.finish().await;
    assert_eq!(t.assert_exited(), 2);
    assert_eq!(t.stdout_str(), "hi /\n");
    assert_eq!(t.stderr_str(), "oops\n");
    // And with a terminal.
    let mut r = req("", &["sh", "-c", "stty size; test -t 0 && echo is-a-tty"]);
    r.tty = true;
    r.rows = 12;
    r.cols = 34;
    let t = server.exec(r).await.finish().await;
    assert_eq!(t.assert_exited(), 0);
    assert!(
        t.stdout_str().contains("12 34") && t.stdout_str().contains("is-a-tty"),
        "{}",
        t.stdout_str()
    );
    // A container id makes no sense here.
    let t = server.exec(req("web", &["id"])).await.finish().await;
    t.assert_error(Code::InvalidArgument);
}

#[tokio::test]
async fn background_child_holding_stdout_does_not_hang_the_session() {
    // Host mode: the background sleep inherits our pipe and keeps it open.
    let mut cfg = config();
    cfg.manager.mode = execd_session::ExecMode::Host;
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
    let t = server
        .exec(req(shared_container(), &["true"]))
        .await
        .finish()
        .await;
    t.assert_exited();
}
