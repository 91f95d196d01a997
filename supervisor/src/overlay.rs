//! The per-container writable layer: an overlayfs whose lower layer is the shared, read-only
//! rootfs and whose upper and work directories belong to one container. Starting a container
//! copies nothing, so it costs the same for a 5 MB or a 500 MB rootfs; the container's writes
//! land in its upper directory and never reach the rootfs or a sibling.
//!
//! An image rootfs is several lower layers (its image layers, top first), stacked by the
//! same overlay.
//!
//! With `read_only_rootfs` a single-layer rootfs is bind-mounted read-only instead
//! (overlayfs refuses a single lower layer without an upper one); an image's layers are
//! mounted as an overlay with no upper layer, which is read-only.
//!
//! With a disk limit, the upper and work directories live on a filesystem of exactly that
//! size: a sparse ext4 image in the container's directory (`disk.img`), loop-mounted at
//! `disk/`. A write past the limit fails with `ENOSPC` inside the container; the host's disk
//! holds only what was written. ext4 because the host's filesystem may have no project
//! quotas (overlay2's way in Docker needs xfs with `pquota`); the image costs about 40 ms at
//! start (`mkfs.ext4` without a journal, then the mount) and goes with the container.

use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use thiserror::Error;

/// Why the layer could not be mounted.
#[derive(Debug, Error)]
pub enum OverlayError {
    /// The kernel has no overlayfs.
    #[error("the kernel has no overlay filesystem (CONFIG_OVERLAY_FS; try 'modprobe overlay'): hutch does not fall back to copying the rootfs")]
    Unsupported,
    /// A directory could not be created.
    #[error("creating {path}: {source}")]
    Prepare {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The filesystem of a disk limit could not be made or mounted.
    #[error("disk limit: {0}")]
    SizeLimit(String),
    /// The mount system call failed.
    #[error("mounting {what} on {target}: {source}")]
    Mount {
        /// What was being mounted.
        what: &'static str,
        /// Where.
        target: PathBuf,
        /// The errno.
        source: nix::Error,
    },
}

/// The directories of one container's layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// The shared, read-only rootfs: one tree, or an image's layers, top first.
    pub lowers: Vec<PathBuf>,
    /// The container's writes.
    pub upper: PathBuf,
    /// overlayfs's scratch directory (same filesystem as `upper`).
    pub work: PathBuf,
    /// Where the container's root is assembled.
    pub merged: PathBuf,
}

impl Layer {
    /// The layout hutch uses in a container's state directory; `size_limited` puts the
    /// upper and work directories on the limited filesystem (see [`mount_size_limit`]).
    pub fn in_dir(container_dir: &Path, lowers: &[PathBuf], size_limited: bool) -> Layer {
        let writes = if size_limited {
            container_dir.join(SIZE_LIMITED_DIR)
        } else {
            container_dir.to_path_buf()
        };
        Layer {
            lowers: lowers.to_vec(),
            upper: writes.join("upper"),
            work: writes.join("work"),
            merged: container_dir.join("rootfs"),
        }
    }

    /// The overlay mount options for this layer. Commas and colons in paths would change
    /// their meaning, so such paths are refused by the caller's naming rules.
    pub fn options(&self) -> String {
        format!(
            "{},upperdir={},workdir={}",
            self.lowerdir(),
            self.upper.display(),
            self.work.display()
        )
    }

    /// `lowerdir=TOP:...:BOTTOM`.
    fn lowerdir(&self) -> String {
        let dirs: Vec<String> = self
            .lowers
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        format!("lowerdir={}", dirs.join(":"))
    }

    /// The options as mounted: image layers by their short links (see [`short_lowers`]),
    /// with the directory the mount must be made from.
    fn mount_options(&self, with_upper: bool) -> (Option<PathBuf>, String) {
        let (base, lowers) = short_lowers(&self.lowers);
        let lowerdir = format!("lowerdir={}", lowers.join(":"));
        let options = if with_upper {
            format!(
                "{lowerdir},upperdir={},workdir={}",
                self.upper.display(),
                self.work.display()
            )
        } else {
            lowerdir
        };
        (base, options)
    }
}

