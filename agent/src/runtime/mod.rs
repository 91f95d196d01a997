//! The container runtime: the agent-side API over containers on this host.
//!
//! [`Runtime::run`] validates a spec, creates the container's state directory and its cgroup
//! (limits set before any process exists), and has a [`supervisor`] started: forked by the
//! supervisor [`zygote`], or by `exec` of the `hutch-supervisor` program where the zygote
//! cannot take the request. The
//! supervisor does all namespace and mount work in its own single-threaded process, then
//! reports back one line. Everything after that is read from the state directory the
//! supervisor writes (see [`state`]), so a restarted agent knows as much as the one that
//! started the container.
//!
//! Waiting uses a pidfd of the supervisor (it exits once the exit record is written and the
//! container is cleaned up); signals go to the container's init through a pidfd, after
//! checking that the pid still belongs to the container's cgroup.

mod error;
pub mod mount_plan;
pub mod session;
pub mod starting;
pub mod sys;
pub mod users;
pub mod zygote;

use error::io_err;
pub use error::{ErrorClass, RuntimeError};

pub use hutch_supervisor::{attach, exec, init, logs, state, supervisor};

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt};

use crate::cgroup::{
    CgroupManager, CgroupPath, CgroupVersion, ContainerCgroup, MemoryStats, PidsStats,
    ResourceLimits,
};
use crate::fsutil::{read_json, replace_json, unix_micros_now, unix_millis_now};
use crate::mounts::unmount_below;
use crate::names::validate_name;
use crate::network::{NetworkSettings, NodeNetwork};
use crate::rootfs::{RootfsInfo, RootfsStore};
use crate::spec::{ContainerSpec, Namespace};
use crate::stats::{self, BlockBytes, NetBytes, ProcessInfo};
use hutch_core::health::HealthStatus;

/// A container's health, in its state directory.
const HEALTH_FILE: &str = "health.json";
use crate::volumes::VolumeStore;
use exec::ExecResult;
use hutch_core::network::PortMapping;
use hutch_core::step::Step;
use hutch_supervisor::container_mounts::PlannedMount;
use hutch_supervisor::exec::EXEC_TERM_VAR;
use hutch_supervisor::network::{disconnect, NetworkPlan};
use logs::{LogLimits, LogLine};
use mount_plan::BindPolicy;
use state::{ContainerState, Failure, StatePaths, Status, SupervisorConfig};
use std::sync::Arc;

/// The room the overlay's `lowerdir=` may take: the mount options are one page (4 KiB),
/// which also holds the upper and work directories.
const MAX_LOWERDIR_BYTES: usize = 3584;
/// The pipe a supervisor reports its start on.
type ReportPipe = Box<dyn tokio::io::AsyncRead + Send + Unpin>;
/// How long the supervisor may take to report that the container runs.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Output an exec may return per stream; the rest is dropped and flagged.
const MAX_EXEC_OUTPUT: usize = 16 * 1024 * 1024;

/// Where the runtime keeps its state and finds its helper.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// State directory (default `/var/lib/hutch`): `rootfs/` and `containers/` live below.
    pub state_dir: PathBuf,
    /// Rootfs store directory; default `STATE_DIR/rootfs`. Several runtimes may share one.
    pub rootfs_dir: Option<PathBuf>,
    /// The `hutch-supervisor` program; default: next to the running executable.
    pub supervisor_bin: Option<PathBuf>,
    /// Whether supervisors are forked by a zygote (see [`zygote`]; the default) rather
    /// than each started by `exec` of `supervisor_bin`.
    pub supervisor_zygote: bool,
    /// The delegated cgroup; default: the one this process was started in.
    pub cgroup_root: Option<CgroupPath>,
    /// Instance name: hutch's cgroups go below `ROOT/hutch-INSTANCE`.
    pub instance: String,
    /// Log rotation of containers whose spec says nothing (10 MiB, 5 files by default).
    pub log_defaults: LogLimits,
    /// The container network (CNI plugins and configurations, the node's subnet).
    pub network: NetworkSettings,
    /// Node paths under which bind sources may lie; empty: no bind mounts.
    pub allowed_bind_paths: Vec<PathBuf>,
    /// How images are imported (registries, credentials, limits).
    pub images: crate::rootfs::image::ImageOptions,
}

impl RuntimeConfig {
    /// Defaults for a state directory.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        RuntimeConfig {
            state_dir: state_dir.into(),
            rootfs_dir: None,
            supervisor_bin: None,
            supervisor_zygote: true,
            cgroup_root: None,
            instance: "default".into(),
            log_defaults: LogLimits::default(),
            network: NetworkSettings::default(),
            allowed_bind_paths: Vec::new(),
            images: Default::default(),
        }
    }
}

/// A container as reported by the runtime.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerInfo {
    /// The spec it was started with.
    pub spec: ContainerSpec,
    /// Content key of its rootfs entry.
    pub rootfs_key: String,
    /// Its record.
    pub state: ContainerState,
    /// Live memory figures while running; the final ones after.
    pub memory: Option<MemoryStats>,
    /// Live process-count figures while running; the final ones after.
    pub pids: Option<PidsStats>,
    /// Its cgroup.
    pub cgroup: CgroupPath,
    /// What its health checks said, when its spec has one.
    #[serde(default)]
    pub health: Option<HealthStatus>,
}

/// One usage sample of a container (see [`Runtime::usage`]).
#[derive(Debug, Clone)]
pub struct Usage {
    /// Its record, with live memory and process figures while it runs.
    pub info: ContainerInfo,
    /// CPU time used, in nanoseconds (0 once it ended).
    pub cpu_nanos: u64,
    /// Bytes through its own network namespace; `None` without one (or once ended).
    pub net: Option<NetBytes>,
    /// Storage bytes read and written.
    pub block: BlockBytes,
    /// Its writable layer's directory (`None` with a read-only rootfs), for the caller to
    /// measure as often as it can afford.
    pub layer_dir: Option<PathBuf>,
}

