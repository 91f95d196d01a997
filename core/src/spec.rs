//! The container spec: what to run, in which rootfs, with which namespaces and limits.
//! Validation is pure (no I/O) so every rule is unit-tested without root; the runtime calls
//! [`ContainerSpec::validate`] before it touches the host.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::cpu::CpuLimits;
use crate::health::{HealthCheck, HealthError};
use crate::mounts::{validate_mounts, Mount, MountError};
use crate::names::{validate_name, NameError};
use crate::network::{NetworkError, NetworkSpec};
use crate::security::{Security, SecurityError};

/// Smallest memory limit hutch accepts. The kernel takes any value and rounds it to a page,
/// but below this the container's own init cannot even be set up (mounts and `exec` are
/// charged to the container), so the spec is refused instead of failing obscurely later.
pub const MIN_MEMORY_LIMIT_BYTES: u64 = 256 * 1024;

/// Default grace period between SIGTERM and SIGKILL on stop.
pub const DEFAULT_STOP_GRACE_SECONDS: u32 = 10;

/// Longest accepted hostname (the kernel's `HOST_NAME_MAX`).
pub const MAX_HOSTNAME_LEN: usize = 64;

/// The smallest writable-layer limit: its filesystem needs some room of its own.
pub const MIN_DISK_LIMIT_BYTES: u64 = 8 << 20;
/// The largest writable-layer limit: the largest file (the layer's image) ext4 holds.
pub const MAX_DISK_LIMIT_BYTES: u64 = 16 << 40;

/// Log rotation of one container, Docker's `--log-opt max-size` and `max-file`: when its
/// log file would pass `max_size_bytes`, it is rotated, and `max_files` files are kept (the
/// current one included). Unset fields take the agent's defaults (10 MiB, 5 files).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogOptions {
    /// Largest size of one log file.
    pub max_size_bytes: Option<u64>,
    /// Log files kept, the current one included.
    pub max_files: Option<u32>,
}

/// The smallest log file size accepted (a few long lines).
pub const MIN_LOG_FILE_BYTES: u64 = 64 << 10;
/// The largest log file size accepted: with [`MAX_LOG_FILES`], at most 100 GiB of log.
pub const MAX_LOG_FILE_BYTES: u64 = 1 << 30;
/// The most log files kept per container.
pub const MAX_LOG_FILES: u32 = 100;

/// Most labels a container may carry.
pub const MAX_LABELS: usize = 64;
/// Longest label key, in bytes (a DNS name's length, as Kubernetes allows with a prefix).
pub const MAX_LABEL_KEY_BYTES: usize = 253;
/// Longest label value, in bytes.
pub const MAX_LABEL_VALUE_BYTES: usize = 1024;
/// Longest working directory, in bytes (`PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;
/// Most names in `cap_add` or `cap_drop`.
pub const MAX_CAPABILITY_NAMES: usize = 64;
/// Most environment variables.
pub const MAX_ENV_VARS: usize = 1024;
/// Most bytes of the command line, all arguments together (the kernel's limit for one
/// argument, `MAX_ARG_STRLEN`), and as much again for the environment.
pub const MAX_COMMAND_BYTES: usize = 128 * 1024;
/// Most bytes of the environment, names and values together.
pub const MAX_ENV_BYTES: usize = 128 * 1024;

/// A Linux namespace a container can have of its own, as selected by `unshare`'s flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Namespace {
    /// `unshare -p`: process ids; the command is PID 1.
    Pid,
    /// `unshare -i`: System V IPC and POSIX message queues.
    Ipc,
    /// `unshare -n`: network stack; only `lo` inside.
    Net,
    /// `unshare -u`: hostname and domain name.
    Uts,
    /// `unshare -m`: mount table; needed for `pivot_root`.
    Mount,
    /// `unshare -U`: user and group ids; root inside is unprivileged outside.
    User,
    /// `unshare -C`: cgroup root; the container sees its own cgroup as `/`.
    Cgroup,
}

impl Namespace {
    /// Every namespace kind, in the order reports list them.
    pub const ALL: [Namespace; 7] = [
        Namespace::Pid,
        Namespace::Ipc,
        Namespace::Net,
        Namespace::Uts,
        Namespace::Mount,
        Namespace::User,
        Namespace::Cgroup,
    ];

    /// The default set: pid, ipc, net, uts and mount, like `unshare -p -i -n -u -m -f`.
    pub const DEFAULT: [Namespace; 5] = [
        Namespace::Pid,
        Namespace::Ipc,
        Namespace::Net,
        Namespace::Uts,
        Namespace::Mount,
    ];

    /// The name of the namespace's file in `/proc/PID/ns/`.
    pub fn proc_name(self) -> &'static str {
        match self {
            Namespace::Pid => "pid",
            Namespace::Ipc => "ipc",
            Namespace::Net => "net",
            Namespace::Uts => "uts",
            Namespace::Mount => "mnt",
            Namespace::User => "user",
            Namespace::Cgroup => "cgroup",
        }
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Namespace::Pid => "pid",
            Namespace::Ipc => "ipc",
            Namespace::Net => "net",
            Namespace::Uts => "uts",
            Namespace::Mount => "mount",
            Namespace::User => "user",
            Namespace::Cgroup => "cgroup",
        };
        f.write_str(s)
    }
}

impl FromStr for Namespace {
    type Err = SpecError;

