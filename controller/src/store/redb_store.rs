//! The embedded [`Store`]: one redb file (`DATA_DIR/state.redb`), one table per kind of
//! record, values are prost-encoded protobuf messages. Every write is durable
//! (`Durability::Immediate`: fsync before it returns). A staged batch waits in memory for
//! the next `sync`, which writes every batch staged before it, in order, in one transaction:
//! one write and one fsync for them all (group commit); `commit` is a stage and a sync.
//!
//! Files written by hutch before redb 3 are in redb's file format 2, which redb 3 and later
//! no longer read. Such a file is upgraded in place the first time it is opened, with redb
//! 2.6's own `Database::upgrade` (kept as the `redb2` dependency for this one purpose); the
//! records are not touched.

use std::path::{Path, PathBuf};

use prost::Message;
use std::sync::{Mutex, MutexGuard};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Batch, Snapshot, Store, StoreError, Write};

const CONTAINERS: TableDefinition<&str, &[u8]> = TableDefinition::new("containers");
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
const ROOTFS_SPECS: TableDefinition<&str, &[u8]> = TableDefinition::new("rootfs_specs");
const SERVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("services");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";

/// The cluster state in a redb database file.
pub struct RedbStore {
    db: Database,
    path: PathBuf,
    /// Batches staged, in order, for the next sync to write.
    staged: Mutex<Vec<Batch>>,
    /// Held by a sync from taking the staged batches until they are written, so that
    /// batches reach the file in the order they were staged. Holds why a write failed:
    /// the batches it took are lost and redb refuses every later write after an I/O error,
    /// so the store takes none until it is opened again.
    writing: Mutex<Option<String>>,
}

impl RedbStore {
    /// Opens (or creates) `data_dir/state.redb`. Only one process may have it open.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join("state.redb");
        let backend = |e: &dyn std::fmt::Display| StoreError::Backend {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(data_dir).map_err(|e| backend(&e))?;
        let mut db = match Database::create(&path) {
            Err(redb::DatabaseError::UpgradeRequired(2)) => {
                upgrade_format_2(&path).map_err(|e| backend(&e))?;
                Database::create(&path)
            }
            opened => opened,
        }
        .map_err(|e| backend(&e))?;
        if let Err(e) = compact(&mut db, &path) {
            // The store works uncompacted; a full disk is the likely cause, and refusing to
            // start would not help.
            tracing::warn!(path = %path.display(), "state store not compacted: {e}");
        }
        let store = RedbStore {
            db,
            path,
            staged: Mutex::default(),
            writing: Mutex::default(),
        };
        // Create every table, so readers never meet a missing one.
        store.commit(&Batch::default())?;
        Ok(store)
    }

    fn backend(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Backend {
            path: self.path.display().to_string(),
            message: e.to_string(),
        }
    }
}

/// Gives the space of removed records back to the filesystem. While the controller runs,
/// redb reuses freed pages for new records, so the file never grows past the most it held
/// at once; at each start it is compacted to what it holds now.
fn compact(db: &mut Database, path: &Path) -> Result<(), redb::CompactionError> {
    let size = || std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let before = size();
    if db.compact()? {
        tracing::info!(path = %path.display(), before, after = size(), "state store compacted");
    }
    Ok(())
}

/// Upgrades a redb file of format 2 (hutch before redb 3) to format 3, in place.
fn upgrade_format_2(path: &Path) -> Result<(), String> {
    tracing::info!(path = %path.display(), "upgrading the state store from redb file format 2");
    let mut db = redb2::Database::open(path).map_err(|e| format!("opening for upgrade: {e}"))?;
    let upgraded = db.upgrade().map_err(|e| format!("upgrading: {e}"))?;
    tracing::info!(path = %path.display(), upgraded, "state store upgraded");
    Ok(())
}

fn decode<M: Message + Default>(
    table: &'static str,
    key: String,
    bytes: &[u8],
) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|e| StoreError::Corrupt {
        table,
        key,
        message: e.to_string(),
    })
}

