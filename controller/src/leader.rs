//! Leader election among the controllers that share one etcd.
//!
//! Each controller holds an etcd lease for as long as it runs, renewed every quarter of
//! its TTL, and keeps a membership key (`PREFIX controllers/ID`, its address and start
//! time) attached to it. The leader key (`PREFIX leader`) is created, attached to the
//! lease, by the one transaction that finds it absent: that controller leads, and the
//! key's create revision is its [`Fence`] (every write it makes is conditional on it).
//! The others watch the key and campaign again the moment it is deleted: when the
//! leader's lease expires (its process died: within the TTL), or at once when it shuts
//! down (it revokes its lease).
//!
//! A leader that cannot renew its lease steps down when the TTL since its last
//! acknowledged renewal runs out, before etcd can give the key to another controller; its
//! fenced writes fail anyway from the moment the key is gone.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::store::{EtcdConfig, Fence};

/// The leader key, under the store's prefix.
pub const LEADER_KEY: &str = "leader";
/// The membership keys' prefix, under the store's prefix.
pub const MEMBERS: &str = "controllers/";
/// How long a failed lease grant waits before the next try.
const RETRY: Duration = Duration::from_millis(250);
/// How long a failed attempt to open a broken stream again waits before the next.
const REOPEN_PAUSE: Duration = Duration::from_millis(20);
/// How long a controller that resigned waits before campaigning again.
const RESIGN_PAUSE: Duration = Duration::from_secs(3);

/// One controller, as the others see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// A random id, new at every start.
    pub id: String,
    /// The URL clients and agents reach it at.
    pub address: String,
    /// When it started (Unix milliseconds).
    pub started_at_ms: u64,
    /// When it became leader (Unix milliseconds; 0 in membership keys).
    #[serde(default)]
    pub leader_since_ms: u64,
}

impl Member {
    /// This controller, reached at `address`, with a fresh id.
    pub fn this(address: String) -> Result<Member, std::io::Error> {
        Ok(Member {
            id: hutch_core::names::random_name("ctl-")?,
            address,
            started_at_ms: now_ms(),
            leader_since_ms: 0,
        })
    }
}

/// What this controller is right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Not leading; `leader` is the one that does, when known.
    Follower {
        /// The current leader.
        leader: Option<Member>,
        /// Why this controller is not leading when no leader is known (etcd's error).
        why: Option<String>,
    },
    /// Leading, with every write fenced.
    Leader {
        /// The condition of this term's writes.
        fence: Fence,
    },
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Campaigns for leadership until `stop` turns true, publishing the role on `role`.
pub struct Election {
    client: Client,
    config: EtcdConfig,
    me: Member,
    ttl: Duration,
    resign: std::sync::Arc<tokio::sync::Notify>,
}

/// Why a term (one lease) ended.
enum TermEnd {
    Stopped,
    Lost(String),
    /// Gave the leadership up (the records could not be loaded).
    Resigned,
}

impl Election {
    /// An election for `me` with leases of `ttl` (etcd may grant more: it has a minimum).
    /// Notifying `resign` gives the leadership up (the lease is revoked; this controller
    /// campaigns again after a pause, so another can win).
    pub fn new(
        client: Client,
        config: EtcdConfig,
        me: Member,
        ttl: Duration,
        resign: std::sync::Arc<tokio::sync::Notify>,
    ) -> Self {
        Election {
            client,
            config,
            me,
            ttl,
            resign,
        }
    }

