//! The agent's side of the cluster: register with the controller, then heartbeat at the
//! interval it asks for. When the controller is away or asks for it (it restarted, or had
//! declared this node down), register again, with exponential backoff between attempts.
//! An agent that joined calls the controller over mutual TLS, presenting its node
//! certificate and accepting only the controller's.

use hutch_core::bearer::BearerToken;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hutch_pki::material::TlsMaterial;
use hutch_proto::v1;
use hutch_proto::v1::nodes_client::NodesClient;
use tonic::transport::Endpoint;

use super::AgentCore;
use crate::network::{Assignment, PeerRoute, ServiceTable, ServiceVip};
use crate::node;
use hutch_core::network::Cidr;

/// First and longest pause between registration attempts.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Longest a registration or heartbeat call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a heartbeat or registration refused by a controller that does not lead keeps
/// being sent to the others (an election takes about 1.5 s).
const FAILOVER_FOR: Duration = Duration::from_secs(3);

/// Where and as what this agent registers.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The controller, `http://host:port` or `host:port`.
    pub controller: String,
    /// `host:port` the controller dials to reach this agent.
    pub advertise: String,
    /// Labels for node selectors.
    pub labels: BTreeMap<String, String>,
    /// Bearer token for the controller (a `node` token), when it requires one.
    pub token: Option<String>,
}

type Client = NodesClient<
    tonic::service::interceptor::InterceptedService<
        hutch_core::failover::FailoverChannel,
        BearerToken,
    >,
>;

fn rootfs_names(core: &AgentCore) -> Vec<String> {
    let mut names: Vec<String> = core
        .runtime
        .store()
        .list()
        .into_iter()
        .map(|r| r.name)
        .collect();
    names.sort();
    names
}

fn register_request(core: &AgentCore, reg: &Registration) -> v1::RegisterRequest {
    v1::RegisterRequest {
        name: core.node.clone(),
        address: reg.advertise.clone(),
        labels: reg.labels.clone().into_iter().collect(),
        hostname: node::hostname(),
        kernel: node::kernel_release(),
        cgroup_version: core.runtime.cgroups().version().to_string(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        memory_total_bytes: node::memory_total_bytes(),
        memory_allocatable_bytes: core.allocatable_bytes(),
        cpu_count: node::cpu_count(),
        cpu_allocatable_millicores: node::cpu_allocatable_millicores(),
        rootfs: rootfs_names(core),
        volumes: core.runtime.volumes().names(),
        last_event_seq: core.events.last_seq(),
        subnet: core
            .runtime
            .network()
            .current_block()
            .map(|b| b.to_string())
            .unwrap_or_default(),
    }
}

fn heartbeat_request(core: &AgentCore, session: &str) -> v1::HeartbeatRequest {
    v1::HeartbeatRequest {
        name: core.node.clone(),
        session: session.to_string(),
        memory_used_bytes: core.runtime.memory_used_bytes(),
        running_containers: core.runtime.running_count() as u32,
        rootfs: rootfs_names(core),
        volumes: core.runtime.volumes().names(),
        names_revision: core.runtime.network().names_revision(),
    }
}

/// Registers and heartbeats until the agent shuts down; over mutual TLS with `tls`.
pub async fn run(core: Arc<AgentCore>, reg: Registration, tls: Option<TlsMaterial>) {
    let urls: Vec<String> = hutch_core::failover::split_urls(&reg.controller)
        .iter()
        .map(|u| hutch_pki::material::url_for(u, tls.is_some()))
        .collect();
    let url = urls.join(",");
    let make: hutch_core::failover::MakeEndpoint = std::sync::Arc::new(move |u: &str| {
        let e = Endpoint::from_shared(hutch_pki::material::url_for(u, tls.is_some()))
            .map_err(|e| e.to_string())?
            .connect_timeout(CALL_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .tcp_nodelay(true);
        match &tls {
            Some(m) => e
                .tls_config(m.client_config(hutch_pki::CONTROLLER_NAME))
                .map_err(|e| e.to_string()),
            None => Ok(e),
        }
    });
    // A controller that does not lead points at the one that does; a heartbeat is sent
    // again there at once, so a failover costs a heartbeat no more than about a second.
    let channel = match hutch_core::failover::FailoverChannel::new(&urls, make, FAILOVER_FOR) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(controller = %url, "invalid controller URL or TLS settings: {e}");
            return;
        }
    };
    let token = match BearerToken::new(reg.token.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("controller token: {e}; not registering");
            return;
        }
    };
    let mut client = NodesClient::with_interceptor(channel, token);
    // The network view is applied by a task of its own (iptables and ip may wait on locks):
    // heartbeats never wait for it; it always takes the latest view.
    let (net, views) = tokio::sync::watch::channel(None);
    tokio::spawn(apply_views(core.clone(), views));
    let mut closing = core.closing.subscribe();
    let mut pause = BACKOFF_FIRST;
    loop {
        if *closing.borrow() {
            return;
        }
        match client.register(register_request(&core, &reg)).await {
            Ok(r) => {
                let r = r.into_inner();
                tracing::info!(controller = %url, node = %core.node, "registered");
                net.send_replace(Some((r.network.clone(), true)));
                pause = BACKOFF_FIRST;
                let why = heartbeat(&core, &mut client, &r, &net, &mut closing).await;
                if *closing.borrow() {
                    return;
                }
                tracing::warn!(controller = %url, "registering again: {why}");
            }
            Err(s) => {
                tracing::warn!(controller = %url, "cannot register (retrying in {pause:?}): {}", hutch_core::status_text(&s));
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = closing.changed() => return,
                }
                pause = (pause * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Heartbeats until a heartbeat fails; returns why.
async fn heartbeat(
    core: &AgentCore,
    client: &mut Client,
    registered: &v1::RegisterResponse,
    net: &NetworkViews,
    closing: &mut tokio::sync::watch::Receiver<bool>,
) -> String {
    let interval = Duration::from_millis(u64::from(registered.heartbeat_interval_ms.max(10)));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = closing.changed() => return "shutting down".into(),
        }
        match client
            .heartbeat(heartbeat_request(core, &registered.session))
            .await
        {
            Ok(r) => {
                net.send_if_modified(|latest| {
                    let next = Some((r.into_inner().network, false));
                    let changed = *latest != next;
                    *latest = next;
                    changed
                });
            }
            Err(s) => return s.message().to_string(),
        }
    }
}

/// The latest network view from the controller, and whether it came with a registration
/// (its name table is then whole, whatever its revision says).
type NetworkViews = tokio::sync::watch::Sender<Option<(Option<v1::ClusterNetwork>, bool)>>;

/// Applies each latest view until the agent closes; a view that failed is tried again
/// after a pause.
async fn apply_views(
    core: Arc<AgentCore>,
    mut views: tokio::sync::watch::Receiver<Option<(Option<v1::ClusterNetwork>, bool)>>,
) {
    let mut closing = core.closing.subscribe();
    loop {
        tokio::select! {
            changed = views.changed() => if changed.is_err() { return },
            _ = closing.changed() => return,
        }
        let latest = views.borrow_and_update().clone();
        if let Some((network, registered)) = latest {
            if !apply_network(&core, network.as_ref(), registered).await {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => views.mark_changed(),
                    _ = closing.changed() => return,
                }
            }
        }
    }
}

