//! A spec's mounts made concrete on this node: bind sources checked against the paths the
//! node allows, volumes found (or created, as Docker's `-v NAME:/x` does), tmpfs options
//! turned into mount data. What comes out is what the supervisor mounts
//! ([`PlannedMount`]).

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::volumes::{VolumeError, VolumePin, VolumeStore};
use hutch_core::mounts::{Mount, MountKind};
use hutch_supervisor::container_mounts::PlannedMount;

/// Why a mount cannot be made here.
#[derive(Debug, Error)]
pub enum MountPlanError {
    /// The bind source is not there.
    #[error("bind source '{0}' does not exist on this node")]
    SourceMissing(String),
    /// The bind source could not be resolved.
    #[error("bind source '{path}': {message}")]
    SourceUnreadable {
        /// The path as given.
        path: String,
        /// What happened.
        message: String,
    },
    /// The node does not allow binding this path.
    #[error("bind source '{path}' is not allowed: {reason}")]
    NotAllowed {
        /// The path as given.
        path: String,
        /// Why.
        reason: String,
    },
    /// A tmpfs option is malformed.
    #[error("{0}")]
    BadOption(String),
    /// The agent's allowed paths include hutch's own directories.
    #[error("allowed_bind_paths: {0}")]
    BadPolicy(String),
    /// A volume could not be found or made.
    #[error(transparent)]
    Volume(#[from] VolumeError),
}

/// Which node paths containers may have bound in.
#[derive(Debug, Clone)]
pub struct BindPolicy {
    /// Sources must lie at or below one of these (symlinks resolved).
    allowed: Vec<PathBuf>,
    /// hutch's own directories (state, rootfs store): never bound, nor anything holding
    /// them.
    protected: Vec<PathBuf>,
}

/// Node directories that are never bound: device nodes (devtmpfs is a plain tmpfs to
/// `statfs`, so it is told by its path). The kernel's own filesystems (proc, sysfs, ...)
/// are refused by type when the supervisor opens the source.
const NEVER_BOUND: [&str; 1] = ["/dev"];

const NONE_ALLOWED: &str = "this node allows no bind mounts (its agent's --allowed-bind-paths is empty); use a named volume, or ask its operator to allow a directory";

/// `path` with its symlinks resolved where it exists, as given where it does not.
fn resolved(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

impl BindPolicy {
    /// A policy allowing sources below `allowed`, protecting `protected`; refused when an
    /// allowed path lies inside a protected one (it could only expose hutch's own data).
    pub fn new(allowed: &[PathBuf], protected: &[&Path]) -> Result<Self, MountPlanError> {
        let policy = BindPolicy {
            allowed: allowed.iter().map(|p| resolved(p)).collect(),
            protected: protected.iter().map(|p| resolved(p)).collect(),
        };
        for a in &policy.allowed {
            if let Some(own) = policy.protected.iter().find(|own| a.starts_with(own)) {
                return Err(MountPlanError::BadPolicy(format!(
                    "{} lies inside hutch's own {}, which is never bound; allow a directory outside it",
                    a.display(),
                    own.display()
                )));
            }
        }
        Ok(policy)
    }

    /// The source resolved (no symlink left in it), if this node allows binding it.
    pub fn check(&self, source: &str) -> Result<PathBuf, MountPlanError> {
        let not_allowed = |reason: String| MountPlanError::NotAllowed {
            path: source.to_string(),
            reason,
        };
        // Nothing is looked up on a node that allows nothing (an answer would tell which
        // paths exist there).
        if self.allowed.is_empty() {
            return Err(not_allowed(NONE_ALLOWED.into()));
        }
        let canonical = std::fs::canonicalize(source).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => MountPlanError::SourceMissing(source.to_string()),
            _ => MountPlanError::SourceUnreadable {
                path: source.to_string(),
                message: e.to_string(),
            },
        })?;
        self.allows(&canonical).map_err(not_allowed)?;
        Ok(canonical)
    }

    /// Whether a resolved path may be bound; the reason when not.
    pub fn allows(&self, canonical: &Path) -> Result<(), String> {
        if self.allowed.is_empty() {
            return Err(NONE_ALLOWED.into());
        }
        if !self.allowed.iter().any(|a| canonical.starts_with(a)) {
            let list: Vec<String> = self
                .allowed
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            return Err(format!(
                "it is outside the paths this node allows ({}), symlinks resolved",
                list.join(", ")
            ));
        }
        for own in &self.protected {
            if canonical.starts_with(own) || own.starts_with(canonical) {
                return Err(format!(
                    "it is or holds hutch's own {} (other containers' data, the node's keys)",
                    own.display()
                ));
            }
        }
        if let Some(dev) = NEVER_BOUND.iter().find(|d| canonical.starts_with(d)) {
            return Err(format!(
                "{dev} (the node's devices) is never bound into a container"
            ));
        }
        Ok(())
    }
}

