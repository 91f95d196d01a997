//! The service commands: apply and delete from a file, and `service ls|inspect|scale|
//! rollback|logs|rm`.

use std::path::Path;
use std::process::ExitCode;

use hutch::manifest::{self, ServiceDecl};
use hutch::proto as v1;
use hutch::{Client, Error, LogsOptions};
use tokio_stream::StreamExt;

use crate::args::ServiceCommand;
use crate::stdout::outln;
use crate::{output, print_json};

/// The label naming a replica's service (set by the controller).
const SERVICE_LABEL: &str = "hutch.service";
/// The label carrying a replica's template revision.
const REVISION_LABEL: &str = "hutch.service.revision";

/// The services `file` declares, or an error naming the file, line and column.
fn read_file(file: &Path) -> Result<Vec<ServiceDecl>, Error> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Error::InvalidInput(format!("{}: {e}", file.display())))?;
    manifest::parse(&text).map_err(|e| {
        Error::InvalidInput(format!(
            "{}:{}:{}: {}; nothing was applied",
            file.display(),
            e.line,
            e.column,
            e.message
        ))
    })
}

/// The controller's error about `services[i]`, placed on that service's line of `file`.
fn placed(e: Error, file: &Path, decls: &[ServiceDecl]) -> Error {
    let Error::Status(status) = &e else { return e };
    let message = status.message();
    let index = message
        .strip_prefix("services[")
        .and_then(|rest| rest.split_once(']'))
        .and_then(|(i, _)| i.parse::<usize>().ok());
    match index.and_then(|i| decls.get(i)) {
        Some(d) => Error::Status(tonic::Status::new(
            status.code(),
            format!(
                "{}:{}: {message}; nothing was applied",
                file.display(),
                d.line
            ),
        )),
        None => e,
    }
}

