//! Everything a run needs, set up once and removed at the end: the Debian rootfs (built once
//! per machine, kept in `/var/tmp/hutch-bench-cache`), a controller and an agent on loopback,
//! an OCI bundle on the same rootfs for `runc`, and a `containerd` daemon of the harness's
//! own (its own root, state and socket; containers' cgroups inside the harness's cgroup).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The run's resources.
pub struct BenchEnv {
    /// The run's scratch directory.
    pub dir: PathBuf,
    /// The rootfs directory itself (what runc, ctr and unshare+chroot get).
    pub rootfs_dir: PathBuf,
    /// The controller's URL.
    pub controller_url: String,
    /// The agent's URL.
    pub agent_url: String,
    /// The OCI bundles for runc (`/bin/true`, 5 namespaces, 64 MiB), one per parallel
    /// worker (each names its own cgroup).
    pub runc_bundles: [PathBuf; 2],
    /// containerd's socket.
    pub containerd_socket: PathBuf,
    /// The memory cgroup (v1 path) peers put their containers below.
    pub cgroup_parent: String,
    /// Where hutch's binaries are.
    pub bin_dir: PathBuf,
    /// The size of the busybox rootfs, for the table.
    pub busybox_size: String,
    /// The agent's process id.
    pub agent_pid: u32,
    daemons: Vec<Child>,
    /// /run/containerd did not exist before the run (containerd's shims put sockets and
    /// runc state there whatever its config says): remove it after.
    remove_run_containerd: bool,
}

/// Where the harness keeps its rootfs store between runs.
pub const STORE_DIR: &str = "/var/tmp/hutch-bench-cache/rootfs";

