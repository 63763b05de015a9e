//! The browser terminal (`--web`): the page, its headers and embedded
//! assets, the container list, the cross-origin WebSocket guard, and real
//! sessions in headless chromium driven through chromedriver by
//! tests/python/web_terminal.py (selenium), which reports what it saw as
//! JSON; the assertions are here. A link (`/?container=C&cmd=…`) only fills
//! the form: nothing runs, and no WebSocket opens, before Open, and the
//! command leaves the address bar.
//!
//! `build.rs` is included as a module: its [`build_script::embed`] runs on
//! scratch copies of `web/`, without npm (the placeholder page and a
//! warning) and with it (the bundle built from a missing `web/dist`).
//!
//! The browser tests need Docker, `chromium` + `chromedriver` and a Python
//! with selenium (`EXECD_TEST_PYTHON`, which scripts/test builds from
//! tests/python/requirements.txt). Without them they skip, except under
//! `CI=true`, where they fail.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::*;
use execd::doors::web::WebConfig;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "web-terminal-test-token";

/// The build script itself, so that its logic runs here on scratch
/// directories (its `main` is Cargo's business).
#[allow(dead_code)]
#[path = "../../build.rs"]
mod build_script;

fn web_config(allowed_origins: &[&str]) -> execd::ServerConfig {
    let mut cfg = config();
    cfg.web = WebConfig {
        enabled: true,
        allowed_origins: allowed_origins
            .iter()
            .map(|o| execd::doors::web::origin::parse_allowed(o).unwrap())
            .collect(),
    };
    cfg
}

/// A server with tokens required; the temp dir holds the token file.
async fn server_with_token() -> (TestServer, tempfile::TempDir) {
    let (cfg, dir) = with_tokens(web_config(&[]), &format!("{TOKEN}\n"));
    (start_server(cfg).await, dir)
}

