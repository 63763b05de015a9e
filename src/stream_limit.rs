//! Caps how many calls of one gRPC method may be open at once.
//!
//! Health `Watch` needs no token (probes must work without one) and never
//! ends on its own, so without a cap anyone who can connect could pin
//! memory with thousands of them. A call over the cap gets
//! RESOURCE_EXHAUSTED at once; the slot of an admitted call is held by its
//! response body, so it is freed when the stream ends, not when headers go
//! out.
//!
//! Calls from authenticated connections (see
//! [`crate::transport::Connection`]) and the rest have separate slots, `max`
//! each: clients without a token cannot take the watches of those with
//! one. A request that lacks the connection extension counts as
//! unauthenticated.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;
use tonic::server::NamedService;

/// Wraps a gRPC service; calls of `method` are limited to `max` at once.
#[derive(Clone)]
pub(crate) struct StreamLimit<S> {
    inner: S,
    method: &'static str,
    max: usize,
    authenticated: Arc<Semaphore>,
    unauthenticated: Arc<Semaphore>,
}

impl<S> StreamLimit<S> {
    pub(crate) fn new(inner: S, method: &'static str, max: usize) -> Self {
        StreamLimit {
            inner,
            method,
            max,
            authenticated: Arc::new(Semaphore::new(max)),
            unauthenticated: Arc::new(Semaphore::new(max)),
        }
    }
}

impl<S: NamedService> NamedService for StreamLimit<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<http::Request<Body>> for StreamLimit<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let limited = req
            .uri()
            .path()
            .rsplit('/')
            .next()
            .is_some_and(|m| m == self.method);
        if !limited {
            let fut = self.inner.call(req);
            return Box::pin(fut);
        }
        let authenticated = req
            .extensions()
            .get::<crate::transport::Connection>()
            .is_some_and(|c| c.authenticated);
        let (permits, whose) = if authenticated {
            (&self.authenticated, "")
        } else {
            (&self.unauthenticated, " from clients without a valid token")
        };
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let fut = self.inner.call(req);
                Box::pin(async move {
                    let response = fut.await?;
                    Ok(response.map(|body| {
                        Body::new(HeldBody {
                            inner: body,
                            _permit: permit,
                        })
                    }))
                })
            }
            Err(_) => {
                let status = tonic::Status::resource_exhausted(format!(
                    "more than {} concurrent {} calls{whose}",
                    self.max, self.method
                ));
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

/// A response body that holds its call's slot until it is dropped.
struct HeldBody {
    inner: Body,
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for HeldBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
