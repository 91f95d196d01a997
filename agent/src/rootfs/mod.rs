//! The rootfs store: one cached root filesystem per source, shared read-only by every
//! container started from it.
//!
//! Layout below the store directory (by default `/var/lib/hutch/rootfs`):
//! - `entries/KEY/rootfs/` the tree, `entries/KEY/meta.json` what it was built from;
//! - `names/NAME.json` a name pointing at one entry (rebuilding a name from another source
//!   repoints it; the old entry stays until removed);
//! - `tmp/` builds in progress: a build happens in `tmp/` and is renamed into `entries/` only
//!   when complete, so a half-built rootfs is never used and a failed build leaves nothing;
//! - `logs/KEY.log` the full output of the last build of each entry, also a failed one;
//! - `locks/KEY.lock` an advisory lock so two processes sharing a store build a key once.
//!
//! Concurrent requests for one key in this process share a single build (single-flight) and
//! all receive its progress.

mod apt_sources;
mod build;
pub mod cpio;
pub mod image;
pub mod progress;
pub mod source;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::{broadcast, mpsc, watch};

pub use apt_sources::host_debian_mirror;
pub use hutch_supervisor::overlay;
pub use progress::{BuildProgress, BuildStage};
pub use source::{Resolve, ResolvedSource, RootfsSource};

use crate::fsutil::{disk_usage, read_json, unix_millis_now, write_json_atomic};
use crate::mounts::unmount_below;
use crate::names::{validate_name, NameError};

