//! Usage samples and process tables of real containers through the agent's API: a busy
//! container shows its CPU use, memory within its limit, its processes, the bytes it wrote
//! to its layer and the traffic of its own network namespace; samples stream once a second;
//! unknown ids and ended containers get their codes.

use hutch_testkit as common;

use std::time::{Duration, Instant};

use common::TestHost;
use hutch_proto::v1;

async fn one_sample(
    client: &mut v1::agent_client::AgentClient<tonic::transport::Channel>,
    id: &str,
) -> v1::ContainerUsage {
    let mut stream = client
        .container_stats(v1::ContainerStatsRequest {
            ids: vec![id.into()],
            stream: false,
        })
        .await
        .expect("stats")
        .into_inner();
    let sample = stream.message().await.expect("sample").expect("one");
    assert!(
        stream.message().await.expect("end").is_none(),
        "one sample, then the end"
    );
    sample
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_container_shows_what_it_uses() {
    let host = TestHost::new("stats").await;
    let agent = host.serve(None, 1000).await;
    let mut client = agent.client.clone();
    let mut spec = host.spec(&[
        "sh",
        "-c",
        "dd if=/dev/zero of=/filler bs=1M count=8 2>/dev/null; ping -c 3 -i 0.2 127.0.0.1 >/dev/null 2>&1; while :; do :; done",
    ]);
    spec.memory_limit_bytes = Some(64 << 20);
    host.runtime.run("busy", spec).await.expect("run");
    // The filler is written before the loop starts.
    let deadline = Instant::now() + Duration::from_secs(10);
    let sample = loop {
        let s = one_sample(&mut client, "busy").await;
        if s.writable_layer_bytes.unwrap_or(0) >= 8 << 20 || Instant::now() > deadline {
            break s;
        }
    };
    println!("{sample:#?}");
    assert_eq!(sample.id, "busy");
    assert_eq!(sample.state, v1::ContainerState::Running as i32);
    assert!(
        sample.cpu_percent > 20.0,
        "a busy loop: {}",
        sample.cpu_percent
    );
    assert!(
        sample.cpu_percent < 110.0,
        "one thread: {}",
        sample.cpu_percent
    );
    assert!(sample.cpu_usage_nanos > 0);
    assert_eq!(sample.memory_limit_bytes, Some(64 << 20));
    assert!(sample.memory_usage_bytes > 0);
    assert!(sample.pids >= 1);
    assert!(
        sample.writable_layer_bytes.unwrap_or(0) >= 8 << 20,
        "{sample:?}"
    );
    // Its own network namespace: counted (lo only here, so nothing beyond lo).
    assert_eq!(
        (sample.net_rx_bytes, sample.net_tx_bytes),
        (Some(0), Some(0))
    );
    assert!(sample.node_cpus >= 1);

    // The process table: the shell is PID 1 inside, the pid on the node differs.
    let table = client
        .list_processes(v1::ListProcessesRequest { id: "busy".into() })
        .await
        .expect("processes")
        .into_inner()
        .processes;
    println!("{table:#?}");
    let shell = table
        .iter()
        .find(|p| p.container_pid == 1)
        .expect("PID 1 inside");
    assert!(shell.command.starts_with("sh -c dd"), "{shell:?}");
    assert_ne!(shell.pid, 1);
    assert!(shell.cpu_millis > 0 && shell.rss_bytes > 0);

    // Streaming: a sample a second, CPU in each.
    let mut stream = client
        .container_stats(v1::ContainerStatsRequest {
            ids: Vec::new(),
            stream: true,
        })
        .await
        .expect("stream")
        .into_inner();
    let started = Instant::now();
    for _ in 0..2 {
        let s = stream.message().await.expect("sample").expect("more");
        assert_eq!(s.id, "busy", "every running container when none is named");
        assert!(s.cpu_percent > 20.0, "{s:?}");
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    drop(stream);

    // Errors: an unknown id; the processes of an ended container.
    let e = client
        .container_stats(v1::ContainerStatsRequest {
            ids: vec!["nope".into()],
            stream: false,
        })
        .await
        .expect_err("unknown");
    assert_eq!(e.code(), tonic::Code::NotFound);
    host.runtime.kill("busy", libc::SIGKILL).expect("kill");
    host.runtime.wait("busy").await.expect("wait");
    let e = client
        .list_processes(v1::ListProcessesRequest { id: "busy".into() })
        .await
        .expect_err("ended");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    let ended = one_sample(&mut client, "busy").await;
    assert_eq!(ended.state, v1::ContainerState::Exited as i32, "{ended:?}");
    assert_eq!(ended.cpu_percent, 0.0);
    agent.stop().await;
    host.runtime.remove("busy", false).await.expect("rm");
    host.assert_nothing_left("busy");
}