    /// Runs terms (one lease each) until `stop`; revokes the lease on the way out, so a
    /// follower takes over at once.
    pub async fn run(mut self, role: watch::Sender<Role>, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            let ttl_secs = self.ttl.as_secs().max(1) as i64;
            // etcd counts the lease from its grant: so does this controller, from the ask.
            let asked = Instant::now();
            let lease = match self.client.lease_grant(ttl_secs, None).await {
                Ok(l) => l,
                Err(e) => {
                    let why = format!("{}: {e}", self.config.describe());
                    role.send_if_modified(|r| set_follower(r, None, Some(why.clone())));
                    tracing::warn!("cannot take a lease in etcd (retrying): {why}");
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY) => continue,
                        _ = stop.changed() => return,
                    }
                }
            };
            let id = lease.id();
            let granted = Duration::from_secs(lease.ttl().max(1) as u64);
            let end = self.term(id, asked, granted, &role, &mut stop).await;
            role.send_if_modified(|r| {
                set_follower(
                    r,
                    None,
                    match &end {
                        TermEnd::Lost(why) => Some(why.clone()),
                        TermEnd::Resigned => {
                            Some("gave up leading: the records could not be loaded".into())
                        }
                        TermEnd::Stopped => None,
                    },
                )
            });
            // Best effort: a revoked lease deletes the leader and membership keys now
            // instead of at expiry.
            let _ = tokio::time::timeout(granted, self.client.lease_revoke(id)).await;
            match end {
                TermEnd::Stopped => return,
                TermEnd::Lost(why) => {
                    tracing::warn!(lease = id, "this term ended ({why}); campaigning again")
                }
                TermEnd::Resigned => {
                    tracing::warn!(
                        lease = id,
                        "resigned; campaigning again in {RESIGN_PAUSE:?}"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(RESIGN_PAUSE) => {}
                        _ = stop.changed() => return,
                    }
                }
            }
        }
    }

    /// One lease: keeps it alive, campaigns, follows the leader key.
    ///
    /// A broken connection to etcd ends neither: the renewal stream and the leader key's
    /// watch are opened again (on a new connection) for as long as the lease may still be
    /// valid, so a connection etcd or the network dropped costs no failover. Only the
    /// lease running out, etcd saying it expired, or the key changing ends the term.
    async fn term(
        &mut self,
        lease: i64,
        asked: Instant,
        ttl: Duration,
        role: &watch::Sender<Role>,
        stop: &mut watch::Receiver<bool>,
    ) -> TermEnd {
        let etcd = self.config.describe();
        let lost = |e: &dyn std::fmt::Display| TermEnd::Lost(format!("{etcd}: {e}"));
        let (mut keeper, mut renewals) = match self.client.lease_keep_alive(lease).await {
            Ok(k) => k,
            Err(e) => return lost(&e),
        };
        let member_key = self.config.key(&format!("{MEMBERS}{}", self.me.id));
        let me = match serde_json::to_vec(&self.me) {
            Ok(v) => v,
            Err(e) => return lost(&e),
        };
        if let Err(e) = self
            .client
            .put(member_key, me, Some(PutOptions::new().with_lease(lease)))
            .await
        {
            return lost(&e);
        }
        let mut valid_until = asked + ttl;
        // When each renewal still unanswered was sent: an answer proves the lease alive
        // from its own request on, never from a later one.
        let mut sent = std::collections::VecDeque::new();
        // The fence of this term's leadership, while leading.
        let mut led: Option<crate::store::Fence> = None;
        let mut renew = tokio::time::interval(ttl / 4);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut leader_watch = None;
        // The revision the leader key's watch starts at: opened again there, it replays
        // what it may have missed (a few changes of one key at most).
        let mut watch_from = 0;
        let mut campaign = true;
        loop {
            if campaign {
                campaign = false;
                match self.campaign(lease).await {
                    Ok(Campaign::Won(fence)) => {
                        tracing::info!(lease, fence = fence.leader_key_revision, "leading");
                        role.send_replace(Role::Leader { fence });
                        // The leader watches its own key too: deleted or taken (an
                        // operator, a restore), it stops at once.
                        watch_from = fence.leader_key_revision + 1;
                        led = Some(fence);
                    }
                    Ok(Campaign::Lost { leader, revision }) => {
                        led = None;
                        role.send_if_modified(|r| set_follower(r, leader.clone(), None));
                        watch_from = revision + 1;
                    }
                    Err(e) => return lost(&e),
                }
                match self.watch_leader_key(watch_from).await {
                    Ok(w) => leader_watch = Some(w),
                    Err(e) => return lost(&e),
                }
            }
            let broken = tokio::select! {
                // The moment the lease may have run out, not the next tick after it.
                _ = tokio::time::sleep_until(valid_until.into()) => {
                    return TermEnd::Lost(format!(
                        "{}: the lease was not renewed within its TTL of {ttl:?}",
                        self.config.describe()
                    ));
                }
                _ = renew.tick() => {
                    sent.push_back(Instant::now());
                    match keeper.keep_alive().await {
                        Ok(()) => continue,
                        Err(e) => Broken::Renewals(e.to_string()),
                    }
                }
                renewal = renewals.message() => match renewal {
                    Ok(Some(r)) if r.ttl() > 0 => {
                        if let Some(at) = sent.pop_front() {
                            valid_until = valid_until.max(at + ttl);
                        }
                        continue;
                    }
                    Ok(Some(_)) => return TermEnd::Lost("the lease expired in etcd".into()),
                    Ok(None) => Broken::Renewals("etcd closed the stream".into()),
                    Err(e) => Broken::Renewals(e.to_string()),
                },
                event = next_watch_event(&mut leader_watch) => match (event, led) {
                    (Ok(LeaderChange::Gone), Some(_)) => {
                        return TermEnd::Lost("the leader key was deleted".into());
                    }
                    // Any put of the key is another term's (this one never writes it again).
                    (Ok(LeaderChange::Now(m, created)), Some(f)) => {
                        if created != f.leader_key_revision || m.id != self.me.id {
                            return TermEnd::Lost(format!("the leader key now names {}", m.address));
                        }
                        continue;
                    }
                    (Ok(LeaderChange::Gone), None) => {
                        campaign = true;
                        continue;
                    }
                    (Ok(LeaderChange::Now(m, _)), None) => {
                        role.send_if_modified(|r| set_follower(r, Some(m.clone()), None));
                        continue;
                    }
                    // etcd's own refusal (a compacted revision): opening it again would
                    // get the same.
                    (Err(e @ etcd_client::Error::WatchError(_)), _) => return lost(&e),
                    (Err(e), _) => Broken::LeaderWatch(e.to_string()),
                },
                _ = self.resign.notified(), if led.is_some() => {
                    return TermEnd::Resigned;
                }
                _ = stop.changed() => return TermEnd::Stopped,
            };
            tracing::warn!(
                lease,
                "{etcd}: {broken}; opening it again on a new connection"
            );
            let reopened = match broken {
                Broken::Renewals(_) => self
                    .until_lease_ends(valid_until, stop, |c| async move {
                        let mut c = c;
                        c.lease_keep_alive(lease).await
                    })
                    .await
                    .map(|(k, r)| {
                        (keeper, renewals) = (k, r);
                        // Renewals sent on the old stream are never answered.
                        sent.clear();
                    }),
                Broken::LeaderWatch(_) => {
                    let key = self.config.key(LEADER_KEY);
                    self.until_lease_ends(valid_until, stop, |c| {
                        let key = key.clone();
                        async move {
                            let mut c = c;
                            let options = WatchOptions::new().with_start_revision(watch_from);
                            c.watch(key, Some(options)).await
                        }
                    })
                    .await
                    .map(|w| leader_watch = Some(w))
                }
            };
            match reopened {
                Ok(()) => tracing::info!(lease, "{etcd}: the {} is open again", broken.stream()),
                Err(Reopen::Stopped) => return TermEnd::Stopped,
                Err(Reopen::Expired(last)) => {
                    return TermEnd::Lost(format!(
                        "{etcd}: {broken}, and it could not be opened again before the lease's TTL of {ttl:?} ran out: {last}"
                    ))
                }
            }
        }
    }

    /// Watches the leader key from `revision` on.
    async fn watch_leader_key(
        &mut self,
        revision: i64,
    ) -> Result<etcd_client::WatchStream, etcd_client::Error> {
        let key = self.config.key(LEADER_KEY);
        let options = WatchOptions::new().with_start_revision(revision);
        self.client.watch(key, Some(options)).await
    }

    /// Tries `open` (on a clone of the client: a broken connection is replaced on its next
    /// call) every [`REOPEN_PAUSE`] until it succeeds, the lease may have run out, or
    /// `stop`.
    async fn until_lease_ends<T, F, Fut>(
        &self,
        valid_until: Instant,
        stop: &mut watch::Receiver<bool>,
        mut open: F,
    ) -> Result<T, Reopen>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut last = String::from("no attempt");
        loop {
            tokio::select! {
                opened = open(self.client.clone()) => match opened {
                    Ok(t) => return Ok(t),
                    Err(e) => last = e.to_string(),
                },
                _ = tokio::time::sleep_until(valid_until.into()) => return Err(Reopen::Expired(last)),
                _ = stop.changed() => return Err(Reopen::Stopped),
            }
            tokio::select! {
                _ = tokio::time::sleep(REOPEN_PAUSE) => {}
                _ = tokio::time::sleep_until(valid_until.into()) => return Err(Reopen::Expired(last)),
                _ = stop.changed() => return Err(Reopen::Stopped),
            }
        }
    }

    /// One attempt at the leader key.
    async fn campaign(&mut self, lease: i64) -> Result<Campaign, etcd_client::Error> {
        let key = self.config.key(LEADER_KEY);
        let me = Member {
            leader_since_ms: now_ms(),
            ..self.me.clone()
        };
        let value = serde_json::to_vec(&me).unwrap_or_default();
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                value,
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.client.txn(txn).await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        if resp.succeeded() {
            return Ok(Campaign::Won(Fence {
                leader_key_revision: revision,
            }));
        }
        let leader = resp.op_responses().into_iter().find_map(|op| match op {
            etcd_client::TxnOpResponse::Get(g) => g
                .kvs()
                .first()
                .and_then(|kv| serde_json::from_slice(kv.value()).ok()),
            _ => None,
        });
        Ok(Campaign::Lost { leader, revision })
    }
}

