//! `hutch stats` (a live table of what containers use, like `docker stats`) and
//! `hutch top` (a container's processes).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use hutch::proto as v1;
use hutch::{human_bytes, Client, Error};
use tokio_stream::StreamExt;

use crate::stdout::{out, outln};
use crate::{output, print_json};

/// How often the live table is drawn again.
const REDRAW: Duration = Duration::from_secs(1);

fn sample_json(u: &v1::ContainerUsage) -> serde_json::Value {
    serde_json::json!({
        "id": u.id,
        "node": u.node,
        "time": output::rfc3339(&u.time),
        "state": output::state_name(u.state),
        "cpu_percent": (u.cpu_percent * 100.0).round() / 100.0,
        "cpu_usage_nanos": u.cpu_usage_nanos,
        "node_cpus": u.node_cpus,
        "memory_usage_bytes": u.memory_usage_bytes,
        "memory_limit_bytes": u.memory_limit_bytes,
        "memory_peak_bytes": u.memory_peak_bytes,
        "pids": u.pids,
        "pids_limit": u.pids_limit,
        "net_rx_bytes": u.net_rx_bytes,
        "net_tx_bytes": u.net_tx_bytes,
        "block_read_bytes": u.block_read_bytes,
        "block_write_bytes": u.block_write_bytes,
        "writable_layer_bytes": u.writable_layer_bytes,
    })
}

fn pair(a: Option<u64>, b: Option<u64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => format!("{} / {}", human_bytes(a), human_bytes(b)),
        _ => "-".into(),
    }
}

fn row(u: &v1::ContainerUsage) -> Vec<String> {
    let limit = u.memory_limit_bytes;
    vec![
        u.id.clone(),
        u.node.clone(),
        format!("{:.2}%", u.cpu_percent),
        format!(
            "{} / {}",
            human_bytes(u.memory_usage_bytes),
            limit.map_or("-".into(), human_bytes)
        ),
        limit.filter(|l| *l > 0).map_or("-".into(), |l| {
            format!("{:.2}%", u.memory_usage_bytes as f64 * 100.0 / l as f64)
        }),
        pair(u.net_rx_bytes, u.net_tx_bytes),
        pair(Some(u.block_read_bytes), Some(u.block_write_bytes)),
        u.pids.to_string(),
        u.writable_layer_bytes.map_or("-".into(), human_bytes),
    ]
}

fn draw(latest: &BTreeMap<String, v1::ContainerUsage>, clear: bool) {
    if clear {
        // As `docker stats`: clear the screen and go home, then the table.
        out!("\x1b[2J\x1b[H");
    }
    output::table(
        &[
            "NAME",
            "NODE",
            "CPU %",
            "MEM USAGE / LIMIT",
            "MEM %",
            "NET I/O",
            "BLOCK I/O",
            "PIDS",
            "LAYER",
        ],
        latest.values().map(row).collect(),
    );
}

/// `hutch stats`.
pub(crate) async fn stats(
    client: &Client,
    ids: Vec<String>,
    stream: bool,
    json: bool,
) -> Result<ExitCode, Error> {
    let mut samples = client.stats(ids, stream).await?;
    let mut latest: BTreeMap<String, v1::ContainerUsage> = BTreeMap::new();
    let terminal = std::io::stdout().is_terminal();
    let mut tick = tokio::time::interval(REDRAW);
    tick.tick().await;
    let mut changed = false;
    loop {
        tokio::select! {
            sample = samples.next() => {
                let Some(sample) = sample else { break };
                let sample = sample?;
                if json && stream {
                    outln!("{}", sample_json(&sample));
                }
                latest.insert(sample.id.clone(), sample);
                changed = true;
            }
            _ = tick.tick(), if stream && !json => {
                if changed {
                    draw(&latest, terminal);
                    if !terminal {
                        outln!();
                    }
                    changed = false;
                }
            }
        }
    }
    if !stream {
        if json {
            let rows: Vec<_> = latest.values().map(sample_json).collect();
            print_json(&rows)?;
        } else {
            draw(&latest, false);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `hutch top`.
pub(crate) async fn top(client: &Client, id: &str, json: bool) -> Result<ExitCode, Error> {
    let processes = client.container(id).processes().await?;
    if json {
        let rows: Vec<_> = processes
            .iter()
            .map(|p| {
                serde_json::json!({
                    "pid": p.pid,
                    "container_pid": p.container_pid,
                    "ppid": p.ppid,
                    "uid": p.uid,
                    "state": p.state,
                    "cpu_millis": p.cpu_millis,
                    "rss_bytes": p.rss_bytes,
                    "started_at": output::rfc3339(&p.started_at),
                    "command": p.command,
                })
            })
            .collect();
        print_json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    output::table(
        &[
            "UID", "PID", "CPID", "PPID", "STAT", "TIME", "RSS", "STARTED", "COMMAND",
        ],
        processes
            .iter()
            .map(|p| {
                let secs = p.cpu_millis / 1000;
                vec![
                    p.uid.to_string(),
                    p.pid.to_string(),
                    p.container_pid.to_string(),
                    p.ppid.to_string(),
                    p.state.clone(),
                    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60),
                    human_bytes(p.rss_bytes),
                    output::ago(&p.started_at),
                    p.command.clone(),
                ]
            })
            .collect(),
    );
    Ok(ExitCode::SUCCESS)
}
