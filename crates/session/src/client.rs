//! What every front door does the same way with its client, whatever the
//! wire format: waiting for the client's start ([`await_start`]) and
//! applying what the client sends to the session ([`ClientEvent`],
//! [`deliver`]). A door only translates its frames into these events and
//! the session's events back into frames.
//!
//! The rules, in one place:
//!
//! - input after stdin EOF is dropped, and EOF is never passed on to an
//!   attached main process (both kept by [`SessionInput`] itself);
//! - once the session is over, input is not delivered ([`Flow::Stop`]): the
//!   door stops reading, or keeps reading only to finish its transport's
//!   close handshake;
//! - a client that breaks its protocol, sends too much or goes away ends
//!   the session with that reason, and nothing more is read from it.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::reason::EndReason;
use crate::session::SessionInput;

/// Why no start arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StartWaitError {
    #[error("the client sent no start in time")]
    TimedOut,
    #[error("server shutting down")]
    Shutdown,
}

/// Waits for `first` (a door's "read the first message") for at most
/// `wait`, or until `shutdown`.
pub async fn await_start<F: Future>(
    first: F,
    wait: Duration,
    shutdown: &CancellationToken,
) -> Result<F::Output, StartWaitError> {
    tokio::select! {
        first = first => Ok(first),
        _ = tokio::time::sleep(wait) => Err(StartWaitError::TimedOut),
        _ = shutdown.cancelled() => Err(StartWaitError::Shutdown),
    }
}

/// Something a client sent, in the session's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// Bytes for the process's stdin.
    Stdin(Bytes),
    /// No more stdin (a half-close or an explicit EOF).
    StdinEof,
    /// A terminal size, as the client gave it (clamped by the session).
    Resize { rows: i32, cols: i32 },
    /// The client broke its protocol, sent too much or went away.
    End(EndReason),
}

/// Whether the door should go on delivering input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Flow {
    Continue,
    /// The session is over, or was just ended.
    Stop,
}

/// Applies one client event to the session. Waits while stdin is full
/// (backpressure reaches the client through the door's transport).
pub async fn deliver(input: &mut SessionInput, event: ClientEvent) -> Flow {
    match event {
        ClientEvent::Stdin(data) => {
            if input.write(data).await {
                Flow::Continue
            } else {
                Flow::Stop
            }
        }
        ClientEvent::StdinEof => {
            input.close_stdin().await;
            Flow::Continue
        }
        ClientEvent::Resize { rows, cols } => {
            let applied = input.resize(rows, cols);
            tracing::debug!(rows, cols, ?applied, "resize");
            Flow::Continue
        }
        ClientEvent::End(reason) => {
            input.end(reason);
            Flow::Stop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn start_wait_ends_by_message_timeout_or_shutdown() {
        let shutdown = CancellationToken::new();
        let got = await_start(async { 7 }, Duration::from_secs(5), &shutdown).await;
        assert_eq!(got, Ok(7));
        let never = std::future::pending::<()>();
        let got = await_start(never, Duration::from_millis(10), &shutdown).await;
        assert_eq!(got, Err(StartWaitError::TimedOut));
        shutdown.cancel();
        let never = std::future::pending::<()>();
        let got = await_start(never, Duration::from_secs(5), &shutdown).await;
        assert_eq!(got, Err(StartWaitError::Shutdown));
    }
}
