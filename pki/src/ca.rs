//! The cluster CA: made once, on the controller's first start, kept in its data directory
//! (or given as files). It issues the controller's own certificate and signs node
//! certificates for agents that join.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

use crate::material::TlsMaterial;
use crate::{PkiError, AGENT_NAME, CONTROLLER_NAME, RESERVED_SUFFIX};

/// The CA certificate's file name in a TLS directory.
pub const CA_CERT_FILE: &str = "ca.crt";
/// The CA key's file name in a TLS directory (mode 0600).
pub const CA_KEY_FILE: &str = "ca.key";
/// How long the CA is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long node and controller certificates are valid.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Clocks of a lab's hosts differ a little: certificates are valid from a bit before now.
const CLOCK_SKEW: Duration = Duration::from_secs(300);

/// The cluster CA: its certificate and the key that signs with it.
pub struct ClusterCa {
    cert_pem: String,
    fingerprint: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// The CA in `dir` (`ca.crt`, `ca.key`); made there when neither file exists. Returns
    /// whether it was made now.
    pub fn load_or_create(dir: &Path) -> Result<(ClusterCa, bool), PkiError> {
        let (cert, key) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
        match (cert.exists(), key.exists()) {
            (true, true) => Ok((ClusterCa::load(&cert, &key)?, false)),
            (false, false) => {
                let ca = ClusterCa::create()?;
                crate::write_private(&key, ca.issuer.key().serialize_pem().as_bytes())?;
                crate::write_public(&cert, ca.cert_pem.as_bytes())?;
                Ok((ca, true))
            }
            _ => Err(PkiError::Certificate(format!(
                "{} has only one of {CA_CERT_FILE} and {CA_KEY_FILE}: restore the other, or remove both to make a new CA (every node must then join again)",
                dir.display()
            ))),
        }
    }

    /// The CA from a certificate and a key file (PEM).
    pub fn load(cert: &Path, key: &Path) -> Result<ClusterCa, PkiError> {
        let cert_pem = crate::read_text(cert)?;
        let key = KeyPair::from_pem(&crate::read_text(key)?)
            .map_err(|e| PkiError::Certificate(format!("CA key {}: {e}", key.display())))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| {
            PkiError::Certificate(format!("CA certificate {}: {e}", cert.display()))
        })?;
        let fingerprint = crate::fingerprint(&crate::first_cert_der(&cert_pem)?);
        Ok(ClusterCa {
            cert_pem,
            fingerprint,
            issuer,
        })
    }

    fn create() -> Result<ClusterCa, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            format!("hutch cluster CA {}", crate::hex(&crate::random_bytes(4)?)),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        set_validity(&mut params, CA_VALIDITY)?;
        let cert = params.self_signed(&key)?;
        Ok(ClusterCa {
            cert_pem: cert.pem(),
            fingerprint: crate::fingerprint(cert.der()),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate (PEM): what clients trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// SHA-256 of the CA certificate, hex.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// A fresh key and certificate for the controller: named [`CONTROLLER_NAME`] plus
    /// `names` (host names and addresses clients use), valid as server and client.
    pub fn issue_controller(&self, names: &[String]) -> Result<TlsMaterial, PkiError> {
        let key = KeyPair::generate()?;
        let mut sans = vec![CONTROLLER_NAME.to_string()];
        sans.extend(names.iter().cloned());
        let params = leaf_params("hutch-controller", sans)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(TlsMaterial {
            ca_pem: self.cert_pem.clone(),
            // The chain carries the CA: a joining agent pins it by fingerprint.
            cert_pem: format!("{}{}", cert.pem(), self.cert_pem),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a node's request: the certificate names node `node` (its common name) and
    /// [`AGENT_NAME`], plus the host names and addresses the request asks for, except
    /// hutch's own names (a node cannot pose as the controller). Returns the PEM and when it
    /// expires.
    pub fn sign_node(&self, node: &str, csr_pem: &str) -> Result<(String, SystemTime), PkiError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            PkiError::Certificate(format!("the certificate signing request is not valid: {e}"))
        })?;
        let mut sans = vec![AGENT_NAME.to_string()];
        for san in &csr.params.subject_alt_names {
            match san {
                SanType::DnsName(name) if !is_reserved(name.as_str()) => {
                    sans.push(name.as_str().to_string())
                }
                SanType::IpAddress(ip) => sans.push(ip.to_string()),
                _ => {}
            }
        }
        csr.params = leaf_params(node, sans)?;
        let expires = SystemTime::now() + LEAF_VALIDITY;
        Ok((csr.signed_by(&self.issuer)?.pem(), expires))
    }
}

fn is_reserved(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "hutch" || name.ends_with(RESERVED_SUFFIX)
}

/// A leaf certificate's parameters: `common_name`, `sans`, usable as server and client.
fn leaf_params(common_name: &str, mut sans: Vec<String>) -> Result<CertificateParams, PkiError> {
    sans.sort();
    sans.dedup();
    let mut params = CertificateParams::new(sans)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, LEAF_VALIDITY)?;
    Ok(params)
}

fn set_validity(params: &mut CertificateParams, valid: Duration) -> Result<(), PkiError> {
    let now = time::OffsetDateTime::now_utc();
    let span = |d: Duration| time::Duration::try_from(d).unwrap_or(time::Duration::ZERO);
    params.not_before = now - span(CLOCK_SKEW);
    params.not_after = now + span(valid);
    params.serial_number = Some(SerialNumber::from_slice(&crate::random_bytes(16)?));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::Peer;

    #[test]
    fn node_certificates_name_the_node_and_never_the_controller() {
        let ca = ClusterCa::create().expect("ca");
        let request = crate::node::NodeRequest::new(
            "n1",
            &[
                "controller.hutch".into(),
                "n1.example".into(),
                "10.0.0.5".into(),
            ],
        )
        .expect("csr");
        let (pem, _) = ca.sign_node("n1", &request.csr_pem).expect("signed");
        let der = crate::first_cert_der(&pem).expect("der");
        assert_eq!(Peer::of_certificate(&der), Some(Peer::Node("n1".into())));
        let names = crate::peer::dns_names(&der);
        assert!(names.contains(&"n1.example".to_string()), "{names:?}");
        assert!(
            !names.contains(&"controller.hutch".to_string()),
            "{names:?}"
        );

        let controller = ca
            .issue_controller(&["localhost".into()])
            .expect("controller");
        let der = crate::first_cert_der(&controller.cert_pem).expect("der");
        assert_eq!(Peer::of_certificate(&der), Some(Peer::Controller));
        assert!(ca.sign_node("n1", "not a csr").is_err());
    }

    #[test]
    fn the_ca_survives_a_restart_and_a_half_ca_is_refused() {
        let dir = std::env::temp_dir().join(format!("hutch-pki-ca-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (first, created) = ClusterCa::load_or_create(&dir).expect("create");
        assert!(created);
        let (again, created) = ClusterCa::load_or_create(&dir).expect("load");
        assert!(!created);
        assert_eq!(first.fingerprint(), again.fingerprint());
        std::fs::remove_file(dir.join(CA_KEY_FILE)).expect("rm key");
        let err = ClusterCa::load_or_create(&dir).expect_err("half a CA");
        assert!(err.to_string().contains("only one of"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
