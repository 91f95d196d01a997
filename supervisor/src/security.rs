//! Applying a container's [`Security`] to a process: the capability sets, `no_new_privs`,
//! hutch's default seccomp deny-list or a profile compiled to BPF, and the `/proc` and `/sys`
//! paths masked or made read-only. The defaults follow runc's and Docker's; see
//! `SECURITY.md` for the reasoning. What a spec may ask for, and its validation, is
//! `hutch_core::security` (re-exported here).
//!
//! The choices are pure ([`capabilities`], [`denied_syscalls`], [`MASKED_PATHS`],
//! [`READ_ONLY_PATHS`]); [`harden_before_exec`] applies them to the calling process, the
//! last thing before `execve`, in the container's init and in every exec into it.

use std::str::FromStr;

use caps::{CapSet, Capability, CapsHashSet};
use hutch_core::seccomp_profile::{Action, Profile};
use syscalls::Sysno;
use thiserror::Error;

pub use hutch_core::security::*;

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
/// reboot, mounting and namespace games (with `clone`'s namespace flags and `clone3`, see
/// [`Filters::compile`]), handle-based file access (the "shocker" escape),
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

/// The deny-list's calls that only make or join namespaces: lifted, with the `clone`
/// namespace flags and `clone3`, for a container that keeps `CAP_SYS_ADMIN`, as Docker's
/// default profile does.
pub const NAMESPACE_SYSCALLS: [&str; 2] = ["setns", "unshare"];

/// The `clone` flags that make a namespace (`CLONE_NEWTIME` is `0x80`).
const NAMESPACE_CLONE_FLAGS: [u64; 8] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    0x80,
];

/// Why hardening the calling process failed.
#[derive(Debug, Error)]
#[error("{0}")]
pub struct HardenError(String);

