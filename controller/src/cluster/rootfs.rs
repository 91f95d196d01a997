//! Rootfs across nodes: a build on one, some or all nodes with every node's progress merged
//! into one stream, and listings gathered from the nodes.

use std::sync::Arc;
use std::time::Duration;

use hutch_proto::v1;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use super::{Change, Cluster, ClusterError};

/// Longest a listing may wait for one node.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);

impl Cluster {
    /// Whether `rootfs` names an image: a reference, or a rootfs this cluster built from
    /// one (its config may give a container's command).
    pub(crate) fn is_image_rootfs(&self, rootfs: &str) -> bool {
        hutch_core::image_ref::looks_like_image(rootfs)
            || self
                .lock()
                .rootfs_specs
                .get(rootfs)
                .is_some_and(|s| matches!(s.source, Some(v1::rootfs_spec::Source::Image(_))))
    }

    /// Starts the build on the target nodes; every node's progress, result or error is sent
    /// to `out`, tagged with the node. The spec is remembered (durably) so that any node
    /// can build the rootfs again before a container needs it there.
    pub async fn build_rootfs(
        self: &Arc<Self>,
        req: v1::ClusterBuildRootfsRequest,
        out: mpsc::Sender<Result<v1::ClusterBuildRootfsResponse, tonic::Status>>,
    ) -> Result<(), ClusterError> {
        let spec = req
            .rootfs
            .ok_or_else(|| ClusterError::InvalidArgument("rootfs: missing".into()))?;
        // The nodes' own checks, before any node is asked.
        let (name, source) = hutch_core::convert::rootfs_from(Some(spec.clone()))
            .map_err(|e| ClusterError::InvalidArgument(e.to_string()))?;
        hutch_core::names::validate_name("rootfs name", &name)
            .map_err(|e| ClusterError::InvalidArgument(format!("rootfs.name: {e}")))?;
        source
            .validate()
            .map_err(|e| ClusterError::InvalidArgument(format!("rootfs: {e}")))?;
        let nodes = self.target_nodes(&req.node, &req.node_selector)?;
        if nodes.is_empty() {
            return Err(ClusterError::FailedPrecondition(
                "no ready node matches; check `ListNodes`".into(),
            ));
        }
        let remembered = spec.clone();
        self.commit_blocking(move |c| {
            let mut st = c.lock();
            c.commit(&mut st, vec![Change::RootfsSpec(remembered)])
                .map(drop)
        })
        .await?;
        for node in nodes {
            let me = self.clone();
            let out = out.clone();
            let spec = spec.clone();
            tokio::spawn(async move {
                let tag = |event| v1::ClusterBuildRootfsResponse {
                    node: node.clone(),
                    event: Some(event),
                };
                let error = |status: tonic::Status| {
                    v1::cluster_build_rootfs_response::Event::Error(v1::NodeError {
                        node: String::new(),
                        code: status.code() as i32,
                        message: status.message().to_string(),
                    })
                };
                let name = spec.name.clone();
                let stream = match me.client_for(&node) {
                    Ok(mut client) => client
                        .build_rootfs(v1::BuildRootfsRequest { rootfs: Some(spec) })
                        .await
                        .map(tonic::Response::into_inner),
                    Err(e) => Err(tonic::Status::unavailable(e.to_string())),
                };
                let mut stream = match stream {
                    Ok(s) => s,
                    Err(s) => {
                        let _ = out.send(Ok(tag(error(s)))).await;
                        return;
                    }
                };
                while let Some(item) = stream.next().await {
                    use v1::build_rootfs_response::Event as In;
                    use v1::cluster_build_rootfs_response::Event as Out;
                    let outcome = match &item {
                        Ok(v1::BuildRootfsResponse {
                            event: Some(In::Result(r)),
                        }) => Some(
                            v1::BuildOutcome::try_from(r.outcome)
                                .map(|o| {
                                    o.as_str_name()
                                        .trim_start_matches("BUILD_OUTCOME_")
                                        .to_ascii_lowercase()
                                })
                                .unwrap_or_default(),
                        ),
                        Err(_) => Some("failed".to_string()),
                        _ => None,
                    };
                    if let Some(outcome) = outcome {
                        me.metrics
                            .rootfs_builds
                            .get_or_create(&crate::metrics::BuildLabels { outcome })
                            .inc();
                    }
                    let event = match item {
                        Ok(v1::BuildRootfsResponse {
                            event: Some(In::Progress(p)),
                        }) => Out::Progress(p),
                        Ok(v1::BuildRootfsResponse {
                            event: Some(In::Result(r)),
                        }) => {
                            me.node_has_rootfs(&node, &name);
                            Out::Result(r)
                        }
                        Ok(_) => continue,
                        Err(s) => error(s),
                    };
                    if out.send(Ok(tag(event))).await.is_err() {
                        return; // The client went away; the node finishes the build.
                    }
                }
            });
        }
        Ok(())
    }

    /// The rootfs of the target nodes (one node, or every ready one).
    pub async fn list_rootfs(
        self: &Arc<Self>,
        node: &str,
    ) -> Result<v1::ClusterListRootfsResponse, ClusterError> {
        let nodes = self.target_nodes(node, &Default::default())?;
        let mut response = v1::ClusterListRootfsResponse::default();
        for node in nodes {
            let listed = match self.client_for(&node) {
                Ok(mut client) => {
                    let mut request = tonic::Request::new(v1::ListRootfsRequest {});
                    request.set_timeout(LIST_TIMEOUT);
                    client
                        .list_rootfs(request)
                        .await
                        .map(|r| r.into_inner().rootfs)
                        .map_err(|s| s.message().to_string())
                }
                Err(e) => Err(e.to_string()),
            };
            match listed {
                Ok(list) => response
                    .rootfs
                    .extend(list.into_iter().map(|r| v1::NodeRootfs {
                        node: node.clone(),
                        rootfs: Some(r),
                    })),
                Err(e) => {
                    response.unreachable.insert(node, e);
                }
            }
        }
        Ok(response)
    }

    /// Removes the rootfs from the target nodes (one, or every ready one); with no node
    /// named, the cluster also forgets its spec.
    pub async fn remove_rootfs(
        self: &Arc<Self>,
        name: &str,
        node: &str,
    ) -> Result<v1::ClusterRemoveRootfsResponse, ClusterError> {
        hutch_core::names::validate_name("rootfs name", name)
            .map_err(|e| ClusterError::InvalidArgument(format!("name: {e}")))?;
        let nodes = self.target_nodes(node, &Default::default())?;
        let mut response = v1::ClusterRemoveRootfsResponse::default();
        for n in nodes {
            let removed = match self.client_for(&n) {
                Ok(mut client) => client
                    .remove_rootfs(v1::RemoveRootfsRequest { name: name.into() })
                    .await
                    .map(drop)
                    .map_err(|s| (s.code(), s.message().to_string())),
                Err(e) => Err((tonic::Code::Unavailable, e.to_string())),
            };
            match removed {
                Ok(()) => {
                    self.node_lost_rootfs(&n, name);
                    response.removed.push(n);
                }
                // Not there: nothing to remove.
                Err((tonic::Code::NotFound, _)) => self.node_lost_rootfs(&n, name),
                Err((_, why)) => {
                    response.failed.insert(n, why);
                }
            }
        }
        if node.is_empty() {
            let name = name.to_string();
            self.commit_blocking(move |c| {
                let mut st = c.lock();
                c.commit(&mut st, vec![Change::ForgetRootfsSpec(name)])
                    .map(drop)
            })
            .await?;
        }
        Ok(response)
    }
}
