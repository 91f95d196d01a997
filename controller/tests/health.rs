//! Health checks end to end: the agent runs the check inside the container, the record and
//! `GetContainer` show STARTING, HEALTHY, UNHEALTHY with the failing streak and the last
//! output; a container with a restart policy that turns unhealthy is stopped and started
//! again (a new run, healthy again); one without a policy keeps running, unhealthy.

use hutch_testkit as common;

use std::time::Duration;

use common::*;
use hutch_proto::v1::{self, ContainerState as S};

fn health_of(c: &v1::Container) -> v1::HealthState {
    c.health
        .as_ref()
        .and_then(|h| v1::HealthState::try_from(h.state).ok())
        .unwrap_or(v1::HealthState::Unspecified)
}

/// Runs until killed; healthy while /tmp/ok exists (made at the start of each run).
fn checked(policy: Option<v1::restart_policy::Kind>) -> v1::CreateContainerRequest {
    let mut s = spec(&["sh", "-c", "touch /tmp/ok; exec sleep 600"]);
    s.stop_grace_seconds = Some(1);
    s.health = Some(v1::HealthCheck {
        command: vec![
            "/bin/sh".into(),
            "-c".into(),
            "test -e /tmp/ok && echo fine".into(),
        ],
        interval_ms: 200,
        timeout_ms: 2000,
        retries: 2,
        start_period_ms: 0,
    });
    let mut req = create("unused", s);
    req.restart_policy = policy.map(|kind| v1::RestartPolicy {
        kind: kind as i32,
        max_retries: 1,
    });
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_containers_are_restarted_by_their_policy() {
    let ctl = TestController::start("health", &[]);
    let node = TestNode::start("health-node", &ctl, None, &[]).await;
    let mut client = ctl.client_when_ready(&[&node]).await;
    for (name, policy) in [
        ("healed", Some(v1::restart_policy::Kind::OnFailure)),
        ("left", None),
    ] {
        let mut req = checked(policy);
        req.name = name.into();
        client.create_container(req).await.expect("create");
    }
    let healthy =
        |c: &v1::Container| state_of(c) == S::Running && health_of(c) == v1::HealthState::Healthy;
    for name in ["healed", "left"] {
        let c = wait_container(&mut client, name, Duration::from_secs(20), healthy).await;
        let h = c.health.clone().expect("health");
        assert_eq!(h.last_output.trim(), "fine", "{h:?}");
        assert_eq!((h.last_exit_code, h.failing_streak), (0, 0));
        assert!(h.last_check.is_some());
    }

    // Break both: the check fails twice in a row.
    for name in ["healed", "left"] {
        let out = client
            .exec(v1::ExecRequest {
                id: name.into(),
                command: vec!["rm".into(), "/tmp/ok".into()],
            })
            .await
            .expect("exec")
            .into_inner();
        assert_eq!(out.exit_code, Some(0));
    }
    // Without a policy: it keeps running, unhealthy, with the streak and the output.
    let left = wait_container(&mut client, "left", Duration::from_secs(20), |c| {
        health_of(c) == v1::HealthState::Unhealthy
    })
    .await;
    assert_eq!(state_of(&left), S::Running, "{left:#?}");
    let h = left.health.clone().expect("health");
    assert!(h.failing_streak >= 2 && h.last_exit_code != 0, "{h:?}");
    // With one: stopped, started again (run 1), healthy again.
    let healed = wait_container(&mut client, "healed", Duration::from_secs(30), |c| {
        c.restart_count == 1 && healthy(c)
    })
    .await;
    println!("{}", healed.status_message);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let still = client
        .get_container(v1::GetContainerRequest { id: "left".into() })
        .await
        .expect("get")
        .into_inner();
    assert_eq!((state_of(&still), still.restart_count), (S::Running, 0));

    // A check the spec cannot have: refused at create.
    let mut bad = checked(None);
    bad.name = "bad-check".into();
    if let Some(h) = bad.spec.as_mut().and_then(|s| s.health.as_mut()) {
        h.interval_ms = 5;
    }
    let e = client.create_container(bad).await.expect_err("refused");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("interval_ms"), "{e:?}");
    force_remove(&mut client, &["healed", "left"]).await;
}
