//! ExecStream protocol against a real server and a real Docker engine:
//! sessions that run (output, input, exit codes, terminals). Refusals and
//! protocol errors are in `exec_stream_refusals.rs`.

use crate::common::*;
use execd_proto::exec_service::exec_status_response::Status as WireStatus;

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
    let t = server.run(req(shared_container(), &["true"])).await;
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
        .run(req(shared_container(), &["sh", "-c", "kill -KILL $$"]))
        .await;
    assert_eq!(t.assert_exited(), 137);
}

#[tokio::test]
async fn command_not_found_exits_127() {
    need_docker!();
    let server = start_server(config()).await;
    let t = server
        .run(req(shared_container(), &["/no/such/binary"]))
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
        .run(req(shared_container(), &["seq", "1", "200000"]))
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
        .run(req(
            shared_container(),
            &[
                "sh",
                "-c",
                "dd if=/dev/zero bs=1048576 count=100 2>/dev/null",
            ],
        ))
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
    let t = server.run(r).await;
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
    let t = server.run(r).await;
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
