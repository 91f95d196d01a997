//! The controller's part of the cluster PKI: the cluster CA, the certificate it serves
//! with, and join tokens, traded by agents for node certificates (`Nodes/Join`).
//!
//! Tokens are kept as the SHA-256 of their secret (whoever reads them cannot join with
//! them): in `join-tokens.json` next to the CA, or, for controllers sharing an etcd, in etcd
//! (a [`TokenStore`] each), so an agent joins through any controller with a token made on
//! another. A token may be used by any number of agents until it expires (as kubeadm's
//! bootstrap tokens); expired ones are kept a day, so a late agent is told "expired" rather
//! than "unknown".

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hutch_pki::ca::ClusterCa;
use hutch_pki::join_token::JoinToken;
use hutch_pki::material::TlsMaterial;
use hutch_pki::PkiError;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A token's lifetime unless asked otherwise.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// The longest lifetime a token may have.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long an expired token is remembered.
const KEEP_EXPIRED: Duration = Duration::from_secs(24 * 3600);
/// The tokens file in the TLS directory.
const TOKENS_FILE: &str = "join-tokens.json";

/// Why a token could not be made or used. Maps to gRPC codes at the edge.
#[derive(Debug, Error)]
pub enum JoinError {
    /// The token or the request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The token is not (or no longer) good.
    #[error("{0}")]
    Refused(String),
    /// The token store or the CA failed.
    #[error("{0}")]
    Internal(String),
    /// The token store cannot be reached now (etcd); the same request may succeed later.
    #[error("{0}")]
    Unavailable(String),
}

impl From<JoinError> for tonic::Status {
    fn from(e: JoinError) -> Self {
        match e {
            JoinError::Invalid(m) => tonic::Status::invalid_argument(m),
            JoinError::Refused(m) => tonic::Status::unauthenticated(m),
            JoinError::Internal(m) => tonic::Status::internal(m),
            JoinError::Unavailable(m) => tonic::Status::unavailable(m),
        }
    }
}

/// A token as kept: its id, the hash of its secret, and when it expires.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredToken {
    /// The token's id.
    pub id: String,
    /// SHA-256 of the secret, hex.
    pub secret_sha256: String,
    /// Milliseconds since the epoch.
    pub expires_unix_ms: u64,
    /// What it is for.
    pub description: String,
}

/// Whether `token` may join now (`now_ms`), against the tokens kept and the CA's
/// fingerprint. Pure: the whole rule.
pub fn check_token(
    kept: &[StoredToken],
    fingerprint: &str,
    token: &JoinToken,
    now_ms: u64,
) -> Result<(), JoinError> {
    if token.ca_fingerprint != fingerprint {
        return Err(JoinError::Refused(format!(
            "this join token was made for another cluster CA ({}…); this cluster's CA is {}…",
            &token.ca_fingerprint[..12],
            &fingerprint[..12.min(fingerprint.len())]
        )));
    }
    let hash = token.secret_hash();
    let Some(found) = kept
        .iter()
        .find(|t| t.id == token.id && t.secret_sha256 == hash)
    else {
        return Err(JoinError::Refused(
            "unknown join token: make one with `hutch token create`".into(),
        ));
    };
    if found.expires_unix_ms <= now_ms {
        let ago = Duration::from_millis(now_ms - found.expires_unix_ms);
        return Err(JoinError::Refused(format!(
            "join token {} expired {} ago: make a new one with `hutch token create`",
            found.id,
            humantime::format_duration(Duration::from_secs(ago.as_secs().max(1)))
        )));
    }
    Ok(())
}

/// Where join tokens are kept.
pub trait TokenStore: Send + Sync {
    /// Every token kept.
    fn read(&self) -> Result<Vec<StoredToken>, JoinError>;
    /// Keeps `token`, and forgets the tokens of `expired` (ids).
    fn add(&self, token: &StoredToken, expired: &[String]) -> Result<(), JoinError>;
}

