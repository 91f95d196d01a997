//! The cluster's state and every change to it.
//!
//! One [`Cluster`] holds the container records, the nodes, the scheduler's reservations and
//! the recent watch events in memory, behind one mutex. Every change goes through
//! [`Cluster::commit`]: it numbers the changed records with the next cluster-wide revisions,
//! writes them and their watch events to the [`Store`] in one durable batch, and only then
//! applies them in memory (reservations and the pending queue follow from the records) and
//! publishes them to watchers. So nothing is acknowledged or published that a crash could
//! take back.
//!
//! The operations live in submodules by concern: [`containers`] (create, stop, kill,
//! remove, restart, pending placement), [`nodes`] (registration, heartbeats, liveness,
//! cordon, drain), [`dispatch`] (starting containers on agents, following agents' events,
//! reconciliation after a node comes back), [`rootfs`] (builds and listings across nodes).

pub mod containers;
pub use network::ClusterCidr;
pub mod dispatch;
pub(crate) mod durable;
pub mod network;
pub mod nodes;
pub mod published;
pub mod records;
pub mod rootfs;
pub mod services;
pub mod volumes;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use hutch_core::convert::timestamp;
use hutch_proto::v1::{self, ContainerState as S, WatchEventType};
use thiserror::Error;
use tokio::sync::Notify;

use crate::agents::AgentPool;
use crate::scheduler::{Scheduler, Strategy};
use crate::store::{Batch, Store, StoreError, Write};
use published::{Feed, NotKept, PublishedEvent};
use records::{claim_of, holds_reservation, ports_of, state};

/// How the cluster behaves; see the controller's configuration.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Ranking of candidate nodes.
    pub strategy: Strategy,
    /// How often agents heartbeat.
    pub heartbeat_interval: Duration,
    /// Missed heartbeats before a node is NOT_READY.
    pub not_ready_misses: u32,
    /// Silence after which a node is DOWN and its containers LOST.
    pub down_after: Duration,
    /// Memory reserved for a container without a memory limit.
    pub default_reservation_bytes: u64,
    /// Watch events kept for resuming watchers.
    pub event_keep: usize,
    /// Live events a watcher may fall behind before it is cut off.
    pub watch_buffer: usize,
    /// First delay before a restart; doubles per restart.
    pub restart_backoff: Duration,
    /// Longest delay before a restart.
    pub restart_backoff_max: Duration,
    /// Bearer token sent to agents (those started with a tokens file need one).
    pub agent_token: Option<Secret>,
    /// The controller's TLS material: agents are called over mutual TLS with it.
    pub agent_tls: Option<hutch_pki::material::TlsMaterial>,
    /// The cluster's container network; `None`: nodes get no subnet.
    pub cluster_cidr: Option<ClusterCidr>,
    /// The block services' virtual addresses come from; `None`: services get none.
    pub service_cidr: Option<hutch_core::network::Cidr>,
}

/// A value kept out of logs and debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            strategy: Strategy::Spread,
            heartbeat_interval: Duration::from_secs(1),
            not_ready_misses: 3,
            down_after: Duration::from_secs(30),
            default_reservation_bytes: 64 << 20,
            event_keep: 10_000,
            watch_buffer: 4096,
            restart_backoff: Duration::from_secs(1),
            restart_backoff_max: Duration::from_secs(60),
            agent_token: None,
            agent_tls: None,
            cluster_cidr: None,
            service_cidr: None,
        }
    }
}

/// Why an operation on the cluster failed. Each variant maps to one gRPC code at the edge.
#[derive(Debug, Error)]
pub enum ClusterError {
    /// The request is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// No such container, node or rootfs.
    #[error("{0}")]
    NotFound(String),
    /// A container with that name exists with another spec.
    #[error("{0}")]
    AlreadyExists(String),
    /// The operation does not fit the current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A node that must be asked cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// A watch asked for a revision no longer kept.
    #[error("{0}")]
    OutOfRange(String),
    /// A node answered with an error (its code is kept).
    #[error("node {node}: {status}")]
    Node {
        /// The node.
        node: String,
        /// Its answer.
        status: tonic::Status,
    },
    /// The state store failed; nothing was changed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The sync that was to make a change durable failed: the change is in memory, may or
    /// may not be on disk, and this controller stopped leading.
    #[error("the state store could not make the change durable ({0}); the change may or may not have been made, and this controller stopped leading")]
    SyncFailed(String),
    /// No randomness could be read for a fresh name.
    #[error(transparent)]
    Random(std::io::Error),
}