/// A stream of a term that broke with its connection (the lease itself may be fine).
enum Broken {
    /// The lease's renewal stream, with the error.
    Renewals(String),
    /// The leader key's watch, with the error.
    LeaderWatch(String),
}

impl Broken {
    fn stream(&self) -> &'static str {
        match self {
            Broken::Renewals(_) => "lease's renewal stream",
            Broken::LeaderWatch(_) => "leader key's watch",
        }
    }
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (Broken::Renewals(e) | Broken::LeaderWatch(e)) = self;
        write!(f, "the {} broke ({e})", self.stream())
    }
}

/// Why a broken stream was not opened again.
enum Reopen {
    Stopped,
    /// The lease may have run out; the last attempt's error.
    Expired(String),
}

enum Campaign {
    Won(Fence),
    Lost {
        leader: Option<Member>,
        revision: i64,
    },
}

enum LeaderChange {
    Gone,
    /// The key names this member; it was created at this revision.
    Now(Member, i64),
}

/// The next change of the leader key (never, without a watch).
async fn next_watch_event(
    watch: &mut Option<etcd_client::WatchStream>,
) -> Result<LeaderChange, etcd_client::Error> {
    let Some(stream) = watch.as_mut() else {
        return std::future::pending().await;
    };
    loop {
        let Some(resp) = stream.message().await? else {
            return Err(etcd_client::Error::WatchError(
                "etcd ended the watch".into(),
            ));
        };
        if resp.canceled() {
            return Err(etcd_client::Error::WatchError(format!(
                "etcd cancelled the watch: {}",
                resp.cancel_reason()
            )));
        }
        // A delete anywhere in the answer: the key was gone (whatever followed).
        if resp
            .events()
            .iter()
            .any(|e| e.event_type() == etcd_client::EventType::Delete)
        {
            return Ok(LeaderChange::Gone);
        }
        let last = resp.events().iter().rev().find_map(|e| {
            let kv = e.kv()?;
            let m = serde_json::from_slice(kv.value()).ok()?;
            Some(LeaderChange::Now(m, kv.create_revision()))
        });
        if let Some(change) = last {
            return Ok(change);
        }
    }
}

