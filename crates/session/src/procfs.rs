//! A small, bounded pool of threads for every `/proc` scan.
//!
//! Finding a session's processes reads `/proc/<pid>/environ`, which is
//! blocking file I/O, and one read can block for good: the kernel takes the
//! target's memory-map lock, and a process stuck in an uninterruptible
//! read (NFS, FUSE) can hold it indefinitely. So:
//!
//! - scans run on these threads, never on the async runtime;
//! - a caller waits at most [`SCAN_TIMEOUT`] for its job and then carries
//!   on without the answer, so one stuck read cannot hold a session's
//!   cleanup (and its count, and shutdown) forever;
//! - a stuck job holds only its own thread: when every thread is busy a new
//!   one is started, up to [`MAX_WORKERS`]; idle threads leave after a
//!   while, so the thread count returns to its baseline;
//! - a thread whose job has run for [`ABANDON_AFTER`] is abandoned: it no
//!   longer counts as a worker (a fresh one takes its place) and leaves
//!   when its job returns, if ever. Abandoned threads are bounded too
//!   ([`MAX_ABANDONED`]; beyond it jobs are refused) and counted
//!   ([`stuck_workers`], shown in execd's metrics), so stuck pids can
//!   never take the pool for good;
//! - a process whose `environ` read has been under way on another thread
//!   for longer than [`STUCK_AFTER`] is skipped (and the scan reported
//!   incomplete) instead of read again, so a stuck process costs one
//!   thread, not one per scan.
//!
//! The queue is bounded too: when it is full a job is refused at once.

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// How long a caller waits for one job.
pub const SCAN_TIMEOUT: Duration = Duration::from_secs(3);
/// Most threads at once (stuck ones included).
pub const MAX_WORKERS: usize = 8;
/// Most jobs waiting for a thread.
const QUEUE: usize = 1024;
/// An idle thread leaves after this long (one always stays).
const IDLE_EXIT: Duration = Duration::from_secs(5);
/// A job running this long has its thread abandoned (no `/proc` read takes
/// anywhere near this unless it is stuck in the kernel).
pub const ABANDON_AFTER: Duration = Duration::from_secs(10);
/// Most abandoned threads at once; beyond it the pool refuses jobs.
pub const MAX_ABANDONED: usize = 64;

#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum ProcfsError {
    #[error("the /proc job did not finish within {0:?}")]
    TimedOut(Duration),
    #[error("too many /proc jobs are waiting")]
    Busy,
    #[error("the /proc job failed")]
    Failed,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    /// Workers, abandoned ones not included.
    threads: usize,
    idle: usize,
    /// Workers running a job: since when, by worker number.
    busy: HashMap<u64, Instant>,
    /// Workers given up on, still inside their job.
    abandoned: std::collections::HashSet<u64>,
    next_worker: u64,
}

impl State {
    /// Gives up on workers whose job has run for `ABANDON_AFTER`.
    fn abandon_stuck(&mut self, now: Instant) {
        let stuck: Vec<u64> = self
            .busy
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= ABANDON_AFTER)
            .map(|(id, _)| *id)
            .collect();
        for id in stuck {
            self.busy.remove(&id);
            self.abandoned.insert(id);
            self.threads -= 1;
            tracing::warn!(worker = id, "a /proc job is stuck; its thread is abandoned");
        }
    }
}

/// Threads abandoned inside a stuck `/proc` job right now.
pub fn stuck_workers() -> usize {
    pool().lock().abandoned.len()
}

struct Pool {
    state: Mutex<State>,
    ready: Condvar,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool {
        state: Mutex::new(State::default()),
        ready: Condvar::new(),
    })
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Jobs never run under this lock, so a poisoned one holds
        // consistent data.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn submit(&'static self, job: Job) -> Result<(), ProcfsError> {
        let mut state = self.lock();
        state.abandon_stuck(Instant::now());
        if state.jobs.len() >= QUEUE || state.abandoned.len() >= MAX_ABANDONED {
            return Err(ProcfsError::Busy);
        }
        state.jobs.push_back(job);
        if state.idle == 0 && state.threads < MAX_WORKERS {
            let id = state.next_worker;
            state.next_worker += 1;
            let spawned = std::thread::Builder::new()
                .name("execd-procfs".into())
                .spawn(move || self.work(id));
            if spawned.is_ok() {
                state.threads += 1;
            } else if state.threads == 0 {
                // No thread to run it, ever: take it back.
                state.jobs.pop_back();
                return Err(ProcfsError::Failed);
            }
        }
        drop(state);
        self.ready.notify_one();
        Ok(())
    }

    fn work(&self, id: u64) {
        let mut state = self.lock();
        loop {
            if let Some(job) = state.jobs.pop_front() {
                state.busy.insert(id, Instant::now());
                drop(state);
                // A panicking job must not take the thread down.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                state = self.lock();
                state.busy.remove(&id);
                if state.abandoned.remove(&id) {
                    // Replaced while it was stuck: not a worker any more.
                    return;
                }
                continue;
            }
            state.idle += 1;
            let (next, timeout) = self
                .ready
                .wait_timeout(state, IDLE_EXIT)
                .unwrap_or_else(|p| p.into_inner());
            state = next;
            state.idle -= 1;
            if timeout.timed_out() && state.jobs.is_empty() && state.threads > 1 {
                state.threads -= 1;
                return;
            }
        }
    }
}

