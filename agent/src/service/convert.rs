//! Conversions between the wire types of `hutch.v1` and the runtime's own types. Input is
//! validated here: every unknown enum value or missing field is an `InvalidArgument` that
//! names the field.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hutch_proto::v1;
use tonic::Status;

use super::status::invalid;
use crate::events::Event;
use crate::rootfs::{BuildOutcome, BuildProgress, RootfsInfo, RootfsSource};
use crate::runtime::logs::{LogLine, Stream};
use crate::runtime::state::Status as RunStatus;
use crate::runtime::ContainerInfo;
use crate::security::{Seccomp, Security, SecurityError};
use crate::spec::{ContainerSpec, IdMap, Namespace, DEFAULT_STOP_GRACE_SECONDS};

/// A protobuf timestamp from milliseconds since the epoch.
pub fn timestamp_ms(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
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

/// A system time from a protobuf timestamp (negative times clamp to the epoch).
pub fn system_time(t: &prost_types::Timestamp) -> SystemTime {
    let secs = u64::try_from(t.seconds).unwrap_or(0);
    let nanos = u32::try_from(t.nanos).unwrap_or(0).min(999_999_999);
    UNIX_EPOCH + Duration::new(secs, nanos)
}

fn namespace_from(value: i32, index: usize) -> Result<Namespace, Status> {
    Ok(match v1::Namespace::try_from(value) {
        Ok(v1::Namespace::Pid) => Namespace::Pid,
        Ok(v1::Namespace::Ipc) => Namespace::Ipc,
        Ok(v1::Namespace::Net) => Namespace::Net,
        Ok(v1::Namespace::Uts) => Namespace::Uts,
        Ok(v1::Namespace::Mount) => Namespace::Mount,
        Ok(v1::Namespace::User) => Namespace::User,
        Ok(v1::Namespace::Cgroup) => Namespace::Cgroup,
        _ => {
            return Err(invalid(
                &format!("spec.namespaces[{index}]"),
                format!("unknown namespace {value}: use NAMESPACE_PID, _IPC, _NET, _UTS, _MOUNT, _USER or _CGROUP"),
            ))
        }
    })
}

fn namespace_to(ns: Namespace) -> v1::Namespace {
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
pub fn spec_from(p: v1::ContainerSpec) -> Result<ContainerSpec, Status> {
    let namespaces = if p.namespaces.is_empty() {
        Namespace::DEFAULT.to_vec()
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
        stop_grace_seconds: p.stop_grace_seconds.unwrap_or(DEFAULT_STOP_GRACE_SECONDS),
        labels: p.labels.into_iter().collect(),
        tty: p.tty,
        stdin: p.stdin,
        security: security_from(p.security.unwrap_or_default())?,
    })
}

fn security_from(p: v1::Security) -> Result<Security, Status> {
    Ok(Security {
        seccomp: p
            .seccomp
            .parse()
            .map_err(|e: SecurityError| Status::invalid_argument(e.to_string()))?,
        cap_add: p.cap_add,
        cap_drop: p.cap_drop,
        seccomp_profile: Some(p.seccomp_profile).filter(|t| !t.is_empty()),
        pids_limit: p.pids_limit,
        privileged: p.privileged,
        run_as_user: p.run_as_user,
        run_as_group: p.run_as_group,
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
        labels: s.labels.clone().into_iter().collect(),
        uid_map: s.uid_map.iter().map(id_map_to).collect(),
        gid_map: s.gid_map.iter().map(id_map_to).collect(),
        stop_grace_seconds: Some(s.stop_grace_seconds),
        tty: s.tty,
        stdin: s.stdin,
        security: (s.security != Security::default()).then(|| security_to(&s.security)),
    }
}

/// The wire's state of a runtime status.
pub fn state_to(s: RunStatus) -> v1::ContainerState {
    match s {
        RunStatus::Created => v1::ContainerState::Preparing,
        RunStatus::Running => v1::ContainerState::Running,
        RunStatus::Exited => v1::ContainerState::Exited,
        RunStatus::OomKilled => v1::ContainerState::OomKilled,
        RunStatus::Failed => v1::ContainerState::Failed,
    }
}

/// A container record for the wire.
pub fn container_to(info: &ContainerInfo, node: &str) -> v1::Container {
    let st = &info.state;
    v1::Container {
        id: st.id.clone(),
        name: st.id.clone(),
        node: node.to_string(),
        spec: Some(spec_to(&info.spec)),
        state: state_to(st.status) as i32,
        exit_code: st.exit_code,
        signal: st.signal,
        oom_killed: st.oom_killed,
        failure: st.failure.as_ref().map(|f| v1::Failure {
            step: f.step.clone(),
            message: f.message.clone(),
        }),
        pid: st.pid.unwrap_or(0),
        namespaces: st
            .namespaces
            .iter()
            .map(|n| v1::NamespaceInfo {
                kind: namespace_to(n.kind) as i32,
                container_inode: n.container_inode,
                host_inode: n.host_inode,
                isolated: n.isolated,
            })
            .collect(),
        memory: info.memory.map(|m| v1::MemoryInfo {
            limit_bytes: m.limit_bytes,
            usage_bytes: m.usage_bytes,
            peak_bytes: m.peak_bytes,
            oom_kills: m.oom_kills,
        }),
        pids: info.pids.map(|p| v1::PidsInfo {
            limit: p.limit,
            current: p.current,
            limit_hits: p.limit_hits,
        }),
        created_at: Some(timestamp_ms(st.created_ms)),
        started_at: st.started_ms.map(timestamp_ms),
        finished_at: st.finished_ms.map(timestamp_ms),
        rootfs_key: info.rootfs_key.clone(),
        ..Default::default()
    }
}

/// The rootfs name and source of a build request.
pub fn rootfs_from(p: Option<v1::RootfsSpec>) -> Result<(String, RootfsSource), Status> {
    use v1::rootfs_spec::Source;
    let p = p.ok_or_else(|| invalid("rootfs", "missing: give a name and one source"))?;
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
        None => {
            return Err(invalid(
                "rootfs.source",
                "missing: set one of debootstrap, tarball, directory, initramfs",
            ))
        }
    };
    Ok((p.name, source))
}

/// A rootfs for the wire.
pub fn rootfs_to(info: &RootfsInfo, containers: Vec<String>) -> v1::RootfsInfo {
    v1::RootfsInfo {
        name: info.name.clone(),
        key: info.key.clone(),
        source: info.source.describe(),
        size_bytes: info.size_bytes,
        created_at: Some(timestamp_ms(info.created_ms)),
        build_millis: info.build_millis,
        containers,
    }
}

/// Build progress for the wire.
pub fn progress_to(p: &BuildProgress) -> v1::BuildProgress {
    v1::BuildProgress {
        stage: serde_json::to_value(p.stage)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        message: p.message.clone(),
        packages_done: p.packages_done,
        packages_total: p.packages_total,
        bytes_done: p.bytes_done,
        bytes_total: p.bytes_total,
    }
}

/// A build outcome for the wire.
pub fn outcome_to(o: BuildOutcome) -> v1::BuildOutcome {
    match o {
        BuildOutcome::Built => v1::BuildOutcome::Built,
        BuildOutcome::Cached => v1::BuildOutcome::Cached,
        BuildOutcome::Joined => v1::BuildOutcome::Joined,
    }
}

/// An event for the wire.
pub fn event_to(e: &Event) -> v1::Event {
    v1::Event {
        seq: e.seq,
        time: Some(timestamp_ms(e.time_ms)),
        container_id: e.change.container_id.clone(),
        state: state_to(e.change.status) as i32,
        details: e.change.details.clone(),
        exit_code: e.change.exit_code,
        signal: e.change.signal,
        oom_killed: e.change.oom_killed,
        removed: e.change.removed,
    }
}

/// A log line for the wire.
pub fn log_to(l: &LogLine) -> v1::LogEntry {
    v1::LogEntry {
        time: humantime::parse_rfc3339(&l.time).ok().map(timestamp),
        stream: match l.stream {
            Stream::Stdout => v1::LogStream::Stdout,
            Stream::Stderr => v1::LogStream::Stderr,
        } as i32,
        line: l.text.clone(),
        partial: !l.full,
    }
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
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().starts_with("spec.namespaces[1]"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn timestamps() {
        let t = timestamp_ms(1_500);
        assert_eq!((t.seconds, t.nanos), (1, 500_000_000));
        assert_eq!(system_time(&t), UNIX_EPOCH + Duration::from_millis(1_500));
    }
}