/// One raw HTTP/1.1 request; returns the status code, the head and the
/// body (read until close, or just the head for a 101).
async fn http(server: &TestServer, head: &str) -> (u16, String, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(server.host_port())
        .await
        .unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    let read = async {
        loop {
            let n = stream.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
            if raw.starts_with(b"HTTP/1.1 101") && raw.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("answer in time");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a full head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap();
    (code, head, raw[split + 4..].to_vec())
}

async fn get(server: &TestServer, path: &str, extra: &str) -> (u16, String, Vec<u8>) {
    let host = server.host_port().to_string();
    http(
        server,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"),
    )
    .await
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn without_web_flag_there_is_no_page() {
    let server = start_server(config()).await;
    for path in ["/", "/assets/app.js", "/api/containers"] {
        let (code, _, _) = get(&server, path, "").await;
        assert_eq!(code, 404, "{path}");
    }
    server.stop().await;
}

#[tokio::test]
async fn page_is_embedded_with_a_strict_policy() {
    let server = start_server(web_config(&[])).await;
    let (code, head, body) = get(&server, "/", "").await;
    assert_eq!(code, 200, "{head}");
    let page = String::from_utf8_lossy(&body);
    let csp = header(&head, "content-security-policy").expect("a CSP header");
    let script_src = csp
        .split(';')
        .map(str::trim)
        .find(|d| d.starts_with("script-src"))
        .expect("a script-src directive");
    assert_eq!(script_src, "script-src 'self'", "{csp}");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(!csp.contains('*'), "{csp}");
    assert_eq!(header(&head, "x-content-type-options"), Some("nosniff"));
    if !execd::doors::web::assets::BUNDLED {
        // A build without Node: the page says so instead.
        assert!(page.contains("without its web assets"), "{page}");
        assert!(
            !in_ci(),
            "execd was built without web/dist and CI=true; run scripts/test, which builds the assets"
        );
        eprintln!("SKIPPED asset checks: built without web/dist (npm ci && npm run build in web/)");
        server.stop().await;
        return;
    }
    // Our page: no inline script, only the bundle from this origin.
    assert!(
        page.contains("<script defer src=\"/assets/app.js\">"),
        "{page}"
    );
    assert_eq!(page.matches("<script").count(), 1, "{page}");
    let (code, head, js) = get(&server, "/assets/app.js", "").await;
    assert_eq!(code, 200);
    assert!(header(&head, "content-type").is_some_and(|t| t.starts_with("text/javascript")));
    let js = String::from_utf8_lossy(&js);
    assert!(
        js.contains("v5.channel.k8s.io"),
        "our client is in the bundle"
    );
    assert!(js.contains("xterm"), "xterm.js is in the bundle");
    let (code, head, css) = get(&server, "/assets/app.css", "").await;
    assert_eq!(code, 200);
    assert!(header(&head, "content-type").is_some_and(|t| t.starts_with("text/css")));
    assert!(String::from_utf8_lossy(&css).contains(".xterm"));
    server.stop().await;
}

#[tokio::test]
async fn container_list_comes_from_the_engine_behind_the_token() {
    need_docker!();
    let container = shared_container();
    let (server, _dir) = server_with_token().await;
    let (code, head, _) = get(&server, "/api/containers", "").await;
    assert_eq!(code, 401, "{head}");
    let (code, _, _) = get(&server, "/api/containers", "Authorization: Bearer nope\r\n").await;
    assert_eq!(code, 401);
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    let (code, head, body) = get(&server, "/api/containers", &auth).await;
    assert_eq!(code, 200, "{head}");
    let list: Value = serde_json::from_slice(&body).unwrap();
    let ours = list["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == container)
        .unwrap_or_else(|| panic!("{container} listed: {list}"));
    assert_eq!(ours["image"], IMAGE);
    assert!(ours["status"].as_str().unwrap().starts_with("Up"), "{ours}");
    server.stop().await;
}

/// A WebSocket upgrade of the pod exec path with `origin`; the status code.
async fn upgrade(server: &TestServer, container: &str, origin: Option<&str>) -> u16 {
    let host = server.host_port().to_string();
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "GET /api/v1/namespaces/default/pods/{container}/exec?command=true&stdout=true HTTP/1.1\r\n\
         Host: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: v5.channel.k8s.io\r\n{origin}\r\n"
    );
    http(server, &head).await.0
}

#[tokio::test]
async fn cross_origin_websockets_are_refused() {
    need_docker!();
    let container = shared_container();
    // The guard is on without --web too: it protects the kube door itself.
    let server = start_server(web_config(&["https://ops.example"])).await;
    let own = format!("http://{}", server.host_port());
    assert_eq!(upgrade(&server, container, None).await, 101);
    assert_eq!(upgrade(&server, container, Some(&own)).await, 101);
    assert_eq!(
        upgrade(&server, container, Some("https://ops.example:443")).await,
        101
    );
    for evil in [
        "http://evil.example",
        "https://ops.example:8443",
        "null",
        &own.replace("127.0.0.1", "localhost"),
    ] {
        assert_eq!(upgrade(&server, container, Some(evil)).await, 403, "{evil}");
    }
    server.stop().await;
    let server = start_server(config()).await;
    assert_eq!(
        upgrade(&server, container, Some("http://evil.example")).await,
        403
    );
    server.stop().await;
}

/// The Python with selenium, chromium and chromedriver, or None (after
/// saying why) when something is missing and this is not CI.
fn browser_or_skip(test: &str) -> Option<PathBuf> {
    let python = test_python();
    let selenium = python_runs(&python, "import selenium");
    let browser = ["/usr/bin/chromium", "/usr/bin/chromedriver"]
        .iter()
        .all(|p| Path::new(p).exists());
    if selenium && browser && execd::doors::web::assets::BUNDLED {
        return Some(python);
    }
    let why = format!(
        "selenium in {}: {selenium}; chromium and chromedriver: {browser}; web assets built: {}",
        python.display(),
        execd::doors::web::assets::BUNDLED
    );
    skip(test, &format!("{why} (scripts/test sets all of them up)"));
    None
}

async fn drive(python: &Path, server: &TestServer, scenario: &str, extra: &[&str]) -> Value {
    let mut browser = python_script(python, "web_terminal.py");
    browser
        .args(["--url", &server.addr, "--container", shared_container()])
        .args(["--scenario", scenario])
        .args(extra)
        // Selenium must use the chromedriver given, never fetch one.
        .env("SE_OFFLINE", "true");
    json_of(&mut browser, Duration::from_secs(240)).await
}

fn no_policy_violations(seen: &Value) {
    let console = seen["console"].as_array().unwrap();
    assert!(
        !console
            .iter()
            .any(|m| m.as_str().unwrap_or("").contains("Content Security Policy")),
        "the page broke its own CSP: {console:?}"
    );
}

#[tokio::test]
async fn browser_session_echo_resize_and_exit_banner() {
    need_docker!();
    let Some(python) = browser_or_skip(module_path!()) else {
        return;
    };
    let server = start_server(web_config(&[])).await;
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/web-terminal.png");
    let seen = drive(
        &python,
        &server,
        "session",
        &["--screenshot", shot.to_str().unwrap()],
    )
    .await;
    // The picker lists the container with its image; a click opens it and
    // puts the container, never the command, in the address bar.
    assert!(
        seen["picker_row"].as_str().unwrap().contains(IMAGE),
        "{seen}"
    );
    let picked_url = seen["picked_url"].as_str().unwrap();
    assert!(
        picked_url.contains(&format!("container={}", shared_container())),
        "{seen}"
    );
    assert!(!picked_url.contains("cmd="), "{seen}");
    assert_eq!(seen["echo_seen"], true, "{seen}");
    // What stty says inside is what is on screen, before and after the
    // window shrank.
    let before = &seen["size_before"];
    let after = &seen["size_after"];
    assert_eq!(before["screen"], before["stty"], "{seen}");
    assert_eq!(after["screen"], after["stty"], "{seen}");
    assert_ne!(before["screen"], after["screen"], "{seen}");
    assert_eq!(seen["banner"], "Process exited with code 3", "{seen}");
    assert_eq!(seen["rerun_echo_seen"], true, "{seen}");
    assert!(
        seen["url"].as_str().unwrap().contains("container="),
        "{seen}"
    );
    assert!(!seen["url"].as_str().unwrap().contains("cmd="), "{seen}");
    no_policy_violations(&seen);
    assert!(shot.exists());
    server.stop().await;
}

#[tokio::test]
async fn browser_asks_for_the_token_once_and_keeps_it_out_of_urls() {
    need_docker!();
    let Some(python) = browser_or_skip(module_path!()) else {
        return;
    };
    let (server, _dir) = server_with_token().await;
    let seen = drive(&python, &server, "token", &["--token", TOKEN]).await;
    assert_eq!(seen["prompted"], true, "{seen}");
    assert_eq!(seen["refusal"], "That token was refused.", "{seen}");
    assert_eq!(seen["echo_seen"], true, "{seen}");
    assert_eq!(seen["stored"], TOKEN, "kept in sessionStorage: {seen}");
    assert!(!seen["url"].as_str().unwrap().contains(TOKEN), "{seen}");
    // Asked once; the reloaded link waits for Open like any other.
    assert_eq!(
        seen["state_after_reload"], "prefilled",
        "asked once: {seen}"
    );
    no_policy_violations(&seen);
    server.stop().await;
}

#[tokio::test]
async fn browser_cannot_open_a_websocket_from_another_origin() {
    need_docker!();
    let Some(python) = browser_or_skip(module_path!()) else {
        return;
    };
    let server = start_server(web_config(&[])).await;
    let seen = drive(&python, &server, "origin", &[]).await;
    assert_eq!(seen["same_origin"], "open", "{seen}");
    assert_eq!(seen["cross_origin"], "error", "{seen}");
    server.stop().await;
}

#[tokio::test]
async fn browser_link_fills_the_form_and_runs_nothing_until_open() {
    need_docker!();
    let Some(python) = browser_or_skip(module_path!()) else {
        return;
    };
    let container = shared_container();
    let file = format!("/tmp/execd-web-link-{}", marker());
    let _ = docker(&["exec", container, "rm", "-f", &file]);
    let server = start_server(web_config(&[])).await;
    let seen = drive(&python, &server, "link", &["--marker", &file]).await;
    let command = format!("touch {file}");
    assert!(seen["link"].as_str().unwrap().contains("cmd="), "{seen}");
    // The link filled the form and spelled the whole command out...
    let before = &seen["before_open"];
    assert_eq!(seen["state_before_open"], "prefilled", "{seen}");
    assert_eq!(before["container"], container, "{seen}");
    assert_eq!(before["cmd"], command.as_str(), "{seen}");
    assert_eq!(before["confirm_shown"], true, "{seen}");
    assert_eq!(before["confirm_container"], container, "{seen}");
    assert_eq!(before["confirm_cmd"], command.as_str(), "{seen}");
    // ...took the command out of the address bar at once...
    let href = before["href"].as_str().unwrap();
    assert!(!href.contains("cmd="), "{seen}");
    assert!(!href.contains("touch"), "{seen}");
    assert!(href.contains(&format!("container={container}")), "{seen}");
    // ...and ran nothing: no WebSocket, no file, still waiting.
    assert_eq!(seen["sockets_before_open"], serde_json::json!([]), "{seen}");
    assert_eq!(seen["marker_before_open"], false, "{seen}");
    assert_eq!(seen["state_after_wait"], "prefilled", "{seen}");
    // Open runs it: one WebSocket, the file, exit code 0.
    let sockets = seen["sockets_after_open"].as_array().unwrap();
    assert_eq!(sockets.len(), 1, "{seen}");
    assert!(
        sockets[0].as_str().unwrap().contains("command=touch"),
        "{seen}"
    );
    assert_eq!(seen["banner"], "Process exited with code 0", "{seen}");
    assert_eq!(seen["marker_after_open"], true, "{seen}");
    assert!(exists_in(container, &file), "{file} in {container}");
    assert!(
        !seen["after_open"]["href"]
            .as_str()
            .unwrap()
            .contains("cmd="),
        "{seen}"
    );
    no_policy_violations(&seen);
    let _ = docker(&["exec", container, "rm", "-f", &file]);
    server.stop().await;
}

#[tokio::test]
async fn browser_picker_shows_the_container_the_link_opened() {
    need_docker!();
    let Some(python) = browser_or_skip(module_path!()) else {
        return;
    };
    let shared = shared_container();
    // Sorted by name, the shared container comes before this one.
    let picked = ContainerSpec::idle("web-picked").hostname_is_name().run();
    let server = start_server(web_config(&[])).await;
    let seen = drive(&python, &server, "picker", &["--picked", &picked.0]).await;
    let before = &seen["before_open"];
    let options: Vec<&str> = before["options"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_str().unwrap())
        .collect();
    assert!(options.contains(&shared), "{seen}");
    assert!(options.contains(&picked.0.as_str()), "{seen}");
    assert_ne!(
        options[0], picked.0,
        "the link's container is not first: {seen}"
    );
    // Before Open, once the list is in, and after: the link's container.
    assert_eq!(before["container"], picked.0.as_str(), "{seen}");
    assert_eq!(before["container_text"], picked.0.as_str(), "{seen}");
    let after = &seen["after_open"];
    assert_eq!(after["container"], picked.0.as_str(), "{seen}");
    assert_eq!(after["container_text"], picked.0.as_str(), "{seen}");
    // The session runs there (Enter was Open).
    assert_eq!(seen["hostname_seen"], picked.0.as_str(), "{seen}");
    // A link to a container that is not running: shown as such, chosen.
    let absent = format!("{}-absent", picked.0);
    assert_eq!(seen["absent"]["container"], absent.as_str(), "{seen}");
    assert_eq!(
        seen["absent"]["container_text"],
        format!("{absent} (not listed)").as_str(),
        "{seen}"
    );
    no_policy_violations(&seen);
    server.stop().await;
}

/// A scratch copy of `web/`'s sources (no `dist`, no `node_modules`), and
/// an `OUT_DIR` next to it.
fn scratch_web() -> (tempfile::TempDir, PathBuf, PathBuf) {
    fn copy(from: &Path, to: &Path) {
        if from.is_dir() {
            std::fs::create_dir_all(to).unwrap();
            for entry in std::fs::read_dir(from).unwrap() {
                let entry = entry.unwrap();
                copy(&entry.path(), &to.join(entry.file_name()));
            }
        } else {
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(from, to).unwrap();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().join("web");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
    for input in build_script::INPUTS {
        copy(&source.join(input), &web.join(input));
    }
    let out_dir = dir.path().join("out");
    (dir, web, out_dir)
}

fn directives_with<'a>(embedded: &'a build_script::Embedded, prefix: &str) -> Vec<&'a str> {
    embedded
        .directives
        .iter()
        .filter_map(|d| d.strip_prefix(prefix))
        .collect()
}

/// Every watched path exists (Cargo reruns a script on every build while
/// one is missing) and none is under node_modules.
fn watches_only_what_exists(embedded: &build_script::Embedded) -> Vec<&str> {
    let watched = directives_with(embedded, "cargo:rerun-if-changed=");
    for path in &watched {
        assert!(Path::new(path).exists(), "watches a missing {path}");
        assert!(!path.contains("node_modules"), "watches {path}");
    }
    watched
}

fn modified(path: &Path) -> std::time::SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

/// The newest modification time under `path`.
fn newest(path: &Path) -> std::time::SystemTime {
    let mut time = modified(path);
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            time = time.max(newest(&entry.unwrap().path()));
        }
    }
    time
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn build_script_without_npm_warns_and_embeds_a_page_saying_so() {
    let (_dir, web, out_dir) = scratch_web();
    let out = out_dir.join("web");
    let no_npm = Some(OsStr::new("/nonexistent/npm"));
    let embedded = build_script::embed(&web, &out_dir, no_npm);
    assert!(!embedded.bundled && embedded.ran_npm);
    let warnings = directives_with(&embedded, "cargo:warning=");
    assert_eq!(warnings.len(), 1, "{embedded:?}");
    assert!(warnings[0].contains("web/dist is missing"), "{warnings:?}");
    assert!(warnings[0].contains("npm is not available"), "{warnings:?}");
    assert!(
        warnings[0].contains("without its web assets"),
        "{warnings:?}"
    );
    assert_eq!(
        directives_with(&embedded, "cargo:rustc-env=EXECD_WEB_ASSETS="),
        ["missing"]
    );
    let reason = directives_with(&embedded, "cargo:rustc-env=EXECD_WEB_ASSETS_REASON=");
    assert!(reason[0].contains("npm is not available"), "{reason:?}");
    let page = read(&out.join("index.html"));
    assert!(page.contains("without its web assets"), "{page}");
    assert!(page.contains("npm is not available"), "{page}");
    assert_eq!(read(&out.join("app.js")), "");
    // web/dist is missing: web/ itself is watched, to notice it appearing.
    let watched = watches_only_what_exists(&embedded);
    assert!(watched.contains(&web.to_str().unwrap()), "{watched:?}");
    // Again: the same files, not rewritten (no needless recompile).
    let written = modified(&out.join("index.html"));
    std::thread::sleep(Duration::from_millis(20));
    let again = build_script::embed(&web, &out_dir, no_npm);
    assert!(!again.bundled);
    assert_eq!(modified(&out.join("index.html")), written);
    // EXECD_NPM set empty: no npm at all, and a warning saying so.
    let none = build_script::embed(&web, &out_dir, None);
    assert!(!none.ran_npm && !none.bundled);
    let warnings = directives_with(&none, "cargo:warning=");
    assert!(warnings[0].contains("EXECD_NPM is empty"), "{warnings:?}");

    // A web/dist built since (scripts/web-assets): embedded as it is, no
    // npm, no warning, and watched.
    std::thread::sleep(Duration::from_millis(20));
    let dist = web.join("dist");
    std::fs::create_dir_all(&dist).unwrap();
    for asset in build_script::ASSETS {
        std::fs::write(dist.join(asset), format!("built {asset}")).unwrap();
    }
    assert_eq!(build_script::needs_build(&web), None);
    let built = build_script::embed(&web, &out_dir, no_npm);
    assert!(built.bundled && !built.ran_npm, "{built:?}");
    assert_eq!(
        directives_with(&built, "cargo:warning="),
        Vec::<&str>::new()
    );
    assert_eq!(read(&out.join("app.js")), "built app.js");
    let watched = watches_only_what_exists(&built);
    assert!(watched.contains(&dist.to_str().unwrap()), "{watched:?}");
    assert!(!watched.contains(&web.to_str().unwrap()), "{watched:?}");
    // Sources newer than it, and no npm to rebuild: the older bundle,
    // with a warning.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(web.join("src/extra.js"), "// newer\n").unwrap();
    assert_eq!(
        build_script::needs_build(&web).as_deref(),
        Some("web/dist is older than its sources")
    );
    let stale = build_script::embed(&web, &out_dir, no_npm);
    assert!(stale.bundled, "{stale:?}");
    let warnings = directives_with(&stale, "cargo:warning=");
    assert!(
        warnings[0].contains("embedding the older web/dist"),
        "{warnings:?}"
    );
}

#[test]
fn build_script_builds_a_missing_bundle_with_npm() {
    let npm = Command::new("npm")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !npm {
        assert!(!in_ci(), "no npm and CI=true; run scripts/web-assets");
        eprintln!("SKIPPED {}: no npm", module_path!());
        return;
    }
    let (_dir, web, out_dir) = scratch_web();
    let out = out_dir.join("web");
    let npm = Some(OsStr::new("npm"));
    let sources_before = newest(&web);
    assert!(build_script::needs_build(&web).is_some());
    let embedded = build_script::embed(&web, &out_dir, npm);
    assert!(embedded.ran_npm);
    assert!(embedded.bundled, "{embedded:?}");
    assert_eq!(
        directives_with(&embedded, "cargo:warning="),
        Vec::<&str>::new()
    );
    assert_eq!(
        directives_with(&embedded, "cargo:rustc-env=EXECD_WEB_ASSETS="),
        ["bundled"]
    );
    // The real page, the same as web/dist would give.
    let page = read(&out.join("index.html"));
    assert!(
        page.contains("<script defer src=\"/assets/app.js\">"),
        "{page}"
    );
    assert!(read(&out.join("app.js")).contains("v5.channel.k8s.io"));
    assert!(read(&out.join("app.css")).contains(".xterm"));
    // Built in OUT_DIR: nothing under web/ changed, so nothing Cargo
    // watches does, and the next build does not run the script again.
    assert!(!web.join("dist").exists() && !web.join("node_modules").exists());
    assert_eq!(newest(&web), sources_before);
    let watched = watches_only_what_exists(&embedded);
    assert!(
        watched.contains(&web.join("src").to_str().unwrap()),
        "{watched:?}"
    );
    assert!(watched.contains(&web.to_str().unwrap()), "{watched:?}");
    // Run again (the sources changed, say): no new npm ci, and the same
    // bundle is not rewritten.
    let installed = modified(&out_dir.join("npm").join(build_script::INSTALLED_LOCK));
    let written = modified(&out.join("app.js"));
    let again = build_script::embed(&web, &out_dir, npm);
    assert!(again.bundled, "{again:?}");
    assert_eq!(modified(&out.join("app.js")), written);
    // A source that did change: in the bundle.
    let style = web.join("src/style.css");
    let text = read(&style);
    std::fs::write(
        &style,
        format!("{text}\n.execd-test-marker {{ color: red; }}\n"),
    )
    .unwrap();
    let rebuilt = build_script::embed(&web, &out_dir, npm);
    assert!(rebuilt.ran_npm && rebuilt.bundled, "{rebuilt:?}");
    assert!(read(&out.join("app.css")).contains("execd-test-marker"));
    assert_eq!(
        modified(&out_dir.join("npm").join(build_script::INSTALLED_LOCK)),
        installed,
        "npm ci ran again"
    );
}
