//! The bad-input catalogue: everything a client can send wrong, each with
//! the clear error it gets, against one real `execd` process that must keep
//! serving throughout and run a normal session at the end. The README's
//! "Bad input" table lists the same cases.

use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use execd_proto::exec_service::exec_message::Payload;
use execd_proto::exec_service::exec_service_client::ExecServiceClient;
use execd_proto::exec_service::{
    ExecMessage, ExecOutputData, ExecStartRequest, ExecStatusResponse, ExecStdinEof,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// Opens a session on `channel` with `messages` queued.
async fn open_on(channel: &tonic::transport::Channel, messages: Vec<ExecMessage>) -> Exec2 {
    let mut client = ExecServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20);
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let close = messages.is_empty();
    for m in messages {
        tx.send(m).await.unwrap();
    }
    // Headers come back before any message is read, so a client may call
    // first and decide what to send afterwards.
    let rx = client
        .exec_stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    Exec2 {
        tx: (!close).then_some(tx),
        rx,
    }
}

/// Opening sessions on the real binary.
trait Open {
    async fn open(&self, messages: Vec<ExecMessage>) -> Exec2;
}

impl Open for ExecdProcess {
    async fn open(&self, messages: Vec<ExecMessage>) -> Exec2 {
        open_on(&self.channel, messages).await
    }
}

struct Exec2 {
    tx: Option<tokio::sync::mpsc::Sender<ExecMessage>>,
    rx: tonic::Streaming<ExecMessage>,
}

/// How a case ended: the terminal status and the RPC status.
#[derive(Debug)]
struct Ending {
    started: bool,
    error_message: Option<String>,
    exit_code: Option<i32>,
    rpc: Option<tonic::Status>,
    stdout: Vec<u8>,
}

impl Exec2 {
    async fn end(mut self) -> Ending {
        self.tx = None;
        let mut e = Ending {
            started: false,
            error_message: None,
            exit_code: None,
            rpc: None,
            stdout: Vec::new(),
        };
        loop {
            match tokio::time::timeout(PATIENCE, self.rx.message())
                .await
                .expect("an answer in time")
            {
                Ok(Some(msg)) => match msg.payload {
                    Some(Payload::Status(s)) if s.status == 0 => e.started = true,
                    Some(Payload::Status(s)) if s.status == 2 => e.exit_code = Some(s.exit_code),
                    Some(Payload::Status(s)) if s.status == 3 => {
                        e.error_message = Some(s.error_message)
                    }
                    Some(Payload::OutputData(o)) => e.stdout.extend_from_slice(&o.data),
                    _ => {}
                },
                Ok(None) => break,
                Err(status) => {
                    e.rpc = Some(status);
                    break;
                }
            }
        }
        e
    }
}

fn msg(session_id: &str, payload: Payload) -> ExecMessage {
    ExecMessage {
        session_id: session_id.to_string(),
        payload: Some(payload),
    }
}

fn start(container: &str, command: &[&str]) -> ExecStartRequest {
    req(container, command)
}

/// One catalogue entry: what is sent, and the code and words expected.
struct Case {
    name: &'static str,
    messages: Vec<ExecMessage>,
    code: Code,
    needle: &'static str,
}

fn with<F: FnOnce(&mut ExecStartRequest)>(f: F) -> Vec<ExecMessage> {
    let mut r = start("web", &["id"]);
    f(&mut r);
    vec![msg("", Payload::StartRequest(r))]
}

