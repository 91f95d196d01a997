//! `ContainerStats` and `ListProcesses` through the controller: each container's samples
//! come from its node, one stream per node, merged into one; the agents' ids of the copies
//! become the containers' names again.

use std::collections::{BTreeMap, HashMap};

use hutch_proto::v1;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::Status;

use super::{copy_of, Closing, STREAM_BUFFER};
use crate::cluster::records::{current_agent_id, parse_agent_id};
use crate::cluster::{Cluster, ClusterError};

fn from_node(node: &str, status: Status) -> Status {
    Status::from(ClusterError::Node {
        node: node.to_string(),
        status,
    })
}

/// The containers asked for (every running one when none is named), by node: each copy's
/// agent id with the container's name.
fn targets(
    cluster: &Cluster,
    ids: &[String],
) -> Result<BTreeMap<String, HashMap<String, String>>, Status> {
    let mut by_node: BTreeMap<String, HashMap<String, String>> = BTreeMap::new();
    if ids.is_empty() {
        let (running, _) = cluster.list("", Some(v1::ContainerState::Running), &Default::default());
        for c in running {
            by_node
                .entry(c.node.clone())
                .or_default()
                .insert(current_agent_id(&c), c.name.clone());
        }
    } else {
        for id in ids {
            let (node, copy) = copy_of(cluster, id)?;
            by_node.entry(node).or_default().insert(copy, id.clone());
        }
    }
    Ok(by_node)
}

/// Starts the merged stream of samples.
pub(super) async fn stats(
    cluster: &std::sync::Arc<Cluster>,
    closing: Closing,
    req: v1::ContainerStatsRequest,
) -> Result<mpsc::Receiver<Result<v1::ContainerUsage, Status>>, Status> {
    let by_node = targets(cluster, &req.ids)?;
    // Every running one: each node samples all its running containers, so one that ends or
    // starts there during a stream neither ends it nor is missed.
    let all = req.ids.is_empty();
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    for (node, names) in by_node {
        let mut client = cluster.client_for(&node)?;
        let request = v1::ContainerStatsRequest {
            ids: if all {
                Vec::new()
            } else {
                names.keys().cloned().collect()
            },
            stream: req.stream,
        };
        let mut stream = client
            .container_stats(request)
            .await
            .map_err(|s| from_node(&node, s))?
            .into_inner();
        let tx = tx.clone();
        let mut closing = closing.clone();
        let cluster = cluster.clone();
        tokio::spawn(async move {
            loop {
                let item = tokio::select! {
                    item = stream.next() => item,
                    _ = closing.wait() => Some(Err(Status::unavailable(
                        "this controller is shutting down or stopped leading; ask again",
                    ))),
                };
                let Some(item) = item else { return };
                let item = match item {
                    Ok(mut sample) => {
                        let name = names.get(&sample.id).cloned().or_else(|| {
                            // A container started there since: the current run of a record
                            // placed on this node (an admin's own container is not shown).
                            let (name, run) = parse_agent_id(&sample.id)?;
                            cluster
                                .get(name)
                                .ok()
                                .filter(|r| r.node == node && r.restart_count == run)
                                .map(|r| r.name)
                        });
                        match name {
                            Some(name) => {
                                sample.id = name;
                                Ok(sample)
                            }
                            None => continue,
                        }
                    }
                    Err(s) => Err(from_node(&node, s)),
                };
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
    }
    Ok(rx)
}

/// The processes of a running container, from its node.
pub(super) async fn processes(
    cluster: &Cluster,
    id: &str,
) -> Result<v1::ListProcessesResponse, Status> {
    let (node, copy) = copy_of(cluster, id)?;
    let mut client = cluster.client_for(&node)?;
    client
        .list_processes(v1::ListProcessesRequest { id: copy })
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| from_node(&node, s))
}
