//! A spec's mounts made concrete on this node: bind sources checked against the paths the
//! node allows, volumes found (or created, as Docker's `-v NAME:/x` does), tmpfs options
//! turned into mount data. What comes out is what the supervisor mounts
//! ([`PlannedMount`]).

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::volumes::{VolumeError, VolumeStore};
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
    /// them, unless an allowed path lies inside them.
    protected: Vec<PathBuf>,
}

/// `path` with its symlinks resolved where it exists, as given where it does not.
fn resolved(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

impl BindPolicy {
    /// A policy allowing sources below `allowed`, protecting `protected`.
    pub fn new(allowed: &[PathBuf], protected: &[&Path]) -> Self {
        BindPolicy {
            allowed: allowed.iter().map(|p| resolved(p)).collect(),
            protected: protected.iter().map(|p| resolved(p)).collect(),
        }
    }

    /// The source resolved (no symlink left in it), if this node allows binding it.
    pub fn check(&self, source: &str) -> Result<PathBuf, MountPlanError> {
        let canonical = std::fs::canonicalize(source).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => MountPlanError::SourceMissing(source.to_string()),
            _ => MountPlanError::SourceUnreadable {
                path: source.to_string(),
                message: e.to_string(),
            },
        })?;
        self.allows(&canonical)
            .map_err(|reason| MountPlanError::NotAllowed {
                path: source.to_string(),
                reason,
            })?;
        Ok(canonical)
    }

    /// Whether a resolved path may be bound; the reason when not.
    pub fn allows(&self, canonical: &Path) -> Result<(), String> {
        if self.allowed.is_empty() {
            return Err(
                "this node allows no bind mounts (its agent's --allowed-bind-paths is empty); use a named volume, or ask its operator to allow a directory".into(),
            );
        }
        let Some(root) = self.allowed.iter().find(|a| canonical.starts_with(a)) else {
            let list: Vec<String> = self
                .allowed
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            return Err(format!(
                "{} is outside the paths this node allows ({})",
                canonical.display(),
                list.join(", ")
            ));
        };
        for own in &self.protected {
            let touches = canonical.starts_with(own) || own.starts_with(canonical);
            if touches && !root.starts_with(own) {
                return Err(format!(
                    "{} is or holds hutch's own {} (other containers' data, the node's keys)",
                    canonical.display(),
                    own.display()
                ));
            }
        }
        Ok(())
    }
}

/// What the supervisor mounts for `mounts`.
pub fn plan(
    mounts: &[Mount],
    binds: &BindPolicy,
    volumes: &VolumeStore,
) -> Result<Vec<PlannedMount>, MountPlanError> {
    mounts
        .iter()
        .map(|m| {
            let (source, tmpfs_data) = match m.kind {
                MountKind::Bind => (Some(binds.check(&m.source)?), None),
                MountKind::Volume => (Some(volumes.get_or_create(&m.source)?.data), None),
                MountKind::Tmpfs => (
                    None,
                    Some(
                        m.tmpfs_data()
                            .map_err(|e| MountPlanError::BadOption(e.to_string()))?,
                    ),
                ),
            };
            Ok(PlannedMount {
                target: m.target.clone(),
                source,
                read_only: m.read_only,
                noexec: m.noexec(),
                tmpfs_data,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_paths_and_protected_ones() {
        let none = BindPolicy::new(&[], &[Path::new("/var/lib/hutch")]);
        assert!(none.allows(Path::new("/srv")).is_err());
        let p = BindPolicy::new(
            &[PathBuf::from("/srv"), PathBuf::from("/var")],
            &[Path::new("/var/lib/hutch-test-protected")],
        );
        assert!(p.allows(Path::new("/srv/data")).is_ok());
        assert!(p.allows(Path::new("/srv")).is_ok());
        assert!(p.allows(Path::new("/srvx")).is_err(), "a sibling");
        assert!(p.allows(Path::new("/etc")).is_err());
        assert!(p
            .allows(Path::new("/var/lib/hutch-test-protected/keys"))
            .is_err());
        assert!(
            p.allows(Path::new("/var/lib")).is_err(),
            "holds the state dir"
        );
        assert!(p.allows(Path::new("/var/tmp")).is_ok());
        let inside = BindPolicy::new(
            &[PathBuf::from("/var/lib/hutch-test-protected/shared")],
            &[Path::new("/var/lib/hutch-test-protected")],
        );
        assert!(inside
            .allows(Path::new("/var/lib/hutch-test-protected/shared/x"))
            .is_ok());
    }

    #[test]
    fn sources_are_resolved_and_must_exist() {
        let dir = std::env::temp_dir().join(format!("hutch-binds-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("ok")).expect("mkdir");
        std::os::unix::fs::symlink("/etc", dir.join("escape")).expect("symlink");
        let p = BindPolicy::new(std::slice::from_ref(&dir), &[]);
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
