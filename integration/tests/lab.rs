//! The failure suite across the hosts of a lab (`deploy/lab`: network namespaces on a
//! private bridge, one controller host, agent hosts, a client host). Each test has a lab of
//! its own; every command runs from the client host, as a remote user's would.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hutch_integration::history::{check, Op, Record};
use hutch_integration::Lab;

const GIB: u64 = 1 << 30;

/// The agent flag that leaves `capacity` of this machine's memory to containers.
fn capacity(capacity: u64) -> String {
    let reserve = hutch_agent::node::memory_total_bytes().saturating_sub(capacity);
    format!("--memory-reserve={reserve}")
}

fn nodes_of(lab: &Lab, prefix: &str) -> BTreeMap<String, usize> {
    let mut per_node = BTreeMap::new();
    for c in lab.hutch_json(&["ps"]).as_array().expect("list") {
        if c["id"].as_str().is_some_and(|id| id.starts_with(prefix)) {
            *per_node
                .entry(c["node"].as_str().unwrap_or("").to_string())
                .or_default() += 1;
        }
    }
    per_node
}

/// 1. Placement across hosts: spread puts 10 of 30 on each of 3 hosts; binpack fills one
///    host before the next, by memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_across_hosts() {
    let lab = Lab::up_with("place", 3, "", &capacity(GIB)).await;
    for i in 0..30 {
        lab.hutch(&[
            "run",
            "-d",
            "--name",
            &format!("s{i}"),
            "debian",
            "--",
            "sleep",
            "600",
        ]);
    }
    let spread = nodes_of(&lab, "s");
    assert_eq!(
        spread.values().copied().collect::<Vec<_>>(),
        vec![10, 10, 10],
        "{spread:?}"
    );
    for i in 0..30 {
        lab.hutch(&["rm", "-f", &format!("s{i}")]);
    }
    drop(lab);

    let lab = Lab::up_with("binpack", 3, "--strategy binpack", &capacity(GIB)).await;
    for i in 0..10 {
        lab.hutch(&[
            "run",
            "-d",
            "--name",
            &format!("b{i}"),
            "--memory",
            "256M",
            "debian",
            "--",
            "sleep",
            "600",
        ]);
    }
    let packed = nodes_of(&lab, "b");
    let mut counts: Vec<usize> = packed.values().copied().collect();
    counts.sort();
    assert_eq!(
        counts,
        vec![2, 4, 4],
        "1 GiB each, 256 MiB per container: {packed:?}"
    );
    for i in 0..10 {
        lab.hutch(&["rm", "-f", &format!("b{i}")]);
    }
}

/// 2. Isolation across hosts: each container sees its own hostname, only `lo`, itself as
///    PID 1; the namespace reports of different hosts show different inodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_across_hosts() {
    let lab = Lab::up("iso", 2, "").await;
    let mut inodes = Vec::new();
    for host in ["n1", "n2"] {
        let name = format!("iso-{host}");
        let node = lab.node(host);
        let out = lab.hutch(&[
            "run",
            "--rm",
            "--name",
            &name,
            "--node",
            &node,
            "--network",
            "none",
            "debian",
            "--",
            "sh",
            "-c",
            "hostname; ip -brief link | cut -d' ' -f1; ps -o pid=,comm= | head -1",
        ]);
        let lines: Vec<&str> = out.lines().map(str::trim).collect();
        assert_eq!(lines, vec![name.as_str(), "lo", "1 sh"], "{out}");
        lab.hutch(&[
            "run", "-d", "--name", &name, "--node", &node, "debian", "--", "sleep", "600",
        ]);
        let c = lab.hutch_json(&["inspect", &name]);
        assert_eq!(c["node"], node.as_str());
        let pid_ns = c["namespaces"]
            .as_array()
            .and_then(|a| a.iter().find(|n| n["kind"] == "pid").cloned())
            .expect("pid namespace");
        assert_eq!(pid_ns["isolated"], true);
        inodes.push(pid_ns["container_inode"].as_u64().expect("inode"));
    }
    // Both still run (a removed namespace's inode number may be reused).
    assert_ne!(
        inodes[0], inodes[1],
        "each host's container has its own pid namespace"
    );
    for host in ["n1", "n2"] {
        lab.hutch(&["rm", "-f", &format!("iso-{host}")]);
    }
}

