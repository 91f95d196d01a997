//! An overloaded controller sheds load: with its budget of requests in flight used up (here
//! 1, taken by a slow exec), another call is answered RESOURCE_EXHAUSTED at once, and
//! served again once the budget frees up.

mod common;

use std::time::{Duration, Instant};

use common::*;
use hutch_proto::v1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_budget_sheds_at_once_and_recovers() {
    let ctl = TestController::start("overload", &["--max-concurrent-requests", "1"]);
    let node = TestNode::start("overload-node", &ctl, None, &[]).await;
    let mut client = ctl.client_when_ready(&[&node]).await;
    client
        .create_container(create("sleeper", spec(&["sleep", "30"])))
        .await
        .expect("create");
    wait_container(&mut client, "sleeper", Duration::from_secs(20), |c| {
        state_of(c) == v1::ContainerState::Running
    })
    .await;

    let mut slow = client.clone();
    let exec = tokio::spawn(async move {
        slow.exec(v1::ExecRequest {
            id: "sleeper".into(),
            command: vec!["sleep".into(), "2".into()],
        })
        .await
    });
    // Let the exec take the budget, then ask for something else.
    let mut shed = None;
    let deadline = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        if let Err(status) = client
            .list_containers(v1::ListClusterContainersRequest::default())
            .await
        {
            shed = Some((status, started.elapsed()));
            break;
        }
    }
    let (status, took) = shed.expect("a call beyond the budget is shed");
    println!("shed in {took:?}: {status:?}");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(
        status.message().contains("max_concurrent_requests"),
        "{status:?}"
    );
    assert!(
        took < Duration::from_millis(500),
        "answered at once, not queued: {took:?}"
    );

    let done = exec
        .await
        .expect("join")
        .expect("the slow exec itself completes");
    assert_eq!(done.into_inner().exit_code, Some(0));
    let listed = client
        .list_containers(v1::ListClusterContainersRequest::default())
        .await
        .expect("served again once the budget is free");
    assert_eq!(listed.into_inner().containers.len(), 1);
    client
        .remove_container(v1::RemoveContainerRequest {
            id: "sleeper".into(),
            force: true,
        })
        .await
        .expect("remove");
}
