//! Connections to agents: one lazily connected gRPC channel per agent address, reused by
//! every call (tonic multiplexes calls over it and reconnects on its own).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use hutch_proto::auth::BearerToken;
use hutch_proto::v1::agent_client::AgentClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// A client of one agent, carrying the controller's agent token when it has one.
pub type AgentRpc = AgentClient<InterceptedService<Channel, BearerToken>>;

/// How long a connection attempt to an agent may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Channels to agents, by address.
#[derive(Default)]
pub struct AgentPool {
    channels: Mutex<HashMap<String, Channel>>,
    token: BearerToken,
}

impl AgentPool {
    /// A pool whose clients send `token` (agents started with a tokens file want one).
    pub fn new(token: Option<&str>) -> Result<AgentPool, String> {
        Ok(AgentPool {
            channels: Mutex::default(),
            token: BearerToken::new(token).map_err(|e| format!("agent token: {e}"))?,
        })
    }

    /// A client for the agent at `address` (`host:port`).
    pub fn client(&self, address: &str) -> Result<AgentRpc, String> {
        let rpc = |ch: Channel| {
            AgentClient::with_interceptor(ch, self.token.clone())
                .max_decoding_message_size(hutch_agent::service::server::MAX_RESPONSE_BYTES)
        };
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ch) = channels.get(address) {
            return Ok(rpc(ch.clone()));
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| format!("agent address '{address}': {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
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
