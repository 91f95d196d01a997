//! `hutch-agent`: the per-host agent. `serve` runs the gRPC service (and, with
//! `--controller`, registers with a controller); the other commands are a local admin tool
//! over the same runtime library: build rootfs, run containers, look inside them, stop and
//! remove them. Configuration is parsed and validated before anything on the host is
//! touched.
//!
//! This file is the wiring: [`args`] is the command line, [`daemon`] the `serve` command,
//! [`local`] the local admin commands.

mod args;
mod daemon;
mod local;

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use hutch_agent::runtime::{Runtime, RuntimeConfig};

use args::{Cli, Command};

/// Exit code for errors of hutch itself (as `docker run` uses 125).
const EXIT_HUTCH_ERROR: u8 = 125;
/// Exit code for invalid configuration or arguments.
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    hutch_server::logging::init("warn", cli.log_format);
    // Everything is parsed and validated before the host is touched or a port bound.
    let config = match daemon::load_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hutch-agent: invalid configuration: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime_config = RuntimeConfig {
        state_dir: config.agent.state_dir.clone(),
        rootfs_dir: config.agent.rootfs_dir.clone(),
        supervisor_bin: None,
        supervisor_zygote: true,
        cgroup_root: config.cgroup_root.clone(),
        instance: config.agent.name.clone(),
        log_defaults: config.agent.log_defaults,
        network: config.agent.network.clone(),
        allowed_bind_paths: config.agent.allowed_bind_paths.clone(),
        images: config.agent.images.clone(),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hutch-agent: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_HUTCH_ERROR);
        }
    };
    rt.block_on(async move {
        // Joining comes first: a refused join must leave nothing on the host (the runtime
        // makes the node's cgroups).
        let tls = match (&cli.command, config.tls.clone(), &config.agent.join_token) {
            (Command::Serve(_), Some(tls), Some(_)) => {
                eprintln!(
                    "hutch-agent: already joined ({}); --join ignored",
                    tls.describe()
                );
                Some(tls)
            }
            (Command::Serve(_), None, Some(token)) => {
                match daemon::join_node(&config.agent, token).await {
                    Ok(tls) => Some(tls),
                    Err(code) => return code,
                }
            }
            (_, tls, _) => tls,
        };
        let runtime = match Runtime::new(runtime_config) {
            Ok(r) => Arc::new(r),
            Err(e) => {
                eprintln!("hutch-agent: {e}");
                return ExitCode::from(EXIT_HUTCH_ERROR);
            }
        };
        let code = match cli.command {
            Command::Serve(_) => {
                daemon::serve(runtime.clone(), &config.agent, config.tokens.clone(), tls).await
            }
            command => match local::dispatch(&runtime, command).await {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("hutch-agent: {e}");
                    ExitCode::from(EXIT_HUTCH_ERROR)
                }
            },
        };
        runtime.close();
        code
    })
}
