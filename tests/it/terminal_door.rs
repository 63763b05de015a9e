//! `/terminal/ws`, the function system's WebSocket protocol: its own
//! clients, unchanged from PyPI (`yr exec`/`yr cp` from openyuanrong-sdk,
//! the sandbox SDK's PTY transport from openyuanrong-sandbox), driven by
//! tests/python/yr_clients.py against a real engine; and refusals, tokens,
//! instance labels and the close sequence spoken raw.

use crate::common::kube_ws;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use kube_ws::connect;
use tokio_tungstenite::tungstenite::Message;

/// A Python that has `websockets` and the two upstream clients, or None
/// (after saying why) when there is none and this is not CI.
fn yr_python(test: &str) -> Option<PathBuf> {
    let probe = "import websockets, sysconfig, pathlib; \
        p = pathlib.Path(sysconfig.get_paths()['platlib']); \
        assert (p / 'yr/cli/exec.py').exists() and (p / 'yr_sandbox/_pty_transport.py').exists()";
    python_with(test, probe, "websockets or the yr clients")
}

async fn run_yr_clients(
    python: &Path,
    server: &TestServer,
    container: &str,
    extra: &[&str],
) -> serde_json::Value {
    let mut clients = python_script(python, "yr_clients.py");
    clients
        .args(["--target", server.host_port(), "--container", container])
        .args(["--marker", &marker().to_string()])
        .args(extra);
    json_of(&mut clients, Duration::from_secs(600)).await
}

