//! `start-latency-net`: starting a container with a network, hutch's bridge (CNI: bridge,
//! host-local, portmap) against containerd's `ctr run --rm --cni` on the same Debian plugins
//! and against hutch without a network (`--network none`), samples alternating.
//!
//! Bridges, veths, routes and NAT rules must not touch the machine's own network, so the
//! scenario runs in a child of the harness inside a network and mount namespace of its own
//! (`unshare --net --mount`): everything the plugins make goes with the namespace. `ctr`
//! reads its CNI configuration from `/etc/cni/net.d` and its plugins from `/opt/cni/bin`,
//! fixed paths: inside the private mount namespace a tmpfs with the harness's configuration
//! and a bind of Debian's `/usr/lib/cni` are mounted there (the two directories are made on
//! the host only if missing, and removed again).

use std::path::{Path, PathBuf};
use std::process::Command;

use hutch_proto::v1;

use crate::report::{ms, percentile, Row};
use crate::scenarios::{
    connect_and_watch, ctr, hutch_sample_of, remove_one, spec_with_network, time_command,
};
use crate::setup::BenchEnv;

/// The cluster block of the scenario's controller (inside its own network namespace).
const CLUSTER_CIDR: &str = "198.19.0.0/16";
/// containerd's network in the scenario (another block, another bridge).
const CTR_SUBNET: &str = "198.19.250.0/24";

/// Runs the scenario in a child process inside namespaces of its own; its rows.
pub fn start_latency_net_isolated(smoke: bool) -> Result<Vec<Row>, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new("unshare");
    cmd.args(["--net", "--mount", "--propagation", "private", "--"])
        .arg(exe)
        .arg("--inner-net");
    if smoke {
        cmd.arg("--smoke");
    }
    let out = cmd
        .output()
        .map_err(|e| format!("unshare (util-linux): {e}"))?;
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        return Err(format!("start-latency-net failed ({})", out.status));
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

/// The scenario itself, in the child (already in its namespaces): rows as JSON on stdout.
pub async fn inner(runs: usize) -> Result<Vec<Row>, String> {
    run("ip", &["link", "set", "lo", "up"])?;
    let env = BenchEnv::start_with(Some(CLUSTER_CIDR)).await?;
    let _cni = CniDirs::prepare(&env.dir)?;
    let (mut client, mut watch) = connect_and_watch(&env).await?;
    // The agent learns its subnet when it registers.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
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
        let mut c = ctr(&env, &format!("hb-ctr-net-{i}"));
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
