//! The controller's configuration: flags, then `HUTCH_*` environment variables, then the
//! TOML file given with `--config`, then defaults; validated as a whole before anything is
//! opened or bound. Unknown keys in the file are errors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hutch_core::spec::parse_size;
use hutch_server::config::ConfigError;
use serde::Deserialize;

use crate::cluster::{ClusterCidr, ClusterConfig, Secret};
use crate::join::TlsSettings;
use crate::scheduler::Strategy;
use hutch_core::network::Cidr;

/// Default listen address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7000";
/// Default data directory (the state store lives there).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/hutch-controller";

/// The file form (every key optional).
#[derive(Debug, Default, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `host:port` to serve on.
    pub listen: Option<String>,
    /// Where the state store lives.
    pub data_dir: Option<PathBuf>,
    /// `spread` or `binpack`.
    pub strategy: Option<String>,
    /// The cluster's container network, e.g. "198.19.0.0/16"; "none" for none.
    pub cluster_cidr: Option<String>,
    /// Prefix length of each node's block.
    pub node_subnet_prefix: Option<u8>,
    /// The block services' virtual addresses come from, e.g. "198.18.128.0/20"; "none"
    /// for none.
    pub service_cidr: Option<String>,
    /// How often agents heartbeat, e.g. "1s".
    pub heartbeat_interval: Option<String>,
    /// Missed heartbeats before a node is NOT_READY.
    pub not_ready_misses: Option<u32>,
    /// Silence before a node is DOWN, e.g. "30s".
    pub down_after: Option<String>,
    /// Memory reserved for containers without a limit, e.g. "64MiB".
    pub default_memory_reservation: Option<String>,
    /// Watch events kept for resuming.
    pub event_keep: Option<usize>,
    /// Live events a watcher may fall behind before it is cut off.
    pub watch_buffer: Option<usize>,
    /// First restart delay, e.g. "1s".
    pub restart_backoff: Option<String>,
    /// Longest restart delay, e.g. "60s".
    pub restart_backoff_max: Option<String>,
    /// Serve plaintext on a non-loopback address anyway.
    pub insecure: Option<bool>,
    /// Bearer tokens with roles (`TOKEN,NAME,ROLE` lines); without it calls need none.
    pub tokens_file: Option<PathBuf>,
    /// Requests worked on at once before new ones are shed.
    pub max_concurrent_requests: Option<usize>,
    /// Requests one client address may have in flight.
    pub max_requests_per_client: Option<usize>,
    /// Longest a request may take to be answered, e.g. "10m"; "0" for no limit.
    pub request_timeout: Option<String>,
    /// Bearer token sent to agents that require one (their tokens file names it).
    pub agent_token: Option<String>,
    /// Serve TLS (and mutual TLS with agents) [default: on for a non-loopback address
    /// without `insecure`].
    pub tls: Option<bool>,
    /// Where the cluster CA, the join tokens and the controller's files live
    /// [default: DATA_DIR/tls].
    pub tls_dir: Option<PathBuf>,
    /// An operator's CA certificate (PEM) instead of the one made on first start.
    pub tls_ca_cert: Option<PathBuf>,
    /// Its key (PEM).
    pub tls_ca_key: Option<PathBuf>,
    /// More names or addresses for the controller's certificate (e.g. a DNS name).
    pub tls_san: Option<Vec<String>>,
    /// `host:port` to serve Prometheus metrics on (off by default).
    pub metrics_listen: Option<String>,
    /// Where records live: `redb` (embedded, one controller) or `etcd` (several
    /// controllers, one leader) [default: etcd when etcd_endpoints is set, else redb].
    pub store: Option<String>,
    /// etcd client URLs, comma-separated, e.g. "http://127.0.0.1:2379".
    pub etcd_endpoints: Option<String>,
    /// Key prefix of this cluster in etcd [default: /hutch/].
    pub etcd_prefix: Option<String>,
    /// CA certificate (PEM) of etcd's server certificates.
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd.
    pub etcd_cert: Option<PathBuf>,
    /// Its key (PEM).
    pub etcd_key: Option<PathBuf>,
    /// TTL of the leader's lease in etcd, e.g. "1s" [default: 1s]; etcd raises it to its
    /// own minimum.
    pub leader_lease_ttl: Option<String>,
    /// The URL other controllers' followers send clients and agents to for this one
    /// [default: from the listen address].
    pub advertise_url: Option<String>,
}

