//! cgroup v2 specifics. One unified tree where only leaves may hold processes once a
//! controller is enabled for children ("no internal processes"): before the delegated root
//! can hand the memory controller to hutch's cgroups, the agent moves itself into a leaf
//! `hutch-agent`. OOM kills are counted in `memory.events` (`oom_kill N`), the peak in
//! `memory.peak` (kernel 5.19+), swap in `memory.swap.max` (swap only, so the limit is
//! total minus memory). `cgroup.kill` (5.14+) empties a cgroup in one write. CPU: `cpu.max`
//! (quota and period) and `cpu.weight` (1..10000, converted from shares as runc does).

use super::v1::read_keyed;
use hutch_core::cpu::CpuLimits;

use super::{io_err, write_file, CgroupError, CgroupPath, Driver};

/// The error of a cgroup whose parent did not hand it the memory controller.
fn memory_not_delegated(cgroup: &CgroupPath) -> CgroupError {
    let dir = cgroup.dir();
    let listed = controllers(&dir.join("cgroup.controllers")).join(" ");
    CgroupError::MemoryNotDelegated {
        path: dir,
        reason: format!(
            "the memory controller is not delegated to this cgroup (its cgroup.controllers lists '{listed}'), so no memory limit can be enforced; run the agent in a unit with Delegate=yes or pass a delegated --cgroup-root"
        ),
    }
}

/// The v2 driver.
pub struct V2;

fn controllers(file: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .map(|t| t.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

impl Driver for V2 {
    fn prepare_root(&self, root: &CgroupPath) -> Result<(), CgroupError> {
        let dir = root.dir();
        if controllers(&dir.join("cgroup.subtree_control"))
            .iter()
            .any(|c| c == "memory")
        {
            // Delegated before (an earlier agent, an operator): pids and cpu may be missing.
            return self.delegate_memory(root);
        }
        if !controllers(&dir.join("cgroup.controllers"))
            .iter()
            .any(|c| ["memory", "pids", "cpu"].contains(&c.as_str()))
        {
            // Nothing to hand down: nothing is moved or written, and the caller decides
            // whether to run without memory limits.
            return Err(memory_not_delegated(root));
        }
        // Inner nodes cannot hold processes: move this process into a leaf of its own.
        let me = std::process::id();
        if root.procs().contains(&me) {
            let leaf = root.child(super::V2_AGENT_LEAF);
            super::mkdir(&leaf.dir())?;
            leaf.add_process(me)?;
        }
        let others = root.procs();
        if !others.is_empty() {
            return Err(CgroupError::Root {
                path: dir,
                message: format!(
                    "processes {others:?} (not hutch's) live in the delegated root, so it cannot delegate memory to children; start the agent in a cgroup of its own"
                ),
            });
        }
        // pids and cpu are handed down even when memory is not (their limits still work).
        self.delegate_memory(root)
    }

    fn delegate_memory(&self, cgroup: &CgroupPath) -> Result<(), CgroupError> {
        let file = cgroup.dir().join("cgroup.subtree_control");
        // pids and cpu too, where they are delegated: containers' process limits and CPU
        // limits need them.
        let available = controllers(&cgroup.dir().join("cgroup.controllers"));
        for extra in ["pids", "cpu"] {
            if available.iter().any(|c| c == extra)
                && !controllers(&file).iter().any(|c| c == extra)
            {
                std::fs::write(&file, format!("+{extra}"))
                    .map_err(|e| io_err(&file, format!("enabling {extra} for children: {e}")))?;
            }
        }
        if controllers(&file).iter().any(|c| c == "memory") {
            return Ok(());
        }
        if !available.iter().any(|c| c == "memory") {
            return Err(memory_not_delegated(cgroup));
        }
        std::fs::write(&file, "+memory").map_err(|e| CgroupError::MemoryNotDelegated {
            path: cgroup.dir(),
            reason: format!(
                "writing '+memory' to {} failed ({e}), so its children cannot carry a memory limit; delegate the cgroup with the memory controller (Delegate=yes) or pass a delegated --cgroup-root",
                file.display()
            ),
        })
    }

    fn set_swap_limit(
        &self,
        cgroup: &CgroupPath,
        memory: u64,
        total: u64,
    ) -> Result<(), CgroupError> {
        let file = cgroup.dir().join("memory.swap.max");
        if !file.exists() {
            return Err(CgroupError::SwapUnsupported(file));
        }
        std::fs::write(&file, total.saturating_sub(memory).to_string())
            .map_err(|e| io_err(&file, e))
    }

    fn oom_kills(&self, cgroup: &CgroupPath) -> u64 {
        read_keyed(&cgroup.dir().join("memory.events"), "oom_kill")
    }

    fn limit_file(&self) -> &'static str {
        "memory.max"
    }

    fn usage_file(&self) -> &'static str {
        "memory.current"
    }

    fn peak_file(&self) -> &'static str {
        "memory.peak"
    }

    fn set_cpu(&self, dir: &std::path::Path, cpu: &CpuLimits) -> Result<(), CgroupError> {
        if cpu.millicores.is_some() {
            write_file(dir, "cpu.max", &cpu.v2_max())?;
        }
        if let Some(weight) = cpu.v2_weight() {
            write_file(dir, "cpu.weight", &weight.to_string())?;
        }
        Ok(())
    }

    fn kill_all(&self, cgroup: &CgroupPath) -> Result<(), CgroupError> {
        let file = cgroup.dir().join("cgroup.kill");
        if file.exists() {
            return std::fs::write(&file, "1").map_err(|e| io_err(&file, e));
        }
        super::v1::V1.kill_all(cgroup)
    }
}
