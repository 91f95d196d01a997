//! Exit codes and signals propagate; stop escalates to SIGKILL after the grace period; the
//! supervisor outlives the process that started the container and is not charged to its
//! cgroup; logs keep stdout and stderr apart.

use hutch_testkit as common;

use std::time::{Duration, Instant};

use common::TestHost;
use hutch_agent::runtime::logs::Stream;
use hutch_agent::runtime::state::Status;
use hutch_agent::spec::Namespace;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_and_signals_propagate() {
    let host = TestHost::new("exitcodes").await;
    let code = host
        .run_to_end("code", host.spec(&["sh", "-c", "exit 42"]))
        .await;
    assert_eq!(
        (code.state.status, code.state.exit_code, code.state.signal),
        (Status::Exited, Some(42), None)
    );

    // PID 1 of a pid namespace ignores signals it has no handler for, so this one shares
    // the host's pid namespace to let sh kill itself.
    let mut spec = host.spec(&["sh", "-c", "kill -USR1 $$; sleep 5"]);
    spec.namespaces = vec![Namespace::Ipc, Namespace::Uts, Namespace::Mount];
    let sig = host.run_to_end("sig", spec).await;
    assert_eq!(
        (sig.state.exit_code, sig.state.signal),
        (None, Some(libc::SIGUSR1))
    );

    host.runtime
        .run("killed", host.spec(&["sleep", "60"]))
        .await
        .expect("run");
    host.runtime.kill("killed", libc::SIGKILL).expect("kill");
    let killed = host.runtime.wait("killed").await.expect("wait");
    assert_eq!(killed.state.signal, Some(libc::SIGKILL));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_escalates_to_sigkill_after_the_grace_period() {
    let host = TestHost::new("stop").await;
    // `sleep` as PID 1 has no SIGTERM handler, so the kernel ignores SIGTERM for it.
    host.runtime
        .run("stubborn", host.spec(&["sleep", "60"]))
        .await
        .expect("run");
    let started = Instant::now();
    let stopped = host
        .runtime
        .stop("stubborn", Some(Duration::from_secs(1)))
        .await
        .expect("stop");
    let took = started.elapsed();
    println!("stop took {took:?}");
    assert!(
        took >= Duration::from_secs(1),
        "waited for the grace period"
    );
    assert_eq!(stopped.state.signal, Some(libc::SIGKILL));

    // One that handles SIGTERM ends at once with its own exit code.
    let spec = host.spec(&[
        "sh",
        "-c",
        "trap 'exit 3' TERM; while true; do sleep 0.1; done",
    ]);
    host.runtime.run("polite", spec).await.expect("run");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let stopped = host
        .runtime
        .stop("polite", Some(Duration::from_secs(20)))
        .await
        .expect("stop");
    assert_eq!(stopped.state.exit_code, Some(3));
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_outlives_its_starter_and_is_not_charged_to_the_container() {
    let host = TestHost::new("survive").await;
    // Start the container from another process (the agent binary), then kill that process.
    let mut starter = host
        .agent_command()
        .args([
            "run",
            "--id",
            "orphan",
            "debian",
            "--",
            "sh",
            "-c",
            "sleep 2; echo survived; exit 5",
        ])
        .spawn()
        .expect("start hutch-agent");
    let deadline = Instant::now() + Duration::from_secs(20);
    let running = loop {
        if let Ok(info) = host.runtime.get("orphan") {
            if info.state.status == Status::Running {
                break info;
            }
        }
        assert!(Instant::now() < deadline, "container never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let supervisor = running.state.supervisor_pid.expect("supervisor pid");
    let zygote = parent_of(supervisor);
    assert_eq!(
        command_line(zygote).get(1).map(String::as_str),
        Some("zygote")
    );
    starter.kill().expect("SIGKILL the starter");
    let _ = starter.wait();
    // The zygote goes with the agent that started it; the supervisor stays.
    wait_gone(zygote, Duration::from_secs(10));
    assert!(std::path::Path::new(&format!("/proc/{supervisor}")).exists());

    let container_procs = running.cgroup.procs();
    assert!(
        !container_procs.contains(&supervisor),
        "supervisor {supervisor} not in the container's cgroup {container_procs:?}"
    );
    let supervisors_leaf = host.runtime.cgroups().supervisors();
    assert!(
        supervisors_leaf.procs().contains(&supervisor),
        "supervisor sits in {}",
        supervisors_leaf.dir().display()
    );
    // Both moved themselves thread-wise on cgroup v1 (SelfEntry): every hierarchy of
    // theirs must hold the whole process.
    let init = running.state.pid.expect("init pid");
    let in_every_hierarchy = |cgroup: &hutch_supervisor::cgroup::CgroupPath, pid: u32| {
        for dir in cgroup.dirs() {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).expect("procs");
            assert!(
                procs.lines().any(|l| l == pid.to_string()),
                "{pid} not in {}: {procs:?}",
                dir.display()
            );
        }
    };
    in_every_hierarchy(&running.cgroup, init);
    in_every_hierarchy(&supervisors_leaf, supervisor);
    assert_ne!(
        parent_of(supervisor),
        starter.id(),
        "not the starter's child"
    );

    let done = host.runtime.wait("orphan").await.expect("wait");
    assert_eq!(
        (done.state.status, done.state.exit_code),
        (Status::Exited, Some(5))
    );
    assert!(done.state.cleaned_up);
    assert_eq!(host.stdout("orphan"), "survived\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_keep_streams_apart_and_survive_the_container() {
    let host = TestHost::new("logs").await;
    let info = host
        .run_to_end(
            "talk",
            host.spec(&["sh", "-c", "echo out1; echo err1 >&2; printf 'no newline'"]),
        )
        .await;
    assert_eq!(info.state.exit_code, Some(0));
    let lines = host.runtime.logs("talk").expect("logs");
    let view: Vec<(Stream, &str)> = lines.iter().map(|l| (l.stream, l.text.as_str())).collect();
    assert!(view.contains(&(Stream::Stdout, "out1")));
    assert!(view.contains(&(Stream::Stderr, "err1")));
    assert!(view.contains(&(Stream::Stdout, "no newline")));
    assert!(lines.iter().all(|l| l.time.ends_with('Z') && l.full));
    // Listing shows it after exit; remove refuses a running container unless forced.
    assert!(host.runtime.list().iter().any(|c| c.state.id == "talk"));
    host.runtime
        .run("busy", host.spec(&["sleep", "60"]))
        .await
        .expect("run");
    let refused = host
        .runtime
        .remove("busy", false)
        .await
        .expect_err("still running");
    assert!(refused.to_string().contains("still running"));
    host.runtime
        .remove("busy", true)
        .await
        .expect("forced remove");
    host.assert_nothing_left("busy");
}

/// Supervisors are forked by one zygote per runtime, each showing in `ps` as
/// `hutch-supervisor run DIR` with nothing of the zygote's channel; a zygote that dies is
/// replaced at the next start, and the supervisors it forked go on and end as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisors_come_from_one_zygote_that_is_replaced_when_it_dies() {
    let host = TestHost::new("zygote").await;
    let mut supervisors = Vec::new();
    for id in ["za", "zb"] {
        let info = host
            .runtime
            .run(id, host.spec(&["sleep", "60"]))
            .await
            .expect("run");
        supervisors.push(info.state.supervisor_pid.expect("supervisor pid"));
    }
    let zygote = parent_of(supervisors[0]);
    assert_eq!(parent_of(supervisors[1]), zygote, "one zygote forks both");
    let zygote_line = command_line(zygote);
    assert!(
        zygote_line
            .first()
            .is_some_and(|p| p.ends_with("hutch-supervisor"))
            && zygote_line.get(1).map(String::as_str) == Some("zygote"),
        "{zygote_line:?}"
    );
    let dir = host.container_dir("za");
    assert_eq!(
        command_line(supervisors[0])[1..],
        ["run".to_string(), dir.display().to_string()]
    );
    assert_eq!(common::supervisors_of(&dir), [supervisors[0]]);
    // stdin is /dev/null, as for an executed supervisor: not the zygote's channel.
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/fd/0", supervisors[0])).expect("fd 0"),
        std::path::Path::new("/dev/null")
    );

    // SIGKILL the zygote: the next start gets another; the earlier containers run on.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(zygote as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the zygote");
    wait_gone(zygote, Duration::from_secs(10));
    let zc = host
        .runtime
        .run("zc", host.spec(&["sleep", "60"]))
        .await
        .expect("run after the zygote died");
    let zc_supervisor = zc.state.supervisor_pid.expect("supervisor pid");
    let second = parent_of(zc_supervisor);
    assert_ne!(second, zygote);
    assert_eq!(
        command_line(second).get(1).map(String::as_str),
        Some("zygote")
    );
    for id in ["za", "zb", "zc"] {
        assert_eq!(
            host.runtime.get(id).expect("get").state.status,
            Status::Running
        );
        host.runtime.kill(id, libc::SIGKILL).expect("kill");
        let ended = host.runtime.wait(id).await.expect("wait");
        assert_eq!(ended.state.signal, Some(libc::SIGKILL), "{id}");
        host.runtime.remove(id, false).await.expect("remove");
        host.assert_nothing_left(id);
    }
    // Closing the runtime stops the zygote.
    host.runtime.close();
    wait_gone(second, Duration::from_secs(10));

    // Without a zygote (what the agent falls back to when none can take a request), the
    // supervisor is executed, and is the same supervisor.
    let executing = host.reopen_with(|config| config.supervisor_zygote = false);
    let zd = executing
        .run("zd", host.spec(&["sh", "-c", "echo executed; exit 4"]))
        .await
        .expect("run without a zygote");
    let zd_supervisor = zd.state.supervisor_pid.expect("supervisor pid");
    let started_by = command_line(parent_of(zd_supervisor));
    assert_ne!(started_by.get(1).map(String::as_str), Some("zygote"));
    let ended = executing.wait("zd").await.expect("wait");
    assert_eq!(ended.state.exit_code, Some(4));
    assert_eq!(host.stdout("zd"), "executed\n");
    executing.remove("zd", false).await.expect("remove");
    host.assert_nothing_left("zd");
}

/// The parent of process `pid`.
fn parent_of(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    stat.rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .expect("ppid in stat")
}

/// The command line of process `pid`, argument by argument.
fn command_line(pid: u32) -> Vec<String> {
    let line = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    line.split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Waits until process `pid` has exited (gone, or a zombie its parent has not reaped yet).
fn wait_gone(pid: u32, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit(')')
                    .next()
                    .and_then(|r| r.split_whitespace().next().map(String::from))
            });
        if state.as_deref().is_none_or(|s| s == "Z" || s == "X") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "process {pid} still running ({state:?})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A container whose record was left empty (its state file is written without waiting for
/// the disk, and a host crash can leave it so) is listed as FAILED, saying why, and removed
/// like any ended container: never hidden, never stuck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_whose_record_is_unreadable_is_failed_and_removable() {
    let host = TestHost::new("unreadable").await;
    let ended = host
        .run_to_end("blank", host.spec(&["sh", "-c", "exit 3"]))
        .await;
    assert_eq!(ended.state.exit_code, Some(3));
    let state_file = hutch_agent::runtime::state::StatePaths::state(&host.container_dir("blank"));
    std::fs::write(&state_file, b"").expect("empty the record");
    let info = host.runtime.get("blank").expect("still there");
    assert_eq!(info.state.status, Status::Failed);
    let why = info.state.failure.expect("a failure").message;
    assert!(
        why.contains("unreadable") && why.contains("remove it"),
        "{why}"
    );
    assert!(host.runtime.list().iter().any(|c| c.state.id == "blank"));
    host.runtime.remove("blank", false).await.expect("remove");
    host.assert_nothing_left("blank");
}