    /// A namespace by name (`pid`, `net`, `mount`, ...; any case) or by its `unshare` flag
    /// letter, which is case-sensitive as `unshare`'s are: `p i n u m U C` (`u` is uts,
    /// `U` is user).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let by_flag = match s {
            "p" => Some(Namespace::Pid),
            "i" => Some(Namespace::Ipc),
            "n" => Some(Namespace::Net),
            "u" => Some(Namespace::Uts),
            "m" => Some(Namespace::Mount),
            "U" => Some(Namespace::User),
            "C" => Some(Namespace::Cgroup),
            _ => None,
        };
        if let Some(ns) = by_flag {
            return Ok(ns);
        }
        Ok(match s.to_ascii_lowercase().as_str() {
            "pid" => Namespace::Pid,
            "ipc" => Namespace::Ipc,
            "net" | "network" => Namespace::Net,
            "uts" => Namespace::Uts,
            "mount" | "mnt" => Namespace::Mount,
            "user" => Namespace::User,
            "cgroup" => Namespace::Cgroup,
            _ => return Err(SpecError::UnknownNamespace(s.to_string())),
        })
    }
}

/// One line of a uid or gid map: `count` ids from `inside` map to ids from `outside`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    /// First id inside the container.
    pub inside: u32,
    /// First id on the host.
    pub outside: u32,
    /// How many consecutive ids are mapped.
    pub count: u32,
}

impl IdMap {
    /// The default map: root inside is uid/gid 100000 outside, 65536 ids mapped.
    pub const DEFAULT: IdMap = IdMap {
        inside: 0,
        outside: 100_000,
        count: 65_536,
    };
}

/// What to run and how to isolate it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    /// Name of a rootfs in the store.
    pub rootfs: String,
    /// argv; `command[0]` is looked up in the container's `PATH`.
    pub command: Vec<String>,
    /// Environment variables, in addition to a default `PATH` and `HOSTNAME`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory inside the container (absolute); `/` when empty.
    #[serde(default)]
    pub workdir: String,
    /// Hostname; requires the uts namespace. Defaults to the container id when uts is private.
    #[serde(default)]
    pub hostname: String,
    /// Namespaces of its own; the others are shared with the host.
    #[serde(default = "default_namespaces")]
    pub namespaces: Vec<Namespace>,
    /// uid map when the user namespace is private; empty means [`IdMap::DEFAULT`].
    #[serde(default)]
    pub uid_map: Vec<IdMap>,
    /// gid map when the user namespace is private; empty means [`IdMap::DEFAULT`].
    #[serde(default)]
    pub gid_map: Vec<IdMap>,
    /// Memory limit in bytes; `None` means no limit.
    #[serde(default)]
    pub memory_limit_bytes: Option<u64>,
    /// Memory + swap limit in bytes (v1 `memsw`, v2 `swap.max` + limit); needs swap accounting.
    #[serde(default)]
    pub memory_swap_limit_bytes: Option<u64>,
    /// Mount the rootfs read-only instead of giving the container a writable overlay layer.
    #[serde(default)]
    pub read_only_rootfs: bool,
    /// Most bytes the container may write to its writable layer (Docker's
    /// `--storage-opt size`); beyond, writes fail with `ENOSPC`. `None` means no limit.
    #[serde(default)]
    pub disk_limit_bytes: Option<u64>,
    /// How much log it keeps; unset fields take the agent's defaults.
    #[serde(default)]
    pub log: LogOptions,
    /// Seconds between SIGTERM and SIGKILL on stop.
    #[serde(default = "default_grace")]
    pub stop_grace_seconds: u32,
    /// Free-form labels, for selection by clients.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Run the command on a pseudo-terminal that clients can attach to.
    #[serde(default)]
    pub tty: bool,
    /// Keep stdin open for attached clients (needs `tty`).
    #[serde(default)]
    pub stdin: bool,
    /// What its processes may do; the default is hardened.
    #[serde(default)]
    pub security: Security,
    /// How it is connected (mode, published ports).
    #[serde(default)]
    pub network: NetworkSpec,
    /// Its CPU limit and weight.
    #[serde(default)]
    pub cpu: CpuLimits,
    /// Removed as soon as it ends (Docker's `--rm`).
    #[serde(default)]
    pub auto_remove: bool,
    /// Binds, volumes and tmpfs mounted into it.
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// A check its node runs inside it.
    #[serde(default)]
    pub health: Option<HealthCheck>,
    /// Replaces an image's Entrypoint (Docker's `--entrypoint`); `Some(vec![])` clears it.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
}

/// The defaults an image's config gives the containers started from it (the OCI image
/// config's `Entrypoint`, `Cmd`, `Env`, `WorkingDir` and `User`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageDefaults {
    /// Runs first; the command is its arguments.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// The command when the container gives none.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `NAME=VALUE` entries, below the container's own.
    #[serde(default)]
    pub env: Vec<String>,
    /// The working directory when the container gives none.
    #[serde(default)]
    pub working_dir: String,
    /// `UID[:GID]` or `NAME[:GROUP]`, when the container names no user.
    #[serde(default)]
    pub user: String,
}

fn default_namespaces() -> Vec<Namespace> {
    Namespace::DEFAULT.to_vec()
}

fn default_grace() -> u32 {
    DEFAULT_STOP_GRACE_SECONDS
}

