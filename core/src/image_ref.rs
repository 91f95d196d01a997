//! Image references in skopeo's transport syntax, the spelling users of containers already
//! type: `oci:DIR[:TAG]` (an OCI image layout), `oci-archive:FILE[:TAG]` (a tar of one),
//! `docker-archive:FILE` (`docker save` output) and `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]`
//! (a registry, over the OCI distribution API).
//!
//! Parsing is pure, so the controller refuses a bad reference before a node is asked. A
//! registry reference must name its registry: hutch has no default registry.

use std::fmt;
use std::path::PathBuf;

use sha2::{Digest, Sha256};
use thiserror::Error;

/// Why a reference was refused; the message shows the accepted forms.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("image reference '{reference}' is invalid: {reason}; use oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE or docker://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]")]
pub struct BadReference {
    /// The reference as given.
    pub reference: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Where an image is, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// A directory holding an OCI image layout (`oci-layout`, `index.json`, `blobs/`).
    OciLayout {
        /// Absolute path of the layout.
        dir: PathBuf,
        /// The `org.opencontainers.image.ref.name` to pick; `None`: the only manifest.
        tag: Option<String>,
    },
    /// A tar archive of an OCI image layout.
    OciArchive {
        /// Absolute path of the archive.
        file: PathBuf,
        /// As for [`ImageRef::OciLayout`].
        tag: Option<String>,
    },
    /// The output of `docker save` (one image).
    DockerArchive {
        /// Absolute path of the archive.
        file: PathBuf,
    },
    /// An image in a registry.
    Registry {
        /// `HOST` or `HOST:PORT`.
        registry: String,
        /// `path/to/repo`, lower case.
        repository: String,
        /// The tag; `latest` when neither a tag nor a digest is given.
        tag: Option<String>,
        /// `sha256:HEX`, which pins the content (the tag is then informative).
        digest: Option<String>,
    },
}

/// The transports, as written before the first `:`.
pub const TRANSPORTS: [&str; 4] = ["oci:", "oci-archive:", "docker-archive:", "docker://"];

/// Whether `s` is written as an image reference (starts with a transport) rather than a
/// rootfs name, which may not hold a `:`.
pub fn looks_like_image(s: &str) -> bool {
    TRANSPORTS.iter().any(|t| s.starts_with(t))
}

/// Most bytes of a reference.
const MAX_REFERENCE_LEN: usize = 1024;

fn is_tag(s: &str) -> bool {
    // The distribution spec: [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    })
}

fn is_repository(s: &str) -> bool {
    // path-component(/path-component)*, each [a-z0-9]+((.|_|__|-+)[a-z0-9]+)*
    !s.is_empty()
        && s.len() <= 255
        && s.split('/').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
                && part.starts_with(|c: char| c.is_ascii_alphanumeric())
                && part.ends_with(|c: char| c.is_ascii_alphanumeric())
        })
}

fn is_registry(s: &str) -> bool {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || s.starts_with('[') => (h, Some(p)),
        _ => (s, None),
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && (host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-".contains(c))
            || (host.starts_with('[') && host.ends_with(']')));
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
    host_ok && port_ok
}

