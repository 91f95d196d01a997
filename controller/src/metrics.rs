//! The controller's Prometheus metrics: containers and nodes by state, pending containers
//! and restarts read from the cluster's state at scrape time; placements, store write
//! latency and rootfs builds counted as they happen.

use std::sync::Arc;

use hutch_proto::v1;
use hutch_server::metrics::{
    encode_rows, seconds_histogram, Collector, LabelSet, MetricType, Registry,
};
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

use crate::cluster::Cluster;
use crate::leadership::Leadership;

/// Labels of a count by state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, LabelSet)]
pub struct StateLabels {
    /// `running`, `pending`, `ready`, ...
    pub state: String,
}

/// Labels of a per-container figure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, LabelSet)]
pub struct ContainerLabels {
    /// The container's name.
    pub container: String,
    /// The node it is placed on (empty while pending).
    pub node: String,
}

/// Labels of a rootfs build (each node's are in its agent's metrics).
#[derive(Clone, Debug, Hash, PartialEq, Eq, LabelSet)]
pub struct BuildLabels {
    /// `built`, `cached`, `joined` or `failed`.
    pub outcome: String,
}

/// No labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, LabelSet)]
pub struct NoLabels {}

/// What the controller counts as things happen.
#[derive(Debug, Clone)]
pub struct ClusterMetrics {
    /// Containers placed on a node.
    pub placements: Counter,
    /// Time of a write to the state store: a batch staged (durable at once on etcd), or a
    /// sync making the staged batches durable.
    pub store_writes: Histogram,
    /// Rootfs builds asked through the controller, by outcome (one per node asked).
    pub rootfs_builds: Family<BuildLabels, Counter>,
}

impl Default for ClusterMetrics {
    fn default() -> Self {
        ClusterMetrics {
            placements: Counter::default(),
            store_writes: seconds_histogram(),
            rootfs_builds: Family::default(),
        }
    }
}

/// A state enum's name as a label (`CONTAINER_STATE_RUNNING` -> `running`).
fn state_label(full: &str, prefix: &str) -> String {
    full.trim_start_matches(prefix).to_ascii_lowercase()
}

struct ClusterCollector {
    leadership: Arc<Leadership>,
}

impl std::fmt::Debug for ClusterCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterCollector")
    }
}

impl Collector for ClusterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // A follower has no figures of its own: the leader's /metrics has them.
        let Ok(cluster) = self.leadership.cluster() else {
            return Ok(());
        };
        let figures = cluster.metric_figures();
        let by_state = |counts: Vec<(String, usize)>| -> Vec<(StateLabels, f64)> {
            counts
                .into_iter()
                .map(|(state, n)| (StateLabels { state }, n as f64))
                .collect()
        };
        let e = &mut encoder;
        encode_rows(
            e,
            "cluster_containers",
            "Containers the cluster records, by state (each node's own are its agent's hutch_containers)",
            None,
            MetricType::Gauge,
            &by_state(figures.containers),
        )?;
        encode_rows(
            e,
            "nodes",
            "Nodes the cluster knows, by state",
            None,
            MetricType::Gauge,
            &by_state(figures.nodes),
        )?;
        encode_rows(
            e,
            "scheduler_pending",
            "Containers waiting for a node with room",
            None,
            MetricType::Gauge,
            &[(NoLabels {}, figures.pending as f64)],
        )?;
        encode_rows(
            e,
            "container_restarts",
            "Restarts of a container by its restart policy (containers restarted at least once)",
            None,
            MetricType::Counter,
            &figures
                .restarts
                .into_iter()
                .map(|(container, node, n)| (ContainerLabels { container, node }, n as f64))
                .collect::<Vec<_>>(),
        )?;
        encode_rows(
            e,
            "event_log_events",
            "Watch events the controller keeps for watchers to resume from",
            None,
            MetricType::Gauge,
            &[(NoLabels {}, figures.events as f64)],
        )
    }
}

/// What the collector reads from the cluster at a scrape.
#[derive(Debug, Default)]
pub struct Figures {
    /// Containers by state.
    pub containers: Vec<(String, usize)>,
    /// Nodes by state.
    pub nodes: Vec<(String, usize)>,
    /// PENDING containers.
    pub pending: usize,
    /// (container, node, restarts) of containers restarted at least once.
    pub restarts: Vec<(String, String, u32)>,
    /// Watch events kept.
    pub events: usize,
}

impl Cluster {
    /// The figures of a scrape, read under the lock once.
    pub fn metric_figures(&self) -> Figures {
        let st = self.lock();
        let mut containers = std::collections::BTreeMap::<String, usize>::new();
        let mut restarts = Vec::new();
        for c in st.containers.values() {
            let state = v1::ContainerState::try_from(c.state)
                .map(|s| state_label(s.as_str_name(), "CONTAINER_STATE_"))
                .unwrap_or_default();
            *containers.entry(state).or_default() += 1;
            if c.restart_count > 0 {
                restarts.push((c.name.clone(), c.node.clone(), c.restart_count));
            }
        }
        let mut nodes = std::collections::BTreeMap::<String, usize>::new();
        for n in st.nodes.values() {
            let state = v1::NodeState::try_from(n.record.state)
                .map(|s| state_label(s.as_str_name(), "NODE_STATE_"))
                .unwrap_or_default();
            *nodes.entry(state).or_default() += 1;
        }
        Figures {
            containers: containers.into_iter().collect(),
            nodes: nodes.into_iter().collect(),
            pending: st.pending.len(),
            restarts,
            events: self.kept_events(),
        }
    }
}

/// Registers the controller's metrics on `registry`.
pub fn register(registry: &mut Registry, leadership: Arc<Leadership>) {
    let counted = leadership.metrics().clone();
    // Every outcome from zero, so the family is there before the first build.
    for outcome in ["built", "cached", "joined", "failed"] {
        let _ = counted.rootfs_builds.get_or_create(&BuildLabels {
            outcome: outcome.into(),
        });
    }
    registry.register(
        "scheduler_placements",
        "Containers placed on a node (each start and restart)",
        counted.placements,
    );
    registry.register(
        "store_write_duration_seconds",
        "Time of a write to the state store: a batch of changes staged (on etcd: committed), or one sync making every staged batch durable",
        counted.store_writes,
    );
    registry.register(
        "rootfs_builds",
        "Rootfs builds asked through the controller, one per node asked, by outcome (built, cached, joined, failed)",
        counted.rootfs_builds,
    );
    registry.register_collector(Box::new(ClusterCollector { leadership }));
}
