//! `ha`: what highly available controllers on etcd cost and how fast they fail over, on a
//! three-member etcd on loopback (started by the harness, tuned as `deploy/lab` does).
//!
//! - Cost: create -> EXITED through a controller on etcd (with its own agent) against the
//!   run's controller on redb, alternating, in one run.
//! - Failover: three controllers on the etcd; a client given all three creates in a loop;
//!   the leader is killed with SIGKILL `kills` times (started again, as a follower, after
//!   each): the time from the kill until a create succeeds again.
//! - Memory: 10,000 records over 1,000 simulated nodes (what `controller-scale` held before
//!   it grew to 100,000 over 5,000), on etcd.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hutch_core::failover::{FailoverChannel, MakeEndpoint};
use hutch_proto::v1;
use hutch_proto::v1::controller_client::ControllerClient;
use hutch_testkit::TestEtcd;

use crate::report::{ms, percentile, Row};

use crate::setup::{alternate, spawn_listening, start_pair, BenchEnv, KilledOnDrop};

fn row(metric: String, hutch: f64, peer: Option<(f64, &str)>, target: &str, pass: bool) -> Row {
    Row {
        scenario: "ha".into(),
        metric,
        hutch,
        peer: peer.map(|p| p.0),
        peer_name: peer.map(|p| p.1.to_string()).unwrap_or_default(),
        unit: "ms".into(),
        ratio: peer.map(|p| hutch / p.0),
        target: target.into(),
        pass,
    }
}

/// The `ha` scenario.
pub async fn ha(
    env: &BenchEnv,
    runs: usize,
    kills: usize,
    sim_nodes: usize,
    records: usize,
) -> Result<Vec<Row>, String> {
    // On etcd, the records' memory and a page's time, held to what they were on redb before
    // controller-scale grew to the size.
    let goals = crate::scale::ScaleGoals {
        creates_per_s: None,
        rss_mib: 150.0,
        page_ms: 50.0,
    };
    let etcd = TestEtcd::start("bench-ha", 3);
    let mut rows = cost(env, &etcd, runs).await?;
    rows.extend(failover(env, &etcd, kills).await?);
    let prefix = format!("/bench-scale-{}/", std::process::id());
    let args = [
        "--etcd-endpoints",
        &etcd.endpoints(),
        "--etcd-prefix",
        &prefix,
    ];
    rows.extend(
        crate::scale::controller_scale_with(env, sim_nodes, records, &args, "ha (etcd)", &goals)
            .await?,
    );
    Ok(rows)
}

async fn cost(env: &BenchEnv, etcd: &TestEtcd, runs: usize) -> Result<Vec<Row>, String> {
    let prefix = format!("/bench-cost-{}/", std::process::id());
    let args = [
        "--etcd-endpoints",
        &etcd.endpoints(),
        "--etcd-prefix",
        &prefix,
    ];
    let mut on_etcd = start_pair(env, "ha-etcd", &args, &[]).await?;
    let (with, without) = alternate(env, &mut on_etcd, "ha-cost", runs).await?;
    let (e50, r50) = (ms(percentile(&with, 0.5)), ms(percentile(&without, 0.5)));
    Ok(vec![row(
        "p50 create->EXITED, controller on etcd (3 members)".into(),
        e50,
        Some((r50, "hutch on redb, p50")),
        "<= 1.5x redb",
        e50 <= 1.5 * r50,
    )])
}

/// One controller of the failover trio: its address stays across restarts.
struct Controller {
    addr: String,
    args: Vec<String>,
    log: std::path::PathBuf,
    process: Option<KilledOnDrop>,
}

impl Controller {
    fn start(&mut self, env: &BenchEnv) -> Result<(), String> {
        let mut cmd = Command::new(env.bin_dir.join("hutch-controller"));
        cmd.env("HUTCH_CLUSTER_CIDR", "none")
            .args(["--listen", &self.addr])
            .args(&self.args);
        let (child, addr) = spawn_listening(cmd, &self.log)?;
        self.addr = addr;
        self.process = Some(KilledOnDrop(child));
        Ok(())
    }
}

