//! `controller-scale`: a controller of its own with 5,000 simulated nodes and 100,000
//! container records: the rate they reach RUNNING at, the controller's resident memory and
//! the time of one page of `ListContainers`.
//!
//! The nodes are simulated: every one registers with the same small agent server in this
//! process, which answers `RunContainer` with a RUNNING copy at once, keeps each node's
//! event stream open and has no containers of its own to reconcile. The harness heartbeats
//! for all nodes, as their agents would, so none goes NOT_READY while records pile up. What
//! is measured is the controller alone: the scheduler over 5,000 nodes, 100,000 durable
//! records, 5,000 event streams and heartbeats a second, and pages of a 100,000-record list.

use std::pin::Pin;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::setup::KilledOnDrop;
use hutch_proto::v1;
use hutch_proto::v1::agent_server::{Agent, AgentServer};
use hutch_proto::v1::controller_client::ControllerClient;
use hutch_proto::v1::nodes_client::NodesClient;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::density::proc_kb_field;
use crate::report::{ms, percentile, Row};
use crate::scenarios::start_and_wait;
use crate::setup::{spawn_listening, BenchEnv};

type RpcStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The agent every simulated node points at: starts nothing, answers at once.
#[derive(Default)]
struct SimulatedAgent {
    runs: AtomicUsize,
}

fn not_simulated<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not simulated by the bench's agent"))
}

#[tonic::async_trait]
impl Agent for SimulatedAgent {
    type BuildRootfsStream = RpcStream<v1::BuildRootfsResponse>;
    type ContainerLogsStream = RpcStream<v1::LogEntry>;
    type EventsStream = RpcStream<v1::Event>;
    type ExecSessionStream = RpcStream<v1::ExecSessionOutput>;
    type AttachStream = RpcStream<v1::ExecSessionOutput>;
    type ContainerStatsStream = RpcStream<v1::ContainerUsage>;

    async fn build_rootfs(
        &self,
        _: Request<v1::BuildRootfsRequest>,
    ) -> Result<Response<Self::BuildRootfsStream>, Status> {
        not_simulated()
    }
    async fn list_rootfs(
        &self,
        _: Request<v1::ListRootfsRequest>,
    ) -> Result<Response<v1::ListRootfsResponse>, Status> {
        Ok(Response::new(v1::ListRootfsResponse::default()))
    }
    async fn remove_rootfs(
        &self,
        _: Request<v1::RemoveRootfsRequest>,
    ) -> Result<Response<v1::RemoveRootfsResponse>, Status> {
        not_simulated()
    }
    async fn container_stats(
        &self,
        _: Request<v1::ContainerStatsRequest>,
    ) -> Result<Response<Self::ContainerStatsStream>, Status> {
        not_simulated()
    }
    async fn list_processes(
        &self,
        _: Request<v1::ListProcessesRequest>,
    ) -> Result<Response<v1::ListProcessesResponse>, Status> {
        not_simulated()
    }
    async fn create_volume(
        &self,
        _: Request<v1::CreateVolumeRequest>,
    ) -> Result<Response<v1::Volume>, Status> {
        not_simulated()
    }
    async fn get_volume(
        &self,
        _: Request<v1::GetVolumeRequest>,
    ) -> Result<Response<v1::Volume>, Status> {
        not_simulated()
    }
    async fn list_volumes(
        &self,
        _: Request<v1::ListVolumesRequest>,
    ) -> Result<Response<v1::ListVolumesResponse>, Status> {
        Ok(Response::new(v1::ListVolumesResponse::default()))
    }
    async fn remove_volume(
        &self,
        _: Request<v1::RemoveVolumeRequest>,
    ) -> Result<Response<v1::RemoveVolumeResponse>, Status> {
        not_simulated()
    }
    async fn run_container(
        &self,
        request: Request<v1::RunContainerRequest>,
    ) -> Result<Response<v1::Container>, Status> {
        self.runs.fetch_add(1, Ordering::Relaxed);
        let r = request.into_inner();
        Ok(Response::new(v1::Container {
            id: r.name.clone(),
            name: r.name,
            spec: r.spec,
            state: v1::ContainerState::Running as i32,
            pid: 1,
            ..Default::default()
        }))
    }
    async fn get_container(
        &self,
        _: Request<v1::GetContainerRequest>,
    ) -> Result<Response<v1::Container>, Status> {
        not_simulated()
    }
    async fn list_containers(
        &self,
        _: Request<v1::ListContainersRequest>,
    ) -> Result<Response<v1::ListContainersResponse>, Status> {
        Ok(Response::new(v1::ListContainersResponse::default()))
    }
    async fn stop_container(
        &self,
        _: Request<v1::StopContainerRequest>,
    ) -> Result<Response<v1::Container>, Status> {
        not_simulated()
    }
    async fn kill_container(
        &self,
        _: Request<v1::KillContainerRequest>,
    ) -> Result<Response<v1::KillContainerResponse>, Status> {
        not_simulated()
    }
    async fn remove_container(
        &self,
        _: Request<v1::RemoveContainerRequest>,
    ) -> Result<Response<v1::RemoveContainerResponse>, Status> {
        not_simulated()
    }
    async fn exec(
        &self,
        _: Request<v1::ExecRequest>,
    ) -> Result<Response<v1::ExecResponse>, Status> {
        not_simulated()
    }
    async fn exec_session(
        &self,
        _: Request<Streaming<v1::ExecSessionInput>>,
    ) -> Result<Response<Self::ExecSessionStream>, Status> {
        not_simulated()
    }
    async fn attach(
        &self,
        _: Request<Streaming<v1::ExecSessionInput>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        not_simulated()
    }
    async fn container_logs(
        &self,
        _: Request<v1::ContainerLogsRequest>,
    ) -> Result<Response<Self::ContainerLogsStream>, Status> {
        not_simulated()
    }
    async fn events(
        &self,
        _: Request<v1::EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        // Nothing ever happens on a simulated node; the stream stays open, as a real one.
        Ok(Response::new(Box::pin(tokio_stream::pending())))
    }
    async fn node_info(
        &self,
        _: Request<v1::NodeInfoRequest>,
    ) -> Result<Response<v1::NodeInfoResponse>, Status> {
        Ok(Response::new(v1::NodeInfoResponse::default()))
    }
}

