//! `hutch`: the command-line tool for a hutch cluster, built on the SDK.
//!
//! Exit codes: 0 success; 2 a usage error (an unknown flag, a missing argument: what the
//! command line's parser catches); 125 hutch itself failed (a value hutch refuses, such as
//! `-m 12Q` or `--ns bogus`, the controller refused or could not be reached; one line on
//! stderr says why); 141 stdout's reader went away (`hutch ps | head -1`), as for `ls`.
//! `hutch run` (without `-d`) and `hutch wait` exit with the container's own code: its exit
//! code, 128 + N when signal N killed it (137 for an OOM kill), 126 when its command could
//! not be run, 127 when it was not found.
//!
//! This file is the wiring: [`args`] is the command line; [`containers`], [`cluster`] and
//! [`rootfs`] are the command groups; [`output`] formats, [`stdout`] writes, [`interactive`]
//! connects a terminal.
#![forbid(unsafe_code)]

mod args;
mod cluster;
mod containers;
mod env_file;
mod interactive;
mod output;
mod prune;
mod ps_view;
mod rootfs;
mod services;
mod stdout;
mod time_arg;
mod usage;
mod volumes;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use hutch::{Client, Error};
use stdout::outln;

use args::{Cli, Command, Output, RootfsCommand, TokenCommand};

/// Exit code when hutch itself failed (as `docker run` uses 125).
pub(crate) const EXIT_HUTCH: u8 = 125;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One thread: a command waits on the network almost all its life, and a second and
    // third thread (their start, and every wake-up crossing between them) cost more than
    // they save (0.2-0.3 ms of every `hutch run` here).
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hutch: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_HUTCH);
        }
    };
    let result = rt.block_on(run(cli));
    // A blocking read of stdin (exec -i) cannot be cancelled: do not wait for it.
    rt.shutdown_background();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hutch: {e}");
            ExitCode::from(EXIT_HUTCH)
        }
    }
}

/// The exit code when stdout's reader went away.
pub(crate) fn broken_pipe() -> ExitCode {
    ExitCode::from(stdout::EXIT_BROKEN_PIPE)
}

pub(crate) fn print_json(value: &impl serde::Serialize) -> Result<(), Error> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::InvalidInput(format!("cannot write JSON: {e}")))?;
    outln!("{text}");
    Ok(())
}

async fn run(cli: Cli) -> Result<ExitCode, Error> {
    if let Command::Completions { shell } = cli.command {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "hutch", &mut script);
        stdout::write(&script);
        return Ok(ExitCode::SUCCESS);
    }
    let tls = match &cli.ca_cert {
        Some(path) => Some(hutch::TlsOptions {
            ca_pem: std::fs::read(path)
                .map_err(|e| Error::InvalidInput(format!("--ca-cert {}: {e}", path.display())))?,
            ..Default::default()
        }),
        None => None,
    };
    let client = Client::connect_with(
        &cli.controller,
        hutch::ClientOptions {
            token: hutch_core::token_file::token_from(cli.token.clone(), cli.token_file.as_deref())
                .map_err(Error::InvalidInput)?,
            tls,
            ..Default::default()
        },
    )
    .await?;
    let json = cli.output == Output::Json;
    match cli.command {
        Command::Run(args) => containers::run(&client, *args, json).await,
        Command::Ps {
            all,
            node,
            labels,
            quiet,
            filters,
            format,
        } => {
            let query = containers::PsQuery {
                all,
                node,
                labels,
                quiet,
                filters,
                format,
            };
            containers::ps(&client, query, json).await
        }
        Command::System(args::SystemCommand::Prune { force, all }) => {
            prune::prune(&client, force, all, json).await
        }
        Command::Inspect { id } => containers::inspect(&client, &id, json).await,
        Command::Logs(args) => {
            let now = std::time::SystemTime::now();
            let time = |flag: &str, t: &Option<String>| {
                t.as_deref()
                    .map(|t| time_arg::parse_time(t, now))
                    .transpose()
                    .map_err(|e| Error::InvalidInput(format!("{flag}: {e}")))
            };
            let options = hutch::LogsOptions {
                follow: args.follow,
                tail: args.tail,
                since: time("--since", &args.since)?,
                until: time("--until", &args.until)?,
                previous: args.previous,
            };
            let shown = containers::LogShape {
                json,
                timestamps: args.timestamps,
            };
            match containers::print_logs(&client.container(&args.id), options, shown).await? {
                containers::Printed::All => Ok(ExitCode::SUCCESS),
                containers::Printed::OutputClosed => Ok(broken_pipe()),
            }
        }
        Command::Exec {
            interactive,
            tty,
            id,
            command,
        } if interactive || tty => {
            containers::exec_session(&client, &id, command, interactive, tty).await
        }
        Command::Exec { id, command, .. } => containers::exec(&client, &id, command, json).await,
        Command::Stop { ids, time } => containers::stop(&client, ids, time, json).await,
        Command::Kill { id, signal } => containers::kill(&client, &id, &signal).await,
        Command::Rm { ids, force } => containers::rm(&client, ids, force).await,
        Command::Attach { id } => containers::attach(&client, &id).await,
        Command::Wait { id } => containers::wait(&client, &id, json).await,
        Command::Events {
            since,
            since_revision,
            filters,
        } => containers::events(&client, since, since_revision, filters, json).await,
        Command::Stats { ids, no_stream } => usage::stats(&client, ids, !no_stream, json).await,
        Command::Top { id } => usage::top(&client, &id, json).await,
        Command::Nodes => cluster::nodes(&client, json).await,
        Command::Controllers => cluster::controllers(&client, json).await,
        Command::Token(TokenCommand::Create { ttl, description }) => {
            cluster::create_token(&client, &cli.controller, ttl, &description, json).await
        }
        Command::Node(cmd) => cluster::node(&client, cmd, json).await,
        Command::Rootfs(RootfsCommand::Build(args)) => rootfs::build(&client, *args, json).await,
        Command::Rootfs(RootfsCommand::Ls { node }) => rootfs::ls(&client, node, json).await,
        Command::Rootfs(RootfsCommand::Rm { name, node }) => rootfs::rm(&client, &name, node).await,
        Command::Rootfs(RootfsCommand::Inspect { name, node }) => {
            rootfs::inspect(&client, &name, node, json).await
        }
        Command::Volume(cmd) => volumes::run(&client, cmd, json).await,
        Command::Apply { file, dry_run } => services::apply(&client, &file, dry_run, json).await,
        Command::Delete { file } => services::delete(&client, &file, json).await,
        Command::Service(cmd) => services::run(&client, cmd, json).await,
        Command::Completions { .. } => Ok(ExitCode::SUCCESS),
    }
}
