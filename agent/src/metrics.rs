//! The agent's Prometheus metrics: per-container usage read at scrape time (CPU time,
//! memory, processes, OOM kills, labelled by container and node), containers by state, the
//! event log's size, and rootfs builds by outcome.

use std::sync::Arc;

use hutch_server::metrics::{encode_rows, Collector, LabelSet, MetricType, Registry, Unit};
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::cgroup::CgroupVersion;
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

/// Reads the containers and the event log at each scrape.
struct NodeCollector {
    runtime: Arc<Runtime>,
    events: Arc<EventLog>,
    node: String,
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

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut by_state = std::collections::BTreeMap::<&str, f64>::new();
        let (mut cpu, mut usage, mut limit, mut pids, mut ooms) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for c in self.runtime.list() {
            *by_state.entry(status_name(c.state.status)).or_default() += 1.0;
            if c.state.status != Status::Running {
                continue;
            }
            let labels = ContainerLabels {
                container: c.state.id.clone(),
                node: self.node.clone(),
            };
            let nanos = match c.cgroup.version {
                CgroupVersion::V2 => stats::cgroup_v2_cpu_nanos(&c.cgroup.dir()),
                CgroupVersion::V1 => None,
            }
            .unwrap_or_else(|| stats::cpu_nanos_of(&c.cgroup.procs()));
            cpu.push((labels.clone(), nanos as f64 / 1e9));
            let memory = c.memory.unwrap_or_default();
            usage.push((labels.clone(), memory.usage_bytes as f64));
            if let Some(l) = memory.limit_bytes {
                limit.push((labels.clone(), l as f64));
            }
            ooms.push((labels.clone(), memory.oom_kills as f64));
            pids.push((labels, c.pids.map_or(0, |p| p.current) as f64));
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
    }));
}
