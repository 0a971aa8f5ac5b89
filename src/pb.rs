//! The generated `router.v1` protobuf types, their proto3 JSON mapping, the gRPC service, and
//! the descriptor set served through reflection.

#[allow(missing_docs, clippy::all, clippy::pedantic)]
mod generated {
    tonic::include_proto!("router.v1");
    include!(concat!(env!("OUT_DIR"), "/router.v1.serde.rs"));
}

pub use generated::*;

/// The encoded file descriptor set of `router.v1`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("router_descriptor");
