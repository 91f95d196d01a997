//! `tcp-cross-host`: TCP throughput from a container on one host to a container on another
//! (bridge, veth, the host-gw route between the nodes, veth, bridge), against the same
//! transfer between the two hosts' own network namespaces. The hosts are a two-agent lab of
//! `deploy/lab` (network namespaces on a private bridge, the harness's release binaries and
//! rootfs store), brought down at the end, also on failure.
//!
//! Both transfers use the same program (the Debian rootfs's perl, the host's perl for the
//! hosts): the client writes the bytes in 1 MiB writes, shuts its side down and waits for the
//! server to say how many it read; the time from connect to that answer is the figure
//! (measured with `/proc/uptime`, 10 ms steps, as perl-base has no finer clock). Pairs
//! alternate; the ratio is of the medians.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::report::Row;
use crate::setup::{BenchEnv, STORE_DIR};

/// The port of the server in the container, and of the one on the host.
const CONTAINER_PORT: u16 = 5001;
const HOST_PORT: u16 = 5002;
/// The address `deploy/lab` gives host n1.
const N1_ADDR: &str = "198.18.0.11";

/// A server reading every connection to its end and answering with the byte count.
fn sink(port: u16) -> String {
    format!(
        r#"use IO::Socket::INET; my $s = IO::Socket::INET->new(LocalPort => {port}, Listen => 4, ReuseAddr => 1) or die "listen: $!"; $| = 1; print "listening\n"; while (my $c = $s->accept) {{ my ($n, $buf) = (0, ""); while (my $r = sysread($c, $buf, 1 << 20)) {{ $n += $r }} syswrite($c, "got=$n\n"); close $c }}"#
    )
}

/// A client sending `bytes` to `addr`; prints `secs=S got=N`.
fn source(addr: &str, bytes: u64) -> String {
    format!(
        r#"use IO::Socket::INET; sub now {{ open(my $u, "<", "/proc/uptime") or die "uptime: $!"; my ($t) = split(/ /, <$u>); $t }} my $c = IO::Socket::INET->new(PeerAddr => "{addr}", Timeout => 5) or die "connect {addr}: $!"; my $buf = "x" x (1 << 20); my $left = {bytes}; my $t = now(); while ($left > 0) {{ my $w = syswrite($c, $buf, $left < length($buf) ? $left : length($buf)); die "write: $!" unless defined $w; $left -= $w }} shutdown($c, 1); my $ack = <$c>; printf "secs=%.2f %s", now() - $t, $ack;"#
    )
}

/// A lab of the harness's own; brought down when dropped.
struct Lab {
    name: String,
    script: PathBuf,
    bin_dir: PathBuf,
    host_server: Option<Child>,
}

