//! Test support: a real runtime per test, on one debootstrapped rootfs shared by the whole
//! test run, with every resource uniquely named and removed when the test ends, also when
//! it fails.
//!
//! The shared rootfs lives in `/var/tmp/hutch-test-cache/rootfs` (or `$HUTCH_TEST_ROOTFS_DIR`)
//! and is built once: in-process by the store's single-flight, across test processes by its
//! file lock. Later runs find it cached.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hutch_agent::cgroup::ContainerCgroup;
use hutch_agent::mounts::unmount_below;
use hutch_agent::rootfs::RootfsSource;
use hutch_agent::runtime::state::{ContainerState, StatePaths};
use hutch_agent::runtime::{Runtime, RuntimeConfig};
use hutch_agent::spec::ContainerSpec;

/// Name of the shared Debian rootfs in every test host's store.
pub const ROOTFS: &str = "debian";
/// The one node path test runtimes allow bind sources under (their
/// `--allowed-bind-paths`); tests make their own directory in it ([`TestHost::bind_dir`]).
pub const BIND_ROOT: &str = "/var/tmp/hutch-test-binds";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this test process and call: `NAME-PID-N`.
pub fn unique(name: &str) -> String {
    format!(
        "{name}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The rootfs store shared by the test run.
pub fn shared_rootfs_dir() -> PathBuf {
    std::env::var_os("HUTCH_TEST_ROOTFS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/hutch-test-cache/rootfs"))
}

/// A binary of the workspace: `from_cargo` (a test's `option_env!("CARGO_BIN_EXE_NAME")`,
/// set in the tests of the package that has the binary), else next to the test executable's
/// directory (`target/debug/deps/..`), where `cargo test --workspace` builds every binary.
pub fn workspace_bin(name: &str, from_cargo: Option<&str>) -> PathBuf {
    if let Some(p) = from_cargo {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: build the binaries first (cargo build --workspace --bins)",
        bin.display()
    );
    bin
}

/// The supervisor binary.
pub fn supervisor_bin() -> PathBuf {
    workspace_bin("hutch-supervisor", None)
}

/// The agent binary.
pub fn agent_bin() -> PathBuf {
    workspace_bin("hutch-agent", None)
}

/// One runtime with its own state directory and cgroup instance.
pub struct TestHost {
    /// The runtime under test.
    pub runtime: std::sync::Arc<Runtime>,
    /// Its state directory.
    pub state_dir: PathBuf,
    /// Its cgroup instance name.
    pub instance: String,
}

impl TestHost {
    /// A runtime named after the test, with the shared `debian` rootfs ready.
    pub async fn new(test: &str) -> TestHost {
        let host = TestHost::with_rootfs_dir(test, shared_rootfs_dir());
        let started = Instant::now();
        let built = host
            .runtime
            .store()
            .build(ROOTFS, &RootfsSource::default_debian(), None)
            .await
            .expect("shared debian rootfs");
        println!(
            "shared rootfs '{ROOTFS}' {:?} in {:.2}s",
            built.outcome,
            started.elapsed().as_secs_f64()
        );
        host
    }

    /// A fresh directory below [`BIND_ROOT`] (which test runtimes allow as bind sources),
    /// named after the test; the caller removes it.
    pub fn bind_dir(test: &str) -> PathBuf {
        let dir = PathBuf::from(BIND_ROOT).join(unique(test));
        std::fs::create_dir_all(&dir).expect("bind dir");
        dir
    }

    /// A runtime named after the test on the rootfs store at `rootfs_dir` (nothing built).
    pub fn with_rootfs_dir(test: &str, rootfs_dir: PathBuf) -> TestHost {
        let name = unique(test);
        let state_dir = PathBuf::from(format!("/var/tmp/hutch-test-{name}"));
        let instance = format!("t-{name}");
        let runtime = std::sync::Arc::new(
            Runtime::new(test_config(&state_dir, rootfs_dir, &instance)).expect("runtime"),
        );
        TestHost {
            runtime,
            state_dir,
            instance,
        }
    }

    /// The `hutch-agent` binary set up on this host's state directory, rootfs store and
    /// cgroup instance, ready for a subcommand.
    pub fn agent_command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(agent_bin());
        cmd.arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--rootfs-dir")
            .arg(self.runtime.store().root())
            .arg("--instance")
            .arg(&self.instance);
        cmd
    }

    /// A second runtime on the same state directory, store and cgroup instance: what a
    /// restarted agent process would open.
    pub fn reopen(&self) -> std::sync::Arc<Runtime> {
        self.reopen_with(|_| {})
    }

    /// [`TestHost::reopen`], its configuration changed by `configure` first.
    pub fn reopen_with(
        &self,
        configure: impl FnOnce(&mut RuntimeConfig),
    ) -> std::sync::Arc<Runtime> {
        let mut config = test_config(
            &self.state_dir,
            self.runtime.store().root().to_path_buf(),
            &self.instance,
        );
        configure(&mut config);
        std::sync::Arc::new(Runtime::new(config).expect("runtime"))
    }

    /// Serves `runtime` (this host's unless given) over gRPC on 127.0.0.1:0.
    pub async fn serve(
        &self,
        runtime: Option<std::sync::Arc<Runtime>>,
        event_keep: usize,
    ) -> TestAgent {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let options = hutch_agent::service::server::ServeOptions {
            runtime: runtime.unwrap_or_else(|| self.runtime.clone()),
            node: self.instance.clone(),
            event_keep,
            memory_reserve_bytes: 256 << 20,
            registration: None,
            limits: hutch_agent::service::server::ServerLimits::default(),
            tokens: None,
            tls: None,
            metrics: None,
        };
        let task = tokio::spawn(hutch_agent::service::server::serve(
            options,
            listener,
            async {
                let _ = rx.await;
            },
        ));
        let url = format!("http://{addr}");
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = loop {
            match hutch_proto::v1::agent_client::AgentClient::connect(url.clone()).await {
                Ok(c) => break c,
                Err(e) => {
                    assert!(Instant::now() < deadline, "agent did not come up: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        TestAgent {
            addr,
            client,
            shutdown: Some(tx),
            task,
        }
    }

    /// A spec on the shared rootfs.
    pub fn spec(&self, command: &[&str]) -> ContainerSpec {
        ContainerSpec::new(ROOTFS, command.iter().copied())
    }

    /// Directory of container `id`.
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.state_dir.join("containers").join(id)
    }

    /// The container's stdout as one string.
    pub fn stdout(&self, id: &str) -> String {
        self.runtime
            .logs(id)
            .expect("logs")
            .into_iter()
            .filter(|l| l.stream == hutch_agent::runtime::logs::Stream::Stdout)
            .map(|l| l.text + "\n")
            .collect()
    }

    /// Runs `spec` to its end and returns its final record.
    pub async fn run_to_end(
        &self,
        id: &str,
        spec: ContainerSpec,
    ) -> hutch_agent::runtime::ContainerInfo {
        self.runtime.run(id, spec).await.expect("run");
        self.runtime.wait(id).await.expect("wait")
    }

    /// Asserts that nothing of container `id` is left on the host: no mount, no cgroup, no
    /// state directory, no supervisor.
    pub fn assert_nothing_left(&self, id: &str) {
        let dir = self.container_dir(id);
        assert!(
            unmount_below(&dir).is_empty() && hutch_agent::mounts::mounts_below(&dir).is_empty(),
            "mounts left below {}",
            dir.display()
        );
        let cg = self.runtime.cgroups().container_path(id);
        for dir in cg.dirs() {
            assert!(!dir.exists(), "cgroup {} left", dir.display());
        }
        assert!(!dir.exists(), "state directory {} left", dir.display());
        assert!(
            supervisors_of(&dir).is_empty(),
            "supervisor of {id} still running"
        );
    }
}

/// The configuration of a test runtime.
fn test_config(state_dir: &Path, rootfs_dir: PathBuf, instance: &str) -> RuntimeConfig {
    RuntimeConfig {
        rootfs_dir: Some(rootfs_dir),
        supervisor_bin: Some(supervisor_bin()),
        instance: instance.to_string(),
        allowed_bind_paths: vec![PathBuf::from(BIND_ROOT)],
        ..RuntimeConfig::new(state_dir)
    }
}

/// Pids of supervisor or exec helper processes working on `container_dir`.
pub fn supervisors_of(container_dir: &Path) -> Vec<u32> {
    let needle = container_dir.to_string_lossy().into_owned();
    hutch_processes()
        .into_iter()
        .filter(|(_, cmdline)| cmdline.contains(&needle))
        .map(|(pid, _)| pid)
        .collect()
}

/// Every running `hutch-supervisor` process: (pid, command line).
pub fn hutch_processes() -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline
            .split(' ')
            .next()
            .is_some_and(|argv0| argv0.ends_with("hutch-supervisor"))
        {
            out.push((pid, cmdline));
        }
    }
    out
}

