//! How a container is connected: the network mode (Docker's `--network bridge|none|host`),
//! published ports (`-p [IP:]HOSTPORT:CTRPORT[/tcp|udp]`), the IPv4 blocks (CIDRs) the
//! cluster hands out, and what a started container reports about its network. Pure: the
//! agent's `cni` module and the controller's subnet allocation do the work.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Most ports one container may publish.
pub const MAX_PUBLISHED_PORTS: usize = 64;

/// How a container is connected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// Not chosen: `bridge` when the container has a network namespace of its own and its
    /// node has a container network, `none` when it has one and the node has none, `host`
    /// without a network namespace.
    #[default]
    Auto,
    /// An interface on the node's bridge with an address of the node's subnet, reachable
    /// from every node of the cluster (CNI).
    Bridge,
    /// A network namespace holding only `lo` (the tutorial's `unshare -n`).
    None,
    /// The host's network namespace.
    Host,
}

impl NetworkMode {
    /// Its name, as the CLI and the API's documentation spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::Auto => "auto",
            NetworkMode::Bridge => "bridge",
            NetworkMode::None => "none",
            NetworkMode::Host => "host",
        }
    }
}

impl fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NetworkMode {
    type Err = NetworkError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "bridge" => Ok(NetworkMode::Bridge),
            "none" => Ok(NetworkMode::None),
            "host" => Ok(NetworkMode::Host),
            other => Err(NetworkError(format!(
                "unknown network mode '{other}': choose bridge, none or host"
            ))),
        }
    }
}

/// A transport protocol of a published port.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// TCP (the default).
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// `tcp` or `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = NetworkError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "" | "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            other => Err(NetworkError(format!(
                "unknown protocol '{other}': choose tcp or udp"
            ))),
        }
    }
}

/// A port of the node forwarded to a port of the container.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    /// The node's port (1-65535).
    pub host_port: u16,
    /// The container's port (1-65535).
    pub container_port: u16,
    /// TCP or UDP.
    #[serde(default)]
    pub protocol: Protocol,
    /// Only this address of the node; `None`: all of them.
    #[serde(default)]
    pub host_ip: Option<Ipv4Addr>,
}

impl PortMapping {
    /// Whether two mappings claim the same port of the node (same protocol and port, and
    /// addresses that overlap: one of them is "all addresses", or both are the same).
    pub fn conflicts_with(&self, other: &PortMapping) -> bool {
        self.host_port == other.host_port
            && self.protocol == other.protocol
            && match (self.host_ip, other.host_ip) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

impl fmt::Display for PortMapping {
    /// Docker's spelling: `[IP:]HOSTPORT:CTRPORT/PROTO`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(ip) = self.host_ip {
            write!(f, "{ip}:")?;
        }
        write!(
            f,
            "{}:{}/{}",
            self.host_port, self.container_port, self.protocol
        )
    }
}

/// Why a network setting was refused, for a person.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NetworkError(pub String);

/// A port number from the wire or a command line: 1 to 65535.
pub fn port_number(what: &str, value: u64) -> Result<u16, NetworkError> {
    match u16::try_from(value) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(NetworkError(format!(
            "{what} {value} is not a port: use 1 to 65535"
        ))),
    }
}

/// A host address to publish on: an IPv4 address, or empty for all of them.
pub fn host_ip(text: &str) -> Result<Option<Ipv4Addr>, NetworkError> {
    if text.is_empty() {
        return Ok(None);
    }
    match text.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) if ip.is_unspecified() => Ok(None),
        Ok(IpAddr::V4(ip)) if ip.is_multicast() || ip.is_broadcast() => Err(NetworkError(
            format!("host address {ip} is not an address of a node: give a unicast IPv4 address"),
        )),
        Ok(IpAddr::V4(ip)) => Ok(Some(ip)),
        Ok(IpAddr::V6(_)) => Err(NetworkError(format!(
            "host address {text}: only IPv4 addresses can be published on (hutch's container network is IPv4)"
        ))),
        Err(_) => Err(NetworkError(format!(
            "host address '{text}' is not an IPv4 address"
        ))),
    }
}

/// Parses Docker's `-p` syntax: `[IP:]HOSTPORT:CTRPORT[/tcp|udp]`.
pub fn parse_publish(text: &str) -> Result<PortMapping, NetworkError> {
    let (ports, protocol) = match text.rsplit_once('/') {
        Some((ports, proto)) => (ports, proto.parse::<Protocol>()?),
        None => (text, Protocol::Tcp),
    };
    let parts: Vec<&str> = ports.split(':').collect();
    let (ip, host, container) = match parts.as_slice() {
        [host, container] => ("", *host, *container),
        [ip, host, container] => (*ip, *host, *container),
        _ => {
            return Err(NetworkError(format!(
            "'{text}' is not a port mapping: write [IP:]HOSTPORT:CTRPORT[/tcp|udp], e.g. 8080:80"
        )))
        }
    };
    let number = |what: &str, s: &str| {
        s.parse::<u64>()
            .map_err(|_| NetworkError(format!("{what} '{s}' in '{text}' is not a number")))
            .and_then(|n| port_number(what, n))
    };
    Ok(PortMapping {
        host_port: number("host port", host)?,
        container_port: number("container port", container)?,
        protocol,
        host_ip: host_ip(ip)?,
    })
}

