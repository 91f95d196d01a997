//! Mutual TLS on real processes, driven with real `grpcurl` and the `hutch` CLI: a
//! controller serving TLS makes its cluster CA, mints join tokens for admins only, an agent
//! joins with one and from then on speaks mutual TLS; a container runs through the whole
//! chain. Every refusal is checked for its code and its message: a client without the
//! controller's certificate at the agent, a node certificate acting for another node or
//! driving an agent, a certificate of another cluster's CA, registration by token alone,
//! unknown, foreign and expired join tokens, plaintext against a TLS port, and a read-only
//! token.

use hutch_testkit as common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use common::{assert_code, grpcurl_over, workspace_bin, Out};

const ADMIN: &str = "tls-admin-0123456789abcdef0123456";
const VIEWER: &str = "tls-viewer-0123456789abcdef012345";

fn hutch(ca: &Path, ctl: &TestController, token: &str, args: &[&str]) -> std::process::Output {
    Command::new(workspace_bin("hutch", option_env!("CARGO_BIN_EXE_hutch")))
        .args(["--controller", &ctl.addr, "--ca-cert"])
        .arg(ca)
        .args(["--token", token])
        .args(args)
        .output()
        .expect("hutch")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `hutch-agent serve --join TOKEN` with a state directory and node name of its own,
/// expected to fail: its exit code and stderr. A refused join must leave nothing: no
/// certificate, no cgroup of the node.
async fn failed_join(test: &str, ctl: &TestController, token: &str) -> (Option<i32>, String) {
    let name = unique(test);
    let state_dir = PathBuf::from(format!("/var/tmp/hutch-test-{name}"));
    let mut cmd = Command::new(common::agent_bin());
    cmd.arg("--state-dir")
        .arg(&state_dir)
        .arg("--rootfs-dir")
        .arg(common::shared_rootfs_dir())
        .args(["--name", &name])
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--controller",
            &ctl.addr,
        ])
        .args(["--join", token]);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join task")
        .expect("agent");
    assert!(
        !state_dir.join("tls/node.crt").exists(),
        "a refused join must not leave a certificate"
    );
    let cgroups = Command::new("find")
        .args(["/sys/fs/cgroup", "-maxdepth", "8", "-type", "d", "-name"])
        .arg(format!("hutch-{name}"))
        .output()
        .expect("find");
    assert_eq!(
        text(&cgroups.stdout),
        "",
        "a refused join must not leave the node's cgroups"
    );
    let _ = std::fs::remove_dir_all(&state_dir);
    (out.status.code(), text(&out.stderr))
}

