//! Nodes: registration, heartbeats, liveness (READY, NOT_READY, DOWN), cordon and drain.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use hutch_core::convert::timestamp;
use hutch_core::names::validate_name;
use hutch_proto::v1::{self, ContainerState as S, NodeState, WatchEventType};

use super::network::{allocate_subnet, view_for};
use super::records::{holds_reservation, state};
use super::{Change, Cluster, ClusterError, NodeEntry, State};
use crate::agents::AgentRpc;
use crate::scheduler::NodeCapacity;

/// What the scheduler needs of a node record.
pub(crate) fn capacity_of(n: &v1::Node, schedulable: bool) -> NodeCapacity {
    NodeCapacity {
        labels: n.labels.clone().into_iter().collect(),
        allocatable_bytes: n.memory_allocatable_bytes,
        allocatable_cpu_millicores: n.cpu_allocatable_millicores,
        schedulable,
        rootfs: n.rootfs.iter().cloned().collect(),
        volumes: n.volumes.iter().cloned().collect(),
    }
}

fn node_state(n: &v1::Node) -> NodeState {
    NodeState::try_from(n.state).unwrap_or(NodeState::Unspecified)
}

fn schedulable(n: &v1::Node) -> bool {
    node_state(n) == NodeState::Ready && !n.cordoned
}

/// Most rootfs names a node may report.
const MAX_NODE_ROOTFS: usize = 1024;

fn node_not_found(name: &str) -> ClusterError {
    ClusterError::NotFound(format!("node '{name}' is not registered"))
}

impl Cluster {
    /// Registers (or re-registers) a node; answers with the session its heartbeats carry.
    /// Its event stream is followed from the last event applied, and what it runs is
    /// reconciled with the records.
    pub fn register(
        self: &Arc<Self>,
        req: v1::RegisterRequest,
    ) -> Result<v1::RegisterResponse, ClusterError> {
        validate_name("node name", &req.name)
            .map_err(|e| ClusterError::InvalidArgument(format!("name: {e}")))?;
        if req.address.parse::<std::net::SocketAddr>().is_err()
            && !req
                .address
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        {
            return Err(ClusterError::InvalidArgument(format!(
                "address: '{}' is not host:port (the address the controller dials to reach the agent)",
                req.address
            )));
        }
        hutch_core::spec::validate_labels("labels", req.labels.iter())
            .map_err(ClusterError::InvalidArgument)?;
        let texts = [
            &req.hostname,
            &req.kernel,
            &req.cgroup_version,
            &req.agent_version,
        ];
        if req.rootfs.len() > MAX_NODE_ROOTFS || texts.iter().any(|t| t.len() > 253) {
            return Err(ClusterError::InvalidArgument(format!(
                "a node reports at most {MAX_NODE_ROOTFS} rootfs, and a hostname, kernel and versions of at most 253 bytes each"
            )));
        }
        for rootfs in &req.rootfs {
            validate_name("rootfs", rootfs)
                .map_err(|e| ClusterError::InvalidArgument(e.to_string()))?;
        }
        let name = req.name.clone();
        let mut st = self.lock();
        let old = st.nodes.get(&name).map(|e| e.record.clone());
        if let Some(o) = &old {
            if o.address != req.address {
                self.agents.forget(&o.address);
            }
        }
        let old = old.unwrap_or_default();
        // Follow the agent's events from the last one applied; a new node's history is not
        // ours, and an agent whose log restarted is read from its beginning.
        let last_event_seq = if old.name.is_empty() {
            req.last_event_seq
        } else if req.last_event_seq < old.last_event_seq {
            0
        } else {
            old.last_event_seq
        };
        let now = Some(timestamp(SystemTime::now()));
        // Its block from before (its record, else what its bridge still has, after the
        // record was removed).
        let previous = if old.subnet.is_empty() {
            req.subnet.as_str()
        } else {
            old.subnet.as_str()
        };
        let subnet = self.node_subnet(&st, &name, previous);
        let record = v1::Node {
            name: name.clone(),
            address: req.address,
            labels: req.labels,
            state: NodeState::Ready as i32,
            cordoned: old.cordoned,
            hostname: req.hostname,
            kernel: req.kernel,
            cgroup_version: req.cgroup_version,
            agent_version: req.agent_version,
            memory_total_bytes: req.memory_total_bytes,
            memory_allocatable_bytes: req.memory_allocatable_bytes,
            cpu_count: req.cpu_count,
            cpu_allocatable_millicores: req.cpu_allocatable_millicores,
            memory_reserved_bytes: 0,
            cpu_reserved_millicores: 0,
            memory_used_bytes: 0,
            running_containers: 0,
            rootfs: req.rootfs,
            volumes: req.volumes,
            registered_at: now,
            last_heartbeat: now,
            last_event_seq,
            message: match (&subnet, old.name.is_empty()) {
                (Err(why), _) => why.clone(),
                (Ok(_), true) => "registered".into(),
                (Ok(_), false) => "registered again".into(),
            },
            subnet: subnet.unwrap_or_default(),
        };
        let entry = st.nodes.entry(name.clone()).or_insert_with(|| NodeEntry {
            record: record.clone(),
            last_seen: Instant::now(),
            registered: true,
            link: None,
            heard_again: false,
        });
        entry.last_seen = Instant::now();
        entry.registered = true;
        if let Some(link) = entry.link.take() {
            link.abort();
        }
        self.commit(&mut st, vec![Change::Node(record.clone())])?;
        st.scheduler
            .set_node(&name, capacity_of(&record, schedulable(&record)));
        let link = tokio::spawn(self.clone().follow_events(name.clone())).abort_handle();
        if let Some(e) = st.nodes.get_mut(&name) {
            e.link = Some(link);
        }
        let network = self.network_view(&st, &name, None);
        drop(st);
        tracing::info!(node = %name, address = %record.address, subnet = %record.subnet, "node registered");
        tokio::spawn(self.clone().reconcile(name));
        self.kick.notify_one();
        Ok(v1::RegisterResponse {
            session: self.session.clone(),
            heartbeat_interval_ms: self.config.heartbeat_interval.as_millis() as u32,
            network,
        })
    }

