//! One conformance suite, run against each [`Store`]: the embedded redb file and a real
//! three-member etcd cluster on loopback (started and removed by the test). Every case
//! checks what the controller relies on: a committed batch is all there after reopening,
//! deletes and event compaction apply, the revision is kept, events load in revision
//! order, a large state loads whole, staged batches are all there, in order, after a sync.
//! Then what only etcd has: fencing, a clear error when etcd is unreachable, corrupt
//! records named.

use hutch_controller::store::{
    Batch, EtcdConfig, EtcdStore, Fence, RedbStore, Store, StoreError, Write,
};
use hutch_proto::v1;
use hutch_testkit::{unique, TestEtcd};

/// Opens the store under test again (a fresh handle on the same data).
type Reopen<'a> = &'a dyn Fn() -> Box<dyn Store>;

fn container(name: &str, revision: u64) -> v1::Container {
    v1::Container {
        name: name.into(),
        revision,
        status_message: format!("record {name} at {revision}"),
        ..Default::default()
    }
}

fn event(revision: u64, name: &str) -> v1::WatchEvent {
    v1::WatchEvent {
        revision,
        container: Some(container(name, revision)),
        ..Default::default()
    }
}

fn names(snap: &hutch_controller::store::Snapshot) -> Vec<String> {
    let mut n: Vec<String> = snap.containers.iter().map(|c| c.name.clone()).collect();
    n.sort();
    n
}

fn empty_store_loads_empty(reopen: Reopen) {
    let snap = reopen().load().expect("load");
    assert_eq!(snap.revision, 0);
    assert!(snap.containers.is_empty() && snap.nodes.is_empty());
    assert!(snap.rootfs_specs.is_empty() && snap.events.is_empty());
    assert!(snap.services.is_empty());
}

fn committed_batches_survive_reopening(reopen: Reopen) {
    {
        let store = reopen();
        let mut batch = Batch {
            revision: 12,
            ..Default::default()
        };
        for r in 1..=12 {
            batch.writes.push(Write::Event(event(r, "a")));
        }
        batch.writes.push(Write::PutContainer(container("a", 11)));
        batch.writes.push(Write::PutContainer(container("b", 12)));
        batch.writes.push(Write::PutNode(v1::Node {
            name: "n1".into(),
            last_event_seq: 42,
            ..Default::default()
        }));
        batch.writes.push(Write::PutRootfsSpec(v1::RootfsSpec {
            name: "debian".into(),
            ..Default::default()
        }));
        batch.writes.push(Write::PutService(Box::new(v1::Service {
            name: "web".into(),
            template_revision: 3,
            ..Default::default()
        })));
        store.commit(&batch).expect("commit");
        // A later batch replaces a record, deletes one, compacts events.
        store
            .commit(&Batch {
                writes: vec![
                    Write::PutContainer(container("a", 13)),
                    Write::DeleteContainer("b".into()),
                    Write::Event(event(13, "a")),
                    Write::Event(event(14, "b")),
                ],
                revision: 14,
                drop_events_below: 9,
                ..Default::default()
            })
            .expect("commit");
    }
    let snap = reopen().load().expect("load");
    assert_eq!(snap.revision, 14);
    assert_eq!(names(&snap), vec!["a"]);
    assert_eq!(snap.containers[0].revision, 13, "the later put wins");
    assert_eq!(snap.nodes.len(), 1);
    assert_eq!(snap.nodes[0].last_event_seq, 42);
    assert_eq!(snap.rootfs_specs.len(), 1);
    assert_eq!(snap.services.len(), 1);
    assert_eq!(snap.services[0].template_revision, 3);
    let revs: Vec<u64> = snap.events.iter().map(|e| e.revision).collect();
    // In revision order across digit boundaries (9, 10, ...), 1..=8 compacted away.
    assert_eq!(revs, (9..=14).collect::<Vec<u64>>());
}

