//! Open requests per connection, for the idle-connection timeout.
//!
//! A request counts as open from when it arrives until its response body
//! has ended or was dropped (an HTTP/2 stream, a gRPC call with its whole
//! streaming response, an HTTP/1.1 exchange). A connection with nothing
//! open for `--idle-connection-timeout` is asked to go away: otherwise a
//! client could hold a slot forever by answering keepalive PINGs and never
//! asking for anything.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::watch;

/// How many requests are open, and how many were ever opened (so that one
/// that came and went between two looks still counts as activity).
#[derive(Default)]
struct Count {
    open: usize,
    opened: u64,
}

/// The open-request count of one connection.
#[derive(Clone, Default)]
pub(crate) struct Activity(Arc<watch::Sender<Count>>);

impl Activity {
    /// Counts a request as open until the guard is dropped.
    pub(crate) fn open(&self) -> OpenRequest {
        self.0.send_modify(|c| {
            c.open += 1;
            c.opened += 1;
        });
        OpenRequest(self.0.clone())
    }

    /// Completes once nothing was open for `timeout` in a row; never when
    /// `timeout` is `None`.
    pub(crate) async fn idle_for(&self, timeout: Option<Duration>) {
        let Some(timeout) = timeout else {
            return std::future::pending().await;
        };
        let mut count = self.0.subscribe();
        loop {
            // The sender lives as long as `self`: these waits never fail.
            let opened = count.wait_for(|c| c.open == 0).await.map(|c| c.opened);
            let Ok(opened) = opened else {
                return std::future::pending().await;
            };
            let busy = tokio::time::timeout(
                timeout,
                count.wait_for(|c| c.open > 0 || c.opened != opened),
            )
            .await;
            if busy.is_err() {
                return;
            }
        }
    }
}

/// One open request.
pub(crate) struct OpenRequest(Arc<watch::Sender<Count>>);

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.0.send_modify(|c| c.open = c.open.saturating_sub(1));
    }
}

/// A response body that keeps its request open until it ends or is
/// dropped.
pub(crate) struct TrackedBody {
    inner: axum::body::Body,
    open: Option<OpenRequest>,
}

impl TrackedBody {
    pub(crate) fn new(inner: axum::body::Body, open: OpenRequest) -> Self {
        TrackedBody {
            inner,
            open: Some(open),
        }
    }
}

impl http_body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            // Over: the connection may idle from now on, even if hyper
            // keeps the body a while longer.
            self.open = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Only lower bounds on time: going idle too early is the bug.
    #[tokio::test]
    async fn idle_only_after_the_last_request_ended_for_the_whole_timeout() {
        let activity = Activity::default();
        let timeout = Duration::from_millis(300);
        let wait = |ms| tokio::time::sleep(Duration::from_millis(ms));
        let request = activity.open();
        let idle = activity.idle_for(Some(timeout));
        tokio::pin!(idle);
        // A request open longer than the timeout: not idle.
        tokio::select! {
            _ = idle.as_mut() => panic!("idle with a request open"),
            _ = wait(600) => {}
        }
        drop(request);
        tokio::select! {
            _ = idle.as_mut() => panic!("idle too soon"),
            _ = wait(150) => {}
        }
        // A request that comes and goes while nobody looks restarts the
        // wait all the same.
        drop(activity.open());
        let started = tokio::time::Instant::now();
        idle.await;
        assert!(started.elapsed() >= timeout);
    }

    #[tokio::test]
    async fn no_timeout_never_idles() {
        let activity = Activity::default();
        let idle = activity.idle_for(None);
        assert!(tokio::time::timeout(Duration::from_millis(200), idle)
            .await
            .is_err());
    }
}