/// An agent served in-process for a test.
pub struct TestAgent {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// A connected client.
    pub client: hutch_proto::v1::agent_client::AgentClient<tonic::transport::Channel>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), hutch_agent::service::server::ServeError>>,
}

impl TestAgent {
    /// Stops serving (as SIGTERM would) and waits for the server to end.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for TestHost {
    /// Kills whatever the test left running, waits for the supervisors to clean up, then
    /// removes the state directory and the cgroup instance. Synchronous, so it also runs
    /// when a test panics.
    fn drop(&mut self) {
        let containers = self.state_dir.join("containers");
        for entry in std::fs::read_dir(&containers)
            .into_iter()
            .flatten()
            .flatten()
        {
            let dir = entry.path();
            let id = entry.file_name().to_string_lossy().into_owned();
            let cg = ContainerCgroup::open(self.runtime.cgroups().container_path(&id));
            let _ = cg.kill_all();
            let deadline = Instant::now() + Duration::from_secs(10);
            while !supervisors_of(&dir).is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let state: Option<ContainerState> =
                hutch_agent::fsutil::read_json(&StatePaths::state(&dir)).ok();
            if state.is_some_and(|s| !s.cleaned_up) {
                eprintln!("cleanup: container {id} was not cleaned up by its supervisor; removing what is left");
            }
            let _ = cg.remove();
        }
        let left = unmount_below(&self.state_dir);
        if left.is_empty() {
            let _ = std::fs::remove_dir_all(&self.state_dir);
        } else {
            eprintln!(
                "cleanup: could not unmount {left:?}; leaving {}",
                self.state_dir.display()
            );
        }
        self.runtime.close();
    }
}

/// A tmpfs of a given size mounted on a test's own directory, to fill a disk under a
/// daemon; unmounted, and the directory removed, when dropped.
pub struct SmallDisk(PathBuf);

impl SmallDisk {
    /// Mounts a tmpfs with `options` (`size=2m`) on `dir`, made first.
    pub fn mount(dir: PathBuf, options: &str) -> SmallDisk {
        std::fs::create_dir_all(&dir).expect("mount point");
        let disk = SmallDisk(dir);
        disk.mount_with(options);
        disk
    }

    /// Mounts it again with other `options` (`remount,size=64m` makes room).
    pub fn mount_with(&self, options: &str) {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(&self.0)
            .status()
            .expect("mount");
        assert!(status.success(), "mount -o {options} {}", self.0.display());
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
