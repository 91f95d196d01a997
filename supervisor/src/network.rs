//! The supervisor's side of a bridged container's network: pinning the container's network
//! namespace, connecting it through CNI before the init is released, the `/etc/hosts` and
//! `/etc/resolv.conf` it sees, and disconnecting it on the way out.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use hutch_core::network::{NetworkMode, NetworkStatus, PortMapping};

use crate::cni::{conf, Attachment, CniError, NetworkList, CONTAINER_INTERFACE};

/// What the agent asks for a bridged container (`config.json`'s `network`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkPlan {
    /// The CNI network's name.
    pub name: String,
    /// Its configuration list (JSON), as the agent resolved it.
    pub config: Value,
    /// Where its plugins are.
    pub bin_dirs: Vec<PathBuf>,
    /// Ports to publish.
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    /// `/etc/resolv.conf` for the container.
    pub resolv_conf: String,
    /// Lines added to `/etc/hosts` (other containers' names).
    #[serde(default)]
    pub extra_hosts: Vec<(Ipv4Addr, String)>,
}

/// `DIR/hosts`, bound over the container's `/etc/hosts`.
pub fn hosts_path(dir: &Path) -> PathBuf {
    dir.join("hosts")
}

/// `DIR/resolv.conf`, bound over the container's `/etc/resolv.conf`.
pub fn resolv_path(dir: &Path) -> PathBuf {
    dir.join("resolv.conf")
}

/// Rewrites `DIR/hosts` in place (the container's `/etc/hosts` is a bind mount of it, so
/// the file must stay the same inode): when the cluster's names change.
///
/// Overwritten in place, then cut to length (never truncated first): a resolver reading it
/// meanwhile never sees it empty, and lines that did not move (localhost, the container's
/// own names, then services' addresses, which the controller lists first) read the same
/// throughout.
pub fn rewrite_hosts(dir: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(hosts_path(dir))?;
    f.write_all(text.as_bytes())?;
    f.set_len(text.len() as u64)
}

/// The container's `/etc/hosts`: localhost, its own address under its hostname and name,
/// and `extra` entries (other containers; its own names are left out of them).
pub fn hosts_file(ip: Ipv4Addr, names: &[&str], extra: &[(Ipv4Addr, String)]) -> String {
    let mut own: Vec<&str> = Vec::new();
    for n in names {
        if !n.is_empty() && !own.contains(n) {
            own.push(n);
        }
    }
    let mut text =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    text.push_str(&format!("{ip}\t{}\n", own.join(" ")));
    for (addr, name) in extra {
        if !own.contains(&name.as_str()) {
            text.push_str(&format!("{addr}\t{name}\n"));
        }
    }
    text
}

/// Binds the network namespace of `pid` at `DIR/netns`, so it outlives the container's
/// processes until DEL has run.
pub fn pin_netns(dir: &Path, pid: u32) -> Result<PathBuf, String> {
    let target = Attachment::netns_path(dir);
    std::fs::File::create(&target).map_err(|e| format!("creating {}: {e}", target.display()))?;
    let source = format!("/proc/{pid}/ns/net");
    mount(
        Some(source.as_str()),
        &target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| format!("binding {source} at {}: {e}", target.display()))?;
    Ok(target)
}

/// Connects the container whose init is `pid` (in its network namespace, not yet released):
/// pins the namespace, records the attachment (before ADD, so a crash leaves what DEL needs),
/// runs ADD and writes the name files. On error the record stays for the cleanup's DEL.
pub fn connect(
    dir: &Path,
    id: &str,
    pid: u32,
    plan: &NetworkPlan,
    names: &[&str],
) -> Result<NetworkStatus, String> {
    let netns = pin_netns(dir, pid)?;
    let mut attachment = Attachment {
        container_id: id.into(),
        netns,
        ifname: CONTAINER_INTERFACE.into(),
        config: plan.config.clone(),
        bin_dirs: plan.bin_dirs.clone(),
        ports: plan.ports.clone(),
        result: None,
        deleted: false,
    };
    attachment.save(dir).map_err(|e| e.to_string())?;
    let added = attachment.add().map(conf::result_address);
    attachment.save(dir).map_err(|e| e.to_string())?;
    let address = added.map_err(|e| e.to_string())?.ok_or_else(|| {
        format!(
            "network {}: the plugins gave the container no IPv4 address",
            plan.name
        )
    })?;
    let write = |path: PathBuf, text: String| {
        std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))
    };
    write(
        hosts_path(dir),
        hosts_file(address.ip, names, &plan.extra_hosts),
    )?;
    write(resolv_path(dir), plan.resolv_conf.clone())?;
    Ok(NetworkStatus {
        mode: NetworkMode::Bridge,
        network: plan.name.clone(),
        ip: Some(address.ip),
        gateway: address.gateway,
        subnet: Some(address.subnet),
        ports: plan.ports.clone(),
    })
}

/// Runs DEL for the container in `dir` if it was connected and is not yet disconnected,
/// with its network namespace still pinned. `Ok(false)`: there was nothing to do.
pub fn disconnect(dir: &Path) -> Result<bool, CniError> {
    run_del(dir, false)
}

/// [`disconnect`] once the container's processes are gone (the supervisor's way out;
/// `processes_gone` says its cgroup was seen empty). When they are and the chain's DEL
/// needs nothing inside the namespace (hutch's own network: see
/// [`NetworkList::del_needs_no_namespace`]), the pin is released first, so the namespace
/// ends and the kernel deletes the veth with it, batched with other namespaces' teardown,
/// instead of the bridge plugin deleting it alone under the routing lock: DEL then takes
/// about half as long (measured: 26-53 ms with the namespace, 11-13 ms without). Should
/// something else still hold the namespace (a process joined it with `nsenter`), the veth
/// would outlive DEL with an address that is free again: it is then deleted from the host
/// side.
pub fn disconnect_after_exit(dir: &Path, processes_gone: bool) -> Result<bool, CniError> {
    run_del(dir, processes_gone)
}

