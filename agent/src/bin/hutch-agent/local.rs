//! The local admin commands of `hutch-agent`: rootfs, run, ps, logs, exec, stop, kill, wait,
//! rm, over the same runtime library as the service, with no daemon.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use hutch_agent::rootfs::{BuildProgress, RootfsSource};
use hutch_agent::runtime::state::Status;
use hutch_agent::runtime::{ContainerInfo, Runtime, RuntimeError};
use hutch_agent::spec::{parse_namespaces, parse_size, parse_storage_opt, ContainerSpec, IdMap};
use hutch_core::process::{parse_signal, shell_status};

use crate::args::{Command, RootfsCommand, RunArgs};
use crate::EXIT_HUTCH_ERROR;

/// Why a local command failed: the command line, or the runtime.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LocalError {
    /// An argument the runtime was never asked about.
    #[error("{0}")]
    Usage(String),
    /// The runtime refused or failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The rootfs store refused or failed.
    #[error(transparent)]
    Rootfs(#[from] hutch_agent::rootfs::RootfsError),
}

pub(crate) fn usage(message: impl std::fmt::Display) -> LocalError {
    LocalError::Usage(message.to_string())
}

pub(crate) fn spec_of(args: &RunArgs) -> Result<ContainerSpec, LocalError> {
    let mut spec = ContainerSpec::new(args.rootfs.clone(), args.command.clone());
    spec.namespaces = parse_namespaces(&args.ns).map_err(usage)?;
    spec.memory_limit_bytes = args
        .memory
        .as_deref()
        .map(parse_size)
        .transpose()
        .map_err(usage)?;
    spec.memory_swap_limit_bytes = args
        .memory_swap
        .as_deref()
        .map(parse_size)
        .transpose()
        .map_err(usage)?;
    spec.hostname = args.hostname.clone().unwrap_or_default();
    spec.workdir = args.workdir.clone();
    spec.read_only_rootfs = args.read_only;
    for opt in &args.storage_opts {
        spec.disk_limit_bytes = Some(parse_storage_opt(opt).map_err(usage)?);
    }
    spec.stop_grace_seconds = args.stop_grace;
    let mut env = BTreeMap::new();
    for kv in &args.env {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| usage(format!("--env '{kv}' must be KEY=VALUE")))?;
        env.insert(k.to_string(), v.to_string());
    }
    spec.env = env;
    if let Some(map) = &args.uid_map {
        let parts: Vec<u32> = map.split(':').filter_map(|p| p.parse().ok()).collect();
        let [inside, outside, count] = parts[..] else {
            return Err(usage(format!(
                "--uid-map '{map}' must be INSIDE:OUTSIDE:COUNT"
            )));
        };
        spec.uid_map = vec![IdMap {
            inside,
            outside,
            count,
        }];
        spec.gid_map = spec.uid_map.clone();
    }
    Ok(spec)
}

pub(crate) fn exit_code_of(info: &ContainerInfo) -> ExitCode {
    ExitCode::from(
        shell_status(info.state.exit_code, info.state.signal).unwrap_or(EXIT_HUTCH_ERROR),
    )
}

pub(crate) fn print_new_logs(runtime: &Runtime, id: &str, printed: &mut usize) {
    if let Ok(lines) = runtime.logs(id) {
        for line in lines.iter().skip(*printed) {
            let end = if line.full { "\n" } else { "" };
            match line.stream {
                hutch_agent::runtime::logs::Stream::Stdout => print!("{}{end}", line.text),
                hutch_agent::runtime::logs::Stream::Stderr => eprint!("{}{end}", line.text),
            }
        }
        *printed = lines.len();
        let _ = std::io::stdout().flush();
    }
}

pub(crate) fn print_info(info: &ContainerInfo) {
    println!("{}", serde_json::to_string_pretty(info).unwrap_or_default());
    println!("\nNAMESPACE  CONTAINER INODE  HOST INODE  ISOLATED");
    for ns in &info.state.namespaces {
        println!(
            "{:<10} {:<16} {:<11} {}",
            ns.kind.to_string(),
            ns.container_inode,
            ns.host_inode,
            if ns.isolated {
                "yes"
            } else {
                "no (shared with host)"
            }
        );
    }
}