/// The address of the controller that leads, once every running one agrees on it.
async fn leader_of(controllers: &[Controller], running: usize) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut leaders = std::collections::BTreeSet::new();
        let mut seen = 0;
        for c in controllers.iter().filter(|c| c.process.is_some()) {
            if let Ok(mut client) = ControllerClient::connect(format!("http://{}", c.addr)).await {
                if let Ok(s) = client
                    .get_cluster_status(v1::GetClusterStatusRequest {})
                    .await
                {
                    let s = s.into_inner();
                    seen += usize::from(s.controllers.len() == running);
                    leaders.extend(
                        s.controllers
                            .into_iter()
                            .filter(|c| c.leader)
                            .map(|c| c.address),
                    );
                }
            }
        }
        if seen == running && leaders.len() == 1 {
            let leader = leaders.into_iter().next().unwrap_or_default();
            return Ok(leader.trim_start_matches("http://").to_string());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the controllers did not agree on a leader: {leaders:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn failover(env: &BenchEnv, etcd: &TestEtcd, kills: usize) -> Result<Vec<Row>, String> {
    let prefix = format!("/bench-failover-{}/", std::process::id());
    let mut controllers: Vec<Controller> = (0..3)
        .map(|i| Controller {
            addr: "127.0.0.1:0".into(),
            args: vec![
                "--data-dir".into(),
                env.dir.join(format!("ha-ctl{i}")).display().to_string(),
                "--etcd-endpoints".into(),
                etcd.endpoints(),
                "--etcd-prefix".into(),
                prefix.clone(),
            ],
            log: env.dir.join(format!("ha-ctl{i}.log")),
            process: None,
        })
        .collect();
    for c in &mut controllers {
        c.start(env)?;
    }
    let urls: Vec<String> = controllers
        .iter()
        .map(|c| format!("http://{}", c.addr))
        .collect();
    let make: MakeEndpoint = Arc::new(|u: &str| {
        tonic::transport::Endpoint::from_shared(u.to_string())
            .map(|e| e.connect_timeout(Duration::from_secs(1)))
            .map_err(|e| e.to_string())
    });
    let channel = FailoverChannel::new(&urls, make, Duration::from_secs(30))?;
    let mut client = ControllerClient::new(channel);
    // Nothing runs: with no node, the records wait PENDING; what is measured is the
    // controllers' write path.
    let spec = v1::ContainerSpec {
        rootfs: "debian".into(),
        command: vec!["/bin/true".into()],
        ..Default::default()
    };
    let mut n = 0;
    let mut create = |client: &mut ControllerClient<FailoverChannel>| {
        n += 1;
        let request = v1::CreateContainerRequest {
            name: format!("ha-fo-{n}"),
            spec: Some(spec.clone()),
            ..Default::default()
        };
        let mut client = client.clone();
        async move { client.create_container(request).await.map(drop) }
    };
    let mut gaps = Vec::new();
    for k in 0..kills {
        let leader = leader_of(&controllers, 3).await?;
        for _ in 0..5 {
            create(&mut client)
                .await
                .map_err(|e| format!("create before kill {k}: {e}"))?;
        }
        let Some(victim) = controllers.iter_mut().find(|c| c.addr == leader) else {
            return Err(format!("no controller at the leader's address {leader}"));
        };
        let killed_at = Instant::now();
        victim.process = None;
        // A create sent on the dead leader's connection as it died fails (its outcome is
        // unknown); the next goes through the failover.
        let mut failed = 0;
        while let Err(e) = create(&mut client).await {
            failed += 1;
            if failed > 3 {
                return Err(format!("create after kill {k}: {e}"));
            }
        }
        gaps.push(killed_at.elapsed());
        victim.start(env)?;
    }
    let (p50, max) = (ms(percentile(&gaps, 0.5)), ms(percentile(&gaps, 1.0)));
    eprintln!(
        "bench: failover gaps {:?} ms",
        gaps.iter().map(|g| ms(*g).round()).collect::<Vec<_>>()
    );
    Ok(vec![
        row(
            format!("failover: kill -9 of the leader until creates succeed, p50 of {kills}"),
            p50,
            None,
            "< 2000 ms",
            p50 < 2000.0,
        ),
        row(
            format!("failover: kill -9 of the leader until creates succeed, max of {kills}"),
            max,
            None,
            "< 2000 ms",
            max < 2000.0,
        ),
    ])
}
