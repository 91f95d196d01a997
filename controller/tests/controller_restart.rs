//! Kill -9 the controller in the middle of 50 creates, restart it: every acknowledged create
//! exists exactly once (one record, one copy on a node), the creates that failed can be sent
//! again safely, the agent registers again, and a watcher resumes from its last revision
//! with no gap and no duplicate.

use hutch_testkit as common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use hutch_proto::v1::{self, ContainerState as S};
use tokio_stream::StreamExt;

const CREATES: usize = 64;
/// Enough clients at once that their changes are staged for shared syncs (group commit:
/// see the controller's `cluster::durable::GROUP_MIN`).
const CREATORS: usize = 8;

/// Follows `WatchContainers` from `since`, recording revisions, until the stream breaks.
async fn watch_until_broken(
    url: String,
    since: u64,
    seen: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
) {
    let Ok(mut client) = hutch_proto::v1::controller_client::ControllerClient::connect(url).await
    else {
        return;
    };
    let Ok(stream) = client
        .watch_containers(v1::WatchContainersRequest {
            since_revision: since,
            ..Default::default()
        })
        .await
    else {
        return;
    };
    let mut stream = stream.into_inner();
    while let Some(Ok(event)) = stream.next().await {
        seen.lock().expect("lock").push(event.revision);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_across_a_kill_9() {
    let mut ctl = TestController::start("ctlrestart", &[]);
    let node = TestNode::start("ctlrestart-node", &ctl, None, &[]).await;
    let mut client = ctl.client().await;
    let registered = wait_node(
        &mut client,
        &node.name,
        v1::NodeState::Ready,
        Duration::from_secs(10),
    )
    .await;

    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let watcher = tokio::spawn(watch_until_broken(ctl.url(), 0, seen.clone()));

    // Creates in the background, from 8 clients at once (their commits share syncs and race
    // for the store); the controller dies after the 20th acknowledgement.
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel();
    let creators: Vec<_> = (0..CREATORS)
        .map(|lane| {
            let (url, acked_tx) = (ctl.url(), acked_tx.clone());
            tokio::spawn(async move {
                let mut client = hutch_proto::v1::controller_client::ControllerClient::connect(url)
                    .await
                    .expect("connect");
                let mut sent = 0;
                for i in (lane..CREATES).step_by(CREATORS) {
                    let name = format!("burst-{i:02}");
                    match client
                        .create_container(create(&name, spec(&["/bin/true"])))
                        .await
                    {
                        Ok(_) => {
                            let _ = acked_tx.send(name);
                        }
                        Err(_) => return sent,
                    }
                    sent += 1;
                }
                sent
            })
        })
        .collect();
    drop(acked_tx);
    let mut acked = BTreeSet::new();
    while acked.len() < 20 {
        acked.insert(acked_rx.recv().await.expect("acks stop before 20"));
    }
    ctl.kill();
    let mut stopped_at = 0;
    for c in creators {
        stopped_at += c.await.expect("creator");
    }
    while let Ok(name) = acked_rx.try_recv() {
        acked.insert(name);
    }
    watcher.await.expect("watcher");
    println!(
        "killed after {} acknowledged creates ({stopped_at} answered OK in all)",
        acked.len()
    );
    let before: Vec<u64> = seen.lock().expect("lock").clone();

    ctl.restart();
    let mut client = ctl.client().await;
    let again = wait_node(
        &mut client,
        &node.name,
        v1::NodeState::Ready,
        Duration::from_secs(15),
    )
    .await;
    assert!(
        again.registered_at != registered.registered_at,
        "the agent registered again"
    );

    // Every acknowledged create is there.
    for name in &acked {
        client
            .get_container(v1::GetContainerRequest { id: name.clone() })
            .await
            .unwrap_or_else(|e| panic!("acknowledged {name} lost: {e}"));
    }
    // Send every create again (idempotent), and the ones never sent.
    for i in 0..CREATES {
        let name = format!("burst-{i:02}");
        client
            .create_container(create(&name, spec(&["/bin/true"])))
            .await
            .unwrap_or_else(|e| panic!("create {name} again: {e}"));
    }
    for i in 0..CREATES {
        let c = wait_container(
            &mut client,
            &format!("burst-{i:02}"),
            Duration::from_secs(60),
            |c| state_of(c) == S::Exited,
        )
        .await;
        assert_eq!(c.exit_code, Some(0), "{c:#?}");
        assert_eq!(c.restart_count, 0);
    }

    // Exactly one copy per create on the node.
    let copies = node
        .agent()
        .await
        .list_containers(v1::ListContainersRequest::default())
        .await
        .expect("agent list")
        .into_inner()
        .containers;
    let mut per_name: BTreeMap<String, usize> = BTreeMap::new();
    for c in &copies {
        *per_name.entry(c.name.clone()).or_default() += 1;
    }
    assert_eq!(per_name.len(), CREATES, "{per_name:?}");
    assert!(per_name.keys().all(|k| k.ends_with(".0")), "{per_name:?}");

    // The watcher resumes from the last revision it saw: no gap, no duplicate, up to now.
    let last = before.last().copied().unwrap_or(0);
    let now = client
        .list_containers(v1::ListClusterContainersRequest::default())
        .await
        .expect("list")
        .into_inner()
        .containers
        .iter()
        .map(|c| c.revision)
        .max()
        .expect("containers");
    let resumed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let watcher = tokio::spawn(watch_until_broken(ctl.url(), last, resumed.clone()));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while resumed
        .lock()
        .expect("lock")
        .last()
        .copied()
        .unwrap_or(last)
        < now
    {
        assert!(
            std::time::Instant::now() < deadline,
            "watch did not catch up to {now}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    watcher.abort();
    let mut all = before.clone();
    all.extend(resumed.lock().expect("lock").iter().copied());
    let expected: Vec<u64> = (1..=all.last().copied().unwrap_or(0)).collect();
    assert_eq!(
        all,
        expected,
        "revisions seen across the restart (before: {})",
        before.len()
    );

    for i in 0..CREATES {
        client
            .remove_container(v1::RemoveContainerRequest {
                id: format!("burst-{i:02}"),
                force: true,
            })
            .await
            .expect("remove");
    }
}

/// While the controller is down, containers end and the agent's event log is compacted past
/// the controller's last event: on restart the controller learns the real exit status by
/// reconciling, and follows the agent's events again from its newest one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exits_while_the_controller_is_away_are_recorded() {
    let mut ctl = TestController::start("ctlaway", &[]);
    let node = TestNode::start("ctlaway-node", &ctl, None, &["--event-log-keep=2"]).await;
    let mut client = ctl.client_when_ready(&[&node]).await;
    for (name, code) in [("away-0", 0), ("away-3", 3), ("away-7", 7)] {
        client
            .create_container(create(
                name,
                spec(&["/bin/sh", "-c", &format!("sleep 1; exit {code}")]),
            ))
            .await
            .expect("create");
        wait_container(&mut client, name, Duration::from_secs(20), |c| {
            state_of(c) == S::Running
        })
        .await;
    }
    ctl.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await; // all three exit meanwhile
    ctl.restart();
    let mut client = ctl.client().await;
    for (name, code) in [("away-0", 0), ("away-3", 3), ("away-7", 7)] {
        let c = wait_container(&mut client, name, Duration::from_secs(20), |c| {
            state_of(c) == S::Exited
        })
        .await;
        assert_eq!(c.exit_code, Some(code), "{c:#?}");
    }
    // Events flow again: a new container's whole life is seen.
    client
        .create_container(create("after", spec(&["/bin/true"])))
        .await
        .expect("create");
    let c = wait_container(&mut client, "after", Duration::from_secs(20), |c| {
        state_of(c) == S::Exited
    })
    .await;
    assert_eq!(c.exit_code, Some(0));
    force_remove(&mut client, &["away-0", "away-3", "away-7", "after"]).await;
}

/// A disk that fills up under the controller's store, from 8 clients at once: the write
/// that fails ends the controller (exit code 75) instead of leaving it up refusing every
/// write, every create acknowledged before is in the store when it starts again on a
/// bigger disk, and none of those refused is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_controller_and_loses_nothing_acknowledged() {
    let dir = std::path::PathBuf::from(format!("/var/tmp/hutch-test-{}", unique("fulldisk")));
    let disk = SmallDisk::mount(dir.clone(), "size=2m");
    let mut ctl = TestController::start_in(dir.join("data"), &[]);
    // About 32 KiB a create (the record and its watch event): the disk holds some 60.
    let long_argument = "x".repeat(16 * 1024);
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel();
    let creators: Vec<_> = (0..CREATORS)
        .map(|lane| {
            let (url, acked_tx) = (ctl.url(), acked_tx.clone());
            let argument = long_argument.clone();
            tokio::spawn(async move {
                let mut client = hutch_proto::v1::controller_client::ControllerClient::connect(url)
                    .await
                    .expect("connect");
                let mut refusals = Vec::new();
                for i in (lane..1_000).step_by(CREATORS) {
                    let name = format!("fill-{i:03}");
                    let request = create(&name, spec(&["/bin/echo", &argument]));
                    match client.create_container(request).await {
                        Ok(_) => {
                            let _ = acked_tx.send(name);
                        }
                        Err(status) => {
                            refusals.push((name, status.code(), status.message().to_string()));
                            if refusals.len() == 3 {
                                break;
                            }
                        }
                    }
                }
                refusals
            })
        })
        .collect();
    drop(acked_tx);
    let mut refusals = Vec::new();
    for c in creators {
        refusals.extend(c.await.expect("creator"));
    }
    let mut acked = BTreeSet::new();
    while let Ok(name) = acked_rx.try_recv() {
        acked.insert(name);
    }
    let exited = ctl.wait_exit(Duration::from_secs(20));
    let log = ctl.log_text();
    assert_eq!(
        exited.and_then(|s| s.code()),
        Some(75),
        "the controller exits once its store failed a write: {exited:?}\n{log}"
    );
    assert!(
        log.contains("takes no more until it is opened again"),
        "the controller says why it exits: {log}"
    );
    assert!(
        !acked.is_empty() && acked.len() < 1_000,
        "{} creates acknowledged before the disk filled",
        acked.len()
    );
    // A refusal says what happened; later ones may meet a controller on its way out.
    let first = refusals
        .iter()
        .find(|(_, code, message)| {
            *code == tonic::Code::Unavailable && message.contains("state store")
        })
        .unwrap_or_else(|| panic!("no refusal names the state store: {refusals:#?}"));
    println!(
        "{} creates acknowledged, then refused: {first:?} ({} refusals seen)",
        acked.len(),
        refusals.len()
    );

    disk.mount_with("remount,size=64m");
    ctl.restart();
    let mut client = ctl.client().await;
    let stored: BTreeSet<String> = client
        .list_containers(v1::ListClusterContainersRequest::default())
        .await
        .expect("list")
        .into_inner()
        .containers
        .into_iter()
        .map(|c| c.name)
        .collect();
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged creates lost: {lost:?}");
    // A create refused with "nothing was changed" is not there. One whose sync failed was
    // told it may or may not have been made (a sync may have written it just before: it
    // takes every batch staged by then), as was one that met a controller on its way out.
    for (name, code, message) in &refusals {
        if message.contains("nothing was changed") {
            assert!(
                !stored.contains(name),
                "{name} was refused ({code:?}: {message}) but is stored"
            );
        }
    }
    // The store takes writes again.
    client
        .create_container(create("after-restart", spec(&["/bin/true"])))
        .await
        .expect("a create after the restart");
    drop(ctl);
    drop(disk);
}