/// Tokens in one file (`TLS_DIR/join-tokens.json`), written whole, mode 0600.
pub struct FileTokens(PathBuf);

impl TokenStore for FileTokens {
    fn read(&self) -> Result<Vec<StoredToken>, JoinError> {
        read_tokens(&self.0).map_err(|e| JoinError::Internal(e.to_string()))
    }

    fn add(&self, token: &StoredToken, expired: &[String]) -> Result<(), JoinError> {
        let mut tokens = self.read()?;
        tokens.retain(|t| !expired.contains(&t.id));
        tokens.push(token.clone());
        write_tokens(&self.0, &tokens)
    }
}

/// The cluster CA, the controller's own TLS material, and the join tokens.
pub struct ClusterPki {
    ca: ClusterCa,
    material: TlsMaterial,
    tokens_path: PathBuf,
    tokens: std::sync::RwLock<Box<dyn TokenStore>>,
    /// Serializes token creation on this controller.
    creating: Mutex<()>,
}

impl std::fmt::Debug for ClusterPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterPki")
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

/// Where the CA comes from, and which names the controller's certificate carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Directory of the CA (made there on first start), tokens and the controller's files.
    pub dir: PathBuf,
    /// An operator's CA (certificate, key) instead of the one in `dir`.
    pub ca_files: Option<(PathBuf, PathBuf)>,
    /// Names and addresses clients reach the controller at, beyond this host's own.
    pub extra_names: Vec<String>,
}

impl ClusterPki {
    /// Opens (or makes, on first start) the cluster CA and issues the controller's
    /// certificate for this host's names. Returns whether the CA was made now.
    pub fn open(settings: &TlsSettings) -> Result<(ClusterPki, bool), PkiError> {
        let (ca, created) = match &settings.ca_files {
            Some((cert, key)) => (ClusterCa::load(cert, key)?, false),
            None => ClusterCa::load_or_create(&settings.dir)?,
        };
        let mut names = hutch_pki::node::local_names();
        names.extend(settings.extra_names.iter().cloned());
        let material = ca.issue_controller(&names)?;
        let tokens_path = settings.dir.join(TOKENS_FILE);
        // A broken tokens file is an error at start, not at the first join.
        read_tokens(&tokens_path)?;
        Ok((
            ClusterPki {
                ca,
                material,
                tokens: std::sync::RwLock::new(Box::new(FileTokens(tokens_path.clone()))),
                tokens_path,
                creating: Mutex::new(()),
            },
            created,
        ))
    }

    /// Keeps join tokens in `store` from now on (etcd, shared by every controller); the
    /// tokens of the file that are still good are copied there first.
    pub fn keep_tokens_in(&self, store: Box<dyn TokenStore>) -> Result<(), JoinError> {
        let now_ms = unix_ms(SystemTime::now());
        let kept: Vec<String> = store.read()?.into_iter().map(|t| t.id).collect();
        for t in FileTokens(self.tokens_path.clone()).read()? {
            if t.expires_unix_ms > now_ms && !kept.contains(&t.id) {
                store.add(&t, &[])?;
            }
        }
        *self.tokens.write().unwrap_or_else(|e| e.into_inner()) = store;
        Ok(())
    }

    fn token_store(&self) -> std::sync::RwLockReadGuard<'_, Box<dyn TokenStore>> {
        self.tokens.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The controller's TLS material: served to clients and agents, presented to agents.
    pub fn material(&self) -> &TlsMaterial {
        &self.material
    }

    /// The CA's fingerprint.
    pub fn fingerprint(&self) -> &str {
        self.ca.fingerprint()
    }

