//! Control groups: the memory limit of every container, its usage and peak, a reliable
//! record of OOM kills, its process limit and its CPU limit and weight, on cgroup v1 and v2
//! behind one small interface.
//!
//! hutch owns one delegated subtree and never touches a cgroup outside it: by default the
//! cgroup the agent was started in (what a systemd unit with `Delegate=yes` gets), or an
//! explicit root. Inside it:
//!
//! ```text
//! ROOT/                       delegated to hutch
//!   hutch-agent/              the agent itself (cgroup v2 only: inner nodes hold no processes)
//!   hutch-INSTANCE/           one per agent instance (node name)
//!     supervisors/            every supervisor: never charged to a container
//!     ctr-ID/                 one per container, carrying its memory limit
//! ```
//!
//! Which version is used is detected once: a pure v2 host mounts `cgroup2` at
//! `/sys/fs/cgroup`; otherwise the v1 hierarchy carrying the memory controller is used (a
//! hybrid host such as this project's CI mounts memory on v1 and an empty v2 beside it).
//! The differences (file names, how OOM kills are counted, how a cgroup is emptied, what v2
//! needs before children can have limits) live in [`v1`] and [`v2`].

pub mod v1;
pub mod v2;

use std::path::{Path, PathBuf};
use std::time::Duration;

use hutch_core::cpu::CpuLimits;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Which cgroup version carries the memory controller here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupVersion {
    /// Legacy per-controller hierarchies; memory at e.g. `/sys/fs/cgroup/memory`.
    V1,
    /// The unified hierarchy at `/sys/fs/cgroup`.
    V2,
}

impl std::fmt::Display for CgroupVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CgroupVersion::V1 => "v1",
            CgroupVersion::V2 => "v2",
        })
    }
}

