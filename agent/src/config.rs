//! The agent's configuration: command-line flags, environment variables and an optional TOML
//! file (`--config`), merged in that order of precedence and validated as a whole before the
//! agent touches the host or binds a port. Unknown keys in the file are errors, so a typo
//! never silently becomes a default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::names::validate_name;
use crate::network::NetworkSettings;
use crate::spec::parse_size;
use hutch_core::network::Cidr;
use hutch_server::limits::ServerLimits;

/// Default listen address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/hutch";
/// Default number of events kept in the log.
pub const DEFAULT_EVENT_LOG_KEEP: usize = 10_000;
/// Default memory kept back for the host.
pub const DEFAULT_MEMORY_RESERVE: &str = "256MiB";

/// The file form (every key optional).
#[derive(Debug, Default, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `host:port` to serve on.
    pub listen: Option<String>,
    /// State directory.
    pub state_dir: Option<PathBuf>,
    /// Rootfs store directory.
    pub rootfs_dir: Option<PathBuf>,
    /// Node name.
    pub name: Option<String>,
    /// Delegated cgroup directory.
    pub cgroup_root: Option<PathBuf>,
    /// Events kept before compaction.
    pub event_log_keep: Option<usize>,
    /// Memory kept back for the host, e.g. "256MiB".
    pub memory_reserve: Option<String>,
    /// The controller to register with, e.g. "http://10.0.0.1:7000".
    pub controller: Option<String>,
    /// `host:port` the controller dials to reach this agent (default: the listen address).
    pub advertise: Option<String>,
    /// Labels for node selectors.
    pub labels: Option<BTreeMap<String, String>>,
    /// Serve plaintext on a non-loopback address anyway.
    pub insecure: Option<bool>,
    /// Bearer token for the controller (a `node` token).
    pub controller_token: Option<String>,
    /// Requests worked on at once before new ones are shed.
    pub max_concurrent_requests: Option<usize>,
    /// Requests one client address may have in flight.
    pub max_requests_per_client: Option<usize>,
    /// Longest a request may take to be answered, e.g. "10m"; "0" for no limit.
    pub request_timeout: Option<String>,
    /// Bearer tokens allowed to call this agent (`TOKEN,NAME,ROLE` lines).
    pub tokens_file: Option<PathBuf>,
    /// A join token (from `hutch token create`): get a node certificate on first start.
    pub join_token: Option<String>,
    /// Largest log file of a container whose spec says nothing, e.g. "10MiB".
    pub log_max_size: Option<String>,
    /// Log files kept per container whose spec says nothing.
    pub log_max_files: Option<u32>,
    /// Where CNI plugins are, `:`-separated (default `/usr/lib/cni:/opt/cni/bin`).
    pub cni_bin_dir: Option<String>,
    /// Where CNI network configuration files are (default `/etc/cni/net.d`).
    pub cni_conf_dir: Option<PathBuf>,
    /// The CNI network of bridged containers (default `hutch`).
    pub cni_network: Option<String>,
    /// The node's container subnet when no controller gives one, e.g. "198.19.0.0/24".
    pub network_subnet: Option<String>,
    /// Node paths under which bind mount sources may lie (none by default).
    pub allowed_bind_paths: Option<Vec<PathBuf>>,
    /// `host:port` to serve Prometheus metrics on (off by default).
    pub metrics_listen: Option<String>,
    /// Registries (`HOST:PORT`) reached over plain HTTP; loopback ones always are.
    pub insecure_registries: Option<Vec<String>>,
    /// Registry credentials, in Docker's `config.json` format.
    pub registry_auth: Option<PathBuf>,
    /// Most unpacked bytes of one image, e.g. "32GiB".
    pub image_max_size: Option<String>,
    /// Create device nodes that image layers hold (refused by default).
    pub allow_image_devices: Option<bool>,
    /// Import an image named as a container's rootfs on the fly (default true).
    pub image_pull: Option<bool>,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// Address to serve on.
    pub listen: SocketAddr,
    /// State directory.
    pub state_dir: PathBuf,
    /// Rootfs store directory, when not `STATE_DIR/rootfs`.
    pub rootfs_dir: Option<PathBuf>,
    /// Node name (also names hutch's cgroup subtree).
    pub name: String,
    /// Delegated cgroup directory, when not the agent's own.
    pub cgroup_root: Option<PathBuf>,
    /// Events kept before compaction.
    pub event_log_keep: usize,
    /// Memory kept back for the host, in bytes.
    pub memory_reserve_bytes: u64,
    /// The controller to register with.
    pub controller: Option<String>,
    /// `host:port` the controller dials to reach this agent.
    pub advertise: String,
    /// Labels for node selectors.
    pub labels: BTreeMap<String, String>,
    /// Plaintext on a non-loopback address was accepted by the operator.
    pub insecure: bool,
    /// Bearer token for the controller.
    pub controller_token: Option<String>,
    /// Budgets of requests in flight and the request time limit.
    pub limits: ServerLimits,
    /// The tokens file, when calls need tokens.
    pub tokens_file: Option<PathBuf>,
    /// The join token, when the agent is to join a cluster with TLS.
    pub join_token: Option<String>,
    /// Log rotation of containers whose spec says nothing.
    pub log_defaults: crate::runtime::logs::LogLimits,
    /// The container network's settings.
    pub network: NetworkSettings,
    /// Node paths under which bind mount sources may lie; empty: no bind mounts.
    pub allowed_bind_paths: Vec<PathBuf>,
    /// Where to serve Prometheus metrics; `None`: nowhere.
    pub metrics_listen: Option<SocketAddr>,
    /// How images are imported.
    pub images: crate::rootfs::image::ImageOptions,
}

