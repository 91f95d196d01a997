//! `hutch-bench`: hutch side by side with runc and containerd in one run, on this machine.
//! See `bench/README.md`; `scripts/bench.sh` builds and runs it.

mod cli;
mod crosshost;
mod density;
mod explain;
mod ha;
mod images;
mod metrics;
mod network;
mod report;
mod scale;
mod scenarios;
mod services;
mod setup;
mod tls;

use std::process::ExitCode;

use clap::Parser;

const ALL: [&str; 17] = [
    "start-latency",
    "cli-latency",
    "start-latency-net",
    "throughput-net",
    "tcp-cross-host",
    "agent-latency",
    "throughput",
    "density",
    "rootfs-size",
    "scheduler",
    "watch-fanout",
    "controller-scale",
    "tls",
    "metrics",
    "ha",
    "rootfs-image",
    "service-apply",
];

#[derive(Parser)]
#[command(
    name = "hutch-bench",
    about = "hutch side by side with runc and containerd, in one run on this machine",
    long_about = "Runs the scenarios (all when none is named): start-latency, cli-latency, start-latency-net, throughput-net, \
tcp-cross-host, agent-latency, \
throughput, density, rootfs-size, scheduler, watch-fanout, controller-scale, tls, metrics, ha, rootfs-image, service-apply. Prints one table: scenario, metric, hutch, peer, ratio, target, pass. \
Ratios matter more than absolute figures on a shared machine.\n\n\
Example: scripts/bench.sh start-latency scheduler"
)]
struct Cli {
    /// Scenarios to run [default: all].
    scenarios: Vec<String>,
    /// Print the rows as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// A quick run (few repetitions) that checks the harness works; figures are not
    /// meaningful. CI runs this.
    #[arg(long)]
    smoke: bool,
    /// Also print where the time of a start goes, hop by hop (client, controller, agent,
    /// supervisor, init, watch), as medians over start-latency's starts; needs start-latency
    /// among the scenarios (the default runs all).
    #[arg(long)]
    explain: bool,
    /// Internal: run this network scenario here (the harness starts itself so inside
    /// network and mount namespaces of its own) and print its rows as JSON.
    #[arg(long, hide = true)]
    inner_net: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    for s in &cli.scenarios {
        if !ALL.contains(&s.as_str()) {
            eprintln!(
                "hutch-bench: unknown scenario '{s}': choose from {}",
                ALL.join(", ")
            );
            return ExitCode::from(2);
        }
    }
    let wanted: Vec<&str> = if cli.scenarios.is_empty() {
        ALL.to_vec()
    } else {
        cli.scenarios.iter().map(String::as_str).collect()
    };
    if cli.explain && !wanted.contains(&"start-latency") {
        eprintln!("hutch-bench: --explain breaks down start-latency's starts: name start-latency too (or no scenario, for all)");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hutch-bench: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(scenario) = &cli.inner_net {
        return match rt.block_on(network::inner(scenario, cli.smoke)) {
            Ok(rows) => match serde_json::to_string(&rows) {
                Ok(t) => {
                    println!("{t}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("hutch-bench: {e}");
                    ExitCode::from(1)
                }
            },
            Err(e) => {
                eprintln!("hutch-bench: {scenario}: {e}");
                ExitCode::from(1)
            }
        };
    }
    match rt.block_on(run(&wanted, cli.smoke, cli.explain)) {
        Ok(rows) => {
            if cli.json {
                match serde_json::to_string_pretty(&rows) {
                    Ok(t) => println!("{t}"),
                    Err(e) => eprintln!("hutch-bench: {e}"),
                }
            } else {
                report::print_table(&rows);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hutch-bench: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run(wanted: &[&str], smoke: bool, explain: bool) -> Result<Vec<report::Row>, String> {
    let (runs, count, requests) = if smoke {
        (5, 20, 10_000)
    } else {
        (200, 1000, 100_000)
    };
    let (dense, idle) = if smoke { (5, 2) } else { (500, 10) };
    let (sim_nodes, records) = if smoke { (20, 100) } else { (5000, 100_000) };
    let needs_env = wanted
        .iter()
        .any(|w| *w != "scheduler" && !network::SCENARIOS.contains(w));
    let env = if needs_env {
        Some(setup::BenchEnv::start().await?)
    } else {
        None
    };
    let mut rows = Vec::new();
    for w in wanted {
        eprintln!("bench: {w} ...");
        let found = match (*w, env.as_ref()) {
            ("scheduler", _) => scenarios::scheduler(requests, if smoke { 1 } else { 5 }),
            (w, _) if network::SCENARIOS.contains(&w) => network::isolated(w, smoke)?,
            ("tcp-cross-host", Some(env)) => crosshost::tcp_cross_host(env, smoke)?,
            ("start-latency", Some(env)) => scenarios::start_latency(env, runs, explain).await?,
            ("cli-latency", Some(env)) => cli::cli_latency(env, (runs / 4).max(3)).await?,
            ("agent-latency", Some(env)) => scenarios::agent_latency(env, runs).await?,
            ("throughput", Some(env)) => scenarios::throughput(env, count).await?,
            ("rootfs-size", Some(env)) => scenarios::rootfs_size(env, runs).await?,
            ("watch-fanout", Some(env)) => scenarios::watch_fanout(env, 100, count).await?,
            ("density", Some(env)) => {
                density::density(env, dense, std::time::Duration::from_secs(idle)).await?
            }
            ("tls", Some(env)) => tls::tls_overhead(env, runs).await?,
            ("metrics", Some(env)) => metrics::metrics_cost(env, runs, dense).await?,
            ("ha", Some(env)) => {
                let kills = if smoke { 2 } else { 10 };
                // On etcd, the size controller-scale had before it grew to the issue's.
                let (ha_nodes, ha_records) = if smoke { (20, 100) } else { (1000, 10_000) };
                ha::ha(env, runs.min(100), kills, ha_nodes, ha_records).await?
            }
            ("rootfs-image", Some(env)) => {
                images::rootfs_image(env, runs.min(100), if smoke { 1 } else { 3 }).await?
            }
            ("service-apply", Some(env)) => {
                services::service_apply(env, if smoke { 10 } else { 100 }).await?
            }
            ("controller-scale", Some(env)) => {
                scale::controller_scale(env, sim_nodes, records).await?
            }
            _ => Vec::new(),
        };
        rows.extend(found);
    }
    Ok(rows)
}
