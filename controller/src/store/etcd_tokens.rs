//! Join tokens in etcd (`PREFIX join-tokens/ID`, one JSON [`StoredToken`] each), so every
//! controller sharing the etcd accepts a token made through any of them. Like the file,
//! only the SHA-256 of a token's secret is kept.

use super::{EtcdConfig, EtcdStore};
use crate::join::{JoinError, StoredToken, TokenStore};

/// The tokens' key prefix, under the store's prefix.
const TOKENS: &str = "join-tokens/";

/// The tokens of the cluster in etcd.
pub struct EtcdTokens(EtcdStore);

impl EtcdTokens {
    /// Connects to etcd (a connection of its own: tokens are not records of a leader's
    /// term, any controller may make one).
    pub fn connect(config: EtcdConfig) -> Result<Self, JoinError> {
        EtcdStore::connect(config)
            .map(EtcdTokens)
            .map_err(unavailable)
    }
}

fn internal(e: impl std::fmt::Display) -> JoinError {
    JoinError::Internal(format!("join tokens: {e}"))
}

/// etcd not answering: the agent tries again.
fn unavailable(e: impl std::fmt::Display) -> JoinError {
    JoinError::Unavailable(format!("join tokens in etcd: {e}"))
}

impl TokenStore for EtcdTokens {
    fn read(&self) -> Result<Vec<StoredToken>, JoinError> {
        self.0
            .read_prefix(TOKENS)
            .map_err(unavailable)?
            .into_iter()
            .map(|(id, json)| {
                serde_json::from_slice(&json)
                    .map_err(|e| internal(format!("token {id} in etcd is corrupt: {e}")))
            })
            .collect()
    }

    fn add(&self, token: &StoredToken, expired: &[String]) -> Result<(), JoinError> {
        let json = serde_json::to_vec(token).map_err(internal)?;
        self.0
            .put_raw(&format!("{TOKENS}{}", token.id), json)
            .map_err(unavailable)?;
        for id in expired {
            self.0
                .delete_raw(&format!("{TOKENS}{id}"))
                .map_err(unavailable)?;
        }
        Ok(())
    }
}