/// 3. Node loss: SIGKILL an agent with containers running: NOT_READY, then DOWN; its
///    containers are LOST; the on-failure one comes back on a surviving host, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_loss() {
    let lab = Lab::up("loss", 3, "").await;
    let n1 = lab.node("n1");
    for (name, policy) in [("keep", "on-failure"), ("once", "never")] {
        lab.hutch(&[
            "run",
            "-d",
            "--name",
            name,
            "--node",
            &n1,
            "--restart",
            policy,
            "debian",
            "--",
            "sleep",
            "600",
        ]);
    }
    // Pinned to n1 for the start; the restart may go anywhere: recreate keep unpinned.
    lab.hutch(&["rm", "-f", "keep"]);
    lab.hutch(&["node", "cordon", &lab.node("n2")]);
    lab.hutch(&["node", "cordon", &lab.node("n3")]);
    lab.hutch(&[
        "run",
        "-d",
        "--name",
        "keep",
        "--restart",
        "on-failure",
        "debian",
        "--",
        "sleep",
        "600",
    ]);
    lab.hutch(&["node", "uncordon", &lab.node("n2")]);
    lab.hutch(&["node", "uncordon", &lab.node("n3")]);
    assert_eq!(lab.hutch_json(&["inspect", "keep"])["node"], n1.as_str());

    let killed = Instant::now();
    lab.lab(&["kill", "n1", "agent"]);
    let not_ready = lab.wait_node("n1", "not-ready", Duration::from_secs(10));
    lab.wait_node("n1", "down", Duration::from_secs(15));
    let down = killed.elapsed();
    let lost = lab.wait_container("once", Duration::from_secs(5), |c| c["state"] == "lost");
    assert_eq!(lost["node"], n1.as_str());
    let moved = lab.wait_container("keep", Duration::from_secs(20), |c| {
        c["state"] == "running" && c["node"] != n1.as_str()
    });
    let rescheduled = killed.elapsed();
    assert_eq!(moved["restart_count"], 1, "{moved:#}");
    println!(
        "node loss: NOT_READY after {:.2}s, DOWN after {:.2}s, rescheduled and running after {:.2}s (heartbeat 200ms x3, down after 2s)",
        not_ready.as_secs_f64(),
        down.as_secs_f64(),
        rescheduled.as_secs_f64()
    );
    // Exactly once: one running copy in the cluster.
    let running: Vec<_> = lab
        .hutch_json(&["ps"])
        .as_array()
        .expect("list")
        .iter()
        .filter(|c| c["id"] == "keep")
        .cloned()
        .collect();
    assert_eq!(running.len(), 1);
    lab.lab(&["start", "n1", "agent"]);
    lab.wait_node("n1", "ready", Duration::from_secs(10));
    let keep = lab.wait_container("keep", Duration::from_secs(10), |c| {
        c["status"]
            .as_str()
            .is_some_and(|s| s.contains("stale copy"))
    });
    assert_eq!(keep["state"], "running");
    assert_ne!(keep["node"], n1.as_str());
    for name in ["keep", "once"] {
        lab.hutch(&["rm", "-f", name]);
    }
}

/// 4. Partition: cut a host for longer than the down timeout, heal it: the node comes
///    back, what exited meanwhile gets its real exit status, and a container rescheduled
///    elsewhere is stopped on the healed host, the record saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_and_heal() {
    let lab = Lab::up("part", 2, "").await;
    let n1 = lab.node("n1");
    lab.hutch(&["node", "cordon", &lab.node("n2")]);
    lab.hutch(&[
        "run",
        "-d",
        "--name",
        "exits",
        "debian",
        "--",
        "sh",
        "-c",
        "sleep 3; exit 7",
    ]);
    lab.hutch(&[
        "run",
        "-d",
        "--name",
        "moves",
        "--restart",
        "always",
        "debian",
        "--",
        "sleep",
        "600",
    ]);
    lab.hutch(&["node", "uncordon", &lab.node("n2")]);
    lab.lab(&["cut", "n1"]);
    lab.wait_node("n1", "down", Duration::from_secs(15));
    lab.wait_container("moves", Duration::from_secs(20), |c| {
        c["state"] == "running" && c["node"] == lab.node("n2").as_str()
    });
    std::thread::sleep(Duration::from_secs(2)); // `exits` ends on the cut-off host meanwhile
    lab.lab(&["heal", "n1"]);
    lab.wait_node("n1", "ready", Duration::from_secs(15));
    let exits = lab.wait_container("exits", Duration::from_secs(15), |c| c["state"] == "exited");
    assert_eq!(exits["exit_code"], 7, "the real exit status: {exits:#}");
    assert_eq!(exits["node"], n1.as_str());
    let moves = lab.wait_container("moves", Duration::from_secs(15), |c| {
        c["status"]
            .as_str()
            .is_some_and(|s| s.contains("stale copy"))
    });
    assert_eq!(moves["node"], lab.node("n2").as_str());
    // The healed host no longer runs it: only one run of `moves` anywhere.
    // Straight to the agent, as a local administrator over TLS (the lab's admin token).
    let on_n1 = lab.exec(
        "client",
        &[
            "sh",
            "-c",
            r#"grpcurl -cacert "$HUTCH_CA_CERT" -H "authorization: Bearer $HUTCH_TOKEN" 198.18.0.11:7070 hutch.v1.Agent/ListContainers"#,
        ],
    );
    assert!(
        on_n1.status.success(),
        "{}",
        String::from_utf8_lossy(&on_n1.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&on_n1.stdout).contains("moves.0\""),
        "{}",
        String::from_utf8_lossy(&on_n1.stdout)
    );
    for name in ["exits", "moves"] {
        lab.hutch(&["rm", "-f", name]);
    }
}

