//! How records are shown: tables for people, JSON with stable snake_case field names for
//! programs (`--output json`). The JSON shapes are defined here, not derived from the wire
//! types, so renaming a proto field never changes a script's input.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hutch::human_bytes;
use hutch::proto as v1;
use serde::Serialize;

use crate::stdout::outln;

/// A container, as `hutch ps -o json` and `hutch inspect -o json` print it.
#[derive(Serialize)]
pub struct ContainerJson {
    pub id: String,
    pub node: String,
    pub state: String,
    pub status: String,
    pub rootfs: String,
    pub command: Vec<String>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub failure: Option<String>,
    pub pid: u32,
    pub memory_limit_bytes: Option<u64>,
    pub memory_usage_bytes: Option<u64>,
    /// CPU limit in CPUs (`--cpus`).
    pub cpus: Option<f64>,
    /// CPU weight (`--cpu-shares`).
    pub cpu_shares: Option<u32>,
    pub pids_limit: Option<u64>,
    pub pids_current: Option<u64>,
    pub pids_limit_hits: Option<u64>,
    pub restart_count: u32,
    pub restart_policy: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub namespaces: Vec<NamespaceJson>,
    /// What the container reaches on its host through the namespaces it shares.
    pub warnings: Vec<String>,
    /// Its network once started.
    pub network: Option<NetworkJson>,
    /// Binds, volumes and tmpfs: `SOURCE:TARGET[:ro]` (`tmpfs:TARGET` for a tmpfs).
    pub mounts: Vec<String>,
    /// `starting`, `healthy` or `unhealthy` with a health check.
    pub health: Option<String>,
    pub created_at: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub revision: u64,
}

/// A container's network, as the node set it up.
#[derive(Serialize)]
pub struct NetworkJson {
    /// bridge, none or host.
    pub mode: String,
    /// The CNI network (bridge).
    pub network: String,
    /// Its address (bridge).
    pub ip: String,
    pub gateway: String,
    pub subnet: String,
    /// Published ports, `[IP:]HOSTPORT:CTRPORT/PROTO`.
    pub ports: Vec<String>,
}

fn network_json(n: &v1::NetworkStatus) -> NetworkJson {
    NetworkJson {
        mode: v1::network_spec::Mode::try_from(n.mode)
            .map(|m| {
                m.as_str_name()
                    .trim_start_matches("MODE_")
                    .to_ascii_lowercase()
            })
            .unwrap_or_default(),
        network: n.network.clone(),
        ip: n.ip.clone(),
        gateway: n.gateway.clone(),
        subnet: n.subnet.clone(),
        ports: n
            .ports
            .iter()
            .map(|p| {
                let ip = if p.host_ip.is_empty() {
                    String::new()
                } else {
                    format!("{}:", p.host_ip)
                };
                format!("{ip}{}:{}/{}", p.host_port, p.container_port, p.protocol)
            })
            .collect(),
    }
}

/// One namespace next to the host's.
#[derive(Serialize)]
pub struct NamespaceJson {
    pub kind: String,
    pub container_inode: u64,
    pub host_inode: u64,
    pub isolated: bool,
}

/// A node, as `hutch nodes -o json` prints it.
#[derive(Serialize)]
pub struct NodeJson {
    pub name: String,
    pub address: String,
    pub state: String,
    pub cordoned: bool,
    pub labels: std::collections::BTreeMap<String, String>,
    pub memory_total_bytes: u64,
    pub memory_allocatable_bytes: u64,
    pub memory_reserved_bytes: u64,
    pub memory_used_bytes: u64,
    pub cpu_count: u32,
    /// Thousandths of CPUs containers may be promised, and are.
    pub cpu_allocatable_millicores: u64,
    pub cpu_reserved_millicores: u64,
    pub running_containers: u32,
    pub rootfs: Vec<String>,
    pub cgroup_version: String,
    pub kernel: String,
    pub message: String,
    /// Its block of the cluster network.
    pub subnet: String,
    pub registered_at: Option<String>,
    pub last_heartbeat: Option<String>,
}

