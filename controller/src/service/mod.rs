//! `hutch.v1.Controller` over gRPC: thin handlers over [`Cluster`]; errors become status
//! codes in [`status`]. Logs and exec are proxied to the node that runs the container.

pub mod nodes;
pub mod server;
pub mod status;
mod usage;
pub mod watch_filter;

use std::pin::Pin;
use std::sync::Arc;

use hutch_proto::v1;
use hutch_proto::wire::controller_server::Controller;
use hutch_proto::wire::PreEncoded;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::cluster::records::current_agent_id;
use crate::cluster::{Cluster, ClusterError};
use crate::join::ClusterPki;
use crate::leadership::Leadership;

type RpcStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Messages buffered per proxied stream.
const STREAM_BUFFER: usize = 64;

/// The client-facing service.
#[derive(Clone)]
pub struct ControllerService {
    leadership: Arc<Leadership>,
    /// Turns true when the controller shuts down: long-lived streams end then.
    closing: watch::Receiver<bool>,
    /// The cluster CA and join tokens, when the controller serves TLS.
    pki: Option<Arc<ClusterPki>>,
}

impl ControllerService {
    /// A service over `cluster`; its streams end when `closing` turns true.
    pub fn new(
        leadership: Arc<Leadership>,
        closing: watch::Receiver<bool>,
        pki: Option<Arc<ClusterPki>>,
    ) -> Self {
        ControllerService {
            leadership,
            closing,
            pki,
        }
    }

    /// The node running `id` and the id of its copy there, for proxied calls.
    fn copy_of(&self, id: &str) -> Result<(String, String), Status> {
        copy_of(&*self.cluster()?, id)
    }

    /// The cluster, while this controller leads (UNAVAILABLE naming the leader otherwise).
    fn cluster(&self) -> Result<Arc<Cluster>, Status> {
        self.leadership.cluster()
    }

    /// What ends a long-lived stream: the controller shutting down, or `cluster` stepping
    /// down.
    fn closing_for(&self, cluster: &Cluster) -> Closing {
        Closing {
            server: self.closing.clone(),
            term: cluster.term_over(),
        }
    }
}

/// `value`, read from `cluster`, answered once every change it may show is durable (a
/// change is in memory a moment before its shared sync to disk is done; see the cluster's
/// group commit).
async fn once_durable<T>(cluster: &Arc<Cluster>, value: T) -> Result<Response<T>, Status> {
    cluster.settled().await?;
    Ok(Response::new(value))
}

/// The node running `id` and the id of its copy there, for proxied calls.
fn copy_of(cluster: &Cluster, id: &str) -> Result<(String, String), Status> {
    {
        let c = cluster.get(id)?;
        if c.node.is_empty() {
            return Err(Status::failed_precondition(format!(
                "container '{id}' has not been placed on a node yet: {}",
                c.status_message
            )));
        }
        Ok((c.node.clone(), current_agent_id(&c)))
    }
}

/// The node keeping the previous run of `id` and that copy's id (`logs --previous`).
fn previous_copy_of(cluster: &Cluster, id: &str) -> Result<(String, String), Status> {
    let c = cluster.get(id)?;
    match crate::cluster::records::previous_copy(&c) {
        Some(copy) => Ok((c.previous_node.clone(), copy)),
        None if c.restart_count == 0 => Err(Status::failed_precondition(format!(
            "container '{id}' has not been restarted: there is no previous run"
        ))),
        None => Err(Status::failed_precondition(format!(
            "the previous run of container '{id}' was lost with its node"
        ))),
    }
}

/// FAILED_PRECONDITION for a service's replica: a stopped replica would be removed and
/// replaced at once, so stopping one by hand is refused with what to do instead.
fn not_a_replica(cluster: &Cluster, id: &str, what: &str) -> Result<(), Status> {
    let record = cluster.get(id)?;
    match crate::cluster::services::spec::replica_of(&record) {
        Some((service, _)) => Err(Status::failed_precondition(format!(
            "container '{id}' is a replica of service '{service}' and cannot be {what} on its own: scale the service (hutch service scale {service} N) or delete it; `hutch rm -f {id}` replaces this replica"
        ))),
        None => Ok(()),
    }
}

