//! The real `hutch` CLI in a real terminal (tmux): `hutch exec -it` into a running container
//! gives an interactive shell that joined the container's pid namespace, follows window
//! resizes, takes Ctrl-C, exits with the shell's code, and leaves the terminal as it was;
//! `hutch run -it` runs on a terminal of the container's own devpts (`tty` is /dev/pts/0,
//! `ps` shows it, TERM is set, `top` runs full screen).

use hutch_testkit as common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{unique, workspace_bin, TestController, TestNode, ROOTFS};

/// A tmux session of its own, killed when dropped.
struct Tmux {
    name: String,
}

impl Tmux {
    fn start(command: &str) -> Tmux {
        let name = unique("hutch-term");
        let ok = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                &name,
                "-x",
                "120",
                "-y",
                "30",
                command,
            ])
            .status()
            .expect("tmux is installed (scripts/deps.sh)")
            .success();
        assert!(ok, "tmux new-session failed");
        Tmux { name }
    }

    fn keys(&self, keys: &[&str]) {
        let ok = Command::new("tmux")
            .args(["send-keys", "-t", &self.name])
            .args(keys)
            .status()
            .expect("tmux")
            .success();
        assert!(ok, "tmux send-keys failed");
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.name])
            .output()
            .expect("tmux");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the screen shows `needle`; returns the screen.
    fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let screen = self.screen();
            if screen.contains(needle) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "the terminal never showed {needle:?}; it shows:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Types `command` followed by a marker and waits for the marker's output line.
    fn run(&self, command: &str) -> String {
        let marker = unique("DONE").replace('-', "_");
        self.keys(&[&format!("{command}; echo {marker}"), "Enter"]);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let screen = self.screen();
            if screen.lines().any(|l| l.trim_end() == marker) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "{command:?} did not finish; the terminal shows:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn resize(&self, cols: u16, rows: u16) {
        let ok = Command::new("tmux")
            .args([
                "resize-window",
                "-t",
                &self.name,
                "-x",
                &cols.to_string(),
                "-y",
                &rows.to_string(),
            ])
            .status()
            .expect("tmux")
            .success();
        assert!(ok, "tmux resize-window failed");
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.name])
            .status();
    }
}

