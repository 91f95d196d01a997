//! Placement: which node a container goes to. Pure logic, no I/O, no clock.
//!
//! A node is a candidate when it is schedulable (ready and not cordoned), carries every label
//! of the request's selector, has the rootfs (or the cluster can build it there), publishes
//! none of the request's host ports yet, has the requested CPU free (a CPU limit is a
//! reservation of that many CPUs; a node reporting no CPUs is not limited) and at least the
//! requested memory free: allocatable minus what is already reserved for the containers
//! placed on it. Reservations are taken by the caller with [`Scheduler::reserve`]
//! the moment a placement is recorded, so a burst of creates can never overcommit a node.
//!
//! Candidates are kept in an index ordered by free memory, so a placement walks from the best
//! end (`spread`: most free first; `binpack`: least free that fits first) and usually stops at
//! the first node it looks at; nothing sorts all nodes per placement. Ties are broken by name,
//! so the same state always gives the same answer.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use hutch_core::network::PortMapping;

/// How candidates are ranked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// The node with the most free memory: containers spread over the cluster.
    #[default]
    Spread,
    /// The node with the least free memory that still fits: nodes fill one after another.
    Binpack,
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "spread" => Ok(Strategy::Spread),
            "binpack" => Ok(Strategy::Binpack),
            other => Err(format!(
                "unknown strategy '{other}': use 'spread' or 'binpack'"
            )),
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Strategy::Spread => "spread",
            Strategy::Binpack => "binpack",
        })
    }
}

/// What the scheduler knows of one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeCapacity {
    /// Labels, matched by selectors.
    pub labels: BTreeMap<String, String>,
    /// Memory containers may be promised in total.
    pub allocatable_bytes: u64,
    /// Thousandths of CPUs containers may be promised in total; 0: the node reports none
    /// (an agent older than CPU limits, which would not enforce one): it takes no container
    /// with a CPU limit.
    pub allocatable_cpu_millicores: u64,
    /// Ready and not cordoned.
    pub schedulable: bool,
    /// Rootfs names the node has.
    pub rootfs: BTreeSet<String>,
    /// Named volumes the node holds.
    pub volumes: BTreeSet<String>,
}

/// One container to place.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Memory to reserve.
    pub memory_bytes: u64,
    /// Exactly this node, when set.
    pub node: Option<&'a str>,
    /// Labels the node must carry.
    pub selector: &'a BTreeMap<String, String>,
    /// The rootfs it runs on.
    pub rootfs: &'a str,
    /// The cluster knows how to build this rootfs on any node.
    pub rootfs_buildable: bool,
    /// Host ports it publishes: no two containers of a node publish one.
    pub ports: &'a [PortMapping],
    /// Thousandths of CPUs to reserve (its CPU limit; 0 without one).
    pub cpu_millicores: u64,
    /// A service's replica: how many of its siblings each node's spread domain holds;
    /// the node whose domain holds the fewest is taken (then by the strategy).
    pub spread: Option<&'a HashMap<String, usize>>,
}

impl<'a> Request<'a> {
    /// What the container holds on its node once placed.
    pub fn claim(&self) -> Claim<'a> {
        Claim {
            memory_bytes: self.memory_bytes,
            cpu_millicores: self.cpu_millicores,
            ports: self.ports,
        }
    }
}

/// What a placed container holds on its node: reserved with [`Scheduler::reserve`], given
/// back with [`Scheduler::release`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Claim<'a> {
    /// Memory.
    pub memory_bytes: u64,
    /// Thousandths of CPUs.
    pub cpu_millicores: u64,
    /// Host ports.
    pub ports: &'a [PortMapping],
}

/// Why no node fits; the text is meant for the container's status message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unschedulable(pub String);

impl fmt::Display for Unschedulable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone)]
struct Slot {
    capacity: NodeCapacity,
    reserved_bytes: u64,
    reserved_cpu_millicores: u64,
    /// Host ports published by the containers placed here (one entry per container's port).
    ports: Vec<PortMapping>,
}

impl Slot {
    fn free(&self) -> u64 {
        self.capacity
            .allocatable_bytes
            .saturating_sub(self.reserved_bytes)
    }

