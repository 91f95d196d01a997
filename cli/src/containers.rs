//! The container commands: run, ps, inspect, logs, exec, stop, kill, rm, attach, wait,
//! events.

use std::io::Write;
use std::process::ExitCode;

use hutch::proto as v1;
use hutch::spec::parse_pairs;
use hutch::{Client, ContainerSpec, Error, RestartPolicy};
use hutch_core::step::Step;
use tokio_stream::StreamExt;

use crate::args::RunArgs;
use crate::stdout::{self, outln};
use crate::{broken_pipe, interactive, output, print_json, EXIT_HUTCH};

/// `hutch ps`.
/// What `hutch ps` lists and how.
pub(crate) struct PsQuery {
    /// Ended containers too.
    pub(crate) all: bool,
    /// Only this node's.
    pub(crate) node: Option<String>,
    /// `--label KEY=VALUE`.
    pub(crate) labels: Vec<String>,
    /// Names only.
    pub(crate) quiet: bool,
    /// `--filter KEY=VALUE`.
    pub(crate) filters: Vec<String>,
    /// `--format TEMPLATE`.
    pub(crate) format: Option<String>,
}

/// `hutch ps`.
pub(crate) async fn ps(client: &Client, q: PsQuery, json: bool) -> Result<ExitCode, Error> {
    let PsQuery {
        all,
        node,
        labels,
        quiet,
        filters,
        format,
    } = q;
    let filters = filters
        .iter()
        .map(|f| crate::ps_view::parse_filter(f))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Error::InvalidInput)?;
    if let Some(f) = &format {
        crate::ps_view::check_format(f).map_err(Error::InvalidInput)?;
    }
    // Asking for a state that has ended lists ended containers too.
    let all = all
        || filters.iter().any(|f| {
            matches!(f, crate::ps_view::Filter::State(s) if hutch::is_final(
                v1::ContainerState::from_str_name(&format!("CONTAINER_STATE_{}", s.to_ascii_uppercase()))
                    .map_or(0, |s| s as i32)
            ))
        });
    let mut list = client
        .list(v1::ListClusterContainersRequest {
            node: node.unwrap_or_default(),
            state: 0,
            labels: parse_pairs("label", &labels)?,
            ..Default::default()
        })
        .await?;
    if !all {
        list.retain(|c| !hutch::is_final(c.state));
    }
    list.retain(|c| crate::ps_view::passes(&filters, c));
    if let Some(f) = &format {
        for c in &list {
            outln!("{}", crate::ps_view::render(f, c));
        }
    } else if quiet {
        for c in &list {
            outln!("{}", c.name);
        }
    } else if json {
        print_json(&list.iter().map(output::container_json).collect::<Vec<_>>())?;
    } else {
        output::containers_table(&list);
    }
    Ok(ExitCode::SUCCESS)
}

/// `hutch inspect`.
pub(crate) async fn inspect(client: &Client, id: &str, json: bool) -> Result<ExitCode, Error> {
    let c = client.get(id).await?;
    if json {
        print_json(&output::container_json(&c))?;
    } else {
        output::container_details(&c);
    }
    Ok(ExitCode::SUCCESS)
}

/// `hutch exec -i`/`-t`: an interactive session.
pub(crate) async fn exec_session(
    client: &Client,
    id: &str,
    command: Vec<String>,
    interactive: bool,
    tty: bool,
) -> Result<ExitCode, Error> {
    let size = tty.then(interactive::terminal_size);
    let session = client.container(id).exec_session(command, size).await?;
    let raw = if tty {
        interactive::RawMode::enable()?
    } else {
        None
    };
    let ended = interactive::run(session, tty, interactive, false).await;
    drop(raw);
    match ended? {
        interactive::Ended::Exit(code, signal) => Ok(ExitCode::from(exit_code_of(code, signal))),
        interactive::Ended::Detached => Ok(ExitCode::SUCCESS),
        interactive::Ended::OutputClosed => Ok(broken_pipe()),
    }
}