/// Where the layer store keeps a short link to each layer: `LAYERS/l/SHORT -> ../HEX/diff`.
pub const SHORT_LINK_DIR: &str = "l";
/// Hex digits of a layer's diff id in its short link's name.
pub const SHORT_LINK_LEN: usize = 20;

/// `lowers` as the overlay's option names them: each image layer (`.../layers/HEX/diff`
/// whose short link exists) as `l/SHORT` relative to the layer store, the rest as given,
/// and the store's directory to mount from (`None` when no layer is shortened). overlayfs
/// takes its options in one page: full paths fit about 35 layers, short links over 150.
pub fn short_lowers(lowers: &[PathBuf]) -> (Option<PathBuf>, Vec<String>) {
    let mut base: Option<PathBuf> = None;
    let names = lowers
        .iter()
        .map(|lower| {
            let short = (|| {
                let layer_dir = lower.strip_suffix_dir("diff")?;
                let hex = layer_dir.file_name()?.to_str()?;
                let store = layer_dir.parent()?;
                if hex.len() != 64 || base.as_ref().is_some_and(|b| b != store) {
                    return None;
                }
                let name = &hex[..SHORT_LINK_LEN];
                let link = store.join(SHORT_LINK_DIR).join(name);
                let target = std::fs::read_link(&link).ok()?;
                (target == Path::new("..").join(hex).join("diff")).then(|| {
                    base = Some(store.to_path_buf());
                    format!("{SHORT_LINK_DIR}/{name}")
                })
            })();
            short.unwrap_or_else(|| lower.display().to_string())
        })
        .collect();
    (base, names)
}

/// `dir/NAME` -> `dir`, when the last component is NAME.
trait StripSuffixDir {
    fn strip_suffix_dir(&self, name: &str) -> Option<&Path>;
}

impl StripSuffixDir for PathBuf {
    fn strip_suffix_dir(&self, name: &str) -> Option<&Path> {
        (self.file_name()? == name).then(|| self.parent()).flatten()
    }
}

/// Runs `mount_it` with `dir` as the working directory (restored after), so that relative
/// lower directories resolve in it.
fn from_dir<T>(
    dir: Option<&Path>,
    mount_it: impl FnOnce() -> Result<T, OverlayError>,
) -> Result<T, OverlayError> {
    let Some(dir) = dir else {
        return mount_it();
    };
    let prepare = |source: std::io::Error| OverlayError::Prepare {
        path: dir.to_path_buf(),
        source,
    };
    let here = std::fs::File::open(".").map_err(prepare)?;
    nix::unistd::chdir(dir).map_err(|e| prepare(e.into()))?;
    let result = mount_it();
    nix::unistd::fchdir(&here).map_err(|e| prepare(e.into()))?;
    result
}

impl Layer {}

/// Where the size-limited filesystem is mounted, in the container's directory.
const SIZE_LIMITED_DIR: &str = "disk";
/// Its image file, in the container's directory.
const SIZE_LIMITED_IMAGE: &str = "disk.img";

