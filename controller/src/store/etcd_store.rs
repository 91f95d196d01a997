//! The distributed [`Store`]: the cluster's records in etcd, under one key prefix.
//!
//! Layout (PREFIX defaults to `/hutch/`): `PREFIX containers/NAME`, `nodes/NAME`,
//! `rootfs/NAME` and `events/REVISION` (zero-padded to 20 digits, so keys sort by
//! revision) hold prost-encoded records; `revision` holds the cluster revision in decimal.
//! [`crate::leader`] keeps the leader key and the controllers' membership under the same
//! prefix.
//!
//! A [`Batch`] is one etcd transaction, so it is applied atomically, and etcd answers only
//! after its quorum committed it. A store given a [`Fence`] adds one condition to every
//! transaction: the leader key still holds this controller's election. A controller that
//! lost its lease (paused, partitioned) then cannot overwrite its successor's work: its
//! commit fails with [`StoreError::NotLeader`] and nothing is written.
//!
//! The [`Store`] trait is synchronous (the controller commits from blocking threads under
//! its state lock), while etcd's client is async: the store runs the client on a runtime
//! of its own and waits for each answer, so it can be called from any thread.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Identity,
    TlsOptions, Txn, TxnOp,
};
use prost::Message;

use super::{Batch, Snapshot, Store, StoreError, Write};

/// Keys read per request while loading (each answer stays far below gRPC's size limit).
const LOAD_PAGE: i64 = 500;
/// How long one etcd request may take before the store reports etcd unavailable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an etcd connection is pinged (HTTP/2) when nothing arrives on it: more than
/// etcd's minimum between pings (`--grpc-keepalive-min-time`, 5 s by default).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(6);

/// Where etcd is and how to reach it.
#[derive(Debug, Clone, Default)]
pub struct EtcdConfig {
    /// Client URLs of etcd members, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Key prefix of this cluster's records (ends with `/`).
    pub prefix: String,
    /// CA certificate (PEM) that signed etcd's server certificates.
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's client-certificate authentication.
    pub cert: Option<PathBuf>,
    /// Key (PEM) of `cert`.
    pub key: Option<PathBuf>,
}

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "/hutch/";

impl EtcdConfig {
    /// Endpoints as one string, for messages.
    pub fn describe(&self) -> String {
        format!("etcd {}", self.endpoints.join(","))
    }

    /// The full key of `rest` under the prefix.
    pub fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }
}

/// The condition every write of a leader is made under: the leader key still has the
/// create revision it got when this controller won the election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    /// The leader key's create revision at the win.
    pub leader_key_revision: i64,
}

/// The cluster's state in etcd.
pub struct EtcdStore {
    runtime: Option<tokio::runtime::Runtime>,
    client: Client,
    config: EtcdConfig,
    fence: Mutex<Option<Fence>>,
}

impl EtcdStore {
    /// Connects to etcd and checks that it answers.
    pub fn connect(config: EtcdConfig) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("hutch-etcd")
            .enable_all()
            .build()
            .map_err(|e| backend(&config, format!("cannot start its runtime: {e}")))?;
        let client = run_on(&runtime, connect(config.clone()))?
            .map_err(|e| backend(&config, e.to_string()))?;
        let store = EtcdStore {
            runtime: Some(runtime),
            client,
            config,
            fence: Mutex::new(None),
        };
        // An unreachable etcd is an error now, not at the first write.
        store.block_on(|mut c, _| async move { c.status().await.map(drop) })?;
        Ok(store)
    }

    /// Where etcd is.
    pub fn config(&self) -> &EtcdConfig {
        &self.config
    }

    /// Makes every later commit conditional on `fence` (`None`: unconditional).
    pub fn set_fence(&self, fence: Option<Fence>) {
        *self.fence.lock().unwrap_or_else(|e| e.into_inner()) = fence;
    }

    /// Runs `f` with a client on the store's runtime and waits for it (at most
    /// [`REQUEST_TIMEOUT`]).
    fn block_on<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Client, EtcdConfig) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let Some(runtime) = self.runtime.as_ref() else {
            return Err(backend(&self.config, "the store is closed".into()));
        };
        let fut = f(self.client.clone(), self.config.clone());
        match run_on(runtime, async move {
            tokio::time::timeout(REQUEST_TIMEOUT, fut).await
        })? {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(backend(&self.config, e.to_string())),
            Err(_) => Err(backend(
                &self.config,
                format!("no answer within {REQUEST_TIMEOUT:?}"),
            )),
        }
    }
}

impl EtcdStore {
    /// Every key under `PREFIX rest` (the part after it) and its value.
    pub fn read_prefix(&self, rest: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let rest = rest.to_string();
        self.block_on(move |c, cfg| async move { read_table(c, cfg, &rest, 0).await })
            .map(|(rows, _)| rows)
    }

