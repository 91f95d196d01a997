//! A real controller and real agents on loopback: placement follows memory, a container no
//! node can hold stays PENDING with the reason and starts when a node with room registers;
//! the tutorial's OOM case through the controller; logs and exec proxied to the node.

use hutch_testkit as common;

use std::time::{Duration, Instant};

use common::*;
use hutch_proto::v1::{self, ContainerState as S};

const GIB: u64 = 1 << 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_follows_memory_and_pending_waits_for_room() {
    let ctl = TestController::start("placement", &[]);
    let small = TestNode::start("place-small", &ctl, Some(GIB), &[]).await;
    let big = TestNode::start("place-big", &ctl, Some(2 * GIB), &[]).await;
    let mut client = ctl.client_when_ready(&[&small, &big]).await;

    // 1.5 GiB fits only on the 2 GiB node.
    let mut s = spec(&["sleep", "600"]);
    s.memory_limit_bytes = Some(GIB + GIB / 2);
    client
        .create_container(create("fits-big", s))
        .await
        .expect("create");
    // Checked once running: on a loaded machine the big node can miss heartbeats for a
    // moment, and the container then waits PENDING for it (the small node never fits).
    let running = wait_container(&mut client, "fits-big", Duration::from_secs(20), |c| {
        state_of(c) == S::Running
    })
    .await;
    assert_eq!(running.node, big.name, "{running:#?}");
    assert!(running.pid > 0);

    // 3 GiB fits nowhere: PENDING, with the numbers.
    let mut s = spec(&["/bin/true"]);
    s.memory_limit_bytes = Some(3 * GIB);
    let c = client
        .create_container(create("too-big", s))
        .await
        .expect("create")
        .into_inner();
    assert_eq!(state_of(&c), S::Pending);
    assert_eq!(
        c.status_message,
        format!(
            "no node with 3 GiB free memory; largest free: 1 GiB on {}",
            small.name
        ),
        "{c:#?}"
    );
    let node = client
        .get_node(v1::GetNodeRequest {
            name: big.name.clone(),
        })
        .await
        .expect("node")
        .into_inner();
    assert_eq!(node.memory_reserved_bytes, GIB + GIB / 2);

    // A node with room registers: the pending container is placed there and runs to its end.
    let large = TestNode::start("place-large", &ctl, Some(4 * GIB), &[]).await;
    let done = wait_container(&mut client, "too-big", Duration::from_secs(20), |c| {
        state_of(c) == S::Exited
    })
    .await;
    assert_eq!(done.node, large.name);
    assert_eq!(done.exit_code, Some(0));

    // Creating the same again is idempotent; another spec under the name is refused.
    let mut s = spec(&["/bin/true"]);
    s.memory_limit_bytes = Some(3 * GIB);
    let again = client
        .create_container(create("too-big", s))
        .await
        .expect("same create")
        .into_inner();
    assert_eq!(again.revision, done.revision);
    let err = client
        .create_container(create("too-big", spec(&["/bin/false"])))
        .await
        .expect_err("different spec");
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err}");

    // Stop, then remove: gone from the controller and from the node.
    let stopped = client
        .stop_container(v1::StopContainerRequest {
            id: "fits-big".into(),
            grace_seconds: Some(1),
        })
        .await
        .expect("stop")
        .into_inner();
    // `sleep` as PID 1 has no SIGTERM handler, so the kernel ignores SIGTERM: SIGKILL after
    // the grace period.
    assert_eq!(state_of(&stopped), S::Exited, "{stopped:#?}");
    assert_eq!(stopped.signal, Some(9));
    assert!(stopped.stop_requested);
    client
        .remove_container(v1::RemoveContainerRequest {
            id: "fits-big".into(),
            force: false,
        })
        .await
        .expect("remove");
    let err = client
        .get_container(v1::GetContainerRequest {
            id: "fits-big".into(),
        })
        .await
        .expect_err("removed");
    assert_eq!(err.code(), tonic::Code::NotFound);
    let on_node = big
        .agent()
        .await
        .list_containers(v1::ListContainersRequest::default())
        .await
        .expect("agent list")
        .into_inner()
        .containers;
    assert!(on_node.is_empty(), "{on_node:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_logs_and_exec_through_the_controller() {
    let ctl = TestController::start("oom", &[]);
    let node = TestNode::start("oom-node", &ctl, None, &[]).await;
    let mut client = ctl.client_when_ready(&[&node]).await;

    // The tutorial's memory limit: a shell that grows a string past 16 MiB.
    let mut s = spec(&[
        "/bin/sh",
        "-c",
        "echo starting; x=a; while true; do x=$x$x; done",
    ]);
    s.memory_limit_bytes = Some(16 << 20);
    client
        .create_container(create("oom", s))
        .await
        .expect("create");
    let started = Instant::now();
    let c = wait_container(&mut client, "oom", Duration::from_secs(30), |c| {
        matches!(state_of(c), S::OomKilled | S::Exited | S::Failed)
    })
    .await;
    println!("OOM after {:?}: {}", started.elapsed(), c.status_message);
    assert_eq!(state_of(&c), S::OomKilled, "{c:#?}");
    assert!(c.oom_killed);

    // Logs of an ended container, through the controller.
    let mut logs = client
        .container_logs(v1::ContainerLogsRequest {
            id: "oom".into(),
            ..Default::default()
        })
        .await
        .expect("logs")
        .into_inner();
    let first = logs.message().await.expect("log entry").expect("one line");
    assert_eq!(first.line, "starting");

    // Exec in a running container, through the controller: it joins its pid namespace.
    client
        .create_container(create("execme", spec(&["sleep", "600"])))
        .await
        .expect("create");
    wait_container(&mut client, "execme", Duration::from_secs(20), |c| {
        state_of(c) == S::Running
    })
    .await;
    let out = client
        .exec(v1::ExecRequest {
            id: "execme".into(),
            command: vec![
                "/bin/sh".into(),
                "-c".into(),
                "cat /proc/1/cmdline | tr '\\0' ' '; hostname".into(),
            ],
        })
        .await
        .expect("exec")
        .into_inner();
    assert_eq!(out.exit_code, Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "sleep 600 execme\n");

    // Errors keep their codes through the proxy.
    let err = client
        .exec(v1::ExecRequest {
            id: "nope".into(),
            command: vec!["true".into()],
        })
        .await
        .expect_err("unknown container");
    assert_eq!(err.code(), tonic::Code::NotFound);
    client
        .remove_container(v1::RemoveContainerRequest {
            id: "execme".into(),
            force: true,
        })
        .await
        .expect("remove");
}

