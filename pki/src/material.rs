//! A party's TLS material (the CA it trusts, its certificate chain and key) and the tonic
//! settings made from it.

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::ca::CA_CERT_FILE;
use crate::PkiError;

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// PEM texts: the cluster CA, this party's certificate chain and its key.
#[derive(Clone)]
pub struct TlsMaterial {
    /// The cluster CA certificate.
    pub ca_pem: String,
    /// This party's certificate (then any chain).
    pub cert_pem: String,
    /// This party's private key.
    pub key_pem: String,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial").finish_non_exhaustive()
    }
}

/// File names of a party's certificate and key inside its TLS directory (the CA is `ca.crt`).
#[derive(Debug, Clone, Copy)]
pub struct Files {
    /// Certificate file name.
    pub cert: &'static str,
    /// Key file name.
    pub key: &'static str,
}

/// An agent's files: `node.crt`, `node.key`.
pub const NODE_FILES: Files = Files {
    cert: "node.crt",
    key: "node.key",
};

impl TlsMaterial {
    /// The material kept in `dir`; `None` when there is none yet (the agent has not joined).
    pub fn load(dir: &Path, files: Files) -> Result<Option<TlsMaterial>, PkiError> {
        let paths = [
            dir.join(CA_CERT_FILE),
            dir.join(files.cert),
            dir.join(files.key),
        ];
        if paths.iter().all(|p| !p.exists()) {
            return Ok(None);
        }
        let [ca_pem, cert_pem, key_pem] = paths.map(|p| crate::read_text(&p));
        Ok(Some(TlsMaterial {
            ca_pem: ca_pem?,
            cert_pem: cert_pem?,
            key_pem: key_pem?,
        }))
    }

    /// Keeps the material in `dir` (the key readable by root only).
    pub fn save(&self, dir: &Path, files: Files) -> Result<(), PkiError> {
        crate::write_private(&dir.join(files.key), self.key_pem.as_bytes())?;
        crate::write_public(&dir.join(files.cert), self.cert_pem.as_bytes())?;
        crate::write_public(&dir.join(CA_CERT_FILE), self.ca_pem.as_bytes())
    }

    /// Serving: present this certificate; ask callers for one of the cluster CA, but let
    /// callers without one in (they authenticate with bearer tokens instead).
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(true)
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// Calling: trust the cluster CA only, expect a peer certificate for `server_name`
    /// ([`crate::CONTROLLER_NAME`] or [`crate::AGENT_NAME`]), present this certificate.
    pub fn client_config(&self, server_name: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(server_name)
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// When this party's certificate expires, and who it names.
    pub fn describe(&self) -> String {
        crate::first_cert_der(&self.cert_pem)
            .ok()
            .and_then(|der| {
                use x509_parser::prelude::FromDer;
                let (_, c) = x509_parser::prelude::X509Certificate::from_der(&der).ok()?;
                Some(format!(
                    "{} (valid until {})",
                    c.subject(),
                    c.validity().not_after
                ))
            })
            .unwrap_or_else(|| "an unreadable certificate".into())
    }
}

/// The URL of a server reached over TLS or not: `host:port`, `http://host:port` or
/// `https://host:port` become `https://host:port` with `tls`, else `http://host:port`.
pub fn url_for(address: &str, tls: bool) -> String {
    let bare = address
        .strip_prefix("https://")
        .or_else(|| address.strip_prefix("http://"))
        .unwrap_or(address);
    format!("{}://{bare}", if tls { "https" } else { "http" })
}
