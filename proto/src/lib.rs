//! hutch's public gRPC API, package `hutch.v1`: generated message types, the `Agent` client
//! and server, and the encoded file-descriptor set for server reflection.
#![forbid(unsafe_code)]

pub mod auth;
pub mod units;

/// Package `hutch.v1`.
#[allow(missing_docs, clippy::all, clippy::unwrap_used)]
pub mod v1 {
    tonic::include_proto!("hutch.v1");
}

/// The encoded `FileDescriptorSet` of every hutch proto file (and the well-known types they
/// import), for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/hutch_descriptor.bin"));

/// An error with its causes, `a: b: c` (a cause already in the text is not repeated):
/// transport errors keep the useful part (refused, certificate unknown) in their causes.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A status's message, and for a transport failure its causes (where a TLS or connection
/// error says what went wrong).
pub fn status_text(status: &tonic::Status) -> String {
    match std::error::Error::source(status) {
        Some(cause) => format!("{}: {}", status.message(), error_chain(cause)),
        None => status.message().to_string(),
    }
}
