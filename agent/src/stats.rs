//! What a container uses, read from the kernel: CPU time, network bytes of its own network
//! namespace, block I/O, its processes, the disk its writable layer takes. The parsers are
//! pure; the readers take a pid or a directory. Memory and process counts come from its
//! cgroup ([`crate::cgroup::ContainerCgroup`]).
//!
//! CPU time is cgroup v2's `cpu.stat` where the container's cgroup is on v2; on v1, where
//! hutch gives a container a cpu cgroup only for a limit (and `cpuacct` may be a hierarchy of
//! its own), it is the sum over its live processes of their own and their reaped children's
//! time (`/proc/PID/stat`), which is what the kernel keeps for them.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Bytes through a network namespace's interfaces, `lo` not counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetBytes {
    /// Received.
    pub rx: u64,
    /// Sent.
    pub tx: u64,
}

/// Bytes read from and written to storage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockBytes {
    /// Read.
    pub read: u64,
    /// Written.
    pub write: u64,
}

/// The sum of `/proc/net/dev`'s interfaces but `lo`.
pub fn parse_net_dev(text: &str) -> NetBytes {
    let mut total = NetBytes::default();
    for line in text.lines().skip(2) {
        let Some((name, counters)) = line.split_once(':') else {
            continue;
        };
        if name.trim() == "lo" {
            continue;
        }
        let fields: Vec<u64> = counters
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        // Receive: bytes packets errs drop fifo frame compressed multicast; then transmit.
        if fields.len() >= 9 {
            total.rx += fields[0];
            total.tx += fields[8];
        }
    }
    total
}

/// `read_bytes` and `write_bytes` of a `/proc/PID/io`.
pub fn parse_proc_io(text: &str) -> BlockBytes {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    BlockBytes {
        read: field("read_bytes:"),
        write: field("write_bytes:"),
    }
}

/// The fields of a `/proc/PID/stat` a process table needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    /// The command name (in parentheses in the file).
    pub name: String,
    /// R, S, D, Z, T, ...
    pub state: String,
    /// Parent pid.
    pub ppid: u32,
    /// User + system time of the process itself, in clock ticks.
    pub own_ticks: u64,
    /// User + system time of its reaped children, in clock ticks.
    pub children_ticks: u64,
    /// Start time, in clock ticks after boot.
    pub start_ticks: u64,
    /// Resident pages.
    pub rss_pages: u64,
}

/// Parses a `/proc/PID/stat` line; `None` when it is not one.
pub fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    // The name may hold spaces and parentheses: it ends at the last ')'.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let name = text.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // After ')': state(3) ppid(4) ... utime(14) stime(15) cutime(16) cstime(17) ...
    // starttime(22) vsize(23) rss(24); index = field number - 3.
    let num = |field: usize| rest.get(field - 3).and_then(|v| v.parse::<u64>().ok());
    Some(ProcStat {
        name,
        state: rest.first()?.to_string(),
        ppid: u32::try_from(num(4)?).ok()?,
        own_ticks: num(14)? + num(15)?,
        children_ticks: num(16)? + num(17)?,
        start_ticks: num(22)?,
        rss_pages: num(24)?,
    })
}

/// Clock ticks per second of `/proc` times.
pub fn clock_ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

/// CPU time of `pids` and of the children they reaped, in nanoseconds.
pub fn cpu_nanos_of(pids: &[u32]) -> u64 {
    let ticks: u64 = pids
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|t| parse_proc_stat(&t))
        .map(|s| s.own_ticks + s.children_ticks)
        .sum();
    ticks.saturating_mul(1_000_000_000) / clock_ticks_per_second()
}

/// CPU time of a cgroup v2 directory (`cpu.stat`'s `usage_usec`), in nanoseconds.
pub fn cgroup_v2_cpu_nanos(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|us| us.saturating_mul(1000))
}

/// Storage bytes of `pids` (their own and their reaped children's).
pub fn block_bytes_of(pids: &[u32]) -> BlockBytes {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/io")).ok())
        .map(|t| parse_proc_io(&t))
        .fold(BlockBytes::default(), |a, b| BlockBytes {
            read: a.read + b.read,
            write: a.write + b.write,
        })
}

/// Bytes through the network namespace process `pid` is in.
pub fn net_bytes_of(pid: u32) -> Option<NetBytes> {
    std::fs::read_to_string(format!("/proc/{pid}/net/dev"))
        .ok()
        .map(|t| parse_net_dev(&t))
}

/// Disk used below `dir`, as `du` counts it (blocks allocated, each file once, symlinks not
/// followed, other filesystems not entered).
pub fn disk_usage(dir: &Path) -> u64 {
    let Ok(top) = std::fs::symlink_metadata(dir) else {
        return 0;
    };
    let device = top.dev();
    let mut seen = HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.dev() != device || !seen.insert(meta.ino()) {
                continue;
            }
            total += meta.blocks() * 512;
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    total
}

/// CPU use between two samples, where 100 is one CPU fully used.
pub fn cpu_percent(before_nanos: u64, after_nanos: u64, elapsed: std::time::Duration) -> f64 {
    let wall = elapsed.as_nanos() as f64;
    if wall <= 0.0 {
        return 0.0;
    }
    after_nanos.saturating_sub(before_nanos) as f64 * 100.0 / wall
}