/// What a container reaches on the host through namespace `ns` when it shares it.
pub fn shared_namespace_reach(ns: Namespace) -> &'static str {
    match ns {
        Namespace::Pid => "the container sees every process of the host: its root can signal (kill) the host's root processes, and its processes can read /proc/PID/environ and /proc/PID/root (that process's whole filesystem) of host processes of the same user that hold no more capabilities",
        Namespace::Ipc => "the container shares the host's System V IPC and POSIX message queues and can read and write their shared memory",
        Namespace::Net => "the container uses the host's network: it reaches services on the host's loopback and abstract unix sockets, and can listen on the host's ports",
        Namespace::Uts => "the container sees the host's hostname",
        Namespace::Mount => "the rootfs is only a chroot (hutch drops CAP_SYS_CHROOT against the classic escape; with the pid namespace shared too, /proc/PID/root of host processes still leads out), and the container's /proc, /sys and /dev mounts are in the host's mount table",
        Namespace::User => "root in the container is root on the host (the default; a user namespace maps it to an unprivileged uid)",
        Namespace::Cgroup => "the container sees the host's cgroup paths (the default)",
    }
}

/// Checks a label map (a container's labels, a placement's node selector, a node's labels)
/// against [`MAX_LABELS`] and the key and value bounds; the error names `field`.
pub fn validate_labels<'a>(
    field: &str,
    labels: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!(
            "{field}: {} labels, at most {MAX_LABELS} are accepted",
            labels.len()
        ));
    }
    for (k, v) in labels {
        if k.is_empty() || k.len() > MAX_LABEL_KEY_BYTES {
            return Err(format!(
                "{field}: a key of {} bytes; keys are 1 to {MAX_LABEL_KEY_BYTES} bytes",
                k.len()
            ));
        }
        if v.len() > MAX_LABEL_VALUE_BYTES {
            let shown: String = k.chars().take(64).collect();
            return Err(format!(
                "{field}: the value of '{shown}' is {} bytes, at most {MAX_LABEL_VALUE_BYTES} are accepted",
                v.len()
            ));
        }
    }
    Ok(())
}

/// Checks a command line, a container's or an exec's: a program is named, and no argument
/// holds a NUL byte (`execve` could not carry it).
pub fn validate_command(command: &[String]) -> Result<(), SpecError> {
    if command.first().is_none_or(|program| program.is_empty()) {
        return Err(SpecError::EmptyCommand);
    }
    if let Some(arg) = command.iter().find(|a| a.contains('\0')) {
        let shown: String = arg.chars().take(64).collect();
        return Err(SpecError::NulByte(format!("command argument {shown:?}")));
    }
    let bytes: usize = command.iter().map(|a| a.len() + 1).sum();
    if bytes > MAX_COMMAND_BYTES {
        return Err(SpecError::TooLarge(format!(
            "the command line is {bytes} bytes: at most {MAX_COMMAND_BYTES} are accepted"
        )));
    }
    Ok(())
}