/// What the container's network should be.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// The mode.
    #[serde(default)]
    pub mode: NetworkMode,
    /// Ports to publish (bridge only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMapping>,
}

impl NetworkSpec {
    /// Whether nothing differs from the defaults.
    pub fn is_default(&self) -> bool {
        *self == NetworkSpec::default()
    }

    /// Checks the mode against whether the container has a network namespace of its own,
    /// and the ports among themselves.
    pub fn validate(&self, own_net_namespace: bool) -> Result<(), NetworkError> {
        match (self.mode, own_net_namespace) {
            (NetworkMode::Host, true) => {
                return Err(NetworkError(
                    "network mode host uses the host's network: leave 'net' out of the namespaces"
                        .into(),
                ))
            }
            (NetworkMode::Bridge | NetworkMode::None, false) => {
                return Err(NetworkError(format!(
                    "network mode {} needs a network namespace of its own: add 'net' to the namespaces (or use host)",
                    self.mode
                )))
            }
            _ => {}
        }
        if self.ports.is_empty() {
            return Ok(());
        }
        let bridged = match self.mode {
            NetworkMode::Bridge => true,
            NetworkMode::Auto => own_net_namespace,
            NetworkMode::None | NetworkMode::Host => false,
        };
        if !bridged {
            return Err(NetworkError(format!(
                "publishing ports needs the bridge network (mode {}): a {} container has no address to forward to",
                self.mode,
                if own_net_namespace { "'none'" } else { "host-network" }
            )));
        }
        if self.ports.len() > MAX_PUBLISHED_PORTS {
            return Err(NetworkError(format!(
                "{} published ports: at most {MAX_PUBLISHED_PORTS} are accepted",
                self.ports.len()
            )));
        }
        for (i, p) in self.ports.iter().enumerate() {
            if p.host_port == 0 || p.container_port == 0 {
                return Err(NetworkError(format!(
                    "port mapping {p}: ports are 1 to 65535"
                )));
            }
            if let Some(other) = self.ports[..i].iter().find(|o| o.conflicts_with(p)) {
                return Err(NetworkError(format!(
                    "host port {}/{} is published twice ({other} and {p})",
                    p.host_port, p.protocol
                )));
            }
        }
        Ok(())
    }
}

/// An IPv4 block: an address and a prefix length, such as `198.19.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    /// The first address (host bits are zero).
    pub network: Ipv4Addr,
    /// Prefix length, 0 to 32.
    pub prefix: u8,
}

impl Cidr {
    /// The block an interface address such as `198.19.3.1/24` lies in.
    pub fn of_address(ip: Ipv4Addr, prefix: u8) -> Option<Cidr> {
        (prefix <= 32).then(|| Cidr {
            network: Ipv4Addr::from(u32::from(ip) & Cidr::mask(prefix)),
            prefix,
        })
    }

    fn mask(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix))
        }
    }

    /// Whether `ip` lies in the block.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask(self.prefix) == u32::from(self.network)
    }

    /// Whether the two blocks share an address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }

    /// How many blocks of `prefix` the block holds (`None` if `prefix` is shorter than its
    /// own, or more than 2^24).
    pub fn subnet_count(&self, prefix: u8) -> Option<u32> {
        if prefix < self.prefix || prefix > 32 || prefix - self.prefix > 24 {
            return None;
        }
        Some(1u32 << (prefix - self.prefix))
    }

    /// The `index`th block of length `prefix` inside this one.
    pub fn subnet(&self, prefix: u8, index: u32) -> Option<Cidr> {
        if index >= self.subnet_count(prefix)? {
            return None;
        }
        let size = if prefix == 32 {
            1
        } else {
            1u32 << (32 - u32::from(prefix))
        };
        Some(Cidr {
            network: Ipv4Addr::from(u32::from(self.network) + index * size),
            prefix,
        })
    }

    /// The `n`th address of the block (the network address is the 0th).
    pub fn host(&self, n: u32) -> Option<Ipv4Addr> {
        let size = 1u64 << (32 - u32::from(self.prefix));
        (u64::from(n) < size).then(|| Ipv4Addr::from(u32::from(self.network) + n))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = NetworkError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            NetworkError(format!(
                "'{s}' is not an IPv4 block: write e.g. 198.19.0.0/16"
            ))
        };
        let (ip, prefix) = s.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if prefix > 32 {
            return Err(bad());
        }
        let network = Ipv4Addr::from(u32::from(ip) & Cidr::mask(prefix));
        if network != ip {
            return Err(NetworkError(format!(
                "'{s}' has host bits set: the block starts at {network}/{prefix}"
            )));
        }
        Ok(Cidr { network, prefix })
    }
}

