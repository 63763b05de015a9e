//! Compiles `proto/*.proto` with protox (pure Rust), so no `protoc` is needed.
use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "exec_service.proto",
    "execd_admin.proto",
    "cri_runtime.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    println!("cargo:rerun-if-changed={}", proto_dir.display());
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", proto_dir.join(proto).display());
    }
    let fds = protox::compile(PROTOS, [&proto_dir])?;
    // Kept for gRPC reflection: clients can list and describe the services
    // without having the .proto files.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("execd_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