/// Why a spec was refused. Each message says what to change.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SpecError {
    /// The rootfs name is not a safe name.
    #[error(transparent)]
    BadRootfsName(#[from] NameError),
    /// `command` is empty.
    #[error("command is empty: give the program to run, e.g. [\"/bin/sh\", \"-c\", \"echo hi\"] (only an image rootfs whose config has an Entrypoint or Cmd gives one)")]
    EmptyCommand,
    /// The rootfs is written as an image reference that does not parse.
    #[error("{0}")]
    BadImage(String),
    /// An argument or environment entry contains a NUL byte.
    #[error("{0} contains a NUL byte")]
    NulByte(String),
    /// A namespace name is not one of pid, ipc, net, uts, mount, user, cgroup.
    #[error(
        "unknown namespace '{0}': choose from pid, ipc, net, uts, mount, user, cgroup (or unshare's letters p, i, n, u, m, U, C)"
    )]
    UnknownNamespace(String),
    /// A namespace is listed twice.
    #[error("namespace '{0}' is listed twice")]
    DuplicateNamespace(Namespace),
    /// A combination of namespaces that cannot work.
    #[error("{0}")]
    NamespaceCombination(String),
    /// The memory limit is 0 or too small to start anything.
    #[error(
        "memory limit of {given} bytes is below the minimum of {MIN_MEMORY_LIMIT_BYTES} bytes (256 KiB): the container could not even start"
    )]
    MemoryLimitTooSmall {
        /// The requested limit.
        given: u64,
    },
    /// Swap limit without or below the memory limit.
    #[error("{0}")]
    BadSwapLimit(String),
    /// A CPU limit or weight out of range.
    #[error("{0}")]
    BadCpu(String),
    /// Hostname invalid.
    #[error("hostname '{0}' is invalid: 1 to 64 characters of letters, digits, '-' and '.'")]
    BadHostname(String),
    /// Working directory not absolute or escaping.
    #[error("workdir '{0}' must be an absolute path without '..'")]
    BadWorkdir(String),
    /// A uid/gid map is malformed.
    #[error("{0}")]
    BadIdMap(String),
    /// `stdin` without `tty`.
    #[error("stdin needs tty: attaching is offered on a terminal only (set tty too)")]
    StdinWithoutTty,
    /// A capability or seccomp setting is unknown.
    #[error(transparent)]
    Security(#[from] SecurityError),
    /// An environment variable name is malformed.
    #[error("environment variable name '{0}' is invalid: it must be non-empty and contain no '='")]
    BadEnvName(String),
    /// Log rotation settings out of range.
    #[error("log: {0}")]
    BadLogOptions(String),
    /// The writable-layer limit is below [`MIN_DISK_LIMIT_BYTES`].
    #[error(
        "disk limit of {given} bytes is below the minimum of {MIN_DISK_LIMIT_BYTES} bytes (8 MiB)"
    )]
    DiskLimitTooSmall {
        /// The requested limit.
        given: u64,
    },
    /// Labels, environment or command beyond their documented bounds.
    #[error("{0}")]
    TooLarge(String),
    /// A network mode or port mapping that cannot work.
    #[error("network: {0}")]
    Network(#[from] NetworkError),
    /// A mount that cannot work.
    #[error("mounts: {0}")]
    Mount(#[from] MountError),
    /// A health check out of bounds.
    #[error(transparent)]
    Health(#[from] HealthError),
}

impl ContainerSpec {
    /// A spec running `command` in `rootfs` with the default namespaces and no limits.
    pub fn new(
        rootfs: impl Into<String>,
        command: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        ContainerSpec {
            rootfs: rootfs.into(),
            command: command.into_iter().map(Into::into).collect(),
            env: BTreeMap::new(),
            workdir: String::new(),
            hostname: String::new(),
            namespaces: default_namespaces(),
            uid_map: Vec::new(),
            gid_map: Vec::new(),
            memory_limit_bytes: None,
            memory_swap_limit_bytes: None,
            read_only_rootfs: false,
            disk_limit_bytes: None,
            log: LogOptions::default(),
            stop_grace_seconds: DEFAULT_STOP_GRACE_SECONDS,
            labels: BTreeMap::new(),
            tty: false,
            stdin: false,
            security: Security::default(),
            network: NetworkSpec::default(),
            cpu: CpuLimits::default(),
            auto_remove: false,
            mounts: Vec::new(),
            health: None,
            entrypoint: None,
        }
    }

    /// Fills what the spec leaves open from its image's config, by Docker's rules: the
    /// argv is the Entrypoint (the spec's override, else the image's) followed by the
    /// spec's command, or by the image's Cmd when the spec gives none and does not
    /// override the Entrypoint; the image's Env lies below the spec's; its WorkingDir and
    /// User apply when the spec sets none. Then checks the argv that results. `image` is
    /// `None` for a rootfs that is no image: the spec must then name its command.
    pub fn apply_image_defaults(&mut self, image: Option<&ImageDefaults>) -> Result<(), SpecError> {
        let none = ImageDefaults::default();
        let image = image.unwrap_or(&none);
        let (entrypoint, default_cmd) = match self.entrypoint.take() {
            Some(e) => (e, Vec::new()),
            None => (image.entrypoint.clone(), image.cmd.clone()),
        };
        let cmd = if self.command.is_empty() {
            default_cmd
        } else {
            std::mem::take(&mut self.command)
        };
        self.command = entrypoint.into_iter().chain(cmd).collect();
        for entry in &image.env {
            if let Some((k, v)) = entry.split_once('=') {
                if !k.is_empty() && !self.env.contains_key(k) {
                    self.env.insert(k.to_string(), v.to_string());
                }
            }
        }
        if self.workdir.is_empty() {
            self.workdir = image.working_dir.clone();
        }
        let sec = &mut self.security;
        if !image.user.is_empty() && sec.run_as_user.is_none() && sec.user_name.is_none() {
            let numeric = |s: &str| s.parse::<u32>().ok();
            match image.user.split_once(':') {
                None => match numeric(&image.user) {
                    Some(uid) => sec.run_as_user = Some(uid),
                    None => sec.user_name = Some(image.user.clone()),
                },
                Some((u, g)) => match (numeric(u), numeric(g)) {
                    (Some(uid), Some(gid)) => {
                        sec.run_as_user = Some(uid);
                        sec.run_as_group = Some(gid);
                    }
                    _ => sec.user_name = Some(image.user.clone()),
                },
            }
        }
        validate_command(&self.command)
    }

    /// Whether the container gets namespace `ns` of its own.
    pub fn has(&self, ns: Namespace) -> bool {
        self.namespaces.contains(&ns)
    }

    /// The security settings in force: the spec's, less `CAP_SYS_CHROOT` when the container
    /// shares the host's mount namespace. Its rootfs is then only a chroot, and with that
    /// capability a process leaves it (chroot into a subdirectory, climb out with `..`,
    /// chroot to what it reached). Kept when the spec names it (or `ALL`) in `cap_add`,
    /// and for a privileged container, which has the host anyway.
    pub fn effective_security(&self) -> Security {
        let mut security = self.security.clone();
        let asked = security.cap_add.iter().any(|c| {
            matches!(
                crate::security::parse_capability(c),
                Ok(None | Some("CAP_SYS_CHROOT"))
            )
        });
        if !self.has(Namespace::Mount) && !security.privileged && !asked {
            security.cap_drop.push("SYS_CHROOT".into());
        }
        security
    }

    /// What the container reaches on its host through each default namespace it shares with
    /// the host, one sentence per namespace left out: the API's `warnings` and the CLI's
    /// lines on stderr (SECURITY.md has the same table).
    pub fn host_exposure(&self) -> Vec<String> {
        Namespace::DEFAULT
            .into_iter()
            .filter(|ns| !self.has(*ns))
            .map(|ns| format!("no {ns} namespace: {}", shared_namespace_reach(ns)))
            .collect()
    }

    /// The uid map to write, defaults applied.
    pub fn effective_uid_map(&self) -> Vec<IdMap> {
        if self.uid_map.is_empty() {
            vec![IdMap::DEFAULT]
        } else {
            self.uid_map.clone()
        }
    }

    /// The gid map to write, defaults applied.
    pub fn effective_gid_map(&self) -> Vec<IdMap> {
        if self.gid_map.is_empty() {
            vec![IdMap::DEFAULT]
        } else {
            self.gid_map.clone()
        }
    }

    /// Checks labels and environment against their bounds ([`MAX_LABELS`] and the other
    /// `MAX_*` constants), so that no record can grow without limit.
    fn validate_sizes(&self) -> Result<(), SpecError> {
        let too_large = |m: String| Err(SpecError::TooLarge(m));
        validate_labels("labels", self.labels.iter()).map_err(SpecError::TooLarge)?;
        if self.workdir.len() > MAX_PATH_BYTES {
            return too_large(format!(
                "workdir of {} bytes: at most {MAX_PATH_BYTES} are accepted",
                self.workdir.len()
            ));
        }
        for (field, caps) in [
            ("cap_add", &self.security.cap_add),
            ("cap_drop", &self.security.cap_drop),
        ] {
            if caps.len() > MAX_CAPABILITY_NAMES {
                return too_large(format!(
                    "{field} names {} capabilities: at most {MAX_CAPABILITY_NAMES} are accepted",
                    caps.len()
                ));
            }
        }
        if self.env.len() > MAX_ENV_VARS {
            return too_large(format!(
                "{} environment variables: at most {MAX_ENV_VARS} are accepted",
                self.env.len()
            ));
        }
        let env_bytes: usize = self.env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
        if env_bytes > MAX_ENV_BYTES {
            return too_large(format!(
                "the environment is {env_bytes} bytes: at most {MAX_ENV_BYTES} are accepted (pass large data in a file or a volume)"
            ));
        }
        Ok(())
    }

    /// Checks every rule that does not need the host. Errors name the field and the fix.
    pub fn validate(&self) -> Result<(), SpecError> {
        if crate::image_ref::looks_like_image(&self.rootfs) {
            crate::image_ref::ImageRef::parse(&self.rootfs)
                .map_err(|e| SpecError::BadImage(e.to_string()))?;
        } else {
            validate_name("rootfs name", &self.rootfs)?;
        }
        // Empty: an image rootfs may give it; the node checks the argv it resolves.
        if !self.command.is_empty() {
            validate_command(&self.command)?;
        }
        if let Some(entrypoint) = &self.entrypoint {
            if let Some(arg) = entrypoint.iter().find(|a| a.contains('\0')) {
                let shown: String = arg.chars().take(64).collect();
                return Err(SpecError::NulByte(format!("entrypoint argument {shown:?}")));
            }
        }
        if self.stdin && !self.tty {
            return Err(SpecError::StdinWithoutTty);
        }
        self.security.validate()?;
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') {
                return Err(SpecError::BadEnvName(k.clone()));
            }
            if k.contains('\0') || v.contains('\0') {
                return Err(SpecError::NulByte(format!("environment variable {k}")));
            }
        }
        self.validate_sizes()?;
        self.network.validate(self.has(Namespace::Net))?;
        self.cpu
            .validate()
            .map_err(|e| SpecError::BadCpu(e.to_string()))?;
        validate_mounts(&self.mounts)?;
        if let Some(h) = &self.health {
            h.validate()?;
        }
        if !self.mounts.is_empty() && !self.has(Namespace::Mount) {
            return Err(SpecError::NamespaceCombination(
                "mounts need the mount namespace: without it they would land in the node's own mount table; add 'mount'".into(),
            ));
        }
        let mut seen = Vec::new();
        for ns in &self.namespaces {
            if seen.contains(ns) {
                return Err(SpecError::DuplicateNamespace(*ns));
            }
            seen.push(*ns);
        }
        if self.has(Namespace::User) && !self.has(Namespace::Mount) {
            return Err(SpecError::NamespaceCombination(
                "the user namespace needs the mount namespace too: an unprivileged root cannot mount /proc in the host's mount table; add 'mount'".into(),
            ));
        }
        if !self.hostname.is_empty() {
            if !self.has(Namespace::Uts) {
                return Err(SpecError::NamespaceCombination(format!(
                    "hostname '{}' needs the uts namespace: without it the host's own hostname would change; add 'uts'",
                    self.hostname
                )));
            }
            let ok = self.hostname.len() <= MAX_HOSTNAME_LEN
                && self
                    .hostname
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
            if !ok {
                return Err(SpecError::BadHostname(self.hostname.clone()));
            }
        }
        if !self.workdir.is_empty()
            && (!self.workdir.starts_with('/')
                || self.workdir.split('/').any(|c| c == "..")
                || self.workdir.contains('\0'))
        {
            return Err(SpecError::BadWorkdir(self.workdir.clone()));
        }
        if let Some(limit) = self.memory_limit_bytes {
            if limit < MIN_MEMORY_LIMIT_BYTES {
                return Err(SpecError::MemoryLimitTooSmall { given: limit });
            }
        }
        if let Some(size) = self.log.max_size_bytes {
            if !(MIN_LOG_FILE_BYTES..=MAX_LOG_FILE_BYTES).contains(&size) {
                return Err(SpecError::BadLogOptions(format!(
                    "max_size_bytes: {size} is not between {MIN_LOG_FILE_BYTES} (64 KiB) and {MAX_LOG_FILE_BYTES} (1 GiB)"
                )));
            }
        }
        if let Some(files) = self.log.max_files {
            if !(1..=MAX_LOG_FILES).contains(&files) {
                return Err(SpecError::BadLogOptions(format!(
                    "max_files: {files} is not between 1 and {MAX_LOG_FILES}"
                )));
            }
        }
        if let Some(disk) = self.disk_limit_bytes {
            if disk < MIN_DISK_LIMIT_BYTES {
                return Err(SpecError::DiskLimitTooSmall { given: disk });
            }
            if disk > MAX_DISK_LIMIT_BYTES {
                return Err(SpecError::TooLarge(format!(
                    "disk_limit_bytes: {disk} bytes is more than {MAX_DISK_LIMIT_BYTES} (16 TiB), the largest image ext4 holds"
                )));
            }
            if self.read_only_rootfs {
                return Err(SpecError::NamespaceCombination(
                    "disk_limit_bytes limits the writable layer, which a read-only rootfs does not have: drop one of the two".into(),
                ));
            }
        }
        if let Some(swap) = self.memory_swap_limit_bytes {
            match self.memory_limit_bytes {
                None => {
                    return Err(SpecError::BadSwapLimit(
                        "memory_swap_limit_bytes needs memory_limit_bytes too".into(),
                    ))
                }
                Some(limit) if swap < limit => {
                    return Err(SpecError::BadSwapLimit(format!(
                        "memory_swap_limit_bytes ({swap}) is memory + swap and must be at least memory_limit_bytes ({limit})"
                    )))
                }
                _ => {}
            }
        }
        if self.has(Namespace::User) {
            validate_id_map("uid_map", &self.effective_uid_map())?;
            validate_id_map("gid_map", &self.effective_gid_map())?;
        } else if !self.uid_map.is_empty() || !self.gid_map.is_empty() {
            return Err(SpecError::BadIdMap(
                "uid_map/gid_map are set but the user namespace is not selected; add 'user'".into(),
            ));
        }
        Ok(())
    }
}

