//! The pure half of CNI (the Container Network Interface specification, 1.0): network
//! configuration lists, the configuration each plugin of a list is given on stdin, and the
//! results and errors plugins print. No process is started here (see `cni::invoke`).

use std::net::Ipv4Addr;

use serde_json::{json, Map, Value};

use hutch_core::network::{Cidr, PortMapping};

use super::CniError;

/// A network configuration list (`.conflist`), or a single plugin's configuration (`.conf`)
/// read as a list of one.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkList {
    /// The network's name (`name`).
    pub name: String,
    /// `cniVersion`.
    pub cni_version: String,
    /// Each plugin's configuration, in order.
    pub plugins: Vec<Map<String, Value>>,
}

impl NetworkList {
    /// Parses a configuration file's text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<NetworkList, CniError> {
        let bad = |what: String| CniError::Config(format!("{origin}: {what}"));
        let value: Value = serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let Value::Object(mut top) = value else {
            return Err(bad("not a JSON object".into()));
        };
        let name = match top.get("name") {
            Some(Value::String(n)) if !n.is_empty() => n.clone(),
            _ => return Err(bad("no \"name\"".into())),
        };
        let cni_version = match top.get("cniVersion") {
            Some(Value::String(v)) if !v.is_empty() => v.clone(),
            _ => return Err(bad("no \"cniVersion\"".into())),
        };
        let plugins = match top.remove("plugins") {
            Some(Value::Array(list)) => list
                .into_iter()
                .enumerate()
                .map(|(i, p)| match p {
                    Value::Object(m) => Ok(m),
                    _ => Err(bad(format!("plugins[{i}] is not an object"))),
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err(bad("\"plugins\" is not a list".into())),
            // A single plugin's configuration.
            None => vec![top],
        };
        if plugins.is_empty() {
            return Err(bad("\"plugins\" is empty".into()));
        }
        for (i, p) in plugins.iter().enumerate() {
            match p.get("type") {
                Some(Value::String(t)) if is_plugin_name(t) => {}
                _ => {
                    return Err(bad(format!(
                        "plugins[{i}] has no \"type\" naming a plugin (a file name in the CNI bin directories)"
                    )))
                }
            }
        }
        Ok(NetworkList {
            name,
            cni_version,
            plugins,
        })
    }

    /// The plugins' types (program names), in order.
    pub fn types(&self) -> Vec<&str> {
        self.plugins
            .iter()
            .filter_map(|p| p.get("type").and_then(Value::as_str))
            .collect()
    }

    /// Whether DEL of this chain needs nothing inside the container's network namespace:
    /// every plugin is one whose DEL, given no namespace, removes all it made outside it
    /// (`bridge` with only the settings below, whose only inside work is deleting the veth,
    /// which the kernel deletes with the namespace; `host-local` or `static` addresses;
    /// `portmap`; `loopback`). hutch's own network is such a chain. Any other plugin or
    /// setting may need the namespace (`ipMasq` and `macspoofchk` rules are found through
    /// it), and then it stays pinned until DEL has run. Keys are compared without case, as
    /// the plugins' JSON decoding does.
    pub fn del_needs_no_namespace(&self) -> bool {
        /// The bridge settings whose DEL needs no namespace (`ipMasq` only when false).
        const BRIDGE_KEYS: [&str; 14] = [
            "type",
            "name",
            "cniversion",
            "bridge",
            "isgateway",
            "isdefaultgateway",
            "forceaddress",
            "ipmasq",
            "mtu",
            "hairpinmode",
            "ipam",
            "promiscmode",
            "capabilities",
            "runtimeconfig",
        ];
        self.plugins.iter().all(|p| {
            let get = |key: &str| {
                p.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(key))
                    .map(|(_, v)| v)
            };
            let kind = get("type").and_then(Value::as_str).unwrap_or("");
            let ipam = get("ipam")
                .and_then(Value::as_object)
                .and_then(|i| i.iter().find(|(k, _)| k.eq_ignore_ascii_case("type")))
                .and_then(|(_, v)| v.as_str());
            match kind {
                "bridge" => {
                    p.keys()
                        .all(|k| BRIDGE_KEYS.contains(&k.to_ascii_lowercase().as_str()))
                        && get("ipmasq").is_none_or(|v| v == &Value::Bool(false))
                        && matches!(ipam, Some("host-local" | "static"))
                }
                "portmap" | "loopback" => true,
                _ => false,
            }
        })
    }