    /// The block node `name` gets (its old one when it still may have it); an empty
    /// string without a cluster network; the reason when every block is taken.
    fn node_subnet(&self, st: &State, name: &str, old: &str) -> Result<String, String> {
        let Some(cluster) = &self.config.cluster_cidr else {
            return Ok(String::new());
        };
        let used: Vec<_> = st
            .nodes
            .values()
            .filter(|e| e.record.name != name)
            .filter_map(|e| e.record.subnet.parse().ok())
            .collect();
        match allocate_subnet(cluster, old.parse().ok(), &used) {
            Some(s) => Ok(s.to_string()),
            None => Err(format!(
                "no free /{} block left in the cluster network {}: its containers get no network",
                cluster.node_prefix, cluster.cidr
            )),
        }
    }

    /// What a node is told about the cluster's network.
    fn network_view(
        &self,
        st: &State,
        name: &str,
        names_revision: Option<u64>,
    ) -> Option<v1::ClusterNetwork> {
        view_for(
            st,
            self.config.cluster_cidr.as_ref()?,
            self.config.service_cidr,
            name,
            names_revision,
        )
    }

    /// Records a heartbeat. `FailedPrecondition` asks the agent to register again.
    pub fn heartbeat(
        self: &Arc<Self>,
        req: v1::HeartbeatRequest,
    ) -> Result<v1::HeartbeatResponse, ClusterError> {
        let mut st = self.lock();
        let again = |why: &str| {
            ClusterError::FailedPrecondition(format!("node '{}': {why}; register again", req.name))
        };
        let Some(entry) = st.nodes.get_mut(&req.name) else {
            return Err(again("not registered"));
        };
        if req.session != self.session || !entry.registered {
            return Err(again("the controller restarted since it registered"));
        }
        if node_state(&entry.record) == NodeState::Down {
            return Err(again("it was down"));
        }
        entry.last_seen = Instant::now();
        let r = &mut entry.record;
        r.last_heartbeat = Some(timestamp(SystemTime::now()));
        r.memory_used_bytes = req.memory_used_bytes;
        r.running_containers = req.running_containers;
        let rootfs_changed = r.rootfs != req.rootfs;
        r.rootfs = req.rootfs;
        let volumes_changed = r.volumes != req.volumes;
        r.volumes = req.volumes;
        if node_state(r) == NodeState::NotReady {
            // Recorded READY by the liveness check, with every other node heard again in
            // the same commit: after a stall, thousands of nodes come back at once, and one
            // durable commit each under the state lock would stall the heartbeats again.
            entry.heard_again = true;
            self.liveness_kick.notify_one();
        }
        let rootfs = rootfs_changed.then(|| r.rootfs.iter().cloned().collect());
        let volumes = volumes_changed.then(|| r.volumes.iter().cloned().collect());
        if let Some(rootfs) = rootfs {
            st.scheduler.set_rootfs(&req.name, rootfs);
            self.kick.notify_one();
        }
        if let Some(volumes) = volumes {
            st.scheduler.set_volumes(&req.name, volumes);
        }
        Ok(v1::HeartbeatResponse {
            network: self.network_view(&st, &req.name, Some(req.names_revision)),
        })
    }

