//! What a container's processes may do: the capability set, `no_new_privs`, the seccomp
//! deny-list, and the `/proc` and `/sys` paths masked or made read-only. The defaults follow
//! runc's and Docker's; see `SECURITY.md` for the reasoning.
//!
//! The choices are pure ([`Security::capabilities`], [`DENIED_SYSCALLS`], [`MASKED_PATHS`],
//! [`READ_ONLY_PATHS`]); [`harden_before_exec`] applies them to the calling process, the
//! last thing before `execve`, in the container's init and in every exec into it.

use std::str::FromStr;

use caps::{CapSet, Capability, CapsHashSet};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Processes a container may have unless its spec says otherwise: enough for any service,
/// small enough that a fork bomb stays inside.
pub const DEFAULT_PIDS_LIMIT: u32 = 1024;

/// The kernel's ceiling for `pids.max` (`PID_MAX_LIMIT` on 64-bit).
pub const MAX_PIDS_LIMIT: u32 = 4_194_304;

/// Docker's default capability set less `MKNOD`: what ordinary root programs (package
/// managers, servers binding port 80, `chown`, `su`) need, and nothing that reaches the host
/// (no SYS_ADMIN, SYS_MODULE, SYS_PTRACE, SYS_TIME, SYS_RAWIO, NET_ADMIN, DAC_READ_SEARCH,
/// ...). Docker can leave `MKNOD` in because its device cgroup refuses access to the nodes
/// made; hutch has no device cgroup, so a node for the host's disk would be readable.
pub const DEFAULT_CAPABILITIES: [Capability; 13] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

/// Files of `/proc` and `/sys` hidden behind `/dev/null` (files) or an empty read-only tmpfs
/// (directories): they expose the host's memory, keys, timers or firmware.
pub const MASKED_PATHS: [&str; 11] = [
    "proc/acpi",
    "proc/asound",
    "proc/kcore",
    "proc/keys",
    "proc/latency_stats",
    "proc/timer_list",
    "proc/timer_stats",
    "proc/sched_debug",
    "proc/scsi",
    "sys/firmware",
    "sys/devices/virtual/powercap",
];

/// `/proc` paths readable but not writable: writing them changes the host's kernel.
pub const READ_ONLY_PATHS: [&str; 5] = [
    "proc/bus",
    "proc/fs",
    "proc/irq",
    "proc/sys",
    "proc/sysrq-trigger",
];

/// System calls the default seccomp filter refuses with `EPERM`: kernel modules, kexec,
/// reboot, mounting and namespace games, handle-based file access (the "shocker" escape),
/// BPF, perf, the kernel keyring, clocks, swap, accounting, raw I/O ports.
pub fn denied_syscalls() -> Vec<(&'static str, i64)> {
    let mut list = vec![
        ("acct", libc::SYS_acct),
        ("add_key", libc::SYS_add_key),
        ("bpf", libc::SYS_bpf),
        ("clock_adjtime", libc::SYS_clock_adjtime),
        ("clock_settime", libc::SYS_clock_settime),
        ("delete_module", libc::SYS_delete_module),
        ("finit_module", libc::SYS_finit_module),
        ("fsconfig", libc::SYS_fsconfig),
        ("fsmount", libc::SYS_fsmount),
        ("fsopen", libc::SYS_fsopen),
        ("fspick", libc::SYS_fspick),
        ("init_module", libc::SYS_init_module),
        ("kexec_file_load", libc::SYS_kexec_file_load),
        ("kexec_load", libc::SYS_kexec_load),
        ("keyctl", libc::SYS_keyctl),
        ("lookup_dcookie", libc::SYS_lookup_dcookie),
        ("mount", libc::SYS_mount),
        ("mount_setattr", libc::SYS_mount_setattr),
        ("move_mount", libc::SYS_move_mount),
        ("name_to_handle_at", libc::SYS_name_to_handle_at),
        ("open_by_handle_at", libc::SYS_open_by_handle_at),
        ("open_tree", libc::SYS_open_tree),
        ("perf_event_open", libc::SYS_perf_event_open),
        ("pivot_root", libc::SYS_pivot_root),
        ("process_vm_readv", libc::SYS_process_vm_readv),
        ("process_vm_writev", libc::SYS_process_vm_writev),
        ("quotactl", libc::SYS_quotactl),
        ("reboot", libc::SYS_reboot),
        ("request_key", libc::SYS_request_key),
        ("setns", libc::SYS_setns),
        ("settimeofday", libc::SYS_settimeofday),
        ("swapoff", libc::SYS_swapoff),
        ("swapon", libc::SYS_swapon),
        ("syslog", libc::SYS_syslog),
        ("umount2", libc::SYS_umount2),
        ("unshare", libc::SYS_unshare),
        ("userfaultfd", libc::SYS_userfaultfd),
        ("adjtimex", libc::SYS_adjtimex),
    ];
    #[cfg(target_arch = "x86_64")]
    list.extend([
        ("ioperm", libc::SYS_ioperm),
        ("iopl", libc::SYS_iopl),
        ("nfsservctl", libc::SYS_nfsservctl),
        ("uselib", libc::SYS_uselib),
        ("_sysctl", libc::SYS__sysctl),
    ]);
    list
}

