//! hutch's cluster PKI.
//!
//! A cluster has one CA, made by the controller on its first start ([`ca::ClusterCa`]). The
//! controller serves with a certificate it issues itself at every start; an agent gets its
//! node certificate by joining: it makes its own key and a signing request
//! ([`node::NodeRequest`]), and trades them with a short-lived [`join_token::JoinToken`] for a
//! certificate over a connection pinned to the CA's fingerprint ([`pinned`]). From then on
//! both sides speak mutual TLS ([`material::TlsMaterial`]) and tell who is calling by the
//! names in the peer's certificate ([`peer::Peer`]).
#![forbid(unsafe_code)]

pub mod ca;
pub mod join_token;
pub mod material;
pub mod node;
pub mod peer;
pub mod pinned;

use hutch_core::atomic_file::Durability;
use thiserror::Error;

/// The name every controller certificate carries, and that clients check for.
pub const CONTROLLER_NAME: &str = hutch_core::names::CONTROLLER_TLS_NAME;
/// The name every node certificate carries, and that the controller checks for.
pub const AGENT_NAME: &str = "agent.hutch";
/// Names under this suffix are hutch's own: a node cannot ask for them.
pub const RESERVED_SUFFIX: &str = ".hutch";

/// What went wrong with keys, certificates or tokens.
#[derive(Debug, Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A certificate, key or request could not be made or read.
    #[error("{0}")]
    Certificate(String),
    /// A join token is malformed.
    #[error("invalid join token: {0}")]
    Token(String),
}

impl PkiError {
    fn io(path: &std::path::Path, source: std::io::Error) -> PkiError {
        PkiError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

impl From<rcgen::Error> for PkiError {
    fn from(e: rcgen::Error) -> Self {
        PkiError::Certificate(e.to_string())
    }
}

/// SHA-256 of a certificate's DER, as lowercase hex: how a CA is named in join tokens.
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(der))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `n` bytes from the operating system's random source.
pub fn random_bytes(n: usize) -> Result<Vec<u8>, PkiError> {
    let mut buf = vec![0u8; n];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut buf)
        .map_err(|_| PkiError::Certificate("the system random source failed".into()))?;
    Ok(buf)
}

/// The first certificate of a PEM text, as DER.
pub fn first_cert_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| PkiError::Certificate("no certificate in the PEM text".into()))?
        .map(|c| c.to_vec())
        .map_err(|e| PkiError::Certificate(format!("unreadable certificate PEM: {e}")))
}

/// Writes `data` to `path` readable by its owner only (keys), replacing it atomically.
pub fn write_private(path: &std::path::Path, data: &[u8]) -> Result<(), PkiError> {
    write_file(path, data, 0o600)
}

/// Writes `data` to `path` (certificates), replacing it atomically.
pub fn write_public(path: &std::path::Path, data: &[u8]) -> Result<(), PkiError> {
    write_file(path, data, 0o644)
}

fn write_file(path: &std::path::Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| PkiError::io(dir, e))?;
    }
    hutch_core::atomic_file::replace(path, data, mode, Durability::Synced)
        .map_err(|e| PkiError::io(path, e))
}

/// Reads a text file, naming it in the error.
pub fn read_text(path: &std::path::Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|e| PkiError::io(path, e))
}
