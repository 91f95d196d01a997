//! Tutorial: `debootstrap stable rootfs_debian MIRROR`, as a cached store entry: built once
//! for concurrent requests, a cache hit afterwards, nothing left by a failed build, and
//! refused removal while a container uses it.

use hutch_testkit as common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{unique, TestHost, ROOTFS};
use hutch_agent::rootfs::{
    BuildOutcome, BuildProgress, BuildStage, RootfsError, RootfsSource, RootfsStore,
};
use hutch_agent::runtime::RuntimeError;
use tokio::sync::mpsc;

/// A store of the test's own, removed at the end.
struct PrivateStore(PathBuf);

impl Drop for PrivateStore {
    fn drop(&mut self) {
        let left = hutch_agent::mounts::unmount_below(&self.0);
        if left.is_empty() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

async fn collect(mut rx: mpsc::Receiver<BuildProgress>) -> Vec<BuildProgress> {
    let mut all = Vec::new();
    while let Some(p) = rx.recv().await {
        all.push(p);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debootstrap_builds_once_then_hits_the_cache() {
    let dir = PrivateStore(PathBuf::from(format!(
        "/var/tmp/hutch-test-store-{}",
        unique("deb")
    )));
    let store = RootfsStore::open(&dir.0).expect("store");
    let source = RootfsSource::default_debian();

    let (tx1, rx1) = mpsc::channel(1024);
    let (tx2, rx2) = mpsc::channel(1024);
    let started = Instant::now();
    let (a, b, p1, p2) = tokio::join!(
        store.build("debian", &source, Some(tx1)),
        store.build("debian-too", &source, Some(tx2)),
        collect(rx1),
        collect(rx2)
    );
    let cold = started.elapsed();
    let (a, b) = (a.expect("first build"), b.expect("second build"));
    let outcomes: BTreeSet<String> = [a.outcome, b.outcome]
        .iter()
        .map(|o| format!("{o:?}"))
        .collect();
    assert_eq!(
        outcomes,
        ["Built", "Joined"].iter().map(|s| s.to_string()).collect()
    );
    assert_eq!(a.info.key, b.info.key, "one entry for one source");
    assert_eq!(store.entry_keys(), vec![a.info.key.clone()], "built once");
    println!(
        "cold debootstrap (two concurrent requests): {:.1}s",
        cold.as_secs_f64()
    );

    for progress in [&p1, &p2] {
        let downloading = progress
            .iter()
            .filter(|p| p.stage == BuildStage::Downloading)
            .count();
        assert!(
            downloading > 10,
            "package downloads reported: {downloading}"
        );
        let unpacking = progress
            .iter()
            .find(|p| p.stage == BuildStage::Unpacking && p.packages_total.is_some())
            .expect("unpacking with a total");
        assert!(unpacking.packages_total.unwrap_or(0) > 50, "{unpacking:?}");
        assert_eq!(progress.last().map(|p| p.stage), Some(BuildStage::Done));
    }
    let log = std::fs::read_to_string(store.log_path(&a.info.key)).expect("build log kept");
    assert!(log.contains("Base system installed successfully"));
    assert!(
        a.info.path.join("bin/ps").exists() || a.info.path.join("usr/bin/ps").exists(),
        "procps included"
    );
    assert!(a.info.size_bytes > 50 << 20);

    let started = Instant::now();
    let cached = store.build("debian", &source, None).await.expect("cached");
    let lookup = started.elapsed();
    println!(
        "cached rootfs lookup: {:.2} ms",
        lookup.as_secs_f64() * 1000.0
    );
    assert_eq!(cached.outcome, BuildOutcome::Cached);
    assert_eq!(cached.info.key, a.info.key);
    assert!(lookup < Duration::from_secs(2));

    let bad = RootfsSource::Debootstrap {
        suite: "no-such-suite-hutch".into(),
        variant: "minbase".into(),
        include: vec![],
        arch: String::new(),
        mirror: String::new(),
    };
    let e = store
        .build("broken", &bad, None)
        .await
        .expect_err("bad suite");
    println!("bad suite: {e}");
    assert!(
        matches!(&e, RootfsError::BuildFailed { step, .. } if step == "debootstrap"),
        "{e:?}"
    );
    assert_eq!(
        store.entry_keys(),
        vec![a.info.key.clone()],
        "no entry from the failed build"
    );
    assert_eq!(
        store.names(),
        vec!["debian".to_string(), "debian-too".to_string()]
    );
    assert!(
        store.builds_in_progress().is_empty(),
        "no half-built tree left"
    );
    assert!(matches!(
        store.get("broken"),
        Err(RootfsError::NotFound { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rootfs_in_use_cannot_be_removed() {
    let shared = TestHost::new("rootfsinuse-src").await;
    let source_tree = shared.runtime.store().get(ROOTFS).expect("shared").path;
    let store_dir = PrivateStore(PathBuf::from(format!(
        "/var/tmp/hutch-test-store-{}",
        unique("inuse")
    )));
    let host = TestHost::with_rootfs_dir("rootfsinuse", store_dir.0.clone());
    host.runtime
        .store()
        .build("copy", &RootfsSource::Directory { path: source_tree }, None)
        .await
        .expect("directory source");
    let mut spec = host.spec(&["sleep", "60"]);
    spec.rootfs = "copy".into();
    host.runtime.run("user", spec).await.expect("run");

    let e = host.runtime.remove_rootfs("copy").expect_err("in use");
    assert!(
        matches!(e, RuntimeError::Rootfs(RootfsError::InUse { .. })),
        "{e:?}"
    );
    assert!(e.to_string().contains("user"), "names the container: {e}");

    host.runtime
        .remove("user", true)
        .await
        .expect("remove container");
    let key = host.runtime.store().get("copy").expect("still there").key;
    host.runtime.remove_rootfs("copy").expect("now removable");
    assert!(
        host.runtime.store().entry_keys().iter().all(|k| *k != key),
        "entry deleted"
    );
    assert!(matches!(
        host.runtime.store().get("copy"),
        Err(RootfsError::NotFound { .. })
    ));
}
