//! `density`: many running `sleep infinity` containers. What each costs hutch in memory (the
//! PSS of its supervisor plus the agent's growth), what the agent burns while they idle, and
//! next to it what each costs containerd (the PSS of its shim).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use hutch_proto::v1;

use crate::report::Row;
use crate::scenarios::{connect_and_watch, remove_many, start_and_wait, time_command};
use crate::setup::BenchEnv;

/// A `Key:  N kB` field of a `/proc` file, in bytes.
pub fn proc_kb_field(path: &str, key: &str) -> Result<u64, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| format!("no {key} in {path}"))
}

/// Proportional set size of `pid` in bytes.
fn pss_bytes(pid: u32) -> Result<u64, String> {
    proc_kb_field(&format!("/proc/{pid}/smaps_rollup"), "Pss")
}

/// Processes whose name starts with `comm` and whose command line mentions `marker`.
fn processes(comm: &str, marker: &Path) -> Vec<u32> {
    let marker = marker.to_string_lossy();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            name.starts_with(comm) && String::from_utf8_lossy(&cmdline).contains(&*marker)
        })
        .collect()
}

/// The summed PSS of `pids`, and how many were still there to measure.
fn total_pss(pids: &[u32]) -> (u64, usize) {
    pids.iter()
        .filter_map(|p| pss_bytes(*p).ok())
        .fold((0, 0), |(sum, n), pss| (sum + pss, n + 1))
}

/// CPU time (user + system) `pid` has used, from `/proc/PID/stat`.
fn cpu_time(pid: u32) -> Result<Duration, String> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15, that is 11 and 12 after the state, in USER_HZ
    // ticks: 100 a second on every architecture Linux exports /proc/PID/stat for.
    Ok(Duration::from_millis((ticks(11) + ticks(12)) * 10))
}

fn ctr_detached(env: &BenchEnv, id: &str) -> Command {
    let mut c = Command::new("ctr");
    c.arg("--address")
        .arg(&env.containerd_socket)
        .args(["run", "-d", "--null-io", "--memory-limit"])
        .arg((16u64 << 20).to_string())
        .arg("--cgroup")
        .arg(format!("{}/ctr-{id}", env.cgroup_parent))
        .arg("--rootfs")
        .arg(&env.rootfs_dir)
        .args([id, "/bin/sleep", "infinity"]);
    c
}

fn ctr_remove(env: &BenchEnv, id: &str) {
    for args in [["task", "rm", "-f"], ["container", "rm", ""]] {
        let _ = Command::new("ctr")
            .arg("--address")
            .arg(&env.containerd_socket)
            .args(args.iter().filter(|a| !a.is_empty()))
            .arg(id)
            .output();
    }
}

/// `density`: `count` containers of each; the agent's CPU over `idle` while they sleep.
pub async fn density(env: &BenchEnv, count: usize, idle: Duration) -> Result<Vec<Row>, String> {
    let (client, mut watch) = connect_and_watch(env).await?;
    let agent_before = pss_bytes(env.agent_pid)?;
    let prefix = format!("dense-{}-", std::process::id());
    let spec = v1::ContainerSpec {
        rootfs: "debian".into(),
        command: vec!["/bin/sleep".into(), "infinity".into()],
        memory_limit_bytes: Some(16 << 20),
        ..Default::default()
    };
    let started = Instant::now();
    start_and_wait(&client, &mut watch, &prefix, count, &spec, |s| {
        s == v1::ContainerState::Running as i32
    })
    .await?;
    drop(watch);
    eprintln!(
        "bench: {count} hutch containers running in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    // Let the start-up work settle before measuring the idle agent.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu_before = cpu_time(env.agent_pid)?;
    let idle_started = Instant::now();
    tokio::time::sleep(idle).await;
    let agent_cpu = (cpu_time(env.agent_pid)? - cpu_before).as_secs_f64()
        / idle_started.elapsed().as_secs_f64()
        * 100.0;
    let (supervisors_pss, supervisors) = total_pss(&processes("hutch-superviso", &env.dir));
    let agent_growth = pss_bytes(env.agent_pid)?.saturating_sub(agent_before);
    remove_many(&client, &prefix, count).await;
    if supervisors != count {
        return Err(format!(
            "found {supervisors} supervisors for {count} running containers"
        ));
    }
    let hutch_per = (supervisors_pss + agent_growth) as f64 / count as f64 / 1024.0;

    // Peer: containerd, a shim per container.
    let ids: Vec<String> = (0..count)
        .map(|i| format!("hb-dense-{}-{i}", std::process::id()))
        .collect();
    let mut started_ids = Vec::new();
    let mut failure = None;
    for id in &ids {
        match time_command(&mut ctr_detached(env, id)) {
            Ok(_) => started_ids.push(id),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let (shims_pss, shims) = total_pss(&processes("containerd-shim", &env.containerd_socket));
    for id in &started_ids {
        ctr_remove(env, id);
    }
    if let Some(e) = failure {
        return Err(e);
    }
    if shims == 0 {
        return Err("no containerd shim found for the peer's containers".into());
    }
    let shim_per = shims_pss as f64 / count as f64 / 1024.0;
    Ok(vec![
        Row {
            scenario: "density".into(),
            metric: format!("memory per running container ({count})"),
            hutch: hutch_per,
            peer: Some(shim_per),
            peer_name: format!("containerd shim PSS ({shims} shims)"),
            unit: "KiB".into(),
            ratio: Some(hutch_per / shim_per),
            target: "<= 1 MiB".into(),
            pass: hutch_per <= 1024.0,
        },
        Row {
            scenario: "density".into(),
            metric: format!("idle agent CPU, {count} running, {}s", idle.as_secs()),
            hutch: agent_cpu,
            peer: None,
            peer_name: String::new(),
            unit: "% of a core".into(),
            ratio: None,
            target: "< 1%".into(),
            pass: agent_cpu < 1.0,
        },
    ])
}
