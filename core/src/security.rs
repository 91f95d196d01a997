//! What a container's processes may do, as a spec states it: capabilities added to or
//! dropped from a hardened default set, the seccomp filter (hutch's default deny-list, a
//! profile in Docker's JSON format, or none), a pids limit, `--privileged`, and the uid/gid
//! to run as. The defaults follow runc's and Docker's; `SECURITY.md` gives the reasoning.
//!
//! This module only states and checks the choice, so the controller and the SDK can refuse
//! a bad setting before anything is scheduled. Applying it to a process (capability sets,
//! `no_new_privs`, the BPF filter) is `hutch_supervisor::security`'s work.

use std::collections::BTreeSet;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::seccomp_profile::Profile;

/// Processes a container may have unless its spec says otherwise: enough for any service,
/// small enough that a fork bomb stays inside.
pub const DEFAULT_PIDS_LIMIT: u32 = 1024;

/// The kernel's ceiling for `pids.max` (`PID_MAX_LIMIT` on 64-bit).
pub const MAX_PIDS_LIMIT: u32 = 4_194_304;

/// Every capability of capabilities(7), by its kernel name, in the kernel's order.
pub const ALL_CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Docker's default capability set less `MKNOD`: what ordinary root programs (package
/// managers, servers binding port 80, `chown`, `su`) need, and nothing that reaches the host
/// (no SYS_ADMIN, SYS_MODULE, SYS_PTRACE, SYS_TIME, SYS_RAWIO, NET_ADMIN, DAC_READ_SEARCH,
/// ...). Docker can leave `MKNOD` in because its device cgroup refuses access to the nodes
/// made; hutch has no device cgroup, so a node for the host's disk would be readable.
pub const DEFAULT_CAPABILITIES: [&str; 13] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The seccomp filter of a container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Seccomp {
    /// hutch's deny-list (`hutch_supervisor::security::denied_syscalls`) answers `EPERM`;
    /// everything else is allowed.
    #[default]
    Default,
    /// No filter.
    Unconfined,
}

impl FromStr for Seccomp {
    type Err = SecurityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" | "default" => Ok(Seccomp::Default),
            "unconfined" => Ok(Seccomp::Unconfined),
            other => Err(SecurityError::UnknownSeccomp(other.to_string())),
        }
    }
}

/// How a container's security differs from the defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Security {
    /// Capabilities added to [`DEFAULT_CAPABILITIES`] (`ALL` for every one).
    pub cap_add: Vec<String>,
    /// Capabilities removed from it (`ALL` for every one); applied after `cap_add`.
    pub cap_drop: Vec<String>,
    /// The seccomp filter.
    pub seccomp: Seccomp,
    /// A seccomp profile (Docker's JSON format, see [`crate::seccomp_profile`]) used
    /// instead of the default filter.
    pub seccomp_profile: Option<String>,
    /// Most processes (and threads) in the container; `None` means
    /// [`DEFAULT_PIDS_LIMIT`], `Some(0)` no limit.
    pub pids_limit: Option<u32>,
    /// Docker's `--privileged`: every capability, no seccomp filter, nothing masked,
    /// `no_new_privs` off. For containers that manage the host.
    pub privileged: bool,
    /// Run as this uid (and [`Security::run_as_group`]) instead of root.
    pub run_as_user: Option<u32>,
    /// The gid for `run_as_user`; `None` means the same number.
    pub run_as_group: Option<u32>,
    /// A user of the rootfs by name (`NAME` or `NAME:GROUP`), resolved by the node into
    /// `run_as_user` and `run_as_group` when the container starts.
    #[serde(default)]
    pub user_name: Option<String>,
}

/// Why a security setting is refused.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum SecurityError {
    /// Not a capability name.
    #[error(
        "unknown capability '{0}': use a name from capabilities(7), e.g. NET_ADMIN or CAP_NET_ADMIN, or ALL"
    )]
    UnknownCapability(String),
    /// A pids limit above what the kernel accepts.
    #[error(
        "pids_limit {0} is above the kernel's maximum of {MAX_PIDS_LIMIT}; use 0 for no limit"
    )]
    PidsLimitTooLarge(u32),
    /// Not a seccomp mode.
    #[error("unknown seccomp setting '{0}': use \"default\" (or empty) or \"unconfined\"")]
    UnknownSeccomp(String),
    /// A uid or gid that cannot be run as.
    #[error("{0}")]
    BadIdentity(String),
    /// A seccomp profile that cannot be honoured.
    #[error("seccomp profile: {0}")]
    SeccompProfile(String),
}

