//! Compiles the VM cache's gRPC service (`src/factory/cache/cache.proto`)
//! with protox, a protobuf compiler in Rust, so that building needs no
//! system `protoc`.

use std::error::Error;

const PROTO: &str = "src/factory/cache/cache.proto";

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed={PROTO}");
    let fds = protox::compile([PROTO], ["src/factory/cache"])?;
    tonic_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