/// 6. Agent restart: the agent process (not the host) restarts; its containers keep running,
///    it finds them again and reports their later exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restart_keeps_containers() {
    let lab = Lab::up("agentrestart", 1, "").await;
    lab.hutch(&[
        "run",
        "-d",
        "--name",
        "survivor",
        "debian",
        "--",
        "sh",
        "-c",
        "sleep 2; exit 5",
    ]);
    let before = lab.hutch_json(&["inspect", "survivor"]);
    lab.lab(&["kill", "n1", "agent"]);
    lab.lab(&["start", "n1", "agent"]);
    lab.wait_node("n1", "ready", Duration::from_secs(10));
    let running = lab.hutch_json(&["inspect", "survivor"]);
    assert_eq!(
        running["pid"], before["pid"],
        "the same process, still there"
    );
    let done = lab.wait_container("survivor", Duration::from_secs(15), |c| {
        c["state"] == "exited"
    });
    assert_eq!(done["exit_code"], 5);
    lab.hutch(&["rm", "survivor"]);
}

/// 7. A remote client: grpcurl and the CLI on the client host drive the tutorial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_client_drives_the_tutorial() {
    let lab = Lab::up("remote", 1, "").await;
    let ps = lab.hutch(&[
        "run",
        "--rm",
        "--ns",
        "pid,mount",
        "debian",
        "--",
        "ps",
        "-o",
        "pid=,comm=",
    ]);
    assert_eq!(ps.split_whitespace().collect::<Vec<_>>(), vec!["1", "ps"]);
    let ipc = lab.hutch(&[
        "run",
        "--rm",
        "--ns",
        "pid,ipc,net,uts,mount",
        "--network",
        "none",
        "debian",
        "--",
        "sh",
        "-c",
        "ipcs -q | grep -c 0x; ip -brief link | wc -l",
    ]);
    assert_eq!(
        ipc.split_whitespace().collect::<Vec<_>>(),
        vec!["0", "1"],
        "{ipc}"
    );
    let oom = lab.exec(
        "client",
        &[
            "hutch",
            "run",
            "--rm",
            "--memory",
            "1000000",
            "debian",
            "--",
            "tail",
            "/dev/zero",
        ],
    );
    assert_eq!(oom.status.code(), Some(137));
    // The lab runs mutual TLS: grpcurl trusts the cluster CA and sends the admin token.
    let grpcurl =
        r#"grpcurl -cacert "$HUTCH_CA_CERT" -H "authorization: Bearer $HUTCH_TOKEN" "$@""#;
    let list = lab.exec(
        "client",
        &["sh", "-c", grpcurl, "grpcurl", "198.18.0.1:7000", "list"],
    );
    assert!(String::from_utf8_lossy(&list.stdout).contains("hutch.v1.Controller"));
    let plaintext = lab.exec(
        "client",
        &["grpcurl", "-plaintext", "198.18.0.1:7000", "list"],
    );
    assert!(
        !plaintext.status.success(),
        "plaintext must not reach a TLS lab"
    );
    let created = lab.exec(
        "client",
        &[
            "sh",
            "-c",
            grpcurl,
            "grpcurl",
            "-d",
            r#"{"name":"g","spec":{"rootfs":"debian","command":["hostname"]}}"#,
            "198.18.0.1:7000",
            "hutch.v1.Controller/CreateContainer",
        ],
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    lab.wait_container("g", Duration::from_secs(15), |c| c["state"] == "exited");
    assert_eq!(lab.hutch(&["logs", "g"]), "g\n");
    lab.hutch(&["rm", "g"]);
}

