//! Client helpers for execd, shared by the example client, the integration
//! tests and the benchmark so that each speaks to execd the same way.
//!
//! - [`connect`]: `--addr` parsing (`host:port`, `http(s)://host:port`,
//!   `unix:/path`), TLS material and the bearer-token interceptor, turned
//!   into a tonic [`Channel`](tonic::transport::Channel); for clients that
//!   take bulk output, [`Connector::large_windows`] (large HTTP/2 frames
//!   and windows).
//! - [`message`]: builders for the client → server `ExecMessage`s (start,
//!   input, stdin EOF, resize).

pub mod connect;
pub mod message;

pub use connect::{Addr, Bearer, ConnectError, Connector, Tls};
