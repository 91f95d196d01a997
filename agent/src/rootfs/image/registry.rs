//! Pulling from a registry over the OCI distribution API, with `oci-client`: the manifest
//! (through an index for the node's platform), the config, and each layer as a stream that
//! is unpacked while it arrives and verified before the layer is used.
//!
//! HTTPS always, but for the registries the agent names with `--insecure-registry` and for
//! loopback addresses, as Docker does. Credentials come from the agent's credentials file
//! (Docker's `config.json` format: `{"auths": {"HOST:PORT": {"auth": "base64(user:pass)"}}}`),
//! never from the request, which only names the entry.

use std::io::{self, Read};
use std::path::Path;
use std::sync::mpsc;

use base64::Engine;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Deserialize;
use tokio_stream::StreamExt;

use super::digest::sha256_of;
use super::manifest::{
    self, parse_manifest, Manifest, PlannedLayer, Platform, INDEX_TYPES, MANIFEST_TYPES,
};
use super::{ImageError, ImageOptions, Plan};

/// A registry image, as the pull needs it.
pub struct Pull {
    client: Client,
    auth: RegistryAuth,
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

/// Whether `registry` (`HOST[:PORT]`) is a loopback address, which Docker too reaches over
/// plain HTTP.
fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[derive(Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: std::collections::HashMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

/// The credentials of `entry` in the credentials file `path`; anonymous when there is no
/// file or no such entry (unless the request named the entry: then it must exist).
pub fn credentials(
    path: Option<&Path>,
    entry: &str,
    named: bool,
) -> Result<RegistryAuth, ImageError> {
    let Some(path) = path else {
        return if named {
            Err(ImageError::Auth(format!(
                "credentials '{entry}' were asked for, but the agent has no credentials file (--registry-auth)"
            )))
        } else {
            Ok(RegistryAuth::Anonymous)
        };
    };
    let text = std::fs::read(path).map_err(|e| {
        ImageError::Auth(format!(
            "cannot read the credentials file {}: {e}",
            path.display()
        ))
    })?;
    let file: AuthFile = serde_json::from_slice(&text).map_err(|e| {
        ImageError::Auth(format!(
            "the credentials file {} does not parse: {e}",
            path.display()
        ))
    })?;
    let Some(found) = file.auths.get(entry) else {
        return if named {
            Err(ImageError::Auth(format!(
                "the credentials file {} has no entry '{entry}'",
                path.display()
            )))
        } else {
            Ok(RegistryAuth::Anonymous)
        };
    };
    if !found.username.is_empty() {
        return Ok(RegistryAuth::Basic(
            found.username.clone(),
            found.password.clone(),
        ));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(found.auth.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| {
            s.split_once(':')
                .map(|(u, p)| (u.to_string(), p.to_string()))
        });
    match decoded {
        Some((user, pass)) => Ok(RegistryAuth::Basic(user, pass)),
        None => Err(ImageError::Auth(format!(
            "entry '{entry}' of {} has no username and password (auth is base64 of USER:PASSWORD)",
            path.display()
        ))),
    }
}

/// What went wrong talking to the registry, as an [`ImageError`].
fn registry_error(registry: &str, what: &str, e: OciDistributionError) -> ImageError {
    use OciDistributionError as E;
    let text = hutch_core::error_chain(&e);
    match &e {
        E::ImageManifestNotFoundError(_) => ImageError::NotFound(format!("{what}: {text}")),
        E::RegistryError { envelope, .. }
            if envelope.errors.iter().any(|c| {
                matches!(
                    c.code,
                    oci_client::errors::OciErrorCode::ManifestUnknown
                        | oci_client::errors::OciErrorCode::NameUnknown
                        | oci_client::errors::OciErrorCode::BlobUnknown
                        | oci_client::errors::OciErrorCode::NotFound
                )
            }) =>
        {
            ImageError::NotFound(format!("{what}: {text}"))
        }
        E::ServerError { code: 404, .. } => ImageError::NotFound(format!("{what}: {text}")),
        E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => ImageError::Auth(format!(
            "{what}: the registry {registry} refused the credentials: {text}"
        )),
        E::ServerError {
            code: 401 | 403, ..
        } => ImageError::Auth(format!(
            "{what}: the registry {registry} refused access: {text}"
        )),
        E::RequestError(r) if r.is_connect() || r.is_timeout() => ImageError::Unavailable(format!(
            "{what}: the registry {registry} cannot be reached: {text}"
        )),
        E::RequestError(_) | E::IoError(_) | E::ServerError { .. } => {
            ImageError::Unavailable(format!("{what}: {text}"))
        }
        E::DigestError(_) => ImageError::DigestMismatch(format!("{what}: {text}")),
        _ => ImageError::Invalid(format!("{what}: {text}")),
    }
}

impl Pull {
    /// A pull of `registry/repository` (`tag` or `digest`) with `auth`.
    pub fn new(
        registry: &str,
        repository: &str,
        tag: Option<String>,
        digest: Option<String>,
        auth: RegistryAuth,
        options: &ImageOptions,
    ) -> Pull {
        // reqwest's rustls takes the process's provider; hutch's is ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut plain: Vec<String> = options.insecure_registries.clone();
        if is_loopback(registry) {
            plain.push(registry.to_string());
        }
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(plain),
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            read_timeout: Some(std::time::Duration::from_secs(60)),
            platform_resolver: None,
            ..ClientConfig::default()
        });
        Pull {
            client,
            auth,
            registry: registry.to_string(),
            repository: repository.to_string(),
            tag,
            digest,
        }
    }

    fn reference(&self, digest: Option<&str>) -> Reference {
        match (digest.or(self.digest.as_deref()), &self.tag) {
            (Some(d), _) => Reference::with_digest(
                self.registry.clone(),
                self.repository.clone(),
                d.to_string(),
            ),
            (None, Some(t)) => {
                Reference::with_tag(self.registry.clone(), self.repository.clone(), t.clone())
            }
            (None, None) => Reference::with_tag(
                self.registry.clone(),
                self.repository.clone(),
                "latest".into(),
            ),
        }
    }

    fn describe(&self) -> String {
        self.reference(None).whole()
    }

    async fn manifest(&self, digest: Option<&str>) -> Result<(bytes::Bytes, String), ImageError> {
        let accepted: Vec<&str> = INDEX_TYPES
            .iter()
            .chain(MANIFEST_TYPES.iter())
            .copied()
            .collect();
        let reference = self.reference(digest);
        let (bytes, got) = self
            .client
            .pull_manifest_raw(&reference, &self.auth, &accepted)
            .await
            .map_err(|e| {
                registry_error(
                    &self.registry,
                    &format!("pulling the manifest of {}", reference.whole()),
                    e,
                )
            })?;
        let actual = sha256_of(&bytes);
        if let Some(expected) = digest.or(self.digest.as_deref()) {
            if actual != expected {
                return Err(ImageError::DigestMismatch(format!(
                    "the registry's manifest for {} has digest {actual}, not {expected}",
                    reference.whole()
                )));
            }
        }
        if !got.is_empty() && got != actual && got.starts_with("sha256:") {
            return Err(ImageError::DigestMismatch(format!(
                "the registry says the manifest of {} is {got}, but its bytes are {actual}",
                reference.whole()
            )));
        }
        Ok((bytes, actual))
    }

    /// The digest of the image's top manifest (or index): what the tag points at now.
    pub async fn resolve_digest(&self) -> Result<String, ImageError> {
        if let Some(d) = &self.digest {
            return Ok(d.clone());
        }
        Ok(self.manifest(None).await?.1)
    }

    /// Reads the manifest `digest` (through an index for `platform`) and its config.
    pub async fn plan(&self, digest: &str, platform: &Platform) -> Result<Plan, ImageError> {
        let (mut bytes, mut digest) = self.manifest(Some(digest)).await?;
        for _ in 0..2 {
            match parse_manifest(&bytes, "")? {
                Manifest::Index(index) => {
                    let chosen = manifest::choose_platform(&index, platform)?;
                    (bytes, digest) = self.manifest(Some(chosen.digest().as_ref())).await?;
                }
                Manifest::Image(m) => {
                    manifest::check_config_media_type(m.config())?;
                    let config_digest = m.config().digest().to_string();
                    if m.config().size() > super::MAX_DOCUMENT_BYTES {
                        return Err(ImageError::Invalid(format!(
                            "the config of {} is {} bytes: too large for a config",
                            self.describe(),
                            m.config().size()
                        )));
                    }
                    let config_bytes = self.small_blob(&digest, &config_digest).await?;
                    if sha256_of(&config_bytes) != config_digest {
                        return Err(ImageError::DigestMismatch(format!(
                            "the config of {} does not have its digest {config_digest}",
                            self.describe()
                        )));
                    }
                    return Plan::from_config(&m, digest, config_digest, &config_bytes, platform);
                }
            }
        }
        Err(ImageError::Invalid(
            "the index nests indexes more than one level deep".into(),
        ))
    }

    /// A small blob (a config), read up to [`super::MAX_DOCUMENT_BYTES`].
    async fn small_blob(&self, manifest: &str, digest: &str) -> Result<Vec<u8>, ImageError> {
        let what = format!("pulling the config of {}", self.describe());
        let mut stream = self
            .client
            .pull_blob_stream(&self.reference(Some(manifest)), digest)
            .await
            .map_err(|e| registry_error(&self.registry, &what, e))?
            .stream;
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ImageError::Unavailable(format!("{what}: {e}")))?;
            if (out.len() + chunk.len()) as u64 > super::MAX_DOCUMENT_BYTES {
                return Err(ImageError::Invalid(format!(
                    "{what}: more than {} bytes",
                    super::MAX_DOCUMENT_BYTES
                )));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Streams layer `layer` from the registry: a blocking reader fed from the runtime
    /// `handle`, so the layer is unpacked while it downloads.
    pub fn open_layer(
        &self,
        handle: &tokio::runtime::Handle,
        layer: &PlannedLayer,
    ) -> Result<Box<dyn Read + Send>, ImageError> {
        let digest = layer.digest.clone().unwrap_or_default();
        let reference = self.reference(None);
        let stream = handle
            .block_on(self.client.pull_blob_stream(&reference, digest.as_str()))
            .map_err(|e| registry_error(&self.registry, &format!("pulling layer {digest}"), e))?;
        let (tx, rx) = mpsc::sync_channel::<io::Result<bytes::Bytes>>(16);
        let mut stream = stream.stream;
        handle.spawn(async move {
            while let Some(chunk) = stream.next().await {
                let failed = chunk.is_err();
                if tx.send(chunk).is_err() || failed {
                    break;
                }
            }
        });
        Ok(Box::new(ChannelReader {
            rx,
            current: bytes::Bytes::new(),
            failed: None,
            deadline: std::time::Instant::now() + super::LAYER_DEADLINE,
        }))
    }
}

/// A blocking reader over chunks sent from an async task. A failure of the stream stays:
/// every later read repeats it (the caller drains the blob to check its digest, and must
/// not take a broken download for corrupt content). A layer that does not arrive within
/// [`super::LAYER_DEADLINE`] fails too, however slowly it trickles.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<bytes::Bytes>>,
    current: bytes::Bytes,
    failed: Option<(io::ErrorKind, String)>,
    deadline: std::time::Instant,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            if let Some((kind, why)) = &self.failed {
                return Err(io::Error::new(*kind, why.clone()));
            }
            let left = self
                .deadline
                .saturating_duration_since(std::time::Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(Ok(chunk)) => self.current = chunk,
                Ok(Err(e)) => {
                    self.failed = Some((e.kind(), format!("the download broke off: {e}")));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.failed = Some((
                        io::ErrorKind::TimedOut,
                        format!(
                            "the layer did not arrive within {} minutes",
                            super::LAYER_DEADLINE.as_secs() / 60
                        ),
                    ));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(0), // the stream ended
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_plain_http() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("198.18.0.1:5000"));
        assert!(!is_loopback("registry.example:5000"));
    }

    #[test]
    fn credentials_come_from_dockers_file_format() {
        let dir = std::env::temp_dir().join(format!("hutch-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let file = dir.join("auth.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        std::fs::write(
            &file,
            format!(
                r#"{{"auths":{{"127.0.0.1:5000":{{"auth":"{auth}"}},"bad":{{"auth":"!!"}}}}}}"#
            ),
        )
        .expect("write");
        assert!(matches!(
            credentials(Some(&file), "127.0.0.1:5000", false),
            Ok(RegistryAuth::Basic(u, p)) if u == "alice" && p == "s3cret"
        ));
        assert!(matches!(
            credentials(Some(&file), "other:1", false),
            Ok(RegistryAuth::Anonymous)
        ));
        assert!(matches!(
            credentials(Some(&file), "other:1", true),
            Err(ImageError::Auth(_))
        ));
        assert!(matches!(
            credentials(Some(&file), "bad", false),
            Err(ImageError::Auth(_))
        ));
        assert!(matches!(
            credentials(None, "x", true),
            Err(ImageError::Auth(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
