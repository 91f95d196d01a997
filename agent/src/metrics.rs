//! The agent's Prometheus metrics: per-container usage read at scrape time (CPU time,
//! memory, processes, OOM kills, labelled by container and node), containers by state, the
//! event log's size, and rootfs builds by outcome.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use hutch_server::metrics::{encode_rows, Collector, LabelSet, MetricType, Registry, Unit};
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::cgroup::{CgroupVersion, ContainerCgroup};
use crate::events::EventLog;
use crate::runtime::state::Status;
use crate::runtime::Runtime;
use crate::stats;

/// Labels of a per-container figure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, LabelSet)]
pub struct ContainerLabels {
    /// The container's id on this node.
    pub container: String,
    /// This node.
    pub node: String,
}

/// The node alone.
#[derive(Clone, Debug, Hash, PartialEq, Eq, LabelSet)]
pub struct NodeLabels {
    /// This node.
    pub node: String,
}

/// Labels of a count by state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, LabelSet)]
pub struct StateLabels {
    /// This node.
    pub node: String,
    /// `running`, `exited`, ...
    pub state: String,
}

/// Labels of a rootfs build.
#[derive(Clone, Debug, Hash, PartialEq, Eq, LabelSet)]
pub struct BuildLabels {
    /// This node.
    pub node: String,
    /// `built`, `cached`, `joined` or `failed`.
    pub outcome: String,
}

/// The metrics the agent counts as things happen (the rest is read at scrape time).
#[derive(Debug, Clone, Default)]
pub struct AgentMetrics {
    /// Rootfs builds by outcome.
    pub rootfs_builds: Family<BuildLabels, Counter>,
}

/// Reads the containers and the event log at each scrape. What never changes of a
/// container (its cgroup, its limit) is read once and kept; a scrape reads its state and
/// four small kernel files per running container, on two threads.
struct NodeCollector {
    runtime: Arc<Runtime>,
    events: Arc<EventLog>,
    node: String,
    known: Mutex<HashMap<String, Arc<Known>>>,
}

/// What a scrape keeps of a container between scrapes.
#[derive(Debug)]
struct Known {
    cgroup: crate::cgroup::CgroupPath,
    memory_limit: Option<u64>,
    /// The highest CPU time reported: on cgroup v1 the figure is a sum over live
    /// processes, which drops when one the agent reaped (an exec) ends; a counter must not.
    cpu_nanos: std::sync::atomic::AtomicU64,
}

/// One container as a scrape read it.
struct Reading {
    status: Status,
    /// `None` unless running.
    usage: Option<Usage>,
}

struct Usage {
    id: String,
    cpu_seconds: f64,
    memory_bytes: u64,
    memory_limit: Option<u64>,
    pids: u64,
    oom_kills: u64,
}

impl std::fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCollector")
            .field("node", &self.node)
            .finish()
    }
}

fn status_name(s: Status) -> &'static str {
    match s {
        Status::Created => "created",
        Status::Running => "running",
        Status::Exited => "exited",
        Status::OomKilled => "oom_killed",
        Status::Failed => "failed",
    }
}

impl NodeCollector {
    fn known(&self, id: &str) -> Option<Arc<Known>> {
        if let Some(k) = self.lock().get(id) {
            return Some(k.clone());
        }
        let config = self.runtime.config_of(id).ok()?;
        let memory_limit = ContainerCgroup::open(config.cgroup.clone())
            .memory()
            .limit_bytes;
        let known = Arc::new(Known {
            cgroup: config.cgroup,
            memory_limit,
            cpu_nanos: std::sync::atomic::AtomicU64::new(0),
        });
        self.lock().insert(id.to_string(), known.clone());
        Some(known)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Known>>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self, id: &str) -> Option<Reading> {
        let status = self.runtime.state_of(id).ok()?.status;
        if status != Status::Running {
            return Some(Reading {
                status,
                usage: None,
            });
        }
        let known = self.known(id)?;
        let cgroup = ContainerCgroup::open(known.cgroup.clone());
        let nanos = match known.cgroup.version {
            CgroupVersion::V2 => stats::cgroup_v2_cpu_nanos(&known.cgroup.dir()),
            CgroupVersion::V1 => None,
        }
        .unwrap_or_else(|| stats::cpu_nanos_of(&known.cgroup.procs()));
        let nanos = known
            .cpu_nanos
            .fetch_max(nanos, std::sync::atomic::Ordering::Relaxed)
            .max(nanos);
        let (memory_bytes, oom_kills) = cgroup.memory_usage_and_oom_kills();
        Some(Reading {
            status,
            usage: Some(Usage {
                id: id.to_string(),
                cpu_seconds: nanos as f64 / 1e9,
                memory_bytes,
                memory_limit: known.memory_limit,
                pids: cgroup.pids_current().unwrap_or(0),
                oom_kills,
            }),
        })
    }

