//! Session hardening against a real engine: STARTED only once the
//! container's terminal has the client's size, cleanup that touches only
//! the session's own processes, and no background process left behind.

use std::time::Duration;

use crate::common::*;

/// Bound for "the process is gone"; only guards against hanging.
const GONE_WITHIN: Duration = Duration::from_secs(6);

/// A client types as soon as STARTED arrives; the program reads that line
/// and only then asks for its terminal's size. On engines before API 1.42
/// the exec's console starts at 0×0 and the CLI sizes it a little later, so
/// STARTED must wait until the size is in place.
#[tokio::test]
async fn input_sent_at_started_meets_a_sized_terminal() {
    need_docker!();
    let server = start_server(config()).await;
    for run in 0..5 {
        let mut r = req(shared_container(), &["sh", "-c", "read x; stty size"]);
        r.tty = true;
        r.rows = 33;
        r.cols = 93;
        let mut exec = server.exec(r).await;
        exec.started().await;
        exec.send(input_msg("v\n")).await;
        let t = exec.finish().await;
        let code = t.assert_exited();
        let out = t.stdout_str();
        assert!(
            out.contains("33 93") && code == 0,
            "run {run}: exit {code}, output {out:?}"
        );
    }
    server.stop().await;
}

/// Two execd servers on one node, each with a session the client named
/// the same: ending one must not touch the other's processes.
#[tokio::test]
async fn ending_a_session_spares_another_with_the_same_session_id() {
    need_docker!();
    let first = start_server(config()).await;
    let second = start_server(config()).await;
    let n = marker();
    let id = format!("same-id-{n}");
    let mut a = first
        .open(start_msg(
            &id,
            req(shared_container(), &["sleep", &n.to_string()]),
        ))
        .await;
    a.started().await;
    let b_cmd = (n + 1).to_string();
    let mut b = second
        .open(start_msg(&id, req(shared_container(), &["sleep", &b_cmd])))
        .await;
    b.started().await;
    wait_until_running(shared_container(), &format!("sleep {n}")).await;
    wait_until_running(shared_container(), &format!("sleep {}", n + 1)).await;
    drop(b);
    let left = wait_until_gone(shared_container(), &format!("sleep {}", n + 1), GONE_WITHIN).await;
    assert!(
        left.is_empty(),
        "the cancelled session's process survived: {left:?}"
    );
    // Past the window in which a cancelled session still watches for late
    // starters of its own.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(
        !container_processes(shared_container(), &format!("sleep {n}")).is_empty(),
        "ending one session killed another session's process"
    );
    drop(a);
    let left = wait_until_gone(shared_container(), &format!("sleep {n}"), GONE_WITHIN).await;
    assert!(left.is_empty(), "{left:?}");
    second.stop().await;
    first.stop().await;
}