fn deletes_of_every_kind_apply(reopen: Reopen) {
    reopen()
        .commit(&Batch {
            writes: vec![
                Write::DeleteNode("n1".into()),
                Write::DeleteRootfsSpec("debian".into()),
                Write::DeleteService("web".into()),
                Write::DeleteContainer("a".into()),
                Write::DeleteContainer("never-there".into()),
            ],
            revision: 15,
            ..Default::default()
        })
        .expect("commit");
    let snap = reopen().load().expect("load");
    assert!(snap.containers.is_empty() && snap.nodes.is_empty() && snap.rootfs_specs.is_empty());
    assert!(snap.services.is_empty());
    assert_eq!(snap.revision, 15);
}

fn a_large_state_loads_whole(reopen: Reopen) {
    let store = reopen();
    let total = 2_400u64;
    let mut revision = 15;
    for chunk in (0..total).collect::<Vec<_>>().chunks(400) {
        let mut batch = Batch::default();
        for i in chunk {
            revision += 1;
            batch.writes.push(Write::PutContainer(container(
                &format!("c{i:05}"),
                revision,
            )));
            batch.writes.push(Write::Event(event(revision, "c")));
        }
        batch.revision = revision;
        store.commit(&batch).expect("commit");
    }
    drop(store);
    let snap = reopen().load().expect("load");
    assert_eq!(snap.containers.len() as u64, total);
    assert_eq!(snap.revision, revision);
    let revs: Vec<u64> = snap.events.iter().map(|e| e.revision).collect();
    assert!(revs.windows(2).all(|w| w[0] < w[1]), "events out of order");
    assert_eq!(revs.last().copied(), Some(revision));
}

fn staged_batches_are_kept_in_order_after_a_sync(reopen: Reopen) {
    let store = reopen();
    let before = store.load().expect("load").revision;
    for (i, name) in ["s1", "s2", "s1"].into_iter().enumerate() {
        let revision = before + 1 + i as u64;
        let batch = Batch {
            writes: vec![
                Write::PutContainer(container(name, revision)),
                Write::Event(event(revision, name)),
            ],
            revision,
            ..Default::default()
        };
        store.stage(&batch).expect("stage");
    }
    store.sync().expect("sync");
    drop(store);
    let snap = reopen().load().expect("load");
    assert_eq!(snap.revision, before + 3);
    let staged: Vec<u64> = snap
        .containers
        .iter()
        .filter(|c| c.name.starts_with('s'))
        .map(|c| c.revision)
        .collect();
    assert_eq!(staged, [before + 3, before + 2], "s1 (replaced), s2");
    assert_eq!(snap.events.last().map(|e| e.revision), Some(before + 3));
}

/// Every case, in order (each builds on the state the one before left).
fn conformance(reopen: Reopen) {
    empty_store_loads_empty(reopen);
    committed_batches_survive_reopening(reopen);
    deletes_of_every_kind_apply(reopen);
    a_large_state_loads_whole(reopen);
    staged_batches_are_kept_in_order_after_a_sync(reopen);
}

#[test]
fn redb_passes_the_store_conformance_suite() {
    let dir = std::path::PathBuf::from(format!("/var/tmp/hutch-test-{}", unique("redb-conf")));
    let reopen = || -> Box<dyn Store> { Box::new(RedbStore::open(&dir).expect("open redb")) };
    conformance(&reopen);
    let _ = std::fs::remove_dir_all(&dir);
}

fn etcd_config(etcd: &TestEtcd, prefix: &str) -> EtcdConfig {
    EtcdConfig {
        endpoints: etcd.endpoints().split(',').map(String::from).collect(),
        prefix: format!("/{prefix}/"),
        ..Default::default()
    }
}

