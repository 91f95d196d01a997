//! Seccomp profiles in Docker's JSON format, the part of it that needs no argument
//! matching: `defaultAction`, `defaultErrnoRet`, and `syscalls` entries of `names`,
//! `action` and `errnoRet` (`comment` is ignored, as are the top-level `architectures` and
//! `archMap`: the filter is for the host's architecture). Anything else (`args`,
//! `includes`, `excludes`, ...) is refused by name, so a profile never means less than it
//! says.
//!
//! This module reads and checks a profile (syscall names against the host architecture's
//! table), so the controller refuses a bad one at create time; `hutch_supervisor::security`
//! compiles it to BPF.

use std::collections::BTreeMap;
use std::str::FromStr;

use serde::Deserialize;

/// `EPERM`, the errno of `SCMP_ACT_ERRNO` when the profile gives none.
const EPERM: u32 = 1;

/// A small profile using three actions: allow-listed basics, `mkdir` refused with `EACCES`,
/// `reboot` killing the process; everything else `EPERM`.
pub const EXAMPLE: &str = r#"{"defaultAction":"SCMP_ACT_ERRNO","architectures":["SCMP_ARCH_X86_64"],
    "syscalls":[{"names":["read","write","exit_group"],"action":"SCMP_ACT_ALLOW"},
                {"names":["mkdir"],"action":"SCMP_ACT_ERRNO","errnoRet":13,"comment":"no dirs"},
                {"names":["reboot"],"action":"SCMP_ACT_KILL_PROCESS"}]}"#;

/// The largest profile accepted.
pub const MAX_PROFILE_BYTES: usize = 1 << 20;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ProfileFile {
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    syscalls: Vec<RuleFile>,
    #[serde(default, rename = "architectures")]
    _architectures: Option<serde_json::Value>,
    #[serde(default, rename = "archMap")]
    _arch_map: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RuleFile {
    names: Vec<String>,
    action: String,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default, rename = "comment")]
    _comment: Option<String>,
}

/// What a filter answers to a syscall.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// Let it run.
    Allow,
    /// Fail it with this errno.
    Errno(u32),
    /// Kill the thread.
    KillThread,
    /// Kill the process.
    KillProcess,
    /// Send SIGSYS.
    Trap,
    /// Let it run and log it.
    Log,
}

impl Action {
    fn parse(name: &str, errno: Option<u32>, default_errno: u32) -> Result<Action, String> {
        Ok(match name {
            "SCMP_ACT_ALLOW" => Action::Allow,
            "SCMP_ACT_ERRNO" => Action::Errno(errno.unwrap_or(default_errno)),
            "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => Action::KillThread,
            "SCMP_ACT_KILL_PROCESS" => Action::KillProcess,
            "SCMP_ACT_TRAP" => Action::Trap,
            "SCMP_ACT_LOG" => Action::Log,
            other => {
                return Err(format!(
                    "action '{other}' is not supported: use SCMP_ACT_ALLOW, SCMP_ACT_ERRNO, SCMP_ACT_KILL, SCMP_ACT_KILL_PROCESS, SCMP_ACT_TRAP or SCMP_ACT_LOG"
                ))
            }
        })
    }
}

/// A parsed profile: the default action and the syscalls of every other action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// What unnamed syscalls get.
    pub default: Action,
    /// Syscall names by action.
    pub named: BTreeMap<Action, Vec<String>>,
}

impl Profile {
    /// Parses and checks a profile; errors say what to change.
    pub fn parse(json: &str) -> Result<Profile, String> {
        if json.len() > MAX_PROFILE_BYTES {
            return Err(format!(
                "the profile is {} bytes; at most {MAX_PROFILE_BYTES} are accepted",
                json.len()
            ));
        }
        let file: ProfileFile = serde_json::from_str(json).map_err(|e| e.to_string())?;
        let default_errno = file.default_errno_ret.unwrap_or(EPERM);
        let default = Action::parse(&file.default_action, file.default_errno_ret, default_errno)?;
        let mut named: BTreeMap<Action, Vec<String>> = BTreeMap::new();
        let mut seen: BTreeMap<String, Action> = BTreeMap::new();
        for (i, rule) in file.syscalls.iter().enumerate() {
            let action = Action::parse(&rule.action, rule.errno_ret, default_errno)
                .map_err(|e| format!("syscalls[{i}]: {e}"))?;
            for name in &rule.names {
                if let Some(before) = seen.insert(name.clone(), action) {
                    if before != action {
                        return Err(format!(
                            "syscalls[{i}]: '{name}' is named under two actions ({before:?} and {action:?})"
                        ));
                    }
                    continue;
                }
                named.entry(action).or_default().push(name.clone());
            }
        }
        Ok(Profile { default, named })
    }

    /// Checks that every syscall the profile names exists on this host's architecture;
    /// an unknown name is an error naming it.
    pub fn check_names(&self) -> Result<(), String> {
        for name in self.named.values().flatten() {
            if syscalls::Sysno::from_str(name).is_err() {
                return Err(format!(
                    "unknown system call '{name}' on {}",
                    std::env::consts::ARCH
                ));
            }
        }
        Ok(())
    }

    /// Parses and checks the names: what a profile must pass before a container is created.
    pub fn check(json: &str) -> Result<(), String> {
        Profile::parse(json)?.check_names()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockers_format_is_read_and_grouped_by_action() {
        let p = Profile::parse(EXAMPLE).expect("parse");
        assert_eq!(p.default, Action::Errno(1));
        assert_eq!(p.named[&Action::Errno(13)], vec!["mkdir".to_string()]);
        assert_eq!(p.named.len(), 3);
    }

    #[test]
    fn what_it_cannot_honour_is_refused_by_name() {
        let err = |json: &str| Profile::check(json).expect_err(json);
        assert!(err(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO","args":[{"index":0}]}]}"#).contains("args"));
        assert!(err(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#).contains("not supported"));
        assert!(err(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["no_such_call"],"action":"SCMP_ACT_ERRNO"}]}"#).contains("no_such_call"));
        assert!(err(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"},{"names":["mkdir"],"action":"SCMP_ACT_KILL"}]}"#).contains("two actions"));
        assert!(err("not json").contains("expected"));
        assert!(Profile::check(r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#).is_ok());
    }
}
