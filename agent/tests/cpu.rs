//! CPU limits (`--cpus`, `--cpu-shares`) on real cgroups: a container burning CPU with a
//! limit of half a CPU gets at most about half a CPU, and the kernel says it throttled it;
//! the weight is in the kernel's file; the cpu cgroup goes with the container, and a
//! container without CPU settings gets none.

use hutch_testkit as common;

use std::time::{Duration, Instant};

use common::TestHost;
use hutch_core::cpu::CpuLimits;

/// Clock ticks per second of `/proc/PID/stat` times (`getconf CLK_TCK`).
fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .map_or(100.0, |t| t as f64)
}

/// User + system CPU seconds process `pid` has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // The fields after the command name (which may hold spaces) close with ')'.
    let rest = stat.rsplit_once(')').expect("stat format").1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after ')'.
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    ticks / clock_ticks()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_cpu_is_at_most_about_half_a_cpu() {
    let host = TestHost::new("cpuhalf").await;
    // The shell's own loop: one process, no forks, all of it CPU.
    let mut spec = host.spec(&["sh", "-c", "while :; do :; done"]);
    spec.cpu = CpuLimits {
        millicores: Some(500),
        shares: Some(512),
    };
    let info = host.runtime.run("burner", spec).await.expect("run");
    let pid = info.state.pid.expect("pid");
    let cpu_dir = info
        .cgroup
        .cpu_files_dir()
        .expect("the container has a cpu cgroup");
    let read = |file: &str| {
        std::fs::read_to_string(cpu_dir.join(file))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    match info.cgroup.version {
        hutch_agent::cgroup::CgroupVersion::V1 => {
            assert_eq!(read("cpu.cfs_quota_us"), "50000");
            assert_eq!(read("cpu.cfs_period_us"), "100000");
            assert_eq!(read("cpu.shares"), "512");
        }
        hutch_agent::cgroup::CgroupVersion::V2 => {
            assert_eq!(read("cpu.max"), "50000 100000");
            assert_eq!(read("cpu.weight"), "59");
        }
    }

    let (start, used_before) = (Instant::now(), cpu_seconds(pid));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let share = (cpu_seconds(pid) - used_before) / start.elapsed().as_secs_f64();
    let throttled = read("cpu.stat");
    println!("used {share:.3} of a CPU over 5 s; cpu.stat: {throttled:?}");
    assert!(share <= 0.55, "a 0.5 CPU limit used {share:.3} of a CPU");
    // The kernel held it back (so the limit, not a busy machine, kept it under).
    let throttled_periods = throttled
        .lines()
        .find_map(|l| l.strip_prefix("nr_throttled "))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(throttled_periods > 0, "never throttled: {throttled}");

    host.runtime.kill("burner", libc::SIGKILL).expect("kill");
    host.runtime.wait("burner").await.expect("wait");
    assert!(!cpu_dir.exists(), "cpu cgroup {} left", cpu_dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cpu_settings_no_cpu_cgroup() {
    let host = TestHost::new("cpunone").await;
    let info = host
        .runtime
        .run("plain", host.spec(&["sleep", "60"]))
        .await
        .expect("run");
    assert_eq!(info.cgroup.cpu_dir, None, "{:?}", info.cgroup);
    host.runtime.kill("plain", libc::SIGKILL).expect("kill");
    host.runtime.wait("plain").await.expect("wait");
}