pub use hutch_server::config::{
    check_plaintext, parse_toml, read_toml, server_limits, ConfigError,
};

/// Reads a TOML config file.
pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    read_toml(path)
}

/// Pure part of [`read_file`].
pub fn parse_file(text: &str) -> Result<FileConfig, String> {
    parse_toml(text)
}

/// The host name as a node name, or `default` when it is not a valid name.
pub fn default_name() -> String {
    let host = crate::node::hostname();
    if validate_name("name", &host).is_ok() {
        host
    } else {
        "default".into()
    }
}

/// Merges flags/env (`over`) over the file (`file`) over defaults, and validates.
pub fn resolve(over: FileConfig, file: FileConfig) -> Result<AgentConfig, ConfigError> {
    let invalid = |field, message: String| ConfigError::Invalid { field, message };
    let images = image_options(&over, &file)?;
    let listen_text = over
        .listen
        .or(file.listen)
        .unwrap_or_else(|| DEFAULT_LISTEN.into());
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        invalid(
            "listen",
            format!("'{listen_text}' is not HOST:PORT with an IP address, e.g. 127.0.0.1:7070"),
        )
    })?;
    let insecure = over.insecure.or(file.insecure).unwrap_or(false);
    let limits = server_limits(
        over.max_concurrent_requests
            .or(file.max_concurrent_requests),
        over.max_requests_per_client
            .or(file.max_requests_per_client),
        over.request_timeout
            .as_deref()
            .or(file.request_timeout.as_deref()),
    )?;
    let name = over.name.or(file.name).unwrap_or_else(default_name);
    validate_name("name", &name).map_err(|e| invalid("name", e.to_string()))?;
    let state_dir = over
        .state_dir
        .or(file.state_dir)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    if !state_dir.is_absolute() {
        return Err(invalid(
            "state_dir",
            format!("'{}' must be an absolute path", state_dir.display()),
        ));
    }
    let rootfs_dir = over.rootfs_dir.or(file.rootfs_dir);
    if let Some(d) = &rootfs_dir {
        if !d.is_absolute() {
            return Err(invalid(
                "rootfs_dir",
                format!("'{}' must be an absolute path", d.display()),
            ));
        }
    }
    let event_log_keep = over
        .event_log_keep
        .or(file.event_log_keep)
        .unwrap_or(DEFAULT_EVENT_LOG_KEEP);
    if event_log_keep == 0 {
        return Err(invalid("event_log_keep", "must be at least 1".into()));
    }
    let reserve_text = over
        .memory_reserve
        .or(file.memory_reserve)
        .unwrap_or_else(|| DEFAULT_MEMORY_RESERVE.into());
    let memory_reserve_bytes =
        parse_size(&reserve_text).map_err(|e| invalid("memory_reserve", e))?;
    let controller = over
        .controller
        .or(file.controller)
        .filter(|c| !c.is_empty());
    let advertise = match over.advertise.or(file.advertise) {
        Some(a) => {
            let ok = a
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
            if !ok {
                return Err(invalid(
                    "advertise",
                    format!("'{a}' is not HOST:PORT, e.g. 10.0.0.5:7070"),
                ));
            }
            a
        }
        None => listen.to_string(),
    };
    if controller.is_some() && listen.ip().is_unspecified() && advertise == listen.to_string() {
        return Err(invalid(
            "advertise",
            format!("listening on {listen}, the controller cannot know how to reach this agent: give --advertise HOST:PORT"),
        ));
    }
    let join_token = over
        .join_token
        .or(file.join_token)
        .filter(|t| !t.is_empty());
    if join_token.is_some() && controller.is_none() {
        return Err(invalid(
            "join",
            "a join token needs the controller to join: give --controller HOST:PORT".into(),
        ));
    }
    let log_defaults = log_defaults(
        over.log_max_size.or(file.log_max_size),
        over.log_max_files.or(file.log_max_files),
    )?;
    let network = network_settings(
        NetworkFields {
            bin_dir: over.cni_bin_dir.or(file.cni_bin_dir),
            conf_dir: over.cni_conf_dir.or(file.cni_conf_dir),
            name: over.cni_network.or(file.cni_network),
            subnet: over.network_subnet.or(file.network_subnet),
        },
        controller.is_some(),
    )?;
    let allowed_bind_paths = over
        .allowed_bind_paths
        .or(file.allowed_bind_paths)
        .unwrap_or_default();
    if let Some(p) = allowed_bind_paths.iter().find(|p| !p.is_absolute()) {
        return Err(invalid(
            "allowed_bind_paths",
            format!("'{}' is not an absolute path", p.display()),
        ));
    }
    let labels = over.labels.or(file.labels).unwrap_or_default();
    for (k, v) in &labels {
        if k.is_empty() || k.contains('=') || k.contains(',') || v.contains(',') {
            return Err(invalid(
                "labels",
                format!("'{k}={v}' is not a label: keys are non-empty, without '=' or ','; values without ','"),
            ));
        }
    }
    Ok(AgentConfig {
        controller,
        advertise,
        labels,
        insecure,
        controller_token: over.controller_token.or(file.controller_token),
        limits,
        tokens_file: over.tokens_file.or(file.tokens_file),
        join_token,
        listen,
        state_dir,
        rootfs_dir,
        name,
        cgroup_root: over.cgroup_root.or(file.cgroup_root),
        event_log_keep,
        memory_reserve_bytes,
        log_defaults,
        network,
        allowed_bind_paths,
        metrics_listen: hutch_server::config::metrics_listen(
            over.metrics_listen.or(file.metrics_listen),
        )?,
        images,
    })
}

