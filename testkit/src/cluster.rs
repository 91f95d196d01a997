//! Test support: a real `hutch-controller` process and real `hutch-agent` processes on
//! loopback, each with its own port, state directory and cgroup instance, on the rootfs
//! shared by the test run. Processes are killed and everything they made is removed when the
//! test ends, also when it fails.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hutch_proto::v1;
use hutch_proto::v1::agent_client::AgentClient;
use hutch_proto::v1::controller_client::ControllerClient;
use tonic::transport::Channel;

use crate::{unique, TestHost, ROOTFS};

/// Heartbeat interval the test controllers ask for.
pub const HEARTBEAT: &str = "200ms";
/// Silence after which a test controller declares a node down.
pub const DOWN_AFTER: &str = "2s";

/// The controller binary.
pub fn controller_bin() -> PathBuf {
    crate::workspace_bin("hutch-controller", None)
}

/// A daemon's stderr log: removed when the test passes (kept with `HUTCH_TEST_KEEP_LOGS=1`),
/// printed (its end) when it fails.
pub struct DaemonLog(PathBuf);

/// Everything the daemons of `logs` wrote to stderr so far.
fn logs_text(logs: &[DaemonLog]) -> String {
    logs.iter()
        .map(|l| std::fs::read_to_string(&l.0).unwrap_or_default())
        .collect()
}

impl Drop for DaemonLog {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.0).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "---- last lines of {} ----\n{}",
                self.0.display(),
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        } else if std::env::var_os("HUTCH_TEST_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// A started daemon: the process, the address it printed (`... listening on ADDR ...`) and
/// its metrics URL when it serves metrics (`... metrics on URL`, printed before).
struct Started {
    child: Child,
    addr: String,
    metrics: Option<String>,
}

/// Starts `cmd` and reads what it printed up to the line with its address.
fn spawn_listening(mut cmd: Command, what: &str, logs: &mut Vec<DaemonLog>) -> Started {
    let log = std::env::temp_dir().join(format!("hutch-test-{}.log", unique(what)));
    logs.push(DaemonLog(log.clone()));
    let log_file = std::fs::File::create(&log).expect("log file");
    cmd.stdout(Stdio::piped()).stderr(log_file);
    let mut child = cmd.spawn().expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    let mut metrics = None;
    loop {
        line.clear();
        reader.read_line(&mut line).expect("read");
        match line.split_once(" metrics on ") {
            Some((_, url)) => metrics = Some(url.trim().to_string()),
            None => break,
        }
    }
    let addr = line
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| {
            let _ = child.kill();
            let err = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("{what} did not start: stdout {line:?}, stderr:\n{err}")
        })
        .to_string();
    println!("{what} listening on {addr} (log {})", log.display());
    Started {
        child,
        addr,
        metrics,
    }
}

