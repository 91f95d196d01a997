//! Highly available controllers on a real etcd (three members on loopback, started by the
//! test): one leads, followers refuse writes naming it, a kill -9 of the leader is taken
//! over within seconds with nothing acknowledged lost, the agent keeps its node through
//! the failover, a watch resumes on another controller without gap or duplicate; etcd lost
//! while running makes writes UNAVAILABLE naming etcd until it returns; connections to etcd
//! cut while it runs cost the leader nothing (its streams open again); a controller with
//! another cluster CA, or without a reachable etcd, refuses to start.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hutch_core::failover::{FailoverChannel, MakeEndpoint, LEADER_HEADER, NOT_LEADER_HEADER};
use hutch_proto::v1;
use hutch_proto::v1::controller_client::ControllerClient;
use hutch_testkit::{
    controller_bin, create, force_remove, spec, state_of, unique, wait_container, wait_node,
    TcpRelay, TestController, TestEtcd, TestHost, TestNode,
};
use tokio_stream::StreamExt;
use tonic::transport::Endpoint;

type Client = ControllerClient<FailoverChannel>;

/// A client over every URL of `urls` (comma-separated), following the leader.
fn client_of(urls: &str) -> Client {
    let make: MakeEndpoint = Arc::new(|u: &str| {
        Endpoint::from_shared(u.to_string())
            .map(|e| e.connect_timeout(Duration::from_secs(2)))
            .map_err(|e| e.to_string())
    });
    let list = hutch_core::failover::split_urls(urls);
    ControllerClient::new(
        FailoverChannel::new(&list, make, Duration::from_secs(15)).expect("channel"),
    )
}

fn etcd_flags(etcd: &TestEtcd, prefix: &str) -> Vec<String> {
    vec![
        "--etcd-endpoints".into(),
        etcd.endpoints(),
        "--etcd-prefix".into(),
        prefix.into(),
    ]
}

fn start_controllers(n: usize, flags: &[String]) -> Vec<TestController> {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    (0..n)
        .map(|_| TestController::start("ha", &flags))
        .collect()
}

