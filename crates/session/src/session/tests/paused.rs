//! The session's timing rules on a paused clock: every wait is virtual, so
//! each test asserts the exact instant (or order) something happens and
//! fails if a timer fires a millisecond early or late.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use super::{collect, quick_config};
use crate::backend::fake::{self, FakeHandle};
use crate::command::{ExecSpec, SessionKind, TermSize};
use crate::reason::EndReason;
use crate::reattach::replay::{ReattachConfig, ReplayFrom};
use crate::reattach::{ReattachRequest, ReattachTable};
use crate::registry::{Limits, Registry, SessionEntry};
use crate::session::{
    launch, Launch, LifecycleConfig, OutputStream, Session, SessionEvent, SessionInput,
    INPUT_DEPTH, STDIN_PIECE,
};
use crate::term_size::INPUT_WAITS_FOR_RESIZE;
use tokio_util::sync::CancellationToken;

const MS: Duration = Duration::from_millis(1);

/// A session on a fake process, of `kind`, reattachable through `table`.
fn start_with(
    kind: SessionKind,
    tty: bool,
    config: LifecycleConfig,
    table: Option<std::sync::Arc<ReattachTable>>,
) -> (Session, FakeHandle, std::sync::Arc<Registry>) {
    let registry = Registry::new(Limits::default());
    let spec = ExecSpec {
        command: vec!["fake".into()],
        tty,
        kind,
        ..ExecSpec::default()
    };
    let id = crate::manager::new_session_id();
    let entry = SessionEntry::new(id.clone(), &spec, &CancellationToken::new());
    let registration = registry.register(entry).expect("room in the registry");
    let (process, handle) = fake::process(tty, 1024);
    let session = launch(Launch {
        id,
        marker: crate::manager::new_session_id(),
        process,
        initial_size: TermSize::default(),
        registration,
        container: None,
        config: std::sync::Arc::new(config),
        spawned_at: std::time::Instant::now(),
        reattach: table,
    });
    (session, handle, registry)
}

fn start(config: LifecycleConfig) -> (Session, FakeHandle, std::sync::Arc<Registry>) {
    start_with(SessionKind::default(), false, config, None)
}

/// How long after `t0` the session was asked to end, and why.
async fn ended_after(input: &SessionInput, t0: Instant) -> (Duration, EndReason) {
    input.control.token().cancelled().await;
    (t0.elapsed(), input.control.reason())
}

/// Whether `n` bytes arrive on the fake's stdin within `wait` (virtual).
async fn stdin_within(handle: &mut FakeHandle, n: usize, wait: Duration) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; n];
    match tokio::time::timeout(wait, handle.stdin.read_exact(&mut buf)).await {
        Ok(Ok(_)) => Some(buf),
        _ => None,
    }
}

// --- The pump ----------------------------------------------------------------

/// Without the sweep for leftovers after the exit: it scans `/proc` on
/// worker threads, whose real time a paused clock cannot follow (the
/// clock jumps to that scan's timeout), and the fake has no container.
fn pump_config() -> LifecycleConfig {
    LifecycleConfig {
        keep_background_processes: true,
        ..quick_config(None)
    }
}