/// Where the cluster's records live.
#[derive(Debug, Clone)]
pub enum StoreChoice {
    /// `DATA_DIR/state.redb`: one controller.
    Redb,
    /// etcd: any number of controllers, one leading.
    Etcd(crate::store::EtcdConfig),
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Address to serve on.
    pub listen: SocketAddr,
    /// Where the state store lives.
    pub data_dir: PathBuf,
    /// How the cluster behaves.
    pub cluster: ClusterConfig,
    /// Plaintext on a non-loopback address was accepted by the operator.
    pub insecure: bool,
    /// The bearer tokens file, when calls need tokens.
    pub tokens_file: Option<PathBuf>,
    /// Budgets of requests in flight and the request time limit.
    pub limits: hutch_server::limits::ServerLimits,
    /// TLS, when served.
    pub tls: Option<TlsSettings>,
    /// Where to serve Prometheus metrics; `None`: nowhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Where the records live.
    pub store: StoreChoice,
    /// TTL of the leader's lease (etcd only).
    pub leader_lease_ttl: Duration,
    /// The URL this controller is reached at (`None`: from the bound address).
    pub advertise_url: Option<String>,
}

/// The leader lease's TTL by default: failover within about 1.5 s of a leader's death
/// (etcd expires leases on a 500 ms tick) while surviving a lost renewal or two.
pub const DEFAULT_LEADER_LEASE_TTL: Duration = Duration::from_secs(1);

/// The store from the `store` and `etcd_*` keys.
fn store_choice(over: &mut FileConfig, file: &mut FileConfig) -> Result<StoreChoice, ConfigError> {
    let endpoints = over.etcd_endpoints.take().or(file.etcd_endpoints.take());
    let kind = over.store.take().or(file.store.take());
    let kind = kind.unwrap_or_else(|| if endpoints.is_some() { "etcd" } else { "redb" }.into());
    match kind.as_str() {
        "redb" => {
            if endpoints.is_some() {
                return Err(invalid(
                    "etcd_endpoints",
                    "etcd endpoints were given but the store is redb: drop --store redb (or the endpoints)",
                ));
            }
            Ok(StoreChoice::Redb)
        }
        "etcd" => {
            let Some(endpoints) = endpoints else {
                return Err(invalid(
                    "etcd_endpoints",
                    "the etcd store needs --etcd-endpoints URL[,URL...], e.g. http://127.0.0.1:2379",
                ));
            };
            let endpoints: Vec<String> = endpoints
                .split(',')
                .map(|e| e.trim().to_string())
                .filter(|e| !e.is_empty())
                .collect();
            for e in &endpoints {
                let ok = e
                    .strip_prefix("http://")
                    .or_else(|| e.strip_prefix("https://"))
                    .is_some_and(|rest| rest.contains(':') && !rest.contains('/'));
                if !ok {
                    return Err(invalid(
                        "etcd_endpoints",
                        format!("'{e}' is not an etcd client URL like http://127.0.0.1:2379 or https://etcd1:2379"),
                    ));
                }
            }
            if endpoints.is_empty() {
                return Err(invalid("etcd_endpoints", "no etcd endpoint given"));
            }
            let prefix = over
                .etcd_prefix
                .take()
                .or(file.etcd_prefix.take())
                .unwrap_or_else(|| crate::store::etcd_store::DEFAULT_PREFIX.into());
            if !prefix.ends_with('/') || prefix.contains('\0') {
                return Err(invalid(
                    "etcd_prefix",
                    format!("'{prefix}' must end with '/', e.g. /hutch/ or /hutch/lab1/"),
                ));
            }
            let cert = over.etcd_cert.take().or(file.etcd_cert.take());
            let key = over.etcd_key.take().or(file.etcd_key.take());
            if cert.is_some() != key.is_some() {
                return Err(invalid(
                    "etcd_cert",
                    "--etcd-cert and --etcd-key go together",
                ));
            }
            Ok(StoreChoice::Etcd(crate::store::EtcdConfig {
                endpoints,
                prefix,
                ca: over.etcd_ca.take().or(file.etcd_ca.take()),
                cert,
                key,
            }))
        }
        other => Err(invalid(
            "store",
            format!("'{other}' is not a store: redb (embedded, the default) or etcd"),
        )),
    }
}

