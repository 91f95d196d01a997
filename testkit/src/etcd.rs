//! A real etcd cluster on loopback (Debian's `etcd-server`), started by the test and
//! removed when it ends: each member with its own ports and data directory
//! (`/var/tmp/hutch-test-mM-etcd-NAME-PID-N`, which `scripts/clean-test-leftovers.sh` removes
//! with its process when a test run was killed).
//!
//! Members run with a 50 ms heartbeat and a 500 ms election timeout, so etcd's shortest
//! lease is 1 s (its minimum is 1.5 election timeouts, rounded up to whole seconds), and
//! with transaction limits large enough for the controller's biggest batches.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::unique;

/// The flags every test member gets besides its addresses.
pub const ETCD_TUNING: &[&str] = &[
    "--heartbeat-interval",
    "50",
    "--election-timeout",
    "500",
    // A member cut off and back does not force an election (etcd 3.4 has it off).
    "--pre-vote",
    "--max-txn-ops",
    "10000",
    "--max-request-bytes",
    "33554432",
];

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// An etcd cluster of one or more members on loopback.
pub struct TestEtcd {
    members: Vec<Member>,
    token: String,
    /// With TLS: the directory of `ca.crt`, `server.{crt,key}`, `client.{crt,key}`.
    tls: Option<PathBuf>,
}

/// Runs `openssl ARGS` in `dir`; panics with its output when it fails.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl in
/// `dir` (valid a day).
fn make_tls_files(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).expect("tls dir");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "1",
            "-subj",
            "/CN=hutch-test-etcd-ca",
        ],
    );
    for (name, usage) in [("server", "serverAuth"), ("client", "clientAuth")] {
        std::fs::write(
            dir.join(format!("{name}.ext")),
            format!("subjectAltName=IP:127.0.0.1\nextendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\n"),
        )
        .expect("extensions file");
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN=hutch-test-etcd-{name}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.crt"),
                "-days",
                "1",
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    }
}

/// `n` distinct ports free now (the kernel's picks, all held until each is known, then
/// released for the members to bind).
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free loopback port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("bound address").port())
        .collect()
}

impl TestEtcd {
    /// Starts `size` members and waits until the cluster answers with a leader.
    pub fn start(test: &str, size: usize) -> TestEtcd {
        TestEtcd::start_with(test, size, false)
    }

    /// One member serving clients over TLS only, and requiring their certificates (signed
    /// by the CA of [`TestEtcd::tls_files`]).
    pub fn start_tls(test: &str) -> TestEtcd {
        TestEtcd::start_with(test, 1, true)
    }

    /// The CA, client certificate and client key, with TLS.
    pub fn tls_files(&self) -> Option<(PathBuf, PathBuf, PathBuf)> {
        self.tls
            .as_ref()
            .map(|d| (d.join("ca.crt"), d.join("client.crt"), d.join("client.key")))
    }

    fn start_with(test: &str, size: usize, tls: bool) -> TestEtcd {
        let token = unique(&format!("etcd-{test}"));
        let tls = tls.then(|| {
            let dir = PathBuf::from(format!("/var/tmp/hutch-test-tls-{token}"));
            make_tls_files(&dir);
            dir
        });
        let ports = free_ports(2 * size);
        let members = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                // NAME-PID-N last, as every test resource: the cleanup of killed runs
                // reads the owner's pid there.
                data_dir: PathBuf::from(format!("/var/tmp/hutch-test-m{i}-{token}")),
                log: std::env::temp_dir().join(format!("hutch-test-m{i}-{token}.log")),
                child: None,
            })
            .collect();
        let mut etcd = TestEtcd {
            members,
            token,
            tls,
        };
        for i in 0..size {
            etcd.spawn(i);
        }
        etcd.wait_healthy(Duration::from_secs(30));
        println!("etcd {} started: {}", etcd.token, etcd.endpoints());
        etcd
    }

    fn spawn(&mut self, i: usize) {
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect();
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let tls_args: Vec<String> = match &self.tls {
            Some(d) => vec![
                "--cert-file".into(),
                d.join("server.crt").display().to_string(),
                "--key-file".into(),
                d.join("server.key").display().to_string(),
                "--trusted-ca-file".into(),
                d.join("ca.crt").display().to_string(),
                "--client-cert-auth".into(),
            ],
            None => Vec::new(),
        };
        let m = &mut self.members[i];
        let client = format!("{scheme}://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .expect("etcd log file");
        let child = Command::new("etcd")
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", "new"])
            .args(ETCD_TUNING)
            .args(&tls_args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start etcd ({e}): install Debian's etcd-server (scripts/deps.sh does)"
                )
            });
        m.child = Some(child);
    }

    /// The client URLs, comma-separated.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}://127.0.0.1:{}", self.scheme(), m.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The client URL of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        format!(
            "{}://127.0.0.1:{}",
            self.scheme(),
            self.members[i].client_port
        )
    }

    /// SIGKILLs member `i` (its data stays, for [`TestEtcd::restart`]).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
    }

    /// SIGKILLs every member.
    pub fn kill_all(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }

    /// Starts every member again.
    pub fn restart_all(&mut self) {
        for i in 0..self.members.len() {
            self.restart(i);
        }
        self.wait_healthy(Duration::from_secs(30));
    }

    /// Waits until `etcdctl endpoint health` passes on every running member.
    pub fn wait_healthy(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let running: Vec<String> = (0..self.members.len())
            .filter(|&i| self.members[i].child.is_some())
            .map(|i| self.endpoint(i))
            .collect();
        loop {
            let mut etcdctl = Command::new("etcdctl");
            if let Some((ca, cert, key)) = self.tls_files() {
                etcdctl
                    .arg("--cacert")
                    .arg(ca)
                    .arg("--cert")
                    .arg(cert)
                    .arg("--key")
                    .arg(key);
            }
            let ok = etcdctl
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &running.join(",")])
                .args(["--command-timeout", "2s", "endpoint", "health"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy within {within:?}; logs:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                let text = std::fs::read_to_string(&m.log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                format!(
                    "--- {} ---\n{}",
                    m.name,
                    lines[lines.len().saturating_sub(15)..].join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for TestEtcd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        self.kill_all();
        for m in &self.members {
            let _ = std::fs::remove_dir_all(&m.data_dir);
            let _ = std::fs::remove_file(&m.log);
        }
        if let Some(dir) = &self.tls {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
