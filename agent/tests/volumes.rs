//! Mounts on real containers: a named volume outlives its container and the next one reads
//! it; a read-only bind refuses writes; a bind outside the node's allowed paths (or of
//! hutch's own state, or through a symlink that leaves them) is PERMISSION_DENIED; a tmpfs
//! has its size; mounts are nosuid and nodev; a symlink in the rootfs cannot send a mount
//! onto the node; a volume in use cannot be removed; nothing is left mounted afterwards.

use hutch_testkit as common;

use common::TestHost;
use hutch_agent::runtime::{ErrorClass, RuntimeError};
use hutch_core::mounts::{parse_tmpfs_flag, Mount};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_volume_outlives_its_container() {
    let host = TestHost::new("volkeep").await;
    let mut spec = host.spec(&["sh", "-c", "echo kept > /data/file && echo written"]);
    spec.mounts.push(Mount::volume("keep", "/data", false));
    let end = host.run_to_end("writer", spec).await;
    assert_eq!(end.state.exit_code, Some(0), "{}", host.stdout("writer"));
    // In use by an ended container that is not removed: refused, as Docker refuses.
    let refused = host.runtime.remove_volume("keep").expect_err("in use");
    assert_eq!(refused.class(), ErrorClass::FailedPrecondition, "{refused}");
    assert!(refused.to_string().contains("writer"), "{refused}");
    host.runtime.remove("writer", false).await.expect("rm");
    host.assert_nothing_left("writer");

    let mut spec = host.spec(&["cat", "/data/file"]);
    spec.mounts.push(Mount::volume("keep", "/data", true));
    let end = host.run_to_end("reader", spec).await;
    assert_eq!(end.state.exit_code, Some(0));
    assert_eq!(host.stdout("reader"), "kept\n");
    host.runtime.remove("reader", false).await.expect("rm");

    let data = host.runtime.volumes().get("keep").expect("volume").data;
    host.runtime.remove_volume("keep").expect("remove");
    assert!(!data.exists(), "the data went with the volume");
    host.assert_nothing_left("reader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binds_read_only_and_allowed_paths() {
    let host = TestHost::new("volbind").await;
    let dir = TestHost::bind_dir("volbind");
    std::fs::write(dir.join("hello"), "from the node\n").expect("write");

    // Read-only: readable, a write fails inside; the flags are nosuid,nodev and ro.
    let mut spec = host.spec(&[
        "sh",
        "-c",
        "cat /site/hello; if echo x > /site/new; then echo WROTE; fi; grep ' /site ' /proc/self/mountinfo",
    ]);
    spec.mounts
        .push(Mount::bind(dir.display().to_string(), "/site", true));
    let end = host.run_to_end("ro", spec).await;
    let out = host.stdout("ro");
    println!("{out}");
    assert_eq!(end.state.exit_code, Some(0), "{out}");
    assert!(out.starts_with("from the node\n"), "{out}");
    assert!(
        !out.contains("WROTE"),
        "a read-only bind took a write: {out}"
    );
    assert!(!dir.join("new").exists());
    let options = out.lines().last().unwrap_or_default();
    for flag in ["ro", "nosuid", "nodev"] {
        assert!(
            options.split([' ', ',']).any(|f| f == flag),
            "{flag} missing in {options}"
        );
    }
    host.runtime.remove("ro", false).await.expect("rm");
    host.assert_nothing_left("ro");

    // A file bound read-write: written through.
    let mut spec = host.spec(&["sh", "-c", "echo changed > /etc/greeting"]);
    spec.mounts.push(Mount::bind(
        dir.join("hello").display().to_string(),
        "/etc/greeting",
        false,
    ));
    let end = host.run_to_end("rwfile", spec).await;
    assert_eq!(end.state.exit_code, Some(0), "{}", host.stdout("rwfile"));
    assert_eq!(
        std::fs::read_to_string(dir.join("hello")).expect("read"),
        "changed\n"
    );
    host.runtime.remove("rwfile", false).await.expect("rm");

    // Outside the allowed paths, hutch's own state, and a symlink out of the allowed
    // directory: each refused before anything is made.
    std::os::unix::fs::symlink("/etc", dir.join("to-etc")).expect("symlink");
    let state = host.state_dir.display().to_string();
    for (i, source) in [
        "/etc".to_string(),
        "/".to_string(),
        state,
        dir.join("to-etc").display().to_string(),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("denied{i}");
        let mut spec = host.spec(&["true"]);
        spec.mounts.push(Mount::bind(source.clone(), "/x", false));
        let e = host.runtime.run(&id, spec).await.expect_err("denied");
        println!("{source}: {e}");
        assert_eq!(e.class(), ErrorClass::PermissionDenied, "{source}: {e}");
        assert!(!host.container_dir(&id).exists());
    }
    // A missing source is the request's fault.
    let mut spec = host.spec(&["true"]);
    spec.mounts.push(Mount::bind(
        dir.join("missing").display().to_string(),
        "/x",
        false,
    ));
    let e = host
        .runtime
        .run("missing", spec)
        .await
        .expect_err("missing");
    assert_eq!(e.class(), ErrorClass::InvalidArgument, "{e}");
    assert!(e.to_string().contains("does not exist"), "{e}");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tmpfs_and_targets_through_symlinks() {
    let host = TestHost::new("voltmpfs").await;
    // /etc/alternatives-like absolute symlink in the writable layer of a first container is
    // not shared with the next (fresh layer), so the rootfs's own links are what matter:
    // /bin -> usr/bin in Debian's rootfs. A tmpfs at /bin/sub lands in the rootfs's
    // /usr/bin/sub, never on the node.
    let mut spec = host.spec(&[
        "sh",
        "-c",
        "df -k /scratch | tail -1; grep ' /scratch ' /proc/self/mountinfo; grep -c ' /usr/bin/sub ' /proc/self/mountinfo",
    ]);
    spec.mounts
        .push(parse_tmpfs_flag("/scratch:size=4m,noexec").expect("tmpfs"));
    spec.mounts.push(Mount::tmpfs("/bin/sub"));
    let end = host.run_to_end("tmp", spec).await;
    let out = host.stdout("tmp");
    println!("{out}");
    assert_eq!(end.state.exit_code, Some(0), "{out}");
    let mut lines = out.lines();
    let df = lines.next().unwrap_or_default();
    assert!(df.split_whitespace().nth(1) == Some("4096"), "size: {df}");
    let flags = lines.next().unwrap_or_default();
    for flag in ["noexec", "nosuid", "nodev"] {
        assert!(
            flags.split([' ', ',']).any(|f| f == flag),
            "{flag}: {flags}"
        );
    }
    assert_eq!(
        lines.next(),
        Some("1"),
        "the tmpfs followed /bin inside the root"
    );
    assert!(
        !std::path::Path::new("/usr/bin/sub").exists(),
        "made on the node"
    );
    host.runtime.remove("tmp", false).await.expect("rm");
    host.assert_nothing_left("tmp");

    // Mounts need a mount namespace of their own.
    let mut spec = host.spec(&["true"]);
    spec.namespaces = vec![hutch_core::spec::Namespace::Pid];
    spec.mounts.push(Mount::tmpfs("/scratch"));
    let e = host.runtime.run("nomnt", spec).await.expect_err("refused");
    assert!(matches!(e, RuntimeError::InvalidSpec(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_namespaces_kernel_filesystems_and_read_only_roots() {
    let host = TestHost::new("volns").await;
    // A container whose root is an unprivileged node user writes to a fresh volume: the
    // volume is given to that user.
    let mut spec = host.spec(&["sh", "-c", "echo mine > /data/f && id -u"]);
    spec.namespaces.push(hutch_core::spec::Namespace::User);
    spec.mounts.push(Mount::volume("nsvol", "/data", false));
    let end = host.run_to_end("userns", spec).await;
    assert_eq!(end.state.exit_code, Some(0), "{}", host.stdout("userns"));
    assert_eq!(host.stdout("userns"), "0\n");
    let data = host.runtime.volumes().get("nsvol").expect("volume").data;
    assert_eq!(
        std::fs::read_to_string(data.join("f")).expect("f"),
        "mine\n"
    );
    // The store keeps the node's other users out (a setuid file in a volume stays there).
    let store = data.parent().and_then(|p| p.parent()).expect("store");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(store).expect("store").permissions(),
    );
    assert_eq!(mode & 0o777, 0o700, "{}", store.display());
    host.runtime.remove("userns", false).await.expect("rm");
    host.runtime.remove_volume("nsvol").expect("rm volume");

    // proc mounted inside an allowed directory is still the node's proc: refused by type.
    let dir = TestHost::bind_dir("volns");
    let proc_dir = dir.join("proc");
    std::fs::create_dir(&proc_dir).expect("mkdir");
    nix::mount::mount(
        Some("proc"),
        &proc_dir,
        Some("proc"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .expect("mount proc");
    let mut spec = host.spec(&["true"]);
    spec.mounts.push(Mount::bind(
        proc_dir.display().to_string(),
        "/hostproc",
        false,
    ));
    let refused = host.runtime.run("kproc", spec).await;
    nix::mount::umount2(&proc_dir, nix::mount::MntFlags::MNT_DETACH).expect("umount");
    let e = refused.expect_err("proc refused");
    println!("{e}");
    assert!(e.to_string().contains("proc filesystem"), "{e}");
    assert!(!host.container_dir("kproc").exists(), "nothing left");

    // A read-only rootfs without the target: said so.
    let mut spec = host.spec(&["true"]);
    spec.read_only_rootfs = true;
    spec.mounts.push(Mount::tmpfs("/not-in-debian"));
    let e = host
        .runtime
        .run("rotarget", spec)
        .await
        .expect_err("refused");
    assert!(e.to_string().contains("read-only"), "{e}");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
