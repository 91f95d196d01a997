//! Thousands of random and adversarial requests against a live controller and agent: huge
//! argv and env, NUL bytes, `..` everywhere, zero, negative and overflowing sizes, unknown
//! enum values, 4 MiB strings, nonsense ids and signals. Every answer must be a precise
//! status (never UNKNOWN, INTERNAL or a dropped connection: that is what a panic looks
//! like), nothing may be left on the host afterwards, and both daemons must still run a
//! correct container.

use hutch_testkit as common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::hutch_processes;
use common::*;
use hutch_proto::v1;
use hutch_testkit::Rng;

fn nasty(r: &mut Rng) -> String {
    match r.below(14) {
        0 => String::new(),
        1 => "..".into(),
        2 => "../../../etc/passwd".into(),
        3 => "/".into(),
        4 => "a\0b".into(),
        5 => "名前-ü".into(),
        6 => "x".repeat(300),
        7 => " -rf /".into(),
        8 => "a/b".into(),
        9 => "\n\t".into(),
        10 => "ok-name".into(),
        11 => format!("n{}", r.next()),
        12 => "$(reboot)".into(),
        _ => "%s%n".into(),
    }
}

fn size(r: &mut Rng) -> Option<u64> {
    r.pick(&[
        None,
        Some(0),
        Some(1),
        Some(4096),
        Some(262_144),
        Some(u64::MAX),
        Some(i64::MAX as u64 + 1),
        Some(64 << 20),
    ])
}

/// A spec: one in five starts valid and has at most one field made nasty (so the accepted
/// paths run too, with real containers); the rest are nasty throughout.
fn spec(r: &mut Rng) -> v1::ContainerSpec {
    if r.chance(20) {
        let mut s = v1::ContainerSpec {
            rootfs: "debian".into(),
            command: vec!["sh".into(), "-c".into(), "exit 3".into()],
            memory_limit_bytes: Some(64 << 20),
            ..Default::default()
        };
        let bad = nasty_spec(r);
        match r.below(8) {
            0 => s.command = bad.command,
            1 => s.env = bad.env,
            2 => s.workdir = bad.workdir,
            3 => s.hostname = bad.hostname,
            4 => s.namespaces = bad.namespaces,
            5 => s.memory_limit_bytes = bad.memory_limit_bytes,
            6 => s.security = bad.security,
            _ => {}
        }
        return s;
    }
    nasty_spec(r)
}