/// hutch's default filters. The first answers `EPERM` to the deny-list and to `clone` with
/// any namespace flag (the audit's way around a denied `unshare`: a new user namespace holds
/// every capability); the second answers `ENOSYS` to `clone3`, whose flags sit in memory a
/// filter cannot read, so libc falls back to `clone`, as under Docker's profile. With
/// `may_make_namespaces` (the container keeps `CAP_SYS_ADMIN`) the namespace calls are
/// allowed.
fn default_programs(
    may_make_namespaces: bool,
) -> Result<Vec<seccompiler::BpfProgram>, HardenError> {
    use seccompiler::{
        SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule,
    };
    let fail = |e: &dyn std::fmt::Display| HardenError(format!("seccomp: {e}"));
    let arch = seccompiler::TargetArch::try_from(std::env::consts::ARCH).map_err(|e| fail(&e))?;
    let compile = |rules, matched| {
        seccompiler::SeccompFilter::new(rules, SeccompAction::Allow, matched, arch)
            .and_then(seccompiler::BpfProgram::try_from)
            .map_err(|e| fail(&e))
    };
    let mut denied: std::collections::BTreeMap<i64, Vec<SeccompRule>> = denied_syscalls()
        .into_iter()
        .filter(|(name, _)| !(may_make_namespaces && NAMESPACE_SYSCALLS.contains(name)))
        .map(|(_, nr)| (nr, Vec::new()))
        .collect();
    if may_make_namespaces {
        return Ok(vec![compile(
            denied,
            SeccompAction::Errno(libc::EPERM as u32),
        )?]);
    }
    // One rule per flag: a rule matches when its bit is set, and any matching rule denies.
    let clone_flags = NAMESPACE_CLONE_FLAGS
        .iter()
        .map(|&flag| {
            SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )
            .and_then(|c| SeccompRule::new(vec![c]))
            .map_err(|e| fail(&e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    denied.insert(libc::SYS_clone, clone_flags);
    let clone3 = [(libc::SYS_clone3, Vec::new())].into_iter().collect();
    Ok(vec![
        compile(denied, SeccompAction::Errno(libc::EPERM as u32))?,
        compile(clone3, SeccompAction::Errno(libc::ENOSYS as u32))?,
    ])
}

/// A container's seccomp filters, compiled to BPF: done before the container's process is
/// cloned or forked, so the child only installs them (no parsing or compiling after clone).
#[derive(Debug, Default)]
pub struct Filters(Vec<seccompiler::BpfProgram>);

impl Filters {
    /// The filters `security` asks for: its profile's, hutch's default deny-list, or none
    /// (privileged or unconfined). Any filter comes with [`x32_guard`].
    pub fn compile(security: &Security) -> Result<Filters, HardenError> {
        if security.privileged {
            return Ok(Filters::default());
        }
        let mut programs = match &security.seccomp_profile {
            Some(profile) => Profile::parse(profile)
                .and_then(|p| profile_programs(&p))
                .map_err(|e| HardenError(format!("seccomp profile: {e}")))?,
            None if security.effective_seccomp() == Seccomp::Default => {
                let kept = capabilities(security).map_err(|e| HardenError(e.to_string()))?;
                default_programs(kept.contains(&Capability::CAP_SYS_ADMIN))?
            }
            None => Vec::new(),
        };
        if !programs.is_empty() {
            programs.extend(x32_guard());
        }
        Ok(Filters(programs))
    }
}

/// On x86_64, a filter answering `ENOSYS` to every x32 system call (the x86_64 audit
/// architecture with bit 30 set in the number). seccompiler compares exact numbers, so an
/// x32 `unshare` or `mount` would miss every rule where the kernel has x32 enabled
/// (`syscall.x32=y`); libseccomp and Docker guard the same way. Other architectures need
/// none.
fn x32_guard() -> Option<seccompiler::BpfProgram> {
    if std::env::consts::ARCH != "x86_64" {
        return None;
    }
    use seccompiler::sock_filter;
    const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    // BPF opcodes: LD|W|ABS, JMP|JEQ|K, JMP|JGE|K, RET|K; seccomp_data: nr at 0, arch at 4.
    let (load, jeq, jge, ret) = (0x20, 0x15, 0x35, 0x06);
    let op = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    Some(vec![
        op(load, 0, 0, 4),
        op(jeq, 0, 3, AUDIT_ARCH_X86_64),
        op(load, 0, 0, 0),
        op(jge, 0, 1, X32_SYSCALL_BIT),
        op(ret, 0, 0, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        op(ret, 0, 0, libc::SECCOMP_RET_ALLOW),
    ])
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
pub fn harden_before_exec(security: &Security, filters: &Filters) -> Result<(), HardenError> {
    let step = |what: &str, e: caps::errors::CapsError| HardenError(format!("{what}: {e}"));
    let mut keep = capabilities(security).map_err(|e| HardenError(e.to_string()))?;
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
    for program in &filters.0 {
        seccompiler::apply_filter(program)
            .map_err(|e| HardenError(format!("seccomp filter: {e}")))?;
    }
    Ok(())
}

/// The capabilities the container's processes keep, as the `caps` crate names them.
pub fn capabilities(security: &Security) -> Result<CapsHashSet, SecurityError> {
    security
        .capability_names()?
        .into_iter()
        .map(|name| {
            Capability::from_str(name).map_err(|_| SecurityError::UnknownCapability(name.into()))
        })
        .collect()
}

/// seccompiler's action for a profile's action.
fn seccomp_action(action: Action) -> seccompiler::SeccompAction {
    match action {
        Action::Allow => seccompiler::SeccompAction::Allow,
        Action::Errno(n) => seccompiler::SeccompAction::Errno(n),
        Action::KillThread => seccompiler::SeccompAction::KillThread,
        Action::KillProcess => seccompiler::SeccompAction::KillProcess,
        Action::Trap => seccompiler::SeccompAction::Trap,
        Action::Log => seccompiler::SeccompAction::Log,
    }
}

/// A profile's filters, compiled for this host's architecture; an unknown syscall name is an
/// error naming it. Names become numbers through the same table the controller checks them
/// with (`hutch_core::seccomp_profile`, the `syscalls` crate), so a profile accepted at
/// create time compiles on every node.
///
/// seccompiler makes one filter per action, so a profile becomes several: one answering the
/// default action to every syscall the profile does not name, and one per other action
/// answering it to that action's syscalls. The kernel runs them all and keeps the strictest
/// answer; as a syscall may be named under one action only, that is the profile's answer.
pub fn profile_programs(profile: &Profile) -> Result<Vec<seccompiler::BpfProgram>, String> {
    let arch =
        seccompiler::TargetArch::try_from(std::env::consts::ARCH).map_err(|e| e.to_string())?;
    let rules = |names: &mut dyn Iterator<Item = &String>| {
        names
            .map(|name| {
                Sysno::from_str(name)
                    .map(|nr| (i64::from(nr.id()), Vec::new()))
                    .map_err(|_| format!("unknown system call '{name}'"))
            })
            .collect::<Result<std::collections::BTreeMap<_, _>, String>>()
    };
    let compile = |rules, mismatch: Action, matched: Action| {
        seccompiler::SeccompFilter::new(
            rules,
            seccomp_action(mismatch),
            seccomp_action(matched),
            arch,
        )
        .and_then(seccompiler::BpfProgram::try_from)
        .map_err(|e| e.to_string())
    };
    let mut programs = Vec::new();
    if profile.default != Action::Allow {
        let all = rules(&mut profile.named.values().flatten())?;
        programs.push(compile(all, profile.default, Action::Allow)?);
    }
    for (action, names) in &profile.named {
        if *action != Action::Allow {
            programs.push(compile(rules(&mut names.iter())?, Action::Allow, *action)?);
        }
    }
    Ok(programs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_caps_crate_knows_every_name_core_uses() {
        let all = capabilities(&Security {
            privileged: true,
            ..Default::default()
        })
        .expect("caps");
        assert_eq!(all.len(), ALL_CAPABILITIES.len());
        let defaults = capabilities(&Security::default()).expect("caps");
        assert!(defaults.contains(&Capability::CAP_CHOWN));
        assert!(!defaults.contains(&Capability::CAP_SYS_ADMIN));
        assert!(ALL_CAPABILITIES.len() >= caps::runtime::thread_all_supported().len());
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
        assert_eq!(default_programs(false).expect("programs").len(), 2);
        assert_eq!(default_programs(true).expect("programs").len(), 1);
        // Every filtered container also gets the x32 guard on x86_64.
        let filters = Filters::compile(&Security::default()).expect("compile");
        let guard = usize::from(std::env::consts::ARCH == "x86_64");
        assert_eq!(filters.0.len(), 2 + guard);
        let unconfined = Security {
            seccomp: Seccomp::Unconfined,
            ..Default::default()
        };
        assert!(Filters::compile(&unconfined).expect("compile").0.is_empty());
    }

    #[test]
    fn a_profile_compiles_to_one_filter_per_action() {
        let p = Profile::parse(hutch_core::seccomp_profile::EXAMPLE).expect("parse");
        assert_eq!(profile_programs(&p).expect("compile").len(), 3);
    }

    #[test]
    fn every_system_call_the_controller_accepts_compiles_here() {
        let names: Vec<&str> = Sysno::iter().map(|s| s.name()).collect();
        let json = serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": names, "action": "SCMP_ACT_ERRNO"}],
        })
        .to_string();
        let p = Profile::parse(&json).expect("parse");
        p.check_names()
            .expect("the controller's check accepts every name");
        assert_eq!(profile_programs(&p).expect("every name compiles").len(), 1);
    }
}
