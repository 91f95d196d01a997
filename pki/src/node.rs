//! An agent's side of joining: its own key and certificate signing request, naming the
//! host names and addresses it can be reached at.

use rcgen::{CertificateParams, DnType, KeyPair};

use crate::PkiError;

/// An agent's new key and the signing request for it.
pub struct NodeRequest {
    /// The private key (PEM); it never leaves the agent's host.
    pub key_pem: String,
    /// The request (PEM) sent to the controller.
    pub csr_pem: String,
}

impl NodeRequest {
    /// A fresh key and a request for node `node`, asking for `names` (host names and
    /// addresses; the controller adds the names it vouches for).
    pub fn new(node: &str, names: &[String]) -> Result<NodeRequest, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, node);
        let csr = params.serialize_request(&key)?;
        Ok(NodeRequest {
            key_pem: key.serialize_pem(),
            csr_pem: csr.pem()?,
        })
    }
}

/// The names this host can be reached at: `localhost`, its host name, and every address
/// of its interfaces (loopback included), for the certificate it serves with.
pub fn local_names() -> Vec<String> {
    let mut names = vec!["localhost".to_string()];
    if let Ok(host) = nix::unistd::gethostname() {
        if let Some(h) = host.to_str().filter(|h| !h.is_empty()) {
            names.push(h.to_string());
        }
    }
    names.push("127.0.0.1".into());
    names.push("::1".into());
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            let Some(addr) = a.address else { continue };
            if let Some(v4) = addr.as_sockaddr_in() {
                names.push(v4.ip().to_string());
            } else if let Some(v6) = addr.as_sockaddr_in6() {
                // Link-local addresses need a zone to be dialed; no client uses them.
                if v6.ip().segments()[0] & 0xffc0 != 0xfe80 {
                    names.push(v6.ip().to_string());
                }
            }
        }
    }
    names.sort();
    names.dedup();
    names
}