    /// Every container, read on two threads.
    fn read_all(&self) -> Vec<Reading> {
        let ids = self.runtime.ids();
        self.lock().retain(|id, _| ids.binary_search(id).is_ok());
        let half = ids.len().div_ceil(2);
        std::thread::scope(|scope| {
            let chunks: Vec<_> = ids
                .chunks(half.max(1))
                .map(|chunk| {
                    scope.spawn(move || {
                        chunk
                            .iter()
                            .filter_map(|id| self.read(id))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            chunks
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        })
    }
}

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut by_state = std::collections::BTreeMap::<&str, f64>::new();
        let (mut cpu, mut usage, mut limit, mut pids, mut ooms) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for reading in self.read_all() {
            *by_state.entry(status_name(reading.status)).or_default() += 1.0;
            let Some(u) = reading.usage else { continue };
            let labels = ContainerLabels {
                container: u.id,
                node: self.node.clone(),
            };
            cpu.push((labels.clone(), u.cpu_seconds));
            usage.push((labels.clone(), u.memory_bytes as f64));
            if let Some(l) = u.memory_limit {
                limit.push((labels.clone(), l as f64));
            }
            ooms.push((labels.clone(), u.oom_kills as f64));
            pids.push((labels, u.pids as f64));
        }
        let states: Vec<(StateLabels, f64)> = by_state
            .into_iter()
            .map(|(state, n)| {
                let labels = StateLabels {
                    node: self.node.clone(),
                    state: state.to_string(),
                };
                (labels, n)
            })
            .collect();
        let e = &mut encoder;
        encode_rows(
            e,
            "containers",
            "Containers on this node (ended ones until removed), by state",
            None,
            MetricType::Gauge,
            &states,
        )?;
        encode_rows(
            e,
            "container_cpu",
            "CPU time used by a running container's processes",
            Some(&Unit::Seconds),
            MetricType::Counter,
            &cpu,
        )?;
        encode_rows(
            e,
            "container_memory_usage",
            "Memory a running container uses (its cgroup's figure, page cache included)",
            Some(&Unit::Bytes),
            MetricType::Gauge,
            &usage,
        )?;
        encode_rows(
            e,
            "container_memory_limit",
            "Memory limit of a running container that has one",
            Some(&Unit::Bytes),
            MetricType::Gauge,
            &limit,
        )?;
        encode_rows(
            e,
            "container_pids",
            "Processes and threads of a running container",
            None,
            MetricType::Gauge,
            &pids,
        )?;
        encode_rows(
            e,
            "container_oom_kills",
            "Processes of a running container the OOM killer killed",
            None,
            MetricType::Counter,
            &ooms,
        )?;
        let events = [(
            NodeLabels {
                node: self.node.clone(),
            },
            self.events.len() as f64,
        )];
        encode_rows(
            e,
            "event_log_events",
            "Events the node's event log keeps",
            None,
            MetricType::Gauge,
            &events,
        )?;
        let syncs = [(
            NodeLabels {
                node: self.node.clone(),
            },
            self.events.syncs() as f64,
        )];
        encode_rows(
            e,
            "event_log_syncs",
            "fsyncs of the node's event log (concurrent events share one)",
            None,
            MetricType::Counter,
            &syncs,
        )
    }
}

/// Registers the agent's metrics (and the gRPC call metrics' families are the caller's).
pub fn register(
    registry: &mut Registry,
    runtime: Arc<Runtime>,
    events: Arc<EventLog>,
    node: &str,
    counted: &AgentMetrics,
) {
    // Every outcome from zero, so the family is there before the first build.
    for outcome in ["built", "cached", "joined", "failed"] {
        let _ = counted.rootfs_builds.get_or_create(&BuildLabels {
            node: node.to_string(),
            outcome: outcome.into(),
        });
    }
    registry.register(
        "rootfs_builds",
        "Rootfs builds asked of this node, by outcome (built, cached, joined, failed)",
        counted.rootfs_builds.clone(),
    );
    registry.register_collector(Box::new(NodeCollector {
        runtime,
        events,
        node: node.to_string(),
        known: Mutex::new(HashMap::new()),
    }));
}