#[test]
fn etcd_passes_the_store_conformance_suite_and_fences_stale_leaders() {
    let mut etcd = TestEtcd::start("store-conf", 3);
    let config = etcd_config(&etcd, &unique("conf"));
    let reopen = || -> Box<dyn Store> {
        Box::new(EtcdStore::connect(config.clone()).expect("connect to etcd"))
    };
    conformance(&reopen);

    // Fencing: a store whose fence no longer matches the leader key writes nothing.
    let fenced = EtcdStore::connect(config.clone()).expect("connect");
    fenced.set_fence(Some(Fence {
        leader_key_revision: 1,
    }));
    let err = fenced
        .commit(&Batch {
            writes: vec![Write::PutContainer(container("stale", 1))],
            revision: 999_999,
            ..Default::default()
        })
        .expect_err("a stale leader's commit must fail");
    assert!(matches!(err, StoreError::NotLeader(_)), "{err}");
    let snap = reopen().load().expect("load");
    assert!(!names(&snap).contains(&"stale".to_string()));
    assert_ne!(
        snap.revision, 999_999,
        "the stale batch's revision was written"
    );

    // A batch made against a revision the store no longer holds (a stale view, after a
    // write whose answer was lost) writes nothing.
    let current = reopen().load().expect("load").revision;
    let err = reopen()
        .commit(&Batch {
            writes: vec![Write::PutContainer(container("stale-view", current + 1))],
            revision: current + 1,
            expect_revision: Some(current.saturating_sub(1)),
            ..Default::default()
        })
        .expect_err("a batch from a stale view must fail");
    assert!(matches!(err, StoreError::NotLeader(_)), "{err}");
    assert!(!names(&reopen().load().expect("load")).contains(&"stale-view".to_string()));
    reopen()
        .commit(&Batch {
            writes: vec![Write::DeleteContainer("nothing".into())],
            revision: current,
            expect_revision: Some(current),
            ..Default::default()
        })
        .expect("a batch from the current view commits");

    // A corrupt record is named, not skipped.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut client = hutch_controller::store::etcd_store::connect(config.clone())
            .await
            .expect("client");
        client
            .put(
                format!("{}containers/broken", config.prefix),
                vec![0xff, 0xff, 0xff],
                None,
            )
            .await
            .expect("put");
    });
    let err = reopen()
        .load()
        .expect_err("a corrupt record must fail the load");
    assert!(err.to_string().contains("broken"), "{err}");

    // One member down: the quorum of two still commits and loads.
    etcd.kill(2);
    let store = reopen_two(&etcd, &config);
    // The two may first elect a new etcd leader (slow on a loaded machine).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while let Err(e) = store.commit(&Batch {
        writes: vec![Write::DeleteContainer("broken".into())],
        revision: 1_000_000,
        ..Default::default()
    }) {
        assert!(
            std::time::Instant::now() < deadline,
            "a quorum of two must commit: {e}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(reopen_two(&etcd, &config).load().is_ok());
    etcd.kill(1);
    let started = std::time::Instant::now();
    let err = store
        .commit(&Batch {
            revision: 1_000_001,
            ..Default::default()
        })
        .expect_err("no quorum: the commit must fail");
    println!("without quorum after {:?}: {err}", started.elapsed());
    assert!(err.to_string().contains("etcd"), "{err}");
    drop(rt);
}

fn reopen_two(etcd: &TestEtcd, config: &EtcdConfig) -> EtcdStore {
    EtcdStore::connect(EtcdConfig {
        endpoints: vec![etcd.endpoint(0), etcd.endpoint(1)],
        ..config.clone()
    })
    .expect("connect to the two members left")
}

#[test]
fn an_unreachable_etcd_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let started = std::time::Instant::now();
    let err = EtcdStore::connect(EtcdConfig {
        endpoints: vec![format!("http://127.0.0.1:{port}")],
        prefix: "/hutch/".into(),
        ..Default::default()
    })
    .err()
    .expect("nothing listens there");
    let text = err.to_string();
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_redb_store_migrates_into_an_empty_etcd_prefix_and_no_other() {
    let etcd = TestEtcd::start("store-migrate", 1);
    let config = etcd_config(&etcd, &unique("migrate"));
    let dir = std::path::PathBuf::from(format!("/var/tmp/hutch-test-{}", unique("redb-mig")));
    let source = RedbStore::open(&dir).expect("open redb");
    let mut batch = Batch {
        revision: 1_203,
        ..Default::default()
    };
    for i in 0..1_200u64 {
        batch
            .writes
            .push(Write::PutContainer(container(&format!("m{i:04}"), i + 1)));
    }
    for r in 1_190..=1_203u64 {
        batch.writes.push(Write::Event(event(r, "m")));
    }
    batch.writes.push(Write::PutNode(v1::Node {
        name: "n1".into(),
        ..Default::default()
    }));
    source.commit(&batch).expect("commit");
    let target = EtcdStore::connect(config.clone()).expect("etcd");
    let mut batches = 0;
    let copied =
        hutch_controller::migrate::migrate(&source, &target, |_, _| batches += 1).expect("migrate");
    assert_eq!(
        (copied.containers, copied.nodes, copied.events),
        (1_200, 1, 14)
    );
    assert!(batches >= 3, "{batches} batches");
    let there = target.load().expect("load");
    let here = source.load().expect("load");
    assert_eq!(there.revision, 1_203);
    assert_eq!(names(&there), names(&here));
    assert_eq!(there.events.len(), 14);
    let again = hutch_controller::migrate::migrate(&source, &target, |_, _| {})
        .expect_err("a target with records is refused");
    assert!(
        again.to_string().contains("already holds records"),
        "{again}"
    );
    drop(source);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_cluster_never_numbers_below_a_revision_its_records_carry() {
    // A copy into the store that stopped before its last batch wrote the counter.
    let dir = std::path::PathBuf::from(format!("/var/tmp/hutch-test-{}", unique("redb-rev")));
    let store = RedbStore::open(&dir).expect("open redb");
    store
        .commit(&Batch {
            writes: vec![
                Write::PutContainer(container("old", 41)),
                Write::Event(event(42, "old")),
            ],
            ..Default::default()
        })
        .expect("commit");
    assert_eq!(store.load().expect("load").revision, 0);
    let cluster = hutch_controller::cluster::Cluster::start(Default::default(), Box::new(store))
        .expect("start");
    assert_eq!(cluster.revision(), 42);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn etcd_over_tls_with_a_client_certificate_works_and_without_one_is_refused() {
    let etcd = TestEtcd::start_tls("store-tls");
    let (ca, cert, key) = etcd.tls_files().expect("tls files");
    let config = EtcdConfig {
        endpoints: vec![etcd.endpoint(0)],
        prefix: format!("/{}/", unique("tls")),
        ca: Some(ca.clone()),
        cert: Some(cert),
        key: Some(key),
    };
    let store = EtcdStore::connect(config.clone()).expect("connect over TLS");
    store
        .commit(&Batch {
            writes: vec![Write::PutContainer(container("over-tls", 1))],
            revision: 1,
            ..Default::default()
        })
        .expect("commit over TLS");
    assert_eq!(names(&store.load().expect("load")), vec!["over-tls"]);
    // The CA but no client certificate: etcd refuses the connection.
    let err = EtcdStore::connect(EtcdConfig {
        cert: None,
        key: None,
        ..config.clone()
    })
    .err()
    .expect("etcd requires a client certificate");
    assert!(err.to_string().contains("etcd https://127.0.0.1"), "{err}");
    // A CA file that does not exist is named.
    let err = EtcdStore::connect(EtcdConfig {
        ca: Some("/nonexistent/ca.crt".into()),
        ..config
    })
    .err()
    .expect("a missing CA file");
    assert!(err.to_string().contains("/nonexistent/ca.crt"), "{err}");
}