/// Reads a TOML config file.
pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    hutch_server::config::read_toml(path)
}

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        message: message.into(),
    }
}

/// The cluster's block by default: RFC 2544's benchmark range, never a private or public one.
pub const DEFAULT_CLUSTER_CIDR: &str = "198.19.0.0/16";
/// Each node's prefix length by default.
pub const DEFAULT_NODE_SUBNET_PREFIX: u8 = 24;

/// The services' block by default (inside RFC 2544's benchmark range, like the cluster's).
pub const DEFAULT_SERVICE_CIDR: &str = "198.18.128.0/20";

/// The block services' virtual addresses come from: none without a cluster network (their
/// traffic goes to replicas over it); never overlapping the cluster's block.
fn service_cidr(
    text: Option<String>,
    cluster: Option<&ClusterCidr>,
) -> Result<Option<Cidr>, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        field: "service_cidr",
        message,
    };
    let text = text.unwrap_or_else(|| DEFAULT_SERVICE_CIDR.into());
    if text == "none" || text.is_empty() {
        return Ok(None);
    }
    let cidr: Cidr = text
        .parse()
        .map_err(|e: hutch_core::network::NetworkError| invalid(e.to_string()))?;
    let Some(cluster) = cluster else {
        return Ok(None);
    };
    if cidr.overlaps(&cluster.cidr) {
        return Err(invalid(format!(
            "{cidr} overlaps the cluster network {}: give services a block of their own",
            cluster.cidr
        )));
    }
    if !(8..=30).contains(&cidr.prefix) {
        return Err(invalid(format!(
            "/{} does not fit: the services' block is /8 to /30",
            cidr.prefix
        )));
    }
    Ok(Some(cidr))
}

fn cluster_cidr(
    text: Option<String>,
    prefix: Option<u8>,
) -> Result<Option<ClusterCidr>, ConfigError> {
    let invalid = |field, message: String| ConfigError::Invalid { field, message };
    let text = text.unwrap_or_else(|| DEFAULT_CLUSTER_CIDR.into());
    if text == "none" || text.is_empty() {
        return Ok(None);
    }
    let cidr: Cidr = text
        .parse()
        .map_err(|e: hutch_core::network::NetworkError| invalid("cluster_cidr", e.to_string()))?;
    let node_prefix = prefix.unwrap_or(DEFAULT_NODE_SUBNET_PREFIX);
    if !(16..=29).contains(&node_prefix) || node_prefix < cidr.prefix {
        return Err(invalid(
            "node_subnet_prefix",
            format!(
                "/{node_prefix} does not fit: each node's block is /16 to /29 and inside the cluster's {cidr}"
            ),
        ));
    }
    if cidr.subnet_count(node_prefix).is_none() {
        return Err(invalid(
            "node_subnet_prefix",
            format!("/{node_prefix} cuts {cidr} into more than 2^24 blocks"),
        ));
    }
    Ok(Some(ClusterCidr { cidr, node_prefix }))
}

fn duration(
    field: &'static str,
    text: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(text) = text else { return Ok(default) };
    let d = humantime::parse_duration(&text).map_err(|e| {
        invalid(
            field,
            format!("'{text}' is not a duration like 500ms, 2s or 1m: {e}"),
        )
    })?;
    if d.is_zero() {
        return Err(invalid(field, "must be more than zero"));
    }
    Ok(d)
}