    /// Moves silent nodes to NOT_READY, then DOWN, and NOT_READY nodes heard again back to
    /// READY; the containers of a DOWN node become LOST (and are restarted elsewhere when
    /// their policy says so).
    pub(crate) fn check_liveness(self: &Arc<Self>) {
        let not_ready_after = self.config.heartbeat_interval * self.config.not_ready_misses;
        let mut lost = Vec::new();
        {
            let mut st = self.lock();
            let now = Instant::now();
            let mut changes = Vec::new();
            let mut down_nodes = Vec::new();
            let mut ready_again = Vec::new();
            for (name, entry) in st.nodes.iter_mut() {
                let silent = now.duration_since(entry.last_seen);
                let heard_again = std::mem::take(&mut entry.heard_again);
                let r = &entry.record;
                match node_state(r) {
                    NodeState::NotReady if heard_again && silent < not_ready_after => {
                        let mut n = r.clone();
                        n.state = NodeState::Ready as i32;
                        n.message = "heartbeats resumed".into();
                        ready_again.push(n);
                    }
                    NodeState::Ready | NodeState::NotReady if silent >= self.config.down_after => {
                        let mut n = r.clone();
                        n.state = NodeState::Down as i32;
                        n.message = format!("down: no heartbeat for {}", secs(silent));
                        if let Some(link) = entry.link.take() {
                            link.abort();
                        }
                        entry.registered = false;
                        tracing::warn!(node = %name, "node down");
                        down_nodes.push(name.clone());
                        changes.push(Change::Node(n));
                    }
                    NodeState::Ready if silent >= not_ready_after => {
                        let mut n = r.clone();
                        n.state = NodeState::NotReady as i32;
                        n.message = format!(
                            "not ready: {} heartbeats missed",
                            silent.as_millis() / self.config.heartbeat_interval.as_millis().max(1)
                        );
                        tracing::warn!(node = %name, "node not ready");
                        changes.push(Change::Node(n));
                    }
                    _ => {}
                }
            }
            if changes.is_empty() && ready_again.is_empty() {
                return;
            }
            // Only these nodes' schedulability can have changed: re-ranking all of them
            // would cost a pass over every node (5,000 in the bench) under the state lock.
            let touched: Vec<String> = changes
                .iter()
                .filter_map(|c| match c {
                    Change::Node(n) => Some(n.name.clone()),
                    _ => None,
                })
                .chain(ready_again.iter().map(|n| n.name.clone()))
                .collect();
            for node in &down_nodes {
                for c in st.containers.values() {
                    if c.node == *node && holds_reservation(state(c)) {
                        let mut l = c.clone();
                        l.state = S::Lost as i32;
                        l.pid = 0;
                        l.status_message =
                            format!("node {node} is down; the container's fate is unknown");
                        changes.push(Change::Container(WatchEventType::Updated, l));
                    }
                }
            }
            match self.commit(&mut st, changes) {
                Ok(committed) => lost = committed,
                Err(e) => tracing::error!("recording node liveness: {e}"),
            }
            // Their own batch, so that a failing batch of DOWN nodes and LOST containers
            // does not keep them NOT_READY; if it fails, the next check tries again.
            let names: Vec<String> = ready_again.iter().map(|n| n.name.clone()).collect();
            let ready = ready_again.into_iter().map(Change::Node).collect();
            match self.commit(&mut st, ready) {
                Ok(_) if !names.is_empty() => {
                    for name in &names {
                        tracing::info!(node = %name, "node ready again");
                    }
                    self.kick.notify_one();
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!("recording nodes ready again: {e}");
                    for name in &names {
                        if let Some(entry) = st.nodes.get_mut(name) {
                            entry.heard_again = true;
                        }
                    }
                }
            }
            for name in touched {
                if let Some(e) = st.nodes.get(&name) {
                    let ok = schedulable(&e.record);
                    st.scheduler.set_schedulable(&name, ok);
                }
            }
        }
        for c in lost {
            self.after_end(&c);
        }
    }

