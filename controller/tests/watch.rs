//! `WatchContainers` over real gRPC against an in-process controller without nodes (every
//! create stays PENDING, one change each): replay then live without gap or duplicate, a
//! compacted revision is OUT_OF_RANGE with the way out, and a watcher that stops reading is
//! cut off with RESOURCE_EXHAUSTED naming the revision to resume from, while other watchers
//! and creates go on.

use std::time::Duration;

use hutch_controller::cluster::{Cluster, ClusterConfig};
use hutch_controller::store::RedbStore;
use hutch_proto::v1;
use hutch_proto::v1::controller_client::ControllerClient;
use tonic::transport::Channel;

struct InProcess {
    client: ControllerClient<Channel>,
    url: String,
    data_dir: std::path::PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

async fn start(name: &str, config: ClusterConfig) -> InProcess {
    let data_dir = std::path::PathBuf::from(format!(
        "/var/tmp/hutch-test-ctl-{name}-{}-0",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&data_dir);
    let store = RedbStore::open(&data_dir).expect("store");
    let cluster = Cluster::start(config, Box::new(store)).expect("cluster");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let me = hutch_controller::leader::Member::this(format!("http://{addr}")).expect("member");
    let leadership = hutch_controller::leadership::Leadership::single(
        cluster,
        me,
        data_dir.display().to_string(),
    );
    tokio::spawn(hutch_controller::service::server::serve(
        leadership,
        listener,
        hutch_controller::service::server::Limits::default(),
        async {
            let _ = rx.await;
        },
    ));
    let url = format!("http://{addr}");
    let client = ControllerClient::connect(url.clone())
        .await
        .expect("connect");
    InProcess {
        client,
        url,
        data_dir,
        stop: Some(tx),
    }
}

fn pending(name: &str) -> v1::CreateContainerRequest {
    v1::CreateContainerRequest {
        name: name.into(),
        spec: Some(v1::ContainerSpec {
            rootfs: "debian".into(),
            command: vec!["/bin/true".into()],
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn next_revision(stream: &mut tonic::Streaming<v1::WatchEvent>) -> u64 {
    tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("an event in time")
        .expect("stream ok")
        .expect("not ended")
        .revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_then_live_and_compaction() {
    let mut c = start(
        "watch-compact",
        ClusterConfig {
            event_keep: 5,
            ..Default::default()
        },
    )
    .await;
    for i in 0..8 {
        c.client
            .create_container(pending(&format!("p{i}")))
            .await
            .expect("create");
    }
    let created = c
        .client
        .get_container(v1::GetContainerRequest { id: "p0".into() })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(
        created.status_message, "no node is registered",
        "{created:#?}"
    );

    // Revisions 1..=8; 4..=8 are kept.
    let err = c
        .client
        .watch_containers(v1::WatchContainersRequest {
            since_revision: 2,
            ..Default::default()
        })
        .await
        .expect_err("compacted");
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err}");
    assert!(err.message().contains("oldest kept is 4"), "{err}");

    let mut stream = c
        .client
        .watch_containers(v1::WatchContainersRequest {
            since_revision: 3,
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(next_revision(&mut stream).await);
    }
    assert_eq!(seen, vec![4, 5, 6, 7, 8]);
    c.client
        .create_container(pending("live"))
        .await
        .expect("create");
    assert_eq!(next_revision(&mut stream).await, 9);

    // Shutting down ends the watch with the revision to resume from, instead of hanging.
    if let Some(stop) = c.stop.take() {
        let _ = stop.send(());
    }
    let end = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("the watch ends on shutdown")
        .expect_err("an error status");
    assert_eq!(end.code(), tonic::Code::Unavailable, "{end}");
    assert!(end.message().contains("since_revision=9"), "{end}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_stops_reading_is_cut_off_alone() {
    let mut c = start(
        "watch-slow",
        ClusterConfig {
            watch_buffer: 8,
            ..Default::default()
        },
    )
    .await;
    // The slow watcher has its own connection with a small HTTP/2 window (hyper's default
    // of 2 MiB would hold thousands of changes on the client's side).
    let small_window = tonic::transport::Endpoint::from_shared(c.url.clone())
        .expect("url")
        .initial_stream_window_size(16 << 10)
        .initial_connection_window_size(16 << 10)
        .connect()
        .await
        .expect("connect");
    let mut slow = ControllerClient::new(small_window)
        .watch_containers(v1::WatchContainersRequest {
            since_revision: 0,
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let mut fast = c
        .client
        .watch_containers(v1::WatchContainersRequest {
            since_revision: 0,
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    // Enough changes to fill the slow watcher's stream, transport window and buffer.
    const CHANGES: u64 = 600;
    let mut creator = c.client.clone();
    let creates = tokio::spawn(async move {
        for i in 0..CHANGES {
            creator
                .create_container(pending(&format!("c{i}")))
                .await
                .expect("creates are never held up by a slow watcher");
        }
    });
    let mut last = 0;
    while last < CHANGES {
        let r = next_revision(&mut fast).await;
        assert_eq!(
            r,
            last + 1,
            "the reading watcher sees every change in order"
        );
        last = r;
    }
    creates.await.expect("creates");

    // The slow one gets what fit, then a clear error.
    let mut got = 0;
    let status = loop {
        let next = tokio::time::timeout(Duration::from_secs(5), slow.message()).await;
        let Ok(next) = next else {
            panic!("the slow watcher read {got} changes and then nothing: not cut off");
        };
        match next {
            Ok(Some(e)) => {
                got += 1;
                assert_eq!(e.revision, got);
            }
            Ok(None) => panic!("the slow watcher's stream ended without an error"),
            Err(s) => break s,
        }
    };
    assert!(got < CHANGES, "the slow watcher was never cut off");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
    assert!(
        status.message().contains(&format!("since_revision={got}")),
        "{status}"
    );
    println!("slow watcher read {got} of {CHANGES} changes before it was cut off: {status}");
}
