//! What a container is and was, as recorded on disk in its state directory
//! (`STATE_DIR/containers/ID/`):
//!
//! - `config.json`: what the agent asked the supervisor to do (written once, before it starts);
//! - `state.json`: what happened, written only by the supervisor, atomically, at each change:
//!   running (with pid and namespace report), then the exit record (code, signal, OOM kill),
//!   then `cleaned_up` once mounts and cgroup are gone;
//! - `container.log`: stdout and stderr, one timestamped, tagged line each;
//! - `supervisor.log`: the supervisor's own diagnostics;
//! - `upper/`, `work/`, `rootfs/`: the writable layer and where the root is assembled.
//!
//! Because the exit record is on disk before anything else happens, a container that exits
//! while no one watches still has its exit code, OOM flag and logs when asked later.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cgroup::{CgroupPath, MemoryStats, PidsStats};
use crate::overlay::Layer;
use hutch_core::network::NetworkStatus;
use hutch_core::spec::{ContainerSpec, Namespace};
use hutch_core::step::Step;

/// The lifecycle of a container on its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// State directory and cgroup exist; the supervisor is starting it.
    Created,
    /// The command was exec'd and has not exited.
    Running,
    /// The command exited (see exit code or signal).
    Exited,
    /// The OOM killer killed a process of the container.
    OomKilled,
    /// It could not be started, or its supervisor vanished (see `failure`).
    Failed,
}

impl Status {
    /// Whether the container has finished (no process of it is left running).
    pub fn is_final(self) -> bool {
        matches!(self, Status::Exited | Status::OomKilled | Status::Failed)
    }
}

/// Where and why a container failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The step that failed (a string in the state file and on the wire).
    pub step: Step,
    /// What went wrong, for a person.
    pub message: String,
}

impl Failure {
    /// A failure at `step`.
    pub fn new(step: Step, message: impl Into<String>) -> Self {
        Failure {
            step,
            message: message.into(),
        }
    }
}

/// One namespace of a container next to the host's: the tutorial's `ls -l /proc/PID/ns`
/// comparison, as data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceReport {
    /// Which namespace.
    pub kind: Namespace,
    /// Inode of the container's namespace.
    pub container_inode: u64,
    /// Inode of the host's (the supervisor's) namespace of that kind.
    pub host_inode: u64,
    /// Whether they differ.
    pub isolated: bool,
}

/// What the agent hands the supervisor (`config.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SupervisorConfig {
    /// Container id.
    pub id: String,
    /// The validated spec.
    pub spec: ContainerSpec,
    /// Hostname to set when the uts namespace is private.
    pub hostname: String,
    /// The container's state directory.
    pub dir: PathBuf,
    /// The root filesystem (an image's top layer).
    pub lower: PathBuf,
    /// An image's further layers below `lower`, top first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lower_below: Vec<PathBuf>,
    /// Content key of the rootfs entry, to tell which containers use it.
    pub rootfs_key: String,
    /// The container's cgroup (already created, limits set).
    pub cgroup: CgroupPath,
    /// The cgroup leaf supervisors live in.
    pub supervisors_cgroup: CgroupPath,
    /// Log rotation: the spec's, or the agent's defaults.
    #[serde(default)]
    pub log_limits: crate::logs::LogLimits,
    /// The CNI network to connect it to (bridge mode); `None`: no network to set up.
    #[serde(default)]
    pub network: Option<crate::network::NetworkPlan>,
    /// The spec's binds, volumes and tmpfs, with their sources resolved on the node.
    #[serde(default)]
    pub mounts: Vec<crate::container_mounts::PlannedMount>,
}

impl SupervisorConfig {
    /// The writable layer's directories.
    pub fn layer(&self) -> Layer {
        let lowers: Vec<PathBuf> = std::iter::once(self.lower.clone())
            .chain(self.lower_below.iter().cloned())
            .collect();
        Layer::in_dir(&self.dir, &lowers, self.spec.disk_limit_bytes.is_some())
    }
}