/// `CONTAINER_STATE_RUNNING` -> `running`.
pub fn state_name(state: i32) -> String {
    v1::ContainerState::try_from(state)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("CONTAINER_STATE_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| format!("unknown({state})"))
}

/// `healthy`, `unhealthy`, `starting` for a container with a health check.
pub fn health_name(c: &v1::Container) -> Option<String> {
    let h = c.health.as_ref()?;
    v1::HealthState::try_from(h.state)
        .ok()
        .filter(|s| *s != v1::HealthState::Unspecified)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("HEALTH_STATE_")
                .to_ascii_lowercase()
        })
}

fn node_state_name(state: i32) -> String {
    v1::NodeState::try_from(state)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("NODE_STATE_")
                .to_ascii_lowercase()
                .replace('_', "-")
        })
        .unwrap_or_else(|_| format!("unknown({state})"))
}

fn namespace_name(kind: i32) -> String {
    hutch_core::convert::namespace_from(kind, 0)
        .map(|n| n.to_string())
        .unwrap_or_else(|_| format!("unknown({kind})"))
}

fn time_of(t: &prost_types::Timestamp) -> SystemTime {
    UNIX_EPOCH
        + Duration::new(
            u64::try_from(t.seconds).unwrap_or(0),
            u32::try_from(t.nanos).unwrap_or(0).min(999_999_999),
        )
}

pub fn rfc3339(t: &Option<prost_types::Timestamp>) -> Option<String> {
    t.as_ref()
        .map(|t| humantime::format_rfc3339_millis(time_of(t)).to_string())
}

/// A mount as `docker inspect` users read it: `SOURCE:TARGET[:ro]`, `tmpfs:TARGET`.
fn mount_text(m: &v1::Mount) -> String {
    hutch_core::convert::mount_from(m.clone(), 0)
        .map(|m| hutch_core::mounts::describe(&m))
        .unwrap_or_else(|e| e.to_string())
}

