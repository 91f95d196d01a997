//! The other rootfs sources: a local tarball (`.tar.zst` here), and the tutorial's
//! initramfs (`gzip -dc initrd.img | cpio -id`), including the early-microcode layout of
//! Debian's own initrd images. Each is built and then used to run a container.

use hutch_testkit as common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{unique, TestHost, ROOTFS};
use hutch_agent::rootfs::{BuildStage, RootfsSource};

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = hutch_agent::mounts::unmount_below(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sh(script: &str) {
    let status = Command::new("sh")
        .args(["-ec", script])
        .status()
        .expect("sh");
    assert!(status.success(), "{script}");
}

async fn run_cat_version(host: &TestHost, rootfs: &str, id: &str) -> String {
    let mut spec = host.spec(&["cat", "/etc/debian_version"]);
    spec.rootfs = rootfs.into();
    let info = host.run_to_end(id, spec).await;
    assert_eq!(info.state.exit_code, Some(0), "{:?}", info.state);
    host.stdout(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tarball_and_initramfs_sources_make_working_rootfs() {
    let shared = TestHost::new("sources-src").await;
    let tree = shared.runtime.store().get(ROOTFS).expect("shared").path;
    let expected = std::fs::read_to_string(tree.join("etc/debian_version")).expect("version");
    let scratch = Scratch(PathBuf::from(format!(
        "/var/tmp/hutch-test-sources-{}",
        unique("s")
    )));
    std::fs::create_dir_all(scratch.0.join("early/kernel/x86/microcode")).expect("mkdir");
    std::fs::write(
        scratch
            .0
            .join("early/kernel/x86/microcode/GenuineIntel.bin"),
        b"fake microcode",
    )
    .expect("write");
    let t = tree.display();
    let s = scratch.0.display();
    sh(&format!("tar -C {t} --zstd -cf {s}/rootfs.tar.zst ."));
    // Like Debian's initrd.img: an uncompressed early cpio, then the gzip'd main archive.
    sh(&format!(
        "cd {s}/early && find . | cpio -o -H newc --quiet > {s}/initrd.img; \
         cd {t} && find . | cpio -o -H newc --quiet | gzip -1 >> {s}/initrd.img"
    ));

    let host = TestHost::with_rootfs_dir("sources", scratch.0.join("store"));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<hutch_agent::rootfs::BuildProgress>(4096);
    let progress = tokio::spawn(async move {
        let mut saw_bytes = false;
        while let Some(p) = rx.recv().await {
            saw_bytes |= p.stage == BuildStage::Copying
                && p.bytes_total.is_some_and(|t| t > 0)
                && p.bytes_done.is_some();
        }
        saw_bytes
    });
    let tar = host
        .runtime
        .store()
        .build(
            "from-tar",
            &RootfsSource::Tarball {
                path: scratch.0.join("rootfs.tar.zst"),
            },
            Some(tx),
        )
        .await
        .expect("tarball");
    assert!(
        progress.await.expect("progress task"),
        "byte progress reported"
    );
    assert!(tar.info.size_bytes > 50 << 20);
    assert_eq!(run_cat_version(&host, "from-tar", "tar").await, expected);

    let initrd = host
        .runtime
        .store()
        .build(
            "from-initrd",
            &RootfsSource::Initramfs {
                path: scratch.0.join("initrd.img"),
            },
            None,
        )
        .await
        .expect("initramfs");
    assert!(
        Path::new(&initrd.info.path)
            .join("kernel/x86/microcode/GenuineIntel.bin")
            .exists(),
        "early archive extracted"
    );
    assert_eq!(
        run_cat_version(&host, "from-initrd", "initrd").await,
        expected
    );

    let garbage = scratch.0.join("garbage.img");
    std::fs::write(&garbage, b"this is not an initramfs").expect("write");
    let e = host
        .runtime
        .store()
        .build("garbage", &RootfsSource::Initramfs { path: garbage }, None)
        .await
        .expect_err("garbage");
    assert!(e.to_string().contains("not an initramfs"), "{e}");
    assert!(host.runtime.store().builds_in_progress().is_empty());
}
