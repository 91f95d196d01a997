//! Test support for the failure suite: a lab of hosts made by `deploy/lab` (network
//! namespaces on a private bridge), driven through its script, with the real binaries built
//! in this workspace and the rootfs shared by the test run. A [`Lab`] is torn down when it
//! is dropped, also when a test fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub mod history;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Liveness timing of the labs' controllers: fast, so node loss shows in seconds.
pub const CONTROLLER_ARGS: &str =
    "--heartbeat-interval 200ms --not-ready-misses 3 --down-after 2s --restart-backoff 100ms";

/// The workspace's root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

/// Where cargo put this build's binaries (`target/debug`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .to_path_buf();
    for b in [
        "hutch",
        "hutch-agent",
        "hutch-controller",
        "hutch-supervisor",
    ] {
        assert!(
            dir.join(b).exists(),
            "{b} is not built in {}: cargo build --workspace --bins first (scripts/test.sh does)",
            dir.display()
        );
    }
    dir
}

/// The rootfs store shared by the test run, with `debian` in it (built once).
pub async fn shared_rootfs() -> PathBuf {
    let dir = std::env::var_os("HUTCH_TEST_ROOTFS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/hutch-test-cache/rootfs"));
    let store = hutch_agent::rootfs::RootfsStore::open(&dir).expect("rootfs store");
    store
        .build(
            "debian",
            &hutch_agent::rootfs::RootfsSource::default_debian(),
            None,
        )
        .await
        .expect("shared debian rootfs");
    dir
}

/// One lab, named after its test.
pub struct Lab {
    /// The lab's name (prefix of every resource).
    pub name: String,
    rootfs: PathBuf,
    bin: PathBuf,
    agent_args: String,
}

impl Lab {
    /// `lab up AGENTS` with the fast liveness timing; `extra` controller flags are appended.
    pub async fn up(test: &str, agents: usize, extra_controller_args: &str) -> Lab {
        Lab::up_with(test, agents, extra_controller_args, "").await
    }

    /// `lab up AGENTS` with extra controller flags and agent `serve` flags.
    pub async fn up_with(
        test: &str,
        agents: usize,
        extra_controller_args: &str,
        agent_args: &str,
    ) -> Lab {
        Lab::up_full(test, agents, 1, extra_controller_args, agent_args).await
    }

    /// `lab up AGENTS --controllers CONTROLLERS`: controller hosts ctl1..ctlN, each with an
    /// etcd member and a controller.
    pub async fn up_ha(test: &str, agents: usize, controllers: usize) -> Lab {
        Lab::up_full(test, agents, controllers, "", "").await
    }

    async fn up_full(
        test: &str,
        agents: usize,
        controllers: usize,
        extra_controller_args: &str,
        agent_args: &str,
    ) -> Lab {
        let name = format!(
            "t-{test}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let lab = Lab {
            name,
            rootfs: shared_rootfs().await,
            bin: bin_dir(),
            agent_args: agent_args.to_string(),
        };
        let started = Instant::now();
        let out = lab.script(
            &[
                "up",
                &agents.to_string(),
                "--controllers",
                &controllers.to_string(),
            ],
            &format!("{CONTROLLER_ARGS} {extra_controller_args}"),
        );
        assert!(
            out.status.success(),
            "lab up failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!(
            "lab {} up with {agents} agents in {:.2}s",
            lab.name,
            started.elapsed().as_secs_f64()
        );
        lab
    }

    fn script(&self, args: &[&str], controller_args: &str) -> Output {
        Command::new(workspace().join("deploy/lab"))
            .arg("--name")
            .arg(&self.name)
            .args(args)
            .env("HUTCH_BIN_DIR", &self.bin)
            .env("HUTCH_LAB_ROOTFS_DIR", &self.rootfs)
            .env("HUTCH_LAB_CONTROLLER_ARGS", controller_args)
            .env("HUTCH_LAB_AGENT_ARGS", &self.agent_args)
            .output()
            .expect("deploy/lab")
    }