/// `3s ago`, `5m ago`.
pub fn ago(t: &Option<prost_types::Timestamp>) -> String {
    let Some(t) = t else { return "-".into() };
    let secs = SystemTime::now()
        .duration_since(time_of(t))
        .unwrap_or_default()
        .as_secs();
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

fn policy_name(p: &Option<v1::RestartPolicy>) -> String {
    use v1::restart_policy::Kind;
    let p = p.unwrap_or_default();
    match Kind::try_from(p.kind).unwrap_or(Kind::Unspecified) {
        Kind::OnFailure if p.max_retries > 0 => format!("on-failure:{}", p.max_retries),
        Kind::OnFailure => "on-failure".into(),
        Kind::Always => "always".into(),
        _ => "never".into(),
    }
}

/// The JSON form of a container.
pub fn container_json(c: &v1::Container) -> ContainerJson {
    let spec = c.spec.clone().unwrap_or_default();
    ContainerJson {
        id: c.name.clone(),
        node: c.node.clone(),
        state: state_name(c.state),
        status: c.status_message.clone(),
        rootfs: spec.rootfs,
        command: spec.command,
        exit_code: c.exit_code,
        signal: c.signal,
        oom_killed: c.oom_killed,
        failure: c
            .failure
            .as_ref()
            .map(|f| format!("{}: {}", f.step, f.message)),
        pid: c.pid,
        memory_limit_bytes: spec.memory_limit_bytes,
        memory_usage_bytes: c.memory.map(|m| m.usage_bytes),
        cpus: spec.cpu.map(|c| c.cores).filter(|c| *c > 0.0),
        cpu_shares: spec.cpu.map(|c| c.shares).filter(|s| *s > 0),
        pids_limit: c.pids.and_then(|p| p.limit),
        pids_current: c.pids.map(|p| p.current),
        pids_limit_hits: c.pids.map(|p| p.limit_hits),
        restart_count: c.restart_count,
        restart_policy: policy_name(&c.restart_policy),
        labels: spec.labels.into_iter().collect(),
        warnings: c.warnings.clone(),
        network: c.network.as_ref().map(network_json),
        mounts: spec.mounts.iter().map(mount_text).collect(),
        health: health_name(c),
        namespaces: c
            .namespaces
            .iter()
            .map(|n| NamespaceJson {
                kind: namespace_name(n.kind),
                container_inode: n.container_inode,
                host_inode: n.host_inode,
                isolated: n.isolated,
            })
            .collect(),
        created_at: rfc3339(&c.created_at),
        started_at: rfc3339(&c.started_at),
        finished_at: rfc3339(&c.finished_at),
        revision: c.revision,
    }
}

/// The JSON form of a node.
pub fn node_json(n: &v1::Node) -> NodeJson {
    NodeJson {
        name: n.name.clone(),
        address: n.address.clone(),
        state: node_state_name(n.state),
        cordoned: n.cordoned,
        labels: n.labels.clone().into_iter().collect(),
        memory_total_bytes: n.memory_total_bytes,
        memory_allocatable_bytes: n.memory_allocatable_bytes,
        memory_reserved_bytes: n.memory_reserved_bytes,
        memory_used_bytes: n.memory_used_bytes,
        cpu_count: n.cpu_count,
        cpu_allocatable_millicores: n.cpu_allocatable_millicores,
        cpu_reserved_millicores: n.cpu_reserved_millicores,
        running_containers: n.running_containers,
        rootfs: n.rootfs.clone(),
        cgroup_version: n.cgroup_version.clone(),
        kernel: n.kernel.clone(),
        message: n.message.clone(),
        subnet: n.subnet.clone(),
        registered_at: rfc3339(&n.registered_at),
        last_heartbeat: rfc3339(&n.last_heartbeat),
    }
}

/// Prints rows as columns padded to their widest cell.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, cell) in r.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        outln!("{}", out.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let cut: String = s.chars().take(max.saturating_sub(3)).collect();
        format!("{cut}...")
    }
}

/// `hutch ps`.
pub fn containers_table(list: &[v1::Container]) {
    let rows = list
        .iter()
        .map(|c| {
            let spec = c.spec.clone().unwrap_or_default();
            vec![
                c.name.clone(),
                if c.node.is_empty() {
                    "-".into()
                } else {
                    c.node.clone()
                },
                match health_name(c) {
                    Some(h) => format!("{} ({h})", state_name(c.state)),
                    None => state_name(c.state),
                },
                c.network
                    .as_ref()
                    .map(|n| n.ip.clone())
                    .filter(|ip| !ip.is_empty())
                    .unwrap_or_else(|| "-".into()),
                ago(&c.created_at),
                shorten(&spec.command.join(" "), 30),
                shorten(&c.status_message, 60),
            ]
        })
        .collect();
    table(
        &["ID", "NODE", "STATE", "IP", "CREATED", "COMMAND", "STATUS"],
        rows,
    );
}