/// `NET_ADMIN`, `net_admin` or `CAP_NET_ADMIN` -> `CAP_NET_ADMIN`; `None` for `ALL`.
pub fn parse_capability(name: &str) -> Result<Option<&'static str>, SecurityError> {
    let upper = name.trim().to_ascii_uppercase();
    if upper == "ALL" {
        return Ok(None);
    }
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    ALL_CAPABILITIES
        .iter()
        .find(|c| **c == full)
        .map(|c| Some(*c))
        .ok_or_else(|| SecurityError::UnknownCapability(name.to_string()))
}

impl Security {
    /// The uid and gid the command runs as, when not root.
    pub fn identity(&self) -> Option<(u32, u32)> {
        match (self.run_as_user, self.run_as_group) {
            (None | Some(0), None | Some(0)) => None,
            (uid, gid) => {
                let uid = uid.unwrap_or(0);
                Some((uid, gid.unwrap_or(uid)))
            }
        }
    }

    /// Checks every setting, so a bad one is refused before anything starts. A profile's
    /// syscall names are checked against this host architecture's table.
    pub fn validate(&self) -> Result<(), SecurityError> {
        if let Some(n) = self.pids_limit.filter(|n| *n > MAX_PIDS_LIMIT) {
            return Err(SecurityError::PidsLimitTooLarge(n));
        }
        for (what, id) in [
            ("run_as_user", self.run_as_user),
            ("run_as_group", self.run_as_group),
        ] {
            if id == Some(u32::MAX) {
                return Err(SecurityError::BadIdentity(format!(
                    "{what} 4294967295 is the kernel's \"leave unchanged\" value, not an id"
                )));
            }
        }
        if let Some(name) = &self.user_name {
            if self.run_as_user.is_some() || self.run_as_group.is_some() {
                return Err(SecurityError::BadIdentity(
                    "user_name and run_as_user/run_as_group: give the user by name or by number, not both".into(),
                ));
            }
            let ok = |part: &str| {
                !part.is_empty()
                    && part.len() <= 32
                    && part
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            };
            let (user, group) = name.split_once(':').unwrap_or((name, "x"));
            if !ok(user) || !ok(group) {
                return Err(SecurityError::BadIdentity(format!(
                    "user_name '{name}' is not NAME or NAME:GROUP (letters, digits, '_', '-', '.'; at most 32)"
                )));
            }
        }
        if let Some(profile) = &self.seccomp_profile {
            if self.privileged || self.seccomp == Seccomp::Unconfined {
                return Err(SecurityError::SeccompProfile(
                    "a privileged or seccomp-unconfined container has no filter: drop one of the two".into(),
                ));
            }
            Profile::parse(profile)
                .and_then(|p| p.check_names())
                .map_err(SecurityError::SeccompProfile)?;
        }
        self.capability_names().map(drop)
    }