/// A node's start slots and the CPU count they were sized for.
pub(crate) type DispatchSlots = (u32, Arc<tokio::sync::Semaphore>);

/// What the controller keeps per node besides its record.
pub(crate) struct NodeEntry {
    pub record: v1::Node,
    /// Last heartbeat or registration (monotonic).
    pub last_seen: Instant,
    /// Registered with this controller process (heartbeats carry its session).
    pub registered: bool,
    /// The task following the agent's events.
    pub link: Option<tokio::task::AbortHandle>,
    /// A heartbeat came while the record says NOT_READY: the liveness check records the
    /// node READY again (one commit for every node heard again, not one per heartbeat).
    pub heard_again: bool,
}

/// Everything behind the mutex.
pub(crate) struct State {
    /// The container records by name, in name order (a page of a list is a range of it).
    pub containers: BTreeMap<String, v1::Container>,
    pub nodes: BTreeMap<String, NodeEntry>,
    pub scheduler: Scheduler,
    pub revision: u64,
    /// The revision counter as the store holds it (below `revision` only after a copy
    /// into the store that stopped before writing it): what the next batch expects.
    pub store_revision: u64,
    /// PENDING containers, oldest first.
    pub pending: Vec<String>,
    pub rootfs_specs: HashMap<String, v1::RootfsSpec>,
    /// Containers with a dispatch to their node in flight.
    pub inflight: HashSet<String>,
    /// Containers stopped by a drain: their restart policy treats the stop as a failure.
    pub evicted: HashSet<String>,
    /// Running containers' names and addresses (bridge), for name resolution on the nodes.
    pub names: BTreeMap<String, String>,
    /// Changes with every change of `names`.
    pub names_revision: u64,
    /// Open `ContainerLogs` streams per container: an `auto_remove` container is removed
    /// once they have read its output to the end.
    pub log_readers: HashMap<String, usize>,
    /// Containers whose logs a stream has read (and closed) since they were recorded.
    pub logs_read: HashSet<String>,
    /// Volumes being created, or created lately, by node: they count as held there before
    /// the node's heartbeats say so (see `volumes::CLAIM_TTL`).
    pub volume_claims: HashMap<String, (String, std::time::Instant)>,
    /// Services, by name.
    pub services: BTreeMap<String, v1::Service>,
    /// Each service's replicas (containers carrying its label), also of a deleted service
    /// until they are removed.
    pub replicas: HashMap<String, BTreeSet<String>>,
    /// Retired replicas with a task stopping and removing them.
    pub retiring: HashSet<String>,
    /// Each service's replicas that take connections now (running, not retired, healthy
    /// where checked), with their addresses: what its virtual address balances over.
    pub backends: BTreeMap<String, BTreeMap<String, String>>,
}

/// One change to commit.
pub(crate) enum Change {
    /// A container record, new or changed.
    Container(WatchEventType, v1::Container),
    /// A container record to forget.
    Removed(v1::Container),
    /// A node record.
    Node(v1::Node),
    /// A node to forget.
    ForgetNode(String),
    /// A rootfs spec the cluster can build.
    RootfsSpec(v1::RootfsSpec),
    /// A rootfs spec to forget.
    ForgetRootfsSpec(String),
    /// A service record, new or changed.
    Service(WatchEventType, v1::Service),
    /// A service to forget.
    RemovedService(v1::Service),
}

pub use published::LiveEvents;

/// The cluster.
pub struct Cluster {
    pub(crate) config: ClusterConfig,
    store: Box<dyn Store>,
    state: Mutex<State>,
    /// Changes with every start of the controller; heartbeats must carry it.
    pub(crate) session: String,
    /// The watch events, published once durable (a lock of its own, taken after the state
    /// lock when both are held).
    feed: Mutex<Feed>,
    /// Wakes the pending-placement loop.
    pub(crate) kick: Arc<Notify>,
    /// Wakes the liveness check before its next tick (a NOT_READY node was heard again).
    pub(crate) liveness_kick: Arc<Notify>,
    /// Wakes the services' reconciler.
    pub(crate) service_kick: Arc<Notify>,
    /// Notified when a `ContainerLogs` stream closes (an `auto_remove` container waits for
    /// its readers).
    pub(crate) log_reader_closed: Notify,
    pub(crate) agents: AgentPool,
    /// Starts in flight per node, with the CPU count they were made for (see
    /// `dispatch::start_slots`).
    pub(crate) dispatch_slots: std::sync::Mutex<HashMap<String, DispatchSlots>>,
    /// What it counts for its metrics.
    pub metrics: crate::metrics::ClusterMetrics,
    /// Turns true when this controller stops leading: the cluster then changes nothing and
    /// its streams end.
    term_over: tokio::sync::watch::Sender<bool>,
    /// Which staged changes are durable (group commit).
    group: durable::GroupSync,
}

