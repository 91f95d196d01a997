//! Times `CreateContainer` through a running controller for `/bin/true`: until the create is
//! acknowledged, until a watcher sees RUNNING, and until it sees EXITED. Removes what it
//! created.
//!
//! Usage: cargo run --release -p hutch-controller --example create_latency -- \
//!            [http://127.0.0.1:7000] [runs=100] [rootfs=debian]
//!
//! `PAUSE_MS=N` idles N ms before each create (outside the timed span), to see what idle
//! gaps between containers cost (on a virtual machine: a lot, for every tool).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hutch_proto::v1::{self, controller_client::ControllerClient};
use tokio_stream::StreamExt;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(what: &str, mut v: Vec<Duration>) {
    v.sort();
    println!(
        "{what:<22} p50 {:>7.2} ms   p99 {:>7.2} ms   max {:>7.2} ms   (n={})",
        percentile(&v, 0.5).as_secs_f64() * 1e3,
        percentile(&v, 0.99).as_secs_f64() * 1e3,
        v.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        v.len()
    );
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:7000".into());
    let runs: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(100);
    let rootfs = args.get(3).cloned().unwrap_or_else(|| "debian".into());
    let mut client = ControllerClient::connect(url.clone()).await?;
    let since = client
        .list_containers(v1::ListClusterContainersRequest::default())
        .await?
        .into_inner()
        .containers
        .iter()
        .map(|c| c.revision)
        .max()
        .unwrap_or(0);
    let mut watch = ControllerClient::connect(url)
        .await?
        .watch_containers(v1::WatchContainersRequest {
            since_revision: since,
            ..Default::default()
        })
        .await?
        .into_inner();
    let prefix = format!("lat-{}", std::process::id());
    let pause = Duration::from_millis(
        std::env::var("PAUSE_MS")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0),
    );
    let (mut acked, mut running, mut exited) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        let name = format!("{prefix}-{i}");
        tokio::time::sleep(pause).await;
        let start = Instant::now();
        client
            .create_container(v1::CreateContainerRequest {
                name: name.clone(),
                spec: Some(v1::ContainerSpec {
                    rootfs: rootfs.clone(),
                    command: vec!["/bin/true".into()],
                    memory_limit_bytes: Some(64 << 20),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await?;
        acked.push(start.elapsed());
        let mut seen: HashMap<i32, Duration> = HashMap::new();
        while let Some(event) = watch.next().await {
            let event = event?;
            let Some(c) = event.container else { continue };
            if c.name != name {
                continue;
            }
            seen.entry(c.state).or_insert_with(|| start.elapsed());
            let done = [
                v1::ContainerState::Exited,
                v1::ContainerState::Failed,
                v1::ContainerState::OomKilled,
            ]
            .iter()
            .any(|s| c.state == *s as i32);
            if done {
                break;
            }
        }
        if let Some(d) = seen.get(&(v1::ContainerState::Running as i32)) {
            running.push(*d);
        }
        if let Some(d) = seen.get(&(v1::ContainerState::Exited as i32)) {
            exited.push(*d);
        }
    }
    println!("{runs} x /bin/true (5 namespaces, 64 MiB limit, overlay rootfs '{rootfs}') through the controller:");
    report("create acknowledged", acked);
    report("create -> RUNNING", running);
    report("create -> EXITED", exited);
    for i in 0..runs {
        let _ = client
            .remove_container(v1::RemoveContainerRequest {
                id: format!("{prefix}-{i}"),
                force: true,
            })
            .await;
    }
    Ok(())
}
