//! Generated code for execd's gRPC APIs.
//!
//! - [`exec_service`]: the fixed wire contract (`exec_service.ExecService`).
//! - [`admin`]: execd's own session administration API (`execd.admin.v1`).
//! - [`cri`]: the CRI `runtime.v1.RuntimeService` subset execd serves
//!   (ExecSync, Exec, Attach).
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors of both, for reflection.
//!
//! The sources live in the workspace's `proto/` directory; `build.rs` compiles
//! them with protox, so building needs no `protoc`.

#![allow(clippy::all, missing_docs)]

pub mod exec_service {
    tonic::include_proto!("exec_service");
}

pub mod admin {
    tonic::include_proto!("execd.admin.v1");
}

pub mod cri {
    tonic::include_proto!("runtime.v1");
}

/// Encoded `FileDescriptorSet` of every execd proto file.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/execd_descriptor.bin"));