fn kill9(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A controller process with its own data directory.
pub struct TestController {
    /// Where it listens.
    pub addr: String,
    /// Its metrics URL, when started with `--metrics-listen`.
    pub metrics_url: Option<String>,
    /// Its data directory.
    pub data_dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
    logs: Vec<DaemonLog>,
}

impl TestController {
    /// What the controller wrote to stderr so far (every start).
    pub fn log_text(&self) -> String {
        logs_text(&self.logs)
    }

    /// Starts a controller on a free port with fast liveness timing and `extra` flags (which
    /// may give another `--down-after`).
    pub fn start(test: &str, extra: &[&str]) -> TestController {
        let data_dir = PathBuf::from(format!("/var/tmp/hutch-test-ctl-{}", unique(test)));
        TestController::start_in(data_dir, extra)
    }

    /// [`TestController::start`] on the data directory `data_dir` (a test's own, which the
    /// controller empties when dropped).
    pub fn start_in(data_dir: PathBuf, extra: &[&str]) -> TestController {
        let mut c = TestController {
            addr: "127.0.0.1:0".into(),
            metrics_url: None,
            data_dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
            logs: Vec::new(),
        };
        c.restart();
        c
    }

    /// Starts the controller again on the same address and data directory.
    pub fn restart(&mut self) {
        kill9(&mut self.child);
        let mut cmd = Command::new(controller_bin());
        // Test nodes share this machine's network namespace: no cluster network there
        // (the network tests run on labs, whose hosts have namespaces of their own); a
        // test's own --cluster-cidr overrides this.
        cmd.env("HUTCH_CLUSTER_CIDR", "none")
            .env("RUST_LOG", "info,hutch_controller=debug")
            .arg("--listen")
            .arg(&self.addr)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--heartbeat-interval")
            .arg(HEARTBEAT);
        // A test may give its own --down-after.
        if !self.extra.iter().any(|a| a.starts_with("--down-after")) {
            cmd.arg("--down-after").arg(DOWN_AFTER);
        }
        cmd.arg("--restart-backoff").arg("100ms").args(&self.extra);
        let started = spawn_listening(cmd, "controller", &mut self.logs);
        self.child = Some(started.child);
        self.addr = started.addr;
        self.metrics_url = started.metrics;
    }

    /// SIGKILLs the controller.
    pub fn kill(&mut self) {
        kill9(&mut self.child);
    }

    /// How the controller exited, once it has on its own within `timeout`; `None` while it
    /// runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let status = self.child.as_mut()?.try_wait().ok().flatten();
            if status.is_some() || std::time::Instant::now() > deadline {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A connected client.
    pub async fn client(&self) -> ControllerClient<Channel> {
        ControllerClient::connect(self.url())
            .await
            .expect("connect")
    }

    /// A connected client, once every one of `nodes` is READY.
    pub async fn client_when_ready(&self, nodes: &[&TestNode]) -> ControllerClient<Channel> {
        let mut client = self.client().await;
        for n in nodes {
            wait_node(
                &mut client,
                &n.name,
                v1::NodeState::Ready,
                Duration::from_secs(10),
            )
            .await;
        }
        client
    }
}

impl Drop for TestController {
    fn drop(&mut self) {
        kill9(&mut self.child);
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// An agent process registered with a controller. Dropping it kills the process and then
/// the containers it left (through the host's cleanup).
pub struct TestNode {
    /// The node's name.
    pub name: String,
    /// Where it listens.
    pub addr: String,
    /// Its metrics URL, when started with `--metrics-listen`.
    pub metrics_url: Option<String>,
    controller: String,
    args: Vec<String>,
    child: Option<Child>,
    logs: Vec<DaemonLog>,
    // Last: dropped after the process is gone.
    host: TestHost,
}

impl TestNode {
    /// Starts an agent offering `capacity_bytes` of memory (all of the host's when None),
    /// with extra `serve` flags (e.g. `--label=zone=a`).
    pub async fn start(
        test: &str,
        controller: &TestController,
        capacity_bytes: Option<u64>,
        flags: &[&str],
    ) -> TestNode {
        TestNode::start_on(TestHost::new(test).await, controller, capacity_bytes, flags)
    }

    /// [`TestNode::start`] on a host made beforehand: its name (`host.instance`) is known
    /// before the controller starts, for a tokens file naming the node, say.
    pub fn start_on(
        host: TestHost,
        controller: &TestController,
        capacity_bytes: Option<u64>,
        flags: &[&str],
    ) -> TestNode {
        TestNode::start_with_controllers(host, &controller.url(), capacity_bytes, flags)
    }

    /// [`TestNode::start_on`] with `--controller URLS` (several controllers, comma-separated).
    pub fn start_with_controllers(
        host: TestHost,
        urls: &str,
        capacity_bytes: Option<u64>,
        flags: &[&str],
    ) -> TestNode {
        let mut args = Vec::new();
        if let Some(cap) = capacity_bytes {
            let reserve = hutch_agent::node::memory_total_bytes().saturating_sub(cap);
            args.push(format!("--memory-reserve={reserve}"));
        }
        args.extend(flags.iter().map(|f| f.to_string()));
        let mut node = TestNode {
            name: host.instance.clone(),
            addr: "127.0.0.1:0".into(),
            metrics_url: None,
            controller: urls.to_string(),
            args,
            child: None,
            logs: Vec::new(),
            host,
        };
        node.restart();
        node
    }

    /// Starts the agent process again (same name, state, address).
    pub fn restart(&mut self) {
        kill9(&mut self.child);
        let mut cmd = self.host.agent_command();
        cmd.env("RUST_LOG", "info")
            .arg("serve")
            .arg("--listen")
            .arg(&self.addr)
            .arg("--controller")
            .arg(&self.controller)
            .args(&self.args);
        let started = spawn_listening(cmd, &self.name, &mut self.logs);
        self.child = Some(started.child);
        self.addr = started.addr;
        self.metrics_url = started.metrics;
    }

    /// SIGKILLs the agent; its containers keep running under their supervisors.
    pub fn kill(&mut self) {
        kill9(&mut self.child);
    }

    /// Freezes the agent (SIGSTOP): it sends no heartbeat until [`TestNode::resume`].
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused agent run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("the agent is running");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {}: {status}", child.id());
    }

    /// The host the agent runs on (its state directory and cgroups).
    pub fn host(&self) -> &TestHost {
        &self.host
    }

    /// What the agent wrote to stderr so far (every start).
    pub fn log_text(&self) -> String {
        logs_text(&self.logs)
    }

    /// A client straight to the agent.
    pub async fn agent(&self) -> AgentClient<Channel> {
        AgentClient::connect(format!("http://{}", self.addr))
            .await
            .expect("connect agent")
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        kill9(&mut self.child);
    }
}

/// A spec on the shared rootfs.
pub fn spec(command: &[&str]) -> v1::ContainerSpec {
    v1::ContainerSpec {
        rootfs: ROOTFS.into(),
        command: command.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// A create request.
pub fn create(name: &str, spec: v1::ContainerSpec) -> v1::CreateContainerRequest {
    v1::CreateContainerRequest {
        name: name.into(),
        spec: Some(spec),
        ..Default::default()
    }
}

/// The record's state.
pub fn state_of(c: &v1::Container) -> v1::ContainerState {
    v1::ContainerState::try_from(c.state).unwrap_or(v1::ContainerState::Unspecified)
}

/// Force-removes the containers `names` (a test's cleanup); panics on a failure.
pub async fn force_remove(client: &mut ControllerClient<Channel>, names: &[&str]) {
    for name in names {
        client
            .remove_container(v1::RemoveContainerRequest {
                id: (*name).into(),
                force: true,
            })
            .await
            .unwrap_or_else(|e| panic!("remove {name}: {e}"));
    }
}

/// Polls `GetContainer` until `done` holds, or panics after `timeout` with the last record.
/// Any client: a plain channel, or one over several controllers.
pub async fn wait_container<T>(
    client: &mut ControllerClient<T>,
    name: &str,
    timeout: Duration,
    done: impl Fn(&v1::Container) -> bool,
) -> v1::Container
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let deadline = Instant::now() + timeout;
    loop {
        let got = client
            .get_container(v1::GetContainerRequest { id: name.into() })
            .await
            .map(tonic::Response::into_inner);
        if let Ok(c) = &got {
            if done(c) {
                return c.clone();
            }
        }
        if Instant::now() > deadline {
            panic!("container {name} did not get there in {timeout:?}; last: {got:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `GetNode` until the node is in `want`. Any client, as [`wait_container`].
pub async fn wait_node<T>(
    client: &mut ControllerClient<T>,
    name: &str,
    want: v1::NodeState,
    timeout: Duration,
) -> v1::Node
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let deadline = Instant::now() + timeout;
    loop {
        let got = client
            .get_node(v1::GetNodeRequest { name: name.into() })
            .await
            .map(tonic::Response::into_inner);
        if let Ok(n) = &got {
            if n.state == want as i32 {
                return n.clone();
            }
        }
        if Instant::now() > deadline {
            panic!("node {name} is not {want:?} after {timeout:?}; last: {got:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