fn run_del(dir: &Path, namespace_may_go_first: bool) -> Result<bool, CniError> {
    let Some(mut attachment) = Attachment::load(dir)? else {
        return Ok(false);
    };
    if attachment.deleted {
        return Ok(false);
    }
    let chain = NetworkList::parse(&attachment.config.to_string(), "network.json");
    let released_first = namespace_may_go_first
        && chain.as_ref().is_ok_and(|c| c.del_needs_no_namespace())
        // Only the pin this module made, whatever the record says.
        && nix::mount::umount2(
            &Attachment::netns_path(dir),
            nix::mount::MntFlags::MNT_DETACH,
        )
        .is_ok();
    let outcome = attachment.del();
    attachment.save(dir)?;
    if released_first && outcome.is_ok() {
        remove_surviving_host_ends(&attachment, chain.ok().as_ref());
    }
    outcome.map(|()| true)
}

/// Deletes the host ends of the container's veths that are still there after a DEL run
/// without the namespace (the kernel deletes them with the namespace, unless something
/// else keeps it alive).
fn remove_surviving_host_ends(attachment: &Attachment, chain: Option<&NetworkList>) {
    let Some(result) = &attachment.result else {
        return;
    };
    let bridge = chain
        .and_then(|c| {
            c.plugins
                .iter()
                .find_map(|p| p.get("bridge").and_then(Value::as_str))
        })
        .unwrap_or("cni0");
    for name in conf::host_interfaces(result, bridge) {
        if !Path::new("/sys/class/net").join(name).exists() {
            continue;
        }
        // Deleting one end of a veth deletes both; gone meanwhile is fine.
        let out = std::process::Command::new("ip")
            .args(["link", "delete", name])
            .output();
        if let Ok(o) = out {
            if o.status.success() {
                // The supervisor's stderr is its diagnostics log.
                eprintln!(
                    "veth {name} outlived the container's namespace (something else holds it): deleted from the host side"
                );
            }
        }
    }
}

/// In the init, before `pivot_root`: binds `DIR/hosts` and `DIR/resolv.conf` over the
/// rootfs' files (made when missing; a symlink is replaced; skipped when a read-only rootfs
/// cannot take them). No symlink of the rootfs is ever followed: `/etc` must be a directory.
pub fn bind_name_files(dir: &Path, root: &Path) -> Result<(), String> {
    let etc = root.join("etc");
    if !std::fs::symlink_metadata(&etc).is_ok_and(|m| m.is_dir()) {
        return Ok(());
    }
    for (source, name) in [
        (hosts_path(dir), "hosts"),
        (resolv_path(dir), "resolv.conf"),
    ] {
        let target = etc.join(name);
        match std::fs::symlink_metadata(&target) {
            Ok(m) if m.is_file() => {}
            found => {
                if found.is_ok() && std::fs::remove_file(&target).is_err() {
                    continue;
                }
                let made = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&target);
                if made.is_err() {
                    continue;
                }
            }
        }
        mount(
            Some(&source),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| format!("binding {} at /etc/{name}: {e}", source.display()))?;
        // Read-only inside: the files live on the host's disk, outside a disk limit; the
        // agent still rewrites /etc/hosts through DIR/hosts.
        mount(
            None::<&str>,
            &target,
            None::<&str>,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(|e| format!("making /etc/{name} read-only: {e}"))?;
    }
    Ok(())
}

/// A resolv.conf for containers from the host's: nameservers on loopback (a local cache
/// such as systemd-resolved) answer nothing inside a network namespace, so they are left
/// out; everything else is kept.
pub fn container_resolv_conf(host: &str) -> String {
    let mut out = String::new();
    for line in host.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some("nameserver") {
            if let Some(addr) = words.next() {
                if addr
                    .parse::<std::net::IpAddr>()
                    .map(|a| a.is_loopback())
                    .unwrap_or(false)
                {
                    continue;
                }
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lists_localhost_itself_and_extras_once() {
        let text = hosts_file(
            Ipv4Addr::new(198, 19, 1, 5),
            &["web", "web", ""],
            &[(Ipv4Addr::new(198, 19, 2, 7), "db".into())],
        );
        assert!(text.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(text.contains("198.19.1.5\tweb\n"));
        assert!(text.contains("198.19.2.7\tdb\n"));
    }

    #[test]
    fn hosts_are_rewritten_in_place_to_their_new_length() {
        let dir = std::env::temp_dir().join(format!("hutch-hosts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(hosts_path(&dir), "a long first version\nwith two lines\n").expect("write");
        let inode =
            |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).expect("stat"));
        let before = inode(&hosts_path(&dir));
        rewrite_hosts(&dir, "short\n").expect("rewrite");
        let text = std::fs::read_to_string(hosts_path(&dir)).expect("read");
        let after = inode(&hosts_path(&dir));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(text, "short\n");
        assert_eq!(before, after, "the same file (a bind mount points at it)");
    }

    #[test]
    fn loopback_nameservers_are_left_out() {
        let host = "search lab\nnameserver 127.0.0.53\nnameserver 198.18.0.53\noptions edns0\n";
        assert_eq!(
            container_resolv_conf(host),
            "search lab\nnameserver 198.18.0.53\noptions edns0\n"
        );
    }
}