fn catalogue(container: &str) -> Vec<Case> {
    use Code::*;
    let c = container.to_string();
    let first = |p: Payload| vec![msg("", p)];
    vec![
        Case {
            name: "container_id starting with -",
            messages: with(|r| r.container_id = "-it".into()),
            code: InvalidArgument,
            needle: "container_id",
        },
        Case {
            name: "container_id that is a flag",
            messages: with(|r| r.container_id = "--privileged".into()),
            code: InvalidArgument,
            needle: "container_id",
        },
        Case {
            name: "container_id with /",
            messages: with(|r| r.container_id = "../etc".into()),
            code: InvalidArgument,
            needle: "container_id",
        },
        Case {
            name: "container_id with spaces",
            messages: with(|r| r.container_id = "web 1".into()),
            code: InvalidArgument,
            needle: "container_id",
        },
        Case {
            name: "container_id with NUL",
            messages: with(|r| r.container_id = "web\0".into()),
            code: InvalidArgument,
            needle: "container_id",
        },
        Case {
            name: "container_id of 300 chars",
            messages: with(|r| r.container_id = "a".repeat(300)),
            code: InvalidArgument,
            needle: "container_id",
        },
        Case {
            name: "container_id in unicode",
            messages: with(|r| r.container_id = "wéb".into()),
            code: InvalidArgument,
            needle: "container_id",
        },
        Case {
            name: "container_id empty",
            messages: with(|r| r.container_id.clear()),
            code: InvalidArgument,
            needle: "container_id is empty",
        },
        Case {
            name: "container that does not exist",
            messages: with(|r| r.container_id = "execd-no-such-container".into()),
            code: NotFound,
            needle: "No such container",
        },
        Case {
            name: "env key empty",
            messages: with(|r| {
                r.env.insert(String::new(), "v".into());
            }),
            code: InvalidArgument,
            needle: "env key",
        },
        Case {
            name: "env key with =",
            messages: with(|r| {
                r.env.insert("A=B".into(), "v".into());
            }),
            code: InvalidArgument,
            needle: "env key",
        },
        Case {
            name: "env key with NUL",
            messages: with(|r| {
                r.env.insert("A\0".into(), "v".into());
            }),
            code: InvalidArgument,
            needle: "env key",
        },
        Case {
            name: "env value with NUL",
            messages: with(|r| {
                r.env.insert("A".into(), "v\0w".into());
            }),
            code: InvalidArgument,
            needle: "NUL",
        },
        Case {
            name: "env key reserved by execd",
            messages: with(|r| {
                r.env.insert("EXECD_SESSION_ID".into(), "x".into());
            }),
            code: InvalidArgument,
            needle: "reserved",
        },
        Case {
            name: "command element with NUL",
            messages: with(|r| r.command = vec!["echo".into(), "a\0b".into()]),
            code: InvalidArgument,
            needle: "NUL",
        },
        Case {
            name: "10,000 command args",
            messages: with(|r| r.command = vec!["x".into(); 10_000]),
            code: InvalidArgument,
            needle: "arguments",
        },
        Case {
            name: "empty program name",
            messages: with(|r| r.command = vec![String::new()]),
            code: InvalidArgument,
            needle: "command[0]",
        },
        Case {
            name: "working_dir relative",
            messages: with(|r| r.working_dir = "tmp".into()),
            code: InvalidArgument,
            needle: "working_dir",
        },
        Case {
            name: "working_dir with NUL",
            messages: with(|r| r.working_dir = "/tmp\0".into()),
            code: InvalidArgument,
            needle: "working_dir",
        },
        Case {
            name: "user with NUL",
            messages: with(|r| r.user = "root\0".into()),
            code: InvalidArgument,
            needle: "user",
        },
        Case {
            name: "user with two colons",
            messages: with(|r| r.user = "a:b:c".into()),
            code: InvalidArgument,
            needle: "user",
        },
        Case {
            name: "user that is a flag",
            messages: with(|r| r.user = "--privileged".into()),
            code: InvalidArgument,
            needle: "user",
        },
        Case {
            name: "user with empty group",
            messages: with(|r| r.user = "root:".into()),
            code: InvalidArgument,
            needle: "user",
        },
        Case {
            name: "session_id of 10 KB",
            messages: vec![msg(
                &"s".repeat(10_240),
                Payload::StartRequest(start(&c, &["true"])),
            )],
            code: InvalidArgument,
            needle: "session_id",
        },
        Case {
            name: "session_id with control characters",
            messages: vec![msg(
                "a\u{1b}[2Jb",
                Payload::StartRequest(start(&c, &["true"])),
            )],
            code: InvalidArgument,
            needle: "session_id",
        },
        Case {
            name: "resize before start",
            messages: vec![resize_msg(24, 80)],
            code: InvalidArgument,
            needle: "start_request",
        },
        Case {
            name: "input before start",
            messages: vec![input_msg("ls\n")],
            code: InvalidArgument,
            needle: "start_request",
        },
        Case {
            name: "stdin_eof before start",
            messages: first(Payload::StdinEof(ExecStdinEof {})),
            code: InvalidArgument,
            needle: "start_request",
        },
        Case {
            name: "message without payload first",
            messages: vec![ExecMessage::default()],
            code: InvalidArgument,
            needle: "start_request",
        },
        Case {
            name: "output_data from the client",
            messages: first(Payload::OutputData(ExecOutputData {
                stream_type: 0,
                data: Bytes::from_static(b"x"),
            })),
            code: InvalidArgument,
            needle: "start_request",
        },
        Case {
            name: "status from the client",
            messages: first(Payload::Status(ExecStatusResponse::default())),
            code: InvalidArgument,
            needle: "start_request",
        },
        Case {
            name: "two start requests",
            messages: vec![
                msg("", Payload::StartRequest(start(&c, &["sleep", "30"]))),
                msg("", Payload::StartRequest(start(&c, &["true"]))),
            ],
            code: InvalidArgument,
            needle: "a second start was sent",
        },
        Case {
            name: "output_data mid-session",
            messages: vec![
                msg("", Payload::StartRequest(start(&c, &["sleep", "30"]))),
                msg("", Payload::OutputData(ExecOutputData::default())),
            ],
            code: InvalidArgument,
            needle: "must not send output_data",
        },
        Case {
            name: "input larger than --max-message-size",
            messages: vec![
                msg("", Payload::StartRequest(start(&c, &["cat"]))),
                input_msg(vec![b'x'; 300 * 1024]),
            ],
            code: ResourceExhausted,
            needle: "too large",
        },
        Case {
            name: "stream closed before start",
            messages: vec![],
            code: InvalidArgument,
            needle: "closed before a start_request",
        },
    ]
}