/// `hutch exec`: run a command, print its output.
pub(crate) async fn exec(
    client: &Client,
    id: &str,
    command: Vec<String>,
    json: bool,
) -> Result<ExitCode, Error> {
    let out = client.container(id).exec(command).await?;
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

/// `hutch stop`.
pub(crate) async fn stop(
    client: &Client,
    ids: Vec<String>,
    time: Option<u32>,
    json: bool,
) -> Result<ExitCode, Error> {
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

/// `hutch kill`.
pub(crate) async fn kill(client: &Client, id: &str, signal: &str) -> Result<ExitCode, Error> {
    client.container(id).kill(parse_signal(signal)?).await?;
    outln!("{id}");
    Ok(ExitCode::SUCCESS)
}

/// `hutch rm`.
pub(crate) async fn rm(client: &Client, ids: Vec<String>, force: bool) -> Result<ExitCode, Error> {
    each_reporting(ids, |id| async move {
        client.container(&id).remove(force).await
    })
    .await
}

/// As `docker rm a b c`: `act` is tried on every name, each success printed, each failure
/// reported and the rest go on; exits 125 if any failed.
pub(crate) async fn each_reporting<F, Fut>(names: Vec<String>, act: F) -> Result<ExitCode, Error>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>>,
{
    let mut failed = false;
    for name in names {
        match act(name.clone()).await {
            Ok(()) => outln!("{name}"),
            Err(e) => {
                eprintln!("hutch: {name}: {e}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::from(crate::EXIT_HUTCH)
    } else {
        ExitCode::SUCCESS
    })
}

/// `hutch attach`.
pub(crate) async fn attach(client: &Client, id: &str) -> Result<ExitCode, Error> {
    let container = client.container(id);
    let stdin = container.info().await?.spec.is_some_and(|s| s.stdin);
    attach_terminal(&container, stdin, false, None).await
}

/// `hutch wait`.
pub(crate) async fn wait(client: &Client, id: &str, json: bool) -> Result<ExitCode, Error> {
    let end = client.container(id).wait().await?;
    if json {
        print_json(&output::container_json(&end))?;
    } else {
        // As `docker wait`: the code the shell would see (128+N for signal N).
        outln!("{}", final_code(&end));
    }
    Ok(ExitCode::from(final_code(&end)))
}

/// A `--filter KEY=VALUE` list as the watch request's filters.
fn watch_filters(
    since: Option<&str>,
    since_revision: u64,
    filters: &[String],
) -> Result<v1::WatchContainersRequest, Error> {
    let mut req = v1::WatchContainersRequest {
        since_revision,
        ..Default::default()
    };
    if let Some(t) = since {
        let at = crate::time_arg::parse_time(t, std::time::SystemTime::now())
            .map_err(|e| Error::InvalidInput(format!("--since: {e}")))?;
        req.since_time = Some(hutch_core::convert::timestamp(at));
    }
    // Not a map: a key given twice means either value.
    for filter in filters {
        let (key, value) = filter
            .split_once('=')
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "--filter {filter}: give KEY=VALUE, e.g. state=exited"
                ))
            })?;
        match key.as_str() {
            "container" | "name" => req.containers.push(value),
            "node" => req.nodes.push(value),
            "state" | "status" => {
                let name = format!("CONTAINER_STATE_{}", value.to_ascii_uppercase());
                let state = v1::ContainerState::from_str_name(&name)
                    .filter(|s| *s != v1::ContainerState::Unspecified)
                    .ok_or_else(|| {
                        Error::InvalidInput(format!(
                            "--filter state={value}: choose from pending, scheduled, preparing, running, exited, oom_killed, failed, lost"
                        ))
                    })?;
                req.states.push(state as i32);
            }
            other => {
                return Err(Error::InvalidInput(format!(
                    "--filter {other}={value}: filter by container=NAME, node=NAME or state=STATE"
                )))
            }
        }
    }
    Ok(req)
}

