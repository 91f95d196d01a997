//! The node's container network: which CNI network a container joins, with what
//! configuration and plugins; the node's subnet (given by the controller at registration,
//! or `--network-subnet` for an agent without one); and, in [`host`], the node-wide pieces
//! (masquerading of traffic leaving the cluster, routes to the other nodes' subnets).
//!
//! A container in `bridge` mode gets a [`NetworkPlan`]: the network's configuration list
//! (from `--cni-conf-dir` when a file there carries the network's name, else, for the
//! default network, the bridge configuration hutch writes for the node's subnet), the
//! plugin directories and the ports. The supervisor runs the plugins.

pub mod host;
pub mod services;

pub use host::PeerRoute;
pub use services::{ServiceTable, ServiceVip};

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use serde_json::Value;

use hutch_core::network::{Cidr, NetworkMode, PortMapping};
use hutch_core::spec::{ContainerSpec, Namespace};
use hutch_supervisor::cni::{conf, find_plugin, CniError, NetworkList};
use hutch_supervisor::network::{container_resolv_conf, NetworkPlan};

/// The default network's name.
pub const DEFAULT_NETWORK: &str = "hutch";
/// The bridge of the default network.
pub const DEFAULT_BRIDGE: &str = "hutch0";
/// Where Debian's containernetworking-plugins and the usual install put plugins.
pub const DEFAULT_BIN_DIRS: [&str; 2] = ["/usr/lib/cni", "/opt/cni/bin"];
/// Where CNI configuration files usually are.
pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";

/// Why a container's network cannot be set up on this node.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// Bridge mode (or a published port) on a node without a network.
    #[error("this node has no container network for {0}: register the agent with a controller that has a cluster network (--cluster-cidr), or start it with --network-subnet; --network none gives a container only lo")]
    NoNetwork(String),
    /// A CNI configuration or plugin problem.
    #[error(transparent)]
    Cni(#[from] CniError),
    /// No configuration carries the network's name.
    #[error("no CNI network '{name}' in {dir}{broken}")]
    UnknownNetwork {
        /// The network asked for.
        name: String,
        /// The configuration directory.
        dir: String,
        /// Files that could not be read, with why.
        broken: String,
    },
    /// A host address to publish on that the node does not have.
    #[error("host address {0} is not an address of this node: publish on one of its addresses, or on all (no address)")]
    NotAnAddress(Ipv4Addr),
    /// A host port is taken.
    #[error("host port {port} is already {by} on this node: publish another port")]
    PortTaken {
        /// The mapping.
        port: String,
        /// By whom.
        by: String,
    },
}

/// Whether a configuration file (valid or not as CNI, even not as JSON) has `name` as its
/// `name`: its top-level key when it parses, else a `"name": "NAME"` anywhere in the text.
fn names_network(text: &str, name: &str) -> bool {
    match serde_json::from_str::<Value>(text) {
        Ok(v) => v.get("name").and_then(Value::as_str) == Some(name),
        Err(_) => {
            let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
            compact.contains(&format!("\"name\":\"{name}\""))
        }
    }
}

/// The agent's network settings (flags and configuration file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSettings {
    /// Where plugins are looked up (`--cni-bin-dir`, `:`-separated).
    pub bin_dirs: Vec<PathBuf>,
    /// Where configuration files are (`--cni-conf-dir`).
    pub conf_dir: PathBuf,
    /// The network of `bridge` containers (`--cni-network`).
    pub default_network: String,
    /// The node's subnet without a controller (`--network-subnet`).
    pub subnet: Option<Cidr>,
}

impl Default for NetworkSettings {
    fn default() -> Self {
        NetworkSettings {
            bin_dirs: DEFAULT_BIN_DIRS.iter().map(PathBuf::from).collect(),
            conf_dir: PathBuf::from(DEFAULT_CONF_DIR),
            default_network: DEFAULT_NETWORK.into(),
            subnet: None,
        }
    }
}

/// The node's subnet and the cluster's block, once known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assignment {
    /// The node's block.
    pub subnet: Cidr,
    /// The cluster's block (traffic to it is not masqueraded).
    pub cluster: Cidr,
}