#[tokio::test]
async fn catalogue_of_bad_inputs_gets_clear_errors_and_the_server_keeps_serving() {
    if !docker_or_skip("catalogue") {
        return;
    }
    let container = shared_container();
    let execd =
        ExecdProcess::start(&["--max-message-size", "262144", "--start-timeout", "3s"]).await;
    let cases = catalogue(container);
    assert!(cases.len() >= 30, "{} cases", cases.len());
    for case in cases {
        let e = execd.open(case.messages).await.end().await;
        let message = e
            .error_message
            .clone()
            .unwrap_or_else(|| panic!("{}: no ERROR status: {e:?}", case.name));
        let rpc = e
            .rpc
            .as_ref()
            .unwrap_or_else(|| panic!("{}: RPC ended OK", case.name));
        assert_eq!(rpc.code(), case.code, "{}: {message}", case.name);
        assert_eq!(rpc.message(), message, "{}", case.name);
        assert!(
            message.contains(case.needle),
            "{}: {message:?} lacks {:?}",
            case.name,
            case.needle
        );
        assert!(execd.alive(), "execd died on {}", case.name);
    }

    // Out-of-range sizes are clamped, never fatal.
    let mut r = start(container, &["sh", "-c", "sleep 0.5; stty size"]);
    r.tty = true;
    r.rows = -3;
    r.cols = i32::MAX;
    let e = execd
        .open(vec![
            msg("", Payload::StartRequest(r)),
            resize_msg(0, -1),
            resize_msg(100_000, 100_000),
        ])
        .await
        .end()
        .await;
    assert_eq!(e.exit_code, Some(0), "{e:?}");
    assert!(
        String::from_utf8_lossy(&e.stdout).contains("4096 4096"),
        "{e:?}"
    );

    // After everything, a normal session still works.
    let e = execd
        .open(vec![msg(
            "",
            Payload::StartRequest(start(container, &["echo", "still-serving"])),
        )])
        .await
        .end()
        .await;
    assert_eq!(e.exit_code, Some(0));
    assert_eq!(String::from_utf8_lossy(&e.stdout), "still-serving\n");
}

