//! The session core without Docker: a fake backend (`backend::fake`)
//! stands in for the process, so the stdin writer, the pump, draining,
//! EOF rules, idle timeout and ending are tested as they run.

use std::sync::atomic::Ordering;

use super::*;

fn input(tty: bool) -> (SessionInput, mpsc::Receiver<StdinCommand>) {
    let (tx, rx) = mpsc::channel(INPUT_DEPTH);
    let (size, _rx) = SizeChannel::new(TermSize::default());
    let input = SessionInput {
        stdin: tx,
        size,
        last_resize: 0,
        control: Arc::new(SessionControl::new(&CancellationToken::new())),
        done: CancellationToken::new(),
        tty,
        eof_sent: false,
        attach: false,
        relay: None,
    };
    (input, rx)
}

/// A large message is queued in pieces of at most STDIN_PIECE, copied,
/// in order and complete; the queue never holds more than its bound.
#[tokio::test]
async fn large_input_is_split_into_bounded_pieces() {
    let (mut input, mut rx) = input(false);
    let message: Vec<u8> = (0..(STDIN_PIECE * 5 + 17)).map(|i| i as u8).collect();
    let sent = Bytes::from(message.clone());
    let writer = tokio::spawn(async move { input.write(sent).await });
    let mut got = Vec::new();
    let mut pieces = 0;
    while got.len() < message.len() {
        match rx.recv().await {
            Some(StdinCommand::Data(piece, _)) => {
                assert!(piece.len() <= STDIN_PIECE);
                assert!(rx.len() < INPUT_DEPTH);
                got.extend_from_slice(&piece);
                pieces += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(writer.await.unwrap());
    assert_eq!(got, message);
    assert_eq!(pieces, 6);
}

/// Input after a resize carries that resize's number (so the writer
/// holds it until the terminal has the size); after EOF, input is
/// dropped and EOF is sent once.
#[tokio::test]
async fn input_carries_its_resize_and_eof_is_final() {
    let (mut input, mut rx) = input(true);
    input.resize(30, 100);
    assert!(input.write(Bytes::from_static(b"a")).await);
    assert!(matches!(rx.recv().await, Some(StdinCommand::Data(_, 1))));
    input.close_stdin().await;
    input.close_stdin().await;
    assert!(input.write(Bytes::from_static(b"late")).await);
    assert!(matches!(rx.recv().await, Some(StdinCommand::Eof)));
    assert!(rx.try_recv().is_err());
}

// --- A whole session over the fake backend ---------------------------------

use crate::backend::fake::{self, FakeHandle};
use crate::command::ExecSpec;
use crate::registry::{Limits, Registry, SessionEntry};
use tokio::io::AsyncReadExt;

/// Short drains, so a test waits milliseconds, not the defaults' seconds.
fn quick_config(idle_timeout: Option<Duration>) -> LifecycleConfig {
    LifecycleConfig {
        drain_idle: Duration::from_millis(100),
        drain_max: Duration::from_secs(2),
        kill_grace: Duration::from_millis(100),
        idle_timeout,
        resize_nudges: Vec::new(),
        start_size_wait: Duration::from_millis(100),
        keep_background_processes: false,
    }
}

/// A session launched on a fake process; the registry shows it until it
/// ends.
fn start(
    tty: bool,
    stdin_buffer: usize,
    config: LifecycleConfig,
) -> (Session, FakeHandle, Arc<Registry>) {
    let registry = Registry::new(Limits::default());
    let spec = ExecSpec {
        command: vec!["fake".into()],
        tty,
        ..ExecSpec::default()
    };
    let id = crate::manager::new_session_id();
    let entry = SessionEntry::new(id.clone(), &spec, &CancellationToken::new());
    let registration = registry.register(entry).expect("room in the registry");
    let (process, handle) = fake::process(tty, stdin_buffer);
    let session = launch(Launch {
        id,
        marker: crate::manager::new_session_id(),
        process,
        initial_size: TermSize::default(),
        registration,
        container: None,
        config: Arc::new(config),
        spawned_at: std::time::Instant::now(),
        reattach: None,
    });
    (session, handle, registry)
}

/// Every event until the terminal one: (output bytes, terminal event).
async fn collect(events: &mut SessionEvents) -> (Vec<u8>, Option<SessionEvent>) {
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(20), events.recv())
            .await
            .expect("the session ends")
        {
            Some(SessionEvent::Output { data, .. }) => out.extend_from_slice(&data),
            other => return (out, other),
        }
    }
}

async fn read_stdin(handle: &mut FakeHandle, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(Duration::from_secs(10), handle.stdin.read_exact(&mut buf))
        .await
        .expect("stdin arrives")
        .expect("read");
    buf
}

#[tokio::test]
async fn output_arrives_in_order_then_the_exit() {
    let (session, handle, registry) = start(false, 1024, quick_config(None));
    let mut events = session.output.into_receiver();
    handle.print(OutputStream::Stdout, b"one ").await;
    handle.print(OutputStream::Stderr, b"two ").await;
    handle.print(OutputStream::Stdout, b"three").await;
    handle.close_output().await;
    handle.exit(3);
    let (out, end) = collect(&mut events).await;
    assert_eq!(out, b"one two three");
    assert!(
        matches!(end, Some(SessionEvent::Exited { code: 3 })),
        "{end:?}"
    );
    // Let go of before the last event (the OCI backend's cgroup ends
    // there), once, and an exit is not a kill.
    assert_eq!(handle.finished.load(Ordering::SeqCst), 1);
    assert!(!handle.killed.load(Ordering::SeqCst));
    assert!(events.recv().await.is_none(), "nothing after the end");
    drop(session.input);
    tokio::time::timeout(Duration::from_secs(5), registry.drained())
        .await
        .expect("the registration is released");
}

#[tokio::test]
async fn output_after_the_exit_is_drained_before_exited() {
    let (session, handle, _registry) = start(false, 1024, quick_config(None));
    let mut events = session.output.into_receiver();
    handle.exit(0);
    // A background writer still holds the pipe for a moment.
    handle.print(OutputStream::Stdout, b"late ").await;
    handle.print(OutputStream::Stdout, b"but whole").await;
    handle.close_output().await;
    let (out, end) = collect(&mut events).await;
    assert_eq!(out, b"late but whole");
    assert!(
        matches!(end, Some(SessionEvent::Exited { code: 0 })),
        "{end:?}"
    );
}

#[tokio::test]
async fn stdin_is_written_in_order_and_eof_closes_the_pipe() {
    let (mut session, mut handle, _registry) = start(false, 1024, quick_config(None));
    assert!(session.input.write(Bytes::from_static(b"ab")).await);
    assert!(session.input.write(Bytes::from_static(b"cd")).await);
    session.input.close_stdin().await;
    assert!(session.input.write(Bytes::from_static(b"dropped")).await);
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), handle.stdin.read_to_end(&mut all))
        .await
        .expect("EOF arrives")
        .unwrap();
    assert_eq!(all, b"abcd", "input after EOF is dropped");
    handle.close_output().await;
    handle.exit(0);
}

