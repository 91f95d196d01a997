//! The container network in the harness: `start-latency-net` (hutch's bridge, CNI bridge +
//! host-local (+ portmap for published ports), against containerd's `ctr run --rm --cni` on
//! the same Debian plugins and against hutch without a network, samples alternating) and
//! `throughput-net` (1,000 bridged containers, 16 in flight, then no veth or lease may be
//! left).
//!
//! Bridges, veths, routes and NAT rules must not touch the machine's own network, so these
//! scenarios run in a child of the harness inside a network and mount namespace of its own
//! (`unshare --net --mount`): everything the plugins make goes with the namespace. `ctr`
//! reads its CNI configuration from `/etc/cni/net.d` and its plugins from `/opt/cni/bin`,
//! fixed paths: inside the private mount namespace a tmpfs with the harness's configuration
//! and a bind of Debian's `/usr/lib/cni` are mounted there (the two directories are made on
//! the host only if missing, and removed again).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hutch_proto::v1;

use crate::report::{ms, percentile, Row};
use crate::scenarios::{
    connect_and_watch, ctr, hutch_sample_of, is_final, remove_many, remove_one, spec_with_network,
    start_and_wait, time_command, Client,
};
use crate::setup::BenchEnv;

/// The cluster block of the scenario's controller (inside its own network namespace).
const CLUSTER_CIDR: &str = "198.19.0.0/16";
/// containerd's network in the scenario (another block, another bridge).
const CTR_SUBNET: &str = "198.19.250.0/24";

/// The scenarios run in the isolated child.
pub const SCENARIOS: [&str; 2] = ["start-latency-net", "throughput-net"];

/// Runs `scenario` (one of [`SCENARIOS`]) in a child process inside namespaces of its own;
/// its rows.
pub fn isolated(scenario: &str, smoke: bool) -> Result<Vec<Row>, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new("unshare");
    cmd.args(["--net", "--mount", "--propagation", "private", "--"])
        .arg(exe)
        .args(["--inner-net", scenario]);
    if smoke {
        cmd.arg("--smoke");
    }
    let out = cmd
        .output()
        .map_err(|e| format!("unshare (util-linux): {e}"))?;
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        return Err(format!("{scenario} failed ({})", out.status));
    }
    let rows: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("its rows: {e}"))?;
    rows.into_iter()
        .map(|r| serde_json::from_value(r).map_err(|e| format!("a row: {e}")))
        .collect()
}

/// Directories made for ctr's fixed CNI paths, removed (if they were made) when dropped.
struct CniDirs {
    made: Vec<PathBuf>,
}

impl CniDirs {
    fn prepare(scratch: &Path) -> Result<CniDirs, String> {
        let mut made = Vec::new();
        for dir in ["/opt/cni", "/opt/cni/bin", "/etc/cni", "/etc/cni/net.d"] {
            let p = PathBuf::from(dir);
            if !p.exists() {
                std::fs::create_dir(&p).map_err(|e| format!("{dir}: {e}"))?;
                made.push(p);
            }
        }
        let dirs = CniDirs { made };
        run("mount", &["--bind", "/usr/lib/cni", "/opt/cni/bin"])?;
        run("mount", &["-t", "tmpfs", "bench-cni", "/etc/cni/net.d"])?;
        let ipam = scratch.join("ctr-ipam");
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "bench-ctr",
            "plugins": [
                {"type": "bridge", "bridge": "benchctr0", "isGateway": true, "ipMasq": false,
                 "hairpinMode": true,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": CTR_SUBNET}]],
                          "routes": [{"dst": "0.0.0.0/0"}], "dataDir": ipam}},
                {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}
            ]
        });
        std::fs::write("/etc/cni/net.d/10-bench.conflist", conf.to_string())
            .map_err(|e| format!("ctr's CNI configuration: {e}"))?;
        Ok(dirs)
    }
}