    /// Every node, by name.
    pub fn nodes(&self) -> Vec<v1::Node> {
        let st = self.lock();
        st.nodes.keys().filter_map(|n| node_view(&st, n)).collect()
    }

    /// One node.
    pub fn node(&self, name: &str) -> Result<v1::Node, ClusterError> {
        node_view(&self.lock(), name).ok_or_else(|| node_not_found(name))
    }

    /// Cordons or uncordons a node.
    pub fn set_cordoned(
        self: &Arc<Self>,
        name: &str,
        cordoned: bool,
    ) -> Result<v1::Node, ClusterError> {
        let mut st = self.lock();
        let mut n = st
            .nodes
            .get(name)
            .map(|e| e.record.clone())
            .ok_or_else(|| node_not_found(name))?;
        if n.cordoned != cordoned {
            n.cordoned = cordoned;
            n.message = if cordoned { "cordoned" } else { "uncordoned" }.into();
            self.commit(&mut st, vec![Change::Node(n.clone())])?;
            st.scheduler.set_schedulable(name, schedulable(&n));
        }
        let view = node_view(&st, name).ok_or_else(|| node_not_found(name))?;
        drop(st);
        if !cordoned {
            self.kick.notify_one();
        }
        Ok(view)
    }

    /// Forgets node `name` (see `RemoveNode` in the API): refused while it is alive or
    /// holds containers, unless `force`, which makes those containers LOST.
    pub fn remove_node(
        self: &Arc<Self>,
        name: &str,
        force: bool,
    ) -> Result<v1::RemoveNodeResponse, ClusterError> {
        let lost = {
            let mut st = self.lock();
            let node = st
                .nodes
                .get(name)
                .map(|e| e.record.clone())
                .ok_or_else(|| node_not_found(name))?;
            let holding = holding_reservations(&st, name);
            let alive = node_state(&node) != NodeState::Down;
            if !force && alive {
                return Err(ClusterError::FailedPrecondition(format!(
                    "node '{name}' is {}: stop its agent and wait until it is down (or drain it first), or remove it with force; a running agent registers again on its next heartbeat",
                    if node_state(&node) == NodeState::Ready { "ready" } else { "not ready" }
                )));
            }
            if !force && !holding.is_empty() {
                let names: Vec<&str> = holding.iter().take(5).map(|c| c.name.as_str()).collect();
                return Err(ClusterError::FailedPrecondition(format!(
                    "node '{name}' still holds {} container(s) ({}{}): remove them, or remove the node with force (they become LOST)",
                    holding.len(),
                    names.join(", "),
                    if holding.len() > names.len() { ", ..." } else { "" }
                )));
            }
            let mut changes: Vec<Change> = holding
                .into_iter()
                .map(|mut c| {
                    c.state = S::Lost as i32;
                    c.pid = 0;
                    c.status_message = format!("node {name} was removed from the cluster");
                    Change::Container(WatchEventType::Updated, c)
                })
                .collect();
            changes.push(Change::ForgetNode(name.to_string()));
            let lost = self.commit(&mut st, changes)?;
            tracing::warn!(node = %name, lost = lost.len(), subnet = %node.subnet, "node removed");
            (node, lost)
        };
        let (node, lost) = lost;
        self.agents.forget(&node.address);
        self.dispatch_slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        for c in &lost {
            self.after_end(c);
        }
        self.kick.notify_one();
        Ok(v1::RemoveNodeResponse {
            node: Some(node),
            lost: lost.into_iter().map(|c| c.name).collect(),
        })
    }