/// Why a cgroup operation failed.
#[derive(Debug, Error)]
pub enum CgroupError {
    /// No usable memory controller.
    #[error("no memory cgroup controller found: {0}")]
    NoMemoryController(String),
    /// A CPU limit or weight is asked for where there is no cpu controller.
    #[error("cannot limit the CPU of {0}: no cpu cgroup controller is available to it (mount the v1 cpu hierarchy, or delegate cpu on cgroup v2); run without --cpus/--cpu-shares")]
    NoCpuController(PathBuf),
    /// A pids limit is asked for where there is no pids controller.
    #[error("cannot limit the number of processes of {0}: no pids cgroup controller is available to it (mount the v1 pids hierarchy, or delegate pids on cgroup v2); set pids_limit to 0 to run without one")]
    NoPidsController(PathBuf),
    /// cgroup v2: the memory controller cannot be enabled for hutch's cgroups (the parent did
    /// not delegate it, or enabling it failed). An agent still starts, and refuses every
    /// container that asks for a memory limit with this error rather than run it unlimited.
    #[error("cannot enforce a memory limit below cgroup {path}: {reason}")]
    MemoryNotDelegated {
        /// The cgroup whose children would carry the limits.
        path: PathBuf,
        /// Why, and what to change.
        reason: String,
    },
    /// The delegated root is not usable.
    #[error("cgroup root {path}: {message}")]
    Root {
        /// The root.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Reading or writing a cgroup file failed.
    #[error("cgroup {path}: {message}")]
    Io {
        /// The cgroup file or directory.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The host cannot limit swap.
    #[error("a swap limit was requested but this host has no swap accounting ({0} is missing); drop memory_swap_limit_bytes or enable swapaccount")]
    SwapUnsupported(PathBuf),
    /// Processes remain in a cgroup that should be empty.
    #[error("cgroup {0} still has processes after they were killed")]
    Busy(PathBuf),
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> CgroupError {
    CgroupError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Where a cgroup lives: enough for any process (agent or supervisor) to open it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupPath {
    /// Version of the hierarchy.
    pub version: CgroupVersion,
    /// Mount point of the hierarchy (e.g. `/sys/fs/cgroup/memory`).
    pub mount: PathBuf,
    /// Path relative to the mount point, without a leading `/`.
    pub relative: PathBuf,
    /// cgroup v1 only: the matching cgroup in the separate pids hierarchy (v2 has the pids
    /// controller in the same directory). `None` when v1 has no pids hierarchy.
    #[serde(default)]
    pub pids_dir: Option<PathBuf>,
    /// cgroup v1 only: the matching cgroup in the devices hierarchy, where a container's
    /// device access is limited to hutch's own `/dev` entries. `None` without one (and on
    /// v2, whose device control is a BPF program, not built: `nodev` mounts stand alone).
    #[serde(default)]
    pub devices_dir: Option<PathBuf>,
    /// cgroup v1 only: the matching cgroup in the cpu hierarchy, for a CPU limit or weight.
    /// `None` without one, and for a container that has neither (it then costs nothing
    /// there).
    #[serde(default)]
    pub cpu_dir: Option<PathBuf>,
}

impl CgroupPath {
    /// The cgroup's directory.
    pub fn dir(&self) -> PathBuf {
        self.mount.join(&self.relative)
    }

    /// A child of this cgroup.
    pub fn child(&self, name: &str) -> CgroupPath {
        CgroupPath {
            relative: self.relative.join(name),
            pids_dir: self.pids_dir.as_ref().map(|d| d.join(name)),
            devices_dir: self.devices_dir.as_ref().map(|d| d.join(name)),
            cpu_dir: self.cpu_dir.as_ref().map(|d| d.join(name)),
            ..self.clone()
        }
    }

    /// Where `pids.max` and `pids.events` of this cgroup are, if the pids controller is
    /// there.
    pub fn pids_files_dir(&self) -> Option<PathBuf> {
        match self.version {
            CgroupVersion::V1 => self.pids_dir.clone(),
            CgroupVersion::V2 => Some(self.dir()),
        }
        .filter(|d| d.join("pids.max").exists())
    }

    /// The cgroup's directory and its companions in the other v1 hierarchies (pids,
    /// devices, cpu), where they exist.
    pub fn dirs(&self) -> impl Iterator<Item = PathBuf> {
        std::iter::once(self.dir())
            .chain(self.pids_dir.clone())
            .chain(self.devices_dir.clone())
            .chain(self.cpu_dir.clone())
    }

    /// Where `cpu.*` of this cgroup are, if the cpu controller is there.
    pub fn cpu_files_dir(&self) -> Option<PathBuf> {
        match self.version {
            CgroupVersion::V1 => self.cpu_dir.clone(),
            CgroupVersion::V2 => Some(self.dir()),
        }
        .filter(|d| d.join("cpu.shares").exists() || d.join("cpu.max").exists())
    }

    /// Moves process `pid` (all its threads) into this cgroup (and into its v1 companions).
    pub fn add_process(&self, pid: u32) -> Result<(), CgroupError> {
        for dir in self.dirs() {
            let file = dir.join("cgroup.procs");
            std::fs::write(&file, pid.to_string()).map_err(|e| io_err(&file, e))?;
        }
        Ok(())
    }

    /// Moves the calling process into this cgroup (and into its v1 companions), through a
    /// [`SelfEntry`] where the version has one and the process has a single thread, by pid
    /// otherwise.
    pub fn add_this_process(&self) -> Result<(), CgroupError> {
        match self.self_entry()? {
            Some(entry) if crate::sys::is_single_threaded() => entry.enter(),
            _ => self.add_process(std::process::id()),
        }
    }

    /// Opens the files through which a single-threaded process moves itself into this
    /// cgroup without the kernel's global migration lock; `None` on cgroup v2, which has
    /// none (see [`SelfEntry`]).
    pub fn self_entry(&self) -> Result<Option<SelfEntry>, CgroupError> {
        if self.version != CgroupVersion::V1 {
            return Ok(None);
        }
        let files = self
            .dirs()
            .map(|dir| {
                let path = dir.join("tasks");
                // std opens close-on-exec: the files never reach a container's command.
                match std::fs::OpenOptions::new().write(true).open(&path) {
                    Ok(file) => Ok((path, file)),
                    Err(e) => Err(io_err(&path, e)),
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Some(SelfEntry { files }))
    }

    /// The cgroup's directory, opened for `clone3(CLONE_INTO_CGROUP)` (see
    /// [`crate::sys::fork_into_cgroup`]): cgroup v2 only, `None` on v1, whose processes
    /// move themselves in through a [`SelfEntry`] instead.
    pub fn clone_target(&self) -> Result<Option<std::os::fd::OwnedFd>, CgroupError> {
        if self.version != CgroupVersion::V2 {
            return Ok(None);
        }
        let dir = self.dir();
        nix::fcntl::open(
            &dir,
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map(Some)
        .map_err(|e| io_err(&dir, e))
    }

    /// Creates the cgroup's directory (and its v1 companions).
    fn create(&self) -> Result<(), CgroupError> {
        for dir in self.dirs() {
            std::fs::create_dir(&dir).map_err(|e| io_err(&dir, e))?;
        }
        Ok(())
    }

    /// Pids of the processes in this cgroup.
    pub fn procs(&self) -> Vec<u32> {
        std::fs::read_to_string(self.dir().join("cgroup.procs"))
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }
}

/// A way into one cgroup v1 cgroup (and its companions in the other hierarchies) for the
/// single-threaded process that uses it: each hierarchy's `tasks` file, opened in advance,
/// to which the process writes `0`, "the calling thread".
///
/// Moving a whole process (its pid written to `cgroup.procs`) takes the kernel's global
/// threadgroup lock for writing, and the first such move after an idle spell waits for an
/// RCU grace period: 7-17 ms on a 2-core machine, against 0.2-0.35 ms for the same move
/// of the calling thread, which the kernel makes without that lock. For a process with one
/// thread, the calling thread is the whole process. Files opened by root work for a process
/// that has since entered a user namespace: the kernel checks the opener's credentials.
/// cgroup v2 moves threads only inside a threaded subtree, so it has no such entry.
#[derive(Debug)]
pub struct SelfEntry {
    files: Vec<(PathBuf, std::fs::File)>,
}

impl SelfEntry {
    /// Moves the calling thread into the cgroup; the caller has no other thread.
    pub fn enter(&self) -> Result<(), CgroupError> {
        for (path, file) in &self.files {
            std::io::Write::write_all(&mut &*file, b"0").map_err(|e| io_err(path, e))?;
        }
        Ok(())
    }
}

/// Process-count figures of one container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidsStats {
    /// `pids.max`; `None` when unlimited.
    pub limit: Option<u64>,
    /// Processes and threads now.
    pub current: u64,
    /// Forks refused because the limit was reached.
    pub limit_hits: u64,
}

/// Memory figures of one container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryStats {
    /// The limit in force, as the kernel rounded it; `None` when unlimited.
    pub limit_bytes: Option<u64>,
    /// Current usage.
    pub usage_bytes: u64,
    /// Highest usage seen, where the kernel records it.
    pub peak_bytes: Option<u64>,
    /// Processes the OOM killer killed in this cgroup.
    pub oom_kills: u64,
}

/// Limits applied when a container's cgroup is created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourceLimits {
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// Memory + swap limit in bytes.
    pub memory_and_swap_bytes: Option<u64>,
    /// Most processes and threads (`pids.max`).
    pub pids: Option<u32>,
    /// Every device the agent may use (a privileged container); otherwise, where the v1
    /// devices controller is, only [`ALLOWED_DEVICES`].
    pub all_devices: bool,
    /// CPU limit and weight.
    pub cpu: CpuLimits,
}

/// The version-specific part of the interface.
pub(crate) trait Driver {
    /// Readies the delegated root so that its children can carry memory limits.
    fn prepare_root(&self, root: &CgroupPath) -> Result<(), CgroupError>;
    /// Lets the children of `dir` (a cgroup hutch created) carry memory limits.
    fn delegate_memory(&self, cgroup: &CgroupPath) -> Result<(), CgroupError>;
    /// Sets the memory + swap limit; `memory` is already in force.
    fn set_swap_limit(
        &self,
        cgroup: &CgroupPath,
        memory: u64,
        total: u64,
    ) -> Result<(), CgroupError>;
    /// Processes killed by the OOM killer in this cgroup so far.
    fn oom_kills(&self, cgroup: &CgroupPath) -> u64;
    /// The file holding the memory limit.
    fn limit_file(&self) -> &'static str;
    /// The file holding the current memory usage.
    fn usage_file(&self) -> &'static str;
    /// The file holding the highest usage recorded (absent on kernels before 5.19 on v2).
    fn peak_file(&self) -> &'static str;
    /// Kills every process in the cgroup.
    fn kill_all(&self, cgroup: &CgroupPath) -> Result<(), CgroupError>;
    /// Writes the CPU limit and weight into the cgroup's cpu files in `dir`.
    fn set_cpu(&self, dir: &Path, cpu: &CpuLimits) -> Result<(), CgroupError>;
}

/// Writes `value` to `dir/file`.
fn write_file(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let path = dir.join(file);
    std::fs::write(&path, value).map_err(|e| io_err(&path, format!("writing '{value}': {e}")))
}

fn driver(version: CgroupVersion) -> &'static dyn Driver {
    match version {
        CgroupVersion::V1 => &v1::V1,
        CgroupVersion::V2 => &v2::V2,
    }
}

/// Finds the memory hierarchy and this process's cgroup in it.
pub fn detect_own_cgroup() -> Result<CgroupPath, CgroupError> {
    let own = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| {
        CgroupError::NoMemoryController(format!("cannot read /proc/self/cgroup: {e}"))
    })?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| {
        CgroupError::NoMemoryController(format!("cannot read /proc/self/mountinfo: {e}"))
    })?;
    detect_from(&own, &mountinfo)
}

/// Pure part of [`detect_own_cgroup`]: reads `/proc/self/cgroup` and `mountinfo` texts.
pub fn detect_from(own_cgroup: &str, mountinfo: &str) -> Result<CgroupPath, CgroupError> {
    let mut v2_mount = None;
    let mut v1_memory_mount = None;
    let mut v1_pids_mount = None;
    let mut v1_devices_mount = None;
    let mut v1_cpu_mount = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mount_point = left.split(' ').nth(4).unwrap_or("");
        let mut right = right.split(' ');
        let fstype = right.next().unwrap_or("");
        let super_opts = right.nth(1).unwrap_or("");
        if fstype == "cgroup2" && v2_mount.is_none() {
            v2_mount = Some(PathBuf::from(mount_point));
        }
        if fstype == "cgroup" && super_opts.split(',').any(|o| o == "memory") {
            v1_memory_mount = Some(PathBuf::from(mount_point));
        }
        if fstype == "cgroup" && super_opts.split(',').any(|o| o == "pids") {
            v1_pids_mount = Some(PathBuf::from(mount_point));
        }
        if fstype == "cgroup" && super_opts.split(',').any(|o| o == "devices") {
            v1_devices_mount = Some(PathBuf::from(mount_point));
        }
        if fstype == "cgroup" && super_opts.split(',').any(|o| o == "cpu") {
            v1_cpu_mount = Some(PathBuf::from(mount_point));
        }
    }
    let relative_of = |pred: &dyn Fn(&str, &str) -> bool| {
        own_cgroup.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            pred(controllers, path).then(|| PathBuf::from(path.trim_start_matches('/')))
        })
    };
    match (v1_memory_mount, v2_mount) {
        (Some(mount), _) => {
            let relative =
                relative_of(&|c, _| c.split(',').any(|c| c == "memory")).ok_or_else(|| {
                    CgroupError::NoMemoryController(
                        "memory hierarchy is mounted but /proc/self/cgroup has no memory line"
                            .into(),
                    )
                })?;
            let companion = |mount: Option<PathBuf>, controller: &str| {
                mount.and_then(|m| {
                    relative_of(&|c, _| c.split(',').any(|c| c == controller)).map(|r| m.join(r))
                })
            };
            Ok(CgroupPath {
                version: CgroupVersion::V1,
                mount,
                relative,
                pids_dir: companion(v1_pids_mount, "pids"),
                devices_dir: companion(v1_devices_mount, "devices"),
                cpu_dir: companion(v1_cpu_mount, "cpu"),
            })
        }
        (None, Some(mount)) => {
            let mut relative = relative_of(&|c, _| c.is_empty()).ok_or_else(|| {
                CgroupError::NoMemoryController(
                    "cgroup2 is mounted but /proc/self/cgroup has no '0::' line".into(),
                )
            })?;
            // Already in the leaf hutch moves itself into (another runtime of this process
            // did, or the process that started this one did): the delegated root is the
            // leaf's parent.
            if relative.file_name().is_some_and(|n| n == V2_AGENT_LEAF) {
                relative.pop();
            }
            Ok(CgroupPath {
                version: CgroupVersion::V2,
                mount,
                relative,
                pids_dir: None,
                devices_dir: None,
                cpu_dir: None,
            })
        }
        (None, None) => Err(CgroupError::NoMemoryController(
            "neither a cgroup v1 memory hierarchy nor cgroup2 is mounted".into(),
        )),
    }
}

