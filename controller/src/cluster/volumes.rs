//! Named volumes across nodes. A volume lives on one node (its agent keeps the data); the
//! controller knows which from the nodes' heartbeats and from the records of containers
//! placed with it ([`super::containers::volume_holders`]), and sends each request to that
//! node.

use std::sync::Arc;
use std::time::Duration;

use hutch_proto::v1;

use super::containers::volume_holders;
use super::records::{is_final, state, volumes_of};
use super::{Cluster, ClusterError};
use crate::scheduler::Request;

/// Longest a listing may wait for one node.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a volume made (or being made) by `CreateVolume` counts as held by its node
/// without the node's word: longer than a create call and a heartbeat interval.
pub(crate) const CLAIM_TTL: Duration = Duration::from_secs(30);

fn node_error(node: &str, status: tonic::Status) -> ClusterError {
    ClusterError::Node {
        node: node.to_string(),
        status,
    }
}

impl Cluster {
    fn check_volume_name(name: &str) -> Result<(), ClusterError> {
        hutch_core::names::validate_name("volume name", name)
            .map_err(|e| ClusterError::InvalidArgument(format!("name: {e}")))
    }

    /// The one node holding volume `name` (`node`, when given).
    fn volume_home(&self, name: &str, node: &str) -> Result<String, ClusterError> {
        Self::check_volume_name(name)?;
        if !node.is_empty() {
            return Ok(node.to_string());
        }
        let st = self.lock();
        let holders = volume_holders(&st, name);
        let mut holders = holders.into_iter();
        match (holders.next(), holders.next()) {
            (None, _) => Err(ClusterError::NotFound(format!(
                "volume '{name}' not found on any node; create it with `hutch volume create {name}`"
            ))),
            (Some(node), None) => Ok(node),
            (Some(a), Some(b)) => Err(ClusterError::FailedPrecondition(format!(
                "volume '{name}' exists on more than one node ({a}, {b}); name the node (--node)"
            ))),
        }
    }

    /// Creates a volume on `req.node`, or on a ready node the scheduler picks.
    pub async fn create_volume(
        self: &Arc<Self>,
        req: v1::CreateVolumeRequest,
    ) -> Result<v1::Volume, ClusterError> {
        Self::check_volume_name(&req.name)?;
        hutch_core::spec::validate_labels("labels", req.labels.iter())
            .map_err(ClusterError::InvalidArgument)?;
        let node = {
            let mut st = self.lock();
            if let Some(holder) = volume_holders(&st, &req.name).into_iter().next() {
                return Err(ClusterError::AlreadyExists(format!(
                    "volume '{}' already exists on node '{holder}'",
                    req.name
                )));
            }
            let selector = Default::default();
            let any = Request {
                memory_bytes: 0,
                node: (!req.node.is_empty()).then_some(req.node.as_str()),
                selector: &selector,
                rootfs: "",
                rootfs_buildable: true,
                ports: &[],
                cpu_millicores: 0,
                spread: None,
            };
            let node = st.scheduler.place(&any).map_err(|e| {
                ClusterError::FailedPrecondition(format!("no node for the volume: {e}"))
            })?;
            // Claimed before the node is asked: a second create of the name is refused.
            st.volume_claims
                .insert(req.name.clone(), (node.clone(), std::time::Instant::now()));
            node
        };
        let made = self.make_volume(&node, &req).await;
        let mut st = self.lock();
        match &made {
            Ok(_) => {
                st.volume_claims
                    .insert(req.name.clone(), (node.clone(), std::time::Instant::now()));
            }
            Err(_) => {
                st.volume_claims.remove(&req.name);
            }
        }
        st.volume_claims
            .retain(|_, (_, at)| at.elapsed() < CLAIM_TTL);
        drop(st);
        made
    }

    async fn make_volume(
        self: &Arc<Self>,
        node: &str,
        req: &v1::CreateVolumeRequest,
    ) -> Result<v1::Volume, ClusterError> {
        let mut client = self.client_for(node)?;
        let volume = client
            .create_volume(v1::CreateVolumeRequest {
                name: req.name.clone(),
                labels: req.labels.clone(),
                node: String::new(),
            })
            .await
            .map_err(|s| node_error(node, s))?
            .into_inner();
        self.node_volume(node, &req.name, true);
        tracing::info!(volume = %req.name, node = %node, "volume created");
        Ok(volume)
    }

    /// Volume `name`, as its node describes it.
    pub async fn get_volume(
        self: &Arc<Self>,
        name: &str,
        node: &str,
    ) -> Result<v1::Volume, ClusterError> {
        let node = self.volume_home(name, node)?;
        let mut client = self.client_for(&node)?;
        client
            .get_volume(v1::GetVolumeRequest {
                name: name.into(),
                node: String::new(),
            })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| node_error(&node, s))
    }

    /// The volumes of one node, or of every ready node.
    pub async fn list_volumes(
        self: &Arc<Self>,
        node: &str,
    ) -> Result<v1::ListVolumesResponse, ClusterError> {
        let nodes = self.target_nodes(node, &Default::default())?;
        let mut response = v1::ListVolumesResponse::default();
        for node in nodes {
            let listed = match self.client_for(&node) {
                Ok(mut client) => {
                    let mut request = tonic::Request::new(v1::ListVolumesRequest::default());
                    request.set_timeout(LIST_TIMEOUT);
                    client
                        .list_volumes(request)
                        .await
                        .map(|r| r.into_inner().volumes)
                        .map_err(|s| (s.code(), s.message().to_string()))
                }
                Err(e) => Err((tonic::Code::Unavailable, e.to_string())),
            };
            match listed {
                Ok(list) => response.volumes.extend(list),
                Err((code, message)) => response.unreachable.push(v1::NodeError {
                    code: code as i32,
                    message,
                    node,
                }),
            }
        }
        Ok(response)
    }

    /// Deletes volume `name` on its node, unless a container record mounts it.
    pub async fn remove_volume(
        self: &Arc<Self>,
        name: &str,
        node: &str,
    ) -> Result<(), ClusterError> {
        let node = self.volume_home(name, node)?;
        let users: Vec<String> = {
            let st = self.lock();
            st.containers
                .values()
                .filter(|c| {
                    (c.node.is_empty() || c.node == node) && volumes_of(c).any(|v| v == name)
                })
                .map(|c| {
                    let ended = if is_final(state(c)) { " (ended)" } else { "" };
                    format!("{}{ended}", c.name)
                })
                .collect()
        };
        if !users.is_empty() {
            return Err(ClusterError::FailedPrecondition(format!(
                "volume '{name}' is used by container(s) {}; remove them first",
                users.join(", ")
            )));
        }
        let mut client = self.client_for(&node)?;
        match client
            .remove_volume(v1::RemoveVolumeRequest {
                name: name.into(),
                node: String::new(),
            })
            .await
        {
            Ok(_) => {}
            // Already gone there: forget it all the same.
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(node_error(&node, s)),
        }
        self.node_volume(&node, name, false);
        let mut st = self.lock();
        if st.volume_claims.get(name).is_some_and(|(n, _)| *n == node) {
            st.volume_claims.remove(name);
        }
        drop(st);
        tracing::info!(volume = %name, node = %node, "volume removed");
        Ok(())
    }
}