/// Resident memory of `pid` in bytes (`VmRSS`).
fn rss_bytes(pid: u32) -> Result<u64, String> {
    proc_kb_field(&format!("/proc/{pid}/status"), "VmRSS")
}

/// The simulated nodes registered so far, and the session their heartbeats carry.
#[derive(Default)]
struct Registered {
    count: AtomicUsize,
    session: std::sync::OnceLock<String>,
}

/// Registers `count` simulated nodes one after another, as agents starting one by one would;
/// `registered` counts them as they join (their heartbeats start at once, as an agent's do).
async fn register_nodes(
    nodes: &mut NodesClient<tonic::transport::Channel>,
    count: usize,
    agent_addr: &str,
    registered: &Registered,
) -> Result<(), String> {
    for i in 0..count {
        let answer = nodes
            .register(v1::RegisterRequest {
                name: format!("sim-{i}"),
                address: agent_addr.to_string(),
                labels: [("zone".to_string(), format!("z{}", i % 4))].into(),
                hostname: format!("sim-{i}"),
                cgroup_version: "v2".into(),
                memory_total_bytes: 64 << 30,
                memory_allocatable_bytes: 64 << 30,
                rootfs: vec!["debian".into()],
                ..Default::default()
            })
            .await
            .map_err(|e| format!("registering sim-{i}: {e}"))?
            .into_inner();
        let _ = registered.session.set(answer.session);
        registered.count.store(i + 1, Ordering::Release);
    }
    Ok(())
}

/// Heartbeats every registered simulated node once a second until aborted.
fn heartbeat_forever(
    nodes: NodesClient<tonic::transport::Channel>,
    registered: Arc<Registered>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let count = registered.count.load(Ordering::Acquire);
            let Some(session) = registered.session.get().cloned() else {
                continue;
            };
            let beats = (0..count).map(|i| {
                let mut nodes = nodes.clone();
                let session = session.clone();
                async move {
                    let _ = nodes
                        .heartbeat(v1::HeartbeatRequest {
                            name: format!("sim-{i}"),
                            session,
                            rootfs: vec!["debian".into()],
                            ..Default::default()
                        })
                        .await;
                }
            });
            let mut beats = tokio_stream::iter(beats);
            let mut in_flight = tokio::task::JoinSet::new();
            while let Some(beat) = beats.next().await {
                if in_flight.len() >= 64 {
                    in_flight.join_next().await;
                }
                in_flight.spawn(beat);
            }
            while in_flight.join_next().await.is_some() {}
        }
    })
}

/// What a run of [`controller_scale_with`] must show to pass.
pub struct ScaleGoals {
    /// The least rate of creates reaching RUNNING, per second, when it is a goal.
    pub creates_per_s: Option<f64>,
    /// The most resident memory of the controller, in MiB.
    pub rss_mib: f64,
    /// The most time of one page of `ListContainers`, p50, in ms.
    pub page_ms: f64,
}

/// `controller-scale`'s goals: 5,000 nodes and 100,000 records are placed at 2,000 a second
/// or more (Nomad's C1M placed 3,750/s with 5 servers), in less than 1 GiB, and a page of
/// 1,000 is listed in under 20 ms.
pub const CONTROLLER_SCALE_GOALS: ScaleGoals = ScaleGoals {
    creates_per_s: Some(2000.0),
    rss_mib: 1024.0,
    page_ms: 20.0,
};

/// `controller-scale`: `records` containers over `node_count` simulated nodes.
pub async fn controller_scale(
    env: &BenchEnv,
    node_count: usize,
    records: usize,
) -> Result<Vec<Row>, String> {
    let goals = &CONTROLLER_SCALE_GOALS;
    controller_scale_with(env, node_count, records, &[], "controller-scale", goals).await
}

