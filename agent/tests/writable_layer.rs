//! Per-container writable layers: a container's writes land in its own overlay upper
//! directory; the shared rootfs and sibling containers never see them. `read_only_rootfs`
//! refuses writes.

use hutch_testkit as common;

use common::{TestHost, ROOTFS};
use hutch_agent::runtime::state::Status;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_stay_in_the_container() {
    let host = TestHost::new("overlay").await;
    let rootfs = host.runtime.store().get(ROOTFS).expect("rootfs").path;
    let marker = format!("hutch-marker-{}", std::process::id());

    let writer = host
        .run_to_end(
            "writer",
            host.spec(&[
                "sh",
                "-c",
                &format!("echo written > /etc/{marker} && rm /etc/hostname && cat /etc/{marker}"),
            ]),
        )
        .await;
    assert_eq!(writer.state.exit_code, Some(0), "{:?}", writer.state);
    assert_eq!(host.stdout("writer").trim(), "written");

    assert!(
        !rootfs.join("etc").join(&marker).exists(),
        "shared rootfs unchanged"
    );
    assert!(
        rootfs.join("etc/hostname").exists(),
        "deletion did not reach the rootfs"
    );
    let upper = host.container_dir("writer").join("upper/etc").join(&marker);
    assert_eq!(
        std::fs::read_to_string(&upper)
            .expect("upper has the write")
            .trim(),
        "written"
    );

    let sibling = host
        .run_to_end(
            "sibling",
            host.spec(&["sh", "-c", &format!("test -e /etc/{marker} && echo seen || echo unseen; test -e /etc/hostname && echo intact")]),
        )
        .await;
    assert_eq!(sibling.state.exit_code, Some(0));
    assert_eq!(host.stdout("sibling"), "unseen\nintact\n");

    host.runtime.remove("writer", false).await.expect("remove");
    assert!(
        !host.container_dir("writer").exists(),
        "remove deletes the writable layer"
    );
    // Its files are deleted just after the answer, in a directory no listing shows.
    let containers = host.state_dir.join("containers");
    let left = || -> Vec<String> {
        std::fs::read_dir(&containers)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("writer"))
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !left().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(
        left(),
        Vec::<String>::new(),
        "the removed container's files"
    );
    assert!(
        !host.runtime.ids().iter().any(|id| id.contains("writer")),
        "{:?}",
        host.runtime.ids()
    );

    // One an agent stopped before deleting (killed mid-way) is deleted at the next start.
    let tomb = containers.join(".removing-sibling-1-1");
    std::fs::create_dir_all(tomb.join("upper/etc")).expect("tomb");
    std::fs::write(tomb.join("upper/etc/file"), "x").expect("tomb file");
    assert!(!host.runtime.ids().iter().any(|id| id.starts_with('.')));
    drop(host.reopen());
    assert!(!tomb.exists(), "a tomb left by an earlier agent is swept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_rootfs_refuses_writes() {
    let host = TestHost::new("rofs").await;
    let mut spec = host.spec(&[
        "sh",
        "-c",
        "touch /etc/x 2>&1; echo tmpfs-ok > /dev/shm/y && cat /dev/shm/y",
    ]);
    spec.read_only_rootfs = true;
    let info = host.run_to_end("ro", spec).await;
    assert_eq!(info.state.status, Status::Exited);
    let out = host.stdout("ro");
    assert!(out.contains("Read-only file system"), "{out}");
    assert!(out.contains("tmpfs-ok"), "/dev/shm stays writable: {out}");
    assert!(
        !host.container_dir("ro").join("upper").exists(),
        "no writable layer was made"
    );
}

/// The audit's disk filler: `dd` of 1.5 GB into a container landed on the host's disk. With
/// a disk limit, the write stops at the limit with ENOSPC inside the container, the host
/// holds no more than the limit for it, and the loop-mounted filesystem goes with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_limit_stops_writes_at_its_size() {
    let host = TestHost::new("disk-limit").await;
    let id = common::unique("disk-limit");
    let limit: u64 = 32 << 20;
    let mut spec = host.spec(&[
        "sh",
        "-c",
        "dd if=/dev/zero of=/big bs=1M count=1536 2>&1 | grep -o 'No space left on device' | head -1; \
         df -k / | tail -1; rm /big && echo small > /etc/after && cat /etc/after",
    ]);
    spec.disk_limit_bytes = Some(limit);
    let info = host.run_to_end(&id, spec).await;
    let out = host.stdout(&id);
    println!("{out}");
    assert_eq!(info.state.exit_code, Some(0), "{:?} {out}", info.state);
    assert!(out.contains("No space left on device"), "{out}");
    assert!(
        out.contains("small"),
        "writes work again once space is freed: {out}"
    );
    // The image holds what was written: at most the limit (sparse, so the 1.5 GB never
    // reached the host).
    let image = host.container_dir(&id).join("disk.img");
    let allocated =
        std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&image).expect("image")) * 512;
    assert!(
        allocated <= limit,
        "{allocated} bytes on the host for a {limit}-byte limit"
    );

    // Too small, and with a read-only rootfs: refused before anything starts.
    let mut tiny = host.spec(&["true"]);
    tiny.disk_limit_bytes = Some(1 << 20);
    let err = host
        .runtime
        .run(&common::unique("tiny"), tiny)
        .await
        .expect_err("tiny");
    assert!(err.to_string().contains("below the minimum"), "{err}");
    let mut ro = host.spec(&["true"]);
    ro.disk_limit_bytes = Some(limit);
    ro.read_only_rootfs = true;
    let err = host
        .runtime
        .run(&common::unique("ro"), ro)
        .await
        .expect_err("ro");
    assert!(err.to_string().contains("read-only"), "{err}");

    host.runtime.remove(&id, true).await.expect("remove");
    host.assert_nothing_left(&id);
    let loops = std::process::Command::new("losetup")
        .arg("-a")
        .output()
        .expect("losetup");
    let loops = String::from_utf8_lossy(&loops.stdout);
    assert!(!loops.contains(&id), "loop device left: {loops}");
}