    /// The capabilities the container's processes keep, by kernel name.
    pub fn capability_names(&self) -> Result<BTreeSet<&'static str>, SecurityError> {
        let all = || ALL_CAPABILITIES.into_iter().collect::<BTreeSet<_>>();
        let mut set = if self.privileged {
            all()
        } else {
            DEFAULT_CAPABILITIES.into_iter().collect()
        };
        for name in &self.cap_add {
            match parse_capability(name)? {
                Some(cap) => {
                    set.insert(cap);
                }
                None => set = all(),
            }
        }
        for name in &self.cap_drop {
            match parse_capability(name)? {
                Some(cap) => {
                    set.remove(cap);
                }
                None => set.clear(),
            }
        }
        Ok(set)
    }

    /// Whether `/proc` and `/sys` paths are masked and read-only.
    pub fn masks_paths(&self) -> bool {
        !self.privileged
    }

    /// The seccomp filter in force.
    pub fn effective_seccomp(&self) -> Seccomp {
        if self.privileged {
            Seccomp::Unconfined
        } else {
            self.seccomp
        }
    }

    /// The pids limit to write, if any.
    pub fn effective_pids_limit(&self) -> Option<u32> {
        match self.pids_limit {
            None => Some(DEFAULT_PIDS_LIMIT),
            Some(0) => None,
            Some(n) => Some(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_dockers_set_without_host_powers() {
        let caps = Security::default().capability_names().expect("caps");
        assert_eq!(caps.len(), DEFAULT_CAPABILITIES.len());
        for dangerous in [
            "CAP_SYS_ADMIN",
            "CAP_SYS_MODULE",
            "CAP_SYS_PTRACE",
            "CAP_SYS_RAWIO",
            "CAP_NET_ADMIN",
            "CAP_DAC_READ_SEARCH",
            "CAP_SYS_BOOT",
            "CAP_MKNOD",
        ] {
            assert!(!caps.contains(dangerous), "{dangerous} in the defaults");
        }
        assert_eq!(Security::default().effective_pids_limit(), Some(1024));
        assert_eq!(Security::default().effective_seccomp(), Seccomp::Default);
    }

    #[test]
    fn add_and_drop_accept_both_spellings_and_all() {
        let s = Security {
            cap_add: vec!["net_admin".into(), "CAP_SYS_TIME".into()],
            cap_drop: vec!["CHOWN".into()],
            ..Default::default()
        };
        let caps = s.capability_names().expect("caps");
        assert!(caps.contains("CAP_NET_ADMIN"));
        assert!(caps.contains("CAP_SYS_TIME"));
        assert!(!caps.contains("CAP_CHOWN"));
        let none = Security {
            cap_drop: vec!["ALL".into()],
            ..Default::default()
        };
        assert!(none.capability_names().expect("caps").is_empty());
        let only_kill = Security {
            cap_drop: vec!["all".into()],
            cap_add: vec!["KILL".into()],
            ..Default::default()
        };
        // Drops apply after adds, as Docker does.
        assert!(only_kill.capability_names().expect("caps").is_empty());
    }

    #[test]
    fn bad_names_are_refused_with_the_fix() {
        let s = Security {
            cap_add: vec!["SYS_WIZARD".into()],
            ..Default::default()
        };
        let err = s.validate().expect_err("must refuse");
        assert!(err.to_string().contains("SYS_WIZARD"), "{err}");
        assert!("strict".parse::<Seccomp>().is_err());
        let huge = Security {
            pids_limit: Some(u32::MAX),
            ..Default::default()
        };
        assert!(huge.validate().is_err());
        assert_eq!("".parse::<Seccomp>(), Ok(Seccomp::Default));
        let profile = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}"#;
        let with_profile = |privileged: bool| Security {
            seccomp_profile: Some(profile.into()),
            privileged,
            ..Default::default()
        };
        assert!(with_profile(false).validate().is_ok());
        let minus_one = Security {
            run_as_user: Some(u32::MAX),
            ..Default::default()
        };
        assert!(minus_one
            .validate()
            .expect_err("-1")
            .to_string()
            .contains("unchanged"));
        let user = Security {
            run_as_user: Some(1000),
            ..Default::default()
        };
        assert_eq!(user.identity(), Some((1000, 1000)));
        assert_eq!(Security::default().identity(), None);
        let conflict = with_profile(true)
            .validate()
            .expect_err("privileged has no filter");
        assert!(
            conflict.to_string().contains("drop one of the two"),
            "{conflict}"
        );
        let broken = Security {
            seccomp_profile: Some("{}".into()),
            ..Default::default()
        };
        assert!(broken
            .validate()
            .expect_err("no defaultAction")
            .to_string()
            .starts_with("seccomp profile"));
        let unknown_call = Security {
            seccomp_profile: Some(profile.replace("mkdir", "no_such_call")),
            ..Default::default()
        };
        let err = unknown_call.validate().expect_err("unknown syscall");
        assert!(err.to_string().contains("no_such_call"), "{err}");
    }

    #[test]
    fn privileged_means_everything() {
        let s = Security {
            privileged: true,
            ..Default::default()
        };
        assert_eq!(
            s.capability_names().expect("caps").len(),
            ALL_CAPABILITIES.len()
        );
        assert_eq!(s.effective_seccomp(), Seccomp::Unconfined);
        assert!(!s.masks_paths());
    }
}