/// The node's container network.
pub struct NodeNetwork {
    settings: NetworkSettings,
    ipam_dir: PathBuf,
    assignment: RwLock<Option<Assignment>>,
    /// What [`host`] last set up successfully: the assignment and the peer routes.
    applied: Mutex<Option<(Option<Assignment>, BTreeSet<PeerRoute>)>>,
    /// The cluster's name table (other containers' addresses) and its version.
    names: RwLock<(u64, Vec<(Ipv4Addr, String)>)>,
    /// The services this node balances: as the controller last said, and as last set up.
    services: Mutex<(ServiceTable, Option<ServiceTable>)>,
}

impl NodeNetwork {
    /// The network of a node whose state is in `state_dir` (IP leases in `STATE/cni/ipam`).
    pub fn new(settings: NetworkSettings, state_dir: &Path) -> Self {
        let assignment = settings.subnet.map(|subnet| Assignment {
            subnet,
            cluster: subnet,
        });
        NodeNetwork {
            settings,
            ipam_dir: state_dir.join("cni").join("ipam"),
            assignment: RwLock::new(assignment),
            applied: Mutex::new(None),
            names: RwLock::new((0, Vec::new())),
            services: Mutex::new((ServiceTable::default(), None)),
        }
    }

    /// The version of the name table this node has.
    pub fn names_revision(&self) -> u64 {
        self.names.read().unwrap_or_else(|e| e.into_inner()).0
    }

    /// The name table.
    pub fn names(&self) -> Vec<(Ipv4Addr, String)> {
        self.names
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }

    /// Takes a new version of the name table; whether it differed.
    pub fn set_names(&self, revision: u64, names: Vec<(Ipv4Addr, String)>) -> bool {
        let mut current = self.names.write().unwrap_or_else(|e| e.into_inner());
        if current.0 == revision && current.1 == names {
            return false;
        }
        *current = (revision, names);
        true
    }

    /// Takes the controller's table of services (set up by [`NodeNetwork::sync_services`]).
    pub fn set_services(&self, table: ServiceTable) {
        self.services.lock().unwrap_or_else(|e| e.into_inner()).0 = table;
    }

