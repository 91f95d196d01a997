//! Escape attempts from inside a container with the default settings (no user namespace):
//! every one must fail, and the host must be unchanged after. Plus a fork bomb that hits
//! the pids limit while another container keeps working, and `--privileged` as the way
//! back for containers that manage the host.
//!
//! Raw system calls are made with perl's `syscall` (perl-base is in every Debian minbase),
//! with harmless arguments: were a call let through, it would fail with EFAULT or EINVAL,
//! never with EPERM, so "EPERM" proves the refusal.

use hutch_testkit as common;

use common::{unique, TestHost};
use hutch_agent::runtime::state::Status;
use hutch_agent::security::Security;

/// The host's view that no attempt may change.
/// (Not the mount table: tests running in parallel change it.)
#[derive(Debug, PartialEq)]
struct HostView {
    hostname: String,
    domainname: String,
}

fn host_view() -> HostView {
    HostView {
        hostname: nix::unistd::gethostname()
            .expect("hostname")
            .to_string_lossy()
            .into_owned(),
        domainname: std::fs::read_to_string("/proc/sys/kernel/domainname").unwrap_or_default(),
    }
}

/// Runs `script` under `sh -c` in a default container; returns its stdout.
async fn attempt(host: &TestHost, name: &str, script: &str) -> String {
    let id = unique(name);
    let info = host.run_to_end(&id, host.spec(&["sh", "-c", script])).await;
    let out = host.stdout(&id);
    println!("--- {name} (exit {:?}):\n{out}", info.state.exit_code);
    host.runtime.remove(&id, true).await.expect("remove");
    host.assert_nothing_left(&id);
    out
}

