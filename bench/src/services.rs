//! `service-apply`: one ApplyServices of a service of `count` replicas until all of them
//! are RUNNING, against `count` single CreateContainer calls (16 in flight) of the same
//! spec until all are RUNNING, in one run, through the same controller and agent.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use hutch_proto::v1;
use tokio_stream::StreamExt;

use crate::report::Row;
use crate::scenarios::{connect_and_watch, remove_many, start_and_wait, Client, Watch};
use crate::setup::BenchEnv;

/// What every replica and single container runs.
fn long_running() -> v1::ContainerSpec {
    v1::ContainerSpec {
        rootfs: "debian".into(),
        command: vec!["sleep".into(), "600".into()],
        memory_limit_bytes: Some(16 << 20),
        ..Default::default()
    }
}

/// The rows of `service-apply`.
pub async fn service_apply(env: &BenchEnv, count: usize) -> Result<Vec<Row>, String> {
    let (client, mut watch) = connect_and_watch(env).await?;
    let name = format!("bsvc{}", std::process::id() % 100_000);
    let replicas = u32::try_from(count).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let applied = apply(&client, &name, replicas).await;
    let waited = match applied {
        Ok(()) => wait_replicas(&mut watch, &name, count).await,
        Err(e) => Err(e),
    };
    let service_secs = start.elapsed().as_secs_f64();
    let deleted = delete_and_wait(&client, &mut watch, &name).await;
    waited?;
    deleted?;

    let prefix = format!("bsingle-{}-", std::process::id());
    let start = Instant::now();
    let running = |s: i32| s == v1::ContainerState::Running as i32;
    let singles = start_and_wait(
        &client,
        &mut watch,
        &prefix,
        count,
        &long_running(),
        running,
    )
    .await;
    let singles_secs = start.elapsed().as_secs_f64();
    remove_many(&client, &prefix, count).await;
    singles?;
    Ok(vec![Row {
        scenario: "service-apply".into(),
        metric: format!("apply of {count} replicas to all RUNNING"),
        hutch: service_secs * 1000.0,
        peer: Some(singles_secs * 1000.0),
        peer_name: format!("{count} single creates"),
        unit: "ms".into(),
        ratio: Some(service_secs / singles_secs),
        target: "<= 1.0x single creates".into(),
        pass: service_secs <= singles_secs,
    }])
}

async fn apply(client: &Client, name: &str, replicas: u32) -> Result<(), String> {
    client
        .clone()
        .apply_services(v1::ApplyServicesRequest {
            services: vec![v1::CreateServiceRequest {
                name: name.to_string(),
                spec: Some(v1::ServiceSpec {
                    template: Some(long_running()),
                    replicas,
                    ..Default::default()
                }),
            }],
            dry_run: false,
        })
        .await
        .map(drop)
        .map_err(|e| format!("apply: {e}"))
}

/// Whether a container is a replica of `service`.
fn replica_of(c: &v1::Container, service: &str) -> bool {
    c.spec
        .as_ref()
        .and_then(|s| s.labels.get("hutch.service"))
        .is_some_and(|s| s == service)
}

async fn wait_replicas(watch: &mut Watch, service: &str, count: usize) -> Result<(), String> {
    let mut running = HashSet::new();
    while running.len() < count {
        let Some(e) = watch.next().await else {
            return Err("the watch ended".into());
        };
        let Some(c) = e.map_err(|e| e.to_string())?.container else {
            continue;
        };
        if replica_of(&c, service) && c.state == v1::ContainerState::Running as i32 {
            running.insert(c.name);
        }
    }
    Ok(())
}

/// Deletes the service and follows the watch until its replicas are removed (at most a
/// minute).
async fn delete_and_wait(client: &Client, watch: &mut Watch, service: &str) -> Result<(), String> {
    client
        .clone()
        .delete_service(v1::DeleteServiceRequest {
            name: service.to_string(),
        })
        .await
        .map_err(|e| format!("delete: {e}"))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left = client
            .clone()
            .list_containers(v1::ListClusterContainersRequest {
                labels: [("hutch.service".to_string(), service.to_string())].into(),
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?
            .into_inner()
            .containers
            .len();
        if left == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "{left} replicas of {service} left a minute after the delete"
            ));
        }
        // Keep reading the watch so it does not fall behind.
        let _ = tokio::time::timeout(Duration::from_millis(200), watch.next()).await;
    }
}
