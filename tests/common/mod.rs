//! Shared helpers of the integration tests, by what they provide: the
//! Docker engine and its test containers ([`docker`], with `need_docker!`),
//! a real execd server in the test process ([`server`]), the real execd
//! binary in a process of its own ([`process`]), the Python that runs the
//! scripts of tests/python ([`python`]), and the clients and fixtures of
//! particular doors and deployments (the other modules).
//!
//! The suite (`tests/it`) and the tests that need a process of their own
//! include this module; the most used helpers are re-exported here, so
//! tests `use crate::common::*`.

#[macro_use]
pub mod docker;
pub mod docker_api;
pub mod h2_peer;
pub mod kube_ws;
pub mod pki;
pub mod process;
pub mod proxy;
pub mod python;
pub mod server;
pub mod shipped;

use std::time::Duration;

pub use docker::*;
pub use process::*;
pub use python::*;
pub use server::*;

/// Generous upper bound for anything a test waits for; never a timing
/// assertion, only a guard against hanging forever.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Whether this is CI (`CI=true`), where no test may pass by skipping what
/// it tests.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Says why `test` is skipped, or fails it under CI.
pub fn skip(test: &str, why: &str) {
    assert!(!in_ci(), "{test}: {why}, and CI=true");
    eprintln!("SKIPPED {test}: {why}");
}