/// Sets `role` to follower of `leader`; true when that changed it.
fn set_follower(role: &mut Role, leader: Option<Member>, why: Option<String>) -> bool {
    let next = Role::Follower { leader, why };
    if *role == next {
        return false;
    }
    *role = next;
    true
}

/// Runs an election for `me` on a thread and runtime of its own, so a busy controller
/// (thousands of calls on its workers) never delays its lease's renewals: with a 1 s TTL, a
/// starved renewal would be a needless failover.
pub fn spawn_election(
    config: EtcdConfig,
    me: Member,
    ttl: Duration,
    resign: std::sync::Arc<tokio::sync::Notify>,
    role: watch::Sender<Role>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("hutch-election".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let why = format!("cannot start the election's runtime: {e}");
                    role.send_replace(Role::Follower {
                        leader: None,
                        why: Some(why),
                    });
                    return;
                }
            };
            runtime.block_on(async move {
                let client = loop {
                    match crate::store::etcd_store::connect(config.clone()).await {
                        Ok(c) => break c,
                        Err(e) => {
                            let why = Some(format!("{}: {e}", config.describe()));
                            role.send_if_modified(|r| set_follower(r, None, why.clone()));
                            tokio::select! {
                                _ = tokio::time::sleep(RETRY) => {}
                                _ = stop.changed() => return,
                            }
                        }
                    }
                };
                Election::new(client, config, me, ttl, resign)
                    .run(role, stop)
                    .await
            })
        })
}

