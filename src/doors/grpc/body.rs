//! A response stream written by an async body: the body sends items
//! through a [`Yield`] one at a time, and the stream hands each to its
//! consumer when polled. The body runs inside the consumer's polls, not as
//! a task of its own, and goes on only after its last item was taken; so
//! a session's event is taken from the session only when tonic asks for
//! the next message (what a reattaching client's replay counts on), and
//! dropping the stream (a reset call) drops the body where it stands.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures_util::Stream;

/// The body's end of a [`BodyStream`].
pub(crate) struct Yield<T> {
    slot: Arc<Mutex<Option<T>>>,
}

impl<T> Yield<T> {
    /// Hands `item` to the consumer; resolves once it was taken.
    pub(crate) async fn send(&self, item: T) {
        *lock(&self.slot) = Some(item);
        // No waker: only the consumer's next poll takes the item, and that
        // poll polls the body again.
        std::future::poll_fn(|_| {
            if lock(&self.slot).is_none() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

/// The items of an async body, in order; ends when the body returns.
pub(crate) struct BodyStream<T> {
    body: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    slot: Arc<Mutex<Option<T>>>,
}

impl<T: Send + 'static> BodyStream<T> {
    pub(crate) fn new<F, B>(body: B) -> Self
    where
        B: FnOnce(Yield<T>) -> F,
        F: Future<Output = ()> + Send + 'static,
    {
        let slot = Arc::new(Mutex::new(None));
        let out = Yield { slot: slot.clone() };
        BodyStream {
            body: Some(Box::pin(body(out))),
            slot,
        }
    }
}

impl<T> Stream for BodyStream<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let Some(body) = self.body.as_mut() else {
            return Poll::Ready(None);
        };
        let done = body.as_mut().poll(cx).is_ready();
        if done {
            self.body = None;
        }
        match lock(&self.slot).take() {
            Some(item) => Poll::Ready(Some(item)),
            None if done => Poll::Ready(None),
            None => Poll::Pending,
        }
    }
}

fn lock<T>(slot: &Mutex<Option<T>>) -> MutexGuard<'_, Option<T>> {
    // Nothing panics while holding it; a poisoned slot is still a slot.
    slot.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn items_come_in_order_and_the_body_waits_for_each_to_be_taken() {
        let produced = Arc::new(AtomicUsize::new(0));
        let counter = produced.clone();
        let mut stream = BodyStream::new(move |out| async move {
            for i in 0..3 {
                counter.fetch_add(1, Ordering::SeqCst);
                out.send(i).await;
            }
        });
        assert_eq!(produced.load(Ordering::SeqCst), 0, "nothing runs unpolled");
        assert_eq!(stream.next().await, Some(0));
        assert_eq!(produced.load(Ordering::SeqCst), 1, "one item ahead at most");
        assert_eq!(stream.next().await, Some(1));
        assert_eq!(stream.next().await, Some(2));
        assert_eq!(stream.next().await, None);
        assert_eq!(stream.next().await, None);
    }

    #[tokio::test]
    async fn dropping_the_stream_drops_the_body() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut stream = BodyStream::new(move |out| async move {
            let _held = tx;
            out.send(1).await;
            std::future::pending::<()>().await;
        });
        assert_eq!(stream.next().await, Some(1));
        drop(stream);
        assert!(rx.await.is_err(), "the body's state was dropped with it");
    }

    #[tokio::test]
    async fn a_body_that_waits_wakes_its_consumer() {
        let (tx, rx) = tokio::sync::oneshot::channel::<u8>();
        let mut stream = BodyStream::new(move |out| async move {
            if let Ok(v) = rx.await {
                out.send(v).await;
            }
        });
        let consumer = tokio::spawn(async move { stream.next().await });
        tokio::task::yield_now().await;
        let _ = tx.send(7);
        assert_eq!(consumer.await.ok().flatten(), Some(7));
    }
}
