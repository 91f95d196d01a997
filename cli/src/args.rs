//! The command line of `hutch`: global flags, the commands and their arguments.

use clap::{Args, Parser, Subcommand, ValueEnum};

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
pub(crate) struct Cli {
    /// The controller's URL, or every controller of a cluster on etcd, comma-separated:
    /// calls go to the leader and follow it when another controller takes over.
    ///
    /// Example: hutch --controller 198.18.0.1:7000,198.18.0.2:7000,198.18.0.3:7000 ps
    #[arg(
        long,
        global = true,
        env = "HUTCH_CONTROLLER",
        default_value = "http://127.0.0.1:7000"
    )]
    pub(crate) controller: String,
    /// Bearer token, when the controller requires one (its --tokens-file). A flag shows in
    /// `ps` to every user of this host: prefer HUTCH_TOKEN or --token-file.
    #[arg(long, global = true, env = "HUTCH_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// File holding the bearer token (one line).
    #[arg(
        long,
        global = true,
        env = "HUTCH_TOKEN_FILE",
        conflicts_with = "token"
    )]
    pub(crate) token_file: Option<std::path::PathBuf>,
    /// The cluster CA (PEM), for a controller that serves TLS: its DATA_DIR/tls/ca.crt.
    /// Connects over https.
    #[arg(long, global = true, env = "HUTCH_CA_CERT", value_name = "FILE")]
    pub(crate) ca_cert: Option<std::path::PathBuf>,
    /// Output format: `table` for people, `json` for programs (stable field names).
    #[arg(long, short = 'o', global = true, value_enum, default_value = "table")]
    pub(crate) output: Output,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
