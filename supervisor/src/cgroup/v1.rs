//! cgroup v1 specifics. The memory hierarchy is its own tree; any cgroup may hold processes,
//! so the agent needs no leaf of its own. OOM kills are counted in `memory.oom_control`
//! (`oom_kill N`, kernel 4.13+), the peak in `memory.max_usage_in_bytes`, swap in
//! `memory.memsw.limit_in_bytes` (present only with swap accounting). There is no
//! `cgroup.kill`: processes are signalled one by one until the cgroup is empty. CPU lives in
//! its own hierarchy too: `cpu.cfs_quota_us` per `cpu.cfs_period_us`, and `cpu.shares`.

use hutch_core::cpu::{CpuLimits, PERIOD_US};

use super::{io_err, write_file, CgroupError, CgroupPath, Driver};

/// The v1 driver.
pub struct V1;

impl Driver for V1 {
    fn prepare_root(&self, _root: &CgroupPath) -> Result<(), CgroupError> {
        Ok(())
    }

    fn delegate_memory(&self, _cgroup: &CgroupPath) -> Result<(), CgroupError> {
        Ok(())
    }

    fn set_swap_limit(
        &self,
        cgroup: &CgroupPath,
        _memory: u64,
        total: u64,
    ) -> Result<(), CgroupError> {
        let file = cgroup.dir().join("memory.memsw.limit_in_bytes");
        if !file.exists() {
            return Err(CgroupError::SwapUnsupported(file));
        }
        std::fs::write(&file, total.to_string())
            .map_err(|e| io_err(&file, format!("setting {total}: {e}")))
    }

    fn oom_kills(&self, cgroup: &CgroupPath) -> u64 {
        read_keyed(&cgroup.dir().join("memory.oom_control"), "oom_kill")
    }

    fn limit_file(&self) -> &'static str {
        "memory.limit_in_bytes"
    }

    fn usage_file(&self) -> &'static str {
        "memory.usage_in_bytes"
    }

    fn peak_file(&self) -> &'static str {
        "memory.max_usage_in_bytes"
    }

    fn set_cpu(&self, dir: &std::path::Path, cpu: &CpuLimits) -> Result<(), CgroupError> {
        if let Some(quota) = cpu.quota_us() {
            write_file(dir, "cpu.cfs_period_us", &PERIOD_US.to_string())?;
            write_file(dir, "cpu.cfs_quota_us", &quota.to_string())?;
        }
        if let Some(shares) = cpu.shares {
            write_file(dir, "cpu.shares", &shares.to_string())?;
        }
        Ok(())
    }

    fn kill_all(&self, cgroup: &CgroupPath) -> Result<(), CgroupError> {
        for pid in cgroup.procs() {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        Ok(())
    }
}

/// Reads `KEY VALUE` lines (as in `memory.oom_control` or `memory.events`) and returns the
/// value of `key`, 0 when absent.
pub fn read_keyed(file: &std::path::Path, key: &str) -> u64 {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|t| parse_keyed(&t, key))
        .unwrap_or(0)
}

/// Pure part of [`read_keyed`].
pub fn parse_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next() == Some(key)).then(|| w.next().and_then(|v| v.parse().ok()))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_oom_control() {
        let t = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(parse_keyed(t, "oom_kill"), Some(3));
        assert_eq!(parse_keyed(t, "oom_kill_disable"), Some(0));
        assert_eq!(parse_keyed(t, "missing"), None);
    }
}
