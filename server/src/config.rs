//! What both daemons' configurations share: the file form (TOML, unknown keys refused),
//! the error type naming the setting, the rule against plaintext beyond loopback, and the
//! request limits. Flags, environment variables and the file are merged by each daemon in
//! that order of precedence, and validated as a whole before a port is bound.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::limits::{
    ServerLimits, DEFAULT_MAX_CONCURRENT_REQUESTS, DEFAULT_MAX_REQUESTS_PER_CLIENT,
    DEFAULT_REQUEST_TIMEOUT,
};

/// The request limits' flags, the same on both daemons (`#[command(flatten)]` in each
/// daemon's command line); merged with the file's keys of the same names, then checked by
/// [`server_limits`].
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LimitFlags {
    /// Requests worked on at once; more are answered RESOURCE_EXHAUSTED at once instead of
    /// queueing [default: 512].
    #[arg(long, env = "HUTCH_MAX_CONCURRENT_REQUESTS")]
    pub max_concurrent_requests: Option<usize>,
    /// Requests one client address may have in flight; more from it are answered
    /// RESOURCE_EXHAUSTED at once [default: 256].
    #[arg(long, env = "HUTCH_MAX_REQUESTS_PER_CLIENT")]
    pub max_requests_per_client: Option<usize>,
    /// Longest a request may take to be answered (streams: until their first answer), e.g.
    /// 30s; 0 for no limit; beyond it DEADLINE_EXCEEDED [default: 10m].
    #[arg(long, env = "HUTCH_REQUEST_TIMEOUT")]
    pub request_timeout: Option<String>,
}

/// Why the configuration is invalid.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {message}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The file is not valid TOML or has unknown keys.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A value is invalid.
    #[error("{field}: {message}")]
    Invalid {
        /// The setting.
        field: &'static str,
        /// Why.
        message: String,
    },
}

/// The metrics address (`--metrics-listen`, `metrics_listen`): `None` when unset or empty.
pub fn metrics_listen(text: Option<String>) -> Result<Option<SocketAddr>, ConfigError> {
    match text.filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(t) => t.parse().map(Some).map_err(|_| ConfigError::Invalid {
            field: "metrics_listen",
            message: format!("'{t}' is not HOST:PORT with an IP address, e.g. 127.0.0.1:9100"),
        }),
    }
}

/// The safe default of both daemons: plaintext only on loopback, unless the operator says
/// `insecure` (a private lab network, say) and takes the warning at each start; beyond
/// loopback they serve TLS (an agent once it has joined).
pub fn check_plaintext(listen: SocketAddr, insecure: bool) -> Result<(), String> {
    if listen.ip().is_loopback() || insecure {
        return Ok(());
    }
    Err(format!(
        "refusing to serve plaintext gRPC on {listen}: anyone who can reach that address could run containers as root on this host. Listen on 127.0.0.1, or pass --insecure (insecure = true) to accept it on a network only trusted hosts reach"
    ))
}

/// The daemons' limits from their settings (defaults where unset): budgets must be at
/// least 1; a request timeout of 0 means none.
pub fn server_limits(
    max_concurrent_requests: Option<usize>,
    max_requests_per_client: Option<usize>,
    request_timeout: Option<&str>,
) -> Result<ServerLimits, ConfigError> {
    let positive = |field, given: Option<usize>, default| match given {
        None => Ok(default),
        Some(0) => Err(ConfigError::Invalid {
            field,
            message: "must be at least 1".into(),
        }),
        Some(n) => Ok(n),
    };
    let request_timeout = match request_timeout.map(str::trim) {
        None => Some(DEFAULT_REQUEST_TIMEOUT),
        Some("0") => None,
        Some(text) => Some(
            humantime::parse_duration(text).map_err(|e| ConfigError::Invalid {
                field: "request_timeout",
                message: format!("'{text}' is not a duration like 30s or 10m (0 for none): {e}"),
            })?,
        ),
    };
    Ok(ServerLimits {
        max_concurrent_requests: positive(
            "max_concurrent_requests",
            max_concurrent_requests,
            DEFAULT_MAX_CONCURRENT_REQUESTS,
        )?,
        max_requests_per_client: positive(
            "max_requests_per_client",
            max_requests_per_client,
            DEFAULT_MAX_REQUESTS_PER_CLIENT,
        )?,
        request_timeout,
    })
}

/// Reads a TOML file into `T` (the agent's or the controller's file form): unknown keys are
/// errors when `T` denies them.
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Pure part of [`read_toml`]: the agent's or the controller's file form from text.
pub fn parse_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    toml::from_str(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_default_and_refuse_nonsense() {
        let l = server_limits(None, None, None).expect("defaults");
        assert_eq!(l, ServerLimits::default());
        let l = server_limits(Some(10), Some(2), Some("0")).expect("set");
        assert_eq!(
            (
                l.max_concurrent_requests,
                l.max_requests_per_client,
                l.request_timeout
            ),
            (10, 2, None)
        );
        assert_eq!(
            server_limits(None, None, Some("90s"))
                .expect("90s")
                .request_timeout,
            Some(std::time::Duration::from_secs(90))
        );
        let err = |r: Result<ServerLimits, ConfigError>| r.expect_err("refused").to_string();
        assert!(err(server_limits(Some(0), None, None)).starts_with("max_concurrent_requests"));
        assert!(err(server_limits(None, Some(0), None)).starts_with("max_requests_per_client"));
        assert!(err(server_limits(None, None, Some("soon"))).starts_with("request_timeout"));
    }
}
