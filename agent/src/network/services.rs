//! Services' virtual addresses on this node: a connection to a service's address (from a
//! container or from the node itself) is sent to one of the service's ready replicas, in
//! turn (DNAT in chain `HUTCH-SERVICES` of the nat table, one rule per replica with an
//! `nth` counter, so each replica takes every n-th new connection), and masqueraded so that
//! the answer comes back through this node whichever node the replica runs on. A service
//! without ready replicas refuses connections at once (REJECT in the filter table) instead
//! of sending them out of the node.
//!
//! The chain is replaced in one `iptables-restore` transaction: a connection never meets a
//! half-written table. Done with the iptables package, only when the controller's table of
//! services changes.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use hutch_core::network::Cidr;

/// hutch's chain of services' DNAT rules in the nat table.
pub const SERVICES_CHAIN: &str = "HUTCH-SERVICES";
/// The comment marking hutch's service rules in the built-in chains.
const MARK: &str = "hutch-services";

/// One service as this node balances it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServiceVip {
    /// The service's name (in comments only).
    pub name: String,
    /// Its virtual address.
    pub address: Ipv4Addr,
    /// Its ready replicas' addresses.
    pub backends: Vec<Ipv4Addr>,
}

/// The services' block and every service: what the node's rules are made from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceTable {
    /// The block virtual addresses come from (`None`: no services' rules at all).
    pub cidr: Option<Cidr>,
    /// The services, by name.
    pub services: Vec<ServiceVip>,
}

/// The `iptables-restore --noflush` input that makes [`SERVICES_CHAIN`] exactly `table`'s
/// rules (declaring the chain empties it, in the same transaction).
pub fn chain_rules(table: &ServiceTable) -> String {
    let mut out = format!("*nat\n:{SERVICES_CHAIN} - [0:0]\n");
    for s in &table.services {
        let n = s.backends.len();
        for (i, backend) in s.backends.iter().enumerate() {
            let every = n - i;
            let pick = if every > 1 {
                format!("-m statistic --mode nth --every {every} --packet 0 ")
            } else {
                String::new()
            };
            out.push_str(&format!(
                "-A {SERVICES_CHAIN} -d {}/32 -m comment --comment \"{}\" {pick}-j DNAT --to-destination {backend}\n",
                s.address,
                comment(&s.name),
            ));
        }
    }
    out.push_str("COMMIT\n");
    out
}

/// A service name as a comment (names are checked by the controller; this keeps the
/// restore input well-formed whatever arrives).
fn comment(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(64)
        .collect()
}

/// The rules of the built-in chains that lead to the services' chain and make their traffic
/// work, for the block `cidr`: (table, chain, rule).
fn hooks(
    cidr: &Cidr,
    without_backends: &[Ipv4Addr],
) -> Vec<(&'static str, &'static str, Vec<String>)> {
    let block = cidr.to_string();
    // As `iptables -S` lists them: matches in order, the comment last, then the target.
    let marked = |mut rule: Vec<String>| {
        let target = rule.iter().position(|w| w == "-j").unwrap_or(rule.len());
        rule.splice(
            target..target,
            ["-m", "comment", "--comment", MARK].map(String::from),
        );
        rule
    };
    let jump = || {
        marked(vec![
            "-d".into(),
            block.clone(),
            "-j".into(),
            SERVICES_CHAIN.into(),
        ])
    };
    let mut hooks = vec![
        ("nat", "PREROUTING", jump()),
        ("nat", "OUTPUT", jump()),
        (
            "nat",
            "POSTROUTING",
            marked(
                [
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "DNAT",
                    "--ctorigdst",
                    &block,
                    "-j",
                    "MASQUERADE",
                ]
                .map(String::from)
                .to_vec(),
            ),
        ),
    ];
    for address in without_backends {
        hooks.push((
            "filter",
            "FORWARD",
            marked(
                [
                    "-d",
                    &format!("{address}/32"),
                    "-j",
                    "REJECT",
                    "--reject-with",
                    "icmp-port-unreachable",
                ]
                .map(String::from)
                .to_vec(),
            ),
        ));
    }
    hooks
}

