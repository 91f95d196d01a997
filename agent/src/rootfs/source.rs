//! Where a rootfs comes from, and the cache key that names its store entry.
//!
//! A source is resolved before it is keyed: the mirror and architecture that `debootstrap`
//! will really use are filled in, and local files are fingerprinted by size and modification
//! time. The key is the SHA-256 of the resolved source's canonical JSON, so the same request
//! finds the same entry and any change in what would be built gives a new one.

use std::path::Path;
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

pub use hutch_core::rootfs_source::{InvalidSource, RootfsSource};
use sha2::{Digest, Sha256};

use super::apt_sources;
use super::RootfsError;

/// A source with everything that decides its content filled in; this is what is keyed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedSource {
    /// The source with mirror and arch filled in.
    pub source: RootfsSource,
    /// For local files and directories: size and modification time when resolved.
    pub fingerprint: Option<(u64, u64)>,
    /// For a registry image: the digest its reference named when resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

impl ResolvedSource {
    /// The content-addressed key of this source: 24 hex digits of SHA-256.
    pub fn key(&self) -> String {
        let canonical = serde_json::to_vec(self).unwrap_or_default();
        let digest = Sha256::digest(&canonical);
        digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
    }
}

/// Resolving a source on this host.
pub trait Resolve {
    /// Fills in the mirror and architecture from the host, fingerprints local paths.
    fn resolve(&self) -> Result<ResolvedSource, RootfsError>;
}

impl Resolve for RootfsSource {
    fn resolve(&self) -> Result<ResolvedSource, RootfsError> {
        self.validate()?;
        match self {
            RootfsSource::Debootstrap {
                suite,
                variant,
                include,
                arch,
                mirror,
            } => {
                let mirror = if mirror.is_empty() {
                    apt_sources::host_debian_mirror().ok_or_else(|| {
                        RootfsError::InvalidSource(
                            "no mirror given and none found in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list; pass a mirror URL".into(),
                        )
                    })?
                } else {
                    mirror.clone()
                };
                let arch = if arch.is_empty() {
                    host_arch()
                } else {
                    arch.clone()
                };
                let mut include = include.clone();
                include.sort();
                include.dedup();
                Ok(ResolvedSource {
                    source: RootfsSource::Debootstrap {
                        suite: suite.clone(),
                        variant: variant.clone(),
                        include,
                        arch,
                        mirror,
                    },
                    fingerprint: None,
                    digest: None,
                })
            }
            RootfsSource::Tarball { path } => {
                let fingerprint = fingerprint(path, false)?;
                check_archive(path)?;
                Ok(ResolvedSource {
                    source: self.clone(),
                    fingerprint: Some(fingerprint),
                    digest: None,
                })
            }
            RootfsSource::Initramfs { path } => Ok(ResolvedSource {
                source: self.clone(),
                fingerprint: Some(fingerprint(path, false)?),
                digest: None,
            }),
            RootfsSource::Directory { path } => Ok(ResolvedSource {
                source: self.clone(),
                fingerprint: Some(fingerprint(path, true)?),
                digest: None,
            }),
            RootfsSource::Image {
                reference,
                platform,
                credentials,
            } => {
                use hutch_core::image_ref::ImageRef;
                let parsed = ImageRef::parse(reference)
                    .map_err(|e| RootfsError::InvalidSource(e.to_string()))?;
                // Local images are keyed by their files (a layout by its index), registry
                // ones by the digest the store resolves next.
                let fingerprint = match &parsed {
                    ImageRef::OciLayout { dir, .. } => {
                        fingerprint(dir, true)?;
                        Some(fingerprint(&dir.join("index.json"), false)?)
                    }
                    ImageRef::OciArchive { file, .. } | ImageRef::DockerArchive { file } => {
                        Some(fingerprint(file, false)?)
                    }
                    ImageRef::Registry { .. } => None,
                };
                Ok(ResolvedSource {
                    source: RootfsSource::Image {
                        reference: parsed.to_string(),
                        platform: platform.clone(),
                        credentials: credentials.clone(),
                    },
                    fingerprint,
                    digest: None,
                })
            }
        }
    }
}