/// Takes the cluster's network as the controller sent it: the node's subnet, the cluster's
/// block and the routes to the other nodes, then the name table. A malformed entry is
/// logged and left out. Whether the node-wide part could be set up.
async fn apply_network(
    core: &AgentCore,
    network: Option<&v1::ClusterNetwork>,
    registered: bool,
) -> bool {
    let (assignment, routes) = match network {
        None => (None, Default::default()),
        Some(n) => {
            let assignment = match (n.subnet.parse::<Cidr>(), n.cluster_cidr.parse::<Cidr>()) {
                (Ok(subnet), Ok(cluster)) => Some(Assignment { subnet, cluster }),
                _ => {
                    tracing::warn!(subnet = %n.subnet, cluster = %n.cluster_cidr, "unreadable network from the controller");
                    None
                }
            };
            let routes = n
                .routes
                .iter()
                .filter_map(|r| match (r.subnet.parse::<Cidr>(), r.via.parse()) {
                    (Ok(subnet), Ok(via)) => Some(PeerRoute { subnet, via }),
                    _ => {
                        tracing::warn!(node = %r.node, via = %r.via, "no route to this node's containers: its address is not an IPv4 address");
                        None
                    }
                })
                .collect();
            (assignment, routes)
        }
    };
    let synced = core.runtime.network().sync_host(assignment, routes).await;
    if let Err(e) = &synced {
        tracing::error!(node = %core.node, "container network (retrying in 5s): {e}");
    }
    let Some(n) = network else {
        return synced.is_ok();
    };
    if !registered && n.names_revision == core.runtime.network().names_revision() {
        return sync_services(core).await && synced.is_ok();
    }
    core.runtime.network().set_services(service_table(n));
    let services_synced = sync_services(core).await;
    let names = n
        .names
        .iter()
        .filter_map(|a| Some((a.ip.parse().ok()?, a.name.clone())))
        .collect();
    if core.runtime.network().set_names(n.names_revision, names) {
        let runtime = core.runtime.clone();
        let refreshed = tokio::task::spawn_blocking(move || runtime.refresh_hosts()).await;
        if let Ok(failed) = refreshed {
            for (id, e) in failed {
                tracing::warn!(container = %id, "updating /etc/hosts: {e}");
            }
        }
    }
    synced.is_ok() && services_synced
}

/// The services' table the controller sent (entries it could not read are left out,
/// with a warning).
fn service_table(n: &v1::ClusterNetwork) -> ServiceTable {
    let cidr = (!n.service_cidr.is_empty())
        .then(|| n.service_cidr.parse::<Cidr>().ok())
        .flatten();
    let services = n
        .services
        .iter()
        .filter_map(|s| {
            let Ok(address) = s.address.parse() else {
                tracing::warn!(service = %s.name, address = %s.address, "unreadable service address from the controller");
                return None;
            };
            // A backend that does not read is left out; the others still take connections.
            let mut backends: Vec<_> = s
                .backends
                .iter()
                .filter_map(|b| match b.parse() {
                    Ok(ip) => Some(ip),
                    Err(_) => {
                        tracing::warn!(service = %s.name, backend = %b, "unreadable replica address from the controller");
                        None
                    }
                })
                .collect();
            backends.sort();
            Some(ServiceVip {
                name: s.name.clone(),
                address,
                backends,
            })
        })
        .collect();
    ServiceTable { cidr, services }
}

/// Sets up the services' rules; whether they are in place.
async fn sync_services(core: &AgentCore) -> bool {
    match core.runtime.network().sync_services().await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(node = %core.node, "services' addresses (retrying): {e}");
            false
        }
    }
}
