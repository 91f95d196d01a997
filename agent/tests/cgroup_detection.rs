//! Cgroup version detection on this host, and the cgroup v2 path as far as the host allows.
//!
//! A cgroup v2 root without the memory controller (a child of this process's cgroup on a pure
//! v2 host such as the VM of scripts/v2-suite.sh; a child in the memory-less cgroup2 mount on
//! a hybrid host, where the kernel binds memory to v1) still starts an agent, which refuses
//! every container asking for a memory limit with FAILED_PRECONDITION naming the controller,
//! never running it unlimited.

use hutch_testkit as common;

use std::path::PathBuf;

use common::{TestHost, ROOTFS};
use hutch_agent::cgroup::{
    detect_own_cgroup, CgroupError, CgroupManager, CgroupPath, CgroupVersion, ResourceLimits,
};
use hutch_agent::runtime::{Runtime, RuntimeConfig};
use hutch_proto::v1;
use tonic::Code;

#[test]
fn detects_the_memory_hierarchy_this_process_runs_in() {
    let own = detect_own_cgroup().expect("a memory cgroup");
    println!("memory cgroup: {own:?}");
    assert!(own.dir().is_dir());
    // On cgroup v2 a runtime of this process (another test) may have moved it into the
    // root's leaf already.
    let listed = own.procs().contains(&std::process::id())
        || (own.version == CgroupVersion::V2
            && own
                .child(hutch_agent::cgroup::V2_AGENT_LEAF)
                .procs()
                .contains(&std::process::id()));
    assert!(listed, "this process is listed in {}", own.dir().display());
}

/// A cgroup v2 cgroup without the memory controller, made for one test (the caller removes
/// it): a child of the cgroup2 cgroup this process is in, which holds a process and so hands
/// no controller down (on a pure v2 host, the VM suite of scripts/v2-suite.sh, the leaf
/// `hutch-agent`; on a hybrid host, in the memory-less cgroup2 mount). `None` (said in the
/// output) where neither exists.
fn memoryless_v2_cgroup(name: &str) -> Option<CgroupPath> {
    let own = detect_own_cgroup().expect("a memory cgroup");
    let mount = if own.version == CgroupVersion::V2 {
        println!("pure cgroup v2 host: a child cgroup without the memory controller");
        // Settle where this process lives first, as every runtime of it does (moved into
        // ROOT/hutch-agent, memory delegated by ROOT): the leaf holding this process then
        // hands no controller down, now and while the test runs.
        let settled = CgroupManager::init(None, &common::unique("memless-settle"))
            .expect("a delegated cgroup v2 root");
        settled.remove_if_idle();
        own.mount
    } else {
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
            return None;
        }
        println!(
            "hybrid host: memory is on cgroup v1, so hutch's v2 memory path cannot run here; \
             using a child of this process's cgroup in the memory-less cgroup2 mount"
        );
        unified
    };
    // The cgroup2 cgroup this process is in (its "0::" line).
    let own_v2 = std::fs::read_to_string("/proc/self/cgroup")
        .expect("cgroup")
        .lines()
        .find_map(|l| {
            l.strip_prefix("0::")
                .map(|p| p.trim_start_matches('/').to_string())
        })
        .expect("a 0:: line");
    let parent = CgroupPath {
        version: CgroupVersion::V2,
        mount,
        relative: PathBuf::from(own_v2),
        pids_dir: None,
        devices_dir: None,
        cpu_dir: None,
    };
    let probe = parent.child(&common::unique(name));
    std::fs::create_dir(probe.dir()).expect("mkdir a child cgroup");
    let controllers =
        std::fs::read_to_string(probe.dir().join("cgroup.controllers")).unwrap_or_default();
    assert!(
        !controllers.split_whitespace().any(|c| c == "memory"),
        "the probe has no memory controller: {controllers}"
    );
    Some(probe)
}

/// Removes what [`memoryless_v2_cgroup`] made and the manager's cgroups below it, and checks
/// that nothing is left.
fn remove_probe(manager: Option<&CgroupManager>, probe: &CgroupPath) {
    if let Some(m) = manager {
        m.remove_if_idle();
    }
    let removed = std::fs::remove_dir(probe.dir());
    assert!(
        removed.is_ok(),
        "{} left (not empty?): {removed:?}",
        probe.dir().display()
    );
}

