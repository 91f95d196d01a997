//! Copies every record of one [`Store`] into another that holds none: how a single
//! controller's embedded store moves into etcd (`hutch-controller migrate`).
//!
//! Records go over in batches of at most [`CHUNK`] writes (etcd bounds a transaction),
//! and the revision counter goes last: a target with records but no revision is a copy
//! that was interrupted, and is refused like any other non-empty target.

use crate::store::{Batch, Snapshot, Store, StoreError, Write};

/// Writes per batch.
pub const CHUNK: usize = 500;

/// What was copied.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Copied {
    /// Container records.
    pub containers: usize,
    /// Nodes.
    pub nodes: usize,
    /// Rootfs specs.
    pub rootfs_specs: usize,
    /// Services.
    pub services: usize,
    /// Watch events kept for resuming watchers.
    pub events: usize,
    /// The cluster revision.
    pub revision: u64,
}

/// Why a migration did not happen.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// A store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The target already holds records.
    #[error("the target already holds records ({0}): migrate only into an empty store (another --etcd-prefix, or delete that prefix's keys with etcdctl del --prefix)")]
    TargetNotEmpty(String),
}

fn describe(s: &Snapshot) -> String {
    format!(
        "{} containers, {} services, {} nodes, {} rootfs specs, {} events, revision {}",
        s.containers.len(),
        s.services.len(),
        s.nodes.len(),
        s.rootfs_specs.len(),
        s.events.len(),
        s.revision
    )
}

/// Copies everything in `from` into `to`, calling `progress(done, total)` after each batch.
pub fn migrate(
    from: &dyn Store,
    to: &dyn Store,
    mut progress: impl FnMut(usize, usize),
) -> Result<Copied, MigrateError> {
    let there = to.load()?;
    if there.revision > 0
        || !there.containers.is_empty()
        || !there.nodes.is_empty()
        || !there.rootfs_specs.is_empty()
        || !there.services.is_empty()
        || !there.events.is_empty()
    {
        return Err(MigrateError::TargetNotEmpty(describe(&there)));
    }
    let snap = from.load()?;
    let copied = Copied {
        containers: snap.containers.len(),
        nodes: snap.nodes.len(),
        rootfs_specs: snap.rootfs_specs.len(),
        services: snap.services.len(),
        events: snap.events.len(),
        revision: snap.revision,
    };
    let writes: Vec<Write> = snap
        .containers
        .into_iter()
        .map(Write::PutContainer)
        .chain(snap.nodes.into_iter().map(Write::PutNode))
        .chain(snap.rootfs_specs.into_iter().map(Write::PutRootfsSpec))
        .chain(
            snap.services
                .into_iter()
                .map(|s| Write::PutService(Box::new(s))),
        )
        .chain(snap.events.into_iter().map(Write::Event))
        .collect();
    let total = writes.len();
    let mut done = 0;
    let mut chunks = writes.chunks(CHUNK).peekable();
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        to.commit(&Batch {
            writes: chunk.to_vec(),
            revision: if last { snap.revision } else { 0 },
            ..Default::default()
        })?;
        done += chunk.len();
        progress(done, total);
    }
    if total == 0 && snap.revision > 0 {
        to.commit(&Batch {
            revision: snap.revision,
            ..Default::default()
        })?;
    }
    Ok(copied)
}
