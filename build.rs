//! Generates the gRPC code, the reflection descriptor set and the proto3 JSON mapping (serde,
//! via pbjson) from `proto/` with a vendored `protoc`, so a build needs no system protobuf
//! compiler.

use std::{env, error::Error, path::PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    let proto = "proto/router/v1/router.proto";
    println!("cargo:rerun-if-changed={proto}");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let descriptor_path = out_dir.join("router_descriptor.bin");
    tonic_prost_build::configure()
        .codec_path("crate::server::codec::RouterCodec")
        .file_descriptor_set_path(&descriptor_path)
        .compile_with_config(config, &[proto], &["proto"])?;
    // The JSON mapping lets the CLI read requests exactly as grpcurl users write them.
    pbjson_build::Builder::new()
        .register_descriptors(&std::fs::read(&descriptor_path)?)?
        .build(&[".router.v1"])?;
    Ok(())
}
