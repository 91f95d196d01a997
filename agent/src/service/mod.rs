//! `hutch.v1.Agent` over gRPC: the runtime, the rootfs store and the event log of one host,
//! served by tonic. Handlers validate their input, call the runtime, record events and map
//! errors to status codes in [`status`]; conversions live in [`convert`].

pub mod convert;
pub mod detached;
pub mod health;
pub mod join;
pub mod logs;
pub mod registration;
pub mod reporter;
pub mod server;
pub mod session;
pub mod stats;
pub mod status;

pub use hutch_server::{auth, limits};
use limits::RequestSlot;

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hutch_proto::v1;
use hutch_proto::v1::agent_server::Agent;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::events::{EventLog, NewEvent};
use crate::node;
use crate::rootfs::RootfsError;
use crate::runtime::state::Status as RunStatus;
use crate::runtime::{Runtime, RuntimeError};
use convert::{
    container_to, event_to, outcome_to, progress_to, rootfs_from, rootfs_to, spec_from, state_to,
    volume_to,
};
use reporter::Reporter;
use status::invalid;

/// Messages buffered per server stream; a slow client slows its stream, never the agent.
const STREAM_BUFFER: usize = 64;

type RpcStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Everything the handlers share.
pub struct AgentCore {
    /// The container runtime.
    pub runtime: Arc<Runtime>,
    /// The durable event log.
    pub events: Arc<EventLog>,
    /// Records state changes as events.
    pub reporter: Arc<Reporter>,
    /// This node's name.
    pub node: String,
    /// Memory kept back from containers for the host itself.
    pub memory_reserve_bytes: u64,
    /// Set on shutdown: new containers are refused with `Unavailable`.
    pub draining: AtomicBool,
    /// Flips to true on shutdown, ending the long-lived streams so the server can stop.
    pub closing: tokio::sync::watch::Sender<bool>,
    /// What the agent counts for its metrics.
    pub metrics: crate::metrics::AgentMetrics,
    /// Starts, stops and removals going on (see [`detached`]).
    pub detached: detached::Detached,
}

impl AgentCore {
    /// Memory containers may be promised in total.
    pub fn allocatable_bytes(&self) -> u64 {
        node::memory_total_bytes().saturating_sub(self.memory_reserve_bytes)
    }
}

/// The gRPC service.
#[derive(Clone)]
pub struct AgentService {
    core: Arc<AgentCore>,
}

impl AgentService {
    /// A service over `core`.
    pub fn new(core: Arc<AgentCore>) -> Self {
        AgentService { core }
    }
}

fn labels_match(
    have: &BTreeMap<String, String>,
    want: &std::collections::HashMap<String, String>,
) -> bool {
    want.iter().all(|(k, v)| have.get(k) == Some(v))
}

#[tonic::async_trait]
impl Agent for AgentService {
    type BuildRootfsStream = RpcStream<v1::BuildRootfsResponse>;
    type ContainerLogsStream = RpcStream<v1::LogEntry>;
    type EventsStream = RpcStream<v1::Event>;
    type ContainerStatsStream = RpcStream<v1::ContainerUsage>;