/// A daemon a scenario started for itself; killed when dropped.
pub struct KilledOnDrop(pub Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn die(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// Starts `cmd` and waits for its `listening on ADDR` line; returns the child and ADDR.
pub fn spawn_listening(cmd: Command, log: &Path) -> Result<(Child, String), String> {
    spawn_listening_metered(cmd, log).map(|(child, addr, _)| (child, addr))
}

/// [`spawn_listening`], also returning the metrics URL the daemon printed before (`...
/// metrics on URL`), when it serves metrics.
pub fn spawn_listening_metered(
    mut cmd: Command,
    log: &Path,
) -> Result<(Child, String, Option<String>), String> {
    let log_file = std::fs::File::create(log).map_err(|e| die("log", e))?;
    cmd.stdout(Stdio::piped()).stderr(log_file);
    let mut child = cmd.spawn().map_err(|e| die("spawn", e))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    let mut metrics = None;
    loop {
        line.clear();
        reader.read_line(&mut line).map_err(|e| die("read", e))?;
        match line.split_once(" metrics on ") {
            Some((_, url)) => metrics = Some(url.trim().to_string()),
            None => break,
        }
    }
    let addr = line
        .split("listening on ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .map(str::to_string);
    match addr {
        Some(a) => Ok((child, a, metrics)),
        None => {
            let _ = child.kill();
            Err(format!(
                "did not start: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            ))
        }
    }
}

/// The memory cgroup this process runs in, as a path below the hierarchy's root.
fn own_memory_cgroup() -> String {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    text.lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, ctrl, path) = (parts.next()?, parts.next()?, parts.next()?);
            (ctrl.split(',').any(|c| c == "memory") || ctrl.is_empty()).then(|| path.to_string())
        })
        .unwrap_or_else(|| "/".into())
}

impl BenchEnv {
    /// Sets everything up (no container network).
    pub async fn start() -> Result<BenchEnv, String> {
        Self::start_with(None).await
    }

    /// Sets everything up; with `cluster_cidr`, the controller gives the agent a subnet of
    /// it, so containers get the bridge network (only inside a network namespace of the
    /// harness's own: see `network::start_latency_net`).
    pub async fn start_with(cluster_cidr: Option<&str>) -> Result<BenchEnv, String> {
        let exe = std::env::current_exe().map_err(|e| die("exe", e))?;
        let bin_dir = exe.parent().ok_or("no bin dir")?.to_path_buf();
        for b in ["hutch-controller", "hutch-agent", "hutch-supervisor"] {
            if !bin_dir.join(b).exists() {
                return Err(format!(
                    "{b} is not built next to the harness in {}: run scripts/bench.sh",
                    bin_dir.display()
                ));
            }
        }
        let dir = PathBuf::from(format!("/var/tmp/hutch-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| die("scratch dir", e))?;
        let store_dir = PathBuf::from(STORE_DIR);
        let store =
            hutch_agent::rootfs::RootfsStore::open(&store_dir).map_err(|e| die("rootfs", e))?;
        let started = Instant::now();
        let built = store
            .build(
                "debian",
                &hutch_agent::rootfs::RootfsSource::default_debian(),
                None,
            )
            .await
            .map_err(|e| die("rootfs", e))?;
        eprintln!(
            "bench: rootfs debian {:?} in {:.1}s at {}",
            built.outcome,
            started.elapsed().as_secs_f64(),
            built.info.path.display()
        );
        let mut env = BenchEnv {
            rootfs_dir: built.info.path.clone(),
            controller_url: String::new(),
            agent_url: String::new(),
            runc_bundles: [dir.join("bundle-0"), dir.join("bundle-1")],
            containerd_socket: dir.join("containerd/containerd.sock"),
            cgroup_parent: format!(
                "{}/hutch-bench-peers-{}",
                own_memory_cgroup().trim_end_matches('/'),
                std::process::id()
            ),
            bin_dir,
            busybox_size: String::new(),
            agent_pid: 0,
            daemons: Vec::new(),
            remove_run_containerd: !Path::new("/run/containerd").exists(),
            dir,
        };
        env.start_hutch(&store_dir, cluster_cidr.unwrap_or("none"))?;
        env.busybox_size = env.build_busybox(&store).await?;
        env.write_bundle(0)?;
        env.write_bundle(1)?;
        env.start_containerd()?;
        Ok(env)
    }

    /// A rootfs of one static busybox (Debian's busybox-static) named `busybox`, for the
    /// rootfs-size scenario; returns its size.
    async fn build_busybox(
        &self,
        store: &hutch_agent::rootfs::RootfsStore,
    ) -> Result<String, String> {
        let src = PathBuf::from("/var/tmp/hutch-bench-cache/busybox-src");
        if !src.join("bin/busybox").exists() {
            std::fs::create_dir_all(src.join("bin")).map_err(|e| die("busybox", e))?;
            for d in ["proc", "dev", "sys", "tmp", "etc", "root"] {
                std::fs::create_dir_all(src.join(d)).map_err(|e| die("busybox", e))?;
            }
            std::fs::copy("/bin/busybox", src.join("bin/busybox"))
                .map_err(|e| die("/bin/busybox (scripts/bench.sh installs busybox-static)", e))?;
            for applet in ["true", "sh", "ls", "cat", "echo"] {
                std::os::unix::fs::symlink("busybox", src.join("bin").join(applet))
                    .map_err(|e| die("busybox", e))?;
            }
        }
        let built = store
            .build(
                "busybox",
                &hutch_agent::rootfs::RootfsSource::Directory { path: src },
                None,
            )
            .await
            .map_err(|e| die("busybox rootfs", e))?;
        Ok(hutch_core::units::human_bytes(built.info.size_bytes))
    }

    fn start_hutch(&mut self, store_dir: &Path, cluster_cidr: &str) -> Result<(), String> {
        let mut ctl = Command::new(self.bin_dir.join("hutch-controller"));
        ctl.env("HUTCH_CLUSTER_CIDR", cluster_cidr);
        ctl.args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(self.dir.join("controller"));
        let (child, addr) = spawn_listening(ctl, &self.dir.join("controller.log"))?;
        self.daemons.push(child);
        self.controller_url = format!("http://{addr}");
        let mut agent = Command::new(self.bin_dir.join("hutch-agent"));
        agent
            .arg("--state-dir")
            .arg(self.dir.join("agent"))
            .arg("--rootfs-dir")
            .arg(store_dir)
            .args(["--name", &format!("bench-{}", std::process::id())])
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--controller",
                &self.controller_url,
            ]);
        let (child, addr) = spawn_listening(agent, &self.dir.join("agent.log"))?;
        self.agent_pid = child.id();
        self.daemons.push(child);
        self.agent_url = format!("http://{addr}");
        Ok(())
    }

    /// `runc spec`, then: the shared rootfs read-only, `/bin/true`, 5 namespaces, 64 MiB,
    /// cgroups below the harness's own.
    fn write_bundle(&self, worker: usize) -> Result<(), String> {
        let bundle = &self.runc_bundles[worker];
        std::fs::create_dir_all(bundle).map_err(|e| die("bundle", e))?;
        let spec = Command::new("runc")
            .arg("spec")
            .current_dir(bundle)
            .status()
            .map_err(|e| {
                die(
                    "runc spec (is runc installed? scripts/bench.sh installs it)",
                    e,
                )
            })?;
        if !spec.success() {
            return Err("runc spec failed".into());
        }
        let path = bundle.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| die("config.json", e))?;
        let mut c: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| die("config.json", e))?;
        c["root"] = serde_json::json!({"path": self.rootfs_dir, "readonly": true});
        c["process"]["args"] = serde_json::json!(["/bin/true"]);
        c["process"]["terminal"] = serde_json::json!(false);
        c["linux"]["cgroupsPath"] =
            serde_json::json!(format!("{}/runc-{worker}", self.cgroup_parent));
        c["linux"]["resources"] = serde_json::json!({"memory": {"limit": 64 << 20}});
        std::fs::write(&path, c.to_string()).map_err(|e| die("config.json", e))
    }

    fn start_containerd(&mut self) -> Result<(), String> {
        let d = self.dir.join("containerd");
        std::fs::create_dir_all(&d).map_err(|e| die("containerd dir", e))?;
        let config = format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n[grpc]\n  address = \"{0}/containerd.sock\"\n[ttrpc]\n  address = \"{0}/containerd.sock.ttrpc\"\n[debug]\n  address = \"{0}/debug.sock\"\n",
            d.display()
        );
        std::fs::write(d.join("config.toml"), config).map_err(|e| die("containerd config", e))?;
        let log = std::fs::File::create(d.join("containerd.log")).map_err(|e| die("log", e))?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| die("containerd (scripts/bench.sh installs it)", e))?;
        self.daemons.push(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ok = Command::new("ctr")
                .arg("--address")
                .arg(&self.containerd_socket)
                .arg("version")
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "containerd did not come up: {}",
                    std::fs::read_to_string(d.join("containerd.log")).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for BenchEnv {
    /// Stops the daemons, removes what the peers left (containerd's client fifos, cgroups
    /// below the harness's own) and the scratch directory.
    fn drop(&mut self) {
        for d in &mut self.daemons {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(d.id().to_string())
                .status();
        }
        for d in &mut self.daemons {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = d.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = d.kill();
            let _ = d.wait();
        }
        // Mounts containerd or the shims left below the scratch directory, deepest first.
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let prefix = self.dir.to_string_lossy().into_owned();
        let mut mounts: Vec<&str> = mountinfo
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        mounts.sort_by(|a, b| b.cmp(a));
        for m in mounts {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
        // Cgroups the peers (and the agent) made below ours, in every hierarchy, deepest
        // first.
        for name in [
            format!("hutch-bench-peers-{}", std::process::id()),
            format!("hutch-bench-{}", std::process::id()),
        ] {
            if let Ok(out) = Command::new("find")
                .args([
                    "/sys/fs/cgroup",
                    "-depth",
                    "-type",
                    "d",
                    "-path",
                    &format!("*/{name}*"),
                ])
                .output()
            {
                for d in String::from_utf8_lossy(&out.stdout).lines() {
                    let _ = std::fs::remove_dir(d);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        if self.remove_run_containerd {
            let _ = std::fs::remove_dir_all("/run/containerd");
        }
    }
}

/// A controller and an agent of a scenario's own, next to the run's pair: clients, a watch
/// of every change, the metrics URLs they printed; killed on drop.
pub struct Pair {
    /// A client of the controller.
    pub client: crate::scenarios::Client,
    /// A watch of every change, from the start.
    pub watch: crate::scenarios::Watch,
    /// The agent's and the controller's metrics URLs, those that serve metrics.
    pub urls: Vec<String>,
    _daemons: Vec<KilledOnDrop>,
}

/// Starts a controller with `controller_args` and an agent with `agent_args` (`serve`
/// flags) registered with it, in `env.dir/NAME`; returns once the agent's node is READY.
pub async fn start_pair(
    env: &BenchEnv,
    name: &str,
    controller_args: &[&str],
    agent_args: &[&str],
) -> Result<Pair, String> {
    let dir = env.dir.join(name);
    let mut ctl = Command::new(env.bin_dir.join("hutch-controller"));
    ctl.env("HUTCH_CLUSTER_CIDR", "none")
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("controller"))
        .args(controller_args);
    let (child, ctl_addr, ctl_metrics) =
        spawn_listening_metered(ctl, &env.dir.join(format!("{name}-controller.log")))?;
    let controller = KilledOnDrop(child);
    let mut agent = Command::new(env.bin_dir.join("hutch-agent"));
    agent
        .arg("--state-dir")
        .arg(dir.join("agent"))
        .args(["--rootfs-dir", STORE_DIR])
        // Named so the run's cleanup finds its cgroups (hutch-bench-PID*).
        .args(["--name", &format!("bench-{}-{name}", std::process::id())])
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(agent_args)
        .args(["--controller", &format!("http://{ctl_addr}")]);
    let (child, _, agent_metrics) =
        spawn_listening_metered(agent, &env.dir.join(format!("{name}-agent.log")))?;
    let agent = KilledOnDrop(child);
    let mut client = crate::scenarios::Client::connect(format!("http://{ctl_addr}"))
        .await
        .map_err(|e| e.to_string())?;
    crate::tls::wait_ready(&mut client).await?;
    let watch = client
        .watch_containers(hutch_proto::v1::WatchContainersRequest::default())
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    Ok(Pair {
        client,
        watch,
        urls: [agent_metrics, ctl_metrics].into_iter().flatten().collect(),
        _daemons: vec![agent, controller],
    })
}

/// Creates `/bin/true` on `pair` and on the run's own pair in turn, `runs` times after two
/// warm-up rounds, each removed afterwards: the create->EXITED times of each, measured
/// under the same load.
pub async fn alternate(
    env: &BenchEnv,
    pair: &mut Pair,
    prefix: &str,
    runs: usize,
) -> Result<(Vec<Duration>, Vec<Duration>), String> {
    use crate::scenarios::{connect_and_watch, hutch_sample, remove_one};
    let (mut plain, mut plain_watch) = connect_and_watch(env).await?;
    let (mut theirs, mut ours) = (Vec::new(), Vec::new());
    for i in 0..runs + 2 {
        let name = format!("{prefix}-{i}");
        let (_, t) = hutch_sample(&mut pair.client, &mut pair.watch, &name, "debian").await?;
        remove_one(&mut pair.client, name.clone()).await?;
        let (_, o) = hutch_sample(&mut plain, &mut plain_watch, &name, "debian").await?;
        remove_one(&mut plain, name).await?;
        if i >= 2 {
            theirs.push(t);
            ours.push(o);
        }
    }
    Ok((theirs, ours))
}
