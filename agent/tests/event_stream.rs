//! The durable event stream: subscribe, run 50 containers, disconnect half-way, resume from
//! the last seq seen, with an agent restart between the two subscriptions: every event
//! arrives exactly once across the two streams, in order, and nothing is lost.

use hutch_testkit as common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{TestHost, ROOTFS};
use hutch_proto::v1;

const CONTAINERS: usize = 50;

fn true_spec() -> v1::ContainerSpec {
    v1::ContainerSpec {
        rootfs: ROOTFS.into(),
        command: vec!["/bin/true".into()],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_disconnect_and_restart_loses_nothing() {
    let host = TestHost::new("events").await;
    let agent = host.serve(None, 10_000).await;
    let mut client = agent.client.clone();

    let mut first = client
        .events(v1::EventsRequest { since_seq: 0 })
        .await
        .expect("subscribe")
        .into_inner();
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