impl TryFrom<String> for Cidr {
    type Error = NetworkError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.to_string()
    }
}

/// What a started container's network is, as its node reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkStatus {
    /// The mode in effect (never `Auto`).
    pub mode: NetworkMode,
    /// The CNI network it is attached to (bridge only).
    #[serde(default)]
    pub network: String,
    /// Its address (bridge only).
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// Its default gateway (bridge only).
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    /// The node's subnet it has its address from (bridge only).
    #[serde(default)]
    pub subnet: Option<Cidr>,
    /// The ports published on the node.
    #[serde(default)]
    pub ports: Vec<PortMapping>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_syntax() {
        let p = parse_publish("8080:80").expect("a value");
        assert_eq!((p.host_port, p.container_port), (8080, 80));
        assert_eq!(p.protocol, Protocol::Tcp);
        assert_eq!(p.host_ip, None);
        let p = parse_publish("198.18.0.11:53:5353/udp").expect("a value");
        assert_eq!(p.host_ip, Some(Ipv4Addr::new(198, 18, 0, 11)));
        assert_eq!(p.protocol, Protocol::Udp);
        assert_eq!(p.to_string(), "198.18.0.11:53:5353/udp");
        for bad in [
            "80",
            "0:80",
            "70000:80",
            "80:x",
            "80:80/sctp",
            "::1:80:80",
            "a.b.c.d:80:80",
            "224.0.0.1:80:80",
            "1:2:3:4",
        ] {
            assert!(parse_publish(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(
            parse_publish("0.0.0.0:80:80").expect("a value").host_ip,
            None
        );
    }

    #[test]
    fn modes_against_namespaces_and_ports() {
        let port = parse_publish("8080:80").expect("a value");
        let spec = |mode, ports: Vec<PortMapping>| NetworkSpec { mode, ports };
        assert!(spec(NetworkMode::Host, vec![]).validate(true).is_err());
        assert!(spec(NetworkMode::Host, vec![]).validate(false).is_ok());
        assert!(spec(NetworkMode::Bridge, vec![]).validate(false).is_err());
        assert!(spec(NetworkMode::None, vec![port.clone()])
            .validate(true)
            .is_err());
        assert!(spec(NetworkMode::Auto, vec![port.clone()])
            .validate(false)
            .is_err());
        assert!(spec(NetworkMode::Auto, vec![port.clone()])
            .validate(true)
            .is_ok());
        let twice = spec(NetworkMode::Bridge, vec![port.clone(), port.clone()]);
        assert!(twice
            .validate(true)
            .expect_err("an error")
            .0
            .contains("twice"));
        let mut udp = port.clone();
        udp.protocol = Protocol::Udp;
        assert!(spec(NetworkMode::Bridge, vec![port.clone(), udp])
            .validate(true)
            .is_ok());
        let mut other_ip = port.clone();
        other_ip.host_ip = Some(Ipv4Addr::new(198, 18, 0, 11));
        assert!(other_ip.conflicts_with(&port));
        let mut third = other_ip.clone();
        third.host_ip = Some(Ipv4Addr::new(198, 18, 0, 12));
        assert!(!third.conflicts_with(&other_ip));
    }

    #[test]
    fn cidr_blocks() {
        let c: Cidr = "198.19.0.0/16".parse().expect("a value");
        assert_eq!(c.subnet_count(24), Some(256));
        assert_eq!(
            c.subnet(24, 3).expect("a value").to_string(),
            "198.19.3.0/24"
        );
        assert_eq!(c.subnet(24, 256), None);
        assert!(c.contains("198.19.200.7".parse().expect("a value")));
        assert!(!c.contains("198.18.0.1".parse().expect("a value")));
        assert_eq!(
            c.subnet(24, 1)
                .expect("a value")
                .host(1)
                .expect("a value")
                .to_string(),
            "198.19.1.1"
        );
        assert!("198.19.0.1/16".parse::<Cidr>().is_err());
        assert!("198.19.0.0/33".parse::<Cidr>().is_err());
        assert!("198.19.0.0".parse::<Cidr>().is_err());
        let z: Cidr = "0.0.0.0/0".parse().expect("a value");
        assert!(z.contains(Ipv4Addr::new(1, 2, 3, 4)));
        assert!(c.overlaps(&"198.19.4.0/24".parse().expect("a value")));
        assert!(!c.overlaps(&"198.18.0.0/24".parse().expect("a value")));
    }
}