fn nasty_spec(r: &mut Rng) -> v1::ContainerSpec {
    let command = match r.below(6) {
        0 => Vec::new(),
        1 => vec!["/bin/true".into()],
        2 => (0..20_000).map(|i| format!("arg{i}")).collect(),
        3 => vec!["sh".into(), "-c".into(), "exit 3".into()],
        4 if r.chance(10) => vec!["y".repeat(4_500_000)],
        _ => (0..r.below(4)).map(|_| nasty(r)).collect(),
    };
    let mut env = BTreeMap::new();
    for _ in 0..r.below(4) {
        env.insert(nasty(r), nasty(r));
    }
    if r.chance(5) {
        for i in 0..5_000 {
            env.insert(format!("K{i}"), "v".repeat(40));
        }
    }
    v1::ContainerSpec {
        // Rarely a rootfs that exists, so some specs are valid and really run.
        rootfs: if r.chance(5) {
            "debian".into()
        } else {
            nasty(r)
        },
        command,
        env: env.into_iter().collect(),
        workdir: nasty(r),
        hostname: nasty(r),
        namespaces: (0..r.below(5))
            .map(|_| r.pick(&[-1, 0, 1, 2, 3, 5, 7, 8, 999, i32::MAX]))
            .collect(),
        memory_limit_bytes: size(r),
        memory_swap_limit_bytes: size(r),
        read_only_rootfs: r.chance(50),
        disk_limit_bytes: size(r),
        log: r.chance(30).then(|| v1::LogOptions {
            max_size_bytes: size(r),
            max_files: r.pick(&[None, Some(0), Some(1), Some(3), Some(u32::MAX)]),
        }),
        labels: (0..r.below(3)).map(|_| (nasty(r), nasty(r))).collect(),
        uid_map: (0..r.below(3))
            .map(|_| v1::IdMap {
                inside: r.pick(&[0, 1, u32::MAX]),
                outside: r.pick(&[0, 100_000, u32::MAX]),
                count: r.pick(&[0, 1, 65_536, u32::MAX]),
            })
            .collect(),
        gid_map: Vec::new(),
        // Modes and ports out of range: refused before anything is set up. (The test's
        // nodes have no cluster network, so no valid port ever gets published here.)
        auto_remove: r.chance(20),
        entrypoint: r.chance(10).then(|| v1::Entrypoint {
            args: (0..r.below(3)).map(|_| nasty(r)).collect(),
        }),
        health: r.chance(20).then(|| v1::HealthCheck {
            command: (0..r.below(3)).map(|_| nasty(r)).collect(),
            interval_ms: r.pick(&[0, 1, 100, 1000, u32::MAX]),
            timeout_ms: r.pick(&[0, 99, 30_000, u32::MAX]),
            retries: r.pick(&[0, 1, 3, 1001, u32::MAX]),
            start_period_ms: r.pick(&[0, 5000, u32::MAX]),
        }),
        // Mounts of every type with hostile paths: refused by the checks, or (a tmpfs at a
        // plain path) really mounted. Binds never reach a node path here: the test's
        // agents allow none but the test bind root, which these paths are not in.
        mounts: (0..r.below(3))
            .map(|_| v1::Mount {
                r#type: r.pick(&[-1, 0, 1, 2, 3, 9]),
                source: r.pick(&["", "/", "/etc", "vol-1", "../x", "/var/lib/hutch"]).into(),
                target: r.pick(&["", "/", "/data", "/proc", "relative", "/a/../b"]).into(),
                read_only: r.chance(50),
                options: (0..r.below(2))
                    .map(|_| r.pick(&["noexec", "size=0", "size=1m", "mode=9", "suid"]).into())
                    .collect(),
            })
            .collect(),
        cpu: r.chance(30).then(|| v1::CpuSpec {
            cores: r.pick(&[
                0.0,
                0.5,
                -1.0,
                0.001,
                2000.0,
                f64::NAN,
                f64::INFINITY,
                f64::MAX,
            ]),
            shares: r.pick(&[0, 1, 2, 1024, 262_145, u32::MAX]),
        }),
        network: r.chance(30).then(|| v1::NetworkSpec {
            mode: r.pick(&[-1, 0, 1, 2, 3, 4, i32::MAX]),
            ports: (0..r.below(3))
                .map(|_| v1::PortMapping {
                    host_port: r.pick(&[0, 80, 65_535, 65_536, u32::MAX]),
                    container_port: r.pick(&[0, 80, 70_000]),
                    protocol: r.pick(&["", "tcp", "UDP", "sctp"]).into(),
                    host_ip: r.pick(&["", "0.0.0.0", "::1", "256.1.1.1", "198.18.0.1"]).into(),
                })
                .collect(),
        }),
        stop_grace_seconds: r.pick(&[None, Some(0), Some(u32::MAX)]),
        tty: r.chance(20),
        stdin: r.chance(20),
        security: r.chance(50).then(|| v1::Security {
            cap_add: (0..r.below(3))
                .map(|_| {
                    r.pick(&["ALL", "SYS_ADMIN", "cap_wizard", "", "NET_ADMIN"])
                        .into()
                })
                .collect(),
            cap_drop: (0..r.below(2)).map(|_| nasty(r)).collect(),
            seccomp: r
                .pick(&["", "unconfined", "strict", "../profile.json"])
                .into(),
            seccomp_profile: if r.chance(80) {
                String::new()
            } else {
                r.pick(&[
                    "{}",
                    r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#,
                    r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["no_such_call"],"action":"SCMP_ACT_ERRNO"}]}"#,
                    r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO","args":[]}]}"#,
                    r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO","errnoRet":13}]}"#,
                ])
                .to_string()
                    + &nasty(r)
            },
            pids_limit: r.pick(&[None, Some(0), Some(1), Some(u32::MAX)]),
            privileged: r.chance(10),
            run_as_user: r.pick(&[None, None, Some(0), Some(1000), Some(u32::MAX)]),
            run_as_group: r.pick(&[None, Some(0), Some(u32::MAX)]),
            user_name: r.pick(&["", "root", "nobody:nogroup", "../etc", "a:b:c"]).into(),
        }),
    }
}

