//! `hutch system prune`: removes what nothing uses, across the cluster: ended containers,
//! volumes no container uses, and with `--all` rootfs no container uses. Lists what it is
//! about to remove and asks first, unless `--force` (without a terminal to ask on, it
//! refuses rather than guess).

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use hutch::proto as v1;
use hutch::{human_bytes, Client, Error};

use crate::stdout::outln;
use crate::{print_json, EXIT_HUTCH};

/// What a prune would remove.
struct Plan {
    containers: Vec<String>,
    volumes: Vec<(String, String)>,
    rootfs: Vec<(String, String, u64)>,
}

/// Whether the controller may still start `c` again (its node is lost, or its restart
/// policy has runs left for how it ended): such a container is not pruned, as Docker keeps
/// a restarting one.
fn may_restart(c: &v1::Container) -> bool {
    use v1::restart_policy::Kind;
    if c.state == v1::ContainerState::Lost as i32 {
        return true;
    }
    let policy = c.restart_policy.unwrap_or_default();
    let runs_left = policy.max_retries == 0 || c.restart_count < policy.max_retries;
    let failed = c.state != v1::ContainerState::Exited as i32
        || c.exit_code != Some(0)
        || c.signal.is_some()
        || c.oom_killed;
    match Kind::try_from(policy.kind).unwrap_or(Kind::Unspecified) {
        Kind::Always => runs_left && !c.stop_requested,
        Kind::OnFailure => runs_left && failed && !c.stop_requested,
        _ => false,
    }
}

/// The record name of a node's copy (`NAME.RUN` for the controller's containers).
fn record_of(copy: &str) -> &str {
    match copy.rsplit_once('.') {
        Some((name, run)) if run.parse::<u32>().is_ok() => name,
        _ => copy,
    }
}

async fn plan(client: &Client, all: bool) -> Result<Plan, Error> {
    let containers = client
        .list(v1::ListClusterContainersRequest::default())
        .await?
        .into_iter()
        .filter(|c| hutch::is_final(c.state) && !may_restart(c))
        .map(|c| c.name)
        .collect::<Vec<_>>();
    // A volume is unused when no record names it (an ended container about to go still
    // does: the second pass below sees it free).
    let volumes = client
        .volumes("")
        .await?
        .volumes
        .into_iter()
        .filter(|v| {
            v.containers
                .iter()
                .all(|copy| containers.iter().any(|e| e == record_of(copy)))
        })
        .map(|v| (v.node, v.name))
        .collect();
    let rootfs = if all {
        client
            .list_rootfs("")
            .await?
            .rootfs
            .into_iter()
            .filter_map(|r| {
                let info = r.rootfs?;
                info.containers
                    .is_empty()
                    .then_some((r.node, info.name, info.size_bytes))
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok(Plan {
        containers,
        volumes,
        rootfs,
    })
}

/// Asks on the terminal, on a blocking thread: the one thread of the CLI's runtime keeps
/// the connection to the controller served (its pings answered) while the person thinks.
async fn confirmed(plan: Plan) -> Result<(bool, Plan), Error> {
    tokio::task::spawn_blocking(move || ask(&plan).map(|yes| (yes, plan)))
        .await
        .map_err(|e| Error::InvalidInput(format!("asking for confirmation: {e}")))?
}

fn ask(plan: &Plan) -> Result<bool, Error> {
    if !std::io::stdin().is_terminal() {
        return Err(Error::InvalidInput(
            "system prune asks before removing anything, and there is no terminal to ask on: add --force".into(),
        ));
    }
    eprintln!("WARNING! This will remove:");
    eprintln!("  - {} ended container(s)", plan.containers.len());
    eprintln!(
        "  - {} volume(s) no container uses, with their data",
        plan.volumes.len()
    );
    if !plan.rootfs.is_empty() {
        eprintln!("  - {} rootfs no container uses", plan.rootfs.len());
    }
    eprint!("Are you sure you want to continue? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Error::InvalidInput(format!("reading the answer: {e}")))?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// `hutch system prune`.
pub(crate) async fn prune(
    client: &Client,
    force: bool,
    all: bool,
    json: bool,
) -> Result<ExitCode, Error> {
    let mut plan = plan(client, all).await?;
    if !force {
        let (yes, asked) = confirmed(plan).await?;
        if !yes {
            eprintln!("hutch: nothing removed");
            return Ok(ExitCode::SUCCESS);
        }
        plan = asked;
    }
    let mut failed = false;
    let mut report = |what: &str,
                      name: String,
                      result: Result<(), Error>,
                      done: &mut Vec<String>| {
        match result {
            Ok(()) => done.push(name),
            Err(e) => {
                eprintln!("hutch: {what} {name}: {e}");
                failed = true;
            }
        }
    };
    let (mut containers, mut volumes, mut rootfs) = (Vec::new(), Vec::new(), Vec::new());
    for name in plan.containers {
        let removed = client.container(&name).remove(false).await;
        report("container", name, removed, &mut containers);
    }
    for (node, name) in plan.volumes {
        let removed = client.remove_volume(&name, &node).await;
        report("volume", format!("{name} ({node})"), removed, &mut volumes);
    }
    let mut reclaimed = 0;
    for (node, name, size) in plan.rootfs {
        let removed =
            client
                .remove_rootfs(&name, &node)
                .await
                .and_then(|r| match r.failed.values().next() {
                    Some(why) => Err(Error::InvalidInput(why.clone())),
                    None => Ok(()),
                });
        if removed.is_ok() {
            reclaimed += size;
        }
        report("rootfs", format!("{name} ({node})"), removed, &mut rootfs);
    }
    if json {
        print_json(&serde_json::json!({
            "containers": containers,
            "volumes": volumes,
            "rootfs": rootfs,
            "rootfs_bytes_reclaimed": reclaimed,
        }))?;
    } else {
        for (title, list) in [
            ("Deleted containers:", &containers),
            ("Deleted volumes:", &volumes),
            ("Deleted rootfs:", &rootfs),
        ] {
            if !list.is_empty() {
                outln!("{title}");
                for name in list {
                    outln!("{name}");
                }
                outln!();
            }
        }
        outln!("Total reclaimed space (rootfs): {}", human_bytes(reclaimed));
    }
    Ok(if failed {
        ExitCode::from(EXIT_HUTCH)
    } else {
        ExitCode::SUCCESS
    })
}