impl Store for RedbStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.backend(e))?;
        let mut snap = Snapshot::default();
        let containers = txn.open_table(CONTAINERS).map_err(|e| self.backend(e))?;
        for row in containers.iter().map_err(|e| self.backend(e))? {
            let (k, v) = row.map_err(|e| self.backend(e))?;
            snap.containers
                .push(decode("containers", k.value().to_string(), v.value())?);
        }
        let nodes = txn.open_table(NODES).map_err(|e| self.backend(e))?;
        for row in nodes.iter().map_err(|e| self.backend(e))? {
            let (k, v) = row.map_err(|e| self.backend(e))?;
            snap.nodes
                .push(decode("nodes", k.value().to_string(), v.value())?);
        }
        let specs = txn.open_table(ROOTFS_SPECS).map_err(|e| self.backend(e))?;
        for row in specs.iter().map_err(|e| self.backend(e))? {
            let (k, v) = row.map_err(|e| self.backend(e))?;
            snap.rootfs_specs
                .push(decode("rootfs_specs", k.value().to_string(), v.value())?);
        }
        let services = txn.open_table(SERVICES).map_err(|e| self.backend(e))?;
        for row in services.iter().map_err(|e| self.backend(e))? {
            let (k, v) = row.map_err(|e| self.backend(e))?;
            snap.services
                .push(decode("services", k.value().to_string(), v.value())?);
        }
        let events = txn.open_table(EVENTS).map_err(|e| self.backend(e))?;
        for row in events.iter().map_err(|e| self.backend(e))? {
            let (k, v) = row.map_err(|e| self.backend(e))?;
            snap.events
                .push(decode("events", k.value().to_string(), v.value())?);
        }
        let meta = txn.open_table(META).map_err(|e| self.backend(e))?;
        snap.revision = meta
            .get(REVISION)
            .map_err(|e| self.backend(e))?
            .map_or(0, |v| v.value());
        Ok(snap)
    }

    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        self.stage(batch)?;
        self.sync()
    }

    fn stage(&self, batch: &Batch) -> Result<(), StoreError> {
        lock(&self.staged).push(batch.clone());
        Ok(())
    }

    fn sync(&self) -> Result<(), StoreError> {
        let mut failed = lock(&self.writing);
        if let Some(why) = failed.as_ref() {
            return Err(self.backend(refused_after(why)));
        }
        let batches = std::mem::take(&mut *lock(&self.staged));
        if batches.is_empty() {
            return Ok(());
        }
        let written = self.write(&batches);
        if let Err(e) = &written {
            *failed = Some(e.to_string());
        }
        written
    }

    fn broken(&self) -> Option<String> {
        lock(&self.writing).as_deref().map(refused_after)
    }
}

/// Why a store whose write failed with `why` takes no more.
fn refused_after(why: &str) -> String {
    format!(
        "a write failed ({why}); the store takes no more writes until the controller opens it again"
    )
}

