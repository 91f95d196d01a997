//! Building a container request: what to run ([`ContainerSpec`]), where
//! (placement, through the builder's `node`/`selector`) and what to do when it ends
//! ([`RestartPolicy`]).
//!
//! ```
//! use hutch::{ContainerSpec, Namespace, RestartPolicy};
//! let spec = ContainerSpec::new("debian")
//!     .command(["/bin/sh", "-c", "echo hello"])
//!     .memory("64M")
//!     .namespaces([Namespace::Pid, Namespace::Ipc, Namespace::Net, Namespace::Uts, Namespace::Mount])
//!     .restart(RestartPolicy::OnFailure { max_retries: 3 });
//! assert_eq!(spec.to_request().unwrap().spec.unwrap().memory_limit_bytes, Some(64 << 20));
//! ```

use std::collections::HashMap;

use hutch_core::units::parse_size;
use hutch_proto::v1;

use crate::error::{Error, Result};

pub use hutch_core::spec::{parse_namespaces, Namespace};

/// What the controller does when the container ends or its node is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartPolicy {
    /// Never start it again.
    #[default]
    Never,
    /// After a failure (non-zero exit, signal, OOM, failed start, lost node); 0 means no limit.
    OnFailure {
        /// Restarts at most this often; 0 means no limit.
        max_retries: u32,
    },
    /// After any end except an explicit stop or kill.
    Always,
}

impl RestartPolicy {
    /// The wire's value.
    pub fn to_proto(self) -> v1::RestartPolicy {
        use v1::restart_policy::Kind;
        let (kind, max_retries) = match self {
            RestartPolicy::Never => (Kind::Never, 0),
            RestartPolicy::OnFailure { max_retries } => (Kind::OnFailure, max_retries),
            RestartPolicy::Always => (Kind::Always, 0),
        };
        v1::RestartPolicy {
            kind: kind as i32,
            max_retries,
        }
    }
}

impl std::str::FromStr for RestartPolicy {
    type Err = Error;
    /// `never`, `always`, `on-failure` or `on-failure:N`.
    fn from_str(s: &str) -> Result<Self> {
        match s.split_once(':') {
            None if s == "never" || s == "no" => Ok(RestartPolicy::Never),
            None if s == "always" => Ok(RestartPolicy::Always),
            None if s == "on-failure" => Ok(RestartPolicy::OnFailure { max_retries: 0 }),
            Some(("on-failure", n)) => n
                .parse()
                .map(|max_retries| RestartPolicy::OnFailure { max_retries })
                .map_err(|_| {
                    Error::InvalidInput(format!(
                        "restart policy '{s}': N in on-failure:N must be a number"
                    ))
                }),
            _ => Err(Error::InvalidInput(format!(
                "unknown restart policy '{s}': use never, on-failure, on-failure:N or always"
            ))),
        }
    }
}

/// A container to create: the rootfs and command, isolation, limits, placement and restart
/// policy. Setters take and return the builder; a value that does not parse (a size) is
/// reported when the request is built.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    name: String,
    spec: v1::ContainerSpec,
    placement: v1::Placement,
    restart: RestartPolicy,
    problems: Vec<String>,
}

impl ContainerSpec {
    /// A container on the rootfs named `rootfs` (see `hutch rootfs ls`).
    pub fn new(rootfs: impl Into<String>) -> Self {
        ContainerSpec {
            name: String::new(),
            spec: v1::ContainerSpec {
                rootfs: rootfs.into(),
                ..Default::default()
            },
            placement: v1::Placement::default(),
            restart: RestartPolicy::Never,
            problems: Vec::new(),
        }
    }

    /// The container's name (unique in the cluster); generated when not set.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The command and its arguments; `command[0]` is looked up in the container's PATH.
    pub fn command<S: Into<String>>(mut self, argv: impl IntoIterator<Item = S>) -> Self {
        self.spec.command = argv.into_iter().map(Into::into).collect();
        self
    }

    /// Replaces the image's Entrypoint (Docker's `--entrypoint`); an empty argv clears it.
    /// The command then follows it, and the image's Cmd is not used.
    pub fn entrypoint<S: Into<String>>(mut self, argv: impl IntoIterator<Item = S>) -> Self {
        self.spec.entrypoint = Some(v1::Entrypoint {
            args: argv.into_iter().map(Into::into).collect(),
        });
        self
    }

