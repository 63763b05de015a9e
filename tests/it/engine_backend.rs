//! What only the Engine API backend can get wrong: the engine going away
//! under running sessions. (Every other guarantee is tested for both
//! backends by running the whole suite with `EXECD_BACKEND=engine-api`.)
//!
//! The engine's socket is reached through a small proxy the test can cut,
//! which is what a restarting engine or a vanished socket looks like from
//! execd: open connections drop and new ones are refused.

use crate::common::proxy;

use std::path::PathBuf;
use std::time::Duration;

use crate::common::*;
use execd_session::BackendConfig;
use proxy::UnixProxy;
use tonic::Code;

const GONE_WITHIN: Duration = Duration::from_secs(6);

fn engine_config(socket: PathBuf) -> execd::ServerConfig {
    let mut cfg = config();
    cfg.manager.backend = BackendConfig::EngineApi { socket };
    cfg
}

#[tokio::test]
async fn engine_gone_mid_session_ends_it_unavailable_without_a_hang() {
    need_docker!();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("engine.sock");
    let engine = UnixProxy::start(&socket, "/var/run/docker.sock".into());
    let server = start_server(engine_config(socket)).await;
    let (exec, n) = server.exec_sleeper(shared_container()).await;
    engine.stop();
    // Bounded well above the engine client's own timeouts (connect 5 s,
    // answer 30 s), so a hang fails; 20 s was once exceeded on a fully
    // loaded 2-core machine while the session's reaper swept /proc.
    let t = tokio::time::timeout(Duration::from_secs(90), exec.finish())
        .await
        .expect("the session ends once the engine is gone");
    let msg = t.assert_error(Code::Unavailable);
    assert!(msg.contains("engine"), "{msg}");
    // The process the engine left behind is still the session's: it goes.
    let left = wait_until_gone(shared_container(), &format!("sleep {n}"), GONE_WITHIN).await;
    assert!(left.is_empty(), "{left:?}");
    // And new sessions are refused as unavailable, not hung.
    let t = server.run(req(shared_container(), &["true"])).await;
    t.assert_error(Code::Unavailable);
}

#[tokio::test]
async fn no_engine_at_start_is_unavailable() {
    need_docker!();
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(engine_config(dir.path().join("nobody.sock"))).await;
    let t = server.run(req(shared_container(), &["true"])).await;
    let msg = t.assert_error(Code::Unavailable);
    assert!(msg.contains("engine"), "{msg}");
}

#[tokio::test]
async fn tty_output_survives_stdin_eof_before_the_process_writes() {
    need_docker!();
    // The engine closes a tty exec's console when its input is closed, so
    // a client's EOF must become the terminal's EOF character, never a
    // half-close that would swallow what the process prints next.
    let server = start_server(engine_config("/var/run/docker.sock".into())).await;
    let mut r = req(
        shared_container(),
        &["sh", "-c", "sleep 0.3; echo still-here"],
    );
    r.tty = true;
    let mut exec = server.exec(r).await;
    exec.close_send();
    let t = exec.finish().await;
    assert_eq!(t.assert_exited(), 0);
    assert!(t.stdout_str().contains("still-here"), "{t:?}");
}
