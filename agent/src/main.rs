//! `hutch-agent`: the per-host agent. `serve` runs the gRPC service (and, with
//! `--controller`, registers with a controller); the other commands are a local admin tool
//! over the same runtime library: build rootfs, run containers, look inside them, stop and
//! remove them. Configuration is parsed and validated before anything
//! on the host is touched.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use hutch_agent::cgroup::{detect_own_cgroup, CgroupPath};
use hutch_agent::config::{self, AgentConfig, FileConfig};
use hutch_agent::rootfs::{BuildProgress, RootfsSource};
use hutch_agent::runtime::state::Status;
use hutch_agent::runtime::{ContainerInfo, Runtime, RuntimeConfig, RuntimeError};
use hutch_agent::service::auth::Tokens;
use hutch_agent::service::join;
use hutch_agent::service::registration::Registration;
use hutch_agent::service::server::ServeOptions;
use hutch_agent::spec::{parse_namespaces, parse_size, ContainerSpec, IdMap};
use hutch_core::process::{parse_signal, shell_status};
use hutch_pki::material::TlsMaterial;

/// Exit code for errors of hutch itself (as `docker run` uses 125).
const EXIT_HUTCH_ERROR: u8 = 125;
/// Exit code for invalid configuration or arguments.
const EXIT_USAGE: u8 = 2;