/// Chunks come in order and whole; EXITED only once the output closed,
/// even when the exit came first and output kept coming for a while.
#[tokio::test(start_paused = true)]
async fn exited_follows_the_last_output_drained_after_the_exit() {
    let (session, handle, _registry) = start(pump_config());
    let mut events = session.output.into_receiver();
    let t0 = Instant::now();
    handle.print(OutputStream::Stdout, b"a").await;
    handle.print(OutputStream::Stderr, b"b").await;
    handle.exit(7);
    let late: [&'static [u8]; 3] = [b"c", b"d", b"e"];
    for chunk in late {
        // Each within drain_idle (100 ms) of the one before.
        tokio::time::sleep(90 * MS).await;
        handle.print(OutputStream::Stdout, chunk).await;
    }
    tokio::time::sleep(90 * MS).await;
    handle.close_output().await;
    let mut got = Vec::new();
    loop {
        match events.recv().await {
            Some(SessionEvent::Output { stream, data }) => got.push((stream, data)),
            Some(SessionEvent::Exited { code }) => {
                assert_eq!(code, 7);
                assert_eq!(
                    t0.elapsed(),
                    360 * MS,
                    "EXITED right after the output closed"
                );
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let expected = [
        (OutputStream::Stdout, "a"),
        (OutputStream::Stderr, "b"),
        (OutputStream::Stdout, "c"),
        (OutputStream::Stdout, "d"),
        (OutputStream::Stdout, "e"),
    ];
    let got: Vec<_> = got
        .iter()
        .map(|(s, d)| (*s, std::str::from_utf8(d).unwrap_or("?")))
        .collect();
    assert_eq!(got, expected);
    assert!(events.recv().await.is_none());
}

/// Output held open after the exit (a background writer) is given
/// drain_idle after the last byte, then EXITED comes anyway.
#[tokio::test(start_paused = true)]
async fn a_pipe_held_open_after_the_exit_is_drained_for_drain_idle() {
    let (session, handle, _registry) = start(pump_config());
    let mut events = session.output.into_receiver();
    let t0 = Instant::now();
    handle.exit(0);
    tokio::time::sleep(60 * MS).await;
    handle.print(OutputStream::Stdout, b"late").await;
    let (out, end) = collect(&mut events).await;
    assert_eq!(out, b"late");
    assert!(
        matches!(end, Some(SessionEvent::Exited { code: 0 })),
        "{end:?}"
    );
    // The last byte at 60 ms, drain_idle 100 ms.
    assert_eq!(t0.elapsed(), 160 * MS);
}

// --- The stdin writer --------------------------------------------------------

/// A process that does not read holds the client back for as long as it
/// does not read; once it reads, every byte arrives, then EOF.
#[tokio::test(start_paused = true)]
async fn backpressure_lasts_as_long_as_the_process_does_not_read() {
    let (mut session, mut handle, _registry) = start(quick_config(None));
    let total = STDIN_PIECE * (INPUT_DEPTH + 4);
    let message: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
    let sent = Bytes::from(message.clone());
    let writer = tokio::spawn(async move {
        let ok = session.input.write(sent).await;
        session.input.close_stdin().await;
        (ok, session)
    });
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(
        !writer.is_finished(),
        "an hour later the client still waits"
    );
    let mut all = Vec::new();
    handle.stdin.read_to_end(&mut all).await.expect("read");
    assert_eq!(
        all.len(),
        total,
        "EOF comes after the last byte, not before"
    );
    assert_eq!(all, message);
    let (ok, _session) = writer.await.expect("writer");
    assert!(ok);
}

/// Input typed after a resize reaches the terminal once the size is
/// applied, and no later than INPUT_WAITS_FOR_RESIZE if it never is.
#[tokio::test(start_paused = true)]
async fn input_after_a_resize_waits_for_it_at_most_a_second() {
    for (delay, expected) in [
        (Duration::from_millis(300), Duration::from_millis(300)),
        (Duration::from_secs(5), INPUT_WAITS_FOR_RESIZE),
    ] {
        let (mut session, mut handle, _registry) =
            start_with(SessionKind::default(), true, quick_config(None), None);
        *handle.resize_delay.lock().expect("lock") = delay;
        let t0 = Instant::now();
        session.input.resize(40, 120);
        assert!(session.input.write(Bytes::from_static(b"x")).await);
        let got = stdin_within(&mut handle, 1, Duration::from_secs(60)).await;
        assert_eq!(got.as_deref(), Some(&b"x"[..]));
        assert_eq!(t0.elapsed(), expected, "resize taking {delay:?}");
    }
}

// --- The idle timeout --------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn the_idle_timeout_fires_exactly_after_the_quiet_time() {
    let (session, _handle, _registry) = start(quick_config(Some(300 * MS)));
    let t0 = Instant::now();
    assert_eq!(
        ended_after(&session.input, t0).await,
        (300 * MS, EndReason::IdleTimeout)
    );
}

#[tokio::test(start_paused = true)]
async fn output_and_input_push_the_idle_timeout_back() {
    let (session, handle, _registry) = start(quick_config(Some(300 * MS)));
    let mut events = session.output.into_receiver();
    let t0 = Instant::now();
    tokio::time::sleep(200 * MS).await;
    handle.print(OutputStream::Stdout, b".").await;
    assert!(matches!(
        events.recv().await,
        Some(SessionEvent::Output { .. })
    ));
    assert_eq!(
        ended_after(&session.input, t0).await,
        (500 * MS, EndReason::IdleTimeout),
        "300 ms after the output at 200 ms"
    );

    let (mut session, mut handle, _registry) = start(quick_config(Some(300 * MS)));
    let t0 = Instant::now();
    tokio::time::sleep(250 * MS).await;
    assert!(session.input.write(Bytes::from_static(b"k")).await);
    assert!(stdin_within(&mut handle, 1, MS).await.is_some());
    assert_eq!(
        ended_after(&session.input, t0).await,
        (550 * MS, EndReason::IdleTimeout),
        "300 ms after the input at 250 ms"
    );
}

// --- EOF ---------------------------------------------------------------------

/// An attach shares PID 1's stdin: the client's EOF is not passed on, and
/// its later input still is.
#[tokio::test(start_paused = true)]
async fn an_attach_never_passes_eof_on() {
    let (mut session, mut handle, _registry) =
        start_with(SessionKind::Attach, false, quick_config(None), None);
    assert!(session.input.write(Bytes::from_static(b"ab")).await);
    session.input.close_stdin().await;
    assert!(session.input.write(Bytes::from_static(b"cd")).await);
    assert_eq!(
        stdin_within(&mut handle, 4, MS).await.as_deref(),
        Some(&b"abcd"[..])
    );
    // No EOF: an hour later a read still waits.
    let mut rest = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(3600), handle.stdin.read(&mut rest)).await;
    assert!(read.is_err(), "stdin stays open: {read:?}");
}

/// After EOF, input is dropped: the process sees the bytes before it, then
/// end-of-file, and nothing after.
#[tokio::test(start_paused = true)]
async fn input_after_eof_is_dropped() {
    let (mut session, mut handle, _registry) = start(quick_config(None));
    assert!(session.input.write(Bytes::from_static(b"before")).await);
    session.input.close_stdin().await;
    assert!(session.input.write(Bytes::from_static(b"after")).await);
    let mut all = Vec::new();
    handle.stdin.read_to_end(&mut all).await.expect("read");
    assert_eq!(all, b"before");
}

// --- The reattach grace ------------------------------------------------------

const GRACE: Duration = Duration::from_secs(30);

fn table() -> std::sync::Arc<ReattachTable> {
    ReattachTable::new(
        ReattachConfig {
            grace: GRACE,
            buffer: 1024,
            total: 1 << 20,
        },
        CancellationToken::new(),
    )
}

fn request(id: &str) -> ReattachRequest {
    ReattachRequest {
        session_id: id.to_string(),
        container_id: String::new(),
        instance_id: String::new(),
        owner: String::new(),
        from: ReplayFrom::Undelivered,
        size: None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_detached_session_ends_exactly_when_the_grace_passes() {
    let table = table();
    let (session, handle, registry) = start_with(
        SessionKind::default(),
        false,
        quick_config(None),
        Some(table),
    );
    let t0 = Instant::now();
    session.input.end(EndReason::ClientGone);
    drop(session.output);
    tokio::time::sleep(GRACE - MS).await;
    assert_eq!(registry.total(), 1, "still running just before the grace");
    assert!(!handle.killed.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(
        ended_after(&session.input, t0).await,
        (GRACE, EndReason::ClientGone)
    );
    registry.drained().await;
    assert!(handle.killed.load(std::sync::atomic::Ordering::SeqCst));
}

#[tokio::test(start_paused = true)]
async fn a_session_reattached_within_the_grace_survives_it() {
    let table = table();
    let (session, handle, registry) = start_with(
        SessionKind::default(),
        false,
        quick_config(None),
        Some(table.clone()),
    );
    let id = session.id.clone();
    session.input.end(EndReason::ClientGone);
    drop(session.output);
    tokio::time::sleep(GRACE - MS).await;
    // What the process printed while nobody was there is replayed.
    handle.print(OutputStream::Stdout, b"missed").await;
    let back = table
        .reattach(&request(&id))
        .await
        .expect("the owner may come back")
        .expect("the session is still there");
    assert!(back.reattached);
    tokio::time::sleep(GRACE * 10).await;
    assert!(
        !back.input.control.token().is_cancelled(),
        "the grace no longer runs"
    );
    assert_eq!(registry.total(), 1);
    let mut events = back.output.into_receiver();
    handle.close_output().await;
    handle.exit(0);
    let (out, end) = collect(&mut events).await;
    assert_eq!(out, b"missed");
    assert!(
        matches!(end, Some(SessionEvent::Exited { code: 0 })),
        "{end:?}"
    );
}