impl Lab {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.script);
        c.env("HUTCH_BIN_DIR", &self.bin_dir)
            .env("HUTCH_LAB_ROOTFS_DIR", STORE_DIR)
            .env("HUTCH_LAB_TLS", "0")
            .args(["--name", &self.name])
            .args(args);
        c
    }

    /// Runs `args` of the lab script; its stdout, or the failure with stderr.
    fn run(&self, args: &[&str]) -> Result<String, String> {
        let out = self
            .cmd(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{}: {e}", self.script.display()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "lab {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// `hutch ARGS` on the lab's client host.
    fn hutch(&self, args: &[&str]) -> Result<String, String> {
        let mut full = vec!["exec", "client", "--", "hutch"];
        full.extend_from_slice(args);
        self.run(&full)
    }

    /// Polls `check` on `hutch -o json ARGS` every 200 ms for up to `secs` seconds.
    fn wait_json(
        &self,
        args: &[&str],
        secs: u64,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value, String> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut full = vec!["-o", "json"];
        full.extend_from_slice(args);
        loop {
            let last = self
                .hutch(&full)
                .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()));
            match &last {
                Ok(v) if check(v) => return Ok(v.clone()),
                _ if Instant::now() > deadline => {
                    return Err(format!(
                        "waited {secs}s for hutch {}: {last:?}",
                        args.join(" ")
                    ))
                }
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut c) = self.host_server.take() {
            // The lab script runs it in a process group of its own (see `host_server`).
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", c.id())])
                .status();
            let _ = c.wait();
        }
        let _ = self.run(&["down"]);
    }
}

/// Seconds of one transfer from `source`'s output (`secs=S got=N`), checking every byte
/// arrived.
fn seconds_of(output: &str, bytes: u64) -> Result<f64, String> {
    let field = |key: &str| {
        output
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .map(str::to_string)
    };
    let got: u64 = field("got=")
        .and_then(|g| g.parse().ok())
        .ok_or_else(|| format!("no byte count in '{output}'"))?;
    if got != bytes {
        return Err(format!("{got} of {bytes} bytes arrived: '{output}'"));
    }
    let secs: f64 = field("secs=")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no time in '{output}'"))?;
    // /proc/uptime counts in hundredths: never divide by zero on a tiny smoke transfer.
    Ok(secs.max(0.01))
}

/// `hutch run` arguments after the options: `program` in perl on `node`, 256 MiB.
fn perl_in_container<'a>(node: &'a str, program: &'a str) -> [&'a str; 9] {
    [
        "--node", node, "-m", "256M", "debian", "--", "perl", "-e", program,
    ]
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// The scenario: a two-agent lab, a server in a container on n1 and one on host n1, clients
/// in a container on n2 and on host n2, alternating.
pub fn tcp_cross_host(env: &BenchEnv, smoke: bool) -> Result<Vec<Row>, String> {
    let (bytes, pairs) = if smoke {
        (64u64 << 20, 1)
    } else {
        (1u64 << 30, 3)
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/lab");
    let mut lab = Lab {
        name: format!("hb-{}", std::process::id()),
        script,
        bin_dir: env.bin_dir.clone(),
        host_server: None,
    };
    lab.run(&["up", "2"])?;
    let nodes = lab.wait_json(&["nodes"], 30, |v| {
        v.as_array().is_some_and(|n| {
            n.len() == 2
                && n.iter()
                    .all(|n| n["subnet"].as_str().is_some_and(|s| !s.is_empty()))
        })
    })?;
    let subnets: Vec<&str> = nodes
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["subnet"].as_str())
        .collect();
    eprintln!(
        "bench: tcp-cross-host: lab {} up, node blocks {subnets:?}",
        lab.name
    );
    let (n1, n2) = (format!("{}-n1", lab.name), format!("{}-n2", lab.name));

    let server_program = sink(CONTAINER_PORT);
    let mut args = vec!["run", "-d", "--name", "hb-sink"];
    args.extend(perl_in_container(&n1, &server_program));
    lab.hutch(&args)?;
    let sink_record = lab.wait_json(&["inspect", "hb-sink"], 20, |c| {
        c["state"] == "running" && c["network"]["ip"].as_str().is_some_and(|ip| !ip.is_empty())
    })?;
    let sink_ip = sink_record["network"]["ip"]
        .as_str()
        .unwrap_or("")
        .to_string();

    let mut server = lab.cmd(&["exec", "n1", "--", "perl", "-e", &sink(HOST_PORT)]);
    std::os::unix::process::CommandExt::process_group(&mut server, 0);
    let server = server
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("host server: {e}"))?;
    // Kept by the lab before anything can fail: its drop kills the server's group.
    let server = lab.host_server.insert(server);
    let mut ready = String::new();
    if let Some(out) = server.stdout.as_mut() {
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut ready)
            .map_err(|e| format!("host server: {e}"))?;
    }
    if !ready.contains("listening") {
        return Err("the server on host n1 did not start".into());
    }

    let container_addr = format!("{sink_ip}:{CONTAINER_PORT}");
    let host_addr = format!("{N1_ADDR}:{HOST_PORT}");
    let client_program = source(&container_addr, bytes);
    let (mut in_containers, mut between_hosts) = (Vec::new(), Vec::new());
    for _ in 0..pairs {
        // The route to n1's block reaches n2 with a heartbeat: the first try may be early.
        let mut last = Err(String::new());
        for _ in 0..25 {
            let mut args = vec!["run", "--rm"];
            args.extend(perl_in_container(&n2, &client_program));
            last = lab.hutch(&args);
            if last.is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        in_containers.push(seconds_of(&last?, bytes)?);
        let out = lab.run(&["exec", "n2", "--", "perl", "-e", &source(&host_addr, bytes)])?;
        between_hosts.push(seconds_of(&out, bytes)?);
    }
    let mib = (bytes >> 20) as f64;
    let containers = mib / median(&mut in_containers);
    let hosts = mib / median(&mut between_hosts);
    let _ = lab.hutch(&["rm", "-f", "hb-sink"]);
    let ratio = containers / hosts;
    Ok(vec![Row {
        scenario: "tcp-cross-host".into(),
        metric: format!("{} MiB, container n2 -> container n1", bytes >> 20),
        hutch: containers,
        peer: Some(hosts),
        peer_name: "host n2 -> host n1".into(),
        unit: "MiB/s".into(),
        ratio: Some(ratio),
        target: ">= 0.8x the hosts' own".into(),
        pass: ratio >= 0.8,
    }])
}
