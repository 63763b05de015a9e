//! The integration suite, one test binary: each module is one area of
//! execd tested over the wire (its doors, sessions, limits, deployment and
//! docs), so test names read `exec_stream::name`, and filters like
//! `cargo test --test it -- kube_door::` pick an area.
//!
//! One binary links the server once, instead of once per area, and runs
//! every test on one pool of threads. Tests that must not share their
//! process or the machine with the rest are binaries of their own beside
//! this directory (`tests/churn.rs`, a load test).

#[macro_use]
#[path = "../common/mod.rs"]
mod common;

mod admin_rights;
mod auth_refusals;
mod bad_input;
mod browser_attack;
mod connection_limits;
mod cri_door;
mod cri_limits;
mod deploy;
mod docker_door;
mod docker_engine_door;
mod docs;
mod engine_backend;
mod engine_limits;
mod exec_stream;
mod exec_stream_refusals;
mod hardening;
mod interop_python;
mod kube_door;
mod kubectl;
mod lifecycle;
mod oci_backend;
mod operability;
mod protocol_props;
mod reattach;
mod reattach_rights;
mod security;
mod terminal_door;
mod web_terminal;