/// Makes and mounts a filesystem of `bytes` for the writable layer of the container whose
/// directory is `container_dir` (a sparse image: only what is written takes host disk). The
/// mount goes with the others below the container's directory when it ends; the loop device
/// is released with it (`autoclear`).
pub fn mount_size_limit(container_dir: &Path, bytes: u64) -> Result<(), OverlayError> {
    let image = container_dir.join(SIZE_LIMITED_IMAGE);
    let target = container_dir.join(SIZE_LIMITED_DIR);
    let fail = |step: &str, e: &dyn std::fmt::Display| {
        OverlayError::SizeLimit(format!("{step} ({bytes} bytes, {}): {e}", image.display()))
    };
    // 0600: the image holds the container's files, whatever their own modes.
    std::os::unix::fs::OpenOptionsExt::mode(
        std::fs::OpenOptions::new().write(true).create_new(true),
        0o600,
    )
    .open(&image)
    .and_then(|f| f.set_len(bytes))
    .map_err(|e| fail("creating the image", &e))?;
    mkdir(&target)?;
    let run = |step: &str, cmd: &mut std::process::Command| {
        let out = cmd.output().map_err(|e| fail(step, &e))?;
        if out.status.success() {
            return Ok(());
        }
        let said = String::from_utf8_lossy(&out.stderr);
        Err(fail(step, &format_args!("{}: {}", out.status, said.trim())))
    };
    // No journal, no reserved blocks, no room to grow: every byte of the limit is the
    // container's (less ext4's own metadata, a few percent).
    run(
        "mkfs.ext4",
        std::process::Command::new(system_tool("mkfs.ext4"))
            .args(["-q", "-F", "-m", "0", "-O", "^has_journal,^resize_inode"])
            .args(["-E", "lazy_itable_init=1,nodiscard"])
            .arg(&image),
    )?;
    run(
        "mounting the image",
        std::process::Command::new(system_tool("mount"))
            .args(["-o", "loop,nosuid,nodev"])
            .arg(&image)
            .arg(&target),
    )
}

/// A system program by its full path where it is found (a daemon's `PATH` may lack the
/// sbin directories), else by name.
fn system_tool(name: &str) -> PathBuf {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Whether the running kernel offers overlayfs.
pub fn overlay_supported() -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .map(|t| {
            t.lines()
                .any(|l| l.split_whitespace().last() == Some("overlay"))
        })
        .unwrap_or(false)
}

/// Directories the container's root needs as mount points.
const MOUNT_POINT_DIRS: [&str; 3] = ["proc", "dev", "sys"];
/// Files bound over in the container's root (its network's `/etc/hosts` and friends).
const MOUNT_POINT_FILES: [&str; 3] = ["etc/hosts", "etc/resolv.conf", "etc/hostname"];

/// `CONTAINER_DIR/mountpoints`, holding the mount points no layer of `layer` has; `None`
/// when every layer set has them all.
fn mountpoints_layer(layer: &Layer) -> Result<Option<PathBuf>, OverlayError> {
    let has = |rel: &str| {
        layer
            .lowers
            .iter()
            .any(|l| std::fs::symlink_metadata(l.join(rel)).is_ok())
    };
    let Some(container_dir) = layer.merged.parent() else {
        return Ok(None);
    };
    let dir = container_dir.join("mountpoints");
    let mut made = false;
    for rel in MOUNT_POINT_DIRS.iter().filter(|r| !has(r)) {
        mkdir(&dir.join(rel))?;
        made = true;
    }
    for rel in MOUNT_POINT_FILES.iter().filter(|r| !has(r)) {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            mkdir(parent)?;
        }
        std::fs::write(&path, b"").map_err(|source| OverlayError::Prepare {
            path: path.clone(),
            source,
        })?;
        made = true;
    }
    Ok(made.then_some(dir))
}

fn mkdir(path: &Path) -> Result<(), OverlayError> {
    std::fs::create_dir_all(path).map_err(|source| OverlayError::Prepare {
        path: path.to_path_buf(),
        source,
    })
}

