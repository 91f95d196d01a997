//! The per-container writable layer: an overlayfs whose lower layer is the shared, read-only
//! rootfs and whose upper and work directories belong to one container. Starting a container
//! copies nothing, so it costs the same for a 5 MB or a 500 MB rootfs; the container's writes
//! land in its upper directory and never reach the rootfs or a sibling.
//!
//! With `read_only_rootfs` the rootfs is bind-mounted read-only instead (overlayfs refuses a
//! single lower layer without an upper one).

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
    /// The shared, read-only rootfs.
    pub lower: PathBuf,
    /// The container's writes.
    pub upper: PathBuf,
    /// overlayfs's scratch directory (same filesystem as `upper`).
    pub work: PathBuf,
    /// Where the container's root is assembled.
    pub merged: PathBuf,
}

impl Layer {
    /// The layout hutch uses in a container's state directory.
    pub fn in_dir(container_dir: &Path, lower: &Path) -> Layer {
        Layer {
            lower: lower.to_path_buf(),
            upper: container_dir.join("upper"),
            work: container_dir.join("work"),
            merged: container_dir.join("rootfs"),
        }
    }

    /// The overlay mount options for this layer. Commas and colons in paths would change
    /// their meaning, so such paths are refused by the caller's naming rules.
    pub fn options(&self) -> String {
        format!(
            "lowerdir={},upperdir={},workdir={}",
            self.lower.display(),
            self.upper.display(),
            self.work.display()
        )
    }
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
    if read_only {
        let err = |source| OverlayError::Mount {
            what: "read-only rootfs bind",
            target: layer.merged.clone(),
            source,
        };
        mount(
            Some(&layer.lower),
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
    mount(
        Some("hutch-overlay"),
        &layer.merged,
        Some("overlay"),
        nodev,
        Some(layer.options().as_str()),
    )
    .map_err(|source| OverlayError::Mount {
        what: "overlay",
        target: layer.merged.clone(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_options() {
        let l = Layer::in_dir(
            Path::new("/var/lib/hutch/containers/c1"),
            Path::new("/store/e/rootfs"),
        );
        assert_eq!(
            l.merged,
            PathBuf::from("/var/lib/hutch/containers/c1/rootfs")
        );
        assert_eq!(
            l.options(),
            "lowerdir=/store/e/rootfs,upperdir=/var/lib/hutch/containers/c1/upper,workdir=/var/lib/hutch/containers/c1/work"
        );
    }
}