/// `hutch events`.
pub(crate) async fn events(
    client: &Client,
    since: Option<String>,
    since_revision: u64,
    filters: Vec<String>,
    json: bool,
) -> Result<ExitCode, Error> {
    let request = watch_filters(since.as_deref(), since_revision, &filters)?;
    let mut stream = client.watch_filtered(request).await?;
    if !json {
        outln!(
            "{:>8}  {:<24} {:<8} {:<20} {:<10} {:<12} STATUS",
            "REVISION",
            "TIME",
            "TYPE",
            "CONTAINER",
            "STATE",
            "NODE"
        );
    }
    while let Some(e) = stream.next().await {
        let e = e?;
        let Some(c) = e.container else { continue };
        let kind = v1::WatchEventType::try_from(e.r#type)
            .map(|t| {
                t.as_str_name()
                    .trim_start_matches("WATCH_EVENT_TYPE_")
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        let time = output::rfc3339(&e.time);
        let line = if json {
            format!(
                "{}\n",
                serde_json::json!({"revision": e.revision, "time": time, "type": kind, "container": output::container_json(&c)})
            )
        } else {
            format!(
                "{:>8}  {:<24} {:<8} {:<20} {:<10} {:<12} {}\n",
                e.revision,
                time.unwrap_or_else(|| "-".into()),
                kind,
                c.name,
                output::state_name(c.state),
                if c.node.is_empty() { "-" } else { &c.node },
                c.status_message
            )
        };
        stdout::write_streamed(line.into_bytes()).await;
    }
    Ok(ExitCode::SUCCESS)
}

fn spec_of(args: &RunArgs) -> Result<ContainerSpec, Error> {
    let mut spec = ContainerSpec::new(args.rootfs.clone())
        .command(args.command.clone())
        .restart(args.restart.parse::<RestartPolicy>()?);
    if let Some(program) = &args.entrypoint {
        spec = spec.entrypoint(if program.is_empty() {
            Vec::new()
        } else {
            vec![program.clone()]
        });
    }
    if let Some(n) = &args.name {
        spec = spec.name(n.clone());
    }
    if args.rm {
        spec = spec.auto_remove();
    }
    if let Some(m) = &args.memory {
        spec = spec.memory(m);
    }
    if let Some(c) = &args.cpus {
        hutch_core::cpu::parse_cores(c).map_err(|e| Error::InvalidInput(format!("--cpus: {e}")))?;
        spec = spec.cpus(c);
    }
    if let Some(shares) = args.cpu_shares {
        spec = spec.cpu_shares(shares);
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
    if let Some(mode) = &args.network {
        let mode = mode
            .parse::<hutch_core::network::NetworkMode>()
            .map_err(|e| Error::InvalidInput(format!("--network: {e}")))?;
        spec = spec.network(mode);
    }
    for p in &args.publish {
        hutch_core::network::parse_publish(p)
            .map_err(|e| Error::InvalidInput(format!("--publish: {e}")))?;
        spec = spec.publish(p);
    }
    for v in &args.volumes {
        hutch_core::mounts::parse_volume_flag(v).map_err(|e| Error::InvalidInput(e.to_string()))?;
        spec = spec.volume(v);
    }
    for m in &args.mounts {
        hutch_core::mounts::parse_mount_flag(m).map_err(|e| Error::InvalidInput(e.to_string()))?;
        spec = spec.mount(m);
    }
    for t in &args.tmpfs {
        hutch_core::mounts::parse_tmpfs_flag(t).map_err(|e| Error::InvalidInput(e.to_string()))?;
        spec = spec.tmpfs(t);
    }
    if let Some(cmd) = &args.health_cmd {
        let ms = |flag: &str, v: &Option<String>| -> Result<u32, Error> {
            let Some(text) = v else { return Ok(0) };
            humantime::parse_duration(text)
                .ok()
                .and_then(|d| u32::try_from(d.as_millis()).ok())
                .ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "{flag}: '{text}' is not a duration such as 5s or 1m30s"
                    ))
                })
        };
        let check = v1::HealthCheck {
            command: vec!["/bin/sh".into(), "-c".into(), cmd.clone()],
            interval_ms: ms("--health-interval", &args.health_interval)?,
            timeout_ms: ms("--health-timeout", &args.health_timeout)?,
            retries: args.health_retries.unwrap_or(0),
            start_period_ms: ms("--health-start-period", &args.health_start_period)?,
        };
        spec = spec.health(check);
    }
    // A terminal of this client's kind (xterm when it has none), unless --env-file or -e says otherwise.
    if args.tty {
        let term = std::env::var("TERM")
            .ok()
            .filter(|t| !t.is_empty() && t != "dumb")
            .unwrap_or_else(|| "xterm".into());
        spec = spec.env("TERM", term);
    }
    for file in &args.env_files {
        let shown = file.display().to_string();
        let text = std::fs::read_to_string(file)
            .map_err(|e| Error::InvalidInput(format!("--env-file {shown}: {e}")))?;
        let vars = crate::env_file::parse_env_file(&shown, &text, |k| std::env::var(k).ok())
            .map_err(|e| Error::InvalidInput(format!("--env-file {e}")))?;
        for (k, v) in vars {
            spec = spec.env(k, v);
        }
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
    for opt in &args.log_opts {
        spec = match opt.split_once('=') {
            Some(("max-size", size)) => spec.log_max_size(size),
            Some(("max-file", n)) => spec.log_max_files(n.parse().map_err(|_| {
                Error::InvalidInput(format!(
                    "--log-opt {opt}: max-file takes a number, e.g. max-file=3"
                ))
            })?),
            _ => {
                return Err(Error::InvalidInput(format!(
                    "--log-opt {opt}: the log options are max-size=SIZE and max-file=N"
                )))
            }
        };
    }
    for opt in &args.storage_opts {
        let bytes = hutch_core::spec::parse_storage_opt(opt).map_err(Error::InvalidInput)?;
        spec = spec.disk_limit_bytes(bytes);
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
        // Numbers are ids; a name is looked up in the rootfs by the node.
        let numeric = user
            .split(':')
            .next()
            .is_some_and(|u| u.parse::<u32>().is_ok());
        spec = if numeric {
            let (uid, gid) = parse_user(user)?;
            spec.user(uid, gid)
        } else {
            spec.user_name(user)
        };
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
pub(crate) async fn run(client: &Client, args: RunArgs, json: bool) -> Result<ExitCode, Error> {
    let spec = spec_of(&args)?;
    let (container, record) = client.create(&spec).await?;
    for warning in &record.warnings {
        eprintln!("hutch: warning: {warning}");
    }
    // Until it runs on a node: report why it waits. Ctrl-C here gives up on it (removed
    // with --rm: it never ran). Its changes after the created record, on one watch that
    // also follows its end (and with --rm its removal).
    let mut events = client
        .watch_filtered(v1::WatchContainersRequest {
            since_revision: record.revision,
            containers: vec![record.name.clone()],
            ..Default::default()
        })
        .await?;
    let mut said = String::new();
    let mut started = None;
    let mut created = Some(record);
    loop {
        let c = match created.take() {
            Some(c) => c,
            None => {
                let next = tokio::select! {
                    next = events.next() => next,
                    _ = tokio::signal::ctrl_c() => {
                        if args.rm {
                            remove_unless_gone(&container).await?;
                        }
                        eprintln!("hutch: interrupted before {} started", container.id());
                        return Ok(ExitCode::from(130));
                    }
                };
                let Some(event) = next else { break };
                let event = event?;
                let Some(c) = event.container.filter(|c| c.name == container.id()) else {
                    continue;
                };
                if event.r#type == v1::WatchEventType::Removed as i32 {
                    return Err(Error::InvalidInput(format!(
                        "container {} was removed before it started",
                        container.id()
                    )));
                }
                c
            }
        };
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
    // Its end (and with --rm its removal), followed from now on, so the history it is found
    // in cannot be compacted away during a long run.
    let ending = follow_end(events, &container, &started, args.rm);
    if args.tty && !hutch::is_final(started.state) {
        return attach_terminal(&container, args.interactive, args.rm, Some(ending)).await;
    }
    // Like `docker run` (--sig-proxy): signals this process gets go to the container, which
    // decides what they mean; its end ends this command.
    let proxy = (!hutch::is_final(started.state)).then(|| forward_signals(container.clone()));
    let failed_to_start = started.state == v1::ContainerState::Failed as i32 && started.pid == 0;
    let following = hutch::LogsOptions {
        follow: true,
        ..Default::default()
    };
    let shape = LogShape {
        json,
        timestamps: false,
    };
    if !failed_to_start && print_logs(&container, following, shape).await? == Printed::OutputClosed
    {
        // Nobody reads what it prints any more: stop here, as `ls | head` does. With --rm the
        // container goes too (removed by force), so an ended `hutch run` leaves nothing.
        if args.rm {
            remove_unless_gone(&container).await?;
        }
        return Ok(broken_pipe());
    }
    let end = ending
        .await
        .map_err(|e| Error::InvalidInput(format!("following the container: {e}")))??;
    if let Some(proxy) = proxy {
        proxy.abort();
    }
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
    Ok(ExitCode::from(final_code(&end)))
}

/// How long `hutch run --rm` waits for the removal once the container ended.
const REMOVAL_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Follows `container` on `events` (its watch, read up to `started`: its first record seen
/// running, or already ended) in a task: its final record; with `removal`, once it is also
/// removed, as `docker run --rm` returns (at most [`REMOVAL_WAIT`] after the end: the
/// controller removes it anyway).
fn follow_end(
    mut events: hutch::BoxStream<v1::WatchEvent>,
    container: &hutch::Container,
    started: &v1::Container,
    removal: bool,
) -> tokio::task::JoinHandle<Result<v1::Container, Error>> {
    let (id, started) = (container.id().to_string(), started.clone());
    tokio::spawn(async move {
        let mut end = hutch::is_final(started.state).then_some(started);
        loop {
            if let (Some(e), false) = (&end, removal) {
                return Ok(e.clone());
            }
            let next = match &end {
                Some(_) => match tokio::time::timeout(REMOVAL_WAIT, events.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
                None => events.next().await,
            };
            let Some(event) = next else { break };
            let event = event?;
            let Some(c) = event.container.filter(|c| c.name == id) else {
                continue;
            };
            if event.r#type == v1::WatchEventType::Removed as i32 {
                return end.ok_or_else(|| {
                    Error::InvalidInput(format!("container {id} was removed before it ended"))
                });
            }
            if hutch::is_final(c.state) && end.is_none() {
                end = Some(c);
            }
        }
        end.ok_or_else(|| {
            Error::Status(tonic::Status::unavailable(format!(
                "the watch of container {id} ended before it did"
            )))
        })
    })
}

/// Removes the container by force; already removed (by its `auto_remove`) is fine.
async fn remove_unless_gone(container: &hutch::Container) -> Result<(), Error> {
    match container.remove(true).await {
        Err(Error::Status(s)) if s.code() == tonic::Code::NotFound => Ok(()),
        other => other,
    }
}

/// The signals `hutch run` passes on to its container, as `docker run` does.
const PROXIED_SIGNALS: [nix::sys::signal::Signal; 6] = {
    use nix::sys::signal::Signal::*;
    [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2]
};

/// Sends every signal of [`PROXIED_SIGNALS`] this process receives to `container`, until
/// the task is aborted.
fn forward_signals(container: hutch::Container) -> tokio::task::JoinHandle<()> {
    use tokio::signal::unix::{signal, SignalKind};
    tokio::spawn(async move {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        // Dropped with this task (aborted): the listeners go with it.
        let mut listeners = tokio::task::JoinSet::new();
        for signo in PROXIED_SIGNALS.map(|s| s as i32) {
            let Ok(mut stream) = signal(SignalKind::from_raw(signo)) else {
                continue;
            };
            let tx = tx.clone();
            listeners.spawn(async move {
                while stream.recv().await.is_some() {
                    if tx.send(signo).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        let mut interrupts = 0;
        while let Some(signo) = rx.recv().await {
            if signo == nix::sys::signal::Signal::SIGINT as i32 {
                interrupts += 1;
            }
            let passed = container.kill(signo).await;
            if let Err(e) = &passed {
                eprintln!("hutch: passing signal {signo} to {}: {e}", container.id());
            }
            // The controller unreachable, or Ctrl-C a third time: this command gives up (the
            // container keeps running; with --rm it goes when it ends).
            if passed.is_err() || interrupts >= 3 {
                eprintln!(
                    "hutch: leaving {0} running (hutch logs -f {0}, hutch rm -f {0})",
                    container.id()
                );
                std::process::exit(128 + signo);
            }
        }
    })
}

/// Attaches the local terminal to the container's (raw mode while attached) until it ends
/// (its exit code is returned) or the user detaches.
/// `ending`: its end (and removal) followed since it started ([`follow_end`]), else it is
/// waited for afterwards.
async fn attach_terminal(
    container: &hutch::Container,
    forward_stdin: bool,
    remove: bool,
    ending: Option<tokio::task::JoinHandle<Result<v1::Container, Error>>>,
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
        interactive::Ended::OutputClosed => {
            if remove {
                remove_unless_gone(container).await?;
            }
            Ok(broken_pipe())
        }
        interactive::Ended::Exit(..) => {
            // The record has the whole story (OOM, signal): use it for the exit code. With
            // --rm the controller removes it (auto_remove); its end is in the history.
            let end = match ending {
                Some(task) => task
                    .await
                    .map_err(|e| Error::InvalidInput(format!("following the container: {e}")))??,
                None => container.wait().await?,
            };
            Ok(ExitCode::from(final_code(&end)))
        }
    }
}

/// Whether every log line reached stdout, or its reader went away first (`| head`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Printed {
    /// Every line was written.
    All,
    /// Stdout's reader is gone; nothing more can be shown.
    OutputClosed,
}

/// How log lines are printed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogShape {
    /// One JSON object per line (stream, time, line, partial).
    pub(crate) json: bool,
    /// The time before each line (`docker logs -t`).
    pub(crate) timestamps: bool,
}

/// Prints a container's lines (stdout to stdout, stderr to stderr) as `options` select them.
pub(crate) async fn print_logs(
    container: &hutch::Container,
    options: hutch::LogsOptions,
    shape: LogShape,
) -> Result<Printed, Error> {
    let mut stream = container.logs_with(options).await?;
    let mut err = std::io::stderr();
    while let Some(entry) = stream.next().await {
        let entry = entry?;
        let is_err = entry.stream == v1::LogStream::Stderr as i32;
        let time = entry.time.as_ref().map(|t| {
            humantime::format_rfc3339_nanos(hutch_core::convert::system_time(t)).to_string()
        });
        if shape.json {
            let line = serde_json::json!({
                "stream": if is_err { "stderr" } else { "stdout" },
                "time": time,
                "line": entry.line,
                "partial": entry.partial,
            });
            if stdout::try_write_streamed(format!("{line}\n").into_bytes())
                .await
                .is_err()
            {
                return Ok(Printed::OutputClosed);
            }
            continue;
        }
        let mut line = Vec::new();
        if shape.timestamps {
            line.extend_from_slice(time.as_deref().unwrap_or("-").as_bytes());
            line.push(b' ');
        }
        line.extend_from_slice(entry.line.as_bytes());
        if !entry.partial {
            line.push(b'\n');
        }
        if is_err {
            let _ = err.write_all(&line);
            let _ = err.flush();
        } else if stdout::try_write_streamed(line).await.is_err() {
            return Ok(Printed::OutputClosed);
        }
    }
    Ok(Printed::All)
}

/// The shell's view of an ended container.
fn final_code(c: &v1::Container) -> u8 {
    if let Some(f) = &c.failure {
        // The wire says only "exec" for both; the message tells a missing command apart.
        return match Step::from(f.step.as_str()) {
            Step::Exec
                if ["No such file", "not found", "does not exist"]
                    .iter()
                    .any(|m| f.message.contains(m)) =>
            {
                127
            }
            Step::Exec => 126,
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
