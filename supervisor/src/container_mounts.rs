//! The mounts a spec asks for (binds of node paths, named volumes, tmpfs), made by the
//! container's init inside its private mount namespace, before it pivots into the root.
//!
//! Two paths come from places hutch does not control, and both are opened without trusting
//! them:
//! - a **target** lies in the rootfs, whose symlinks are the image's (or a previous run's):
//!   it is resolved with `openat2(RESOLVE_IN_ROOT)`, so `/data -> /etc` in the rootfs means
//!   the rootfs's `/etc`, never the node's; missing directories are made one by one the same
//!   way;
//! - a **source** was resolved and checked by the agent (no symlink left in it): it is opened
//!   with `RESOLVE_NO_SYMLINKS`, so a component swapped for a symlink since that check fails
//!   the start instead of binding whatever the link points to.
//!
//! The mount itself goes through `/proc/self/fd/N` of those descriptors (as runc does), so
//! what was checked is what is mounted.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::mount::{mount, MsFlags};
use nix::sys::stat::Mode;
use nix::sys::statvfs::{fstatvfs, FsFlags};
use serde::{Deserialize, Serialize};

use crate::state::Failure;
use hutch_core::step::Step;

/// One mount as the agent planned it: sources resolved on the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedMount {
    /// The absolute path inside the container.
    pub target: String,
    /// The node path to bind (a bind's source, a volume's data directory), without
    /// symlinks; `None` for a tmpfs.
    pub source: Option<PathBuf>,
    /// Mounted read-only.
    pub read_only: bool,
    /// Files on it may not be executed.
    pub noexec: bool,
    /// For a tmpfs: its `-o` text (`mode=1777,size=...`).
    pub tmpfs_data: Option<String>,
}