/// `hutch inspect`: the record, then the namespace table (the tutorial's `ls -l /proc/PID/ns`).
pub fn container_details(c: &v1::Container) {
    let j = container_json(c);
    let field = |k: &str, v: String| outln!("{k:<16}{v}");
    field("id", j.id.clone());
    field("node", j.node.clone());
    field("state", j.state.clone());
    field("status", j.status.clone());
    field("rootfs", j.rootfs.clone());
    field("command", j.command.join(" "));
    field("pid", j.pid.to_string());
    if let Some(n) = &j.network {
        field("network", n.mode.clone());
        if !n.ip.is_empty() {
            field(
                "ip",
                format!("{} (gateway {}, subnet {})", n.ip, n.gateway, n.subnet),
            );
        }
        for p in &n.ports {
            field("published", p.clone());
        }
    }
    if let Some(code) = j.exit_code {
        field("exit code", code.to_string());
    }
    if let Some(sig) = j.signal {
        field("signal", sig.to_string());
    }
    field("oom killed", j.oom_killed.to_string());
    for warning in &j.warnings {
        field("warning", warning.clone());
    }
    if let Some(f) = &j.failure {
        field("failure", f.clone());
    }
    field(
        "memory limit",
        j.memory_limit_bytes.map_or("none".into(), human_bytes),
    );
    if let Some(u) = j.memory_usage_bytes {
        field("memory usage", human_bytes(u));
    }
    field("cpus", j.cpus.map_or("no limit".into(), |c| c.to_string()));
    if let Some(shares) = j.cpu_shares {
        field("cpu shares", shares.to_string());
    }
    if let Some(current) = j.pids_current {
        let limit = j
            .pids_limit
            .map_or("no limit".into(), |l| format!("limit {l}"));
        let hits = match j.pids_limit_hits {
            Some(h) if h > 0 => format!(", {h} forks refused at the limit"),
            _ => String::new(),
        };
        field("processes", format!("{current} ({limit}{hits})"));
    }
    if let (Some(h), Some(status)) = (&j.health, &c.health) {
        // Written by the container: control characters shown escaped, not sent to the
        // terminal.
        let output: String = status
            .last_output
            .trim()
            .chars()
            .flat_map(|c| {
                if c.is_control() {
                    c.escape_default().collect::<Vec<_>>()
                } else {
                    vec![c]
                }
            })
            .collect();
        let last = if output.is_empty() {
            String::new()
        } else {
            format!("; last check: {output}")
        };
        field(
            "health",
            format!("{h} ({} failing in a row{last})", status.failing_streak),
        );
    }
    if !j.mounts.is_empty() {
        field("mounts", j.mounts.join(", "));
    }
    field("restart policy", j.restart_policy.clone());
    field("restarts", j.restart_count.to_string());
    field("created", j.created_at.clone().unwrap_or_default());
    field("started", j.started_at.clone().unwrap_or_default());
    field("finished", j.finished_at.clone().unwrap_or_default());
    if !j.namespaces.is_empty() {
        outln!();
        table(
            &["NAMESPACE", "CONTAINER INODE", "HOST INODE", "ISOLATED"],
            j.namespaces
                .iter()
                .map(|n| {
                    vec![
                        n.kind.clone(),
                        n.container_inode.to_string(),
                        n.host_inode.to_string(),
                        if n.isolated { "yes" } else { "no" }.into(),
                    ]
                })
                .collect(),
        );
    }
}

/// Thousandths of CPUs as CPUs (`1.5`).
fn millicores(m: u64) -> String {
    hutch_core::cpu::format_cores(u32::try_from(m).unwrap_or(u32::MAX))
}

/// `hutch nodes`.
pub fn nodes_table(list: &[v1::Node]) {
    let rows = list
        .iter()
        .map(|n| {
            let mut state = node_state_name(n.state);
            if n.cordoned {
                state.push_str(",cordoned");
            }
            let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            vec![
                n.name.clone(),
                state,
                n.address.clone(),
                n.running_containers.to_string(),
                format!(
                    "{} / {}",
                    human_bytes(n.memory_reserved_bytes),
                    human_bytes(n.memory_allocatable_bytes)
                ),
                format!(
                    "{} / {}",
                    millicores(n.cpu_reserved_millicores),
                    millicores(n.cpu_allocatable_millicores)
                ),
                n.rootfs.join(","),
                labels.join(","),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "STATE",
            "ADDRESS",
            "RUNNING",
            "MEMORY RESERVED / ALLOCATABLE",
            "CPUS RESERVED / ALLOCATABLE",
            "ROOTFS",
            "LABELS",
        ],
        rows,
    );
}
