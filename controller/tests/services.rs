//! Services through the controller's API: every RPC's checks and codes, apply all or
//! nothing (with dry runs, and one address per service), the watch, delete and re-create
//! under one name, and replicas that run on a real node, cannot be stopped on their own and
//! are replaced when removed. (Traffic to a service's address and rolling updates across
//! hosts are tested on a lab: integration/tests/services.rs.)

use hutch_testkit as common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use hutch_proto::v1::controller_client::ControllerClient;
use hutch_proto::v1::{self, ContainerState as S};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::Code;

fn service(name: &str, replicas: u32) -> v1::CreateServiceRequest {
    let mut template = spec(&["sleep", "600"]);
    template.stop_grace_seconds = Some(1);
    v1::CreateServiceRequest {
        name: name.into(),
        spec: Some(v1::ServiceSpec {
            template: Some(template),
            replicas,
            ..Default::default()
        }),
    }
}

fn template(r: &mut v1::CreateServiceRequest) -> &mut v1::ContainerSpec {
    r.spec
        .as_mut()
        .and_then(|s| s.template.as_mut())
        .expect("template")
}

fn code<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> (Code, String) {
    let s = r.expect_err("refused");
    (s.code(), s.message().to_string())
}

/// The names of `service`'s replicas that are not on their way out.
async fn replicas(client: &mut ControllerClient<Channel>, service: &str) -> BTreeSet<String> {
    client
        .list_containers(v1::ListClusterContainersRequest {
            labels: [("hutch.service".to_string(), service.to_string())].into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .containers
        .into_iter()
        .filter(|c| !c.stop_requested)
        .map(|c| c.name)
        .collect()
}

async fn wait_replicas(
    client: &mut ControllerClient<Channel>,
    service: &str,
    what: &str,
    done: impl Fn(&BTreeSet<String>) -> bool,
) -> BTreeSet<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = replicas(client, service).await;
        if done(&now) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{service}: never {what}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_rpcs_check_their_input_and_apply_all_or_nothing() {
    // A cluster network (for the services' addresses) but no node: replicas stay PENDING.
    let ctl = TestController::start("svc-rpc", &["--cluster-cidr", "198.19.0.0/16"]);
    let mut client = ctl.client().await;

    let bad = |f: &dyn Fn(&mut v1::CreateServiceRequest)| {
        let mut r = service("web", 2);
        f(&mut r);
        r
    };
    let cases: Vec<(v1::CreateServiceRequest, &str)> = vec![
        (bad(&|r| r.name = String::new()), "name"),
        (bad(&|r| r.name = "a.b".into()), "cannot be resolved"),
        (bad(&|r| r.name = "x".repeat(33)), "at most 32"),
        (bad(&|r| r.spec = None), "spec: missing"),
        (
            bad(&|r| r.spec.as_mut().expect("spec").template = None),
            "spec.template: missing",
        ),
        (
            bad(&|r| {
                template(r)
                    .labels
                    .insert("hutch.service.revision".into(), "9".into());
            }),
            "is set by hutch",
        ),
        (bad(&|r| template(r).command.clear()), "command"),
        (bad(&|r| template(r).memory_limit_bytes = Some(1)), "memory"),
        (
            bad(&|r| r.spec.as_mut().expect("spec").replicas = 10_001),
            "spec.replicas: 10001",
        ),
        (
            bad(&|r| {
                r.spec.as_mut().expect("spec").update = Some(v1::UpdateStrategy {
                    max_surge: Some(0),
                    max_unavailable: Some(0),
                    ..Default::default()
                })
            }),
            "both 0",
        ),
        (
            bad(&|r| {
                r.spec.as_mut().expect("spec").update = Some(v1::UpdateStrategy {
                    max_surge: Some(u32::MAX),
                    ..Default::default()
                })
            }),
            "spec.update.max_surge",
        ),
    ];
    for (req, expected) in cases {
        let (c, m) = code(client.create_service(req.clone()).await);
        assert_eq!(c, Code::InvalidArgument, "{req:?}: {m}");
        assert!(m.contains(expected), "expected {expected:?} in {m}");
    }
    let missing = |name: &str| v1::GetServiceRequest { name: name.into() };
    assert_eq!(
        code(client.get_service(missing("nope")).await).0,
        Code::NotFound
    );
    assert_eq!(
        code(
            client
                .update_service(v1::UpdateServiceRequest {
                    name: "nope".into(),
                    spec: service("nope", 1).spec,
                })
                .await
        )
        .0,
        Code::NotFound
    );
    let scale = |name: &str, replicas| v1::ScaleServiceRequest {
        name: name.into(),
        replicas,
    };
    assert_eq!(
        code(client.scale_service(scale("nope", 1)).await).0,
        Code::NotFound
    );
    assert_eq!(
        code(
            client
                .delete_service(v1::DeleteServiceRequest {
                    name: "nope".into()
                })
                .await
        )
        .0,
        Code::NotFound
    );

    // Apply: a dry run changes nothing; a bad service refuses the whole batch.
    let batch = |dry_run| v1::ApplyServicesRequest {
        services: vec![service("web", 2), service("api", 1)],
        dry_run,
    };
    let dry = client
        .apply_services(batch(true))
        .await
        .expect("dry run")
        .into_inner();
    let actions: Vec<i32> = dry.changes.iter().map(|c| c.action).collect();
    let created = v1::service_change::Action::Create as i32;
    assert_eq!(actions, vec![created, created]);
    assert!(dry.services.is_empty());
    let listed = client
        .list_services(v1::ListServicesRequest {})
        .await
        .expect("list");
    assert!(
        listed.into_inner().services.is_empty(),
        "a dry run applies nothing"
    );
    let mut broken = batch(false);
    broken.services[1].spec.as_mut().expect("spec").replicas = 10_001;
    let (c, m) = code(client.apply_services(broken).await);
    assert_eq!(c, Code::InvalidArgument);
    assert!(m.starts_with("services[1] (api): spec.replicas"), "{m}");
    let mut twice = batch(false);
    twice.services[1].name = "web".into();
    let (c, m) = code(client.apply_services(twice).await);
    assert_eq!(
        (c, m.contains("declared twice")),
        (Code::InvalidArgument, true),
        "{m}"
    );
    let listed = client
        .list_services(v1::ListServicesRequest {})
        .await
        .expect("list");
    assert!(
        listed.into_inner().services.is_empty(),
        "nothing of a refused batch"
    );

    let applied = client
        .apply_services(batch(false))
        .await
        .expect("apply")
        .into_inner();
    let addresses: BTreeSet<String> = applied.services.iter().map(|s| s.address.clone()).collect();
    assert_eq!(addresses.len(), 2, "one address each: {addresses:?}");
    assert!(
        addresses.iter().all(|a| a.starts_with("198.18.128.")),
        "{addresses:?}"
    );
    let again = client
        .apply_services(batch(false))
        .await
        .expect("apply")
        .into_inner();
    let unchanged = v1::service_change::Action::Unchanged as i32;
    assert!(
        again.changes.iter().all(|c| c.action == unchanged),
        "{again:?}"
    );
    // Idempotent create; another spec under the name is ALREADY_EXISTS.
    client
        .create_service(service("web", 2))
        .await
        .expect("same again");
    let (c, _) = code(client.create_service(service("web", 3)).await);
    assert_eq!(c, Code::AlreadyExists);
    let (c, m) = code(
        client
            .rollback_service(v1::RollbackServiceRequest { name: "web".into() })
            .await,
    );
    assert_eq!(c, Code::FailedPrecondition, "{m}");

    // Containers cannot pose as replicas or take a service's name.
    let (c, m) = code(
        client
            .create_container(create("web", spec(&["true"])))
            .await,
    );
    assert_eq!(c, Code::AlreadyExists, "{m}");
    let mut labelled = spec(&["true"]);
    labelled.labels.insert("hutch.service".into(), "web".into());
    let (c, m) = code(client.create_container(create("poser", labelled)).await);
    assert_eq!(c, Code::InvalidArgument, "{m}");
    let mut spread = create("spreader", spec(&["true"]));
    spread.placement = Some(v1::Placement {
        spread_by: "node".into(),
        ..Default::default()
    });
    assert_eq!(
        code(client.create_container(spread).await).0,
        Code::InvalidArgument
    );

    // The reconciler makes the replicas (PENDING: no node) and follows the count.
    wait_replicas(&mut client, "web", "2 replicas", |r| r.len() == 2).await;
    client.scale_service(scale("web", 4)).await.expect("scale");
    let four = wait_replicas(&mut client, "web", "4 replicas", |r| r.len() == 4).await;
    for name in &four {
        let c = client
            .get_container(v1::GetContainerRequest { id: name.clone() })
            .await
            .expect("replica")
            .into_inner();
        assert_eq!(state_of(&c), S::Pending, "{c:?}");
        assert!(name.starts_with("web-1-"), "{name}");
    }
    let (c, _) = code(client.scale_service(scale("web", 10_001)).await);
    assert_eq!(c, Code::InvalidArgument);

    // The watch: every service change, resumable from a revision.
    let mut watch = client
        .watch_services(v1::WatchServicesRequest {
            since_revision: 0,
            services: vec!["web".into()],
        })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.next().await.expect("an event").expect("ok");
    let svc = first.service.clone().expect("a service event");
    assert_eq!(
        (svc.name.as_str(), first.container.is_none()),
        ("web", true)
    );
    let created_at = first.revision;
    client.scale_service(scale("web", 3)).await.expect("scale");
    let resumed = client
        .watch_services(v1::WatchServicesRequest {
            since_revision: created_at,
            services: vec!["web".into()],
        })
        .await
        .expect("watch")
        .into_inner()
        .next()
        .await
        .expect("an event")
        .expect("ok");
    assert!(resumed.revision > created_at);
    assert_eq!(resumed.service.map(|s| s.name), Some("web".into()));

    // Deleted and created again at once: none of the old replicas is taken over.
    let old = wait_replicas(&mut client, "web", "3 replicas", |r| r.len() == 3).await;
    client
        .delete_service(v1::DeleteServiceRequest { name: "web".into() })
        .await
        .expect("delete");
    client
        .create_service(service("web", 2))
        .await
        .expect("create again");
    let new = wait_replicas(&mut client, "web", "2 new replicas", |r| r.len() == 2).await;
    assert!(new.is_disjoint(&old), "old {old:?} new {new:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let all = client
            .list_containers(v1::ListClusterContainersRequest::default())
            .await
            .expect("list")
            .into_inner()
            .containers;
        if all.iter().all(|c| !old.contains(&c.name)) {
            break;
        }
        assert!(Instant::now() < deadline, "old replicas left: {all:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for name in ["web", "api"] {
        client
            .delete_service(v1::DeleteServiceRequest { name: name.into() })
            .await
            .expect("delete");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_run_on_a_node_and_are_replaced_not_stopped() {
    let ctl = TestController::start("svc-node", &[]);
    let node = TestNode::start("svc-node", &ctl, None, &[]).await;
    let mut client = ctl.client_when_ready(&[&node]).await;
    client
        .create_service(service("job", 2))
        .await
        .expect("create");
    let running = |c: &v1::Container| state_of(c) == S::Running;
    let two = wait_replicas(&mut client, "job", "2 replicas", |r| r.len() == 2).await;
    for name in &two {
        wait_container(&mut client, name, Duration::from_secs(30), running).await;
    }
    let got = client
        .get_service(v1::GetServiceRequest { name: "job".into() })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.address, "", "no cluster network, no address");

    // A replica is not stopped on its own: its service would replace it.
    let one = two.iter().next().cloned().expect("a replica");
    let (c, m) = code(
        client
            .stop_container(v1::StopContainerRequest {
                id: one.clone(),
                grace_seconds: None,
            })
            .await,
    );
    assert_eq!(c, Code::FailedPrecondition);
    assert!(m.contains("replica of service 'job'"), "{m}");
    let (c, _) = code(
        client
            .kill_container(v1::KillContainerRequest {
                id: one.clone(),
                signal: 15,
            })
            .await,
    );
    assert_eq!(c, Code::FailedPrecondition);
    // Removed, it is replaced.
    client
        .remove_container(v1::RemoveContainerRequest {
            id: one.clone(),
            force: true,
        })
        .await
        .expect("remove");
    let after = wait_replicas(&mut client, "job", "a replacement", |r| {
        r.len() == 2 && !r.contains(&one)
    })
    .await;
    for name in &after {
        wait_container(&mut client, name, Duration::from_secs(30), running).await;
    }

    // What no node can run is refused before anything changes.
    let mut nowhere = service("job", 2);
    template(&mut nowhere).rootfs = "no-such-rootfs".into();
    let mut mars = service("job", 2);
    if let Some(s) = mars.spec.as_mut() {
        s.placement = Some(v1::ServicePlacement {
            node_selector: [("zone".to_string(), "mars".to_string())].into(),
            spread_by: String::new(),
        });
    }
    for (req, expected) in [
        (
            nowhere,
            "spec.template.rootfs: no node has rootfs 'no-such-rootfs'",
        ),
        (mars, "no node carries zone=mars"),
    ] {
        let update = v1::UpdateServiceRequest {
            name: "job".into(),
            spec: req.spec,
        };
        let (c, m) = code(client.update_service(update).await);
        assert_eq!(c, Code::FailedPrecondition);
        assert!(m.contains(expected), "{m}");
    }
    let unchanged = client
        .get_service(v1::GetServiceRequest { name: "job".into() })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(unchanged.template_revision, 1);

    client
        .delete_service(v1::DeleteServiceRequest { name: "job".into() })
        .await
        .expect("delete");
    wait_replicas(&mut client, "job", "removed", BTreeSet::is_empty).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client
        .list_containers(v1::ListClusterContainersRequest::default())
        .await
        .expect("list")
        .into_inner()
        .containers
        .is_empty()
    {
        assert!(Instant::now() < deadline, "replicas left after the delete");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
