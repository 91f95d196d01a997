//! The command line of `hutch-agent`: `serve` and the local admin commands.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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
pub(crate) struct Cli {
    /// TOML config file (keys: listen, state_dir, rootfs_dir, name, cgroup_root,
    /// event_log_keep, memory_reserve).
    #[arg(long, env = "HUTCH_CONFIG", global = true)]
    pub(crate) config: Option<PathBuf>,
    /// State directory: container records, logs, writable layers, event log
    /// [default: /var/lib/hutch].
    #[arg(long, env = "HUTCH_STATE_DIR", global = true)]
    pub(crate) state_dir: Option<PathBuf>,
    /// Rootfs store directory [default: STATE_DIR/rootfs].
    #[arg(long, env = "HUTCH_ROOTFS_DIR", global = true)]
    pub(crate) rootfs_dir: Option<PathBuf>,
    /// Node name; hutch's cgroups live in ROOT/hutch-NAME [default: the host name].
    #[arg(long, alias = "instance", env = "HUTCH_NAME", global = true)]
    pub(crate) name: Option<String>,
    /// Delegated cgroup directory hutch may manage (default: the one the agent runs in),
    /// e.g. /sys/fs/cgroup/system.slice/hutch-agent.service.
    #[arg(long, env = "HUTCH_CGROUP_ROOT", global = true)]
    pub(crate) cgroup_root: Option<PathBuf>,
    /// How log lines are written to stderr: text, or json (one object per line, fields as
    /// JSON fields, for a log collector).
    ///
    /// Example: hutch-agent --log-format json serve 2>&1 | jq .fields.message
    #[arg(
        long,
        env = "HUTCH_LOG_FORMAT",
        global = true,
        value_enum,
        default_value_t = hutch_server::logging::LogFormat::Text
    )]
    pub(crate) log_format: hutch_server::logging::LogFormat,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Serve the gRPC API (hutch.v1.Agent, health, reflection) until SIGTERM or SIGINT.
    /// Containers keep running when the agent stops.
    ///
    /// Example: hutch-agent serve --listen 127.0.0.1:7070, then
    /// grpcurl -plaintext 127.0.0.1:7070 hutch.v1.Agent/NodeInfo.
    /// In a cluster: hutch-agent serve --listen 10.0.0.5:7070 --controller 10.0.0.1:7000
    /// --join TOKEN --label zone=a (joins once with a token from `hutch token create`, then
    /// registers, heartbeats, and registers again whenever needed, over mutual TLS).
    Serve(Box<ServeArgs>),
    /// Build, list, inspect and remove root filesystems.
    #[command(subcommand)]
    Rootfs(RootfsCommand),
    /// Run a command in a new container.
    ///
    /// Example: hutch-agent run --ns pid,ipc,net,uts,mount --memory 64M debian -- ps -ef
    Run(Box<RunArgs>),
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
pub(crate) struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:7070]; port 0 picks a free port (printed).
    #[arg(long, env = "HUTCH_LISTEN")]
    pub(crate) listen: Option<String>,
    /// Serve plaintext gRPC on a non-loopback address without having joined a cluster
    /// with TLS (whoever reaches the agent can then run containers as root). Logs a warning.
    #[arg(long, env = "HUTCH_INSECURE")]
    pub(crate) insecure: bool,
    /// Join the cluster with this token (from `hutch token create` on the controller): the
    /// agent gets a node certificate, keeps it in STATE_DIR/tls, and from then on serves
    /// and registers over mutual TLS. Ignored once the agent has joined. A flag shows in
    /// `ps` to every user of this host: prefer HUTCH_JOIN_TOKEN or --join-file.
    #[arg(
        long = "join",
        env = "HUTCH_JOIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub(crate) join_token: Option<String>,
    /// File holding the join token (one line).
    #[arg(long, env = "HUTCH_JOIN_TOKEN_FILE", conflicts_with = "join_token")]
    pub(crate) join_file: Option<PathBuf>,
    /// Request limits (the same flags as the controller's).
    #[command(flatten)]
    pub(crate) limits: hutch_server::config::LimitFlags,
    /// Require bearer tokens: a file of `TOKEN,NAME,ROLE` lines naming who may drive this
    /// agent (the controller's --agent-token as admin, local administrators). Without it
    /// every caller is let through (fine on loopback).
    #[arg(long, env = "HUTCH_TOKENS_FILE")]
    pub(crate) tokens_file: Option<PathBuf>,
    /// Largest log file of a container whose spec sets none, e.g. 10M; when a container's
    /// log would pass it, it is rotated (Docker's max-size) [default: 10MiB].
    #[arg(long, env = "HUTCH_LOG_MAX_SIZE")]
    pub(crate) log_max_size: Option<String>,
    /// Log files kept per container whose spec sets none, the current one included
    /// (Docker's max-file) [default: 5].
    #[arg(long, env = "HUTCH_LOG_MAX_FILES")]
    pub(crate) log_max_files: Option<u32>,
    /// Where CNI plugins are, ':'-separated [default: /usr/lib/cni:/opt/cni/bin].
    #[arg(long, env = "HUTCH_CNI_BIN_DIR", value_name = "DIRS")]
    pub(crate) cni_bin_dir: Option<String>,
    /// Where CNI network configuration files are (.conflist, .conf, .json); a file naming
    /// the --cni-network replaces hutch's own bridge configuration [default: /etc/cni/net.d].
    #[arg(long, env = "HUTCH_CNI_CONF_DIR", value_name = "DIR")]
    pub(crate) cni_conf_dir: Option<PathBuf>,
    /// The CNI network bridged containers join [default: hutch, a bridge "hutch0" on the
    /// node's subnet with host-local addresses and portmap, written by hutch itself].
    #[arg(long, env = "HUTCH_CNI_NETWORK", value_name = "NAME")]
    pub(crate) cni_network: Option<String>,
    /// The node's container subnet for an agent without a controller, e.g. 198.19.0.0/24
    /// (with a controller, it gives each node its subnet). Without either, containers with
    /// a network namespace get only lo.
    #[arg(long, env = "HUTCH_NETWORK_SUBNET", value_name = "CIDR")]
    pub(crate) network_subnet: Option<String>,
    /// Node paths under which containers' bind mount sources may lie, comma-separated, e.g.
    /// /srv,/home (symlinks resolved; hutch's state and rootfs directories stay refused).
    /// Empty by default: no bind mounts, so a client cannot bind the node's / into a
    /// container; a source outside the list is PERMISSION_DENIED. Named volumes and tmpfs
    /// need nothing here.
    ///
    /// Example: hutch-agent serve --allowed-bind-paths /srv,/home
    #[arg(
        long,
        env = "HUTCH_ALLOWED_BIND_PATHS",
        value_name = "PATH[,PATH...]",
        value_delimiter = ','
    )]
    pub(crate) allowed_bind_paths: Vec<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (plain HTTP, no credentials: keep it
    /// on loopback or a network your monitoring alone reaches): per-container CPU, memory,
    /// pids and OOM kills, containers by state, gRPC calls by method and code. Off by
    /// default.
    ///
    /// Example: hutch-agent serve --metrics-listen 127.0.0.1:9101
    #[arg(long, env = "HUTCH_METRICS_LISTEN", value_name = "ADDR")]
    pub(crate) metrics_listen: Option<String>,
    /// Events kept in the log before compaction [default: 10000].
    #[arg(long, env = "HUTCH_EVENT_LOG_KEEP")]
    pub(crate) event_log_keep: Option<usize>,
    /// Memory kept back for the host, not promised to containers [default: 256MiB].
    #[arg(long, env = "HUTCH_MEMORY_RESERVE")]
    pub(crate) memory_reserve: Option<String>,
    /// Register with this controller and heartbeat to it, e.g. http://127.0.0.1:7000.
    /// Without it the agent stands alone.
    #[arg(long, env = "HUTCH_CONTROLLER")]
    pub(crate) controller: Option<String>,
    /// Bearer token for the controller, when it requires tokens: the `node` token its
    /// tokens file lists under this node's name. A flag shows in `ps` to every user of this
    /// host: prefer HUTCH_CONTROLLER_TOKEN or --controller-token-file.
    #[arg(long, env = "HUTCH_CONTROLLER_TOKEN", hide_env_values = true)]
    pub(crate) controller_token: Option<String>,
    /// File holding the controller token (one line).
    #[arg(
        long,
        env = "HUTCH_CONTROLLER_TOKEN_FILE",
        conflicts_with = "controller_token"
    )]
    pub(crate) controller_token_file: Option<PathBuf>,
    /// HOST:PORT the controller dials to reach this agent [default: the listen address].
    #[arg(long, env = "HUTCH_ADVERTISE")]
    pub(crate) advertise: Option<String>,
    /// Node label for placement selectors, KEY=VALUE; repeat for several
    /// (e.g. --label zone=a --label disk=ssd).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub(crate) labels: Vec<String>,
    /// A registry reached over plain HTTP instead of HTTPS, HOST:PORT; repeat for several.
    /// Loopback registries (127.0.0.1, localhost, [::1]) always are, as with Docker.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    pub(crate) insecure_registries: Vec<String>,
    /// Registry credentials in Docker's config.json format ({"auths": {"HOST:PORT":
    /// {"auth": base64 of USER:PASSWORD}}}), used for the registry a pull names.
    #[arg(long, env = "HUTCH_REGISTRY_AUTH", value_name = "FILE")]
    pub(crate) registry_auth: Option<PathBuf>,
    /// Most bytes one image may unpack to; a bigger one is refused [default: 32GiB].
    #[arg(long, env = "HUTCH_IMAGE_MAX_SIZE", value_name = "SIZE")]
    pub(crate) image_max_size: Option<String>,
    /// Create the device nodes image layers hold (refused by default: a container gets
    /// only the /dev entries hutch gives it).
    #[arg(long)]
    pub(crate) allow_image_devices: bool,
    /// Never import an image because a container names it as its rootfs (an image must then
    /// be imported first with `hutch rootfs build NAME --image REF`).
    #[arg(long)]
    pub(crate) no_image_pull: bool,
}