/// The kernel accepts at most this many lines in a uid or gid map.
const MAX_ID_MAP_LINES: usize = 340;

fn validate_id_map(field: &str, map: &[IdMap]) -> Result<(), SpecError> {
    if map.len() > MAX_ID_MAP_LINES {
        return Err(SpecError::BadIdMap(format!(
            "{field} has {} lines; the kernel accepts at most {MAX_ID_MAP_LINES}",
            map.len()
        )));
    }
    let mut inside_ranges: Vec<(u64, u64)> = Vec::new();
    for m in map {
        if m.count == 0 {
            return Err(SpecError::BadIdMap(format!("{field}: a line maps 0 ids")));
        }
        let inside_end = u64::from(m.inside) + u64::from(m.count);
        let outside_end = u64::from(m.outside) + u64::from(m.count);
        if inside_end > u64::from(u32::MAX) || outside_end > u64::from(u32::MAX) {
            return Err(SpecError::BadIdMap(format!(
                "{field}: {} ids from {}/{} run past the largest id",
                m.count, m.inside, m.outside
            )));
        }
        let range = (u64::from(m.inside), inside_end);
        if inside_ranges.iter().any(|r| range.0 < r.1 && r.0 < range.1) {
            return Err(SpecError::BadIdMap(format!(
                "{field}: inside ranges overlap"
            )));
        }
        inside_ranges.push(range);
    }
    Ok(())
}

