//! `ContainerStats`: usage samples of some (or every running) container, once a second or
//! once, with CPU use computed between samples and the writable layer's size measured at
//! most every [`LAYER_REFRESH`] (walking a large layer every second would cost more than
//! the container).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hutch_proto::v1;
use tokio::sync::mpsc;
use tonic::Status;

use super::convert::{state_to, timestamp};
use crate::runtime::state::Status as RunStatus;
use crate::runtime::{Runtime, RuntimeError, Usage};
use crate::stats::{cpu_percent, disk_usage};

/// Between samples of a stream.
pub const STREAM_INTERVAL: Duration = Duration::from_secs(1);
/// Between the two reads of a one-shot sample (CPU use needs two).
pub const ONE_SHOT_INTERVAL: Duration = Duration::from_millis(500);
/// Longest a layer size is reused.
pub const LAYER_REFRESH: Duration = Duration::from_secs(10);

/// What a stats stream samples.
pub struct StatsQuery {
    /// The containers; empty: every running one, looked up again at every sample.
    pub ids: Vec<String>,
    /// Keep sampling until the client goes.
    pub stream: bool,
    /// The node's name, for the samples.
    pub node: String,
}

/// The previous reading of one container.
struct Previous {
    at: Instant,
    cpu_nanos: u64,
    layer: Option<(Instant, u64)>,
}

fn running_ids(rt: &Runtime) -> Vec<String> {
    rt.list()
        .into_iter()
        .filter(|c| c.state.status == RunStatus::Running)
        .map(|c| c.state.id)
        .collect()
}

/// Reads every container of `ids` (a blocking walk of `/proc` and cgroup files).
async fn read_all(
    rt: &Arc<Runtime>,
    ids: Vec<String>,
) -> Vec<(String, Result<Usage, RuntimeError>)> {
    let rt = rt.clone();
    tokio::task::spawn_blocking(move || {
        ids.into_iter()
            .map(|id| {
                let usage = rt.usage(&id);
                (id, usage)
            })
            .collect()
    })
    .await
    .unwrap_or_default()
}

/// Samples until the client goes (or once), sending to `out`.
pub async fn run(
    rt: Arc<Runtime>,
    query: StatsQuery,
    out: mpsc::Sender<Result<v1::ContainerUsage, Status>>,
) {
    let ids = |rt: &Runtime| {
        if query.ids.is_empty() {
            running_ids(rt)
        } else {
            query.ids.clone()
        }
    };
    let mut previous: HashMap<String, Previous> = HashMap::new();
    for (id, usage) in read_all(&rt, ids(&rt)).await {
        if let Ok(u) = usage {
            previous.insert(
                id,
                Previous {
                    at: Instant::now(),
                    cpu_nanos: u.cpu_nanos,
                    layer: None,
                },
            );
        }
    }
    let interval = if query.stream {
        STREAM_INTERVAL
    } else {
        ONE_SHOT_INTERVAL
    };
    let cpus = crate::node::cpu_count();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = out.closed() => return,
        }
        let mut seen = HashMap::new();
        for (id, usage) in read_all(&rt, ids(&rt)).await {
            let usage = match usage {
                Ok(u) => u,
                // Removed since: a stream goes on without it; one named and gone is said.
                Err(RuntimeError::NotFound(_)) if query.ids.is_empty() => continue,
                Err(e) => {
                    if out.send(Err(e.into())).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let now = Instant::now();
            let prev = previous.remove(&id);
            let percent = prev.as_ref().map_or(0.0, |p| {
                cpu_percent(p.cpu_nanos, usage.cpu_nanos, now - p.at)
            });
            let layer = match (prev.and_then(|p| p.layer), &usage.layer_dir) {
                (Some((at, bytes)), Some(_)) if now - at < LAYER_REFRESH => Some((at, bytes)),
                (_, Some(dir)) => {
                    let dir = dir.clone();
                    let bytes = tokio::task::spawn_blocking(move || disk_usage(&dir))
                        .await
                        .unwrap_or(0);
                    Some((now, bytes))
                }
                (_, None) => None,
            };
            let sample = usage_to(&usage, &query.node, cpus, percent, layer.map(|l| l.1));
            seen.insert(
                id,
                Previous {
                    at: now,
                    cpu_nanos: usage.cpu_nanos,
                    layer,
                },
            );
            if out.send(Ok(sample)).await.is_err() {
                return;
            }
        }
        previous = seen;
        if !query.stream {
            return;
        }
    }
}

/// A sample for the wire.
fn usage_to(
    u: &Usage,
    node: &str,
    cpus: u32,
    percent: f64,
    layer: Option<u64>,
) -> v1::ContainerUsage {
    let memory = u.info.memory.unwrap_or_default();
    let pids = u.info.pids;
    v1::ContainerUsage {
        id: u.info.state.id.clone(),
        node: node.to_string(),
        time: Some(timestamp(std::time::SystemTime::now())),
        state: state_to(u.info.state.status) as i32,
        cpu_usage_nanos: u.cpu_nanos,
        cpu_percent: percent,
        node_cpus: cpus,
        memory_usage_bytes: memory.usage_bytes,
        memory_limit_bytes: memory.limit_bytes,
        memory_peak_bytes: memory.peak_bytes,
        pids: pids.map_or(0, |p| p.current),
        pids_limit: pids.and_then(|p| p.limit),
        net_rx_bytes: u.net.map(|n| n.rx),
        net_tx_bytes: u.net.map(|n| n.tx),
        block_read_bytes: u.block.read,
        block_write_bytes: u.block.write,
        writable_layer_bytes: layer,
    }
}