/// A runtime CLI that is docker, except that `container inspect` first
/// sleeps `delay_s` and then, if `inspect_error` is set, fails with that
/// message instead of answering.
fn stub_cli(dir: &tempfile::TempDir, delay_s: &str, inspect_error: Option<&str>) -> String {
    let cli = dir.path().join("docker-stub");
    let answer = match inspect_error {
        Some(msg) => format!("echo '{msg}' >&2; exit 1"),
        None => "exec docker \"$@\"".to_string(),
    };
    std::fs::write(
        &cli,
        format!(
            "#!/bin/sh\nif [ \"$1\" = container ] && [ \"$2\" = inspect ]; then sleep {delay_s}; {answer}; fi\nexec docker \"$@\"\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&cli, std::fs::Permissions::from_mode(0o755)).unwrap();
    cli.to_string_lossy().into_owned()
}

fn with_cli(cli: &str) -> execd::ServerConfig {
    let mut cfg = config();
    cfg.manager.backend = execd_session::BackendConfig::Cli {
        program: cli.to_string(),
    };
    cfg
}

/// Kills what a failed run left in the shared container, so that it does
/// not linger for other tests (busybox has no pkill).
fn kill_in_container(needle: &str) {
    for line in container_processes(shared_container(), needle) {
        if let Some(pid) = line.split_whitespace().next() {
            let _ = std::process::Command::new("docker")
                .args(["exec", shared_container(), "kill", "-9", pid])
                .output();
        }
    }
}

/// A client that gives up while the container is still being checked: the
/// session keeps counting until what it started in the container is gone,
/// so the instance is not reported idle while its process still runs.
#[tokio::test]
async fn a_start_cancelled_during_the_check_counts_until_its_process_is_gone() {
    need_docker!();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = with_cli(&stub_cli(&dir, "3", None));
    // A process that ignores the polite signal lives until SIGKILL.
    cfg.manager.lifecycle.kill_grace = Duration::from_secs(2);
    let server = start_server(cfg).await;
    let n = marker();
    let instance = format!("inst-abandon-{n}");
    let script = format!("trap '' TERM; sleep {n}");
    let mut r = req(shared_container(), &["sh", "-c", &script]);
    r.instance_id = instance.clone();
    let exec = server.exec(r).await;
    wait_until_running(shared_container(), &format!("sleep {n}")).await;
    assert_eq!(server.active(&instance).await, 1);
    drop(exec);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while server.active(&instance).await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "never idle");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = container_processes(shared_container(), &format!("sleep {n}"));
    assert!(
        left.is_empty(),
        "instance idle while its process still runs: {left:?}"
    );
    server.stop().await;
}

/// A container check that fails without saying the container is missing or
/// stopped (an engine error, a timeout) proves nothing about the exec that
/// ran alongside it: whatever it started is ended.
#[tokio::test]
async fn a_failed_container_check_still_ends_what_the_exec_started() {
    need_docker!();
    let dir = tempfile::tempdir().unwrap();
    let cli = stub_cli(
        &dir,
        "1",
        Some("Error response from daemon: 500 Internal Server Error"),
    );
    let server = start_server(with_cli(&cli)).await;
    let n = marker();
    let t = server
        .run(req(shared_container(), &["sleep", &n.to_string()]))
        .await;
    let msg = t.assert_error(tonic::Code::FailedPrecondition);
    assert!(msg.contains("500"), "{msg}");
    let left = wait_until_gone(shared_container(), &format!("sleep {n}"), GONE_WITHIN).await;
    kill_in_container(&format!("sleep {n}"));
    assert!(
        left.is_empty(),
        "left running after a failed check: {left:?}"
    );
    server.stop().await;
}

fn keeping() -> execd::ServerConfig {
    let mut cfg = config();
    cfg.manager.lifecycle.keep_background_processes = true;
    cfg
}

/// What a session's process leaves running in the background is ended
/// once it exited and its output is drained, unless the server keeps them.
#[tokio::test]
async fn background_processes_are_ended_after_the_exit_unless_kept() {
    need_docker!();
    for keep in [false, true] {
        let server = start_server(if keep { keeping() } else { config() }).await;
        let n = marker();
        let script = format!("sleep {n} & exit 0");
        let t = server
            .run(req(shared_container(), &["sh", "-c", &script]))
            .await;
        assert_eq!(t.assert_exited(), 0);
        let needle = format!("sleep {n}");
        if keep {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let left = container_processes(shared_container(), &needle);
            kill_in_container(&needle);
            assert!(!left.is_empty(), "kept background process is gone");
        } else {
            // Gone as EXITED arrives, not some time later.
            let left = container_processes(shared_container(), &needle);
            kill_in_container(&needle);
            assert!(left.is_empty(), "left running after EXITED: {left:?}");
        }
        server.stop().await;
    }
}

/// A finished session's id used again: ending the new session leaves the
/// first one's kept background process alone.
#[tokio::test]
async fn a_reused_session_id_does_not_reach_the_earlier_sessions_processes() {
    need_docker!();
    let server = start_server(keeping()).await;
    let n = marker();
    let id = format!("reused-{n}");
    let script = format!("sleep {n} & exit 0");
    let t = server
        .open(start_msg(
            &id,
            req(shared_container(), &["sh", "-c", &script]),
        ))
        .await
        .finish()
        .await;
    assert_eq!(t.assert_exited(), 0);
    wait_until_running(shared_container(), &format!("sleep {n}")).await;
    let second_cmd = (n + 1).to_string();
    let mut second = server
        .open(start_msg(
            &id,
            req(shared_container(), &["sleep", &second_cmd]),
        ))
        .await;
    second.started().await;
    wait_until_running(shared_container(), &format!("sleep {}", n + 1)).await;
    drop(second);
    let left = wait_until_gone(shared_container(), &format!("sleep {}", n + 1), GONE_WITHIN).await;
    assert!(left.is_empty(), "{left:?}");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let kept = container_processes(shared_container(), &format!("sleep {n}"));
    kill_in_container(&format!("sleep {n}"));
    assert!(
        !kept.is_empty(),
        "ending the second session killed the first one's process"
    );
    server.stop().await;
}