    /// A new join token valid for `ttl` (0: the default), kept before it is returned.
    pub fn create_token(
        &self,
        ttl: Duration,
        description: &str,
    ) -> Result<(JoinToken, SystemTime), JoinError> {
        let ttl = if ttl.is_zero() {
            DEFAULT_TOKEN_TTL
        } else {
            ttl
        };
        if ttl > MAX_TOKEN_TTL {
            return Err(JoinError::Invalid(format!(
                "ttl {} is longer than the longest a join token may live ({})",
                humantime::format_duration(ttl),
                humantime::format_duration(MAX_TOKEN_TTL)
            )));
        }
        if description.len() > 256 || description.contains(['\n', '\0']) {
            return Err(JoinError::Invalid(
                "description: at most 256 characters on one line".into(),
            ));
        }
        let token = JoinToken::generate(self.ca.fingerprint())
            .map_err(|e| JoinError::Internal(e.to_string()))?;
        let expires = SystemTime::now() + ttl;
        let now_ms = unix_ms(SystemTime::now());
        let _creating = self.creating.lock().unwrap_or_else(|e| e.into_inner());
        let store = self.token_store();
        let expired: Vec<String> = store
            .read()?
            .into_iter()
            .filter(|t| t.expires_unix_ms + KEEP_EXPIRED.as_millis() as u64 <= now_ms)
            .map(|t| t.id)
            .collect();
        store.add(
            &StoredToken {
                id: token.id.clone(),
                secret_sha256: token.secret_hash(),
                expires_unix_ms: unix_ms(expires),
                description: description.to_string(),
            },
            &expired,
        )?;
        Ok((token, expires))
    }

    /// Signs node `node`'s request when `token` is good. Returns the certificate (PEM) and
    /// when it expires.
    pub fn join(
        &self,
        token: &str,
        node: &str,
        csr_pem: &str,
    ) -> Result<(String, SystemTime), JoinError> {
        let token: JoinToken = token
            .parse()
            .map_err(|e: PkiError| JoinError::Refused(e.to_string()))?;
        hutch_core::names::validate_name("name", node)
            .map_err(|e| JoinError::Invalid(e.to_string()))?;
        let tokens = self.token_store().read()?;
        check_token(
            &tokens,
            self.ca.fingerprint(),
            &token,
            unix_ms(SystemTime::now()),
        )?;
        self.ca
            .sign_node(node, csr_pem)
            .map_err(|e| JoinError::Invalid(e.to_string()))
    }

    /// The CA certificate (PEM).
    pub fn ca_pem(&self) -> &str {
        self.ca.cert_pem()
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn read_tokens(path: &Path) -> Result<Vec<StoredToken>, PkiError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            PkiError::Certificate(format!("{}: not a join tokens file: {e}", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(PkiError::Certificate(format!("{}: {e}", path.display()))),
    }
}

fn write_tokens(path: &Path, tokens: &[StoredToken]) -> Result<(), JoinError> {
    let text = serde_json::to_vec_pretty(tokens).map_err(|e| JoinError::Internal(e.to_string()))?;
    hutch_pki::write_private(path, &text)
        .map_err(|e| JoinError::Internal(format!("cannot keep the join token: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_by_ca_secret_and_time() {
        let fp = "ab".repeat(32);
        let token = JoinToken::generate(&fp).expect("token");
        let kept = vec![StoredToken {
            id: token.id.clone(),
            secret_sha256: token.secret_hash(),
            expires_unix_ms: 10_000,
            description: String::new(),
        }];
        assert!(check_token(&kept, &fp, &token, 9_999).is_ok());
        let expired = check_token(&kept, &fp, &token, 70_000).expect_err("expired");
        assert!(expired.to_string().contains("expired 1m ago"), "{expired}");
        let other_ca = check_token(&kept, &"cd".repeat(32), &token, 0).expect_err("ca");
        assert!(
            other_ca.to_string().contains("another cluster CA"),
            "{other_ca}"
        );
        let mut forged = token.clone();
        forged.secret = "0".repeat(32);
        let unknown = check_token(&kept, &fp, &forged, 0).expect_err("forged");
        assert!(
            unknown.to_string().contains("unknown join token"),
            "{unknown}"
        );
        assert!(check_token(&[], &fp, &token, 0).is_err());
    }
}