    /// A memory limit in human units: `1000000`, `64M`, `512MiB`, `1G`.
    pub fn memory(mut self, size: &str) -> Self {
        match parse_size(size) {
            Ok(b) => self.spec.memory_limit_bytes = Some(b),
            Err(e) => self.problems.push(format!("memory: {e}")),
        }
        self
    }

    /// A memory limit in bytes.
    pub fn memory_bytes(mut self, bytes: u64) -> Self {
        self.spec.memory_limit_bytes = Some(bytes);
        self
    }

    /// A CPU limit in CPUs, as Docker's `--cpus` (`"1.5"`, `"0.5"`): at most that much CPU
    /// time, and the scheduler reserves it on the node.
    pub fn cpus(mut self, cores: &str) -> Self {
        match hutch_core::cpu::parse_cores(cores) {
            Ok(millicores) => {
                self.spec.cpu.get_or_insert_with(Default::default).cores =
                    millicores.map_or(0.0, hutch_core::cpu::cores_of);
            }
            Err(e) => self.problems.push(format!("cpus: {e}")),
        }
        self
    }

    /// The CPU weight under contention, as Docker's `--cpu-shares` (2 to 262144; 1024 is a
    /// container's default; 0 means the default).
    pub fn cpu_shares(mut self, shares: u32) -> Self {
        if shares == 0 {
            return self;
        }
        let limits = hutch_core::cpu::CpuLimits {
            millicores: None,
            shares: Some(shares),
        };
        match limits.validate() {
            Ok(()) => self.spec.cpu.get_or_insert_with(Default::default).shares = shares,
            Err(e) => self.problems.push(format!("cpu-shares: {e}")),
        }
        self
    }

    /// The namespaces of its own (default: pid, ipc, net, uts, mount).
    pub fn namespaces(mut self, namespaces: impl IntoIterator<Item = Namespace>) -> Self {
        self.spec.namespaces = namespaces
            .into_iter()
            .map(|n| hutch_core::convert::namespace_to(n) as i32)
            .collect();
        self
    }