#[derive(Subcommand)]
pub(crate) enum RootfsCommand {
    /// Build a rootfs (cached: the same source is built once).
    ///
    /// Default: Debian bookworm minbase with procps and iproute2 from the host's apt mirror.
    /// Examples: `rootfs build debian`, `rootfs build --tarball /tmp/alpine.tar.gz alpine`,
    /// `rootfs build --initramfs /boot/initrd.img-$(uname -r) initrd`.
    Build(Box<BuildArgs>),
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
pub(crate) struct BuildArgs {
    /// Name to give the rootfs.
    #[arg(default_value = "debian")]
    pub(crate) name: String,
    /// debootstrap suite (codename).
    #[arg(long, default_value = "bookworm")]
    pub(crate) suite: String,
    /// debootstrap variant (minbase, buildd, fakechroot; empty for the default).
    #[arg(long, default_value = "minbase")]
    pub(crate) variant: String,
    /// Extra packages, comma-separated.
    #[arg(long, default_value = "procps,iproute2", value_delimiter = ',')]
    pub(crate) include: Vec<String>,
    /// Architecture (default: the host's).
    #[arg(long, default_value = "")]
    pub(crate) arch: String,
    /// Mirror URL (default: the first Debian archive in the host's apt sources).
    #[arg(long, default_value = "")]
    pub(crate) mirror: String,
    /// Build from a local .tar, .tar.gz or .tar.zst instead.
    #[arg(long, conflicts_with_all = ["dir", "initramfs"])]
    pub(crate) tarball: Option<PathBuf>,
    /// Copy a local directory instead.
    #[arg(long, conflicts_with_all = ["tarball", "initramfs"])]
    pub(crate) dir: Option<PathBuf>,
    /// Extract a cpio/initramfs image instead.
    #[arg(long, conflicts_with_all = ["tarball", "dir", "image"])]
    pub(crate) initramfs: Option<PathBuf>,
    /// Import an OCI or Docker image instead: oci:DIR[:TAG], oci-archive:FILE[:TAG],
    /// docker-archive:FILE, docker://HOST[:PORT]/REPO[:TAG|@DIGEST].
    #[arg(long, value_name = "REF", conflicts_with_all = ["tarball", "dir"])]
    pub(crate) image: Option<String>,
    /// With --image: os/arch[/variant] to pick from a multi-platform image.
    #[arg(long, requires = "image", default_value = "")]
    pub(crate) platform: String,
}

#[derive(Args)]
pub(crate) struct RunArgs {
    /// Container id (default: generated).
    #[arg(long)]
    pub(crate) id: Option<String>,
    /// Namespaces of its own, comma-separated: pid,ipc,net,uts,mount,user,cgroup.
    #[arg(long, default_value = "pid,ipc,net,uts,mount")]
    pub(crate) ns: String,
    /// Memory limit, e.g. 1000000, 64M, 1GiB.
    #[arg(long, short = 'm')]
    pub(crate) memory: Option<String>,
    /// Memory + swap limit.
    #[arg(long)]
    pub(crate) memory_swap: Option<String>,
    /// Hostname (needs the uts namespace; default: the id).
    #[arg(long)]
    pub(crate) hostname: Option<String>,
    /// Environment variable K=V (repeatable).
    #[arg(long, short = 'e')]
    pub(crate) env: Vec<String>,
    /// Working directory inside.
    #[arg(long, short = 'w', default_value = "")]
    pub(crate) workdir: String,
    /// Mount the rootfs read-only.
    #[arg(long)]
    pub(crate) read_only: bool,
    /// size=SIZE: limit what the container may write to its writable layer (Docker's
    /// --storage-opt; at least 8M); beyond, writes fail with ENOSPC.
    #[arg(long = "storage-opt", value_name = "size=SIZE")]
    pub(crate) storage_opts: Vec<String>,
    /// uid map INSIDE:OUTSIDE:COUNT for the user namespace (default 0:100000:65536).
    #[arg(long)]
    pub(crate) uid_map: Option<String>,
    /// Seconds between SIGTERM and SIGKILL on stop.
    #[arg(long, default_value_t = 10)]
    pub(crate) stop_grace: u32,
    /// Return after start instead of waiting for the end.
    #[arg(long, short = 'd')]
    pub(crate) detach: bool,
    /// Remove the container after it ends.
    #[arg(long)]
    pub(crate) rm: bool,
    /// Rootfs name.
    pub(crate) rootfs: String,
    /// The command and its arguments.
    #[arg(last = true)]
    pub(crate) command: Vec<String>,
}
