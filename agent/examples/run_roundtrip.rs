//! Times `RunContainer` round trips for `/bin/true` against a running agent over gRPC:
//! the request, the container start (cgroup, supervisor, namespaces, exec) and the reply.
//!
//! ```sh
//! cargo run --release -p hutch-agent --example run_roundtrip -- http://127.0.0.1:7070 50
//! ```
//! It removes the containers it made. The full benchmark harness (peers, scenarios) is
//! `bench/`, once it exists; this is the quick figure for one host.

use std::time::Instant;

use hutch_proto::v1;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:7070".into());
    let count: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(50);
    let mut client = v1::agent_client::AgentClient::connect(url).await?;
    let mut millis = Vec::with_capacity(count);
    let tag = std::process::id();
    for i in 0..count {
        let name = format!("rt-{tag}-{i}");
        let started = Instant::now();
        client
            .run_container(v1::RunContainerRequest {
                name: name.clone(),
                spec: Some(v1::ContainerSpec {
                    rootfs: "debian".into(),
                    command: vec!["/bin/true".into()],
                    memory_limit_bytes: Some(64 << 20),
                    ..Default::default()
                }),
            })
            .await?;
        millis.push(started.elapsed().as_secs_f64() * 1000.0);
        client
            .remove_container(v1::RemoveContainerRequest {
                id: name,
                force: true,
            })
            .await?;
    }
    millis.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| millis[((millis.len() - 1) as f64 * p).round() as usize];
    println!(
        "RunContainer /bin/true (5 namespaces, 64 MiB limit, overlay) x{count}: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, min {:.2} ms",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        millis[0]
    );
    Ok(())
}