/// Runs `f` on the pool and returns its result, waiting at most
/// [`SCAN_TIMEOUT`]. `None` when it timed out, was refused or panicked.
pub async fn run<R, F>(f: F) -> Option<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    run_within(SCAN_TIMEOUT, f).await.ok()
}

/// [`run`] with an explicit bound.
pub async fn run_within<R, F>(timeout: Duration, f: F) -> Result<R, ProcfsError>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    pool().submit(Box::new(move || {
        let _ = tx.send(f());
    }))?;
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(_)) => Err(ProcfsError::Failed),
        Err(_) => Err(ProcfsError::TimedOut(timeout)),
    }
}

/// How long a read may be under way before other scans treat it as stuck.
/// Well above any normal read (microseconds), so that scans running side
/// by side (several sessions of one container) never skip each other's
/// processes.
pub const STUCK_AFTER: Duration = Duration::from_millis(250);

/// Pids whose `environ` is being read right now, on any thread: since when,
/// and by how many readers.
fn in_flight() -> MutexGuard<'static, HashMap<i32, (Instant, usize)>> {
    static IN_FLIGHT: OnceLock<Mutex<HashMap<i32, (Instant, usize)>>> = OnceLock::new();
    IN_FLIGHT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// Reads `/proc/<pid>/environ`, unless a read of it has been under way on
/// another thread for longer than [`STUCK_AFTER`] (then `Err(Skipped)`:
/// that read may be stuck for good, and so would this one).
pub fn read_environ(pid: i32) -> Result<Vec<u8>, EnvironRead> {
    {
        let mut reads = in_flight();
        let entry = reads.entry(pid).or_insert((Instant::now(), 0));
        if entry.1 > 0 && entry.0.elapsed() > STUCK_AFTER {
            return Err(EnvironRead::Skipped);
        }
        entry.1 += 1;
    }
    let result = std::fs::read(format!("/proc/{pid}/environ"));
    {
        let mut reads = in_flight();
        if let Some(entry) = reads.get_mut(&pid) {
            entry.1 -= 1;
            if entry.1 == 0 {
                reads.remove(&pid);
            }
        }
    }
    result.map_err(|_| EnvironRead::Unreadable)
}

/// Why an `environ` was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvironRead {
    /// Gone, or not permitted: nothing to find there.
    Unreadable,
    /// Another read of it is still under way.
    Skipped,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_and_survives_a_panicking_one() {
        assert_eq!(run(|| 2 + 2).await, Some(4));
        assert_eq!(run(|| -> i32 { panic!("job failed") }).await, None);
        assert_eq!(run(|| "still here").await, Some("still here"));
    }

    /// A job that never returns (a read stuck in the kernel) times out for
    /// its caller and does not hold up anyone else's.
    #[tokio::test]
    async fn a_stuck_job_blocks_neither_its_caller_nor_other_jobs() {
        let (release, stuck) = std::sync::mpsc::channel::<()>();
        let started = std::time::Instant::now();
        let answer = run_within(Duration::from_millis(200), move || {
            let _ = stuck.recv();
        })
        .await;
        assert_eq!(
            answer,
            Err(ProcfsError::TimedOut(Duration::from_millis(200)))
        );
        for i in 0..20 {
            assert_eq!(run(move || i).await, Some(i));
        }
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(release);
    }

    /// Workers stuck for good are abandoned and replaced: the pool keeps
    /// serving with every original worker stuck, and counts them.
    #[test]
    fn stuck_workers_are_abandoned_and_replaced() {
        let mut state = State::default();
        let now = Instant::now();
        state.threads = 3;
        state.busy.insert(1, now - ABANDON_AFTER * 2);
        state.busy.insert(2, now);
        state.abandon_stuck(now);
        assert_eq!(state.threads, 2);
        assert!(state.abandoned.contains(&1));
        assert!(state.busy.contains_key(&2));
    }

    #[test]
    fn an_environ_read_stuck_elsewhere_is_skipped_a_fresh_one_is_not() {
        let me = std::process::id() as i32;
        assert!(read_environ(me).is_ok());
        // Another reader just started: read side by side.
        in_flight().insert(me, (Instant::now(), 1));
        assert!(read_environ(me).is_ok());
        // Another reader has been at it for too long: skipped.
        let long_ago = Instant::now() - STUCK_AFTER * 2;
        in_flight().insert(me, (long_ago, 1));
        assert_eq!(read_environ(me), Err(EnvironRead::Skipped));
        in_flight().remove(&me);
        assert!(read_environ(me).is_ok());
        assert_eq!(read_environ(-7), Err(EnvironRead::Unreadable));
    }
}