impl Cluster {
    /// Loads the state from `store` and starts the background loops (pending placement,
    /// node liveness). Nodes start NOT_READY until they register with this process.
    pub fn start(
        config: ClusterConfig,
        store: Box<dyn Store>,
    ) -> Result<Arc<Cluster>, ClusterError> {
        Self::start_with(config, store, Default::default())
    }

    /// [`Cluster::start`], counting into `metrics` (kept across leadership terms).
    pub fn start_with(
        config: ClusterConfig,
        store: Box<dyn Store>,
        metrics: crate::metrics::ClusterMetrics,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let snap = store.load()?;
        // Never below a revision a record or event already carries (a copy into the store
        // that stopped before its last batch wrote the counter).
        let revision = snap
            .containers
            .iter()
            .map(|c| c.revision)
            .chain(snap.events.iter().map(|e| e.revision))
            .fold(snap.revision, u64::max);
        let mut st = State {
            containers: BTreeMap::new(),
            nodes: BTreeMap::new(),
            scheduler: Scheduler::new(config.strategy),
            revision,
            store_revision: snap.revision,
            pending: Vec::new(),
            rootfs_specs: snap
                .rootfs_specs
                .into_iter()
                .map(|r| (r.name.clone(), r))
                .collect(),
            inflight: HashSet::new(),
            evicted: HashSet::new(),
            names: BTreeMap::new(),
            names_revision: 0,
            log_readers: HashMap::new(),
            logs_read: HashSet::new(),
            volume_claims: HashMap::new(),
            services: BTreeMap::new(),
            replicas: HashMap::new(),
            retiring: HashSet::new(),
            backends: BTreeMap::new(),
        };
        for svc in snap.services {
            Self::account_service(&mut st, None, Some(&svc));
            st.services.insert(svc.name.clone(), svc);
        }
        let now = Instant::now();
        for mut node in snap.nodes {
            if node.state != v1::NodeState::Down as i32 {
                node.state = v1::NodeState::NotReady as i32;
                node.message = "controller restarted; waiting for the node to register".into();
            }
            st.scheduler
                .set_node(&node.name, nodes::capacity_of(&node, false));
            st.nodes.insert(
                node.name.clone(),
                NodeEntry {
                    record: node,
                    last_seen: now,
                    registered: false,
                    link: None,
                    heard_again: false,
                },
            );
        }
        let mut created: Vec<&v1::Container> = snap.containers.iter().collect();
        created.sort_by_key(|c| (c.created_at.map(|t| (t.seconds, t.nanos)), c.name.clone()));
        for c in created {
            Self::account(&mut st, None, Some(c));
        }
        st.containers = snap
            .containers
            .into_iter()
            .map(|c| (c.name.clone(), c))
            .collect();
        let feed = Feed::new(
            snap.events,
            revision,
            config.event_keep,
            config.watch_buffer,
        );
        let agents = AgentPool::new(
            config.agent_token.as_ref().map(|s| s.0.as_str()),
            config.agent_tls.clone(),
        )
        .map_err(ClusterError::InvalidArgument)?;
        let cluster = Arc::new(Cluster {
            config,
            store,
            state: Mutex::new(st),
            session: new_session()?,
            feed: Mutex::new(feed),
            kick: Arc::new(Notify::new()),
            liveness_kick: Arc::new(Notify::new()),
            service_kick: Arc::new(Notify::new()),
            log_reader_closed: Notify::new(),
            agents,
            dispatch_slots: std::sync::Mutex::default(),
            metrics,
            term_over: tokio::sync::watch::channel(false).0,
            group: durable::GroupSync::default(),
        });
        tokio::spawn(containers::placement_loop(Arc::downgrade(&cluster)));
        tokio::spawn(nodes::liveness_loop(Arc::downgrade(&cluster)));
        tokio::spawn(services::reconcile::service_loop(Arc::downgrade(&cluster)));
        cluster.kick.notify_one();
        Ok(cluster)
    }