    /// The configuration plugin `index` reads on stdin: its own, with the list's name and
    /// version, the previous plugin's result (ADD after the first plugin; CHECK and DEL
    /// always, when there is one) and the runtime's values for the capabilities it declares
    /// (`portMappings`).
    pub fn plugin_stdin(
        &self,
        index: usize,
        prev_result: Option<&Value>,
        ports: &[PortMapping],
    ) -> Value {
        let mut conf = self.plugins[index].clone();
        conf.insert("name".into(), Value::String(self.name.clone()));
        conf.insert("cniVersion".into(), Value::String(self.cni_version.clone()));
        if let Some(prev) = prev_result {
            conf.insert("prevResult".into(), prev.clone());
        }
        let wants_ports = conf
            .get("capabilities")
            .and_then(|c| c.get("portMappings"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if wants_ports && !ports.is_empty() {
            let mappings: Vec<Value> = ports
                .iter()
                .map(|p| {
                    let mut m = json!({
                        "hostPort": p.host_port,
                        "containerPort": p.container_port,
                        "protocol": p.protocol.as_str(),
                    });
                    if let Some(ip) = p.host_ip {
                        m["hostIP"] = Value::String(ip.to_string());
                    }
                    m
                })
                .collect();
            conf.insert("runtimeConfig".into(), json!({ "portMappings": mappings }));
        }
        Value::Object(conf)
    }
}

/// Whether `name` can be a plugin's file name (no path, nothing hidden).
fn is_plugin_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The configuration hutch writes for its default network on a node: a bridge with the
/// node's subnet (host-local addresses, the bridge as gateway), then, for a container that
/// publishes ports, portmap (left out otherwise: one program fewer to run at start and at
/// end). Masquerading is the agent's (only traffic leaving the cluster), so the bridge
/// plugin's own `ipMasq` is off: traffic between nodes keeps its source address.
pub fn default_network(
    name: &str,
    bridge: &str,
    subnet: Cidr,
    ipam_dir: &str,
    with_portmap: bool,
) -> Value {
    let mut plugins = vec![json!({
        "type": "bridge",
        "bridge": bridge,
        "isGateway": true,
        "ipMasq": false,
        "hairpinMode": true,
        "ipam": {
            "type": "host-local",
            "ranges": [[{ "subnet": subnet.to_string() }]],
            "routes": [{ "dst": "0.0.0.0/0" }],
            "dataDir": ipam_dir,
        }
    })];
    if with_portmap {
        plugins.push(json!({
            "type": "portmap",
            "capabilities": { "portMappings": true },
            "snat": true
        }));
    }
    json!({
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": plugins,
    })
}

/// What hutch reads from a plugin chain's final result: the container's first IPv4 address
/// with its prefix, and its gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    /// The address.
    pub ip: Ipv4Addr,
    /// Its block.
    pub subnet: Cidr,
    /// The gateway, when the result names one.
    pub gateway: Option<Ipv4Addr>,
}

/// The host-side interfaces of a result other than `bridge`: those without a `sandbox`
/// (the bridge plugin's veth ends on the host).
pub fn host_interfaces<'a>(result: &'a Value, bridge: &str) -> Vec<&'a str> {
    result
        .get("interfaces")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|i| {
            i.get("sandbox")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
        })
        .filter_map(|i| i.get("name").and_then(Value::as_str))
        .filter(|name| *name != bridge)
        .collect()
}

/// The first IPv4 address of a result (`ips[].address` = `198.19.1.5/24`).
pub fn result_address(result: &Value) -> Option<Address> {
    result.get("ips")?.as_array()?.iter().find_map(|entry| {
        let (ip, prefix) = entry.get("address")?.as_str()?.split_once('/')?;
        let ip: Ipv4Addr = ip.parse().ok()?;
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix))
        };
        let subnet = Cidr {
            network: Ipv4Addr::from(u32::from(ip) & mask),
            prefix,
        };
        let gateway = entry
            .get("gateway")
            .and_then(Value::as_str)
            .and_then(|g| g.parse().ok());
        Some(Address {
            ip,
            subnet,
            gateway,
        })
    })
}

