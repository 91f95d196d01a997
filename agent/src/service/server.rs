//! Assembles the agent's gRPC server: `hutch.v1.Agent`, `grpc.health.v1.Health`, and server
//! reflection in both versions clients use (`grpc.reflection.v1`, and `v1alpha`, which
//! grpcurl 1.8 asks for). Message sizes are bounded on purpose: requests are small (4 MiB),
//! responses may carry exec output (up to 16 MiB per stream, so 40 MiB).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use hutch_proto::v1::agent_server::AgentServer;
use thiserror::Error;
use tokio::net::TcpListener;
use tonic::transport::server::Router;
use tonic_health::server::HealthReporter;

pub use super::limits::{
    Budget, Limited, ServerLimits, DEFAULT_MAX_CONCURRENT_REQUESTS,
    DEFAULT_MAX_REQUESTS_PER_CLIENT, DEFAULT_REQUEST_TIMEOUT,
};
use super::reporter::Reporter;
use super::{AgentCore, AgentService};
use crate::events::{EventLog, EventLogError};
use crate::runtime::Runtime;

/// Largest request accepted.
pub const MAX_REQUEST_BYTES: usize = 4 << 20;
/// Largest response sent.
pub const MAX_RESPONSE_BYTES: usize = 40 << 20;
/// Streams one connection may have open at once (HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

/// Why the server could not run.
#[derive(Debug, Error)]
pub enum ServeError {
    /// The event log could not be opened.
    #[error(transparent)]
    Events(#[from] EventLogError),
    /// Reflection could not be set up.
    #[error("reflection: {0}")]
    Reflection(String),
    /// The transport failed.
    #[error("gRPC server: {0}")]
    Transport(String),
}

/// What the server serves.
pub struct ServeOptions {
    /// The runtime of this host.
    pub runtime: Arc<Runtime>,
    /// This node's name.
    pub node: String,
    /// Events kept in the log before compaction.
    pub event_keep: usize,
    /// Memory kept back from containers.
    pub memory_reserve_bytes: u64,
    /// The controller to register with, when part of a cluster.
    pub registration: Option<super::registration::Registration>,
    /// Budgets of requests in flight and the request time limit (see [`Limited`]).
    pub limits: ServerLimits,
    /// Bearer tokens of local administrators, from the tokens file.
    pub tokens: Option<Arc<super::auth::Tokens>>,
    /// The node certificate this agent got by joining: serve mutual TLS with it, and
    /// register with the controller over it.
    pub tls: Option<hutch_pki::material::TlsMaterial>,
}

/// Opens the event log, reconciles what happened while the agent was away, and serves on
/// `listener` until `shutdown` resolves. Containers keep running after it returns.
pub async fn serve(
    options: ServeOptions,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let state_dir = options.runtime.state_dir().to_path_buf();
    let events = Arc::new(EventLog::open(
        &state_dir.join("events.log"),
        options.event_keep,
    )?);
    let reporter = Reporter::new(options.runtime.clone(), events.clone());
    reporter.reconcile().await;
    let core = Arc::new(AgentCore {
        runtime: options.runtime,
        events,
        reporter,
        node: options.node,
        memory_reserve_bytes: options.memory_reserve_bytes,
        draining: AtomicBool::new(false),
        closing: tokio::sync::watch::channel(false).0,
    });

    let (router, health) = base_router(options.tls.as_ref())?;
    health.set_serving::<AgentServer<AgentService>>().await;
    if let Some(reg) = options.registration {
        tokio::spawn(super::registration::run(
            core.clone(),
            reg,
            options.tls.clone(),
        ));
    }
    let policy = super::auth::Policy::agent(options.tokens, options.tls.is_some());

    let budget = Budget::new(options.limits);
    let agent = AgentServer::new(AgentService::new(core.clone()))
        .max_decoding_message_size(MAX_REQUEST_BYTES)
        .max_encoding_message_size(MAX_RESPONSE_BYTES);
    let agent = super::auth::Authed::new(Limited::new(agent, budget), Arc::new(policy));
    let draining = {
        let core = core.clone();
        async move {
            shutdown.await;
            core.draining.store(true, Ordering::SeqCst);
            core.closing.send_replace(true);
            health.set_not_serving::<AgentServer<AgentService>>().await;
            tracing::info!(node = %core.node, "shutting down; containers keep running under their supervisors");
        }
    };
    serve_router(router.add_service(agent), listener, draining).await
}

/// A server with the services every hutch daemon offers: `grpc.health.v1.Health` and
/// reflection in both versions, plus the health reporter to mark its own services. With
/// `tls`, it serves TLS only, asking callers for a certificate of the cluster CA.
pub fn base_router(
    tls: Option<&hutch_pki::material::TlsMaterial>,
) -> Result<(Router, HealthReporter), ServeError> {
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(hutch_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let (health, health_service) = tonic_health::server::health_reporter();
    let mut server = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)));
    if let Some(tls) = tls {
        server = server
            .tls_config(tls.server_config())
            .map_err(|e| ServeError::Transport(format!("TLS: {}", hutch_proto::error_chain(&e))))?;
    }
    let router = server
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    Ok((router, health))
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve_router(
    router: Router,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    router
        // No Nagle: small replies must not wait for a delayed ACK (40 ms per round trip).
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
        .map_err(|e| ServeError::Transport(e.to_string()))
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Binds `listen` for a daemon; returns the listener and the address it got (port 0 picks
/// one). A non-loopback address without `tls` gets here only with `insecure` (see
/// [`crate::config::check_plaintext`]); it is warned about at every start.
pub async fn bind(
    listen: std::net::SocketAddr,
    tls: bool,
) -> Result<(TcpListener, String), String> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    if !listen.ip().is_loopback() && !tls {
        tracing::warn!(%addr, "--insecure: serving plaintext gRPC on a non-loopback address; anyone who can reach it can run containers as root");
    }
    Ok((listener, addr))
}