    /// Stops acting: every later commit fails, the background loops end, the links to the
    /// agents are cut and open streams end (their clients resume on the new leader).
    /// Called when this controller loses its leadership; the records stay in the store.
    pub fn step_down(&self) {
        let mut st = self.lock();
        self.step_down_locked(&mut st);
    }

    /// [`Cluster::step_down`] under the state lock.
    fn step_down_locked(&self, st: &mut State) {
        if self.term_over.send_replace(true) {
            return;
        }
        for entry in st.nodes.values_mut() {
            if let Some(link) = entry.link.take() {
                link.abort();
            }
        }
        self.kick.notify_one();
        tracing::info!("stepped down: this controller no longer acts on the cluster");
    }

    /// True once [`Cluster::step_down`] was called.
    pub fn stepped_down(&self) -> bool {
        *self.term_over.borrow()
    }

    /// Turns true when the cluster steps down.
    pub fn term_over(&self) -> tokio::sync::watch::Receiver<bool> {
        self.term_over.subscribe()
    }

    /// The watch events' lock (after the state lock when both are taken).
    fn feed(&self) -> MutexGuard<'_, Feed> {
        // Publication changes the feed field by field in an order that stays consistent.
        self.feed.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (commit applies after the
        // store write, field by field); keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps the scheduler's reservations and the pending queue in step with a record
    /// changing from `old` to `new`.
    fn account(st: &mut State, old: Option<&v1::Container>, new: Option<&v1::Container>) {
        if let Some(o) = old {
            if holds_reservation(state(o)) && !o.node.is_empty() {
                let ports = ports_of(o);
                st.scheduler.release(&o.node, &claim_of(o, &ports));
            }
        }
        match new {
            Some(n) if holds_reservation(state(n)) && !n.node.is_empty() => {
                let ports = ports_of(n);
                st.scheduler.reserve(&n.node, &claim_of(n, &ports));
            }
            _ => {}
        }
        let name = new.or(old).map(|c| c.name.clone()).unwrap_or_default();
        let address = new
            .filter(|n| state(n) == S::Running && network::resolvable_name(&n.name))
            .and_then(|n| n.network.as_ref())
            .map(|n| n.ip.clone())
            .filter(|ip| !ip.is_empty());
        let changed = match address {
            Some(ip) => st.names.insert(name.clone(), ip.clone()).as_ref() != Some(&ip),
            None => st.names.remove(&name).is_some(),
        };
        if changed {
            st.names_revision += 1;
        }
        Self::account_replica(st, old, new);
        let pending_now = new.is_some_and(|n| state(n) == S::Pending);
        let was_pending = st.pending.contains(&name);
        if pending_now && !was_pending {
            st.pending.push(name);
        } else if !pending_now && was_pending {
            st.pending.retain(|p| p != &name);
        }
    }

    /// Keeps the services' replica index and backends in step with a container record
    /// changing from `old` to `new`.
    fn account_replica(st: &mut State, old: Option<&v1::Container>, new: Option<&v1::Container>) {
        let Some((service, _)) = new.or(old).and_then(services::spec::replica_of) else {
            return;
        };
        let service = service.to_string();
        let name = new.or(old).map(|c| c.name.clone()).unwrap_or_default();
        match new {
            Some(_) => {
                st.replicas
                    .entry(service.clone())
                    .or_default()
                    .insert(name.clone());
            }
            None => {
                if let Some(set) = st.replicas.get_mut(&service) {
                    set.remove(&name);
                    if set.is_empty() {
                        st.replicas.remove(&service);
                    }
                }
            }
        }
        let address = new.filter(|n| takes_connections(n)).and_then(|n| {
            n.network
                .as_ref()
                .map(|net| net.ip.clone())
                .filter(|ip| !ip.is_empty())
        });
        let backends = st.backends.entry(service.clone()).or_default();
        let changed = match address {
            Some(ip) => backends.insert(name, ip.clone()).as_ref() != Some(&ip),
            None => backends.remove(&name).is_some(),
        };
        if backends.is_empty() {
            st.backends.remove(&service);
        }
        if changed {
            st.names_revision += 1;
        }
    }

    /// Keeps the name table in step with a service changing from `old` to `new`: its name
    /// resolves to its virtual address.
    fn account_service(st: &mut State, old: Option<&v1::Service>, new: Option<&v1::Service>) {
        if let Some(o) = old.filter(|o| !o.address.is_empty()) {
            if new.is_none_or(|n| n.address != o.address) && st.names.remove(&o.name).is_some() {
                st.names_revision += 1;
            }
        }
        if let Some(n) = new.filter(|n| !n.address.is_empty()) {
            if st.names.insert(n.name.clone(), n.address.clone()).as_ref() != Some(&n.address) {
                st.names_revision += 1;
            }
        }
    }

    /// Writes `changes` in one batch, applies them in memory and publishes them once
    /// durable. Inside [`Cluster::commit_blocking`], while other calls may commit too, the
    /// batch is staged and the caller answered after the sync that makes it durable, which
    /// runs without the state lock and is shared with other commits (see [`durable`]);
    /// otherwise the batch is written durably here, under the lock. Returns the container
    /// records as committed (with their revisions).
    pub(crate) fn commit(
        &self,
        st: &mut State,
        changes: Vec<Change>,
    ) -> Result<Vec<v1::Container>, ClusterError> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        if self.stepped_down() {
            return Err(StoreError::NotLeader(
                "this controller stopped leading; nothing was changed".into(),
            )
            .into());
        }
        let mut batch = Batch::default();
        let mut revision = st.revision;
        let mut events = Vec::new();
        let mut records = Vec::new();
        let mut services = Vec::new();
        let now = Some(timestamp(SystemTime::now()));
        for change in changes {
            match change {
                Change::Container(kind, mut c) => {
                    revision += 1;
                    c.revision = revision;
                    batch.writes.push(Write::PutContainer(c.clone()));
                    events.push(watch_event(revision, now, kind, &c));
                    records.push((kind, c));
                }
                Change::Removed(mut c) => {
                    revision += 1;
                    c.revision = revision;
                    batch.writes.push(Write::DeleteContainer(c.name.clone()));
                    events.push(watch_event(revision, now, WatchEventType::Removed, &c));
                    records.push((WatchEventType::Removed, c));
                }
                Change::Node(n) => batch.writes.push(Write::PutNode(n)),
                Change::ForgetNode(n) => batch.writes.push(Write::DeleteNode(n)),
                Change::RootfsSpec(r) => batch.writes.push(Write::PutRootfsSpec(r)),
                Change::ForgetRootfsSpec(n) => batch.writes.push(Write::DeleteRootfsSpec(n)),
                Change::Service(kind, mut svc) => {
                    revision += 1;
                    svc.revision = revision;
                    batch.writes.push(Write::PutService(Box::new(svc.clone())));
                    events.push(service_event(revision, now, kind, &svc));
                    services.push((kind, svc));
                }
                Change::RemovedService(mut svc) => {
                    revision += 1;
                    svc.revision = revision;
                    batch.writes.push(Write::DeleteService(svc.name.clone()));
                    events.push(service_event(revision, now, WatchEventType::Removed, &svc));
                    services.push((WatchEventType::Removed, svc));
                }
            }
        }
        for e in &events {
            batch.writes.push(Write::Event(e.clone()));
        }
        batch.revision = revision;
        batch.expect_revision = Some(st.store_revision);
        let kept = self.feed().held() + events.len();
        if kept > self.config.event_keep {
            let first_kept = revision + 1 - self.config.event_keep.min(kept) as u64;
            batch.drop_events_below = first_kept;
        }
        let started = std::time::Instant::now();
        // Staged for a shared sync when other changes may share it; else durable at once.
        let staging = durable::may_defer() && !self.group.alone();
        // A durable write here also writes what others staged before (and loses it if it
        // fails).
        let others_staged = !staging && self.group.waiting();
        let written = match staging {
            true => self.store.stage(&batch),
            false => self.store.commit(&batch),
        };
        if let Err(e) = written {
            let view_in_doubt = matches!(e, StoreError::Unknown { .. } | StoreError::NotLeader(_));
            if others_staged || self.store.broken().is_some() {
                // Others' staged changes went with it, or the store takes no more writes:
                // memory is ahead of the disk for good.
                tracing::error!("state store write failed, ending this term: {e}");
                self.group.failed(e.to_string(), false);
                self.step_down_locked(st);
                return Err(match others_staged {
                    true => ClusterError::SyncFailed(e.to_string()),
                    false => e.into(),
                });
            }
            if view_in_doubt && self.store.outcome_may_be_unknown() {
                // The batch may have been applied (etcd's answer was lost) or refused as
                // made from a stale view: this view cannot be trusted to write again. The
                // term ends; a leader loads the records afresh.
                tracing::warn!("store write failed, ending this term to reload: {e}");
                self.step_down_locked(st);
            }
            return Err(e.into());
        }
        self.metrics
            .store_writes
            .observe(started.elapsed().as_secs_f64());
        // Staged: apply now (the next change is placed against it), publish once durable.
        st.revision = revision;
        if revision > 0 {
            st.store_revision = revision;
        }
        for w in batch.writes {
            match w {
                Write::PutNode(n) => {
                    if let Some(entry) = st.nodes.get_mut(&n.name) {
                        entry.record = n;
                    }
                }
                Write::DeleteNode(n) => {
                    if let Some(link) = st.nodes.remove(&n).and_then(|e| e.link) {
                        link.abort();
                    }
                    st.scheduler.remove_node(&n);
                }
                Write::PutRootfsSpec(r) => {
                    st.rootfs_specs.insert(r.name.clone(), r);
                }
                Write::DeleteRootfsSpec(n) => {
                    st.rootfs_specs.remove(&n);
                }
                _ => {}
            }
        }
        let touches_services = !services.is_empty()
            || records
                .iter()
                .any(|(_, c)| services::spec::replica_of(c).is_some());
        for (kind, svc) in services {
            let old = st.services.get(&svc.name).cloned();
            if kind == WatchEventType::Removed {
                Self::account_service(st, old.as_ref(), None);
                st.services.remove(&svc.name);
            } else {
                Self::account_service(st, old.as_ref(), Some(&svc));
                st.services.insert(svc.name.clone(), svc);
            }
        }
        let mut committed = Vec::new();
        for (kind, c) in records {
            let old = st.containers.get(&c.name).cloned();
            if kind == WatchEventType::Removed {
                Self::account(st, old.as_ref(), None);
                st.containers.remove(&c.name);
                st.evicted.remove(&c.name);
                st.logs_read.remove(&c.name);
            } else {
                Self::account(st, old.as_ref(), Some(&c));
                st.containers.insert(c.name.clone(), c.clone());
            }
            committed.push(c);
        }
        let seq = self.group.staged();
        let mut feed = self.feed();
        feed.stage(seq, events);
        if staging {
            durable::deferred(seq);
        } else {
            // Durable already, and with it everything staged before.
            feed.publish_through(seq);
            self.group.synced(seq, false);
        }
        drop(feed);
        if touches_services {
            self.service_kick.notify_one();
        }
        Ok(committed)
    }

