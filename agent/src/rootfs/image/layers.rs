//! The content-addressed layer store: each layer unpacked once per node, in
//! `layers/HEX/diff/` (HEX: the layer's diff id, the digest of its uncompressed tar), with
//! `layers/HEX/layer.json` recording its size. Every image that has a layer shares its
//! directory; a container's rootfs is an overlay of its image's `diff/` directories.
//!
//! A layer is unpacked in `tmp/layer-HEX.PID/` and renamed into place only once it is
//! complete and verified, under a per-layer lock, so two pulls of one layer (in this process
//! or another) unpack it once, and a failed pull leaves nothing. Garbage collection removes
//! the layers no image entry lists, under the store-wide layers lock that every build holds
//! shared from its first layer until its entry is in place.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::digest::hex_of;
use super::unpack::Unpacked;
use super::ImageError;
use crate::fsutil::{read_json, write_json_atomic};
use hutch_supervisor::overlay::{SHORT_LINK_DIR, SHORT_LINK_LEN};

/// The layers of a rootfs store.
#[derive(Debug, Clone)]
pub struct Layers {
    /// The store's root (`layers/`, `tmp/` and `locks/` below it).
    root: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
struct LayerRecord {
    diff_id: String,
    unpacked_bytes: u64,
    #[serde(default)]
    entries: u64,
}

/// Held while a build may add layers its entry does not list yet; collection waits.
pub struct BuildGuard(#[allow(dead_code)] Flock<File>);

fn io(path: &Path) -> impl Fn(std::io::Error) -> ImageError + '_ {
    move |e| ImageError::Io(format!("{}: {e}", path.display()))
}

impl Layers {
    /// The layers of the store at `root`.
    pub fn new(root: &Path) -> Layers {
        Layers {
            root: root.to_path_buf(),
        }
    }

    fn hex(diff_id: &str) -> Result<&str, ImageError> {
        hex_of(diff_id)
            .ok_or_else(|| ImageError::Unsupported(format!("diff id '{diff_id}' is not sha256")))
    }

    /// The directory of layer `diff_id`.
    pub fn dir(&self, diff_id: &str) -> Result<PathBuf, ImageError> {
        Ok(self.root.join("layers").join(Self::hex(diff_id)?))
    }

    /// The unpacked tree of layer `diff_id` (an overlay lower directory).
    pub fn tree(&self, diff_id: &str) -> Result<PathBuf, ImageError> {
        Ok(self.dir(diff_id)?.join("diff"))
    }

    fn lock(&self, name: &str, arg: FlockArg) -> Result<Flock<File>, ImageError> {
        let path = self.root.join("locks").join(name);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        Flock::lock(file, arg)
            .map_err(|(_, e)| ImageError::Io(format!("locking {}: {e}", path.display())))
    }

    /// Keeps collection away until dropped.
    pub fn building(&self) -> Result<BuildGuard, ImageError> {
        Ok(BuildGuard(self.lock("layers.lock", FlockArg::LockShared)?))
    }

