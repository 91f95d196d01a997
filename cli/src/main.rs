//! `hutch`: the command-line tool for a hutch cluster, built on the SDK.
//!
//! Exit codes: 0 success; 2 a usage error (an unknown flag, a missing argument: what the
//! command line's parser catches); 125 hutch itself failed (a value hutch refuses, such as
//! `-m 12Q` or `--ns bogus`, the controller refused or could not be reached; one line on
//! stderr says why); 141 stdout's reader went away (`hutch ps | head -1`), as for `ls`.
//! `hutch run` (without `-d`) and `hutch wait` exit with the container's own code: its exit
//! code, 128 + N when signal N killed it (137 for an OOM kill), 126 when its command could
//! not be run, 127 when it was not found.

mod interactive;
mod output;
mod stdout;

use stdout::outln;

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use hutch::proto as v1;
use hutch::spec::parse_pairs;
use hutch::{Client, ContainerSpec, Error, RestartPolicy};
use tokio_stream::StreamExt;

/// Exit code when hutch itself failed (as `docker run` uses 125).
const EXIT_HUTCH: u8 = 125;

#[derive(Parser)]
#[command(
    name = "hutch",
    version,
    about = "Run and manage containers on a hutch cluster",
    long_about = "Run and manage containers on a hutch cluster, through its controller.\n\n\
Examples:\n  hutch run --rm debian -- ps -ef\n  hutch run -d --name web --memory 64M debian -- sleep infinity\n  \
hutch exec web -- ip addr\n  hutch ps\n  hutch nodes\n\n\
Exit codes: 0 success; 2 usage error (unknown flag, missing argument); 125 hutch failed \
(a refused value such as -m 12Q, or the controller's refusal; one line on stderr says why); \
141 stdout closed (| head); `run` and `wait` exit with the container's code (128+N for signal N, 137 for an OOM kill, \
126 command not runnable, 127 command not found)."
)]
struct Cli {
    /// The controller's URL.
    #[arg(
        long,
        global = true,
        env = "HUTCH_CONTROLLER",
        default_value = "http://127.0.0.1:7000"
    )]
    controller: String,
    /// Bearer token, when the controller requires one (its --tokens-file).
    #[arg(long, global = true, env = "HUTCH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The cluster CA (PEM), for a controller that serves TLS: its DATA_DIR/tls/ca.crt.
    /// Connects over https.
    #[arg(long, global = true, env = "HUTCH_CA_CERT", value_name = "FILE")]
    ca_cert: Option<std::path::PathBuf>,
    /// Output format: `table` for people, `json` for programs (stable field names).
    #[arg(long, short = 'o', global = true, value_enum, default_value = "table")]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Create a container and run it; prints its output and exits with its exit code.
    ///
    /// Example: hutch run --rm --memory 1M --ns pid,ipc,net,uts,mount debian -- ps -ef
    Run(Box<RunArgs>),
    /// List containers (running and pending; -a for all).
    ///
    /// Example: hutch ps -a --node lab-1
    Ps {
        /// All containers, also ended ones.
        #[arg(long, short = 'a')]
        all: bool,
        /// Only containers on this node.
        #[arg(long)]
        node: Option<String>,
        /// Only containers with this label (KEY=VALUE, repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// Show a container's record and its namespace table (container inode, host inode,
    /// isolated).
    Inspect {
        /// Container id.
        id: String,
    },
    /// Print a container's output.
    ///
    /// Example: hutch logs -f --tail 20 web
    Logs {
        /// Container id.
        id: String,
        /// Keep printing new lines until the container ends.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<u32>,
    },
    /// Run a command inside a running container (its namespaces, cgroup and root).
    ///
    /// Example: hutch exec web -- ps -ef; a shell in it: hutch exec -it web -- /bin/bash
    Exec {
        /// Keep stdin open and send it to the command.
        #[arg(long, short = 'i')]
        interactive: bool,
        /// Run the command on a terminal (raw mode here; Ctrl-C goes to the command).
        #[arg(long, short = 't')]
        tty: bool,
        /// Container id.
        id: String,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Stop containers: SIGTERM, then SIGKILL after the grace period. They are not restarted.
    Stop {
        /// Container ids.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Grace period in seconds (default: the container's own, 10 unless set).
        #[arg(long, short = 't')]
        time: Option<u32>,
    },
    /// Send a signal to a container.
    Kill {
        /// Container id.
        id: String,
        /// Signal name or number (TERM, KILL, HUP, INT, USR1, USR2, QUIT, or 1-64).
        #[arg(long, short = 's', default_value = "KILL")]
        signal: String,
    },
    /// Remove containers (from the controller and their node).
    Rm {
        /// Container ids.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Also when running (it is killed).
        #[arg(long, short = 'f')]
        force: bool,
    },
    /// Attach this terminal to a container started with -t (Ctrl-P Ctrl-Q detaches; the
    /// container keeps running). Exits with its exit code when it ends.
    ///
    /// Example: hutch run -d -it --name shell debian -- /bin/bash; hutch attach shell
    Attach {
        /// Container id.
        id: String,
    },
    /// Wait until a container ends; exits with its exit code.
    Wait {
        /// Container id.
        id: String,
    },
    /// Print every change of every container (replay from --since, then live).
    Events {
        /// Start after this revision (0: everything still kept).
        #[arg(long, default_value_t = 0)]
        since: u64,
    },
    /// List the nodes: state, address, running containers, memory, rootfs, labels.
    Nodes,
    /// Join tokens: what agents join the cluster with (`hutch-agent serve --join TOKEN`).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage one node.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Build and list root filesystems on the nodes.
    #[command(subcommand)]
    Rootfs(RootfsCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    ///
    /// Example: hutch completions bash > /etc/bash_completion.d/hutch
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Name (unique in the cluster); generated when not given.
    #[arg(long)]
    name: Option<String>,
    /// Return once it runs and print its id instead of its output.
    #[arg(long, short = 'd')]
    detach: bool,
    /// Remove the container when it ends.
    #[arg(long)]
    rm: bool,
    /// Keep stdin open and send it to the container (needs -t).
    #[arg(long, short = 'i')]
    interactive: bool,
    /// Run the command on a terminal and attach this one to it (raw mode; Ctrl-C goes to
    /// the container; Ctrl-P Ctrl-Q detaches).
    #[arg(long, short = 't')]
    tty: bool,
    /// Memory limit: 1000000, 64M, 512MiB, 1G.
    #[arg(long, short = 'm')]
    memory: Option<String>,
    /// Namespaces of its own, comma separated: names or unshare's letters (p,i,n,u,m,U,C;
    /// u is uts, U is user) [default: pid,ipc,net,uts,mount].
    #[arg(long)]
    ns: Option<String>,
    /// Run on exactly this node.
    #[arg(long)]
    node: Option<String>,
    /// Run only on nodes with this label (KEY=VALUE, repeatable).
    #[arg(long = "selector", value_name = "KEY=VALUE")]
    selectors: Vec<String>,
    /// Restart policy: never, on-failure, on-failure:N, always.
    #[arg(long, default_value = "never")]
    restart: String,
    /// Environment variable (KEY=VALUE, repeatable).
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Label (KEY=VALUE, repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Hostname [default: the container's name].
    #[arg(long)]
    hostname: Option<String>,
    /// Working directory inside.
    #[arg(long, short = 'w')]
    workdir: Option<String>,
    /// Mount the rootfs read-only.
    #[arg(long)]
    read_only: bool,
    /// Add a capability to the default set (NET_ADMIN, SYS_TIME, ...; ALL), repeatable.
    #[arg(long = "cap-add", value_name = "CAP")]
    cap_add: Vec<String>,
    /// Remove a capability from the default set (ALL for every one), repeatable.
    #[arg(long = "cap-drop", value_name = "CAP")]
    cap_drop: Vec<String>,
    /// seccomp=unconfined: run without the default seccomp filter; seccomp=FILE: use the
    /// seccomp profile in FILE (Docker's JSON format, without argument conditions) instead.
    #[arg(long = "security-opt", value_name = "OPT")]
    security_opt: Vec<String>,
    /// Most processes and threads inside [default: 1024; 0: no limit].
    #[arg(long)]
    pids_limit: Option<u32>,
    /// Run as UID[:GID] (numbers; GID defaults to UID) instead of root.
    #[arg(long, short = 'u', value_name = "UID[:GID]")]
    user: Option<String>,
    /// Every capability, no seccomp filter, /proc and /sys unmasked: for containers that
    /// manage the host. Use with care.
    #[arg(long)]
    privileged: bool,
    /// The rootfs (see `hutch rootfs ls`).
    rootfs: String,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a join token; prints it alone on stdout (so `TOKEN=$(hutch token create)`).
    /// The controller must serve TLS, and the caller be an admin.
    ///
    /// Example: hutch-agent serve --listen 10.0.0.5:7070 --controller 10.0.0.1:7000
    /// --join "$(hutch token create --ttl 15m)"
    Create {
        /// How long agents may join with it (e.g. 15m, 2h; at most 7d).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        /// What it is for, kept with the token.
        #[arg(long, default_value = "")]
        description: String,
    },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Stop placing containers on the node.
    Cordon {
        /// Node name.
        name: String,
    },
    /// Place containers on the node again.
    Uncordon {
        /// Node name.
        name: String,
    },
    /// Cordon the node and stop its containers; restartable ones move to other nodes.
    Drain {
        /// Node name.
        name: String,
    },
    /// Show one node.
    Inspect {
        /// Node name.
        name: String,
    },
}

#[derive(Subcommand)]
enum RootfsCommand {
    /// Build (or find cached) a rootfs on the nodes, with progress per node.
    ///
    /// Example: hutch rootfs build --suite bookworm --include procps,iproute2 debian
    Build(Box<BuildArgs>),
    /// List the rootfs of every node (or one).
    Ls {
        /// Only this node.
        #[arg(long)]
        node: Option<String>,
    },
    /// Remove a rootfs from every node (or one); refused where containers use it.
    Rm {
        /// Name of the rootfs.
        name: String,
        /// Only from this node.
        #[arg(long)]
        node: Option<String>,
    },
}

#[derive(Args)]
struct BuildArgs {
    /// Name of the rootfs.
    name: String,
    /// Only on this node [default: every ready node].
    #[arg(long)]
    node: Option<String>,
    /// Only on nodes with this label (KEY=VALUE, repeatable).
    #[arg(long = "selector", value_name = "KEY=VALUE")]
    selectors: Vec<String>,
    /// debootstrap suite.
    #[arg(long, default_value = "bookworm")]
    suite: String,
    /// debootstrap variant.
    #[arg(long, default_value = "minbase")]
    variant: String,
    /// Extra packages, comma separated.
    #[arg(long, default_value = "procps,iproute2")]
    include: String,
    /// Debian mirror [default: the node's apt sources].
    #[arg(long)]
    mirror: Option<String>,
    /// Build from a tarball on the nodes instead.
    #[arg(long, conflicts_with = "directory", conflicts_with = "initramfs")]
    tarball: Option<String>,
    /// Build from a directory on the nodes instead.
    #[arg(long, conflicts_with = "initramfs")]
    directory: Option<String>,
    /// Build from a cpio/initramfs image on the nodes instead.
    #[arg(long)]
    initramfs: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
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
fn broken_pipe() -> ExitCode {
    ExitCode::from(stdout::EXIT_BROKEN_PIPE)
}

fn print_json(value: &impl serde::Serialize) -> Result<(), Error> {
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
            token: cli.token.clone(),
            tls,
            ..Default::default()
        },
    )
    .await?;
    let json = cli.output == Output::Json;
    match cli.command {
        Command::Run(args) => run_container(&client, *args, json).await,
        Command::Ps { all, node, labels } => {
            let mut list = client
                .list(v1::ListClusterContainersRequest {
                    node: node.unwrap_or_default(),
                    state: 0,
                    labels: parse_pairs("label", &labels)?,
                })
                .await?;
            if !all {
                list.retain(|c| !hutch::is_final(c.state));
            }
            if json {
                print_json(&list.iter().map(output::container_json).collect::<Vec<_>>())?;
            } else {
                output::containers_table(&list);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect { id } => {
            let c = client.get(&id).await?;
            if json {
                print_json(&output::container_json(&c))?;
            } else {
                output::container_details(&c);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Logs { id, follow, tail } => {
            print_logs(&client.container(&id), follow, tail, json).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Exec {
            interactive,
            tty,
            id,
            command,
        } if interactive || tty => {
            let size = tty.then(interactive::terminal_size);
            let session = client.container(&id).exec_session(command, size).await?;
            let raw = if tty {
                interactive::RawMode::enable()?
            } else {
                None
            };
            let ended = interactive::run(session, tty, interactive, false).await;
            drop(raw);
            match ended? {
                interactive::Ended::Exit(code, signal) => {
                    Ok(ExitCode::from(exit_code_of(code, signal)))
                }
                interactive::Ended::Detached => Ok(ExitCode::SUCCESS),
                interactive::Ended::OutputClosed => Ok(broken_pipe()),
            }
        }
        Command::Exec { id, command, .. } => {
            let out = client.container(&id).exec(command).await?;
            if json {
                print_json(&serde_json::json!({
                    "stdout": String::from_utf8_lossy(&out.stdout),
                    "stderr": String::from_utf8_lossy(&out.stderr),
                    "exit_code": out.exit_code,
                    "signal": out.signal,
                }))?;
            } else {
                stdout::write(&out.stdout);
                let _ = std::io::stderr().write_all(&out.stderr);
            }
            Ok(ExitCode::from(exit_code_of(out.exit_code, out.signal)))
        }
        Command::Stop { ids, time } => {
            for id in ids {
                let c = client.container(&id).stop(time).await?;
                if json {
                    print_json(&output::container_json(&c))?;
                } else {
                    outln!("{id}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Kill { id, signal } => {
            client.container(&id).kill(parse_signal(&signal)?).await?;
            outln!("{id}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Rm { ids, force } => {
            for id in ids {
                client.container(&id).remove(force).await?;
                outln!("{id}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Attach { id } => {
            let container = client.container(&id);
            let stdin = container.info().await?.spec.is_some_and(|s| s.stdin);
            attach_terminal(&container, stdin, false).await
        }
        Command::Wait { id } => {
            let end = client.container(&id).wait().await?;
            if json {
                print_json(&output::container_json(&end))?;
            } else {
                outln!("{}", end.exit_code.map_or("-".into(), |c| c.to_string()));
            }
            Ok(ExitCode::from(final_code(&end)))
        }
        Command::Events { since } => {
            let mut stream = client.watch(since).await?;
            while let Some(e) = stream.next().await {
                let e = e?;
                let Some(c) = e.container else { continue };
                if json {
                    let kind = v1::WatchEventType::try_from(e.r#type)
                        .map(|t| {
                            t.as_str_name()
                                .trim_start_matches("WATCH_EVENT_TYPE_")
                                .to_ascii_lowercase()
                        })
                        .unwrap_or_default();
                    outln!(
                        "{}",
                        serde_json::json!({"revision": e.revision, "type": kind, "container": output::container_json(&c)})
                    );
                } else {
                    outln!(
                        "{:>6}  {:<20} {:<10} {:<12} {}",
                        e.revision,
                        c.name,
                        output::state_name(c.state),
                        if c.node.is_empty() { "-" } else { &c.node },
                        c.status_message
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Nodes => {
            let nodes = client.nodes().await?;
            if json {
                print_json(&nodes.iter().map(output::node_json).collect::<Vec<_>>())?;
            } else {
                output::nodes_table(&nodes);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Token(TokenCommand::Create { ttl, description }) => {
            let t = client.create_join_token(Some(ttl), &description).await?;
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
                    t.id, cli.controller
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Node(cmd) => {
            let node = match cmd {
                NodeCommand::Cordon { name } => client.cordon(&name).await?,
                NodeCommand::Uncordon { name } => client.uncordon(&name).await?,
                NodeCommand::Inspect { name } => client.node(&name).await?,
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
        Command::Rootfs(RootfsCommand::Build(args)) => build_rootfs(&client, *args, json).await,
        Command::Rootfs(RootfsCommand::Ls { node }) => {
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
        Command::Rootfs(RootfsCommand::Rm { name, node }) => {
            let r = client
                .remove_rootfs(&name, node.as_deref().unwrap_or(""))
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
        Command::Completions { .. } => Ok(ExitCode::SUCCESS),
    }
}

fn spec_of(args: &RunArgs) -> Result<ContainerSpec, Error> {
    let mut spec = ContainerSpec::new(args.rootfs.clone())
        .command(args.command.clone())
        .restart(args.restart.parse::<RestartPolicy>()?);
    if let Some(n) = &args.name {
        spec = spec.name(n.clone());
    }
    if let Some(m) = &args.memory {
        spec = spec.memory(m);
    }
    if let Some(ns) = &args.ns {
        let list = hutch::parse_namespaces(ns).map_err(|e| Error::InvalidInput(e.to_string()))?;
        spec = spec.namespaces(list);
    }
    if let Some(n) = &args.node {
        spec = spec.node(n.clone());
    }
    for (k, v) in parse_pairs("selector", &args.selectors)? {
        spec = spec.selector(k, v);
    }
    for (k, v) in parse_pairs("env", &args.env)? {
        spec = spec.env(k, v);
    }
    for (k, v) in parse_pairs("label", &args.labels)? {
        spec = spec.label(k, v);
    }
    if let Some(h) = &args.hostname {
        spec = spec.hostname(h.clone());
    }
    if let Some(w) = &args.workdir {
        spec = spec.workdir(w.clone());
    }
    if args.read_only {
        spec = spec.read_only();
    }
    for cap in &args.cap_add {
        spec = spec.cap_add(cap.clone());
    }
    for cap in &args.cap_drop {
        spec = spec.cap_drop(cap.clone());
    }
    for opt in &args.security_opt {
        match opt.split_once('=') {
            Some(("seccomp", "unconfined")) => spec = spec.seccomp_unconfined(),
            Some(("seccomp", file)) => {
                let profile = std::fs::read_to_string(file).map_err(|e| {
                    Error::InvalidInput(format!("--security-opt seccomp={file}: {e}"))
                })?;
                spec = spec.seccomp_profile(profile);
            }
            _ => {
                return Err(Error::InvalidInput(format!(
                    "unknown --security-opt '{opt}': use seccomp=unconfined or seccomp=PROFILE.json"
                )))
            }
        }
    }
    if let Some(limit) = args.pids_limit {
        spec = spec.pids_limit(limit);
    }
    if let Some(user) = &args.user {
        let (uid, gid) = parse_user(user)?;
        spec = spec.user(uid, gid);
    }
    if args.privileged {
        spec = spec.privileged();
    }
    if args.tty {
        spec = spec.tty();
    }
    if args.interactive {
        if !args.tty {
            return Err(Error::InvalidInput(
                "-i needs -t: attaching is offered on a terminal only (use -it)".into(),
            ));
        }
        spec = spec.stdin();
    }
    Ok(spec)
}

/// `hutch run`: create, wait until it runs (saying why while it is PENDING), stream its
/// output until it ends, exit with its code.
async fn run_container(client: &Client, args: RunArgs, json: bool) -> Result<ExitCode, Error> {
    let spec = spec_of(&args)?;
    let (container, _) = client.create(&spec).await?;
    // Until it runs on a node: report why it waits.
    let mut events = container.events().await?;
    let mut said = String::new();
    let mut started = None;
    while let Some(c) = events.next().await {
        let c = c?;
        let state = v1::ContainerState::try_from(c.state).unwrap_or_default();
        match state {
            v1::ContainerState::Pending if c.status_message != said => {
                eprintln!("hutch: waiting: {}", c.status_message);
                said = c.status_message.clone();
            }
            v1::ContainerState::Running => {
                started = Some(c);
                break;
            }
            _ if hutch::is_final(c.state) => {
                started = Some(c);
                break;
            }
            _ => {}
        }
    }
    drop(events);
    let Some(started) = started else {
        return Err(Error::Status(tonic::Status::unavailable(
            "the controller stopped answering before the container started",
        )));
    };
    if args.detach && !hutch::is_final(started.state) {
        // Like `docker run -d`: back once it runs.
        if json {
            print_json(&output::container_json(&container.info().await?))?;
        } else {
            outln!("{}", container.id());
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.tty && !hutch::is_final(started.state) {
        return attach_terminal(&container, args.interactive, args.rm).await;
    }
    let failed_to_start = started.state == v1::ContainerState::Failed as i32 && started.pid == 0;
    if !failed_to_start {
        print_logs(&container, true, None, json).await?;
    }
    let end = if hutch::is_final(started.state) {
        started
    } else {
        container.wait().await?
    };
    if let Some(f) = &end.failure {
        eprintln!(
            "hutch: container {} failed at {}: {}",
            end.name, f.step, f.message
        );
    } else if end.oom_killed {
        eprintln!(
            "hutch: container {} was OOM-killed (memory limit {})",
            end.name,
            end.spec
                .as_ref()
                .and_then(|s| s.memory_limit_bytes)
                .map_or("none".into(), hutch::human_bytes)
        );
    } else if end.state == v1::ContainerState::Lost as i32 {
        eprintln!(
            "hutch: container {} was lost: {}",
            end.name, end.status_message
        );
    }
    let code = final_code(&end);
    if args.rm {
        container.remove(true).await?;
    }
    Ok(ExitCode::from(code))
}

/// Attaches the local terminal to the container's (raw mode while attached) until it ends
/// (its exit code is returned) or the user detaches.
async fn attach_terminal(
    container: &hutch::Container,
    forward_stdin: bool,
    remove: bool,
) -> Result<ExitCode, Error> {
    let session = container.attach(Some(interactive::terminal_size())).await?;
    let raw = interactive::RawMode::enable()?;
    let ended = interactive::run(session, true, forward_stdin, true).await;
    drop(raw);
    match ended? {
        interactive::Ended::Detached => {
            eprintln!(
                "hutch: detached from {}; it keeps running (hutch attach {0})",
                container.id()
            );
            Ok(ExitCode::SUCCESS)
        }
        interactive::Ended::OutputClosed => Ok(broken_pipe()),
        interactive::Ended::Exit(..) => {
            // The record has the whole story (OOM, signal): use it for the exit code.
            let end = container.wait().await?;
            if remove {
                container.remove(true).await?;
            }
            Ok(ExitCode::from(final_code(&end)))
        }
    }
}

/// Prints log lines: stdout lines to stdout, stderr lines to stderr (JSON: one object per
/// line).
async fn print_logs(
    container: &hutch::Container,
    follow: bool,
    tail: Option<u32>,
    json: bool,
) -> Result<(), Error> {
    let mut stream = container.logs(follow, tail).await?;
    let mut err = std::io::stderr();
    while let Some(entry) = stream.next().await {
        let entry = entry?;
        let is_err = entry.stream == v1::LogStream::Stderr as i32;
        if json {
            let line = serde_json::json!({
                "stream": if is_err { "stderr" } else { "stdout" },
                "line": entry.line,
                "partial": entry.partial,
            });
            outln!("{line}");
            continue;
        }
        let mut line = entry.line.into_bytes();
        if !entry.partial {
            line.push(b'\n');
        }
        if is_err {
            let _ = err.write_all(&line);
            let _ = err.flush();
        } else {
            stdout::write(&line);
        }
    }
    Ok(())
}

/// The shell's view of an ended container.
fn final_code(c: &v1::Container) -> u8 {
    if let Some(f) = &c.failure {
        return match f.step.as_str() {
            "exec"
                if ["No such file", "not found", "does not exist"]
                    .iter()
                    .any(|m| f.message.contains(m)) =>
            {
                127
            }
            "exec" => 126,
            _ => EXIT_HUTCH,
        };
    }
    if c.state == v1::ContainerState::Lost as i32 {
        return EXIT_HUTCH;
    }
    exit_code_of(c.exit_code, c.signal)
}

fn exit_code_of(code: Option<i32>, signal: Option<i32>) -> u8 {
    hutch_core::process::shell_status(code, signal).unwrap_or(EXIT_HUTCH)
}

/// `UID` or `UID:GID`, numbers.
fn parse_user(text: &str) -> Result<(u32, Option<u32>), Error> {
    let bad = || {
        Error::InvalidInput(format!(
            "--user {text}: expected UID or UID:GID, numbers (e.g. 1000:1000)"
        ))
    };
    let (uid, gid) = match text.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (text, None),
    };
    let uid = uid.parse().map_err(|_| bad())?;
    let gid = gid.map(|g| g.parse().map_err(|_| bad())).transpose()?;
    Ok((uid, gid))
}

fn parse_signal(s: &str) -> Result<i32, Error> {
    hutch_core::process::parse_signal(s).map_err(|e| Error::InvalidInput(e.to_string()))
}

/// `hutch rootfs build`: one progress line per node and stage, then each node's result.
async fn build_rootfs(client: &Client, args: BuildArgs, json: bool) -> Result<ExitCode, Error> {
    use v1::rootfs_spec::Source;
    let source = if let Some(t) = args.tarball {
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
                let line = format!("{}: {}{count} {}", msg.node, p.stage, p.message);
                if let Some(board) = board.as_mut() {
                    board.show(&msg.node, line.trim_end());
                    continue;
                }
                // Not a terminal: one line per change of stage or count.
                let key = format!("{}{count}", p.stage);
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