    /// Publishes the events of the changes up to `seq` once the sync it led covering them
    /// is done; ends the term when it failed.
    fn after_sync(&self, seq: u64, synced: Result<(), StoreError>) {
        if let Err(e) = synced {
            self.sync_failed(e.to_string());
            return;
        }
        self.feed().publish_through(seq);
        self.group.synced(seq, true);
    }

    /// Ends the term after the sync this caller led failed: what is staged and applied in
    /// memory may never reach the disk, so this view cannot be trusted (a leader loads the
    /// records afresh; a controller on the embedded store exits to be started again).
    fn sync_failed(&self, why: String) {
        tracing::error!("state store sync failed, ending this term: {why}");
        self.group.failed(why, true);
        self.step_down();
    }

    /// The store's sync, timed into the metrics.
    fn timed_sync(&self) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let synced = self.store.sync();
        self.metrics
            .store_writes
            .observe(started.elapsed().as_secs_f64());
        synced
    }

    /// Runs one sync for every change staged so far, unless one is under way or nothing
    /// waits for one (a blocking call: the store's sync waits for the disk).
    fn lead_sync(&self) {
        /// Ends the term if the sync panics: no sync would otherwise be claimed again, and
        /// every waiter would wait for ever.
        struct Leading<'a>(Option<&'a Cluster>);
        impl Drop for Leading<'_> {
            fn drop(&mut self) {
                if let Some(cluster) = self.0 {
                    cluster.sync_failed("the sync panicked".into());
                }
            }
        }
        if let Some(target) = self.group.claim() {
            let mut leading = Leading(Some(self));
            let synced = self.timed_sync();
            leading.0 = None;
            self.after_sync(target, synced);
        }
    }

    /// Waits until change `seq` is durable, running the sync itself when none is under way.
    async fn settle(self: &Arc<Self>, seq: u64) -> Result<(), ClusterError> {
        loop {
            match self.group.wait(seq).await {
                Ok(true) => return Ok(()),
                Ok(false) => {
                    let me = self.clone();
                    rethrow(tokio::task::spawn_blocking(move || me.lead_sync()).await);
                }
                Err(message) => return Err(ClusterError::SyncFailed(message)),
            }
        }
    }

    /// [`Cluster::settle`] on a blocking thread of the runtime (a commit's own, which then
    /// leads the next sync itself instead of handing it to another thread).
    fn settle_blocking(&self, seq: u64) -> Result<(), ClusterError> {
        let runtime = tokio::runtime::Handle::current();
        loop {
            match runtime.block_on(self.group.wait(seq)) {
                Ok(true) => return Ok(()),
                Ok(false) => self.lead_sync(),
                Err(message) => return Err(ClusterError::SyncFailed(message)),
            }
        }
    }

    /// Waits until every change made so far is durable: what a reader does before it
    /// answers with what it read, and a dispatch before it starts a container, so that no
    /// one acts on a change a crash could take back.
    pub async fn settled(self: &Arc<Self>) -> Result<(), ClusterError> {
        self.settle(self.group.last_staged()).await
    }

    /// Runs `f`, which commits under the lock, on a blocking thread, then waits until its
    /// changes are durable (one sync shared with every commit staged meanwhile, made
    /// without the state lock; see [`durable`]) before handing back what it returned. When
    /// they cannot be made durable, a `Result` becomes the error.
    pub(crate) async fn commit_blocking<T: durable::Outcome + Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Arc<Cluster>) -> T + Send + 'static,
    ) -> T {
        self.run_committing(f, false).await
    }

    /// [`Cluster::commit_blocking`] for a call whose answer goes to a client: one that
    /// changed nothing waits too while changes others staged are not yet durable, as its
    /// answer may rest on them (ALREADY_EXISTS for a name whose create is staged). The
    /// cluster's own loops (an agent's events, placement, liveness) answer no one and do
    /// not wait for others.
    pub(crate) async fn commit_blocking_answer<T: durable::Outcome + Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Arc<Cluster>) -> T + Send + 'static,
    ) -> T {
        self.run_committing(f, true).await
    }

    /// Runs `f` on a blocking thread and waits for its changes (and with `seen`, for what
    /// others staged before it ended) to be durable.
    async fn run_committing<T: durable::Outcome + Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Arc<Cluster>) -> T + Send + 'static,
        seen: bool,
    ) -> T {
        let _counted = self.group.committing();
        let me = self.clone();
        let task = tokio::task::spawn_blocking(move || {
            if me.group.few() {
                // Nothing to share a sync with: wait for the one under way, then write at
                // once (see `durable::GROUP_MIN`).
                tokio::runtime::Handle::current().block_on(me.group.idle());
            }
            let (value, staged) = durable::deferring(|| f(&me));
            let wait_for = match staged {
                None if seen && me.group.waiting() => Some(me.group.last_staged()),
                own => own,
            };
            match wait_for.map(|seq| me.settle_blocking(seq)) {
                Some(Err(e)) => value.unless_lost(e),
                _ => value,
            }
        });
        let outcome = task.await;
        if outcome.is_err() {
            // `f` panicked, maybe after staging a change: it is synced all the same (its
            // events published) rather than left for the next commit.
            let _ = self.settled().await;
        }
        rethrow(outcome)
    }

    /// The record of `name`.
    pub fn get(&self, name: &str) -> Result<v1::Container, ClusterError> {
        self.lock()
            .containers
            .get(name)
            .cloned()
            .ok_or_else(|| not_found(name))
    }

    /// Records matching the filters, by name, and the revision they are current at.
    pub fn list(
        &self,
        node: &str,
        want: Option<S>,
        labels: &HashMap<String, String>,
    ) -> (Vec<v1::Container>, u64) {
        let st = self.lock();
        let all = st.containers.values();
        let out: Vec<v1::Container> = matching(all, node, want, labels).cloned().collect();
        (out, st.revision)
    }

    /// One page of the records matching the filters, and the revision they are current at.
    /// The page is read off the name-ordered records from where the token says: a page of
    /// 1,000 among 100,000 records reads little more than its own 1,000 when no filter
    /// skips records.
    pub fn list_page(
        &self,
        node: &str,
        want: Option<S>,
        labels: &HashMap<String, String>,
        page_size: u32,
        page_token: &str,
    ) -> Result<(hutch_core::paging::Page<v1::Container>, u64), ClusterError> {
        let after = hutch_core::paging::resume_after(page_token)
            .map_err(|e| ClusterError::InvalidArgument(e.to_string()))?;
        let st = self.lock();
        let rest = match &after {
            Some(a) => st
                .containers
                .range::<str, _>((Bound::Excluded(a.as_str()), Bound::Unbounded)),
            None => st.containers.range::<str, _>(..),
        };
        let named = matching(rest.map(|(_, c)| c), node, want, labels).map(|c| (&c.name, c));
        let page = hutch_core::paging::page_in_order(named, page_size, |c| {
            prost::Message::encoded_len(*c)
        });
        let page = hutch_core::paging::Page {
            items: page.items.into_iter().cloned().collect(),
            next_page_token: page.next_page_token,
        };
        Ok((page, st.revision))
    }

    /// Every change after `since` (kept ones), then a receiver of live ones, without gap
    /// or duplicate: both are taken under the lock that syncs publish under.
    pub fn watch(
        &self,
        since: u64,
    ) -> Result<(Vec<Arc<PublishedEvent>>, LiveEvents), ClusterError> {
        self.feed().watch(since).map_err(|e| match e {
            NotKept::Compacted { oldest, published } => ClusterError::OutOfRange(format!(
                "revision {since} is no longer kept (the oldest kept is {oldest}); list the containers to resync, then watch from revision {published}"
            )),
            NotKept::Future { published } => ClusterError::OutOfRange(format!(
                "revision {since} is in the future: the cluster is at revision {published}"
            )),
        })
    }

    /// Watch events kept for watchers resuming from a revision.
    pub fn kept_events(&self) -> usize {
        self.feed().kept()
    }

    /// The current revision.
    pub fn revision(&self) -> u64 {
        self.lock().revision
    }
}