/// Size and modification time of a source that must be a directory (`want_dir`) or a regular
/// file. Only the metadata is read: a FIFO or a device is refused without being opened, so
/// it can neither hang a build nor be read from.
fn fingerprint(path: &Path, want_dir: bool) -> Result<(u64, u64), RootfsError> {
    let meta = std::fs::metadata(path).map_err(|e| {
        RootfsError::SourceMissing(format!("cannot read '{}': {e}", path.display()))
    })?;
    if !want_dir && !meta.is_file() && !meta.is_dir() {
        return Err(RootfsError::InvalidSource(format!(
            "'{}' is {}, not a regular file: give an archive file",
            path.display(),
            file_kind(&meta)
        )));
    }
    if want_dir != meta.is_dir() {
        return Err(RootfsError::InvalidSource(format!(
            "'{}' is {}, expected {}",
            path.display(),
            if meta.is_dir() {
                "a directory"
            } else {
                "not a directory"
            },
            if want_dir { "a directory" } else { "a file" }
        )));
    }
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok((meta.len(), mtime))
}

/// What kind of non-regular file `meta` describes, for messages.
fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

/// Refuses a tarball source that is not an archive `tar` can read: compressed (gzip, zstd,
/// xz, bzip2; the content is checked by `tar` when it is extracted) or a tar whose first
/// header carries the POSIX `ustar` magic.
pub fn check_archive(path: &Path) -> Result<(), RootfsError> {
    use std::io::Read;
    let mut head = Vec::with_capacity(512);
    std::fs::File::open(path)
        .and_then(|f| f.take(512).read_to_end(&mut head))
        .map_err(|e| {
            RootfsError::SourceMissing(format!("cannot read '{}': {e}", path.display()))
        })?;
    let ustar = head.get(257..262) == Some(b"ustar".as_slice());
    if ustar || super::cpio::Compression::from_magic(&head).is_some() {
        return Ok(());
    }
    Err(RootfsError::InvalidSource(format!(
        "'{}' is not a tar archive (plain, or gzip, zstd, xz or bzip2 compressed)",
        path.display()
    )))
}

/// Refuses a directory source that would copy the host: `/`, a system directory, anything
/// under `/proc`, `/sys`, `/dev`, `/etc`, `/root`, `/boot` or `/run` (keys, credentials,
/// other runtimes' roots), the rootfs store or one of its ancestors, and each `private`
/// directory (the agent's state directory, which holds its keys and the containers'
/// layers), its ancestors and what lies in it, except the rootfs trees of the store's
/// entries (copying one under a new name is fine). `path` is taken as it resolves, so a
/// symlink (or `/proc/1/root`) to one of these is refused too. Returns the resolved path,
/// which is what the build copies (so a symlink swapped in afterwards changes nothing).
pub fn check_directory_source(
    path: &Path,
    store_root: &Path,
    private: &[std::path::PathBuf],
) -> Result<std::path::PathBuf, RootfsError> {
    const SYSTEM: [&str; 14] = [
        "/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/proc", "/root", "/run", "/sbin",
        "/sys", "/usr", "/var",
    ];
    const NEVER_UNDER: [&str; 7] = ["/proc", "/sys", "/dev", "/etc", "/root", "/boot", "/run"];
    let refuse = |real: &Path| {
        RootfsError::InvalidSource(format!(
            "directory '{}'{} is the host's own (a system directory, or one holding hutch's state): a rootfs directory must be a tree made for containers",
            path.display(),
            if real != path {
                format!(" (resolves to '{}')", real.display())
            } else {
                String::new()
            }
        ))
    };
    // Before anything is read (a path under /proc may not even be readable), on the path
    // with its `..` taken lexically, so `/../proc/1/root` is caught too.
    let lexical = lexically_normal(path);
    if NEVER_UNDER.iter().any(|d| lexical.starts_with(d)) {
        return Err(refuse(&lexical));
    }
    let real = std::fs::canonicalize(path).map_err(|e| {
        RootfsError::SourceMissing(format!("cannot read '{}': {e}", path.display()))
    })?;
    let refused = SYSTEM.iter().any(|d| real == Path::new(d))
        || NEVER_UNDER.iter().any(|d| real.starts_with(d))
        || {
            let resolve = |dir: &Path| std::fs::canonicalize(dir).unwrap_or_else(|_| dir.into());
            let entries = resolve(&store_root.join("entries"));
            resolve(store_root).starts_with(&real)
                || private.iter().any(|dir| {
                    let dir = resolve(dir);
                    dir.starts_with(&real)
                        || (real.starts_with(&dir) && !real.starts_with(&entries))
                })
        };
    if refused {
        return Err(refuse(&real));
    }
    Ok(real)
}