    /// CPU still free (0 on a node that reports no CPUs).
    fn free_cpu(&self) -> u64 {
        self.capacity
            .allocatable_cpu_millicores
            .saturating_sub(self.reserved_cpu_millicores)
    }

    fn cpu_fits(&self, millicores: u64) -> bool {
        millicores == 0 || self.free_cpu() >= millicores
    }

    /// The first of `wanted` a container placed here already publishes.
    fn taken_port<'p>(&self, wanted: &'p [PortMapping]) -> Option<&'p PortMapping> {
        wanted
            .iter()
            .find(|w| self.ports.iter().any(|p| p.conflicts_with(w)))
    }
}

/// The nodes, their reservations, and the index of schedulable nodes by free memory.
#[derive(Debug, Default)]
pub struct Scheduler {
    strategy: Strategy,
    slots: HashMap<String, Slot>,
    /// (free bytes, name) of every schedulable node.
    by_free: BTreeSet<(u64, String)>,
}

impl Scheduler {
    /// An empty scheduler ranking with `strategy`.
    pub fn new(strategy: Strategy) -> Self {
        Scheduler {
            strategy,
            ..Default::default()
        }
    }

    /// The ranking in use.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    fn unindex(&mut self, name: &str) {
        if let Some(slot) = self.slots.get(name) {
            self.by_free.remove(&(slot.free(), name.to_string()));
        }
    }

    fn index(&mut self, name: &str) {
        if let Some(slot) = self.slots.get(name) {
            if slot.capacity.schedulable {
                self.by_free.insert((slot.free(), name.to_string()));
            }
        }
    }

    /// Adds a node or replaces what is known of it; its reservations stay.
    pub fn set_node(&mut self, name: &str, capacity: NodeCapacity) {
        self.unindex(name);
        self.slots
            .entry(name.to_string())
            .and_modify(|s| s.capacity = capacity.clone())
            .or_insert(Slot {
                capacity,
                reserved_bytes: 0,
                reserved_cpu_millicores: 0,
                ports: Vec::new(),
            });
        self.index(name);
    }

    /// Marks a node schedulable or not (readiness, cordon).
    pub fn set_schedulable(&mut self, name: &str, schedulable: bool) {
        if self
            .slots
            .get(name)
            .is_none_or(|s| s.capacity.schedulable == schedulable)
        {
            return;
        }
        self.unindex(name);
        if let Some(slot) = self.slots.get_mut(name) {
            slot.capacity.schedulable = schedulable;
        }
        self.index(name);
    }

    /// Replaces the rootfs names a node has.
    pub fn set_rootfs(&mut self, name: &str, rootfs: BTreeSet<String>) {
        if let Some(slot) = self.slots.get_mut(name) {
            slot.capacity.rootfs = rootfs;
        }
    }

    /// Replaces the volume names a node holds.
    pub fn set_volumes(&mut self, name: &str, volumes: BTreeSet<String>) {
        if let Some(slot) = self.slots.get_mut(name) {
            slot.capacity.volumes = volumes;
        }
    }

    /// The nodes (ready or not) that report holding volume `volume`. Walks every node: for
    /// containers with volumes only.
    pub fn volume_holders(&self, volume: &str) -> BTreeSet<String> {
        self.slots
            .iter()
            .filter(|(_, s)| s.capacity.volumes.contains(volume))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Forgets a node (its reservations too).
    pub fn remove_node(&mut self, name: &str) {
        self.unindex(name);
        self.slots.remove(name);
    }

    /// Sets `claim` aside on `node` for a container placed there.
    pub fn reserve(&mut self, node: &str, claim: &Claim<'_>) {
        self.unindex(node);
        if let Some(slot) = self.slots.get_mut(node) {
            slot.reserved_bytes = slot.reserved_bytes.saturating_add(claim.memory_bytes);
            slot.reserved_cpu_millicores = slot
                .reserved_cpu_millicores
                .saturating_add(claim.cpu_millicores);
            slot.ports.extend_from_slice(claim.ports);
        }
        self.index(node);
    }

    /// Gives back what [`Scheduler::reserve`] set aside.
    pub fn release(&mut self, node: &str, claim: &Claim<'_>) {
        self.unindex(node);
        if let Some(slot) = self.slots.get_mut(node) {
            slot.reserved_bytes = slot.reserved_bytes.saturating_sub(claim.memory_bytes);
            slot.reserved_cpu_millicores = slot
                .reserved_cpu_millicores
                .saturating_sub(claim.cpu_millicores);
            for p in claim.ports {
                if let Some(i) = slot.ports.iter().position(|q| q == p) {
                    slot.ports.swap_remove(i);
                }
            }
        }
        self.index(node);
    }

    /// Memory reserved on `node`.
    pub fn reserved_bytes(&self, node: &str) -> u64 {
        self.slots.get(node).map_or(0, |s| s.reserved_bytes)
    }

    /// Thousandths of CPUs reserved on `node`.
    pub fn reserved_cpu_millicores(&self, node: &str) -> u64 {
        self.slots
            .get(node)
            .map_or(0, |s| s.reserved_cpu_millicores)
    }

    /// Memory still free on `node`.
    pub fn free_bytes(&self, node: &str) -> u64 {
        self.slots.get(node).map_or(0, Slot::free)
    }

    fn fits_besides_memory(slot: &Slot, req: &Request<'_>) -> bool {
        slot.capacity.schedulable
            && req
                .selector
                .iter()
                .all(|(k, v)| slot.capacity.labels.get(k) == Some(v))
            && (req.rootfs_buildable || slot.capacity.rootfs.contains(req.rootfs))
            && slot.taken_port(req.ports).is_none()
            && slot.cpu_fits(req.cpu_millicores)
    }

    /// The node for `req`, or why there is none. Does not reserve anything.
    pub fn place(&self, req: &Request<'_>) -> Result<String, Unschedulable> {
        if let Some(name) = req.node {
            return self.place_on(name, req);
        }
        let fits = |(free, name): &&(u64, String)| {
            *free >= req.memory_bytes
                && self
                    .slots
                    .get(name)
                    .is_some_and(|s| Self::fits_besides_memory(s, req))
        };
        let mut candidates: Box<dyn Iterator<Item = &(u64, String)>> = match self.strategy {
            Strategy::Spread => Box::new(self.by_free.iter().rev().filter(fits)),
            Strategy::Binpack => Box::new(
                self.by_free
                    .range((req.memory_bytes, String::new())..)
                    .filter(fits),
            ),
        };
        let found = match req.spread {
            // The first of the least crowded, in the strategy's order.
            Some(siblings) => {
                candidates.min_by_key(|(_, name)| siblings.get(name).copied().unwrap_or(0))
            }
            None => candidates.next(),
        };
        match found {
            Some((_, name)) => Ok(name.clone()),
            None => Err(self.explain(req)),
        }
    }

    fn place_on(&self, name: &str, req: &Request<'_>) -> Result<String, Unschedulable> {
        let Some(slot) = self.slots.get(name) else {
            return Err(Unschedulable(format!("node '{name}' is not registered")));
        };
        if !slot.capacity.schedulable {
            return Err(Unschedulable(format!(
                "node '{name}' is not ready or is cordoned"
            )));
        }
        if let Some((k, v)) = req
            .selector
            .iter()
            .find(|(k, v)| slot.capacity.labels.get(*k) != Some(*v))
        {
            return Err(Unschedulable(format!(
                "node '{name}' does not carry the label {k}={v}"
            )));
        }
        if !req.rootfs_buildable && !slot.capacity.rootfs.contains(req.rootfs) {
            return Err(Unschedulable(format!(
                "node '{name}' has no rootfs '{}'; build it there with BuildRootfs",
                req.rootfs
            )));
        }
        if let Some(p) = slot.taken_port(req.ports) {
            return Err(Unschedulable(format!(
                "node '{name}' already publishes host port {}/{}",
                p.host_port, p.protocol
            )));
        }
        if !slot.cpu_fits(req.cpu_millicores) {
            return Err(Unschedulable(format!(
                "node '{name}' has {} CPUs free; {} are needed",
                cores(slot.free_cpu()),
                cores(req.cpu_millicores)
            )));
        }
        if slot.free() < req.memory_bytes {
            return Err(Unschedulable(format!(
                "node '{name}' has {} free memory; {} is needed",
                human_bytes(slot.free()),
                human_bytes(req.memory_bytes)
            )));
        }
        Ok(name.to_string())
    }

    /// Why nothing fits: the first filter that leaves no node, with the numbers. Walks every
    /// node, but only when a placement has failed.
    fn explain(&self, req: &Request<'_>) -> Unschedulable {
        if self.slots.is_empty() {
            return Unschedulable("no node is registered".to_string());
        }
        let ready: Vec<(&String, &Slot)> = self
            .slots
            .iter()
            .filter(|(_, s)| s.capacity.schedulable)
            .collect();
        if ready.is_empty() {
            return Unschedulable(format!(
                "none of the {} registered nodes is ready and uncordoned",
                self.slots.len()
            ));
        }
        let selected: Vec<_> = ready
            .into_iter()
            .filter(|(_, s)| {
                req.selector
                    .iter()
                    .all(|(k, v)| s.capacity.labels.get(k) == Some(v))
            })
            .collect();
        if selected.is_empty() {
            let wanted: Vec<String> = req
                .selector
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            return Unschedulable(format!(
                "no ready node carries the labels {}",
                wanted.join(",")
            ));
        }
        let with_rootfs: Vec<_> = selected
            .into_iter()
            .filter(|(_, s)| req.rootfs_buildable || s.capacity.rootfs.contains(req.rootfs))
            .collect();
        if with_rootfs.is_empty() {
            return Unschedulable(format!(
                "no ready node has rootfs '{}'; build it with BuildRootfs",
                req.rootfs
            ));
        }
        let with_ports: Vec<_> = with_rootfs
            .iter()
            .filter(|(_, s)| s.taken_port(req.ports).is_none())
            .collect();
        if with_ports.is_empty() {
            let wanted: Vec<String> = req
                .ports
                .iter()
                .map(|p| format!("{}/{}", p.host_port, p.protocol))
                .collect();
            return Unschedulable(format!(
                "every node that could run it already publishes host port {}",
                wanted.join(", ")
            ));
        }
        let with_cpu: Vec<_> = with_ports
            .iter()
            .filter(|(_, s)| s.cpu_fits(req.cpu_millicores))
            .collect();
        if with_cpu.is_empty() {
            let most = with_ports
                .iter()
                .map(|(name, s)| (s.free_cpu(), std::cmp::Reverse(*name)))
                .max();
            if let Some((free, std::cmp::Reverse(name))) = most {
                return Unschedulable(format!(
                    "no node with {} CPUs free; most free: {} on {name}",
                    cores(req.cpu_millicores),
                    cores(free)
                ));
            }
        }
        let largest = with_cpu
            .iter()
            .map(|(name, s)| (s.free(), std::cmp::Reverse(*name)))
            .max();
        match largest {
            Some((free, std::cmp::Reverse(name))) => Unschedulable(format!(
                "no node with {} free memory; largest free: {} on {name}",
                human_bytes(req.memory_bytes),
                human_bytes(free)
            )),
            None => Unschedulable("no node fits".to_string()),
        }
    }
}