/// 100 MB pushed at a process that never reads: the client is held back
/// (HTTP/2 flow control), execd's memory stays bounded, and when the client
/// goes away the session and its process end. The client is the example
/// binary in its own process, so going away is a real connection close.
#[tokio::test]
async fn flood_of_input_to_a_process_that_never_reads_is_backpressured() {
    if !docker_or_skip("flood") {
        return;
    }
    let container = shared_container();
    let execd = ExecdProcess::start(&[]).await;
    let n = marker();
    let base = execd.rss_mib();
    let example = std::path::Path::new(env!("CARGO_BIN_EXE_execd"))
        .parent()
        .unwrap()
        .join("examples/exec");
    let mut client = tokio::process::Command::new(&example)
        .arg("--addr")
        .arg(format!("unix:{}", execd.socket.display()))
        .args(["-i", container, "sleep", &n.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", example.display()));
    let mut stdin = client.stdin.take().unwrap();
    let pusher = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let chunk = vec![b'z'; 1024 * 1024];
        let mut sent = 0usize;
        for _ in 0..100 {
            match tokio::time::timeout(Duration::from_secs(3), stdin.write_all(&chunk)).await {
                Ok(Ok(())) => sent += chunk.len(),
                _ => break, // blocked: backpressure reached the client's stdin
            }
        }
        (sent, stdin)
    });
    let (sent, stdin) = pusher.await.unwrap();
    wait_until_running(container, &format!("sleep {n}")).await;
    let growth = execd.rss_mib() - base;
    assert!(
        sent < 100 * 1024 * 1024,
        "all 100 MB were accepted: no backpressure"
    );
    assert!(growth < 48.0, "execd grew by {growth:.1} MiB");
    client.start_kill().unwrap();
    client.wait().await.unwrap();
    drop(stdin);
    let left = wait_until_gone(container, &format!("sleep {n}"), Duration::from_secs(10)).await;
    assert!(left.is_empty(), "{left:?}");
    assert!(execd.alive());
}

/// A client that never reads its output: the process blocks on the full
/// pipe (not killed, nothing dropped), execd's memory stays bounded, and
/// when the client reads again every byte arrives.
#[tokio::test]
async fn a_client_that_never_reads_output_loses_nothing() {
    if !docker_or_skip("never-reads") {
        return;
    }
    let container = shared_container();
    let execd = ExecdProcess::start(&[]).await;
    let base = execd.rss_mib();
    let size = 64 * 1024 * 1024;
    let exec = execd
        .open(vec![msg(
            "",
            Payload::StartRequest(start(
                container,
                &["sh", "-c", &format!("head -c {size} /dev/zero")],
            )),
        )])
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let growth = execd.rss_mib() - base;
    assert!(
        growth < 48.0,
        "execd grew by {growth:.1} MiB while the client did not read"
    );
    let e = exec.end().await;
    assert_eq!(e.exit_code, Some(0), "{:?}", e.error_message);
    assert_eq!(e.stdout.len(), size);
}

/// 200 streams that never send a start_request: each ends after the start
/// timeout with a clear error, and the server keeps serving meanwhile.
#[tokio::test]
async fn two_hundred_silent_streams_time_out_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let _ = dir;
    let execd = ExecdProcess::start(&["--host-exec", "--start-timeout", "2s"]).await;
    let mut silent = Vec::new();
    for _ in 0..200 {
        let mut client = ExecServiceClient::new(execd.channel.clone());
        let (tx, rx) = tokio::sync::mpsc::channel::<ExecMessage>(1);
        let call = tokio::spawn(async move { client.exec_stream(ReceiverStream::new(rx)).await });
        silent.push((tx, call));
    }
    let e = execd
        .open(vec![msg(
            "",
            Payload::StartRequest(start("", &["echo", "busy-but-fine"])),
        )])
        .await
        .end()
        .await;
    assert_eq!(String::from_utf8_lossy(&e.stdout), "busy-but-fine\n");
    for (tx, call) in silent {
        let mut stream = call.await.unwrap().unwrap().into_inner();
        let first = stream.message().await.unwrap().unwrap();
        match first.payload {
            Some(Payload::Status(s)) => assert!(
                s.error_message.contains("no start_request within 2s"),
                "{s:?}"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            stream.message().await.unwrap_err().code(),
            Code::InvalidArgument
        );
        drop(tx);
    }
    assert!(execd.alive());
}