/// The codes a well-behaved server gives to bad input.
fn acceptable(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Ok | InvalidArgument
            | NotFound
            | AlreadyExists
            | FailedPrecondition
            | OutOfRange
            | ResourceExhausted
            | PermissionDenied
    )
}

fn check<T>(
    what: &str,
    seed: u64,
    got: Result<T, tonic::Status>,
    codes: &mut BTreeMap<String, u32>,
) {
    let code = got.as_ref().err().map_or(tonic::Code::Ok, |s| s.code());
    *codes.entry(format!("{what} {code:?}")).or_default() += 1;
    if let Err(s) = &got {
        assert!(
            acceptable(s.code()),
            "{what} (seed {seed}) answered {:?}: {}",
            s.code(),
            s.message()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_clear_errors_and_leave_nothing() {
    let ctl = TestController::start("malformed", &[]);
    let node = TestNode::start("malformed-node", &ctl, None, &[]).await;
    let mut client = ctl.client_when_ready(&[&node]).await;
    let mut agent = node.agent().await;
    let mut codes = BTreeMap::new();
    let rounds: u64 = 1500;
    for seed in 1..=rounds {
        let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let name = if r.chance(70) {
            format!("m-{seed}")
        } else {
            nasty(&mut r)
        };
        let request = v1::CreateContainerRequest {
            name: name.clone(),
            spec: r.chance(95).then(|| spec(&mut r)),
            placement: r.chance(30).then(|| v1::Placement {
                node: nasty(&mut r),
                node_selector: [(nasty(&mut r), nasty(&mut r))].into(),
                spread_by: if r.chance(20) {
                    nasty(&mut r)
                } else {
                    String::new()
                },
            }),
            restart_policy: r.chance(30).then(|| v1::RestartPolicy {
                kind: r.pick(&[0, 1, 2, 3, -7, 99]),
                max_retries: r.pick(&[0, 1, u32::MAX]),
            }),
        };
        check(
            "create",
            seed,
            client.create_container(request).await,
            &mut codes,
        );
        let run = v1::RunContainerRequest {
            name: format!("a-{seed}"),
            spec: Some(spec(&mut r)),
        };
        check("run", seed, agent.run_container(run).await, &mut codes);
        let (other, earlier) = (nasty(&mut r), format!("m-{}", r.below(seed + 1)));
        let id = r.pick(&[name.clone(), other, earlier]);
        check(
            "kill",
            seed,
            client
                .kill_container(v1::KillContainerRequest {
                    id: id.clone(),
                    signal: r.pick(&[-5, 0, 9, 65, i32::MAX]),
                })
                .await,
            &mut codes,
        );
        check(
            "get",
            seed,
            client
                .get_container(v1::GetContainerRequest { id: id.clone() })
                .await,
            &mut codes,
        );
        if r.chance(10) {
            let exec = v1::ExecRequest {
                id: id.clone(),
                command: (0..r.below(3)).map(|_| nasty(&mut r)).collect(),
            };
            check("exec", seed, agent.exec(exec).await, &mut codes);
        }
        if r.chance(10) {
            let logs = client
                .container_logs(v1::ContainerLogsRequest {
                    id,
                    follow: false,
                    since: None,
                    tail: r.pick(&[None, Some(0), Some(u32::MAX)]),
                    until: r.chance(30).then(|| prost_types::Timestamp {
                        seconds: r.pick(&[i64::MIN, -1, 0, i64::MAX]),
                        nanos: r.pick(&[-1, 0, 999_999_999, i32::MAX]),
                    }),
                    previous: r.chance(20),
                })
                .await;
            check("logs", seed, logs.map(drop), &mut codes);
        }
    }
    println!("answers by code: {codes:#?}");

    // Remove everything that was accepted, through both APIs.
    let listed = client
        .list_containers(v1::ListClusterContainersRequest::default())
        .await
        .expect("list")
        .into_inner()
        .containers;
    println!("{} records accepted by the controller", listed.len());
    for c in listed {
        client
            .remove_container(v1::RemoveContainerRequest {
                id: c.name.clone(),
                force: true,
            })
            .await
            .unwrap_or_else(|e| panic!("remove {}: {e}", c.name));
    }
    let on_agent = agent
        .list_containers(v1::ListContainersRequest::default())
        .await
        .expect("agent list")
        .into_inner()
        .containers;
    println!("{} containers on the agent", on_agent.len());
    for c in on_agent {
        let _ = agent
            .remove_container(v1::RemoveContainerRequest {
                id: c.id.clone(),
                force: true,
            })
            .await;
    }

    // Both still serve a correct request.
    client
        .create_container(create("after-the-storm", common::spec(&["/bin/true"])))
        .await
        .expect("a correct create");
    let done = wait_container(
        &mut client,
        "after-the-storm",
        Duration::from_secs(30),
        |c| state_of(c) == v1::ContainerState::Exited,
    )
    .await;
    assert_eq!(done.exit_code, Some(0), "{done:?}");
    client
        .remove_container(v1::RemoveContainerRequest {
            id: "after-the-storm".into(),
            force: true,
        })
        .await
        .expect("remove");

    // Nothing left: containers, mounts, cgroups, supervisors.
    let host = node.host();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left: Vec<String> = std::fs::read_dir(host.state_dir.join("containers"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        let mounts = hutch_agent::mounts::mounts_below(&host.state_dir);
        let cgroups: Vec<String> = std::fs::read_dir(host.runtime.cgroups().instance().dir())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("ctr-"))
            .collect();
        let state_dir = host.state_dir.to_string_lossy().into_owned();
        let supervisors: Vec<_> = hutch_processes()
            .into_iter()
            .filter(|(_, cmd)| cmd.contains(&state_dir))
            .collect();
        if left.is_empty() && mounts.is_empty() && cgroups.is_empty() && supervisors.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left behind: containers {left:?}, mounts {mounts:?}, cgroups {cgroups:?}, supervisors {supervisors:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for log in [ctl.log_text(), node.log_text()] {
        assert!(!log.contains("panicked"), "a daemon panicked:\n{log}");
    }
}

/// The audit's listing breaker: records with megabytes of labels made every list answer too
/// large for any client. Labels and environment are bounded now (INVALID_ARGUMENT past the
/// bounds), and list answers come in pages that each fit a client's default message limit,
/// however many and however large the records: grpcurl reads every page, `hutch ps` pages
/// on its own. The records stay PENDING (no node matches), so no container runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_records_are_refused_and_long_lists_come_in_pages() {
    let ctl = TestController::start("pages", &[]);
    let mut client = ctl.client().await;
    let pending = |name: String, labels: BTreeMap<String, String>| v1::CreateContainerRequest {
        name,
        spec: Some(v1::ContainerSpec {
            labels: labels.into_iter().collect(),
            ..common::spec(&["/bin/true"])
        }),
        placement: Some(v1::Placement {
            node_selector: [("nowhere".to_string(), "true".to_string())].into(),
            ..Default::default()
        }),
        restart_policy: None,
    };

    // Beyond the bounds: one 3.9 MB label, too many labels, a huge environment.
    let huge: BTreeMap<String, String> = [("big".to_string(), "x".repeat(3_900_000))].into();
    let many: BTreeMap<String, String> = (0..65).map(|i| (format!("k{i}"), "v".into())).collect();
    let mut env_spec = common::spec(&["/bin/true"]);
    env_spec.env = [("BIG".to_string(), "x".repeat(200_000))].into();
    for (what, request) in [
        ("a 3.9 MB label", pending("huge".into(), huge)),
        ("65 labels", pending("many".into(), many)),
        ("a 200 kB environment", create("env", env_spec)),
    ] {
        let status = client.create_container(request).await.expect_err(what);
        println!("{what}: {status}");
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{what}: {status}"
        );
    }

    // 160 records at the bounds (64 labels of 1 KiB each: about 70 kB a record, 11 MB in
    // all) and 1,000 small ones.
    let full: BTreeMap<String, String> = (0..64)
        .map(|i| (format!("label-{i:02}"), "v".repeat(1024)))
        .collect();
    for i in 0..160 {
        client
            .create_container(pending(format!("big-{i:03}"), full.clone()))
            .await
            .expect("a record at the bounds");
    }
    // Every third small record is labelled, for a filtered walk.
    let gold: BTreeMap<String, String> = [("tier".to_string(), "gold".to_string())].into();
    for i in 0..1000 {
        let labels = if i % 3 == 0 {
            gold.clone()
        } else {
            BTreeMap::new()
        };
        client
            .create_container(pending(format!("small-{i:04}"), labels))
            .await
            .expect("a small record");
    }

    // grpcurl, with its default 4 MB message limit, walks every page.
    let mut token = String::new();
    let (mut names, mut pages) = (Vec::new(), 0);
    loop {
        let out = grpcurl(
            &ctl.addr,
            Some(&format!(r#"{{"page_token":"{token}"}}"#)),
            &["hutch.v1.Controller/ListContainers"],
        );
        assert_eq!(out.code, 0, "page {pages}: {}", out.stderr);
        pages += 1;
        let page: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
        let listed = page["containers"].as_array().cloned().unwrap_or_default();
        assert!(listed.len() <= 500, "{} on one page", listed.len());
        names.extend(
            listed
                .iter()
                .filter_map(|c| c["name"].as_str().map(String::from)),
        );
        match page["nextPageToken"].as_str() {
            Some(next) if !next.is_empty() => token = next.to_string(),
            _ => break,
        }
    }
    println!("{} records in {pages} pages", names.len());
    assert!(pages >= 4, "{pages} pages");
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        (names.len(), sorted),
        (1160, names.clone()),
        "every record once, in order"
    );

    // A filtered walk: pages skip the records the filter leaves out, every page but the last
    // is full, and 334 records in pages of 2 end on a full page with no next token.
    let expected: Vec<String> = (0..1000)
        .filter(|i| i % 3 == 0)
        .map(|i| format!("small-{i:04}"))
        .collect();
    for page_size in [7u32, 2] {
        let (mut token, mut walked) = (String::new(), Vec::new());
        let last_len = loop {
            let page = client
                .list_containers(v1::ListClusterContainersRequest {
                    labels: gold.clone().into_iter().collect(),
                    page_size,
                    page_token: token.clone(),
                    ..Default::default()
                })
                .await
                .expect("a filtered page")
                .into_inner();
            let len = page.containers.len();
            walked.extend(page.containers.into_iter().map(|c| c.name));
            if page.next_page_token.is_empty() {
                break len;
            }
            assert_eq!(len, page_size as usize, "a page before the last is full");
            token = page.next_page_token;
        };
        assert_eq!(walked, expected, "pages of {page_size}");
        let full_last = expected.len().is_multiple_of(page_size as usize);
        assert!(!full_last || last_len == page_size as usize, "{last_len}");
    }

    // A small page size, and a token nobody gave.
    let out = grpcurl(
        &ctl.addr,
        Some(r#"{"page_size":7}"#),
        &["hutch.v1.Controller/ListContainers"],
    );
    let page: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(page["containers"].as_array().map(Vec::len), Some(7));
    let forged = grpcurl(
        &ctl.addr,
        Some(r#"{"page_token":"../../etc"}"#),
        &["hutch.v1.Controller/ListContainers"],
    );
    assert_code(&forged, tonic::Code::InvalidArgument, "page_token");

    // The CLI lists them all.
    let hutch = workspace_bin("hutch", None);
    let ps = std::process::Command::new(&hutch)
        .args(["--controller", &ctl.url(), "ps", "-a", "--output", "json"])
        .output()
        .expect("hutch ps");
    assert!(
        ps.status.success(),
        "{}",
        String::from_utf8_lossy(&ps.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&ps.stdout).expect("json");
    assert_eq!(listed.as_array().map(Vec::len), Some(1160));
}

/// The audit's named cases through the controller, each call bounded by a timeout: a NUL
/// byte in an exec's argv, and rootfs sources that are a regular non-archive file, a
/// character device, a FIFO nobody writes (twice), `/` and a system directory. Each is
/// INVALID_ARGUMENT (from the node, for the sources: the path is the node's), never
/// INTERNAL, never a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audits_requests_are_invalid_arguments_within_a_timeout() {
    use tokio_stream::StreamExt;
    let ctl = TestController::start("audit-cases", &[]);
    let node = TestNode::start("audit-cases-node", &ctl, None, &[]).await;
    let mut client = ctl.client_when_ready(&[&node]).await;
    let bounded = Duration::from_secs(15);

    client
        .create_container(create("sleeper", common::spec(&["sleep", "infinity"])))
        .await
        .expect("create");
    wait_container(&mut client, "sleeper", Duration::from_secs(30), |c| {
        state_of(c) == v1::ContainerState::Running
    })
    .await;
    for command in [vec!["sh", "-c", "echo a\0b"], vec!["a\0b"], vec![]] {
        let call = client.exec(v1::ExecRequest {
            id: "sleeper".into(),
            command: command.iter().map(|s| s.to_string()).collect(),
        });
        let status = tokio::time::timeout(bounded, call)
            .await
            .unwrap_or_else(|_| panic!("exec {command:?} hung"))
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
    }

    let fifo = std::path::PathBuf::from(format!("/var/tmp/{}.fifo", unique("audit-fifo")));
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let fifo_path = fifo.to_string_lossy().into_owned();
    use v1::rootfs_spec::Source;
    for (i, source) in [
        Source::Tarball("/etc/passwd".into()),
        Source::Tarball("/dev/zero".into()),
        Source::Tarball(fifo_path.clone()),
        Source::Tarball(fifo_path),
        Source::Directory("/".into()),
        Source::Directory("/usr".into()),
    ]
    .into_iter()
    .enumerate()
    {
        let request = v1::ClusterBuildRootfsRequest {
            rootfs: Some(v1::RootfsSpec {
                name: format!("audit-{i}"),
                source: Some(source.clone()),
            }),
            ..Default::default()
        };
        let errors = tokio::time::timeout(bounded, async {
            let mut stream = client.build_rootfs(request).await?.into_inner();
            let mut errors = Vec::new();
            while let Some(message) = stream.next().await {
                if let Some(v1::cluster_build_rootfs_response::Event::Error(e)) = message?.event {
                    errors.push(e);
                }
            }
            Ok::<_, tonic::Status>(errors)
        })
        .await
        .unwrap_or_else(|_| panic!("building from {source:?} hung"));
        let codes: Vec<i32> = match errors {
            Ok(errors) => errors.iter().map(|e| e.code).collect(),
            Err(status) => vec![status.code() as i32],
        };
        println!("{source:?}: {codes:?}");
        assert_eq!(
            codes,
            vec![tonic::Code::InvalidArgument as i32],
            "{source:?}"
        );
    }
    let _ = std::fs::remove_file(&fifo);
    client
        .remove_container(v1::RemoveContainerRequest {
            id: "sleeper".into(),
            force: true,
        })
        .await
        .expect("remove");
}
