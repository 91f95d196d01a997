//! Assembles the agent's gRPC server: `hutch.v1.Agent` behind the auth and limits layers, on
//! the base every hutch daemon shares (`hutch_server`: health, reflection, TLS, message
//! size bounds).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use hutch_proto::v1::agent_server::AgentServer;
use thiserror::Error;
use tokio::net::TcpListener;

use super::reporter::Reporter;
use super::{AgentCore, AgentService};
use crate::events::{EventLog, EventLogError};
use crate::runtime::Runtime;
pub use hutch_server::limits::{
    Budget, Limited, ServerLimits, DEFAULT_MAX_CONCURRENT_REQUESTS,
    DEFAULT_MAX_REQUESTS_PER_CLIENT, DEFAULT_REQUEST_TIMEOUT,
};
pub use hutch_server::listen::{
    base_router, bind, serve_router, shutdown_signal, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES,
    MAX_STREAMS_PER_CONNECTION,
};
use hutch_server::metrics::{Measured, Registry, RpcMetrics};

/// Why the server could not run.
#[derive(Debug, Error)]
pub enum ServeError {
    /// The event log could not be opened.
    #[error(transparent)]
    Events(#[from] EventLogError),
    /// The gRPC server could not be set up or failed.
    #[error(transparent)]
    Server(#[from] hutch_server::ServeError),
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
    /// Where to serve Prometheus metrics (`GET /metrics`); `None`: no metrics.
    pub metrics: Option<TcpListener>,
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
        metrics: Default::default(),
        detached: Default::default(),
    });
    let rpc_metrics = options.metrics.map(|listener| {
        let mut registry = Registry::with_prefix("hutch");
        let rpc = RpcMetrics::register(&mut registry);
        crate::metrics::register(
            &mut registry,
            core.runtime.clone(),
            core.events.clone(),
            &core.node,
            &core.metrics,
        );
        let mut closing = core.closing.subscribe();
        tokio::spawn(hutch_server::metrics::serve(
            listener,
            Arc::new(registry),
            async move {
                let _ = closing.wait_for(|c| *c).await;
            },
        ));
        rpc
    });

    // An agent without a controller sets its node-wide network up now (--network-subnet);
    // one with a controller does when it registers.
    if options.registration.is_none() && core.runtime.network().assignment().is_some() {
        let network = core.runtime.network().clone();
        let assignment = network.assignment();
        if let Err(e) = network.sync_host(assignment, Default::default()).await {
            tracing::error!("container network: {e}");
        }
    }
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
    // Measured outermost: refused calls (unauthenticated, shed) are counted too.
    let agent = Measured::new(
        super::auth::Authed::new(Limited::new(agent, budget), Arc::new(policy)),
        rpc_metrics,
    );
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
    serve_router(router.add_service(agent), listener, draining).await?;
    // Starts, stops and removals whose callers left still finish and report.
    if !core.detached.wait(SHUTDOWN_WORK_WAIT).await {
        tracing::warn!(
            node = %core.node,
            unfinished = core.detached.running(),
            "stopping with starts, stops or removals still going on; reconciliation at the next start finishes them"
        );
    }
    Ok(())
}

/// How long shutdown waits for starts, stops and removals going on.
const SHUTDOWN_WORK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