/// The image settings, checked.
fn image_options(
    over: &FileConfig,
    file: &FileConfig,
) -> Result<crate::rootfs::image::ImageOptions, ConfigError> {
    let invalid = |field, message: String| ConfigError::Invalid { field, message };
    let defaults = crate::rootfs::image::ImageOptions::default();
    let insecure_registries = over
        .insecure_registries
        .clone()
        .or(file.insecure_registries.clone())
        .unwrap_or_default();
    for r in &insecure_registries {
        let ok = r.rsplit_once(':').is_some_and(|(h, p)| {
            !h.is_empty() && !h.contains('/') && p.parse::<u16>().is_ok_and(|p| p != 0)
        });
        if !ok {
            return Err(invalid(
                "insecure_registries",
                format!("'{r}' is not HOST:PORT (e.g. 198.18.0.5:5000)"),
            ));
        }
    }
    let registry_auth = over.registry_auth.clone().or(file.registry_auth.clone());
    if let Some(p) = &registry_auth {
        if !p.is_file() {
            return Err(invalid(
                "registry_auth",
                format!("'{}' is not a readable file", p.display()),
            ));
        }
    }
    let max_image_bytes = match over.image_max_size.clone().or(file.image_max_size.clone()) {
        Some(text) => parse_size(&text).map_err(|e| invalid("image_max_size", e))?,
        None => defaults.max_image_bytes,
    };
    if max_image_bytes < 1 << 20 {
        return Err(invalid("image_max_size", "must be at least 1MiB".into()));
    }
    Ok(crate::rootfs::image::ImageOptions {
        insecure_registries,
        auth_file: registry_auth,
        max_image_bytes,
        allow_devices: over
            .allow_image_devices
            .or(file.allow_image_devices)
            .unwrap_or(false),
        allow_pull: over
            .image_pull
            .or(file.image_pull)
            .unwrap_or(defaults.allow_pull),
    })
}

