//! Assembles the controller's gRPC server: `hutch.v1.Controller`, `hutch.v1.Nodes`,
//! `grpc.health.v1.Health` and reflection (v1 and v1alpha), with the same message size
//! bounds as the agent.

use std::future::Future;
use std::sync::Arc;

use hutch_proto::v1::nodes_server::NodesServer;
use hutch_proto::wire::controller_server::ControllerServer;
use hutch_server::auth::{Authed, Policy, Tokens};
use hutch_server::limits::{Budget, Limited, ServerLimits};
use hutch_server::listen::{
    base_router, serve_router, ServeError, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES,
};
use hutch_server::metrics::{Measured, Registry, RpcMetrics};
use tokio::net::TcpListener;

use super::nodes::NodesService;
use super::ControllerService;
use crate::join::ClusterPki;
use crate::leadership::Leadership;

/// Who may call, and how much at once.
#[derive(Default)]
pub struct Limits {
    /// Bearer tokens; `None` lets every call through.
    pub tokens: Option<Arc<Tokens>>,
    /// Budgets of requests in flight and the request time limit.
    pub limits: ServerLimits,
    /// The cluster PKI: serve TLS with the controller's certificate, let agents join.
    pub pki: Option<Arc<ClusterPki>>,
    /// Where to serve Prometheus metrics (`GET /metrics`); `None`: no metrics.
    pub metrics: Option<TcpListener>,
}

/// Serves the cluster `leadership` holds on `listener` until `shutdown` resolves.
pub async fn serve(
    leadership: Arc<Leadership>,
    listener: TcpListener,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let Limits {
        tokens,
        limits,
        pki,
        metrics,
    } = limits;
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    let rpc_metrics = metrics.map(|listener| {
        let mut registry = Registry::with_prefix("hutch");
        let rpc = RpcMetrics::register(&mut registry);
        crate::metrics::register(&mut registry, leadership.clone());
        let mut closing = closing.clone();
        tokio::spawn(hutch_server::metrics::serve(
            listener,
            Arc::new(registry),
            async move {
                let _ = closing.wait_for(|c| *c).await;
            },
        ));
        rpc
    });
    let budget = Budget::new(limits);
    let (router, health) = base_router(pki.as_ref().map(|p| p.material()))?;
    let policy = Arc::new(Policy::controller(tokens, pki.is_some()));
    health
        .set_serving::<ControllerServer<ControllerService>>()
        .await;
    health.set_serving::<NodesServer<NodesService>>().await;
    let controller = ControllerServer::new(ControllerService::new(
        leadership.clone(),
        closing,
        pki.clone(),
    ))
    .max_decoding_message_size(MAX_REQUEST_BYTES)
    .max_encoding_message_size(MAX_RESPONSE_BYTES);
    let nodes = NodesServer::new(NodesService::new(leadership, pki))
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    let draining = async move {
        shutdown.await;
        // End watches and followed logs, so the server can stop; clients resume elsewhere.
        closing_tx.send_replace(true);
        health
            .set_not_serving::<ControllerServer<ControllerService>>()
            .await;
        tracing::info!("shutting down; containers keep running on their nodes");
    };
    serve_router(
        router
            // Measured outermost: refused calls (unauthenticated, shed) are counted too.
            .add_service(Measured::new(
                Authed::new(Limited::new(controller, budget.clone()), policy.clone()),
                rpc_metrics.clone(),
            ))
            .add_service(Measured::new(
                Authed::new(Limited::new(nodes, budget), policy),
                rpc_metrics,
            )),
        listener,
        draining,
    )
    .await
}
