//! `/metrics` of both daemons, fetched with curl and read by Prometheus' own text parser
//! (the `prometheus_client` Python package): the families the issue names are there, with
//! the figures of a running container, placements and gRPC calls by method and code; the
//! endpoint answers only `GET /metrics`.

use hutch_testkit as common;

use std::process::Command;
use std::time::Duration;

use common::*;
use hutch_proto::v1::{self, ContainerState as S};

/// The text of `url`, and the families and samples Prometheus' parser reads from it, as
/// JSON: `{family: {"type": ..., "samples": [[name, labels, value], ...]}}` (a family
/// without samples yet is in the text only).
fn scrape(url: &str) -> (String, serde_json::Value) {
    let fetched = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "10", url])
        .output()
        .expect("curl");
    assert!(
        fetched.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&fetched.stderr)
    );
    let parser = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    out[f.name] = {"type": f.type, "samples": [[s.name, s.labels, s.value] for s in f.samples]}
print(json.dumps(out))
"#;
    let mut child = Command::new("python3")
        .args(["-c", parser])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with prometheus_client (scripts/deps.sh installs it)");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(&fetched.stdout).expect("write");
    }
    let parsed = child.wait_with_output().expect("parser");
    assert!(
        parsed.status.success(),
        "Prometheus' parser refused the text: {}\n{}",
        String::from_utf8_lossy(&parsed.stderr),
        String::from_utf8_lossy(&fetched.stdout)
    );
    (
        String::from_utf8_lossy(&fetched.stdout).into_owned(),
        serde_json::from_slice(&parsed.stdout).expect("parser output"),
    )
}

/// Asserts that every family of `families` is declared in `text` (`# TYPE NAME`).
fn declares(daemon: &str, text: &str, families: &[&str]) {
    for family in families {
        assert!(
            text.contains(&format!("# TYPE {family} "))
                || text.contains(&format!("# TYPE {family}_total ")),
            "{daemon}: no {family} in\n{text}"
        );
    }
}

/// The value of the sample `name` whose labels include `labels`.
fn value(
    families: &serde_json::Value,
    family: &str,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    families[family]["samples"]
        .as_array()?
        .iter()
        .find(|s| s[0] == name && labels.iter().all(|(k, v)| s[1][k] == *v))
        .and_then(|s| s[2].as_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_daemons_serve_prometheus_text() {
    let ctl = TestController::start("metrics", &["--metrics-listen", "127.0.0.1:0"]);
    let node = TestNode::start(
        "metrics-node",
        &ctl,
        None,
        &["--metrics-listen=127.0.0.1:0"],
    )
    .await;
    let mut client = ctl.client_when_ready(&[&node]).await;
    let mut s = spec(&["sh", "-c", "while :; do :; done"]);
    s.memory_limit_bytes = Some(64 << 20);
    client
        .create_container(create("metered", s))
        .await
        .expect("create");
    let running = wait_container(&mut client, "metered", Duration::from_secs(20), |c| {
        state_of(c) == S::Running
    })
    .await;
    // A refused call, to be counted with its code.
    let _ = client
        .get_container(v1::GetContainerRequest { id: "nope".into() })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let agent_url = node
        .metrics_url
        .clone()
        .expect("the agent printed its metrics URL");
    let (agent_text, agent) = scrape(&agent_url);
    let copy = format!("{}.{}", running.name, running.restart_count);
    let container = [("container", copy.as_str()), ("node", node.name.as_str())];
    declares(
        "agent",
        &agent_text,
        &[
            "hutch_container_cpu_seconds",
            "hutch_container_memory_usage_bytes",
            "hutch_container_memory_limit_bytes",
            "hutch_container_pids",
            "hutch_container_oom_kills",
            "hutch_containers",
            "hutch_event_log_events",
            "hutch_rootfs_builds",
            "hutch_grpc_requests",
            "hutch_grpc_request_duration_seconds",
        ],
    );
    assert_eq!(agent["hutch_container_cpu_seconds"]["type"], "counter");
    let cpu = value(
        &agent,
        "hutch_container_cpu_seconds",
        "hutch_container_cpu_seconds_total",
        &container,
    );
    assert!(cpu.is_some_and(|v| v > 0.0), "cpu {cpu:?} in {agent}");
    assert_eq!(
        value(
            &agent,
            "hutch_container_memory_limit_bytes",
            "hutch_container_memory_limit_bytes",
            &container
        ),
        Some((64u64 << 20) as f64)
    );
    assert!(value(
        &agent,
        "hutch_container_pids",
        "hutch_container_pids",
        &container
    )
    .is_some_and(|v| v >= 1.0));
    assert_eq!(
        value(
            &agent,
            "hutch_containers",
            "hutch_containers",
            &[("state", "running")]
        ),
        Some(1.0)
    );
    // The controller's RunContainer reached the agent and was counted there.
    let runs = value(
        &agent,
        "hutch_grpc_requests",
        "hutch_grpc_requests_total",
        &[("method", "RunContainer"), ("code", "OK")],
    );
    assert!(runs.is_some_and(|v| v >= 1.0), "{agent}");

    let ctl_url = ctl
        .metrics_url
        .clone()
        .expect("the controller printed its metrics URL");
    let (controller_text, controller) = scrape(&ctl_url);
    declares(
        "controller",
        &controller_text,
        &[
            "hutch_cluster_containers",
            "hutch_nodes",
            "hutch_scheduler_placements",
            "hutch_scheduler_pending",
            "hutch_container_restarts",
            "hutch_store_write_duration_seconds",
            "hutch_event_log_events",
            "hutch_rootfs_builds",
            "hutch_grpc_requests",
            "hutch_grpc_request_duration_seconds",
        ],
    );
    assert_eq!(
        value(
            &controller,
            "hutch_cluster_containers",
            "hutch_cluster_containers",
            &[("state", "running")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &controller,
            "hutch_nodes",
            "hutch_nodes",
            &[("state", "ready")]
        ),
        Some(1.0)
    );
    assert!(value(
        &controller,
        "hutch_scheduler_placements",
        "hutch_scheduler_placements_total",
        &[]
    )
    .is_some_and(|v| v >= 1.0));
    assert!(
        value(
            &controller,
            "hutch_grpc_requests",
            "hutch_grpc_requests_total",
            &[
                ("service", "hutch.v1.Controller"),
                ("method", "GetContainer"),
                ("code", "NOT_FOUND")
            ],
        )
        .is_some_and(|v| v >= 1.0),
        "{controller}"
    );
    assert!(value(
        &controller,
        "hutch_store_write_duration_seconds",
        "hutch_store_write_duration_seconds_count",
        &[],
    )
    .is_some_and(|v| v >= 1.0));

    // Anything but GET /metrics: 404 or 405, and the daemon serves on.
    for (args, code) in [
        (vec!["-s", "-o", "/dev/null", "-w", "%{http_code}"], "404"),
        (
            vec!["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"],
            "405",
        ),
    ] {
        let other = ctl_url.replace("/metrics", "/other");
        let url = if code == "405" { &ctl_url } else { &other };
        let o = Command::new("curl")
            .args(&args)
            .arg(url)
            .output()
            .expect("curl");
        assert_eq!(String::from_utf8_lossy(&o.stdout), code);
    }
    assert!(scrape(&ctl_url).1.get("hutch_nodes").is_some());
    force_remove(&mut client, &["metered"]).await;
}
