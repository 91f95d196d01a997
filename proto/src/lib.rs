//! hutch's public gRPC API, package `hutch.v1`: generated message types, the `Agent` client
//! and server, and the encoded file-descriptor set for server reflection.
#![forbid(unsafe_code)]

/// Package `hutch.v1`.
#[allow(missing_docs, clippy::all, clippy::unwrap_used)]
pub mod v1 {
    tonic::include_proto!("hutch.v1");
}

/// The encoded `FileDescriptorSet` of every hutch proto file (and the well-known types they
/// import), for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/hutch_descriptor.bin"));