    /// An environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.spec.env.insert(key.into(), value.into());
        self
    }

    /// The hostname (default: the container's name).
    pub fn hostname(mut self, hostname: impl Into<String>) -> Self {
        self.spec.hostname = hostname.into();
        self
    }

    /// The working directory inside (absolute).
    pub fn workdir(mut self, dir: impl Into<String>) -> Self {
        self.spec.workdir = dir.into();
        self
    }

    /// A limit on what the container may write to its writable layer, in human units
    /// (`100M`, `2G`; at least 8 MiB): Docker's `--storage-opt size`.
    pub fn disk_limit(mut self, size: &str) -> Self {
        match parse_size(size) {
            Ok(b) => self.spec.disk_limit_bytes = Some(b),
            Err(e) => self.problems.push(format!("disk limit: {e}")),
        }
        self
    }

    /// Log rotation, Docker's `--log-opt max-size`: the largest log file, in human units
    /// (`10M`; at least 64 KiB). Unset: the agent's default.
    pub fn log_max_size(mut self, size: &str) -> Self {
        match parse_size(size) {
            Ok(b) => {
                self.spec
                    .log
                    .get_or_insert_with(Default::default)
                    .max_size_bytes = Some(b)
            }
            Err(e) => self.problems.push(format!("log max size: {e}")),
        }
        self
    }

    /// Log rotation, Docker's `--log-opt max-file`: log files kept, the current one
    /// included (1 to 100). Unset: the agent's default.
    pub fn log_max_files(mut self, files: u32) -> Self {
        self.spec.log.get_or_insert_with(Default::default).max_files = Some(files);
        self
    }

    /// How it is connected: `bridge` (an address on the node's bridge, reachable from every
    /// node), `none` (only `lo`), `host` (the host's network; no network namespace).
    pub fn network(mut self, mode: hutch_core::network::NetworkMode) -> Self {
        use hutch_proto::v1::network_spec::Mode;
        let mode = match mode {
            hutch_core::network::NetworkMode::Auto => Mode::Unspecified,
            hutch_core::network::NetworkMode::Bridge => Mode::Bridge,
            hutch_core::network::NetworkMode::None => Mode::None,
            hutch_core::network::NetworkMode::Host => Mode::Host,
        };
        self.spec.network.get_or_insert_with(Default::default).mode = mode as i32;
        self
    }

    /// A health check its node runs inside it (Docker's `--health-cmd` and friends); zero
    /// fields take Docker's defaults (30 s, 30 s, 3 retries, no start period).
    pub fn health(mut self, check: hutch_proto::v1::HealthCheck) -> Self {
        self.spec.health = Some(check);
        self
    }

    /// Mounts `SOURCE:TARGET[:ro]`, as Docker's `-v`: an absolute SOURCE binds that path of
    /// the node (its agent must allow it), any other SOURCE names a volume of the node (made
    /// on first use; the container then runs where the volume is).
    pub fn volume(self, text: &str) -> Self {
        self.add_mount("volume", hutch_core::mounts::parse_volume_flag(text))
    }

    /// Mounts as Docker's `--mount type=bind|volume|tmpfs,source=...,target=...[,readonly]`.
    pub fn mount(self, text: &str) -> Self {
        self.add_mount("mount", hutch_core::mounts::parse_mount_flag(text))
    }

    /// Mounts a fresh tmpfs, as Docker's `--tmpfs TARGET[:size=64m,mode=1777,noexec]`.
    pub fn tmpfs(self, text: &str) -> Self {
        self.add_mount("tmpfs", hutch_core::mounts::parse_tmpfs_flag(text))
    }

    fn add_mount(
        mut self,
        what: &str,
        parsed: Result<hutch_core::mounts::Mount, hutch_core::mounts::MountError>,
    ) -> Self {
        match parsed {
            Ok(m) => self.spec.mounts.push(hutch_core::convert::mount_to(&m)),
            Err(e) => self.problems.push(format!("{what}: {e}")),
        }
        self
    }

    /// Publishes a port, Docker's `-p [IP:]HOSTPORT:CTRPORT[/tcp|udp]` (bridge mode).
    pub fn publish(mut self, mapping: &str) -> Self {
        match hutch_core::network::parse_publish(mapping) {
            Ok(p) => self
                .spec
                .network
                .get_or_insert_with(Default::default)
                .ports
                .push(hutch_core::convert::port_to(&p)),
            Err(e) => self.problems.push(format!("publish: {e}")),
        }
        self
    }

    /// A limit on what the container may write to its writable layer, in bytes.
    pub fn disk_limit_bytes(mut self, bytes: u64) -> Self {
        self.spec.disk_limit_bytes = Some(bytes);
        self
    }

    /// Remove it as soon as it ends (Docker's `--rm`), done by the controller whether or
    /// not this program still runs. Not with a restart policy.
    pub fn auto_remove(mut self) -> Self {
        self.spec.auto_remove = true;
        self
    }

    /// Mount the rootfs read-only (no writable layer).
    pub fn read_only(mut self) -> Self {
        self.spec.read_only_rootfs = true;
        self
    }

    /// Adds a capability to the default set (`NET_ADMIN` or `CAP_NET_ADMIN`; `ALL`).
    pub fn cap_add(mut self, capability: impl Into<String>) -> Self {
        self.security().cap_add.push(capability.into());
        self
    }

    /// Removes a capability from the default set (`ALL` for every one).
    pub fn cap_drop(mut self, capability: impl Into<String>) -> Self {
        self.security().cap_drop.push(capability.into());
        self
    }

    /// Runs without the default seccomp filter.
    pub fn seccomp_unconfined(mut self) -> Self {
        self.security().seccomp = "unconfined".into();
        self
    }

    /// Uses a seccomp profile (Docker's JSON format: `defaultAction`, `syscalls` of
    /// `names`/`action`/`errnoRet`) instead of the default filter.
    pub fn seccomp_profile(mut self, profile_json: impl Into<String>) -> Self {
        self.security().seccomp_profile = profile_json.into();
        self
    }

    /// Runs the command (and execs) as `uid` and `gid` (default: the same number) instead
    /// of root; no capabilities stay in effect.
    pub fn user(mut self, uid: u32, gid: Option<u32>) -> Self {
        self.security().run_as_user = Some(uid);
        self.security().run_as_group = gid;
        self
    }

    /// Runs as a user of the rootfs by name (`NAME` or `NAME:GROUP`, Docker's `-u www-data`),
    /// looked up in its /etc/passwd by the node.
    pub fn user_name(mut self, name: &str) -> Self {
        self.security().user_name = name.to_string();
        self
    }

    /// At most `limit` processes and threads (default 1024; 0 for no limit).
    pub fn pids_limit(mut self, limit: u32) -> Self {
        self.security().pids_limit = Some(limit);
        self
    }

    /// Every capability, no seccomp filter, nothing masked (Docker's `--privileged`), for
    /// containers that manage the host.
    pub fn privileged(mut self) -> Self {
        self.security().privileged = true;
        self
    }

    fn security(&mut self) -> &mut v1::Security {
        self.spec.security.get_or_insert_with(Default::default)
    }

    /// A label, for filtering with `list`.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.spec.labels.insert(key.into(), value.into());
        self
    }

    /// Seconds between SIGTERM and SIGKILL when stopped.
    pub fn stop_grace(mut self, seconds: u32) -> Self {
        self.spec.stop_grace_seconds = Some(seconds);
        self
    }

    /// Run the command on a pseudo-terminal that clients can attach to (`hutch run -t`).
    pub fn tty(mut self) -> Self {
        self.spec.tty = true;
        self
    }

    /// Keep stdin open for attached clients (needs [`ContainerSpec::tty`]; `hutch run -i`).
    pub fn stdin(mut self) -> Self {
        self.spec.stdin = true;
        self
    }

    /// Run on exactly this node.
    pub fn node(mut self, node: impl Into<String>) -> Self {
        self.placement.node = node.into();
        self
    }

    /// Run only on nodes carrying this label.
    pub fn selector(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.placement
            .node_selector
            .insert(key.into(), value.into());
        self
    }

    /// What to do when it ends.
    pub fn restart(mut self, policy: RestartPolicy) -> Self {
        self.restart = policy;
        self
    }

    /// The first problem found while building the spec, if any.
    pub fn problem(&self) -> Option<&str> {
        self.problems.first().map(String::as_str)
    }

    /// The wire's request, or the first problem found while building it.
    pub fn to_request(&self) -> Result<v1::CreateContainerRequest> {
        if let Some(p) = self.problems.first() {
            return Err(Error::InvalidInput(p.clone()));
        }
        Ok(v1::CreateContainerRequest {
            name: self.name.clone(),
            spec: Some(self.spec.clone()),
            placement: Some(self.placement.clone()),
            restart_policy: Some(self.restart.to_proto()),
        })
    }
}