/// [`controller_scale`] with more controller flags (another store, say), its rows under
/// `scenario`, held to `goals`.
pub async fn controller_scale_with(
    env: &BenchEnv,
    node_count: usize,
    records: usize,
    controller_args: &[&str],
    scenario: &str,
    goals: &ScaleGoals,
) -> Result<Vec<Row>, String> {
    let sim = Arc::new(SimulatedAgent::default());
    let (listener, agent_addr) = hutch_agent::service::server::bind(
        "127.0.0.1:0"
            .parse()
            .map_err(|e: std::net::AddrParseError| e.to_string())?,
        false,
    )
    .await?;
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentServer::from_arc(sim.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut ctl = Command::new(env.bin_dir.join("hutch-controller"));
    ctl.env("HUTCH_CLUSTER_CIDR", "none");
    ctl.args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(
            env.dir
                .join(format!("scale-controller-{}", controller_args.len())),
        )
        .args(controller_args);
    let (child, addr) = spawn_listening(ctl, &env.dir.join("scale-controller.log"))?;
    let controller = KilledOnDrop(child);
    let url = format!("http://{addr}");
    let channel = tonic::transport::Endpoint::from_shared(url)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let mut nodes = NodesClient::new(channel.clone());
    // A controller on etcd serves once it leads.
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = ControllerClient::new(channel.clone())
        .list_nodes(v1::ListNodesRequest::default())
        .await
    {
        if Instant::now() > deadline {
            return Err(format!("the controller never served: {e}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    let registered = Arc::new(Registered::default());
    let beats = heartbeat_forever(nodes.clone(), registered.clone());
    let registering = register_nodes(&mut nodes, node_count, &agent_addr, &registered).await;
    if let Err(e) = registering {
        beats.abort();
        return Err(e);
    }
    eprintln!(
        "bench: {node_count} simulated nodes registered in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let client = ControllerClient::new(channel).max_decoding_message_size(256 << 20);
    let prefix = format!("scale-{}-", std::process::id());
    let spec = v1::ContainerSpec {
        rootfs: "debian".into(),
        command: vec!["/bin/sleep".into(), "infinity".into()],
        memory_limit_bytes: Some(64 << 20),
        ..Default::default()
    };
    let started = Instant::now();
    let mut watch = client
        .clone()
        .watch_containers(v1::WatchContainersRequest::default())
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    start_and_wait(&client, &mut watch, &prefix, records, &spec, |s| {
        s == v1::ContainerState::Running as i32
    })
    .await?;
    let placing = started.elapsed();
    eprintln!(
        "bench: {records} records RUNNING on {node_count} nodes in {:.1}s ({} runs)",
        placing.as_secs_f64(),
        sim.runs.load(Ordering::Relaxed)
    );
    drop(watch);
    let rss = rss_bytes(controller.0.id())?;
    // Every page once (all records are there), then the time of one page of the most a
    // page holds, as a client paging through them sees it.
    let page_size = hutch_core::paging::MAX_PAGE_SIZE as u32;
    let mut listed = 0;
    let mut request = v1::ListClusterContainersRequest {
        page_size,
        ..Default::default()
    };
    loop {
        let page = client
            .clone()
            .list_containers(request.clone())
            .await
            .map_err(|e| format!("ListContainers: {e}"))?
            .into_inner();
        listed += page.containers.len();
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    if listed < records {
        return Err(format!("ListContainers gave {listed} of {records} records"));
    }
    let mut lists = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        client
            .clone()
            .list_containers(v1::ListClusterContainersRequest {
                page_size,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("ListContainers: {e}"))?;
        lists.push(t.elapsed());
    }
    beats.abort();
    server.abort();
    drop(controller);
    let rss_mib = rss as f64 / (1 << 20) as f64;
    let list_ms = ms(percentile(&lists, 0.5));
    let row = |metric: String, hutch: f64, unit: &str, target: &str, pass: bool| Row {
        scenario: scenario.into(),
        metric,
        hutch,
        peer: None,
        peer_name: String::new(),
        unit: unit.into(),
        ratio: None,
        target: target.into(),
        pass,
    };
    let rate = records as f64 / placing.as_secs_f64();
    let mut rows = Vec::new();
    if let Some(least) = goals.creates_per_s {
        rows.push(row(
            format!("creates to RUNNING, {records} records, {node_count} nodes"),
            rate,
            "/s",
            &format!(">= {least}/s"),
            rate >= least,
        ));
    }
    rows.push(row(
        format!("controller RSS, {records} records, {node_count} nodes"),
        rss_mib,
        "MiB",
        &format!("< {} MiB", goals.rss_mib),
        rss_mib < goals.rss_mib,
    ));
    rows.push(row(
        format!("ListContainers, one page of {page_size} of {records} records, p50 of 7"),
        list_ms,
        "ms",
        &format!("< {} ms", goals.page_ms),
        list_ms < goals.page_ms,
    ));
    Ok(rows)
}