#[tokio::test]
async fn a_terminal_gets_its_eof_character_twice_mid_line_once_at_line_start() {
    for (typed, expected) in [
        (&b"abc"[..], &b"abc\x04\x04"[..]),
        (&b"abc\r"[..], &b"abc\r\x04"[..]),
    ] {
        let (mut session, mut handle, _registry) = start(true, 1024, quick_config(None));
        assert!(session.input.write(Bytes::copy_from_slice(typed)).await);
        session.input.close_stdin().await;
        assert_eq!(read_stdin(&mut handle, expected.len()).await, expected);
        handle.close_output().await;
        handle.exit(0);
    }
}

#[tokio::test]
async fn a_process_that_does_not_read_holds_the_writer_back() {
    let (mut session, mut handle, _registry) = start(false, 16, quick_config(None));
    let total = STDIN_PIECE * (INPUT_DEPTH + 4);
    let writer = tokio::spawn(async move {
        let ok = session.input.write(Bytes::from(vec![7u8; total])).await;
        (ok, session)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!writer.is_finished(), "backpressure: the queue is bounded");
    let got = read_stdin(&mut handle, total).await;
    assert!(got.iter().all(|b| *b == 7));
    let (ok, _session) = writer.await.unwrap();
    assert!(ok);
    handle.close_output().await;
    handle.exit(0);
}

#[tokio::test]
async fn a_process_that_closed_its_stdin_does_not_stall_the_client() {
    let (mut session, handle, _registry) = start(false, 16, quick_config(None));
    let FakeHandle { stdin, .. } = handle;
    drop(stdin);
    for _ in 0..(INPUT_DEPTH * 4) {
        let wrote = tokio::time::timeout(
            Duration::from_secs(5),
            session.input.write(Bytes::from_static(b"into the void")),
        )
        .await
        .expect("input is discarded, not held");
        assert!(wrote);
    }
}

#[tokio::test]
async fn a_client_that_goes_away_ends_the_session_and_kills_the_process() {
    let (session, handle, registry) = start(false, 1024, quick_config(None));
    assert_eq!(registry.total(), 1);
    session.input.end(EndReason::ClientGone);
    drop(session.output);
    tokio::time::timeout(Duration::from_secs(10), registry.drained())
        .await
        .expect("the session ends");
    assert!(handle.killed.load(std::sync::atomic::Ordering::SeqCst));
}

#[tokio::test]
async fn dropping_the_output_is_the_client_leaving() {
    let (session, handle, registry) = start(false, 1024, quick_config(None));
    handle
        .print(OutputStream::Stdout, b"nobody reads this")
        .await;
    drop(session.output);
    tokio::time::timeout(Duration::from_secs(10), registry.drained())
        .await
        .expect("the session ends");
    assert!(handle.killed.load(std::sync::atomic::Ordering::SeqCst));
    drop(session.input);
}

#[tokio::test]
async fn an_ended_session_reports_its_reason() {
    let (session, handle, _registry) = start(false, 1024, quick_config(None));
    let mut events = session.output.into_receiver();
    session.input.end(EndReason::SecondStart);
    let (_, end) = collect(&mut events).await;
    match end {
        Some(SessionEvent::Failed(err)) => {
            assert!(err.to_string().contains("start"), "{err}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert!(handle.killed.load(Ordering::SeqCst));
    assert_eq!(
        handle.finished.load(Ordering::SeqCst),
        1,
        "killed, then let go of once"
    );
}

#[tokio::test]
async fn a_quiet_session_ends_at_its_idle_timeout() {
    let (session, handle, _registry) =
        start(false, 1024, quick_config(Some(Duration::from_millis(300))));
    let mut events = session.output.into_receiver();
    let started = std::time::Instant::now();
    let (_, end) = collect(&mut events).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    match end {
        Some(SessionEvent::Failed(err)) => assert!(err.to_string().contains("idle"), "{err}"),
        other => panic!("expected the idle end, got {other:?}"),
    }
    assert!(handle.killed.load(std::sync::atomic::Ordering::SeqCst));
    drop(session.input);
}

#[tokio::test]
async fn output_keeps_an_idle_timeout_away() {
    let (session, handle, _registry) =
        start(false, 1024, quick_config(Some(Duration::from_millis(400))));
    let mut events = session.output.into_receiver();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        handle.print(OutputStream::Stdout, b".").await;
    }
    handle.close_output().await;
    handle.exit(0);
    let (out, end) = collect(&mut events).await;
    assert_eq!(out, b"......");
    assert!(
        matches!(end, Some(SessionEvent::Exited { code: 0 })),
        "{end:?}"
    );
    drop(session.input);
}

#[tokio::test]
async fn a_terminal_takes_sizes_a_pipe_ignores_them() {
    let (mut session, handle, _registry) = start(true, 1024, quick_config(None));
    session.input.resize(40, 120);
    session.input.resize(0, -5);
    session.input.resize(9000, 9000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sizes = handle.sizes.lock().unwrap().clone();
    // Coalesced: the latest size wins, whatever came between.
    assert_eq!(
        sizes.last(),
        Some(&TermSize::from_client(9000, 9000)),
        "{sizes:?}"
    );
    handle.close_output().await;
    handle.exit(0);

    let (mut session, handle, _registry) = start(false, 1024, quick_config(None));
    session.input.resize(40, 120);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(handle.sizes.lock().unwrap().is_empty());
}

mod paused;