/// Parses `KEY=VALUE` pairs (labels, environment, selectors).
pub fn parse_pairs(what: &str, pairs: &[String]) -> Result<HashMap<String, String>> {
    pairs
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| Error::InvalidInput(format!("{what} '{p}': expected KEY=VALUE")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus_as_docker_spells_them() {
        let spec = ContainerSpec::new("debian")
            .command(["true"])
            .cpus("1.5")
            .cpu_shares(512)
            .to_request()
            .expect("valid")
            .spec
            .expect("spec");
        let cpu = spec.cpu.expect("cpu");
        assert_eq!((cpu.cores, cpu.shares), (1.5, 512));
        for bad in ["x", "-1", "0.001", "2000"] {
            let err = ContainerSpec::new("debian")
                .command(["true"])
                .cpus(bad)
                .to_request()
                .expect_err(bad);
            assert!(err.to_string().contains("cpus"), "{bad}: {err}");
        }
        assert!(ContainerSpec::new("debian")
            .command(["true"])
            .cpu_shares(1)
            .to_request()
            .is_err());
    }

    #[test]
    fn builder_fills_the_request() {
        let r = ContainerSpec::new("debian")
            .name("web")
            .command(["sleep", "1"])
            .memory("1M")
            .namespaces([Namespace::Pid])
            .env("A", "1")
            .selector("zone", "a")
            .restart(RestartPolicy::Always)
            .to_request()
            .expect("request");
        let spec = r.spec.expect("spec");
        assert_eq!(r.name, "web");
        assert_eq!(spec.memory_limit_bytes, Some(1 << 20));
        assert_eq!(spec.namespaces, vec![v1::Namespace::Pid as i32]);
        assert_eq!(r.placement.expect("placement").node_selector["zone"], "a");
        assert_eq!(
            r.restart_policy.expect("policy").kind,
            v1::restart_policy::Kind::Always as i32
        );
    }

    #[test]
    fn bad_values_are_reported_when_building() {
        let err = ContainerSpec::new("debian")
            .memory("lots")
            .to_request()
            .expect_err("bad size");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.to_string().starts_with("memory:"), "{err}");
        assert!("nope".parse::<Namespace>().is_err());
        assert_eq!(
            "on-failure:3".parse::<RestartPolicy>().expect("policy"),
            RestartPolicy::OnFailure { max_retries: 3 }
        );
        assert!("sometimes".parse::<RestartPolicy>().is_err());
        assert!(parse_pairs("label", &["novalue".into()]).is_err());
    }
}
