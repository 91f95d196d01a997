//! The cluster commands: nodes, node cordon|uncordon|drain|inspect|rm, token create.

use std::process::ExitCode;

use hutch::{Client, Error};

use crate::args::NodeCommand;
use crate::stdout::outln;
use crate::{output, print_json};

/// `hutch nodes`.
pub(crate) async fn nodes(client: &Client, json: bool) -> Result<ExitCode, Error> {
    let nodes = client.nodes().await?;
    if json {
        print_json(&nodes.iter().map(output::node_json).collect::<Vec<_>>())?;
    } else {
        output::nodes_table(&nodes);
    }
    Ok(ExitCode::SUCCESS)
}

/// `hutch controllers`.
pub(crate) async fn controllers(client: &Client, json: bool) -> Result<ExitCode, Error> {
    let status = client.cluster_status().await?;
    if json {
        let controllers: Vec<serde_json::Value> = status
            .controllers
            .iter()
            .map(|c| {
                serde_json::json!({
                    "id": c.id,
                    "address": c.address,
                    "leader": c.leader,
                    "leader_since": output::rfc3339(&c.leader_since),
                    "started_at": output::rfc3339(&c.started_at),
                })
            })
            .collect();
        print_json(&serde_json::json!({
            "controllers": controllers,
            "answered_by": status.this_controller,
            "store": status.store,
            "store_healthy": status.store_healthy,
            "store_message": status.store_message,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows = status
        .controllers
        .iter()
        .map(|c| {
            vec![
                c.id.clone(),
                c.address.clone(),
                if c.leader { "leader" } else { "follower" }.to_string(),
                if c.leader {
                    output::ago(&c.leader_since)
                } else {
                    "-".into()
                },
                output::ago(&c.started_at),
            ]
        })
        .collect();
    output::table(&["ID", "ADDRESS", "ROLE", "LEADING SINCE", "STARTED"], rows);
    outln!(
        "store: {} ({}{})",
        status.store,
        if status.store_healthy {
            "healthy"
        } else {
            "UNHEALTHY"
        },
        if status.store_message.is_empty() {
            String::new()
        } else {
            format!(": {}", status.store_message)
        }
    );
    if !status.controllers.iter().any(|c| c.leader) {
        eprintln!("hutch: no controller leads right now: writes are refused until one does");
    }
    Ok(ExitCode::SUCCESS)
}

/// `hutch token create`.
pub(crate) async fn create_token(
    client: &Client,
    controller: &str,
    ttl: std::time::Duration,
    description: &str,
    json: bool,
) -> Result<ExitCode, Error> {
    let t = client.create_join_token(Some(ttl), description).await?;
    let expires = t
        .expires_at
        .and_then(|e| std::time::SystemTime::try_from(e).ok())
        .map(|e| humantime::format_rfc3339_seconds(e).to_string())
        .unwrap_or_default();
    if json {
        print_json(&serde_json::json!({
            "token": t.token,
            "id": t.id,
            "expires_at": expires,
            "ca_fingerprint": t.ca_fingerprint,
        }))?;
    } else {
        outln!("{}", t.token);
        eprintln!(
                "join token {} expires {expires}; on each agent host: hutch-agent serve --listen ADDR:7070 --controller {} --join TOKEN",
                t.id, controller
            );
    }
    Ok(ExitCode::SUCCESS)
}

/// `hutch node cordon|uncordon|drain|inspect|rm`.
pub(crate) async fn node(client: &Client, cmd: NodeCommand, json: bool) -> Result<ExitCode, Error> {
    let node = match cmd {
        NodeCommand::Cordon { name } => client.cordon(&name).await?,
        NodeCommand::Uncordon { name } => client.uncordon(&name).await?,
        NodeCommand::Inspect { name } => client.node(&name).await?,
        NodeCommand::Rm { name, force } => {
            let r = client.remove_node(&name, force).await?;
            if !json {
                for c in &r.lost {
                    eprintln!("lost {c}");
                }
                outln!("removed {name}");
                return Ok(ExitCode::SUCCESS);
            }
            r.node.unwrap_or_default()
        }
        NodeCommand::Drain { name } => {
            let r = client.drain(&name).await?;
            if !json {
                for c in &r.containers {
                    outln!("stopped {c}");
                }
            }
            r.node.unwrap_or_default()
        }
    };
    if json {
        print_json(&output::node_json(&node))?;
    } else {
        output::nodes_table(std::slice::from_ref(&node));
    }
    Ok(ExitCode::SUCCESS)
}