/// Mounts the layer at `layer.merged`: an overlay, or a read-only bind of the rootfs. With
/// `nodev`, device nodes in the rootfs or made in the writable layer cannot be opened: a
/// container uses only the `/dev` entries hutch binds in.
pub fn mount_layer(layer: &Layer, read_only: bool, nodev: bool) -> Result<(), OverlayError> {
    let nodev = if nodev {
        MsFlags::MS_NODEV
    } else {
        MsFlags::empty()
    };
    mkdir(&layer.merged)?;
    // Nothing can be created in a read-only root: the mount points it lacks come from a
    // small layer of the container's own, on top (Docker's "init layer"). A tree that has
    // them all, alone, is bound instead.
    let mountpoints = if read_only {
        mountpoints_layer(layer)?
    } else {
        None
    };
    if read_only && (layer.lowers.len() > 1 || mountpoints.is_some()) {
        if !overlay_supported() {
            return Err(OverlayError::Unsupported);
        }
        let mut with_mountpoints = layer.clone();
        if let Some(dir) = mountpoints {
            with_mountpoints.lowers.insert(0, dir);
        }
        let (base, options) = with_mountpoints.mount_options(false);
        return from_dir(base.as_deref(), || {
            mount(
                Some("hutch-overlay"),
                &layer.merged,
                Some("overlay"),
                nodev | MsFlags::MS_RDONLY,
                Some(options.as_str()),
            )
            .map_err(|source| OverlayError::Mount {
                what: "read-only overlay of the image's layers",
                target: layer.merged.clone(),
                source,
            })
        });
    }
    if read_only {
        let lower = layer.lowers.first().ok_or_else(|| OverlayError::Prepare {
            path: layer.merged.clone(),
            source: std::io::Error::other("the rootfs has no layer"),
        })?;
        let err = |source| OverlayError::Mount {
            what: "read-only rootfs bind",
            target: layer.merged.clone(),
            source,
        };
        mount(
            Some(lower),
            &layer.merged,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(err)?;
        return mount(
            None::<&str>,
            &layer.merged,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | nodev,
            None::<&str>,
        )
        .map_err(err);
    }
    if !overlay_supported() {
        return Err(OverlayError::Unsupported);
    }
    mkdir(&layer.upper)?;
    mkdir(&layer.work)?;
    let (base, options) = layer.mount_options(true);
    from_dir(base.as_deref(), || {
        mount(
            Some("hutch-overlay"),
            &layer.merged,
            Some("overlay"),
            nodev,
            Some(options.as_str()),
        )
        .map_err(|source| OverlayError::Mount {
            what: "overlay",
            target: layer.merged.clone(),
            source,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_options() {
        let l = Layer::in_dir(
            Path::new("/var/lib/hutch/containers/c1"),
            &["/store/e/rootfs".into()],
            false,
        );
        assert_eq!(
            l.merged,
            PathBuf::from("/var/lib/hutch/containers/c1/rootfs")
        );
        assert_eq!(
            l.options(),
            "lowerdir=/store/e/rootfs,upperdir=/var/lib/hutch/containers/c1/upper,workdir=/var/lib/hutch/containers/c1/work"
        );
        let layers = Layer::in_dir(
            Path::new("/c1"),
            &["/l/top".into(), "/l/base".into()],
            false,
        );
        assert!(layers
            .options()
            .starts_with("lowerdir=/l/top:/l/base,upperdir=/c1/upper"));
        // Image layers with their short links: named by them, from the store.
        let store = std::env::temp_dir().join(format!("hutch-short-{}", std::process::id()));
        let hex = "ab".repeat(32);
        std::fs::create_dir_all(store.join(&hex).join("diff")).expect("layer");
        std::fs::create_dir_all(store.join(SHORT_LINK_DIR)).expect("links");
        std::os::unix::fs::symlink(
            Path::new("..").join(&hex).join("diff"),
            store.join(SHORT_LINK_DIR).join(&hex[..SHORT_LINK_LEN]),
        )
        .expect("link");
        let lowers = vec![
            PathBuf::from("/c1/mountpoints"),
            store.join(&hex).join("diff"),
            store.join("cd".repeat(32)).join("diff"), // no link: as given
        ];
        let (base, names) = short_lowers(&lowers);
        assert_eq!(base.as_deref(), Some(store.as_path()));
        assert_eq!(names[0], "/c1/mountpoints");
        assert_eq!(names[1], format!("l/{}", &hex[..SHORT_LINK_LEN]));
        assert!(names[2].starts_with('/'));
        let _ = std::fs::remove_dir_all(&store);
        let limited = Layer::in_dir(Path::new("/c1"), &["/r".into()], true);
        assert_eq!(
            (limited.upper, limited.work, limited.merged),
            (
                "/c1/disk/upper".into(),
                "/c1/disk/work".into(),
                "/c1/rootfs".into()
            )
        );
    }
}
