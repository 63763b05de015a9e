//! The Docker door's HTTP API spoken raw against a real engine: the pod
//! exec API and the Engine API paths exactly as written (frames, upgrades,
//! status codes, versions), tokens, and attaching to a container's main
//! process. The docker CLI and docker-py are in `docker_door.rs`.

use crate::common::docker_api;

use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use docker_api::*;
use http_body_util::{BodyExt, Full};
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread")]
async fn pod_api_upgrade_frames_and_exit_code() {
    need_docker!();
    let c = shared_container();
    let server = start_server(config()).await;
    // 1 MiB on each stream, written concurrently so frames interleave.
    let script = "head -c 1048576 /dev/zero | tr '\\0' a & \
                  head -c 1048576 /dev/zero | tr '\\0' b >&2; wait; exit 4";
    let id = pod_create(
        &server,
        c,
        serde_json::json!({"tty": false, "attachStdout": true, "attachStderr": true,
                           "cmd": ["sh", "-c", script]}),
    )
    .await;
    // The pod is the container here (no ?container=).
    let raw = start_hijacked(&server, &format!("/api/v1/exec/{id}/start"), b"").await;
    let (out, err) = unframe(&raw);
    assert_eq!(out.len(), 1 << 20);
    assert!(out.iter().all(|b| *b == b'a'));
    assert_eq!(err.len(), 1 << 20);
    assert!(err.iter().all(|b| *b == b'b'));
    // Right after EOF the exit code is there.
    let (status, _, body) =
        request(&server, "GET", &format!("/api/v1/exec/{id}/json"), &[], "").await;
    assert_eq!(status, 200);
    let v = json(&body);
    assert_eq!(v["ExitCode"], 4, "{v}");
    assert_eq!(v["Running"], false);
    assert_eq!(v["ProcessConfig"]["entrypoint"], "sh");
    assert_eq!(v["ContainerID"], c);
    // A second start is a conflict.
    let (status, _, body) = request(
        &server,
        "POST",
        &format!("/api/v1/exec/{id}/start"),
        &[],
        "{}",
    )
    .await;
    assert_eq!(status, 409, "{}", text(&body));
    assert!(json(&body)["message"].is_string());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_api_stdin_half_close_and_plain_200() {
    need_docker!();
    let c = shared_container();
    let server = start_server(config()).await;
    // The pod counts the session; ?container= names the container.
    let cat = exec_create(
        &server,
        &format!("/api/v1/namespaces/default/pods/my-pod/exec?container={c}"),
        &[],
        r#"{"attachStdin":true,"attachStdout":true,"cmd":["cat"]}"#,
    )
    .await;
    let raw = start_hijacked(
        &server,
        &format!("/api/v1/exec/{cat}/start"),
        b"hello\x00bytes",
    )
    .await;
    assert_eq!(unframe(&raw).0, b"hello\x00bytes");

    // Without the upgrade header: 200 and the frames on the body.
    let plain = exec_create(
        &server,
        &format!("/api/v1/namespaces/default/pods/x/exec?container={c}"),
        &[],
        r#"{"attachStdout":true,"attachStderr":true,"cmd":["sh","-c","echo hi; echo oops >&2"]}"#,
    )
    .await;
    let (status, headers, body) = request(
        &server,
        "POST",
        &format!("/api/v1/exec/{plain}/start"),
        &[],
        "{}",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        headers["content-type"],
        "application/vnd.docker.multiplexed-stream"
    );
    let (out, err) = unframe(&body);
    assert_eq!((text(&out), text(&err)), ("hi\n".into(), "oops\n".into()));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_api_refusals_and_resize() {
    need_docker!();
    let c = shared_container();
    let server = start_server(config()).await;
    let create_path = format!("/api/v1/namespaces/default/pods/p/exec?container={c}");
    for bad in [
        "{",
        r#"{"cmd":"sh"}"#,
        r#"{"cmd":[]}"#,
        r#"{"cmd":["sh"],"workingDir":"relative"}"#,
        r#"{"cmd":["sh"],"user":"-u"}"#,
    ] {
        let (status, _, body) = request(&server, "POST", &create_path, &[], bad).await;
        assert_eq!(status, 400, "{bad}: {}", text(&body));
        assert!(json(&body)["message"].is_string(), "{bad}");
    }
    let (status, _, body) = request(
        &server,
        "POST",
        "/api/v1/namespaces/default/pods/p/exec?container=nosuch-container",
        &[],
        r#"{"cmd":["true"]}"#,
    )
    .await;
    assert_eq!(status, 404, "{}", text(&body));
    assert!(json(&body)["message"]
        .as_str()
        .unwrap()
        .contains("No such container"));

    for path in [
        "/api/v1/exec/exec-nope/start",
        "/api/v1/exec/exec-nope/resize?h=1&w=1",
    ] {
        let (status, _, _) = request(&server, "POST", path, &[], "").await;
        assert_eq!(status, 404, "{path}");
    }
    let (status, _, _) = request(&server, "GET", "/api/v1/exec/exec-nope/json", &[], "").await;
    assert_eq!(status, 404);

    // Resize before the start becomes the initial size; one right after
    // the start is applied too.
    let body = r#"{"tty":true,"attachStdin":true,"attachStdout":true,"cmd":["sh","-c","sleep 1; stty size"]}"#;
    let id = exec_create(&server, &create_path, &[], body).await;
    for bad in ["h=-1&w=5", "h=5", "w=5", "h=x&w=5", ""] {
        let (status, _, body) = request(
            &server,
            "POST",
            &format!("/api/v1/exec/{id}/resize?{bad}"),
            &[],
            "",
        )
        .await;
        assert_eq!(status, 400, "{bad}: {}", text(&body));
    }
    let (status, _, _) = request(
        &server,
        "POST",
        &format!("/api/v1/exec/{id}/resize?h=20&w=70"),
        &[],
        "",
    )
    .await;
    assert_eq!(status, 200);
    let response = post_upgrade(&server, &format!("/api/v1/exec/{id}/start"), &[], "").await;
    assert_eq!(
        response.headers()["content-type"],
        "application/vnd.docker.raw-stream"
    );
    let (status, _, _) = request(
        &server,
        "POST",
        &format!("/api/v1/exec/{id}/resize?h=25&w=90"),
        &[],
        "",
    )
    .await;
    assert_eq!(status, 200);
    let raw = read_to_end(&mut upgraded(response).await).await;
    assert!(text(&raw).contains("25 90"), "{}", text(&raw));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn engine_api_paths_versions_and_privileged() {
    need_docker!();
    let c = shared_container();
    let server = start_server(config()).await;
    for path in ["/_ping", "/v1.41/_ping", "/v1.53/_ping"] {
        let (status, headers, body) = request(&server, "GET", path, &[], "").await;
        assert_eq!((status.as_u16(), text(&body)), (200, "OK".into()), "{path}");
        assert_eq!(headers["api-version"], execd::doors::docker::API_VERSION);
        assert_eq!(headers["ostype"], "linux");
    }
    let (status, _, _) = request(&server, "HEAD", "/_ping", &[], "").await;
    assert_eq!(status, 200);
    let (_, _, body) = request(&server, "GET", "/v1.44/version", &[], "").await;
    assert_eq!(json(&body)["ApiVersion"], execd::doors::docker::API_VERSION);
    assert_eq!(
        json(&body)["MinAPIVersion"],
        execd::doors::docker::MIN_API_VERSION
    );
    let (status, _, body) = request(&server, "GET", "/v1.12/version", &[], "").await;
    assert_eq!(status, 400, "{}", text(&body));
    let (status, _, body) = request(&server, "GET", "/nope/version", &[], "").await;
    assert_eq!(status, 404);
    assert!(json(&body)["message"]
        .as_str()
        .unwrap()
        .contains("is not served by execd"));
    let (status, _, body) = request(
        &server,
        "GET",
        &format!("/v1.44/containers/{c}/json"),
        &[],
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["Name"], format!("/{c}"));
    // Attach is served for live streams only: no logs to replay.
    let (status, _, body) =
        request(&server, "POST", &format!("/containers/{c}/attach"), &[], "").await;
    assert_eq!(status, 400, "{}", text(&body));
    assert!(json(&body)["message"]
        .as_str()
        .unwrap()
        .contains("stream=1"));
    let (status, _, body) = request(
        &server,
        "POST",
        &format!("/v1.44/containers/{c}/exec"),
        &[],
        r#"{"Cmd":["id"],"Privileged":true}"#,
    )
    .await;
    assert_eq!(status, 403, "{}", text(&body));
    let id = exec_create(
        &server,
        &format!("/v1.44/containers/{c}/exec"),
        &[],
        r#"{"Cmd":["true"],"AttachStdout":true}"#,
    )
    .await;
    assert_eq!(id.len(), 64);
    let (_, _, body) = request(&server, "GET", &format!("/exec/{id}/json"), &[], "").await;
    assert_eq!(json(&body)["Running"], false);
    assert!(json(&body)["ExitCode"].is_null());
    let (status, _, body) = request(
        &server,
        "POST",
        &format!("/v1.44/exec/{id}/start"),
        &[],
        r#"{"Detach":true}"#,
    )
    .await;
    assert_eq!(status, 400, "{}", text(&body));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_guard_every_path_but_ping_and_version() {
    need_docker!();
    let c = shared_container();
    let (cfg, _tokens) = with_tokens(config(), "s3cret\n");
    let server = start_server(cfg).await;
    for path in ["/_ping", "/version", "/v1.44/_ping", "/v1.44/version"] {
        let (status, _, _) = request(&server, "GET", path, &[], "").await;
        assert_eq!(status, 200, "{path}");
    }
    let guarded = [
        ("GET", format!("/containers/{c}/json")),
        ("GET", format!("/v1.44/containers/{c}/json")),
        ("POST", format!("/containers/{c}/exec")),
        ("POST", format!("/v1.44/containers/{c}/exec")),
        ("POST", "/exec/x/start".into()),
        ("POST", "/v1.44/exec/x/resize?h=1&w=1".into()),
        ("GET", "/exec/x/json".into()),
        ("POST", format!("/api/v1/namespaces/default/pods/{c}/exec")),
        ("POST", "/api/v1/exec/x/start".into()),
        ("POST", "/api/v1/exec/x/resize?h=1&w=1".into()),
        ("GET", "/api/v1/exec/x/json".into()),
    ];
    for (method, path) in &guarded {
        for auth in [None, Some("Bearer wrong"), Some("s3cret")] {
            let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", *a)).collect();
            let (status, _, body) = request(&server, method, path, &headers, "{}").await;
            assert_eq!(status, 401, "{method} {path} {auth:?}");
            assert!(json(&body)["message"].is_string());
        }
        let (status, _, _) = request(
            &server,
            method,
            path,
            &[("authorization", "Bearer s3cret")],
            r#"{"Cmd":["true"],"cmd":["true"]}"#,
        )
        .await;
        assert_ne!(status, 401, "{method} {path}");
    }
    // The docker CLI, with and without the token in its config.
    let without = DockerCli::new(&server);
    let with = DockerCli::new(&server).with_token("s3cret");
    let (denied, allowed) = tokio::task::spawn_blocking(move || {
        (
            without.run(&["exec", c, "echo", "hi"], b""),
            with.run(&["exec", c, "echo", "hi"], b""),
        )
    })
    .await
    .unwrap();
    assert_ne!(denied.status.code(), Some(0));
    assert!(text(&denied.stderr).contains("Bearer"), "{denied:?}");
    assert_eq!(text(&allowed.stdout), "hi\n", "{allowed:?}");
    server.stop().await;
}

/// `POST /containers/{id}/attach` reaches the container's main process, and
/// neither a half-close nor leaving stops it (no ^D is typed into it).
#[tokio::test(flavor = "multi_thread")]
async fn engine_attach_reaches_pid1_and_leaving_keeps_it_running() {
    need_docker!();
    let server = start_server(config()).await;
    let c = ContainerSpec::shell("attach-docker").run();
    let name = c.0.clone();
    let path = format!("/v1.41/containers/{name}/attach?stream=1&stdin=1&stdout=1&stderr=1");
    let mut io = upgraded(post_upgrade(&server, &path, &[], "").await).await;
    // $((6*7)) is computed by the shell: seeing 42 means PID 1 ran it.
    type_until(&mut io, b"echo attached-$((6*7))\n", "attached-42").await;
    io.shutdown().await.unwrap();
    drop(io);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(c.running(), "PID 1 keeps running");
    let (status, _, body) = request(
        &server,
        "POST",
        "/containers/no-such-container/attach?stream=1&stdout=1",
        &[],
        "",
    )
    .await;
    assert_eq!(status, 404, "{}", text(&body));
    server.stop().await;
}

/// Without tokens, a request that names execd by a domain (what a DNS
/// rebinding page sends) is refused on TCP; addresses and localhost pass.
#[tokio::test]
async fn token_less_tcp_answers_only_addresses_and_localhost() {
    let server = start_server(config()).await;
    let mut sender = http1_connect(&server).await;
    for (host, expected) in [
        ("rb.attacker.example:50051", 403),
        ("localhost:50051", 200),
        ("127.0.0.1", 200),
    ] {
        let req = http::Request::builder()
            .method("GET")
            .uri("/_ping")
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = sender.send_request(req).await.unwrap();
        assert_eq!(response.status(), expected, "{host}");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        if expected == 403 {
            assert!(text(&body).contains("DNS rebinding"), "{}", text(&body));
        }
    }
    server.stop().await;
}

/// A resize sent at once after the start (as docker-py's `exec_resize`
/// right after `exec_start(socket=True)` does) reaches the terminal even
/// while the session is still starting; the real engine prints `33 101`
/// for the same exchange.
#[tokio::test(flavor = "multi_thread")]
async fn resize_right_after_start_is_applied() {
    need_docker!();
    let c = shared_container();
    let server = start_server(config()).await;
    let id = exec_create(
        &server,
        &format!("/v1.44/containers/{c}/exec"),
        &[("content-type", "application/json")],
        r#"{"Tty":true,"AttachStdin":true,"AttachStdout":true,"Cmd":["sh","-c","read x; stty size"]}"#,
    )
    .await;
    let response = post_upgrade(
        &server,
        &format!("/v1.44/exec/{id}/start"),
        &[("content-type", "application/json")],
        r#"{"Detach":false,"Tty":true}"#,
    )
    .await;
    let (status, _, _) = request(
        &server,
        "POST",
        &format!("/v1.44/exec/{id}/resize?h=33&w=101"),
        &[],
        "",
    )
    .await;
    assert_eq!(status, 200);
    let mut io = upgraded(response).await;
    io.write_all(b"go\n").await.unwrap();
    let raw = read_to_end(&mut io).await;
    assert!(text(&raw).contains("33 101"), "{}", text(&raw));
    server.stop().await;
}

/// An exec is its creator's: another token gets 404 on its start, resize
/// and inspect, as for an id that never existed. Each token may keep at
/// most `MAX_CREATED_PER_OWNER` execs created and not started (429
/// beyond), which leaves the others' room alone.
#[tokio::test(flavor = "multi_thread")]
async fn execs_belong_to_their_token_and_are_capped_per_token() {
    need_docker!();
    let c = shared_container();
    let (cfg, _tokens) = with_tokens(config(), "alice-token\nbob-token\n");
    let server = start_server(cfg).await;
    const ALICE: &[(&str, &str)] = &[("authorization", "Bearer alice-token")];
    const BOB: &[(&str, &str)] = &[("authorization", "Bearer bob-token")];
    // One body for both APIs: each reads its own spelling.
    const MINE: &str =
        r#"{"Cmd":["echo","mine"],"cmd":["echo","mine"],"AttachStdout":true,"attachStdout":true}"#;
    let create = |who, path| request(&server, "POST", path, who, MINE);
    for (path, prefix) in [
        (format!("/v1.44/containers/{c}/exec"), "/v1.44/exec"),
        (
            format!("/api/v1/namespaces/default/pods/{c}/exec"),
            "/api/v1/exec",
        ),
    ] {
        let id = exec_create(&server, &path, ALICE, MINE).await;
        for (method, op) in [
            ("POST", "start"),
            ("POST", "resize?h=10&w=20"),
            ("GET", "json"),
        ] {
            let path = format!("{prefix}/{id}/{op}");
            let (status, _, body) = request(&server, method, &path, BOB, "{}").await;
            assert_eq!(status, 404, "bob {method} {path}: {}", text(&body));
            assert!(
                text(&body).contains("No such exec instance"),
                "{}",
                text(&body)
            );
        }
        let (status, _, body) =
            request(&server, "GET", &format!("{prefix}/{id}/json"), ALICE, "").await;
        assert_eq!(status, 200, "{}", text(&body));
        assert_eq!(json(&body)["ProcessConfig"]["arguments"][0], "mine");
        let (status, _, body) = request(
            &server,
            "POST",
            &format!("{prefix}/{id}/start"),
            ALICE,
            "{}",
        )
        .await;
        assert_eq!(status, 200, "{}", text(&body));
        let (out, _) = unframe(&body);
        assert_eq!(text(&out), "mine\n");
    }
    let cap = execd::doors::docker::MAX_CREATED_PER_OWNER;
    let bob_creates = format!("/v1.44/containers/{c}/exec");
    for _ in 0..cap {
        let (status, _, body) = create(BOB, &bob_creates).await;
        assert_eq!(status, 201, "{}", text(&body));
    }
    let (status, _, body) = create(BOB, &bob_creates).await;
    assert_eq!(status, 429, "{}", text(&body));
    assert!(
        json(&body)["message"]
            .as_str()
            .unwrap()
            .contains(&format!("{cap} execs created and not started")),
        "{}",
        text(&body)
    );
    let (status, _, body) = create(ALICE, &bob_creates).await;
    assert_eq!(status, 201, "alice is not bob: {}", text(&body));
    server.stop().await;
}
