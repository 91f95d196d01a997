//! Run last, after the whole suite (`scripts/test.sh` does): nothing the tests made may be
//! left on the host: no mount below a test's state directory, no test cgroup
//! (`hutch-t-*`) below the cgroup the suite ran in, no supervisor of a test container, no
//! test directory. Only the tests' own resources are looked at, so an agent the user runs on
//! the same host (`scripts/setup.sh` starts one) is not mistaken for a leak. It is ignored in
//! a plain `cargo test` run because tests running beside it would be seen as leaks.

use hutch_testkit as common;

use hutch_agent::cgroup::detect_own_cgroup;

/// Every test state directory starts with this.
const TEST_PREFIX: &str = "/var/tmp/hutch-test-";

fn hutch_cgroups(dir: &std::path::Path, found: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            if entry.file_name().to_string_lossy().starts_with("hutch-t-") {
                found.push(path.display().to_string());
            }
            hutch_cgroups(&path, found);
        }
    }
}

#[test]
#[ignore = "runs as the last step of scripts/test.sh, after every other test has ended"]
fn nothing_is_left_behind() {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let mounts: Vec<&str> = mountinfo
        .lines()
        .filter(|l| l.contains(TEST_PREFIX) || l.contains("/var/tmp/hutch-lab-t-"))
        .collect();
    assert!(mounts.is_empty(), "test mounts left: {mounts:#?}");

    let root = detect_own_cgroup().expect("cgroup");
    let mut cgroups = Vec::new();
    // cgroup v1 keeps the pids and devices controllers in trees of their own.
    for dir in root.dirs() {
        hutch_cgroups(&dir, &mut cgroups);
    }
    assert!(cgroups.is_empty(), "hutch cgroups left: {cgroups:#?}");

    let processes = common::hutch_processes();
    assert!(
        processes.is_empty(),
        "hutch supervisors left: {processes:#?}"
    );

    // Agent and controller processes started by tests (their flags name a test directory).
    let daemons: Vec<String> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| {
            let argv0 = c.split(' ').next().unwrap_or("");
            (argv0.ends_with("hutch-agent") || argv0.ends_with("hutch-controller"))
                && (c.contains(TEST_PREFIX) || c.contains("/var/tmp/hutch-lab-t-"))
        })
        .collect();
    assert!(daemons.is_empty(), "test daemons left: {daemons:#?}");

    let logs: Vec<String> = std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("hutch-test-") && n.ends_with(".log"))
        .collect();
    assert!(
        logs.is_empty(),
        "daemon logs of passed tests left: {logs:?}"
    );

    // Labs of the failure suite: network namespaces t-* and their state directories.
    let netns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let labs: Vec<&str> = netns.lines().filter(|l| l.starts_with("t-")).collect();
    assert!(labs.is_empty(), "lab network namespaces left: {labs:?}");

    // The bind root the test agents allow is shared by the tests that bind (each makes and
    // removes its own directory in it): empty, it is removed here; anything in it is a leak.
    let bind_root = std::path::Path::new(hutch_testkit::BIND_ROOT);
    if bind_root.exists() {
        let inside: Vec<String> = std::fs::read_dir(bind_root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(inside.is_empty(), "test bind directories left: {inside:?}");
        std::fs::remove_dir(bind_root).expect("removing the empty bind root");
    }
    let dirs: Vec<String> = std::fs::read_dir("/var/tmp")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            (n.starts_with("hutch-test-") && n != "hutch-test-cache")
                || n.starts_with("hutch-lab-t-")
        })
        .collect();
    assert!(dirs.is_empty(), "test state directories left: {dirs:?}");
    println!(
        "leak check: no hutch mount, cgroup, supervisor, test daemon, log or test directory left (cgroup root {})",
        root.dir().display()
    );
}
