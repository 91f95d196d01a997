//! Named volumes: directories this node keeps across containers, under
//! `STATE_DIR/volumes/NAME/` (`data/` holds what containers write, `volume.json` what the
//! volume is). A volume appears whole or not at all (made in a temporary directory, then
//! renamed into place) and vanishes at once on removal (renamed away, then deleted).
//!
//! Which containers use a volume is the runtime's knowledge; [`VolumeStore::remove`] takes
//! that list and refuses while it is not empty, and while a container naming the volume is
//! being started (it holds a [`VolumePin`] until its record exists).
//!
//! The store is mode 0700: what a container writes in a volume (a setuid copy of a shell,
//! say) must not be reachable by the node's other users.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::fsutil::replace_json;
use crate::names::{validate_name, NameError};

/// Why a volume operation failed.
#[derive(Debug, Error)]
pub enum VolumeError {
    /// Not a safe name.
    #[error(transparent)]
    BadName(#[from] NameError),
    /// Labels out of bounds.
    #[error("{0}")]
    BadLabels(String),
    /// It exists already.
    #[error("volume '{0}' already exists on this node")]
    AlreadyExists(String),
    /// No such volume.
    #[error("volume '{0}' not found on this node; create it with `hutch volume create {0}`")]
    NotFound(String),
    /// Containers use it.
    #[error("volume '{name}' is used by container(s) {}; remove them first", users.join(", "))]
    InUse {
        /// The volume.
        name: String,
        /// The containers using it.
        users: Vec<String>,
    },
    /// The directory could not be read or written.
    #[error("volume store {path}: {message}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What happened.
        message: String,
    },
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> VolumeError {
    VolumeError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// What a volume is (`volume.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    /// Its name.
    pub name: String,
    /// When it was created, in ms since the epoch.
    pub created_at_ms: u64,
    /// Labels given at creation.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A volume of this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// What it is.
    pub record: VolumeRecord,
    /// Its data directory (what containers mount).
    pub data: PathBuf,
}

/// The volumes of this node.
pub struct VolumeStore {
    dir: PathBuf,
    /// Creation and removal one at a time, so that "exists" answers stay true; with the
    /// number of starts holding each volume.
    lock: Mutex<HashMap<String, usize>>,
    counter: AtomicU64,
}

const RECORD: &str = "volume.json";
const DATA: &str = "data";

impl VolumeStore {
    /// Opens (creating, mode 0700) the store in `dir`; leftovers of interrupted creations
    /// and removals are deleted.
    pub fn open(dir: PathBuf) -> Result<Self, VolumeError> {
        std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io_err(&dir, e))?;
        // Containers' mounts open the data directories without following symlinks: the
        // store's own path must have none.
        let dir = std::fs::canonicalize(&dir).map_err(|e| io_err(&dir, e))?;
        let entries = std::fs::read_dir(&dir).map_err(|e| io_err(&dir, e))?;
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with('.') {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        Ok(VolumeStore {
            dir,
            lock: Mutex::new(HashMap::new()),
            counter: AtomicU64::new(0),
        })
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn scratch(&self, what: &str, name: &str) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.dir
            .join(format!(".{what}-{name}-{}-{n}", std::process::id()))
    }

    /// Creates volume `name`.
    pub fn create(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Volume, VolumeError> {
        validate_name("volume name", name)?;
        hutch_core::spec::validate_labels("labels", labels.iter())
            .map_err(VolumeError::BadLabels)?;
        let _g = self.guard();
        self.create_locked(name, labels)
    }

    fn create_locked(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Volume, VolumeError> {
        let home = self.dir.join(name);
        if home.exists() {
            return Err(VolumeError::AlreadyExists(name.to_string()));
        }
        let scratch = self.scratch("new", name);
        let made = (|| {
            std::fs::create_dir(&scratch)?;
            std::fs::create_dir(scratch.join(DATA))?;
            let record = VolumeRecord {
                name: name.to_string(),
                created_at_ms: crate::fsutil::unix_millis_now(),
                labels,
            };
            replace_json(&scratch.join(RECORD), &record)?;
            std::fs::rename(&scratch, &home)?;
            Ok::<_, std::io::Error>(record)
        })();
        match made {
            Ok(record) => Ok(Volume {
                record,
                data: home.join(DATA),
            }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&scratch);
                Err(io_err(&home, e))
            }
        }
    }

    /// Volume `name`, created (without labels) if it does not exist (Docker's
    /// `-v NAME:/x`), pinned against removal until the pin is dropped.
    pub fn get_or_create(&self, name: &str) -> Result<(Volume, VolumePin<'_>), VolumeError> {
        validate_name("volume name", name)?;
        let mut pins = self.guard();
        let volume = match self.read(name) {
            Err(VolumeError::NotFound(_)) => self.create_locked(name, BTreeMap::new()),
            found => found,
        }?;
        *pins.entry(name.to_string()).or_default() += 1;
        Ok((
            volume,
            VolumePin {
                store: self,
                name: name.to_string(),
            },
        ))
    }

    /// Gives `volume`'s data directory to `uid`:`gid` if it is still empty and root's (a
    /// fresh volume), so that a container whose root is that node user can write to it.
    pub fn give_if_fresh(&self, volume: &Volume, uid: u32, gid: u32) -> Result<(), VolumeError> {
        use std::os::unix::fs::MetadataExt;
        let _g = self.guard();
        let meta = std::fs::metadata(&volume.data).map_err(|e| io_err(&volume.data, e))?;
        let empty = std::fs::read_dir(&volume.data)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if meta.uid() == 0 && meta.gid() == 0 && empty && (uid, gid) != (0, 0) {
            std::os::unix::fs::chown(&volume.data, Some(uid), Some(gid))
                .map_err(|e| io_err(&volume.data, e))?;
        }
        Ok(())
    }

    /// Volume `name`.
    pub fn get(&self, name: &str) -> Result<Volume, VolumeError> {
        validate_name("volume name", name)?;
        self.read(name)
    }

    fn read(&self, name: &str) -> Result<Volume, VolumeError> {
        let home = self.dir.join(name);
        let path = home.join(RECORD);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(VolumeError::NotFound(name.to_string()))
            }
            Err(e) => return Err(io_err(&path, e)),
        };
        let record = serde_json::from_str(&text).map_err(|e| io_err(&path, e))?;
        Ok(Volume {
            record,
            data: home.join(DATA),
        })
    }