pub(crate) enum Command {
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
        /// Only their ids, one per line (for scripts: hutch rm -f $(hutch ps -aq)).
        #[arg(long, short = 'q')]
        quiet: bool,
        /// Only containers matching KEY=VALUE, repeatable: status=STATE, name=PART,
        /// node=NAME, label=KEY[=VALUE], health=starting|healthy|unhealthy (values of one
        /// key are alternatives; keys must all match).
        ///
        /// Example: hutch ps -a --filter status=exited --filter status=failed
        #[arg(long = "filter", short = 'f', value_name = "KEY=VALUE")]
        filters: Vec<String>,
        /// Print each container through a template: {{.ID}}, {{.Names}}, {{.Node}},
        /// {{.State}}, {{.Status}}, {{.Image}}, {{.Command}}, {{.CreatedAt}}, {{.IP}},
        /// {{.Health}}, {{.Labels}}; \t is a tab.
        ///
        /// Example: hutch ps --format '{{.ID}}\t{{.Node}}\t{{.State}}'
        #[arg(long, value_name = "TEMPLATE")]
        format: Option<String>,
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
    Logs(LogsArgs),
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
    /// Remove containers (from the controller and their node); goes on past one that
    /// cannot be removed, and exits 125 if any could not.
    ///
    /// Example: hutch rm -f web db cache
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
    /// Wait until a container ends; prints and exits with its code (128+N when signal N
    /// ended it, as a shell reports it).
    ///
    /// Example: hutch wait web; echo $?
    Wait {
        /// Container id.
        id: String,
    },
    /// Show what containers use, live like `docker stats`: CPU %, memory, network, block
    /// I/O, processes, writable layer; every running container when none is named.
    ///
    /// Example: hutch stats --no-stream -o json web
    Stats {
        /// Container ids [default: every running container].
        ids: Vec<String>,
        /// One sample (CPU % over half a second), then exit.
        #[arg(long)]
        no_stream: bool,
    },
    /// List the processes of a running container (its pids on the node and inside).
    ///
    /// Example: hutch top web
    Top {
        /// Container id.
        id: String,
    },
    /// Print every change of every container (replay from --since, then live).
    Events {
        /// Only changes at or after this time: a duration back from now (10m), an RFC 3339
        /// time or Unix seconds.
        ///
        /// Example: hutch events --since 10m --filter container=web --filter state=exited
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Start after this revision, to resume where an earlier watch stopped (0:
        /// everything still kept).
        ///
        /// Example: hutch -o json events --since-revision 1042
        #[arg(long, default_value_t = 0, value_name = "REVISION")]
        since_revision: u64,
        /// Only changes matching KEY=VALUE, repeatable (values of one key are alternatives):
        /// container=NAME, node=NAME, state=STATE (pending, scheduled, preparing, running,
        /// exited, oom_killed, failed, lost).
        ///
        /// Example: hutch events --filter node=n2 --filter state=lost
        #[arg(long = "filter", value_name = "KEY=VALUE")]
        filters: Vec<String>,
    },
    /// List the nodes: state, address, running containers, memory, rootfs, labels.
    Nodes,
    /// List the controllers: which one leads and since when, and the store's health
    /// (`-o json` has a `leader` field per controller).
    Controllers,
    /// Join tokens: what agents join the cluster with (`hutch-agent serve --join TOKEN`).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage one node.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Build and list root filesystems on the nodes.
    #[command(subcommand)]
    Rootfs(RootfsCommand),
    /// Named volumes: directories a node keeps across containers (-v NAME:/path).
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Create or update the services a TOML file declares ([[service]] tables), all or
    /// none; changed templates roll their replicas over. --dry-run shows what would change.
    ///
    /// Example: hutch apply -f app.toml --dry-run
    Apply {
        /// The service file.
        #[arg(long = "file", short = 'f', value_name = "FILE")]
        file: std::path::PathBuf,
        /// Only show what would change (created, updated with a diff, unchanged).
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete the services a file declares (their replicas are stopped and removed).
    ///
    /// Example: hutch delete -f app.toml
    Delete {
        /// The service file.
        #[arg(long = "file", short = 'f', value_name = "FILE")]
        file: std::path::PathBuf,
    },
    /// Services: replicas of one template kept running, spread over nodes, one name.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Cluster-wide housekeeping.
    #[command(subcommand)]
    System(SystemCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    ///
    /// Example: hutch completions bash > /etc/bash_completion.d/hutch
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Args)]
pub(crate) struct RunArgs {
    /// Name (unique in the cluster); generated when not given.
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// Return once it runs and print its id instead of its output.
    #[arg(long, short = 'd')]
    pub(crate) detach: bool,
    /// Remove the container when it ends.
    #[arg(long)]
    pub(crate) rm: bool,
    /// Keep stdin open and send it to the container (needs -t).
    #[arg(long, short = 'i')]
    pub(crate) interactive: bool,
    /// Run the command on a terminal and attach this one to it (raw mode; Ctrl-C goes to
    /// the container; Ctrl-P Ctrl-Q detaches).
    #[arg(long, short = 't')]
    pub(crate) tty: bool,
    /// Memory limit: 1000000, 64M, 512MiB, 1G.
    #[arg(long, short = 'm')]
    pub(crate) memory: Option<String>,
    /// CPU limit in CPUs, as Docker's: at most that much CPU time (e.g. 0.5, 1.5); the
    /// scheduler places it where that much CPU is not yet promised.
    ///
    /// Example: hutch run --rm --cpus 0.5 debian -- sh -c 'while :; do :; done'
    #[arg(long, value_name = "CPUS")]
    pub(crate) cpus: Option<String>,
    /// CPU weight under contention, 2 to 262144 (1024 is a container's by default).
    ///
    /// Example: hutch run -d --cpu-shares 512 debian -- nice-to-others
    #[arg(long, value_name = "SHARES")]
    pub(crate) cpu_shares: Option<u32>,
    /// Namespaces of its own, comma separated: names or unshare's letters (p,i,n,u,m,U,C;
    /// u is uts, U is user) [default: pid,ipc,net,uts,mount].
    #[arg(long)]
    pub(crate) ns: Option<String>,
    /// Run on exactly this node.
    #[arg(long)]
    pub(crate) node: Option<String>,
    /// Run only on nodes with this label (KEY=VALUE, repeatable).
    #[arg(long = "selector", value_name = "KEY=VALUE")]
    pub(crate) selectors: Vec<String>,
    /// Network: bridge (an address of the node's subnet, reachable from every node of the
    /// cluster), none (only lo: unshare -n), host (the host's network, no net namespace)
    /// [default: bridge where the node has a network, else none].
    #[arg(long, value_name = "bridge|none|host")]
    pub(crate) network: Option<String>,
    /// Publish a port of the node to the container: [IP:]HOSTPORT:CTRPORT[/tcp|udp],
    /// repeatable (bridge mode).
    #[arg(
        long = "publish",
        short = 'p',
        value_name = "[IP:]HOSTPORT:CTRPORT[/PROTO]"
    )]
    pub(crate) publish: Vec<String>,
    /// Mount a node path or a named volume: SOURCE:TARGET[:ro], repeatable. An absolute
    /// SOURCE binds that path of the node (its agent must list it in --allowed-bind-paths);
    /// any other SOURCE names a volume of the node, made on first use and kept after the
    /// container (the container runs on the node that holds it).
    ///
    /// Example: hutch run -v data:/data -v /srv/site:/site:ro debian -- ls /data /site
    #[arg(long = "volume", short = 'v', value_name = "SOURCE:TARGET[:ro]")]
    pub(crate) volumes: Vec<String>,
    /// Mount, as Docker spells it: type=bind|volume|tmpfs,source=...,target=...[,readonly]
    /// (tmpfs: tmpfs-size=, tmpfs-mode=), repeatable.
    ///
    /// Example: hutch run --mount type=bind,source=/srv/site,target=/site,readonly debian -- ls /site
    #[arg(long = "mount", value_name = "type=...,source=...,target=...")]
    pub(crate) mounts: Vec<String>,
    /// Mount a fresh tmpfs, gone with the container: TARGET[:size=SIZE,mode=OCTAL,noexec],
    /// repeatable.
    ///
    /// Example: hutch run --tmpfs /scratch:size=64m debian -- df -h /scratch
    #[arg(long = "tmpfs", value_name = "TARGET[:OPTIONS]")]
    pub(crate) tmpfs: Vec<String>,
    /// A check run inside the container (with /bin/sh -c) every --health-interval: exit 0
    /// is healthy. ps shows the health; with a restart policy, an unhealthy container is
    /// stopped and started again.
    ///
    /// Example: hutch run -d --restart on-failure --health-cmd 'curl -fs localhost' --health-interval 5s web-image -- serve
    #[arg(long, value_name = "COMMAND")]
    pub(crate) health_cmd: Option<String>,
    /// Between checks [default: 30s].
    ///
    /// Example: hutch run -d --health-cmd 'pgrep nginx' --health-interval 10s web -- nginx
    #[arg(long, value_name = "DURATION", requires = "health_cmd")]
    pub(crate) health_interval: Option<String>,
    /// A check running longer has failed [default: 30s].
    ///
    /// Example: hutch run -d --health-cmd 'curl -fs localhost' --health-timeout 2s web -- serve
    #[arg(long, value_name = "DURATION", requires = "health_cmd")]
    pub(crate) health_timeout: Option<String>,
    /// Failed checks in a row that make it unhealthy [default: 3].
    ///
    /// Example: hutch run -d --health-cmd 'test -e /ready' --health-retries 5 app -- start
    #[arg(long, value_name = "N", requires = "health_cmd")]
    pub(crate) health_retries: Option<u32>,
    /// Failed checks in this time after the start do not count [default: 0s].
    ///
    /// Example: hutch run -d --health-cmd 'test -e /ready' --health-start-period 1m db -- start
    #[arg(long, value_name = "DURATION", requires = "health_cmd")]
    pub(crate) health_start_period: Option<String>,
    /// Restart policy: never, on-failure, on-failure:N, always.
    #[arg(long, default_value = "never")]
    pub(crate) restart: String,
    /// Environment variable (KEY=VALUE, repeatable).
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    pub(crate) env: Vec<String>,
    /// Read environment variables from FILE (KEY=VALUE lines, # comments; a bare KEY takes
    /// this shell's value), repeatable; -e wins over a file.
    ///
    /// Example: hutch run --env-file app.env debian -- env
    #[arg(long = "env-file", value_name = "FILE")]
    pub(crate) env_files: Vec<std::path::PathBuf>,
    /// Label (KEY=VALUE, repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub(crate) labels: Vec<String>,
    /// Hostname [default: the container's name].
    #[arg(long)]
    pub(crate) hostname: Option<String>,
    /// Working directory inside.
    #[arg(long, short = 'w')]
    pub(crate) workdir: Option<String>,
    /// Mount the rootfs read-only.
    #[arg(long)]
    pub(crate) read_only: bool,
    /// Storage option, as Docker spells it: size=SIZE limits what the container may write
    /// to its writable layer (e.g. size=1G; at least 8M); beyond, writes fail with ENOSPC.
    #[arg(long = "storage-opt", value_name = "size=SIZE")]
    pub(crate) storage_opts: Vec<String>,
    /// Log option, as Docker spells them: max-size=SIZE (largest log file before it is
    /// rotated, e.g. 10m) and max-file=N (files kept); repeatable. Default: the agent's
    /// (10 MiB, 5 files).
    #[arg(long = "log-opt", value_name = "max-size=SIZE|max-file=N")]
    pub(crate) log_opts: Vec<String>,
    /// Add a capability to the default set (NET_ADMIN, SYS_TIME, ...; ALL), repeatable.
    #[arg(long = "cap-add", value_name = "CAP")]
    pub(crate) cap_add: Vec<String>,
    /// Remove a capability from the default set (ALL for every one), repeatable.
    #[arg(long = "cap-drop", value_name = "CAP")]
    pub(crate) cap_drop: Vec<String>,
    /// seccomp=unconfined: run without the default seccomp filter; seccomp=FILE: use the
    /// seccomp profile in FILE (Docker's JSON format, without argument conditions) instead.
    #[arg(long = "security-opt", value_name = "OPT")]
    pub(crate) security_opt: Vec<String>,
    /// Most processes and threads inside [default: 1024; 0: no limit].
    #[arg(long)]
    pub(crate) pids_limit: Option<u32>,
    /// Run as a user instead of root: UID[:GID] (numbers; GID defaults to UID), or
    /// NAME[:GROUP] looked up in the rootfs's /etc/passwd and /etc/group.
    ///
    /// Example: hutch run --rm -u nobody debian -- id
    #[arg(long, short = 'u', value_name = "USER[:GROUP]")]
    pub(crate) user: Option<String>,
    /// Every capability, no seccomp filter, /proc and /sys unmasked: for containers that
    /// manage the host. Use with care.
    #[arg(long)]
    pub(crate) privileged: bool,
    /// Run this program instead of the image's Entrypoint ("" clears it); the command
    /// becomes its arguments and the image's Cmd is not used.
    ///
    /// Example: hutch run --rm --entrypoint /bin/ls busybox -- -l /
    #[arg(long, value_name = "PROGRAM")]
    pub(crate) entrypoint: Option<String>,
    /// The rootfs (see `hutch rootfs ls`), or an image reference that the node imports
    /// first unless it has it: oci:DIR[:TAG], oci-archive:FILE[:TAG],
    /// docker-archive:FILE, docker://HOST[:PORT]/REPO[:TAG].
    ///
    /// Example: hutch run --rm docker://127.0.0.1:5000/busybox:latest -- sh -c 'echo hi'
    pub(crate) rootfs: String,
    /// The command and its arguments; optional with an image whose Entrypoint or Cmd
    /// gives one.
    #[arg(last = true)]
    pub(crate) command: Vec<String>,
}

