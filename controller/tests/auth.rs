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
    let node_host = TestHost::new("auth-node").await;
    let file = std::path::PathBuf::from(format!("/var/tmp/{}.tokens", unique("auth")));
    std::fs::write(
        &file,
        format!(
            "# token,name,role\n{ADMIN},ops,admin\n{VIEWER},viewer,read-only\n{NODE},{},node\n",
            node_host.instance
        ),
    )
    .expect("tokens file");
    let ctl = TestController::start("auth", &["--tokens-file", &file.to_string_lossy()]);
    let node = TestNode::start_on(node_host, &ctl, None, &["--controller-token", NODE]);
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
    // From a file, as --help recommends (a flag shows in `ps`); and a file that is no token.
    let token_file = file.with_extension("viewer");
    let ps_with_file = |content: &str| {
        std::fs::write(&token_file, content).expect("token file");
        std::process::Command::new(&hutch)
            .args(["--controller", &ctl.url(), "--token-file"])
            .arg(&token_file)
            .args(["ps", "-a"])
            .output()
            .expect("hutch ps")
    };
    let ps = ps_with_file(&format!("{VIEWER}\n"));
    let err = String::from_utf8_lossy(&ps.stderr);
    assert!(ps.status.success(), "{err}");
    let empty = ps_with_file("");
    let err = String::from_utf8_lossy(&empty.stderr);
    assert!(!empty.status.success() && err.contains("empty"), "{err}");
    let _ = std::fs::remove_file(&token_file);
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
const OTHER_NODE: &str = "other-node-0123456789abcdef012345";

