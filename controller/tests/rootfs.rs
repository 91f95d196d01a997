//! `BuildRootfs` and `ListRootfs` through the controller: a build on every ready node comes
//! back as one stream with each node's progress and result tagged with its name; a build on
//! one node reaches only that node; a bad source is refused before any node is asked.

use hutch_testkit as common;

use std::collections::BTreeMap;

use common::*;
use hutch_proto::v1;
use v1::cluster_build_rootfs_response::Event;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_on_every_node_with_one_stream() {
    let ctl = TestController::start("rootfs", &[]);
    let a = TestNode::start("rootfs-a", &ctl, None, &["--label=disk=ssd"]).await;
    let b = TestNode::start("rootfs-b", &ctl, None, &[]).await;
    let mut client = ctl.client_when_ready(&[&a, &b]).await;
    // A small directory source, unique to this test run (the test nodes share one store).
    let name = unique("tiny");
    let source = std::path::PathBuf::from(format!("/var/tmp/hutch-test-{name}"));
    std::fs::create_dir_all(source.join("etc")).expect("mkdir");
    std::fs::write(source.join("etc/hostname"), "tiny\n").expect("write");
    let spec = v1::RootfsSpec {
        name: name.clone(),
        source: Some(v1::rootfs_spec::Source::Directory(
            source.display().to_string(),
        )),
    };

    let mut stream = client
        .build_rootfs(v1::ClusterBuildRootfsRequest {
            rootfs: Some(spec.clone()),
            ..Default::default()
        })
        .await
        .expect("build")
        .into_inner();
    let mut results = BTreeMap::new();
    let mut progress = 0;
    while let Some(msg) = stream.message().await.expect("stream") {
        match msg.event.expect("event") {
            Event::Progress(_) => progress += 1,
            Event::Result(r) => {
                results.insert(msg.node, r.rootfs.expect("info").name);
            }
            Event::Error(e) => panic!("node {} failed: {e:?}", msg.node),
        }
    }
    assert!(progress > 0, "progress was streamed");
    let expected: BTreeMap<String, String> = [
        (a.name.clone(), name.clone()),
        (b.name.clone(), name.clone()),
    ]
    .into();
    assert_eq!(results, expected);

    // Nodes now list it, and a selector build reaches only the matching node.
    let listed = client
        .list_rootfs(v1::ClusterListRootfsRequest::default())
        .await
        .expect("list")
        .into_inner();
    for n in [&a, &b] {
        assert!(
            listed
                .rootfs
                .iter()
                .any(|r| r.node == n.name && r.rootfs.as_ref().is_some_and(|i| i.name == name)),
            "{} does not list {name}: {listed:#?}",
            n.name
        );
    }
    let mut stream = client
        .build_rootfs(v1::ClusterBuildRootfsRequest {
            rootfs: Some(spec.clone()),
            node_selector: [("disk".to_string(), "ssd".to_string())].into(),
            ..Default::default()
        })
        .await
        .expect("build")
        .into_inner();
    let mut nodes = std::collections::BTreeSet::new();
    while let Some(msg) = stream.message().await.expect("stream") {
        nodes.insert(msg.node);
    }
    assert_eq!(nodes.into_iter().collect::<Vec<_>>(), vec![a.name.clone()]);
    let node = client
        .get_node(v1::GetNodeRequest {
            name: a.name.clone(),
        })
        .await
        .expect("node")
        .into_inner();
    assert!(node.rootfs.contains(&name), "{node:#?}");

    // Bad input is refused before any node is asked.
    let err = client
        .build_rootfs(v1::ClusterBuildRootfsRequest {
            rootfs: Some(v1::RootfsSpec {
                name: "../escape".into(),
                source: spec.source.clone(),
            }),
            ..Default::default()
        })
        .await
        .expect_err("bad name");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    let err = client
        .build_rootfs(v1::ClusterBuildRootfsRequest {
            rootfs: Some(spec.clone()),
            node: "ghost".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown node");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");

    // Removed everywhere (the test nodes share one store: one node removes it, the other
    // finds it gone); the nodes no longer list it.
    let removed = client
        .remove_rootfs(v1::ClusterRemoveRootfsRequest {
            name: name.clone(),
            node: String::new(),
        })
        .await
        .expect("remove rootfs")
        .into_inner();
    assert!(removed.failed.is_empty(), "{removed:?}");
    assert!(!removed.removed.is_empty(), "{removed:?}");
    let node = client
        .get_node(v1::GetNodeRequest {
            name: a.name.clone(),
        })
        .await
        .expect("node")
        .into_inner();
    assert!(!node.rootfs.contains(&name), "{node:#?}");
    let _ = std::fs::remove_dir_all(&source);
}