/// Why a rootfs operation failed. Clone so that every waiter of a shared build gets it.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RootfsError {
    /// The rootfs name is not a safe name.
    #[error(transparent)]
    BadName(#[from] NameError),
    /// The source spec is malformed.
    #[error("invalid rootfs source: {0}")]
    InvalidSource(String),
    /// A local source path does not exist or has the wrong type.
    #[error("rootfs source not usable: {0}")]
    SourceMissing(String),
    /// No rootfs of that name.
    #[error("rootfs '{name}' not found (known: {known})")]
    NotFound {
        /// The requested name.
        name: String,
        /// The names the store has, comma-separated, or "none".
        known: String,
    },
    /// The build tool failed.
    #[error("building the rootfs failed at step '{step}': {message}")]
    BuildFailed {
        /// The failing step (debootstrap, tar, cpio, copy, ...).
        step: String,
        /// What it said.
        message: String,
    },
    /// Containers still use the rootfs.
    #[error("rootfs '{name}' is in use by container(s) {users}; remove them first")]
    InUse {
        /// The rootfs name.
        name: String,
        /// The containers using it, comma-separated.
        users: String,
    },
    /// An image could not be imported.
    #[error("image: {0}")]
    Image(#[from] image::ImageError),
    /// The store itself could not be read or written.
    #[error("rootfs store at {path}: {message}")]
    Store {
        /// The path involved.
        path: String,
        /// What went wrong.
        message: String,
    },
}

impl From<source::InvalidSource> for RootfsError {
    fn from(e: source::InvalidSource) -> Self {
        RootfsError::InvalidSource(e.0)
    }
}

fn store_err(path: &Path, e: impl std::fmt::Display) -> RootfsError {
    RootfsError::Store {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// What a store entry was built from, kept next to it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EntryMeta {
    /// Content key.
    pub key: String,
    /// The resolved source.
    pub source: ResolvedSource,
    /// When the build finished (ms since the epoch).
    pub created_ms: u64,
    /// Bytes of regular files in the tree.
    pub size_bytes: u64,
    /// How long the build took.
    pub build_millis: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct NameRecord {
    key: String,
}

/// A named rootfs as listed and inspected.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RootfsInfo {
    /// Its name.
    pub name: String,
    /// Content key of its entry.
    pub key: String,
    /// The resolved source it was built from.
    pub source: RootfsSource,
    /// When it was built (ms since the epoch).
    pub created_ms: u64,
    /// Bytes of regular files in the tree.
    pub size_bytes: u64,
    /// How long the build took.
    pub build_millis: u64,
    /// The read-only tree containers start from (an image's: its top layer).
    pub path: PathBuf,
    /// The overlay's lower directories, top first: `[path]`, or an image's layers.
    pub layers: Vec<PathBuf>,
    /// For an image: its config and layers.
    pub image: Option<image::ImageMeta>,
}

impl RootfsInfo {
    /// The container defaults of its image, if it is one.
    pub fn image_defaults(&self) -> Option<&hutch_core::spec::ImageDefaults> {
        self.image.as_ref().map(|i| &i.config.defaults)
    }
}

/// How a build request was satisfied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildOutcome {
    /// This request built the entry.
    Built,
    /// The entry already existed: nothing was built.
    Cached,
    /// Another request was building the same entry; this one waited for it.
    Joined,
}

/// The result of [`RootfsStore::build`].
#[derive(Debug, Clone)]
pub struct BuildResult {
    /// The named rootfs.
    pub info: RootfsInfo,
    /// How it was obtained.
    pub outcome: BuildOutcome,
}

struct Flight {
    progress: broadcast::Sender<BuildProgress>,
    done: watch::Receiver<Option<Result<(), RootfsError>>>,
}

/// The content-addressed rootfs cache. Cheap to clone; clones share in-flight builds.
#[derive(Clone)]
pub struct RootfsStore {
    root: PathBuf,
    /// Directories no directory source may be, hold or lie in (the agent's state
    /// directory), but for the rootfs trees of this store's entries.
    protected: Vec<PathBuf>,
    inflight: Arc<Mutex<HashMap<String, Arc<Flight>>>>,
    images: Arc<image::ImageOptions>,
}

impl RootfsStore {
    /// Opens (creating if needed) the store at `root`, and clears leftovers of builds that a
    /// crash interrupted.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, RootfsError> {
        let root = root.into();
        for sub in ["entries", "names", "tmp", "logs", "locks", "layers"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(|e| store_err(&p, e))?;
        }
        let store = RootfsStore {
            protected: Vec::new(),
            root,
            inflight: Arc::new(Mutex::new(HashMap::new())),
            images: Arc::new(image::ImageOptions::default()),
        };
        store.clear_abandoned_builds();
        Ok(store)
    }

    /// Also refuses `dir` (the agent's state directory), its ancestors and what lies in it
    /// as a directory source.
    pub fn protecting(mut self, dir: impl Into<PathBuf>) -> Self {
        self.protected.push(dir.into());
        self
    }

    /// Imports images with `options` (registries, credentials, limits).
    pub fn with_image_options(mut self, options: image::ImageOptions) -> Self {
        self.images = Arc::new(options);
        self
    }

    /// How images are imported.
    pub fn image_options(&self) -> &image::ImageOptions {
        &self.images
    }

    /// Deletes `tmp/KEY.PID` directories whose building process no longer exists.
    fn clear_abandoned_builds(&self) {
        for name in self.builds_in_progress() {
            let pid_alive = name
                .rsplit('.')
                .next()
                .and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
            if !pid_alive {
                let dir = self.root.join("tmp").join(&name);
                if let Err(e) = self.discard(&dir) {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot clear an abandoned build");
                }
            }
        }
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn entry_dir(&self, key: &str) -> PathBuf {
        self.root.join("entries").join(key)
    }

    fn name_file(&self, name: &str) -> PathBuf {
        self.root.join("names").join(format!("{name}.json"))
    }

    /// Where the log of the last build of `key` is kept.
    pub fn log_path(&self, key: &str) -> PathBuf {
        self.root.join("logs").join(format!("{key}.log"))
    }

    /// Builds (or finds) the rootfs for `source` and names it `name`. Progress events go to
    /// `progress` when given; a caller that stops listening does not stop the build, which
    /// other requests may share.
    pub async fn build(
        &self,
        name: &str,
        source: &RootfsSource,
        progress: Option<mpsc::Sender<BuildProgress>>,
    ) -> Result<BuildResult, RootfsError> {
        validate_name("rootfs name", name)?;
        // A directory is checked, then built from what it resolves to.
        let checked;
        let source = match source {
            RootfsSource::Directory { path } => {
                checked = RootfsSource::Directory {
                    path: source::check_directory_source(path, &self.root, &self.protected)?,
                };
                &checked
            }
            other => other,
        };
        let mut resolved = {
            let source = source.clone();
            tokio::task::spawn_blocking(move || Resolve::resolve(&source))
                .await
                .map_err(|e| store_err(Path::new("resolve"), e))??
        };
        // A registry tag is keyed by the manifest it names now, so a moved tag imports anew.
        if let RootfsSource::Image {
            reference,
            credentials,
            ..
        } = &resolved.source
        {
            if let Some(tx) = progress.as_ref() {
                let _ = tx
                    .send(BuildProgress::stage(
                        BuildStage::Resolving,
                        format!("{reference}: asking the registry for its manifest"),
                    ))
                    .await;
            }
            resolved.digest =
                image::resolve_registry_digest(reference, credentials, &self.images).await?;
        }
        let key = resolved.key();
        let (flight, outcome, first_events) = {
            let mut inflight = self.inflight.lock().map_err(|e| store_err(&self.root, e))?;
            if self.entry_dir(&key).join("meta.json").exists() {
                drop(inflight);
                self.set_name(name, &key)?;
                return Ok(BuildResult {
                    info: self.info_of(name, &key)?,
                    outcome: BuildOutcome::Cached,
                });
            }
            match inflight.get(&key) {
                Some(f) => (f.clone(), BuildOutcome::Joined, None),
                None => {
                    let (f, events) = self.start_flight(key.clone(), resolved);
                    inflight.insert(key.clone(), f.clone());
                    (f, BuildOutcome::Built, Some(events))
                }
            }
        };
        // The builder's own request hears every event; one that joins, those from then on.
        let mut events = first_events.unwrap_or_else(|| flight.progress.subscribe());
        let mut done = flight.done.clone();
        loop {
            if let Some(result) = done.borrow().clone() {
                result?;
                break;
            }
            tokio::select! {
                changed = done.changed() => {
                    if changed.is_err() && done.borrow().is_none() {
                        return Err(store_err(&self.root, "the build task ended without a result"));
                    }
                }
                event = events.recv() => {
                    if let (Ok(event), Some(tx)) = (event, progress.as_ref()) {
                        let _ = tx.send(event).await;
                    }
                }
            }
        }
        self.set_name(name, &key)?;
        let info = self.info_of(name, &key)?;
        if let Some(tx) = progress.as_ref() {
            let _ = tx
                .send(BuildProgress::stage(
                    BuildStage::Done,
                    format!("rootfs '{name}' ready"),
                ))
                .await;
        }
        Ok(BuildResult { info, outcome })
    }

    fn start_flight(
        &self,
        key: String,
        resolved: ResolvedSource,
    ) -> (Arc<Flight>, broadcast::Receiver<BuildProgress>) {
        let (progress, first_events) = broadcast::channel(256);
        let (done_tx, done_rx) = watch::channel(None);
        let flight = Arc::new(Flight {
            progress: progress.clone(),
            done: done_rx,
        });
        let store = self.clone();
        tokio::spawn(async move {
            let blocking_store = store.clone();
            let k = key.clone();
            let result = tokio::task::spawn_blocking(move || {
                blocking_store.build_entry_locked(&k, &resolved, &|p| {
                    let _ = progress.send(p);
                })
            })
            .await
            .unwrap_or_else(|e| Err(store_err(&store.root, format!("build task failed: {e}"))));
            if let Ok(mut inflight) = store.inflight.lock() {
                inflight.remove(&key);
            }
            let _ = done_tx.send(Some(result));
        });
        (flight, first_events)
    }

    /// Builds entry `key` under the cross-process lock, unless another process already did.
    fn build_entry_locked(
        &self,
        key: &str,
        resolved: &ResolvedSource,
        progress: &dyn Fn(BuildProgress),
    ) -> Result<(), RootfsError> {
        let lock_path = self.root.join("locks").join(format!("{key}.lock"));
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| store_err(&lock_path, e))?;
        let _lock =
            match nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
                Ok(l) => l,
                Err((file, _)) => {
                    progress(BuildProgress::stage(
                        BuildStage::Waiting,
                        "another process is building this rootfs; waiting for it",
                    ));
                    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
                        .map_err(|(_, e)| store_err(&lock_path, e))?
                }
            };
        if self.entry_dir(key).join("meta.json").exists() {
            return Ok(());
        }
        self.build_entry(key, resolved, progress)
    }

    fn build_entry(
        &self,
        key: &str,
        resolved: &ResolvedSource,
        progress: &dyn Fn(BuildProgress),
    ) -> Result<(), RootfsError> {
        let started = Instant::now();
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{key}.{}", std::process::id()));
        self.discard(&tmp)?;
        let tree = tmp.join("rootfs");
        let log_path = self.log_path(key);
        let mut log = File::create(&log_path).map_err(|e| store_err(&log_path, e))?;
        tracing::info!(key, source = %resolved.source.describe(), "building rootfs");
        // Held until the entry is in place: its layers are not collected meanwhile.
        let mut layers_in_use = None;
        let built = match &resolved.source {
            RootfsSource::Image {
                reference,
                platform,
                credentials,
            } => fs::create_dir_all(&tmp)
                .map_err(|e| store_err(&tmp, e))
                .and_then(|()| {
                    layers_in_use = Some(image::layers::Layers::new(&self.root).building()?);
                    let wanted = image::Wanted {
                        reference,
                        platform,
                        credentials,
                        digest: resolved.digest.as_deref(),
                    };
                    let meta =
                        image::import(&self.root, &wanted, &self.images, progress, &mut |line| {
                            let _ =
                                std::io::Write::write_all(&mut log, format!("{line}\n").as_bytes());
                        })?;
                    write_json_atomic(&tmp.join("image.json"), &meta)
                        .map_err(|e| store_err(&tmp, e))
                }),
            _ => fs::create_dir_all(&tree)
                .map_err(|e| store_err(&tree, e))
                .and_then(|()| {
                    build::build_into(
                        resolved,
                        &tree,
                        &mut build::BuildSink {
                            log: &mut log,
                            progress,
                        },
                    )
                }),
        };
        let finished = built.and_then(|()| {
            progress(BuildProgress::stage(
                BuildStage::Finalizing,
                "recording and moving into place",
            ));
            let meta = EntryMeta {
                key: key.to_string(),
                source: resolved.clone(),
                created_ms: unix_millis_now(),
                size_bytes: match read_json::<image::ImageMeta>(&tmp.join("image.json")) {
                    Ok(image) => image.unpacked_bytes(),
                    Err(_) => disk_usage(&tree),
                },
                build_millis: started.elapsed().as_millis() as u64,
            };
            write_json_atomic(&tmp.join("meta.json"), &meta).map_err(|e| store_err(&tmp, e))?;
            let dest = self.entry_dir(key);
            fs::rename(&tmp, &dest).map_err(|e| store_err(&dest, e))
        });
        drop(layers_in_use);
        // Layers a failed import published before it failed go, unless an entry uses them.
        if finished.is_err() && matches!(resolved.source, RootfsSource::Image { .. }) {
            if let Err(e) = self.collect_layers() {
                tracing::warn!(key, error = %e, "cannot collect the layers of a failed import");
            }
        }
        if let Err(e) = finished {
            let _ = self.discard(&tmp);
            let e = match e {
                RootfsError::BuildFailed { step, message } => RootfsError::BuildFailed {
                    step,
                    message: format!("{message} (full log: {})", log_path.display()),
                },
                other => other,
            };
            tracing::warn!(key, error = %e, "rootfs build failed");
            return Err(e);
        }
        tracing::info!(
            key,
            millis = started.elapsed().as_millis() as u64,
            "rootfs built"
        );
        Ok(())
    }

    /// Removes a directory of the store, unmounting anything a tool left mounted inside it
    /// first, so that deleting can never reach through a mount into the host.
    fn discard(&self, dir: &Path) -> Result<(), RootfsError> {
        if !dir.exists() {
            return Ok(());
        }
        let left = unmount_below(dir);
        if !left.is_empty() {
            return Err(store_err(
                dir,
                format!("still mounted inside: {left:?}; not deleting"),
            ));
        }
        fs::remove_dir_all(dir).map_err(|e| store_err(dir, e))
    }

    fn set_name(&self, name: &str, key: &str) -> Result<(), RootfsError> {
        let path = self.name_file(name);
        write_json_atomic(
            &path,
            &NameRecord {
                key: key.to_string(),
            },
        )
        .map_err(|e| store_err(&path, e))
    }

    fn info_of(&self, name: &str, key: &str) -> Result<RootfsInfo, RootfsError> {
        let dir = self.entry_dir(key);
        let meta: EntryMeta = read_json(&dir.join("meta.json")).map_err(|e| store_err(&dir, e))?;
        let image: Option<image::ImageMeta> = match meta.source.source {
            RootfsSource::Image { .. } => {
                let path = dir.join("image.json");
                Some(read_json(&path).map_err(|e| store_err(&path, e))?)
            }
            _ => None,
        };
        let layers = match &image {
            Some(image) => {
                let store = image::layers::Layers::new(&self.root);
                image
                    .layers
                    .iter()
                    .rev()
                    .map(|l| store.tree(&l.diff_id))
                    .collect::<Result<Vec<_>, _>>()?
            }
            None => vec![dir.join("rootfs")],
        };
        Ok(RootfsInfo {
            name: name.to_string(),
            key: key.to_string(),
            source: meta.source.source,
            created_ms: meta.created_ms,
            size_bytes: meta.size_bytes,
            build_millis: meta.build_millis,
            path: layers
                .first()
                .cloned()
                .unwrap_or_else(|| dir.join("rootfs")),
            layers,
            image,
        })
    }

    /// Names in the store, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.root.join("names"))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(|n| n.strip_suffix(".json"))
                            .map(str::to_string)
                    })
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// The rootfs called `name`.
    pub fn get(&self, name: &str) -> Result<RootfsInfo, RootfsError> {
        validate_name("rootfs name", name)?;
        let record: NameRecord = read_json(&self.name_file(name)).map_err(|_| {
            let known = self.names();
            RootfsError::NotFound {
                name: name.to_string(),
                known: if known.is_empty() {
                    "none; build one first".into()
                } else {
                    known.join(", ")
                },
            }
        })?;
        self.info_of(name, &record.key)
    }

    /// Every named rootfs.
    pub fn list(&self) -> Vec<RootfsInfo> {
        self.names()
            .iter()
            .filter_map(|n| self.get(n).ok())
            .collect()
    }

    /// Removes the name, and its entry when no other name refers to it. `users` are the
    /// containers that use the entry; the removal is refused while there are any.
    pub fn remove(&self, name: &str, users: &[String]) -> Result<(), RootfsError> {
        let info = self.get(name)?;
        if !users.is_empty() {
            return Err(RootfsError::InUse {
                name: name.to_string(),
                users: users.join(", "),
            });
        }
        let name_file = self.name_file(name);
        fs::remove_file(&name_file).map_err(|e| store_err(&name_file, e))?;
        let still_named = self
            .names()
            .iter()
            .any(|n| self.get(n).is_ok_and(|i| i.key == info.key));
        if !still_named {
            self.discard(&self.entry_dir(&info.key))?;
            let _ = fs::remove_file(self.log_path(&info.key));
            let _ = fs::remove_file(self.root.join("locks").join(format!("{}.lock", info.key)));
            if info.image.is_some() {
                self.collect_layers()?;
            }
        }
        Ok(())
    }

    /// Removes the image layers no entry uses; returns their diff ids.
    pub fn collect_layers(&self) -> Result<Vec<String>, RootfsError> {
        let entries = || {
            self.entry_keys()
                .iter()
                .map(|k| self.entry_dir(k))
                .collect::<Vec<_>>()
        };
        let removed = image::collect_layers(&self.root, entries)?;
        if !removed.is_empty() {
            tracing::info!(
                layers = removed.len(),
                "removed image layers no rootfs uses"
            );
        }
        Ok(removed)
    }

    /// Entries being built right now (in this store's `tmp/`).
    pub fn builds_in_progress(&self) -> Vec<String> {
        fs::read_dir(self.root.join("tmp"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Keys of the entries in the store.
    pub fn entry_keys(&self) -> Vec<String> {
        fs::read_dir(self.root.join("entries"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}