/// Parses a comma-separated namespace list such as `pid,ipc,net`.
pub fn parse_namespaces(list: &str) -> Result<Vec<Namespace>, SpecError> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(Namespace::from_str)
        .collect()
}

pub use crate::units::parse_size;

/// The disk limit a `--storage-opt` value asks for, in Docker's spelling: `size=SIZE`, the
/// one storage option hutch knows (`size=1G`).
pub fn parse_storage_opt(opt: &str) -> Result<u64, String> {
    match opt.split_once('=') {
        Some(("size", size)) => parse_size(size).map_err(|e| format!("--storage-opt {opt}: {e}")),
        _ => Err(format!(
            "--storage-opt {opt}: the one storage option is size=SIZE (e.g. size=1G)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_spec() -> ContainerSpec {
        ContainerSpec::new("debian", ["/bin/true"])
    }

    #[test]
    fn default_spec_is_valid_and_has_default_namespaces() {
        let s = ok_spec();
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(s.namespaces, Namespace::DEFAULT.to_vec());
    }

    #[test]
    fn refuses_bad_rootfs_names() {
        for name in ["../x", "a/b", "", ".."] {
            let mut s = ok_spec();
            s.rootfs = name.into();
            assert!(
                matches!(s.validate(), Err(SpecError::BadRootfsName(_))),
                "{name}"
            );
        }
    }

    #[test]
    fn refuses_empty_command() {
        let mut s = ok_spec();
        s.command = vec![String::new()];
        assert_eq!(s.validate(), Err(SpecError::EmptyCommand));
        // Left empty, an image may give it; without one the node refuses it.
        s.command.clear();
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(s.apply_image_defaults(None), Err(SpecError::EmptyCommand));
    }

    fn image() -> ImageDefaults {
        ImageDefaults {
            entrypoint: vec!["/entry".into(), "-x".into()],
            cmd: vec!["serve".into()],
            env: vec!["PATH=/img/bin".into(), "A=image".into(), "junk".into()],
            working_dir: "/srv".into(),
            user: "1000:1001".into(),
        }
    }

    #[test]
    fn image_defaults_follow_dockers_rules() {
        let mut s = ok_spec();
        s.command.clear();
        s.env.insert("A".into(), "mine".into());
        s.apply_image_defaults(Some(&image())).expect("defaults");
        assert_eq!(s.command, ["/entry", "-x", "serve"]);
        assert_eq!(s.env.get("A").map(String::as_str), Some("mine"));
        assert_eq!(s.env.get("PATH").map(String::as_str), Some("/img/bin"));
        assert_eq!(s.workdir, "/srv");
        assert_eq!(
            (s.security.run_as_user, s.security.run_as_group),
            (Some(1000), Some(1001))
        );
        // A command replaces Cmd, not the Entrypoint.
        let mut s = ok_spec();
        s.command = vec!["other".into()];
        s.apply_image_defaults(Some(&image())).expect("defaults");
        assert_eq!(s.command, ["/entry", "-x", "other"]);
        // An Entrypoint override drops the image's Cmd too.
        let mut s = ok_spec();
        s.command.clear();
        s.entrypoint = Some(vec!["/bin/sh".into()]);
        s.apply_image_defaults(Some(&image())).expect("defaults");
        assert_eq!(s.command, ["/bin/sh"]);
        // Cleared Entrypoint, no command: nothing to run.
        let mut s = ok_spec();
        s.command.clear();
        s.entrypoint = Some(vec![]);
        assert_eq!(
            s.apply_image_defaults(Some(&image())),
            Err(SpecError::EmptyCommand)
        );
        // A named user, and the spec's own user wins.
        let mut s = ok_spec();
        let named = ImageDefaults {
            user: "www-data".into(),
            ..image()
        };
        s.apply_image_defaults(Some(&named)).expect("defaults");
        assert_eq!(s.security.user_name.as_deref(), Some("www-data"));
        let mut s = ok_spec();
        s.security.run_as_user = Some(7);
        s.apply_image_defaults(Some(&image())).expect("defaults");
        assert_eq!(
            (s.security.run_as_user, s.security.run_as_group),
            (Some(7), None)
        );
    }

    #[test]
    fn an_image_reference_may_be_the_rootfs() {
        let mut s = ok_spec();
        s.rootfs = "docker://127.0.0.1:5000/busybox:latest".into();
        assert_eq!(s.validate(), Ok(()));
        s.rootfs = "docker://busybox".into();
        assert!(matches!(s.validate(), Err(SpecError::BadImage(m)) if m.contains("registry")));
    }

    #[test]
    fn memory_limits() {
        let mut s = ok_spec();
        s.memory_limit_bytes = Some(0);
        assert_eq!(
            s.validate(),
            Err(SpecError::MemoryLimitTooSmall { given: 0 })
        );
        s.memory_limit_bytes = Some(4096);
        assert!(s.validate().is_err());
        s.memory_limit_bytes = Some(1_000_000);
        assert_eq!(s.validate(), Ok(()));
        s.memory_swap_limit_bytes = Some(999_999);
        assert!(matches!(s.validate(), Err(SpecError::BadSwapLimit(_))));
        s.memory_swap_limit_bytes = Some(2_000_000);
        assert_eq!(s.validate(), Ok(()));
        s.memory_limit_bytes = None;
        assert!(matches!(s.validate(), Err(SpecError::BadSwapLimit(_))));
    }

    #[test]
    fn namespace_rules() {
        let mut s = ok_spec();
        s.namespaces = vec![Namespace::Pid, Namespace::Pid];
        assert_eq!(
            s.validate(),
            Err(SpecError::DuplicateNamespace(Namespace::Pid))
        );
        s.namespaces = vec![Namespace::User];
        assert!(matches!(
            s.validate(),
            Err(SpecError::NamespaceCombination(_))
        ));
        s.namespaces = vec![Namespace::Pid];
        s.hostname = "box".into();
        assert!(matches!(
            s.validate(),
            Err(SpecError::NamespaceCombination(_))
        ));
        s.namespaces = vec![Namespace::Uts];
        assert_eq!(s.validate(), Ok(()));
        s.hostname = "bad host".into();
        assert!(matches!(s.validate(), Err(SpecError::BadHostname(_))));
    }

    #[test]
    fn unshare_letters_are_case_sensitive() {
        assert_eq!(
            parse_namespaces("U,p,m,C,u,i,n"),
            Ok(vec![
                Namespace::User,
                Namespace::Pid,
                Namespace::Mount,
                Namespace::Cgroup,
                Namespace::Uts,
                Namespace::Ipc,
                Namespace::Net,
            ])
        );
        assert_eq!("USER".parse::<Namespace>(), Ok(Namespace::User));
        assert_eq!("Uts".parse::<Namespace>(), Ok(Namespace::Uts));
        assert!("P".parse::<Namespace>().is_err());
        assert!("c".parse::<Namespace>().is_err());
    }

    #[test]
    fn parses_namespace_lists() {
        assert_eq!(
            parse_namespaces("pid, ipc,net,uts,mount,user,cgroup"),
            Ok(Namespace::ALL.to_vec())
        );
        assert_eq!(
            parse_namespaces("pid,time"),
            Err(SpecError::UnknownNamespace("time".into()))
        );
    }

    #[test]
    fn unknown_namespace_in_json_is_refused() {
        let json = r#"{"rootfs":"debian","command":["/bin/true"],"namespaces":["pid","time"]}"#;
        assert!(serde_json::from_str::<ContainerSpec>(json).is_err());
    }

    #[test]
    fn id_maps() {
        let mut s = ok_spec();
        s.namespaces.push(Namespace::User);
        assert_eq!(s.validate(), Ok(()));
        s.uid_map = vec![IdMap {
            inside: 0,
            outside: 1000,
            count: 0,
        }];
        assert!(matches!(s.validate(), Err(SpecError::BadIdMap(_))));
        s.uid_map = vec![
            IdMap {
                inside: 0,
                outside: 1000,
                count: 10,
            },
            IdMap {
                inside: 5,
                outside: 5000,
                count: 10,
            },
        ];
        assert!(matches!(s.validate(), Err(SpecError::BadIdMap(_))));
        s.uid_map = vec![IdMap {
            inside: 0,
            outside: u32::MAX - 1,
            count: 10,
        }];
        assert!(matches!(s.validate(), Err(SpecError::BadIdMap(_))));
        s.namespaces.retain(|n| *n != Namespace::User);
        s.uid_map = vec![IdMap::DEFAULT];
        assert!(matches!(s.validate(), Err(SpecError::BadIdMap(_))));
    }

    #[test]
    fn workdir_and_env() {
        let mut s = ok_spec();
        s.workdir = "tmp".into();
        assert!(matches!(s.validate(), Err(SpecError::BadWorkdir(_))));
        s.workdir = "/tmp/../etc".into();
        assert!(matches!(s.validate(), Err(SpecError::BadWorkdir(_))));
        s.workdir = "/tmp".into();
        assert_eq!(s.validate(), Ok(()));
        s.env.insert("A=B".into(), "x".into());
        assert!(matches!(s.validate(), Err(SpecError::BadEnvName(_))));
    }

    #[test]
    fn sharing_the_mount_namespace_drops_sys_chroot_unless_asked() {
        let mut s = ContainerSpec::new("debian", ["true"]);
        let kept = |s: &ContainerSpec| {
            s.effective_security()
                .capability_names()
                .expect("caps")
                .contains("CAP_SYS_CHROOT")
        };
        assert!(kept(&s));
        assert!(s.host_exposure().is_empty());
        s.namespaces = vec![Namespace::Pid];
        assert!(!kept(&s));
        let warned: Vec<String> = s.host_exposure();
        assert_eq!(warned.len(), 4, "{warned:?}");
        assert!(warned.iter().any(|w| w.starts_with("no net namespace")));
        assert!(warned.iter().all(|w| !w.starts_with("no pid")));
        s.security.cap_add = vec!["sys_chroot".into()];
        assert!(kept(&s));
        s.security.cap_add = vec![];
        s.security.privileged = true;
        assert!(kept(&s));
    }

    #[test]
    fn labels_env_and_command_are_bounded() {
        let too_large = |s: &ContainerSpec| matches!(s.validate(), Err(SpecError::TooLarge(_)));
        let mut s = ContainerSpec::new("debian", ["true"]);
        s.labels
            .insert("k".into(), "v".repeat(MAX_LABEL_VALUE_BYTES));
        assert_eq!(s.validate(), Ok(()));
        s.labels
            .insert("k".into(), "v".repeat(MAX_LABEL_VALUE_BYTES + 1));
        assert!(too_large(&s));
        s.labels = (0..=MAX_LABELS)
            .map(|i| (format!("k{i}"), "v".into()))
            .collect();
        assert!(too_large(&s));
        s.labels = [("k".repeat(MAX_LABEL_KEY_BYTES + 1), String::new())].into();
        assert!(too_large(&s));
        s.labels.clear();
        s.env = [("BIG".to_string(), "x".repeat(MAX_ENV_BYTES))].into();
        assert!(too_large(&s));
        s.env = (0..=MAX_ENV_VARS)
            .map(|i| (format!("V{i}"), String::new()))
            .collect();
        assert!(too_large(&s));
        s.env.clear();
        s.command = vec!["echo".into(), "x".repeat(MAX_COMMAND_BYTES)];
        assert!(too_large(&s));
    }

    #[test]
    fn a_command_needs_a_program_and_no_nul() {
        let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(validate_command(&argv(&[])), Err(SpecError::EmptyCommand));
        assert_eq!(
            validate_command(&argv(&["", "x"])),
            Err(SpecError::EmptyCommand)
        );
        assert!(matches!(
            validate_command(&argv(&["sh", "a\0b"])),
            Err(SpecError::NulByte(_))
        ));
        assert_eq!(validate_command(&argv(&["sh", "-c", "true"])), Ok(()));
    }
}