/// Merges flags/env (`over`) over the file over defaults, and validates.
pub fn resolve(
    mut over: FileConfig,
    mut file: FileConfig,
) -> Result<ControllerConfig, ConfigError> {
    let (tls_over, tls_file) = (tls_keys(&mut over), tls_keys(&mut file));
    let store = store_choice(&mut over, &mut file)?;
    let leader_lease_ttl = duration(
        "leader_lease_ttl",
        over.leader_lease_ttl
            .take()
            .or(file.leader_lease_ttl.take()),
        DEFAULT_LEADER_LEASE_TTL,
    )?;
    if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&leader_lease_ttl) {
        return Err(invalid(
            "leader_lease_ttl",
            format!(
                "{} is outside 1s to 60s (a dead leader is replaced within about this long)",
                humantime::format_duration(leader_lease_ttl)
            ),
        ));
    }
    let advertise_url = over.advertise_url.take().or(file.advertise_url.take());
    let defaults = ClusterConfig::default();
    let listen_text = over
        .listen
        .or(file.listen)
        .unwrap_or_else(|| DEFAULT_LISTEN.into());
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        invalid(
            "listen",
            format!("'{listen_text}' is not HOST:PORT with an IP address, e.g. {DEFAULT_LISTEN}"),
        )
    })?;
    let insecure = over.insecure.or(file.insecure).unwrap_or(false);
    let data_dir = over
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    if !data_dir.is_absolute() {
        return Err(invalid(
            "data_dir",
            format!("'{}' must be an absolute path", data_dir.display()),
        ));
    }
    let tls = tls_settings(&tls_over, &tls_file, listen, insecure, &data_dir)?;
    let tokens_file = over.tokens_file.or(file.tokens_file);
    if tls.is_none() {
        hutch_server::config::check_plaintext(listen, insecure)
            .map_err(|m| invalid("listen", m))?;
    } else if !listen.ip().is_loopback() && tokens_file.is_none() {
        return Err(invalid(
            "tokens_file",
            format!("serving {listen} beyond loopback, clients must authenticate: give --tokens-file with TOKEN,NAME,ROLE lines (e.g. `$(openssl rand -hex 32),ops,admin`)"),
        ));
    }
    let agent_token = over.agent_token.or(file.agent_token);
    if agent_token.is_some() && tls.is_none() && tokens_file.is_none() {
        return Err(invalid(
            "agent_token",
            "without a tokens file anyone who reaches the controller could register a node at an address of their choosing and be sent this token: give --tokens-file with one `TOKEN,NODE_NAME,node` line per agent (each agent registers with its own token)",
        ));
    }
    let strategy = match over.strategy.or(file.strategy) {
        Some(s) => s.parse::<Strategy>().map_err(|e| invalid("strategy", e))?,
        None => defaults.strategy,
    };
    let cluster_cidr = cluster_cidr(
        over.cluster_cidr.or(file.cluster_cidr),
        over.node_subnet_prefix.or(file.node_subnet_prefix),
    )?;
    let service_cidr = service_cidr(
        over.service_cidr.or(file.service_cidr),
        cluster_cidr.as_ref(),
    )?;
    let heartbeat_interval = duration(
        "heartbeat_interval",
        over.heartbeat_interval.or(file.heartbeat_interval),
        defaults.heartbeat_interval,
    )?;
    let not_ready_misses = over
        .not_ready_misses
        .or(file.not_ready_misses)
        .unwrap_or(defaults.not_ready_misses);
    if not_ready_misses == 0 {
        return Err(invalid("not_ready_misses", "must be at least 1"));
    }
    let down_after = duration(
        "down_after",
        over.down_after.or(file.down_after),
        defaults.down_after,
    )?;
    if down_after <= heartbeat_interval * not_ready_misses {
        return Err(invalid(
            "down_after",
            format!(
                "{} must be longer than heartbeat_interval x not_ready_misses ({})",
                humantime::format_duration(down_after),
                humantime::format_duration(heartbeat_interval * not_ready_misses)
            ),
        ));
    }
    let default_reservation_bytes = match over
        .default_memory_reservation
        .or(file.default_memory_reservation)
    {
        Some(t) => parse_size(&t).map_err(|e| invalid("default_memory_reservation", e))?,
        None => defaults.default_reservation_bytes,
    };
    let event_keep = over
        .event_keep
        .or(file.event_keep)
        .unwrap_or(defaults.event_keep);
    if event_keep == 0 {
        return Err(invalid("event_keep", "must be at least 1"));
    }
    let watch_buffer = over
        .watch_buffer
        .or(file.watch_buffer)
        .unwrap_or(defaults.watch_buffer);
    if watch_buffer == 0 {
        return Err(invalid("watch_buffer", "must be at least 1"));
    }
    let restart_backoff = duration(
        "restart_backoff",
        over.restart_backoff.or(file.restart_backoff),
        defaults.restart_backoff,
    )?;
    let restart_backoff_max = duration(
        "restart_backoff_max",
        over.restart_backoff_max.or(file.restart_backoff_max),
        defaults.restart_backoff_max,
    )?
    .max(restart_backoff);
    Ok(ControllerConfig {
        metrics_listen: hutch_server::config::metrics_listen(
            over.metrics_listen.or(file.metrics_listen),
        )?,
        listen,
        insecure,
        tls,
        tokens_file,
        store,
        leader_lease_ttl,
        advertise_url,
        limits: hutch_server::config::server_limits(
            over.max_concurrent_requests
                .or(file.max_concurrent_requests),
            over.max_requests_per_client
                .or(file.max_requests_per_client),
            over.request_timeout
                .as_deref()
                .or(file.request_timeout.as_deref()),
        )?,
        data_dir,
        cluster: ClusterConfig {
            agent_token: agent_token.map(Secret),
            agent_tls: None,
            cluster_cidr,
            service_cidr,
            strategy,
            heartbeat_interval,
            not_ready_misses,
            down_after,
            default_reservation_bytes,
            event_keep,
            watch_buffer,
            restart_backoff,
            restart_backoff_max,
        },
    })
}