#[test]
fn a_v2_root_without_the_memory_controller_refuses_memory_limits_clearly() {
    let Some(probe) = memoryless_v2_cgroup("v2-memless") else {
        return;
    };
    let manager = CgroupManager::init(Some(probe.clone()), "v2-memless");
    let manager = match manager {
        Ok(m) => m,
        Err(e) => {
            remove_probe(None, &probe);
            panic!("an agent starts without the memory controller: {e}");
        }
    };
    let missing = manager.memory_missing().map(|e| e.to_string());
    let limited = ResourceLimits {
        memory_bytes: Some(1_000_000),
        ..Default::default()
    };
    let refused = manager.create_container("limited", limited);
    let refused_left = manager.container_path("limited").dir().exists();
    let unlimited = manager.create_container("unlimited", ResourceLimits::default());
    for cg in [&refused, &unlimited].into_iter().flatten() {
        let _ = cg.remove();
    }
    remove_probe(Some(&manager), &probe);

    let missing = missing.expect("the manager knows memory is missing");
    println!("{missing}");
    assert!(
        missing.contains("memory controller is not delegated"),
        "{missing}"
    );
    assert!(
        missing.contains("Delegate=yes"),
        "the message says how to fix it: {missing}"
    );
    let e = refused.expect_err("a memory limit is refused, not ignored");
    assert!(matches!(e, CgroupError::MemoryNotDelegated { .. }), "{e:?}");
    assert_eq!(e.to_string(), missing);
    assert!(!refused_left, "no cgroup is made for a refused container");
    unlimited.expect("a container without a memory limit still gets a cgroup");
}

/// What an RPC caller sees: RunContainer with a memory limit on such a node is
/// FAILED_PRECONDITION naming the controller, and leaves nothing behind; without a limit the
/// container runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_container_with_a_memory_limit_on_a_memoryless_node_is_failed_precondition() {
    let host = TestHost::new("memless-rpc").await;
    let Some(probe) = memoryless_v2_cgroup("memless-rpc") else {
        return;
    };
    let state_dir = host.state_dir.join("memless-node");
    let runtime = Runtime::new(RuntimeConfig {
        rootfs_dir: Some(host.runtime.store().root().to_path_buf()),
        supervisor_bin: Some(common::supervisor_bin()),
        cgroup_root: Some(probe.clone()),
        instance: "memless".into(),
        ..RuntimeConfig::new(&state_dir)
    });
    let runtime = match runtime {
        Ok(r) => std::sync::Arc::new(r),
        Err(e) => {
            remove_probe(None, &probe);
            panic!("the agent starts without the memory controller: {e}");
        }
    };
    let agent = host.serve(Some(runtime.clone()), 100).await;
    let mut client = agent.client.clone();
    let spec = |memory: Option<u64>| v1::ContainerSpec {
        rootfs: ROOTFS.into(),
        command: vec!["/bin/true".into()],
        memory_limit_bytes: memory,
        ..Default::default()
    };
    let refused = client
        .run_container(v1::RunContainerRequest {
            name: "limited".into(),
            spec: Some(spec(Some(1_000_000))),
        })
        .await;
    let limited_left =
        runtime.get("limited").is_ok() || state_dir.join("containers/limited").exists();
    let unlimited = client
        .run_container(v1::RunContainerRequest {
            name: "unlimited".into(),
            spec: Some(spec(None)),
        })
        .await;
    let mut unlimited_exit = None;
    if let Ok(answer) = &unlimited {
        let id = answer.get_ref().id.clone();
        unlimited_exit = runtime.wait(&id).await.ok().map(|c| c.state.exit_code);
        let _ = runtime.remove(&id, true).await;
    }
    agent.stop().await;
    let manager = runtime.cgroups().clone();
    drop(runtime);
    remove_probe(Some(&manager), &probe);
    let _ = std::fs::remove_dir_all(&state_dir);

    let status = refused.expect_err("a memory limit is refused");
    println!("{}: {}", status.code(), status.message());
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("memory controller"), "{status:?}");
    assert!(!limited_left, "nothing is left of the refused container");
    unlimited.expect("a container without a memory limit runs");
    assert_eq!(unlimited_exit, Some(Some(0)), "it ran /bin/true to the end");
}

/// Every process of a container, its init and the children it forked, goes in one
/// `kill_all` (cgroup v2: one write to `cgroup.kill`, kernel 5.14+; v1: SIGKILL to each
/// listed pid until the list is empty), and the container ends killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_cgroup_is_killed_at_once() {
    let host = TestHost::new("cgkill").await;
    let spec = host.spec(&["sh", "-c", "sleep 600 & sleep 600 & sleep 600 & wait"]);
    let info = host.runtime.run("k", spec).await.expect("run");
    let path = info.cgroup.clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while path.procs().len() < 4 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let before = path.procs();
    let one_write = path.dir().join("cgroup.kill").exists();
    println!(
        "{} processes in {}; cgroup.kill: {one_write}",
        before.len(),
        path.dir().display()
    );
    let killed = hutch_agent::cgroup::ContainerCgroup::open(path.clone()).kill_all();
    let after = path.procs();
    let done = host.runtime.wait("k").await.expect("wait");
    println!("{:?}", done.state);
    assert!(before.len() >= 4, "init and three children: {before:?}");
    if path.version == CgroupVersion::V2 {
        assert!(one_write, "cgroup v2 on this kernel has cgroup.kill");
    }
    killed.expect("kill_all");
    assert!(after.is_empty(), "left: {after:?}");
    assert_eq!(done.state.signal, Some(libc::SIGKILL), "{:?}", done.state);
    host.runtime.remove("k", false).await.expect("remove");
    host.assert_nothing_left("k");
}

