//! The node-wide half of the container network, kept in step with the cluster: traffic from
//! the node's subnet to anywhere outside the cluster's block is masqueraded (chain
//! `HUTCH-MASQ` of the nat table, jumped to from `POSTROUTING` for the node's subnet), and
//! every other node's subnet is routed through that node's address (host-gw: no tunnel, no
//! NAT between nodes, so source addresses are kept). Routes hutch installs carry the
//! routing protocol number [`ROUTE_PROTOCOL`], so hutch removes exactly its own.
//!
//! Done with `iptables` and `ip` (iptables and iproute2 packages), rarely: at registration
//! and when the controller's list of nodes changes.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;

use hutch_core::network::Cidr;

use super::Assignment;

/// The routing protocol number marking hutch's routes (`ip route ... proto 201`).
pub const ROUTE_PROTOCOL: &str = "201";
/// hutch's chain in the nat table.
pub const MASQ_CHAIN: &str = "HUTCH-MASQ";

/// A route to another node's containers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PeerRoute {
    /// The other node's subnet.
    pub subnet: Cidr,
    /// Its address.
    pub via: Ipv4Addr,
}

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e} (install iptables and iproute2)"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The block `bridge`'s IPv4 address lies in (the gateway the bridge plugin gave it), if
/// the bridge exists and has one.
pub fn bridge_block(bridge: &str) -> Option<Cidr> {
    let out = run("ip", &["-4", "-o", "addr", "show", "dev", bridge]).ok()?;
    parse_bridge_block(&out)
}

/// Pure part of [`bridge_block`]: the first `inet A.B.C.D/N` of `ip -o addr` output.
fn parse_bridge_block(text: &str) -> Option<Cidr> {
    let mut words = text.split_whitespace();
    words.find(|w| *w == "inet")?;
    let (ip, prefix) = words.next()?.split_once('/')?;
    Cidr::of_address(ip.parse().ok()?, prefix.parse().ok()?)
}

/// Gives `bridge` up for a new block: its old address goes, so the bridge plugin sets the
/// new gateway (containers still on the old block are cut off, as their block is gone).
pub fn readdress_bridge(bridge: &str, subnet: &Cidr) -> Result<(), String> {
    match bridge_block(bridge) {
        Some(old) if old != *subnet => {
            tracing::warn!(%bridge, %old, new = %subnet, "the node's block changed: the bridge's old address is removed");
            run("ip", &["-4", "addr", "flush", "dev", bridge]).map(drop)
        }
        _ => Ok(()),
    }
}

/// Masquerades traffic from `a.subnet` to destinations outside `a.cluster`; replaces
/// whatever hutch set up before (another subnet after a re-assignment).
pub fn masquerade(a: &Assignment) -> Result<(), String> {
    let nat = |args: &[&str]| {
        let mut all = vec!["-w", "5", "-t", "nat"];
        all.extend_from_slice(args);
        run("iptables", &all)
    };
    if nat(&["-S", MASQ_CHAIN]).is_err() {
        nat(&["-N", MASQ_CHAIN])?;
    }
    nat(&["-F", MASQ_CHAIN])?;
    let cluster = a.cluster.to_string();
    nat(&["-A", MASQ_CHAIN, "-d", &cluster, "-j", "RETURN"])?;
    nat(&["-A", MASQ_CHAIN, "-d", "224.0.0.0/4", "-j", "RETURN"])?;
    nat(&["-A", MASQ_CHAIN, "-j", "MASQUERADE"])?;
    let subnet = a.subnet.to_string();
    // Old jumps (another subnet) go; the current one is added once.
    for rule in nat(&["-S", "POSTROUTING"])?.lines() {
        if rule.ends_with(&format!("-j {MASQ_CHAIN}")) && !rule.contains(&format!("-s {subnet} ")) {
            let args: Vec<&str> = rule.trim_start_matches("-A ").split_whitespace().collect();
            let mut delete = vec!["-D"];
            delete.extend(args);
            nat(&delete)?;
        }
    }
    let jump = ["POSTROUTING", "-s", subnet.as_str(), "-j", MASQ_CHAIN];
    let mut check = vec!["-C"];
    check.extend(jump);
    if nat(&check).is_err() {
        let mut add = vec!["-A"];
        add.extend(jump);
        nat(&add)?;
    }
    Ok(())
}

/// hutch's routes now in the table.
pub fn current_routes() -> Result<BTreeSet<PeerRoute>, String> {
    let text = run(
        "ip",
        &["-4", "-o", "route", "show", "proto", ROUTE_PROTOCOL],
    )?;
    Ok(text.lines().filter_map(parse_route).collect())
}

/// `198.19.2.0/24 via 198.18.0.12 dev eth0 ...` as a route.
fn parse_route(line: &str) -> Option<PeerRoute> {
    let mut words = line.split_whitespace();
    let subnet: Cidr = words.next()?.parse().ok()?;
    let mut via = None;
    while let Some(w) = words.next() {
        if w == "via" {
            via = words.next()?.parse().ok();
        }
    }
    Some(PeerRoute { subnet, via: via? })
}

/// Makes hutch's routes exactly `wanted`: adds or replaces what is missing, removes the rest.
/// Every route is tried; the first failure is returned.
pub fn sync_routes(wanted: &BTreeSet<PeerRoute>) -> Result<(), String> {
    let current = current_routes()?;
    let mut first_error = None;
    for r in current.difference(wanted) {
        let subnet = r.subnet.to_string();
        if let Err(e) = run("ip", &["route", "del", &subnet, "proto", ROUTE_PROTOCOL]) {
            first_error.get_or_insert(e);
        }
    }
    for r in wanted.difference(&current) {
        let (subnet, via) = (r.subnet.to_string(), r.via.to_string());
        // Only a route of hutch's own is replaced; any other route to that block stays,
        // and adding beside it fails with the reason ("File exists").
        let verb = if current.iter().any(|c| c.subnet == r.subnet) {
            "replace"
        } else {
            "add"
        };
        let args = ["route", verb, &subnet, "via", &via, "proto", ROUTE_PROTOCOL];
        if let Err(e) = run("ip", &args) {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bridge_block_from_ip_addr() {
        let out = r"7: hutch0    inet 198.19.3.1/24 brd 198.19.3.255 scope global hutch0\       valid_lft forever";
        assert_eq!(
            parse_bridge_block(out),
            Some("198.19.3.0/24".parse().expect("cidr"))
        );
        assert_eq!(parse_bridge_block(""), None);
        assert_eq!(parse_bridge_block("7: hutch0 inet nonsense"), None);
    }

    #[test]
    fn routes_read_back() {
        let r = parse_route("198.19.2.0/24 via 198.18.0.12 dev eth0 proto 201 ").expect("a value");
        assert_eq!(r.subnet.to_string(), "198.19.2.0/24");
        assert_eq!(r.via, Ipv4Addr::new(198, 18, 0, 12));
        assert_eq!(parse_route("198.19.2.0/24 dev hutch0 proto 201"), None);
    }
}
