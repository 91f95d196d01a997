//! `hutch.v1.Nodes`: what agents call to register and heartbeat.

use std::sync::Arc;

use hutch_proto::v1;
use hutch_proto::v1::nodes_server::Nodes;
use tonic::{Request, Response, Status};

use crate::cluster::Cluster;

/// The agents' side of the controller.
#[derive(Clone)]
pub struct NodesService {
    cluster: Arc<Cluster>,
}

impl NodesService {
    /// A service over `cluster`.
    pub fn new(cluster: Arc<Cluster>) -> Self {
        NodesService { cluster }
    }
}

#[tonic::async_trait]
impl Nodes for NodesService {
    async fn register(
        &self,
        request: Request<v1::RegisterRequest>,
    ) -> Result<Response<v1::RegisterResponse>, Status> {
        let req = request.into_inner();
        let response = self
            .cluster
            .commit_blocking(move |c| c.register(req))
            .await?;
        Ok(Response::new(response))
    }

    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let req = request.into_inner();
        self.cluster
            .commit_blocking(move |c| c.heartbeat(req))
            .await?;
        Ok(Response::new(v1::HeartbeatResponse {}))
    }
}
