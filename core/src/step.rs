//! The steps of starting a container (or an exec into one), named once: what a failure
//! record's `step` says, on disk and on the wire (`Failure.step`, a string there), and what
//! decides how an error is classified.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A step of starting a container or an exec, in the order they run.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum Step {
    /// The agent's side of the start: the supervisor's report, the start as a whole.
    Start,
    /// Starting the supervisor.
    Supervisor,
    /// The container's state forbids it (it is not running).
    State,
    /// Creating the namespaces (`clone`).
    Clone,
    /// Moving the process into the container's cgroup.
    Cgroup,
    /// Unsharing the cgroup namespace.
    CgroupNamespace,
    /// Mapping ids and becoming root in the user namespace.
    UserNamespace,
    /// Making the mount namespace private.
    MountNamespace,
    /// Setting up the network: `lo` up, CNI plugins, `/etc/hosts`.
    Network,
    /// Setting the hostname.
    Hostname,
    /// Mounting the root layer.
    Rootfs,
    /// Mounting the spec's binds, volumes and tmpfs.
    Mounts,
    /// Mounting `/proc`.
    MountProc,
    /// Making `/dev`.
    MountDev,
    /// Mounting `/dev/pts`.
    MountDevPts,
    /// Mounting `/dev/shm`.
    MountDevShm,
    /// Mounting `/sys`.
    MountSys,
    /// Masking `/proc` and `/sys` paths.
    MaskPaths,
    /// `pivot_root` into the rootfs.
    PivotRoot,
    /// `chroot` into the rootfs (mount namespace shared).
    Chroot,
    /// Connecting stdin, stdout and stderr.
    Stdio,
    /// Taking the terminal.
    Terminal,
    /// Entering the working directory.
    Workdir,
    /// Capabilities, `no_new_privs`, seccomp.
    Security,
    /// Entering a running container's namespaces (exec).
    Enter,
    /// Executing the command.
    Exec,
    /// A step this version does not know (from a newer agent).
    Other(String),
}

impl Step {
    /// Every step this version knows, in order.
    pub const KNOWN: [Step; 26] = [
        Step::Start,
        Step::Supervisor,
        Step::State,
        Step::Clone,
        Step::Cgroup,
        Step::CgroupNamespace,
        Step::UserNamespace,
        Step::MountNamespace,
        Step::Network,
        Step::Hostname,
        Step::Rootfs,
        Step::Mounts,
        Step::MountProc,
        Step::MountDev,
        Step::MountDevPts,
        Step::MountDevShm,
        Step::MountSys,
        Step::MaskPaths,
        Step::PivotRoot,
        Step::Chroot,
        Step::Stdio,
        Step::Terminal,
        Step::Workdir,
        Step::Security,
        Step::Enter,
        Step::Exec,
    ];

    /// The step's name, as records and the API spell it.
    pub fn as_str(&self) -> &str {
        match self {
            Step::Start => "start",
            Step::Supervisor => "supervisor",
            Step::State => "state",
            Step::Clone => "clone",
            Step::Cgroup => "cgroup",
            Step::CgroupNamespace => "cgroup namespace",
            Step::UserNamespace => "user namespace",
            Step::MountNamespace => "mount namespace",
            Step::Network => "network",
            Step::Hostname => "hostname",
            Step::Rootfs => "rootfs",
            Step::Mounts => "mounts",
            Step::MountProc => "mount /proc",
            Step::MountDev => "mount /dev",
            Step::MountDevPts => "mount /dev/pts",
            Step::MountDevShm => "mount /dev/shm",
            Step::MountSys => "mount /sys",
            Step::MaskPaths => "mask paths",
            Step::PivotRoot => "pivot_root",
            Step::Chroot => "chroot",
            Step::Stdio => "stdio",
            Step::Terminal => "terminal",
            Step::Workdir => "workdir",
            Step::Security => "security",
            Step::Enter => "enter",
            Step::Exec => "exec",
            Step::Other(name) => name,
        }
    }

    /// A step that failed because of what was asked (the command, the working directory),
    /// not because of the host.
    pub fn is_the_requests_fault(&self) -> bool {
        matches!(self, Step::Exec | Step::Workdir)
    }

    /// A step that failed because of what the node can do or the container's state now.
    pub fn is_a_precondition(&self) -> bool {
        matches!(
            self,
            Step::State | Step::Security | Step::Network | Step::Mounts
        )
    }
}

impl From<&str> for Step {
    fn from(name: &str) -> Step {
        Step::KNOWN
            .iter()
            .find(|s| s.as_str() == name)
            .cloned()
            .unwrap_or_else(|| Step::Other(name.to_string()))
    }
}

impl From<String> for Step {
    fn from(name: String) -> Step {
        Step::from(name.as_str())
    }
}

impl From<Step> for String {
    fn from(step: Step) -> String {
        step.as_str().to_string()
    }
}

/// A step equals its name: `failure.step == "exec"`.
impl PartialEq<&str> for Step {
    fn eq(&self, name: &&str) -> bool {
        self.as_str() == *name
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_kept() {
        for step in Step::KNOWN {
            assert_eq!(Step::from(step.as_str()), step);
            let json = serde_json::to_string(&step).expect("json");
            assert_eq!(json, format!("\"{step}\""));
            assert_eq!(serde_json::from_str::<Step>(&json).expect("back"), step);
        }
        assert_eq!(Step::from("mount /dev/pts"), Step::MountDevPts);
        let future = Step::from("network plugin");
        assert_eq!(future, Step::Other("network plugin".into()));
        assert_eq!(future.to_string(), "network plugin");
    }
}