/// A heartbeat for `node` to `addr` over TLS with `material`, expecting `server_name`: Ok,
/// or the code and message (transport causes included).
async fn heartbeat_with(
    material: &hutch_pki::material::TlsMaterial,
    addr: &str,
    server_name: &str,
    node: &str,
) -> Result<(), String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| e.to_string())?
        .tls_config(material.client_config(server_name))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5));
    // Bounded: a client whose certificate the server refuses after the handshake has (by
    // TLS 1.3's order) finished on its side can otherwise wait for an answer for ever.
    let call = async {
        let channel = channel
            .connect()
            .await
            .map_err(|e| format!("Unavailable: {}", hutch_core::error_chain(&e)))?;
        hutch_proto::v1::nodes_client::NodesClient::new(channel)
            .heartbeat(hutch_proto::v1::HeartbeatRequest {
                name: node.to_string(),
                ..Default::default()
            })
            .await
            .map(drop)
            .map_err(|s| format!("{:?}: {}", s.code(), hutch_core::status_text(&s)))
    };
    tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .unwrap_or_else(|_| Err("no answer within 10 s (transport error: timed out)".into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_join_with_tokens_and_speak_mutual_tls() {
    let file = PathBuf::from(format!("/var/tmp/{}.tokens", unique("tls")));
    std::fs::write(
        &file,
        format!("{ADMIN},ops,admin\n{VIEWER},viewer,read-only\n"),
    )
    .expect("tokens");
    let ctl = TestController::start("tls", &["--tls", "--tokens-file", &file.to_string_lossy()]);
    let ca = ctl.data_dir.join("tls/ca.crt");
    assert!(
        ctl.log_text().contains("made a new cluster CA"),
        "{}",
        ctl.log_text()
    );
    let ca_arg = ca.to_string_lossy().into_owned();
    let tls = ["-cacert", ca_arg.as_str()];
    let admin = format!("authorization: Bearer {ADMIN}");

    // Plaintext against the TLS port fails to connect at all.
    let plain = common::grpcurl_with(
        &ctl.addr,
        &[&admin],
        None,
        &["hutch.v1.Controller/ListNodes"],
    );
    assert_ne!(
        plain.code, 0,
        "plaintext must not get through: {}",
        plain.stdout
    );

    // Join tokens: an admin may make them, a read-only token may not.
    let refused = hutch(&ca, &ctl, VIEWER, &["token", "create"]);
    assert_eq!(refused.status.code(), Some(125));
    assert!(
        text(&refused.stderr).contains("may not call CreateJoinToken"),
        "{}",
        text(&refused.stderr)
    );
    let made = hutch(
        &ca,
        &ctl,
        ADMIN,
        &["token", "create", "--ttl", "10m", "--description", "test"],
    );
    assert!(made.status.success(), "{}", text(&made.stderr));
    let token = text(&made.stdout).trim().to_string();
    assert!(token.starts_with("HJ1."), "{token}");
    let too_long = hutch(&ca, &ctl, ADMIN, &["token", "create", "--ttl", "30d"]);
    assert_eq!(too_long.status.code(), Some(125));
    assert!(
        text(&too_long.stderr).contains("longest a join token may live"),
        "{}",
        text(&too_long.stderr)
    );
    // A one-second token, to be refused as expired below.
    let short = grpcurl_over(
        &tls,
        &ctl.addr,
        &[&admin],
        Some(r#"{"ttl_seconds":1}"#),
        &["hutch.v1.Controller/CreateJoinToken"],
    );
    assert_eq!(short.code, 0, "{}", short.stderr);
    let short: serde_json::Value = serde_json::from_str(&short.stdout).expect("json");
    let short_token = short["token"].as_str().expect("token").to_string();

    // An agent joins with the token, registers over mutual TLS and runs a container.
    let node = TestNode::start("tls-node", &ctl, None, &["--join", &token]).await;
    assert!(
        node.log_text().contains("joined the cluster"),
        "{}",
        node.log_text()
    );
    let tls_dir = node.host().state_dir.join("tls");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let nodes = grpcurl_over(
            &tls,
            &ctl.addr,
            &[&admin],
            None,
            &["hutch.v1.Controller/ListNodes"],
        );
        if nodes.stdout.contains(&node.name) && nodes.stdout.contains("NODE_STATE_READY") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node never READY: {}{}",
            nodes.stdout,
            node.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let name = unique("mtls");
    let run = hutch(
        &ca,
        &ctl,
        ADMIN,
        &[
            "run",
            "--rm",
            "--name",
            &name,
            ROOTFS,
            "--",
            "echo",
            "hello over mutual TLS",
        ],
    );
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(
        text(&run.stdout).contains("hello over mutual TLS"),
        "{}",
        text(&run.stdout)
    );
    let viewer_run = hutch(&ca, &ctl, VIEWER, &["run", "--rm", ROOTFS, "--", "true"]);
    assert_eq!(viewer_run.status.code(), Some(125));
    assert!(
        text(&viewer_run.stderr).contains("may not call CreateContainer"),
        "{}",
        text(&viewer_run.stderr)
    );

    // The agent: no certificate, or a node's certificate, is refused; plaintext cannot connect.
    let key = tls_dir.join("node.key").to_string_lossy().into_owned();
    let cert = tls_dir.join("node.crt").to_string_lossy().into_owned();
    let mode = std::fs::metadata(&key).expect("key").permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o077,
        0,
        "node.key must be private"
    );
    let as_node = [
        "-cacert",
        ca_arg.as_str(),
        "-cert",
        cert.as_str(),
        "-key",
        key.as_str(),
    ];
    let list = ["hutch.v1.Agent/ListContainers"];
    let anonymous: Out = grpcurl_over(&tls, &node.addr, &[], None, &list);
    assert_code(
        &anonymous,
        tonic::Code::Unauthenticated,
        "controller's certificate",
    );
    let with_admin_token = grpcurl_over(&tls, &node.addr, &[&admin], None, &list);
    assert_code(
        &with_admin_token,
        tonic::Code::Unauthenticated,
        "controller's certificate",
    );
    let other_node = grpcurl_over(&as_node, &node.addr, &[], None, &list);
    assert_code(
        &other_node,
        tonic::Code::PermissionDenied,
        "node certificate",
    );
    let plain = common::grpcurl_with(&node.addr, &[], None, &list);
    assert_ne!(
        plain.code, 0,
        "plaintext must not reach the agent: {}",
        plain.stdout
    );

    // The controller: a node certificate only acts for its own node; a token cannot register.
    let register = |name: &str| format!(r#"{{"name":"{name}","address":"127.0.0.1:9"}}"#);
    let impostor = grpcurl_over(
        &as_node,
        &ctl.addr,
        &[],
        Some(&register("someone-else")),
        &["hutch.v1.Nodes/Register"],
    );
    assert_code(
        &impostor,
        tonic::Code::PermissionDenied,
        "cannot act as node 'someone-else'",
    );
    let by_token = grpcurl_over(
        &tls,
        &ctl.addr,
        &[&admin],
        Some(&register("by-token")),
        &["hutch.v1.Nodes/Register"],
    );
    assert_code(&by_token, tonic::Code::Unauthenticated, "--join TOKEN");
    let as_client = grpcurl_over(
        &as_node,
        &ctl.addr,
        &[],
        None,
        &["hutch.v1.Controller/ListContainers"],
    );
    assert_code(
        &as_client,
        tonic::Code::PermissionDenied,
        "may not call ListContainers",
    );

    // A node certificate of another cluster's CA counts for nothing. grpcurl (Go) does not
    // even send it (the server names the CAs it accepts), so it arrives as an anonymous
    // caller; a client that sends it anyway (rustls) fails the handshake.
    let foreign_dir = std::env::temp_dir().join(unique("foreign-ca"));
    let (foreign_ca, _) = hutch_pki::ca::ClusterCa::load_or_create(&foreign_dir).expect("ca");
    let request =
        hutch_pki::node::NodeRequest::new(&node.name, &["127.0.0.1".into()]).expect("csr");
    let (foreign_cert, _) = foreign_ca
        .sign_node(&node.name, &request.csr_pem)
        .expect("sign");
    let (fcert, fkey) = (foreign_dir.join("node.crt"), foreign_dir.join("node.key"));
    std::fs::write(&fcert, &foreign_cert).expect("cert");
    std::fs::write(&fkey, &request.key_pem).expect("key");
    let (fcert_arg, fkey_arg) = (
        fcert.to_string_lossy().into_owned(),
        fkey.to_string_lossy().into_owned(),
    );
    let as_foreign = [
        "-cacert",
        ca_arg.as_str(),
        "-cert",
        fcert_arg.as_str(),
        "-key",
        fkey_arg.as_str(),
    ];
    let heartbeat = format!(r#"{{"name":"{}"}}"#, node.name);
    let at_controller = grpcurl_over(
        &as_foreign,
        &ctl.addr,
        &[],
        Some(&heartbeat),
        &["hutch.v1.Nodes/Heartbeat"],
    );
    assert_code(&at_controller, tonic::Code::Unauthenticated, "--join TOKEN");
    let at_agent = grpcurl_over(&as_foreign, &node.addr, &[], None, &list);
    assert_code(
        &at_agent,
        tonic::Code::Unauthenticated,
        "controller's certificate",
    );
    let foreign = hutch_pki::material::TlsMaterial {
        ca_pem: std::fs::read_to_string(&ca).expect("ca"),
        cert_pem: foreign_cert,
        key_pem: request.key_pem,
    };
    let genuine = hutch_pki::material::TlsMaterial {
        ca_pem: foreign.ca_pem.clone(),
        cert_pem: std::fs::read_to_string(tls_dir.join("node.crt")).expect("node.crt"),
        key_pem: std::fs::read_to_string(tls_dir.join("node.key")).expect("node.key"),
    };
    for (addr, name) in [
        (&ctl.addr, hutch_pki::CONTROLLER_NAME),
        (&node.addr, hutch_pki::AGENT_NAME),
    ] {
        let refused = heartbeat_with(&foreign, addr, name, &node.name)
            .await
            .expect_err("a foreign certificate must not get through");
        println!("foreign certificate sent to {name}: {refused}");
        // The handshake fails on the server's side; the client sees the connection closed,
        // or the UnknownCA alert, depending on timing: a transport error either way.
        assert!(
            refused.contains("transport error"),
            "refused in the handshake, before any call: {refused}"
        );
        // The control: the same call with the node's own certificate is answered by hutch
        // (a gRPC status, whatever it says), so the refusal above is the certificate's.
        let answered = heartbeat_with(&genuine, addr, name, &node.name).await;
        println!("the node's own certificate at {name}: {answered:?}");
        assert!(
            !answered
                .as_ref()
                .is_err_and(|e| e.contains("transport error")),
            "{answered:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&foreign_dir);

    // Joins refused: unknown secret, another cluster's CA, expired, malformed.
    let parts: Vec<&str> = token.split('.').collect();
    let forged = format!("HJ1.{}.{}.{}", parts[1], parts[2], "0".repeat(32));
    let (code, err) = failed_join("tls-forged", &ctl, &forged).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("unknown join token"), "{err}");
    let foreign = format!("HJ1.{}.{}.{}", "a".repeat(64), parts[2], parts[3]);
    let (code, err) = failed_join("tls-foreign", &ctl, &foreign).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("not the one the join token names"), "{err}");
    let (code, err) = failed_join("tls-malformed", &ctl, "HJ1.nonsense").await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("hutch token create"), "{err}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (code, err) = failed_join("tls-expired", &ctl, &short_token).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("expired"), "{err}");
    let expired = grpcurl_over(
        &tls,
        &ctl.addr,
        &[],
        Some(&format!(
            r#"{{"token":"{short_token}","name":"late","csr_pem":"x"}}"#
        )),
        &["hutch.v1.Nodes/Join"],
    );
    assert_code(&expired, tonic::Code::Unauthenticated, "expired");
    // A good token cannot get a certificate for a live node's name (and then re-point it).
    let taken = grpcurl_over(
        &tls,
        &ctl.addr,
        &[],
        Some(&format!(
            r#"{{"token":"{token}","name":"{}","csr_pem":"x"}}"#,
            node.name
        )),
        &["hutch.v1.Nodes/Join"],
    );
    assert_code(&taken, tonic::Code::AlreadyExists, "live node");

    // Restarted, the agent keeps its certificate (the token is not needed again).
    let mut node = node;
    node.restart();
    assert!(
        node.log_text().contains("already joined"),
        "{}",
        node.log_text()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = grpcurl_over(
            &tls,
            &ctl.addr,
            &[&admin],
            Some(&format!(r#"{{"name":"{}"}}"#, node.name)),
            &["hutch.v1.Controller/GetNode"],
        );
        if got.stdout.contains("NODE_STATE_READY") && got.stdout.contains(&node.addr) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node never READY again: {}",
            got.stdout
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = std::fs::remove_file(&file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_controller_offers_no_join_and_the_sdk_needs_a_ca_for_https() {
    let ctl = TestController::start("no-tls", &[]);
    let out = common::grpcurl_with(
        &ctl.addr,
        &[],
        None,
        &["hutch.v1.Controller/CreateJoinToken"],
    );
    assert_code(&out, tonic::Code::FailedPrecondition, "--tls");
    let https = Command::new(workspace_bin("hutch", option_env!("CARGO_BIN_EXE_hutch")))
        .args(["--controller", &format!("https://{}", ctl.addr), "nodes"])
        .env_remove("HUTCH_CA_CERT")
        .output()
        .expect("hutch");
    assert_eq!(https.status.code(), Some(125));
    assert!(
        text(&https.stderr).contains("--ca-cert"),
        "{}",
        text(&https.stderr)
    );
}