/// The cgroups outside the delegated root: every directory, with its `cgroup.subtree_control`
/// (v2) — what hutch must never create or change.
fn outside_the_root(root: &CgroupPath) -> Vec<(PathBuf, String)> {
    fn walk(dir: &std::path::Path, skip: &std::path::Path, out: &mut Vec<(PathBuf, String)>) {
        if dir == skip {
            return;
        }
        let control =
            std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
        out.push((dir.to_path_buf(), control.trim().to_string()));
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&entry.path(), skip, out);
            }
        }
    }
    let mut out = Vec::new();
    // v1's pids companion is PIDS_MOUNT/RELATIVE: its mount is the ancestor below which
    // the root's relative path leads to it.
    let pids = root.pids_dir.as_ref().and_then(|dir| {
        dir.ancestors()
            .find(|a| a.join(&root.relative) == *dir)
            .map(|mount| (mount.to_path_buf(), dir.clone()))
    });
    for (mount, dir) in std::iter::once((root.mount.clone(), root.dir())).chain(pids) {
        walk(&mount, &dir, &mut out);
    }
    out.sort();
    out
}

/// hutch writes nothing outside the cgroup it was given: running a container with memory and
/// pids limits neither creates a cgroup outside the delegated root (in the memory hierarchy
/// and, on v1, the pids one) nor changes the controllers any cgroup there hands down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_written_outside_the_delegated_root() {
    let host = TestHost::new("outside").await;
    let root = host.runtime.cgroups().root().clone();
    let before = outside_the_root(&root);
    let mut spec = host.spec(&["sh", "-c", "echo hi"]);
    spec.memory_limit_bytes = Some(32 << 20);
    spec.security.pids_limit = Some(64);
    let done = host.run_to_end("o", spec).await;
    let after = outside_the_root(&root);
    println!(
        "{} cgroups outside {} checked; container {:?}",
        before.len(),
        root.dir().display(),
        done.state.status
    );
    if root.version == CgroupVersion::V2 {
        // The agent's own place: moved into the root's leaf, the root itself empty (so it
        // can hand controllers down).
        let leaf = root.child(hutch_agent::cgroup::V2_AGENT_LEAF);
        assert!(
            leaf.procs().contains(&std::process::id()),
            "the agent lives in {}",
            leaf.dir().display()
        );
        assert_eq!(
            root.procs(),
            Vec::<u32>::new(),
            "nothing in the root itself"
        );
    }
    let before_paths: std::collections::BTreeMap<_, _> = before.into_iter().collect();
    for (dir, control) in &after {
        match before_paths.get(dir) {
            Some(old) => assert_eq!(old, control, "{}: subtree_control changed", dir.display()),
            None => {
                let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
                assert!(
                    !name.is_some_and(|n| n.starts_with("hutch")
                        || n.starts_with("ctr-")
                        || n == "supervisors"),
                    "hutch made {} outside its root",
                    dir.display()
                );
            }
        }
    }
    assert_eq!(done.state.exit_code, Some(0), "{:?}", done.state);
}

/// cgroup v2: a parent that delegates pids but not memory still gets its pids limits (the
/// default fork-bomb limit included) while memory limits are refused.
#[test]
fn without_memory_the_pids_controller_is_still_handed_down() {
    let own = detect_own_cgroup().expect("a memory cgroup");
    if own.version != CgroupVersion::V2 {
        println!("NOT RUN here (hybrid host: no pids controller in the cgroup2 mount); the VM suite runs it");
        return;
    }
    let settled = CgroupManager::init(None, &common::unique("pids-settle")).expect("settle");
    settled.remove_if_idle();
    // A parent handing down pids only, and below it the root given to hutch.
    let parent = own.child(&common::unique("pids-only"));
    std::fs::create_dir(parent.dir()).expect("mkdir parent");
    let handed = std::fs::write(parent.dir().join("cgroup.subtree_control"), "+pids");
    let root = parent.child("root");
    let made = std::fs::create_dir(root.dir());
    let manager = CgroupManager::init(Some(root.clone()), "pids-only");
    let (missing, has_pids) = match &manager {
        Ok(m) => (m.memory_missing().map(|e| e.to_string()), m.has_pids()),
        Err(_) => (None, false),
    };
    if let Ok(m) = &manager {
        m.remove_if_idle();
    }
    let _ = std::fs::remove_dir(root.dir());
    let _ = std::fs::remove_dir(parent.dir());
    handed.expect("+pids in the parent's subtree_control");
    made.expect("mkdir root");
    let manager = manager.expect("the agent starts without memory");
    println!("memory: {missing:?}; pids handed down: {has_pids}");
    assert!(missing.is_some_and(|m| m.contains("memory controller is not delegated")));
    assert!(has_pids, "pids limits still work");
    assert!(!parent.dir().exists(), "nothing left");
    drop(manager);
}