/// What the supervisor mounts for `mounts`, with the volumes pinned against removal until
/// the container's record exists (drop the pins then). Binds are checked before any
/// volume is made, so a refused request leaves no volume behind. A fresh volume of a
/// container with a user namespace is given to its root (`owner`: the node's uid and gid
/// of the container's root), as Docker does with remapped roots.
pub fn plan<'a>(
    mounts: &[Mount],
    binds: &BindPolicy,
    volumes: &'a VolumeStore,
    owner: Option<(u32, u32)>,
) -> Result<(Vec<PlannedMount>, Vec<VolumePin<'a>>), MountPlanError> {
    let mut sources: Vec<Option<PathBuf>> = mounts
        .iter()
        .map(|m| match m.kind {
            MountKind::Bind => binds.check(&m.source).map(Some),
            _ => Ok(None),
        })
        .collect::<Result<_, _>>()?;
    let mut pins = Vec::new();
    let mut planned = Vec::with_capacity(mounts.len());
    for (m, source) in mounts.iter().zip(sources.iter_mut()) {
        let mut tmpfs_data = None;
        match m.kind {
            MountKind::Bind => {}
            MountKind::Volume => {
                let (volume, pin) = volumes.get_or_create(&m.source)?;
                if let Some((uid, gid)) = owner {
                    volumes.give_if_fresh(&volume, uid, gid)?;
                }
                *source = Some(volume.data);
                pins.push(pin);
            }
            MountKind::Tmpfs => {
                tmpfs_data = Some(
                    m.tmpfs_data()
                        .map_err(|e| MountPlanError::BadOption(e.to_string()))?,
                );
            }
        }
        planned.push(PlannedMount {
            target: m.target.clone(),
            source: source.take(),
            read_only: m.read_only,
            noexec: m.noexec(),
            tmpfs_data,
        });
    }
    Ok((planned, pins))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_paths_and_protected_ones() {
        let none = BindPolicy::new(&[], &[Path::new("/var/lib/hutch")]).expect("policy");
        assert!(none.allows(Path::new("/srv")).is_err());
        let p = BindPolicy::new(
            &[
                PathBuf::from("/srv"),
                PathBuf::from("/var"),
                PathBuf::from("/"),
            ],
            &[Path::new("/var/lib/hutch-test-protected")],
        )
        .expect("policy");
        assert!(p.allows(Path::new("/srv/data")).is_ok());
        assert!(p.allows(Path::new("/srv")).is_ok());
        assert!(p.allows(Path::new("/etc")).is_ok(), "under /");
        assert!(p
            .allows(Path::new("/var/lib/hutch-test-protected/keys"))
            .is_err());
        assert!(
            p.allows(Path::new("/var/lib")).is_err(),
            "holds the state dir"
        );
        assert!(p.allows(Path::new("/")).is_err(), "holds the state dir");
        assert!(p.allows(Path::new("/dev/sda")).is_err(), "devices");
        assert!(p.allows(Path::new("/var/tmp")).is_ok());
        let only = BindPolicy::new(&[PathBuf::from("/srv")], &[]).expect("policy");
        assert!(only.allows(Path::new("/srvx")).is_err(), "a sibling");
        assert!(only.allows(Path::new("/etc")).is_err());
        let inside = BindPolicy::new(
            &[PathBuf::from("/var/lib/hutch-test-protected/shared")],
            &[Path::new("/var/lib/hutch-test-protected")],
        );
        assert!(inside.is_err(), "an allowed path inside hutch's own");
    }

    #[test]
    fn sources_are_resolved_and_must_exist() {
        let dir = std::env::temp_dir().join(format!("hutch-binds-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("ok")).expect("mkdir");
        std::os::unix::fs::symlink("/etc", dir.join("escape")).expect("symlink");
        let p = BindPolicy::new(std::slice::from_ref(&dir), &[]).expect("policy");
        let ok = p.check(&dir.join("ok").display().to_string()).expect("ok");
        assert_eq!(ok, resolved(&dir.join("ok")));
        assert!(matches!(
            p.check(&dir.join("escape").display().to_string()),
            Err(MountPlanError::NotAllowed { .. })
        ));
        assert!(matches!(
            p.check(&dir.join("missing").display().to_string()),
            Err(MountPlanError::SourceMissing(_))
        ));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
