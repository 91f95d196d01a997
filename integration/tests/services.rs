//! Services across the hosts of a lab (`deploy/lab`): declared from a file with
//! `hutch apply`, spread over the nodes, reached by name from containers, scaled, rolled
//! over while a client keeps asking, paused by a bad template and rolled back, kept at
//! their count when a node dies, and refused whole when the file is wrong.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hutch_integration::Lab;

/// A server answering each connection with its host name (the replica's name) and its
/// VERSION (the minbase rootfs's perl has no Sys::Hostname); it marks itself ready (for the health check) once it listens.
const SERVER: &str = r#"use IO::Socket::INET; open(my $h, "<", "/proc/sys/kernel/hostname") or die "hostname: $!"; my $name = <$h>; chomp $name; $| = 1; my $s = IO::Socket::INET->new(LocalPort => 80, Listen => 64, ReuseAddr => 1) or die "listen: $!"; open(my $f, ">", "/tmp/ready"); close $f; print "listening\n"; while (my $c = $s->accept) { print $c "$name v$ENV{VERSION}\n"; close $c }"#;

/// A client asking `web:80` `count` times, `pause_ms` apart; one line per try: `ok NAME
/// vN` or `fail WHY`.
fn client(count: u32, pause_ms: u32) -> String {
    format!(
        r#"use IO::Socket::INET; $| = 1; for my $i (1..{count}) {{ my $c = IO::Socket::INET->new(PeerAddr => "web:80", Timeout => 2); if ($c) {{ my $l = <$c>; if (defined $l) {{ print "ok $l" }} else {{ print "fail empty\n" }} }} else {{ print "fail $!\n" }} select(undef, undef, undef, {pause}) }}"#,
        pause = f64::from(pause_ms) / 1000.0
    )
}

/// The service file: `web` with `replicas`, answering with `version`; `command` replaces
/// the server (a bad template).
fn app(replicas: i64, version: u32, command: Option<&str>) -> String {
    let command = match command {
        Some(c) => format!("[\"sh\", \"-c\", \"{c}\"]"),
        None => format!("[\"perl\", \"-e\", '''{SERVER}''']"),
    };
    format!(
        r#"# The lab's web service.
[[service]]
name = "web"
replicas = {replicas}
rootfs = "debian"
command = {command}
env = {{ VERSION = "{version}" }}
health = {{ cmd = "test -e /tmp/ready", interval = "200ms" }}
update = {{ max-unavailable = 1, max-surge = 0, min-ready = "1s", progress-deadline = "3m" }}
"#
    )
}

/// A file of the test's own (the lab's hosts share this machine's filesystem).
struct TempFile(PathBuf);

