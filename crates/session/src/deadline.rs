//! An optional deadline as a future, for `select!` arms that only fire
//! when a deadline is set (the drain bound, the next terminal check, the
//! end of a detach grace).

use tokio::time::Instant;

/// Sleeps until `deadline`, or forever without one.
pub(crate) async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