/// `hutch apply -f FILE [--dry-run]`.
pub(crate) async fn apply(
    client: &Client,
    file: &Path,
    dry_run: bool,
    json: bool,
) -> Result<ExitCode, Error> {
    let decls = read_file(file)?;
    let requests = decls.iter().map(|d| d.request.clone()).collect();
    let answer = client
        .apply_services(requests, dry_run)
        .await
        .map_err(|e| placed(e, file, &decls))?;
    if json {
        let changes: Vec<_> = answer
            .changes
            .iter()
            .map(|c| {
                serde_json::json!({
                    "name": c.name,
                    "action": action_name(c.action),
                    "diff": c.diff,
                })
            })
            .collect();
        let services: Vec<_> = answer.services.iter().map(service_json).collect();
        print_json(
            &serde_json::json!({ "dry_run": dry_run, "changes": changes, "services": services }),
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    for c in &answer.changes {
        let what = match (action_name(c.action), dry_run) {
            ("create", true) => "would be created",
            ("create", false) => "created",
            ("update", true) => "would be updated",
            ("update", false) => "updated",
            _ => "unchanged",
        };
        outln!("service {}: {what}", c.name);
        for line in &c.diff {
            outln!("    {line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn action_name(action: i32) -> &'static str {
    match v1::service_change::Action::try_from(action) {
        Ok(v1::service_change::Action::Create) => "create",
        Ok(v1::service_change::Action::Update) => "update",
        _ => "unchanged",
    }
}

/// `hutch delete -f FILE`.
pub(crate) async fn delete(client: &Client, file: &Path, json: bool) -> Result<ExitCode, Error> {
    let decls = read_file(file)?;
    let mut deleted = Vec::new();
    let mut failed = false;
    for d in &decls {
        match client.delete_service(&d.request.name).await {
            Ok(s) => {
                if !json {
                    outln!("service {}: deleted", s.name);
                }
                deleted.push(s.name);
            }
            Err(e) if e.code() == tonic::Code::NotFound => {
                if !json {
                    outln!("service {}: not found", d.request.name);
                }
            }
            Err(e) => {
                eprintln!("hutch: service {}: {e}", d.request.name);
                failed = true;
            }
        }
    }
    if json {
        print_json(&serde_json::json!({ "deleted": deleted }))?;
    }
    Ok(if failed {
        ExitCode::from(crate::EXIT_HUTCH)
    } else {
        ExitCode::SUCCESS
    })
}

/// `hutch service ...`.
pub(crate) async fn run(
    client: &Client,
    cmd: ServiceCommand,
    json: bool,
) -> Result<ExitCode, Error> {
    match cmd {
        ServiceCommand::Ls => {
            let list = client.services().await?.services;
            if json {
                let rows: Vec<_> = list.iter().map(service_json).collect();
                print_json(&rows)?;
            } else {
                output::table(
                    &[
                        "NAME",
                        "REPLICAS",
                        "UPDATED",
                        "AVAILABLE",
                        "REVISION",
                        "ADDRESS",
                        "STATUS",
                    ],
                    list.iter()
                        .map(|s| {
                            let st = s.status.clone().unwrap_or_default();
                            let wanted = s.spec.as_ref().map_or(0, |p| p.replicas);
                            vec![
                                s.name.clone(),
                                format!("{}/{wanted}", st.replicas),
                                st.updated.to_string(),
                                st.available.to_string(),
                                s.template_revision.to_string(),
                                or_dash(&s.address),
                                status_text(&st),
                            ]
                        })
                        .collect(),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ServiceCommand::Inspect { name } => {
            let s = client.service(&name).await?;
            let replicas = replicas_of(client, &name).await?;
            if json {
                let mut value = service_json(&s);
                value["replica_containers"] = serde_json::json!(replicas
                    .iter()
                    .map(|c| serde_json::to_value(output::container_json(c)).unwrap_or_default())
                    .collect::<Vec<_>>());
                print_json(&value)?;
                return Ok(ExitCode::SUCCESS);
            }
            print_details(&s);
            outln!("");
            output::table(
                &["REPLICA", "NODE", "STATE", "REVISION", "IP", "HEALTH"],
                replicas
                    .iter()
                    .map(|c| {
                        let labels = c.spec.as_ref().map(|s| &s.labels);
                        vec![
                            c.name.clone(),
                            or_dash(&c.node),
                            output::state_name(c.state),
                            labels
                                .and_then(|l| l.get(REVISION_LABEL))
                                .cloned()
                                .unwrap_or_default(),
                            or_dash(&c.network.as_ref().map(|n| n.ip.clone()).unwrap_or_default()),
                            output::health_name(c).unwrap_or_else(|| "-".into()),
                        ]
                    })
                    .collect(),
            );
            Ok(ExitCode::SUCCESS)
        }
        ServiceCommand::Scale { name, replicas } => {
            let s = client.scale_service(&name, replicas).await?;
            show(&s, json)
        }
        ServiceCommand::Rollback { name } => {
            let s = client.rollback_service(&name).await?;
            show(&s, json)
        }
        ServiceCommand::Rm { name } => {
            let s = client.delete_service(&name).await?;
            show(&s, json)
        }
        ServiceCommand::Logs { follow, tail, name } => logs(client, &name, follow, tail).await,
    }
}

/// Prints a service after a change: its JSON, or its name and status.
fn show(s: &v1::Service, json: bool) -> Result<ExitCode, Error> {
    if json {
        print_json(&service_json(s))?;
    } else {
        let st = s.status.clone().unwrap_or_default();
        outln!(
            "service {}: {} replicas wanted, revision {}; {}",
            s.name,
            s.spec.as_ref().map_or(0, |p| p.replicas),
            s.template_revision,
            status_text(&st)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The replicas of `service` (containers carrying its label), by name.
async fn replicas_of(client: &Client, service: &str) -> Result<Vec<v1::Container>, Error> {
    client
        .list(v1::ListClusterContainersRequest {
            labels: [(SERVICE_LABEL.to_string(), service.to_string())].into(),
            ..Default::default()
        })
        .await
}

/// Every replica's output, each line prefixed by its replica, as it comes.
async fn logs(
    client: &Client,
    service: &str,
    follow: bool,
    tail: Option<u32>,
) -> Result<ExitCode, Error> {
    client.service(service).await?;
    let replicas = replicas_of(client, service).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, String)>(256);
    for c in replicas.into_iter().filter(|c| !c.node.is_empty()) {
        let tx = tx.clone();
        let handle = client.container(&c.name);
        tokio::spawn(async move {
            let options = LogsOptions {
                follow,
                tail,
                ..Default::default()
            };
            match handle.logs_with(options).await {
                Ok(mut stream) => {
                    while let Some(Ok(entry)) = stream.next().await {
                        if tx.send((c.name.clone(), entry.line)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.send((c.name.clone(), format!("(no logs: {e})"))).await;
                }
            }
        });
    }
    drop(tx);
    while let Some((replica, line)) = rx.recv().await {
        outln!("{replica} | {line}");
    }
    Ok(ExitCode::SUCCESS)
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

fn status_text(st: &v1::ServiceStatus) -> String {
    if st.paused {
        format!("paused: {}", st.message)
    } else if st.converged {
        "ready".into()
    } else {
        st.message.clone()
    }
}

fn print_details(s: &v1::Service) {
    let spec = s.spec.clone().unwrap_or_default();
    let st = s.status.clone().unwrap_or_default();
    let t = spec.template.clone().unwrap_or_default();
    let placement = spec.placement.clone().unwrap_or_default();
    let update = spec.update.unwrap_or_default();
    let mut selector: Vec<String> = placement
        .node_selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    selector.sort();
    let rows = [
        ("name", s.name.clone()),
        ("address", or_dash(&s.address)),
        (
            "replicas",
            format!(
                "{} wanted, {} live, {} updated, {} available",
                spec.replicas, st.replicas, st.updated, st.available
            ),
        ),
        ("revision", s.template_revision.to_string()),
        (
            "previous revision",
            s.previous
                .as_ref()
                .map_or("-".into(), |p| p.revision.to_string()),
        ),
        ("status", status_text(&st)),
        ("rootfs", t.rootfs.clone()),
        ("command", t.command.join(" ")),
        ("selector", or_dash(&selector.join(","))),
        (
            "spread by",
            if placement.spread_by.is_empty() {
                "node".into()
            } else {
                placement.spread_by.clone()
            },
        ),
        (
            "update",
            format!(
                "max unavailable {}, max surge {}, min ready {}s, progress deadline {}s",
                update.max_unavailable.unwrap_or(0),
                update.max_surge.unwrap_or(1),
                update.min_ready_seconds.unwrap_or(1),
                update.progress_deadline_seconds.unwrap_or(120)
            ),
        ),
        (
            "created",
            output::rfc3339(&s.created_at).unwrap_or_default(),
        ),
    ];
    for (k, v) in rows {
        outln!("{k:<18} {v}");
    }
}

/// A service as JSON.
fn service_json(s: &v1::Service) -> serde_json::Value {
    let spec = s.spec.clone().unwrap_or_default();
    let st = s.status.clone().unwrap_or_default();
    let t = spec.template.clone().unwrap_or_default();
    let placement = spec.placement.clone().unwrap_or_default();
    let update = spec.update.unwrap_or_default();
    serde_json::json!({
        "name": s.name,
        "address": s.address,
        "revision": s.template_revision,
        "previous_revision": s.previous.as_ref().map(|p| p.revision),
        "replicas": spec.replicas,
        "rootfs": t.rootfs,
        "command": t.command,
        "placement": {
            "node_selector": placement.node_selector.iter().collect::<std::collections::BTreeMap<_, _>>(),
            "spread_by": placement.spread_by,
        },
        "update": {
            "max_unavailable": update.max_unavailable,
            "max_surge": update.max_surge,
            "min_ready_seconds": update.min_ready_seconds,
            "progress_deadline_seconds": update.progress_deadline_seconds,
        },
        "status": {
            "replicas": st.replicas,
            "updated": st.updated,
            "available": st.available,
            "paused": st.paused,
            "converged": st.converged,
            "message": st.message,
        },
        "created_at": output::rfc3339(&s.created_at),
    })
}
