//! `hutch-controller`: serves the cluster API (hutch.v1.Controller) and the agents' API
//! (hutch.v1.Nodes) until SIGTERM or SIGINT.
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use hutch_controller::cluster::Cluster;
use hutch_controller::config::{self, FileConfig};
use hutch_controller::config::{ControllerConfig, StoreChoice};
use hutch_controller::join::ClusterPki;
use hutch_controller::leader::{self, Member};
use hutch_controller::leadership::Leadership;
use hutch_controller::store::etcd_store::{self, EtcdConfig};
use hutch_controller::store::etcd_tokens::EtcdTokens;
use hutch_controller::store::RedbStore;
use hutch_server::auth::Tokens;

/// Exit code for errors of hutch itself.
const EXIT_HUTCH_ERROR: u8 = 125;
/// Exit code for invalid configuration.
const EXIT_USAGE: u8 = 2;
/// The exit code of a controller whose embedded store failed a write (EX_TEMPFAIL: start
/// it again).
const EXIT_STORE_FAILED: u8 = 75;

#[derive(Parser)]
#[command(
    name = "hutch-controller",
    version,
    about = "hutch's controller: one API for the whole cluster",
    long_about = "hutch's controller. Clients call hutch.v1.Controller to create, watch and manage \
containers anywhere in the cluster; agents started with `hutch-agent serve --controller URL` \
register through hutch.v1.Nodes and heartbeat. Every record lives in an embedded store under \
--data-dir and survives restarts.\n\n\
Example: hutch-controller --listen 127.0.0.1:7000 --data-dir /var/lib/hutch-controller, then\n\
  grpcurl -plaintext 127.0.0.1:7000 hutch.v1.Controller/ListNodes\n\n\
TLS: on a non-loopback address (or with --tls) the controller serves TLS. On its first start \
it makes a cluster CA in DATA_DIR/tls; agents join with a token from `hutch token create` \
(`hutch-agent serve --join TOKEN`) and get a node certificate; controller and agents then \
speak mutual TLS. Clients trust DATA_DIR/tls/ca.crt and send bearer tokens (--tokens-file), \
e.g. grpcurl -cacert ca.crt -H 'authorization: Bearer TOKEN' HOST:7000 list.\n\n\
Settings come from flags, then HUTCH_* environment variables, then the TOML file given with \
--config, then defaults."
)]
struct Cli {
    /// TOML config file (keys: listen, insecure, tls, tls_dir, tls_ca_cert, tls_ca_key,
    /// tls_san, tokens_file, agent_token, max_concurrent_requests, max_requests_per_client,
    /// request_timeout, data_dir, strategy,
    /// heartbeat_interval,
    /// not_ready_misses, down_after, default_memory_reservation, event_keep,
    /// watch_buffer, restart_backoff, restart_backoff_max).
    #[arg(long, env = "HUTCH_CONFIG")]
    config: Option<PathBuf>,
    /// How log lines are written to stderr: text, or json (one object per line, fields as
    /// JSON fields, for a log collector).
    ///
    /// Example: hutch-controller --log-format json 2>&1 | jq .fields.message
    #[arg(
        long,
        env = "HUTCH_LOG_FORMAT",
        value_enum,
        default_value_t = hutch_server::logging::LogFormat::Text
    )]
    log_format: hutch_server::logging::LogFormat,
    /// Address to listen on [default: 127.0.0.1:7000]; port 0 picks a free port (printed).
    #[arg(long, env = "HUTCH_LISTEN")]
    listen: Option<String>,
    /// Serve plaintext gRPC on a non-loopback address instead of TLS (anyone who reaches it
    /// can then run containers on every node). Logs a warning at every start.
    #[arg(long, env = "HUTCH_INSECURE")]
    insecure: bool,
    /// Serve TLS also on loopback (it is on by default beyond loopback).
    #[arg(long, env = "HUTCH_TLS")]
    tls: bool,
    /// Where the cluster CA (made on first start), join tokens and the controller's
    /// certificate live [default: DATA_DIR/tls].
    #[arg(long, env = "HUTCH_TLS_DIR")]
    tls_dir: Option<PathBuf>,
    /// Use this CA certificate (PEM) instead of making one; needs --tls-ca-key.
    #[arg(long, env = "HUTCH_TLS_CA_CERT", requires = "tls_ca_key")]
    tls_ca_cert: Option<PathBuf>,
    /// The key (PEM) of --tls-ca-cert.
    #[arg(long, env = "HUTCH_TLS_CA_KEY", requires = "tls_ca_cert")]
    tls_ca_key: Option<PathBuf>,
    /// Another name or address for the controller's certificate (this host's names and
    /// addresses are always in it); repeat for several.
    #[arg(long = "tls-san", value_name = "NAME")]
    tls_san: Vec<String>,
    /// Require bearer tokens: a file of `TOKEN,NAME,ROLE` lines (roles: admin, read-only,
    /// node). Without it every call is let through (fine on loopback).
    #[arg(long, env = "HUTCH_TOKENS_FILE")]
    tokens_file: Option<PathBuf>,
    /// Bearer token sent to agents started with a tokens file (an admin token there). Needs
    /// --tokens-file or TLS. A flag shows in `ps` to every user of this host: prefer
    /// HUTCH_AGENT_TOKEN or --agent-token-file.
    #[arg(long, env = "HUTCH_AGENT_TOKEN", hide_env_values = true)]
    agent_token: Option<String>,
    /// File holding the agent token (one line).
    #[arg(long, env = "HUTCH_AGENT_TOKEN_FILE", conflicts_with = "agent_token")]
    agent_token_file: Option<PathBuf>,
    /// Request limits (the same flags as the agent's).
    #[command(flatten)]
    limits: hutch_server::config::LimitFlags,
    /// Where the state store (state.redb) lives [default: /var/lib/hutch-controller].
    #[arg(long, env = "HUTCH_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Placement: `spread` (most free memory first) or `binpack` (fill nodes one by one)
    /// [default: spread].
    #[arg(long, env = "HUTCH_STRATEGY")]
    strategy: Option<String>,
    /// The cluster's container network: each node gets a block of it for its containers'
    /// addresses, and every node routes to every other node's block; "none" for no
    /// network (containers get only lo) [default: 198.19.0.0/16].
    #[arg(long, env = "HUTCH_CLUSTER_CIDR", value_name = "CIDR")]
    cluster_cidr: Option<String>,
    /// Prefix length of each node's block of the cluster network [default: 24, 254
    /// containers per node].
    #[arg(long, env = "HUTCH_NODE_SUBNET_PREFIX", value_name = "BITS")]
    node_subnet_prefix: Option<u8>,
    /// The block services' virtual addresses come from: a service's name resolves to its
    /// address in bridged containers, and each node balances connections to it over the
    /// service's ready replicas; "none" for none [default: 198.18.128.0/20].
    #[arg(long, env = "HUTCH_SERVICE_CIDR", value_name = "CIDR")]
    service_cidr: Option<String>,
    /// How often agents heartbeat, e.g. 500ms [default: 1s].
    #[arg(long, env = "HUTCH_HEARTBEAT_INTERVAL")]
    heartbeat_interval: Option<String>,
    /// Missed heartbeats before a node is NOT_READY [default: 3].
    #[arg(long, env = "HUTCH_NOT_READY_MISSES")]
    not_ready_misses: Option<u32>,
    /// Silence after which a node is DOWN and its containers LOST [default: 30s].
    #[arg(long, env = "HUTCH_DOWN_AFTER")]
    down_after: Option<String>,
    /// Memory the scheduler sets aside for a container without a memory limit
    /// [default: 64MiB].
    #[arg(long, env = "HUTCH_DEFAULT_MEMORY_RESERVATION")]
    default_memory_reservation: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (plain HTTP, no credentials: keep it
    /// on loopback or a network your monitoring alone reaches): containers and nodes by
    /// state, placements, pending containers, restarts, store write latency, gRPC calls by
    /// method and code. Off by default.
    ///
    /// Example: hutch-controller --metrics-listen 127.0.0.1:9100
    #[arg(long, env = "HUTCH_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// Watch events kept so watchers can resume [default: 10000].
    #[arg(long, env = "HUTCH_EVENT_KEEP")]
    event_keep: Option<usize>,
    /// Live changes a watcher may fall behind before it is cut off with RESOURCE_EXHAUSTED
    /// (it can resume from the revision named) [default: 4096].
    #[arg(long, env = "HUTCH_WATCH_BUFFER")]
    watch_buffer: Option<usize>,
    /// Delay before the first restart of a container; doubles per restart [default: 1s].
    #[arg(long, env = "HUTCH_RESTART_BACKOFF")]
    restart_backoff: Option<String>,
    /// Longest delay between restarts [default: 60s].
    #[arg(long, env = "HUTCH_RESTART_BACKOFF_MAX")]
    restart_backoff_max: Option<String>,
    /// Where the records live: `redb` (the embedded file in --data-dir; this controller
    /// alone) or `etcd` (any number of controllers on one etcd, one of them leading)
    /// [default: etcd when --etcd-endpoints is given, else redb].
    #[arg(long, env = "HUTCH_STORE", value_name = "redb|etcd")]
    store: Option<String>,
    /// etcd client URLs, comma-separated. Every controller of the cluster names the same
    /// etcd; one leads, the others answer clients with the leader's address.
    ///
    /// Example: hutch-controller --etcd-endpoints http://198.18.0.1:2379,http://198.18.0.2:2379
    #[arg(long, env = "HUTCH_ETCD_ENDPOINTS", value_name = "URL[,URL...]")]
    etcd_endpoints: Option<String>,
    /// Key prefix of this cluster's records in etcd [default: /hutch/].
    #[arg(long, env = "HUTCH_ETCD_PREFIX")]
    etcd_prefix: Option<String>,
    /// CA certificate (PEM) that signed etcd's server certificates (https endpoints).
    #[arg(long, env = "HUTCH_ETCD_CA")]
    etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's client-certificate authentication.
    #[arg(long, env = "HUTCH_ETCD_CERT", requires = "etcd_key")]
    etcd_cert: Option<PathBuf>,
    /// The key (PEM) of --etcd-cert.
    #[arg(long, env = "HUTCH_ETCD_KEY", requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
    /// TTL of the leader's lease in etcd: a leader that dies is replaced within about this
    /// long plus half a second [default: 1s; etcd raises it to its own minimum, 2s with
    /// etcd's default election timeout].
    #[arg(long, env = "HUTCH_LEADER_LEASE_TTL")]
    leader_lease_ttl: Option<String>,
    /// The URL clients and agents reach this controller at, which followers name when they
    /// send them to the leader [default: from --listen].
    #[arg(long, env = "HUTCH_ADVERTISE_URL", value_name = "URL")]
    advertise_url: Option<String>,
    #[command(subcommand)]
    command: Option<Subcommand>,
}

