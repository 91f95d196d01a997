//! An overloaded controller sheds load: with its budget of requests in flight used up (here
//! 1, taken by a slow exec), another call is answered RESOURCE_EXHAUSTED at once, and
//! served again once the budget frees up.

use hutch_testkit as common;

use std::time::{Duration, Instant};

use common::*;
use hutch_proto::v1;

/// A controller started with `flags`, one node, and container `name` running `sleep 30`.
async fn cluster_with_sleeper(
    test: &str,
    flags: &[&str],
    name: &str,
) -> (
    TestController,
    TestNode,
    hutch_proto::v1::controller_client::ControllerClient<tonic::transport::Channel>,
) {
    let ctl = TestController::start(test, flags);
    let node = TestNode::start(&format!("{test}-node"), &ctl, None, &[]).await;
    let mut client = ctl.client_when_ready(&[&node]).await;
    // The agent talks to the controller from 127.0.0.1 too: under a per-client limit of 1
    // its heartbeat may hold the slot a moment, and the answer says to retry.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client
            .create_container(create(name, spec(&["sleep", "30"])))
            .await
        {
            Err(s) if s.code() == tonic::Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            created => {
                created.expect("create");
                break;
            }
        }
    }
    wait_container(&mut client, name, Duration::from_secs(20), |c| {
        state_of(c) == v1::ContainerState::Running
    })
    .await;
    (ctl, node, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_budget_sheds_at_once_and_recovers() {
    let (_ctl, _node, mut client) =
        cluster_with_sleeper("overload", &["--max-concurrent-requests", "1"], "sleeper").await;

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

/// A client of the controller whose connections come from `source` (a loopback address
/// other than 127.0.0.1 is another client to the controller).
async fn client_from(
    source: std::net::IpAddr,
    ctl: &TestController,
) -> hutch_proto::v1::controller_client::ControllerClient<tonic::transport::Channel> {
    let target: std::net::SocketAddr = ctl.addr.parse().expect("controller address");
    let channel = tonic::transport::Endpoint::from_shared(ctl.url())
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(
            move |_: tonic::transport::Uri| async move {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(std::net::SocketAddr::new(source, 0))?;
                let stream = socket.connect(target).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            },
        ))
        .await
        .expect("connect from another address");
    hutch_proto::v1::controller_client::ControllerClient::new(channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_take_it_all_and_slow_requests_are_cut() {
    let (ctl, _node, _) = cluster_with_sleeper(
        "per-client",
        &["--max-requests-per-client", "1", "--request-timeout", "3s"],
        "napper",
    )
    .await;
    // The client of this test has an address of its own: the agent's heartbeats come from
    // 127.0.0.1 and must not take its one slot.
    let mut client = client_from([127, 0, 0, 3].into(), &ctl).await;

    // A slow unary exec (sleep 5) takes 127.0.0.3's one slot, and is cut at the request
    // timeout (3 s).
    let mut slow = client.clone();
    let exec = tokio::spawn(async move {
        let started = Instant::now();
        let answer = slow
            .exec(v1::ExecRequest {
                id: "napper".into(),
                command: vec!["sleep".into(), "5".into()],
            })
            .await;
        (answer, started.elapsed())
    });
    // Once the exec is in flight, a second call from the same address is refused at once.
    let deadline = Instant::now() + Duration::from_secs(2);
    let same_client = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        match client
            .list_containers(v1::ListClusterContainersRequest::default())
            .await
        {
            Err(status) => break status,
            Ok(_) if Instant::now() < deadline => continue,
            Ok(_) => panic!("127.0.0.3 was never held to its share of 1"),
        }
    };
    assert_eq!(same_client.code(), tonic::Code::ResourceExhausted);
    assert!(
        same_client.message().contains("max_requests_per_client"),
        "{same_client:?}"
    );
    // Another client is served meanwhile.
    let mut other = client_from([127, 0, 0, 2].into(), &ctl).await;
    let listed = other
        .list_containers(v1::ListClusterContainersRequest::default())
        .await
        .expect("another client is served");
    assert_eq!(listed.into_inner().containers.len(), 1);
    assert!(!exec.is_finished(), "the exec still held the slot");

    let (answer, took) = exec.await.expect("join");
    let cut = answer.expect_err("cut at the request timeout");
    println!("cut after {took:?}: {cut:?}");
    assert_eq!(cut.code(), tonic::Code::DeadlineExceeded);
    assert!(cut.message().contains("request_timeout (3s)"), "{cut:?}");
    assert!(
        took < Duration::from_millis(4500),
        "cut, not waited out (sleep 5): {took:?}"
    );
    client
        .list_containers(v1::ListClusterContainersRequest::default())
        .await
        .expect("the slot came back");
    client
        .remove_container(v1::RemoveContainerRequest {
            id: "napper".into(),
            force: true,
        })
        .await
        .expect("remove");
}