    async fn build_rootfs(
        &self,
        request: Request<v1::BuildRootfsRequest>,
    ) -> Result<Response<Self::BuildRootfsStream>, Status> {
        let (name, source) = rootfs_from(request.into_inner().rootfs)?;
        crate::names::validate_name("rootfs.name", &name)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        source.validate().map_err(RootfsError::from)?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let runtime = self.core.runtime.clone();
        let builds = self.core.metrics.rootfs_builds.clone();
        let node = self.core.node.clone();
        let span = tracing::info_span!("build_rootfs", node = %self.core.node, rootfs = %name);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let (ptx, mut prx) = mpsc::channel(STREAM_BUFFER);
                let forward = {
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        while let Some(p) = prx.recv().await {
                            let msg = v1::BuildRootfsResponse {
                                event: Some(v1::build_rootfs_response::Event::Progress(
                                    progress_to(&p),
                                )),
                            };
                            // A client that left does not stop the build (others may share it).
                            let _ = tx.send(Ok(msg)).await;
                        }
                    })
                };
                let result = runtime.store().build(&name, &source, Some(ptx)).await;
                let _ = forward.await;
                let outcome = match &result {
                    Ok(r) => format!("{:?}", r.outcome).to_ascii_lowercase(),
                    Err(_) => "failed".into(),
                };
                builds
                    .get_or_create(&crate::metrics::BuildLabels {
                        node: node.clone(),
                        outcome,
                    })
                    .inc();
                let msg = result
                    .map(|r| v1::BuildRootfsResponse {
                        event: Some(v1::build_rootfs_response::Event::Result(
                            v1::BuildRootfsResult {
                                rootfs: Some(rootfs_to(&r.info, runtime.rootfs_users(&r.info.key))),
                                outcome: outcome_to(r.outcome) as i32,
                            },
                        )),
                    })
                    .map_err(Status::from);
                let _ = tx.send(msg).await;
            },
            span,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_rootfs(
        &self,
        _: Request<v1::ListRootfsRequest>,
    ) -> Result<Response<v1::ListRootfsResponse>, Status> {
        let rt = &self.core.runtime;
        let rootfs = rt
            .store()
            .list()
            .iter()
            .map(|r| rootfs_to(r, rt.rootfs_users(&r.key)))
            .collect();
        Ok(Response::new(v1::ListRootfsResponse { rootfs }))
    }

    async fn remove_rootfs(
        &self,
        request: Request<v1::RemoveRootfsRequest>,
    ) -> Result<Response<v1::RemoveRootfsResponse>, Status> {
        self.core
            .runtime
            .remove_rootfs(&request.into_inner().name)?;
        Ok(Response::new(v1::RemoveRootfsResponse {}))
    }

    async fn create_volume(
        &self,
        request: Request<v1::CreateVolumeRequest>,
    ) -> Result<Response<v1::Volume>, Status> {
        let req = request.into_inner();
        let rt = &self.core.runtime;
        let volume = rt
            .volumes()
            .create(&req.name, req.labels.into_iter().collect())
            .map_err(RuntimeError::from)?;
        tracing::info!(volume = %req.name, "volume created");
        Ok(Response::new(volume_to(
            &volume,
            &self.core.node,
            Vec::new(),
        )))
    }

    async fn get_volume(
        &self,
        request: Request<v1::GetVolumeRequest>,
    ) -> Result<Response<v1::Volume>, Status> {
        let name = request.into_inner().name;
        let rt = &self.core.runtime;
        let volume = rt.volumes().get(&name).map_err(RuntimeError::from)?;
        Ok(Response::new(volume_to(
            &volume,
            &self.core.node,
            rt.volume_users(&name),
        )))
    }

    async fn list_volumes(
        &self,
        _: Request<v1::ListVolumesRequest>,
    ) -> Result<Response<v1::ListVolumesResponse>, Status> {
        let rt = &self.core.runtime;
        let volumes = rt
            .volumes()
            .list()
            .iter()
            .map(|v| volume_to(v, &self.core.node, rt.volume_users(&v.record.name)))
            .collect();
        Ok(Response::new(v1::ListVolumesResponse {
            volumes,
            unreachable: Vec::new(),
        }))
    }

    async fn remove_volume(
        &self,
        request: Request<v1::RemoveVolumeRequest>,
    ) -> Result<Response<v1::RemoveVolumeResponse>, Status> {
        let name = request.into_inner().name;
        self.core.runtime.remove_volume(&name)?;
        tracing::info!(volume = %name, "volume removed");
        Ok(Response::new(v1::RemoveVolumeResponse {}))
    }

    async fn run_container(
        &self,
        request: Request<v1::RunContainerRequest>,
    ) -> Result<Response<v1::Container>, Status> {
        let core = &self.core;
        if core.draining.load(Ordering::SeqCst) {
            return Err(Status::unavailable(format!(
                "node {} is shutting down; not starting containers",
                core.node
            )));
        }
        let slot = request.extensions().get::<RequestSlot>().cloned();
        let req = request.into_inner();
        let name = if req.name.is_empty() {
            crate::names::random_container_name().map_err(|e| Status::internal(e.to_string()))?
        } else {
            req.name
        };
        let spec = spec_from(req.spec.ok_or_else(|| invalid("spec", "missing"))?)?;
        if let Some(limit) = spec.memory_limit_bytes {
            let allocatable = core.allocatable_bytes();
            if limit > allocatable {
                return Err(Status::resource_exhausted(format!(
                    "spec.memory_limit_bytes: {limit} bytes is more than node {} can give (allocatable {allocatable} bytes)",
                    core.node
                )));
            }
        }
        if let Some(millicores) = spec.cpu.millicores {
            let allocatable = node::cpu_allocatable_millicores();
            if u64::from(millicores) > allocatable {
                return Err(Status::resource_exhausted(format!(
                    "spec.cpu.cores: {} CPUs is more than node {} has ({})",
                    hutch_core::cpu::format_cores(millicores),
                    core.node,
                    node::cpu_count()
                )));
            }
        }
        let span = tracing::info_span!("run_container", node = %core.node, container = %name);
        let work = core.clone();
        let core = work.clone();
        let started = work
            .detached
            .run(
                slot,
                tracing::Instrument::instrument(
                    async move {
                        match core.runtime.run(&name, spec).await {
                            Ok(info) => {
                                let answer = container_to(&info, &core.node);
                                core.reporter.report_started(info);
                                Ok(answer)
                            }
                            Err(e) => {
                                if let RuntimeError::StartFailed { failure, .. } = &e {
                                    core.reporter
                                        .report_event(NewEvent {
                                            container_id: name,
                                            status: RunStatus::Failed,
                                            details: format!(
                                                "failed at {}: {}",
                                                failure.step, failure.message
                                            ),
                                            exit_code: None,
                                            signal: None,
                                            oom_killed: false,
                                            removed: true,
                                            health: None,
                                            timeline: None,
                                        })
                                        .await;
                                }
                                Err(e.into())
                            }
                        }
                    },
                    span,
                ),
            )
            .await?;
        Ok(Response::new(started))
    }

    async fn get_container(
        &self,
        request: Request<v1::GetContainerRequest>,
    ) -> Result<Response<v1::Container>, Status> {
        let info = self.core.runtime.get(&request.into_inner().id)?;
        Ok(Response::new(container_to(&info, &self.core.node)))
    }

    async fn list_containers(
        &self,
        request: Request<v1::ListContainersRequest>,
    ) -> Result<Response<v1::ListContainersResponse>, Status> {
        let req = request.into_inner();
        let want_state = v1::ContainerState::try_from(req.state)
            .map_err(|_| invalid("state", format!("unknown container state {}", req.state)))?;
        let containers = self
            .core
            .runtime
            .list()
            .iter()
            .filter(|c| {
                want_state == v1::ContainerState::Unspecified
                    || state_to(c.state.status) == want_state
            })
            .filter(|c| labels_match(&c.spec.labels, &req.labels))
            .map(|c| (c.state.id.clone(), container_to(c, &self.core.node)))
            .collect();
        let page = hutch_core::paging::page(containers, req.page_size, &req.page_token, |c| {
            prost::Message::encoded_len(c)
        })
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(v1::ListContainersResponse {
            containers: page.items,
            revision: 0,
            next_page_token: page.next_page_token,
        }))
    }

    async fn stop_container(
        &self,
        request: Request<v1::StopContainerRequest>,
    ) -> Result<Response<v1::Container>, Status> {
        let slot = request.extensions().get::<RequestSlot>().cloned();
        let req = request.into_inner();
        let grace = req.grace_seconds.map(|s| Duration::from_secs(u64::from(s)));
        let core = self.core.clone();
        let stopped = self
            .core
            .detached
            .run(slot, async move {
                let info = core.runtime.stop(&req.id, grace).await?;
                core.reporter.report(&info).await;
                Ok(container_to(&info, &core.node))
            })
            .await?;
        Ok(Response::new(stopped))
    }

    async fn kill_container(
        &self,
        request: Request<v1::KillContainerRequest>,
    ) -> Result<Response<v1::KillContainerResponse>, Status> {
        let req = request.into_inner();
        let signal = if req.signal == 0 {
            libc::SIGKILL
        } else {
            req.signal
        };
        self.core.runtime.kill(&req.id, signal)?;
        Ok(Response::new(v1::KillContainerResponse {}))
    }

    async fn remove_container(
        &self,
        request: Request<v1::RemoveContainerRequest>,
    ) -> Result<Response<v1::RemoveContainerResponse>, Status> {
        let slot = request.extensions().get::<RequestSlot>().cloned();
        let req = request.into_inner();
        let core = self.core.clone();
        self.core
            .detached
            .run(slot, async move {
                let before = core.runtime.get(&req.id)?;
                core.runtime.remove(&req.id, req.force).await?;
                let mut event = reporter::event_of(&before, true);
                if let Ok(latest) = core.runtime.get(&req.id) {
                    event = reporter::event_of(&latest, true);
                }
                // The removal is answered at once; its event follows (an fsync of the event
                // log, 0.3-0.5 ms here), before any report asked for after this answer.
                let turn = core.reporter.take_turn().await;
                let reporter = core.reporter.clone();
                core.detached.spawn(async move {
                    reporter.report_event_in_turn(turn, event).await;
                });
                Ok(())
            })
            .await?;
        Ok(Response::new(v1::RemoveContainerResponse {}))
    }

    async fn exec(
        &self,
        request: Request<v1::ExecRequest>,
    ) -> Result<Response<v1::ExecResponse>, Status> {
        let req = request.into_inner();
        let out = self.core.runtime.exec(&req.id, req.command).await?;
        Ok(Response::new(v1::ExecResponse {
            stdout: out.stdout,
            stderr: out.stderr,
            exit_code: out.exit_code,
            signal: out.signal,
            truncated: out.truncated,
        }))
    }

    async fn container_stats(
        &self,
        request: Request<v1::ContainerStatsRequest>,
    ) -> Result<Response<Self::ContainerStatsStream>, Status> {
        let req = request.into_inner();
        for id in &req.ids {
            self.core.runtime.existing_dir(id)?;
        }
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let query = stats::StatsQuery {
            ids: req.ids,
            stream: req.stream,
            node: self.core.node.clone(),
        };
        tokio::spawn(stats::run(self.core.runtime.clone(), query, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_processes(
        &self,
        request: Request<v1::ListProcessesRequest>,
    ) -> Result<Response<v1::ListProcessesResponse>, Status> {
        let id = request.into_inner().id;
        let rt = self.core.runtime.clone();
        let table = tokio::task::spawn_blocking(move || rt.processes(&id))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(v1::ListProcessesResponse {
            processes: table.iter().map(convert::process_to).collect(),
        }))
    }

    async fn container_logs(
        &self,
        request: Request<v1::ContainerLogsRequest>,
    ) -> Result<Response<Self::ContainerLogsStream>, Status> {
        let req = request.into_inner();
        if req.previous {
            return Err(invalid(
                "previous",
                "an agent keeps one run per container id; ask the controller for a restarted container's previous run",
            ));
        }
        self.core.runtime.get(&req.id)?;
        let query = logs::LogQuery {
            id: req.id,
            follow: req.follow,
            since: req
                .since
                .as_ref()
                .map(|t| humantime::format_rfc3339_nanos(convert::system_time(t)).to_string()),
            until: req
                .until
                .as_ref()
                .map(|t| humantime::format_rfc3339_nanos(convert::system_time(t)).to_string()),
            tail: req.tail.map(|t| t as usize),
        };
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let closing = self.core.closing.subscribe();
        tokio::spawn(logs::stream_logs(
            self.core.runtime.clone(),
            query,
            tx,
            closing,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn events(
        &self,
        request: Request<v1::EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        let since = request.into_inner().since_seq;
        let (replay, live) = self.core.events.subscribe(since)?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let closing = self.core.closing.subscribe();
        tokio::spawn(stream_events(
            self.core.events.clone(),
            since,
            replay,
            live,
            tx,
            closing,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type ExecSessionStream = RpcStream<v1::ExecSessionOutput>;

    async fn exec_session(
        &self,
        request: Request<tonic::Streaming<v1::ExecSessionInput>>,
    ) -> Result<Response<Self::ExecSessionStream>, Status> {
        Ok(Response::new(
            session::start(self.core.clone(), request.into_inner()).await?,
        ))
    }

    type AttachStream = RpcStream<v1::ExecSessionOutput>;

    async fn attach(
        &self,
        request: Request<tonic::Streaming<v1::ExecSessionInput>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        Ok(Response::new(
            session::attach(self.core.clone(), request.into_inner()).await?,
        ))
    }

    async fn node_info(
        &self,
        _: Request<v1::NodeInfoRequest>,
    ) -> Result<Response<v1::NodeInfoResponse>, Status> {
        let core = &self.core;
        let containers = core.runtime.list();
        let running: Vec<_> = containers
            .iter()
            .filter(|c| c.state.status == RunStatus::Running)
            .collect();
        let used = running
            .iter()
            .filter_map(|c| c.memory.map(|m| m.usage_bytes))
            .sum();
        Ok(Response::new(v1::NodeInfoResponse {
            name: core.node.clone(),
            hostname: node::hostname(),
            kernel: node::kernel_release(),
            cgroup_version: core.runtime.cgroups().version().to_string(),
            memory_total_bytes: node::memory_total_bytes(),
            memory_allocatable_bytes: core.allocatable_bytes(),
            cpu_count: node::cpu_count(),
            cpu_allocatable_millicores: node::cpu_allocatable_millicores(),
            memory_used_bytes: used,
            running_containers: running.len() as u32,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            last_event_seq: core.events.last_seq(),
        }))
    }
}

/// Resolves once the agent starts shutting down.
async fn wait_closing(closing: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        if *closing.borrow_and_update() {
            return;
        }
        if closing.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Sends the replay, then live events, each exactly once and in order. A subscriber that
/// falls too far behind the live channel catches up from the log again.
async fn stream_events(
    log: Arc<EventLog>,
    since: u64,
    replay: Vec<crate::events::Event>,
    mut live: tokio::sync::broadcast::Receiver<crate::events::Event>,
    tx: mpsc::Sender<Result<v1::Event, Status>>,
    mut closing: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::sync::broadcast::error::RecvError;
    let mut last = since;
    let mut pending = replay;
    loop {
        for e in pending.drain(..) {
            if e.seq <= last {
                continue;
            }
            if tx.send(Ok(event_to(&e))).await.is_err() {
                return;
            }
            last = e.seq;
        }
        let next = tokio::select! {
            next = live.recv() => next,
            // The client went away.
            _ = tx.closed() => return,
            _ = wait_closing(&mut closing) => {
                let _ = tx
                    .send(Err(Status::unavailable(format!(
                        "the agent is shutting down; resume with since_seq {last}"
                    ))))
                    .await;
                return;
            }
        };
        match next {
            Ok(e) => pending.push(e),
            Err(RecvError::Lagged(_)) => match log.subscribe(last) {
                Ok((again, rx)) => {
                    pending = again;
                    live = rx;
                }
                Err(e) => {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
            },
            Err(RecvError::Closed) => return,
        }
    }
}
