//! What execd asks of the engine, and keeps, for requests outside sessions,
//! against the real engine and the real binary.
//!
//! A slow engine is the real one behind a wrapper the test controls: a
//! runtime CLI script (`--runtime-cli`, the CLI route) or a unix-socket
//! proxy in front of the Engine API (`--engine-socket`, the API route).
//! Either holds every inspect of one container until the test releases it
//! and logs when each call starts and ends, so the log shows how many ran
//! at once. Everything else passes straight through.
//!
//! - A flood of hundreds of such requests runs at most `MAX_ENGINE_CALLS`
//!   engine calls at once; the rest are refused (429, RESOURCE_EXHAUSTED,
//!   a kube `Status` TooManyRequests) on every door while the gate is
//!   full, and a session started meanwhile runs normally.
//! - Thousands of Docker-door create/start cycles with 250 KiB commands
//!   grow execd's resident memory by less than 64 MiB.

use crate::common::docker_api;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;
use bytes::Bytes;
use docker_api::*;
use execd_proto::cri::runtime_service_client::RuntimeServiceClient;
use execd_proto::cri::ExecRequest;
use execd_session::{BackendConfig, ManagerConfig, MAX_ENGINE_CALLS};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// Requests sent at once: far more than the gate lets through.
const FLOOD: usize = 200;
const DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// How the slow engine is reached.
#[derive(Debug, Clone, Copy)]
enum Route {
    /// A runtime CLI script around the real docker CLI (the CLI backend).
    Cli,
    /// A proxy in front of the real Engine API socket (engine-api backend).
    Api,
}

/// The wrapped engine: inspects of `slow` wait for [`SlowEngine::release`].
struct SlowEngine {
    dir: tempfile::TempDir,
    log: PathBuf,
    released: tokio::sync::watch::Sender<bool>,
}

impl SlowEngine {
    fn start(route: Route, slow: &str) -> (SlowEngine, ManagerConfig) {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("calls.log");
        let (released, _) = tokio::sync::watch::channel(false);
        let mut manager = config().manager;
        match route {
            Route::Cli => {
                // Not named `docker`: execd would ask the Engine API then.
                let cli = dir.path().join("slow-docker");
                let release = dir.path().join("release");
                std::fs::write(
                    &cli,
                    format!(
                        "#!/bin/sh\n\
                         case \"$*\" in\n\
                         *inspect*{slow}*)\n\
                         \techo start >> {log}\n\
                         \twhile [ ! -e {release} ]; do sleep 0.05; done\n\
                         \tdocker \"$@\"; rc=$?\n\
                         \techo end >> {log}\n\
                         \texit $rc;;\n\
                         esac\n\
                         exec docker \"$@\"\n",
                        log = log.display(),
                        release = release.display(),
                    ),
                )
                .unwrap();
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&cli, std::fs::Permissions::from_mode(0o755)).unwrap();
                manager.backend = BackendConfig::Cli {
                    program: cli.to_string_lossy().into_owned(),
                };
                let mut rx = released.subscribe();
                tokio::spawn(async move {
                    let _ = rx.wait_for(|r| *r).await;
                    std::fs::write(release, b"").unwrap();
                });
            }
            Route::Api => {
                let socket = dir.path().join("engine.sock");
                let listener = UnixListener::bind(&socket).unwrap();
                tokio::spawn(proxy(
                    listener,
                    slow.to_string(),
                    log.clone(),
                    released.subscribe(),
                ));
                manager.backend = BackendConfig::EngineApi { socket };
            }
        }
        let engine = SlowEngine { dir, log, released };
        (engine, manager)
    }

    fn release(&self) {
        self.released.send_replace(true);
    }

    fn started(&self) -> usize {
        calls(&self.log).0
    }

    /// The most calls that were in flight at once.
    fn most_at_once(&self) -> usize {
        calls(&self.log).1
    }
}

/// Calls started, and the most in flight at once, from a call log.
fn calls(log: &Path) -> (usize, usize) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let (mut started, mut now, mut most) = (0, 0i64, 0i64);
    for line in text.lines() {
        match line {
            "start" => {
                started += 1;
                now += 1;
            }
            "end" => now -= 1,
            other => panic!("call log line {other:?}"),
        }
        most = most.max(now);
    }
    (started, most as usize)
}

fn append(log: &Path, line: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    file.write_all(format!("{line}\n").as_bytes()).unwrap();
}

