//! Tutorial: `unshare -p -i -n -u -f chroot rootfs`: `ip addr` shows only `lo`, `ipcs -a`
//! does not show the host's segments, the hostname is the container's own; plus exec into a
//! running container (`ps -ef`, `ip addr`, `hostname` from inside, as nsenter would).

use hutch_testkit as common;

use common::TestHost;
use hutch_agent::runtime::state::Status;
use hutch_agent::spec::Namespace;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn net_ipc_uts_are_private() {
    let host = TestHost::new("isolation").await;

    // A SysV shared-memory segment on the host.
    let made = std::process::Command::new("ipcmk")
        .args(["-M", "4096"])
        .output()
        .expect("ipcmk");
    let text = String::from_utf8_lossy(&made.stdout).to_string();
    let shm_id: String = text.split_whitespace().last().unwrap_or("").to_string();
    assert!(made.status.success() && !shm_id.is_empty(), "ipcmk: {text}");
    let host_ipcs = String::from_utf8_lossy(
        &std::process::Command::new("ipcs")
            .arg("-m")
            .output()
            .expect("ipcs")
            .stdout,
    )
    .to_string();
    assert!(host_ipcs.contains(&shm_id), "host sees its segment");

    let host_name_before = nix::unistd::gethostname().expect("hostname");
    let mut spec = host.spec(&[
        "sh",
        "-c",
        "echo IP; ip -o addr; echo IPCS; ipcs -m; echo HOST; hostname; hostname renamed-inside; hostname",
    ]);
    spec.hostname = "box-isolation".into();
    // Renaming from inside needs CAP_SYS_ADMIN, which containers lack by default (see
    // escape.rs); granted here to show that even then the rename stays in the container.
    spec.security.cap_add = vec!["SYS_ADMIN".into()];
    let info = host.run_to_end("iso", spec).await;
    let _ = std::process::Command::new("ipcrm")
        .args(["-m", &shm_id])
        .status();
    assert_eq!(info.state.exit_code, Some(0), "{:?}", info.state);
    let out = host.stdout("iso");
    println!("{out}");

    let section = |name: &str| -> Vec<String> {
        out.split(&format!("{name}\n"))
            .nth(1)
            .unwrap_or("")
            .lines()
            .take_while(|l| !["IP", "IPCS", "HOST"].contains(l))
            .map(str::to_string)
            .collect()
    };
    let ifaces: Vec<String> = section("IP")
        .iter()
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect();
    assert!(
        ifaces.iter().all(|i| i == "lo"),
        "only lo inside: {ifaces:?}"
    );
    assert!(
        section("IP").iter().any(|l| l.contains("127.0.0.1")),
        "lo is up with 127.0.0.1, as Docker sets it: {:?}",
        section("IP")
    );
    assert!(
        !section("IPCS").iter().any(|l| l.contains(&shm_id)),
        "host segment {shm_id} invisible inside"
    );
    assert_eq!(
        section("HOST"),
        vec!["box-isolation".to_string(), "renamed-inside".to_string()]
    );
    assert_eq!(
        nix::unistd::gethostname().expect("hostname"),
        host_name_before,
        "host's hostname untouched"
    );

    for kind in [
        Namespace::Pid,
        Namespace::Ipc,
        Namespace::Net,
        Namespace::Uts,
        Namespace::Mount,
    ] {
        let r = info
            .state
            .namespaces
            .iter()
            .find(|r| r.kind == kind)
            .expect("reported");
        assert!(r.isolated, "{kind} isolated");
    }
    for kind in [Namespace::User, Namespace::Cgroup] {
        let r = info
            .state
            .namespaces
            .iter()
            .find(|r| r.kind == kind)
            .expect("reported");
        assert!(!r.isolated, "{kind} shared");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_joins_a_running_container() {
    let host = TestHost::new("exec").await;
    let mut spec = host.spec(&["sleep", "60"]);
    spec.hostname = "box-exec".into();
    spec.env.insert("GREETING".into(), "hello".into());
    spec.namespaces.push(Namespace::Cgroup);
    let info = host.runtime.run("ex", spec).await.expect("run");
    assert_eq!(info.state.status, Status::Running);

    let run = |argv: &[&str]| {
        host.runtime
            .exec("ex", argv.iter().map(|s| s.to_string()).collect())
    };
    let ps = run(&["ps", "-ef"]).await.expect("exec ps");
    let ps_out = String::from_utf8_lossy(&ps.stdout).to_string();
    println!("{ps_out}");
    assert_eq!(ps.exit_code, Some(0));
    let pid1 = ps_out
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("1"))
        .expect("a PID 1");
    assert!(
        pid1.ends_with("sleep 60"),
        "the container's init is PID 1: {pid1}"
    );
    assert!(
        ps_out.lines().any(|l| l.ends_with("ps -ef")),
        "exec'd ps runs in the container's pid namespace"
    );

    let ip = run(&["ip", "-o", "link"]).await.expect("exec ip");
    let ip_out = String::from_utf8_lossy(&ip.stdout).to_string();
    assert_eq!(ip_out.lines().count(), 1, "only lo: {ip_out}");
    assert!(ip_out.contains("lo:"));

    let hn = run(&["hostname"]).await.expect("exec hostname");
    assert_eq!(String::from_utf8_lossy(&hn.stdout).trim(), "box-exec");

    let env = run(&["sh", "-c", "echo $GREETING; cat /proc/self/cgroup; exit 7"])
        .await
        .expect("exec sh");
    let env_out = String::from_utf8_lossy(&env.stdout).to_string();
    assert_eq!(env.exit_code, Some(7));
    assert!(
        env_out.starts_with("hello\n"),
        "container environment: {env_out}"
    );
    // The memory hierarchy's line (v1: N:memory:/, pure v2: 0::/) shows / inside.
    let memory_line = env_out
        .lines()
        .find(|l| l.contains(":memory:"))
        .or_else(|| env_out.lines().find(|l| l.starts_with("0::")));
    assert!(
        memory_line.is_some_and(|l| l.ends_with(":/")),
        "cgroup namespace: its cgroup is / inside: {env_out}"
    );

    let missing = run(&["no-such-program"])
        .await
        .expect_err("missing program");
    assert!(missing.to_string().contains("not found"), "{missing}");

    let stopped = host
        .runtime
        .stop("ex", Some(std::time::Duration::from_secs(1)))
        .await
        .expect("stop");
    assert!(stopped.state.status.is_final());
    let after = run(&["true"]).await.expect_err("exec after exit");
    assert!(after.to_string().contains("not running"), "{after}");
}