    /// Brings the node's services' rules in step with the last table the controller sent;
    /// runs `iptables` only when it changed since the last success.
    pub async fn sync_services(self: &std::sync::Arc<Self>) -> Result<(), String> {
        let wanted = {
            let s = self.services.lock().unwrap_or_else(|e| e.into_inner());
            // Also run once with an empty table: an earlier run of the agent may have left
            // rules the cluster no longer wants.
            if s.1.as_ref() == Some(&s.0) {
                return Ok(());
            }
            s.0.clone()
        };
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            services::sync(&wanted)?;
            this.services.lock().unwrap_or_else(|e| e.into_inner()).1 = Some(wanted);
            Ok(())
        })
        .await
        .map_err(|e| format!("services' rules task: {e}"))?
    }

    /// Brings the node-wide pieces in step with the cluster (the controller's view, or
    /// `--network-subnet` alone): masquerading for the node's subnet, routes to the other
    /// nodes'. Runs `iptables`/`ip` only when something changed since the last success.
    pub async fn sync_host(
        self: &std::sync::Arc<Self>,
        assignment: Option<Assignment>,
        routes: BTreeSet<PeerRoute>,
    ) -> Result<(), String> {
        self.assign(assignment);
        let wanted = (self.assignment(), routes);
        {
            let mut applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
            if applied.as_ref() == Some(&wanted) {
                return Ok(());
            }
            if applied.is_none() && wanted.0.is_none() && wanted.1.is_empty() {
                // No network and none set up before: the host is left alone.
                *applied = Some(wanted);
                return Ok(());
            }
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            if let Some(a) = &wanted.0 {
                host::readdress_bridge(DEFAULT_BRIDGE, &a.subnet)?;
                host::masquerade(a)?;
            }
            host::sync_routes(&wanted.1)?;
            *this.applied.lock().unwrap_or_else(|e| e.into_inner()) = Some(wanted);
            Ok(())
        })
        .await
        .map_err(|e| format!("network setup task: {e}"))?
    }

    /// The block this node uses now: its assignment, else (before the first registration
    /// of this process) the block its bridge still has from an earlier one.
    pub fn current_block(&self) -> Option<Cidr> {
        self.assignment()
            .map(|a| a.subnet)
            .or_else(|| host::bridge_block(DEFAULT_BRIDGE))
    }

    /// Where the default network's IP leases are kept.
    pub fn ipam_dir(&self) -> &Path {
        &self.ipam_dir
    }

    /// The node's subnet and the cluster's block, if it has a network.
    pub fn assignment(&self) -> Option<Assignment> {
        *self.assignment.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the subnet the controller gave; whether it changed.
    pub fn assign(&self, next: Option<Assignment>) -> bool {
        let mut current = self.assignment.write().unwrap_or_else(|e| e.into_inner());
        let next = next.or(self.settings.subnet.map(|subnet| Assignment {
            subnet,
            cluster: subnet,
        }));
        let changed = *current != next;
        *current = next;
        changed
    }

    /// The mode a spec gets here (`Auto` resolved).
    pub fn mode_for(&self, spec: &ContainerSpec) -> NetworkMode {
        match spec.network.mode {
            NetworkMode::Auto if !spec.has(Namespace::Net) => NetworkMode::Host,
            NetworkMode::Auto if self.assignment().is_some() || !spec.network.ports.is_empty() => {
                NetworkMode::Bridge
            }
            NetworkMode::Auto => NetworkMode::None,
            mode => mode,
        }
    }

    /// What the supervisor needs to connect a container of `spec`, or `None` when its
    /// mode has nothing to set up. `taken` lists the ports the node's running containers
    /// publish, with their ids.
    pub fn plan(
        &self,
        spec: &ContainerSpec,
        taken: &[(String, PortMapping)],
    ) -> Result<Option<NetworkPlan>, NetworkError> {
        if self.mode_for(spec) != NetworkMode::Bridge {
            return Ok(None);
        }
        let name = self.settings.default_network.clone();
        let config = self.configuration(&name, !spec.network.ports.is_empty())?;
        let list = NetworkList::parse(&config.to_string(), &name)?;
        for plugin in list.types() {
            find_plugin(&self.settings.bin_dirs, plugin)?;
        }
        for port in &spec.network.ports {
            check_port_free(port, taken)?;
        }
        let host_resolv = host_resolv_conf();
        Ok(Some(NetworkPlan {
            name,
            config,
            bin_dirs: self.settings.bin_dirs.clone(),
            ports: spec.network.ports.clone(),
            resolv_conf: container_resolv_conf(&host_resolv),
            extra_hosts: self.names(),
        }))
    }

    /// The configuration list of network `name`: a file of the configuration directory
    /// naming it, else (the default network) the bridge on the node's subnet, with portmap
    /// when the container publishes ports.
    fn configuration(&self, name: &str, with_ports: bool) -> Result<Value, NetworkError> {
        let dir = &self.settings.conf_dir;
        let mut broken = Vec::new();
        for path in config_files(dir) {
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let text = String::from_utf8_lossy(&bytes);
            match NetworkList::parse(&text, &path.display().to_string()) {
                // A file that names the network but is invalid is that network's error,
                // never a reason to fall back to hutch's own configuration.
                Err(e) if names_network(&text, name) => return Err(e.into()),
                Ok(list) if list.name == name => {
                    let mut value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    if value.get("plugins").is_none() {
                        // A single plugin's file: the list form, so DEL reads it the same way.
                        value = serde_json::json!({
                            "cniVersion": list.cni_version,
                            "name": list.name,
                            "plugins": list.plugins,
                        });
                    }
                    return Ok(value);
                }
                Ok(_) => {}
                Err(e) => broken.push(e.to_string()),
            }
        }
        // As libcni does, unreadable files are skipped; they are named only when no file
        // carries the network and hutch has no configuration of its own for it.
        if name == self.settings.default_network {
            let Some(assignment) = self.assignment() else {
                return Err(NetworkError::NoNetwork("bridge mode".into()));
            };
            return Ok(conf::default_network(
                name,
                DEFAULT_BRIDGE,
                assignment.subnet,
                &self.ipam_dir.display().to_string(),
                with_ports,
            ));
        }
        Err(NetworkError::UnknownNetwork {
            name: name.into(),
            dir: dir.display().to_string(),
            broken: if broken.is_empty() {
                String::new()
            } else {
                format!(" (unreadable: {})", broken.join("; "))
            },
        })
    }
}

/// The host's resolver configuration as containers can use it: `/etc/resolv.conf`, or,
/// when it names only loopback servers (systemd-resolved's 127.0.0.53, which a container's
/// network namespace cannot reach), the upstream servers resolved knows.
fn host_resolv_conf() -> String {
    let main = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    if container_resolv_conf(&main).contains("nameserver") {
        return main;
    }
    std::fs::read_to_string("/run/systemd/resolve/resolv.conf").unwrap_or(main)
}

