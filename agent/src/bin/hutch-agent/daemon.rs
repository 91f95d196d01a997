//! `hutch-agent serve`: the configuration resolved and checked, the join, and the service.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use hutch_agent::cgroup::{detect_own_cgroup, CgroupPath};
use hutch_agent::config::{self, AgentConfig, FileConfig};
use hutch_agent::runtime::Runtime;
use hutch_agent::service::auth::Tokens;
use hutch_agent::service::join;
use hutch_agent::service::registration::Registration;
use hutch_agent::service::server::ServeOptions;
use hutch_core::token_file::token_from;
use hutch_pki::material::TlsMaterial;

use crate::args::{Cli, Command};
use crate::{EXIT_HUTCH_ERROR, EXIT_USAGE};

/// The resolved configuration and the cgroup root it names.
pub(crate) struct Loaded {
    /// The agent's settings.
    pub(crate) agent: AgentConfig,
    /// The tokens of `tokens_file`, read with the rest of the configuration.
    pub(crate) tokens: Option<Arc<Tokens>>,
    /// The node certificate from an earlier join (serving only).
    pub(crate) tls: Option<TlsMaterial>,
    /// The cgroup hutch's subtree is rooted at.
    pub(crate) cgroup_root: Option<CgroupPath>,
}

pub(crate) fn load_config(cli: &Cli) -> Result<Loaded, String> {
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
        controller_token: match serve {
            Some(s) => token_from(
                s.controller_token.clone(),
                s.controller_token_file.as_deref(),
            )
            .map_err(|e| format!("--controller-token-file: {e}"))?,
            None => None,
        },
        max_concurrent_requests: serve.and_then(|s| s.limits.max_concurrent_requests),
        max_requests_per_client: serve.and_then(|s| s.limits.max_requests_per_client),
        request_timeout: serve.and_then(|s| s.limits.request_timeout.clone()),
        tokens_file: serve.and_then(|s| s.tokens_file.clone()),
        log_max_size: serve.and_then(|s| s.log_max_size.clone()),
        log_max_files: serve.and_then(|s| s.log_max_files),
        cni_bin_dir: serve.and_then(|s| s.cni_bin_dir.clone()),
        cni_conf_dir: serve.and_then(|s| s.cni_conf_dir.clone()),
        cni_network: serve.and_then(|s| s.cni_network.clone()),
        network_subnet: serve.and_then(|s| s.network_subnet.clone()),
        metrics_listen: serve.and_then(|s| s.metrics_listen.clone()),
        allowed_bind_paths: serve
            .map(|s| s.allowed_bind_paths.clone())
            .filter(|p| !p.is_empty()),
        insecure_registries: serve
            .map(|s| s.insecure_registries.clone())
            .filter(|r| !r.is_empty()),
        registry_auth: serve.and_then(|s| s.registry_auth.clone()),
        image_max_size: serve.and_then(|s| s.image_max_size.clone()),
        allow_image_devices: serve.and_then(|s| s.allow_image_devices.then_some(true)),
        image_pull: serve.and_then(|s| s.no_image_pull.then_some(false)),
        join_token: match serve {
            Some(s) => token_from(s.join_token.clone(), s.join_file.as_deref())
                .map_err(|e| format!("--join-file: {e}"))?,
            None => None,
        },
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
pub(crate) async fn join_node(config: &AgentConfig, token: &str) -> Result<TlsMaterial, ExitCode> {
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

pub(crate) async fn serve(
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
    let metrics = match config.metrics_listen {
        Some(at) => match hutch_server::metrics::bind(at).await {
            Ok((listener, url)) => {
                println!("hutch-agent {} metrics on {url}", config.name);
                Some(listener)
            }
            Err(e) => {
                eprintln!("hutch-agent: cannot serve metrics on {at}: {e}");
                return ExitCode::from(EXIT_HUTCH_ERROR);
            }
        },
        None => None,
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
        metrics,
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
pub(crate) fn parse_labels(args: &[String]) -> Result<BTreeMap<String, String>, String> {
    args.iter()
        .map(|a| {
            a.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| format!("--label {a}: expected KEY=VALUE"))
        })
        .collect()
}

/// Turns a cgroup directory into a [`CgroupPath`] on the hierarchy hutch uses.
pub(crate) fn cgroup_path_of(dir: &std::path::Path) -> Result<CgroupPath, String> {
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