/// Forwards every connection to the real engine; a request for `slow`'s
/// inspect waits for the release first and counts as a call until its
/// answer is on its way back (or the client gave up).
async fn proxy(
    listener: UnixListener,
    slow: String,
    log: PathBuf,
    released: tokio::sync::watch::Receiver<bool>,
) {
    while let Ok((mut client, _)) = listener.accept().await {
        let (slow, log, mut released) = (slow.clone(), log.clone(), released.clone());
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 8192];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match client.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let held = String::from_utf8_lossy(&head).contains(&format!("/containers/{slow}/json"));
            let Ok(mut engine) = UnixStream::connect(DOCKER_SOCKET).await else {
                return;
            };
            if !held {
                let _ = engine.write_all(&head).await;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut engine).await;
                return;
            }
            append(&log, "start");
            tokio::select! {
                _ = released.wait_for(|r| *r) => {}
                _ = client.read(&mut buf) => {
                    append(&log, "end");
                    return;
                }
            }
            let _ = engine.write_all(&head).await;
            let n = engine.read(&mut buf).await.unwrap_or(0);
            append(&log, "end");
            let _ = client.write_all(&buf[..n]).await;
            let _ = tokio::io::copy_bidirectional(&mut client, &mut engine).await;
        });
    }
}

const WEBSOCKET: &[(&str, &str)] = &[
    ("connection", "Upgrade"),
    ("upgrade", "websocket"),
    ("sec-websocket-version", "13"),
    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
];