    /// Cordons the node and stops its containers; those whose restart policy is not
    /// `never` start again elsewhere.
    pub async fn drain(
        self: &Arc<Self>,
        name: &str,
    ) -> Result<v1::DrainNodeResponse, ClusterError> {
        let me = self.clone();
        let node_name = name.to_string();
        self.commit_blocking(move |c| c.set_cordoned(&node_name, true))
            .await?;
        let victims: Vec<v1::Container> = {
            let mut st = me.lock();
            let v = holding_reservations(&st, name);
            for c in &v {
                st.evicted.insert(c.name.clone());
            }
            v
        };
        // All at once: each waits out its own grace period.
        let mut stops = tokio::task::JoinSet::new();
        for c in victims {
            let mut client = self.client_for(name)?;
            let me = self.clone();
            let node = name.to_string();
            stops.spawn(async move {
                let grace = c
                    .spec
                    .as_ref()
                    .and_then(|s| s.stop_grace_seconds)
                    .unwrap_or(hutch_core::spec::DEFAULT_STOP_GRACE_SECONDS);
                let mut request = tonic::Request::new(v1::StopContainerRequest {
                    id: super::records::current_agent_id(&c),
                    grace_seconds: None,
                });
                request.set_timeout(Duration::from_secs(u64::from(grace) + 15));
                match client.stop_container(request).await {
                    Ok(view) => me
                        .apply_agent_view(&node, view.into_inner())
                        .await
                        .map(|()| Some(c.name)),
                    Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
                    Err(s) => Err(super::containers::node_error(&node, s)),
                }
            });
        }
        let mut stopped = Vec::new();
        while let Some(done) = stops.join_next().await {
            match done {
                Ok(Ok(Some(name))) => stopped.push(name),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => return Err(e),
                Err(e) => {
                    return Err(ClusterError::FailedPrecondition(format!(
                        "a stop during the drain failed: {e}"
                    )))
                }
            }
        }
        stopped.sort();
        Ok(v1::DrainNodeResponse {
            node: Some(self.node(name)?),
            containers: stopped,
        })
    }

    /// A client for the agent of `node`.
    pub(crate) fn client_for(&self, node: &str) -> Result<AgentRpc, ClusterError> {
        // A controller that stopped leading tells agents nothing more: its view of the
        // records may be stale, and the new leader acts on the nodes now.
        if self.stepped_down() {
            return Err(crate::store::StoreError::NotLeader(
                "this controller stopped leading; nothing was sent to the node".into(),
            )
            .into());
        }
        let (address, st) = {
            let st = self.lock();
            let e = st.nodes.get(node).ok_or_else(|| node_not_found(node))?;
            (e.record.address.clone(), node_state(&e.record))
        };
        if st == NodeState::Down {
            return Err(ClusterError::Unavailable(format!(
                "node '{node}' is down; try again when it is back"
            )));
        }
        self.agents
            .client(&address)
            .map_err(ClusterError::Unavailable)
    }