    /// Runs `deploy/lab ARGS` and asserts it succeeded; returns its stdout.
    pub fn lab(&self, args: &[&str]) -> String {
        let out = self.script(args, CONTROLLER_ARGS);
        assert!(
            out.status.success(),
            "lab {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `CMD` on `host` (its network; `HUTCH_CONTROLLER` points at the lab's controller).
    pub fn exec(&self, host: &str, cmd: &[&str]) -> Output {
        let mut args = vec!["exec", host, "--"];
        args.extend_from_slice(cmd);
        self.script(&args, CONTROLLER_ARGS)
    }

    /// Starts `CMD` on `host` in the background, its stdout piped (stderr inherited).
    pub fn spawn(&self, host: &str, cmd: &[&str]) -> std::process::Child {
        Command::new(workspace().join("deploy/lab"))
            .arg("--name")
            .arg(&self.name)
            .args(["exec", host, "--"])
            .args(cmd)
            .env("HUTCH_BIN_DIR", &self.bin)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("deploy/lab exec")
    }

    /// The lab host whose controller leads now (`ctl1`..), from `hutch controllers`.
    pub fn leader_host(&self, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let out = self.exec("client", &["hutch", "-o", "json", "controllers"]);
            let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let leader = json["controllers"].as_array().and_then(|all| {
                all.iter()
                    .find(|c| c["leader"] == true)
                    .and_then(|c| c["address"].as_str())
                    .and_then(|a| a.split("198.18.1.").nth(1))
                    .and_then(|rest| rest.split(':').next())
                    .map(|k| format!("ctl{k}"))
            });
            if let Some(host) = leader {
                return host;
            }
            assert!(Instant::now() < deadline, "no controller leads: {json}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `hutch run --rm --node NODE debian -- perl -e SCRIPT` from the client host: a
    /// short-lived container on one node (the minbase rootfs has perl, not netcat).
    pub fn run_perl(&self, node: &str, script: &str) -> Output {
        self.exec(
            "client",
            &[
                "hutch", "run", "--rm", "--node", node, "debian", "--", "perl", "-e", script,
            ],
        )
    }

    /// The `hutch` CLI on the client host; asserts success, returns stdout.
    pub fn hutch(&self, args: &[&str]) -> String {
        let mut cmd = vec!["hutch"];
        cmd.extend_from_slice(args);
        let out = self.exec("client", &cmd);
        assert!(
            out.status.success(),
            "hutch {args:?} failed ({:?}): {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `hutch -o json ARGS` on the client host, parsed.
    pub fn hutch_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        let text = self.hutch(&all);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("hutch {args:?}: {e}: {text}"))
    }

    /// The node name of lab host `host`.
    pub fn node(&self, host: &str) -> String {
        format!("{}-{host}", self.name)
    }

    /// Polls `hutch -o json inspect ID` until `done` holds; returns the record.
    pub fn wait_container(
        &self,
        id: &str,
        timeout: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.hutch_json(&["inspect", id]);
            if done(&c) {
                return c;
            }
            assert!(Instant::now() < deadline, "{id} never got there: {c:#}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls `hutch nodes` until node `host` is in `state` (ready, not-ready, down); returns
    /// how long it took.
    pub fn wait_node(&self, host: &str, state: &str, timeout: Duration) -> Duration {
        let started = Instant::now();
        let node = self.node(host);
        loop {
            let nodes = self.hutch_json(&["nodes"]);
            let now = nodes
                .as_array()
                .and_then(|a| a.iter().find(|n| n["name"] == node.as_str()))
                .map(|n| n["state"].clone());
            if now.as_ref().is_some_and(|s| s == state) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < timeout,
                "node {node} is not {state} after {timeout:?}: {now:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last `lines` lines `what` (controller, agent, etcd) wrote on lab host `host`, for
    /// a failing test's message (the lab's state goes with `lab down`).
    pub fn log_tail(&self, host: &str, what: &str, lines: usize) -> String {
        let path = PathBuf::from(format!(
            "/var/tmp/hutch-lab-{}/{host}/{what}.log",
            self.name
        ));
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| format!("({}: {e})", path.display()));
        let all: Vec<&str> = text.lines().collect();
        let from = all.len().saturating_sub(lines);
        format!(
            "--- {} (last {} lines)\n{}",
            path.display(),
            all.len() - from,
            all[from..].join("\n")
        )
    }

    /// Takes the lab down (also done on drop); returns `lab down`'s output.
    pub fn down(&self) -> String {
        self.lab(&["down"])
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.script(&["down"], CONTROLLER_ARGS);
    }
}
