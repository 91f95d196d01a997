//! The SDK against a real controller and agent: builder, wait, logs, exec, events, OOM, and
//! errors that keep their gRPC code.

use hutch_testkit as common;

use std::time::Duration;

use common::{TestController, TestNode, ROOTFS};
use hutch::proto::ContainerState as S;
use hutch::{Client, ClientOptions, ContainerSpec, Namespace, RestartPolicy};
use tokio_stream::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_drives_the_cluster() {
    let ctl = TestController::start("sdk", &[]);
    let node = TestNode::start("sdk-node", &ctl, None, &[]).await;
    let _ready = ctl.client_when_ready(&[&node]).await;
    let client = Client::connect(&ctl.url()).await.expect("connect");

    // Build, create, wait: the final record.
    let (c, first) = client
        .create(
            &ContainerSpec::new(ROOTFS)
                .name("sdk-echo")
                .command(["/bin/sh", "-c", "echo hello; echo oops >&2; exit 4"])
                .memory("64M")
                .namespaces([Namespace::Pid, Namespace::Uts, Namespace::Mount]),
        )
        .await
        .expect("create");
    assert_eq!(first.name, "sdk-echo");
    let end = c.wait().await.expect("wait");
    assert_eq!(S::try_from(end.state), Ok(S::Exited));
    assert_eq!(end.exit_code, Some(4));
    let lines: Vec<String> = c
        .logs(false, None)
        .await
        .expect("logs")
        .map(|l| l.expect("line").line)
        .collect()
        .await;
    assert_eq!(lines, vec!["hello".to_string(), "oops".to_string()]);

    // A running container: exec joins its pid namespace; events see it stop.
    let (web, _) = client
        .create(
            &ContainerSpec::new(ROOTFS)
                .name("sdk-web")
                .command(["sleep", "600"])
                .stop_grace(1)
                .restart(RestartPolicy::OnFailure { max_retries: 1 }),
        )
        .await
        .expect("create");
    let mut events = web.events().await.expect("events");
    loop {
        let c = tokio::time::timeout(Duration::from_secs(20), events.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("ok");
        if S::try_from(c.state) == Ok(S::Running) {
            break;
        }
    }
    let out = web.exec(["cat", "/proc/1/cmdline"]).await.expect("exec");
    assert_eq!(out.stdout, b"sleep\x00600\x00");
    assert_eq!(out.exit_code, Some(0));
    // An interactive session on pipes: stdin in, stdout and stderr apart, then the end.
    let mut session = web
        .exec_session(["/bin/sh", "-c", "cat; echo done >&2"], None)
        .await
        .expect("session");
    session.stdin(b"abc".to_vec()).await.expect("stdin");
    session.close_stdin().await.expect("close");
    // stdout and stderr are separate pipes: their order relative to each other is not kept.
    let (mut out, mut err, mut exit) = (Vec::new(), Vec::new(), None);
    while let Some(item) = session.output.next().await {
        assert!(exit.is_none(), "nothing comes after the exit");
        match item.expect("output") {
            hutch::SessionOutput::Stdout(b) => out.extend(b),
            hutch::SessionOutput::Stderr(b) => err.extend(b),
            hutch::SessionOutput::Exit { exit_code, signal } => exit = Some((exit_code, signal)),
        }
    }
    assert_eq!(out, b"abc");
    assert_eq!(err, b"done\n");
    assert_eq!(exit, Some((Some(0), None)));
    let stopped = web.stop(Some(1)).await.expect("stop");
    assert!(stopped.stop_requested);
    assert_eq!(stopped.signal, Some(9), "{stopped:#?}");
    web.remove(false).await.expect("remove");

    // The tutorial's memory limit.
    let (hog, _) = client
        .create(
            &ContainerSpec::new(ROOTFS)
                .command(["/bin/sh", "-c", "x=a; while true; do x=$x$x; done"])
                .memory("16M"),
        )
        .await
        .expect("create");
    let end = hog.wait().await.expect("wait");
    assert!(end.oom_killed, "{end:#?}");
    hog.remove(true).await.expect("remove");
    c.remove(false).await.expect("remove");

    // Errors keep their code.
    let err = client.get("nope").await.expect_err("unknown");
    assert!(err.is_not_found(), "{err}");
    let err = client
        .create(&ContainerSpec::new(ROOTFS).command(["true"]).memory("lots"))
        .await
        .expect_err("bad size");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = client
        .create(&ContainerSpec::new(ROOTFS))
        .await
        .expect_err("no command");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.to_string().contains("command is empty"), "{err}");
    let err = Client::connect_with(
        "http://127.0.0.1:1",
        ClientOptions {
            connect_timeout: Duration::from_secs(1),
            ..Default::default()
        },
    )
    .await
    .expect_err("nothing listens there");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
}

/// `sdk/examples/tutorial.rs`, built with the tests, runs against a real cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tutorial_example_runs() {
    let ctl = TestController::start("sdk-example", &[]);
    let node = TestNode::start("sdk-example-node", &ctl, None, &[]).await;
    let _ready = ctl.client_when_ready(&[&node]).await;
    let example = built_example("tutorial");
    let out = std::process::Command::new(&example)
        .arg(ROOTFS)
        .env("HUTCH_CONTROLLER", ctl.url())
        .output()
        .expect("run the example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the example failed");
    assert!(stdout.contains("tutorial done"));
    // ps -ef in a pid namespace: PID 1 is ps itself.
    assert!(
        stdout
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("1") && l.ends_with("ps -ef")),
        "{stdout}"
    );
    assert!(stdout.contains("   tutorial\n"), "hostname: {stdout}");
}

/// The example program `name`, as `cargo build --examples` leaves it (scripts/test.sh builds
/// the examples before the tests; `cargo test --all-targets` alone builds them only as test
/// harnesses).
fn built_example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("exe");
    let path = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target dir")
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run cargo build --workspace --examples first (scripts/test.sh does)",
        path.display()
    );
    path
}