/// Runs the real `hutch` CLI against `ctl` and asserts it succeeded; returns its stdout.
fn hutch_ok(ctl: &TestController, args: &[&str]) -> String {
    let out = Command::new(workspace_bin("hutch", option_env!("CARGO_BIN_EXE_hutch")))
        .args(["--controller", &ctl.url()])
        .args(args)
        .output()
        .expect("run hutch");
    assert!(
        out.status.success(),
        "hutch {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Resizes the window and waits until `stty size` in the session shows it (the resize
/// travels CLI (SIGWINCH) -> controller -> agent -> terminal).
fn resize_and_check(t: &Tmux, rows: u16, cols: u16) {
    t.resize(cols, rows);
    let want = format!("SIZE={rows} {cols}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let screen = t.run("echo SIZE=$(stty size)");
        if screen.lines().rfind(|l| l.starts_with("SIZE=")) == Some(want.as_str()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the resize never arrived:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// After the CLI printed `CLI_EXIT=N` and `stty -a`, checks that the terminal is back in
/// cooked mode with echo.
fn assert_terminal_restored(t: &Tmux, marker: &str) {
    t.wait_for(marker);
    let screen = t.wait_for("speed");
    let stty = screen
        .split(marker)
        .nth(1)
        .unwrap_or_default()
        .replace('\n', " ");
    assert!(
        stty.contains(" icanon") && stty.contains(" echo ") && !stty.contains("-icanon"),
        "the terminal was not restored: {stty}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_it_is_a_real_terminal_in_the_container() {
    let ctl = TestController::start("term", &[]);
    let node = TestNode::start("term-node", &ctl, None, &[]).await;
    let _ready = ctl.client_when_ready(&[&node]).await;
    let hutch = workspace_bin("hutch", option_env!("CARGO_BIN_EXE_hutch"));
    hutch_ok(
        &ctl,
        &[
            "run", "-d", "--name", "term-box", ROOTFS, "--", "sleep", "600",
        ],
    );

    let t = Tmux::start(&format!(
        "TERM=hutch-test-term {} --controller {} exec -it term-box -- /bin/bash; echo CLI_EXIT=$?; stty -a; sleep 60",
        hutch.display(),
        ctl.url()
    ));
    t.wait_for("root@term-box:/#");

    // The shell joined the container's pid namespace: PID 1 is the container's sleep, and
    // nothing of the host (no tmux, no agent) is visible.
    let screen = t.run("ps -ef");
    let ps: Vec<&str> = screen.lines().filter(|l| l.starts_with("root ")).collect();
    assert!(
        ps.iter()
            .any(|l| l.split_whitespace().nth(1) == Some("1") && l.ends_with("sleep 600")),
        "{screen}"
    );
    assert!(ps.iter().any(|l| l.ends_with("/bin/bash")), "{screen}");
    assert!(
        !screen.contains("tmux") && !screen.contains("hutch-agent"),
        "{screen}"
    );

    let screen = t.run("hostname");
    assert!(screen.lines().any(|l| l == "term-box"), "{screen}");
    // The exec's terminal is the container's own too.
    let screen = t.run("tty");
    assert!(
        screen
            .lines()
            .any(|l| l.starts_with("/dev/pts/") && l != "/dev/pts/"),
        "{screen}"
    );
    assert!(!screen.contains("not a tty"), "{screen}");
    // The client's terminal type came along (docker exec -t does the same).
    let screen = t.run("echo T=$TERM");
    assert!(screen.lines().any(|l| l == "T=hutch-test-term"), "{screen}");

    // Window size, before and after a resize.
    t.keys(&["echo SIZE=$(stty size)", "Enter"]);
    t.wait_for("SIZE=30 120");
    resize_and_check(&t, 25, 100);

    // Ctrl-C reaches the command in the container, not the CLI.
    t.keys(&["sleep 100", "Enter"]);
    std::thread::sleep(Duration::from_millis(300));
    t.keys(&["C-c"]);
    let screen = t.run("echo AFTER_SLEEP=$?");
    assert!(screen.contains("\nAFTER_SLEEP=130"), "{screen}");

    // exit 3: the CLI exits with 3 and the terminal is back in its normal (cooked) mode.
    t.keys(&["exit 3", "Enter"]);
    assert_terminal_restored(&t, "CLI_EXIT=3");

    hutch_ok(&ctl, &["rm", "-f", "term-box"]);
}

/// `hutch run -it ROOTFS -- /bin/bash`: bash is PID 1 of the container and nothing of the
/// host is visible; the hostname is the container's; a resize reaches it; `exit 3` ends the
/// CLI with 3 and the terminal is restored. Then `hutch attach` to a detached one, and
/// Ctrl-P Ctrl-Q detaches without stopping it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_it_is_the_tutorials_chroot_bash_and_attach_detaches() {
    let ctl = TestController::start("run-it", &[]);
    let node = TestNode::start("run-it-node", &ctl, None, &[]).await;
    let _ready = ctl.client_when_ready(&[&node]).await;
    let hutch = workspace_bin("hutch", option_env!("CARGO_BIN_EXE_hutch"));

    let t = Tmux::start(&format!(
        "{} --controller {} run -it --rm --name run-it-box {ROOTFS} -- /bin/bash; echo CLI_EXIT=$?; stty -a; sleep 60",
        hutch.display(),
        ctl.url()
    ));
    // The first prompt is there: output written before the CLI attached is replayed.
    t.wait_for("root@run-it-box:/#");
    let screen = t.run("ps -ef");
    let ps: Vec<&str> = screen.lines().filter(|l| l.starts_with("root ")).collect();
    assert!(
        ps.iter()
            .any(|l| l.split_whitespace().nth(1) == Some("1") && l.ends_with("/bin/bash")),
        "bash is PID 1:\n{screen}"
    );
    assert!(
        ps.iter().all(|l| {
            let cmd = l.split_whitespace().skip(7).collect::<Vec<_>>().join(" ");
            ["/bin/bash", "ps -ef"].contains(&cmd.as_str())
        }),
        "nothing but the container's own processes:\n{screen}"
    );
    let screen = t.run("hostname");
    assert!(screen.lines().any(|l| l == "run-it-box"), "{screen}");
    // The terminal is the container's own (its devpts), as Docker gives it: tty names it,
    // ps shows it, and the client's TERM is there for full-screen programs.
    let screen = t.run("tty");
    assert!(screen.lines().any(|l| l == "/dev/pts/0"), "{screen}");
    let screen = t.run("ps -o tty= -p $$");
    assert!(screen.lines().any(|l| l.trim() == "pts/0"), "{screen}");
    let screen = t.run("echo TERM=$TERM");
    assert!(
        screen
            .lines()
            .any(|l| l.starts_with("TERM=") && l != "TERM=" && l != "TERM=dumb"),
        "{screen}"
    );
    let screen = t.run("top -b -n 1 | head -3");
    assert!(screen.contains("load average"), "{screen}");
    // top on the terminal itself (full screen), quit with q.
    t.keys(&["top -d 0.5", "Enter"]);
    t.wait_for("PID USER");
    // A `q` typed while top is still setting up its terminal can be lost, and what is
    // typed next then lands in top (as commands); let it draw a few frames first.
    std::thread::sleep(Duration::from_millis(1500));
    t.keys(&["q"]);
    t.run("true");
    resize_and_check(&t, 25, 100);
    t.keys(&["exit 3", "Enter"]);
    assert_terminal_restored(&t, "CLI_EXIT=3");
    drop(t);
    // --rm removed it.
    assert!(!hutch_ok(&ctl, &["ps", "-a"]).contains("run-it-box"));

    // Detached with a terminal, attached later, detached again: it keeps running.
    hutch_ok(
        &ctl,
        &[
            "run",
            "-d",
            "-it",
            "--name",
            "shell",
            ROOTFS,
            "--",
            "/bin/bash",
        ],
    );
    let t = Tmux::start(&format!(
        "{} --controller {} attach shell; echo CLI_EXIT=$?; sleep 60",
        hutch.display(),
        ctl.url()
    ));
    std::thread::sleep(Duration::from_millis(500));
    let screen = t.run("echo ATTACHED=$((6*7))");
    assert!(screen.contains("\nATTACHED=42"), "{screen}");
    t.keys(&["C-p"]);
    t.keys(&["C-q"]);
    let screen = t.wait_for("CLI_EXIT=0");
    assert!(screen.contains("detached from shell"), "{screen}");
    let info: serde_json::Value =
        serde_json::from_str(&hutch_ok(&ctl, &["-o", "json", "inspect", "shell"])).expect("json");
    assert_eq!(info["state"], "running", "detaching does not stop it");
    hutch_ok(&ctl, &["rm", "-f", "shell"]);
}
