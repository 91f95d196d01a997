//! `tls`: what mutual TLS costs. A second controller and agent of the run serve TLS, the
//! agent joining with a token as in a lab; samples of create -> EXITED alternate between
//! that pair and the plaintext pair, so both see the same machine. The join (agent start
//! to serving with its certificate) is timed too.

use std::process::Command;
use std::time::{Duration, Instant};

use hutch_proto::v1;
use hutch_proto::v1::controller_client::ControllerClient;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::report::{ms, percentile, Row};
use crate::scenarios::{connect_and_watch, hutch_sample, remove_one, Client, Watch};
use crate::setup::{spawn_listening, BenchEnv, KilledOnDrop, STORE_DIR};

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A client of the TLS controller at `addr` trusting `ca_pem`, and a watch of every change.
async fn tls_client(addr: &str, ca_pem: &[u8]) -> Result<(Client, Watch), String> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(hutch_core::bearer::CONTROLLER_TLS_NAME);
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .map_err(err)?
        .tls_config(tls)
        .map_err(err)?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| hutch_core::error_chain(&e))?;
    let mut client = ControllerClient::new(channel);
    let watch = client
        .watch_containers(v1::WatchContainersRequest::default())
        .await
        .map_err(err)?
        .into_inner();
    Ok((client, watch))
}

/// Waits until the controller lists a READY node (20 s at most).
pub(crate) async fn wait_ready(client: &mut Client) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let nodes = match client.list_nodes(v1::ListNodesRequest::default()).await {
            Ok(answer) => answer.into_inner().nodes,
            // A controller on etcd serves once it leads.
            Err(s) if s.code() == tonic::Code::Unavailable => Vec::new(),
            Err(s) => return Err(err(s)),
        };
        if nodes.iter().any(|n| n.state == v1::NodeState::Ready as i32) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err("the agent never became READY".into())
}

/// The `tls` scenario: `runs` alternating samples on each pair.
pub async fn tls_overhead(env: &BenchEnv, runs: usize) -> Result<Vec<Row>, String> {
    let dir = env.dir.join("tls");
    let mut ctl = Command::new(env.bin_dir.join("hutch-controller"));
    ctl.env("HUTCH_CLUSTER_CIDR", "none");
    ctl.args(["--listen", "127.0.0.1:0", "--tls", "--data-dir"])
        .arg(dir.join("controller"));
    let (child, ctl_addr) = spawn_listening(ctl, &env.dir.join("tls-controller.log"))?;
    let _controller = KilledOnDrop(child);
    let ca = std::fs::read(dir.join("controller/tls/ca.crt")).map_err(err)?;
    let (mut tls, mut tls_watch) = tls_client(&ctl_addr, &ca).await?;
    let token = tls
        .create_join_token(v1::CreateJoinTokenRequest {
            ttl_seconds: 600,
            description: "hutch-bench".into(),
        })
        .await
        .map_err(err)?
        .into_inner()
        .token;

    let joining = Instant::now();
    let mut agent = Command::new(env.bin_dir.join("hutch-agent"));
    agent
        .arg("--state-dir")
        .arg(dir.join("agent"))
        .args(["--rootfs-dir", STORE_DIR])
        // Named so the run's cleanup finds its cgroups (hutch-bench-PID*).
        .args(["--name", &format!("bench-{}-tls", std::process::id())])
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--controller",
            &ctl_addr,
        ])
        .args(["--join", &token]);
    let (child, _) = spawn_listening(agent, &env.dir.join("tls-agent.log"))?;
    let join = joining.elapsed();
    let _agent = KilledOnDrop(child);
    wait_ready(&mut tls).await?;

    let (mut plain, mut plain_watch) = connect_and_watch(env).await?;
    let (mut over_tls, mut over_plain) = (Vec::new(), Vec::new());
    for i in 0..runs + 2 {
        let name = format!("tls-{i}");
        let (_, t) = hutch_sample(&mut tls, &mut tls_watch, &name, "debian").await?;
        remove_one(&mut tls, name.clone()).await?;
        let (_, p) = hutch_sample(&mut plain, &mut plain_watch, &name, "debian").await?;
        remove_one(&mut plain, name).await?;
        if i >= 2 {
            // The first two of each are warm-up.
            over_tls.push(t);
            over_plain.push(p);
        }
    }
    let (t50, p50) = (
        ms(percentile(&over_tls, 0.5)),
        ms(percentile(&over_plain, 0.5)),
    );
    Ok(vec![
        Row {
            scenario: "tls".into(),
            metric: "p50 create->EXITED, mutual TLS".into(),
            hutch: t50,
            peer: Some(p50),
            peer_name: "hutch plaintext p50".into(),
            unit: "ms".into(),
            ratio: Some(t50 / p50),
            target: "<= 1.2x plaintext".into(),
            pass: t50 <= 1.2 * p50,
        },
        Row {
            scenario: "tls".into(),
            metric: "agent start to joined (key, CSR, pinned TLS)".into(),
            hutch: ms(join),
            peer: None,
            peer_name: String::new(),
            unit: "ms".into(),
            ratio: None,
            target: "(for the record)".into(),
            pass: true,
        },
    ])
}