impl ImageRef {
    /// Parses `reference`.
    pub fn parse(reference: &str) -> Result<ImageRef, BadReference> {
        let bad = |reason: &str| BadReference {
            reference: reference.chars().take(200).collect(),
            reason: reason.to_string(),
        };
        if reference.len() > MAX_REFERENCE_LEN {
            return Err(bad("it is longer than 1024 bytes"));
        }
        if reference
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(bad("it holds a space or a control character"));
        }
        let local_path = |rest: &str,
                          with_tag: bool|
         -> Result<(PathBuf, Option<String>), BadReference> {
            let (path, tag) = match rest.rsplit_once(':') {
                Some((p, t)) if with_tag => {
                    if !is_tag(t) {
                        return Err(bad(&format!(
                            "'{t}' is not a tag (letters, digits, '_', '.', '-'; at most 128)"
                        )));
                    }
                    (p, Some(t.to_string()))
                }
                Some(_) => return Err(bad("a docker-archive takes no tag: give the file alone")),
                None => (rest, None),
            };
            if !path.starts_with('/') {
                return Err(bad(
                    "the path must be absolute (it is read on the agent's host)",
                ));
            }
            if path.split('/').any(|c| c == "..") {
                return Err(bad("the path may not contain '..'"));
            }
            Ok((PathBuf::from(path), tag))
        };
        if let Some(rest) = reference.strip_prefix("docker://") {
            let (registry, path) = rest.split_once('/').ok_or_else(|| {
                bad("name the registry and the repository (docker://HOST[:PORT]/REPO); hutch has no default registry")
            })?;
            if !is_registry(registry)
                || !(registry.contains('.') || registry.contains(':') || registry == "localhost")
            {
                return Err(bad(&format!(
                    "'{registry}' is not a registry host: give HOST[:PORT] (with a '.' or a port, or localhost); hutch has no default registry"
                )));
            }
            let (path, digest) = match path.split_once('@') {
                Some((p, d)) => {
                    if !is_digest(d) {
                        return Err(bad(&format!(
                            "'{d}' is not a digest (sha256: and 64 lower-case hex digits)"
                        )));
                    }
                    (p, Some(d.to_string()))
                }
                None => (path, None),
            };
            let (repository, tag) = match path.rsplit_once(':') {
                Some((r, t)) if !t.contains('/') => {
                    if !is_tag(t) {
                        return Err(bad(&format!(
                            "'{t}' is not a tag (letters, digits, '_', '.', '-'; at most 128)"
                        )));
                    }
                    (r, Some(t.to_string()))
                }
                _ => (path, None),
            };
            if !is_repository(repository) {
                return Err(bad(&format!(
                    "'{repository}' is not a repository (lower-case letters, digits, '.', '_', '-', separated by '/')"
                )));
            }
            let tag = if tag.is_none() && digest.is_none() {
                Some("latest".to_string())
            } else {
                tag
            };
            return Ok(ImageRef::Registry {
                registry: registry.to_string(),
                repository: repository.to_string(),
                tag,
                digest,
            });
        }
        if let Some(rest) = reference.strip_prefix("oci-archive:") {
            let (file, tag) = local_path(rest, true)?;
            return Ok(ImageRef::OciArchive { file, tag });
        }
        if let Some(rest) = reference.strip_prefix("docker-archive:") {
            let (file, _) = local_path(rest, false)?;
            return Ok(ImageRef::DockerArchive { file });
        }
        if let Some(rest) = reference.strip_prefix("oci:") {
            let (dir, tag) = local_path(rest, true)?;
            return Ok(ImageRef::OciLayout { dir, tag });
        }
        Err(bad("it names no transport"))
    }

    /// Whether the image comes over the network.
    pub fn is_remote(&self) -> bool {
        matches!(self, ImageRef::Registry { .. })
    }

    /// The rootfs name an image used directly as a container's rootfs is stored under:
    /// the repository's (or file's) last part, the tag, and 8 hex digits of the reference's
    /// SHA-256, e.g. `busybox-latest-1f2e3d4c`.
    pub fn rootfs_name(reference: &str) -> String {
        let hash: String = Sha256::digest(reference.as_bytes())
            .iter()
            .take(4)
            .map(|b| format!("{b:02x}"))
            .collect();
        let base = match ImageRef::parse(reference) {
            Ok(ImageRef::Registry {
                repository, tag, ..
            }) => {
                let last = repository
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .to_string();
                match tag {
                    Some(t) => format!("{last}-{t}"),
                    None => last,
                }
            }
            Ok(ImageRef::OciLayout { dir: p, tag } | ImageRef::OciArchive { file: p, tag }) => {
                let last = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                match tag {
                    Some(t) => format!("{last}-{t}"),
                    None => last,
                }
            }
            Ok(ImageRef::DockerArchive { file }) => file
                .file_stem()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            Err(_) => String::new(),
        };
        let clean: String = base
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .skip_while(|c| !c.is_ascii_alphanumeric())
            .take(40)
            .collect();
        let clean = clean.trim_end_matches('-');
        if clean.is_empty() {
            format!("image-{hash}")
        } else {
            format!("{clean}-{hash}")
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tagged = |f: &mut fmt::Formatter<'_>, t: &Option<String>| match t {
            Some(t) => write!(f, ":{t}"),
            None => Ok(()),
        };
        match self {
            ImageRef::OciLayout { dir, tag } => {
                write!(f, "oci:{}", dir.display())?;
                tagged(f, tag)
            }
            ImageRef::OciArchive { file, tag } => {
                write!(f, "oci-archive:{}", file.display())?;
                tagged(f, tag)
            }
            ImageRef::DockerArchive { file } => write!(f, "docker-archive:{}", file.display()),
            ImageRef::Registry {
                registry,
                repository,
                tag,
                digest,
            } => {
                write!(f, "docker://{registry}/{repository}")?;
                tagged(f, tag)?;
                match digest {
                    Some(d) => write!(f, "@{d}"),
                    None => Ok(()),
                }
            }
        }
    }
}

