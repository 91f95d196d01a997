//! Conversions from the runtime's own types (containers, rootfs entries, build progress,
//! events, log lines) to the wire types of `hutch.v1`. The spec, rootfs source and timestamp
//! conversions both daemons share are `hutch_core::convert`'s, re-exported here.

use hutch_proto::v1;

use crate::events::Event;
use crate::rootfs::{BuildOutcome, BuildProgress, RootfsInfo};
use crate::runtime::logs::{LogLine, Stream};
use crate::runtime::state::Status as RunStatus;
use crate::runtime::ContainerInfo;

pub use hutch_core::convert::*;

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
use hutch_core::network::{NetworkMode, NetworkStatus};
use hutch_core::spec::Namespace;

/// A container record for the wire.
pub fn container_to(info: &ContainerInfo, node: &str) -> v1::Container {
    let st = &info.state;
    v1::Container {
        id: st.id.clone(),
        name: st.id.clone(),
        node: node.to_string(),
        spec: Some(spec_to(&info.spec)),
        warnings: info.spec.host_exposure(),
        state: state_to(st.status) as i32,
        exit_code: st.exit_code,
        signal: st.signal,
        oom_killed: st.oom_killed,
        failure: st.failure.as_ref().map(|f| v1::Failure {
            step: f.step.to_string(),
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
        network: network_of(info).map(|n| hutch_core::convert::network_status_to(&n)),
        health: info.health.as_ref().map(health_status_to),
        start_timeline: start_timeline_to(&st.timeline),
        ..Default::default()
    }
}

/// The start timeline of the API, where the supervisor recorded one.
fn start_timeline_to(t: &crate::runtime::state::StartTimeline) -> Option<v1::StartTimeline> {
    let at = |us: Option<u64>| us.map(timestamp_us);
    let out = v1::StartTimeline {
        agent_received: at(t.agent_received_us),
        supervisor_started: at(t.supervisor_started_us),
        cgroup_joined: at(t.cgroup_joined_us),
        init_cloned: at(t.init_cloned_us),
        init_released: at(t.init_released_us),
        init_exec: at(t.init_exec_us),
        // The controller's own instant.
        controller_running: None,
        init_exited: at(t.init_exited_us),
        cleaned_up: at(t.cleaned_up_us),
    };
    (out != v1::StartTimeline::default()).then_some(out)
}

/// The network a started container has: what its supervisor connected (bridge), or the
/// mode its namespaces give it.
fn network_of(info: &ContainerInfo) -> Option<NetworkStatus> {
    if let Some(n) = &info.state.network {
        return Some(n.clone());
    }
    info.state.started_ms?;
    Some(NetworkStatus {
        mode: if info.spec.has(Namespace::Net) {
            NetworkMode::None
        } else {
            NetworkMode::Host
        },
        ..Default::default()
    })
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
        image: info.image.as_ref().map(image_to),
    }
}

/// An image's config and layers for the wire.
fn image_to(i: &crate::rootfs::image::ImageMeta) -> v1::ImageInfo {
    let d = &i.config.defaults;
    v1::ImageInfo {
        manifest_digest: i.manifest_digest.clone(),
        config_digest: i.config_digest.clone(),
        os: i.config.os.clone(),
        architecture: i.config.architecture.clone(),
        entrypoint: d.entrypoint.clone(),
        cmd: d.cmd.clone(),
        env: d.env.clone(),
        working_dir: d.working_dir.clone(),
        user: d.user.clone(),
        exposed_ports: i.config.exposed_ports.clone(),
        layers: i
            .layers
            .iter()
            .map(|l| v1::ImageLayer {
                diff_id: l.diff_id.clone(),
                digest: l.digest.clone().unwrap_or_default(),
                size_bytes: l.size.unwrap_or(0),
                unpacked_bytes: l.unpacked_bytes,
            })
            .collect(),
        labels: i.config.labels.clone().into_iter().collect(),
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
        health: e.change.health.as_ref().map(health_status_to),
        start_timeline: e.change.timeline.as_ref().and_then(start_timeline_to),
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

/// A volume for the wire.
pub fn volume_to(v: &crate::volumes::Volume, node: &str, containers: Vec<String>) -> v1::Volume {
    v1::Volume {
        name: v.record.name.clone(),
        node: node.to_string(),
        created_at: Some(timestamp_ms(v.record.created_at_ms)),
        labels: v.record.labels.clone().into_iter().collect(),
        mountpoint: v.data.display().to_string(),
        containers,
    }
}

/// A process table row for the wire.
pub fn process_to(p: &crate::stats::ProcessInfo) -> v1::ContainerProcess {
    v1::ContainerProcess {
        pid: p.pid,
        container_pid: p.container_pid,
        ppid: p.ppid,
        uid: p.uid,
        state: p.state.clone(),
        cpu_millis: p.cpu_millis,
        rss_bytes: p.rss_bytes,
        started_at: Some(timestamp_ms(p.started_ms)),
        command: p.command.clone(),
    }
}
