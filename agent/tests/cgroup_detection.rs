//! Cgroup version detection on this host, and the cgroup v2 path as far as the host allows.
//!
//! On a pure v2 host (the VM of scripts/v2-suite.sh) a child cgroup without the memory
//! controller is refused as a root. On a hybrid host (memory on v1, an empty
//! cgroup2 at /sys/fs/cgroup/unified) the v2 memory path cannot run, because the kernel binds
//! the memory controller to one hierarchy only; this test then checks that hutch refuses a v2
//! root without the memory controller with an actionable message, and says so.

use std::path::PathBuf;

use hutch_agent::cgroup::{detect_own_cgroup, CgroupManager, CgroupPath, CgroupVersion};

#[test]
fn detects_the_memory_hierarchy_this_process_runs_in() {
    let own = detect_own_cgroup().expect("a memory cgroup");
    println!("memory cgroup: {own:?}");
    assert!(own.dir().is_dir());
    assert!(
        own.procs().contains(&std::process::id()),
        "this process is listed in {}",
        own.dir().display()
    );
}

#[test]
fn a_v2_root_without_the_memory_controller_is_refused_clearly() {
    let own = detect_own_cgroup().expect("a memory cgroup");
    if own.version == CgroupVersion::V2 {
        // Pure v2 (the VM suite, scripts/v2-suite.sh): a child of this process's cgroup,
        // which holds a process and so cannot hand controllers down, has no memory
        // controller; hutch must refuse it as a root, naming the controller.
        println!(
            "pure cgroup v2 host: checking the refusal of a child without the memory controller"
        );
        let probe = own.child("v2-refusal-probe");
        std::fs::create_dir(probe.dir()).expect("mkdir a child cgroup");
        let controllers =
            std::fs::read_to_string(probe.dir().join("cgroup.controllers")).unwrap_or_default();
        let refused = CgroupManager::init(Some(probe.clone()), "v2-refusal");
        let created = probe.child("hutch-v2-refusal").dir().exists();
        let _ = std::fs::remove_dir(probe.dir());
        assert!(
            !controllers.split_whitespace().any(|c| c == "memory"),
            "the probe has no memory controller: {controllers}"
        );
        let msg = refused.expect_err("no memory controller").to_string();
        println!("{msg}");
        assert!(msg.contains("memory controller is not delegated"), "{msg}");
        assert!(
            msg.contains("Delegate=yes"),
            "the message says how to fix it: {msg}"
        );
        assert!(!created, "nothing created on refusal");
        return;
    }
    let unified = PathBuf::from("/sys/fs/cgroup/unified");
    let controllers =
        std::fs::read_to_string(unified.join("cgroup.controllers")).unwrap_or_default();
    if !unified.join("cgroup.procs").exists()
        || controllers.split_whitespace().any(|c| c == "memory")
    {
        println!(
            "NOT RUN: no memory-less cgroup2 mount at {} on this host",
            unified.display()
        );
        return;
    }
    println!(
        "hybrid host: memory is on cgroup v1, so hutch's v2 memory path cannot run here; \
         checking the refusal of a memory-less v2 root instead"
    );
    let own_v2 = std::fs::read_to_string("/proc/self/cgroup")
        .expect("cgroup")
        .lines()
        .find_map(|l| {
            l.strip_prefix("0::")
                .map(|p| p.trim_start_matches('/').to_string())
        })
        .expect("a 0:: line");
    let root = CgroupPath {
        version: CgroupVersion::V2,
        mount: unified.clone(),
        relative: PathBuf::from(own_v2),
        pids_dir: None,
        devices_dir: None,
        cpu_dir: None,
    };
    let e =
        CgroupManager::init(Some(root.clone()), "v2-refusal").expect_err("no memory controller");
    let msg = e.to_string();
    println!("{msg}");
    assert!(msg.contains("memory controller is not delegated"), "{msg}");
    assert!(
        msg.contains("Delegate=yes"),
        "the message says how to fix it: {msg}"
    );
    assert!(
        !root.child("hutch-v2-refusal").dir().exists(),
        "nothing created on refusal"
    );
}