/// `path` with `.` and `..` components resolved by their names alone (no symlink read).
fn lexically_normal(path: &Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut out = std::path::PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => out.push(name),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// The host's Debian architecture name.
pub fn host_arch() -> String {
    std::process::Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| match std::env::consts::ARCH {
            "x86_64" => "amd64".into(),
            "aarch64" => "arm64".into(),
            other => other.into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deb(include: &[&str], mirror: &str) -> RootfsSource {
        RootfsSource::Debootstrap {
            suite: "bookworm".into(),
            variant: "minbase".into(),
            include: include.iter().map(|s| s.to_string()).collect(),
            arch: "amd64".into(),
            mirror: mirror.into(),
        }
    }

    #[test]
    fn key_is_stable_and_order_insensitive_for_packages() {
        let a = deb(&["procps", "iproute2"], "http://m.example/debian")
            .resolve()
            .expect("resolve");
        let b = deb(&["iproute2", "procps"], "http://m.example/debian")
            .resolve()
            .expect("resolve");
        assert_eq!(a.key(), b.key());
        assert_eq!(a.key().len(), 24);
        let c = deb(&["procps"], "http://m.example/debian")
            .resolve()
            .expect("resolve");
        assert_ne!(a.key(), c.key());
        let d = deb(&["procps", "iproute2"], "http://other.example/debian")
            .resolve()
            .expect("resolve");
        assert_ne!(a.key(), d.key());
    }

    #[test]
    fn local_sources_are_fingerprinted() {
        let dir = std::env::temp_dir().join(format!("hutch-src-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let file = dir.join("a.tar");
        std::fs::write(&file, tar_header(512)).expect("write");
        let r = RootfsSource::Tarball { path: file.clone() }
            .resolve()
            .expect("resolve");
        assert_eq!(r.fingerprint.map(|f| f.0), Some(512));
        assert!(RootfsSource::Directory { path: file.clone() }
            .resolve()
            .is_err());
        assert!(RootfsSource::Tarball {
            path: dir.join("missing.tar")
        }
        .resolve()
        .is_err());
        std::fs::write(&file, tar_header(1024)).expect("write");
        let r2 = RootfsSource::Tarball { path: file }
            .resolve()
            .expect("resolve");
        assert_ne!(r.key(), r2.key());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    /// `len` bytes whose first block carries the `ustar` magic.
    fn tar_header(len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        bytes[257..262].copy_from_slice(b"ustar");
        bytes
    }

    #[test]
    fn what_is_no_archive_is_refused_without_being_read() {
        let refused = |path: &str| {
            let err = RootfsSource::Tarball { path: path.into() }
                .resolve()
                .expect_err(path);
            assert!(
                matches!(err, RootfsError::InvalidSource(_)),
                "{path}: {err}"
            );
            err.to_string()
        };
        assert!(refused("/etc/passwd").contains("not a tar archive"));
        assert!(refused("/dev/zero").contains("character device"));
        // A FIFO nobody writes to: opening it would block for ever.
        let fifo = std::env::temp_dir().join(format!("hutch-fifo-{}", std::process::id()));
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        let message = refused(&fifo.to_string_lossy());
        let _ = std::fs::remove_file(&fifo);
        assert!(message.contains("FIFO"), "{message}");
    }

    #[test]
    fn the_hosts_own_directories_are_no_rootfs() {
        let store = std::env::temp_dir().join(format!("hutch-store-{}", std::process::id()));
        let inside = store.join("entries");
        std::fs::create_dir_all(&inside).expect("mkdir");
        let state = store.join("state");
        std::fs::create_dir_all(state.join("containers")).expect("mkdir");
        let check =
            |path: &Path| check_directory_source(path, &store, std::slice::from_ref(&state));
        for path in [
            "/",
            "/etc",
            "/etc/ssh",
            "/usr",
            "/root/.ssh",
            "/proc/self/root",
            "/../proc/self/root",
            "/sys/kernel",
            "/dev/shm",
            "/run/containerd",
        ] {
            let err = check(Path::new(path)).expect_err(path);
            assert!(
                matches!(err, RootfsError::InvalidSource(_)),
                "{path}: {err}"
            );
        }
        let parent = store.parent().expect("parent");
        assert!(check(parent).is_err());
        assert!(check(&store).is_err());
        assert!(check(&state).is_err());
        assert!(check(&state.join("containers")).is_err());
        // A store entry's tree is container material: it may be copied under a new name.
        assert!(check(&inside).is_ok());
        let elsewhere = std::env::temp_dir().join(format!("hutch-tree-{}", std::process::id()));
        std::fs::create_dir_all(&elsewhere).expect("mkdir");
        assert!(check(&elsewhere).is_ok());
        let _ = std::fs::remove_dir_all(&elsewhere);
        let _ = std::fs::remove_dir_all(&store);
    }
}