    /// Makes sure layer `diff_id` is in the store, calling `fill` to unpack it into an empty
    /// directory when it is not. Returns what it holds and whether this call unpacked it.
    pub fn ensure(
        &self,
        diff_id: &str,
        fill: impl FnOnce(&Path) -> Result<Unpacked, ImageError>,
    ) -> Result<(Unpacked, bool), ImageError> {
        let hex = Self::hex(diff_id)?.to_string();
        fs::create_dir_all(self.root.join("layers")).map_err(io(&self.root))?;
        let _lock = self.lock(&format!("layer-{hex}.lock"), FlockArg::LockExclusive)?;
        let dir = self.dir(diff_id)?;
        if let Ok(record) = read_json::<LayerRecord>(&dir.join("layer.json")) {
            self.link_short(&hex)?;
            let held = Unpacked {
                bytes: record.unpacked_bytes,
                entries: record.entries,
            };
            return Ok((held, false));
        }
        // A directory without its record is a leftover of a crash before the rename: redo it.
        let _ = fs::remove_dir_all(&dir);
        let tmp = self
            .root
            .join("tmp")
            .join(format!("layer-{hex}.{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        let tree = tmp.join("diff");
        fs::create_dir_all(&tree).map_err(io(&tree))?;
        let done = fill(&tree).and_then(|unpacked| {
            let record = LayerRecord {
                diff_id: diff_id.to_string(),
                unpacked_bytes: unpacked.bytes,
                entries: unpacked.entries,
            };
            write_json_atomic(&tmp.join("layer.json"), &record).map_err(io(&tmp))?;
            fs::rename(&tmp, &dir).map_err(io(&dir))?;
            self.link_short(&hex)?;
            Ok(unpacked)
        });
        if done.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        done.map(|bytes| (bytes, true))
    }

    /// `layers/l/SHORT -> ../HEX/diff`: the name overlay mounts use (a page of options
    /// holds over 150 of them, against about 35 full paths). Another layer with the same
    /// short name keeps the link; this one is then mounted by its full path.
    fn link_short(&self, hex: &str) -> Result<(), ImageError> {
        let links = self.root.join("layers").join(SHORT_LINK_DIR);
        fs::create_dir_all(&links).map_err(io(&links))?;
        let link = links.join(&hex[..SHORT_LINK_LEN]);
        match std::os::unix::fs::symlink(Path::new("..").join(hex).join("diff"), &link) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(io(&link)(e)),
        }
    }

    /// Diff ids of the layers in the store.
    pub fn present(&self) -> Vec<String> {
        fs::read_dir(self.root.join("layers"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| format!("sha256:{}", e.file_name().to_string_lossy()))
                    .filter(|d| hex_of(d).is_some())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Removes every layer not in `keep` (diff ids), unless a build is in progress (then
    /// nothing: the next collection, after a removal or a failed build, does it; never
    /// waiting, so a caller on an async runtime cannot stall). `keep` is asked under the
    /// lock, so no build adds a layer it would miss; when it cannot say (`None`: an entry
    /// could not be read), nothing is removed. Returns the removed diff ids.
    pub fn collect(
        &self,
        keep: impl FnOnce() -> Option<HashSet<String>>,
    ) -> Result<Vec<String>, ImageError> {
        let Ok(_exclusive) = self.lock("layers.lock", FlockArg::LockExclusiveNonblock) else {
            tracing::debug!("image builds in progress: unused layers are collected later");
            return Ok(Vec::new());
        };
        let Some(keep) = keep() else {
            tracing::warn!("an image entry could not be read: no layer is collected");
            return Ok(Vec::new());
        };
        let mut removed = Vec::new();
        for diff_id in self.present() {
            if keep.contains(&diff_id) {
                continue;
            }
            // Out of `layers/` first: a crash while deleting leaves no half layer behind
            // its record (`tmp/` is cleared at the next start).
            let dir = self.dir(&diff_id)?;
            let doomed = self.root.join("tmp").join(format!(
                "gone-{}.{}",
                Self::hex(&diff_id)?,
                std::process::id()
            ));
            fs::rename(&dir, &doomed).map_err(io(&dir))?;
            fs::remove_dir_all(&doomed).map_err(io(&doomed))?;
            if let Some(hex) = hex_of(&diff_id) {
                let link = self
                    .root
                    .join("layers")
                    .join(SHORT_LINK_DIR)
                    .join(&hex[..SHORT_LINK_LEN]);
                if fs::read_link(&link).is_ok_and(|t| t == Path::new("..").join(hex).join("diff")) {
                    let _ = fs::remove_file(&link);
                }
                let _ = fs::remove_file(self.root.join("locks").join(format!("layer-{hex}.lock")));
            }
            removed.push(diff_id);
        }
        Ok(removed)
    }
}
