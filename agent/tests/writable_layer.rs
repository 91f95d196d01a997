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