/// The record of a container (`state.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerState {
    /// Container id.
    pub id: String,
    /// Current status.
    pub status: Status,
    /// The supervisor's pid.
    pub supervisor_pid: Option<u32>,
    /// The supervisor's start time in ticks, to recognise it after pid reuse.
    pub supervisor_start_ticks: Option<u64>,
    /// Host pid of the container's init (PID 1 inside when the pid namespace is private).
    pub pid: Option<u32>,
    /// Exit code, when it exited normally.
    pub exit_code: Option<i32>,
    /// Terminating signal, when a signal killed it.
    pub signal: Option<i32>,
    /// Whether the OOM killer killed a process of the container.
    pub oom_killed: bool,
    /// Why it failed.
    pub failure: Option<Failure>,
    /// Namespace report taken just before the command was exec'd.
    pub namespaces: Vec<NamespaceReport>,
    /// Memory figures at exit.
    pub final_memory: Option<MemoryStats>,
    /// Process-count figures at exit (where the pids controller is).
    #[serde(default)]
    pub final_pids: Option<PidsStats>,
    /// When it was created, started and finished (ms since the epoch).
    pub created_ms: u64,
    /// See `created_ms`.
    pub started_ms: Option<u64>,
    /// See `created_ms`.
    pub finished_ms: Option<u64>,
    /// Whether the supervisor finished removing mounts and cgroup.
    pub cleaned_up: bool,
    /// Its network once connected (bridge mode).
    #[serde(default)]
    pub network: Option<NetworkStatus>,
    /// When each step of its start happened.
    #[serde(default)]
    pub timeline: StartTimeline,
}

/// When each step of a container's start happened, in microseconds since the Unix epoch on
/// its node's clock: where the time of a start goes (`hutch-bench --explain` prints it hop
/// by hop). Unset steps did not happen (or happened before these were recorded).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartTimeline {
    /// The agent took the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_received_us: Option<u64>,
    /// The supervisor process began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervisor_started_us: Option<u64>,
    /// The supervisor had moved itself into the supervisors' cgroup (on cgroup v1 the first
    /// migration after an idle spell waits for an RCU grace period: milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_joined_us: Option<u64>,
    /// The container's init was cloned into its namespaces (rootfs overlay and staged
    /// mounts ready).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_cloned_us: Option<u64>,
    /// The supervisor released the container's init: namespaces, mounts, cgroup and network
    /// were ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_released_us: Option<u64>,
    /// The init exec'd the command (the supervisor saw its report pipe close).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_exec_us: Option<u64>,
    /// The supervisor reaped the init (the command ended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_exited_us: Option<u64>,
    /// The supervisor had cleaned up (processes, network, mounts, cgroup) and was about to
    /// record the end; the agent reports it once the supervisor is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleaned_up_us: Option<u64>,
}

impl ContainerState {
    /// A fresh record.
    pub fn created(id: &str, now_ms: u64) -> Self {
        ContainerState {
            id: id.to_string(),
            status: Status::Created,
            supervisor_pid: None,
            supervisor_start_ticks: None,
            pid: None,
            exit_code: None,
            signal: None,
            oom_killed: false,
            failure: None,
            namespaces: Vec::new(),
            final_memory: None,
            final_pids: None,
            created_ms: now_ms,
            started_ms: None,
            finished_ms: None,
            cleaned_up: false,
            network: None,
            timeline: StartTimeline::default(),
        }
    }
}

/// Paths of the files in a container's state directory.
pub struct StatePaths;

impl StatePaths {
    /// `config.json`.
    pub fn config(dir: &Path) -> PathBuf {
        dir.join("config.json")
    }
    /// `state.json`.
    pub fn state(dir: &Path) -> PathBuf {
        dir.join("state.json")
    }
    /// `attach.sock`: the attach point of a container on a terminal.
    pub fn attach(dir: &Path) -> PathBuf {
        dir.join("attach.sock")
    }
    /// `container.log`.
    pub fn log(dir: &Path) -> PathBuf {
        dir.join("container.log")
    }
    /// `supervisor.log`.
    pub fn supervisor_log(dir: &Path) -> PathBuf {
        dir.join("supervisor.log")
    }
    /// Directory of exec results.
    pub fn exec_dir(dir: &Path) -> PathBuf {
        dir.join("exec")
    }
}
