//! `--log-format json` on both daemons: every line either writes to stderr is one JSON
//! object with the level and the event's fields as fields (not interpolated), and events in
//! a container's span carry its id.

use hutch_testkit as common;

use std::time::Duration;

use common::*;
use hutch_proto::v1::{self, ContainerState as S};

/// Every non-empty line of `text` as JSON; panics naming a line that is not.
fn json_lines(what: &str, text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{what}: a line that is not JSON ({e}): {l}"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_parse_and_carry_fields() {
    let ctl = TestController::start("logjson", &["--log-format", "json"]);
    let node = TestNode::start("logjson-a", &ctl, None, &["--log-format", "json"]).await;
    let mut client = ctl.client_when_ready(&[&node]).await;
    client
        .create_container(create("logged", spec(&["/bin/true"])))
        .await
        .expect("create");
    wait_container(&mut client, "logged", Duration::from_secs(20), |c| {
        state_of(c) == S::Exited
    })
    .await;
    client
        .remove_container(v1::RemoveContainerRequest {
            id: "logged".into(),
            force: true,
        })
        .await
        .expect("remove");

    let controller = json_lines("controller", &ctl.log_text());
    assert!(!controller.is_empty(), "the controller logged nothing");
    for line in &controller {
        assert!(line["level"].is_string(), "{line}");
        assert!(line["fields"]["message"].is_string(), "{line}");
        assert!(line["timestamp"].is_string(), "{line}");
    }
    // The registration names the node in a field of its own, not only in the text.
    let text = ctl.log_text();
    assert!(
        controller.iter().any(|l| l["fields"]
            .as_object()
            .is_some_and(|f| f.values().any(|v| v == node.name.as_str()))
            || l["span"]
                .as_object()
                .is_some_and(|f| f.values().any(|v| v == node.name.as_str()))),
        "no line carries the node's name as a field:\n{text}"
    );
    // The agent logs little at its default level; whatever it wrote is JSON too.
    json_lines("agent", &node.log_text());
}