    /// Every volume, by name.
    pub fn list(&self) -> Vec<Volume> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names.iter().filter_map(|n| self.read(n).ok()).collect()
    }

    /// The names of every volume.
    pub fn names(&self) -> Vec<String> {
        self.list().into_iter().map(|v| v.record.name).collect()
    }

    /// Deletes volume `name` and its data, unless `users` (the containers using it) is not
    /// empty.
    pub fn remove(&self, name: &str, mut users: Vec<String>) -> Result<(), VolumeError> {
        validate_name("volume name", name)?;
        let pins = self.guard();
        self.read(name)?;
        if pins.get(name).is_some_and(|n| *n > 0) {
            users.push("a container being started".into());
        }
        if !users.is_empty() {
            return Err(VolumeError::InUse {
                name: name.to_string(),
                users,
            });
        }
        let home = self.dir.join(name);
        let tomb = self.scratch("removing", name);
        std::fs::rename(&home, &tomb).map_err(|e| io_err(&home, e))?;
        std::fs::remove_dir_all(&tomb).map_err(|e| io_err(&tomb, e))
    }
}

/// Keeps a volume from being removed while a container naming it starts.
pub struct VolumePin<'a> {
    store: &'a VolumeStore,
    name: String,
}

impl Drop for VolumePin<'_> {
    fn drop(&mut self) {
        let mut pins = self.store.guard();
        if let Some(n) = pins.get_mut(&self.name) {
            *n -= 1;
            if *n == 0 {
                pins.remove(&self.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(tag: &str) -> (VolumeStore, PathBuf) {
        let dir = std::env::temp_dir().join(format!("hutch-volumes-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        (VolumeStore::open(dir.clone()).expect("open"), dir)
    }

    #[test]
    fn create_list_remove() {
        let (s, dir) = store("crud");
        let v = s
            .create("data", [("team".into(), "a".into())].into())
            .expect("create");
        assert!(v.data.is_dir());
        assert!(matches!(
            s.create("data", BTreeMap::new()),
            Err(VolumeError::AlreadyExists(_))
        ));
        std::fs::write(v.data.join("f"), "kept").expect("write");
        let (again, pin) = s.get_or_create("data").expect("again");
        assert_eq!(again.data, v.data);
        assert!(
            matches!(s.remove("data", Vec::new()), Err(VolumeError::InUse { .. })),
            "pinned by a start"
        );
        drop(pin);
        let mode = std::fs::metadata(&dir).expect("dir").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(s.names(), vec!["data".to_string()]);
        assert!(matches!(
            s.remove("data", vec!["c1".into()]),
            Err(VolumeError::InUse { .. })
        ));
        s.remove("data", Vec::new()).expect("remove");
        assert!(matches!(s.get("data"), Err(VolumeError::NotFound(_))));
        assert!(s.list().is_empty());
        assert!(matches!(s.get("../etc"), Err(VolumeError::BadName(_))));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn leftovers_are_cleared_on_open() {
        let (s, dir) = store("left");
        std::fs::create_dir_all(dir.join(".new-x-1-0/data")).expect("leftover");
        drop(s);
        let s = VolumeStore::open(dir.clone()).expect("reopen");
        assert!(s.list().is_empty());
        assert!(!dir.join(".new-x-1-0").exists());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
