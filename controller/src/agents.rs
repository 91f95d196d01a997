//! Connections to agents: one lazily connected gRPC channel per agent address, reused by
//! every call (tonic multiplexes calls over it and reconnects on its own). In a cluster
//! with TLS, every channel is mutual TLS: the controller presents its certificate and
//! accepts only node certificates of the cluster CA.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use hutch_core::bearer::BearerToken;
use hutch_pki::material::TlsMaterial;
use hutch_proto::v1::agent_client::AgentClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// A client of one agent, carrying the controller's agent token when it has one.
pub type AgentRpc = AgentClient<InterceptedService<Channel, BearerToken>>;

/// How long a connection attempt to an agent may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Channels to agents, by address.
#[derive(Default)]
pub struct AgentPool {
    channels: Mutex<HashMap<String, Channel>>,
    token: BearerToken,
    tls: Option<ClientTlsConfig>,
}

impl AgentPool {
    /// A pool whose clients send `token` (agents started with a tokens file want one) and,
    /// with `tls`, call over mutual TLS.
    pub fn new(token: Option<&str>, tls: Option<TlsMaterial>) -> Result<AgentPool, String> {
        Ok(AgentPool {
            channels: Mutex::default(),
            token: BearerToken::new(token).map_err(|e| format!("agent token: {e}"))?,
            tls: tls.map(|m| m.client_config(hutch_pki::AGENT_NAME)),
        })
    }

    /// A client for the agent at `address` (`host:port`).
    pub fn client(&self, address: &str) -> Result<AgentRpc, String> {
        let rpc = |ch: Channel| {
            AgentClient::with_interceptor(ch, self.token.clone())
                .max_decoding_message_size(hutch_server::listen::MAX_RESPONSE_BYTES)
        };
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ch) = channels.get(address) {
            return Ok(rpc(ch.clone()));
        }
        let url = hutch_pki::material::url_for(address, self.tls.is_some());
        let mut endpoint = Endpoint::from_shared(url)
            .map_err(|e| format!("agent address '{address}': {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| format!("TLS to agent '{address}': {e}"))?;
        }
        let ch = endpoint.connect_lazy();
        channels.insert(address.to_string(), ch.clone());
        Ok(rpc(ch))
    }

    /// Drops the channel to `address` (the node moved or is gone).
    pub fn forget(&self, address: &str) {
        self.channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(address);
    }
}