fn failed(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Failure {
    Failure::new(Step::Mounts, format!("{what}: {e}"))
}

fn open_how(flags: OFlag, resolve: ResolveFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(resolve)
}

/// The path that mounts onto (or from) exactly what `fd` is.
fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Makes every mount of `mounts` below `root` (the container's root, not yet pivoted into),
/// parents first. Without `privileged`, every mount is nosuid and nodev.
pub fn mount_all(root: &Path, mounts: &[PlannedMount], privileged: bool) -> Result<(), Failure> {
    if mounts.is_empty() {
        return Ok(());
    }
    let root_fd = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| failed(format!("opening {}", root.display()), e))?;
    let mut ordered: Vec<&PlannedMount> = mounts.iter().collect();
    ordered.sort_by_key(|m| m.target.split('/').filter(|c| !c.is_empty()).count());
    for m in ordered {
        mount_one(&root_fd, m, privileged)?;
    }
    Ok(())
}

fn mount_one(root_fd: &OwnedFd, m: &PlannedMount, privileged: bool) -> Result<(), Failure> {
    let mut flags = MsFlags::empty();
    if !privileged {
        flags |= MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    }
    if m.read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    if m.noexec {
        flags |= MsFlags::MS_NOEXEC;
    }
    match &m.source {
        None => {
            let target = resolve_target(root_fd, &m.target, true)?;
            let data = m.tmpfs_data.as_deref().unwrap_or("mode=1777");
            mount(
                Some("tmpfs"),
                fd_path(&target).as_str(),
                Some("tmpfs"),
                flags,
                Some(data),
            )
            .map_err(|e| failed(format!("tmpfs on {}", m.target), e))
        }
        Some(source) => {
            let source_fd = openat2(
                nix::fcntl::AT_FDCWD,
                source.as_path(),
                open_how(OFlag::O_PATH, ResolveFlag::RESOLVE_NO_SYMLINKS),
            )
            .map_err(|e| match e {
                Errno::ELOOP => failed(
                    source.display(),
                    "a part of the path became a symlink after it was checked; refusing to follow it",
                ),
                e => failed(format!("opening {}", source.display()), e),
            })?;
            let is_dir = nix::sys::stat::fstat(source_fd.as_fd())
                .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
                .map_err(|e| failed(format!("stat {}", source.display()), e))?;
            let target = resolve_target(root_fd, &m.target, is_dir)?;
            mount(
                Some(fd_path(&source_fd).as_str()),
                fd_path(&target).as_str(),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| failed(format!("binding {} on {}", source.display(), m.target), e))?;
            // A bind takes its flags from a remount; the flags the source's mount has (which
            // a user namespace may not clear) are kept.
            let bound = resolve_target(root_fd, &m.target, is_dir)?;
            let kept = fstatvfs(bound.as_fd())
                .map(|st| locked_flags(st.flags()))
                .map_err(|e| failed(format!("statvfs {}", m.target), e))?;
            mount(
                None::<&str>,
                fd_path(&bound).as_str(),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags | kept,
                None::<&str>,
            )
            .map_err(|e| failed(format!("setting the flags of {}", m.target), e))
        }
    }
}

/// The mount flags of an existing mount that a remount must repeat.
fn locked_flags(st: FsFlags) -> MsFlags {
    let pairs = [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ];
    pairs
        .into_iter()
        .filter(|(st_flag, _)| st.contains(*st_flag))
        .fold(MsFlags::empty(), |acc, (_, ms)| acc | ms)
}

/// Opens `target` inside the root (`O_PATH`), making what is missing: directories, and the
/// last component as a directory or (to bind a file) an empty file.
fn resolve_target(root_fd: &OwnedFd, target: &str, dir: bool) -> Result<OwnedFd, Failure> {
    let in_root = ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS;
    let components: Vec<&str> = target.split('/').filter(|c| !c.is_empty()).collect();
    let mut parent = PathBuf::from(".");
    for (i, name) in components.iter().enumerate() {
        let path = parent.join(name);
        let last = i + 1 == components.len();
        let open = || {
            openat2(
                root_fd.as_fd(),
                path.as_path(),
                open_how(OFlag::O_PATH, in_root),
            )
        };
        match open() {
            Ok(fd) if last => return Ok(fd),
            Ok(_) => {}
            Err(Errno::ENOENT) => {
                let parent_fd = openat2(
                    root_fd.as_fd(),
                    parent.as_path(),
                    open_how(OFlag::O_PATH | OFlag::O_DIRECTORY, in_root),
                )
                .map_err(|e| failed(format!("opening the parent of {target}"), e))?;
                let made = if last && !dir {
                    nix::fcntl::openat(
                        parent_fd.as_fd(),
                        *name,
                        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                        Mode::from_bits_truncate(0o644),
                    )
                    .map(drop)
                } else {
                    nix::sys::stat::mkdirat(
                        parent_fd.as_fd(),
                        *name,
                        Mode::from_bits_truncate(0o755),
                    )
                };
                match made {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(failed(format!("creating {target} in the rootfs"), e)),
                }
                let fd = open().map_err(|e| failed(format!("opening {target}"), e))?;
                if last {
                    return Ok(fd);
                }
            }
            Err(e) => return Err(failed(format!("opening {target} in the rootfs"), e)),
        }
        parent = path;
    }
    Err(failed(target, "is not a path below the root"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remounts_keep_what_the_source_has() {
        let flags = locked_flags(FsFlags::ST_NOSUID | FsFlags::ST_RDONLY);
        assert_eq!(flags, MsFlags::MS_NOSUID | MsFlags::MS_RDONLY);
        assert_eq!(locked_flags(FsFlags::empty()), MsFlags::empty());
    }

    #[test]
    fn targets_resolve_inside_the_root_even_through_absolute_symlinks() {
        let root = std::env::temp_dir().join(format!("hutch-mounts-{}", std::process::id()));
        std::fs::create_dir_all(root.join("real")).expect("mkdir");
        std::fs::create_dir_all(root.join("etc")).expect("mkdir");
        // An absolute link, as an image could have: it must mean root/etc, not the host's.
        std::os::unix::fs::symlink("/etc", root.join("link")).expect("symlink");
        let root_fd = nix::fcntl::open(
            root.as_path(),
            OFlag::O_PATH | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .expect("open root");
        resolve_target(&root_fd, "/link/inner", true).expect("made through the link");
        assert!(root.join("etc/inner").is_dir(), "made inside the root");
        assert!(
            !Path::new("/etc/inner").exists(),
            "nothing made on the host"
        );
        resolve_target(&root_fd, "/real/file", false).expect("file");
        assert!(root.join("real/file").is_file());
        std::fs::remove_dir_all(&root).expect("cleanup");
    }
}
