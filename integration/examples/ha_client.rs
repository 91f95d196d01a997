//! A client of the failure suite, run on a lab's client host (`deploy/lab exec client --`):
//! writes one JSON line per operation on stdout, for `hutch_integration::history::check`.
//! The controllers, CA and token come from `HUTCH_CONTROLLER` (every controller,
//! comma-separated), `HUTCH_CA_CERT` and `HUTCH_TOKEN`, as for the CLI.
//!
//!   ha_client create PREFIX CLIENT COUNT   COUNT creates of PREFIX-CLIENT-N (/bin/true)
//!   ha_client watch PREFIX                 every change from revision 0, resuming after each
//!                                          lost stream, until PREFIX-stop is added

use std::process::ExitCode;
use std::time::Duration;

use hutch::{Client, ClientOptions, ContainerSpec, TlsOptions};
use tokio_stream::StreamExt;
use tonic::Code;

async fn connect() -> Result<Client, String> {
    let urls = std::env::var("HUTCH_CONTROLLER").map_err(|_| "HUTCH_CONTROLLER is not set")?;
    let tls = match std::env::var_os("HUTCH_CA_CERT") {
        Some(path) => Some(TlsOptions {
            ca_pem: std::fs::read(&path).map_err(|e| format!("{path:?}: {e}"))?,
            ..Default::default()
        }),
        None => None,
    };
    let options = ClientOptions {
        token: std::env::var("HUTCH_TOKEN").ok(),
        tls,
        request_timeout: Some(Duration::from_secs(20)),
        failover_for: Duration::from_secs(30),
        ..Default::default()
    };
    Client::connect_with(&urls, options)
        .await
        .map_err(|e| e.to_string())
}

/// `ok`, `fail` (the create was refused: it did not happen) or `unknown` (the answer was
/// lost: it may have).
fn outcome(result: &Result<(), hutch::Error>) -> &'static str {
    match result {
        Ok(()) => "ok",
        Err(e) => match e.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled => {
                "unknown"
            }
            _ => "fail",
        },
    }
}

async fn create(prefix: &str, client_id: &str, count: usize) -> Result<(), String> {
    let client = connect().await?;
    for i in 0..count {
        let name = format!("{prefix}-{client_id}-{i}");
        let spec = ContainerSpec::new("debian")
            .name(name.clone())
            .command(["/bin/true"]);
        let result = client.create(&spec).await.map(drop);
        let line = serde_json::json!({
            "op": "create",
            "name": name,
            "outcome": outcome(&result),
            "error": result.err().map(|e| e.to_string()),
        });
        println!("{line}");
    }
    Ok(())
}

async fn watch(prefix: &str) -> Result<(), String> {
    let client = connect().await?;
    let stop = format!("{prefix}-stop");
    let mut last = 0;
    let mut lost = 0;
    loop {
        let mut stream = match client.watch(last).await {
            Ok(s) => s,
            Err(e) => {
                lost += 1;
                eprintln!("watch from {last}: {e} (again)");
                tokio::time::sleep(Duration::from_millis(100)).await;
                if lost > 600 {
                    return Err(format!("no watch for a minute: {e}"));
                }
                continue;
            }
        };
        while let Some(item) = stream.next().await {
            let e = match item {
                Ok(e) => e,
                Err(err) => {
                    eprintln!("watch from {last} ended: {err} (resuming)");
                    break;
                }
            };
            last = e.revision;
            let c = e.container.unwrap_or_default();
            let kind = hutch_proto::v1::WatchEventType::try_from(e.r#type)
                .map(|k| {
                    k.as_str_name()
                        .trim_start_matches("WATCH_EVENT_TYPE_")
                        .to_string()
                })
                .unwrap_or_default();
            println!(
                "{}",
                serde_json::json!({"op": "event", "revision": e.revision, "name": c.name, "kind": kind})
            );
            if c.name == stop && kind == "CREATED" {
                return Ok(());
            }
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let done = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["create", prefix, client, count] => match count.parse() {
            Ok(n) => create(prefix, client, n).await,
            Err(_) => Err(format!("not a count: {count}")),
        },
        ["watch", prefix] => watch(prefix).await,
        _ => Err("usage: ha_client create PREFIX CLIENT COUNT | ha_client watch PREFIX".into()),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ha_client: {e}");
            ExitCode::from(1)
        }
    }
}
