//! The rootfs commands: build (with progress per node), ls, rm.

use std::process::ExitCode;

use hutch::proto as v1;
use hutch::spec::parse_pairs;
use hutch::{Client, Error};
use tokio_stream::StreamExt;

use crate::args::BuildArgs;
use crate::stdout::{self, outln};
use crate::{output, print_json, EXIT_HUTCH};

/// `hutch rootfs ls`.
pub(crate) async fn ls(
    client: &Client,
    node: Option<String>,
    json: bool,
) -> Result<ExitCode, Error> {
    let listed = client.list_rootfs(node.as_deref().unwrap_or("")).await?;
    if json {
        let rows: Vec<_> = listed
                .rootfs
                .iter()
                .map(|r| {
                    let i = r.rootfs.clone().unwrap_or_default();
                    serde_json::json!({"node": r.node, "name": i.name, "key": i.key, "source": i.source, "size_bytes": i.size_bytes, "containers": i.containers})
                })
                .collect();
        print_json(&rows)?;
    } else {
        output::table(
            &["NODE", "NAME", "SIZE", "SOURCE", "USED BY"],
            listed
                .rootfs
                .iter()
                .map(|r| {
                    let i = r.rootfs.clone().unwrap_or_default();
                    vec![
                        r.node.clone(),
                        i.name,
                        hutch::human_bytes(i.size_bytes),
                        i.source,
                        i.containers.len().to_string(),
                    ]
                })
                .collect(),
        );
    }
    for (node, why) in &listed.unreachable {
        eprintln!("hutch: node {node} did not answer: {why}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `hutch rootfs inspect`: each node's copy, with an image's config and layers.
pub(crate) async fn inspect(
    client: &Client,
    name: &str,
    node: Option<String>,
    json: bool,
) -> Result<ExitCode, Error> {
    let listed = client.list_rootfs(node.as_deref().unwrap_or("")).await?;
    let found: Vec<_> = listed
        .rootfs
        .iter()
        .filter_map(|r| Some((r.node.clone(), r.rootfs.clone()?)))
        .filter(|(_, i)| i.name == name)
        .collect();
    for (node, why) in &listed.unreachable {
        eprintln!("hutch: node {node} did not answer: {why}");
    }
    if found.is_empty() {
        eprintln!("hutch: no node has a rootfs named '{name}' (see `hutch rootfs ls`)");
        return Ok(ExitCode::from(EXIT_HUTCH));
    }
    if json {
        let rows: Vec<_> = found
            .iter()
            .map(|(node, i)| {
                let image = i.image.as_ref().map(|m| {
                    serde_json::json!({
                        "manifest_digest": m.manifest_digest, "config_digest": m.config_digest,
                        "os": m.os, "architecture": m.architecture, "entrypoint": m.entrypoint,
                        "cmd": m.cmd, "env": m.env, "working_dir": m.working_dir, "user": m.user,
                        "exposed_ports": m.exposed_ports, "labels": m.labels,
                        "layers": m.layers.iter().map(|l| serde_json::json!({
                            "diff_id": l.diff_id, "digest": l.digest, "size_bytes": l.size_bytes,
                            "unpacked_bytes": l.unpacked_bytes})).collect::<Vec<_>>(),
                    })
                });
                serde_json::json!({"node": node, "name": i.name, "key": i.key, "source": i.source,
                    "size_bytes": i.size_bytes, "build_millis": i.build_millis,
                    "containers": i.containers, "image": image})
            })
            .collect();
        print_json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    for (node, i) in &found {
        outln!("{node}: {}", i.name);
        outln!("  source:      {}", i.source);
        outln!("  key:         {}", i.key);
        outln!("  size:        {}", hutch::human_bytes(i.size_bytes));
        outln!(
            "  used by:     {}",
            if i.containers.is_empty() {
                "-".into()
            } else {
                i.containers.join(", ")
            }
        );
        let Some(m) = &i.image else { continue };
        let list = |v: &[String]| {
            if v.is_empty() {
                "-".to_string()
            } else {
                serde_json::to_string(v).unwrap_or_default()
            }
        };
        outln!("  manifest:    {}", m.manifest_digest);
        outln!("  config:      {}", m.config_digest);
        outln!("  platform:    {}/{}", m.os, m.architecture);
        outln!("  entrypoint:  {}", list(&m.entrypoint));
        outln!("  cmd:         {}", list(&m.cmd));
        outln!(
            "  workdir:     {}",
            if m.working_dir.is_empty() {
                "-"
            } else {
                &m.working_dir
            }
        );
        outln!(
            "  user:        {}",
            if m.user.is_empty() { "-" } else { &m.user }
        );
        outln!(
            "  ports:       {}",
            if m.exposed_ports.is_empty() {
                "-".into()
            } else {
                m.exposed_ports.join(", ")
            }
        );
        outln!("  env:");
        for e in &m.env {
            outln!("    {e}");
        }
        outln!("  layers ({}, lowest first):", m.layers.len());
        for l in &m.layers {
            outln!(
                "    {}  {}",
                l.diff_id,
                hutch::human_bytes(l.unpacked_bytes)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `hutch rootfs rm`.
pub(crate) async fn rm(
    client: &Client,
    name: &str,
    node: Option<String>,
) -> Result<ExitCode, Error> {
    let r = client
        .remove_rootfs(name, node.as_deref().unwrap_or(""))
        .await?;
    for n in &r.removed {
        outln!("{n}: removed {name}");
    }
    for (n, why) in &r.failed {
        eprintln!("hutch: node {n}: {why}");
    }
    Ok(if r.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_HUTCH)
    })
}

/// `hutch rootfs build`: one progress line per node and stage, then each node's result.
pub(crate) async fn build(client: &Client, args: BuildArgs, json: bool) -> Result<ExitCode, Error> {
    use v1::rootfs_spec::Source;
    let source = if let Some(reference) = args.image {
        Source::Image(v1::ImageSource {
            reference,
            platform: args.platform,
            credentials: args.credentials,
        })
    } else if let Some(t) = args.tarball {
        Source::Tarball(t)
    } else if let Some(d) = args.directory {
        Source::Directory(d)
    } else if let Some(i) = args.initramfs {
        Source::Initramfs(i)
    } else {
        Source::Debootstrap(v1::DebootstrapSource {
            suite: args.suite,
            variant: args.variant,
            include: args
                .include
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            arch: String::new(),
            mirror: args.mirror.unwrap_or_default(),
        })
    };
    let mut stream = client
        .build_rootfs(v1::ClusterBuildRootfsRequest {
            rootfs: Some(v1::RootfsSpec {
                name: args.name.clone(),
                source: Some(source),
            }),
            node: args.node.unwrap_or_default(),
            node_selector: parse_pairs("selector", &args.selectors)?,
        })
        .await?;
    let mut failed = false;
    let mut last: std::collections::HashMap<String, String> = Default::default();
    let mut board = (!json && std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .then(ProgressBoard::default);
    while let Some(msg) = stream.next().await {
        let msg = msg?;
        use v1::cluster_build_rootfs_response::Event;
        match msg.event {
            Some(Event::Progress(p)) => {
                if json {
                    outln!(
                        "{}",
                        serde_json::json!({"node": msg.node, "stage": p.stage, "message": p.message, "packages_done": p.packages_done, "packages_total": p.packages_total})
                    );
                    continue;
                }
                let count = match (p.packages_done, p.packages_total) {
                    (Some(d), Some(t)) if t > 0 => format!(" [{}] {d}/{t}", bar(d, t)),
                    _ => String::new(),
                };
                // Bytes change every MiB: redrawn on a terminal, not a line each elsewhere.
                let bytes = match (p.bytes_done, p.bytes_total) {
                    (Some(d), Some(t)) if t > 0 => format!(
                        " [{}] {} / {}",
                        bar(((d.min(t) * 1000) / t) as u32, 1000),
                        hutch::human_bytes(d),
                        hutch::human_bytes(t)
                    ),
                    (Some(d), _) => format!(" {}", hutch::human_bytes(d)),
                    _ => String::new(),
                };
                let line = format!("{}: {}{count}{bytes} {}", msg.node, p.stage, p.message);
                if let Some(board) = board.as_mut() {
                    board.show(&msg.node, line.trim_end());
                    continue;
                }
                // Not a terminal: one line per change of stage or count.
                let key = format!("{}{count} {}", p.stage, p.message);
                if last.get(&msg.node) != Some(&key) {
                    outln!("{}", line.trim_end());
                    last.insert(msg.node.clone(), key);
                }
            }
            Some(Event::Result(r)) => {
                let info = r.rootfs.unwrap_or_default();
                let outcome = v1::BuildOutcome::try_from(r.outcome)
                    .map(|o| {
                        o.as_str_name()
                            .trim_start_matches("BUILD_OUTCOME_")
                            .to_ascii_lowercase()
                    })
                    .unwrap_or_default();
                if json {
                    outln!(
                        "{}",
                        serde_json::json!({"node": msg.node, "name": info.name, "outcome": outcome, "size_bytes": info.size_bytes, "build_millis": info.build_millis})
                    );
                } else {
                    let line = format!(
                        "{}: {} {} ({}, {:.1}s)",
                        msg.node,
                        info.name,
                        outcome,
                        hutch::human_bytes(info.size_bytes),
                        info.build_millis as f64 / 1000.0
                    );
                    match board.as_mut() {
                        Some(b) => b.show(&msg.node, &line),
                        None => outln!("{line}"),
                    }
                }
            }
            Some(Event::Error(e)) => {
                failed = true;
                eprintln!("hutch: node {}: {}", msg.node, e.message);
            }
            None => {}
        }
    }
    Ok(if failed {
        ExitCode::from(EXIT_HUTCH)
    } else {
        ExitCode::SUCCESS
    })
}

/// A 20-character progress bar.
fn bar(done: u32, total: u32) -> String {
    let filled = (done.min(total) as usize * 20) / total.max(1) as usize;
    format!("{}{}", "#".repeat(filled), ".".repeat(20 - filled))
}

/// One line per node on a terminal, redrawn in place as its build progresses.
#[derive(Default)]
struct ProgressBoard {
    nodes: Vec<String>,
}

impl ProgressBoard {
    fn show(&mut self, node: &str, line: &str) {
        let index = match self.nodes.iter().position(|n| n == node) {
            Some(i) => i,
            None => {
                self.nodes.push(node.to_string());
                outln!();
                self.nodes.len() - 1
            }
        };
        let up = self.nodes.len() - index;
        // Up to the node's line, clear it, write, back down.
        stdout::out!("\x1b[{up}A\r\x1b[2K{line}\x1b[{up}B\r");
    }
}
