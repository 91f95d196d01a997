//! The mounts a spec asks for (binds of node paths, named volumes, tmpfs), in two steps:
//!
//! 1. **Staging**, by the supervisor before it clones the container (as the node's root, in
//!    the node's mount namespace): each source is opened without following a symlink
//!    (`openat2(RESOLVE_NO_SYMLINKS)`: the agent resolved and checked it, so a component
//!    swapped for a symlink since fails the start), refused if it is a window onto the node's
//!    kernel (proc, sysfs, cgroup, ...), bound at `DIR/mounts/N` through `/proc/self/fd/N`,
//!    and given its flags there (nosuid, nodev unless privileged, ro, noexec; plus whatever
//!    flags the source's mount has). `DIR/mounts` is the supervisor's own: nothing can
//!    swap the mount between the bind and the remount, and the node's paths to the data
//!    (the volume store is 0700) are never walked by the container's init, which in a user
//!    namespace could not.
//! 2. **Mounting**, by the init in its private mount namespace before it pivots: each
//!    target is resolved inside the root with `openat2(RESOLVE_IN_ROOT)` (a symlink in the
//!    rootfs means the rootfs's path, never the node's; one leading to `/` is refused),
//!    missing directories made the same way, and the staged mount bound onto it (a bind of a
//!    bind keeps its flags; in a user namespace they are locked). A tmpfs is mounted there
//!    directly. Everything goes with the mount namespace; the staged binds are unmounted
//!    with the rest of `DIR` when the container ends.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::mount::{mount, MsFlags};
use nix::sys::stat::fstat;
use nix::sys::stat::Mode;
use nix::sys::statvfs::{statvfs, FsFlags};
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

/// Kernel filesystems that are windows onto the node itself, by `statfs` magic: a bind of
/// one (`/proc`, `/sys`, a cgroup tree, ...) would hand a container the node's kernel
/// settings, whatever path it is reached by.
const NODE_FILESYSTEMS: [(i64, &str); 13] = [
    (0x9fa0, "proc"),
    (0x6265_6572, "sysfs"),
    (0x0027_e0eb, "cgroup"),
    (0x6367_7270, "cgroup2"),
    (0x6462_6720, "debugfs"),
    (0x7363_6673, "securityfs"),
    (0x7472_6163, "tracefs"),
    (0xcafe_4a11, "bpf"),
    (0xde5e_81e4, "efivarfs"),
    (0x6165_676c, "pstore"),
    (0x6265_6570, "configfs"),
    (0x1cd1, "devpts"),
    (0x4249_4e4d, "binfmt_misc"),
];

/// The name of the node filesystem `fd` is on, if it is one of [`NODE_FILESYSTEMS`].
pub fn node_filesystem(fd: impl AsFd) -> Option<&'static str> {
    let kind = nix::sys::statfs::fstatfs(fd).ok()?.filesystem_type().0 as i64;
    NODE_FILESYSTEMS
        .iter()
        .find(|(magic, _)| *magic == kind)
        .map(|(_, name)| *name)
}

/// The path that mounts onto (or from) exactly what `fd` is.
fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

fn open_root(root: &Path) -> Result<OwnedFd, Failure> {
    nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| failed(format!("opening {}", root.display()), e))
}

/// Where the source of mount `index` is staged in a container's directory.
pub fn staged_path(container_dir: &Path, index: usize) -> PathBuf {
    container_dir.join("mounts").join(index.to_string())
}

/// The flags every mount of a container gets.
fn flags_of(m: &PlannedMount, privileged: bool) -> MsFlags {
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
    flags
}