/// One process of a container, for a process table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Its pid on the node.
    pub pid: u32,
    /// Its pid in the innermost pid namespace it is in.
    pub container_pid: u32,
    /// Its parent's pid (on the node).
    pub ppid: u32,
    /// Its real uid as the node sees it.
    pub uid: u32,
    /// R, S, D, Z, T...
    pub state: String,
    /// CPU time used, in milliseconds.
    pub cpu_millis: u64,
    /// Resident memory.
    pub rss_bytes: u64,
    /// When it started, in ms since the epoch.
    pub started_ms: u64,
    /// Its command line, or its name in brackets.
    pub command: String,
}

/// The last `NSpid:` value and the real `Uid:` of a `/proc/PID/status`.
pub fn parse_status_ids(text: &str) -> (Option<u32>, Option<u32>) {
    let last = |key: &str, nth_last: bool| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| {
                let mut it = v.split_whitespace();
                if nth_last { it.next_back() } else { it.next() }.and_then(|n| n.parse().ok())
            })
    };
    (last("NSpid:", true), last("Uid:", false))
}

/// The boot time, in ms since the epoch (`/proc/stat`'s `btime`).
fn boot_ms() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .map_or(0, |s| s * 1000)
}

/// The processes among `pids` that still exist, in pid order.
pub fn process_table(pids: &[u32]) -> Vec<ProcessInfo> {
    let ticks = clock_ticks_per_second();
    let page = u64::try_from(
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .unwrap_or(4096),
    )
    .unwrap_or(4096);
    let boot = boot_ms();
    let mut rows: Vec<ProcessInfo> = pids
        .iter()
        .filter_map(|&pid| {
            let stat =
                parse_proc_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let (ns_pid, uid) = parse_status_ids(&status);
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let command = String::from_utf8_lossy(&cmdline)
                .split('\0')
                .filter(|a| !a.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            Some(ProcessInfo {
                pid,
                container_pid: ns_pid.unwrap_or(pid),
                ppid: stat.ppid,
                uid: uid.unwrap_or(0),
                state: stat.state,
                cpu_millis: stat.own_ticks * 1000 / ticks,
                rss_bytes: stat.rss_pages * page,
                started_ms: boot + stat.start_ticks * 1000 / ticks,
                command: if command.is_empty() {
                    format!("[{}]", stat.name)
                } else {
                    command
                },
            })
        })
        .collect();
    rows.sort_by_key(|r| r.pid);
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev_without_lo() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo:    1000      10    0    0    0     0          0         0     1000      10    0    0    0     0       0          0\n  \
eth0:    5000      50    0    0    0     0          0         0     7000      70    0    0    0     0       0          0\n";
        assert_eq!(parse_net_dev(text), NetBytes { rx: 5000, tx: 7000 });
        assert_eq!(parse_net_dev(""), NetBytes::default());
    }

    #[test]
    fn proc_io_and_stat() {
        let io = "rchar: 10\nwchar: 20\nsyscr: 1\nsyscw: 2\nread_bytes: 4096\nwrite_bytes: 8192\ncancelled_write_bytes: 0\n";
        assert_eq!(
            parse_proc_io(io),
            BlockBytes {
                read: 4096,
                write: 8192
            }
        );
        let stat = "42 (sh -c (x)) S 1 42 42 34816 42 4194560 100 0 0 0 7 3 5 1 20 0 1 0 12345 2000000 150 18446744073709551615";
        let s = parse_proc_stat(stat).expect("stat");
        assert_eq!(s.name, "sh -c (x)");
        assert_eq!((s.state.as_str(), s.ppid), ("S", 1));
        assert_eq!((s.own_ticks, s.children_ticks), (10, 6));
        assert_eq!((s.start_ticks, s.rss_pages), (12345, 150));
        assert!(parse_proc_stat("garbage").is_none());
        let status = "Name:\tsh\nUid:\t100000\t100000\t100000\t100000\nNSpid:\t4242\t7\n";
        assert_eq!(parse_status_ids(status), (Some(7), Some(100000)));
    }

    #[test]
    fn this_process_has_cpu_time_and_du_counts_files() {
        let me = std::process::id();
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(30) {}
        assert!(cpu_nanos_of(&[me]) > 0);
        let table = process_table(&[me]);
        assert_eq!(table.len(), 1);
        assert_eq!(table[0].pid, me);
        assert!(table[0].rss_bytes > 0 && table[0].started_ms > 0);
        let dir = std::env::temp_dir().join(format!("hutch-du-{me}"));
        std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
        std::fs::write(dir.join("sub/f"), vec![1u8; 64 * 1024]).expect("write");
        assert!(disk_usage(&dir) >= 64 * 1024, "{}", disk_usage(&dir));
        std::fs::remove_dir_all(&dir).expect("cleanup");
        let pct = cpu_percent(0, 500_000_000, std::time::Duration::from_secs(1));
        assert!((pct - 50.0).abs() < 1e-9);
    }
}