/// The seccomp filter of a container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Seccomp {
    /// [`denied_syscalls`] answer `EPERM`; everything else is allowed.
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

/// `NET_ADMIN`, `net_admin` or `CAP_NET_ADMIN` -> the capability; `None` for `ALL`.
fn parse_capability(name: &str) -> Result<Option<Capability>, SecurityError> {
    let upper = name.trim().to_ascii_uppercase();
    if upper == "ALL" {
        return Ok(None);
    }
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    Capability::from_str(&full)
        .map(Some)
        .map_err(|_| SecurityError::UnknownCapability(name.to_string()))
}

impl Security {
    /// Checks the names, so a bad one is refused before anything starts.
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
        if let Some(profile) = &self.seccomp_profile {
            if self.privileged || self.seccomp == Seccomp::Unconfined {
                return Err(SecurityError::SeccompProfile(
                    "a privileged or seccomp-unconfined container has no filter: drop one of the two".into(),
                ));
            }
            crate::seccomp_profile::Profile::check(profile)
                .map_err(SecurityError::SeccompProfile)?;
        }
        self.capabilities().map(drop)
    }

    /// The capabilities the container's processes keep.
    pub fn capabilities(&self) -> Result<CapsHashSet, SecurityError> {
        let all = || {
            caps::runtime::thread_all_supported()
                .into_iter()
                .collect::<CapsHashSet>()
        };
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
                    set.remove(&cap);
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

/// Why hardening the calling process failed.
#[derive(Debug, Error)]
#[error("{0}")]
pub struct HardenError(String);

fn seccomp_program() -> Result<seccompiler::BpfProgram, HardenError> {
    let arch = seccompiler::TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| HardenError(format!("seccomp: {e}")))?;
    let rules = denied_syscalls()
        .into_iter()
        .map(|(_, nr)| (nr, Vec::new()))
        .collect();
    let filter = seccompiler::SeccompFilter::new(
        rules,
        seccompiler::SeccompAction::Allow,
        seccompiler::SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(|e| HardenError(format!("seccomp: {e}")))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| HardenError(format!("seccomp: {e}")))
}

/// Becomes `uid`/`gid` with no other groups.
fn switch_user(uid: u32, gid: u32) -> Result<(), HardenError> {
    use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
    let fail = |what: &str, e: nix::Error| {
        HardenError(format!(
            "run as {uid}:{gid}: {what}: {} (in a user namespace, map the ids first)",
            e.desc()
        ))
    };
    let g = Gid::from_raw(gid);
    setgroups(&[g]).map_err(|e| fail("setgroups", e))?;
    setresgid(g, g, g).map_err(|e| fail("setresgid", e))?;
    let u = Uid::from_raw(uid);
    setresuid(u, u, u).map_err(|e| fail("setresuid", e))
}