/// The TLS keys of `f`, taken out of it.
fn tls_keys(f: &mut FileConfig) -> FileConfig {
    FileConfig {
        tls: f.tls,
        tls_dir: f.tls_dir.take(),
        tls_ca_cert: f.tls_ca_cert.take(),
        tls_ca_key: f.tls_ca_key.take(),
        tls_san: f.tls_san.take(),
        ..Default::default()
    }
}

/// TLS on or off, and where its files are: on when asked, or by default beyond loopback
/// unless the operator chose `insecure`.
fn tls_settings(
    over: &FileConfig,
    file: &FileConfig,
    listen: SocketAddr,
    insecure: bool,
    data_dir: &Path,
) -> Result<Option<TlsSettings>, ConfigError> {
    let on = over
        .tls
        .or(file.tls)
        .unwrap_or(!listen.ip().is_loopback() && !insecure);
    if !on {
        return Ok(None);
    }
    let pick = |a: &Option<PathBuf>, b: &Option<PathBuf>| a.clone().or_else(|| b.clone());
    let ca_files = match (
        pick(&over.tls_ca_cert, &file.tls_ca_cert),
        pick(&over.tls_ca_key, &file.tls_ca_key),
    ) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => return Err(invalid(
            "tls_ca_cert",
            "give both tls_ca_cert and tls_ca_key, or neither (a CA is then made on first start)",
        )),
    };
    let extra_names = over
        .tls_san
        .clone()
        .or_else(|| file.tls_san.clone())
        .unwrap_or_default();
    for name in &extra_names {
        let dns_ok = !name.is_empty()
            && name.len() <= 253
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if name.parse::<std::net::IpAddr>().is_err() && !dns_ok {
            return Err(invalid(
                "tls_san",
                format!("'{name}' is neither an IP address nor a DNS name"),
            ));
        }
    }
    Ok(Some(TlsSettings {
        dir: pick(&over.tls_dir, &file.tls_dir).unwrap_or_else(|| data_dir.join("tls")),
        ca_files,
        extra_names,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let c = resolve(FileConfig::default(), FileConfig::default()).expect("defaults");
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.cluster.strategy, Strategy::Spread);
        let file: FileConfig = toml::from_str(
            "strategy = \"binpack\"\nheartbeat_interval = \"200ms\"\ndown_after = \"2s\"\n",
        )
        .expect("toml");
        let over = FileConfig {
            listen: Some("127.0.0.1:9000".into()),
            ..Default::default()
        };
        let c = resolve(over, file).expect("config");
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.cluster.strategy, Strategy::Binpack);
        assert_eq!(c.cluster.heartbeat_interval, Duration::from_millis(200));
        assert_eq!(c.cluster.down_after, Duration::from_secs(2));
    }

    #[test]
    fn bad_values_name_their_key() {
        let bad = |f: FileConfig| {
            resolve(f, FileConfig::default())
                .expect_err("invalid")
                .to_string()
        };
        assert!(bad(FileConfig {
            strategy: Some("random".into()),
            ..Default::default()
        })
        .starts_with("strategy"));
        assert!(bad(FileConfig {
            down_after: Some("1s".into()),
            ..Default::default()
        })
        .starts_with("down_after"));
        assert!(bad(FileConfig {
            heartbeat_interval: Some("soon".into()),
            ..Default::default()
        })
        .starts_with("heartbeat_interval"));
        assert!(toml::from_str::<FileConfig>("stratgy = \"spread\"").is_err());
    }

    #[test]
    fn the_example_config_is_valid_and_serves_tls() {
        let file: FileConfig =
            hutch_server::config::parse_toml(include_str!("../../deploy/config/controller.toml"))
                .expect("deploy/config/controller.toml parses");
        let c = resolve(FileConfig::default(), file).expect("valid");
        assert!(c.tls.is_some() && c.tokens_file.is_some());
    }

    #[test]
    fn tls_is_on_beyond_loopback_and_needs_tokens_there() {
        let at = |listen: &str, f: FileConfig| {
            resolve(
                FileConfig {
                    listen: Some(listen.into()),
                    ..f
                },
                FileConfig::default(),
            )
        };
        let tokens = || FileConfig {
            tokens_file: Some("/etc/hutch/tokens".into()),
            ..Default::default()
        };
        assert!(at("127.0.0.1:7000", FileConfig::default()).is_ok_and(|c| c.tls.is_none()));
        let c = at("192.0.2.1:7000", tokens()).expect("tls");
        let tls = c.tls.expect("on");
        assert_eq!(tls.dir, PathBuf::from(DEFAULT_DATA_DIR).join("tls"));
        let err = at("192.0.2.1:7000", FileConfig::default()).expect_err("no tokens");
        assert!(err.to_string().starts_with("tokens_file"), "{err}");
        let plain = at(
            "192.0.2.1:7000",
            FileConfig {
                insecure: Some(true),
                ..Default::default()
            },
        )
        .expect("insecure");
        assert!(plain.tls.is_none());
        let forced = at(
            "127.0.0.1:7000",
            FileConfig {
                tls: Some(true),
                tls_san: Some(vec!["ctl.lab".into(), "bad name".into()]),
                ..Default::default()
            },
        )
        .expect_err("bad san");
        assert!(forced.to_string().starts_with("tls_san"), "{forced}");
        let half = at(
            "127.0.0.1:7000",
            FileConfig {
                tls: Some(true),
                tls_ca_cert: Some("/ca.crt".into()),
                ..Default::default()
            },
        )
        .expect_err("half a CA");
        assert!(half.to_string().starts_with("tls_ca_cert"), "{half}");
    }

    #[test]
    fn the_agent_token_goes_only_to_nodes_that_proved_who_they_are() {
        let with = |f: FileConfig| {
            resolve(
                FileConfig {
                    agent_token: Some("t".repeat(32)),
                    ..f
                },
                FileConfig::default(),
            )
        };
        let open = with(FileConfig::default()).expect_err("open controller");
        assert!(open.to_string().starts_with("agent_token"), "{open}");
        assert!(with(FileConfig {
            tokens_file: Some("/etc/hutch/tokens".into()),
            ..Default::default()
        })
        .is_ok());
        assert!(with(FileConfig {
            tls: Some(true),
            ..Default::default()
        })
        .is_ok());
    }
}