/// CPU limits are placed like memory: a node reports its CPUs, a container with a CPU limit
/// reserves it, one asking for more CPUs than any node has free waits PENDING with the
/// numbers, and starts when the reservation that blocked it goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_follows_cpu() {
    let ctl = TestController::start("placecpu", &[]);
    let only = TestNode::start("placecpu-a", &ctl, None, &[]).await;
    let mut client = ctl.client_when_ready(&[&only]).await;
    let node = |client: &mut v1::controller_client::ControllerClient<_>| {
        let mut client = client.clone();
        let name = only.name.clone();
        async move {
            client
                .get_node(v1::GetNodeRequest { name })
                .await
                .expect("node")
                .into_inner()
        }
    };
    let n = node(&mut client).await;
    assert!(n.cpu_count >= 1, "{n:#?}");
    assert_eq!(n.cpu_allocatable_millicores, u64::from(n.cpu_count) * 1000);
    let cpus = u64::from(n.cpu_count);

    // All of the node's CPUs: it runs, and holds them.
    let mut s = spec(&["sleep", "600"]);
    s.cpu = Some(v1::CpuSpec {
        cores: cpus as f64,
        shares: 0,
    });
    client
        .create_container(create("all-cpus", s))
        .await
        .expect("create");
    wait_container(&mut client, "all-cpus", Duration::from_secs(20), |c| {
        state_of(c) == S::Running
    })
    .await;
    assert_eq!(node(&mut client).await.cpu_reserved_millicores, cpus * 1000);

    // Half a CPU more fits nowhere: PENDING, with the numbers.
    let mut s = spec(&["/bin/true"]);
    s.cpu = Some(v1::CpuSpec {
        cores: 0.5,
        shares: 0,
    });
    let c = client
        .create_container(create("half-more", s))
        .await
        .expect("create")
        .into_inner();
    assert_eq!(state_of(&c), S::Pending, "{c:#?}");
    assert_eq!(
        c.status_message,
        format!("no node with 0.5 CPUs free; most free: 0 on {}", only.name),
        "{c:#?}"
    );
    // A container without a CPU limit is not held back by CPU.
    client
        .create_container(create("no-limit", spec(&["/bin/true"])))
        .await
        .expect("create");
    wait_container(&mut client, "no-limit", Duration::from_secs(20), |c| {
        state_of(c) == S::Exited
    })
    .await;

    // The CPUs are given back: the pending one runs.
    force_remove(&mut client, &["all-cpus"]).await;
    let done = wait_container(&mut client, "half-more", Duration::from_secs(20), |c| {
        state_of(c) == S::Exited
    })
    .await;
    assert_eq!(done.exit_code, Some(0));
    force_remove(&mut client, &["half-more", "no-limit"]).await;
}