#[derive(clap::Subcommand)]
enum Subcommand {
    /// Copy every record of a controller's embedded store into etcd, for a cluster of
    /// several controllers on it. Stop that controller first (its store file is locked while
    /// it runs); the etcd prefix must hold no records.
    ///
    /// Example: hutch-controller migrate --from redb:/var/lib/hutch-controller --to etcd:http://198.18.1.1:2379
    Migrate {
        /// The store to copy: redb:DATA_DIR (the directory holding state.redb).
        #[arg(long, value_name = "redb:DIR")]
        from: String,
        /// Where to: etcd:URL[,URL...].
        #[arg(long, value_name = "etcd:URLS")]
        to: String,
        /// Key prefix of the cluster in etcd [default: /hutch/].
        #[arg(long, value_name = "PREFIX")]
        etcd_prefix: Option<String>,
        /// CA certificate (PEM) of etcd's server certificates.
        #[arg(long)]
        etcd_ca: Option<PathBuf>,
        /// Client certificate (PEM) for etcd.
        #[arg(long, requires = "etcd_key")]
        etcd_cert: Option<PathBuf>,
        /// Its key (PEM).
        #[arg(long, requires = "etcd_cert")]
        etcd_key: Option<PathBuf>,
    },
}

/// `hutch-controller migrate`.
fn migrate_command(from: &str, to: &str, etcd: FileConfig) -> ExitCode {
    let Some(dir) = from.strip_prefix("redb:") else {
        eprintln!("hutch-controller migrate: --from must be redb:DATA_DIR, not '{from}'");
        return ExitCode::from(EXIT_USAGE);
    };
    let Some(endpoints) = to.strip_prefix("etcd:") else {
        eprintln!("hutch-controller migrate: --to must be etcd:URL[,URL...], not '{to}'");
        return ExitCode::from(EXIT_USAGE);
    };
    let config = match config::resolve(
        FileConfig {
            etcd_endpoints: Some(endpoints.to_string()),
            ..etcd
        },
        FileConfig::default(),
    ) {
        Ok(ControllerConfig {
            store: StoreChoice::Etcd(c),
            ..
        }) => c,
        Ok(_) => return ExitCode::from(EXIT_USAGE),
        Err(e) => {
            eprintln!("hutch-controller migrate: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let source = match RedbStore::open(std::path::Path::new(dir)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hutch-controller migrate: {e} (stop the controller using it first)");
            return ExitCode::from(EXIT_HUTCH_ERROR);
        }
    };
    let target = match hutch_controller::store::EtcdStore::connect(config.clone()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("hutch-controller migrate: {e}");
            return ExitCode::from(EXIT_HUTCH_ERROR);
        }
    };
    // Controllers running on that prefix would lead over a partial copy.
    let running = [leader::LEADER_KEY, leader::MEMBERS]
        .iter()
        .map(|k| target.read_prefix(k).map(|rows| rows.len()))
        .sum::<Result<usize, _>>();
    match running {
        Ok(0) => {}
        Ok(_) => {
            eprintln!(
                "hutch-controller migrate: controllers are running on {} under {}: stop them all first",
                config.describe(),
                config.prefix
            );
            return ExitCode::from(EXIT_HUTCH_ERROR);
        }
        Err(e) => {
            eprintln!("hutch-controller migrate: {e}");
            return ExitCode::from(EXIT_HUTCH_ERROR);
        }
    }
    let progress = |done: usize, total: usize| eprintln!("copied {done} of {total} records");
    match hutch_controller::migrate::migrate(&source, &target, progress) {
        Ok(c) => {
            println!(
                "migrated {} containers, {} nodes, {} rootfs specs and {} events at revision {} from {dir} into {} under {}; start the controllers with --etcd-endpoints {endpoints} --etcd-prefix {} and the same cluster CA",
                c.containers, c.nodes, c.rootfs_specs, c.events, c.revision, config.describe(), config.prefix, config.prefix
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hutch-controller migrate: {e}");
            ExitCode::from(EXIT_HUTCH_ERROR)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    hutch_server::logging::init("info", cli.log_format);
    if let Some(Subcommand::Migrate {
        from,
        to,
        etcd_prefix,
        etcd_ca,
        etcd_cert,
        etcd_key,
    }) = &cli.command
    {
        let etcd = FileConfig {
            etcd_prefix: etcd_prefix.clone(),
            etcd_ca: etcd_ca.clone(),
            etcd_cert: etcd_cert.clone(),
            etcd_key: etcd_key.clone(),
            ..Default::default()
        };
        return migrate_command(from, to, etcd);
    }
    let file = match &cli.config {
        Some(path) => match config::read_file(path) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("hutch-controller: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        },
        None => FileConfig::default(),
    };
    let over = FileConfig {
        listen: cli.listen,
        data_dir: cli.data_dir,
        strategy: cli.strategy,
        cluster_cidr: cli.cluster_cidr,
        node_subnet_prefix: cli.node_subnet_prefix,
        service_cidr: cli.service_cidr,
        heartbeat_interval: cli.heartbeat_interval,
        not_ready_misses: cli.not_ready_misses,
        down_after: cli.down_after,
        metrics_listen: cli.metrics_listen,
        default_memory_reservation: cli.default_memory_reservation,
        event_keep: cli.event_keep,
        watch_buffer: cli.watch_buffer,
        restart_backoff: cli.restart_backoff,
        restart_backoff_max: cli.restart_backoff_max,
        insecure: cli.insecure.then_some(true),
        tokens_file: cli.tokens_file,
        max_concurrent_requests: cli.limits.max_concurrent_requests,
        max_requests_per_client: cli.limits.max_requests_per_client,
        request_timeout: cli.limits.request_timeout,
        agent_token: match hutch_core::token_file::token_from(
            cli.agent_token,
            cli.agent_token_file.as_deref(),
        ) {
            Ok(token) => token,
            Err(e) => {
                eprintln!("hutch-controller: --agent-token-file: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        },
        tls: cli.tls.then_some(true),
        tls_dir: cli.tls_dir,
        tls_ca_cert: cli.tls_ca_cert,
        tls_ca_key: cli.tls_ca_key,
        tls_san: (!cli.tls_san.is_empty()).then_some(cli.tls_san),
        store: cli.store,
        etcd_endpoints: cli.etcd_endpoints,
        etcd_prefix: cli.etcd_prefix,
        etcd_ca: cli.etcd_ca,
        etcd_cert: cli.etcd_cert,
        etcd_key: cli.etcd_key,
        leader_lease_ttl: cli.leader_lease_ttl,
        advertise_url: cli.advertise_url,
    };
    let mut config = match config::resolve(over, file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hutch-controller: invalid configuration: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let tokens = match config.tokens_file.as_deref().map(Tokens::load).transpose() {
        Ok(t) => t.map(Arc::new),
        Err(e) => {
            eprintln!("hutch-controller: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if tokens.is_none() && !config.listen.ip().is_loopback() {
        eprintln!(
            "hutch-controller: warning: no --tokens-file: every client that reaches {} may create and kill containers",
            config.listen
        );
    }
    let pki = match config.tls.as_ref().map(ClusterPki::open).transpose() {
        Ok(Some((pki, created))) => {
            let dir = config.tls.as_ref().map(|t| t.dir.display().to_string());
            let made = if created {
                "made a new cluster CA"
            } else {
                "cluster CA"
            };
            eprintln!(
                "hutch-controller: TLS on; {made} in {}, fingerprint {}",
                dir.unwrap_or_default(),
                pki.fingerprint()
            );
            config.cluster.agent_tls = Some(pki.material().clone());
            Some(Arc::new(pki))
        }
        Ok(None) => None,
        Err(e) => {
            eprintln!("hutch-controller: TLS: {e}");
            return ExitCode::from(EXIT_HUTCH_ERROR);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hutch-controller: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_HUTCH_ERROR);
        }
    };
    rt.block_on(async move {
        let (listener, addr) = match hutch_server::listen::bind(config.listen, pki.is_some()).await
        {
            Ok(bound) => bound,
            Err(e) => {
                eprintln!("hutch-controller: {e}");
                return ExitCode::from(EXIT_HUTCH_ERROR);
            }
        };
        let started = match start_store(&config, pki.as_deref(), &addr).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("hutch-controller: {e}");
                return ExitCode::from(EXIT_HUTCH_ERROR);
            }
        };
        let leadership = started.leadership.clone();
        let metrics = match config.metrics_listen {
            Some(at) => match hutch_server::metrics::bind(at).await {
                Ok((listener, url)) => {
                    println!("hutch-controller metrics on {url}");
                    Some(listener)
                }
                Err(e) => {
                    eprintln!("hutch-controller: cannot serve metrics on {at}: {e}");
                    return ExitCode::from(EXIT_HUTCH_ERROR);
                }
            },
            None => None,
        };
        println!(
            "hutch-controller listening on {addr} ({}, {}, strategy {})",
            if pki.is_some() { "TLS" } else { "plaintext" },
            started.describe,
            config.cluster.strategy
        );
        let _ = std::io::stdout().flush();
        let store_failed = started.store_failed.clone();
        let failed = store_failed.clone();
        let shutdown = async move {
            tokio::select! {
                _ = hutch_server::listen::shutdown_signal() => {}
                _ = store_failure(failed) => {}
            }
        };
        let limits = hutch_controller::service::server::Limits {
            tokens,
            limits: config.limits,
            pki,
            metrics,
        };
        let served =
            hutch_controller::service::server::serve(leadership, listener, limits, shutdown).await;
        started.stop().await;
        if store_failed.is_some_and(|failed| *failed.borrow()) {
            eprintln!("hutch-controller: {STORE_FAILED}");
            return ExitCode::from(EXIT_STORE_FAILED);
        }
        match served {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("hutch-controller: {e}");
                ExitCode::from(EXIT_HUTCH_ERROR)
            }
        }
    })
}

/// The store opened and, with etcd, the election running.
struct Started {
    leadership: Arc<Leadership>,
    /// Turns true when the embedded store failed a write (see [`store_failure`]).
    store_failed: Option<tokio::sync::watch::Receiver<bool>>,
    /// For the start line: the revision (redb) or the etcd endpoints.
    describe: String,
    /// Ends the election (revoking the lease, so a follower takes over at once).
    election: Option<(
        tokio::sync::watch::Sender<bool>,
        std::thread::JoinHandle<()>,
    )>,
}

impl Started {
    async fn stop(self) {
        if let Some((stop, thread)) = self.election {
            let _ = stop.send(true);
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// Resolves once the cluster on the embedded store steps down, which it does only when a
/// write to the file failed (`None`, etcd: never): redb takes no more writes after an I/O
/// error, and changes staged with the failed one are in memory only. The controller then
/// stops serving and exits with [`EXIT_STORE_FAILED`]; started again (systemd's
/// `Restart=on-failure`), it loads what the file holds, which is every change it
/// acknowledged, where staying up it would refuse every write for ever. Past
/// [`STORE_FAILED_DRAIN`], it exits without waiting for the last calls to end.
async fn store_failure(failed: Option<tokio::sync::watch::Receiver<bool>>) {
    let Some(mut failed) = failed else {
        return std::future::pending().await;
    };
    if failed.wait_for(|over| *over).await.is_err() {
        return std::future::pending().await;
    }
    tokio::spawn(async {
        tokio::time::sleep(STORE_FAILED_DRAIN).await;
        eprintln!("hutch-controller: {STORE_FAILED}");
        std::process::exit(EXIT_STORE_FAILED.into());
    });
}

/// How long a controller whose store failed lets the calls under way get their answers.
const STORE_FAILED_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// What a controller whose store failed says as it exits.
const STORE_FAILED: &str = "the state store failed a write and takes no more until it is opened again; exiting so that a restart loads what it holds (every change acknowledged to a client is there; free disk space first if it is full)";

/// How long a starting controller waits for an etcd cluster without a leader (an election
/// after a member's loss or a partition takes seconds) before it gives up.
const ETCD_ELECTION_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs `attempt` until it succeeds, fails for another reason than etcd having no leader,
/// or [`ETCD_ELECTION_WAIT`] has passed; says on stderr that it waits.
async fn until_etcd_leads<T, F, Fut>(etcd: &EtcdConfig, mut attempt: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = std::time::Instant::now() + ETCD_ELECTION_WAIT;
    loop {
        match attempt().await {
            Err(e) if etcd_is_electing(&e) && std::time::Instant::now() < deadline => {
                eprintln!(
                    "hutch-controller: etcd {} has no leader yet; trying again ({e})",
                    etcd.describe()
                );
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            other => return other,
        }
    }
}

/// Whether an etcd error says the cluster is electing a leader.
fn etcd_is_electing(error: &str) -> bool {
    error.contains("etcdserver: no leader") || error.contains("etcdserver: leader changed")
}

/// Opens the configured store: the embedded one (this controller leads), or etcd (after
/// checking the cluster's identity there, the election starts).
async fn start_store(
    config: &ControllerConfig,
    pki: Option<&ClusterPki>,
    bound: &str,
) -> Result<Started, String> {
    let address = config
        .advertise_url
        .clone()
        .unwrap_or_else(|| hutch_pki::material::url_for(bound, pki.is_some()));
    let me = Member::this(address).map_err(|e| e.to_string())?;
    match &config.store {
        StoreChoice::Redb => {
            let store = RedbStore::open(&config.data_dir)
                .map_err(|e| format!("{e} (is another controller using this data dir?)"))?;
            let path = config.data_dir.join("state.redb").display().to_string();
            let cluster = Cluster::start(config.cluster.clone(), Box::new(store))
                .map_err(|e| e.to_string())?;
            let describe = format!("redb {path}, revision {}", cluster.revision());
            Ok(Started {
                store_failed: Some(cluster.term_over()),
                leadership: Leadership::single(cluster, me, path),
                describe,
                election: None,
            })
        }
        StoreChoice::Etcd(etcd) => {
            if config.advertise_url.is_none() && config.listen.ip().is_unspecified() {
                return Err(format!(
                    "listening on {} with the etcd store: give --advertise-url, the URL other controllers send clients and agents to for this one",
                    config.listen
                ));
            }
            let identity =
                pki.map_or_else(|| "plaintext".to_string(), |p| p.fingerprint().to_string());
            until_etcd_leads(etcd, || async {
                let mut client = etcd_store::connect(etcd.clone())
                    .await
                    .map_err(|e| format!("cannot use the etcd store {}: {e}", etcd.describe()))?;
                tokio::time::timeout(std::time::Duration::from_secs(5), client.status())
                    .await
                    .map_err(|_| format!("etcd at {} did not answer within 5s", etcd.describe()))?
                    .map_err(|e| format!("cannot use the etcd store {}: {e}", etcd.describe()))?;
                leader::claim_identity(&mut client, etcd, &identity).await
            })
            .await?;
            if let Some(pki) = pki {
                // Join tokens in etcd: an agent joins through any controller.
                let tokens = until_etcd_leads(etcd, || async {
                    let config = etcd.clone();
                    tokio::task::spawn_blocking(move || EtcdTokens::connect(config))
                        .await
                        .map_err(|e| e.to_string())?
                        .map_err(|e| e.to_string())
                })
                .await?;
                tokio::task::block_in_place(|| pki.keep_tokens_in(Box::new(tokens)))
                    .map_err(|e| format!("cannot keep join tokens in etcd: {e}"))?;
            }
            let (role_tx, role_rx) = tokio::sync::watch::channel(leader::Role::Follower {
                leader: None,
                why: None,
            });
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let resign = Arc::new(tokio::sync::Notify::new());
            let task = leader::spawn_election(
                etcd.clone(),
                me.clone(),
                config.leader_lease_ttl,
                resign.clone(),
                role_tx,
                stop_rx,
            )
            .map_err(|e| format!("cannot start the election: {e}"))?;
            let leadership = Leadership::follow(
                config.cluster.clone(),
                etcd.clone(),
                me.clone(),
                role_rx,
                resign,
            );
            Ok(Started {
                leadership,
                describe: format!("{}, controller {}", etcd.describe(), me.id),
                election: Some((stop_tx, task)),
                store_failed: None,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::etcd_is_electing;

    #[test]
    fn an_election_is_told_from_other_etcd_errors() {
        // As a controller started during an election printed it.
        assert!(etcd_is_electing(
            "cannot use the etcd store etcd http://198.18.1.1:2379: grpc request error: code: 'The service is currently unavailable', message: \"etcdserver: no leader\""
        ));
        assert!(!etcd_is_electing(
            "cannot use the etcd store etcd http://198.18.1.1:2379: transport error"
        ));
        assert!(!etcd_is_electing(
            "the cluster under /hutch/identity belongs to the cluster CA x"
        ));
    }
}