/// 8. Clean teardown: after `lab down` nothing of the lab is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_down_leaves_nothing() {
    let lab = Lab::up("teardown", 2, "").await;
    lab.hutch(&[
        "run",
        "-d",
        "--name",
        "left-running",
        "debian",
        "--",
        "sleep",
        "600",
    ]);
    lab.down();
    lab.down(); // twice is fine
    let name = lab.name.clone();
    let netns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    assert!(
        !String::from_utf8_lossy(&netns.stdout).contains(&name),
        "namespaces left"
    );
    assert!(
        !std::path::Path::new(&format!("/var/tmp/hutch-lab-{name}")).exists(),
        "state left"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mounts.contains(&name), "mounts left");
    let cgroups = std::process::Command::new("find")
        .args(["/sys/fs/cgroup", "-name", &format!("hutch-{name}-*")])
        .output()
        .expect("find");
    assert!(
        String::from_utf8_lossy(&cgroups.stdout).trim().is_empty(),
        "cgroups left"
    );
    let procs = std::process::Command::new("pgrep")
        .args(["-f", &name])
        .output()
        .expect("pgrep");
    assert!(
        String::from_utf8_lossy(&procs.stdout).trim().is_empty(),
        "processes left"
    );
}

/// When each node last registered, in node order.
fn registrations(lab: &Lab) -> Vec<String> {
    lab.hutch_json(&["nodes"])
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["registered_at"].as_str().unwrap_or("").to_string())
        .collect()
}

/// The revisions `hutch events --since-revision SINCE` prints within `secs` seconds.
fn revisions(lab: &Lab, since: u64, secs: u32) -> Vec<u64> {
    let out = lab.exec(
        "client",
        &[
            "timeout",
            &secs.to_string(),
            "hutch",
            "-o",
            "json",
            "events",
            "--since-revision",
            &since.to_string(),
        ],
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|e| e["revision"].as_u64())
        .collect()
}

/// 5. Controller restart with 3 agents and 60 creates in flight: nothing acknowledged is
///    lost, every agent registers again, a watch resumes without gap or duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_restart_in_flight() {
    let lab = Lab::up("ctlrestart", 3, "").await;
    let before = registrations(&lab);
    let (tx, rx) = std::sync::mpsc::channel();
    let lab_ref = &lab;
    let mut first = Vec::new();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            for i in 0..60 {
                let name = format!("f{i:02}");
                let out = lab_ref.exec(
                    "client",
                    &[
                        "hutch", "run", "-d", "--name", &name, "debian", "--", "sleep", "5",
                    ],
                );
                if out.status.success() {
                    let _ = tx.send(name);
                }
            }
        });
        // Kill the controller after 20 acknowledged creates; start it again at once.
        for _ in 0..20 {
            first.push(rx.recv().expect("acks"));
        }
        lab_ref.lab(&["kill", "ctl", "controller"]);
        std::thread::sleep(Duration::from_millis(300));
        lab_ref.lab(&["start", "ctl", "controller"]);
    });
    let mut acked = first;
    acked.extend(rx.try_iter());
    for host in ["n1", "n2", "n3"] {
        lab.wait_node(host, "ready", Duration::from_secs(15));
    }
    let after = registrations(&lab);
    assert!(
        before.iter().zip(&after).all(|(b, a)| b != a),
        "every agent registered again: {before:?} {after:?}"
    );
    let all = lab.hutch_json(&["ps", "-a"]);
    let ids: Vec<&str> = all
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|c| c["id"].as_str())
        .collect();
    for name in &acked {
        assert!(ids.contains(&name.as_str()), "acknowledged {name} lost");
    }
    // The history replays from revision 1 without gap or duplicate; a watch from the middle
    // continues exactly after its revision.
    let replay = revisions(&lab, 0, 2);
    let expected: Vec<u64> = (1..=replay.last().copied().unwrap_or(0)).collect();
    assert_eq!(replay, expected);
    let mid = replay[replay.len() / 2];
    let resumed = revisions(&lab, mid, 2);
    assert_eq!(resumed.first().copied(), Some(mid + 1));
    assert!(resumed.windows(2).all(|w| w[1] == w[0] + 1), "{resumed:?}");
    println!(
        "{} creates acknowledged around the restart, {} revisions",
        acked.len() + 20,
        replay.len()
    );
    for id in ids {
        lab.hutch(&["rm", "-f", id]);
    }
}

/// A TCP server answering each connection with the address it came from (perl is in the
/// test rootfs; the minbase image has no netcat).
const ECHO_PEER_SERVER: &str = r#"use IO::Socket::INET; my $s = IO::Socket::INET->new(LocalPort => 80, Listen => 16, ReuseAddr => 1) or die "listen: $!"; $| = 1; print "listening\n"; while (my $c = $s->accept) { print $c "peer=" . $c->peerhost . "\n"; close $c }"#;