/// The network settings as given, before checks.
struct NetworkFields {
    bin_dir: Option<String>,
    conf_dir: Option<PathBuf>,
    name: Option<String>,
    subnet: Option<String>,
}

fn network_settings(
    f: NetworkFields,
    has_controller: bool,
) -> Result<NetworkSettings, ConfigError> {
    let invalid = |field, message: String| ConfigError::Invalid { field, message };
    let mut settings = NetworkSettings::default();
    if let Some(dirs) = f.bin_dir {
        settings.bin_dirs = std::env::split_paths(&dirs).collect();
        if settings.bin_dirs.is_empty() || settings.bin_dirs.iter().any(|d| !d.is_absolute()) {
            return Err(invalid(
                "cni_bin_dir",
                format!("'{dirs}' is not a list of absolute directories separated by ':'"),
            ));
        }
    }
    if let Some(dir) = f.conf_dir {
        if !dir.is_absolute() {
            return Err(invalid(
                "cni_conf_dir",
                format!("'{}' is not an absolute directory", dir.display()),
            ));
        }
        settings.conf_dir = dir;
    }
    if let Some(name) = f.name {
        validate_name("cni_network", &name).map_err(|e| invalid("cni_network", e.to_string()))?;
        settings.default_network = name;
    }
    if let Some(text) = f.subnet.filter(|s| !s.is_empty()) {
        if has_controller {
            return Err(invalid(
                "network_subnet",
                "the controller gives each node its subnet (its --cluster-cidr); --network-subnet is for an agent without one".into(),
            ));
        }
        let subnet: Cidr = text
            .parse()
            .map_err(|e: hutch_core::network::NetworkError| {
                invalid("network_subnet", e.to_string())
            })?;
        if !(16..=29).contains(&subnet.prefix) {
            return Err(invalid(
                "network_subnet",
                format!("{subnet}: give a block of /16 to /29"),
            ));
        }
        settings.subnet = Some(subnet);
    }
    Ok(settings)
}

/// The agent's log rotation defaults, checked as a spec's are.
fn log_defaults(
    size: Option<String>,
    files: Option<u32>,
) -> Result<crate::runtime::logs::LogLimits, ConfigError> {
    let invalid = |field, message: String| ConfigError::Invalid { field, message };
    let defaults = crate::runtime::logs::LogLimits::default();
    let max_bytes = match size {
        Some(s) => parse_size(&s).map_err(|e| invalid("log_max_size", e))?,
        None => defaults.max_bytes,
    };
    if max_bytes < crate::spec::MIN_LOG_FILE_BYTES {
        return Err(invalid(
            "log_max_size",
            format!("{max_bytes} bytes is below the minimum of 64KiB"),
        ));
    }
    let max_files = files.unwrap_or(defaults.max_files);
    if !(1..=crate::spec::MAX_LOG_FILES).contains(&max_files) {
        return Err(invalid(
            "log_max_files",
            format!(
                "{max_files} is not between 1 and {}",
                crate::spec::MAX_LOG_FILES
            ),
        ));
    }
    Ok(crate::runtime::logs::LogLimits {
        max_bytes,
        max_files,
    })
}