/// A controller's tokens file: [`ADMIN`], and a node token for each `(token, node)` pair.
fn controller_tokens(test: &str, nodes: &[(&str, &str)]) -> std::path::PathBuf {
    let file = std::path::PathBuf::from(format!("/var/tmp/{}.tokens", unique(test)));
    let mut text = format!("{ADMIN},ops,admin\n");
    for (token, node) in nodes {
        text.push_str(&format!("{token},{node},node\n"));
    }
    std::fs::write(&file, text).expect("tokens file");
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_a_tokens_file_obeys_only_its_tokens() {
    let file = std::path::PathBuf::from(format!("/var/tmp/{}.tokens", unique("agent-auth")));
    std::fs::write(
        &file,
        format!("{CONTROLLER_TO_AGENT},controller,admin\n{AUDITOR},auditor,read-only\n"),
    )
    .expect("tokens file");
    let node_host = TestHost::new("agent-auth-node").await;
    let ctl_tokens = controller_tokens("agent-auth-ctl", &[(NODE, &node_host.instance)]);
    let ctl = TestController::start(
        "agent-auth",
        &[
            "--agent-token",
            CONTROLLER_TO_AGENT,
            "--tokens-file",
            &ctl_tokens.to_string_lossy(),
        ],
    );
    let node = TestNode::start_on(
        node_host,
        &ctl,
        None,
        &[
            "--tokens-file",
            &file.to_string_lossy(),
            "--controller-token",
            NODE,
        ],
    );
    let admin = format!("authorization: Bearer {ADMIN}");
    wait_node_ready(&ctl.addr, &admin, &node.name);

    // The controller's token drives the agent: a container runs through it.
    run_true(&ctl.addr, &admin, "via-controller");

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

    let removed = grpcurl_with(
        &ctl.addr,
        &[&admin],
        Some(r#"{"id":"via-controller","force":true}"#),
        &["hutch.v1.Controller/RemoveContainer"],
    );
    assert_eq!(removed.code, 0, "{}", removed.stderr);
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_file(&ctl_tokens);
}

/// Creates `/bin/true` as `name` through the controller at `addr` (with `header`) and waits
/// for it to exit 0.
fn run_true(addr: &str, header: &str, name: &str) {
    let created = grpcurl_with(
        addr,
        &[header],
        Some(&format!(
            r#"{{"name":"{name}","spec":{{"rootfs":"debian","command":["/bin/true"]}}}}"#
        )),
        &["hutch.v1.Controller/CreateContainer"],
    );
    assert_eq!(created.code, 0, "{}", created.stderr);
    let done = until_state_with(
        addr,
        &[header],
        "hutch.v1.Controller/GetContainer",
        name,
        "CONTAINER_STATE_EXITED",
    );
    assert!(done.contains(r#""exitCode": 0"#), "{done}");
}

/// Polls `ListNodes` (with `header`) until `node` is READY.
fn wait_node_ready(addr: &str, header: &str, node: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let out = grpcurl_with(addr, &[header], None, &["hutch.v1.Controller/ListNodes"]);
        let ready = out
            .stdout
            .split("\"name\"")
            .any(|n| n.contains(&format!("\"{node}\"")) && n.contains("NODE_STATE_READY"));
        if ready {
            return out.stdout;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node {node} never READY: {} {}",
            out.stdout,
            out.stderr
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A TCP listener that records every byte anyone sends it, to prove no credential went there.
struct Trap {
    addr: String,
    seen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Trap {
    fn start() -> Trap {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("trap listener");
        let addr = listener.local_addr().expect("trap address").to_string();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (s, c) = (seen.clone(), connections.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let s = s.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = stream.read(&mut buf) {
                        s.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .extend_from_slice(&buf[..n]);
                    }
                });
            }
        });
        Trap {
            addr,
            seen,
            connections,
        }
    }

    fn report(&self) -> (usize, String) {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        (
            self.connections.load(std::sync::atomic::Ordering::SeqCst),
            String::from_utf8_lossy(&seen).into_owned(),
        )
    }
}

/// The audit's takeover: a node token registering a made-up node (or another node's name) at
/// an address of the attacker's choosing, to be sent the controller's agent token. Each
/// node token now proves one node; the listener must never be called, the real node keeps
/// its address and keeps running containers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_token_cannot_register_another_name_or_re_point_a_node() {
    let node_host = TestHost::new("takeover-node").await;
    let tokens = controller_tokens(
        "takeover",
        &[(NODE, &node_host.instance), (OTHER_NODE, "other-node")],
    );
    let ctl = TestController::start(
        "takeover",
        &[
            "--agent-token",
            CONTROLLER_TO_AGENT,
            "--tokens-file",
            &tokens.to_string_lossy(),
        ],
    );
    // The agent reads its token from a file (a flag would show in `ps`).
    let node_token = tokens.with_extension("node");
    std::fs::write(&node_token, format!("{NODE}\n")).expect("node token file");
    let node = TestNode::start_on(
        node_host,
        &ctl,
        None,
        &["--controller-token-file", &node_token.to_string_lossy()],
    );
    let admin = format!("authorization: Bearer {ADMIN}");
    wait_node_ready(&ctl.addr, &admin, &node.name);
    let _ = std::fs::remove_file(&node_token);
    let trap = Trap::start();
    let register = |token: &str, name: &str| {
        grpcurl_with(
            &ctl.addr,
            &[&format!("authorization: Bearer {token}")],
            Some(&format!(r#"{{"name":"{name}","address":"{}"}}"#, trap.addr)),
            &["hutch.v1.Nodes/Register"],
        )
    };
    // A made-up node, with either node's token; the real node's name with the other's
    // token; and the lower-case scheme, which is the same credential (RFC 7235).
    for (token, name) in [
        (OTHER_NODE, "evil"),
        (NODE, "evil"),
        (OTHER_NODE, node.name.as_str()),
    ] {
        let out = register(token, name);
        assert_code(&out, tonic::Code::PermissionDenied, "cannot act as node");
    }
    let lower = grpcurl_with(
        &ctl.addr,
        &[&format!("authorization: bearer {OTHER_NODE}")],
        Some(&format!(
            r#"{{"name":"{}","address":"{}"}}"#,
            node.name, trap.addr
        )),
        &["hutch.v1.Nodes/Register"],
    );
    assert_code(&lower, tonic::Code::PermissionDenied, "cannot act as node");
    let heartbeat = grpcurl_with(
        &ctl.addr,
        &[&format!("authorization: Bearer {OTHER_NODE}")],
        Some(&format!(r#"{{"name":"{}"}}"#, node.name)),
        &["hutch.v1.Nodes/Heartbeat"],
    );
    assert_code(
        &heartbeat,
        tonic::Code::PermissionDenied,
        "cannot act as node",
    );

    // The node still has its own address and runs containers.
    let nodes = wait_node_ready(&ctl.addr, &admin, &node.name);
    assert!(!nodes.contains("evil"), "{nodes}");
    assert!(!nodes.contains(&trap.addr), "{nodes}");
    assert!(nodes.contains(&node.addr), "{nodes}");
    run_true(&ctl.addr, &admin, "still-mine");
    // Longer than a heartbeat and a reconcile: had the controller been told of the trap,
    // it would have dialled it by now.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let (connections, bytes) = trap.report();
    assert_eq!(connections, 0, "the controller dialled the trap: {bytes}");
    assert!(!bytes.contains(CONTROLLER_TO_AGENT), "{bytes}");
    let _ = std::fs::remove_file(&tokens);
}

/// Without a tokens file no registration is proven, so a controller refuses to hold an agent
/// token it could be made to send anywhere.
#[test]
fn an_open_controller_refuses_an_agent_token() {
    let data_dir = format!("/var/tmp/hutch-test-ctl-{}", unique("open-agent-token"));
    let out = std::process::Command::new(controller_bin())
        .args(["--listen", "127.0.0.1:0", "--data-dir", &data_dir])
        .args(["--agent-token", CONTROLLER_TO_AGENT])
        .output()
        .expect("hutch-controller");
    let _ = std::fs::remove_dir_all(&data_dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("agent_token") && err.contains("tokens file"),
        "{err}"
    );
}
