//! Property test of the ExecStream state machine: random sequences of
//! client messages (start, input, resize, EOF, garbage, half-close, cancel,
//! in any order, random sizes and bytes) against a server whose runtime is
//! a stub (host-exec mode running small local commands). Whatever happens:
//! no panic, STARTED at most once and first, exactly one terminal status
//! per stream, nothing after it, and every count back to zero at the end.

use std::sync::OnceLock;
use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use execd_proto::exec_service::exec_message::Payload;
use execd_proto::exec_service::exec_service_client::ExecServiceClient;
use execd_proto::exec_service::exec_status_response::Status as WireStatus;
use execd_proto::exec_service::{ExecMessage, ExecOutputData, ExecStartRequest};
use proptest::prelude::*;
use tokio_stream::wrappers::ReceiverStream;

#[derive(Debug, Clone)]
enum Op {
    Start {
        tty: bool,
        command: usize,
        rows: i32,
        cols: i32,
    },
    Input(Vec<u8>),
    Resize(i32, i32),
    Eof,
    Garbage,
    Empty,
    Pause(u64),
    HalfClose,
    Cancel,
}

const COMMANDS: &[&[&str]] = &[
    &["cat"],
    &["sh", "-c", "head -c 3000 /dev/zero"],
    &["sh", "-c", "read line; echo got $line"],
    &["sleep", "0.3"],
    &["sh", "-c", "echo err >&2; exit 5"],
];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (any::<bool>(), 0..COMMANDS.len(), -5i32..200, -5i32..300)
            .prop_map(|(tty, command, rows, cols)| Op::Start { tty, command, rows, cols }),
        // Without XOFF (^S): in a terminal it legitimately freezes output
        // until XON, as in any terminal, which would stall the script.
        4 => proptest::collection::vec(any::<u8>().prop_filter("no XOFF", |b| *b != 0x13), 0..2048)
            .prop_map(Op::Input),
        2 => (any::<i32>(), any::<i32>()).prop_map(|(r, c)| Op::Resize(r, c)),
        2 => Just(Op::Eof),
        1 => Just(Op::Garbage),
        1 => Just(Op::Empty),
        2 => (0u64..60).prop_map(Op::Pause),
        1 => Just(Op::HalfClose),
        1 => Just(Op::Cancel),
    ]
}

/// A start op first most of the time, so sessions actually run.
fn script() -> impl Strategy<Value = Vec<Op>> {
    (
        any::<bool>(),
        (0..COMMANDS.len()),
        any::<bool>(),
        proptest::collection::vec(op(), 0..12),
    )
        .prop_map(|(lead_with_start, command, tty, mut ops)| {
            if lead_with_start {
                ops.insert(
                    0,
                    Op::Start {
                        tty,
                        command,
                        rows: 24,
                        cols: 80,
                    },
                );
            }
            ops
        })
}

fn message(op: &Op) -> Option<ExecMessage> {
    let payload = match op {
        Op::Start {
            tty,
            command,
            rows,
            cols,
        } => Payload::StartRequest(ExecStartRequest {
            command: COMMANDS[*command].iter().map(|s| s.to_string()).collect(),
            tty: *tty,
            rows: *rows,
            cols: *cols,
            ..Default::default()
        }),
        Op::Input(data) => return Some(input_msg(Bytes::from(data.clone()))),
        Op::Resize(r, c) => return Some(resize_msg(*r, *c)),
        Op::Eof => return Some(eof_msg()),
        Op::Garbage => Payload::OutputData(ExecOutputData::default()),
        Op::Empty => return Some(ExecMessage::default()),
        Op::Pause(_) | Op::HalfClose | Op::Cancel => return None,
    };
    Some(ExecMessage {
        session_id: String::new(),
        payload: Some(payload),
    })
}

struct Fixture {
    runtime: tokio::runtime::Runtime,
    server: TestServer,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut cfg = config();
        cfg.manager.backend = execd_session::BackendConfig::Host;
        cfg.start_timeout = Duration::from_secs(2);
        let server = runtime.block_on(start_server(cfg));
        Fixture { runtime, server }
    })
}

async fn run_script(server: &TestServer, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut client = ExecServiceClient::new(server.channel().await);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let mut stream = client
        .exec_stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut tx = Some(tx);
    for op in &ops {
        match op {
            Op::Pause(ms) => tokio::time::sleep(Duration::from_millis(*ms)).await,
            Op::HalfClose => tx = None,
            Op::Cancel => return Ok(()), // dropping everything cancels
            other => {
                if let (Some(t), Some(m)) = (&tx, message(other)) {
                    // The server may have ended the stream already.
                    let _ = t.send(m).await;
                }
            }
        }
    }
    drop(tx);
    let mut statuses = Vec::new();
    let mut rpc_error = None;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(15), stream.message()).await;
        let next = next.map_err(|_| {
            TestCaseError::fail(format!("no end within 15s for {ops:?}: {statuses:?}"))
        })?;
        match next {
            Ok(Some(msg)) => {
                if let Some(Payload::Status(s)) = msg.payload {
                    statuses.push(WireStatus::try_from(s.status).unwrap());
                } else {
                    prop_assert!(
                        statuses.iter().all(|s| *s == WireStatus::Started),
                        "output after the terminal status: {statuses:?}"
                    );
                }
            }
            Ok(None) => break,
            Err(status) => {
                rpc_error = Some(status);
                break;
            }
        }
    }
    let terminal: Vec<_> = statuses
        .iter()
        .filter(|s| matches!(s, WireStatus::Exited | WireStatus::Error))
        .collect();
    prop_assert_eq!(terminal.len(), 1, "statuses {:?} for {:?}", statuses, ops);
    prop_assert!(matches!(
        statuses.last(),
        Some(WireStatus::Exited | WireStatus::Error)
    ));
    prop_assert!(
        statuses
            .iter()
            .filter(|s| **s == WireStatus::Started)
            .count()
            <= 1
    );
    if statuses.contains(&WireStatus::Started) {
        prop_assert_eq!(statuses[0], WireStatus::Started);
    }
    prop_assert_eq!(
        rpc_error.is_some(),
        *statuses.last().unwrap() == WireStatus::Error
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, max_shrink_iters: 32, ..ProptestConfig::default() })]

    #[test]
    fn any_message_sequence_ends_with_exactly_one_terminal_status(ops in script()) {
        let f = fixture();
        f.runtime.block_on(run_script(&f.server, ops))?;
    }
}

/// Runs after (and concurrently with) the property cases: whatever they
/// did, the registry drains to zero.
#[test]
fn registry_drains_after_random_sessions() {
    let f = fixture();
    f.runtime.block_on(async {
        for ops in [
            vec![
                Op::Start {
                    tty: true,
                    command: 0,
                    rows: 0,
                    cols: 0,
                },
                Op::Input(b"x".to_vec()),
                Op::Cancel,
            ],
            vec![
                Op::Start {
                    tty: false,
                    command: 0,
                    rows: 0,
                    cols: 0,
                },
                Op::Garbage,
            ],
            vec![Op::Input(vec![1, 2, 3])],
        ] {
            run_script(&f.server, ops).await.unwrap();
        }
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let list = f.server.sessions("").await;
            if list.sessions.is_empty() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} sessions left",
                list.sessions.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}
