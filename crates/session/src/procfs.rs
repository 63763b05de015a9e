//! One worker thread for every `/proc` scan.
//!
//! Finding a session's processes reads `/proc/*/environ`, which is blocking
//! file I/O. Running it on tokio's blocking pool would grow a thread per
//! concurrent session (terminals check their size on a schedule); a single
//! dedicated thread keeps execd's thread count flat however many sessions
//! are open. Jobs are short (milliseconds) and queue in a bounded channel.

use std::sync::OnceLock;

use tokio::sync::{mpsc, oneshot};

type Job = Box<dyn FnOnce() + Send>;

const QUEUE: usize = 1024;

fn worker() -> Option<&'static mpsc::Sender<Job>> {
    static WORKER: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();
    WORKER
        .get_or_init(|| {
            let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
            std::thread::Builder::new()
                .name("execd-procfs".into())
                .spawn(move || {
                    while let Some(job) = rx.blocking_recv() {
                        // A panicking job must not take the worker down.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                })
                .ok()
                .map(|_| tx)
        })
        .as_ref()
}

/// Runs `f` on the `/proc` worker and returns its result. Falls back to
/// tokio's blocking pool if the worker cannot be used.
pub async fn run<R, F>(f: F) -> Option<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(f());
    });
    match worker() {
        Some(sender) => match sender.send(job).await {
            Ok(()) => rx.await.ok(),
            Err(mpsc::error::SendError(job)) => {
                tokio::task::spawn_blocking(job).await.ok()?;
                rx.await.ok()
            }
        },
        None => {
            tokio::task::spawn_blocking(job).await.ok()?;
            rx.await.ok()
        }
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn runs_jobs_and_survives_a_panicking_one() {
        assert_eq!(super::run(|| 2 + 2).await, Some(4));
        assert_eq!(super::run(|| -> i32 { panic!("job failed") }).await, None);
        assert_eq!(super::run(|| "still here").await, Some("still here"));
    }
}