/// A mutex's data, also after a panic elsewhere (the data stays consistent: a batch list
/// is pushed to or taken whole).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RedbStore {
    /// Writes `batches`, in order, in one durable transaction (one fsync for them all).
    fn write(&self, batches: &[Batch]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.backend(e))?;
        {
            let mut containers = txn.open_table(CONTAINERS).map_err(|e| self.backend(e))?;
            let mut nodes = txn.open_table(NODES).map_err(|e| self.backend(e))?;
            let mut specs = txn.open_table(ROOTFS_SPECS).map_err(|e| self.backend(e))?;
            let mut services = txn.open_table(SERVICES).map_err(|e| self.backend(e))?;
            let mut events = txn.open_table(EVENTS).map_err(|e| self.backend(e))?;
            let mut meta = txn.open_table(META).map_err(|e| self.backend(e))?;
            for write in batches.iter().flat_map(|b| &b.writes) {
                let done = match write {
                    Write::PutContainer(c) => containers
                        .insert(c.name.as_str(), c.encode_to_vec().as_slice())
                        .map(drop),
                    Write::DeleteContainer(name) => containers.remove(name.as_str()).map(drop),
                    Write::PutNode(n) => nodes
                        .insert(n.name.as_str(), n.encode_to_vec().as_slice())
                        .map(drop),
                    Write::DeleteNode(name) => nodes.remove(name.as_str()).map(drop),
                    Write::PutRootfsSpec(r) => specs
                        .insert(r.name.as_str(), r.encode_to_vec().as_slice())
                        .map(drop),
                    Write::DeleteRootfsSpec(name) => specs.remove(name.as_str()).map(drop),
                    Write::PutService(s) => services
                        .insert(s.name.as_str(), s.encode_to_vec().as_slice())
                        .map(drop),
                    Write::DeleteService(name) => services.remove(name.as_str()).map(drop),
                    Write::Event(e) => events
                        .insert(e.revision, e.encode_to_vec().as_slice())
                        .map(drop),
                };
                done.map_err(|e| self.backend(e))?;
            }
            let drop_below = batches.iter().map(|b| b.drop_events_below).max();
            if let Some(below) = drop_below.filter(|&b| b > 0) {
                events
                    .retain_in(..below, |_, _| false)
                    .map_err(|e| self.backend(e))?;
            }
            let revision = batches.iter().map(|b| b.revision).max().unwrap_or(0);
            if revision > 0 {
                meta.insert(REVISION, revision)
                    .map_err(|e| self.backend(e))?;
            }
        }
        txn.commit().map_err(|e| self.backend(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hutch_proto::v1;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "hutch-controller-store-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn event(revision: u64, name: &str) -> v1::WatchEvent {
        v1::WatchEvent {
            revision,
            container: Some(v1::Container {
                name: name.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn removed_records_give_their_space_back_at_the_next_start() {
        let dir = temp_dir("compact");
        let size = || {
            std::fs::metadata(dir.join("state.redb"))
                .expect("file")
                .len()
        };
        let full = {
            let store = RedbStore::open(&dir).expect("open");
            let names: Vec<String> = (0..200).map(|i| format!("c{i}")).collect();
            let big = |name: &String| {
                Write::PutContainer(v1::Container {
                    name: name.clone(),
                    status_message: "x".repeat(100_000),
                    ..Default::default()
                })
            };
            store
                .commit(&Batch {
                    writes: names.iter().map(big).collect(),
                    revision: 1,
                    ..Default::default()
                })
                .expect("commit");
            let full = size();
            store
                .commit(&Batch {
                    writes: names.into_iter().map(Write::DeleteContainer).collect(),
                    revision: 2,
                    ..Default::default()
                })
                .expect("commit");
            full
        };
        assert!(full > 20_000_000, "{full}");
        let store = RedbStore::open(&dir).expect("reopen");
        assert!(store.load().expect("load").containers.is_empty());
        let after = size();
        assert!(after < full / 10, "{full} bytes before, {after} after");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn staged_batches_are_written_in_order_by_one_sync() {
        let dir = temp_dir("staged");
        let container = |name: &str| v1::Container {
            name: name.into(),
            ..Default::default()
        };
        {
            let store = RedbStore::open(&dir).expect("open");
            for (revision, name) in [(1, "a"), (2, "b"), (3, "a")] {
                let mut batch = Batch {
                    writes: vec![Write::PutContainer(container(name))],
                    revision,
                    ..Default::default()
                };
                if revision == 3 {
                    batch.writes.insert(0, Write::DeleteContainer("b".into()));
                }
                store.stage(&batch).expect("stage");
            }
            assert!(
                store.load().expect("load").containers.is_empty(),
                "nothing is written before the sync"
            );
            store.sync().expect("sync");
            store.sync().expect("a sync with nothing staged");
        }
        let store = RedbStore::open(&dir).expect("reopen");
        let snap = store.load().expect("load");
        let names: Vec<&str> = snap.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            ["a"],
            "the later batch's delete applied after the put"
        );
        assert_eq!(snap.revision, 3);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failed_write_refuses_every_later_one_until_the_store_is_opened_again() {
        // A disk too small for the staged batches: the sync that takes them fails, and every
        // later sync fails too, also with nothing staged (its caller would otherwise take
        // the lost batches for durable).
        let disk = hutch_testkit::SmallDisk::mount(temp_dir("full"), "size=4m");
        let dir = disk.path().to_path_buf();
        let container = |name: String| v1::Container {
            name,
            status_message: "x".repeat(100_000),
            ..Default::default()
        };
        let store = RedbStore::open(&dir).expect("open");
        store
            .commit(&Batch {
                writes: vec![Write::PutContainer(container("kept".into()))],
                revision: 1,
                ..Default::default()
            })
            .expect("a write that fits");
        assert_eq!(store.broken(), None);
        for revision in 2..80 {
            store
                .stage(&Batch {
                    writes: vec![Write::PutContainer(container(format!("c{revision}")))],
                    revision,
                    ..Default::default()
                })
                .expect("stage");
        }
        let full = store.sync().expect_err("8 MB staged on a 4 MB disk");
        assert!(store.broken().is_some(), "{full}");
        for (what, result) in [
            ("a sync with nothing staged", store.sync()),
            ("a commit that fits", {
                store.commit(&Batch {
                    writes: vec![Write::PutContainer(v1::Container {
                        name: "small".into(),
                        ..Default::default()
                    })],
                    revision: 80,
                    ..Default::default()
                })
            }),
        ] {
            let refused = result.expect_err(what).to_string();
            assert!(
                refused.contains("takes no more writes"),
                "{what}: {refused}"
            );
        }
        drop(store);
        disk.mount_with("remount,size=64m");
        let snap = RedbStore::open(&dir).expect("reopen").load().expect("load");
        let names: Vec<&str> = snap.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["kept"], "nothing of the failed syncs was written");
        assert_eq!(snap.revision, 1);
    }

    #[test]
    fn commits_survive_reopening_and_compaction_drops_old_events() {
        let dir = temp_dir("reopen");
        {
            let store = RedbStore::open(&dir).expect("open");
            let mut batch = Batch {
                revision: 3,
                ..Default::default()
            };
            for r in 1..=3 {
                batch.writes.push(Write::Event(event(r, "c1")));
            }
            batch.writes.push(Write::PutContainer(v1::Container {
                name: "c1".into(),
                revision: 3,
                ..Default::default()
            }));
            batch.writes.push(Write::PutNode(v1::Node {
                name: "n1".into(),
                last_event_seq: 42,
                ..Default::default()
            }));
            store.commit(&batch).expect("commit");
            store
                .commit(&Batch {
                    writes: vec![
                        Write::DeleteContainer("c1".into()),
                        Write::Event(event(4, "c1")),
                    ],
                    revision: 4,
                    drop_events_below: 3,
                    ..Default::default()
                })
                .expect("commit");
        }
        let store = RedbStore::open(&dir).expect("reopen");
        let snap = store.load().expect("load");
        assert_eq!(snap.revision, 4);
        assert!(snap.containers.is_empty());
        assert_eq!(snap.nodes.len(), 1);
        assert_eq!(snap.nodes[0].last_event_seq, 42);
        let revs: Vec<u64> = snap.events.iter().map(|e| e.revision).collect();
        assert_eq!(revs, vec![3, 4]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_store_written_in_file_format_2_is_upgraded_and_keeps_its_records() {
        let dir = temp_dir("format2");
        std::fs::create_dir_all(&dir).expect("mkdir");
        {
            // What hutch wrote before redb 3: a redb 2 file, format 2.
            let old = redb2::Database::create(dir.join("state.redb")).expect("redb 2 file");
            let meta: redb2::TableDefinition<&str, u64> = redb2::TableDefinition::new("meta");
            let nodes: redb2::TableDefinition<&str, &[u8]> = redb2::TableDefinition::new("nodes");
            let node = v1::Node {
                name: "n1".into(),
                last_event_seq: 7,
                ..Default::default()
            }
            .encode_to_vec();
            let txn = old.begin_write().expect("write");
            txn.open_table(meta)
                .expect("table")
                .insert(REVISION, 41)
                .expect("insert");
            txn.open_table(nodes)
                .expect("table")
                .insert("n1", node.as_slice())
                .expect("insert");
            txn.commit().expect("commit");
        }
        let store = RedbStore::open(&dir).expect("open upgrades the file");
        let snap = store.load().expect("load");
        assert_eq!(snap.revision, 41);
        assert_eq!(snap.nodes.len(), 1);
        assert_eq!(snap.nodes[0].last_event_seq, 7);
        drop(store);
        let again = RedbStore::open(&dir).expect("an upgraded file opens as it is");
        assert_eq!(again.load().expect("load").revision, 41);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_second_open_of_the_same_file_is_refused() {
        let dir = temp_dir("lock");
        let _first = RedbStore::open(&dir).expect("open");
        let err = RedbStore::open(&dir).err().expect("second open must fail");
        assert!(err.to_string().contains("state.redb"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
