//! Compiles the CNPG-I `.proto` files in `proto/` into prost messages and tonic services
//! (servers and clients). protox parses the files in Rust, so no `protoc` is needed.

use std::path::Path;

const PROTOS: &[&str] = &[
    "identity.proto",
    "postgres.proto",
    "wal.proto",
    "restore_job.proto",
    "backup.proto",
    "operator.proto",
    "operator_lifecycle.proto",
    "reconciler.proto",
    "metrics.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = Path::new("proto");
    for p in PROTOS {
        println!("cargo:rerun-if-changed=proto/{p}");
    }
    let files: Vec<_> = PROTOS.iter().map(|p| dir.join(p)).collect();
    let descriptors = protox::compile(&files, [dir])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
