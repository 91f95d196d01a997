//! The controller driven with nothing but real `grpcurl`: reflection (list, describe),
//! health, create/get/list/watch, and one bad request per error code with grpcurl's exit
//! code (64 + the gRPC code) and message checked.

use hutch_testkit as common;

use common::*;
use common::{assert_code, grpcurl, until_state};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_against_the_controller() {
    let ctl = TestController::start("grpcurl-ctl", &[]);
    let node = TestNode::start("grpcurl-node", &ctl, None, &["--label=zone=a"]).await;
    let _client = ctl.client_when_ready(&[&node]).await;
    let a = ctl.addr.as_str();

    let list = grpcurl(a, None, &["list"]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    for svc in [
        "hutch.v1.Controller",
        "hutch.v1.Nodes",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(list.stdout.contains(svc), "{svc} missing: {}", list.stdout);
    }
    let describe = grpcurl(a, None, &["describe", "hutch.v1.Controller"]);
    assert!(
        describe.stdout.contains("rpc WatchContainers"),
        "{}",
        describe.stdout
    );
    let health = grpcurl(a, None, &["grpc.health.v1.Health/Check"]);
    assert!(health.stdout.contains("SERVING"), "{}", health.stdout);

    let nodes = grpcurl(a, None, &["hutch.v1.Controller/ListNodes"]);
    assert!(
        nodes.stdout.contains(&node.name) && nodes.stdout.contains("NODE_STATE_READY"),
        "{}",
        nodes.stdout
    );

    let created = grpcurl(
        a,
        Some(
            r#"{"name":"hello","spec":{"rootfs":"debian","command":["/bin/sh","-c","echo hi from $(hostname)"]},"placement":{"nodeSelector":{"zone":"a"}}}"#,
        ),
        &["hutch.v1.Controller/CreateContainer"],
    );
    assert_eq!(created.code, 0, "{}", created.stderr);
    assert!(created.stdout.contains(&node.name), "{}", created.stdout);
    let done = until_state(
        a,
        "hutch.v1.Controller/GetContainer",
        "hello",
        "CONTAINER_STATE_EXITED",
    );
    assert!(done.contains(r#""exitCode": 0"#), "{done}");
    let logs = grpcurl(
        a,
        Some(r#"{"id":"hello"}"#),
        &["hutch.v1.Controller/ContainerLogs"],
    );
    assert!(logs.stdout.contains("hi from hello"), "{}", logs.stdout);
    let listed = grpcurl(
        a,
        Some(r#"{"state":"CONTAINER_STATE_EXITED"}"#),
        &["hutch.v1.Controller/ListContainers"],
    );
    assert!(
        listed.stdout.contains(r#""name": "hello""#),
        "{}",
        listed.stdout
    );
    // A watch streams until the client's deadline: replay of everything so far.
    let watched = std::process::Command::new("grpcurl")
        .args([
            "-plaintext",
            "-max-time",
            "1",
            "-d",
            r#"{"sinceRevision":"0"}"#,
            a,
        ])
        .arg("hutch.v1.Controller/WatchContainers")
        .output()
        .expect("grpcurl");
    let watched = String::from_utf8_lossy(&watched.stdout);
    for needle in [
        "WATCH_EVENT_TYPE_CREATED",
        "CONTAINER_STATE_RUNNING",
        "CONTAINER_STATE_EXITED",
    ] {
        assert!(watched.contains(needle), "{needle}: {watched}");
    }

    // A non-TTY interactive exec driven by grpcurl, messages from stdin (-d @).
    let sleeper = grpcurl(
        a,
        Some(r#"{"name":"sleeper","spec":{"rootfs":"debian","command":["sleep","600"]}}"#),
        &["hutch.v1.Controller/CreateContainer"],
    );
    assert_eq!(sleeper.code, 0, "{}", sleeper.stderr);
    until_state(
        a,
        "hutch.v1.Controller/GetContainer",
        "sleeper",
        "CONTAINER_STATE_RUNNING",
    );
    let mut child = std::process::Command::new("grpcurl")
        .args([
            "-plaintext",
            "-d",
            "@",
            a,
            "hutch.v1.Controller/ExecSession",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("grpcurl");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        // "hello\n" in base64, then the end of stdin: `cat` echoes it and exits 0; the
        // shell then writes to stderr and exits 4.
        writeln!(
            stdin,
            r#"{{"start":{{"id":"sleeper","command":["/bin/sh","-c","cat; echo to-stderr >&2; exit 4"]}}}}"#
        )
        .expect("write");
        writeln!(stdin, r#"{{"stdin":"aGVsbG8K"}}"#).expect("write");
        writeln!(stdin, r#"{{"closeStdin":true}}"#).expect("write");
    }
    let out = child.wait_with_output().expect("grpcurl output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(r#""stdout": "aGVsbG8K""#), "{stdout}");
    assert!(
        stdout.contains(r#""stderr": "dG8tc3RkZXJyCg==""#),
        "{stdout}"
    );
    assert!(stdout.contains(r#""exitCode": 4"#), "{stdout}");
    // Attach needs a container started with tty.
    let attach = std::process::Command::new("grpcurl")
        .args([
            "-plaintext",
            "-d",
            r#"{"start":{"id":"sleeper"}}"#,
            a,
            "hutch.v1.Controller/Attach",
        ])
        .output()
        .expect("grpcurl");
    assert_eq!(
        attach.status.code(),
        Some(64 + tonic::Code::FailedPrecondition as i32)
    );
    assert!(String::from_utf8_lossy(&attach.stderr).contains("not started with tty"));
    assert_code(
        &grpcurl(
            a,
            Some(r#"{"name":"x","spec":{"rootfs":"debian","command":["true"],"stdin":true}}"#),
            &["hutch.v1.Controller/CreateContainer"],
        ),
        tonic::Code::InvalidArgument,
        "stdin needs tty",
    );
    let rm = grpcurl(
        a,
        Some(r#"{"id":"sleeper","force":true}"#),
        &["hutch.v1.Controller/RemoveContainer"],
    );
    assert_eq!(rm.code, 0, "{}", rm.stderr);

    // Errors: code and message.
    assert_code(
        &grpcurl(
            a,
            Some(r#"{"name":"x","spec":{"rootfs":"debian"}}"#),
            &["hutch.v1.Controller/CreateContainer"],
        ),
        tonic::Code::InvalidArgument,
        "command is empty",
    );
    assert_code(
        &grpcurl(
            a,
            Some(r#"{"name":"../x","spec":{"rootfs":"debian","command":["true"]}}"#),
            &["hutch.v1.Controller/CreateContainer"],
        ),
        tonic::Code::InvalidArgument,
        "not allowed",
    );
    assert_code(
        &grpcurl(
            a,
            Some(r#"{"name":"hello","spec":{"rootfs":"debian","command":["true"]}}"#),
            &["hutch.v1.Controller/CreateContainer"],
        ),
        tonic::Code::AlreadyExists,
        "different spec",
    );
    assert_code(
        &grpcurl(
            a,
            Some(r#"{"id":"nope"}"#),
            &["hutch.v1.Controller/GetContainer"],
        ),
        tonic::Code::NotFound,
        "'nope' not found",
    );
    assert_code(
        &grpcurl(
            a,
            Some(r#"{"name":"ghost"}"#),
            &["hutch.v1.Controller/CordonNode"],
        ),
        tonic::Code::NotFound,
        "not registered",
    );
    assert_code(
        &grpcurl(
            a,
            Some(r#"{"sinceRevision":"999999"}"#),
            &["hutch.v1.Controller/WatchContainers"],
        ),
        tonic::Code::OutOfRange,
        "in the future",
    );
    assert_code(
        &grpcurl(
            a,
            Some(r#"{"id":"hello","signal":99}"#),
            &["hutch.v1.Controller/KillContainer"],
        ),
        tonic::Code::InvalidArgument,
        "not a signal",
    );
    assert_code(
        &grpcurl(
            a,
            Some(r#"{"name":"n1","session":"s-0"}"#),
            &["hutch.v1.Nodes/Heartbeat"],
        ),
        tonic::Code::FailedPrecondition,
        "register again",
    );
    assert_code(
        &grpcurl(
            a,
            Some(r#"{"name":"n1","address":"nowhere"}"#),
            &["hutch.v1.Nodes/Register"],
        ),
        tonic::Code::InvalidArgument,
        "host:port",
    );
    // A container pinned to a node that does not exist waits, and says why.
    let pending = grpcurl(
        a,
        Some(
            r#"{"name":"pinned","spec":{"rootfs":"debian","command":["true"]},"placement":{"node":"ghost"}}"#,
        ),
        &["hutch.v1.Controller/CreateContainer"],
    );
    assert!(
        pending.stdout.contains("CONTAINER_STATE_PENDING")
            && pending.stdout.contains("node 'ghost' is not registered"),
        "{}",
        pending.stdout
    );
    let rm = grpcurl(
        a,
        Some(r#"{"id":"pinned"}"#),
        &["hutch.v1.Controller/RemoveContainer"],
    );
    assert_eq!(rm.code, 0, "{}", rm.stderr);
    let rm = grpcurl(
        a,
        Some(r#"{"id":"hello"}"#),
        &["hutch.v1.Controller/RemoveContainer"],
    );
    assert_eq!(rm.code, 0, "{}", rm.stderr);

    // Services, as the README shows them: a dry run, a scale of a missing one, a bad count.
    let dry = grpcurl(
        a,
        Some(
            r#"{"services":[{"name":"web","spec":{"replicas":3,"template":{"rootfs":"debian","command":["sleep","600"]}}}],"dry_run":true}"#,
        ),
        &["hutch.v1.Controller/ApplyServices"],
    );
    assert!(
        dry.stdout.contains("ACTION_CREATE"),
        "{}{}",
        dry.stdout,
        dry.stderr
    );
    assert_code(
        &grpcurl(
            a,
            Some(r#"{"name":"web","replicas":5}"#),
            &["hutch.v1.Controller/ScaleService"],
        ),
        tonic::Code::NotFound,
        "service 'web' not found",
    );
    assert_code(
        &grpcurl(
            a,
            Some(
                r#"{"name":"web","spec":{"replicas":20000,"template":{"rootfs":"debian","command":["true"]}}}"#,
            ),
            &["hutch.v1.Controller/CreateService"],
        ),
        tonic::Code::InvalidArgument,
        "spec.replicas: 20000",
    );
}