/// The output of an exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Captured stdout.
    pub stdout: Vec<u8>,
    /// Captured stderr.
    pub stderr: Vec<u8>,
    /// Exit code, when the command exited.
    pub exit_code: Option<i32>,
    /// Signal, when a signal killed it.
    pub signal: Option<i32>,
    /// Whether output beyond the limit was dropped.
    pub truncated: bool,
}

/// The container runtime of one host.
pub struct Runtime {
    state_dir: PathBuf,
    containers_dir: PathBuf,
    supervisor_bin: PathBuf,
    /// Forks the supervisors (see [`zygote`]); `None`: each is started by `exec`.
    zygote: Option<zygote::ZygoteClient>,
    store: RootfsStore,
    cgroups: CgroupManager,
    log_defaults: LogLimits,
    network: Arc<NodeNetwork>,
    volumes: VolumeStore,
    binds: BindPolicy,
    exec_counter: AtomicU64,
    /// Starts in flight: a second start of an id waits for the first.
    starts: starting::Starts,
    /// Per container started by this process: turns true once its supervisor has written
    /// the exit record (see [`Runtime::wait_ended`]).
    ended: std::sync::Mutex<std::collections::HashMap<String, tokio::sync::watch::Receiver<bool>>>,
}

impl Runtime {
    /// Opens the runtime: state directories, rootfs store and hutch's cgroup subtree.
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        validate_name("instance name", &config.instance).map_err(RuntimeError::BadId)?;
        let containers_dir = config.state_dir.join("containers");
        std::fs::create_dir_all(&containers_dir).map_err(|e| io_err(&containers_dir, e))?;
        sweep_tombs(&containers_dir);
        let rootfs_dir = config
            .rootfs_dir
            .clone()
            .unwrap_or_else(|| config.state_dir.join("rootfs"));
        let store = RootfsStore::open(rootfs_dir.clone())?
            .protecting(config.state_dir.clone())
            .with_image_options(config.images.clone());
        let volumes = VolumeStore::open(config.state_dir.join("volumes"))?;
        let binds = BindPolicy::new(
            &config.allowed_bind_paths,
            &[config.state_dir.as_path(), rootfs_dir.as_path()],
        )?;
        let cgroups = CgroupManager::init(config.cgroup_root.clone(), &config.instance)?;
        if let Some(missing) = cgroups.memory_missing() {
            tracing::warn!(
                "{missing}: containers that ask for a memory limit will be refused (FAILED_PRECONDITION)"
            );
        }
        let supervisor_bin = match config.supervisor_bin {
            Some(p) => p,
            None => std::env::current_exe()
                .map_err(|e| io_err(Path::new("/proc/self/exe"), e))?
                .with_file_name("hutch-supervisor"),
        };
        if !supervisor_bin.is_file() {
            return Err(io_err(
                &supervisor_bin,
                "hutch-supervisor not found; install it next to hutch-agent or set its path",
            ));
        }
        Ok(Runtime {
            state_dir: config.state_dir.clone(),
            containers_dir,
            zygote: config
                .supervisor_zygote
                .then(|| zygote::ZygoteClient::new(supervisor_bin.clone())),
            supervisor_bin,
            store,
            cgroups,
            log_defaults: config.log_defaults,
            network: Arc::new(NodeNetwork::new(config.network, &config.state_dir)),
            volumes,
            binds,
            exec_counter: AtomicU64::new(0),
            starts: Default::default(),
            ended: Default::default(),
        })
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The rootfs store.
    pub fn store(&self) -> &RootfsStore {
        &self.store
    }

    /// hutch's cgroups.
    pub fn cgroups(&self) -> &CgroupManager {
        &self.cgroups
    }

    /// The node's container network.
    pub fn network(&self) -> &Arc<NodeNetwork> {
        &self.network
    }

    /// Rewrites the `/etc/hosts` of every running bridged container with the cluster's
    /// current name table; returns the containers it could not update, with why.
    pub fn refresh_hosts(&self) -> Vec<(String, std::io::Error)> {
        let names = self.network.names();
        let mut failed = Vec::new();
        for c in self.list() {
            if c.state.status != Status::Running {
                continue;
            }
            let Some(ip) = c.state.network.as_ref().and_then(|n| n.ip) else {
                continue;
            };
            let id = c.state.id.clone();
            let own = [c.spec.hostname.as_str(), id.as_str()];
            let text = hutch_supervisor::network::hosts_file(ip, &own, &names);
            let written = self
                .dir(&id)
                .map_err(|e| std::io::Error::other(e.to_string()))
                .and_then(|dir| hutch_supervisor::network::rewrite_hosts(&dir, &text));
            if let Err(e) = written {
                failed.push((id, e));
            }
        }
        failed
    }

    /// The ports the node's live containers publish, with their ids.
    fn published_ports(&self) -> Vec<(String, PortMapping)> {
        self.list()
            .into_iter()
            .filter(|c| !c.state.status.is_final())
            .flat_map(|c| {
                let id = c.state.id.clone();
                c.spec
                    .network
                    .ports
                    .into_iter()
                    .map(move |p| (id.clone(), p))
            })
            .collect()
    }

    fn dir(&self, id: &str) -> Result<PathBuf, RuntimeError> {
        validate_name("container id", id).map_err(RuntimeError::BadId)?;
        Ok(self.containers_dir.join(id))
    }

    /// The state directory of an existing container.
    pub fn existing_dir(&self, id: &str) -> Result<PathBuf, RuntimeError> {
        let dir = self.dir(id)?;
        if StatePaths::config(&dir).exists() {
            Ok(dir)
        } else {
            Err(RuntimeError::NotFound(id.to_string()))
        }
    }

    /// The rootfs a spec names: a rootfs of the store, or an image reference, imported under
    /// its derived name unless the store has it (and the agent allows imports on the fly).
    async fn rootfs_for(&self, rootfs: &str) -> Result<RootfsInfo, RuntimeError> {
        let info = self.find_or_import(rootfs).await?;
        // overlayfs takes its options in one page: the layers' names must fit.
        let (_, names) = hutch_supervisor::overlay::short_lowers(&info.layers);
        let lowerdir: usize = names.iter().map(|n| n.len() + 1).sum();
        if lowerdir > MAX_LOWERDIR_BYTES {
            return Err(crate::rootfs::RootfsError::Image(
                crate::rootfs::image::ImageError::Unsupported(format!(
                    "rootfs '{}' has {} layers, whose paths take {lowerdir} bytes: more than overlayfs takes in one mount ({MAX_LOWERDIR_BYTES}); flatten the image, or give the agent a shorter --rootfs-dir",
                    info.name,
                    info.layers.len()
                )),
            )
            .into());
        }
        Ok(info)
    }