/// `*.conflist`, `*.conf` and `*.json` of `dir`, sorted by name (as libcni reads them).
fn config_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("conflist" | "conf" | "json")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Whether `port` may be published: no running container of the node publishes it, and no
/// process of the host holds it.
fn check_port_free(
    port: &PortMapping,
    taken: &[(String, PortMapping)],
) -> Result<(), NetworkError> {
    if let Some((id, _)) = taken.iter().find(|(_, p)| p.conflicts_with(port)) {
        return Err(NetworkError::PortTaken {
            port: format!("{}/{}", port.host_port, port.protocol),
            by: format!("published by container '{id}'"),
        });
    }
    let ip = port.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
    let held = match port.protocol {
        hutch_core::network::Protocol::Tcp => {
            std::net::TcpListener::bind((ip, port.host_port)).err()
        }
        hutch_core::network::Protocol::Udp => std::net::UdpSocket::bind((ip, port.host_port)).err(),
    };
    match held {
        Some(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(NetworkError::PortTaken {
            port: format!("{}/{}", port.host_port, port.protocol),
            by: "in use by a process of the host".into(),
        }),
        Some(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => {
            Err(NetworkError::NotAnAddress(ip))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration directory of one test, removed when dropped.
    struct ConfDir(PathBuf);

    impl ConfDir {
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for ConfDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A node network on a subnet, reading configurations from a fresh directory holding
    /// `files`.
    fn node_with_files(files: &[(&str, &str)]) -> (ConfDir, NodeNetwork) {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = ConfDir(
            std::env::temp_dir().join(format!("hutch-cni-conf-test-{}-{n}", std::process::id())),
        );
        std::fs::create_dir_all(dir.path()).expect("conf dir");
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).expect("write");
        }
        let settings = NetworkSettings {
            conf_dir: dir.path().to_path_buf(),
            subnet: Some("198.19.5.0/24".parse::<Cidr>().expect("cidr")),
            ..NetworkSettings::default()
        };
        let node = NodeNetwork::new(settings, dir.path());
        (dir, node)
    }

    #[test]
    fn unrelated_broken_files_leave_the_own_network() {
        let (_dir, node) = node_with_files(&[("10-other.conflist", "{ not json")]);
        let config = node.configuration(DEFAULT_NETWORK, false).expect("own");
        assert_eq!(config["plugins"][0]["type"], "bridge", "{config}");
    }

    #[test]
    fn an_invalid_file_naming_the_network_is_its_error() {
        let text = r#"{"cniVersion": "1.0.0", "name": "hutch", "plugins": []}"#;
        let (_dir, node) = node_with_files(&[("10-hutch.conflist", text)]);
        let err = node
            .configuration(DEFAULT_NETWORK, false)
            .expect_err("an empty chain");
        assert!(err.to_string().contains("10-hutch.conflist"), "{err}");
    }

    #[test]
    fn a_file_naming_the_network_that_is_not_json_is_its_error() {
        let text = "{\"cniVersion\": \"1.0.0\", \"name\" : \"hutch\", \"plugins\": [],}";
        let (_dir, node) = node_with_files(&[("10-hutch.conflist", text)]);
        let err = node
            .configuration(DEFAULT_NETWORK, false)
            .expect_err("a trailing comma");
        assert!(err.to_string().contains("10-hutch.conflist"), "{err}");
        assert!(!names_network("{\"name\": \"hutch-lab\",", "hutch"));
    }

    #[test]
    fn a_file_naming_the_network_replaces_the_own_one() {
        let text = r#"{"cniVersion": "1.0.0", "name": "hutch", "type": "ptp", "ipam": {"type": "host-local"}}"#;
        let (_dir, node) = node_with_files(&[("10-hutch.conf", text)]);
        let config = node.configuration(DEFAULT_NETWORK, false).expect("file");
        assert_eq!(config["plugins"][0]["type"], "ptp", "{config}");
    }

    #[test]
    fn another_network_missing_names_the_directory_and_broken_files() {
        let (dir, node) = node_with_files(&[("10-x.conflist", "{ not json")]);
        let err = node.configuration("lab", false).expect_err("missing");
        let text = err.to_string();
        assert!(
            text.contains("'lab'") && text.contains(&dir.path().display().to_string()),
            "{text}"
        );
        assert!(text.contains("10-x.conflist"), "{text}");
    }
}