/// Every door's out-of-session queries, while the gate is full: each is
/// refused as busy, in its door's shape.
async fn every_door_refuses(server: &TestServer, slow: &str) {
    let busy = |what: &str, status: StatusCode, body: &Bytes| {
        assert_eq!(status, 429, "{what}: {}", text(body));
        let body = json(body);
        assert!(
            body["message"].as_str().unwrap().contains("busy"),
            "{what}: {body}"
        );
        body
    };
    let create = format!("/containers/{slow}/exec");
    let inspect = format!("/v1.44/containers/{slow}/json");
    let pod = format!("/api/v1/namespaces/default/pods/{slow}");
    let attach = format!("{pod}/attach?stdout=true");
    let terminal = "/terminal/ws?instance=1&tty=false&command=true";
    let (created, inspected, pod_get, pod_list, attached, listed, ws, cri) = tokio::join!(
        request(server, "POST", &create, &[], r#"{"Cmd":["true"]}"#),
        request(server, "GET", &inspect, &[], ""),
        request(server, "GET", &pod, &[], ""),
        request(server, "GET", "/api/v1/pods", &[], ""),
        request(server, "GET", &attach, WEBSOCKET, ""),
        request(server, "GET", "/api/containers", &[], ""),
        request(server, "GET", terminal, WEBSOCKET, ""),
        async {
            RuntimeServiceClient::new(server.channel().await)
                .exec(ExecRequest {
                    container_id: slow.into(),
                    cmd: vec!["true".into()],
                    stdout: true,
                    ..Default::default()
                })
                .await
        },
    );
    busy("docker create", created.0, &created.2);
    busy("docker inspect", inspected.0, &inspected.2);
    for (what, answer) in [
        ("pod get", pod_get),
        ("pod list", pod_list),
        ("pod attach", attached),
    ] {
        let status = busy(what, answer.0, &answer.2);
        assert_eq!(status["kind"], "Status", "{what}");
        assert_eq!(status["reason"], "TooManyRequests", "{what}");
    }
    busy("web container list", listed.0, &listed.2);
    busy("/terminal/ws", ws.0, &ws.2);
    let status = cri.expect_err("CRI Exec is refused");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
}

async fn engine_calls_outside_sessions_are_bounded(route: Route) {
    need_docker!();
    let session_container = shared_container();
    let slow = ContainerSpec::idle(&format!("limits-{route:?}").to_lowercase()).run();
    let (engine, manager) = SlowEngine::start(route, &slow.0);
    let mut cfg = config();
    cfg.manager = manager;
    cfg.web.enabled = true;
    cfg.terminal_instance_label = Some("execd-test".into());
    let server = start_server(cfg).await;
    // The flood: docker creates through the CLI (their check runs the
    // CLI), container inspects through the Engine API.
    let (method, path, body) = match route {
        Route::Cli => (
            "POST",
            format!("/containers/{}/exec", slow.0),
            r#"{"Cmd":["true"]}"#,
        ),
        Route::Api => ("GET", format!("/containers/{}/json", slow.0), ""),
    };
    let answered = AtomicUsize::new(0);
    let flood = futures_util::future::join_all((0..FLOOD).map(|_| async {
        let (status, _, body) = request(&server, method, &path, &[], body).await;
        answered.fetch_add(1, Ordering::SeqCst);
        (status, body)
    }));
    let meanwhile = async {
        let deadline = Instant::now() + PATIENCE;
        while engine.started() < MAX_ENGINE_CALLS {
            assert!(Instant::now() < deadline, "the flood never filled the gate");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A session started now starts (its end is read after the
        // release: the held calls have a deadline of their own).
        let session = async {
            let mut exec = server
                .exec(req(session_container, &["echo", "meanwhile"]))
                .await;
            exec.started().await;
            exec
        };
        let ((), exec) = tokio::join!(every_door_refuses(&server, &slow.0), session);
        // Everything but the held calls has its answer; then the engine
        // answers them.
        while answered.load(Ordering::SeqCst) < FLOOD - MAX_ENGINE_CALLS {
            assert!(Instant::now() < deadline, "the flood was not answered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        engine.release();
        exec
    };
    let (answers, exec) = tokio::join!(flood, meanwhile);
    let transcript = exec.finish().await;
    assert_eq!(transcript.assert_exited(), 0);
    assert_eq!(transcript.stdout_str(), "meanwhile\n");
    let mut by_status = std::collections::BTreeMap::<u16, usize>::new();
    for (status, _) in &answers {
        *by_status.entry(status.as_u16()).or_default() += 1;
    }
    let ok = answers.iter().filter(|(s, _)| s.is_success()).count();
    let refused: Vec<_> = answers.iter().filter(|(s, _)| *s == 429).collect();
    assert_eq!(
        (ok, refused.len()),
        (MAX_ENGINE_CALLS, FLOOD - MAX_ENGINE_CALLS),
        "the held calls succeed once released, the rest are refused: {by_status:?}"
    );
    for (_, body) in refused {
        assert!(json(body)["message"].as_str().unwrap().contains("busy"));
    }
    assert_eq!(
        engine.most_at_once(),
        MAX_ENGINE_CALLS,
        "never more at once"
    );
    // The gate is free again.
    let (status, _, body) = request(&server, method, &path, &[], body).await;
    assert!(status.is_success(), "{status}: {}", text(&body));
    drop(engine.dir);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn engine_calls_are_bounded_through_the_cli() {
    engine_calls_outside_sessions_are_bounded(Route::Cli).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn engine_calls_are_bounded_through_the_engine_api() {
    engine_calls_outside_sessions_are_bounded(Route::Api).await;
}

/// Create/start cycles the memory test runs: most are refused at their
/// start (quick, no engine call), some run (an engine exec each, slow on
/// a loaded engine); both leave a finished exec in the table.
const REFUSED_CYCLES: usize = 2000;
const RUN_CYCLES: usize = 100;
const AT_ONCE: usize = 8;
/// What execd's resident memory may grow by over them.
const ALLOWED_GROWTH_KIB: u64 = 64 * 1024;

/// `VmRSS` and `VmHWM` of `pid`, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// One HTTP/1.1 request on execd's unix socket; the response.
async fn over_socket(
    socket: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: String,
) -> http::Response<hyper::body::Incoming> {
    let stream = UnixStream::connect(socket).await.unwrap();
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn.with_upgrades());
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(http_body_util::Full::new(Bytes::from(body)))
        .unwrap();
    sender.send_request(req).await.unwrap()
}

/// The same, read to its end: status and body.
async fn exchange(socket: &Path, method: &str, path: &str, body: String) -> (StatusCode, Bytes) {
    use http_body_util::BodyExt;
    let (parts, body) = over_socket(socket, method, path, &[], body)
        .await
        .into_parts();
    (parts.status, body.collect().await.unwrap().to_bytes())
}

/// Creates an exec in `container` for pod `pod` (its instance) and starts
/// it: its id and the start's status.
async fn create_and_start(
    socket: &Path,
    pod: &str,
    container: &str,
    create: &str,
) -> (String, StatusCode) {
    let path = format!("/api/v1/namespaces/default/pods/{pod}/exec?container={container}");
    let (status, body) = exchange(socket, "POST", &path, create.to_string()).await;
    assert_eq!(status, 201, "{}", text(&body));
    let id = json(&body)["Id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/exec/{id}/start");
    let (status, body) = exchange(socket, "POST", &path, "{}".into()).await;
    assert!(status == 200 || status == 429, "{status}: {}", text(&body));
    (id, status)
}

/// Thousands of Docker-door execs with 250 KiB commands, each created,
/// started and finished: the table keeps about a kilobyte of each (what
/// `GET /exec/{id}/json` shows), so the real binary's resident memory
/// grows by less than 64 MiB (keeping the commands would be 500 MB).
///
/// With `--max-sessions-per-instance 1` and one session holding pod
/// `busy`, every start in that pod is refused at once: those cycles cost
/// no engine exec; the cycles in pods of their own run `true` for real.
#[tokio::test(flavor = "multi_thread")]
async fn docker_exec_cycles_with_big_commands_keep_memory_bounded() {
    use futures_util::StreamExt;
    need_docker!();
    let c = shared_container();
    let execd = ExecdProcess::start_logging(&["--max-sessions-per-instance", "1"]).await;
    let socket = execd.socket.clone();
    let hold = |command: serde_json::Value| {
        serde_json::json!({"cmd": command, "attachStdout": true}).to_string()
    };
    // The session that fills pod `busy`, kept for the whole test.
    let (status, body) = exchange(
        &socket,
        "POST",
        &format!("/api/v1/namespaces/default/pods/busy/exec?container={c}"),
        hold(serde_json::json!(["sleep", "600"])),
    )
    .await;
    assert_eq!(status, 201, "{}", text(&body));
    let id = json(&body)["Id"].as_str().unwrap().to_string();
    let upgrade = [("connection", "Upgrade"), ("upgrade", "tcp")];
    let started = over_socket(
        &socket,
        "POST",
        &format!("/api/v1/exec/{id}/start"),
        &upgrade,
        "{}".into(),
    )
    .await;
    assert_eq!(started.status(), 101);
    let _busy = hyper::upgrade::on(started).await.unwrap();
    // 250 arguments of 1 KiB: 250 KiB of command, under the 256 KiB cap.
    let command: Vec<String> = std::iter::once("true".to_string())
        .chain((0..250).map(|i| format!("{i:04}{}", "a".repeat(1020))))
        .collect();
    let create = hold(serde_json::json!(command));
    let run = |cycles: usize, own_pods: bool| {
        let (socket, create) = (socket.clone(), create.clone());
        futures_util::stream::iter(0..cycles)
            .map(move |i| {
                let (socket, create) = (socket.clone(), create.clone());
                let pod = if own_pods {
                    format!("run-{i}")
                } else {
                    "busy".into()
                };
                async move {
                    let (id, status) = create_and_start(&socket, &pod, c, &create).await;
                    let expected = if own_pods { 200 } else { 429 };
                    assert_eq!(status, expected, "pod {pod}");
                    id
                }
            })
            .buffer_unordered(AT_ONCE)
            .collect::<Vec<String>>()
    };
    // Warm up: thread pools, allocator arenas, connection buffers.
    tokio::join!(run(100, false), run(10, true));
    let (rss_before, hwm_before) = memory_kib(execd.pid());
    let (refused, ran) = tokio::join!(run(REFUSED_CYCLES, false), run(RUN_CYCLES, true));
    let (rss_after, hwm_after) = memory_kib(execd.pid());
    eprintln!(
        "execd over {} create/start cycles of 250 KiB commands ({} ran): \
         VmRSS {rss_before} -> {rss_after} KiB, VmHWM {hwm_before} -> {hwm_after} KiB",
        refused.len() + ran.len(),
        ran.len(),
    );
    assert!(
        rss_after.saturating_sub(rss_before) < ALLOWED_GROWTH_KIB,
        "VmRSS grew from {rss_before} to {rss_after} KiB"
    );
    assert!(
        hwm_after.saturating_sub(hwm_before) < ALLOWED_GROWTH_KIB,
        "VmHWM grew from {hwm_before} to {hwm_after} KiB"
    );
    // A finished exec still answers its inspect, with the command cut.
    for (id, exit_code) in [(&ran[0], Some(0)), (&refused[0], None)] {
        let (status, body) = exchange(
            &socket,
            "GET",
            &format!("/api/v1/exec/{id}/json"),
            String::new(),
        )
        .await;
        assert_eq!(status, 200, "{}", text(&body));
        let shown = json(&body);
        assert_eq!(shown["Running"], false);
        assert_eq!(shown["ExitCode"].as_i64(), exit_code, "{shown}");
        assert_eq!(shown["ProcessConfig"]["entrypoint"], "true");
        let arguments = shown["ProcessConfig"]["arguments"].as_array().unwrap();
        let kept: usize = arguments.iter().map(|a| a.as_str().unwrap().len()).sum();
        assert!(
            kept + 4 <= execd::doors::docker::SHOWN_COMMAND,
            "{kept} bytes of arguments kept"
        );
    }
    assert!(execd.alive());
    execd.terminate().await;
}