#[derive(Parser)]
#[command(
    name = "hutch-agent",
    version,
    about = "hutch's per-host agent: rootfs store, namespaced containers, cgroup memory limits",
    long_about = "hutch's per-host agent. `hutch-agent serve` runs the gRPC service (hutch.v1.Agent); \
the other commands work on this host's containers and rootfs directly.\n\n\
Settings come from flags, then HUTCH_* environment variables, then the TOML file given with \
--config, then defaults."
)]
struct Cli {
    /// TOML config file (keys: listen, state_dir, rootfs_dir, name, cgroup_root,
    /// event_log_keep, memory_reserve).
    #[arg(long, env = "HUTCH_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// State directory: container records, logs, writable layers, event log
    /// [default: /var/lib/hutch].
    #[arg(long, env = "HUTCH_STATE_DIR", global = true)]
    state_dir: Option<PathBuf>,
    /// Rootfs store directory [default: STATE_DIR/rootfs].
    #[arg(long, env = "HUTCH_ROOTFS_DIR", global = true)]
    rootfs_dir: Option<PathBuf>,
    /// Node name; hutch's cgroups live in ROOT/hutch-NAME [default: the host name].
    #[arg(long, alias = "instance", env = "HUTCH_NAME", global = true)]
    name: Option<String>,
    /// Delegated cgroup directory hutch may manage (default: the one the agent runs in),
    /// e.g. /sys/fs/cgroup/system.slice/hutch-agent.service.
    #[arg(long, env = "HUTCH_CGROUP_ROOT", global = true)]
    cgroup_root: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the gRPC API (hutch.v1.Agent, health, reflection) until SIGTERM or SIGINT.
    /// Containers keep running when the agent stops.
    ///
    /// Example: hutch-agent serve --listen 127.0.0.1:7070, then
    /// grpcurl -plaintext 127.0.0.1:7070 hutch.v1.Agent/NodeInfo.
    /// In a cluster: hutch-agent serve --listen 10.0.0.5:7070 --controller 10.0.0.1:7000
    /// --join TOKEN --label zone=a (joins once with a token from `hutch token create`, then
    /// registers, heartbeats, and registers again whenever needed, over mutual TLS).
    Serve(ServeArgs),
    /// Build, list, inspect and remove root filesystems.
    #[command(subcommand)]
    Rootfs(RootfsCommand),
    /// Run a command in a new container.
    ///
    /// Example: hutch-agent run --ns pid,ipc,net,uts,mount --memory 64M debian -- ps -ef
    Run(RunArgs),
    /// List containers.
    Ps,
    /// Show a container's record and its namespace table.
    Inspect {
        /// Container id.
        id: String,
    },
    /// Print a container's stdout and stderr.
    Logs {
        /// Container id.
        id: String,
    },
    /// Run a command inside a running container (e.g. `exec c1 -- ip addr`).
    Exec {
        /// Container id.
        id: String,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Stop a container: SIGTERM, then SIGKILL after the grace period.
    Stop {
        /// Container id.
        id: String,
        /// Grace period in seconds (default: the container's).
        #[arg(long, short = 't')]
        time: Option<u64>,
    },
    /// Send a signal to a container's init.
    Kill {
        /// Container id.
        id: String,
        /// Signal number or name (TERM, KILL, HUP, INT, USR1, USR2).
        #[arg(long, short = 's', default_value = "KILL")]
        signal: String,
    },
    /// Wait for a container to end; exits with its exit code.
    Wait {
        /// Container id.
        id: String,
    },
    /// Remove a container's state, logs and writable layer.
    Rm {
        /// Container id.
        id: String,
        /// Kill it first if it is running.
        #[arg(long, short = 'f')]
        force: bool,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:7070]; port 0 picks a free port (printed).
    #[arg(long, env = "HUTCH_LISTEN")]
    listen: Option<String>,
    /// Serve plaintext gRPC on a non-loopback address without having joined a cluster
    /// with TLS (whoever reaches the agent can then run containers as root). Logs a warning.
    #[arg(long, env = "HUTCH_INSECURE")]
    insecure: bool,
    /// Join the cluster with this token (from `hutch token create` on the controller): the
    /// agent gets a node certificate, keeps it in STATE_DIR/tls, and from then on serves
    /// and registers over mutual TLS. Ignored once the agent has joined.
    #[arg(
        long = "join",
        env = "HUTCH_JOIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    join_token: Option<String>,
    /// Requests worked on at once; more are answered RESOURCE_EXHAUSTED at once instead of
    /// queueing [default: 512].
    #[arg(long, env = "HUTCH_MAX_CONCURRENT_REQUESTS")]
    max_concurrent_requests: Option<usize>,
    /// Requests one client address may have in flight; more from it are answered
    /// RESOURCE_EXHAUSTED at once [default: 256].
    #[arg(long, env = "HUTCH_MAX_REQUESTS_PER_CLIENT")]
    max_requests_per_client: Option<usize>,
    /// Longest a request may take to be answered (streams: until their first answer), e.g.
    /// 30s; 0 for no limit; beyond it DEADLINE_EXCEEDED [default: 10m].
    #[arg(long, env = "HUTCH_REQUEST_TIMEOUT")]
    request_timeout: Option<String>,
    /// Require bearer tokens: a file of `TOKEN,NAME,ROLE` lines naming who may drive this
    /// agent (the controller's --agent-token as admin, local administrators). Without it
    /// every caller is let through (fine on loopback).
    #[arg(long, env = "HUTCH_TOKENS_FILE")]
    tokens_file: Option<PathBuf>,
    /// Events kept in the log before compaction [default: 10000].
    #[arg(long, env = "HUTCH_EVENT_LOG_KEEP")]
    event_log_keep: Option<usize>,
    /// Memory kept back for the host, not promised to containers [default: 256MiB].
    #[arg(long, env = "HUTCH_MEMORY_RESERVE")]
    memory_reserve: Option<String>,
    /// Register with this controller and heartbeat to it, e.g. http://127.0.0.1:7000.
    /// Without it the agent stands alone.
    #[arg(long, env = "HUTCH_CONTROLLER")]
    controller: Option<String>,
    /// Bearer token for the controller, when it requires tokens (a `node` token from its
    /// tokens file).
    #[arg(long, env = "HUTCH_CONTROLLER_TOKEN", hide_env_values = true)]
    controller_token: Option<String>,
    /// HOST:PORT the controller dials to reach this agent [default: the listen address].
    #[arg(long, env = "HUTCH_ADVERTISE")]
    advertise: Option<String>,
    /// Node label for placement selectors, KEY=VALUE; repeat for several
    /// (e.g. --label zone=a --label disk=ssd).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
}

#[derive(Subcommand)]
enum RootfsCommand {
    /// Build a rootfs (cached: the same source is built once).
    ///
    /// Default: Debian bookworm minbase with procps and iproute2 from the host's apt mirror.
    /// Examples: `rootfs build debian`, `rootfs build --tarball /tmp/alpine.tar.gz alpine`,
    /// `rootfs build --initramfs /boot/initrd.img-$(uname -r) initrd`.
    Build(BuildArgs),
    /// List rootfs.
    Ls,
    /// Show one rootfs as JSON.
    Inspect {
        /// Rootfs name.
        name: String,
    },
    /// Remove a rootfs (refused while containers use it).
    Rm {
        /// Rootfs name.
        name: String,
    },
}

#[derive(Args)]
struct BuildArgs {
    /// Name to give the rootfs.
    #[arg(default_value = "debian")]
    name: String,
    /// debootstrap suite (codename).
    #[arg(long, default_value = "bookworm")]
    suite: String,
    /// debootstrap variant (minbase, buildd, fakechroot; empty for the default).
    #[arg(long, default_value = "minbase")]
    variant: String,
    /// Extra packages, comma-separated.
    #[arg(long, default_value = "procps,iproute2", value_delimiter = ',')]
    include: Vec<String>,
    /// Architecture (default: the host's).
    #[arg(long, default_value = "")]
    arch: String,
    /// Mirror URL (default: the first Debian archive in the host's apt sources).
    #[arg(long, default_value = "")]
    mirror: String,
    /// Build from a local .tar, .tar.gz or .tar.zst instead.
    #[arg(long, conflicts_with_all = ["dir", "initramfs"])]
    tarball: Option<PathBuf>,
    /// Copy a local directory instead.
    #[arg(long, conflicts_with_all = ["tarball", "initramfs"])]
    dir: Option<PathBuf>,
    /// Extract a cpio/initramfs image instead.
    #[arg(long, conflicts_with_all = ["tarball", "dir"])]
    initramfs: Option<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    /// Container id (default: generated).
    #[arg(long)]
    id: Option<String>,
    /// Namespaces of its own, comma-separated: pid,ipc,net,uts,mount,user,cgroup.
    #[arg(long, default_value = "pid,ipc,net,uts,mount")]
    ns: String,
    /// Memory limit, e.g. 1000000, 64M, 1GiB.
    #[arg(long, short = 'm')]
    memory: Option<String>,
    /// Memory + swap limit.
    #[arg(long)]
    memory_swap: Option<String>,
    /// Hostname (needs the uts namespace; default: the id).
    #[arg(long)]
    hostname: Option<String>,
    /// Environment variable K=V (repeatable).
    #[arg(long, short = 'e')]
    env: Vec<String>,
    /// Working directory inside.
    #[arg(long, short = 'w', default_value = "")]
    workdir: String,
    /// Mount the rootfs read-only.
    #[arg(long)]
    read_only: bool,
    /// uid map INSIDE:OUTSIDE:COUNT for the user namespace (default 0:100000:65536).
    #[arg(long)]
    uid_map: Option<String>,
    /// Seconds between SIGTERM and SIGKILL on stop.
    #[arg(long, default_value_t = 10)]
    stop_grace: u32,
    /// Return after start instead of waiting for the end.
    #[arg(long, short = 'd')]
    detach: bool,
    /// Remove the container after it ends.
    #[arg(long)]
    rm: bool,
    /// Rootfs name.
    rootfs: String,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn main() -> ExitCode {
    hutch_server::logging::init("warn");
    let cli = Cli::parse();
    // Everything is parsed and validated before the host is touched or a port bound.
    let config = match load_config(&cli) {
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
        cgroup_root: config.cgroup_root.clone(),
        instance: config.agent.name.clone(),
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
            (Command::Serve(_), None, Some(token)) => match join_node(&config.agent, token).await {
                Ok(tls) => Some(tls),
                Err(code) => return code,
            },
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
                serve(runtime.clone(), &config.agent, config.tokens.clone(), tls).await
            }
            command => match dispatch(&runtime, command).await {
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

/// The resolved configuration and the cgroup root it names.
struct Loaded {
    agent: AgentConfig,
    /// The tokens of `tokens_file`, read with the rest of the configuration.
    tokens: Option<Arc<Tokens>>,
    /// The node certificate from an earlier join (serving only).
    tls: Option<TlsMaterial>,
    cgroup_root: Option<CgroupPath>,
}

fn load_config(cli: &Cli) -> Result<Loaded, String> {
    let file = match &cli.config {
        Some(path) => config::read_file(path).map_err(|e| e.to_string())?,
        None => FileConfig::default(),
    };
    let serve = match &cli.command {
        Command::Serve(s) => Some(s),
        _ => None,
    };
    let over = FileConfig {
        listen: serve.and_then(|s| s.listen.clone()),
        state_dir: cli.state_dir.clone(),
        rootfs_dir: cli.rootfs_dir.clone(),
        name: cli.name.clone(),
        cgroup_root: cli.cgroup_root.clone(),
        event_log_keep: serve.and_then(|s| s.event_log_keep),
        memory_reserve: serve.and_then(|s| s.memory_reserve.clone()),
        controller: serve.and_then(|s| s.controller.clone()),
        advertise: serve.and_then(|s| s.advertise.clone()),
        labels: match serve {
            Some(s) if !s.labels.is_empty() => Some(parse_labels(&s.labels)?),
            _ => None,
        },
        insecure: serve.and_then(|s| s.insecure.then_some(true)),
        controller_token: serve.and_then(|s| s.controller_token.clone()),
        max_concurrent_requests: serve.and_then(|s| s.max_concurrent_requests),
        max_requests_per_client: serve.and_then(|s| s.max_requests_per_client),
        request_timeout: serve.and_then(|s| s.request_timeout.clone()),
        tokens_file: serve.and_then(|s| s.tokens_file.clone()),
        join_token: serve.and_then(|s| s.join_token.clone()),
    };
    let agent = config::resolve(over, file).map_err(|e| e.to_string())?;
    let cgroup_root = agent
        .cgroup_root
        .as_deref()
        .map(cgroup_path_of)
        .transpose()?;
    let tokens = agent
        .tokens_file
        .as_deref()
        .map(Tokens::load)
        .transpose()?
        .map(Arc::new);
    let tls = match serve {
        Some(_) => {
            let tls = join::load(&agent.state_dir)
                .map_err(|e| format!("{e} (the node certificate of an earlier join)"))?;
            agent
                .check_transport(tls.is_some())
                .map_err(|e| e.to_string())?;
            tls
        }
        None => None,
    };
    Ok(Loaded {
        agent,
        tokens,
        tls,
        cgroup_root,
    })
}

/// Joins the cluster of `config.controller` with `token`; on failure, says why and gives the
/// exit code.
async fn join_node(config: &AgentConfig, token: &str) -> Result<TlsMaterial, ExitCode> {
    let controller = config.controller.as_deref().unwrap_or_default();
    match join::join(controller, &config.name, token, &config.state_dir).await {
        Ok(tls) => {
            eprintln!(
                "hutch-agent: joined the cluster of {controller}: node certificate {}, kept in {}",
                tls.describe(),
                join::tls_dir(&config.state_dir).display()
            );
            Ok(tls)
        }
        Err(e) => {
            eprintln!("hutch-agent: cannot join: {e}");
            Err(ExitCode::from(match e {
                join::JoinError::BadToken(_) | join::JoinError::Refused(_) => EXIT_USAGE,
                join::JoinError::Unreachable(_) => EXIT_HUTCH_ERROR,
            }))
        }
    }
}

async fn serve(
    runtime: Arc<Runtime>,
    config: &AgentConfig,
    tokens: Option<Arc<Tokens>>,
    tls: Option<TlsMaterial>,
) -> ExitCode {
    let (listener, addr) =
        match hutch_agent::service::server::bind(config.listen, tls.is_some()).await {
            Ok(bound) => bound,
            Err(e) => {
                eprintln!("hutch-agent: {e}");
                return ExitCode::from(EXIT_HUTCH_ERROR);
            }
        };
    // The address stays last on the line: scripts and tests read it from there.
    println!(
        "hutch-agent {} ({}) listening on {addr}",
        config.name,
        if tls.is_some() {
            "mutual TLS"
        } else {
            "plaintext"
        }
    );
    let _ = std::io::stdout().flush();
    let shutdown = hutch_agent::service::server::shutdown_signal();
    let options = ServeOptions {
        runtime,
        node: config.name.clone(),
        event_keep: config.event_log_keep,
        memory_reserve_bytes: config.memory_reserve_bytes,
        limits: config.limits,
        tokens,
        tls,
        registration: config.controller.clone().map(|controller| Registration {
            controller,
            advertise: if config.listen.port() == 0 {
                addr.clone()
            } else {
                config.advertise.clone()
            },
            labels: config.labels.clone(),
            token: config.controller_token.clone(),
        }),
    };
    match hutch_agent::service::server::serve(options, listener, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hutch-agent: {e}");
            ExitCode::from(EXIT_HUTCH_ERROR)
        }
    }
}

/// `KEY=VALUE` arguments as a map.
fn parse_labels(args: &[String]) -> Result<BTreeMap<String, String>, String> {
    args.iter()
        .map(|a| {
            a.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| format!("--label {a}: expected KEY=VALUE"))
        })
        .collect()
}

/// Turns a cgroup directory into a [`CgroupPath`] on the hierarchy hutch uses.
fn cgroup_path_of(dir: &std::path::Path) -> Result<CgroupPath, String> {
    let own = detect_own_cgroup().map_err(|e| e.to_string())?;
    let relative = dir.strip_prefix(&own.mount).map_err(|_| {
        format!(
            "--cgroup-root {} is not below the {} memory hierarchy at {}",
            dir.display(),
            own.version,
            own.mount.display()
        )
    })?;
    Ok(CgroupPath {
        relative: relative.to_path_buf(),
        ..own
    })
}

/// Why a local command failed: the command line, or the runtime.
#[derive(Debug, thiserror::Error)]
enum LocalError {
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

fn usage(message: impl std::fmt::Display) -> LocalError {
    LocalError::Usage(message.to_string())
}

fn spec_of(args: &RunArgs) -> Result<ContainerSpec, LocalError> {
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

fn exit_code_of(info: &ContainerInfo) -> ExitCode {
    ExitCode::from(
        shell_status(info.state.exit_code, info.state.signal).unwrap_or(EXIT_HUTCH_ERROR),
    )
}

fn print_new_logs(runtime: &Runtime, id: &str, printed: &mut usize) {
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

fn print_info(info: &ContainerInfo) {
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

async fn dispatch(runtime: &Runtime, command: Command) -> Result<ExitCode, LocalError> {
    match command {
        Command::Serve(_) => Ok(ExitCode::SUCCESS),
        Command::Rootfs(cmd) => rootfs(runtime, cmd).await,
        Command::Run(args) => {
            let spec = spec_of(&args)?;
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

fn describe_progress(p: &BuildProgress) -> String {
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

async fn rootfs(runtime: &Runtime, cmd: RootfsCommand) -> Result<ExitCode, LocalError> {
    match cmd {
        RootfsCommand::Build(args) => {
            let source = if let Some(path) = args.tarball {
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
