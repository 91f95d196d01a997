//! The one connection made before an agent has a certificate: to join. The agent does not
//! know the cluster CA yet, only its fingerprint (from the join token), so it accepts the
//! controller's certificate when the chain the controller sends holds a CA with that
//! fingerprint and the certificate verifies against it, for [`crate::CONTROLLER_NAME`].
//! Anyone else, a man in the middle included, fails the handshake before the token is sent.

use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tonic::transport::{Channel, Endpoint, Uri};

use std::sync::atomic::{AtomicBool, Ordering};

use crate::CONTROLLER_NAME;

/// Verifies a server against the CA with a known fingerprint, found in the server's chain.
#[derive(Debug)]
struct PinnedCa {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
    /// Set when a server's chain did not hold the pinned CA: a definite "no", not a
    /// network hiccup to retry.
    mismatch: Arc<AtomicBool>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| crate::fingerprint(c) == self.fingerprint)
            .ok_or_else(|| {
                self.mismatch.store(true, Ordering::SeqCst);
                rustls::Error::General(format!(
                    "the server's CA is not the one the join token names (fingerprint {}): is this the cluster's controller?",
                    self.fingerprint
                ))
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Why a pinned connection was not made.
#[derive(Debug, thiserror::Error)]
pub enum PinnedError {
    /// The server is not a controller of the pinned CA.
    #[error("{0}")]
    WrongCa(String),
    /// It could not be reached, or the handshake failed otherwise.
    #[error("{0}")]
    Unreachable(String),
}

/// A channel to the controller at `address` (`host:port`, with or without a scheme) that
/// only completes its handshake with a controller of the CA named by `ca_fingerprint`.
pub async fn connect(address: &str, ca_fingerprint: &str) -> Result<Channel, PinnedError> {
    let mismatch = Arc::new(AtomicBool::new(false));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| PinnedError::Unreachable(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa {
            fingerprint: ca_fingerprint.to_string(),
            provider,
            mismatch: mismatch.clone(),
        }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    // tonic speaks plain HTTP/2 over the stream; the TLS is the connector's.
    let url = crate::material::url_for(address, false);
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| PinnedError::Unreachable(format!("controller address '{address}': {e}")))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(10));
    endpoint
        .connect_with_connector(tower::service_fn(move |uri: Uri| {
            let connector = connector.clone();
            async move {
                let host = uri
                    .host()
                    .unwrap_or_default()
                    .trim_matches(['[', ']'])
                    .to_string();
                let port = uri.port_u16().unwrap_or(443);
                let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                let name = ServerName::try_from(CONTROLLER_NAME)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| {
            let why = format!(
                "cannot reach the controller at {address} over TLS: {}",
                hutch_core::error_chain(&e)
            );
            if mismatch.load(Ordering::SeqCst) {
                PinnedError::WrongCa(why)
            } else {
                PinnedError::Unreachable(why)
            }
        })
}
