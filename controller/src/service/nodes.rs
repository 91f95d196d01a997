//! `hutch.v1.Nodes`: what agents call to join, register and heartbeat. An agent that proved
//! a node's identity (its node certificate over TLS, or a node token) registers and
//! heartbeats only under that node's name, so no node can take another's name or re-point
//! another node's address.

use std::sync::Arc;

use hutch_proto::v1;
use hutch_proto::v1::nodes_server::Nodes;
use tonic::{Request, Response, Status};

use crate::join::ClusterPki;
use crate::leadership::Leadership;
use hutch_server::auth::Peer;

/// The agents' side of the controller.
#[derive(Clone)]
pub struct NodesService {
    leadership: Arc<Leadership>,
    pki: Option<Arc<ClusterPki>>,
}

impl NodesService {
    /// A service over `cluster`; agents can join when there is a `pki`.
    pub fn new(leadership: Arc<Leadership>, pki: Option<Arc<ClusterPki>>) -> Self {
        NodesService { leadership, pki }
    }
}

/// Refuses a node's credential (certificate or node token) used for another node's name.
fn check_name<T>(request: &Request<T>, name: &str) -> Result<(), Status> {
    match request.extensions().get::<Peer>() {
        Some(Peer::Node(proven)) if proven != name => Err(Status::permission_denied(format!(
            "the credential of node '{proven}' cannot act as node '{name}': an agent registers only under its own name (the name its certificate was issued for, or the NAME of its node token's line in the controller's tokens file)"
        ))),
        _ => Ok(()),
    }
}

#[tonic::async_trait]
impl Nodes for NodesService {
    async fn register(
        &self,
        request: Request<v1::RegisterRequest>,
    ) -> Result<Response<v1::RegisterResponse>, Status> {
        check_name(&request, &request.get_ref().name)?;
        let req = request.into_inner();
        let response = self
            .leadership
            .cluster()?
            .commit_blocking_answer(move |c| c.register(req))
            .await?;
        Ok(Response::new(response))
    }

    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        check_name(&request, &request.get_ref().name)?;
        let req = request.into_inner();
        let had = req.names_revision;
        let cluster = self.leadership.cluster()?;
        let response = cluster.commit_blocking(move |c| c.heartbeat(req)).await?;
        if response
            .network
            .as_ref()
            .is_some_and(|n| n.names_revision != had)
        {
            // A new name table: sent once the changes it shows are durable.
            cluster.settled().await?;
        }
        Ok(Response::new(response))
    }

    async fn join(
        &self,
        request: Request<v1::JoinRequest>,
    ) -> Result<Response<v1::JoinResponse>, Status> {
        let req = request.into_inner();
        let pki = self.pki.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "this controller serves without TLS: agents register without joining (drop --join)",
            )
        })?;
        // A join token names no node: whoever holds one could otherwise get a certificate for
        // a live node's name and re-point it. A node that is up keeps its name.
        if let Ok(node) = self.leadership.cluster()?.node(&req.name) {
            if node.state == v1::NodeState::Ready as i32 {
                tracing::warn!(node = %req.name, "join refused: the node is registered and ready");
                return Err(Status::already_exists(format!(
                    "node '{}' is registered and ready: a join cannot take a live node's name (join under another name, or wait until it is DOWN)",
                    req.name
                )));
            }
        }
        let signed = {
            let (pki, token, name, csr) = (
                pki.clone(),
                req.token.clone(),
                req.name.clone(),
                req.csr_pem.clone(),
            );
            tokio::task::spawn_blocking(move || pki.join(&token, &name, &csr))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
        };
        let (certificate_pem, expires) = match signed {
            Ok(signed) => signed,
            Err(e) => {
                tracing::warn!(node = %req.name, "join refused: {e}");
                return Err(e.into());
            }
        };
        tracing::info!(node = %req.name, "node joined: certificate issued");
        Ok(Response::new(v1::JoinResponse {
            certificate_pem,
            ca_pem: pki.ca_pem().to_string(),
            expires_at: Some(prost_types::Timestamp::from(expires)),
        }))
    }
}
