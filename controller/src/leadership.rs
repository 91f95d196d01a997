//! Which [`Cluster`] this controller serves, if any.
//!
//! With the embedded store a controller always leads: [`Leadership::single`] holds one
//! cluster for the life of the process. With etcd, [`Leadership::follow`] starts a cluster
//! (loading every record from etcd, its writes fenced) each time the election makes this
//! controller leader, and steps it down the moment it is not. Requests reach the cluster
//! through [`Leadership::cluster`]; on a follower they get UNAVAILABLE naming the leader, in
//! words and in the `hutch-leader` response header (with `hutch-not-leader`: nothing was
//! done), so clients can go there.

use std::sync::{Arc, RwLock};

use hutch_proto::v1;
use tokio::sync::watch;
use tonic::Status;

use crate::cluster::{Cluster, ClusterConfig};
use crate::leader::{Member, Role};
use crate::metrics::ClusterMetrics;
use crate::store::{EtcdConfig, EtcdStore};

use hutch_core::failover::{LEADER_HEADER, NOT_LEADER_HEADER};

/// Where the cluster's records live.
#[derive(Debug, Clone)]
pub enum StoreKind {
    /// The embedded redb file.
    Redb(String),
    /// etcd.
    Etcd(EtcdConfig),
}

/// The cluster this controller serves while it leads.
pub struct Leadership {
    current: RwLock<Option<Arc<Cluster>>>,
    role: watch::Receiver<Role>,
    me: Member,
    store: StoreKind,
    metrics: ClusterMetrics,
    /// Why the last load of the records failed, while leading without a cluster.
    load_error: std::sync::Mutex<Option<String>>,
    /// Tells the election to give the leadership up.
    pub resign: Arc<tokio::sync::Notify>,
    /// A client of etcd for status answers (made on first use).
    status_client: tokio::sync::Mutex<Option<etcd_client::Client>>,
}

impl Leadership {
    /// A controller that always leads `cluster`, kept in the embedded store at `path`.
    pub fn single(cluster: Arc<Cluster>, me: Member, path: String) -> Arc<Self> {
        let metrics = cluster.metrics.clone();
        let role = watch::channel(Role::Leader {
            fence: crate::store::Fence {
                leader_key_revision: 0,
            },
        })
        .1;
        Arc::new(Leadership {
            current: RwLock::new(Some(cluster)),
            role,
            me,
            store: StoreKind::Redb(path),
            metrics,
            load_error: Default::default(),
            resign: Default::default(),
            status_client: Default::default(),
        })
    }

    /// A controller that leads when `role` says so: each term starts a cluster on a fresh
    /// connection to etcd with the term's fence, and ends it when the role changes.
    pub fn follow(
        config: ClusterConfig,
        etcd: EtcdConfig,
        me: Member,
        role: watch::Receiver<Role>,
        resign: Arc<tokio::sync::Notify>,
    ) -> Arc<Self> {
        let me_all = Arc::new(Leadership {
            current: RwLock::new(None),
            role: role.clone(),
            me,
            store: StoreKind::Etcd(etcd.clone()),
            metrics: ClusterMetrics::default(),
            load_error: Default::default(),
            resign,
            status_client: Default::default(),
        });
        tokio::spawn(run_terms(me_all.clone(), config, etcd, role));
        me_all
    }

    /// The cluster, when this controller leads; otherwise UNAVAILABLE naming the leader.
    pub fn cluster(&self) -> Result<Arc<Cluster>, Status> {
        if let Some(c) = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            return Ok(c.clone());
        }
        Err(self.not_leading())
    }

    /// The refusal of a follower.
    fn not_leading(&self) -> Status {
        let role = self.role.borrow().clone();
        let load_error = self
            .load_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let (message, leader) = match role {
            Role::Leader { .. } => (
                match load_error {
                    Some(e) => format!(
                        "this controller ({}) leads but cannot load the cluster's records: {e}",
                        self.me.address
                    ),
                    None => format!(
                        "this controller ({}) is taking over as leader (loading the records); try again shortly",
                        self.me.address
                    ),
                },
                None,
            ),
            Role::Follower {
                leader: Some(l), ..
            } if l.id != self.me.id && l.address != self.me.address => (
                format!(
                    "this controller ({}) is a follower; the leader is {} (clients given several --controller URLs go there on their own)",
                    self.me.address, l.address
                ),
                Some(l.address),
            ),
            Role::Follower { why: Some(why), .. } => (
                format!(
                    "this controller ({}) cannot lead or reach a leader: {why}",
                    self.me.address
                ),
                None,
            ),
            _ => (
                format!(
                    "this controller ({}) is not leading and no leader is known yet (an election is under way); try again shortly",
                    self.me.address
                ),
                None,
            ),
        };
        let mut status = not_leader_status(message);
        if let Some(address) = leader.and_then(|a| a.parse().ok()) {
            status.metadata_mut().insert(LEADER_HEADER, address);
        }
        status
    }

    /// Counters kept across terms (placements, store writes, builds).
    pub fn metrics(&self) -> &ClusterMetrics {
        &self.metrics
    }

    /// This controller.
    pub fn me(&self) -> &Member {
        &self.me
    }

    /// What `GetClusterStatus` answers: every controller, the leader, the store's health.
    pub async fn status(&self) -> v1::GetClusterStatusResponse {
        let leading = self.cluster().is_ok();
        let mut out = v1::GetClusterStatusResponse {
            this_controller: self.me.id.clone(),
            ..Default::default()
        };
        let entry = |m: &Member, leader: Option<&Member>| v1::ControllerStatus {
            id: m.id.clone(),
            address: m.address.clone(),
            started_at: Some(ms_timestamp(m.started_at_ms)),
            leader: leader.is_some_and(|l| l.id == m.id),
            leader_since: leader
                .filter(|l| l.id == m.id)
                .map(|l| ms_timestamp(l.leader_since_ms)),
        };
        match &self.store {
            StoreKind::Redb(path) => {
                out.store = format!("redb {path}");
                out.store_healthy = leading;
                out.store_message = "embedded; this controller is the whole control plane".into();
                let me = Member {
                    leader_since_ms: self.me.started_at_ms,
                    ..self.me.clone()
                };
                out.controllers.push(entry(&me, Some(&me)));
            }
            StoreKind::Etcd(config) => {
                out.store = config.describe();
                let found = async {
                    let mut cached = self.status_client.lock().await;
                    let mut client = match cached.as_ref() {
                        Some(c) => c.clone(),
                        None => crate::store::etcd_store::connect(config.clone()).await?,
                    };
                    *cached = Some(client.clone());
                    drop(cached);
                    crate::leader::members(&mut client, config)
                        .await
                        .map_err(|e| e.to_string())
                };
                match tokio::time::timeout(std::time::Duration::from_secs(3), found).await {
                    Ok(Ok((members, leader))) => {
                        out.store_healthy = true;
                        out.store_message = "reachable".into();
                        for m in &members {
                            out.controllers.push(entry(m, leader.as_ref()));
                        }
                    }
                    Ok(Err(e)) => {
                        out.store_message = e;
                    }
                    Err(_) => out.store_message = "etcd did not answer within 3s".into(),
                }
                if !out.controllers.iter().any(|c| c.id == self.me.id) {
                    out.controllers.push(entry(&self.me, None));
                }
            }
        }
        out.controllers.sort_by(|a, b| a.address.cmp(&b.address));
        out
    }

    fn set_load_error(&self, e: Option<String>) {
        *self.load_error.lock().unwrap_or_else(|e| e.into_inner()) = e;
    }

    fn set(&self, cluster: Option<Arc<Cluster>>) {
        let old = std::mem::replace(
            &mut *self.current.write().unwrap_or_else(|e| e.into_inner()),
            cluster,
        );
        if let Some(old) = old {
            old.step_down();
        }
    }
}