fn wanted_state(value: i32) -> Result<Option<v1::ContainerState>, Status> {
    match v1::ContainerState::try_from(value) {
        Ok(v1::ContainerState::Unspecified) => Ok(None),
        Ok(s) => Ok(Some(s)),
        Err(_) => Err(Status::invalid_argument(format!(
            "state: unknown container state {value}"
        ))),
    }
}

/// Every kept change after `since` that `wants` takes, then live ones, until the client
/// goes, falls too far behind, or the controller stops leading.
fn event_stream(
    cluster: &Cluster,
    mut closing: Closing,
    since: u64,
    wants: impl Fn(&v1::WatchEvent) -> bool + Send + 'static,
) -> Result<RpcStream<PreEncoded>, Status> {
    let (replay, mut live) = cluster.watch(since)?;
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(async move {
        let mut last = since;
        for e in replay {
            last = e.revision();
            if wants(e.event()) && tx.send(Ok(e.wire())).await.is_err() {
                return;
            }
        }
        loop {
            let next = tokio::select! {
                next = live.recv() => next,
                _ = closing.wait() => Err(broadcast::error::RecvError::Closed),
            };
            match next {
                Ok(e) if e.revision() <= last => {}
                Ok(e) => {
                    last = e.revision();
                    if wants(e.event()) && tx.send(Ok(e.wire())).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let _ = tx
                        .send(Err(Status::resource_exhausted(format!(
                            "this watch fell {n} changes behind (it reads slower than the cluster changes) and was cut off; watch again with since_revision={last}"
                        ))))
                        .await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => {
                    let _ = tx
                        .send(Err(Status::unavailable(format!(
                            "this controller is shutting down or stopped leading; watch again with since_revision={last} (on any controller of the cluster)"
                        ))))
                        .await;
                    return;
                }
            }
        }
    });
    Ok(Box::pin(ReceiverStream::new(rx)))
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create_container(
        &self,
        request: Request<v1::CreateContainerRequest>,
    ) -> Result<Response<v1::Container>, Status> {
        let req = request.into_inner();
        let record = self
            .cluster()?
            .commit_blocking_answer(move |c| c.create(req))
            .await?;
        Ok(Response::new(record))
    }

    async fn get_container(
        &self,
        request: Request<v1::GetContainerRequest>,
    ) -> Result<Response<v1::Container>, Status> {
        let cluster = self.cluster()?;
        let record = cluster.get(&request.into_inner().id)?;
        once_durable(&cluster, record).await
    }

    async fn list_containers(
        &self,
        request: Request<v1::ListClusterContainersRequest>,
    ) -> Result<Response<v1::ListContainersResponse>, Status> {
        let req = request.into_inner();
        let cluster = self.cluster()?;
        let (page, revision) = cluster.list_page(
            &req.node,
            wanted_state(req.state)?,
            &req.labels,
            req.page_size,
            &req.page_token,
        )?;
        let page = v1::ListContainersResponse {
            containers: page.items,
            revision,
            next_page_token: page.next_page_token,
        };
        once_durable(&cluster, page).await
    }

    async fn stop_container(
        &self,
        request: Request<v1::StopContainerRequest>,
    ) -> Result<Response<v1::Container>, Status> {
        let req = request.into_inner();
        let cluster = self.cluster()?;
        not_a_replica(&cluster, &req.id, "stopped")?;
        Ok(Response::new(
            cluster.stop(&req.id, req.grace_seconds).await?,
        ))
    }

    async fn kill_container(
        &self,
        request: Request<v1::KillContainerRequest>,
    ) -> Result<Response<v1::KillContainerResponse>, Status> {
        let req = request.into_inner();
        if !(0..=64).contains(&req.signal) {
            return Err(Status::invalid_argument(format!(
                "signal: {} is not a signal number (1-64; 0 means SIGKILL)",
                req.signal
            )));
        }
        let cluster = self.cluster()?;
        // Signals that end it (as a stop does); others (SIGHUP, SIGUSR1...) pass.
        if matches!(req.signal, 0 | 2 | 9 | 15) {
            not_a_replica(&cluster, &req.id, "killed")?;
        }
        cluster.kill(&req.id, req.signal).await?;
        Ok(Response::new(v1::KillContainerResponse {}))
    }

    async fn remove_container(
        &self,
        request: Request<v1::RemoveContainerRequest>,
    ) -> Result<Response<v1::RemoveContainerResponse>, Status> {
        let req = request.into_inner();
        self.cluster()?.remove(&req.id, req.force).await?;
        Ok(Response::new(v1::RemoveContainerResponse {}))
    }

    type WatchContainersStream = RpcStream<PreEncoded>;

    async fn watch_containers(
        &self,
        request: Request<v1::WatchContainersRequest>,
    ) -> Result<Response<Self::WatchContainersStream>, Status> {
        let req = request.into_inner();
        let filter = watch_filter::WatchFilter::of(&req)?;
        let cluster = self.cluster()?;
        let stream = event_stream(
            &cluster,
            self.closing_for(&cluster),
            req.since_revision,
            move |e| filter.wants(e),
        )?;
        Ok(Response::new(stream))
    }

    type ContainerLogsStream = RpcStream<v1::LogEntry>;
    type ContainerStatsStream = RpcStream<v1::ContainerUsage>;

    async fn container_stats(
        &self,
        request: Request<v1::ContainerStatsRequest>,
    ) -> Result<Response<Self::ContainerStatsStream>, Status> {
        let cluster = self.cluster()?;
        let closing = self.closing_for(&cluster);
        let rx = usage::stats(&cluster, closing, request.into_inner()).await?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_processes(
        &self,
        request: Request<v1::ListProcessesRequest>,
    ) -> Result<Response<v1::ListProcessesResponse>, Status> {
        Ok(Response::new(
            usage::processes(&*self.cluster()?, &request.into_inner().id).await?,
        ))
    }

    async fn container_logs(
        &self,
        request: Request<v1::ContainerLogsRequest>,
    ) -> Result<Response<Self::ContainerLogsStream>, Status> {
        let mut req = request.into_inner();
        let (node, copy) = if req.previous {
            previous_copy_of(&*self.cluster()?, &req.id)?
        } else {
            self.copy_of(&req.id)?
        };
        req.previous = false;
        // Counted before the node is asked, so an auto_remove container waits for it.
        let cluster = self.cluster()?;
        let reader = cluster.log_reader(&req.id);
        req.id = copy;
        let mut client = cluster.client_for(&node)?;
        let stream = client
            .container_logs(req)
            .await
            .map_err(|s| {
                Status::from(ClusterError::Node {
                    node: node.clone(),
                    status: s,
                })
            })?
            .into_inner();
        let mut stream = stream.map(move |item| {
            item.map_err(|s| {
                Status::from(ClusterError::Node {
                    node: node.clone(),
                    status: s,
                })
            })
        });
        // Forwarded by a task so that a followed stream ends when the controller shuts down.
        let mut closing = self.closing_for(&cluster);
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(async move {
            let _reader = reader;
            loop {
                let item = tokio::select! {
                    item = stream.next() => item,
                    _ = closing.wait() => Some(Err(Status::unavailable(
                        "the controller is shutting down; ask again for the lines since the last one you got",
                    ))),
                };
                let Some(item) = item else { return };
                let end = item.is_err();
                if tx.send(item).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn exec(
        &self,
        request: Request<v1::ExecRequest>,
    ) -> Result<Response<v1::ExecResponse>, Status> {
        let mut req = request.into_inner();
        hutch_core::spec::validate_command(&req.command)
            .map_err(|e| Status::invalid_argument(format!("command: {e}")))?;
        let (node, copy) = self.copy_of(&req.id)?;
        req.id = copy;
        let mut client = self.cluster()?.client_for(&node)?;
        let response = client
            .exec(req)
            .await
            .map_err(|status| Status::from(ClusterError::Node { node, status }))?;
        Ok(Response::new(response.into_inner()))
    }

    type ExecSessionStream = RpcStream<v1::ExecSessionOutput>;

    async fn exec_session(
        &self,
        request: Request<tonic::Streaming<v1::ExecSessionInput>>,
    ) -> Result<Response<Self::ExecSessionStream>, Status> {
        let mut inbound = request.into_inner();
        let start = first_start(&mut inbound).await?;
        let (mut client, node, outbound) = session_target(&*self.cluster()?, start, inbound)?;
        let answered = client.exec_session(outbound).await;
        node_stream(node, answered)
    }

    type AttachStream = RpcStream<v1::ExecSessionOutput>;

    async fn attach(
        &self,
        request: Request<tonic::Streaming<v1::ExecSessionInput>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let mut inbound = request.into_inner();
        let start = first_start(&mut inbound).await?;
        // An attached terminal reads the container's output: an auto_remove container
        // waits for it as for a logs stream.
        let reader = self.cluster()?.log_reader(&start.id);
        let (mut client, node, outbound) = session_target(&*self.cluster()?, start, inbound)?;
        let answered = client.attach(outbound).await;
        let stream = node_stream(node, answered)?.into_inner();
        Ok(Response::new(Box::pin(stream.map(move |item| {
            let _reading = &reader;
            item
        }))))
    }

    async fn list_nodes(
        &self,
        _: Request<v1::ListNodesRequest>,
    ) -> Result<Response<v1::ListNodesResponse>, Status> {
        let cluster = self.cluster()?;
        let nodes = v1::ListNodesResponse {
            nodes: cluster.nodes(),
        };
        once_durable(&cluster, nodes).await
    }

    async fn get_node(
        &self,
        request: Request<v1::GetNodeRequest>,
    ) -> Result<Response<v1::Node>, Status> {
        let cluster = self.cluster()?;
        let node = cluster.node(&request.into_inner().name)?;
        once_durable(&cluster, node).await
    }

    async fn cordon_node(
        &self,
        request: Request<v1::CordonNodeRequest>,
    ) -> Result<Response<v1::Node>, Status> {
        let name = request.into_inner().name;
        let node = self
            .cluster()?
            .commit_blocking_answer(move |c| c.set_cordoned(&name, true))
            .await?;
        Ok(Response::new(node))
    }

    async fn uncordon_node(
        &self,
        request: Request<v1::UncordonNodeRequest>,
    ) -> Result<Response<v1::Node>, Status> {
        let name = request.into_inner().name;
        let node = self
            .cluster()?
            .commit_blocking_answer(move |c| c.set_cordoned(&name, false))
            .await?;
        Ok(Response::new(node))
    }

    async fn drain_node(
        &self,
        request: Request<v1::DrainNodeRequest>,
    ) -> Result<Response<v1::DrainNodeResponse>, Status> {
        Ok(Response::new(
            self.cluster()?.drain(&request.into_inner().name).await?,
        ))
    }

    async fn remove_node(
        &self,
        request: Request<v1::RemoveNodeRequest>,
    ) -> Result<Response<v1::RemoveNodeResponse>, Status> {
        let req = request.into_inner();
        let removed = self
            .cluster()?
            .commit_blocking_answer(move |c| c.remove_node(&req.name, req.force))
            .await?;
        Ok(Response::new(removed))
    }

    type BuildRootfsStream = RpcStream<v1::ClusterBuildRootfsResponse>;

    async fn build_rootfs(
        &self,
        request: Request<v1::ClusterBuildRootfsRequest>,
    ) -> Result<Response<Self::BuildRootfsStream>, Status> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        self.cluster()?
            .build_rootfs(request.into_inner(), tx)
            .await?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn create_join_token(
        &self,
        request: Request<v1::CreateJoinTokenRequest>,
    ) -> Result<Response<v1::CreateJoinTokenResponse>, Status> {
        let req = request.into_inner();
        let pki = self.pki.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "this controller serves without TLS, so agents cannot join with a token: start it with --tls (or on a non-loopback address)",
            )
        })?;
        let ttl = std::time::Duration::from_secs(req.ttl_seconds);
        // The token store may be etcd or a file: off the async workers.
        let (pki, description) = (pki.clone(), req.description.clone());
        let (token, expires) =
            tokio::task::spawn_blocking(move || pki.create_token(ttl, &description))
                .await
                .map_err(|e| Status::internal(e.to_string()))??;
        tracing::info!(token_id = %token.id, description = %req.description, "join token created");
        Ok(Response::new(v1::CreateJoinTokenResponse {
            token: token.to_string(),
            id: token.id,
            expires_at: Some(prost_types::Timestamp::from(expires)),
            ca_fingerprint: token.ca_fingerprint,
        }))
    }

    async fn remove_rootfs(
        &self,
        request: Request<v1::ClusterRemoveRootfsRequest>,
    ) -> Result<Response<v1::ClusterRemoveRootfsResponse>, Status> {
        let req = request.into_inner();
        Ok(Response::new(
            self.cluster()?.remove_rootfs(&req.name, &req.node).await?,
        ))
    }

    async fn create_volume(
        &self,
        request: Request<v1::CreateVolumeRequest>,
    ) -> Result<Response<v1::Volume>, Status> {
        Ok(Response::new(
            self.cluster()?.create_volume(request.into_inner()).await?,
        ))
    }

    async fn get_volume(
        &self,
        request: Request<v1::GetVolumeRequest>,
    ) -> Result<Response<v1::Volume>, Status> {
        let req = request.into_inner();
        Ok(Response::new(
            self.cluster()?.get_volume(&req.name, &req.node).await?,
        ))
    }

    async fn list_volumes(
        &self,
        request: Request<v1::ListVolumesRequest>,
    ) -> Result<Response<v1::ListVolumesResponse>, Status> {
        Ok(Response::new(
            self.cluster()?
                .list_volumes(&request.into_inner().node)
                .await?,
        ))
    }

    async fn remove_volume(
        &self,
        request: Request<v1::RemoveVolumeRequest>,
    ) -> Result<Response<v1::RemoveVolumeResponse>, Status> {
        let req = request.into_inner();
        self.cluster()?.remove_volume(&req.name, &req.node).await?;
        Ok(Response::new(v1::RemoveVolumeResponse {}))
    }

    async fn list_rootfs(
        &self,
        request: Request<v1::ClusterListRootfsRequest>,
    ) -> Result<Response<v1::ClusterListRootfsResponse>, Status> {
        Ok(Response::new(
            self.cluster()?
                .list_rootfs(&request.into_inner().node)
                .await?,
        ))
    }
    async fn create_service(
        &self,
        request: Request<v1::CreateServiceRequest>,
    ) -> Result<Response<v1::Service>, Status> {
        let req = request.into_inner();
        let svc = self
            .cluster()?
            .commit_blocking_answer(move |c| c.create_service(req))
            .await?;
        Ok(Response::new(svc))
    }

    async fn get_service(
        &self,
        request: Request<v1::GetServiceRequest>,
    ) -> Result<Response<v1::Service>, Status> {
        let cluster = self.cluster()?;
        let service = cluster.get_service(&request.into_inner().name)?;
        once_durable(&cluster, service).await
    }

    async fn list_services(
        &self,
        _request: Request<v1::ListServicesRequest>,
    ) -> Result<Response<v1::ListServicesResponse>, Status> {
        let cluster = self.cluster()?;
        let (services, revision) = cluster.list_services();
        let services = v1::ListServicesResponse { services, revision };
        once_durable(&cluster, services).await
    }

    async fn update_service(
        &self,
        request: Request<v1::UpdateServiceRequest>,
    ) -> Result<Response<v1::Service>, Status> {
        let req = request.into_inner();
        let svc = self
            .cluster()?
            .commit_blocking_answer(move |c| c.update_service(&req.name, req.spec))
            .await?;
        Ok(Response::new(svc))
    }

    async fn delete_service(
        &self,
        request: Request<v1::DeleteServiceRequest>,
    ) -> Result<Response<v1::DeleteServiceResponse>, Status> {
        let name = request.into_inner().name;
        let svc = self
            .cluster()?
            .commit_blocking_answer(move |c| c.delete_service(&name))
            .await?;
        Ok(Response::new(v1::DeleteServiceResponse {
            service: Some(svc),
        }))
    }

    async fn scale_service(
        &self,
        request: Request<v1::ScaleServiceRequest>,
    ) -> Result<Response<v1::Service>, Status> {
        let req = request.into_inner();
        let svc = self
            .cluster()?
            .commit_blocking_answer(move |c| c.scale_service(&req.name, req.replicas))
            .await?;
        Ok(Response::new(svc))
    }

    async fn rollback_service(
        &self,
        request: Request<v1::RollbackServiceRequest>,
    ) -> Result<Response<v1::Service>, Status> {
        let name = request.into_inner().name;
        let svc = self
            .cluster()?
            .commit_blocking_answer(move |c| c.rollback_service(&name))
            .await?;
        Ok(Response::new(svc))
    }

    async fn apply_services(
        &self,
        request: Request<v1::ApplyServicesRequest>,
    ) -> Result<Response<v1::ApplyServicesResponse>, Status> {
        let req = request.into_inner();
        let out = self
            .cluster()?
            .commit_blocking_answer(move |c| c.apply_services(req))
            .await?;
        Ok(Response::new(out))
    }

    type WatchServicesStream = RpcStream<PreEncoded>;

    async fn watch_services(
        &self,
        request: Request<v1::WatchServicesRequest>,
    ) -> Result<Response<Self::WatchServicesStream>, Status> {
        let req = request.into_inner();
        let names: std::collections::HashSet<String> = req.services.into_iter().collect();
        let cluster = self.cluster()?;
        let stream = event_stream(
            &cluster,
            self.closing_for(&cluster),
            req.since_revision,
            move |e| {
                e.service
                    .as_ref()
                    .is_some_and(|s| names.is_empty() || names.contains(&s.name))
            },
        )?;
        Ok(Response::new(stream))
    }

    async fn get_cluster_status(
        &self,
        _request: Request<v1::GetClusterStatusRequest>,
    ) -> Result<Response<v1::GetClusterStatusResponse>, Status> {
        Ok(Response::new(self.leadership.status().await))
    }
}

/// What ends a long-lived stream.
#[derive(Clone)]
pub(crate) struct Closing {
    /// Turns true when the controller shuts down.
    server: watch::Receiver<bool>,
    /// Turns true when the cluster the stream reads steps down.
    term: watch::Receiver<bool>,
}

impl Closing {
    /// Resolves once the controller starts shutting down or stops leading.
    pub(crate) async fn wait(&mut self) {
        tokio::select! {
            _ = wait_true(&mut self.server) => {}
            _ = wait_true(&mut self.term) => {}
        }
    }
}

/// Resolves once `flag` is true (never, when its sender is gone while false).
async fn wait_true(flag: &mut watch::Receiver<bool>) {
    if flag.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The messages of a client stream until it ends or fails.
fn messages_of(
    mut inbound: tonic::Streaming<v1::ExecSessionInput>,
) -> impl Stream<Item = v1::ExecSessionInput> + Send + 'static {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(async move {
        while let Ok(Some(msg)) = inbound.message().await {
            if tx.send(msg).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

/// A session stream's first message, which must be `start`.
async fn first_start(
    inbound: &mut tonic::Streaming<v1::ExecSessionInput>,
) -> Result<v1::ExecSessionStart, Status> {
    use v1::exec_session_input::Input;
    match inbound.message().await? {
        Some(v1::ExecSessionInput {
            input: Some(Input::Start(start)),
        }) => Ok(start),
        Some(_) => Err(Status::invalid_argument(
            "input: the first message must be start {id, command, tty, size}",
        )),
        None => Err(Status::invalid_argument(
            "input: the stream is empty: send start first",
        )),
    }
}

/// Where a session goes: a client for the node running the container `start` names, that
/// node, and the session's input for it (the start with the id of the node's copy, then
/// the client's messages as they come).
fn session_target(
    cluster: &Cluster,
    mut start: v1::ExecSessionStart,
    inbound: tonic::Streaming<v1::ExecSessionInput>,
) -> Result<
    (
        crate::agents::AgentRpc,
        String,
        impl Stream<Item = v1::ExecSessionInput> + Send + 'static,
    ),
    Status,
> {
    let (node, copy) = copy_of(cluster, &start.id)?;
    start.id = copy;
    let client = cluster.client_for(&node)?;
    let first = v1::ExecSessionInput {
        input: Some(v1::exec_session_input::Input::Start(start)),
    };
    Ok((
        client,
        node,
        tokio_stream::once(first).chain(messages_of(inbound)),
    ))
}

/// The node's answer to a session, its errors naming the node.
fn node_stream(
    node: String,
    answered: Result<Response<tonic::Streaming<v1::ExecSessionOutput>>, Status>,
) -> Result<Response<RpcStream<v1::ExecSessionOutput>>, Status> {
    let stream = answered
        .map_err(|status| {
            Status::from(ClusterError::Node {
                node: node.clone(),
                status,
            })
        })?
        .into_inner()
        .map(move |item| {
            item.map_err(|status| {
                Status::from(ClusterError::Node {
                    node: node.clone(),
                    status,
                })
            })
        });
    Ok(Response::new(Box::pin(stream)))
}