/// Waits until every controller of `ctls` (those running) reports `members` controllers and
/// the same one leader; returns the leader's index in `ctls`.
async fn agreed_leader(ctls: &[&TestController], members: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut leaders = BTreeSet::new();
        let mut complete = true;
        for c in ctls {
            let status = match c
                .client()
                .await
                .get_cluster_status(v1::GetClusterStatusRequest {})
                .await
            {
                Ok(s) => s.into_inner(),
                Err(_) => {
                    complete = false;
                    continue;
                }
            };
            complete &= status.controllers.len() == members && status.store_healthy;
            for s in status.controllers.iter().filter(|s| s.leader) {
                leaders.insert(s.address.clone());
            }
        }
        if complete && leaders.len() == 1 {
            let leader = leaders.iter().next().cloned().unwrap_or_default();
            if let Some(i) = ctls.iter().position(|c| c.url() == leader) {
                // The leader serves once its cluster is loaded.
                let mut direct = ctls[i].client().await;
                if direct.list_nodes(v1::ListNodesRequest {}).await.is_ok() {
                    return i;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "the controllers did not agree on one leader among {members}: {leaders:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_within_seconds_and_nothing_acknowledged_is_lost() {
    let etcd = TestEtcd::start("ha-failover", 3);
    let prefix = format!("/{}/", unique("ha"));
    let mut ctls = start_controllers(3, &etcd_flags(&etcd, &prefix));
    let urls: Vec<String> = ctls.iter().map(|c| c.url()).collect();
    let all = urls.join(",");
    let leader = agreed_leader(&ctls.iter().collect::<Vec<_>>(), 3).await;

    // A follower refuses a write, names the leader, and changes nothing.
    let follower = (leader + 1) % 3;
    let refused = ctls[follower]
        .client()
        .await
        .create_container(create("ha-refused", spec(&["/bin/true"])))
        .await
        .expect_err("a follower takes no writes");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains(&ctls[leader].url()),
        "{}",
        refused.message()
    );
    assert_eq!(
        refused
            .metadata()
            .get(LEADER_HEADER)
            .and_then(|v| v.to_str().ok()),
        Some(ctls[leader].url().as_str())
    );
    assert!(refused.metadata().get(NOT_LEADER_HEADER).is_some());
    // Reads of cluster status work on any controller; `hutch controllers` shows the leader.
    let out = Command::new(hutch_testkit::workspace_bin("hutch", None))
        .args(["--controller", &urls[follower], "-o", "json", "controllers"])
        .output()
        .expect("hutch controllers");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let leaders: Vec<&serde_json::Value> = json["controllers"]
        .as_array()
        .expect("controllers")
        .iter()
        .filter(|c| c["leader"] == true)
        .collect();
    assert_eq!(leaders.len(), 1, "{json}");
    assert_eq!(leaders[0]["address"], ctls[leader].url().as_str());

    // An agent given every controller registers through the leader.
    let node = TestNode::start_with_controllers(TestHost::new("ha").await, &all, None, &[]);
    let mut client = client_of(&all);
    wait_node(
        &mut client,
        &node.name,
        v1::NodeState::Ready,
        Duration::from_secs(15),
    )
    .await;
    let long = "ha-long";
    client
        .create_container(create(long, spec(&["/bin/sleep", "600"])))
        .await
        .expect("create");
    wait_container(&mut client, long, Duration::from_secs(15), |c| {
        state_of(c) == v1::ContainerState::Running
    })
    .await;

    // A watcher on the leader, from the start.
    let (events_tx, mut events_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = ctls[leader].client().await;
    let mut stream = watcher
        .watch_containers(v1::WatchContainersRequest {
            since_revision: 0,
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let first_watch = tokio::spawn(async move {
        while let Ok(Some(e)) = stream.message().await {
            let _ = events_tx.send(e.revision);
        }
    });
    // And one through the SDK, given every controller: it resumes on its own.
    let sdk = hutch::Client::connect(&all).await.expect("sdk client");
    let mut sdk_stream = sdk.watch(0).await.expect("sdk watch");
    let (sdk_tx, mut sdk_rx) = tokio::sync::mpsc::unbounded_channel();
    let sdk_watch = tokio::spawn(async move {
        while let Some(e) = sdk_stream.next().await {
            let _ = sdk_tx.send(e.map(|e| e.revision).map_err(|e| e.to_string()));
        }
    });

    // Creates acknowledged before the kill.
    let mut acknowledged = vec![long.to_string()];
    for i in 0..5 {
        let name = format!("ha-before-{i}");
        client
            .create_container(create(&name, spec(&["/bin/true"])))
            .await
            .expect("create before the kill");
        acknowledged.push(name);
    }

    // kill -9 the leader; creates go on through the failover client.
    let killed_at = Instant::now();
    ctls[leader].kill();
    let mut first_success = None;
    // A create sent on the dead leader's connection just as it died fails with a transport
    // error: its outcome is unknown (it may or may not have been recorded), so it is not
    // counted either way; the client is not told it succeeded.
    let mut unknown = Vec::new();
    for i in 0..10 {
        let name = format!("ha-after-{i}");
        match client
            .create_container(create(&name, spec(&["/bin/true"])))
            .await
        {
            Ok(_) => {
                first_success.get_or_insert_with(|| killed_at.elapsed());
                acknowledged.push(name);
            }
            Err(e) if first_success.is_none() && e.code() != tonic::Code::InvalidArgument => {
                println!(
                    "create {name} {:?} after the kill: {e}",
                    killed_at.elapsed()
                );
                unknown.push(name);
            }
            Err(e) => panic!(
                "create {name} failed {:?} after the kill: {e:?}",
                killed_at.elapsed()
            ),
        }
    }
    assert!(
        unknown.len() <= 1,
        "more than the one call in flight failed: {unknown:?}"
    );
    let failover = first_success.expect("a create succeeded");
    println!("failover: creates succeed again {failover:?} after kill -9 of the leader");
    assert!(
        failover < Duration::from_secs(6),
        "failover took {failover:?} (target 2 s)"
    );
    let _ = first_watch.await;

    // Every acknowledged create exists exactly once, on the new leader.
    let new_leader = agreed_leader(
        &ctls
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != leader)
            .map(|(_, c)| c)
            .collect::<Vec<_>>(),
        2,
    )
    .await;
    let list = client
        .list_containers(v1::ListClusterContainersRequest::default())
        .await
        .expect("list")
        .into_inner();
    for name in &acknowledged {
        assert_eq!(
            list.containers.iter().filter(|c| &c.name == name).count(),
            1,
            "{name} must exist once after the failover"
        );
    }
    assert!(!list.containers.iter().any(|c| c.name == "ha-refused"));
    for name in &unknown {
        assert!(list.containers.iter().filter(|c| &c.name == name).count() <= 1);
    }
    // The long-running container kept running; its node was never declared down.
    let c = wait_container(&mut client, long, Duration::from_secs(15), |c| {
        state_of(c) == v1::ContainerState::Running
    })
    .await;
    assert_eq!(c.node, node.name);
    let n = wait_node(
        &mut client,
        &node.name,
        v1::NodeState::Ready,
        Duration::from_secs(10),
    )
    .await;
    assert_ne!(n.state, v1::NodeState::Down as i32);

    // The watch resumes on another controller from the last revision it saw: with what it
    // saw before, every revision once, in order, up to the current one.
    let mut seen = Vec::new();
    while let Ok(r) = events_rx.try_recv() {
        seen.push(r);
    }
    let last = seen.last().copied().unwrap_or(0);
    let survivors: Vec<&TestController> = ctls
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, c)| c)
        .collect();
    let mut resumed = survivors[new_leader]
        .client()
        .await
        .watch_containers(v1::WatchContainersRequest {
            since_revision: last,
            ..Default::default()
        })
        .await
        .expect("resume the watch")
        .into_inner();
    let current = list.revision;
    while seen.last().copied().unwrap_or(0) < current {
        let e = tokio::time::timeout(Duration::from_secs(5), resumed.message())
            .await
            .expect("the resumed watch answers")
            .expect("event")
            .expect("not ended");
        seen.push(e.revision);
    }
    let first = seen[0];
    let expected: Vec<u64> = (first..=seen[seen.len() - 1]).collect();
    assert_eq!(
        seen, expected,
        "revisions seen across the failover: gaps or duplicates"
    );
    assert_eq!(first, 1, "the first watch started at the beginning");
    // The SDK's watch went on by itself across the failover: the same revisions.
    let mut sdk_seen = Vec::new();
    while sdk_seen.last().copied().unwrap_or(0) < current {
        let r = tokio::time::timeout(Duration::from_secs(20), sdk_rx.recv())
            .await
            .expect("the SDK's watch goes on after the failover")
            .expect("not ended");
        sdk_seen.push(r.expect("no error: the watch resumed on the new leader"));
    }
    assert_eq!(
        sdk_seen,
        (1..=current).collect::<Vec<u64>>(),
        "the SDK's watch across the failover: gaps or duplicates"
    );
    sdk_watch.abort();

    // The killed controller comes back as a follower.
    ctls[leader].restart();
    let again = agreed_leader(&ctls.iter().collect::<Vec<_>>(), 3).await;
    assert_ne!(again, leader, "leadership does not move back on its own");

    let mut cleanup = client_of(&all);
    for name in acknowledged.iter().chain(&unknown) {
        let removed = cleanup
            .remove_container(v1::RemoveContainerRequest {
                id: name.into(),
                force: true,
            })
            .await;
        if let Err(e) = removed {
            assert_eq!(e.code(), tonic::Code::NotFound, "remove {name}: {e}");
        }
    }
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_lost_makes_writes_unavailable_naming_etcd_until_it_returns() {
    let mut etcd = TestEtcd::start("ha-lost", 1);
    let prefix = format!("/{}/", unique("lost"));
    let ctls = start_controllers(1, &etcd_flags(&etcd, &prefix));
    agreed_leader(&[&ctls[0]], 1).await;
    let mut client = ctls[0].client().await;
    client
        .create_container(create("lost-before", spec(&["/bin/true"])))
        .await
        .expect("create with etcd up");

    etcd.kill_all();
    let deadline = Instant::now() + Duration::from_secs(15);
    let refusal = loop {
        match client
            .create_container(create("lost-during", spec(&["/bin/true"])))
            .await
        {
            Err(e) if e.message().contains("etcd") => break e,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "writes still answered: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(refusal.code(), tonic::Code::Unavailable, "{refusal:?}");
    println!("with etcd down: {}", refusal.message());

    etcd.restart_all();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match client
            .create_container(create("lost-after", spec(&["/bin/true"])))
            .await
        {
            Ok(_) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "writes did not resume: {e:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let got = client
        .get_container(v1::GetContainerRequest {
            id: "lost-before".into(),
        })
        .await
        .expect("the record made before etcd was lost");
    assert_eq!(got.into_inner().name, "lost-before");
    let mut plain = ctls[0].client().await;
    force_remove(&mut plain, &["lost-before", "lost-after"]).await;
}

/// The leader's term, as `ctl` reports it: its address and when it began leading.
async fn leader_term(ctl: &TestController) -> Option<(String, Option<prost_types::Timestamp>)> {
    let status = ctl
        .client()
        .await
        .get_cluster_status(v1::GetClusterStatusRequest {})
        .await
        .ok()?
        .into_inner();
    status
        .controllers
        .into_iter()
        .find(|c| c.leader)
        .map(|c| (c.address, c.leader_since))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_to_etcd_cut_while_the_lease_lives_cost_the_leader_nothing() {
    let etcd = TestEtcd::start("ha-cut", 1);
    let endpoint = etcd.endpoint(0);
    let target = endpoint
        .trim_start_matches("http://")
        .parse()
        .expect("etcd's client address");
    let relay = TcpRelay::start(target).expect("relay");
    let prefix = format!("/{}/", unique("cut"));
    let flags = [
        "--etcd-endpoints".to_string(),
        format!("http://{}", relay.addr()),
        "--etcd-prefix".into(),
        prefix,
    ];
    let ctls = start_controllers(1, &flags);
    agreed_leader(&[&ctls[0]], 1).await;
    let before = leader_term(&ctls[0]).await.expect("a leader");
    let mut client = ctls[0].client().await;
    // What etcd or a middlebox that drops connections does: five times, the election's
    // and the store's connections are closed under the controller (the lease is 1 s).
    for round in 0..5 {
        let cut = relay.cut();
        assert!(cut >= 1, "round {round}: no connection to cut");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let name = format!("cut-{round}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match client
                .create_container(create(&name, spec(&["/bin/true"])))
                .await
            {
                Ok(_) => break,
                // Made, though its answer was lost with a connection.
                Err(e) if e.code() == tonic::Code::AlreadyExists => break,
                // A write in flight as its connection was cut may fail; the next is served.
                Err(e) => assert!(Instant::now() < deadline, "round {round}: {e:?}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let after = leader_term(&ctls[0]).await.expect("a leader");
    let log = ctls[0].log_text();
    assert_eq!(before, after, "the term changed: {log}");
    assert!(!log.contains("campaigning again"), "{log}");
    assert!(
        log.contains("opening it again on a new connection") && log.contains("is open again"),
        "the streams were not opened again: {log}"
    );
    assert!(relay.accepted() >= 10, "{} connections", relay.accepted());
    let names: Vec<String> = (0..5).map(|r| format!("cut-{r}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    force_remove(&mut client, &names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_controllers_keep_their_etcd_connections_and_terms() {
    // Three members: the etcd client spreads its streams over one connection per member, so
    // the leader key's watch sits alone on a connection etcd sends nothing on, where pings
    // more frequent than etcd's minimum are answered with GOAWAY after about 8 s.
    let etcd = TestEtcd::start("ha-idle", 3);
    let prefix = format!("/{}/", unique("idle"));
    let ctls = start_controllers(2, &etcd_flags(&etcd, &prefix));
    let refs: Vec<&TestController> = ctls.iter().collect();
    let leader = agreed_leader(&refs, 2).await;
    let before = leader_term(&ctls[leader]).await.expect("a leader");
    tokio::time::sleep(Duration::from_secs(14)).await;
    let after = leader_term(&ctls[leader]).await.expect("a leader");
    for c in &ctls {
        let log = c.log_text();
        assert!(
            !log.contains(" broke (") && !log.contains("campaigning again"),
            "{log}"
        );
    }
    assert_eq!(before, after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_key_is_deleted_stops_at_once_and_another_takes_over() {
    let etcd = TestEtcd::start("ha-key", 1);
    let prefix = format!("/{}/", unique("key"));
    let ctls = start_controllers(2, &etcd_flags(&etcd, &prefix));
    let refs: Vec<&TestController> = ctls.iter().collect();
    let first = agreed_leader(&refs, 2).await;
    // An operator (or a restore) removes the leader key while the lease lives.
    let deleted = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &etcd.endpoints(),
            "del",
            &format!("{prefix}leader"),
        ])
        .output()
        .expect("etcdctl");
    assert!(
        deleted.status.success(),
        "{}",
        String::from_utf8_lossy(&deleted.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut old = ctls[first].client().await;
    loop {
        // The old leader refuses writes or a new term serves them: never two leaders.
        let status = old
            .get_cluster_status(v1::GetClusterStatusRequest {})
            .await
            .expect("status")
            .into_inner();
        let leaders = status.controllers.iter().filter(|c| c.leader).count();
        assert!(leaders <= 1, "{status:?}");
        if leaders == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "no new leader: {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut client = client_of(&format!("{},{}", ctls[0].url(), ctls[1].url()));
    client
        .create_container(create("key-after", spec(&["/bin/true"])))
        .await
        .expect("writes go on under the new leader");
    // The old leader serves writes only if it won the new term: otherwise it refuses them.
    let now = agreed_leader(&refs, 2).await;
    if now != first {
        let refused = old
            .create_container(create("key-old", spec(&["/bin/true"])))
            .await
            .expect_err("the old leader must refuse writes");
        assert!(
            refused.metadata().get(NOT_LEADER_HEADER).is_some(),
            "{refused:?}"
        );
    }
    assert!(
        ctls[first]
            .log_text()
            .contains("the leader key was deleted"),
        "{}",
        ctls[first].log_text()
    );
    let mut plain = ctls[agreed_leader(&refs, 2).await].client().await;
    force_remove(&mut plain, &["key-after"]).await;
}

/// Runs the controller binary with `args` until it exits (at most 20 s).
fn run_controller(args: &[&str]) -> std::process::Output {
    let mut child = Command::new(controller_bin())
        .env("HUTCH_CLUSTER_CIDR", "none")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the controller kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_cluster_ca_or_an_unreachable_etcd_is_refused_at_start() {
    let etcd = TestEtcd::start("ha-ca", 1);
    let prefix = format!("/{}/", unique("ca"));
    let mut flags = etcd_flags(&etcd, &prefix);
    flags.push("--tls".into());
    // Started: it recorded its CA in etcd before it printed its address.
    let _first = start_controllers(1, &flags);

    // Another controller with a CA of its own (a fresh data dir makes one).
    let other_dir = format!("/var/tmp/hutch-test-{}", unique("ca-other"));
    let flag_refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut args = vec!["--listen", "127.0.0.1:0", "--data-dir", other_dir.as_str()];
    args.extend(flag_refs.iter());
    let out = run_controller(&args);
    let _ = std::fs::remove_dir_all(&other_dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second CA was accepted: {stderr}");
    assert!(
        stderr.contains("same CA") && stderr.contains("cluster CA"),
        "{stderr}"
    );

    // Nothing listens where etcd is said to be.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let dir = format!("/var/tmp/hutch-test-{}", unique("no-etcd"));
    let endpoint = format!("http://127.0.0.1:{port}");
    let out = run_controller(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &dir,
        "--etcd-endpoints",
        &endpoint,
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(
        stderr.contains("etcd") && stderr.contains(&endpoint),
        "{stderr}"
    );
}

const ADMIN: &str = "ha-admin-0123456789abcdef01234567";

/// The `hutch` CLI with the cluster CA and the admin token against `controllers`.
fn hutch_cli(ca: &std::path::Path, controllers: &str, args: &[&str]) -> std::process::Output {
    Command::new(hutch_testkit::workspace_bin("hutch", None))
        .args(["--controller", controllers, "--ca-cert"])
        .arg(ca)
        .args(["--token", ADMIN])
        .args(args)
        .output()
        .expect("hutch")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_an_agent_joins_through_any_controller_and_survives_a_failover() {
    let etcd = TestEtcd::start("ha-tls", 1);
    let prefix = format!("/{}/", unique("tls"));
    let tokens = format!("/var/tmp/hutch-test-{}.tokens", unique("ha-tls"));
    std::fs::write(&tokens, format!("{ADMIN},ops,admin\n")).expect("tokens file");
    let mut flags = etcd_flags(&etcd, &prefix);
    flags.extend(["--tls".into(), "--tokens-file".into(), tokens.clone()]);
    let mut first = start_controllers(1, &flags).remove(0);
    let ca = first.data_dir.join("tls/ca.crt");
    let ca_key = first.data_dir.join("tls/ca.key");
    // The second controller is given the first one's CA, as every controller of a cluster.
    flags.extend([
        "--tls-ca-cert".into(),
        ca.display().to_string(),
        "--tls-ca-key".into(),
        ca_key.display().to_string(),
    ]);
    let mut second = start_controllers(1, &flags).remove(0);
    let both = format!("{},{}", first.addr, second.addr);

    let leader_is_first = || -> bool {
        let out = hutch_cli(&ca, &both, &["-o", "json", "controllers"]);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        json["controllers"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["leader"] == true && c["address"] == format!("https://{}", first.addr))
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let leader_first = loop {
        let out = hutch_cli(&ca, &both, &["-o", "json", "controllers"]);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let leaders = json["controllers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["leader"] == true)
            .count();
        if leaders == 1 {
            break leader_is_first();
        }
        assert!(Instant::now() < deadline, "no leader: {json}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let follower_addr = if leader_first {
        second.addr.clone()
    } else {
        first.addr.clone()
    };

    // A token made through the follower; the agent joins (through the leader: a follower
    // refuses joins) with it.
    let made = hutch_cli(&ca, &follower_addr, &["token", "create", "--ttl", "10m"]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let token = String::from_utf8_lossy(&made.stdout).trim().to_string();
    let node = TestNode::start_with_controllers(
        TestHost::new("ha-tls").await,
        &both,
        None,
        &["--join", &token],
    );
    let ready = |node: &TestNode| -> bool {
        let out = hutch_cli(&ca, &both, &["-o", "json", "nodes"]);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        json.as_array()
            .into_iter()
            .flatten()
            .any(|n| n["name"] == node.name.as_str() && n["state"] == "ready")
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready(&node) {
        assert!(Instant::now() < deadline, "{}", node.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The leader dies: the agent's node is READY again through the other controller, over
    // mutual TLS with the same CA.
    if leader_first {
        first.kill();
    } else {
        second.kill();
    }
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    while !ready(&node) {
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "the node did not come back after the failover: {}",
            node.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "node READY through the new leader {:?} after the kill",
        killed.elapsed()
    );
    let ran = hutch_cli(
        &ca,
        &both,
        &["run", "--rm", "debian", "--", "echo", "after-failover"],
    );
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&ran.stdout).trim(),
        "after-failover"
    );
    drop(node);
    let _ = std::fs::remove_file(&tokens);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_copies_a_stopped_controllers_records_and_a_cluster_runs_on_them() {
    let etcd = TestEtcd::start("ha-migrate", 1);
    // A single controller on redb with a record, then stopped.
    let mut single = TestController::start("ha-migrate", &[]);
    single
        .client()
        .await
        .create_container(create("migrated", spec(&["/bin/true"])))
        .await
        .expect("create on redb");
    single.kill();
    let prefix = format!("/{}/", unique("mig"));
    let from = format!("redb:{}", single.data_dir.display());
    let to = format!("etcd:{}", etcd.endpoints());
    let args = [
        "migrate",
        "--from",
        &from,
        "--to",
        &to,
        "--etcd-prefix",
        &prefix,
    ];
    let out = run_controller(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("migrated 1 containers"), "{stdout}");
    // Twice is refused: the prefix holds records.
    let again = run_controller(&args);
    assert_eq!(again.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds records"));
    // A bad source is a usage error.
    let bad = run_controller(&["migrate", "--from", "/no/scheme", "--to", &to]);
    assert_eq!(bad.status.code(), Some(2));
    // A controller on etcd serves the migrated record; migrating under it is refused.
    let ctl = start_controllers(1, &etcd_flags(&etcd, &prefix)).remove(0);
    agreed_leader(&[&ctl], 1).await;
    let got = ctl
        .client()
        .await
        .get_container(v1::GetContainerRequest {
            id: "migrated".into(),
        })
        .await
        .expect("the migrated record");
    assert_eq!(got.into_inner().name, "migrated");
    let running = run_controller(&args);
    assert_eq!(running.status.code(), Some(125));
    let err = String::from_utf8_lossy(&running.stderr);
    assert!(
        err.contains("controllers are running") || err.contains("already holds records"),
        "{err}"
    );
    let mut client = ctl.client().await;
    force_remove(&mut client, &["migrated"]).await;
}
