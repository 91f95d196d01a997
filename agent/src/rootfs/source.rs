//! Where a rootfs comes from, and the cache key that names its store entry.
//!
//! A source is resolved before it is keyed: the mirror and architecture that `debootstrap`
//! will really use are filled in, and local files are fingerprinted by size and modification
//! time. The key is the SHA-256 of the resolved source's canonical JSON, so the same request
//! finds the same entry and any change in what would be built gives a new one.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::apt_sources;
use super::RootfsError;

/// Where a rootfs comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RootfsSource {
    /// `debootstrap [--variant V] [--include P,..] [--arch A] SUITE DIR MIRROR`.
    Debootstrap {
        /// Suite or codename, e.g. `bookworm`, `stable`, or an Ubuntu codename with its mirror.
        suite: String,
        /// debootstrap variant, e.g. `minbase`; empty for debootstrap's default.
        #[serde(default)]
        variant: String,
        /// Extra packages, e.g. `procps`, `iproute2`.
        #[serde(default)]
        include: Vec<String>,
        /// Architecture; empty means the host's (`dpkg --print-architecture`).
        #[serde(default)]
        arch: String,
        /// Mirror URL; empty means the first Debian archive URI in the host's apt sources.
        #[serde(default)]
        mirror: String,
    },
    /// A local tar archive: `.tar`, `.tar.gz`/`.tgz` or `.tar.zst` (detected by content).
    Tarball {
        /// Absolute path on the agent's host.
        path: PathBuf,
    },
    /// A local directory, copied into the store.
    Directory {
        /// Absolute path on the agent's host.
        path: PathBuf,
    },
    /// A cpio/initramfs image, e.g. `/boot/initrd.img-$(uname -r)` (gzip, zstd, xz, bzip2 or
    /// uncompressed, with or without an early microcode archive in front).
    Initramfs {
        /// Absolute path on the agent's host.
        path: PathBuf,
    },
}

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

fn is_token(s: &str, extra: &[char]) -> bool {
    !s.is_empty()
        && !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
}

impl RootfsSource {
    /// The default rootfs of hutch: Debian bookworm, minbase, with `procps` and `iproute2` so
    /// the tutorial's `ps -ef` and `ip addr` work inside.
    pub fn default_debian() -> Self {
        RootfsSource::Debootstrap {
            suite: "bookworm".into(),
            variant: "minbase".into(),
            include: vec!["procps".into(), "iproute2".into()],
            arch: String::new(),
            mirror: String::new(),
        }
    }

    /// Checks the source's fields without touching the host; every value that reaches a
    /// command line is a plain token, never an option.
    pub fn validate(&self) -> Result<(), RootfsError> {
        let bad = |field: &str, value: &str, rule: &str| {
            Err(RootfsError::InvalidSource(format!(
                "{field} '{value}' is invalid: {rule}"
            )))
        };
        match self {
            RootfsSource::Debootstrap {
                suite,
                variant,
                include,
                arch,
                mirror,
            } => {
                if !is_token(suite, &['-', '.', '_']) {
                    return bad("suite", suite, "use a codename such as bookworm or stable");
                }
                if !variant.is_empty()
                    && !["minbase", "buildd", "fakechroot"].contains(&variant.as_str())
                {
                    return bad(
                        "variant",
                        variant,
                        "choose minbase, buildd or fakechroot (or leave it empty)",
                    );
                }
                for p in include {
                    if !is_token(p, &['-', '.', '+']) {
                        return bad(
                            "package",
                            p,
                            "Debian package names use a-z, 0-9, '+', '-' and '.'",
                        );
                    }
                }
                if !arch.is_empty() && !is_token(arch, &[]) {
                    return bad(
                        "arch",
                        arch,
                        "use a Debian architecture such as amd64 or arm64",
                    );
                }
                if !mirror.is_empty()
                    && (!(mirror.starts_with("http://")
                        || mirror.starts_with("https://")
                        || mirror.starts_with("file:/"))
                        || mirror.chars().any(|c| c.is_whitespace() || c.is_control()))
                {
                    return bad("mirror", mirror, "give an http://, https:// or file:/ URL");
                }
                Ok(())
            }
            RootfsSource::Tarball { path }
            | RootfsSource::Directory { path }
            | RootfsSource::Initramfs { path } => {
                if !path.is_absolute() {
                    return Err(RootfsError::InvalidSource(format!(
                        "path '{}' must be absolute (it is read on the agent's host)",
                        path.display()
                    )));
                }
                Ok(())
            }
        }
    }

    /// A short description for listings: `debootstrap bookworm (minbase)`, `tarball /x.tar`.
    pub fn describe(&self) -> String {
        match self {
            RootfsSource::Debootstrap { suite, variant, .. } if !variant.is_empty() => {
                format!("debootstrap {suite} ({variant})")
            }
            RootfsSource::Debootstrap { suite, .. } => format!("debootstrap {suite}"),
            RootfsSource::Tarball { path } => format!("tarball {}", path.display()),
            RootfsSource::Directory { path } => format!("directory {}", path.display()),
            RootfsSource::Initramfs { path } => format!("initramfs {}", path.display()),
        }
    }

    /// Fills in the mirror and architecture from the host, fingerprints local paths.
    pub fn resolve(&self) -> Result<ResolvedSource, RootfsError> {
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
    fn refuses_option_injection_and_bad_fields() {
        let mut s = deb(&["--foo"], "");
        assert!(s.validate().is_err());
        s = deb(&[], "ftp://x");
        assert!(s.validate().is_err());
        s = RootfsSource::Debootstrap {
            suite: "-v".into(),
            variant: String::new(),
            include: vec![],
            arch: String::new(),
            mirror: String::new(),
        };
        assert!(s.validate().is_err());
        s = RootfsSource::Debootstrap {
            suite: "bookworm".into(),
            variant: "huge".into(),
            include: vec![],
            arch: String::new(),
            mirror: String::new(),
        };
        assert!(s.validate().is_err());
        assert!(RootfsSource::Tarball {
            path: "rel/x.tar".into()
        }
        .validate()
        .is_err());
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

    #[test]
    fn json_form() {
        let s: RootfsSource = serde_json::from_str(
            r#"{"type":"debootstrap","suite":"bookworm","variant":"minbase","include":["procps"]}"#,
        )
        .expect("parse");
        assert_eq!(s.describe(), "debootstrap bookworm (minbase)");
    }
}