fn iptables(table: &str, args: &[&str]) -> Result<String, String> {
    let mut all = vec!["-w", "5", "-t", table];
    all.extend_from_slice(args);
    let out = Command::new("iptables")
        .args(&all)
        .output()
        .map_err(|e| format!("iptables: {e} (install iptables)"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "iptables {}: {}",
            all.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn restore(input: &str) -> Result<(), String> {
    let mut child = Command::new("iptables-restore")
        .args(["--noflush", "-w", "5"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("iptables-restore: {e} (install iptables)"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| format!("iptables-restore: writing its input: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("iptables-restore: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "iptables-restore: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Makes this node's services' rules exactly `table`'s: the chain's rules, and hutch's
/// hooks in the built-in chains (old ones, for another block or a service now with
/// replicas, removed).
pub fn sync(table: &ServiceTable) -> Result<(), String> {
    let wanted = match &table.cidr {
        Some(cidr) => {
            let idle: Vec<Ipv4Addr> = table
                .services
                .iter()
                .filter(|s| s.backends.is_empty())
                .map(|s| s.address)
                .collect();
            hooks(cidr, &idle)
        }
        None => Vec::new(),
    };
    if table.cidr.is_some() {
        restore(&chain_rules(table))?;
    }
    for (t, chain) in [
        ("nat", "PREROUTING"),
        ("nat", "OUTPUT"),
        ("nat", "POSTROUTING"),
        ("filter", "FORWARD"),
    ] {
        let listed = iptables(t, &["-S", chain])?;
        for line in listed.lines().filter(|l| l.contains(MARK)) {
            let rule: Vec<String> = shell_words(
                line.trim_start_matches("-A ")
                    .trim_start_matches(chain)
                    .trim(),
            );
            let keep = wanted
                .iter()
                .any(|(wt, wc, w)| *wt == t && *wc == chain && same_rule(w, &rule));
            if !keep {
                let mut args = vec!["-D", chain];
                args.extend(rule.iter().map(String::as_str));
                iptables(t, &args)?;
            }
        }
        for (_, _, rule) in wanted.iter().filter(|(wt, wc, _)| *wt == t && *wc == chain) {
            let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
            let mut check = vec!["-C", chain];
            check.extend(&rule);
            if iptables(t, &check).is_err() {
                // Ahead of other rules (a FORWARD policy of DROP, Docker's chains).
                let mut add = vec!["-I", chain, "1"];
                add.extend(&rule);
                iptables(t, &add)?;
            }
        }
    }
    if table.cidr.is_none() && iptables("nat", &["-S", SERVICES_CHAIN]).is_ok() {
        iptables("nat", &["-F", SERVICES_CHAIN])?;
        iptables("nat", &["-X", SERVICES_CHAIN])?;
    }
    Ok(())
}

/// Whether a rule as listed by `iptables -S` is `wanted` (the listing adds `/32` to single
/// addresses and quotes comments).
fn same_rule(wanted: &[String], listed: &[String]) -> bool {
    let norm = |s: &str| s.trim_end_matches("/32").trim_matches('"').to_string();
    wanted.len() == listed.len() && wanted.iter().zip(listed).all(|(a, b)| norm(a) == norm(b))
}

/// Splits an `iptables -S` line into its words (double quotes group).
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("an address")
    }

    #[test]
    fn each_replica_takes_every_nth_connection() {
        let table = ServiceTable {
            cidr: Some("198.18.128.0/20".parse().expect("cidr")),
            services: vec![
                ServiceVip {
                    name: "web".into(),
                    address: ip("198.18.128.1"),
                    backends: vec![ip("198.19.0.2"), ip("198.19.1.2"), ip("198.19.2.2")],
                },
                ServiceVip {
                    name: "idle".into(),
                    address: ip("198.18.128.2"),
                    backends: vec![],
                },
            ],
        };
        let rules = chain_rules(&table);
        let lines: Vec<&str> = rules.lines().collect();
        assert_eq!(lines[0], "*nat");
        assert_eq!(lines[1], ":HUTCH-SERVICES - [0:0]");
        assert!(
            lines[2].contains("--every 3 --packet 0 -j DNAT --to-destination 198.19.0.2"),
            "{rules}"
        );
        assert!(
            lines[3].contains("--every 2 --packet 0 -j DNAT --to-destination 198.19.1.2"),
            "{rules}"
        );
        assert!(
            lines[4].ends_with("-j DNAT --to-destination 198.19.2.2"),
            "{rules}"
        );
        assert!(!lines[4].contains("statistic"), "{rules}");
        assert_eq!(lines[5], "COMMIT");
        assert_eq!(
            lines.len(),
            6,
            "no rule for a service without replicas: {rules}"
        );

        let hooks = hooks(
            &"198.18.128.0/20".parse().expect("cidr"),
            &[ip("198.18.128.2")],
        );
        assert_eq!(hooks.len(), 4);
        assert_eq!((hooks[3].0, hooks[3].1), ("filter", "FORWARD"));
        assert_eq!(
            hooks[0].2.join(" "),
            "-d 198.18.128.0/20 -m comment --comment hutch-services -j HUTCH-SERVICES"
        );
    }

    #[test]
    fn listed_rules_compare_with_wanted_ones() {
        // As iptables -S lists it (the reject type spelled out).
        let listed = shell_words(
            r#"-d 198.18.128.2/32 -m comment --comment "hutch-services" -j REJECT --reject-with icmp-port-unreachable"#,
        );
        let wanted = hooks(
            &"198.18.128.0/20".parse().expect("cidr"),
            &[ip("198.18.128.2")],
        )
        .pop()
        .expect("the reject rule")
        .2;
        assert!(same_rule(&wanted, &listed));
        assert_eq!(comment("we b;\n"), "web");
    }
}