    async fn find_or_import(&self, rootfs: &str) -> Result<RootfsInfo, RuntimeError> {
        use hutch_core::image_ref::{looks_like_image, ImageRef};
        if !looks_like_image(rootfs) {
            return Ok(self.store.get(rootfs)?);
        }
        let name = ImageRef::rootfs_name(rootfs);
        if let Ok(info) = self.store.get(&name) {
            return Ok(info);
        }
        if !self.store.image_options().allow_pull {
            return Err(crate::rootfs::RootfsError::Image(
                crate::rootfs::image::ImageError::NotAllowed(format!(
                    "this agent imports no image for a container (--no-image-pull): import it first with `hutch rootfs build {name} --image {rootfs}`"
                )),
            )
            .into());
        }
        let source = crate::rootfs::RootfsSource::Image {
            reference: rootfs.to_string(),
            platform: String::new(),
            credentials: String::new(),
        };
        Ok(self.store.build(&name, &source, None).await?.info)
    }

    /// Starts container `id` from `spec`; returns once its command has been exec'd (or with
    /// the step that failed, leaving nothing behind).
    #[tracing::instrument(skip(self, spec), fields(container = %id))]
    pub async fn run(
        &self,
        id: &str,
        mut spec: ContainerSpec,
    ) -> Result<ContainerInfo, RuntimeError> {
        let received_us = unix_micros_now();
        let dir = self.dir(id)?;
        spec.validate()?;
        // A start of the same id in flight ends first: this one then finds it all there
        // (ALREADY_EXISTS), or gone after a failure (and starts afresh).
        let _claim = self.starts.claim(id).await;
        // Refused before anything is fetched or made (CgroupManager::create_container
        // refuses it again).
        if let (Some(_), Some(missing)) = (spec.memory_limit_bytes, self.cgroups.memory_missing()) {
            return Err(missing.into());
        }
        let rootfs = self.rootfs_for(&spec.rootfs).await?;
        spec.apply_image_defaults(rootfs.image_defaults())?;
        spec.validate()?;
        if let Some(name) = spec.security.user_name.clone() {
            let (uid, gid) =
                users::resolve(&rootfs.layers, &name).map_err(RuntimeError::UnknownUser)?;
            spec.security.run_as_user = Some(uid);
            spec.security.run_as_group = Some(gid);
        }
        let taken = if spec.network.ports.is_empty() {
            Vec::new()
        } else {
            self.published_ports()
        };
        let network = self.network.plan(&spec, &taken)?;
        let root_owner = spec.has(Namespace::User).then(|| {
            let outside = |map: Vec<crate::spec::IdMap>| {
                map.iter().find(|m| m.inside == 0).map_or(0, |m| m.outside)
            };
            (
                outside(spec.effective_uid_map()),
                outside(spec.effective_gid_map()),
            )
        });
        // The pins keep the volumes from removal until the record below exists.
        let (mounts, _pins) =
            mount_plan::plan(&spec.mounts, &self.binds, &self.volumes, root_owner)?;
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(RuntimeError::AlreadyExists(id.to_string()))
            }
            Err(e) => return Err(io_err(&dir, e)),
        }
        let mut created = ContainerState::created(id, unix_millis_now());
        created.timeline.agent_received_us = Some(received_us);
        let started = match replace_json(&StatePaths::state(&dir), &created) {
            Ok(()) => self.start(id, &dir, spec, network, mounts, &rootfs).await,
            Err(e) => Err(io_err(&dir, e)),
        };
        if started.is_err() {
            self.discard(id, &dir);
        }
        started
    }

    async fn start(
        &self,
        id: &str,
        dir: &Path,
        spec: ContainerSpec,
        network: Option<NetworkPlan>,
        mounts: Vec<PlannedMount>,
        rootfs: &RootfsInfo,
    ) -> Result<ContainerInfo, RuntimeError> {
        // An explicit pids limit must be enforced; the default one is, where the host can.
        let pids = match spec.security.pids_limit {
            Some(_) => spec.security.effective_pids_limit(),
            None => spec
                .security
                .effective_pids_limit()
                .filter(|_| self.cgroups.has_pids()),
        };
        let cgroup = self.cgroups.create_container(
            id,
            ResourceLimits {
                memory_bytes: spec.memory_limit_bytes,
                memory_and_swap_bytes: spec.memory_swap_limit_bytes,
                pids,
                all_devices: spec.security.privileged,
                cpu: spec.cpu,
            },
        )?;
        let hostname = if spec.hostname.is_empty() {
            id.to_string()
        } else {
            spec.hostname.clone()
        };
        let log_limits = LogLimits {
            max_bytes: spec
                .log
                .max_size_bytes
                .unwrap_or(self.log_defaults.max_bytes),
            max_files: spec.log.max_files.unwrap_or(self.log_defaults.max_files),
        };
        let config = SupervisorConfig {
            id: id.to_string(),
            spec,
            hostname,
            dir: dir.to_path_buf(),
            lower: rootfs.path.clone(),
            lower_below: rootfs.layers.iter().skip(1).cloned().collect(),
            rootfs_key: rootfs.key.clone(),
            cgroup: cgroup.path().clone(),
            supervisors_cgroup: self.cgroups.supervisors(),
            log_limits,
            network,
            mounts,
        };
        replace_json(&StatePaths::config(dir), &config).map_err(|e| io_err(dir, e))?;
        let state = self.spawn_supervisor(id, dir).await?;
        if state.status == Status::Failed {
            let failure = state
                .failure
                .clone()
                .unwrap_or(Failure::new(Step::Start, "failed without a reason"));
            return Err(RuntimeError::StartFailed {
                id: id.to_string(),
                failure,
            });
        }
        tracing::info!(pid = ?state.pid, "container running");
        Ok(self.info_from(config, state))
    }

    /// Starts the container's supervisor and reads its one-line report.
    async fn spawn_supervisor(&self, id: &str, dir: &Path) -> Result<ContainerState, RuntimeError> {
        let sup_err = |message: String| RuntimeError::Supervisor {
            id: id.to_string(),
            message,
        };
        let log_path = StatePaths::supervisor_log(dir);
        let log = std::fs::File::create(&log_path).map_err(|e| io_err(&log_path, e))?;
        let (report, first_stage) = self.launch_supervisor(dir, log).await.map_err(sup_err)?;
        let by_zygote = first_stage.is_none();
        let mut reader = tokio::io::BufReader::new(report);
        let mut line = String::new();
        let read = tokio::time::timeout(START_TIMEOUT, reader.read_line(&mut line)).await;
        if let Some(mut first_stage) = first_stage {
            // The first stage exits as soon as it has forked the real supervisor.
            let _ = first_stage.wait().await;
        }
        let tail = || {
            std::fs::read_to_string(&log_path)
                .unwrap_or_default()
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join(" | ")
        };
        match read {
            Err(_) => {
                // A supervisor stuck in setup must not outlive the cleanup of a failed start.
                let state = self.read_state(dir).ok();
                if let Some(fd) = state.as_ref().and_then(Self::supervisor_pidfd) {
                    let _ = sys::pidfd_send_signal(&fd, libc::SIGKILL);
                }
                // No supervisor began: the zygote took no request (stopped, or stuck on the
                // disk); the next start gets another.
                let began = state.is_some_and(|st| st.supervisor_pid.is_some());
                if let (Some(zygote), true, false) = (&self.zygote, by_zygote, began) {
                    tracing::error!(
                        "the supervisor zygote forked nothing for {START_TIMEOUT:?}; killing it"
                    );
                    zygote.stop_stuck();
                }
                Err(sup_err(format!(
                    "no report within {START_TIMEOUT:?}; it was killed; see {}",
                    log_path.display()
                )))
            }
            Ok(Err(e)) => Err(sup_err(format!("reading its report: {e}"))),
            Ok(Ok(0)) => Err(sup_err(format!("exited without a report: {}", tail()))),
            Ok(Ok(_)) => {
                let state: ContainerState = serde_json::from_str(&line)
                    .map_err(|e| sup_err(format!("unreadable report {line:?}: {e}")))?;
                if state.status == Status::Failed {
                    // It exits right after a failed start: wait for it to be gone.
                    let mut rest = Vec::new();
                    let _ =
                        tokio::time::timeout(START_TIMEOUT, reader.read_to_end(&mut rest)).await;
                } else {
                    // The supervisor closes the pipe once the exit record is written.
                    let (ended, watch) = tokio::sync::watch::channel(false);
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut reader, &mut tokio::io::sink()).await;
                        let _ = ended.send(true);
                    });
                    lock_whole(&self.ended).insert(id.to_string(), watch);
                }
                Ok(state)
            }
        }
    }

    /// Starts the supervisor of the container in `dir`, its diagnostics going to `log`:
    /// forked by the zygote, or, where the zygote cannot take the request, by executing
    /// `hutch-supervisor run DIR` (whose first stage the caller reaps). Returns the pipe its
    /// report comes on.
    async fn launch_supervisor(
        &self,
        dir: &Path,
        log: std::fs::File,
    ) -> Result<(ReportPipe, Option<tokio::process::Child>), String> {
        let log = std::os::fd::OwnedFd::from(log);
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| format!("creating its report pipe: {e}"))?;
        if let Some(zygote) = &self.zygote {
            match zygote.start(dir, &write, &log).await {
                Ok(()) => {
                    // Ours closed, the pipe ends when the supervisor's copy does.
                    drop(write);
                    let report = tokio::net::unix::pipe::Receiver::from_owned_fd(read)
                        .map_err(|e| format!("reading its report pipe: {e}"))?;
                    return Ok((Box::new(report), None));
                }
                Err(e) => tracing::warn!(error = %e, "starting the supervisor by exec instead"),
            }
        }
        let mut child = tokio::process::Command::new(&self.supervisor_bin)
            .arg(hutch_supervisor::zygote::RUN_MODE)
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.supervisor_bin.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout pipe")?;
        Ok((Box::new(stdout), Some(child)))
    }

    /// Removes what a failed start left: network, mounts, cgroup, state directory.
    fn discard(&self, id: &str, dir: &Path) {
        if let Err(e) = disconnect(dir) {
            // ADD went through and the start failed later: DEL should work with the same
            // configuration, so the record it needs is kept and removing the container
            // runs it again.
            let connected = hutch_supervisor::cni::Attachment::load(dir)
                .ok()
                .flatten()
                .is_some_and(|a| a.result.is_some());
            if connected {
                tracing::error!(container = id, error = %e, "network left after a failed start; state kept for the removal to retry DEL");
                return;
            }
            // ADD itself failed: as containerd does for a sandbox that never started, the
            // failed DEL is reported and the rest removed anyway. A configuration that fails
            // ADD usually fails DEL the same way, and keeping the state would keep it
            // forever; the namespace goes with the unmount below.
            tracing::error!(
                container = id,
                error = %e,
                "DEL after a failed ADD failed; anything the CNI plugins made outside the container's namespace may remain"
            );
        }
        let left = unmount_below(dir);
        if !left.is_empty() {
            tracing::error!(
                container = id,
                ?left,
                "mounts left after a failed start; state kept"
            );
            return;
        }
        let cg = ContainerCgroup::open(self.cgroups.container_path(id));
        let _ = cg.kill_all();
        if let Err(e) = cg.remove() {
            tracing::error!(container = id, error = %e, "cgroup left after a failed start");
        }
        if let Err(e) = std::fs::remove_dir_all(dir) {
            tracing::error!(container = id, error = %e, "state directory left after a failed start");
        }
    }

    fn read_config(&self, dir: &Path) -> Result<SupervisorConfig, RuntimeError> {
        read_json(&StatePaths::config(dir)).map_err(|e| io_err(&StatePaths::config(dir), e))
    }

    /// The container's record; one that cannot be parsed (empty after a host crash: it is
    /// written without waiting for the disk) is a container that failed, so that it is
    /// listed, reported and removable rather than hidden.
    fn read_state(&self, dir: &Path) -> Result<ContainerState, RuntimeError> {
        let path = StatePaths::state(dir);
        match read_json(&path) {
            Ok(state) => Ok(state),
            // Empty (or zeros): what a crash leaves of a record written without waiting for
            // the disk. Anything else unparsable is an error, not a guess.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData && blank(&path) => {
                let id = dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let mut state = ContainerState::created(&id, 0);
                state.status = Status::Failed;
                state.failure = Some(Failure::new(
                    Step::State,
                    format!(
                        "its record {} is empty ({e}): what a host crash leaves of it, and \
                         such a crash ended the container; remove it",
                        path.display()
                    ),
                ));
                Ok(state)
            }
            Err(e) => Err(io_err(&path, e)),
        }
    }

    fn info_from(&self, config: SupervisorConfig, state: ContainerState) -> ContainerInfo {
        let (memory, pids) = if state.status == Status::Running {
            let cgroup = ContainerCgroup::open(config.cgroup.clone());
            (Some(cgroup.memory()), cgroup.pids())
        } else {
            (state.final_memory, state.final_pids)
        };
        let health = config
            .spec
            .health
            .as_ref()
            .map(|_| read_json(&config.dir.join(HEALTH_FILE)).unwrap_or_default());
        ContainerInfo {
            spec: config.spec,
            rootfs_key: config.rootfs_key,
            memory,
            pids,
            cgroup: config.cgroup,
            state,
            health,
        }
    }

    /// What container `id` was started with (its cgroup, spec, layer): never changes.
    pub fn config_of(&self, id: &str) -> Result<SupervisorConfig, RuntimeError> {
        self.read_config(&self.existing_dir(id)?)
    }

    /// Container `id`'s state record alone (no cgroup figures read).
    pub fn state_of(&self, id: &str) -> Result<ContainerState, RuntimeError> {
        self.read_state(&self.existing_dir(id)?)
    }

    /// The container's current record.
    pub fn get(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        let dir = self.existing_dir(id)?;
        let config = self.read_config(&dir)?;
        let state = self.read_state(&dir)?;
        Ok(self.info_from(config, state))
    }

    /// A usage sample of container `id`: its record with live memory and process figures,
    /// and, while it runs, CPU time, network and block I/O (zeros once it ended).
    pub fn usage(&self, id: &str) -> Result<Usage, RuntimeError> {
        let dir = self.existing_dir(id)?;
        let config = self.read_config(&dir)?;
        let layer_dir = (!config.spec.read_only_rootfs).then(|| config.layer().upper);
        let info = self.info_from(config, self.read_state(&dir)?);
        let mut usage = Usage {
            cpu_nanos: 0,
            net: None,
            block: BlockBytes::default(),
            layer_dir,
            info,
        };
        if usage.info.state.status != Status::Running {
            return Ok(usage);
        }
        let pids = usage.info.cgroup.procs();
        usage.cpu_nanos = match usage.info.cgroup.version {
            CgroupVersion::V2 => stats::cgroup_v2_cpu_nanos(&usage.info.cgroup.dir()),
            CgroupVersion::V1 => None,
        }
        .unwrap_or_else(|| stats::cpu_nanos_of(&pids));
        usage.block = stats::block_bytes_of(&pids);
        if usage.info.spec.has(Namespace::Net) {
            usage.net = usage.info.state.pid.and_then(stats::net_bytes_of);
        }
        Ok(usage)
    }

    /// Records what the health checks of container `id` said.
    pub fn set_health(&self, id: &str, health: &HealthStatus) -> Result<(), RuntimeError> {
        let dir = self.existing_dir(id)?;
        let path = dir.join(HEALTH_FILE);
        replace_json(&path, health).map_err(|e| io_err(&path, e))
    }

    /// The processes of running container `id`, in pid order.
    pub fn processes(&self, id: &str) -> Result<Vec<ProcessInfo>, RuntimeError> {
        let info = self.get(id)?;
        if info.state.status != Status::Running {
            return Err(RuntimeError::NotRunning {
                id: id.to_string(),
                status: info.state.status,
            });
        }
        Ok(stats::process_table(&info.cgroup.procs()))
    }

    /// Every container on this host, by id.
    pub fn list(&self) -> Vec<ContainerInfo> {
        self.ids()
            .iter()
            .filter_map(|id| self.get(id).ok())
            .collect()
    }

    /// The ids of every container on this host, sorted.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(&self.containers_dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|name| !name.starts_with(TOMB_PREFIX))
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        ids
    }

    /// How many containers are running: a cheaper [`Runtime::list`] for the heartbeat,
    /// reading each container's small state record only.
    pub fn running_count(&self) -> usize {
        self.ids()
            .iter()
            .filter_map(|id| self.read_state(&self.dir(id).ok()?).ok())
            .filter(|state| state.status == Status::Running)
            .count()
    }

    /// Memory charged to this agent's cgroup subtree: its containers and their supervisors.
    pub fn memory_used_bytes(&self) -> u64 {
        ContainerCgroup::open(self.cgroups.instance().clone())
            .memory()
            .usage_bytes
    }

    /// A pidfd of the container's supervisor if it is still the same process.
    fn supervisor_pidfd(state: &ContainerState) -> Option<std::os::fd::OwnedFd> {
        let pid = state.supervisor_pid?;
        let fd = sys::pidfd_open(pid).ok()?;
        (sys::process_start_ticks(pid) == state.supervisor_start_ticks).then_some(fd)
    }

    /// Waits until the container has ended and its supervisor has cleaned up.
    pub async fn wait(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        let dir = self.existing_dir(id)?;
        let state = self.read_state(&dir)?;
        if let Some(fd) = Self::supervisor_pidfd(&state) {
            // Readable once the supervisor has exited, reaped or not: an orphan may stay a
            // zombie for a while, and it is done with the container all the same.
            let fd = sys::async_pidfd(fd)
                .map_err(|e| io_err(&dir, format!("watching the supervisor: {e}")))?;
            let _ = fd.readable().await.map_err(|e| io_err(&dir, e))?;
        }
        let mut state = self.read_state(&dir)?;
        if !state.status.is_final() {
            // The supervisor is gone without an exit record: it was killed.
            state.status = Status::Failed;
            state.failure = Some(Failure::new(
                Step::Supervisor,
                "the supervisor exited without recording how the container ended",
            ));
            state.finished_ms = Some(unix_millis_now());
            replace_json(&StatePaths::state(&dir), &state).map_err(|e| io_err(&dir, e))?;
        }
        let config = self.read_config(&dir)?;
        Ok(self.info_from(config, state))
    }

    /// Waits until the container has ended and its exit record is written, which for a
    /// container this process started is before its supervisor has cleaned up (unmounted,
    /// removed the cgroup) and exited: what reporting the end and following the logs need
    /// (the output is all in the log by then). Otherwise, as [`Runtime::wait`].
    pub async fn wait_ended(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        let ended = lock_whole(&self.ended).get(id).cloned();
        if let Some(mut ended) = ended {
            // An error: the reading task is gone, which it is only once the pipe closed.
            let _ = ended.wait_for(|done| *done).await;
            let dir = self.existing_dir(id)?;
            let state = self.read_state(&dir)?;
            if state.status.is_final() {
                let config = self.read_config(&dir)?;
                return Ok(self.info_from(config, state));
            }
            // The pipe closed without an exit record: the supervisor died.
        }
        self.wait(id).await
    }

    /// Sends `signal` to the container's init.
    pub fn kill(&self, id: &str, signal: i32) -> Result<(), RuntimeError> {
        if !(1..=64).contains(&signal) {
            return Err(RuntimeError::InvalidSignal(signal));
        }
        let dir = self.existing_dir(id)?;
        let state = self.read_state(&dir)?;
        let not_running = || RuntimeError::NotRunning {
            id: id.to_string(),
            status: state.status,
        };
        let pid = match (state.status, state.pid) {
            (Status::Running, Some(pid)) => pid,
            _ => return Err(not_running()),
        };
        let fd = sys::pidfd_open(pid).map_err(|_| not_running())?;
        // The pid is ours only while it is in the container's cgroup.
        let cgroup = self.read_config(&dir)?.cgroup;
        if !cgroup.procs().contains(&pid) {
            return Err(not_running());
        }
        match sys::pidfd_send_signal(&fd, signal) {
            Ok(()) => Ok(()),
            // It exited since the check above (the pidfd is its own: no other process got
            // the signal); its supervisor has not recorded the end yet.
            Err(nix::errno::Errno::ESRCH) => Err(RuntimeError::NotRunning {
                id: id.to_string(),
                status: self.read_state(&dir).map_or(Status::Exited, |s| {
                    match s.status.is_final() {
                        true => s.status,
                        false => Status::Exited,
                    }
                }),
            }),
            Err(e) => Err(io_err(&dir, format!("signal {signal}: {e}"))),
        }
    }

    /// Stops the container: SIGTERM, then SIGKILL after `grace` (default: the spec's).
    pub async fn stop(
        &self,
        id: &str,
        grace: Option<Duration>,
    ) -> Result<ContainerInfo, RuntimeError> {
        let info = self.get(id)?;
        if info.state.status != Status::Running {
            return self.wait(id).await;
        }
        let grace = grace.unwrap_or(Duration::from_secs(u64::from(info.spec.stop_grace_seconds)));
        match self.kill(id, libc::SIGTERM) {
            Ok(()) | Err(RuntimeError::NotRunning { .. }) => {}
            Err(e) => return Err(e),
        }
        if let Ok(done) = tokio::time::timeout(grace, self.wait(id)).await {
            return done;
        }
        tracing::info!(container = id, ?grace, "grace period over; sending SIGKILL");
        match self.kill(id, libc::SIGKILL) {
            Ok(()) | Err(RuntimeError::NotRunning { .. }) => {}
            Err(e) => return Err(e),
        }
        self.wait(id).await
    }

    /// Deletes the container's state, logs and writable layer. A running container is
    /// refused unless `force`, which kills it first.
    pub async fn remove(&self, id: &str, force: bool) -> Result<(), RuntimeError> {
        let dir = self.existing_dir(id)?;
        lock_whole(&self.ended).remove(id);
        let state = self.read_state(&dir)?;
        if state.status == Status::Running || state.status == Status::Created {
            if !force {
                return Err(RuntimeError::StillRunning(id.to_string()));
            }
            let _ = self.kill(id, libc::SIGKILL);
        }
        let info = self.wait(id).await?;
        // The supervisor disconnects on its way out; this covers one that died first.
        let net_dir = dir.clone();
        tokio::task::spawn_blocking(move || disconnect(&net_dir))
            .await
            .map_err(|e| io_err(&dir, e))?
            .map_err(|e| RuntimeError::Network(e.into()))?;
        let left = unmount_below(&dir);
        if !left.is_empty() {
            return Err(io_err(&dir, format!("still mounted: {left:?}")));
        }
        let cg = ContainerCgroup::open(info.cgroup);
        cg.kill_all()?;
        cg.remove()?;
        // Renamed first, so the container vanishes at once and a concurrent writer (a late
        // status report) cannot make the recursive delete fail half-way.
        let n = self.exec_counter.fetch_add(1, Ordering::Relaxed);
        let tomb = self
            .containers_dir
            .join(format!("{TOMB_PREFIX}{id}-{}-{n}", std::process::id()));
        std::fs::rename(&dir, &tomb).map_err(|e| match e.kind() {
            // Another removal of the same container got here first.
            std::io::ErrorKind::NotFound => RuntimeError::NotFound(id.to_string()),
            _ => io_err(&dir, e),
        })?;
        // Gone now; its files are deleted off the answer's path (a dozen unlinks and
        // rmdirs, about a millisecond on a journalled disk). A tomb an agent stopped before
        // deleting is swept at its next start.
        tokio::task::spawn_blocking(move || delete_tomb(&tomb));
        Ok(())
    }

    /// Checks that `id` runs and names a fresh result file for an exec helper.
    fn prepare_exec(&self, id: &str, argv: &[String]) -> Result<(PathBuf, PathBuf), RuntimeError> {
        let dir = self.existing_dir(id)?;
        crate::spec::validate_command(argv).map_err(RuntimeError::InvalidSpec)?;
        let state = self.read_state(&dir)?;
        if state.status != Status::Running {
            return Err(RuntimeError::NotRunning {
                id: id.to_string(),
                status: state.status,
            });
        }
        let exec_dir = StatePaths::exec_dir(&dir);
        std::fs::create_dir_all(&exec_dir).map_err(|e| io_err(&exec_dir, e))?;
        let n = self.exec_counter.fetch_add(1, Ordering::Relaxed);
        let result_file = exec_dir.join(format!(
            "{}-{}-{n}.json",
            std::process::id(),
            unix_millis_now()
        ));
        Ok((dir, result_file))
    }

    /// Starts the exec helper: `hutch-supervisor exec[-tty] DIR RESULT -- ARGV`.
    fn spawn_exec_helper(
        &self,
        id: &str,
        dir: &Path,
        result_file: &Path,
        argv: &[String],
        tty_term: Option<&str>,
        stdio: [Stdio; 3],
    ) -> Result<tokio::process::Child, RuntimeError> {
        let [stdin, stdout, stderr] = stdio;
        let mut command = tokio::process::Command::new(&self.supervisor_bin);
        if let Some(term) = tty_term {
            // The client's terminal type, the command's TERM (the helper checks it).
            command.env(EXEC_TERM_VAR, term);
        }
        command
            .arg(if tty_term.is_some() {
                "exec-tty"
            } else {
                "exec"
            })
            .arg(dir)
            .arg(result_file)
            .arg("--")
            .args(argv)
            .stdin(stdin)
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| RuntimeError::Supervisor {
                id: id.to_string(),
                message: format!("cannot start exec helper: {e}"),
            })
    }

    /// Reads (and deletes) the helper's result file once it has exited.
    fn exec_result(
        &self,
        id: &str,
        dir: &Path,
        result_file: &Path,
        status: std::process::ExitStatus,
        stderr: &[u8],
    ) -> Result<ExecResult, RuntimeError> {
        let result: Result<ExecResult, _> = read_json(result_file);
        let _ = std::fs::remove_file(result_file);
        let result = result.map_err(|e| RuntimeError::Supervisor {
            id: id.to_string(),
            message: format!(
                "exec helper ended ({status}) without a result: {e}; stderr: {}",
                String::from_utf8_lossy(stderr)
            ),
        })?;
        match result.failure {
            Some(failure) if failure.step == Step::State => Err(RuntimeError::NotRunning {
                id: id.to_string(),
                status: self
                    .read_state(dir)
                    .map(|s| s.status)
                    .unwrap_or(Status::Exited),
            }),
            Some(failure) => Err(RuntimeError::ExecFailed {
                id: id.to_string(),
                failure,
            }),
            None => Ok(result),
        }
    }

    /// Runs `argv` inside the running container and returns its output and exit status.
    pub async fn exec(&self, id: &str, argv: Vec<String>) -> Result<ExecOutput, RuntimeError> {
        self.exec_within(id, argv, None).await?.ok_or_else(|| {
            io_err(
                Path::new(id),
                "an exec without a time limit ran out of time",
            )
        })
    }

    /// [`Runtime::exec`] that gives up after `limit` (`Ok(None)`), killing the command (the
    /// helper's child in the container, and its process group) and the helper.
    pub async fn exec_within(
        &self,
        id: &str,
        argv: Vec<String>,
        limit: Option<Duration>,
    ) -> Result<Option<ExecOutput>, RuntimeError> {
        let (dir, result_file) = self.prepare_exec(id, &argv)?;
        let mut child = self.spawn_exec_helper(
            id,
            &dir,
            &result_file,
            &argv,
            None,
            [Stdio::null(), Stdio::piped(), Stdio::piped()],
        )?;
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let ran = async {
            let ((stdout, t1), (stderr, t2)) =
                tokio::join!(read_capped(stdout), read_capped(stderr));
            let status = child.wait().await;
            (stdout, t1, stderr, t2, status)
        };
        let (stdout, t1, stderr, t2, status) = match limit {
            None => ran.await,
            Some(limit) => match tokio::time::timeout(limit, ran).await {
                Ok(done) => done,
                Err(_) => {
                    // The command is the helper's child inside the container: killed first
                    // (with its process group, when it leads one), or it would outlive the
                    // helper there.
                    if let (Some(helper), Ok(info)) = (child.id(), self.get(id)) {
                        kill_children_of(helper, &info.cgroup.procs());
                    }
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    let _ = std::fs::remove_file(&result_file);
                    return Ok(None);
                }
            },
        };
        let status = status.map_err(|e| io_err(&dir, e))?;
        let result = self.exec_result(id, &dir, &result_file, status, &stderr)?;
        Ok(Some(ExecOutput {
            stdout,
            stderr,
            exit_code: result.exit_code,
            signal: result.signal,
            truncated: t1 || t2,
        }))
    }

    /// Starts `argv` inside the running container for an interactive session: on a new
    /// pseudo-terminal of `size` (rows, columns), or on pipes. See [`session::ExecProcess`].
    pub fn exec_session(
        &self,
        id: &str,
        argv: Vec<String>,
        tty: Option<(u16, u16)>,
        term: &str,
    ) -> Result<session::ExecProcess, RuntimeError> {
        let (dir, result_file) = self.prepare_exec(id, &argv)?;
        let where_ = dir.clone();
        let io_error = |e: std::io::Error| io_err(&where_, e);
        match tty {
            Some((rows, cols)) => {
                // The helper opens the terminal from the container's own devpts and sends
                // its master back over its stdin (a socket), as the init does for `run -t`.
                let (ours, theirs) = hutch_supervisor::sys::fd_channel()
                    .map_err(|e| io_error(std::io::Error::from(e)))?;
                let stdio = [Stdio::from(theirs), Stdio::null(), Stdio::null()];
                let child =
                    self.spawn_exec_helper(id, &dir, &result_file, &argv, Some(term), stdio)?;
                let master = session::receive_terminal(&ours).map_err(|message| {
                    RuntimeError::ExecFailed {
                        id: id.to_string(),
                        failure: Failure::new(Step::Terminal, message),
                    }
                })?;
                hutch_supervisor::sys::set_window_size(
                    std::os::fd::AsFd::as_fd(&master),
                    rows,
                    cols,
                )
                .map_err(|e| io_error(std::io::Error::from(e)))?;
                Ok(session::ExecProcess::tty(child, master, dir, result_file).map_err(io_error)?)
            }
            None => {
                let child = self.spawn_exec_helper(
                    id,
                    &dir,
                    &result_file,
                    &argv,
                    None,
                    [Stdio::piped(), Stdio::piped(), Stdio::piped()],
                )?;
                Ok(session::ExecProcess::pipes(child, dir, result_file))
            }
        }
    }

    /// Connects to the attach point of a running container started with `tty`.
    pub async fn attach(&self, id: &str) -> Result<tokio::net::UnixStream, RuntimeError> {
        let dir = self.existing_dir(id)?;
        let state = self.read_state(&dir)?;
        let config: SupervisorConfig =
            read_json(&StatePaths::config(&dir)).map_err(|e| io_err(&dir, e))?;
        if !config.spec.tty {
            return Err(RuntimeError::NotAttachable(id.to_string()));
        }
        if state.status != Status::Running {
            return Err(RuntimeError::NotRunning {
                id: id.to_string(),
                status: state.status,
            });
        }
        let socket = StatePaths::attach(&dir);
        tokio::net::UnixStream::connect(&socket)
            .await
            .map_err(|e| io_err(&socket, e))
    }

    /// Waits for a session's command to end and returns how it ended.
    pub async fn finish_session(
        &self,
        id: &str,
        process: &mut session::ExecProcess,
    ) -> Result<ExecResult, RuntimeError> {
        let status = process
            .child
            .wait()
            .await
            .map_err(|e| io_err(&process.dir, e))?;
        self.exec_result(id, &process.dir, &process.result_file, status, &[])
    }

    /// The container's log, oldest first.
    pub fn logs(&self, id: &str) -> Result<Vec<LogLine>, RuntimeError> {
        let dir = self.existing_dir(id)?;
        let path = StatePaths::log(&dir);
        logs::LogFiles::open(&path)
            .read_all()
            .map_err(|e| io_err(&path, e))
    }

    /// Ids of the containers (in any state) that use rootfs entry `key`.
    pub fn rootfs_users(&self, key: &str) -> Vec<String> {
        self.list()
            .into_iter()
            .filter(|c| c.rootfs_key == key)
            .map(|c| c.state.id)
            .collect()
    }

    /// Removes a named rootfs unless a container uses it.
    pub fn remove_rootfs(&self, name: &str) -> Result<(), RuntimeError> {
        let info = self.store.get(name)?;
        let users = self.rootfs_users(&info.key);
        Ok(self.store.remove(name, &users)?)
    }

    /// The containers (running or ended, not removed) whose spec mounts volume `name`.
    pub fn volume_users(&self, name: &str) -> Vec<String> {
        self.list()
            .into_iter()
            .filter(|c| hutch_core::mounts::volume_names(&c.spec.mounts).any(|v| v == name))
            .map(|c| c.state.id)
            .collect()
    }

    /// The node's named volumes.
    pub fn volumes(&self) -> &VolumeStore {
        &self.volumes
    }

    /// Removes volume `name` unless a container uses it.
    pub fn remove_volume(&self, name: &str) -> Result<(), RuntimeError> {
        let users = self.volume_users(name);
        Ok(self.volumes.remove(name, users)?)
    }

    /// Stops the supervisor zygote (supervisors go on) and removes hutch's cgroup subtree of
    /// this instance if no container is left in it.
    pub fn close(&self) {
        if let Some(zygote) = &self.zygote {
            zygote.stop();
        }
        self.cgroups.remove_if_idle();
    }

    /// The namespace kinds a spec leaves shared with the host.
    pub fn shared_namespaces(spec: &ContainerSpec) -> Vec<Namespace> {
        Namespace::ALL
            .iter()
            .copied()
            .filter(|n| !spec.has(*n))
            .collect()
    }
}

