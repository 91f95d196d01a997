//! `hutch.v1.Agent` end to end in-process: a real agent on 127.0.0.1:0 over a real runtime,
//! every RPC, and every error code the service promises.

use hutch_testkit as common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{TestHost, ROOTFS};
use hutch_proto::v1;
use hutch_proto::v1::agent_server::Agent;
use tonic::{Code, Request};

fn spec(command: &[&str]) -> v1::ContainerSpec {
    v1::ContainerSpec {
        rootfs: ROOTFS.into(),
        command: command.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// The agent's event stream from its first event.
async fn all_events(
    c: &mut hutch_proto::v1::agent_client::AgentClient<tonic::transport::Channel>,
) -> std::pin::Pin<Box<tonic::Streaming<v1::Event>>> {
    let events = c
        .events(v1::EventsRequest { since_seq: 0 })
        .await
        .expect("events")
        .into_inner();
    Box::pin(events)
}

fn run_req(name: &str, spec: v1::ContainerSpec) -> v1::RunContainerRequest {
    v1::RunContainerRequest {
        name: name.into(),
        spec: Some(spec),
    }
}

async fn wait_final(
    client: &mut v1::agent_client::AgentClient<tonic::transport::Channel>,
    id: &str,
) -> v1::Container {
    for _ in 0..500 {
        let c = client
            .get_container(v1::GetContainerRequest { id: id.into() })
            .await
            .expect("get")
            .into_inner();
        let st = v1::ContainerState::try_from(c.state).unwrap_or(v1::ContainerState::Unspecified);
        if matches!(
            st,
            v1::ContainerState::Exited | v1::ContainerState::OomKilled | v1::ContainerState::Failed
        ) {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("container {id} did not end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_works() {
    let host = TestHost::new("svc").await;
    let agent = host.serve(None, 1000).await;
    let mut c = agent.client.clone();

    let node = c
        .node_info(v1::NodeInfoRequest {})
        .await
        .expect("node info")
        .into_inner();
    assert_eq!(node.name, host.instance);
    assert!(node.memory_total_bytes > node.memory_allocatable_bytes);
    assert!(["v1", "v2"].contains(&node.cgroup_version.as_str()));
    assert!(!node.kernel.is_empty() && !node.agent_version.is_empty());

    // BuildRootfs on a cached source: progress stream ends with the result.
    let mut build = c
        .build_rootfs(v1::BuildRootfsRequest {
            rootfs: Some(v1::RootfsSpec {
                name: ROOTFS.into(),
                source: Some(v1::rootfs_spec::Source::Debootstrap(
                    v1::DebootstrapSource {
                        suite: "bookworm".into(),
                        variant: "minbase".into(),
                        include: vec!["procps".into(), "iproute2".into()],
                        ..Default::default()
                    },
                )),
            }),
        })
        .await
        .expect("build")
        .into_inner();
    let mut result = None;
    while let Some(msg) = build.message().await.expect("stream") {
        if let Some(v1::build_rootfs_response::Event::Result(r)) = msg.event {
            result = Some(r);
        }
    }
    let result = result.expect("a result at the end");
    assert_eq!(result.outcome, v1::BuildOutcome::Cached as i32);
    // A second rootfs from a directory source, built, listed, then removed.
    let tree = host.runtime.store().get(ROOTFS).expect("shared").path;
    let copy_name = format!("copy-{}", std::process::id());
    let mut copy = c
        .build_rootfs(v1::BuildRootfsRequest {
            rootfs: Some(v1::RootfsSpec {
                name: copy_name.clone(),
                source: Some(v1::rootfs_spec::Source::Directory(
                    tree.display().to_string(),
                )),
            }),
        })
        .await
        .expect("build copy")
        .into_inner();
    let mut stages = Vec::new();
    let mut copy_result = None;
    while let Some(msg) = copy.message().await.expect("stream") {
        match msg.event {
            Some(v1::build_rootfs_response::Event::Progress(p)) => stages.push(p.stage),
            Some(v1::build_rootfs_response::Event::Result(r)) => copy_result = Some(r),
            None => {}
        }
    }
    assert!(copy_result.is_some(), "a result at the end");
    assert!(stages.contains(&"done".to_string()), "{stages:?}");
    let all = c
        .list_rootfs(v1::ListRootfsRequest {})
        .await
        .expect("list")
        .into_inner();
    assert!(all.rootfs.iter().any(|r| r.name == copy_name));
    c.remove_rootfs(v1::RemoveRootfsRequest {
        name: copy_name.clone(),
    })
    .await
    .expect("remove copy");
    let gone = c
        .remove_rootfs(v1::RemoveRootfsRequest { name: copy_name })
        .await
        .expect_err("already removed");
    assert_eq!(gone.code(), Code::NotFound);
    let listed = c
        .list_rootfs(v1::ListRootfsRequest {})
        .await
        .expect("list rootfs")
        .into_inner();
    assert!(listed
        .rootfs
        .iter()
        .any(|r| r.name == ROOTFS && r.size_bytes > 0));

    // The tutorial's pid-only container.
    let mut pid_only = spec(&["ps", "-ef"]);
    pid_only.namespaces = vec![v1::Namespace::Pid as i32];
    pid_only.labels.insert("tutorial".into(), "pid".into());
    let started = c
        .run_container(run_req("ps", pid_only))
        .await
        .expect("run")
        .into_inner();
    assert_eq!(started.id, "ps");
    let done = wait_final(&mut c, "ps").await;
    assert_eq!(done.exit_code, Some(0));
    let pid_ns = done
        .namespaces
        .iter()
        .find(|n| n.kind == v1::Namespace::Pid as i32)
        .expect("pid ns");
    assert!(pid_ns.isolated);
    let net_ns = done
        .namespaces
        .iter()
        .find(|n| n.kind == v1::Namespace::Net as i32)
        .expect("net ns");
    assert!(!net_ns.isolated);

    let mut logs = c
        .container_logs(v1::ContainerLogsRequest {
            id: "ps".into(),
            ..Default::default()
        })
        .await
        .expect("logs")
        .into_inner();
    let mut lines = Vec::new();
    while let Some(e) = logs.message().await.expect("log stream") {
        assert_eq!(e.stream, v1::LogStream::Stdout as i32);
        assert!(e.time.is_some());
        lines.push(e.line);
    }
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[1].ends_with("ps -ef"));

    // A long-running one: list with filters, exec, logs with follow and tail, stop.
    let chatty = spec(&[
        "sh",
        "-c",
        "for i in 1 2 3 4 5; do echo line $i; done; sleep 1; echo late; sleep 60",
    ]);
    c.run_container(run_req("chatty", chatty))
        .await
        .expect("run");
    let running = c
        .list_containers(v1::ListContainersRequest {
            state: v1::ContainerState::Running as i32,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        running
            .containers
            .iter()
            .map(|c| c.id.as_str())
            .collect::<Vec<_>>(),
        vec!["chatty"]
    );
    let labelled = c
        .list_containers(v1::ListContainersRequest {
            labels: [("tutorial".to_string(), "pid".to_string())]
                .into_iter()
                .collect(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        labelled
            .containers
            .iter()
            .map(|c| c.id.as_str())
            .collect::<Vec<_>>(),
        vec!["ps"]
    );
    // Pages: one container a page, walked by token in id order; a forged token refused.
    let mut ids = Vec::new();
    let mut request = v1::ListContainersRequest {
        page_size: 1,
        ..Default::default()
    };
    loop {
        let page = c
            .list_containers(request.clone())
            .await
            .expect("list")
            .into_inner();
        assert!(page.containers.len() <= 1);
        ids.extend(page.containers.into_iter().map(|c| c.id));
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    let mut sorted = ids.clone();
    sorted.sort();
    assert!(ids.len() >= 2 && ids == sorted, "{ids:?}");
    let forged = c
        .list_containers(v1::ListContainersRequest {
            page_token: "p1.zz".into(),
            ..Default::default()
        })
        .await
        .expect_err("forged token");
    assert_eq!(forged.code(), tonic::Code::InvalidArgument, "{forged}");

    let exec = c
        .exec(v1::ExecRequest {
            id: "chatty".into(),
            command: vec!["hostname".into()],
        })
        .await
        .expect("exec")
        .into_inner();
    assert_eq!(String::from_utf8_lossy(&exec.stdout).trim(), "chatty");
    assert_eq!(exec.exit_code, Some(0));

    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut follow = c
        .container_logs(v1::ContainerLogsRequest {
            id: "chatty".into(),
            follow: true,
            tail: Some(2),
            ..Default::default()
        })
        .await
        .expect("follow")
        .into_inner();
    let mut got = Vec::new();
    while got.len() < 3 {
        let e = tokio::time::timeout(Duration::from_secs(10), follow.message())
            .await
            .expect("a line in time")
            .expect("stream")
            .expect("open");
        got.push(e.line);
    }
    assert_eq!(got, vec!["line 4", "line 5", "late"]);

    c.kill_container(v1::KillContainerRequest {
        id: "chatty".into(),
        signal: 0,
    })
    .await
    .expect("kill");
    let killed = wait_final(&mut c, "chatty").await;
    assert_eq!(killed.signal, Some(libc::SIGKILL));
    // The follower ends once the container has.
    let rest = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(_e) = follow.message().await.expect("stream") {}
    })
    .await;
    assert!(rest.is_ok(), "follow ends after the container");

    c.run_container(run_req("sleeper", spec(&["sleep", "60"])))
        .await
        .expect("run");
    let stopped = c
        .stop_container(v1::StopContainerRequest {
            id: "sleeper".into(),
            grace_seconds: Some(1),
        })
        .await
        .expect("stop")
        .into_inner();
    assert_eq!(stopped.state, v1::ContainerState::Exited as i32);
    for id in ["ps", "chatty", "sleeper"] {
        c.remove_container(v1::RemoveContainerRequest {
            id: id.into(),
            force: false,
        })
        .await
        .expect("remove");
        host.assert_nothing_left(id);
    }
    let gone = c
        .get_container(v1::GetContainerRequest { id: "ps".into() })
        .await
        .expect_err("removed");
    assert_eq!(gone.code(), Code::NotFound);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_code_is_precise() {
    let host = TestHost::new("svcerr").await;
    let agent = host.serve(None, 3).await;
    let mut c = agent.client.clone();
    let code_of =
        |r: Result<tonic::Response<v1::Container>, tonic::Status>| r.expect_err("must fail");

    // InvalidArgument, naming the field.
    let mut tiny = spec(&["true"]);
    tiny.memory_limit_bytes = Some(0);
    let e = code_of(c.run_container(run_req("tiny", tiny)).await);
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("memory limit"), "{}", e.message());
    let mut bad_ns = spec(&["true"]);
    bad_ns.namespaces = vec![99];
    let e = code_of(c.run_container(run_req("badns", bad_ns)).await);
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with("spec.namespaces[0]"),
        "{}",
        e.message()
    );
    let e = code_of(
        c.run_container(run_req("nospec", v1::ContainerSpec::default()))
            .await,
    );
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = code_of(
        c.run_container(v1::RunContainerRequest {
            name: "x".into(),
            spec: None,
        })
        .await,
    );
    assert!(e.message().starts_with("spec"), "{}", e.message());
    let e = code_of(c.run_container(run_req("../etc", spec(&["true"]))).await);
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = code_of(
        c.run_container(run_req("missing", spec(&["/no/such"])))
            .await,
    );
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    assert!(e.message().contains("exec"), "{}", e.message());

    // NotFound.
    let mut unknown = spec(&["true"]);
    unknown.rootfs = "no-such-rootfs".into();
    let e = code_of(c.run_container(run_req("u", unknown)).await);
    assert_eq!(e.code(), Code::NotFound);
    assert!(
        e.message().contains("debian"),
        "lists the known rootfs: {}",
        e.message()
    );
    let e = c
        .get_container(v1::GetContainerRequest { id: "nope".into() })
        .await
        .expect_err("nf");
    assert_eq!(e.code(), Code::NotFound);

    // AlreadyExists, and FailedPrecondition for a running container and a rootfs in use.
    c.run_container(run_req("dup", spec(&["sleep", "60"])))
        .await
        .expect("first");
    let e = code_of(c.run_container(run_req("dup", spec(&["true"]))).await);
    assert_eq!(e.code(), Code::AlreadyExists);
    let e = c
        .remove_container(v1::RemoveContainerRequest {
            id: "dup".into(),
            force: false,
        })
        .await
        .expect_err("running");
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e = c
        .remove_rootfs(v1::RemoveRootfsRequest {
            name: ROOTFS.into(),
        })
        .await
        .expect_err("in use");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("dup"), "{}", e.message());
    let e = c
        .kill_container(v1::KillContainerRequest {
            id: "dup".into(),
            signal: 99,
        })
        .await
        .expect_err("bad signal");
    assert_eq!(e.code(), Code::InvalidArgument);
    c.remove_container(v1::RemoveContainerRequest {
        id: "dup".into(),
        force: true,
    })
    .await
    .expect("forced remove");

    // Requests are bounded (4 MiB): tonic refuses a larger one before any handler runs,
    // with OUT_OF_RANGE (its code for an oversized message).
    let e = c
        .exec(v1::ExecRequest {
            id: "any".into(),
            command: vec!["x".repeat(5 << 20)],
        })
        .await
        .expect_err("oversized");
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    assert!(e.message().contains("too large"), "{}", e.message());

    // ResourceExhausted: more memory than the node has.
    let mut huge = spec(&["true"]);
    huge.memory_limit_bytes = Some(1 << 50);
    let e = code_of(c.run_container(run_req("huge", huge)).await);
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.message().contains("allocatable"), "{}", e.message());

    // OutOfRange: events compacted away (the log keeps 3 here).
    for i in 0..4 {
        let id = format!("ev{i}");
        c.run_container(run_req(&id, spec(&["true"])))
            .await
            .expect("run");
        wait_final(&mut c, &id).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let e = c
        .events(v1::EventsRequest { since_seq: 1 })
        .await
        .expect_err("compacted");
    assert_eq!(e.code(), Code::OutOfRange);
    assert!(e.message().contains("oldest kept"), "{}", e.message());

    // Unavailable: a draining agent refuses new containers.
    let core = std::sync::Arc::new(hutch_agent::service::AgentCore {
        runtime: host.runtime.clone(),
        events: std::sync::Arc::new(
            hutch_agent::events::EventLog::open(&host.state_dir.join("drain-events.log"), 10)
                .expect("log"),
        ),
        reporter: hutch_agent::service::reporter::Reporter::new(
            host.runtime.clone(),
            std::sync::Arc::new(
                hutch_agent::events::EventLog::open(&host.state_dir.join("drain-events2.log"), 10)
                    .expect("log"),
            ),
        ),
        node: "draining".into(),
        metrics: Default::default(),
        memory_reserve_bytes: 0,
        draining: std::sync::atomic::AtomicBool::new(false),
        closing: tokio::sync::watch::channel(false).0,
        detached: Default::default(),
    });
    core.draining.store(true, Ordering::SeqCst);
    let svc = hutch_agent::service::AgentService::new(core);
    let e = svc
        .run_container(Request::new(run_req("late", spec(&["true"]))))
        .await
        .expect_err("draining");
    assert_eq!(e.code(), Code::Unavailable);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_answers_in_v1_and_v1alpha() {
    use tonic_reflection::pb::{v1 as r1, v1alpha as r1a};
    let host = TestHost::new("reflect").await;
    let agent = host.serve(None, 100).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", agent.addr))
        .expect("url")
        .connect()
        .await
        .expect("connect");

    let mut v1_client = r1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = r1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(r1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut answers = v1_client
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("v1 reflection")
        .into_inner();
    let answer = answers.message().await.expect("answer").expect("one");
    let names: Vec<String> = match answer.message_response {
        Some(r1::server_reflection_response::MessageResponse::ListServicesResponse(l)) => {
            l.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected {other:?}"),
    };
    assert!(names.contains(&"hutch.v1.Agent".to_string()), "{names:?}");

    let mut alpha = r1a::server_reflection_client::ServerReflectionClient::new(channel);
    let request = r1a::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            r1a::server_reflection_request::MessageRequest::FileContainingSymbol(
                "hutch.v1.Agent".into(),
            ),
        ),
    };
    let mut answers = alpha
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("v1alpha reflection")
        .into_inner();
    let answer = answers.message().await.expect("answer").expect("one");
    assert!(
        matches!(
            answer.message_response,
            Some(r1a::server_reflection_response::MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()
        ),
        "{answer:?}"
    );
    agent.stop().await;
}

/// The audit's 125 MB log from one chatty container: logs now rotate (Docker's max-size and
/// max-file). A follower from the start sees every line once, in order, across rotations;
/// afterwards the kept files hold the newest lines without a gap, and no more than
/// max-file files of max-size each are on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_rotate_and_followers_read_across_files() {
    use tokio_stream::StreamExt;
    let host = TestHost::new("log-rotation").await;
    let agent = host.serve(None, 1000).await;
    let mut c = agent.client.clone();
    let lines = 4000;
    let mut chatty = spec(&[
        "sh",
        "-c",
        &format!("i=0; while [ $i -lt {lines} ]; do echo \"line $i $(printf '%040d' $i)\"; i=$((i+1)); [ $((i % 500)) -eq 0 ] && sleep 0.1; done"),
    ]);
    chatty.log = Some(v1::LogOptions {
        max_size_bytes: Some(64 << 10),
        max_files: Some(3),
    });
    c.run_container(run_req("chatty-log", chatty))
        .await
        .expect("run");
    let mut follow = c
        .container_logs(v1::ContainerLogsRequest {
            id: "chatty-log".into(),
            follow: true,
            since: None,
            tail: None,
            ..Default::default()
        })
        .await
        .expect("follow")
        .into_inner();
    let mut followed = Vec::new();
    while let Some(entry) = tokio::time::timeout(Duration::from_secs(60), follow.next())
        .await
        .expect("the follow ended in time")
    {
        let entry = entry.expect("entry");
        followed.push(entry.line.split(' ').nth(1).unwrap_or("").to_string());
    }
    let expected: Vec<String> = (0..lines).map(|i| i.to_string()).collect();
    assert_eq!(
        followed.len(),
        expected.len(),
        "followed {} lines",
        followed.len()
    );
    assert_eq!(followed, expected);

    // Afterwards: at most 3 files of 64 KiB, holding the newest lines without a gap.
    let dir = host.container_dir("chatty-log");
    let files: Vec<u64> = std::fs::read_dir(&dir)
        .expect("dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("container.log"))
        .map(|e| e.metadata().expect("meta").len())
        .collect();
    assert!(
        files.len() <= 3 && files.iter().all(|&l| l <= 64 << 10),
        "{files:?}"
    );
    let kept: Vec<String> = host
        .runtime
        .logs("chatty-log")
        .expect("logs")
        .into_iter()
        .map(|l| l.text.split(' ').nth(1).unwrap_or("").to_string())
        .collect();
    assert!(
        kept.len() > 1000 && kept.len() < lines,
        "{} lines kept",
        kept.len()
    );
    assert_eq!(kept, expected[lines - kept.len()..]);

    // Bad options are refused before anything runs.
    let mut bad = spec(&["true"]);
    bad.log = Some(v1::LogOptions {
        max_size_bytes: Some(10),
        max_files: Some(0),
    });
    let refused = c
        .run_container(run_req("bad-log", bad))
        .await
        .expect_err("bad log options");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");
    c.remove_container(v1::RemoveContainerRequest {
        id: "chatty-log".into(),
        force: true,
    })
    .await
    .expect("remove");
    host.assert_nothing_left("chatty-log");
    agent.stop().await;
}

/// `auto_remove` at the agent (a container run there directly): it goes when it ends, and
/// the event stream carries its end before its removal. The node also reports its CPUs, and
/// a CPU limit beyond them is RESOURCE_EXHAUSTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_remove_and_cpus_at_the_agent() {
    let host = TestHost::new("svcrm").await;
    let agent = host.serve(None, 1000).await;
    let mut c = agent.client.clone();
    let mut s = spec(&["sh", "-c", "exit 4"]);
    s.auto_remove = true;
    c.run_container(run_req("gone", s)).await.expect("run");
    let mut removed = false;
    for _ in 0..100 {
        match c
            .get_container(v1::GetContainerRequest { id: "gone".into() })
            .await
        {
            Err(s) if s.code() == Code::NotFound => {
                removed = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert!(
        removed,
        "an auto_remove container is still there after it ended"
    );
    let mut events = all_events(&mut c).await;
    let (mut exit_code, mut saw_removal) = (None, false);
    while let Ok(Some(Ok(e))) = tokio::time::timeout(
        Duration::from_secs(2),
        tokio_stream::StreamExt::next(&mut events),
    )
    .await
    {
        if e.container_id == "gone" {
            if e.removed {
                saw_removal = true;
                break;
            }
            exit_code = e.exit_code.or(exit_code);
        }
    }
    assert_eq!(exit_code, Some(4), "its end was reported before it went");
    assert!(saw_removal);

    let node = c
        .node_info(v1::NodeInfoRequest {})
        .await
        .expect("node info")
        .into_inner();
    assert!(node.cpu_count >= 1);
    assert_eq!(
        node.cpu_allocatable_millicores,
        u64::from(node.cpu_count) * 1000
    );
    let mut s = spec(&["true"]);
    s.cpu = Some(v1::CpuSpec {
        cores: f64::from(node.cpu_count) + 1.0,
        shares: 0,
    });
    let err = c
        .run_container(run_req("greedy", s))
        .await
        .expect_err("too many CPUs");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("CPUs"), "{}", err.message());
}

/// A started container carries its start timeline: the agent taking the request, the
/// supervisor beginning and joining its cgroup, the init cloned, released and exec'ing, in
/// that order, within the time the call took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_container_says_when_each_step_of_its_start_happened() {
    let host = TestHost::new("svctimeline").await;
    let agent = host.serve(None, 1000).await;
    let mut c = agent.client.clone();
    let before = std::time::SystemTime::now();
    let started = c
        .run_container(run_req("timed", spec(&["sleep", "5"])))
        .await
        .expect("run")
        .into_inner();
    let after = std::time::SystemTime::now();
    let seen = c
        .get_container(v1::GetContainerRequest { id: "timed".into() })
        .await
        .expect("get")
        .into_inner();
    c.remove_container(v1::RemoveContainerRequest {
        id: "timed".into(),
        force: true,
    })
    .await
    .expect("remove");
    let t = started.start_timeline.expect("a start timeline");
    println!("{t:?}");
    let steps: Vec<std::time::SystemTime> = [
        &t.agent_received,
        &t.supervisor_started,
        &t.cgroup_joined,
        &t.init_cloned,
        &t.init_released,
        &t.init_exec,
    ]
    .iter()
    .map(|s| hutch_agent::service::convert::system_time(s.as_ref().expect("every step recorded")))
    .collect();
    // The steps are kept to the microsecond.
    let mut bounds = vec![before - Duration::from_micros(1)];
    bounds.extend(steps);
    bounds.push(after);
    assert!(
        bounds.windows(2).all(|w| w[0] <= w[1]),
        "in order, within the call: {bounds:?}"
    );
    assert_eq!(
        seen.start_timeline, started.start_timeline,
        "a later read gives the same"
    );
}

/// A run sent twice at once (a retry racing the first try, or a restarted controller
/// sending again): one starts the container, the other answers ALREADY_EXISTS only once
/// that start has ended, so the GetContainer sent right after it (what the controller does
/// on ALREADY_EXISTS) finds the container started, never half made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_sent_twice_at_once_answers_already_exists_after_the_start() {
    const PAIRS: usize = 20;
    let host = TestHost::new("svctwice").await;
    let agent = host.serve(None, 10_000).await;
    // A run, and on ALREADY_EXISTS the container as a GetContainer sent at once sees it.
    let run_or_get = |name: String| {
        let mut client = agent.client.clone();
        async move {
            match client
                .run_container(run_req(&name, spec(&["/bin/sleep", "0.2"])))
                .await
            {
                Ok(started) => Ok(started.into_inner()),
                Err(e) if e.code() == Code::AlreadyExists => Err(client
                    .get_container(v1::GetContainerRequest { id: name })
                    .await
                    .map(tonic::Response::into_inner)),
                Err(e) => panic!("run: {e:?}"),
            }
        }
    };
    let mut half_made = Vec::new();
    for i in 0..PAIRS {
        let name = format!("twice{i:02}");
        let (a, b) = tokio::join!(run_or_get(name.clone()), run_or_get(name.clone()));
        let seen = match (a, b) {
            (Ok(_), Err(seen)) | (Err(seen), Ok(_)) => seen,
            other => panic!("{name}: expected one start and one ALREADY_EXISTS, got {other:?}"),
        };
        match seen {
            Ok(c) if c.state != v1::ContainerState::Preparing as i32 => {}
            Ok(c) => half_made.push(format!("{name}: {:?}", c.state())),
            Err(e) => half_made.push(format!("{name}: {:?} {}", e.code(), e.message())),
        }
    }
    assert!(
        half_made.is_empty(),
        "right after ALREADY_EXISTS the container was not (fully) there: {half_made:#?}"
    );
    for i in 0..PAIRS {
        let id = format!("twice{i:02}");
        wait_final(&mut agent.client.clone(), &id).await;
        agent
            .client
            .clone()
            .remove_container(v1::RemoveContainerRequest { id, force: true })
            .await
            .expect("remove");
    }
}

/// A removal is answered before its event is recorded (the event log's fsync is off the
/// answer's path), yet the event keeps its place: a run of the same id asked for right after
/// the answer is reported after the removal, and the shutdown waits for the event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_s_event_comes_before_any_report_asked_for_after_its_answer() {
    let host = TestHost::new("svcrmorder").await;
    let agent = host.serve(None, 1000).await;
    let mut c = agent.client.clone();
    for round in 0..5 {
        c.run_container(run_req("again", spec(&["sleep", "60"])))
            .await
            .unwrap_or_else(|e| panic!("run {round}: {e}"));
        c.remove_container(v1::RemoveContainerRequest {
            id: "again".into(),
            force: true,
        })
        .await
        .unwrap_or_else(|e| panic!("remove {round}: {e}"));
    }
    let mut events = all_events(&mut c).await;
    // Each round: its RUNNING (and, killed, maybe its end) then its removal, never a
    // removal after the next round's RUNNING.
    let mut seen = Vec::new();
    while seen.iter().filter(|removed| **removed).count() < 5 {
        let next = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_stream::StreamExt::next(&mut events),
        )
        .await;
        let Ok(Some(Ok(e))) = next else {
            panic!("the events stopped after {seen:?}");
        };
        if e.container_id != "again" {
            continue;
        }
        let running = e.state == v1::ContainerState::Running as i32 && !e.removed;
        if running || e.removed {
            seen.push(e.removed);
        }
    }
    let expected: Vec<bool> = (0..5).flat_map(|_| [false, true]).collect();
    assert_eq!(seen, expected, "false: a RUNNING, true: a removal");
    agent.stop().await;
    host.assert_nothing_left("again");
}