/// A client printing its own address and the server's answer.
fn echo_client(addr: &str) -> String {
    format!(
        r#"use IO::Socket::INET; my $c = IO::Socket::INET->new(PeerAddr => "{addr}", Timeout => 5) or die "connect {addr}: $!"; print "self=" . $c->sockhost . "\n" . <$c>"#
    )
}

/// Runs [`echo_client`] for `addr` in a container on `node`, until it connects (routes and
/// names reach the nodes with their heartbeats); its output.
fn client_container(lab: &Lab, node: &str, addr: &str) -> String {
    let mut answer = String::new();
    for _ in 0..50 {
        let out = lab.run_perl(node, &echo_client(addr));
        answer = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    answer
}

/// The nat table and the links of a lab host, and its IP leases (for leak checks).
fn network_leftovers(lab: &Lab, host: &str) -> (String, String) {
    let nat = lab.exec(host, &["iptables-save", "-t", "nat"]);
    let links = lab.exec(host, &["ip", "-o", "link"]);
    (
        String::from_utf8_lossy(&nat.stdout).into_owned(),
        String::from_utf8_lossy(&links.stdout).into_owned(),
    )
}

/// 6. Container networking across hosts (CNI bridge + host-local + portmap, host-gw routes):
///    a server in a container on n1 answers a container on n2 by address, with the client's
///    own address as source (no NAT between nodes), and by its bare name; a running
///    container's /etc/hosts follows the server's removal; a published port answers from
///    the client host; a second publication of the port on n1 is refused; containers
///    publishing one host port land on different nodes, and one more waits PENDING with
///    the reason; `none` shows only lo and `host` the host's eth0; after removal no veth,
///    DNAT chain or lease is left; an agent killed and restarted leaves the server reachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networking_across_hosts() {
    let lab = Lab::up("net", 3, "").await;
    let (n1, n2) = (lab.node("n1"), lab.node("n2"));
    let nodes = lab.hutch_json(&["nodes"]);
    let subnets: Vec<String> = nodes
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["subnet"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        subnets.iter().all(|s| s.starts_with("198.19.")) && subnets[0] != subnets[1],
        "each node its own block of the cluster network: {subnets:?}"
    );

    lab.hutch(&[
        "run",
        "-d",
        "--name",
        "srv",
        "--node",
        &n1,
        "-p",
        "8080:80",
        "debian",
        "--",
        "perl",
        "-e",
        ECHO_PEER_SERVER,
    ]);
    let srv = lab.wait_container("srv", Duration::from_secs(10), |c| {
        c["state"] == "running" && c["network"]["ip"].as_str().is_some_and(|ip| !ip.is_empty())
    });
    let ip = srv["network"]["ip"].as_str().expect("ip").to_string();
    assert_eq!(srv["network"]["mode"], "bridge", "{srv}");
    assert_eq!(srv["network"]["ports"][0], "8080:80/tcp", "{srv}");
    let ps = lab.hutch(&["ps"]);
    assert!(ps.contains(&ip), "ps shows the address: {ps}");

    // From a container on the other node, by address: the server sees the client's own
    // address (routed, not masqueraded).
    let answer = client_container(&lab, &n2, &format!("{ip}:80"));
    let own = answer
        .lines()
        .find_map(|l| l.strip_prefix("self="))
        .unwrap_or("?");
    let seen = answer
        .lines()
        .find_map(|l| l.strip_prefix("peer="))
        .unwrap_or("??");
    assert!(
        own.starts_with("198.19."),
        "client container address: {answer}"
    );
    assert_eq!(
        own, seen,
        "the server sees the client container's address: {answer}"
    );

    // By its bare name, from a container on n2 (the name table reaches every node with its
    // heartbeat), and from a long-running one whose /etc/hosts is rewritten in place.
    lab.hutch(&[
        "run", "-d", "--name", "watcher", "--node", &n2, "debian", "--", "sleep", "600",
    ]);
    let by_name = client_container(&lab, &n2, "srv:80");
    assert!(by_name.contains("peer=198.19."), "by name: {by_name}");
    let resolved = lab.hutch(&["exec", "watcher", "--", "getent", "hosts", "srv"]);
    assert!(
        resolved.starts_with(&format!("{ip} ")),
        "watcher resolves srv: {resolved}"
    );
    // Read-only inside: the file lives on the node's disk, beyond any disk limit.
    let write = lab.exec(
        "client",
        &[
            "hutch",
            "exec",
            "watcher",
            "--",
            "sh",
            "-c",
            "echo 198.19.9.9 evil >> /etc/hosts",
        ],
    );
    assert!(!write.status.success(), "/etc/hosts is writable inside");

    // From the lab's client host through the published port of n1.
    let out = lab.exec("client", &["perl", "-e", &echo_client("198.18.0.11:8080")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("peer="),
        "published port: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The same host port on n1 again: it waits PENDING with the reason; a bad port is refused.
    let out = lab.exec(
        "client",
        &[
            "timeout", "3", "hutch", "run", "--rm", "--name", "dup", "--node", &n1, "-p",
            "8080:81", "debian", "--", "true",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already publishes host port 8080/tcp"),
        "{err}"
    );
    lab.hutch(&["rm", "-f", "dup"]);
    for bad in ["70000:80", "80", "1.2.3:80:80", "8080:80/sctp"] {
        let out = lab.exec(
            "client",
            &["hutch", "run", "--rm", "-p", bad, "debian", "--", "true"],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        // A value hutch refuses: 125, with the reason (README's exit codes).
        assert_eq!(out.status.code(), Some(125), "-p {bad}: {err}");
        assert!(err.contains("--publish"), "-p {bad}: {err}");
    }

    // One host port, three nodes: each container on another node, the fourth PENDING.
    for i in 0..3 {
        lab.hutch(&[
            "run",
            "-d",
            "--name",
            &format!("p{i}"),
            "-p",
            "9090:80",
            "debian",
            "--",
            "sleep",
            "600",
        ]);
    }
    let mut placed = BTreeMap::new();
    for i in 0..3 {
        let c = lab.wait_container(&format!("p{i}"), Duration::from_secs(10), |c| {
            c["state"] == "running"
        });
        *placed
            .entry(c["node"].as_str().unwrap_or("").to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(placed.len(), 3, "one per node: {placed:?}");
    // `run -d` waits for it to run, saying why it waits; the record stays PENDING.
    let out = lab.exec(
        "client",
        &[
            "timeout", "-k", "1", "3", "hutch", "run", "-d", "--name", "p3", "-p", "9090:80",
            "debian", "--", "sleep", "600",
        ],
    );
    let waiting = String::from_utf8_lossy(&out.stderr);
    assert!(
        waiting.contains("waiting") && waiting.contains("9090/tcp"),
        "{waiting}"
    );
    let pending = lab.wait_container("p3", Duration::from_secs(5), |c| c["state"] == "pending");
    assert!(
        pending["status"]
            .as_str()
            .unwrap_or("")
            .contains("9090/tcp"),
        "{pending}"
    );
    for i in 0..4 {
        lab.hutch(&["rm", "-f", &format!("p{i}")]);
    }

    // none: only lo (the tutorial's unshare -n); host: the host's own eth0.
    let none = lab.hutch(&[
        "run",
        "--rm",
        "--network",
        "none",
        "debian",
        "--",
        "sh",
        "-c",
        "ip -brief link | cut -d' ' -f1",
    ]);
    assert_eq!(
        none.split_whitespace().collect::<Vec<_>>(),
        vec!["lo"],
        "{none}"
    );
    let host = lab.hutch(&[
        "run",
        "--rm",
        "--node",
        &n1,
        "--network",
        "host",
        "debian",
        "--",
        "sh",
        "-c",
        "ip -brief addr show eth0",
    ]);
    assert!(host.contains("198.18.0.11"), "host network: {host}");

    // The agent of n1 killed and started again: the server still answers.
    lab.lab(&["kill", "n1", "agent"]);
    lab.lab(&["start", "n1", "agent"]);
    let out = lab.exec("client", &["perl", "-e", &echo_client("198.18.0.11:8080")]);
    assert!(
        out.status.success(),
        "after an agent restart: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Removed: nothing of it is left on n1, and its name is gone from the others.
    lab.hutch(&["rm", "-f", "srv"]);
    let mut gone = false;
    for _ in 0..50 {
        let out = lab.exec(
            "client",
            &["hutch", "exec", "watcher", "--", "getent", "hosts", "srv"],
        );
        if !out.status.success() {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(gone, "srv still resolves on n2 after its removal");
    lab.hutch(&["rm", "-f", "watcher"]);
    // A veth goes with its namespace, which the kernel tears down a moment after the end.
    let mut leftovers = network_leftovers(&lab, "n1");
    for _ in 0..20 {
        if !leftovers.1.contains("veth") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        leftovers = network_leftovers(&lab, "n1");
    }
    let (nat, links) = leftovers;
    assert!(!nat.contains("CNI-DN-"), "port mapping left: {nat}");
    assert!(!links.contains("veth"), "veth left: {links}");
    let leases = std::fs::read_dir(format!(
        "/var/tmp/hutch-lab-{}/n1/agent/cni/ipam/hutch",
        lab.name
    ))
    .map(|rd| {
        rd.flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("198."))
            .collect::<Vec<_>>()
    })
    .unwrap_or_default();
    assert!(leases.is_empty(), "leases left: {leases:?}");

    // A node gone for good: refused while alive, then removed once down; the others drop
    // the route to its block, which is free again.
    let n3 = lab.node("n3");
    let n3_subnet = nodes
        .as_array()
        .and_then(|all| all.iter().find(|n| n["name"] == n3.as_str()))
        .and_then(|n| n["subnet"].as_str())
        .expect("n3's block")
        .to_string();
    let route_to_n3 = || {
        let out = lab.exec("n1", &["ip", "route", "show", "proto", "201"]);
        String::from_utf8_lossy(&out.stdout).contains(&n3_subnet)
    };
    assert!(route_to_n3(), "n1 routes to n3's block {n3_subnet}");
    let out = lab.exec("client", &["hutch", "node", "rm", &n3]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("is ready"), "{err}");
    lab.lab(&["kill", "n3", "agent"]);
    lab.wait_node("n3", "down", Duration::from_secs(10));
    lab.hutch(&["node", "rm", &n3]);
    let mut gone = false;
    for _ in 0..50 {
        if !route_to_n3() {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        gone,
        "n1 still routes to the removed node's block {n3_subnet}"
    );
    let left = lab.hutch_json(&["nodes"]);
    assert!(
        !left.to_string().contains(&n3),
        "the removed node is still listed: {left}"
    );
    // Back again: it registers as a new node and gets the block its bridge still has.
    lab.lab(&["start", "n3", "agent"]);
    lab.wait_node("n3", "ready", Duration::from_secs(10));
    let again = lab.hutch_json(&["node", "inspect", &n3]);
    assert_eq!(again["subnet"], n3_subnet.as_str(), "{again}");
}

/// A directory of one test outside the lab's state, removed when dropped.
struct TestDir(std::path::PathBuf);

impl TestDir {
    fn new(what: &str) -> TestDir {
        let dir = std::env::temp_dir().join(format!("hutch-t-{what}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("test dir");
        TestDir(dir)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// 7. Network configurations that cannot work (the agent's `--cni-conf-dir` holding the
///    file for its network): a plugin that does not exist, a plugin failing inside ADD (after
///    the bridge plugin has made the veth), a file naming the network that is not a valid
///    configuration. Each start fails with an error naming the problem, and nothing of it
///    is left on the node: no veth, no state directory, no mount, no lease. With the file
///    gone the node's own network works again, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_configuration_errors() {
    let conf = TestDir::new("cni-conf");
    let lab = Lab::up_with(
        "netconf",
        1,
        "",
        &format!("--cni-conf-dir {}", conf.0.display()),
    )
    .await;
    let file = conf.0.join("10-hutch.conflist");
    let state = format!("/var/tmp/hutch-lab-{}/n1/agent", lab.name);
    let cases = [
        (
            r#"{"cniVersion": "1.0.0", "name": "hutch", "plugins": [{"type": "no-such-plugin"}]}"#,
            "no-such-plugin",
        ),
        (
            r#"{"cniVersion": "1.0.0", "name": "hutch", "plugins": [{"type": "bridge", "bridge": "hutch-t0",
               "ipam": {"type": "host-local", "ranges": [[{"subnet": "198.19.300.0/24"}]]}}]}"#,
            "198.19.300.0/24",
        ),
        (
            r#"{"cniVersion": "1.0.0", "name": "hutch", "plugins": []}"#,
            "10-hutch.conflist",
        ),
    ];
    for (i, (text, named)) in cases.iter().enumerate() {
        std::fs::write(&file, text).expect("configuration");
        let name = format!("bad{i}");
        let out = lab.exec(
            "client",
            &[
                "hutch", "run", "--rm", "--name", &name, "debian", "--", "true",
            ],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "case {i} started");
        assert!(
            err.contains(named),
            "case {i}: the error names {named}: {err}"
        );
        // The host's own eth0 is a veth of the lab; the plugins' are called vethXXXX.
        let (_, links) = network_leftovers(&lab, "n1");
        assert!(!links.contains("veth"), "case {i}: veth left: {links}");
        // A removed container's files are deleted a moment after (in a dot directory).
        let dirs: Vec<_> = std::fs::read_dir(format!("{state}/containers"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| !n.to_string_lossy().starts_with('.'))
            .collect();
        assert!(dirs.is_empty(), "case {i}: state left: {dirs:?}");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        assert!(!mounts.contains(&state), "case {i}: mounts left: {mounts}");
        let _ = lab.exec("client", &["hutch", "rm", "-f", &name]);
    }
    // host-local in case 2 used its own data directory: nothing of hutch's own.
    std::fs::remove_file(&file).expect("remove configuration");
    let ok = lab.hutch(&[
        "run",
        "--rm",
        "debian",
        "--",
        "sh",
        "-c",
        "ip -brief addr show eth0",
    ]);
    assert!(ok.contains("198.19."), "the node's own network: {ok}");
}

/// Reads a child's stdout lines as history operations, waiting at most `within` for it to
/// end.
fn history_of(child: std::process::Child, what: &str, within: Duration) -> Vec<Op> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx
        .recv_timeout(within)
        .unwrap_or_else(|_| panic!("{what} did not finish within {within:?}"))
        .expect("output");
    assert!(out.status.success(), "{what} failed: {:?}", out.status);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| Op::parse(l).unwrap_or_else(|e| panic!("{what}: {e}")))
        .collect()
}

/// 12. Highly available controllers: 500 creates from 4 concurrent clients while the
///     leading controller is killed 5 times and one controller host is cut off for 10 s.
///     Every create a client saw succeed exists exactly once, none that was refused exists,
///     no container runs twice, and a watcher that resumes across every failover sees every
///     change once, in revision order (`hutch_integration::history::check`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controllers_on_etcd_lose_nothing_through_kills_and_a_partition() {
    let lab = Lab::up_ha("ha", 2, 3).await;
    let client = hutch_integration::bin_dir().join("examples/ha_client");
    assert!(
        client.exists(),
        "{} is not built: cargo build --workspace --examples (scripts/test.sh does)",
        client.display()
    );
    let client = client.to_string_lossy().into_owned();
    let prefix = "jep";
    let watcher = lab.spawn("client", &[&client, "watch", prefix]);
    let creators: Vec<_> = (0..4)
        .map(|c| {
            lab.spawn(
                "client",
                &[&client, "create", prefix, &c.to_string(), "125"],
            )
        })
        .collect();
    let started = Instant::now();
    for k in 0..5 {
        std::thread::sleep(Duration::from_millis(1500));
        let leader = lab.leader_host(Duration::from_secs(20));
        println!("{:?}: kill -9 of the leader on {leader}", started.elapsed());
        lab.lab(&["kill", &leader, "controller"]);
        std::thread::sleep(Duration::from_millis(1500));
        lab.lab(&["start", &leader, "controller"]);
        if k == 2 {
            let cut = lab.leader_host(Duration::from_secs(20));
            println!("{:?}: {cut} (leading) cut off for 10 s", started.elapsed());
            lab.lab(&["cut", &cut]);
            std::thread::sleep(Duration::from_secs(10));
            lab.lab(&["heal", &cut]);
        }
    }
    let mut creates = Vec::new();
    for (c, child) in creators.into_iter().enumerate() {
        creates.extend(history_of(
            child,
            &format!("creator {c}"),
            Duration::from_secs(300),
        ));
    }
    println!("{:?}: creates done", started.elapsed());
    lab.hutch(&[
        "run",
        "-d",
        "--name",
        "jep-stop",
        "debian",
        "--",
        "/bin/true",
    ]);
    creates.push(Op::Create {
        name: "jep-stop".into(),
        outcome: "ok".into(),
    });
    let events = history_of(watcher, "the watcher", Duration::from_secs(120));
    // Every container ran once, to its end.
    let deadline = Instant::now() + Duration::from_secs(120);
    let records = loop {
        let all = lab.hutch_json(&["ps", "-a"]);
        let mine: Vec<&serde_json::Value> = all
            .as_array()
            .expect("list")
            .iter()
            .filter(|c| c["id"].as_str().is_some_and(|id| id.starts_with("jep-")))
            .collect();
        if Instant::now() > deadline {
            for c in mine.iter().filter(|c| c["state"] != "exited") {
                println!("NOT EXITED: {c}");
            }
        }
        if mine.iter().all(|c| c["state"] == "exited") || Instant::now() > deadline {
            break mine
                .iter()
                .map(|c| Record {
                    name: c["id"].as_str().unwrap_or("").to_string(),
                    restart_count: c["restart_count"].as_u64().unwrap_or(0) as u32,
                })
                .collect::<Vec<_>>();
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let verdict = check(&creates, &[events], &records, "jep-");
    println!(
        "history: {} acknowledged, {} refused, {} answers lost, {} events watched, {} records",
        verdict.acknowledged,
        verdict.refused,
        verdict.unknown,
        verdict.events,
        records.len()
    );
    assert!(
        verdict.violations.is_empty(),
        "{} violations:\n{}",
        verdict.violations.len(),
        verdict.violations.join("\n")
    );
    assert!(
        verdict.acknowledged >= 400,
        "too few creates got through: {verdict:?}"
    );
}
