//! Joining a cluster: once, before the agent first serves with `--join TOKEN`. The agent
//! makes its own key and a signing request, reaches the controller over TLS pinned to the
//! CA fingerprint in the token ([`hutch_pki::pinned`]), and trades the token and request for
//! a node certificate. Key, certificate and CA stay in `STATE_DIR/tls`; later starts use
//! them and need no token.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hutch_pki::join_token::JoinToken;
use hutch_pki::material::{TlsMaterial, NODE_FILES};
use hutch_pki::node::NodeRequest;
use hutch_pki::pinned::PinnedError;
use hutch_proto::v1;
use hutch_proto::v1::nodes_client::NodesClient;
use thiserror::Error;

/// The TLS directory inside the agent's state directory.
pub const TLS_DIR: &str = "tls";
/// How long an unreachable controller is retried before the join gives up.
pub const JOIN_PATIENCE: Duration = Duration::from_secs(60);

/// Why the agent could not join.
#[derive(Debug, Error)]
pub enum JoinError {
    /// The token is malformed.
    #[error(transparent)]
    BadToken(#[from] hutch_pki::PkiError),
    /// The controller said no, or is not the one the token names.
    #[error("{0}")]
    Refused(String),
    /// The controller could not be reached (or was not the one the token names).
    #[error("{0}")]
    Unreachable(String),
}

/// Where an agent keeps its TLS material.
pub fn tls_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(TLS_DIR)
}

/// The node certificate of an agent that joined before; `None` when it has not.
pub fn load(state_dir: &Path) -> Result<Option<TlsMaterial>, hutch_pki::PkiError> {
    TlsMaterial::load(&tls_dir(state_dir), NODE_FILES)
}

/// Joins the cluster of the controller at `controller` as node `node` with `token`, and
/// keeps the material in `state_dir`. An unreachable controller is retried for
/// [`JOIN_PATIENCE`]; a refusal ends at once.
pub async fn join(
    controller: &str,
    node: &str,
    token: &str,
    state_dir: &Path,
) -> Result<TlsMaterial, JoinError> {
    let parsed: JoinToken = token.parse()?;
    let request = NodeRequest::new(node, &hutch_pki::node::local_names())?;
    let started = Instant::now();
    let mut pause = Duration::from_millis(200);
    let response = loop {
        match exchange_any(controller, node, token, &parsed, &request).await {
            Err(JoinError::Unreachable(why)) if started.elapsed() < JOIN_PATIENCE => {
                tracing::warn!(controller, "cannot join yet (retrying in {pause:?}): {why}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            other => break other?,
        }
    };
    let ca_der = hutch_pki::first_cert_der(&response.ca_pem)?;
    if hutch_pki::fingerprint(&ca_der) != parsed.ca_fingerprint {
        return Err(JoinError::Refused(
            "the CA the controller sent is not the one the token names".into(),
        ));
    }
    let material = TlsMaterial {
        ca_pem: response.ca_pem,
        cert_pem: response.certificate_pem,
        key_pem: request.key_pem,
    };
    material.save(&tls_dir(state_dir), NODE_FILES)?;
    Ok(material)
}

/// [`exchange`] with each controller of the comma-separated list in turn, until one
/// answers (a follower refuses a join: only the leader takes writes).
async fn exchange_any(
    controllers: &str,
    node: &str,
    token: &str,
    parsed: &JoinToken,
    request: &NodeRequest,
) -> Result<v1::JoinResponse, JoinError> {
    let mut last = JoinError::Unreachable("no controller URL given".into());
    for controller in hutch_core::failover::split_urls(controllers) {
        match exchange(&controller, node, token, parsed, request).await {
            Err(JoinError::Unreachable(why)) => {
                last = JoinError::Unreachable(format!("{controller}: {why}"))
            }
            other => return other,
        }
    }
    Err(last)
}

async fn exchange(
    controller: &str,
    node: &str,
    token: &str,
    parsed: &JoinToken,
    request: &NodeRequest,
) -> Result<v1::JoinResponse, JoinError> {
    let channel = hutch_pki::pinned::connect(controller, &parsed.ca_fingerprint)
        .await
        .map_err(|e| match e {
            PinnedError::WrongCa(why) => JoinError::Refused(why),
            PinnedError::Unreachable(why) => JoinError::Unreachable(why),
        })?;
    let answer = NodesClient::new(channel)
        .join(v1::JoinRequest {
            token: token.to_string(),
            name: node.to_string(),
            csr_pem: request.csr_pem.clone(),
        })
        .await;
    match answer {
        Ok(r) => Ok(r.into_inner()),
        Err(s) if s.code() == tonic::Code::Unavailable => {
            Err(JoinError::Unreachable(hutch_core::status_text(&s)))
        }
        Err(s) => Err(JoinError::Refused(format!(
            "the controller refused to let this node join ({:?}): {}",
            s.code(),
            s.message()
        ))),
    }
}