/// Step 1 (the supervisor, before the clone): binds every source of `mounts` at its
/// [`staged_path`] below `container_dir`, with its flags, and makes the targets that are
/// missing in `root` (the container's root: the node's root may write there, a root of a
/// user namespace may not).
pub fn stage(
    container_dir: &Path,
    root: &Path,
    mounts: &[PlannedMount],
    privileged: bool,
) -> Result<(), Failure> {
    if mounts.is_empty() {
        return Ok(());
    }
    let root_fd = open_root(root)?;
    for (index, m) in mounts.iter().enumerate() {
        let Some(source) = &m.source else {
            resolve_target(&root_fd, &m.target, true)?;
            continue;
        };
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
        if let Some(fs) = node_filesystem(source_fd.as_fd()) {
            return Err(failed(
                source.display(),
                format!("is on the node's {fs} filesystem, which is never bound into a container"),
            ));
        }
        let is_dir = fstat(source_fd.as_fd())
            .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
            .map_err(|e| failed(format!("stat {}", source.display()), e))?;
        resolve_target(&root_fd, &m.target, is_dir)?;
        let staged = staged_path(container_dir, index);
        let made = match staged.parent() {
            Some(parent) => std::fs::create_dir_all(parent).and_then(|()| {
                if is_dir {
                    std::fs::create_dir(&staged)
                } else {
                    std::fs::File::create(&staged).map(drop)
                }
            }),
            None => Ok(()),
        };
        made.map_err(|e| failed(format!("creating {}", staged.display()), e))?;
        mount(
            Some(fd_path(&source_fd).as_str()),
            &staged,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| failed(format!("binding {}", source.display()), e))?;
        // The remount sets the flags anew: those the source's mount has are kept.
        let kept = statvfs(&staged)
            .map(|st| locked_flags(st.flags()))
            .map_err(|e| failed(format!("statvfs {}", staged.display()), e))?;
        mount(
            None::<&str>,
            &staged,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags_of(m, privileged) | kept,
            None::<&str>,
        )
        .map_err(|e| failed(format!("setting the flags of {}", m.target), e))?;
    }
    Ok(())
}

/// Step 2 (the init, in its mount namespace): mounts every mount of `mounts` below `root`
/// (the container's root, not yet pivoted into), parents first, binds from their staged
/// sources in `container_dir`.
pub fn mount_all(
    root: &Path,
    container_dir: &Path,
    mounts: &[PlannedMount],
    privileged: bool,
) -> Result<(), Failure> {
    if mounts.is_empty() {
        return Ok(());
    }
    let root_fd = open_root(root)?;
    let mut ordered: Vec<(usize, &PlannedMount)> = mounts.iter().enumerate().collect();
    ordered.sort_by_key(|(_, m)| m.target.split('/').filter(|c| !c.is_empty()).count());
    for (index, m) in ordered {
        let target = match &m.source {
            None => resolve_target(&root_fd, &m.target, true)?,
            Some(_) => {
                let staged = staged_path(container_dir, index);
                resolve_target(&root_fd, &m.target, staged.is_dir())?
            }
        };
        let done = match &m.source {
            None => mount(
                Some("tmpfs"),
                fd_path(&target).as_str(),
                Some("tmpfs"),
                flags_of(m, privileged),
                Some(m.tmpfs_data.as_deref().unwrap_or("mode=1777")),
            ),
            Some(_) => mount(
                Some(&staged_path(container_dir, index)),
                fd_path(&target).as_str(),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            ),
        };
        done.map_err(|e| failed(format!("mounting {}", m.target), e))?;
    }
    Ok(())
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
    let root_id = fstat(root_fd.as_fd())
        .map(|st| (st.st_dev, st.st_ino))
        .map_err(|e| failed("stat of the root", e))?;
    // A symlink in the rootfs may lead to its '/': a mount there would hide the rootfs.
    let not_the_root = |fd: OwnedFd| -> Result<OwnedFd, Failure> {
        match fstat(fd.as_fd()) {
            Ok(st) if (st.st_dev, st.st_ino) == root_id => Err(failed(
                target,
                "leads to the container's / (through a symlink in the rootfs); mount elsewhere",
            )),
            _ => Ok(fd),
        }
    };
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
            Ok(fd) if last => return not_the_root(fd),
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
                    Err(Errno::EROFS) => {
                        return Err(failed(
                            target,
                            "is not in the rootfs, which is read-only here: create it in the rootfs, or drop read_only_rootfs",
                        ))
                    }
                    Err(e) => return Err(failed(format!("creating {target} in the rootfs"), e)),
                }
                let fd = open().map_err(|e| failed(format!("opening {target}"), e))?;
                if last {
                    return not_the_root(fd);
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
        std::os::unix::fs::symlink("/", root.join("top")).expect("symlink");
        let e = resolve_target(&root_fd, "/top", true).expect_err("the root itself");
        assert!(e.message.contains("container's /"), "{}", e.message);
        let proc = nix::fcntl::open("/proc", OFlag::O_PATH, Mode::empty()).expect("/proc");
        assert_eq!(node_filesystem(&proc), Some("proc"));
        assert_eq!(node_filesystem(&root_fd), None);
        std::fs::remove_dir_all(&root).expect("cleanup");
    }
}
