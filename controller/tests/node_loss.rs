//! Kill -9 an agent: its node goes NOT_READY, then DOWN; its containers become LOST; an
//! `on-failure` container starts again on the other node. Restart the agent: it registers
//! again, and reconciliation stops the stale copy that kept running there and says so.
//! Freeze agents for a moment: their nodes go NOT_READY, and READY again with their next
//! heartbeats.

use hutch_testkit as common;

use std::time::Duration;

use common::*;
use hutch_proto::v1::{self, ContainerState as S};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_node_is_noticed_and_its_containers_move() {
    let ctl = TestController::start("nodeloss", &[]);
    let mut doomed = TestNode::start("loss-doomed", &ctl, None, &[]).await;
    let survivor = TestNode::start("loss-survivor", &ctl, None, &[]).await;
    let mut client = ctl.client_when_ready(&[&doomed, &survivor]).await;

    // Both containers on the doomed node: the survivor is cordoned while they are placed.
    client
        .cordon_node(v1::CordonNodeRequest {
            name: survivor.name.clone(),
        })
        .await
        .expect("cordon");
    let mut restartable = create("restartable", spec(&["sleep", "600"]));
    restartable.restart_policy = Some(v1::RestartPolicy {
        kind: v1::restart_policy::Kind::OnFailure as i32,
        max_retries: 3,
    });
    client.create_container(restartable).await.expect("create");
    client
        .create_container(create("once", spec(&["sleep", "600"])))
        .await
        .expect("create");
    for name in ["restartable", "once"] {
        let c = wait_container(&mut client, name, Duration::from_secs(20), |c| {
            state_of(c) == S::Running
        })
        .await;
        assert_eq!(c.node, doomed.name);
    }
    client
        .uncordon_node(v1::UncordonNodeRequest {
            name: survivor.name.clone(),
        })
        .await
        .expect("uncordon");

    doomed.kill();
    let n = wait_node(
        &mut client,
        &doomed.name,
        v1::NodeState::NotReady,
        Duration::from_secs(5),
    )
    .await;
    println!("{}: {}", n.name, n.message);
    let n = wait_node(
        &mut client,
        &doomed.name,
        v1::NodeState::Down,
        Duration::from_secs(10),
    )
    .await;
    println!("{}: {}", n.name, n.message);

    let once = wait_container(&mut client, "once", Duration::from_secs(5), |c| {
        state_of(c) == S::Lost
    })
    .await;
    assert_eq!(once.node, doomed.name);
    let moved = wait_container(&mut client, "restartable", Duration::from_secs(20), |c| {
        state_of(c) == S::Running && c.node == survivor.name
    })
    .await;
    assert_eq!(moved.restart_count, 1, "{moved:#?}");

    // The agent comes back: it registers again; the copy of `restartable` that kept running
    // there is a stale copy and is stopped; `once` is still running there, so its record
    // says so again.
    doomed.restart();
    wait_node(
        &mut client,
        &doomed.name,
        v1::NodeState::Ready,
        Duration::from_secs(10),
    )
    .await;
    let noted = wait_container(&mut client, "restartable", Duration::from_secs(10), |c| {
        c.status_message.contains("stale copy")
    })
    .await;
    assert_eq!(noted.node, survivor.name);
    assert_eq!(state_of(&noted), S::Running);
    let back = wait_container(&mut client, "once", Duration::from_secs(10), |c| {
        state_of(c) == S::Running
    })
    .await;
    assert!(back.status_message.contains("is back"), "{back:#?}");
    let copies: Vec<String> = doomed
        .agent()
        .await
        .list_containers(v1::ListContainersRequest::default())
        .await
        .expect("agent list")
        .into_inner()
        .containers
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(
        copies,
        vec!["once.0".to_string()],
        "exactly one copy per create"
    );

    force_remove(&mut client, &["restartable", "once"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_restartable_containers_and_stops_the_rest() {
    let ctl = TestController::start("drain", &[]);
    let drained = TestNode::start("drain-from", &ctl, None, &[]).await;
    let other = TestNode::start("drain-to", &ctl, None, &[]).await;
    let mut client = ctl.client_when_ready(&[&drained, &other]).await;
    client
        .cordon_node(v1::CordonNodeRequest {
            name: other.name.clone(),
        })
        .await
        .expect("cordon");
    let mut quick = spec(&["sleep", "600"]);
    quick.stop_grace_seconds = Some(1);
    let mut mover = create("mover", quick.clone());
    mover.restart_policy = Some(v1::RestartPolicy {
        kind: v1::restart_policy::Kind::OnFailure as i32,
        max_retries: 0,
    });
    client.create_container(mover).await.expect("create");
    client
        .create_container(create("stayer", quick))
        .await
        .expect("create");
    for name in ["mover", "stayer"] {
        wait_container(&mut client, name, Duration::from_secs(20), |c| {
            state_of(c) == S::Running
        })
        .await;
    }
    client
        .uncordon_node(v1::UncordonNodeRequest {
            name: other.name.clone(),
        })
        .await
        .expect("uncordon");

    let drain = client
        .drain_node(v1::DrainNodeRequest {
            name: drained.name.clone(),
        })
        .await
        .expect("drain")
        .into_inner();
    let mut stopped = drain.containers.clone();
    stopped.sort();
    assert_eq!(stopped, vec!["mover".to_string(), "stayer".to_string()]);
    assert!(drain.node.expect("node").cordoned);
    let moved = wait_container(&mut client, "mover", Duration::from_secs(20), |c| {
        state_of(c) == S::Running && c.node == other.name
    })
    .await;
    assert_eq!(moved.restart_count, 1);
    let stayer = client
        .get_container(v1::GetContainerRequest {
            id: "stayer".into(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(state_of(&stayer), S::Exited, "{stayer:#?}");
    assert_eq!(stayer.node, drained.name);
    force_remove(&mut client, &["mover", "stayer"]).await;
}

/// `RemoveNode`: an unknown node is NOT_FOUND; a live one is refused with the reason; with
/// force its containers become LOST and its record goes; its agent (still running)
/// registers again on its next heartbeat, as after a node loss, and the container it kept
/// running is RUNNING again ("is back").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_node() {
    let ctl = TestController::start("noderm", &[]);
    let node = TestNode::start("noderm-a", &ctl, None, &[]).await;
    let mut client = ctl.client_when_ready(&[&node]).await;
    client
        .create_container(create("held", spec(&["sleep", "600"])))
        .await
        .expect("create");
    wait_container(&mut client, "held", Duration::from_secs(20), |c| {
        state_of(c) == S::Running
    })
    .await;

    let remove = |name: &str, force: bool| v1::RemoveNodeRequest {
        name: name.into(),
        force,
    };
    let missing = client
        .remove_node(remove("noderm-nope", true))
        .await
        .expect_err("unknown");
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
    let alive = client
        .remove_node(remove(&node.name, false))
        .await
        .expect_err("alive");
    assert_eq!(alive.code(), tonic::Code::FailedPrecondition, "{alive:?}");
    assert!(alive.message().contains("is ready"), "{}", alive.message());

    let removed = client
        .remove_node(remove(&node.name, true))
        .await
        .expect("forced")
        .into_inner();
    assert_eq!(removed.lost, vec!["held".to_string()]);
    assert_eq!(removed.node.expect("its record").name, node.name);

    // The agent keeps heartbeating: told it is not registered, it registers again.
    wait_node(
        &mut client,
        &node.name,
        v1::NodeState::Ready,
        Duration::from_secs(10),
    )
    .await;
    // Only a LOST record comes back this way.
    let back = wait_container(&mut client, "held", Duration::from_secs(10), |c| {
        state_of(c) == S::Running && c.status_message.contains("is back")
    })
    .await;
    assert_eq!(back.node, node.name);
    force_remove(&mut client, &["held"]).await;
}

/// Two agents frozen past three heartbeats: both nodes go NOT_READY and the scheduler
/// passes them over (a create waits PENDING); their next heartbeats make them READY again
/// (recorded together by the liveness check), the waiting container is placed, and so is a
/// new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_heard_again_are_ready_again() {
    // DOWN only after 30 s: a slow machine does not turn the pause into a node loss.
    let ctl = TestController::start("nodeback", &["--down-after", "30s"]);
    let a = TestNode::start("back-a", &ctl, None, &[]).await;
    let b = TestNode::start("back-b", &ctl, None, &[]).await;
    let mut client = ctl.client_when_ready(&[&a, &b]).await;

    a.pause();
    b.pause();
    for node in [&a, &b] {
        // NOT_READY after 3 heartbeats missed (600 ms).
        let n = wait_node(
            &mut client,
            &node.name,
            v1::NodeState::NotReady,
            Duration::from_secs(2),
        )
        .await;
        assert!(n.message.contains("heartbeats missed"), "{n:#?}");
    }
    let early = client
        .create_container(create("back-early", spec(&["sleep", "600"])))
        .await
        .expect("create")
        .into_inner();
    a.resume();
    b.resume();
    assert_eq!(
        state_of(&early),
        S::Pending,
        "no node is ready, so nothing is placed: {early:#?}"
    );
    for node in [&a, &b] {
        let n = wait_node(
            &mut client,
            &node.name,
            v1::NodeState::Ready,
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(n.message, "heartbeats resumed", "{n:#?}");
    }
    client
        .create_container(create("back-later", spec(&["sleep", "600"])))
        .await
        .expect("create");
    for name in ["back-early", "back-later"] {
        let placed = wait_container(&mut client, name, Duration::from_secs(20), |c| {
            state_of(c) == S::Running
        })
        .await;
        assert!([&a.name, &b.name].contains(&&placed.node), "{placed:#?}");
    }
}
