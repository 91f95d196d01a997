//! Durable cluster state behind one small interface, so a distributed backend (etcd, say)
//! can replace the embedded one without touching the rest of the controller.
//!
//! What is kept: every container record, every service, every node, the rootfs specs the
//! cluster knows how to build, the revision counter and the most recent watch events. Records are the wire's
//! protobuf messages, encoded with prost. A [`Batch`] is applied atomically and durably (the
//! call returns after the data is on disk), and the controller acknowledges or publishes a
//! change only after its batch is committed.

pub mod etcd_store;
pub mod etcd_tokens;
pub mod redb_store;

use hutch_proto::v1;
use thiserror::Error;

pub use etcd_store::{EtcdConfig, EtcdStore, Fence};
pub use redb_store::RedbStore;

/// Why the store failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The backend failed (disk, corruption, locking).
    #[error("state store {path}: {message}")]
    Backend {
        /// Where the store lives.
        path: String,
        /// What failed.
        message: String,
    },
    /// A stored record could not be decoded.
    #[error("state store: record {key} in {table} is corrupt: {message}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// The record's key.
        key: String,
        /// The decode error.
        message: String,
    },
    /// The store did not answer whether it applied the write (a timeout, a lost
    /// connection): it may or may not have.
    #[error("state store {path}: {message}; the change may or may not have been made")]
    Unknown {
        /// Where the store lives.
        path: String,
        /// What failed.
        message: String,
    },
    /// The write was made conditional on this controller leading, and it no longer does.
    #[error("{0}")]
    NotLeader(String),
}

/// Everything the store holds, as loaded at start.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Container records.
    pub containers: Vec<v1::Container>,
    /// Nodes.
    pub nodes: Vec<v1::Node>,
    /// Rootfs specs built through the controller, which any node can build again.
    pub rootfs_specs: Vec<v1::RootfsSpec>,
    /// Services.
    pub services: Vec<v1::Service>,
    /// The highest revision committed.
    pub revision: u64,
    /// The watch events kept, oldest first.
    pub events: Vec<v1::WatchEvent>,
}

/// One write of a batch.
#[derive(Debug, Clone)]
pub enum Write {
    /// Insert or replace a container record (keyed by name).
    PutContainer(v1::Container),
    /// Delete a container record.
    DeleteContainer(String),
    /// Insert or replace a node (keyed by name).
    PutNode(v1::Node),
    /// Delete a node.
    DeleteNode(String),
    /// Insert or replace a rootfs spec (keyed by name).
    PutRootfsSpec(v1::RootfsSpec),
    /// Delete a rootfs spec.
    DeleteRootfsSpec(String),
    /// Insert or replace a service (keyed by name).
    PutService(Box<v1::Service>),
    /// Delete a service.
    DeleteService(String),
    /// Append a watch event (keyed by revision).
    Event(v1::WatchEvent),
}

/// Writes applied together, or not at all.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    /// The writes, in order.
    pub writes: Vec<Write>,
    /// The revision counter after the batch.
    pub revision: u64,
    /// Events with a revision below this are deleted (compaction).
    pub drop_events_below: u64,
    /// The revision counter the batch was made against: a store shared with other writers
    /// (etcd) applies the batch only while the counter still holds it, so a batch made from
    /// a stale view (after a write whose outcome was lost) changes nothing. `None`: no
    /// condition (a migration).
    pub expect_revision: Option<u64>,
}

/// A durable, transactional home for the cluster's state.
pub trait Store: Send + Sync {
    /// Reads everything.
    fn load(&self) -> Result<Snapshot, StoreError>;
    /// Applies `batch` atomically; returns once it is durable.
    fn commit(&self, batch: &Batch) -> Result<(), StoreError>;
    /// Takes `batch` to be applied atomically, after every batch staged before it, by the
    /// next [`Store::sync`] (it may not be read back before): many staged batches then
    /// share one write to disk (group commit). A store whose writes are durable anyway
    /// (etcd) commits it at once.
    fn stage(&self, batch: &Batch) -> Result<(), StoreError> {
        self.commit(batch)
    }
    /// Makes every batch staged before the call durable, in the order they were staged.
    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Whether a failed commit may still have been applied (a network store whose answer
    /// was lost). The controller then reloads its view from the store before writing again.
    fn outcome_may_be_unknown(&self) -> bool {
        false
    }
    /// Why the store takes no more writes until it is opened again (a write failed, and
    /// with it every batch staged before: what the controller holds in memory is ahead of
    /// the disk), or `None` while it takes writes.
    fn broken(&self) -> Option<String> {
        None
    }
}
