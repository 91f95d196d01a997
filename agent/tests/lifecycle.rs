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
    starter.kill().expect("SIGKILL the starter");
    let _ = starter.wait();

    let supervisor = running.state.supervisor_pid.expect("supervisor pid");
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
    let ppid = std::fs::read_to_string(format!("/proc/{supervisor}/stat")).expect("stat");
    let ppid = ppid
        .rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().nth(1))
        .unwrap_or("");
    assert_ne!(ppid, starter.id().to_string(), "not the starter's child");

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