/// A platform as `os/arch[/variant]` (`linux/amd64`, `linux/arm64/v8`); empty means the
/// node's own.
pub fn validate_platform(platform: &str) -> Result<(), String> {
    if platform.is_empty() {
        return Ok(());
    }
    let parts: Vec<&str> = platform.split('/').collect();
    let ok = (2..=3).contains(&parts.len())
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.len() <= 32
                && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "platform '{}' is invalid: give os/arch[/variant], e.g. linux/amd64",
            platform.chars().take(100).collect::<String>()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_transport_parses() {
        assert_eq!(
            ImageRef::parse("oci:/srv/img:v1").expect("oci"),
            ImageRef::OciLayout {
                dir: "/srv/img".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            ImageRef::parse("oci:/srv/img").expect("oci"),
            ImageRef::OciLayout {
                dir: "/srv/img".into(),
                tag: None
            }
        );
        assert_eq!(
            ImageRef::parse("oci-archive:/srv/a.tar:latest").expect("archive"),
            ImageRef::OciArchive {
                file: "/srv/a.tar".into(),
                tag: Some("latest".into())
            }
        );
        assert_eq!(
            ImageRef::parse("docker-archive:/srv/d.tar").expect("docker archive"),
            ImageRef::DockerArchive {
                file: "/srv/d.tar".into()
            }
        );
        let r = ImageRef::parse("docker://127.0.0.1:5000/lib/busybox").expect("registry");
        assert_eq!(
            r,
            ImageRef::Registry {
                registry: "127.0.0.1:5000".into(),
                repository: "lib/busybox".into(),
                tag: Some("latest".into()),
                digest: None
            }
        );
        assert_eq!(r.to_string(), "docker://127.0.0.1:5000/lib/busybox:latest");
        let d = format!("docker://reg.example:443/x@sha256:{}", "a".repeat(64));
        assert!(matches!(
            ImageRef::parse(&d),
            Ok(ImageRef::Registry {
                tag: None,
                digest: Some(_),
                ..
            })
        ));
        assert!(looks_like_image("docker://x") && !looks_like_image("debian"));
    }

    #[test]
    fn bad_references_say_why() {
        for (reference, why) in [
            ("oci:relative/dir", "absolute"),
            ("oci:/a/../etc:t", ".."),
            ("oci:/a:bad/tag", "tag"),
            ("docker-archive:/a.tar:x", "no tag"),
            ("docker://busybox", "registry"),
            ("docker://busybox/sh", "registry host"),
            ("docker://127.0.0.1:5000/UPPER", "repository"),
            ("docker://127.0.0.1:5000/x@sha256:zz", "digest"),
            ("docker://127.0.0.1:99999/x", "registry host"),
            ("ftp://x/y", "transport"),
            ("oci:/a b", "space"),
        ] {
            let e = ImageRef::parse(reference).expect_err(reference);
            assert!(e.to_string().contains(why), "{reference}: {e}");
        }
    }

    #[test]
    fn derived_rootfs_names_are_valid_names() {
        for r in [
            "docker://127.0.0.1:5000/lib/busybox:1.36",
            "oci:/srv/debian-img:v1",
            "docker-archive:/tmp/.x.tar",
            "oci:/",
        ] {
            let name = ImageRef::rootfs_name(r);
            crate::names::validate_name("rootfs name", &name)
                .unwrap_or_else(|e| panic!("{r}: {name}: {e}"));
        }
        assert!(
            ImageRef::rootfs_name("docker://127.0.0.1:5000/lib/busybox:1.36")
                .starts_with("busybox-1-36-")
        );
        assert_ne!(
            ImageRef::rootfs_name("oci:/a:v1"),
            ImageRef::rootfs_name("oci:/b/a:v1")
        );
    }

    #[test]
    fn platforms() {
        assert!(validate_platform("").is_ok());
        assert!(validate_platform("linux/amd64").is_ok());
        assert!(validate_platform("linux/arm64/v8").is_ok());
        assert!(validate_platform("linux").is_err());
        assert!(validate_platform("linux/../x").is_err());
    }
}