pub use hutch_core::units::human_bytes;

/// Thousandths of CPUs as a decimal number of CPUs.
fn cores(millicores: u64) -> String {
    hutch_core::cpu::format_cores(u32::try_from(millicores).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    fn node(allocatable: u64, labels: &[(&str, &str)]) -> NodeCapacity {
        NodeCapacity {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            allocatable_bytes: allocatable,
            allocatable_cpu_millicores: 0,
            schedulable: true,
            rootfs: ["debian".to_string()].into_iter().collect(),
            volumes: Default::default(),
        }
    }

    fn req<'a>(memory: u64, selector: &'a BTreeMap<String, String>) -> Request<'a> {
        Request {
            memory_bytes: memory,
            node: None,
            selector,
            rootfs: "debian",
            rootfs_buildable: false,
            ports: &[],
            cpu_millicores: 0,
            spread: None,
        }
    }

    fn place_and_reserve(s: &mut Scheduler, r: &Request<'_>) -> Result<String, Unschedulable> {
        let n = s.place(r)?;
        s.reserve(&n, &r.claim());
        Ok(n)
    }

    #[test]
    fn spread_alternates_between_equal_nodes() {
        let mut s = Scheduler::new(Strategy::Spread);
        for n in ["a", "b", "c"] {
            s.set_node(n, node(4 * GIB, &[]));
        }
        let none = BTreeMap::new();
        let mut counts: BTreeMap<String, u32> = BTreeMap::new();
        for _ in 0..30 {
            let n = place_and_reserve(&mut s, &req(64 * MIB, &none)).expect("fits");
            *counts.entry(n).or_default() += 1;
        }
        assert_eq!(
            counts.values().copied().collect::<Vec<_>>(),
            vec![10, 10, 10]
        );
    }

    #[test]
    fn binpack_fills_one_node_before_the_next() {
        let mut s = Scheduler::new(Strategy::Binpack);
        s.set_node("a", node(GIB, &[]));
        s.set_node("b", node(GIB, &[]));
        let none = BTreeMap::new();
        let placed: Vec<String> = (0..8)
            .map(|_| place_and_reserve(&mut s, &req(256 * MIB, &none)).expect("fits"))
            .collect();
        assert!(placed[..4].iter().all(|n| n == &placed[0]), "{placed:?}");
        assert!(placed[4..].iter().all(|n| n != &placed[0]), "{placed:?}");
        let err = s.place(&req(256 * MIB, &none)).expect_err("full");
        assert_eq!(
            err.0,
            "no node with 256 MiB free memory; largest free: 0 B on a"
        );
    }

    #[test]
    fn memory_decides_and_the_reason_names_the_largest_free_node() {
        let mut s = Scheduler::new(Strategy::Spread);
        s.set_node("lab-1", node(GIB, &[]));
        s.set_node("lab-2", node(GIB + GIB / 5, &[]));
        let none = BTreeMap::new();
        assert_eq!(s.place(&req(GIB + 100 * MIB, &none)), Ok("lab-2".into()));
        let err = s.place(&req(2 * GIB, &none)).expect_err("too big");
        assert_eq!(
            err.0,
            "no node with 2 GiB free memory; largest free: 1.2 GiB on lab-2"
        );
    }

    #[test]
    fn selectors_cordons_and_rootfs_filter() {
        let mut s = Scheduler::new(Strategy::Spread);
        s.set_node("gpu", node(GIB, &[("gpu", "yes")]));
        s.set_node("big", node(8 * GIB, &[]));
        let gpu: BTreeMap<String, String> = [("gpu".to_string(), "yes".to_string())].into();
        assert_eq!(s.place(&req(MIB, &gpu)), Ok("gpu".into()));
        s.set_schedulable("gpu", false);
        assert_eq!(
            s.place(&req(MIB, &gpu)).expect_err("cordoned").0,
            "no ready node carries the labels gpu=yes"
        );
        let none = BTreeMap::new();
        let mut other = req(MIB, &none);
        other.rootfs = "alpine";
        assert_eq!(
            s.place(&other).expect_err("no rootfs").0,
            "no ready node has rootfs 'alpine'; build it with BuildRootfs"
        );
        other.rootfs_buildable = true;
        assert_eq!(s.place(&other), Ok("big".into()));
        s.set_schedulable("big", false);
        assert_eq!(
            s.place(&req(MIB, &none)).expect_err("none ready").0,
            "none of the 2 registered nodes is ready and uncordoned"
        );
    }

    #[test]
    fn a_named_node_is_checked_like_any_other() {
        let mut s = Scheduler::new(Strategy::Spread);
        s.set_node("a", node(GIB, &[]));
        s.set_node("b", node(8 * GIB, &[]));
        let none = BTreeMap::new();
        let mut r = req(MIB, &none);
        r.node = Some("a");
        assert_eq!(s.place(&r), Ok("a".into()));
        r.memory_bytes = 2 * GIB;
        assert_eq!(
            s.place(&r).expect_err("too big").0,
            "node 'a' has 1 GiB free memory; 2 GiB is needed"
        );
        r.node = Some("zz");
        assert_eq!(
            s.place(&r).expect_err("unknown").0,
            "node 'zz' is not registered"
        );
    }

    #[test]
    fn one_host_port_per_node() {
        let mut s = Scheduler::new(Strategy::Spread);
        s.set_node("a", node(GIB, &[]));
        s.set_node("b", node(GIB, &[]));
        let none = BTreeMap::new();
        let port = [hutch_core::network::parse_publish("8080:80").expect("port")];
        let with_port = |memory| Request {
            ports: &port,
            ..req(memory, &none)
        };
        let first = place_and_reserve(&mut s, &with_port(MIB)).expect("first");
        let second = place_and_reserve(&mut s, &with_port(MIB)).expect("second");
        assert_ne!(first, second, "one host port per node");
        let third = s.place(&with_port(MIB)).expect_err("no node left");
        assert!(third.0.contains("8080/tcp"), "{third}");
        let pinned = Request {
            node: Some("a"),
            ..with_port(MIB)
        };
        assert!(s
            .place(&pinned)
            .expect_err("taken")
            .0
            .contains("already publishes"));
        // Another protocol or another address of the node is another port.
        let udp = [hutch_core::network::parse_publish("8080:80/udp").expect("port")];
        assert!(s
            .place(&Request {
                ports: &udp,
                ..req(MIB, &none)
            })
            .is_ok());
        s.release(&first, &with_port(MIB).claim());
        assert_eq!(s.place(&with_port(MIB)).expect("free again"), first);
    }

    #[test]
    fn cpu_is_reserved_like_memory_and_explained() {
        let mut s = Scheduler::new(Strategy::Spread);
        let two_cpus = |mut n: NodeCapacity| {
            n.allocatable_cpu_millicores = 2000;
            n
        };
        s.set_node("a", two_cpus(node(4 * GIB, &[])));
        s.set_node("b", two_cpus(node(4 * GIB, &[])));
        let none = BTreeMap::new();
        let cpus = |millicores| Request {
            cpu_millicores: millicores,
            ..req(MIB, &none)
        };
        let too_many = s.place(&cpus(3000)).expect_err("3 CPUs on 2-CPU nodes");
        assert!(
            too_many.0.contains("3 CPUs free") && too_many.0.contains("most free: 2"),
            "{too_many}"
        );
        let first = place_and_reserve(&mut s, &cpus(1500)).expect("1.5");
        let second = place_and_reserve(&mut s, &cpus(1500)).expect("1.5");
        assert_ne!(first, second, "1.5 + 1.5 does not fit one node");
        assert_eq!(s.reserved_cpu_millicores(&first), 1500);
        let pinned = Request {
            node: Some("a"),
            ..cpus(1000)
        };
        let refused = s.place(&pinned).expect_err("0.5 left on a");
        assert!(refused.0.contains("0.5 CPUs free"), "{refused}");
        // Containers without a CPU limit still fit; a node reporting no CPUs (an older
        // agent, which would not enforce a limit) takes none with one.
        assert!(s.place(&cpus(0)).is_ok());
        s.set_node("old", node(GIB, &[]));
        let pinned_old = Request {
            node: Some("old"),
            ..cpus(100)
        };
        assert!(s.place(&pinned_old).is_err());
        assert_eq!(
            s.place(&Request {
                node: Some("old"),
                ..cpus(0)
            })
            .expect("no limit"),
            "old"
        );
        s.release(&first, &cpus(1500).claim());
        assert_eq!(s.reserved_cpu_millicores(&first), 0);
    }

    #[test]
    fn release_gives_memory_back_and_unknown_nodes_are_ignored() {
        let mut s = Scheduler::new(Strategy::Spread);
        s.set_node("a", node(GIB, &[]));
        let gib = Claim {
            memory_bytes: GIB,
            ..Claim::default()
        };
        s.reserve("a", &gib);
        assert_eq!(s.free_bytes("a"), 0);
        s.release("a", &gib);
        assert_eq!(s.free_bytes("a"), GIB);
        s.reserve("nope", &gib);
        s.release("nope", &gib);
        s.remove_node("a");
        assert_eq!(s.free_bytes("a"), 0);
    }

    use hutch_testkit::Rng;

    /// Random clusters, random requests, random cordons and releases: no node is ever
    /// reserved beyond its allocatable memory, every placement satisfies its selector and
    /// schedulability, a refusal happens only when no node could take the request, and the
    /// index agrees with a brute-force search over all nodes.
    #[test]
    fn property_never_overcommits_and_agrees_with_brute_force() {
        for seed in 1..=40u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let strategy = if seed % 2 == 0 {
                Strategy::Spread
            } else {
                Strategy::Binpack
            };
            let mut s = Scheduler::new(strategy);
            let zones = ["a", "b", "c"];
            let n_nodes = 1 + rng.below(30);
            let mut caps = BTreeMap::new();
            for i in 0..n_nodes {
                let zone = zones[rng.below(3) as usize];
                let cap = node((1 + rng.below(16)) * 256 * MIB, &[("zone", zone)]);
                caps.insert(format!("n{i:02}"), cap.clone());
                s.set_node(&format!("n{i:02}"), cap);
            }
            let mut placed: Vec<(String, u64)> = Vec::new();
            for _ in 0..400 {
                match rng.below(10) {
                    0 => {
                        let name = format!("n{:02}", rng.below(n_nodes));
                        let on = rng.below(2) == 0;
                        s.set_schedulable(&name, on);
                        if let Some(c) = caps.get_mut(&name) {
                            c.schedulable = on;
                        }
                    }
                    1 if !placed.is_empty() => {
                        let (n, m) = placed.swap_remove(rng.below(placed.len() as u64) as usize);
                        s.release(
                            &n,
                            &Claim {
                                memory_bytes: m,
                                ..Claim::default()
                            },
                        );
                    }
                    _ => {
                        let mem = (1 + rng.below(8)) * 128 * MIB;
                        let selector: BTreeMap<String, String> = if rng.below(3) == 0 {
                            [("zone".to_string(), zones[rng.below(3) as usize].to_string())].into()
                        } else {
                            BTreeMap::new()
                        };
                        let r = req(mem, &selector);
                        let reserved = |n: &str| {
                            placed
                                .iter()
                                .filter(|(p, _)| p == n)
                                .map(|(_, m)| *m)
                                .sum::<u64>()
                        };
                        let brute: Vec<(&String, u64)> = caps
                            .iter()
                            .filter(|(_, c)| {
                                c.schedulable
                                    && selector.iter().all(|(k, v)| c.labels.get(k) == Some(v))
                            })
                            .map(|(n, c)| (n, c.allocatable_bytes - reserved(n)))
                            .filter(|(_, free)| *free >= mem)
                            .collect();
                        match s.place(&r) {
                            Ok(n) => {
                                let c = &caps[&n];
                                assert!(c.schedulable);
                                assert!(selector.iter().all(|(k, v)| c.labels.get(k) == Some(v)));
                                let free = c.allocatable_bytes - reserved(&n);
                                assert!(free >= mem, "overcommit on {n}");
                                let best = match strategy {
                                    Strategy::Spread => brute.iter().map(|(_, f)| *f).max(),
                                    Strategy::Binpack => brute.iter().map(|(_, f)| *f).min(),
                                };
                                assert_eq!(Some(free), best, "{strategy} picked {n}");
                                s.reserve(&n, &r.claim());
                                placed.push((n, mem));
                            }
                            Err(e) => assert!(brute.is_empty(), "refused ({e}) but {brute:?} fit"),
                        }
                    }
                }
            }
            for (n, c) in &caps {
                assert!(
                    s.reserved_bytes(n) <= c.allocatable_bytes,
                    "{n} overcommitted"
                );
            }
        }
    }
}