/// A plugin's error as the specification has it on stdout (`{"code", "msg", "details"}`),
/// in one line; `None` when the output is not such an error.
pub fn plugin_error(stdout: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(stdout).ok()?;
    let msg = v.get("msg")?.as_str()?;
    let code = v.get("code").and_then(Value::as_u64).unwrap_or(0);
    let details = v.get("details").and_then(Value::as_str).unwrap_or("");
    Some(if details.is_empty() {
        format!("{msg} (CNI error {code})")
    } else {
        format!("{msg}: {details} (CNI error {code})")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ends_of_a_result() {
        let result = json!({"interfaces": [
            {"name": "hutch0", "mac": "aa"},
            {"name": "veth1234", "mac": "bb"},
            {"name": "eth0", "mac": "cc", "sandbox": "/x/netns"}
        ]});
        assert_eq!(host_interfaces(&result, "hutch0"), vec!["veth1234"]);
        assert!(host_interfaces(&json!({}), "hutch0").is_empty());
    }

    #[test]
    fn only_known_chains_let_the_namespace_go_before_del() {
        let subnet: Cidr = "198.19.3.0/24".parse().expect("cidr");
        for ports in [false, true] {
            let own = default_network("hutch", "hutch0", subnet, "/x", ports);
            let list = NetworkList::parse(&own.to_string(), "own").expect("own");
            assert!(
                list.del_needs_no_namespace(),
                "hutch's own network, ports {ports}"
            );
        }
        let chain = |plugins: Value| {
            let conf = json!({"cniVersion": "1.0.0", "name": "n", "plugins": plugins});
            NetworkList::parse(&conf.to_string(), "t")
                .expect("parse")
                .del_needs_no_namespace()
        };
        let bridge = |extra: Value| {
            let mut b = json!({"type": "bridge", "ipam": {"type": "host-local"}});
            if let (Some(b), Some(e)) = (b.as_object_mut(), extra.as_object()) {
                b.extend(e.clone());
            }
            b
        };
        assert!(chain(json!([bridge(json!({})), {"type": "loopback"}])));
        // Masquerade rules are found through the interface's addresses, inside; the
        // plugins read keys without case.
        assert!(!chain(json!([bridge(json!({"ipMasq": true}))])));
        assert!(!chain(json!([bridge(json!({"IPMASQ": true}))])));
        assert!(!chain(json!([bridge(json!({"macspoofchk": true}))])));
        assert!(!chain(json!([bridge(json!({"someFutureKey": 1}))])));
        assert!(chain(json!([bridge(
            json!({"ipMasq": false, "mtu": 1400})
        )])));
        assert!(!chain(json!([bridge(json!({"ipam": {"type": "dhcp"}}))])));
        assert!(!chain(
            json!([{"type": "macvlan", "ipam": {"type": "host-local"}}])
        ));
        assert!(!chain(json!([bridge(json!({})), {"type": "firewall"}])));
    }
    use hutch_core::network::parse_publish;

    fn list() -> NetworkList {
        let text = default_network(
            "hutch",
            "hutch0",
            "198.19.1.0/24".parse().expect("a value"),
            "/var/lib/x",
            true,
        )
        .to_string();
        NetworkList::parse(&text, "default").expect("a value")
    }

    #[test]
    fn the_default_network_reads_back() {
        let l = list();
        assert_eq!(l.name, "hutch");
        assert_eq!(l.types(), vec!["bridge", "portmap"]);
    }

    #[test]
    fn each_plugin_gets_name_version_previous_result_and_its_capabilities() {
        let l = list();
        let ports = vec![parse_publish("8080:80").expect("a value")];
        let first = l.plugin_stdin(0, None, &ports);
        assert_eq!(first["name"], "hutch");
        assert_eq!(first["cniVersion"], "1.0.0");
        assert!(first.get("prevResult").is_none());
        assert!(
            first.get("runtimeConfig").is_none(),
            "bridge asks for no ports"
        );
        let prev = json!({"cniVersion": "1.0.0", "ips": []});
        let second = l.plugin_stdin(1, Some(&prev), &ports);
        assert_eq!(second["prevResult"], prev);
        assert_eq!(second["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
        assert_eq!(
            second["runtimeConfig"]["portMappings"][0]["protocol"],
            "tcp"
        );
    }

    #[test]
    fn broken_configurations_say_what_is_wrong() {
        for (text, says) in [
            ("{", "not JSON"),
            ("[]", "not a JSON object"),
            (r#"{"cniVersion":"1.0.0","plugins":[]}"#, "no \"name\""),
            (r#"{"name":"n","plugins":[]}"#, "cniVersion"),
            (r#"{"name":"n","cniVersion":"1.0.0","plugins":[]}"#, "empty"),
            (
                r#"{"name":"n","cniVersion":"1.0.0","plugins":[{"type":"../../bin/sh"}]}"#,
                "type",
            ),
            (
                r#"{"name":"n","cniVersion":"1.0.0","plugins":7}"#,
                "not a list",
            ),
        ] {
            let e = NetworkList::parse(text, "f.conflist")
                .expect_err("an error")
                .to_string();
            assert!(e.contains(says), "{text}: {e}");
            assert!(e.contains("f.conflist"), "{e}");
        }
        let single = NetworkList::parse(
            r#"{"name":"n","cniVersion":"0.4.0","type":"bridge"}"#,
            "x.conf",
        )
        .expect("a value");
        assert_eq!(single.types(), vec!["bridge"]);
    }

    #[test]
    fn results_and_errors() {
        let r = json!({"cniVersion":"1.0.0","ips":[{"address":"198.19.1.5/24","gateway":"198.19.1.1","interface":2}]});
        let a = result_address(&r).expect("a value");
        assert_eq!(a.ip.to_string(), "198.19.1.5");
        assert_eq!(a.subnet.to_string(), "198.19.1.0/24");
        assert_eq!(a.gateway.expect("a value").to_string(), "198.19.1.1");
        assert_eq!(result_address(&json!({"ips": []})), None);
        let e = plugin_error(br#"{"code":7,"msg":"failed to allocate","details":"range full"}"#);
        assert_eq!(
            e.expect("a value"),
            "failed to allocate: range full (CNI error 7)"
        );
        assert_eq!(plugin_error(b"garbage"), None);
    }
}