    /// Writes `PREFIX key`, unconditionally (not a record of the cluster: no fence).
    pub fn put_raw(&self, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        let key = self.config.key(key);
        self.block_on(move |mut c, _| async move { c.put(key, value, None).await.map(drop) })
    }

    /// Deletes `PREFIX key`.
    pub fn delete_raw(&self, key: &str) -> Result<(), StoreError> {
        let key = self.config.key(key);
        self.block_on(move |mut c, _| async move { c.delete(key, None).await.map(drop) })
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which async code must not do: let it end on its own.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Connects a client with `config`'s endpoints and TLS files.
pub async fn connect(config: EtcdConfig) -> Result<Client, String> {
    if config.endpoints.is_empty() {
        return Err("no etcd endpoints given".into());
    }
    let mut options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        // A ping at most every 6 s: etcd answers pings more frequent than its
        // --grpc-keepalive-min-time (5 s by default) on a connection it sends nothing on (an
        // idle watch's) with GOAWAY "too_many_pings" at the third, and closes it.
        .with_keep_alive(KEEPALIVE_INTERVAL, Duration::from_secs(3))
        .with_require_leader(true);
    if config.ca.is_some() || config.cert.is_some() {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &config.ca {
            let pem = std::fs::read(ca).map_err(|e| format!("--etcd-ca {}: {e}", ca.display()))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        if let (Some(cert), Some(key)) = (&config.cert, &config.key) {
            let cert_pem =
                std::fs::read(cert).map_err(|e| format!("--etcd-cert {}: {e}", cert.display()))?;
            let key_pem =
                std::fs::read(key).map_err(|e| format!("--etcd-key {}: {e}", key.display()))?;
            tls = tls.identity(Identity::from_pem(cert_pem, key_pem));
        }
        options = options.with_tls(tls);
    }
    Client::connect(&config.endpoints, Some(options))
        .await
        .map_err(|e| e.to_string())
}

/// Runs `fut` on `runtime` and waits for it from this thread, whatever runtime (if any)
/// the thread belongs to.
fn run_on<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, StoreError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().map_err(|_| StoreError::Backend {
        path: "etcd".into(),
        message: "the store's runtime stopped".into(),
    })
}

fn backend(config: &EtcdConfig, message: String) -> StoreError {
    StoreError::Backend {
        path: config.describe(),
        message,
    }
}

/// Table names and their key prefixes.
const CONTAINERS: &str = "containers/";
const NODES: &str = "nodes/";
const ROOTFS: &str = "rootfs/";
const SERVICES: &str = "services/";
const EVENTS: &str = "events/";
const REVISION: &str = "revision";

/// The key of the event at `revision`.
fn event_key(config: &EtcdConfig, revision: u64) -> String {
    config.key(&format!("{EVENTS}{revision:020}"))
}

/// The end of a prefix range: the prefix with its last byte incremented.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    // Prefixes here end in '/', never 0xff.
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// Every key of `table` and its value, read at etcd revision `at` (0: now), page by page.
/// Returns the pairs and the etcd revision they were read at.
async fn read_table(
    mut client: Client,
    config: EtcdConfig,
    table: &str,
    at: i64,
) -> Result<(Vec<(String, Vec<u8>)>, i64), etcd_client::Error> {
    let prefix = config.key(table);
    let end = prefix_end(&prefix);
    let mut from = prefix.clone().into_bytes();
    let mut out = Vec::new();
    let mut revision = at;
    loop {
        let mut options = GetOptions::new()
            .with_range(end.clone())
            .with_limit(LOAD_PAGE);
        if revision > 0 {
            options = options.with_revision(revision);
        }
        let resp = client.get(from.clone(), Some(options)).await?;
        if revision == 0 {
            revision = resp.header().map_or(0, |h| h.revision());
        }
        let more = resp.more();
        let Some(last) = resp.kvs().last().map(|kv| kv.key().to_vec()) else {
            break;
        };
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(&kv.key()[prefix.len()..]).into_owned();
            out.push((key, kv.value().to_vec()));
        }
        if !more {
            break;
        }
        from = last;
        from.push(0);
    }
    Ok((out, revision))
}

fn decode_all<M: Message + Default>(
    table: &'static str,
    rows: Vec<(String, Vec<u8>)>,
) -> Result<Vec<M>, StoreError> {
    rows.into_iter()
        .map(|(key, bytes)| {
            M::decode(bytes.as_slice()).map_err(|e| StoreError::Corrupt {
                table,
                key,
                message: e.to_string(),
            })
        })
        .collect()
}

impl Store for EtcdStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        // All tables at one etcd revision: a consistent snapshot even while others write.
        let (containers, at) =
            self.block_on(|c, cfg| async move { read_table(c, cfg, CONTAINERS, 0).await })?;
        let (nodes, _) =
            self.block_on(move |c, cfg| async move { read_table(c, cfg, NODES, at).await })?;
        let (rootfs, _) =
            self.block_on(move |c, cfg| async move { read_table(c, cfg, ROOTFS, at).await })?;
        let (services, _) =
            self.block_on(move |c, cfg| async move { read_table(c, cfg, SERVICES, at).await })?;
        let (events, _) =
            self.block_on(move |c, cfg| async move { read_table(c, cfg, EVENTS, at).await })?;
        let revision = self.block_on(move |mut c, cfg| async move {
            let resp = c
                .get(cfg.key(REVISION), Some(GetOptions::new().with_revision(at)))
                .await?;
            Ok(resp.kvs().first().map(|kv| kv.value().to_vec()))
        })?;
        let revision = match revision {
            None => 0,
            Some(bytes) => std::str::from_utf8(&bytes)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| StoreError::Corrupt {
                    table: "meta",
                    key: REVISION.into(),
                    message: format!("not a number: {:?}", String::from_utf8_lossy(&bytes)),
                })?,
        };
        Ok(Snapshot {
            containers: decode_all("containers", containers)?,
            nodes: decode_all("nodes", nodes)?,
            rootfs_specs: decode_all("rootfs_specs", rootfs)?,
            services: decode_all("services", services)?,
            revision,
            events: decode_all("events", events)?,
        })
    }

    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        let cfg = &self.config;
        let mut ops = Vec::with_capacity(batch.writes.len() + 2);
        for write in &batch.writes {
            ops.push(match write {
                Write::PutContainer(c) => TxnOp::put(
                    cfg.key(&format!("{CONTAINERS}{}", c.name)),
                    c.encode_to_vec(),
                    None,
                ),
                Write::DeleteContainer(name) => {
                    TxnOp::delete(cfg.key(&format!("{CONTAINERS}{name}")), None)
                }
                Write::PutNode(n) => TxnOp::put(
                    cfg.key(&format!("{NODES}{}", n.name)),
                    n.encode_to_vec(),
                    None,
                ),
                Write::DeleteNode(name) => TxnOp::delete(cfg.key(&format!("{NODES}{name}")), None),
                Write::PutRootfsSpec(r) => TxnOp::put(
                    cfg.key(&format!("{ROOTFS}{}", r.name)),
                    r.encode_to_vec(),
                    None,
                ),
                Write::DeleteRootfsSpec(name) => {
                    TxnOp::delete(cfg.key(&format!("{ROOTFS}{name}")), None)
                }
                Write::PutService(s) => TxnOp::put(
                    cfg.key(&format!("{SERVICES}{}", s.name)),
                    s.encode_to_vec(),
                    None,
                ),
                Write::DeleteService(name) => {
                    TxnOp::delete(cfg.key(&format!("{SERVICES}{name}")), None)
                }
                Write::Event(e) => TxnOp::put(event_key(cfg, e.revision), e.encode_to_vec(), None),
            });
        }
        if batch.drop_events_below > 0 {
            ops.push(TxnOp::delete(
                cfg.key(EVENTS),
                Some(DeleteOptions::new().with_range(event_key(cfg, batch.drop_events_below))),
            ));
        }
        if batch.revision > 0 {
            ops.push(TxnOp::put(
                cfg.key(REVISION),
                batch.revision.to_string(),
                None,
            ));
        }
        if ops.is_empty() {
            return Ok(());
        }
        let count = ops.len();
        let fence = *self.fence.lock().unwrap_or_else(|e| e.into_inner());
        let mut conditions = Vec::new();
        if let Some(f) = fence {
            conditions.push(Compare::create_revision(
                cfg.key(crate::leader::LEADER_KEY),
                CompareOp::Equal,
                f.leader_key_revision,
            ));
        }
        match batch.expect_revision {
            // No revision yet: the counter's key does not exist.
            Some(0) => conditions.push(Compare::version(cfg.key(REVISION), CompareOp::Equal, 0)),
            Some(r) => conditions.push(Compare::value(
                cfg.key(REVISION),
                CompareOp::Equal,
                r.to_string(),
            )),
            None => {}
        }
        let txn = Txn::new().when(conditions).and_then(ops);
        let succeeded = self
            .block_on(|mut c, _| async move { c.txn(txn).await.map(|r| r.succeeded()) })
            .map_err(|e| match e {
                StoreError::Backend { path, message } if message.contains("too many operations") => {
                    StoreError::Backend {
                        path,
                        message: format!(
                            "{message}: this change needs {count} operations in one transaction; start etcd with --max-txn-ops 10000 or more"
                        ),
                    }
                }
                // Sent, but no answer: etcd may have applied it.
                StoreError::Backend { path, message } => StoreError::Unknown { path, message },
                other => other,
            })?;
        if succeeded {
            Ok(())
        } else {
            Err(StoreError::NotLeader(
                "this controller lost its leadership in etcd (its lease expired, another controller took over, or the records changed under it); nothing was written".into(),
            ))
        }
    }

    fn outcome_may_be_unknown(&self) -> bool {
        true
    }
}