/// Lines `NAME ERRNO` for each system call, called with zero arguments through perl.
fn syscall_script(calls: &[(&str, i64)]) -> String {
    let args: Vec<String> = calls.iter().map(|(n, nr)| format!("{n}:{nr}")).collect();
    format!(
        "perl -e 'for (@ARGV) {{ my ($n, $nr) = split /:/; $! = 0; syscall($nr, 0, 0, 0, 0, 0); print \"$n \", $!+0, \"\\n\" }}' {}",
        args.join(" ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_attempts_fail_and_leave_the_host_unchanged() {
    let host = TestHost::new("escape").await;
    let before = host_view();

    // Mounting anything: procfs, a bind of /, a tmpfs.
    let out = attempt(
        &host,
        "mount",
        "mount -t proc proc /mnt && echo PROC-MOUNTED; mount --bind / /mnt && echo BIND-MOUNTED; mount -t tmpfs t /mnt && echo TMPFS-MOUNTED; echo done",
    )
    .await;
    assert!(out.contains("done") && !out.contains("MOUNTED"), "{out}");

    // Kernel modules, kexec, reboot, handle-based open (shocker), BPF, perf, the keyring,
    // namespace games, the clock: refused with EPERM, by capability and by seccomp.
    let calls = [
        ("init_module", libc::SYS_init_module),
        ("finit_module", libc::SYS_finit_module),
        ("delete_module", libc::SYS_delete_module),
        ("kexec_load", libc::SYS_kexec_load),
        ("reboot", libc::SYS_reboot),
        ("open_by_handle_at", libc::SYS_open_by_handle_at),
        ("bpf", libc::SYS_bpf),
        ("perf_event_open", libc::SYS_perf_event_open),
        ("keyctl", libc::SYS_keyctl),
        ("unshare", libc::SYS_unshare),
        ("setns", libc::SYS_setns),
        ("mount", libc::SYS_mount),
        ("pivot_root", libc::SYS_pivot_root),
        ("settimeofday", libc::SYS_settimeofday),
        ("swapon", libc::SYS_swapon),
    ];
    let out = attempt(&host, "syscalls", &syscall_script(&calls)).await;
    for (name, _) in calls {
        assert!(
            out.lines().any(|l| l == format!("{name} {}", libc::EPERM)),
            "{name} must be refused with EPERM: {out}"
        );
    }

    // /proc/kcore is masked, /proc/sysrq-trigger and /proc/sys read-only.
    let kcore_on_host = std::path::Path::new("/proc/kcore").exists();
    let sysrq_on_host = std::path::Path::new("/proc/sysrq-trigger").exists();
    let out = attempt(
        &host,
        "proc",
        "echo kcore-bytes=$(head -c 4096 /proc/kcore 2>/dev/null | wc -c); \
         echo keys-bytes=$(cat /proc/keys 2>/dev/null | wc -c); \
         (echo h > /proc/sysrq-trigger) 2>/dev/null && echo SYSRQ-WRITTEN; \
         (echo hijacked > /proc/sys/kernel/domainname) 2>/dev/null && echo SYSCTL-WRITTEN; \
         grep -c '' /proc/self/mountinfo >/dev/null; echo done",
    )
    .await;
    assert!(
        out.contains("kcore-bytes=0"),
        "kcore must read empty: {out}"
    );
    assert!(out.contains("keys-bytes=0"), "keys must read empty: {out}");
    assert!(!out.contains("SYSRQ-WRITTEN"), "{out}");
    assert!(!out.contains("SYSCTL-WRITTEN"), "{out}");
    if !kcore_on_host {
        println!("note: this kernel has no /proc/kcore; the mask is checked where it exists");
    }
    if !sysrq_on_host {
        println!("note: this kernel has no /proc/sysrq-trigger (CONFIG_MAGIC_SYSRQ off)");
    }

    // The classic chroot escape: chroot into a subdirectory, climb out, chroot ".". With
    // pivot_root and the old root detached there is nothing above the container's root.
    let marker = host.container_dir("marker-that-only-the-host-has");
    std::fs::create_dir_all(&marker).expect("marker");
    let out = attempt(
        &host,
        "chroot",
        &format!(
            "perl -e 'mkdir \"x\"; chroot \"x\" or die \"chroot: $!\"; for (1..64) {{ chdir \"..\" }} chroot \".\" or die \"chroot2: $!\"; print -e \"{}\" ? \"ESCAPED\\n\" : \"contained\\n\"'",
            marker.display()
        ),
    )
    .await;
    std::fs::remove_dir_all(&marker).expect("remove marker");
    assert!(
        out.contains("contained") && !out.contains("ESCAPED"),
        "{out}"
    );

    // unshare -U to regain capabilities in a user namespace of its own.
    let out = attempt(
        &host,
        "userns",
        "unshare -Ur sh -c 'mount -t tmpfs t /mnt && echo MOUNTED-IN-USERNS' 2>&1; echo unshare=$?",
    )
    .await;
    assert!(
        !out.contains("MOUNTED") && !out.contains("unshare=0"),
        "{out}"
    );

    // ptrace of a host process: the agent's (this test's) pid does not even exist inside,
    // and CAP_SYS_PTRACE is gone.
    let me = std::process::id();
    let out = attempt(
        &host,
        "ptrace",
        &format!(
            "perl -e '$! = 0; my $r = syscall({}, 16, {me}, 0, 0); print \"ptrace $r \", $!+0, \"\\n\"'",
            libc::SYS_ptrace
        ),
    )
    .await;
    assert!(out.contains("ptrace -1 "), "{out}");
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    assert!(
        status.contains("TracerPid:\t0"),
        "the host process is not traced"
    );

    // Device nodes: no CAP_MKNOD, so no raw access to the host's disks.
    let out = attempt(
        &host,
        "mknod",
        "mknod /tmp/disk b 253 0 2>&1 && echo MADE; echo done",
    )
    .await;
    assert!(!out.contains("MADE"), "{out}");

    // What the process is left with.
    let out = attempt(
        &host,
        "status",
        "grep -E 'CapBnd|CapAmb|NoNewPrivs|Seccomp:' /proc/self/status",
    )
    .await;
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");
    assert!(out.contains("CapAmb:\t0000000000000000"), "{out}");
    let bounding = out
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:\t"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .expect("CapBnd");
    let sys_admin = 1u64 << 21;
    let sys_module = 1u64 << 16;
    assert_eq!(bounding & (sys_admin | sys_module), 0, "{out}");

    assert_eq!(host_view(), before, "the host changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_stays_inside_its_pids_limit() {
    let host = TestHost::new("forkbomb").await;
    if !host.runtime.cgroups().has_pids() {
        panic!("no pids cgroup controller is available to the agent here: the limit cannot be tested (or enforced)");
    }
    let bomb = unique("bomb");
    let mut spec = host.spec(&["sh", "-c", "b() { b | b & }; b; sleep 60"]);
    spec.security = Security {
        pids_limit: Some(64),
        ..Default::default()
    };
    host.runtime.run(&bomb, spec).await.expect("run bomb");
    // Another container works meanwhile.
    let other = unique("neighbour");
    let info = host
        .run_to_end(&other, host.spec(&["sh", "-c", "echo alive"]))
        .await;
    assert_eq!(info.state.exit_code, Some(0));
    assert_eq!(host.stdout(&other), "alive\n");
    // The bomb reaches its limit in well under a second here; a slow machine (the
    // software-emulated v2 VM) may need longer than the neighbour took.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let pids = loop {
        let running = host.runtime.get(&bomb).expect("get");
        let pids = running.pids.expect("pids figures");
        assert!(pids.current <= 64, "{pids:?}");
        if pids.limit_hits > 0 || std::time::Instant::now() > deadline {
            break pids;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    println!("bomb: {pids:?}");
    assert_eq!(pids.limit, Some(64));
    assert!(pids.limit_hits > 0, "the limit was reached: {pids:?}");
    host.runtime
        .stop(&bomb, Some(std::time::Duration::ZERO))
        .await
        .expect("stop the bomb");
    let ended = host.runtime.wait(&bomb).await.expect("wait");
    assert_ne!(ended.state.status, Status::Running);
    assert!(
        ended.pids.is_some_and(|p| p.limit_hits > 0),
        "the record keeps why: {:?}",
        ended.pids
    );
    let status = hutch_agent::service::reporter::summary(&ended);
    println!("status: {status}");
    assert!(
        status.contains("forks refused at the pids limit (64)"),
        "{status}"
    );
    for id in [&bomb, &other] {
        host.runtime.remove(id, true).await.expect("remove");
        host.assert_nothing_left(id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_and_overrides_give_back_what_they_name() {
    let host = TestHost::new("privileged").await;
    let id = unique("priv");
    let mut spec = host.spec(&[
        "sh",
        "-c",
        "grep -E 'NoNewPrivs|Seccomp:' /proc/self/status; mount -t tmpfs t /mnt && echo mounted",
    ]);
    spec.security.privileged = true;
    let info = host.run_to_end(&id, spec).await;
    let out = host.stdout(&id);
    println!("{out}");
    assert_eq!(info.state.exit_code, Some(0), "{out}");
    assert!(
        out.contains("NoNewPrivs:\t0") && out.contains("Seccomp:\t0"),
        "{out}"
    );
    assert!(out.contains("mounted"), "{out}");
    host.runtime.remove(&id, true).await.expect("remove");
    host.assert_nothing_left(&id);

    // seccomp unconfined alone: the filter is gone, the capabilities still are.
    let id = unique("unconfined");
    let mut spec = host.spec(&["sh", "-c", "grep 'Seccomp:' /proc/self/status"]);
    spec.security.seccomp = hutch_agent::security::Seccomp::Unconfined;
    host.run_to_end(&id, spec).await;
    assert!(host.stdout(&id).contains("Seccomp:\t0"));
    host.runtime.remove(&id, true).await.expect("remove");

    // A capability the agent does not hold itself cannot be granted: FAILED_PRECONDITION
    // with the reason (this machine's root lacks CAP_SYS_RESOURCE; where it has every
    // capability there is nothing to refuse, and the test says so).
    let held = caps::read(None, caps::CapSet::Permitted).expect("caps");
    match caps::runtime::thread_all_supported()
        .into_iter()
        .find(|c| !held.contains(c))
    {
        Some(missing) => {
            let mut spec = host.spec(&["true"]);
            spec.security.cap_add = vec![missing.to_string()];
            let err = host
                .runtime
                .run(&unique("unheld"), spec)
                .await
                .expect_err("must refuse");
            println!("{err}");
            assert_eq!(
                err.class(),
                hutch_agent::runtime::ErrorClass::FailedPrecondition,
                "{err}"
            );
            assert!(err.to_string().contains("not held by the agent"), "{err}");
        }
        None => println!("note: this agent holds every capability; nothing to refuse"),
    }

    // An unknown capability is refused before anything starts.
    let mut spec = host.spec(&["true"]);
    spec.security.cap_add = vec!["SYS_WIZARD".into()];
    let err = host
        .runtime
        .run(&unique("badcap"), spec)
        .await
        .expect_err("must refuse");
    assert!(err.to_string().contains("SYS_WIZARD"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seccomp_profile_replaces_the_default_filter() {
    let host = TestHost::new("seccomp-profile").await;
    // Docker's format: everything allowed but making directories, which fails with EACCES.
    let profile = r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64"],
        "syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":13}]}"#;
    let id = unique("profile");
    let mut spec = host.spec(&[
        "sh",
        "-c",
        "grep 'Seccomp:' /proc/self/status; mkdir /tmp/made 2>&1; echo mkdir=$?; touch /tmp/file && echo touched",
    ]);
    spec.security.seccomp_profile = Some(profile.into());
    let info = host.run_to_end(&id, spec).await;
    let out = host.stdout(&id);
    println!("{out}");
    assert_eq!(info.state.exit_code, Some(0), "{out}");
    assert!(out.contains("Seccomp:\t2"), "a filter is installed: {out}");
    assert!(
        out.contains("Permission denied") && out.contains("mkdir=1"),
        "{out}"
    );
    assert!(
        out.contains("touched"),
        "what the profile allows still works: {out}"
    );
    host.runtime.remove(&id, true).await.expect("remove");
    host.assert_nothing_left(&id);

    // A profile hutch cannot honour is refused before anything starts, naming the problem.
    let mut spec = host.spec(&["true"]);
    spec.security.seccomp_profile = Some(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["open"],"action":"SCMP_ACT_ERRNO","args":[{"index":1,"value":2,"op":"SCMP_CMP_EQ"}]}]}"#.into(),
    );
    let err = host
        .runtime
        .run(&unique("badprofile"), spec)
        .await
        .expect_err("must refuse");
    println!("{err}");
    assert_eq!(
        err.class(),
        hutch_agent::runtime::ErrorClass::InvalidArgument,
        "{err}"
    );
    assert!(err.to_string().contains("args"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_can_run_as_a_non_root_user() {
    let host = TestHost::new("run-as").await;
    let id = unique("runas");
    let mut spec = host.spec(&["sleep", "60"]);
    spec.security.run_as_user = Some(1000);
    spec.security.run_as_group = Some(1001);
    let info = host.runtime.run(&id, spec).await.expect("run");
    let pid = info.state.pid.expect("pid");
    // The host sees the init as that user (no user namespace: the same numbers).
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    assert!(status.contains("Uid:\t1000\t1000\t1000\t1000"), "{status}");
    assert!(status.contains("Gid:\t1001\t1001\t1001\t1001"), "{status}");
    assert!(status.contains("CapEff:\t0000000000000000"), "{status}");
    assert!(status.contains("CapPrm:\t0000000000000000"), "{status}");
    // Every exec runs as the same user, with no capabilities: root's files stay root's.
    let out = host
        .runtime
        .exec(
            &id,
            vec![
                "sh".into(),
                "-c".into(),
                "id -u; id -g; id -G; touch /etc/owned 2>&1; echo rc=$?; touch /tmp/mine && echo tmp-ok".into(),
            ],
        )
        .await
        .expect("exec");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    println!("{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(&lines[..3], ["1000", "1001", "1001"], "{text}");
    assert!(
        text.contains("Permission denied") && text.contains("rc=1"),
        "{text}"
    );
    assert!(text.contains("tmp-ok"), "{text}");
    host.runtime.remove(&id, true).await.expect("remove");
    host.assert_nothing_left(&id);
}

/// The audit's way around a denied `unshare`: `clone` with namespace flags (a new user
/// namespace holds every capability inside it, enough to make veth devices). Refused with
/// EPERM by default, `clone3` answers ENOSYS (libc falls back to `clone`), a plain fork
/// still works; a container that keeps `CAP_SYS_ADMIN` may make namespaces, as under Docker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clone_with_namespace_flags_is_refused_unless_sys_admin_is_kept() {
    let host = TestHost::new("clone-ns").await;
    // clone(flags | SIGCHLD, no stack): the child (0) reports and exits; the parent prints
    // what it got and waits.
    let clone = |label: &str, flags: u64| {
        format!(
            "perl -e '$! = 0; my $r = syscall({nr}, {flags} | 17, 0, 0, 0, 0); if ($r == 0) {{ exit 0 }} waitpid($r, 0) if $r > 0; print \"{label} \", ($r > 0 ? \"ok\" : $!+0), \"\\n\"';",
            nr = libc::SYS_clone,
        )
    };
    let flags = [
        ("newuser", libc::CLONE_NEWUSER as u64),
        ("newnet", libc::CLONE_NEWNET as u64),
        ("newns", libc::CLONE_NEWNS as u64),
        ("newpid", libc::CLONE_NEWPID as u64),
        ("newuts", libc::CLONE_NEWUTS as u64),
        ("newipc", libc::CLONE_NEWIPC as u64),
        ("newcgroup", libc::CLONE_NEWCGROUP as u64),
        ("newtime", 0x80),
        (
            "all",
            (libc::CLONE_NEWUSER | libc::CLONE_NEWNET | libc::CLONE_NEWNS) as u64,
        ),
    ];
    let mut script: String = flags.iter().map(|(l, f)| clone(l, *f)).collect();
    script.push_str(&clone("fork", 0));
    script.push_str(&format!(
        "perl -e '$! = 0; syscall({}, 0, 0); print \"clone3 \", $!+0, \"\\n\"'; unshare -Ur true 2>/dev/null && echo UNSHARED; echo done",
        libc::SYS_clone3
    ));
    let out = attempt(&host, "clone-ns", &script).await;
    assert!(out.contains("done"), "{out}");
    for (label, _) in flags {
        assert!(
            out.lines().any(|l| l == format!("{label} {}", libc::EPERM)),
            "clone with {label} must be refused with EPERM: {out}"
        );
    }
    assert!(out.contains("fork ok"), "a plain fork must work: {out}");
    assert!(
        out.contains(&format!("clone3 {}", libc::ENOSYS)),
        "clone3 must answer ENOSYS: {out}"
    );
    assert!(!out.contains("UNSHARED"), "{out}");

    // Kept CAP_SYS_ADMIN: namespaces may be made (the container's own business).
    let id = unique("clone-ns-admin");
    let mut spec = host.spec(&["sh", "-c", &clone("newuser", libc::CLONE_NEWUSER as u64)]);
    spec.security.cap_add = vec!["SYS_ADMIN".into()];
    host.run_to_end(&id, spec).await;
    let out = host.stdout(&id);
    assert!(out.contains("newuser ok"), "{out}");
    host.runtime.remove(&id, true).await.expect("remove");
    host.assert_nothing_left(&id);
}

/// A descriptor the agent holds without close-on-exec (a shell's `9>>file` when it started
/// the agent, say) reaches neither a container's command nor an exec into it: only 0-2 are
/// open when the command starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptors_of_the_agent_reach_no_container() {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    use std::os::fd::AsRawFd;
    let host = TestHost::new("fds").await;
    let path = std::path::PathBuf::from(format!("/var/tmp/{}.host-file", unique("fds")));
    std::fs::write(&path, "host-secret\n").expect("host file");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .open(&path)
        .expect("open host file");
    // Inheritable, as a descriptor a shell hands to the programs it starts.
    fcntl(&file, FcntlArg::F_SETFD(FdFlag::empty())).expect("clear close-on-exec");
    let fd = file.as_raw_fd();
    // Through /proc/self/fd: dash's redirections take one-digit descriptors only.
    let probe =
        format!("echo leaked >> /proc/self/fd/{fd}; cat /proc/self/fd/{fd}; echo fds: $(ls /proc/self/fd | tr '\\n' ' ')");
    let check = |how: &str, out: &str| {
        println!("--- {how}:\n{out}");
        assert!(
            !out.contains("host-secret"),
            "{how} read the host file: {out}"
        );
        assert!(out.contains("fds: 0 1 2 3\n"), "{how}: {out}");
    };

    let id = unique("fds-init");
    host.run_to_end(&id, host.spec(&["sh", "-c", &probe])).await;
    check("the container's command", &host.stdout(&id));
    host.runtime.remove(&id, true).await.expect("remove");
    host.assert_nothing_left(&id);

    let id = unique("fds-exec");
    host.runtime
        .run(&id, host.spec(&["sleep", "infinity"]))
        .await
        .expect("run");
    let exec = host
        .runtime
        .exec(&id, vec!["sh".into(), "-c".into(), probe.clone()])
        .await
        .expect("exec");
    check("an exec", &String::from_utf8_lossy(&exec.stdout));
    host.runtime.remove(&id, true).await.expect("remove");
    host.assert_nothing_left(&id);

    drop(file);
    let after = std::fs::read_to_string(&path).expect("host file");
    let _ = std::fs::remove_file(&path);
    assert_eq!(after, "host-secret\n", "a container wrote to the host file");
}

/// The audit's chroot escape from a container that shares the host's mount namespace
/// (`--ns pid`): chroot into a subdirectory, climb out with `..`, chroot to what was reached,
/// write a file on the host. The container keeps no CAP_SYS_CHROOT then, so the first chroot
/// fails and the host file is never made; with its own mount namespace nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_sharing_the_mount_namespace_cannot_chroot_out() {
    let host = TestHost::new("chroot-out").await;
    let marker = std::path::PathBuf::from(format!("/var/tmp/{}.escaped", unique("chroot-out")));
    let script = format!(
        "perl -e 'mkdir \"/esc\"; chroot \"/esc\" or die \"chroot: $!\\n\"; chdir \"..\" for 1..64; chroot \".\" or die \"second chroot: $!\\n\"; open(my $f, \">\", \"{}\") or die \"open: $!\\n\"; print \"ESCAPED\\n\"' 2>&1; grep CapEff /proc/self/status",
        marker.display()
    );
    let id = unique("chroot-out");
    let mut spec = host.spec(&["sh", "-c", &script]);
    spec.namespaces = vec![hutch_agent::spec::Namespace::Pid];
    assert!(
        spec.host_exposure()
            .iter()
            .any(|w| w.starts_with("no mount namespace")),
        "{:?}",
        spec.host_exposure()
    );
    host.run_to_end(&id, spec).await;
    let out = host.stdout(&id);
    println!("{out}");
    let escaped = marker.exists();
    let _ = std::fs::remove_file(&marker);
    assert!(
        !escaped,
        "the container wrote {} on the host: {out}",
        marker.display()
    );
    assert!(!out.contains("ESCAPED"), "{out}");
    assert!(out.contains("chroot: Operation not permitted"), "{out}");
    host.runtime.remove(&id, true).await.expect("remove");
    host.assert_nothing_left(&id);
}

/// Device nodes in the rootfs or the writable layer open nothing (the audit opened a loop
/// device read-write from a rootfs that held its node): the layer is mounted `nodev`, and
/// where the v1 devices controller is, the container's device cgroup allows only hutch's
/// own `/dev` entries, so not even a node can be made for anything else. With MKNOD given
/// back, a container makes a node of /dev/null's numbers (which the cgroup allows) and of
/// the first loop device (which it does not); neither opens. hutch's /dev works as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_nodes_in_the_container_open_nothing() {
    let host = TestHost::new("nodev").await;
    let id = unique("nodev");
    let mut spec = host.spec(&[
        "sh",
        "-c",
        "mknod /null-copy c 1 3 && echo made-null; \
         (echo x > /null-copy) 2>/dev/null && echo WROTE-NULL-COPY; \
         (mknod /loop-copy b 7 0 && echo made-loop) 2>&1; \
         (head -c 1 /loop-copy >/dev/null) 2>/dev/null && echo READ-LOOP; \
         echo x > /dev/null && head -c 4 /dev/zero | wc -c && echo dev-works",
    ]);
    spec.security.cap_add = vec!["MKNOD".into()];
    host.run_to_end(&id, spec).await;
    let out = host.stdout(&id);
    println!("{out}");
    assert!(out.contains("made-null"), "{out}");
    assert!(!out.contains("WROTE-NULL-COPY"), "{out}");
    assert!(!out.contains("READ-LOOP"), "{out}");
    assert!(out.contains("dev-works"), "{out}");
    let devices_cgroup = host.runtime.cgroups().instance().devices_dir.is_some();
    if devices_cgroup {
        assert!(
            !out.contains("made-loop") && out.contains("Operation not permitted"),
            "the device cgroup must refuse the loop device's node: {out}"
        );
    } else {
        println!("note: no v1 devices controller here; nodev alone is checked");
    }
    host.runtime.remove(&id, true).await.expect("remove");
    host.assert_nothing_left(&id);
}