/// Every controller's membership and the leader, as etcd has them now.
pub async fn members(
    client: &mut Client,
    config: &EtcdConfig,
) -> Result<(Vec<Member>, Option<Member>), etcd_client::Error> {
    let resp = client
        .get(config.key(MEMBERS), Some(GetOptions::new().with_prefix()))
        .await?;
    let members = resp
        .kvs()
        .iter()
        .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
        .collect();
    let leader = client
        .get(config.key(LEADER_KEY), None)
        .await?
        .kvs()
        .first()
        .and_then(|kv| serde_json::from_slice(kv.value()).ok());
    Ok((members, leader))
}

/// The identity key (the cluster CA's fingerprint), under the store's prefix.
pub const IDENTITY_KEY: &str = "cluster-ca";

/// Records `identity` (the cluster CA's fingerprint, or `plaintext`) as the cluster's in
/// etcd if none is recorded yet; refuses a controller whose identity differs from the one
/// recorded, so two clusters never share one set of records by mistake.
pub async fn claim_identity(
    client: &mut Client,
    config: &EtcdConfig,
    identity: &str,
) -> Result<(), String> {
    let key = config.key(IDENTITY_KEY);
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key.clone(), identity, None)])
        .or_else([TxnOp::get(key.clone(), None)]);
    let resp = client
        .txn(txn)
        .await
        .map_err(|e| format!("{}: {e}", config.describe()))?;
    if resp.succeeded() {
        return Ok(());
    }
    let recorded = resp
        .op_responses()
        .into_iter()
        .find_map(|op| match op {
            etcd_client::TxnOpResponse::Get(g) => g
                .kvs()
                .first()
                .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
            _ => None,
        })
        .unwrap_or_default();
    if recorded == identity {
        return Ok(());
    }
    Err(format!(
        "the cluster under {key} in {} belongs to the cluster CA {recorded}, and this controller's is {identity}: every controller of one cluster must use the same CA (give them all the same --tls-ca-cert and --tls-ca-key, or copy the first controller's TLS_DIR/ca.crt and ca.key), or use another --etcd-prefix for another cluster",
        config.describe()
    ))
}
