//! Bearer tokens with roles on a real controller, driven with real `grpcurl` and the `hutch`
//! CLI: no token is UNAUTHENTICATED, a read-only token reads but cannot create or kill, an
//! admin token does everything, an agent registers only with a node token, and health stays
//! open.

use hutch_testkit as common;

use common::*;
use common::{assert_code, grpcurl, grpcurl_with, until_state_with, workspace_bin};

const ADMIN: &str = "admin-0123456789abcdef0123456789";
const VIEWER: &str = "viewer-0123456789abcdef012345678";
const NODE: &str = "node-0123456789abcdef0123456789ab";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_roles() {
    let file = std::path::PathBuf::from(format!("/var/tmp/{}.tokens", unique("auth")));
    std::fs::write(
        &file,
        format!(
            "# token,name,role\n{ADMIN},ops,admin\n{VIEWER},viewer,read-only\n{NODE},agents,node\n"
        ),
    )
    .expect("tokens file");
    let ctl = TestController::start("auth", &["--tokens-file", &file.to_string_lossy()]);
    let node = TestNode::start("auth-node", &ctl, None, &["--controller-token", NODE]).await;
    let intruder = TestNode::start(
        "auth-intruder",
        &ctl,
        None,
        &["--controller-token", "not-a-token-of-this-cluster"],
    )
    .await;
    let a = ctl.addr.as_str();
    let admin = format!("authorization: Bearer {ADMIN}");
    let viewer = format!("authorization: Bearer {VIEWER}");

    // The agent with the node token registers; the other one does not.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let nodes = loop {
        let out = grpcurl_with(a, &[&admin], None, &["hutch.v1.Controller/ListNodes"]);
        if out.stdout.contains(&node.name) || std::time::Instant::now() > deadline {
            break out;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(nodes.stdout.contains(&node.name), "{}", nodes.stdout);
    assert!(!nodes.stdout.contains(&intruder.name), "{}", nodes.stdout);

    // No token, a malformed header, an unknown token.
    let none = grpcurl(a, None, &["hutch.v1.Controller/ListNodes"]);
    assert_code(
        &none,
        tonic::Code::Unauthenticated,
        "requires a bearer token",
    );
    let basic = grpcurl_with(
        a,
        &["authorization: Basic b3BzOm9wcw=="],
        None,
        &["hutch.v1.Controller/ListNodes"],
    );
    assert_code(&basic, tonic::Code::Unauthenticated, "Bearer TOKEN");
    let unknown = grpcurl_with(
        a,
        &["authorization: Bearer 0000000000000000000000"],
        None,
        &["hutch.v1.Controller/ListNodes"],
    );
    assert_code(&unknown, tonic::Code::Unauthenticated, "unknown token");

    // Health stays open (probes carry no token).
    let health = grpcurl(a, None, &["grpc.health.v1.Health/Check"]);
    assert!(health.stdout.contains("SERVING"), "{}", health.stdout);

    // Read-only: lists, but cannot create, kill or drain.
    let list = grpcurl_with(a, &[&viewer], None, &["hutch.v1.Controller/ListContainers"]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    let create = r#"{"name":"authed","spec":{"rootfs":"debian","command":["/bin/true"]}}"#;
    let refused = grpcurl_with(
        a,
        &[&viewer],
        Some(create),
        &["hutch.v1.Controller/CreateContainer"],
    );
    assert_code(
        &refused,
        tonic::Code::PermissionDenied,
        "needs an admin credential",
    );
    assert!(refused.stderr.contains("viewer"), "{}", refused.stderr);

    // Admin creates; read-only may not kill it.
    let created = grpcurl_with(
        a,
        &[&admin],
        Some(create),
        &["hutch.v1.Controller/CreateContainer"],
    );
    assert_eq!(created.code, 0, "{}", created.stderr);
    let done = until_state_with(
        a,
        &[&admin],
        "hutch.v1.Controller/GetContainer",
        "authed",
        "CONTAINER_STATE_EXITED",
    );
    assert!(done.contains("authed"), "{done}");
    let kill = grpcurl_with(
        a,
        &[&viewer],
        Some(r#"{"id":"authed"}"#),
        &["hutch.v1.Controller/KillContainer"],
    );
    assert_code(
        &kill,
        tonic::Code::PermissionDenied,
        "may not call KillContainer",
    );
    // A node token cannot act as a client.
    let as_node = grpcurl_with(
        a,
        &[&format!("authorization: Bearer {NODE}")],
        None,
        &["hutch.v1.Controller/ListContainers"],
    );
    assert_code(&as_node, tonic::Code::PermissionDenied, "(node)");

    // The CLI: --token, HUTCH_TOKEN, and a clear line when refused.
    let hutch = workspace_bin("hutch", option_env!("CARGO_BIN_EXE_hutch"));
    let ps = std::process::Command::new(&hutch)
        .args(["--controller", &ctl.url(), "ps", "-a"])
        .env("HUTCH_TOKEN", VIEWER)
        .output()
        .expect("hutch ps");
    assert!(
        ps.status.success(),
        "{}",
        String::from_utf8_lossy(&ps.stderr)
    );
    assert!(String::from_utf8_lossy(&ps.stdout).contains("authed"));
    let rm = std::process::Command::new(&hutch)
        .args([
            "--controller",
            &ctl.url(),
            "--token",
            VIEWER,
            "rm",
            "authed",
        ])
        .output()
        .expect("hutch rm");
    assert_eq!(rm.status.code(), Some(125));
    let err = String::from_utf8_lossy(&rm.stderr);
    println!("{err}");
    assert!(err.contains("may not call RemoveContainer"), "{err}");
    let rm = std::process::Command::new(&hutch)
        .args(["--controller", &ctl.url(), "--token", ADMIN, "rm", "authed"])
        .output()
        .expect("hutch rm");
    assert!(
        rm.status.success(),
        "{}",
        String::from_utf8_lossy(&rm.stderr)
    );

    let _ = std::fs::remove_file(&file);
}

const CONTROLLER_TO_AGENT: &str = "ctl-to-agent-0123456789abcdef01234";
const AUDITOR: &str = "auditor-0123456789abcdef012345678";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_a_tokens_file_obeys_only_its_tokens() {
    let file = std::path::PathBuf::from(format!("/var/tmp/{}.tokens", unique("agent-auth")));
    std::fs::write(
        &file,
        format!("{CONTROLLER_TO_AGENT},controller,admin\n{AUDITOR},auditor,read-only\n"),
    )
    .expect("tokens file");
    let ctl = TestController::start("agent-auth", &["--agent-token", CONTROLLER_TO_AGENT]);
    let node = TestNode::start(
        "agent-auth-node",
        &ctl,
        None,
        &["--tokens-file", &file.to_string_lossy()],
    )
    .await;
    let mut client = ctl.client_when_ready(&[&node]).await;

    // The controller's token drives the agent: a container runs through it.
    client
        .create_container(create("via-controller", spec(&["/bin/true"])))
        .await
        .expect("create");
    let done = wait_container(
        &mut client,
        "via-controller",
        std::time::Duration::from_secs(30),
        |c| state_of(c) == hutch_proto::v1::ContainerState::Exited,
    )
    .await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");

    // Straight at the agent: nothing without a token, reads with the auditor's, runs only
    // with an admin token.
    let a = node.addr.as_str();
    let anonymous = grpcurl(a, None, &["hutch.v1.Agent/ListContainers"]);
    assert_code(
        &anonymous,
        tonic::Code::Unauthenticated,
        "requires a bearer token",
    );
    let run = r#"{"name":"sneaky","spec":{"rootfs":"debian","command":["/bin/true"]}}"#;
    let anonymous_run = grpcurl(a, Some(run), &["hutch.v1.Agent/RunContainer"]);
    assert_code(&anonymous_run, tonic::Code::Unauthenticated, "bearer token");
    let auditor = format!("authorization: Bearer {AUDITOR}");
    let listed = grpcurl_with(a, &[&auditor], None, &["hutch.v1.Agent/ListContainers"]);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    assert!(
        listed.stdout.contains("via-controller.0"),
        "{}",
        listed.stdout
    );
    let refused = grpcurl_with(a, &[&auditor], Some(run), &["hutch.v1.Agent/RunContainer"]);
    assert_code(
        &refused,
        tonic::Code::PermissionDenied,
        "may not call RunContainer",
    );
    let health = grpcurl(a, None, &["grpc.health.v1.Health/Check"]);
    assert!(health.stdout.contains("SERVING"), "{}", health.stdout);

    client
        .remove_container(hutch_proto::v1::RemoveContainerRequest {
            id: "via-controller".into(),
            force: true,
        })
        .await
        .expect("remove");
    let _ = std::fs::remove_file(&file);
}
