//! The real `hutch` binary against a real controller and agent: output, exit codes (the
//! container's, 125 for hutch's own errors, 2 for usage), JSON with stable field names, and
//! the end-to-end time of `hutch run --rm ROOTFS -- /bin/true` (printed, not asserted).

use hutch_testkit as common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{workspace_bin, TestController, TestNode, ROOTFS};

struct Cli {
    url: String,
}

impl Cli {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(workspace_bin("hutch", option_env!("CARGO_BIN_EXE_hutch")))
            .arg("--controller")
            .arg(&self.url)
            .args(args)
            .output()
            .expect("run hutch")
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_runs_containers_like_docker_does() {
    let ctl = TestController::start("cli", &[]);
    let node = TestNode::start("cli-node", &ctl, None, &[]).await;
    let _ready = ctl.client_when_ready(&[&node]).await;
    let cli = Cli { url: ctl.url() };

    // Output goes where it belongs; the exit code is the container's.
    let o = cli.run(&[
        "run",
        "--rm",
        ROOTFS,
        "--",
        "/bin/sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(code(&o), 3, "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "out\n");
    assert!(text(&o.stderr).contains("err\n"), "{}", text(&o.stderr));

    // The tutorial's steps: pid namespace, memory limit, a command that does not exist.
    let o = cli.run(&[
        "run",
        "--rm",
        "--ns",
        "pid,mount",
        ROOTFS,
        "--",
        "ps",
        "-o",
        "pid,comm",
    ]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert_eq!(
        text(&o.stdout).split_whitespace().collect::<Vec<_>>(),
        vec!["PID", "COMMAND", "1", "ps"]
    );
    // --ns pid alone: the CLI says what the shared namespaces expose.
    let o = cli.run(&["run", "--rm", "--ns", "pid", ROOTFS, "--", "true"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    for ns in ["ipc", "net", "uts", "mount"] {
        let line = format!("hutch: warning: no {ns} namespace: ");
        assert!(text(&o.stderr).contains(&line), "{}", text(&o.stderr));
    }
    // Docker's --storage-opt size: a write past it fails inside with ENOSPC.
    let o = cli.run(&[
        "run",
        "--rm",
        "--storage-opt",
        "size=16M",
        ROOTFS,
        "--",
        "sh",
        "-c",
        "dd if=/dev/zero of=/fill bs=1M count=64",
    ]);
    assert_eq!(code(&o), 1, "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("No space left on device"),
        "{}",
        text(&o.stderr)
    );
    let o = cli.run(&[
        "run",
        "--rm",
        "--storage-opt",
        "quota=1G",
        ROOTFS,
        "--",
        "true",
    ]);
    assert_eq!(code(&o), 125, "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("size=SIZE"), "{}", text(&o.stderr));
    let o = cli.run(&[
        "run",
        "--rm",
        "--memory",
        "16M",
        ROOTFS,
        "--",
        "/bin/sh",
        "-c",
        "x=a; while true; do x=$x$x; done",
    ]);
    assert_eq!(code(&o), 137, "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("OOM-killed"),
        "{}",
        text(&o.stderr)
    );
    let o = cli.run(&["run", "--rm", ROOTFS, "--", "/no/such/program"]);
    assert_eq!(code(&o), 127, "{}", text(&o.stderr));

    // unshare's letters: U is the user namespace (u is uts), so root inside is 100000 outside.
    let o = cli.run(&[
        "run",
        "--rm",
        "--ns",
        "U,p,m",
        ROOTFS,
        "--",
        "cat",
        "/proc/self/uid_map",
    ]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert_eq!(
        text(&o.stdout).split_whitespace().collect::<Vec<_>>(),
        vec!["0", "100000", "65536"],
        "--ns U must give a user namespace"
    );

    // Detached: back once it runs; exec, ps, inspect, stop, wait, rm.
    let o = cli.run(&[
        "run", "-d", "--name", "cli-web", "--memory", "64M", "--cpus", "0.5", ROOTFS, "--",
        "sleep", "600",
    ]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "cli-web\n");
    let o = cli.run(&["exec", "cli-web", "--", "hostname"]);
    assert_eq!(
        (code(&o), text(&o.stdout)),
        (0, "cli-web\n".to_string()),
        "{}",
        text(&o.stderr)
    );
    let o = cli.run(&["exec", "cli-web", "--", "/bin/sh", "-c", "exit 5"]);
    assert_eq!(code(&o), 5);
    let o = cli.run(&["ps"]);
    let ps = text(&o.stdout);
    assert!(ps.starts_with("ID"), "{ps}");
    assert!(
        ps.lines()
            .any(|l| l.starts_with("cli-web") && l.contains("running")),
        "{ps}"
    );
    let o = cli.run(&["inspect", "cli-web"]);
    let inspect = text(&o.stdout);
    assert!(inspect.contains("NAMESPACE"), "{inspect}");
    assert!(
        inspect
            .lines()
            .any(|l| l.starts_with("pid ") && l.trim_end().ends_with("yes")),
        "{inspect}"
    );
    assert!(inspect.contains("64 MiB"), "{inspect}");
    assert!(
        inspect
            .lines()
            .any(|l| l.starts_with("cpus") && l.trim_end().ends_with("0.5")),
        "{inspect}"
    );

    // JSON: valid, with the documented field names.
    let o = cli.run(&["-o", "json", "ps"]);
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).expect("ps -o json is JSON");
    let web = list
        .as_array()
        .and_then(|a| a.iter().find(|c| c["id"] == "cli-web"))
        .expect("cli-web listed");
    for field in [
        "id",
        "node",
        "state",
        "status",
        "rootfs",
        "command",
        "exit_code",
        "signal",
        "oom_killed",
        "pid",
        "memory_limit_bytes",
        "cpus",
        "restart_count",
        "restart_policy",
        "labels",
        "namespaces",
        "created_at",
        "started_at",
        "finished_at",
        "revision",
    ] {
        assert!(web.get(field).is_some(), "field {field} missing: {web}");
    }
    assert_eq!(web["state"], "running");
    assert_eq!(web["memory_limit_bytes"], 64 << 20);
    assert_eq!(web["namespaces"][0]["kind"], "pid");

    // A reader that goes away (`hutch -o json ps | head -c 10`) ends hutch quietly, as it
    // ends `ls`: status 141 (128 + SIGPIPE), no panic.
    let mut child = Command::new(workspace_bin("hutch", option_env!("CARGO_BIN_EXE_hutch")))
        .args(["--controller", &cli.url, "-o", "json", "ps"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn hutch");
    drop(child.stdout.take());
    let o = child.wait_with_output().expect("hutch ends");
    assert_eq!(code(&o), 141, "{}", text(&o.stderr));
    assert_eq!(
        text(&o.stderr),
        "",
        "a closed pipe is not an error to report"
    );

    // `hutch run --rm ... | head -1`: once nobody reads, hutch ends (141) and --rm still
    // removes the container, which is stopped by force.
    let mut child = Command::new(workspace_bin("hutch", option_env!("CARGO_BIN_EXE_hutch")))
        .args([
            "--controller",
            &cli.url,
            "run",
            "--rm",
            "--name",
            "cli-pipe",
            ROOTFS,
            "--",
            "yes",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn hutch run");
    drop(child.stdout.take());
    let o = child.wait_with_output().expect("hutch run ends");
    assert_eq!(code(&o), 141, "{}", text(&o.stderr));
    let o = cli.run(&["inspect", "cli-pipe"]);
    assert_eq!(code(&o), 125, "--rm removed it: {}", text(&o.stdout));
    let o = cli.run(&["-o", "json", "nodes"]);
    let nodes: serde_json::Value =
        serde_json::from_slice(&o.stdout).expect("nodes -o json is JSON");
    assert_eq!(nodes[0]["name"], node.name.as_str());
    assert_eq!(nodes[0]["state"], "ready");

    let o = cli.run(&["stop", "-t", "1", "cli-web"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let o = cli.run(&["wait", "cli-web"]);
    assert_eq!(
        code(&o),
        137,
        "sleep as PID 1 ignores SIGTERM: SIGKILL after the grace"
    );
    let o = cli.run(&["logs", "cli-web"]);
    assert_eq!(code(&o), 0);
    let o = cli.run(&["rm", "cli-web"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));

    // Errors: one line, exit 125; usage errors exit 2.
    let o = cli.run(&["inspect", "cli-web"]);
    assert_eq!(code(&o), 125);
    assert_eq!(text(&o.stderr), "hutch: container 'cli-web' not found\n");
    let o = cli.run(&["run", "--memory", "lots", ROOTFS, "--", "true"]);
    assert_eq!(code(&o), 125);
    assert!(
        text(&o.stderr).starts_with("hutch: memory:"),
        "{}",
        text(&o.stderr)
    );
    for (flag, value) in [
        ("--ns", "bogus"),
        ("--restart", "unless-stopped"),
        ("--cpus", "lots"),
        ("--cpus", "2000"),
        ("--cpu-shares", "1"),
    ] {
        let o = cli.run(&["run", flag, value, ROOTFS, "--", "true"]);
        assert_eq!(code(&o), 125, "a value hutch refuses: {}", text(&o.stderr));
        assert!(text(&o.stderr).contains(value), "{}", text(&o.stderr));
    }
    // No command: optional for an image, so the controller refuses it for a tree rootfs.
    let o = cli.run(&["run", ROOTFS]);
    assert_eq!(code(&o), 125, "no command: {}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("command is empty"),
        "{}",
        text(&o.stderr)
    );
    let o = cli.run(&["run", "--no-such-flag", ROOTFS, "--", "true"]);
    assert_eq!(code(&o), 2, "an unknown flag is a usage error");
    let o = Command::new(workspace_bin("hutch", option_env!("CARGO_BIN_EXE_hutch")))
        .args(["--controller", "http://127.0.0.1:1", "ps"])
        .output()
        .expect("hutch");
    assert_eq!(code(&o), 125);
    assert!(
        text(&o.stderr).starts_with("hutch: cannot reach the controller at http://127.0.0.1:1"),
        "{}",
        text(&o.stderr)
    );
    let o = cli.run(&["completions", "bash"]);
    assert!(text(&o.stdout).contains("_hutch()"), "bash completion");

    // What `hutch run --rm ROOTFS -- /bin/true` costs end to end (process start, connect,
    // create, run, exit, remove), measured here; printed for the record.
    let mut times = Vec::new();
    for _ in 0..20 {
        let start = Instant::now();
        let o = cli.run(&["run", "--rm", ROOTFS, "--", "/bin/true"]);
        assert_eq!(code(&o), 0, "{}", text(&o.stderr));
        times.push(start.elapsed());
    }
    times.sort();
    println!(
        "hutch run --rm {ROOTFS} -- /bin/true (debug build): p50 {:?}, max {:?} over {}",
        times[times.len() / 2],
        times.last().copied().unwrap_or(Duration::ZERO),
        times.len()
    );
}

impl Cli {
    /// `hutch ARGS` started in the background, its output piped.
    fn spawn(&self, args: &[&str]) -> std::process::Child {
        Command::new(workspace_bin("hutch", option_env!("CARGO_BIN_EXE_hutch")))
            .arg("--controller")
            .arg(&self.url)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn hutch")
    }

    /// Polls `hutch -o json inspect NAME` until `done` holds for its output (or for its
    /// absence: `None`); panics after `secs`.
    fn wait_inspect(
        &self,
        name: &str,
        secs: u64,
        done: impl Fn(Option<&serde_json::Value>) -> bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let o = self.run(&["-o", "json", "inspect", name]);
            let record: Option<serde_json::Value> = serde_json::from_slice(&o.stdout).ok();
            if done(record.as_ref()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: not there after {secs}s: {record:?} {}",
                text(&o.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `--rm` is done by the controller: the container goes when it ends even though the client
/// was killed; signals `hutch run` gets reach the container (SIGINT to a shell that traps
/// it); `--rm` with a restart policy is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rm_and_signals_do_not_depend_on_the_client() {
    let ctl = TestController::start("clirm", &[]);
    let node = TestNode::start("clirm-node", &ctl, None, &[]).await;
    let _ready = ctl.client_when_ready(&[&node]).await;
    let cli = Cli { url: ctl.url() };
    let running = |c: Option<&serde_json::Value>| c.is_some_and(|c| c["state"] == "running");

    // The client killed while its container runs: removed when it ends all the same.
    let mut client = cli.spawn(&[
        "run",
        "--rm",
        "--name",
        "clirm-orphan",
        ROOTFS,
        "--",
        "sleep",
        "2",
    ]);
    cli.wait_inspect("clirm-orphan", 20, running);
    client.kill().expect("kill -9 the client");
    let _ = client.wait();
    cli.wait_inspect("clirm-orphan", 20, |c| c.is_none());

    // SIGINT to `hutch run` reaches the container's process, whose exit is the command's.
    let trap = "trap 'echo got-int; exit 7' INT; echo ready; while :; do sleep 0.1; done";
    let child = cli.spawn(&[
        "run",
        "--rm",
        "--name",
        "clirm-sig",
        ROOTFS,
        "--",
        "sh",
        "-c",
        trap,
    ]);
    cli.wait_inspect("clirm-sig", 20, running);
    // The shell installs its trap before printing ready; give the output a moment too.
    std::thread::sleep(Duration::from_millis(500));
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let out = child.wait_with_output().expect("hutch run");
    assert_eq!(code(&out), 7, "{} {}", text(&out.stdout), text(&out.stderr));
    assert!(
        text(&out.stdout).contains("got-int"),
        "{}",
        text(&out.stdout)
    );
    cli.wait_inspect("clirm-sig", 20, |c| c.is_none());

    // `hutch wait` says 128+N for a signal; `hutch rm a b c` goes on past a failure.
    let o = cli.run(&[
        "run", "-d", "--name", "clirm-w", "-m", "512MB", ROOTFS, "--", "sleep", "600",
    ]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let o = cli.run(&["-o", "json", "inspect", "clirm-w"]);
    let record: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(
        record["memory_limit_bytes"],
        512u64 << 20,
        "-m 512MB as Docker reads it"
    );
    let o = cli.run(&["kill", "clirm-w"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let o = cli.run(&["wait", "clirm-w"]);
    assert_eq!((code(&o), text(&o.stdout)), (137, "137\n".to_string()));
    let o = cli.run(&["run", "-d", "--name", "clirm-w2", ROOTFS, "--", "true"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let o = cli.run(&["ps", "-aq"]);
    let ids = text(&o.stdout);
    assert!(
        ids.lines().any(|l| l == "clirm-w") && ids.lines().any(|l| l == "clirm-w2"),
        "{ids}"
    );
    let o = cli.run(&["rm", "-f", "clirm-w", "clirm-nope", "clirm-w2"]);
    assert_eq!(code(&o), 125, "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "clirm-w\nclirm-w2\n");
    assert!(
        text(&o.stderr).contains("clirm-nope"),
        "{}",
        text(&o.stderr)
    );

    let o = cli.run(&["run", "--rm", "--restart", "always", ROOTFS, "--", "true"]);
    assert_eq!(code(&o), 125, "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("restart policy"),
        "{}",
        text(&o.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_binds_and_tmpfs_through_the_cli() {
    let ctl = TestController::start("clivol", &[]);
    let allowed = format!("--allowed-bind-paths={}", common::BIND_ROOT);
    let node = TestNode::start("clivol-node", &ctl, None, &[allowed.as_str()]).await;
    let _ready = ctl.client_when_ready(&[&node]).await;
    let cli = Cli { url: ctl.url() };
    let ok = |o: &Output| assert_eq!(code(o), 0, "{}", text(&o.stderr));

    // A named volume: created, written by one container, read by the next, read-only
    // where asked.
    let o = cli.run(&["volume", "create", "--label", "team=db", "clivol"]);
    ok(&o);
    assert_eq!(text(&o.stdout), "clivol\n");
    ok(&cli.run(&[
        "run",
        "--rm",
        "-v",
        "clivol:/data",
        ROOTFS,
        "--",
        "sh",
        "-c",
        "echo hi > /data/f",
    ]));
    let o = cli.run(&[
        "run",
        "--rm",
        "-v",
        "clivol:/data:ro",
        ROOTFS,
        "--",
        "cat",
        "/data/f",
    ]);
    ok(&o);
    assert_eq!(text(&o.stdout), "hi\n");
    let o = cli.run(&[
        "run",
        "--rm",
        "-v",
        "clivol:/data:ro",
        ROOTFS,
        "--",
        "sh",
        "-c",
        "echo x > /data/g",
    ]);
    assert_ne!(code(&o), 0, "a read-only volume took a write");
    assert!(
        text(&o.stderr).contains("Read-only file system"),
        "{}",
        text(&o.stderr)
    );

    let o = cli.run(&["-o", "json", "volume", "ls"]);
    ok(&o);
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let found = listed
        .as_array()
        .and_then(|a| a.iter().find(|v| v["name"] == "clivol"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(found["node"], node.name.as_str(), "{listed}");
    assert_eq!(found["labels"]["team"], "db", "{listed}");
    let o = cli.run(&["volume", "inspect", "clivol"]);
    ok(&o);
    assert!(text(&o.stdout).contains("team=db"), "{}", text(&o.stdout));
    let o = cli.run(&["volume", "ls", "-q"]);
    assert!(text(&o.stdout).lines().any(|l| l == "clivol"));

    // Binds of the allowed directory, both spellings; a file the container writes lands
    // on the node; a tmpfs with its size.
    let dir = common::TestHost::bind_dir("clivol");
    std::fs::write(dir.join("page"), "served\n").expect("write");
    let source = dir.display().to_string();
    let o = cli.run(&[
        "run",
        "--rm",
        "-v",
        &format!("{source}:/site:ro"),
        ROOTFS,
        "--",
        "cat",
        "/site/page",
    ]);
    ok(&o);
    assert_eq!(text(&o.stdout), "served\n");
    ok(&cli.run(&[
        "run",
        "--rm",
        "--mount",
        &format!("type=bind,source={source},target=/out"),
        ROOTFS,
        "--",
        "sh",
        "-c",
        "echo back > /out/result",
    ]));
    assert_eq!(
        std::fs::read_to_string(dir.join("result")).expect("written through"),
        "back\n"
    );
    let o = cli.run(&[
        "run",
        "--rm",
        "--tmpfs",
        "/scratch:size=2m",
        ROOTFS,
        "--",
        "sh",
        "-c",
        "df -k /scratch | tail -1",
    ]);
    ok(&o);
    assert_eq!(
        text(&o.stdout).split_whitespace().nth(1),
        Some("2048"),
        "{}",
        text(&o.stdout)
    );

    // Refused: a path the node does not allow (the node's PERMISSION_DENIED, with its
    // reason), and what does not parse (before anything is sent).
    let o = cli.run(&["run", "--rm", "-v", "/etc:/x", ROOTFS, "--", "true"]);
    assert_eq!(code(&o), 125, "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("outside the paths this node allows"),
        "{}",
        text(&o.stderr)
    );
    for (flag, value) in [
        ("-v", "relative"),
        ("-v", "/a:/proc/x"),
        ("-v", "/a:/b:rx"),
        ("--mount", "type=nfs,source=a,target=/b"),
        ("--tmpfs", "/scratch:size=0"),
    ] {
        let o = cli.run(&["run", "--rm", flag, value, ROOTFS, "--", "true"]);
        assert_eq!(code(&o), 125, "{flag} {value}: {}", text(&o.stderr));
        assert!(text(&o.stderr).contains(value), "{}", text(&o.stderr));
    }

    // Removal: gone once, an error the second time (exit 125, the rest go on).
    let o = cli.run(&["volume", "rm", "clivol", "clivol"]);
    assert_eq!(code(&o), 125, "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "clivol\n");
    assert!(text(&o.stderr).contains("not found"), "{}", text(&o.stderr));
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_and_top_through_the_cli() {
    let ctl = TestController::start("clistats", &[]);
    let node = TestNode::start("clistats-node", &ctl, None, &[]).await;
    let _ready = ctl.client_when_ready(&[&node]).await;
    let cli = Cli { url: ctl.url() };
    let o = cli.run(&[
        "run",
        "-d",
        "--name",
        "cli-burn",
        "-m",
        "64M",
        ROOTFS,
        "--",
        "sh",
        "-c",
        "dd if=/dev/zero of=/fill bs=1M count=4 2>/dev/null; while :; do :; done",
    ]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));

    // One sample, as JSON: the CPU and memory it uses, its limit, its layer.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let sample = loop {
        let o = cli.run(&["stats", "--no-stream", "-o", "json", "cli-burn"]);
        assert_eq!(code(&o), 0, "{}", text(&o.stderr));
        let rows: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
        let row = rows[0].clone();
        let layer = row["writable_layer_bytes"].as_u64().unwrap_or(0);
        if layer >= 4 << 20 || std::time::Instant::now() > deadline {
            break row;
        }
    };
    println!("{sample}");
    assert_eq!(sample["id"], "cli-burn");
    assert_eq!(sample["node"], node.name.as_str());
    assert!(
        sample["cpu_percent"].as_f64().unwrap_or(0.0) > 20.0,
        "{sample}"
    );
    assert!(
        sample["memory_usage_bytes"].as_u64().unwrap_or(0) > 0,
        "{sample}"
    );
    assert_eq!(sample["memory_limit_bytes"], 64u64 << 20);
    assert!(
        sample["writable_layer_bytes"].as_u64().unwrap_or(0) >= 4 << 20,
        "{sample}"
    );

    // The table: a header and its row; every running container when none is named.
    let o = cli.run(&["stats", "--no-stream"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.starts_with("NAME"), "{out}");
    assert!(out.contains("MEM USAGE / LIMIT"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("cli-burn")), "{out}");

    // Live: samples keep coming as JSON lines until the client stops.
    let mut live = cli.spawn(&["stats", "-o", "json", "cli-burn"]);
    let stdout = live.stdout.take().expect("stdout");
    let lines = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .take(2)
            .map(|l| l.unwrap_or_default())
            .collect::<Vec<String>>()
    });
    let lines = lines.join().expect("reader");
    let _ = live.kill();
    let _ = live.wait();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
        assert_eq!(v["id"], "cli-burn");
    }

    // top: the shell is PID 1 inside.
    let o = cli.run(&["top", "cli-burn"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let out = text(&o.stdout);
    println!("{out}");
    assert!(out.starts_with("UID"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().nth(2) == Some("1") && l.contains("sh -c dd")),
        "{out}"
    );

    // A health check from the flags: ps shows it.
    let o = cli.run(&[
        "run",
        "-d",
        "--name",
        "cli-checked",
        "--health-cmd",
        "true",
        "--health-interval",
        "200ms",
        ROOTFS,
        "--",
        "sleep",
        "600",
    ]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let ps = text(&cli.run(&["ps"]).stdout);
        if ps
            .lines()
            .any(|l| l.starts_with("cli-checked") && l.contains("running (healthy)"))
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{ps}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = cli.run(&["run", "--health-interval", "1s", ROOTFS, "--", "true"]);
    assert_eq!(code(&o), 2, "--health-interval needs --health-cmd");
    let o = cli.run(&[
        "run",
        "--health-cmd",
        "true",
        "--health-interval",
        "soon",
        ROOTFS,
        "--",
        "true",
    ]);
    assert_eq!(code(&o), 125, "{}", text(&o.stderr));
    assert_eq!(code(&cli.run(&["rm", "-f", "cli-checked"])), 0);

    // Errors: an unknown container; top of one that ended.
    let o = cli.run(&["stats", "--no-stream", "nope"]);
    assert_eq!(code(&o), 125);
    assert!(text(&o.stderr).contains("not found"), "{}", text(&o.stderr));
    assert_eq!(code(&cli.run(&["kill", "cli-burn"])), 0);
    let _ = cli.run(&["wait", "cli-burn"]);
    let o = cli.run(&["top", "cli-burn"]);
    assert_eq!(code(&o), 125, "{}", text(&o.stdout));
    assert_eq!(code(&cli.run(&["rm", "cli-burn"])), 0);
}

/// `hutch ARGS` for at most `secs` seconds (for commands that stream until stopped).
fn run_for(cli: &Cli, secs: u32, args: &[&str]) -> Output {
    Command::new("timeout")
        .arg(secs.to_string())
        .arg(workspace_bin("hutch", option_env!("CARGO_BIN_EXE_hutch")))
        .arg("--controller")
        .arg(&cli.url)
        .args(args)
        .output()
        .expect("timeout hutch")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_and_events_narrowed_like_docker() {
    let ctl = TestController::start("clilogs", &[]);
    let node = TestNode::start("clilogs-node", &ctl, None, &[]).await;
    let _ready = ctl.client_when_ready(&[&node]).await;
    let cli = Cli { url: ctl.url() };
    let o = cli.run(&[
        "run",
        "--name",
        "cli-logs",
        ROOTFS,
        "--",
        "sh",
        "-c",
        "echo one; sleep 1.1; echo two; sleep 1.1; echo three",
    ]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));

    // -t: each line after its time; JSON carries the time too.
    let o = cli.run(&["logs", "-t", "cli-logs"]);
    let lines: Vec<String> = text(&o.stdout).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    for (l, word) in lines.iter().zip(["one", "two", "three"]) {
        let (time, rest) = l.split_once(' ').expect("time, then the line");
        assert!(humantime::parse_rfc3339(time).is_ok(), "{l}");
        assert_eq!(rest, word);
    }
    let o = cli.run(&["-o", "json", "logs", "cli-logs"]);
    let times: Vec<String> = text(&o.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("json")["time"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(times.len(), 3);

    // --since / --until with the second line's time, and as durations.
    let second = times[1].as_str();
    let o = cli.run(&["logs", "--since", second, "cli-logs"]);
    assert_eq!(text(&o.stdout), "two\nthree\n");
    let o = cli.run(&["logs", "--until", second, "cli-logs"]);
    assert_eq!(text(&o.stdout), "one\ntwo\n");
    let o = cli.run(&["logs", "--since", "1h", "--tail", "1", "cli-logs"]);
    assert_eq!(text(&o.stdout), "three\n");
    let o = cli.run(&[
        "logs",
        "--since",
        "1970-01-01T00:00:01Z",
        "--until",
        "1",
        "cli-logs",
    ]);
    assert_eq!(text(&o.stdout), "", "a window before it ran");
    let o = cli.run(&["logs", "--since", "last tuesday", "cli-logs"]);
    assert_eq!(code(&o), 125);
    assert!(text(&o.stderr).contains("--since"), "{}", text(&o.stderr));

    // --previous: a restarted container's earlier run stays readable.
    let o = cli.run(&["logs", "--previous", "cli-logs"]);
    assert_eq!(code(&o), 125);
    assert!(
        text(&o.stderr).contains("not been restarted"),
        "{}",
        text(&o.stderr)
    );
    let o = cli.run(&[
        "run",
        "-d",
        "--name",
        "cli-crash",
        "--restart",
        "on-failure:1",
        ROOTFS,
        "--",
        "sh",
        "-c",
        "cat /proc/sys/kernel/random/uuid; exit 3",
    ]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let o = cli.run(&["-o", "json", "inspect", "cli-crash"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        if v["restart_count"] == 1 && v["state"] == "exited" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never restarted: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let now = text(&cli.run(&["logs", "cli-crash"]).stdout);
    let before = text(&cli.run(&["logs", "--previous", "cli-crash"]).stdout);
    assert_eq!(now.trim().len(), 36, "{now}");
    assert_eq!(before.trim().len(), 36, "{before}");
    assert_ne!(now, before, "two runs, two uuids");

    // Events: a header and times; filtered on the controller by container and state.
    let o = run_for(&cli, 2, &["events", "--filter", "container=cli-logs"]);
    let out = text(&o.stdout);
    let mut rows = out.lines();
    assert!(
        rows.next()
            .unwrap_or("")
            .trim_start()
            .starts_with("REVISION"),
        "{out}"
    );
    let rows: Vec<&str> = rows.collect();
    assert!(!rows.is_empty(), "{out}");
    assert!(rows.iter().all(|r| r.contains("cli-logs")), "{out}");
    let o = run_for(
        &cli,
        2,
        &[
            "-o",
            "json",
            "events",
            "--filter",
            "state=exited",
            "--filter",
            "state=failed",
            "--since",
            "1h",
        ],
    );
    let events: Vec<serde_json::Value> = text(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert!(events.len() >= 2, "{events:?} {}", text(&o.stderr));
    for e in &events {
        assert!(
            e["time"]
                .as_str()
                .is_some_and(|t| humantime::parse_rfc3339(t).is_ok()),
            "{e}"
        );
        assert_eq!(e["container"]["state"], "exited", "{e}");
    }
    let o = run_for(&cli, 2, &["events", "--filter", "colour=red"]);
    assert_eq!(code(&o), 125, "{}", text(&o.stderr));
    let o = run_for(&cli, 2, &["events", "--filter", "state=sleepy"]);
    assert_eq!(code(&o), 125, "{}", text(&o.stderr));
    assert_eq!(code(&cli.run(&["rm", "-f", "cli-logs", "cli-crash"])), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_env_files_ps_filters_and_prune() {
    let ctl = TestController::start("clihouse", &[]);
    let node = TestNode::start("clihouse-node", &ctl, None, &[]).await;
    let _ready = ctl.client_when_ready(&[&node]).await;
    let cli = Cli { url: ctl.url() };
    let ok = |o: &Output| assert_eq!(code(o), 0, "{}", text(&o.stderr));

    // A rootfs no node has: refused at once, with the command that builds it.
    let o = cli.run(&["run", "--rm", "no-such-rootfs", "--", "true"]);
    assert_eq!(code(&o), 125);
    assert!(
        text(&o.stderr).contains("hutch rootfs build no-such-rootfs"),
        "{}",
        text(&o.stderr)
    );

    // -u NAME from the rootfs's /etc/passwd; NAME:GROUP; an unknown name.
    let o = cli.run(&["run", "--rm", "-u", "nobody", ROOTFS, "--", "id", "-u"]);
    ok(&o);
    assert_eq!(text(&o.stdout), "65534\n");
    let o = cli.run(&["run", "--rm", "-u", "daemon:nogroup", ROOTFS, "--", "id"]);
    ok(&o);
    assert!(
        text(&o.stdout).starts_with("uid=1(daemon) gid=65534(nogroup)"),
        "{}",
        text(&o.stdout)
    );
    let o = cli.run(&["run", "--rm", "-u", "ghost", ROOTFS, "--", "id"]);
    assert_ne!(code(&o), 0);
    assert!(
        text(&o.stderr).contains("user 'ghost' is not in the rootfs's /etc/passwd"),
        "{}",
        text(&o.stderr)
    );

    // --env-file: comments, a bare key from this environment, -e wins.
    let dir = std::env::temp_dir().join(format!("hutch-envfile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("app.env");
    std::fs::write(
        &file,
        "# settings\nGREETING=hello world\nPATH_FROM_CLIENT\nLEVEL=low\n",
    )
    .expect("write");
    let o = Command::new(workspace_bin("hutch", option_env!("CARGO_BIN_EXE_hutch")))
        .env("PATH_FROM_CLIENT", "from-here")
        .args(["--controller", &cli.url, "run", "--rm", "--env-file"])
        .arg(&file)
        .args([
            "-e",
            "LEVEL=high",
            ROOTFS,
            "--",
            "sh",
            "-c",
            "echo $GREETING/$PATH_FROM_CLIENT/$LEVEL",
        ])
        .output()
        .expect("hutch");
    ok(&o);
    assert_eq!(text(&o.stdout), "hello world/from-here/high\n");
    std::fs::write(&file, "GOOD=1\nBAD KEY=2\n").expect("write");
    let o = cli.run(&[
        "run",
        "--rm",
        "--env-file",
        &file.display().to_string(),
        ROOTFS,
        "--",
        "true",
    ]);
    assert_eq!(code(&o), 125);
    assert!(text(&o.stderr).contains("app.env:2"), "{}", text(&o.stderr));
    std::fs::remove_dir_all(&dir).expect("cleanup");

    // ps --filter / --format.
    ok(&cli.run(&[
        "run",
        "-d",
        "--name",
        "h-run",
        "--label",
        "tier=front",
        ROOTFS,
        "--",
        "sleep",
        "600",
    ]));
    ok(&cli.run(&[
        "run", "--name", "h-done", "-v", "h-vol:/v", ROOTFS, "--", "true",
    ]));
    let o = cli.run(&[
        "ps",
        "--filter",
        "status=exited",
        "--format",
        "{{.ID}}|{{.State}}",
    ]);
    ok(&o);
    assert_eq!(text(&o.stdout), "h-done|exited\n");
    let o = cli.run(&[
        "ps",
        "-a",
        "--filter",
        "label=tier=front",
        "--format",
        "{{.Names}}\\t{{.Node}}",
    ]);
    assert_eq!(text(&o.stdout), format!("h-run\t{}\n", node.name));
    let o = cli.run(&["ps", "-a", "--filter", "name=h-", "-q"]);
    let mut names: Vec<String> = text(&o.stdout).lines().map(str::to_string).collect();
    names.sort();
    assert_eq!(names, vec!["h-done".to_string(), "h-run".to_string()]);
    for (flag, value) in [("--filter", "colour=red"), ("--format", "{{.Nope}}")] {
        let o = cli.run(&["ps", flag, value]);
        assert_eq!(code(&o), 125, "{flag} {value}");
    }

    // system prune: asks without a terminal (refuses), then with --force removes the
    // ended container and the volume it used; the running one and the rootfs stay.
    let o = cli.run(&["system", "prune"]);
    assert_eq!(code(&o), 125);
    assert!(text(&o.stderr).contains("--force"), "{}", text(&o.stderr));
    let o = cli.run(&["-o", "json", "system", "prune", "--force"]);
    ok(&o);
    let pruned: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(
        pruned["containers"],
        serde_json::json!(["h-done"]),
        "{pruned}"
    );
    assert_eq!(
        pruned["volumes"],
        serde_json::json!([format!("h-vol ({})", node.name)]),
        "{pruned}"
    );
    assert_eq!(pruned["rootfs"], serde_json::json!([]));
    let o = cli.run(&["ps", "-a", "-q"]);
    assert_eq!(text(&o.stdout), "h-run\n");
    ok(&cli.run(&["rm", "-f", "h-run"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_run_by_reference_and_by_name_through_the_cli() {
    use common::images::{busybox_layer, Compress, Layout, TestRegistry};
    /// Removed however the test ends.
    struct Scratch(std::path::PathBuf);
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let scratch = Scratch(std::path::PathBuf::from(format!(
        "/var/tmp/hutch-test-cli-img-{}",
        common::unique("layout")
    )));
    let layout = Layout::create(&scratch.0);
    layout.add_image(
        "1.0",
        &[(busybox_layer(), Compress::Gzip)],
        serde_json::json!({
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["echo hello from $IMAGE_NAME in $(pwd)"],
            "Env": ["PATH=/bin", "IMAGE_NAME=busybox"],
            "WorkingDir": "/tmp",
        }),
    );
    let registry = TestRegistry::start("cli-img", None);
    let reference = {
        let (addr, source) = (registry.addr.clone(), layout.reference("1.0"));
        tokio::task::spawn_blocking(move || {
            TestRegistry::push_to(&addr, None, &source, "tools/busybox:1.0")
        })
        .await
        .expect("push")
    };
    let ctl = TestController::start("cli-img", &[]);
    let node = TestNode::start("cli-img-node", &ctl, None, &[]).await;
    let _ready = ctl.client_when_ready(&[&node]).await;
    let cli = Cli { url: ctl.url() };

    // The reference as the rootfs, no command: the image's Entrypoint and Cmd.
    let o = cli.run(&["run", "--rm", &reference]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "hello from busybox in /tmp\n");
    // A command replaces Cmd; --entrypoint replaces the Entrypoint.
    let o = cli.run(&["run", "--rm", &reference, "--", "echo $IMAGE_NAME"]);
    assert_eq!(text(&o.stdout), "busybox\n", "{}", text(&o.stderr));
    let o = cli.run(&[
        "run",
        "--rm",
        "--entrypoint",
        "/bin/echo",
        &reference,
        "--",
        "x",
        "y",
    ]);
    assert_eq!(text(&o.stdout), "x y\n", "{}", text(&o.stderr));

    // By name, with progress; then inspect shows the config and the layer.
    let o = cli.run(&["rootfs", "build", "bb", "--image", &reference]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let out = text(&o.stdout);
    // The same image the run imported: its entry is found again, nothing is pulled.
    assert!(
        out.contains("asking the registry") && out.contains("bb cached"),
        "{out}"
    );
    let o = cli.run(&["rootfs", "inspect", "bb"]);
    let out = text(&o.stdout);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    for want in [
        "image docker://",
        "entrypoint:  [\"/bin/sh\",\"-c\"]",
        "workdir:     /tmp",
        "IMAGE_NAME=busybox",
        "layers (1, lowest first)",
    ] {
        assert!(out.contains(want), "{want} in {out}");
    }
    let o = cli.run(&["-o", "json", "rootfs", "inspect", "bb"]);
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(
        rows[0]["image"]["cmd"][0],
        "echo hello from $IMAGE_NAME in $(pwd)"
    );
    let o = cli.run(&["run", "--rm", "bb"]);
    assert_eq!(
        text(&o.stdout),
        "hello from busybox in /tmp\n",
        "{}",
        text(&o.stderr)
    );

    // Bad input: exit 125 and a message that says what is wrong.
    for (args, says) in [
        (
            vec!["run", "--rm", "docker://nohost/x"],
            "hutch has no default registry",
        ),
        (vec!["run", "--rm", ROOTFS], "command is empty"),
        (
            vec![
                "rootfs",
                "build",
                "nope",
                "--image",
                &reference.replace(":1.0", ":nope"),
            ],
            "manifest",
        ),
        (
            vec!["rootfs", "inspect", "no-such-rootfs"],
            "no node has a rootfs",
        ),
        // A registry that is not there: the run fails with the reason, not retried for ever.
        (
            vec!["run", "--rm", "docker://127.0.0.1:1/x/y:z"],
            "cannot be reached",
        ),
    ] {
        let o = cli.run(&args);
        assert_eq!(
            code(&o),
            125,
            "{args:?}: {}{}",
            text(&o.stdout),
            text(&o.stderr)
        );
        let said = text(&o.stderr);
        assert!(said.contains(says), "{args:?}: {said}");
    }

    let derived = hutch_core::image_ref::ImageRef::rootfs_name(&reference);
    for name in ["bb", derived.as_str()] {
        let o = cli.run(&["rootfs", "rm", name]);
        assert_eq!(code(&o), 0, "rm {name}: {}", text(&o.stderr));
    }
    drop(scratch);
}