#[derive(Subcommand)]
pub(crate) enum TokenCommand {
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
pub(crate) enum NodeCommand {
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
    /// Forget a node that is gone: its block of the container network is released and every
    /// other node drops its route. Refused while it is alive or holds containers.
    ///
    /// Example: hutch node rm n3          (after its agent stopped and it shows DOWN)
    ///          hutch node rm --force n3  (its containers become LOST)
    #[command(visible_alias = "remove")]
    Rm {
        /// Node name.
        name: String,
        /// Remove it even while it is alive or holds containers; an agent still running
        /// there registers again as a new node.
        #[arg(short, long)]
        force: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum SystemCommand {
    /// Remove what nothing uses: ended containers and volumes no container uses; with
    /// --all also rootfs no container uses (on every node). Asks first unless --force.
    ///
    /// Example: hutch system prune --force
    Prune {
        /// Do not ask.
        #[arg(long, short = 'f')]
        force: bool,
        /// Also rootfs no container uses.
        #[arg(long, short = 'a')]
        all: bool,
    },
}

/// `hutch logs`.
#[derive(Args)]
pub(crate) struct LogsArgs {
    /// Container id.
    pub(crate) id: String,
    /// Keep printing new lines until the container ends.
    #[arg(long, short = 'f')]
    pub(crate) follow: bool,
    /// Only the last N lines.
    #[arg(long)]
    pub(crate) tail: Option<u32>,
    /// Only lines written at or after TIME: a duration back from now (10m, 1h30m), an RFC
    /// 3339 time (2026-11-30T10:00:00Z) or Unix seconds.
    ///
    /// Example: hutch logs --since 10m --until 5m -t web
    #[arg(long, value_name = "TIME")]
    pub(crate) since: Option<String>,
    /// Only lines written at or before TIME (same forms as --since).
    ///
    /// Example: hutch logs --since 2026-11-30T10:00:00Z --until 2026-11-30T10:05:00Z web
    #[arg(long, value_name = "TIME")]
    pub(crate) until: Option<String>,
    /// Show the time each line was written (RFC 3339, nanoseconds) before it.
    ///
    /// Example: hutch logs -t --tail 5 web
    #[arg(long, short = 't')]
    pub(crate) timestamps: bool,
    /// The previous run of a restarted container (its node keeps one).
    ///
    /// Example: hutch logs --previous crashy
    #[arg(long, short = 'p')]
    pub(crate) previous: bool,
}

#[derive(Subcommand)]
pub(crate) enum ServiceCommand {
    /// List the services with their replica counts and rollout state.
    ///
    /// Example: hutch service ls
    #[command(visible_alias = "list")]
    Ls,
    /// Show a service: its spec, revision, address, status and replicas.
    ///
    /// Example: hutch service inspect web
    Inspect {
        /// The service.
        name: String,
    },
    /// Change a service's replica count.
    ///
    /// Example: hutch service scale web 6
    Scale {
        /// The service.
        name: String,
        /// How many replicas.
        replicas: u32,
    },
    /// Bring back the template the service had before its last change (also resumes a
    /// paused rolling update).
    ///
    /// Example: hutch service rollback web
    Rollback {
        /// The service.
        name: String,
    },
    /// Print the output of every replica, each line prefixed by its replica.
    ///
    /// Example: hutch service logs -f web
    Logs {
        /// Keep following new output.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Only the last N lines of each replica.
        #[arg(long, value_name = "N")]
        tail: Option<u32>,
        /// The service.
        name: String,
    },
    /// Delete a service; its replicas are stopped and removed.
    ///
    /// Example: hutch service rm web
    #[command(visible_alias = "delete")]
    Rm {
        /// The service.
        name: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum VolumeCommand {
    /// Create a named volume on a node (the scheduler picks one unless --node is given).
    /// `hutch run -v NAME:/path` also creates it, on the node the container runs on.
    ///
    /// Example: hutch volume create --node n1 --label team=db pgdata
    Create {
        /// Name of the volume: letters, digits, '_', '.', '-'.
        name: String,
        /// On this node.
        #[arg(long)]
        node: Option<String>,
        /// Label (KEY=VALUE, repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// List the volumes of every ready node (or one).
    ///
    /// Example: hutch volume ls --node n1
    #[command(visible_alias = "list")]
    Ls {
        /// Only this node.
        #[arg(long)]
        node: Option<String>,
        /// Only their names, one per line.
        #[arg(long, short = 'q')]
        quiet: bool,
    },
    /// Show a volume: its node, where its data is, labels and the containers using it.
    ///
    /// Example: hutch volume inspect pgdata
    Inspect {
        /// Name of the volume.
        name: String,
        /// The node holding it (needed only when two nodes have a volume of that name).
        #[arg(long)]
        node: Option<String>,
    },
    /// Delete volumes and their data; refused while a container (running or ended, not
    /// removed) uses one. Goes on past a failure and exits 125 if any failed.
    ///
    /// Example: hutch volume rm pgdata cache
    #[command(visible_alias = "remove")]
    Rm {
        /// Names of the volumes.
        #[arg(required = true)]
        names: Vec<String>,
        /// The node holding them (needed only when two nodes have a volume of a name).
        #[arg(long)]
        node: Option<String>,
    },
}

#[derive(Subcommand)]
pub(crate) enum RootfsCommand {
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
    /// Show one rootfs on each node that has it: its source, size, users, and for an
    /// image its config (Entrypoint, Cmd, Env, WorkingDir, User, ports) and layers.
    ///
    /// Example: hutch rootfs inspect busybox
    Inspect {
        /// Name of the rootfs.
        name: String,
        /// Only this node.
        #[arg(long)]
        node: Option<String>,
    },
    /// Remove a rootfs from every node (or one); refused where containers use it. An
    /// image's layers go with the last rootfs that uses them.
    Rm {
        /// Name of the rootfs.
        name: String,
        /// Only from this node.
        #[arg(long)]
        node: Option<String>,
    },
}

#[derive(Args)]
pub(crate) struct BuildArgs {
    /// Name of the rootfs.
    pub(crate) name: String,
    /// Only on this node [default: every ready node].
    #[arg(long)]
    pub(crate) node: Option<String>,
    /// Only on nodes with this label (KEY=VALUE, repeatable).
    #[arg(long = "selector", value_name = "KEY=VALUE")]
    pub(crate) selectors: Vec<String>,
    /// debootstrap suite.
    #[arg(long, default_value = "bookworm")]
    pub(crate) suite: String,
    /// debootstrap variant.
    #[arg(long, default_value = "minbase")]
    pub(crate) variant: String,
    /// Extra packages, comma separated.
    #[arg(long, default_value = "procps,iproute2")]
    pub(crate) include: String,
    /// Debian mirror [default: the node's apt sources].
    #[arg(long)]
    pub(crate) mirror: Option<String>,
    /// Build from a tarball on the nodes instead.
    #[arg(long, conflicts_with = "directory", conflicts_with = "initramfs")]
    pub(crate) tarball: Option<String>,
    /// Build from a directory on the nodes instead.
    #[arg(long, conflicts_with = "initramfs")]
    pub(crate) directory: Option<String>,
    /// Build from a cpio/initramfs image on the nodes instead.
    #[arg(long, conflicts_with = "image")]
    pub(crate) initramfs: Option<String>,
    /// Import an OCI or Docker image instead: oci:DIR[:TAG], oci-archive:FILE[:TAG],
    /// docker-archive:FILE or docker://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]. Its layers
    /// are shared on each node; its config gives containers their defaults.
    ///
    /// Example: hutch rootfs build busybox --image docker://127.0.0.1:5000/busybox:latest
    #[arg(long, value_name = "REF", conflicts_with_all = ["tarball", "directory"])]
    pub(crate) image: Option<String>,
    /// With --image: the platform to pick from a multi-platform image, os/arch[/variant]
    /// [default: the node's].
    #[arg(long, requires = "image", default_value = "")]
    pub(crate) platform: String,
    /// With --image: the entry of the agents' registry credentials file (--registry-auth)
    /// to use [default: the one of the image's registry].
    #[arg(long, requires = "image", default_value = "")]
    pub(crate) credentials: String,
}
