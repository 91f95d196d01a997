//! Bad input gets a typed error naming what is wrong, and leaves nothing behind: no mount,
//! cgroup, process or directory.

use hutch_testkit as common;

use common::TestHost;
use hutch_agent::rootfs::RootfsError;
use hutch_agent::runtime::{ErrorClass, RuntimeError};
use hutch_agent::spec::{parse_namespaces, SpecError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_specs_are_typed_errors_and_leak_nothing() {
    let host = TestHost::new("badinput").await;
    let rt = &host.runtime;

    for name in ["../etc", "a/b", "/abs", ".."] {
        let mut spec = host.spec(&["/bin/true"]);
        spec.rootfs = name.into();
        let e = rt.run("bad-rootfs", spec).await.expect_err(name);
        assert!(
            matches!(e, RuntimeError::InvalidSpec(SpecError::BadRootfsName(_))),
            "{name}: {e:?}"
        );
        assert_eq!(e.class(), ErrorClass::InvalidArgument);
        host.assert_nothing_left("bad-rootfs");
    }

    let mut spec = host.spec(&["/bin/true"]);
    spec.rootfs = "no-such-rootfs".into();
    let e = rt
        .run("unknown-rootfs", spec)
        .await
        .expect_err("unknown rootfs");
    assert!(
        matches!(e, RuntimeError::Rootfs(RootfsError::NotFound { .. })),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("debian"),
        "the message lists known rootfs: {e}"
    );
    assert_eq!(e.class(), ErrorClass::NotFound);
    host.assert_nothing_left("unknown-rootfs");

    let e = rt
        .run("empty", host.spec(&[]))
        .await
        .expect_err("empty argv");
    assert!(matches!(
        e,
        RuntimeError::InvalidSpec(SpecError::EmptyCommand)
    ));
    host.assert_nothing_left("empty");

    let e = rt
        .run("missing", host.spec(&["/no/such/binary"]))
        .await
        .expect_err("missing binary");
    match &e {
        RuntimeError::StartFailed { failure, .. } => {
            assert_eq!(failure.step, "exec");
            assert!(failure.message.contains("/no/such/binary"), "{failure:?}");
        }
        other => panic!("expected StartFailed, got {other:?}"),
    }
    host.assert_nothing_left("missing");

    let e = rt
        .run("missing2", host.spec(&["no-such-command"]))
        .await
        .expect_err("not in PATH");
    assert!(
        e.to_string().contains("not found in the container's PATH"),
        "{e}"
    );
    host.assert_nothing_left("missing2");

    let mut spec = host.spec(&["/bin/true"]);
    spec.workdir = "/does/not/exist".into();
    let e = rt.run("workdir", spec).await.expect_err("missing workdir");
    assert!(
        matches!(&e, RuntimeError::StartFailed { failure, .. } if failure.step == "workdir"),
        "{e:?}"
    );
    host.assert_nothing_left("workdir");

    for limit in [0, 4096] {
        let mut spec = host.spec(&["/bin/true"]);
        spec.memory_limit_bytes = Some(limit);
        let e = rt.run("tiny", spec).await.expect_err("tiny limit");
        assert!(
            matches!(
                e,
                RuntimeError::InvalidSpec(SpecError::MemoryLimitTooSmall { .. })
            ),
            "{e:?}"
        );
        host.assert_nothing_left("tiny");
    }

    assert_eq!(
        parse_namespaces("pid,time"),
        Err(SpecError::UnknownNamespace("time".into()))
    );

    for id in ["../x", "a/b", "", "x y"] {
        let e = rt.run(id, host.spec(&["/bin/true"])).await.expect_err(id);
        assert!(matches!(e, RuntimeError::BadId(_)), "{id:?}: {e:?}");
    }

    // A duplicate id is refused and the first container is untouched.
    rt.run("dup", host.spec(&["sleep", "60"]))
        .await
        .expect("first");
    let e = rt
        .run("dup", host.spec(&["/bin/true"]))
        .await
        .expect_err("duplicate");
    assert!(matches!(e, RuntimeError::AlreadyExists(_)), "{e:?}");
    assert_eq!(e.class(), ErrorClass::AlreadyExists);
    let first = rt.get("dup").expect("first still there");
    assert_eq!(first.spec.command, vec!["sleep", "60"]);
    assert_eq!(
        first.state.status,
        hutch_agent::runtime::state::Status::Running
    );
    rt.remove("dup", true).await.expect("remove");
    host.assert_nothing_left("dup");

    assert!(matches!(
        rt.kill("dup", libc::SIGTERM),
        Err(RuntimeError::NotFound(_))
    ));
    assert!(matches!(
        rt.kill("x", 0),
        Err(RuntimeError::InvalidSignal(0))
    ));
    assert!(matches!(rt.get("nope"), Err(RuntimeError::NotFound(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_reports_bad_input_in_one_line() {
    let host = TestHost::new("badcli").await;
    let out = host
        .agent_command()
        .args([
            "run",
            "--id",
            "cli-bad",
            "--ns",
            "pid,time",
            "debian",
            "--",
            "/bin/true",
        ])
        .output()
        .expect("hutch-agent");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("unknown namespace 'time'"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    host.assert_nothing_left("cli-bad");
}

/// The audit's wrong codes and hangs, through the agent's gRPC API, each call bounded: a
/// NUL byte in an exec's argv, rootfs sources that are a regular non-archive file, a
/// character device, a FIFO nobody writes (twice: the first must not hold the second up),
/// the host's `/` and system directories. Every answer is INVALID_ARGUMENT, at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_sources_and_exec_argv_are_invalid_arguments_at_once() {
    use hutch_proto::v1;
    let host = TestHost::new("bad-rpc").await;
    let mut agent = host.serve(None, 1000).await;
    let bounded = std::time::Duration::from_secs(10);

    let id = common::unique("bad-rpc-sleeper");
    host.runtime
        .run(&id, host.spec(&["sleep", "infinity"]))
        .await
        .expect("run");
    for command in [
        vec!["sh", "-c", "echo a\0b"],
        vec!["a\0b"],
        vec![""],
        vec![],
    ] {
        let call = agent.client.exec(v1::ExecRequest {
            id: id.clone(),
            command: command.iter().map(|s| s.to_string()).collect(),
        });
        let status = tokio::time::timeout(bounded, call)
            .await
            .unwrap_or_else(|_| panic!("exec {command:?} hung"))
            .expect_err("must refuse");
        println!("exec {command:?}: {status}");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
    }
    host.runtime.remove(&id, true).await.expect("remove");

    let fifo = std::path::PathBuf::from(format!("/var/tmp/{}.fifo", common::unique("bad-rpc")));
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let fifo_path = fifo.to_string_lossy().into_owned();
    use v1::rootfs_spec::Source;
    let sources = [
        Source::Tarball("/etc/passwd".into()),
        Source::Tarball("/dev/zero".into()),
        Source::Tarball(fifo_path.clone()),
        Source::Tarball(fifo_path),
        Source::Initramfs("/dev/zero".into()),
        Source::Directory("/".into()),
        Source::Directory("/etc".into()),
        Source::Directory("/proc/1/root".into()),
        Source::Directory(host.state_dir.to_string_lossy().into_owned()),
    ];
    for (i, source) in sources.into_iter().enumerate() {
        let request = v1::BuildRootfsRequest {
            rootfs: Some(v1::RootfsSpec {
                name: format!("bad-source-{i}"),
                source: Some(source.clone()),
            }),
        };
        let answer = tokio::time::timeout(bounded, async {
            let mut stream = agent.client.build_rootfs(request).await?.into_inner();
            while stream.message().await?.is_some() {}
            Ok::<_, tonic::Status>(())
        })
        .await
        .unwrap_or_else(|_| panic!("building from {source:?} hung"));
        let status = answer.expect_err("must refuse");
        println!("{source:?}: {status}");
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{source:?}: {status}"
        );
    }
    let _ = std::fs::remove_file(&fifo);
    agent.stop().await;
}
