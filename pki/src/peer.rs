//! Who a TLS peer is, from the names in its certificate. The TLS layer has already checked
//! that the cluster CA signed it; this only reads which kind of certificate it is.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{AGENT_NAME, CONTROLLER_NAME};

/// A caller that presented a certificate of the cluster CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// The controller.
    Controller,
    /// An agent, with the node name its certificate was issued for.
    Node(String),
}

impl Peer {
    /// The kind of hutch certificate `der` is; `None` for one that is neither.
    pub fn of_certificate(der: &[u8]) -> Option<Peer> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let names = names_of(&cert);
        if names.iter().any(|n| n == CONTROLLER_NAME) {
            return Some(Peer::Controller);
        }
        if names.iter().any(|n| n == AGENT_NAME) {
            let node = cert
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())?;
            return Some(Peer::Node(node.to_string()));
        }
        None
    }

    /// How the peer is named in logs and refusals.
    pub fn describe(&self) -> String {
        match self {
            Peer::Controller => "the controller's certificate".into(),
            Peer::Node(n) => format!("node certificate '{n}'"),
        }
    }
}

/// The DNS names a certificate carries (empty when it cannot be read).
pub fn dns_names(der: &[u8]) -> Vec<String> {
    X509Certificate::from_der(der)
        .map(|(_, c)| names_of(&c))
        .unwrap_or_default()
}

fn names_of(cert: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}