/// The records of `records` on `node` (any when empty), in state `want` (any when `None`)
/// and carrying every label of `labels`, in the order of `records`.
fn matching<'a>(
    records: impl Iterator<Item = &'a v1::Container> + 'a,
    node: &'a str,
    want: Option<S>,
    labels: &'a HashMap<String, String>,
) -> impl Iterator<Item = &'a v1::Container> + 'a {
    records
        .filter(move |c| node.is_empty() || c.node == node)
        .filter(move |c| want.is_none_or(|w| state(c) == w))
        .filter(move |c| {
            let have = c.spec.as_ref().map(|s| &s.labels);
            labels
                .iter()
                .all(|(k, v)| have.and_then(|h| h.get(k)) == Some(v))
        })
}

fn watch_event(
    revision: u64,
    time: Option<prost_types::Timestamp>,
    kind: WatchEventType,
    c: &v1::Container,
) -> v1::WatchEvent {
    v1::WatchEvent {
        revision,
        time,
        r#type: kind as i32,
        container: Some(c.clone()),
        service: None,
    }
}

fn service_event(
    revision: u64,
    time: Option<prost_types::Timestamp>,
    kind: WatchEventType,
    svc: &v1::Service,
) -> v1::WatchEvent {
    v1::WatchEvent {
        revision,
        time,
        r#type: kind as i32,
        container: None,
        service: Some(Box::new(svc.clone())),
    }
}

/// Whether a replica takes connections to its service's address: running, not retired,
/// and healthy where it has a health check.
fn takes_connections(c: &v1::Container) -> bool {
    let checked = c.spec.as_ref().is_some_and(|s| s.health.is_some());
    state(c) == S::Running
        && !c.stop_requested
        && (!checked
            || c.health
                .as_ref()
                .is_some_and(|h| h.state == v1::HealthState::Healthy as i32))
}

/// `NotFound` for a container name.
/// What a blocking task returned, or its panic carried on in the caller.
fn rethrow<T>(joined: Result<T, tokio::task::JoinError>) -> T {
    match joined {
        Ok(value) => value,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Only a runtime shutting down cancels a blocking task before it runs.
        Err(e) => panic!("a blocking task of the controller did not run: {e}"),
    }
}

pub(crate) fn not_found(name: &str) -> ClusterError {
    ClusterError::NotFound(format!("container '{name}' not found"))
}

/// A random session id.
fn new_session() -> Result<String, ClusterError> {
    hutch_core::names::random_name("s-").map_err(ClusterError::Random)
}