/// A volume mount through the controller.
fn with_volume(mut s: v1::ContainerSpec, volume: &str, target: &str) -> v1::ContainerSpec {
    s.mounts.push(v1::Mount {
        r#type: v1::mount::Type::Volume as i32,
        source: volume.into(),
        target: target.into(),
        ..Default::default()
    });
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_follows_volumes() {
    let ctl = TestController::start("placevol", &[]);
    let a = TestNode::start("placevol-a", &ctl, None, &[]).await;
    let b = TestNode::start("placevol-b", &ctl, None, &[]).await;
    let mut client = ctl.client_when_ready(&[&a, &b]).await;

    // A volume made on b: containers naming it run on b, and see what the last one wrote.
    let v = client
        .create_volume(v1::CreateVolumeRequest {
            name: "shared".into(),
            node: b.name.clone(),
            labels: [("team".to_string(), "db".to_string())].into(),
        })
        .await
        .expect("create volume")
        .into_inner();
    assert_eq!(v.node, b.name);
    let again = client
        .create_volume(v1::CreateVolumeRequest {
            name: "shared".into(),
            ..Default::default()
        })
        .await
        .expect_err("twice");
    assert_eq!(again.code(), tonic::Code::AlreadyExists, "{again:?}");
    let bad = client
        .create_volume(v1::CreateVolumeRequest {
            name: "../etc".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad name");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");

    let write = with_volume(spec(&["sh", "-c", "echo kept > /v/file"]), "shared", "/v");
    client
        .create_container(create("vol-writer", write))
        .await
        .expect("create");
    let done = wait_container(&mut client, "vol-writer", Duration::from_secs(20), |c| {
        state_of(c) == S::Exited
    })
    .await;
    assert_eq!(
        (done.node.as_str(), done.exit_code),
        (b.name.as_str(), Some(0))
    );
    let read = with_volume(spec(&["cat", "/v/file"]), "shared", "/v");
    client
        .create_container(create("vol-reader", read))
        .await
        .expect("create");
    let done = wait_container(&mut client, "vol-reader", Duration::from_secs(20), |c| {
        state_of(c) == S::Exited
    })
    .await;
    assert_eq!(done.node, b.name);
    let mut logs = client
        .container_logs(v1::ContainerLogsRequest {
            id: "vol-reader".into(),
            ..Default::default()
        })
        .await
        .expect("logs")
        .into_inner();
    let line = logs.message().await.expect("entry").expect("a line");
    assert_eq!(line.line, "kept");

    // Asking for the other node contradicts the volume: PENDING, saying so.
    let mut elsewhere = create(
        "vol-elsewhere",
        with_volume(spec(&["/bin/true"]), "shared", "/v"),
    );
    elsewhere.placement = Some(v1::Placement {
        node: a.name.clone(),
        ..Default::default()
    });
    let c = client
        .create_container(elsewhere)
        .await
        .expect("create")
        .into_inner();
    assert_eq!(state_of(&c), S::Pending);
    assert_eq!(
        c.status_message,
        format!(
            "volume 'shared' is on node '{}', but node '{}' was asked for",
            b.name, a.name
        )
    );

    // A volume nobody has yet is made where its first container runs, and the next
    // container naming it follows at once (before any heartbeat tells).
    let make = with_volume(spec(&["sleep", "600"]), "fresh", "/f");
    client
        .create_container(create("fresh-1", make.clone()))
        .await
        .expect("create");
    let first = client
        .create_container(create("fresh-2", make))
        .await
        .expect("create")
        .into_inner();
    let one = wait_container(&mut client, "fresh-1", Duration::from_secs(20), |c| {
        state_of(c) == S::Running
    })
    .await;
    assert_eq!(first.node, one.node, "{first:#?}");
    // Volumes of two nodes in one container: refused with both named.
    let other = if one.node == a.name { &b.name } else { &a.name };
    client
        .create_volume(v1::CreateVolumeRequest {
            name: "far".into(),
            node: other.clone(),
            ..Default::default()
        })
        .await
        .expect("far");
    let both = with_volume(
        with_volume(spec(&["/bin/true"]), "fresh", "/f"),
        "far",
        "/g",
    );
    let c = client
        .create_container(create("two-nodes", both))
        .await
        .expect("create")
        .into_inner();
    assert_eq!(state_of(&c), S::Pending);
    assert!(
        c.status_message
            .contains("a container mounts volumes of one node"),
        "{c:#?}"
    );

    // Listing: every node's volumes, each with its users.
    let listed = client
        .list_volumes(v1::ListVolumesRequest::default())
        .await
        .expect("list")
        .into_inner();
    let names: Vec<(String, String)> = listed
        .volumes
        .iter()
        .map(|v| (v.name.clone(), v.node.clone()))
        .collect();
    assert!(
        names.contains(&("shared".into(), b.name.clone())),
        "{names:?}"
    );
    assert!(
        names.contains(&("fresh".into(), one.node.clone())),
        "{names:?}"
    );
    assert!(names.contains(&("far".into(), other.clone())), "{names:?}");
    assert!(listed.unreachable.is_empty());

    // Removal: refused while a record mounts it, ended or not; then gone.
    let used = client
        .remove_volume(v1::RemoveVolumeRequest {
            name: "shared".into(),
            ..Default::default()
        })
        .await
        .expect_err("in use");
    assert_eq!(used.code(), tonic::Code::FailedPrecondition);
    assert!(used.message().contains("vol-writer (ended)"), "{used:?}");
    // The PENDING ones first: with the others gone they could be placed again.
    force_remove(
        &mut client,
        &[
            "two-nodes",
            "vol-elsewhere",
            "vol-writer",
            "vol-reader",
            "fresh-1",
            "fresh-2",
        ],
    )
    .await;
    for name in ["shared", "fresh", "far"] {
        client
            .remove_volume(v1::RemoveVolumeRequest {
                name: name.into(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("remove {name}: {e:?}"));
    }
    let gone = client
        .get_volume(v1::GetVolumeRequest {
            name: "shared".into(),
            ..Default::default()
        })
        .await
        .expect_err("gone");
    assert_eq!(gone.code(), tonic::Code::NotFound);
}
