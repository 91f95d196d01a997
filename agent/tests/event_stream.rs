//! The durable event stream: subscribe, run 50 containers, disconnect half-way, resume from
//! the last seq seen, with an agent restart between the two subscriptions: every event
//! arrives exactly once across the two streams, in order, and nothing is lost.

use hutch_testkit as common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{TestAgent, TestHost, ROOTFS};
use hutch_proto::v1;

const CONTAINERS: usize = 50;

fn true_spec() -> v1::ContainerSpec {
    v1::ContainerSpec {
        rootfs: ROOTFS.into(),
        command: vec!["/bin/true".into()],
        ..Default::default()
    }
}

/// A host named after `test`, its agent serving, and a subscription to its events from
/// the first.
async fn subscribed(test: &str) -> (TestHost, TestAgent, tonic::Streaming<v1::Event>) {
    let host = TestHost::new(test).await;
    let agent = host.serve(None, 10_000).await;
    let events = agent
        .client
        .clone()
        .events(v1::EventsRequest { since_seq: 0 })
        .await
        .expect("subscribe")
        .into_inner();
    (host, agent, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_disconnect_and_restart_loses_nothing() {
    let (host, agent, mut first) = subscribed("events").await;
    let mut client = agent.client.clone();
    for i in 0..CONTAINERS {
        client
            .run_container(v1::RunContainerRequest {
                name: format!("e{i:02}"),
                spec: Some(true_spec()),
            })
            .await
            .expect("run");
    }
    // Read about half of what is coming, then disconnect.
    let mut seen: Vec<v1::Event> = Vec::new();
    while seen.len() < CONTAINERS {
        let e = tokio::time::timeout(Duration::from_secs(20), first.message())
            .await
            .expect("event in time")
            .expect("stream")
            .expect("open");
        seen.push(e);
    }
    drop(first);
    let last_seen = seen.last().map(|e| e.seq).expect("some events");

    // Let every container end while nobody listens, then restart the agent.
    for i in 0..CONTAINERS {
        host.runtime.wait(&format!("e{i:02}")).await.expect("wait");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    agent.stop().await;
    let agent = host.serve(Some(host.reopen()), 10_000).await;
    let mut client = agent.client.clone();

    let node = client
        .node_info(v1::NodeInfoRequest {})
        .await
        .expect("node")
        .into_inner();
    let expected_total = node.last_event_seq;
    let mut second = client
        .events(v1::EventsRequest {
            since_seq: last_seen,
        })
        .await
        .expect("resume")
        .into_inner();
    while seen.last().map(|e| e.seq) != Some(expected_total) {
        let e = tokio::time::timeout(Duration::from_secs(20), second.message())
            .await
            .expect("event in time")
            .expect("stream")
            .expect("open");
        seen.push(e);
    }

    let seqs: Vec<u64> = seen.iter().map(|e| e.seq).collect();
    let expected: Vec<u64> = (1..=expected_total).collect();
    assert_eq!(
        seqs, expected,
        "every seq exactly once, in order, no gap at the seam"
    );

    let mut per_container: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for e in &seen {
        per_container
            .entry(e.container_id.clone())
            .or_default()
            .push(e.state);
    }
    assert_eq!(per_container.len(), CONTAINERS);
    for (id, states) in &per_container {
        assert_eq!(
            states,
            &vec![
                v1::ContainerState::Running as i32,
                v1::ContainerState::Exited as i32
            ],
            "{id}: started once, exited once"
        );
    }
    println!(
        "{} events over two streams with a restart between them",
        seen.len()
    );

    // Exited while nobody watched, still answered after the restart.
    let c = client
        .get_container(v1::GetContainerRequest { id: "e07".into() })
        .await
        .expect("get after restart")
        .into_inner();
    assert_eq!(c.exit_code, Some(0));
    agent.stop().await;
}

/// A caller that gives up half-way through a start (its deadline passes, or it
/// disconnects: tonic then drops the call) must not leave a container that runs
/// unreported: whatever was started is reported RUNNING, watched, and its exit reported.
/// Deadlines from 1 ms to 40 ms cut starts at every step on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_whose_caller_gives_up_is_still_reported_and_watched() {
    const TRIES: u64 = 40;
    let host = TestHost::new("evcut").await;
    let agent = host.serve(None, 10_000).await;
    let mut client = agent.client.clone();
    let mut events = client
        .events(v1::EventsRequest { since_seq: 0 })
        .await
        .expect("subscribe")
        .into_inner();

    let spec = v1::ContainerSpec {
        rootfs: ROOTFS.into(),
        command: vec!["/bin/sleep".into(), "0.5".into()],
        ..Default::default()
    };
    let mut given_up = Vec::new();
    for ms in 1..=TRIES {
        let name = format!("cut{ms:02}");
        let mut request = tonic::Request::new(v1::RunContainerRequest {
            name: name.clone(),
            spec: Some(spec.clone()),
        });
        request.set_timeout(Duration::from_millis(ms));
        if client.run_container(request).await.is_err() {
            given_up.push(name);
        }
    }
    // A start cut off goes on without its caller: give the last ones time to get there.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut started = Vec::new();
    for name in (1..=TRIES).map(|ms| format!("cut{ms:02}")) {
        let exists = client
            .get_container(v1::GetContainerRequest { id: name.clone() })
            .await
            .is_ok();
        if exists {
            started.push(name);
        }
    }
    let cut_but_started: Vec<&String> = given_up.iter().filter(|n| started.contains(n)).collect();
    println!(
        "{} of {TRIES} starts ran; {} of them after their caller had given up: {cut_but_started:?}",
        started.len(),
        cut_but_started.len()
    );
    assert!(
        !cut_but_started.is_empty(),
        "no start was cut half-way, so this test checked nothing: make the deadlines shorter"
    );

    // Every container that exists is reported RUNNING and then EXITED.
    let mut seen: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    let unfinished = |seen: &BTreeMap<String, Vec<i32>>| -> Vec<String> {
        started
            .iter()
            .filter(|n| {
                !seen
                    .get(*n)
                    .is_some_and(|s| s.contains(&EXITED) || s.contains(&FAILED))
            })
            .cloned()
            .collect()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !unfinished(&seen).is_empty() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, events.message()).await {
            Ok(Ok(Some(e))) => seen
                .entry(e.container_id.clone())
                .or_default()
                .push(e.state),
            other => panic!(
                "started but never reported ended: {:?} (stream: {other:?}); seen {seen:?}",
                unfinished(&seen)
            ),
        }
    }
    for name in &started {
        assert_eq!(
            seen[name],
            vec![v1::ContainerState::Running as i32, EXITED],
            "{name}: started once, exited once"
        );
    }
    agent.stop().await;
}

const EXITED: i32 = v1::ContainerState::Exited as i32;
const FAILED: i32 = v1::ContainerState::Failed as i32;

/// The end is reported from the exit record, before the supervisor has cleaned up: the
/// event carries the exit code, and a follower of the logs has every line by then. A
/// supervisor killed before writing an exit record closes its pipe to the agent too: that
/// end is reported as FAILED, naming the supervisor, once the supervisor is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ends_are_reported_from_the_exit_record_or_the_supervisor_s_death() {
    let (host, agent, mut events) = subscribed("ends").await;
    let mut client = agent.client.clone();
    let mut spec = true_spec();
    spec.command = ["sh", "-c", "seq 1 2000; exit 3"]
        .map(String::from)
        .to_vec();
    client
        .run_container(v1::RunContainerRequest {
            name: "counted".into(),
            spec: Some(spec),
        })
        .await
        .expect("run");
    let mut sleeper = true_spec();
    sleeper.command = vec!["sleep".into(), "600".into()];
    let running = client
        .run_container(v1::RunContainerRequest {
            name: "orphaned".into(),
            spec: Some(sleeper),
        })
        .await
        .expect("run")
        .into_inner();
    assert!(running.pid > 0, "{running:?}");
    let supervisor = host
        .runtime
        .get("orphaned")
        .expect("get")
        .state
        .supervisor_pid
        .expect("a supervisor");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(supervisor as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the supervisor");

    let mut ends = BTreeMap::new();
    while ends.len() < 2 {
        let e = tokio::time::timeout(Duration::from_secs(20), events.message())
            .await
            .expect("event in time")
            .expect("stream")
            .expect("open");
        let state = v1::ContainerState::try_from(e.state).unwrap_or_default();
        if matches!(
            state,
            v1::ContainerState::Exited | v1::ContainerState::Failed
        ) {
            ends.insert(e.container_id.clone(), e);
        }
    }
    let counted = &ends["counted"];
    assert_eq!(
        (counted.state, counted.exit_code),
        (v1::ContainerState::Exited as i32, Some(3)),
        "{counted:?}"
    );
    assert_eq!(
        host.stdout("counted").lines().count(),
        2000,
        "the whole log"
    );
    let orphaned = &ends["orphaned"];
    assert_eq!(
        orphaned.state,
        v1::ContainerState::Failed as i32,
        "{orphaned:?}"
    );
    assert!(orphaned.details.contains("supervisor"), "{orphaned:?}");
    for id in ["counted", "orphaned"] {
        client
            .remove_container(v1::RemoveContainerRequest {
                id: id.into(),
                force: true,
            })
            .await
            .unwrap_or_else(|e| panic!("remove {id}: {e}"));
    }
    agent.stop().await;
}
