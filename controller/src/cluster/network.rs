//! The cluster's container network: each node's block of the cluster's block (given at its
//! first registration, kept in its record across restarts), and what a node is told with
//! each registration and heartbeat: its block, the cluster's, and a route to every other
//! node's block through that node's address.

use hutch_core::network::Cidr;
use hutch_proto::v1;

use super::State;

/// The cluster's block and the size of each node's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterCidr {
    /// The whole block, e.g. 198.19.0.0/16.
    pub cidr: Cidr,
    /// Each node's prefix length, e.g. 24.
    pub node_prefix: u8,
}

/// The node's block: the one it had (if it still lies in the cluster's block and no other
/// node holds it), else the first free one; `None` when every block is taken.
pub fn allocate_subnet(
    cluster: &ClusterCidr,
    previous: Option<Cidr>,
    used: &[Cidr],
) -> Option<Cidr> {
    if let Some(p) = previous {
        if p.prefix == cluster.node_prefix
            && cluster.cidr.contains(p.network)
            && !used.iter().any(|u| u.overlaps(&p))
        {
            return Some(p);
        }
    }
    let count = cluster.cidr.subnet_count(cluster.node_prefix)?;
    (0..count)
        .filter_map(|i| cluster.cidr.subnet(cluster.node_prefix, i))
        .find(|s| !used.iter().any(|u| u.overlaps(s)))
}

/// Whether a container's name goes into every node's name table: bare names only, so no
/// container can stand in for a host name of the outside world (`deb.debian.org`) or for
/// `localhost` in other containers' `/etc/hosts`.
pub fn resolvable_name(name: &str) -> bool {
    !name.contains('.')
        && !name.eq_ignore_ascii_case("localhost")
        && !name.to_ascii_lowercase().starts_with("ip6-")
}

/// The IPv4 address of a node's `host:port` address, when it is a literal one.
fn node_ip(address: &str) -> Option<std::net::Ipv4Addr> {
    let (host, _) = address.rsplit_once(':')?;
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// What node `name` is told about the cluster's network; the name table only when the node
/// has another version of it than `names_revision` (`None`: it has none, as at registration).
pub(crate) fn view_for(
    st: &State,
    cluster: &ClusterCidr,
    service_cidr: Option<Cidr>,
    name: &str,
    names_revision: Option<u64>,
) -> Option<v1::ClusterNetwork> {
    let own = st.nodes.get(name)?;
    if own.record.subnet.is_empty() {
        return None;
    }
    let routes = st
        .nodes
        .values()
        .filter(|e| e.record.name != name && !e.record.subnet.is_empty())
        .filter_map(|e| {
            Some(v1::NodeRoute {
                node: e.record.name.clone(),
                subnet: e.record.subnet.clone(),
                via: node_ip(&e.record.address)?.to_string(),
            })
        })
        .collect();
    let current = names_revision == Some(st.names_revision);
    let names = if current {
        Vec::new()
    } else {
        // Services first: their lines keep their place in containers' /etc/hosts while
        // containers come and go (see hutch_supervisor::network::rewrite_hosts).
        let (services, containers): (Vec<_>, Vec<_>) = st
            .names
            .iter()
            .partition(|(name, _)| st.services.contains_key(*name));
        services
            .into_iter()
            .chain(containers)
            .map(|(name, ip)| v1::ContainerAddress {
                name: name.clone(),
                ip: ip.clone(),
            })
            .collect()
    };
    let services = if current {
        Vec::new()
    } else {
        service_backends(st)
    };
    Some(v1::ClusterNetwork {
        cluster_cidr: cluster.cidr.to_string(),
        subnet: own.record.subnet.clone(),
        routes,
        names_revision: st.names_revision,
        names,
        service_cidr: service_cidr.map(|c| c.to_string()).unwrap_or_default(),
        services,
    })
}

/// Every service with an address, and the replicas its connections go to.
fn service_backends(st: &State) -> Vec<v1::ServiceBackends> {
    st.services
        .values()
        .filter(|s| !s.address.is_empty())
        .map(|s| v1::ServiceBackends {
            name: s.name.clone(),
            address: s.address.clone(),
            backends: st
                .backends
                .get(&s.name)
                .map(|b| b.values().cloned().collect())
                .unwrap_or_default(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_kept_reused_and_never_shared() {
        let c = ClusterCidr {
            cidr: "198.19.0.0/22".parse().expect("a value"),
            node_prefix: 24,
        };
        let b = |s: &str| s.parse::<Cidr>().expect("a value");
        assert_eq!(allocate_subnet(&c, None, &[]), Some(b("198.19.0.0/24")));
        assert_eq!(
            allocate_subnet(&c, None, &[b("198.19.0.0/24"), b("198.19.2.0/24")]),
            Some(b("198.19.1.0/24"))
        );
        // Its own block again, after a restart.
        assert_eq!(
            allocate_subnet(&c, Some(b("198.19.3.0/24")), &[b("198.19.0.0/24")]),
            Some(b("198.19.3.0/24"))
        );
        // Not one outside the block or held by another node.
        assert_eq!(
            allocate_subnet(&c, Some(b("198.19.9.0/24")), &[]),
            Some(b("198.19.0.0/24"))
        );
        assert_eq!(
            allocate_subnet(&c, Some(b("198.19.0.0/24")), &[b("198.19.0.0/24")]),
            Some(b("198.19.1.0/24"))
        );
        let all: Vec<Cidr> = (0..4)
            .map(|i| c.cidr.subnet(24, i).expect("a value"))
            .collect();
        assert_eq!(allocate_subnet(&c, None, &all), None);
        assert_eq!(
            node_ip("198.18.0.11:7070").expect("a value").to_string(),
            "198.18.0.11"
        );
        assert_eq!(node_ip("agent.example:7070"), None);
        assert!(resolvable_name("web-1"));
        for bad in ["deb.debian.org", "localhost", "LOCALHOST", "ip6-loopback"] {
            assert!(!resolvable_name(bad), "{bad}");
        }
    }
}