/// UNAVAILABLE marked as a refusal by a controller that does not lead: nothing was done,
/// and clients may send the call again to the leader.
pub fn not_leader_status(message: String) -> Status {
    let mut status = Status::unavailable(message);
    status.metadata_mut().insert(
        NOT_LEADER_HEADER,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    status
}

fn ms_timestamp(ms: u64) -> prost_types::Timestamp {
    // What another controller wrote into etcd: at most the end of year 9999.
    let ms = ms.min(253_402_300_799_999);
    prost_types::Timestamp {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

/// Loads that fail in a row before this controller gives up its leadership, so another
/// (which may read etcd better) takes over: 20 x 250 ms.
const LOAD_ATTEMPTS: u32 = 20;

/// Starts a cluster for each term this controller leads and steps it down when the term
/// ends: the role changes, or the cluster stepped down on its own (a store write whose
/// outcome was lost: the records are loaded again).
async fn run_terms(
    me: Arc<Leadership>,
    config: ClusterConfig,
    etcd: EtcdConfig,
    mut role: watch::Receiver<Role>,
) {
    loop {
        let now = role.borrow_and_update().clone();
        // Never two terms' clusters at once: the old one ends before a new one loads.
        me.set(None);
        if let Role::Leader { fence } = now {
            me.set_load_error(None);
            let mut failures = 0;
            while *role.borrow() == (Role::Leader { fence }) {
                match start_term(&config, &etcd, fence, me.metrics.clone()).await {
                    Ok(cluster) if *role.borrow() == (Role::Leader { fence }) => {
                        tracing::info!(
                            revision = cluster.revision(),
                            "leading: cluster loaded from etcd"
                        );
                        me.set_load_error(None);
                        let mut over = cluster.term_over();
                        me.set(Some(cluster));
                        // The borrow `wait_for` returns must not be held below: stepping
                        // the cluster down writes the same watch.
                        let ended = async { over.wait_for(|o| *o).await.map(|_| ()) };
                        tokio::select! {
                            _ = ended => {
                                tracing::warn!("the term's cluster stepped down; loading the records again");
                                me.set(None);
                                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                                continue;
                            }
                            changed = role.changed() => {
                                if changed.is_err() {
                                    me.set(None);
                                    return;
                                }
                                break;
                            }
                        }
                    }
                    Ok(cluster) => cluster.step_down(),
                    Err(e) => {
                        failures += 1;
                        tracing::error!(failures, "leading, but cannot load the cluster: {e}");
                        me.set_load_error(Some(e));
                        if failures >= LOAD_ATTEMPTS && *role.borrow() == (Role::Leader { fence }) {
                            tracing::error!(
                                "giving up the leadership: another controller may load the records"
                            );
                            me.resign.notify_one();
                            failures = 0;
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                    }
                }
            }
            // The role changed: the top of the loop reads it.
            continue;
        }
        if role.changed().await.is_err() {
            me.set(None);
            return;
        }
    }
}

/// Loads the cluster from etcd on a fresh connection whose writes carry `fence`.
async fn start_term(
    config: &ClusterConfig,
    etcd: &EtcdConfig,
    fence: crate::store::Fence,
    metrics: ClusterMetrics,
) -> Result<Arc<Cluster>, String> {
    let (config, etcd) = (config.clone(), etcd.clone());
    // Loading every record is blocking work.
    tokio::task::spawn_blocking(move || {
        let store = EtcdStore::connect(etcd).map_err(|e| e.to_string())?;
        store.set_fence(Some(fence));
        Cluster::start_with(config, Box::new(store), metrics).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}
