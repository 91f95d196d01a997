//! Where a rootfs comes from, as a request states it: debootstrap (suite, variant, extra
//! packages, architecture, mirror), a tarball, a directory or an initramfs image on the
//! agent's host. Checking a source needs no host, so the controller refuses a bad one before
//! any node is asked; resolving it (the host's mirror and architecture, fingerprints of local
//! files) is the agent's work.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why a source was refused; the message names the field and the fix.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("invalid rootfs source: {0}")]
pub struct InvalidSource(pub String);

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
    /// An OCI or Docker image (see [`crate::image_ref`]): its layers are unpacked once per
    /// node and shared; its config gives the container's defaults.
    Image {
        /// `oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]`, `docker-archive:FILE` or
        /// `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]`.
        reference: String,
        /// `os/arch[/variant]` to pick from a multi-platform image; empty: the node's.
        #[serde(default)]
        platform: String,
        /// Which entry of the agent's registry credentials file to use; empty: the one of
        /// the reference's registry, if any. Never a secret itself.
        #[serde(default)]
        credentials: String,
    },
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
    pub fn validate(&self) -> Result<(), InvalidSource> {
        let bad = |field: &str, value: &str, rule: &str| {
            Err(InvalidSource(format!(
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
            RootfsSource::Image {
                reference,
                platform,
                credentials,
            } => {
                crate::image_ref::ImageRef::parse(reference)
                    .map_err(|e| InvalidSource(e.to_string()))?;
                crate::image_ref::validate_platform(platform).map_err(InvalidSource)?;
                if !credentials.is_empty() && !is_token(credentials, &['-', '.', '_', ':', '/']) {
                    return bad(
                        "credentials",
                        credentials,
                        "name an entry of the agent's registry credentials file (HOST[:PORT], or HOST[:PORT]/NAMESPACE)",
                    );
                }
                Ok(())
            }
            RootfsSource::Tarball { path }
            | RootfsSource::Directory { path }
            | RootfsSource::Initramfs { path } => {
                if !path.is_absolute() {
                    return Err(InvalidSource(format!(
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
            RootfsSource::Image { reference, .. } => format!("image {reference}"),
        }
    }
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
    fn json_form() {
        let s: RootfsSource = serde_json::from_str(
            r#"{"type":"debootstrap","suite":"bookworm","variant":"minbase","include":["procps"]}"#,
        )
        .expect("parse");
        assert_eq!(s.describe(), "debootstrap bookworm (minbase)");
    }
}
