//! The volume commands: create, ls, inspect, rm.

use std::process::ExitCode;

use hutch::proto as v1;
use hutch::spec::parse_pairs;
use hutch::{Client, Error};

use crate::args::VolumeCommand;
use crate::stdout::outln;
use crate::{output, print_json};

fn volume_json(v: &v1::Volume) -> serde_json::Value {
    serde_json::json!({
        "name": v.name,
        "node": v.node,
        "mountpoint": v.mountpoint,
        "labels": v.labels.iter().collect::<std::collections::BTreeMap<_, _>>(),
        "containers": v.containers,
        "created_at": output::rfc3339(&v.created_at),
    })
}

/// `hutch volume ...`.
pub(crate) async fn run(
    client: &Client,
    cmd: VolumeCommand,
    json: bool,
) -> Result<ExitCode, Error> {
    match cmd {
        VolumeCommand::Create { name, node, labels } => {
            let labels = parse_pairs("label", &labels)?;
            let v = client
                .create_volume(&name, node.as_deref().unwrap_or(""), labels)
                .await?;
            if json {
                print_json(&volume_json(&v))?;
            } else {
                outln!("{}", v.name);
            }
            Ok(ExitCode::SUCCESS)
        }
        VolumeCommand::Ls { node, quiet } => {
            let listed = client.volumes(node.as_deref().unwrap_or("")).await?;
            if json {
                let rows: Vec<_> = listed.volumes.iter().map(volume_json).collect();
                print_json(&rows)?;
            } else if quiet {
                for v in &listed.volumes {
                    outln!("{}", v.name);
                }
            } else {
                output::table(
                    &["NODE", "NAME", "CREATED", "USED BY"],
                    listed
                        .volumes
                        .iter()
                        .map(|v| {
                            vec![
                                v.node.clone(),
                                v.name.clone(),
                                output::ago(&v.created_at),
                                if v.containers.is_empty() {
                                    "-".into()
                                } else {
                                    v.containers.join(",")
                                },
                            ]
                        })
                        .collect(),
                );
            }
            for e in &listed.unreachable {
                eprintln!("hutch: node {} did not answer: {}", e.node, e.message);
            }
            Ok(ExitCode::SUCCESS)
        }
        VolumeCommand::Inspect { name, node } => {
            let v = client.volume(&name, node.as_deref().unwrap_or("")).await?;
            if json {
                print_json(&volume_json(&v))?;
            } else {
                let labels: Vec<String> =
                    v.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let rows = [
                    ("name", v.name.clone()),
                    ("node", v.node.clone()),
                    ("mountpoint", v.mountpoint.clone()),
                    (
                        "created",
                        output::rfc3339(&v.created_at).unwrap_or_default(),
                    ),
                    ("labels", labels.join(",")),
                    ("used by", v.containers.join(", ")),
                ];
                for (k, val) in rows {
                    outln!(
                        "{:<12} {}",
                        format!("{k}:"),
                        if val.is_empty() { "-" } else { &val }
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        VolumeCommand::Rm { names, node } => {
            let node = node.unwrap_or_default();
            let node = node.as_str();
            crate::containers::each_reporting(names, |name| async move {
                client.remove_volume(&name, node).await
            })
            .await
        }
    }
}