impl Drop for CniDirs {
    fn drop(&mut self) {
        let _ = run("umount", &["/etc/cni/net.d"]);
        let _ = run("umount", &["/opt/cni/bin"]);
        for d in self.made.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `scenario` itself, in the child (already in its namespaces); its rows.
pub async fn inner(scenario: &str, smoke: bool) -> Result<Vec<Row>, String> {
    run("ip", &["link", "set", "lo", "up"])?;
    let env = BenchEnv::start_with(Some(CLUSTER_CIDR)).await?;
    // The agent learns its subnet when it registers.
    tokio::time::sleep(Duration::from_millis(500)).await;
    match scenario {
        "start-latency-net" => {
            let _cni = CniDirs::prepare(&env.dir)?;
            start_latency_net(&env, if smoke { 5 } else { 200 }).await
        }
        "throughput-net" => throughput_net(&env, if smoke { 20 } else { 1000 }).await,
        other => Err(format!("no isolated scenario '{other}'")),
    }
}

/// `throughput-net`: `count` bridged `/bin/true` containers (16 in flight) until all are
/// EXITED; then no veth may be left in the namespace and no lease in the agent's IPAM store.
async fn throughput_net(env: &BenchEnv, count: usize) -> Result<Vec<Row>, String> {
    let (client, mut watch) = connect_and_watch(env).await?;
    // hutch without a network first, the same way: what the network costs on top.
    let prefix = format!("tpn-none-{}-", std::process::id());
    let spec = spec_with_network("debian", v1::network_spec::Mode::None);
    let start = Instant::now();
    let outcome = start_and_wait(&client, &mut watch, &prefix, count, &spec, is_final).await;
    let none_rate = count as f64 / start.elapsed().as_secs_f64();
    remove_many(&client, &prefix, count).await;
    outcome?;

    let prefix = format!("tpn-{}-", std::process::id());
    let spec = spec_with_network("debian", v1::network_spec::Mode::Bridge);
    let start = Instant::now();
    let outcome = start_and_wait(&client, &mut watch, &prefix, count, &spec, is_final).await;
    let rate = count as f64 / start.elapsed().as_secs_f64();
    // DEL has run before a supervisor exits, and EXITED is reported after that; the
    // kernel deletes a veth with its namespace, in a batch of its own a moment later.
    let mut veths = usize::MAX;
    for _ in 0..20 {
        veths = veth_count()?;
        if veths == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let leases = leases_in(&env.dir.join("agent/cni/ipam"));
    let failed = not_exited_cleanly(&client, &prefix).await?;
    remove_many(&client, &prefix, count).await;
    outcome?;
    if !failed.is_empty() {
        return Err(format!(
            "{} of {count} bridged containers did not exit 0: {}",
            failed.len(),
            failed.into_iter().take(3).collect::<Vec<_>>().join("; ")
        ));
    }
    Ok(vec![
        Row {
            scenario: "throughput-net".into(),
            metric: format!("{count} x /bin/true, bridge, to EXITED"),
            hutch: rate,
            peer: Some(none_rate),
            peer_name: "hutch --network none".into(),
            unit: "containers/s".into(),
            ratio: Some(rate / none_rate),
            target: ">= 100 containers/s".into(),
            pass: rate >= 100.0,
        },
        Row {
            scenario: "throughput-net".into(),
            metric: format!("veths ({veths}) + IP leases ({leases}) left after"),
            hutch: (veths + leases) as f64,
            peer: None,
            peer_name: "-".into(),
            unit: "count".into(),
            ratio: None,
            target: "0".into(),
            pass: veths + leases == 0,
        },
    ])
}

/// The containers named `prefix*` that did not exit with code 0, with their status.
async fn not_exited_cleanly(client: &Client, prefix: &str) -> Result<Vec<String>, String> {
    let list = client
        .clone()
        .list_containers(v1::ListClusterContainersRequest::default())
        .await
        .map_err(|e| e.to_string())?
        .into_inner()
        .containers;
    Ok(list
        .into_iter()
        .filter(|c| c.name.starts_with(prefix))
        .filter(|c| c.state != v1::ContainerState::Exited as i32 || c.exit_code != Some(0))
        .map(|c| format!("{}: {}", c.name, c.status_message))
        .collect())
}

/// veths in this network namespace.
fn veth_count() -> Result<usize, String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show", "type", "veth"])
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).lines().count())
}

/// IP leases of host-local below `dir` (one file per address, named by it).
fn leases_in(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|net| net.path().is_dir())
        .flat_map(|net| {
            std::fs::read_dir(net.path())
                .into_iter()
                .flatten()
                .flatten()
        })
        .filter(|f| {
            f.file_name()
                .to_string_lossy()
                .parse::<std::net::IpAddr>()
                .is_ok()
        })
        .count()
}

/// `start-latency-net`: bridge, none and `ctr run --cni`, alternating, `runs` samples each.
async fn start_latency_net(env: &BenchEnv, runs: usize) -> Result<Vec<Row>, String> {
    let (mut client, mut watch) = connect_and_watch(env).await?;
    let (mut bridge, mut none, mut peer) = (vec![], vec![], vec![]);
    for i in 0..runs + 2 {
        let name = format!("net-{i}");
        let spec = spec_with_network("debian", v1::network_spec::Mode::Bridge);
        let (_, b) = hutch_sample_of(&mut client, &mut watch, &name, spec).await?;
        remove_one(&mut client, name).await?;
        let name = format!("none-{i}");
        let spec = spec_with_network("debian", v1::network_spec::Mode::None);
        let (_, n) = hutch_sample_of(&mut client, &mut watch, &name, spec).await?;
        remove_one(&mut client, name).await?;
        let mut c = ctr(env, &format!("hb-ctr-net-{i}"));
        c.arg("--cni");
        let p = time_command(&mut c)?;
        if i >= 2 {
            bridge.push(b);
            none.push(n);
            peer.push(p);
        }
    }
    let (b50, n50, c50) = (
        ms(percentile(&bridge, 0.5)),
        ms(percentile(&none, 0.5)),
        ms(percentile(&peer, 0.5)),
    );
    let row = |peer: f64, peer_name: &str, target: &str, pass: bool| Row {
        scenario: "start-latency-net".into(),
        metric: "p50 create->EXITED, bridge".into(),
        hutch: b50,
        peer: Some(peer),
        peer_name: peer_name.into(),
        unit: "ms".into(),
        ratio: Some(b50 / peer),
        target: target.into(),
        pass,
    };
    Ok(vec![
        row(
            c50,
            "ctr run --cni p50",
            "<= 0.5x containerd --cni p50",
            b50 <= 0.5 * c50,
        ),
        row(
            n50,
            "hutch none p50",
            "<= 2x hutch --network none",
            b50 <= 2.0 * n50,
        ),
    ])
}