impl AgentConfig {
    /// Whether the agent may serve as configured: with TLS (it has joined, or joins now)
    /// anywhere; in plaintext on loopback, or beyond with `insecure`.
    pub fn check_transport(&self, joined: bool) -> Result<(), ConfigError> {
        if joined || self.join_token.is_some() {
            return Ok(());
        }
        check_plaintext(self.listen, self.insecure).map_err(|m| ConfigError::Invalid {
            field: "listen",
            message: format!(
                "{m}; or join a cluster with TLS: --join TOKEN (from `hutch token create`)"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_off_loopback_needs_insecure_or_tls() {
        let config = |listen: &str, insecure: Option<bool>, join: Option<&str>| {
            resolve(
                FileConfig {
                    listen: Some(listen.into()),
                    insecure,
                    join_token: join.map(String::from),
                    controller: join.map(|_| "192.0.2.1:7000".into()),
                    advertise: Some("192.0.2.10:7070".into()),
                    ..Default::default()
                },
                FileConfig::default(),
            )
            .expect("config")
        };
        let open = |listen: &str, insecure: Option<bool>| {
            config(listen, insecure, None).check_transport(false)
        };
        let err = open("192.0.2.10:7070", None).expect_err("refused");
        assert!(err.to_string().contains("--insecure"), "{err}");
        assert!(err.to_string().contains("--join"), "{err}");
        assert!(open("0.0.0.0:7070", Some(false)).is_err());
        assert!(open("192.0.2.10:7070", Some(true)).is_ok());
        assert!(open("127.0.0.1:7070", None).is_ok());
        assert!(open("[::1]:7070", None).is_ok());
        assert!(config("192.0.2.10:7070", None, None)
            .check_transport(true)
            .is_ok());
        assert!(config("192.0.2.10:7070", None, Some("HJ1.x"))
            .check_transport(false)
            .is_ok());
        let no_controller = resolve(
            FileConfig {
                join_token: Some("HJ1.x".into()),
                ..Default::default()
            },
            FileConfig::default(),
        )
        .expect_err("join needs a controller");
        assert!(
            no_controller.to_string().starts_with("join"),
            "{no_controller}"
        );
    }

    #[test]
    fn the_example_config_is_valid_and_wants_a_join() {
        let file = parse_file(include_str!("../../deploy/config/agent.toml"))
            .expect("deploy/config/agent.toml parses");
        let c = resolve(FileConfig::default(), file).expect("valid");
        assert!(
            c.check_transport(false).is_err(),
            "beyond loopback it must join first"
        );
        assert!(c.check_transport(true).is_ok());
    }

    #[test]
    fn defaults() {
        let c = resolve(FileConfig::default(), FileConfig::default()).expect("defaults");
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(c.event_log_keep, DEFAULT_EVENT_LOG_KEEP);
        assert_eq!(c.memory_reserve_bytes, 256 << 20);
    }

    #[test]
    fn allowed_bind_paths_from_the_file_are_absolute() {
        let c = resolve(FileConfig::default(), FileConfig::default()).expect("defaults");
        assert!(c.allowed_bind_paths.is_empty(), "none by default");
        let file = parse_file("allowed_bind_paths = [\"/srv\", \"/home\"]\n").expect("toml");
        let c = resolve(FileConfig::default(), file).expect("valid");
        assert_eq!(
            c.allowed_bind_paths,
            vec![PathBuf::from("/srv"), PathBuf::from("/home")]
        );
        let file = parse_file("allowed_bind_paths = [\"srv\"]\n").expect("toml");
        let e = resolve(FileConfig::default(), file).expect_err("relative");
        assert!(e.to_string().contains("allowed_bind_paths"), "{e}");
    }

    #[test]
    fn flags_win_over_the_file() {
        let file =
            parse_file("listen = \"127.0.0.1:9000\"\nname = \"lab-1\"\nevent_log_keep = 5\n")
                .expect("toml");
        let over = FileConfig {
            listen: Some("127.0.0.1:9100".into()),
            ..Default::default()
        };
        let c = resolve(over, file).expect("config");
        assert_eq!(c.listen.port(), 9100);
        assert_eq!(c.name, "lab-1");
        assert_eq!(c.event_log_keep, 5);
    }

    #[test]
    fn typos_and_bad_values_are_errors() {
        assert!(parse_file("lisen = \"x\"")
            .expect_err("unknown key")
            .contains("lisen"));
        let bad = |f: FileConfig| {
            resolve(f, FileConfig::default())
                .expect_err("invalid")
                .to_string()
        };
        assert!(bad(FileConfig {
            listen: Some("localhost".into()),
            ..Default::default()
        })
        .starts_with("listen"));
        assert!(bad(FileConfig {
            name: Some("a/b".into()),
            ..Default::default()
        })
        .starts_with("name"));
        assert!(bad(FileConfig {
            state_dir: Some("rel".into()),
            ..Default::default()
        })
        .starts_with("state_dir"));
        assert!(bad(FileConfig {
            event_log_keep: Some(0),
            ..Default::default()
        })
        .starts_with("event_log_keep"));
        assert!(bad(FileConfig {
            memory_reserve: Some("lots".into()),
            ..Default::default()
        })
        .starts_with("memory_reserve"));
    }
}