/// Every operation of the upstream clients: `yr exec` without and with a
/// terminal (in a real pty, resized), Ctrl+] ending the remote process,
/// `yr cp` both ways in plain and streaming mode (a small file, 5 MiB of
/// random bytes, a directory tree: byte-identical round trips), a missing
/// container refused before the upgrade, and the SDK's PTY with exit codes,
/// resize and close_stdin.
#[tokio::test(flavor = "multi_thread")]
async fn upstream_clients_work_unchanged() {
    need_docker!();
    let Some(python) = yr_python(module_path!()) else {
        return;
    };
    let server = start_server(config()).await;
    let got = run_yr_clients(&python, &server, shared_container(), &[]).await;

    let plain = &got["exec_plain"];
    assert_eq!(plain["stdout"], "hello world\n", "{plain}");
    assert_eq!(plain["rc"], 0, "{plain}");

    let tty = &got["exec_tty"];
    for key in ["first_size", "resized", "sleep_started", "sleep_killed"] {
        assert_eq!(tty[key], true, "{key}: {tty}");
    }
    assert_eq!(tty["client_rc"], 0, "{tty}");

    let cp = got["cp"].as_object().unwrap();
    assert_eq!(cp.len(), 6, "{cp:?}");
    for (case, result) in cp {
        assert_eq!(result["same"], true, "{case}: {result}");
    }
    assert_eq!(cp["plain_tree"]["files"], 3);

    // Through the real bridge this "succeeds"; here the upgrade is refused.
    let missing = got["cp_missing"]["error"].as_str().unwrap_or_default();
    assert!(missing.contains("404"), "{}", got["cp_missing"]);

    let sdk = &got["pty_sdk"];
    assert_eq!(sdk["exit_code"]["exit_code"], 7, "{sdk}");
    let output = sdk["exit_code"]["output"].as_str().unwrap();
    assert!(output.contains("got:hello"), "{output}");
    assert!(
        output.contains("33 101"),
        "the resize before the input: {output}"
    );
    assert_eq!(sdk["close_stdin"]["exit_code"], 3, "{sdk}");
    assert!(sdk["exit_code"]["session_id"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    server.stop().await;
}

/// Reads frames until the server closes: binary output, text frames, the
/// close code.
async fn read_to_close(ws: &mut kube_ws::Ws) -> (Vec<u8>, Vec<String>, Option<u16>) {
    let (mut binary, mut texts, mut code) = (Vec::new(), Vec::new(), None);
    let read = async {
        while let Some(msg) = ws.socket.next().await {
            match msg {
                Ok(Message::Binary(b)) => binary.extend_from_slice(&b),
                Ok(Message::Text(t)) => texts.push(t.to_string()),
                Ok(Message::Close(frame)) => {
                    code = frame.map(|f| u16::from(f.code));
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("the server closes");
    (binary, texts, code)
}

fn path(container: &str, extra: &str) -> String {
    format!("/terminal/ws?instance={container}&tty=false{extra}")
}

/// Refusals come before the upgrade with a status and a JSON message; the
/// end of a session is the text legacy clients wait for (or the v1 JSON
/// events), then close 1000.
#[tokio::test]
async fn refusals_and_the_end_of_a_session() {
    need_docker!();
    let server = start_server(config()).await;
    let c = shared_container();
    for (p, code) in [
        ("/terminal/ws?command=true".to_string(), 400),
        (path(c, "&protocol=other"), 400),
        (path("execd-no-such-container", "&command=true"), 404),
        (path("bad%2Fname", "&command=true"), 400),
    ] {
        let refused = connect(&server.addr, &p, "", &[])
            .await
            .err()
            .unwrap_or_else(|| panic!("{p} was upgraded"));
        assert_eq!(refused.code, code, "{p}: {:?}", refused.body);
        assert!(
            refused.body["message"].is_string(),
            "{p}: {:?}",
            refused.body
        );
    }

    // Legacy: output, then the exit text, then 1000; stderr merged.
    let mut ws = connect(
        &server.addr,
        &path(
            c,
            "&command=sh&command=-c&command=echo%20out;%20echo%20err%20%3E%262;%20exit%203",
        ),
        "",
        &[],
    )
    .await
    .expect("upgrade");
    let (out, texts, code) = read_to_close(&mut ws).await;
    // Two pipes: merged, in whichever order they were read.
    let mut lines: Vec<String> = String::from_utf8_lossy(&out)
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    assert_eq!(lines, ["err", "out"]);
    assert_eq!(texts, ["\r\n[Process exited]\r\n"]);
    assert_eq!(code, Some(1000));

    // sandbox.pty.v1: started, output, exited with the code, 1000.
    let mut ws = connect(
        &server.addr,
        &path(
            c,
            "&protocol=sandbox.pty.v1&command=sh&command=-c&command=cat;exit%205",
        ),
        "",
        &[],
    )
    .await
    .expect("upgrade");
    ws.socket
        .send(Message::Binary(b"data\n".to_vec().into()))
        .await
        .unwrap();
    ws.socket
        .send(Message::Text("STDIN_EOF".into()))
        .await
        .unwrap();
    let (out, texts, code) = read_to_close(&mut ws).await;
    assert_eq!(String::from_utf8_lossy(&out), "data\n");
    assert_eq!(texts.len(), 2, "{texts:?}");
    let started: serde_json::Value = serde_json::from_str(&texts[0]).unwrap();
    let exited: serde_json::Value = serde_json::from_str(&texts[1]).unwrap();
    assert_eq!(started["type"], "started");
    assert_eq!(exited["type"], "exited");
    assert_eq!(exited["exit_code"], 5);
    assert_eq!(started["session_id"], exited["session_id"]);
    assert_eq!(code, Some(1000));
    server.stop().await;
}

/// With tokens, the clients' `token=` (or X-Auth, or the subprotocol)
/// admits them; nothing else does, and the token is never echoed.
#[tokio::test]
async fn tokens_admit_by_query_header_or_subprotocol() {
    need_docker!();
    let (cfg, _tokens) = with_tokens(config(), "terminal-secret-token-0123456789\n");
    let server = start_server(cfg).await;
    let c = shared_container();
    let echo = path(c, "&command=echo&command=ok");
    for (extra, headers, protocols) in [
        ("", vec![], ""),
        ("&token=wrong", vec![], ""),
        ("", vec![("x-auth", "wrong")], ""),
    ] {
        let refused = connect(&server.addr, &format!("{echo}{extra}"), protocols, &headers)
            .await
            .err()
            .expect("refused");
        assert_eq!(refused.code, 401, "{extra} {headers:?}");
        assert!(!refused.body.to_string().contains("wrong"));
    }
    for (extra, headers, protocols) in [
        ("&token=terminal-secret-token-0123456789", vec![], ""),
        ("", vec![("x-auth", "terminal-secret-token-0123456789")], ""),
        ("", vec![], "terminal-secret-token-0123456789"),
    ] {
        let mut ws = connect(&server.addr, &format!("{echo}{extra}"), protocols, &headers)
            .await
            .unwrap_or_else(|r| panic!("{extra} {headers:?}: {r:?}"));
        let (out, _, code) = read_to_close(&mut ws).await;
        assert_eq!(String::from_utf8_lossy(&out), "ok\n");
        assert_eq!(code, Some(1000));
    }
    server.stop().await;
}

/// `--terminal-instance-label KEY`: an instance is the running container
/// whose label KEY has its name; the session counts under that instance.
#[tokio::test]
async fn instances_found_by_label() {
    need_docker!();
    let instance = format!("inst-{}", marker());
    let labelled = ContainerSpec::new("terminal-label", &["sleep", "infinity"])
        .options(&["--label", &format!("yr.instance={instance}")])
        .run();
    let mut cfg = config();
    cfg.terminal_instance_label = Some("yr.instance".into());
    let server = start_server(cfg).await;
    let mut ws = connect(
        &server.addr,
        &format!("/terminal/ws?instance={instance}&tty=false&command=hostname"),
        "",
        &[],
    )
    .await
    .expect("upgrade");
    let (out, _, _) = read_to_close(&mut ws).await;
    assert_eq!(
        String::from_utf8_lossy(&out).trim(),
        inspect(&labelled.0, "{{.Config.Hostname}}")
    );
    let refused = connect(
        &server.addr,
        "/terminal/ws?instance=no-such-instance&command=true",
        "",
        &[],
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(refused.code, 404);
    server.stop().await;
}