pub(crate) async fn dispatch(runtime: &Runtime, command: Command) -> Result<ExitCode, LocalError> {
    match command {
        Command::Serve(_) => Ok(ExitCode::SUCCESS),
        Command::Rootfs(cmd) => rootfs(runtime, cmd).await,
        Command::Run(args) => {
            let spec = spec_of(&args)?;
            for warning in spec.host_exposure() {
                eprintln!("hutch-agent: warning: {warning}");
            }
            let id = match args.id.clone() {
                Some(id) => id,
                None => {
                    hutch_agent::names::random_container_name().map_err(|e| RuntimeError::Io {
                        path: "/dev/urandom".into(),
                        message: e.to_string(),
                    })?
                }
            };
            let info = runtime.run(&id, spec).await?;
            if args.detach {
                println!("{id}");
                return Ok(ExitCode::SUCCESS);
            }
            let mut printed = 0;
            let wait = runtime.wait(&id);
            tokio::pin!(wait);
            let done = loop {
                tokio::select! {
                    done = &mut wait => break done?,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => print_new_logs(runtime, &id, &mut printed),
                }
            };
            print_new_logs(runtime, &id, &mut printed);
            if done.state.status == Status::OomKilled {
                eprintln!(
                    "hutch-agent: container {id} was OOM-killed (limit {:?} bytes)",
                    info.spec.memory_limit_bytes
                );
            }
            if args.rm {
                runtime.remove(&id, true).await?;
            }
            Ok(exit_code_of(&done))
        }
        Command::Ps => {
            println!(
                "{:<24} {:<10} {:<8} {:<10} COMMAND",
                "ID", "STATUS", "PID", "ROOTFS"
            );
            for c in runtime.list() {
                println!(
                    "{:<24} {:<10} {:<8} {:<10} {}",
                    c.state.id,
                    format!("{:?}", c.state.status).to_lowercase(),
                    c.state.pid.map(|p| p.to_string()).unwrap_or_default(),
                    c.spec.rootfs,
                    c.spec.command.join(" ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect { id } => {
            print_info(&runtime.get(&id)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Logs { id } => {
            let mut printed = 0;
            runtime.get(&id)?;
            print_new_logs(runtime, &id, &mut printed);
            Ok(ExitCode::SUCCESS)
        }
        Command::Exec { id, command } => {
            let out = runtime.exec(&id, command).await?;
            std::io::stdout().write_all(&out.stdout).ok();
            std::io::stderr().write_all(&out.stderr).ok();
            Ok(ExitCode::from(
                shell_status(out.exit_code, out.signal).unwrap_or(EXIT_HUTCH_ERROR),
            ))
        }
        Command::Stop { id, time } => {
            let info = runtime.stop(&id, time.map(Duration::from_secs)).await?;
            println!("{id}: {:?}", info.state.status);
            Ok(ExitCode::SUCCESS)
        }
        Command::Kill { id, signal } => {
            runtime.kill(&id, parse_signal(&signal).map_err(usage)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Wait { id } => Ok(exit_code_of(&runtime.wait(&id).await?)),
        Command::Rm { id, force } => {
            runtime.remove(&id, force).await?;
            println!("{id}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub(crate) fn describe_progress(p: &BuildProgress) -> String {
    let mut s = format!("[{:?}] {}", p.stage, p.message).to_lowercase();
    if let (Some(done), Some(total)) = (p.packages_done, p.packages_total) {
        s = format!("{s} ({done}/{total} packages)");
    } else if let Some(done) = p.packages_done {
        s = format!("{s} ({done} packages)");
    }
    if let (Some(done), Some(total)) = (p.bytes_done, p.bytes_total) {
        s = format!("{s} ({} / {} MiB)", done >> 20, total >> 20);
    }
    s
}

pub(crate) async fn rootfs(runtime: &Runtime, cmd: RootfsCommand) -> Result<ExitCode, LocalError> {
    match cmd {
        RootfsCommand::Build(args) => {
            let args = *args;
            let source = if let Some(reference) = args.image {
                RootfsSource::Image {
                    reference,
                    platform: args.platform,
                    credentials: String::new(),
                }
            } else if let Some(path) = args.tarball {
                RootfsSource::Tarball { path }
            } else if let Some(path) = args.dir {
                RootfsSource::Directory { path }
            } else if let Some(path) = args.initramfs {
                RootfsSource::Initramfs { path }
            } else {
                RootfsSource::Debootstrap {
                    suite: args.suite,
                    variant: args.variant,
                    include: args.include.into_iter().filter(|p| !p.is_empty()).collect(),
                    arch: args.arch,
                    mirror: args.mirror,
                }
            };
            let (tx, mut rx) = tokio::sync::mpsc::channel::<BuildProgress>(64);
            let printer = tokio::spawn(async move {
                // On a terminal the progress line is redrawn in place; elsewhere (logs, CI)
                // each change is a line of its own.
                let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
                let mut last = String::new();
                while let Some(p) = rx.recv().await {
                    let line = describe_progress(&p);
                    if line != last {
                        if tty {
                            eprint!("\r\x1b[K{line}");
                        } else {
                            eprintln!("{line}");
                        }
                        last = line;
                    }
                }
                if tty {
                    eprintln!();
                }
            });
            let started = std::time::Instant::now();
            let result = runtime.store().build(&args.name, &source, Some(tx)).await;
            let _ = printer.await;
            let result = result?;
            println!(
                "rootfs '{}' {:?} in {:.1}s: {} ({} MiB) at {}",
                result.info.name,
                result.outcome,
                started.elapsed().as_secs_f64(),
                result.info.source.describe(),
                result.info.size_bytes >> 20,
                result.info.path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        RootfsCommand::Ls => {
            println!("{:<16} {:<26} {:>9}  SOURCE", "NAME", "KEY", "SIZE MiB");
            for r in runtime.store().list() {
                println!(
                    "{:<16} {:<26} {:>9}  {}",
                    r.name,
                    r.key,
                    r.size_bytes >> 20,
                    r.source.describe()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        RootfsCommand::Inspect { name } => {
            let info = runtime.store().get(&name)?;
            let users = runtime.rootfs_users(&info.key);
            let value = serde_json::json!({ "rootfs": info, "containers": users });
            println!(
                "{}",
                serde_json::to_string_pretty(&value).unwrap_or_default()
            );
            Ok(ExitCode::SUCCESS)
        }
        RootfsCommand::Rm { name } => {
            runtime.remove_rootfs(&name)?;
            println!("{name}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