    /// Names of the nodes a rootfs build or listing goes to.
    pub(crate) fn target_nodes(
        &self,
        node: &str,
        selector: &std::collections::HashMap<String, String>,
    ) -> Result<Vec<String>, ClusterError> {
        let st = self.lock();
        if !node.is_empty() {
            return st
                .nodes
                .contains_key(node)
                .then(|| vec![node.to_string()])
                .ok_or_else(|| node_not_found(node));
        }
        Ok(st
            .nodes
            .values()
            .filter(|e| node_state(&e.record) == NodeState::Ready)
            .filter(|e| {
                selector
                    .iter()
                    .all(|(k, v)| e.record.labels.get(k) == Some(v))
            })
            .map(|e| e.record.name.clone())
            .collect())
    }

    /// Adds a rootfs a node now has.
    pub(crate) fn node_has_rootfs(&self, node: &str, rootfs: &str) {
        let mut st = self.lock();
        let Some(e) = st.nodes.get_mut(node) else {
            return;
        };
        if e.record.rootfs.iter().any(|r| r == rootfs) {
            return;
        }
        e.record.rootfs.push(rootfs.to_string());
        e.record.rootfs.sort();
        let set = e.record.rootfs.iter().cloned().collect();
        st.scheduler.set_rootfs(node, set);
        drop(st);
        self.kick.notify_one();
    }
}

impl Cluster {
    /// Adds (`held`) or removes a volume in what a node holds, until its next heartbeat
    /// says so itself.
    pub(crate) fn node_volume(&self, node: &str, volume: &str, held: bool) {
        let mut st = self.lock();
        let Some(e) = st.nodes.get_mut(node) else {
            return;
        };
        e.record.volumes.retain(|v| v != volume);
        if held {
            e.record.volumes.push(volume.to_string());
            e.record.volumes.sort();
        }
        let set = e.record.volumes.iter().cloned().collect();
        st.scheduler.set_volumes(node, set);
    }

    /// Removes a rootfs from what a node has.
    pub(crate) fn node_lost_rootfs(&self, node: &str, rootfs: &str) {
        let mut st = self.lock();
        let Some(e) = st.nodes.get_mut(node) else {
            return;
        };
        e.record.rootfs.retain(|r| r != rootfs);
        let set = e.record.rootfs.iter().cloned().collect();
        st.scheduler.set_rootfs(node, set);
    }
}

/// A node with its live figures (reservations from the scheduler).
/// The containers holding a reservation on `node` (placed, starting or running there).
fn holding_reservations(st: &State, node: &str) -> Vec<v1::Container> {
    st.containers
        .values()
        .filter(|c| c.node == node && holds_reservation(state(c)))
        .cloned()
        .collect()
}

fn node_view(st: &State, name: &str) -> Option<v1::Node> {
    let e = st.nodes.get(name)?;
    let mut n = e.record.clone();
    n.memory_reserved_bytes = st.scheduler.reserved_bytes(name);
    n.cpu_reserved_millicores = st.scheduler.reserved_cpu_millicores(name);
    Some(n)
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// Checks node liveness a few times per heartbeat interval, and at once when a NOT_READY
/// node is heard again.
pub(crate) async fn liveness_loop(cluster: Weak<Cluster>) {
    let period = match cluster.upgrade() {
        Some(c) => (c.config.heartbeat_interval / 4).max(Duration::from_millis(20)),
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let kick = match cluster.upgrade() {
        Some(c) => c.liveness_kick.clone(),
        None => return,
    };
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = kick.notified() => {}
        }
        let Some(c) = cluster.upgrade() else { return };
        if c.stepped_down() {
            return;
        }
        c.commit_blocking(|c| c.check_liveness()).await;
    }
}