/// The leaf of the delegated root the agent moves itself into on cgroup v2.
pub const V2_AGENT_LEAF: &str = "hutch-agent";

/// hutch's subtree for one agent instance.
#[derive(Debug, Clone)]
pub struct CgroupManager {
    root: CgroupPath,
    instance: CgroupPath,
    /// Why containers here cannot have a memory limit, when they cannot (cgroup v2 without
    /// the memory controller delegated).
    memory_missing: Option<(PathBuf, String)>,
}

/// A container's cgroup.
#[derive(Debug, Clone)]
pub struct ContainerCgroup {
    path: CgroupPath,
}

impl CgroupManager {
    /// Prepares `ROOT/hutch-INSTANCE/supervisors` below `root` (or below this process's own
    /// cgroup when `root` is `None`).
    pub fn init(root: Option<CgroupPath>, instance: &str) -> Result<Self, CgroupError> {
        let root = match root {
            Some(r) => r,
            None => detect_own_cgroup()?,
        };
        if !root.dir().is_dir() {
            return Err(CgroupError::Root {
                path: root.dir(),
                message: "does not exist".into(),
            });
        }
        let d = driver(root.version);
        let mut memory_missing = match d.prepare_root(&root) {
            Ok(()) => None,
            Err(CgroupError::MemoryNotDelegated { path, reason }) => Some((path, reason)),
            Err(e) => return Err(e),
        };
        let instance = root.child(&format!("hutch-{instance}"));
        for cgroup in [&instance, &instance.child("supervisors")] {
            for dir in cgroup.dirs() {
                mkdir(&dir)?;
            }
            if cgroup == &instance {
                match d.delegate_memory(&instance) {
                    Ok(()) => {}
                    Err(CgroupError::MemoryNotDelegated { path, reason }) => {
                        memory_missing.get_or_insert((path, reason));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(CgroupManager {
            root,
            instance,
            memory_missing,
        })
    }

    /// The cgroup version in use.
    pub fn version(&self) -> CgroupVersion {
        self.root.version
    }

    /// The delegated root.
    pub fn root(&self) -> &CgroupPath {
        &self.root
    }

    /// This instance's subtree.
    pub fn instance(&self) -> &CgroupPath {
        &self.instance
    }

    /// Why containers cannot get a memory limit here, when they cannot (a cgroup v2 subtree
    /// without the memory controller): such containers are refused, others run.
    pub fn memory_missing(&self) -> Option<CgroupError> {
        self.memory_missing
            .as_ref()
            .map(|(path, reason)| CgroupError::MemoryNotDelegated {
                path: path.clone(),
                reason: reason.clone(),
            })
    }

    /// Whether containers can get a pids limit here.
    pub fn has_pids(&self) -> bool {
        match self.root.version {
            CgroupVersion::V1 => self.instance.pids_dir.is_some(),
            CgroupVersion::V2 => {
                std::fs::read_to_string(self.instance.dir().join("cgroup.subtree_control"))
                    .is_ok_and(|t| t.split_whitespace().any(|c| c == "pids"))
            }
        }
    }

    /// The leaf every supervisor joins.
    pub fn supervisors(&self) -> CgroupPath {
        self.instance.child("supervisors")
    }

    /// The cgroup container `id` has or will have.
    pub fn container_path(&self, id: &str) -> CgroupPath {
        self.instance.child(&format!("ctr-{id}"))
    }

    /// Creates container `id`'s cgroup with `limits`, before any of its processes exists.
    /// A failure leaves no cgroup behind.
    pub fn create_container(
        &self,
        id: &str,
        limits: ResourceLimits,
    ) -> Result<ContainerCgroup, CgroupError> {
        if let (Some(missing), Some(_)) = (self.memory_missing(), limits.memory_bytes) {
            return Err(missing);
        }
        let mut path = self.container_path(id);
        if limits.cpu.is_empty() {
            path.cpu_dir = None;
        }
        path.create()?;
        let cg = ContainerCgroup { path };
        if let Err(e) = cg.apply(limits) {
            let _ = cg.remove();
            return Err(e);
        }
        Ok(cg)
    }

    /// Removes the supervisors leaf and the instance directory when nothing is left in them.
    pub fn remove_if_idle(&self) {
        for cgroup in [self.supervisors(), self.instance.clone()] {
            for dir in cgroup.dirs() {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

fn mkdir(dir: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err(dir, e)),
    }
}

impl ContainerCgroup {
    /// Opens an existing container cgroup.
    pub fn open(path: CgroupPath) -> Self {
        ContainerCgroup { path }
    }

    /// Where it is.
    pub fn path(&self) -> &CgroupPath {
        &self.path
    }

    fn apply(&self, limits: ResourceLimits) -> Result<(), CgroupError> {
        if let (Some(dir), false) = (&self.path.devices_dir, limits.all_devices) {
            allow_only_hutch_devices(dir)?;
        }
        if let Some(max) = limits.pids {
            match self.path.pids_files_dir() {
                Some(dir) => {
                    let file = dir.join("pids.max");
                    std::fs::write(&file, max.to_string())
                        .map_err(|e| io_err(&file, format!("setting {max}: {e}")))?;
                }
                None => return Err(CgroupError::NoPidsController(self.path.dir())),
            }
        }
        if !limits.cpu.is_empty() {
            let dir = self
                .path
                .cpu_files_dir()
                .ok_or_else(|| CgroupError::NoCpuController(self.path.dir()))?;
            driver(self.path.version).set_cpu(&dir, &limits.cpu)?;
        }
        let Some(memory) = limits.memory_bytes else {
            return Ok(());
        };
        let d = driver(self.path.version);
        // The files are written directly (the cgroup is addressed by its directory: no
        // lookup of the hierarchy's mount point, which parses `/proc/self/mountinfo` and its
        // line per container overlay).
        let file = self.path.dir().join(d.limit_file());
        std::fs::write(&file, memory.to_string())
            .map_err(|e| io_err(&file, format!("setting memory limit {memory}: {e}")))?;
        if let Some(total) = limits.memory_and_swap_bytes {
            d.set_swap_limit(&self.path, memory, total)?;
        }
        Ok(())
    }

    /// Moves process `pid` into the container's cgroup.
    pub fn add_process(&self, pid: u32) -> Result<(), CgroupError> {
        self.path.add_process(pid)
    }

    /// The container cgroup's [`SelfEntry`], where the version has one.
    pub fn self_entry(&self) -> Result<Option<SelfEntry>, CgroupError> {
        self.path.self_entry()
    }

    /// Current memory figures.
    pub fn memory(&self) -> MemoryStats {
        let d = driver(self.path.version);
        let read = |file: &str| -> Option<u64> {
            std::fs::read_to_string(self.path.dir().join(file))
                .ok()
                .and_then(|t| t.trim().parse().ok())
        };
        MemoryStats {
            // "max" (v2) does not parse; v1's unlimited is a huge page-rounded number.
            limit_bytes: read(d.limit_file()).filter(|l| *l > 0 && *l < i64::MAX as u64 / 2),
            usage_bytes: read(d.usage_file()).unwrap_or(0),
            peak_bytes: read(d.peak_file()),
            oom_kills: d.oom_kills(&self.path),
        }
    }

    /// Memory in use and OOM kills so far: the two figures a metrics scrape reads of every
    /// container (two files, where [`ContainerCgroup::memory`] reads four).
    pub fn memory_usage_and_oom_kills(&self) -> (u64, u64) {
        let d = driver(self.path.version);
        let usage = std::fs::read_to_string(self.path.dir().join(d.usage_file()))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        (usage, d.oom_kills(&self.path))
    }

    /// Processes and threads now, where the pids controller is (one file).
    pub fn pids_current(&self) -> Option<u64> {
        let dir = match self.path.version {
            CgroupVersion::V1 => self.path.pids_dir.clone()?,
            CgroupVersion::V2 => self.path.dir(),
        };
        std::fs::read_to_string(dir.join("pids.current"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
    }

    /// The pids figures, where the pids controller is.
    pub fn pids(&self) -> Option<PidsStats> {
        let dir = self.path.pids_files_dir()?;
        let read = |file: &str| std::fs::read_to_string(dir.join(file)).ok();
        Some(PidsStats {
            limit: read("pids.max").and_then(|t| t.trim().parse().ok()),
            current: read("pids.current")
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(0),
            limit_hits: v1::read_keyed(&dir.join("pids.events"), "max"),
        })
    }

    /// Kills every process in the cgroup and waits (up to a few seconds) until it is empty.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        let d = driver(self.path.version);
        let mut backoff = Backoff::new(Duration::from_secs(5), Duration::from_millis(10));
        loop {
            if self.path.procs().is_empty() {
                return Ok(());
            }
            d.kill_all(&self.path)?;
            if !backoff.wait() {
                return Err(CgroupError::Busy(self.path.dir()));
            }
        }
    }

    /// Removes the (empty) cgroup; already gone counts as removed.
    pub fn remove(&self) -> Result<(), CgroupError> {
        for dir in self.path.dirs() {
            remove_cgroup_dir(&dir)?;
        }
        Ok(())
    }
}

/// The devices a container may use, as v1 `devices.allow` lines: the nodes hutch binds into
/// its `/dev` (null, zero, full, random, urandom, tty) and pseudo-terminals (`/dev/ptmx`,
/// `/dev/pts/*`), as runc allows. Nothing else can be opened or made, whatever nodes its
/// rootfs holds.
pub const ALLOWED_DEVICES: [&str; 8] = [
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
];

/// Denies every device in the v1 devices cgroup `dir`, then allows [`ALLOWED_DEVICES`].
fn allow_only_hutch_devices(dir: &Path) -> Result<(), CgroupError> {
    let write = |file: &str, rule: &str| {
        let path = dir.join(file);
        std::fs::write(&path, rule).map_err(|e| io_err(&path, format!("writing '{rule}': {e}")))
    };
    write("devices.deny", "a")?;
    ALLOWED_DEVICES
        .iter()
        .try_for_each(|rule| write("devices.allow", rule))
}

/// Removes an empty cgroup directory, waiting a little while the kernel still counts a
/// process that has just exited.
fn remove_cgroup_dir(dir: &Path) -> Result<(), CgroupError> {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_millis(5));
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            // The last process is still leaving (exiting, not yet unlinked from the cgroup).
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                if !backoff.wait() {
                    return Err(CgroupError::Busy(dir.to_path_buf()));
                }
            }
            Err(e) => return Err(io_err(dir, e)),
        }
    }
}

/// Waits between the attempts of something the kernel finishes on its own a moment later
/// (the processes of a cgroup dying, a cgroup emptying): 50 µs first, doubling up to `cap`,
/// for `total` at most. The usual wait is well under a millisecond; a fixed 5-10 ms sleep
/// was the largest part of a container's clean-up.
struct Backoff {
    deadline: std::time::Instant,
    next: Duration,
    cap: Duration,
}

impl Backoff {
    fn new(total: Duration, cap: Duration) -> Self {
        Backoff {
            deadline: std::time::Instant::now() + total,
            next: Duration::from_micros(50),
            cap,
        }
    }

    /// Sleeps before the next attempt; `false` once the time is up.
    fn wait(&mut self) -> bool {
        let now = std::time::Instant::now();
        if now >= self.deadline {
            return false;
        }
        std::thread::sleep(self.next.min(self.deadline - now));
        self.next = (self.next * 2).min(self.cap);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_ends_on_time() {
        let mut b = Backoff::new(Duration::from_millis(30), Duration::from_millis(4));
        let started = std::time::Instant::now();
        let mut waits = 0;
        while b.wait() {
            waits += 1;
        }
        let took = started.elapsed();
        // 50, 100, ..., 3200 µs then 4 ms each: about 13 waits in 30 ms (fewer when
        // sleeps overrun on a busy machine).
        assert!((3..=20).contains(&waits), "{waits} waits");
        assert!(took >= Duration::from_millis(30), "{took:?}");
        assert_eq!(b.next, Duration::from_millis(4));
    }

    const HYBRID_MOUNTINFO: &str = "\
30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
35 30 0:31 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
36 30 0:32 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
";

    #[test]
    fn hybrid_uses_v1_memory() {
        let own = "9:name=systemd:/\n4:memory:/process_api/abc\n0::/\n";
        let p = detect_from(own, HYBRID_MOUNTINFO).expect("detect");
        assert_eq!(p.version, CgroupVersion::V1);
        assert_eq!(
            p.dir(),
            PathBuf::from("/sys/fs/cgroup/memory/process_api/abc")
        );
    }

    #[test]
    fn pure_v2() {
        let mi = "30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let p = detect_from("0::/system.slice/hutch-agent.service\n", mi).expect("detect");
        assert_eq!(p.version, CgroupVersion::V2);
        assert_eq!(
            p.dir(),
            PathBuf::from("/sys/fs/cgroup/system.slice/hutch-agent.service")
        );
        assert_eq!(
            p.child("hutch-n1").child("ctr-c1").dir(),
            PathBuf::from("/sys/fs/cgroup/system.slice/hutch-agent.service/hutch-n1/ctr-c1")
        );
        // Moved into its leaf already (by another runtime of the process, or by the process
        // that started it): the root is the leaf's parent.
        let moved = "0::/system.slice/hutch-agent.service/hutch-agent\n";
        assert_eq!(
            detect_from(moved, mi).expect("detect").dir(),
            PathBuf::from("/sys/fs/cgroup/system.slice/hutch-agent.service")
        );
    }

    #[test]
    fn nothing_mounted() {
        assert!(detect_from("0::/\n", "1 0 8:1 / / rw - ext4 /dev/sda rw\n").is_err());
    }
}
