//! Facts about this node for `NodeInfo` and for admission: hostname, kernel, memory, CPUs.

/// `MemTotal` from `/proc/meminfo`, in bytes.
pub fn memory_total_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| parse_meminfo(&t, "MemTotal"))
        .unwrap_or(0)
}

/// `MemAvailable` from `/proc/meminfo`, in bytes.
pub fn memory_available_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| parse_meminfo(&t, "MemAvailable"))
        .unwrap_or(0)
}

/// Pure part: a `KEY: N kB` line of meminfo, in bytes.
pub fn parse_meminfo(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == key).then(|| {
            v.split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
                .map(|kb| kb * 1024)
        })?
    })
}

/// CPUs this process may run on (its affinity mask and its cgroup's CPU quota), at least 1.
pub fn cpu_count() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1)
}

/// The thousandths of CPUs containers may be promised here: all of [`cpu_count`].
pub fn cpu_allocatable_millicores() -> u64 {
    u64::from(cpu_count()) * 1000
}

/// The kernel release (`uname -r`).
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The host name.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo() {
        let t = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   2000 kB\n";
        assert_eq!(parse_meminfo(t, "MemTotal"), Some(24_000_000 * 1024));
        assert_eq!(parse_meminfo(t, "MemAvailable"), Some(2000 * 1024));
        assert_eq!(parse_meminfo(t, "Nope"), None);
        assert!(memory_total_bytes() > 0);
    }
}
