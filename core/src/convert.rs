//! Conversions between the wire types of `hutch.v1` and hutch's own domain types, shared by
//! both daemons and the SDK. Input is checked here as far as the wire goes: every unknown
//! enum value or missing field is a [`FieldError`] naming the field (an `InvalidArgument` at
//! a service's edge); the domain rules are [`ContainerSpec::validate`]'s.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hutch_proto::v1;
use thiserror::Error;

use crate::cpu::CpuLimits;
use crate::health::{HealthCheck, HealthState, HealthStatus};
use crate::mounts::{Mount, MountKind};
use crate::network::{
    host_ip, port_number, NetworkError, NetworkMode, NetworkSpec, NetworkStatus, PortMapping,
    MAX_PUBLISHED_PORTS,
};
use crate::rootfs_source::RootfsSource;
use crate::security::{Seccomp, Security, SecurityError};
use crate::spec::{ContainerSpec, IdMap, Namespace, DEFAULT_STOP_GRACE_SECONDS};

/// A field of a request that cannot be read: which one, and what to change.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The field's path in the request, e.g. `spec.namespaces[1]`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl FieldError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl std::fmt::Display) -> Self {
        FieldError {
            field: field.into(),
            message: message.to_string(),
        }
    }
}

impl From<FieldError> for tonic::Status {
    fn from(e: FieldError) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

/// A protobuf timestamp from milliseconds since the epoch.
pub fn timestamp_ms(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

/// A protobuf timestamp from microseconds since the epoch.
pub fn timestamp_us(us: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (us / 1_000_000) as i64,
        nanos: ((us % 1_000_000) * 1_000) as i32,
    }
}

/// A protobuf timestamp from a system time.
pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// The last second of year 9999, the latest time RFC 3339 (and so every log line) can say.
const LATEST_SECONDS: u64 = 253_402_300_799;

/// A system time from a protobuf timestamp: negative times clamp to the epoch, times past
/// year 9999 to its end (a client's timestamp can be anything).
pub fn system_time(t: &prost_types::Timestamp) -> SystemTime {
    let secs = u64::try_from(t.seconds).unwrap_or(0).min(LATEST_SECONDS);
    let nanos = u32::try_from(t.nanos).unwrap_or(0).min(999_999_999);
    UNIX_EPOCH + Duration::new(secs, nanos)
}

pub fn namespace_from(value: i32, index: usize) -> Result<Namespace, FieldError> {
    Ok(match v1::Namespace::try_from(value) {
        Ok(v1::Namespace::Pid) => Namespace::Pid,
        Ok(v1::Namespace::Ipc) => Namespace::Ipc,
        Ok(v1::Namespace::Net) => Namespace::Net,
        Ok(v1::Namespace::Uts) => Namespace::Uts,
        Ok(v1::Namespace::Mount) => Namespace::Mount,
        Ok(v1::Namespace::User) => Namespace::User,
        Ok(v1::Namespace::Cgroup) => Namespace::Cgroup,
        _ => {
            return Err(FieldError::new(
                format!("spec.namespaces[{index}]"),
                format!("unknown namespace {value}: use NAMESPACE_PID, _IPC, _NET, _UTS, _MOUNT, _USER or _CGROUP"),
            ))
        }
    })
}

pub fn namespace_to(ns: Namespace) -> v1::Namespace {
    match ns {
        Namespace::Pid => v1::Namespace::Pid,
        Namespace::Ipc => v1::Namespace::Ipc,
        Namespace::Net => v1::Namespace::Net,
        Namespace::Uts => v1::Namespace::Uts,
        Namespace::Mount => v1::Namespace::Mount,
        Namespace::User => v1::Namespace::User,
        Namespace::Cgroup => v1::Namespace::Cgroup,
    }
}

fn id_map_from(m: &v1::IdMap) -> IdMap {
    IdMap {
        inside: m.inside,
        outside: m.outside,
        count: m.count,
    }
}

fn id_map_to(m: &IdMap) -> v1::IdMap {
    v1::IdMap {
        inside: m.inside,
        outside: m.outside,
        count: m.count,
    }
}

/// The runtime's spec from the wire's (not yet validated beyond the enum values).
pub fn spec_from(p: v1::ContainerSpec) -> Result<ContainerSpec, FieldError> {
    let network = network_from(p.network.unwrap_or_default())?;
    let namespaces = if p.namespaces.is_empty() {
        // The default set; `host` mode means "without a network namespace" (Docker's
        // --network host), so it leaves net out rather than contradict it.
        Namespace::DEFAULT
            .into_iter()
            .filter(|ns| !(network.mode == NetworkMode::Host && *ns == Namespace::Net))
            .collect()
    } else {
        p.namespaces
            .iter()
            .enumerate()
            .map(|(i, v)| namespace_from(*v, i))
            .collect::<Result<_, _>>()?
    };
    Ok(ContainerSpec {
        rootfs: p.rootfs,
        command: p.command,
        env: p.env.into_iter().collect(),
        workdir: p.workdir,
        hostname: p.hostname,
        namespaces,
        uid_map: p.uid_map.iter().map(id_map_from).collect(),
        gid_map: p.gid_map.iter().map(id_map_from).collect(),
        memory_limit_bytes: p.memory_limit_bytes,
        memory_swap_limit_bytes: p.memory_swap_limit_bytes,
        read_only_rootfs: p.read_only_rootfs,
        disk_limit_bytes: p.disk_limit_bytes,
        log: p
            .log
            .map(|l| crate::spec::LogOptions {
                max_size_bytes: l.max_size_bytes,
                max_files: l.max_files,
            })
            .unwrap_or_default(),
        stop_grace_seconds: p.stop_grace_seconds.unwrap_or(DEFAULT_STOP_GRACE_SECONDS),
        labels: p.labels.into_iter().collect(),
        tty: p.tty,
        stdin: p.stdin,
        security: security_from(p.security.unwrap_or_default())?,
        network,
        cpu: cpu_from(p.cpu.unwrap_or_default())?,
        auto_remove: p.auto_remove,
        mounts: p
            .mounts
            .into_iter()
            .enumerate()
            .map(|(i, m)| mount_from(m, i))
            .collect::<Result<_, _>>()?,
        entrypoint: p.entrypoint.map(|e| e.args),
        health: p.health.map(|h| HealthCheck {
            command: h.command,
            interval_ms: h.interval_ms,
            timeout_ms: h.timeout_ms,
            retries: h.retries,
            start_period_ms: h.start_period_ms,
        }),
    })
}

/// The runtime's CPU settings from the wire's (`cores` as a decimal, 0 for none).
fn cpu_from(p: v1::CpuSpec) -> Result<CpuLimits, FieldError> {
    let millicores = crate::cpu::millicores_from_cores(p.cores)
        .map_err(|e| FieldError::new("cpu.cores", e.to_string()))?;
    Ok(CpuLimits {
        millicores,
        shares: (p.shares != 0).then_some(p.shares),
    })
}

/// The wire's CPU settings, unset when there are none.
fn cpu_to(c: &CpuLimits) -> Option<v1::CpuSpec> {
    (!c.is_empty()).then(|| v1::CpuSpec {
        cores: c.millicores.map_or(0.0, crate::cpu::cores_of),
        shares: c.shares.unwrap_or(0),
    })
}

fn mode_from(value: i32, field: &str) -> Result<NetworkMode, FieldError> {
    use v1::network_spec::Mode;
    Ok(match Mode::try_from(value) {
        Ok(Mode::Unspecified) => NetworkMode::Auto,
        Ok(Mode::Bridge) => NetworkMode::Bridge,
        Ok(Mode::None) => NetworkMode::None,
        Ok(Mode::Host) => NetworkMode::Host,
        Err(_) => {
            return Err(FieldError::new(
                field,
                format!("unknown network mode {value}: use MODE_BRIDGE, MODE_NONE or MODE_HOST"),
            ))
        }
    })
}

fn mode_to(mode: NetworkMode) -> v1::network_spec::Mode {
    use v1::network_spec::Mode;
    match mode {
        NetworkMode::Auto => Mode::Unspecified,
        NetworkMode::Bridge => Mode::Bridge,
        NetworkMode::None => Mode::None,
        NetworkMode::Host => Mode::Host,
    }
}

/// A port mapping from the wire; `field` names it in errors.
pub fn port_from(p: &v1::PortMapping, field: &str) -> Result<PortMapping, FieldError> {
    let bad = |sub: &str, e: NetworkError| FieldError::new(format!("{field}.{sub}"), e);
    Ok(PortMapping {
        host_port: port_number("host port", u64::from(p.host_port))
            .map_err(|e| bad("host_port", e))?,
        container_port: port_number("container port", u64::from(p.container_port))
            .map_err(|e| bad("container_port", e))?,
        protocol: p.protocol.parse().map_err(|e| bad("protocol", e))?,
        host_ip: host_ip(&p.host_ip).map_err(|e| bad("host_ip", e))?,
    })
}

/// A port mapping for the wire.
pub fn port_to(p: &PortMapping) -> v1::PortMapping {
    v1::PortMapping {
        host_port: u32::from(p.host_port),
        container_port: u32::from(p.container_port),
        protocol: p.protocol.as_str().into(),
        host_ip: p.host_ip.map(|ip| ip.to_string()).unwrap_or_default(),
    }
}

fn network_from(p: v1::NetworkSpec) -> Result<NetworkSpec, FieldError> {
    if p.ports.len() > MAX_PUBLISHED_PORTS {
        return Err(FieldError::new(
            "spec.network.ports",
            format!(
                "{} ports: at most {MAX_PUBLISHED_PORTS} are accepted",
                p.ports.len()
            ),
        ));
    }
    Ok(NetworkSpec {
        mode: mode_from(p.mode, "spec.network.mode")?,
        ports: p
            .ports
            .iter()
            .enumerate()
            .map(|(i, port)| port_from(port, &format!("spec.network.ports[{i}]")))
            .collect::<Result<_, _>>()?,
    })
}

fn network_to(n: &NetworkSpec) -> Option<v1::NetworkSpec> {
    (!n.is_default()).then(|| v1::NetworkSpec {
        mode: mode_to(n.mode) as i32,
        ports: n.ports.iter().map(port_to).collect(),
    })
}

/// A container's network status for the wire.
pub fn network_status_to(n: &NetworkStatus) -> v1::NetworkStatus {
    let text = |ip: Option<std::net::Ipv4Addr>| ip.map(|i| i.to_string()).unwrap_or_default();
    v1::NetworkStatus {
        mode: mode_to(n.mode) as i32,
        network: n.network.clone(),
        ip: text(n.ip),
        gateway: text(n.gateway),
        subnet: n.subnet.map(|s| s.to_string()).unwrap_or_default(),
        ports: n.ports.iter().map(port_to).collect(),
    }
}

fn security_from(p: v1::Security) -> Result<Security, FieldError> {
    Ok(Security {
        seccomp: p
            .seccomp
            .parse()
            .map_err(|e: SecurityError| FieldError::new("spec.security.seccomp", e))?,
        cap_add: p.cap_add,
        cap_drop: p.cap_drop,
        seccomp_profile: Some(p.seccomp_profile).filter(|t| !t.is_empty()),
        pids_limit: p.pids_limit,
        privileged: p.privileged,
        run_as_user: p.run_as_user,
        run_as_group: p.run_as_group,
        user_name: Some(p.user_name).filter(|u| !u.is_empty()),
    })
}

fn security_to(s: &Security) -> v1::Security {
    v1::Security {
        cap_add: s.cap_add.clone(),
        cap_drop: s.cap_drop.clone(),
        seccomp: match s.seccomp {
            Seccomp::Default => String::new(),
            Seccomp::Unconfined => "unconfined".into(),
        },
        seccomp_profile: s.seccomp_profile.clone().unwrap_or_default(),
        pids_limit: s.pids_limit,
        privileged: s.privileged,
        run_as_user: s.run_as_user,
        run_as_group: s.run_as_group,
        user_name: s.user_name.clone().unwrap_or_default(),
    }
}

/// The wire's spec from the runtime's.
pub fn spec_to(s: &ContainerSpec) -> v1::ContainerSpec {
    v1::ContainerSpec {
        rootfs: s.rootfs.clone(),
        command: s.command.clone(),
        env: s.env.clone().into_iter().collect(),
        workdir: s.workdir.clone(),
        hostname: s.hostname.clone(),
        namespaces: s
            .namespaces
            .iter()
            .map(|n| namespace_to(*n) as i32)
            .collect(),
        memory_limit_bytes: s.memory_limit_bytes,
        memory_swap_limit_bytes: s.memory_swap_limit_bytes,
        read_only_rootfs: s.read_only_rootfs,
        disk_limit_bytes: s.disk_limit_bytes,
        log: (s.log != crate::spec::LogOptions::default()).then_some(v1::LogOptions {
            max_size_bytes: s.log.max_size_bytes,
            max_files: s.log.max_files,
        }),
        labels: s.labels.clone().into_iter().collect(),
        uid_map: s.uid_map.iter().map(id_map_to).collect(),
        gid_map: s.gid_map.iter().map(id_map_to).collect(),
        stop_grace_seconds: Some(s.stop_grace_seconds),
        tty: s.tty,
        stdin: s.stdin,
        security: (s.security != Security::default()).then(|| security_to(&s.security)),
        network: network_to(&s.network),
        cpu: cpu_to(&s.cpu),
        auto_remove: s.auto_remove,
        mounts: s.mounts.iter().map(mount_to).collect(),
        entrypoint: s
            .entrypoint
            .as_ref()
            .map(|args| v1::Entrypoint { args: args.clone() }),
        health: s.health.as_ref().map(|h| v1::HealthCheck {
            command: h.command.clone(),
            interval_ms: h.interval_ms,
            timeout_ms: h.timeout_ms,
            retries: h.retries,
            start_period_ms: h.start_period_ms,
        }),
    }
}

/// A container's health for the wire.
pub fn health_status_to(h: &HealthStatus) -> v1::HealthStatus {
    v1::HealthStatus {
        state: match h.state {
            HealthState::Starting => v1::HealthState::Starting,
            HealthState::Healthy => v1::HealthState::Healthy,
            HealthState::Unhealthy => v1::HealthState::Unhealthy,
        } as i32,
        failing_streak: h.failing_streak,
        last_output: h.last_output.clone(),
        last_exit_code: h.last_exit_code,
        last_check: (h.last_check_ms > 0).then(|| timestamp_ms(h.last_check_ms)),
    }
}

/// A mount from the wire's; the type must be given.
pub fn mount_from(m: v1::Mount, index: usize) -> Result<Mount, FieldError> {
    let kind = match v1::mount::Type::try_from(m.r#type) {
        Ok(v1::mount::Type::Bind) => MountKind::Bind,
        Ok(v1::mount::Type::Volume) => MountKind::Volume,
        Ok(v1::mount::Type::Tmpfs) => MountKind::Tmpfs,
        _ => {
            return Err(FieldError::new(
                format!("mounts[{index}].type"),
                format!("{} is not TYPE_BIND, TYPE_VOLUME or TYPE_TMPFS", m.r#type),
            ))
        }
    };
    Ok(Mount {
        kind,
        source: m.source,
        target: m.target,
        read_only: m.read_only,
        options: m.options,
    })
}

/// The wire's form of a mount.
pub fn mount_to(m: &Mount) -> v1::Mount {
    let kind = match m.kind {
        MountKind::Bind => v1::mount::Type::Bind,
        MountKind::Volume => v1::mount::Type::Volume,
        MountKind::Tmpfs => v1::mount::Type::Tmpfs,
    };
    v1::Mount {
        r#type: kind as i32,
        source: m.source.clone(),
        target: m.target.clone(),
        read_only: m.read_only,
        options: m.options.clone(),
    }
}

/// The rootfs name and source of a build request.
pub fn rootfs_from(p: Option<v1::RootfsSpec>) -> Result<(String, RootfsSource), FieldError> {
    use v1::rootfs_spec::Source;
    let p = p.ok_or_else(|| FieldError::new("rootfs", "missing: give a name and one source"))?;
    let source = match p.source {
        Some(Source::Debootstrap(d)) => RootfsSource::Debootstrap {
            suite: d.suite,
            variant: d.variant,
            include: d.include,
            arch: d.arch,
            mirror: d.mirror,
        },
        Some(Source::Tarball(path)) => RootfsSource::Tarball { path: path.into() },
        Some(Source::Directory(path)) => RootfsSource::Directory { path: path.into() },
        Some(Source::Initramfs(path)) => RootfsSource::Initramfs { path: path.into() },
        Some(Source::Image(i)) => RootfsSource::Image {
            reference: i.reference,
            platform: i.platform,
            credentials: i.credentials,
        },
        None => {
            return Err(FieldError::new(
                "rootfs.source",
                "missing: set one of debootstrap, tarball, directory, initramfs, image",
            ))
        }
    };
    Ok((p.name, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_namespaces_mean_the_default_set() {
        let s = spec_from(v1::ContainerSpec {
            rootfs: "debian".into(),
            command: vec!["true".into()],
            ..Default::default()
        })
        .expect("spec");
        assert_eq!(s.namespaces, Namespace::DEFAULT.to_vec());
        assert_eq!(s.stop_grace_seconds, DEFAULT_STOP_GRACE_SECONDS);
        assert_eq!(spec_from(spec_to(&s)).expect("round trip"), s);
    }

    #[test]
    fn unknown_namespace_names_the_field() {
        let e = spec_from(v1::ContainerSpec {
            namespaces: vec![1, 0],
            ..Default::default()
        })
        .expect_err("unspecified namespace");
        assert_eq!(e.field, "spec.namespaces[1]");
        assert_eq!(tonic::Status::from(e).code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn host_mode_leaves_net_out_of_the_default_set() {
        let wire = v1::ContainerSpec {
            rootfs: "debian".into(),
            command: vec!["true".into()],
            network: Some(v1::NetworkSpec {
                mode: v1::network_spec::Mode::Host as i32,
                ports: vec![],
            }),
            ..Default::default()
        };
        let s = spec_from(wire).expect("spec");
        assert!(!s.has(Namespace::Net));
        assert!(s.validate().is_ok());
        let e = spec_from(v1::ContainerSpec {
            network: Some(v1::NetworkSpec {
                mode: 0,
                ports: vec![v1::PortMapping {
                    host_port: 70000,
                    container_port: 80,
                    ..Default::default()
                }],
            }),
            ..Default::default()
        })
        .expect_err("port");
        assert_eq!(e.field, "spec.network.ports[0].host_port");
    }

    #[test]
    fn timestamps() {
        let t = timestamp_ms(1_500);
        assert_eq!((t.seconds, t.nanos), (1, 500_000_000));
        assert_eq!(system_time(&t), UNIX_EPOCH + Duration::from_millis(1_500));
        let far = prost_types::Timestamp {
            seconds: i64::MAX,
            nanos: i32::MAX,
        };
        let latest = system_time(&far);
        assert_eq!(
            latest,
            UNIX_EPOCH + Duration::new(LATEST_SECONDS, 999_999_999)
        );
    }
}