/// Reduces the calling process to what `security` allows: the bounding, effective,
/// permitted and inheritable sets to its capabilities (or, running as another user, the
/// permitted and effective sets empty), the ambient set emptied, `no_new_privs` set and the
/// seccomp filter installed (unless privileged). Called last
/// before `execve`; needs the capabilities it drops (CAP_SETPCAP for the bounding set).
pub fn harden_before_exec(security: &Security) -> Result<(), HardenError> {
    let step = |what: &str, e: caps::errors::CapsError| HardenError(format!("{what}: {e}"));
    let mut keep = security
        .capabilities()
        .map_err(|e| HardenError(e.to_string()))?;
    // Nobody can grant what it does not hold. "Everything" means everything this process
    // has; a capability named on its own must be there.
    let held = caps::read(None, CapSet::Permitted).map_err(|e| step("permitted set", e))?;
    let wants_all = security.privileged
        || security
            .cap_add
            .iter()
            .any(|c| c.eq_ignore_ascii_case("all"));
    if wants_all {
        keep.retain(|c| held.contains(c));
    } else if let Some(missing) = keep.iter().find(|c| !held.contains(c)) {
        return Err(HardenError(format!(
            "{missing} is not held by the agent on this node, so the container cannot have it"
        )));
    }
    for cap in caps::runtime::thread_all_supported() {
        if !keep.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap).map_err(|e| step("bounding set", e))?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| step("ambient set", e))?;
    caps::set(None, CapSet::Inheritable, &keep).map_err(|e| step("inheritable set", e))?;
    if let Some((uid, gid)) = security.identity() {
        // Leaving uid 0 empties the permitted and effective sets (no SECBIT_KEEP_CAPS):
        // a non-root process keeps no capability, as everywhere else.
        switch_user(uid, gid)?;
    } else {
        caps::set(None, CapSet::Effective, &keep).map_err(|e| step("effective set", e))?;
        caps::set(None, CapSet::Permitted, &keep).map_err(|e| step("permitted set", e))?;
    }
    if security.privileged {
        return Ok(());
    }
    nix::sys::prctl::set_no_new_privs()
        .map_err(|e| HardenError(format!("no_new_privs: {}", e.desc())))?;
    let programs = match &security.seccomp_profile {
        Some(profile) => crate::seccomp_profile::Profile::parse(profile)
            .and_then(|p| p.programs())
            .map_err(|e| HardenError(format!("seccomp profile: {e}")))?,
        None if security.effective_seccomp() == Seccomp::Default => vec![seccomp_program()?],
        None => Vec::new(),
    };
    for program in &programs {
        seccompiler::apply_filter(program)
            .map_err(|e| HardenError(format!("seccomp filter: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_dockers_set_without_host_powers() {
        let caps = Security::default().capabilities().expect("caps");
        assert_eq!(caps.len(), DEFAULT_CAPABILITIES.len());
        for dangerous in [
            Capability::CAP_SYS_ADMIN,
            Capability::CAP_SYS_MODULE,
            Capability::CAP_SYS_PTRACE,
            Capability::CAP_SYS_RAWIO,
            Capability::CAP_NET_ADMIN,
            Capability::CAP_DAC_READ_SEARCH,
            Capability::CAP_SYS_BOOT,
            Capability::CAP_MKNOD,
        ] {
            assert!(!caps.contains(&dangerous), "{dangerous} in the defaults");
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
        let caps = s.capabilities().expect("caps");
        assert!(caps.contains(&Capability::CAP_NET_ADMIN));
        assert!(caps.contains(&Capability::CAP_SYS_TIME));
        assert!(!caps.contains(&Capability::CAP_CHOWN));
        let none = Security {
            cap_drop: vec!["ALL".into()],
            ..Default::default()
        };
        assert!(none.capabilities().expect("caps").is_empty());
        let only_kill = Security {
            cap_drop: vec!["all".into()],
            cap_add: vec!["KILL".into()],
            ..Default::default()
        };
        // Drops apply after adds, as Docker does.
        assert!(only_kill.capabilities().expect("caps").is_empty());
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
    }

    #[test]
    fn privileged_means_everything_and_no_filter() {
        let s = Security {
            privileged: true,
            ..Default::default()
        };
        assert_eq!(
            s.capabilities().expect("caps").len(),
            caps::runtime::thread_all_supported().len()
        );
        assert_eq!(s.effective_seccomp(), Seccomp::Unconfined);
        assert!(!s.masks_paths());
    }

    #[test]
    fn the_filter_compiles_for_this_machine() {
        let names: Vec<&str> = denied_syscalls().iter().map(|(n, _)| *n).collect();
        for must in [
            "kexec_load",
            "init_module",
            "open_by_handle_at",
            "bpf",
            "keyctl",
        ] {
            assert!(names.contains(&must), "{must} not denied");
        }
        assert!(!seccomp_program().expect("program").is_empty());
    }
}