impl TempFile {
    fn new(lab: &Lab, tag: &str, text: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!("{}-{tag}.toml", lab.name));
        std::fs::write(&path, text).expect("write the service file");
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `hutch ...` on the client host, expected to fail: its exit code and stderr.
fn hutch_fails(lab: &Lab, args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = vec!["hutch"];
    cmd.extend_from_slice(args);
    let out = lab.exec("client", &cmd);
    assert!(!out.status.success(), "hutch {args:?} succeeded");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn service(lab: &Lab) -> serde_json::Value {
    lab.hutch_json(&["service", "inspect", "web"])
}

/// Polls the service until `done` holds; returns it.
fn wait_service(
    lab: &Lab,
    timeout: Duration,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let s = service(lab);
        if done(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "web never {what}: {}\n{}",
            summary(&s),
            lab.log_tail("ctl", "controller", 60)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The service's status and one line per replica (the full record is too long for a
/// failure message).
fn summary(s: &serde_json::Value) -> String {
    let mut out = format!(
        "service {} revision {} replicas {} status {}\n",
        s["name"], s["revision"], s["replicas"], s["status"]
    );
    for r in s["replica_containers"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {} {} on {} stop_requested={} health={} restarts={} {}\n",
            r["id"],
            r["state"],
            r["node"],
            r["stop_requested"],
            r["health"],
            r["restart_count"],
            r["status"]
        ));
    }
    out
}

fn converged(replicas: u64, revision: u64) -> impl Fn(&serde_json::Value) -> bool {
    move |s| {
        s["status"]["converged"] == true
            && s["replicas"] == replicas
            && s["revision"] == revision
            && s["replica_containers"]
                .as_array()
                .is_some_and(|a| a.len() as u64 == replicas)
    }
}

/// Running replicas per node.
fn per_node(s: &serde_json::Value) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for c in s["replica_containers"].as_array().into_iter().flatten() {
        if c["state"] == "running" {
            *out.entry(c["node"].as_str().unwrap_or("").to_string())
                .or_default() += 1;
        }
    }
    out
}

/// Runs [`client`] in a container on `node` until it gets answers (names and rules reach
/// the nodes with their heartbeats); the answers by replica, and the failures.
fn ask(lab: &Lab, node: &str, count: u32) -> (BTreeMap<String, usize>, Vec<String>) {
    let mut last = String::new();
    for _ in 0..30 {
        let out = lab.run_perl(node, &client(count, 0));
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && last.lines().any(|l| l.starts_with("ok ")) {
            return tally(&last);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("no answer from web:80 on {node}: {last}");
}

/// Answers by replica name, and failed tries.
fn tally(text: &str) -> (BTreeMap<String, usize>, Vec<String>) {
    let mut answers = BTreeMap::new();
    let mut failures = Vec::new();
    for line in text.lines() {
        if let Some(answer) = line.strip_prefix("ok ") {
            let replica = answer.split_whitespace().next().unwrap_or("").to_string();
            *answers.entry(replica).or_default() += 1;
        } else if line.starts_with("fail") {
            failures.push(line.to_string());
        }
    }
    (answers, failures)
}

/// 1. A three-replica service on three hosts, through its whole life: spread one per node,
///    every replica answers requests to the bare name, scaling 3 -> 6 -> 2 -> 3, a rolling
///    update (max unavailable 1) with a client asking all along (no failed request, never
///    fewer than 2 available), a bad template that pauses the update with the reason and a
///    rollback that restores the old replicas, an agent killed (its replica replaced on
///    another node within the down timeout plus 2 s), bad files refused whole, and
///    `delete -f` that leaves no replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_across_hosts() {
    let lab = Lab::up("svc", 3, "").await;
    let (n1, n2) = (lab.node("n1"), lab.node("n2"));

    let v1 = TempFile::new(&lab, "v1", &app(3, 1, None));
    let dry = lab.hutch(&["apply", "-f", v1.path(), "--dry-run"]);
    assert!(dry.contains("service web: would be created"), "{dry}");
    assert!(lab
        .hutch_json(&["service", "ls"])
        .as_array()
        .is_some_and(Vec::is_empty));
    let applied = lab.hutch(&["apply", "-f", v1.path()]);
    assert!(applied.contains("service web: created"), "{applied}");
    let s = wait_service(
        &lab,
        Duration::from_secs(60),
        "converged at 3",
        converged(3, 1),
    );
    let spread = per_node(&s);
    assert_eq!(
        spread.values().copied().collect::<Vec<_>>(),
        vec![1, 1, 1],
        "one per node: {spread:?}"
    );
    assert!(
        s["address"]
            .as_str()
            .is_some_and(|a| a.starts_with("198.18.128.")),
        "{s:#}"
    );
    // Replicas are ordinary containers, listed by ps with their labels.
    let ps = lab.hutch(&["ps", "--label", "hutch.service=web", "-q"]);
    assert_eq!(ps.lines().count(), 3, "{ps}");
    let again = lab.hutch(&["apply", "-f", v1.path()]);
    assert!(again.contains("service web: unchanged"), "{again}");

    // One name, every replica: 30 connections from a container on n2 are balanced.
    let (answers, failures) = ask(&lab, &n2, 30);
    println!("web answered by replica: {answers:?}");
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(answers.len(), 3, "every replica answers: {answers:?}");
    assert!(answers.values().all(|n| *n >= 5), "{answers:?}");

    // Scaling.
    lab.hutch(&["service", "scale", "web", "6"]);
    let s = wait_service(
        &lab,
        Duration::from_secs(60),
        "converged at 6",
        converged(6, 1),
    );
    assert_eq!(
        per_node(&s).values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2]
    );
    lab.hutch(&["service", "scale", "web", "2"]);
    wait_service(
        &lab,
        Duration::from_secs(60),
        "converged at 2",
        converged(2, 1),
    );
    lab.hutch(&["service", "scale", "web", "3"]);
    wait_service(
        &lab,
        Duration::from_secs(60),
        "converged at 3 again",
        converged(3, 1),
    );
    // Removed replicas are gone, not left ended.
    let gone = Instant::now() + Duration::from_secs(20);
    while lab
        .hutch(&["ps", "-a", "--label", "hutch.service=web", "-q"])
        .lines()
        .count()
        != 3
    {
        assert!(
            Instant::now() < gone,
            "scaled-down replicas were not removed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A rolling update while a client keeps asking (every 50 ms, for about 25 s).
    lab.hutch(&[
        "run",
        "-d",
        "--name",
        "probe",
        "--node",
        &n1,
        "debian",
        "--",
        "perl",
        "-e",
        &client(500, 50),
    ]);
    std::thread::sleep(Duration::from_secs(2));
    let v2 = TempFile::new(&lab, "v2", &app(3, 2, None));
    let diff = lab.hutch(&["apply", "-f", v2.path(), "--dry-run"]);
    assert!(
        diff.contains("would be updated") && diff.contains("VERSION"),
        "{diff}"
    );
    lab.hutch(&["apply", "-f", v2.path()]);
    let mut fewest_available = u64::MAX;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let s = service(&lab);
        fewest_available = fewest_available.min(s["status"]["available"].as_u64().unwrap_or(0));
        if converged(3, 2)(&s) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the update never finished: {s:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    lab.wait_container("probe", Duration::from_secs(60), |c| c["state"] == "exited");
    let (answers, failures) = tally(&lab.hutch(&["logs", "probe"]));
    lab.hutch(&["rm", "-f", "probe"]);
    println!("during the update: {answers:?}, failures {failures:?}, fewest available {fewest_available}");
    assert!(
        failures.is_empty(),
        "requests failed during the update: {failures:?}"
    );
    assert!(
        fewest_available >= 2,
        "fewer than 2 replicas available: {fewest_available}"
    );
    // Every replica's output, each line prefixed by its replica.
    let logs = lab.hutch(&["service", "logs", "web"]);
    let prefixed: BTreeMap<&str, &str> = logs.lines().filter_map(|l| l.split_once(" | ")).collect();
    assert_eq!(prefixed.len(), 3, "{logs}");
    assert!(
        prefixed
            .iter()
            .all(|(r, l)| r.starts_with("web-2-") && *l == "listening"),
        "{logs}"
    );
    let versions = lab.hutch(&["service", "inspect", "web"]);
    assert!(versions.contains("revision           2"), "{versions}");

    // A template whose command exits 1 pauses the update; the old replicas keep serving.
    let bad = TempFile::new(&lab, "bad", &app(3, 3, Some("exit 1")));
    lab.hutch(&["apply", "-f", bad.path()]);
    let paused = wait_service(&lab, Duration::from_secs(60), "paused", |s| {
        s["status"]["paused"] == true
    });
    let why = paused["status"]["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        why.contains("revision 3 paused") && why.contains("failed"),
        "{why}"
    );
    let old_up = paused["replica_containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["state"] == "running" && c["labels"]["hutch.service.revision"] == "2")
        .count();
    assert!(old_up >= 2, "old replicas keep running: {paused:#}");
    let (answers, _) = ask(&lab, &n2, 10);
    assert!(
        !answers.is_empty(),
        "the service still answers while paused"
    );
    let ls = lab.hutch(&["service", "ls"]);
    assert!(ls.contains("paused"), "{ls}");
    lab.hutch(&["service", "rollback", "web"]);
    let s = wait_service(
        &lab,
        Duration::from_secs(60),
        "rolled back",
        converged(3, 2),
    );
    assert_eq!(s["status"]["paused"], false);

    // An agent killed: its replica is replaced on another node.
    let s = service(&lab);
    let victim = per_node(&s)
        .keys()
        .next()
        .cloned()
        .expect("a node with a replica");
    let host = victim.rsplit('-').next().expect("host").to_string();
    let killed = Instant::now();
    lab.lab(&["kill", &host, "agent"]);
    lab.wait_node(&host, "down", Duration::from_secs(15));
    let down = killed.elapsed();
    wait_service(
        &lab,
        Duration::from_secs(30),
        "replaced the lost replica",
        |s| {
            let nodes = per_node(s);
            s["status"]["available"] == 3
                && !nodes.contains_key(&victim)
                && nodes.values().sum::<usize>() == 3
        },
    );
    let replaced = killed.elapsed();
    println!(
        "node loss: DOWN after {:.2}s, replica replaced and available after {:.2}s",
        down.as_secs_f64(),
        replaced.as_secs_f64()
    );
    // Available counts a second up (min-ready): running elsewhere within down + 2 s.
    assert!(
        replaced <= down + Duration::from_secs(3),
        "replaced {:.2}s after the kill, DOWN at {:.2}s",
        replaced.as_secs_f64(),
        down.as_secs_f64()
    );
    lab.lab(&["start", &host, "agent"]);
    lab.wait_node(&host, "ready", Duration::from_secs(15));

    // Bad files: nothing applied, the place named.
    let cases = [
        ("syntax", "[[service]]\nname = \"web2\"\nreplicas = \n", ":3:12: string values must be quoted", "syntax"),
        (
            "unknown",
            "[[service]]\nname = \"web2\"\nreplicas = 1\nrootfs = \"debian\"\ncommand = [\"true\"]\ncolour = \"red\"\n",
            ":6:1: unknown field `colour`",
            "unknown field",
        ),
        ("negative", "[[service]]\nname = \"web2\"\nreplicas = -1\nrootfs = \"debian\"\n", ":3:12: replicas: -1", "negative"),
        (
            "placement",
            "[[service]]\nname = \"web2\"\nreplicas = 1\nrootfs = \"debian\"\ncommand = [\"sleep\", \"60\"]\n\n[[service]]\nname = \"web3\"\nreplicas = 1\nrootfs = \"debian\"\ncommand = [\"sleep\", \"60\"]\nplacement = { selector = { zone = \"mars\" } }\n",
            ":8: services[1] (web3): spec.placement.node_selector: no node carries zone=mars",
            "impossible placement",
        ),
    ];
    for (tag, text, expected, what) in cases {
        let f = TempFile::new(&lab, tag, text);
        let (code, err) = hutch_fails(&lab, &["apply", "-f", f.path()]);
        assert_eq!(code, Some(125), "{what}: {err}");
        assert!(
            err.contains(expected),
            "{what}: expected {expected:?} in {err}"
        );
        assert!(err.contains("nothing was applied"), "{what}: {err}");
        let names: Vec<String> = lab
            .hutch_json(&["service", "ls"])
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["name"].as_str().map(String::from))
            .collect();
        assert_eq!(names, vec!["web"], "{what}: nothing applied");
    }
    // A container may not pose as a replica, nor take a service's name.
    let (_, err) = hutch_fails(
        &lab,
        &[
            "run",
            "-d",
            "--label",
            "hutch.service=web",
            "debian",
            "--",
            "true",
        ],
    );
    assert!(err.contains("hutch.service"), "{err}");
    let (_, err) = hutch_fails(
        &lab,
        &["run", "-d", "--name", "web", "debian", "--", "true"],
    );
    assert!(err.contains("a service is named 'web'"), "{err}");

    // Delete: every replica is stopped and removed.
    let deleted = lab.hutch(&["delete", "-f", v1.path()]);
    assert!(deleted.contains("service web: deleted"), "{deleted}");
    let gone = Instant::now() + Duration::from_secs(30);
    while !lab
        .hutch(&["ps", "-a", "--label", "hutch.service=web", "-q"])
        .trim()
        .is_empty()
    {
        assert!(Instant::now() < gone, "replicas left after delete");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The service file of the restart test: `replicas` of a server answering with `version`,
/// replaced one at a time, each new one counting after 2 s up.
fn slow_app(replicas: u32, version: u32) -> String {
    app(i64::from(replicas), version, None).replace(
        "update = { max-unavailable = 1, max-surge = 0, min-ready = \"1s\"",
        "update = { max-unavailable = 1, max-surge = 1, min-ready = \"2s\"",
    )
}

/// 2. The controller killed in the middle of a rolling update and started again: the
///    update resumes from the records and finishes, never more than replicas + max surge
///    live nor fewer than replicas - max unavailable available, with exactly the declared
///    count at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_restart_mid_rollout_loses_and_doubles_nothing() {
    let lab = Lab::up("svcrestart", 3, "").await;
    mid_rollout_resumes(&lab, |lab| {
        lab.lab(&["kill", "ctl", "controller"]);
        std::thread::sleep(Duration::from_millis(300));
        lab.lab(&["start", "ctl", "controller"]);
    });
}

/// 3. The same with three controllers on etcd: the leader killed in the middle of the
///    update, another one takes over and finishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_mid_rollout_loses_and_doubles_nothing() {
    let lab = Lab::up_ha("svcfailover", 3, 3).await;
    mid_rollout_resumes(&lab, |lab| {
        let leader = lab.leader_host(Duration::from_secs(20));
        println!("kill -9 of the leading controller on {leader}");
        lab.lab(&["kill", &leader, "controller"]);
        // Until another one leads (the killed one's lease runs out first).
        let deadline = Instant::now() + Duration::from_secs(30);
        let next = loop {
            let now = lab.leader_host(Duration::from_secs(20));
            if now != leader {
                break now;
            }
            assert!(Instant::now() < deadline, "no other controller took over");
            std::thread::sleep(Duration::from_millis(100));
        };
        println!("{next} leads");
        lab.lab(&["start", &leader, "controller"]);
    });
}

/// Applies a 4-replica service, starts an update, calls `disrupt` half way and checks the
/// update finishes within its bounds with exactly 4 replicas of the new revision.
fn mid_rollout_resumes(lab: &Lab, disrupt: impl FnOnce(&Lab)) {
    let v1 = TempFile::new(lab, "v1", &slow_app(4, 1));
    lab.hutch(&["apply", "-f", v1.path()]);
    wait_service(
        lab,
        Duration::from_secs(60),
        "converged at 4",
        converged(4, 1),
    );

    let v2 = TempFile::new(lab, "v2", &slow_app(4, 2));
    lab.hutch(&["apply", "-f", v2.path()]);
    let mid = wait_service(lab, Duration::from_secs(60), "half way", |s| {
        s["status"]["updated"]
            .as_u64()
            .is_some_and(|n| (1..4).contains(&n))
    });
    println!(
        "disrupting the controllers with {} of 4 updated",
        mid["status"]["updated"]
    );
    disrupt(lab);

    let (mut most_live, mut fewest_available) = (0, u64::MAX);
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let out = lab.exec(
            "client",
            &["hutch", "-o", "json", "service", "inspect", "web"],
        );
        if let Ok(s) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
            // Once the nodes have registered again (the restarted controller counts a
            // replica only once its node reports it).
            let ready = lab
                .hutch_json(&["nodes"])
                .as_array()
                .is_some_and(|n| n.iter().all(|n| n["state"] == "ready"));
            if ready {
                most_live = most_live.max(s["status"]["replicas"].as_u64().unwrap_or(0));
                fewest_available =
                    fewest_available.min(s["status"]["available"].as_u64().unwrap_or(0));
            }
            if converged(4, 2)(&s) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the update never finished after the disruption: {}\n{}",
            serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .map(|s| summary(&s))
                .unwrap_or_else(|_| String::from_utf8_lossy(&out.stdout).into_owned()),
            lab.log_tail("ctl", "controller", 80)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("after the restart: at most {most_live} live, at least {fewest_available} available");
    assert!(
        most_live <= 5,
        "more than replicas + max surge live: {most_live}"
    );
    assert!(
        fewest_available >= 3,
        "fewer than replicas - max unavailable: {fewest_available}"
    );
    let gone = Instant::now() + Duration::from_secs(30);
    loop {
        let all = lab.hutch(&["ps", "-a", "--label", "hutch.service=web", "-q"]);
        if all.lines().count() == 4 {
            break;
        }
        assert!(Instant::now() < gone, "replicas left over: {all}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (answers, failures) = ask(lab, &lab.node("n3"), 20);
    assert!(failures.is_empty(), "{failures:?}");
    assert!(
        answers.keys().all(|r| r.starts_with("web-2-")),
        "{answers:?}"
    );
}