/// SIGKILLs the processes among `pids` whose parent is `parent` (and their process groups).
fn kill_children_of(parent: u32, pids: &[u32]) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stats::parse_proc_stat(&stat).is_some_and(|s| s.ppid == parent) {
            let Ok(raw) = i32::try_from(*pid) else {
                continue;
            };
            let _ = kill(Pid::from_raw(-raw), Signal::SIGKILL);
            let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
        }
    }
}

async fn read_capped<R: tokio::io::AsyncRead + Unpin>(reader: Option<R>) -> (Vec<u8>, bool) {
    let Some(mut r) = reader else {
        return (Vec::new(), false);
    };
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut truncated = false;
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = MAX_EXEC_OUTPUT.saturating_sub(out.len());
                if n > room {
                    truncated = true;
                }
                out.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    (out, truncated)
}

/// Whether the file at `path` holds nothing but zero bytes (or nothing).
fn blank(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|data| data.iter().all(|b| *b == 0))
}

/// A runtime's lock, also after a panic elsewhere: what each guards (the map of
/// ended-signals, the current zygote) is inserted, removed or replaced whole.
fn lock_whole<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where a removed container's directory goes while its files are deleted (a name no
/// container id can have).
const TOMB_PREFIX: &str = ".removing-";

/// Deletes a removed container's directory (see [`Runtime::remove`]).
fn delete_tomb(tomb: &Path) {
    if let Err(e) = std::fs::remove_dir_all(tomb) {
        tracing::warn!(dir = %tomb.display(), "deleting a removed container's files: {e}");
    }
}

/// Deletes the directories of removed containers that an earlier agent process did not
/// finish deleting.
fn sweep_tombs(containers_dir: &Path) {
    let tombs = std::fs::read_dir(containers_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(TOMB_PREFIX));
    for tomb in tombs {
        tracing::info!(dir = %tomb.path().display(), "deleting a removed container's files left by an earlier run");
        delete_tomb(&tomb.path());
    }
}
