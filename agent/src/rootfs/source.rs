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
                })
            }
            RootfsSource::Tarball { path } | RootfsSource::Initramfs { path } => {
                Ok(ResolvedSource {
                    source: self.clone(),
                    fingerprint: Some(fingerprint(path, false)?),
                })
            }
            RootfsSource::Directory { path } => Ok(ResolvedSource {
                source: self.clone(),
                fingerprint: Some(fingerprint(path, true)?),
            }),
        }
    }
}

fn fingerprint(path: &Path, want_dir: bool) -> Result<(u64, u64), RootfsError> {
    let meta = std::fs::metadata(path).map_err(|e| {
        RootfsError::SourceMissing(format!("cannot read '{}': {e}", path.display()))
    })?;
    if want_dir != meta.is_dir() {
        return Err(RootfsError::SourceMissing(format!(
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
        std::fs::write(&file, b"1234").expect("write");
        let r = RootfsSource::Tarball { path: file.clone() }
            .resolve()
            .expect("resolve");
        assert_eq!(r.fingerprint.map(|f| f.0), Some(4));
        assert!(RootfsSource::Directory { path: file.clone() }
            .resolve()
            .is_err());
        assert!(RootfsSource::Tarball {
            path: dir.join("missing.tar")
        }
        .resolve()
        .is_err());
        std::fs::write(&file, b"12345").expect("write");
        let r2 = RootfsSource::Tarball { path: file }
            .resolve()
            .expect("resolve");
        assert_ne!(r.key(), r2.key());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
