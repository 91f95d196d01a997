//! OCI images as rootfs, on a real runtime: images made here (busybox from Debian's
//! `busybox-static`, crafted layers), imported into a store of the test's own, run with their
//! defaults and with overrides; whiteouts and opaque directories; layers shared between
//! images and collected when no rootfs uses them; malicious layers refused with nothing
//! written outside; and every kind of bad image answered with its own gRPC code.

use hutch_testkit as common;

use std::path::{Path, PathBuf};

use common::images::{busybox_layer, layer_tar, Compress, Item, Layout};
use common::{unique, TestHost};
use hutch_agent::rootfs::image::ImageOptions;
use hutch_agent::rootfs::{BuildOutcome, RootfsError, RootfsSource, RootfsStore};
use hutch_agent::spec::ContainerSpec;
use serde_json::json;

/// A directory of the test's own (`/var/tmp/hutch-test-img-NAME-PID-N`), removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir = PathBuf::from(format!("/var/tmp/hutch-test-img-{}", unique(test)));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = hutch_agent::mounts::unmount_below(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn image(reference: &str) -> RootfsSource {
    RootfsSource::Image {
        reference: reference.into(),
        platform: String::new(),
        credentials: String::new(),
    }
}

/// Layer directories in a store.
fn layer_dirs(store: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(store.join("layers"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.len() == 64) // not the short links' `l/`
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The store holds no half-done build or layer.
fn assert_no_partial(store: &Path) {
    let tmp: Vec<_> = std::fs::read_dir(store.join("tmp"))
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(tmp.is_empty(), "left in tmp/: {tmp:?}");
}

async fn run_out(host: &TestHost, id: &str, spec: ContainerSpec) -> String {
    let info = host.run_to_end(id, spec).await;
    assert_eq!(info.state.exit_code, Some(0), "{id}: {:?}", info.state);
    let out = host.stdout(id);
    host.runtime.remove(id, false).await.expect("remove");
    out
}

fn spec_on(rootfs: &str, command: &[&str]) -> ContainerSpec {
    ContainerSpec::new(rootfs, command.iter().copied())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_runs_with_its_defaults_and_with_overrides() {
    let scratch = Scratch::new("img-defaults");
    let layout = Layout::create(&scratch.0.join("layout"));
    let app = layer_tar(&[
        Item::Dir("srv".into()),
        Item::file("srv/hello", "from the second layer\n"),
    ]);
    layout.add_image(
        "v1",
        &[(busybox_layer(), Compress::Gzip), (app, Compress::Zstd)],
        json!({
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["echo from-image; pwd; id -u; echo $GREETING; cat hello"],
            "Env": ["PATH=/bin", "GREETING=hello"],
            "WorkingDir": "/srv",
            "User": "1000:1000",
            "ExposedPorts": {"8080/tcp": {}},
        }),
    );
    let host = TestHost::with_rootfs_dir("img-defaults", scratch.0.join("store"));
    let built = host
        .runtime
        .store()
        .build("bb", &image(&layout.reference("v1")), None)
        .await
        .expect("import");
    assert_eq!(built.outcome, BuildOutcome::Built);
    let meta = built.info.image.clone().expect("an image entry");
    assert_eq!(meta.layers.len(), 2);
    assert_eq!(meta.config.exposed_ports, ["8080/tcp"]);
    assert_eq!(built.info.layers.len(), 2, "two lower directories");
    assert!(
        built.info.layers[0].ends_with(format!(
            "{}/diff",
            meta.layers[1].diff_id.trim_start_matches("sha256:")
        )),
        "the top layer comes first: {:?}",
        built.info.layers
    );

    // No command: Entrypoint + Cmd, in WorkingDir, as User, with Env.
    let out = run_out(&host, "defaults", spec_on("bb", &[])).await;
    assert_eq!(
        out,
        "from-image\n/srv\n1000\nhello\nfrom the second layer\n"
    );
    // A command replaces Cmd and follows the Entrypoint; the spec's env wins.
    let mut spec = spec_on("bb", &["echo $GREETING; id -u"]);
    spec.env.insert("GREETING".into(), "mine".into());
    spec.security.run_as_user = Some(0);
    assert_eq!(run_out(&host, "command", spec).await, "mine\n0\n");
    // --entrypoint: the image's Cmd goes too.
    let mut spec = spec_on("bb", &["a", "b"]);
    spec.entrypoint = Some(vec!["/bin/echo".into()]);
    assert_eq!(run_out(&host, "entrypoint", spec).await, "a b\n");
    // A cleared Entrypoint and no command: nothing to run, refused.
    let mut spec = spec_on("bb", &[]);
    spec.entrypoint = Some(vec![]);
    let e = host
        .runtime
        .run("nothing", spec)
        .await
        .expect_err("no argv");
    assert!(e.to_string().contains("command is empty"), "{e}");
    host.assert_nothing_left("nothing");

    // Read-only: the layers as a read-only overlay.
    let mut spec = spec_on(
        "bb",
        &["cat /srv/hello && ! touch /srv/x 2>/dev/null && echo ro"],
    );
    spec.read_only_rootfs = true;
    assert_eq!(
        run_out(&host, "read-only", spec).await,
        "from the second layer\nro\n"
    );
    // Writes go to the container's layer, never to the shared layers.
    // (As root: the image's user 1000 may not write root's file.)
    let mut spec = spec_on("bb", &["echo changed > /srv/hello && cat /srv/hello"]);
    spec.security.run_as_user = Some(0);
    assert_eq!(run_out(&host, "writer", spec).await, "changed\n");
    assert_eq!(
        run_out(&host, "reader", spec_on("bb", &["cat /srv/hello"])).await,
        "from the second layer\n"
    );

    // The reference itself as the rootfs: imported under its derived name, once.
    let reference = layout.reference("v1");
    let out = run_out(&host, "by-reference", spec_on(&reference, &["echo direct"])).await;
    assert_eq!(out, "direct\n");
    let derived = hutch_core::image_ref::ImageRef::rootfs_name(&reference);
    let again = host
        .runtime
        .store()
        .get(&derived)
        .expect("imported under its name");
    assert_eq!(
        again.key,
        host.runtime.store().get("bb").expect("bb").key,
        "one entry"
    );
    host.assert_nothing_left("by-reference");
    assert_no_partial(&scratch.0.join("store"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whiteouts_and_opaque_directories_hide_lower_files() {
    let scratch = Scratch::new("img-whiteout");
    let layout = Layout::create(&scratch.0.join("layout"));
    let lower = layer_tar(&[
        Item::Dir("data".into()),
        Item::file("data/a", "a"),
        Item::file("data/b", "b"),
        Item::Dir("opq".into()),
        Item::file("opq/old", "old"),
        Item::Dir("opq/sub".into()),
        Item::file("opq/sub/deep", "deep"),
        Item::Dir("gone".into()),
        Item::file("gone/x", "x"),
    ]);
    let upper = layer_tar(&[
        Item::Whiteout("data/a".into()),
        Item::Opaque("opq".into()),
        Item::file("opq/new", "new"),
        Item::Whiteout("gone".into()),
        // A file and its whiteout's replacement in one later layer.
        Item::file("data/c", "c"),
    ]);
    layout.add_image(
        "w",
        &[
            (busybox_layer(), Compress::None),
            (lower, Compress::Gzip),
            (upper, Compress::Gzip),
        ],
        json!({"Env": ["PATH=/bin"]}),
    );
    let host = TestHost::with_rootfs_dir("img-whiteout", scratch.0.join("store"));
    host.runtime
        .store()
        .build("w", &image(&layout.reference("w")), None)
        .await
        .expect("import");
    let out = run_out(
        &host,
        "look",
        spec_on(
            "w",
            &[
                "/bin/sh",
                "-c",
                "ls /data; echo -; ls /opq; echo -; ls -d /gone 2>&1 || echo no-gone",
            ],
        ),
    )
    .await;
    assert_eq!(
        out,
        "b\nc\n-\nnew\n-\nls: /gone: No such file or directory\nno-gone\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_share_layers_on_disk_and_unused_layers_are_collected() {
    let scratch = Scratch::new("img-share");
    let layout = Layout::create(&scratch.0.join("layout"));
    let base = busybox_layer();
    for tag in ["a", "b"] {
        let own = layer_tar(&[Item::file(&format!("{tag}.txt"), tag)]);
        layout.add_image(
            tag,
            &[(base.clone(), Compress::Gzip), (own, Compress::Gzip)],
            json!({"Cmd": ["/bin/cat", format!("/{tag}.txt")]}),
        );
    }
    let store_dir = scratch.0.join("store");
    let host = TestHost::with_rootfs_dir("img-share", store_dir.clone());
    let store = host.runtime.store();
    // The same reference twice at once: one import, the other joins it.
    let source_a = image(&layout.reference("a"));
    let (one, two) = tokio::join!(
        store.build("a", &source_a, None),
        store.build("a2", &source_a, None)
    );
    let outcomes = [one.expect("a").outcome, two.expect("a2").outcome];
    assert!(
        outcomes.contains(&BuildOutcome::Built)
            && outcomes
                .iter()
                .any(|o| matches!(o, BuildOutcome::Joined | BuildOutcome::Cached)),
        "{outcomes:?}"
    );
    assert_eq!(layer_dirs(&store_dir).len(), 2);
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    store
        .build("b", &image(&layout.reference("b")), Some(tx))
        .await
        .expect("b");
    let mut shared = false;
    while let Ok(p) = rx.try_recv() {
        shared |= p.message.contains("already on the node");
    }
    assert!(shared, "the base layer was not unpacked again");
    assert_eq!(
        layer_dirs(&store_dir).len(),
        3,
        "one base layer for two images"
    );
    assert_eq!(run_out(&host, "run-b", spec_on("b", &[])).await, "b\n");

    // A rootfs in use keeps its layers; the last name of an image takes them along.
    store.remove("a", &[]).expect("rm a");
    assert_eq!(layer_dirs(&store_dir).len(), 3, "a2 still names image a");
    store.remove("a2", &[]).expect("rm a2");
    assert_eq!(layer_dirs(&store_dir).len(), 2, "a's own layer collected");
    let e = store.remove("b", &["c1".to_string()]).expect_err("in use");
    assert!(matches!(e, RootfsError::InUse { .. }));
    store.remove("b", &[]).expect("rm b");
    assert!(layer_dirs(&store_dir).is_empty(), "every layer collected");
    let links: Vec<_> = std::fs::read_dir(store_dir.join("layers/l"))
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(links.is_empty(), "short links left: {links:?}");
    assert_no_partial(&store_dir);
}

/// A store with small limits, to refuse layers in.
fn strict_store(dir: &Path) -> RootfsStore {
    RootfsStore::open(dir)
        .expect("store")
        .with_image_options(ImageOptions {
            max_image_bytes: 1 << 20,
            ..ImageOptions::default()
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malicious_layers_are_refused_and_nothing_is_written_outside() {
    let scratch = Scratch::new("img-evil");
    let outside = scratch.0.join("outside");
    std::fs::create_dir_all(&outside).expect("outside");
    std::fs::write(outside.join("victim"), "untouched").expect("victim");
    let out = outside.display().to_string();
    let layout = Layout::create(&scratch.0.join("layout"));
    let cases: Vec<(&str, Vec<Item>, &str)> = vec![
        ("dotdot", vec![Item::file("../escape", "x")], "'..'"),
        (
            "dotdot-deep",
            vec![Item::Dir("a".into()), Item::file("a/../../escape", "x")],
            "'..'",
        ),
        (
            "symlink-abs",
            vec![
                Item::Symlink("link".into(), out.clone()),
                Item::file("link/pwned", "x"),
            ],
            "symlink",
        ),
        (
            "symlink-rel",
            vec![
                Item::Symlink("up".into(), "../../../../../../../../..".into()),
                Item::file(&format!("up{out}/pwned"), "x"),
            ],
            "symlink",
        ),
        (
            "hardlink-out",
            vec![Item::Hardlink("hl".into(), "/etc/shadow".into())],
            "hard link",
        ),
        (
            "hardlink-dotdot",
            vec![Item::Hardlink("hl".into(), "../../../etc/shadow".into())],
            "'..'",
        ),
        (
            "device",
            vec![Item::CharDevice("dev-null".into())],
            "device node",
        ),
        // A long name of 1 GiB: refused from its header, never read into memory.
        (
            "long-name",
            vec![Item::ExtensionHeader(b'L', 1 << 30)],
            "extension header",
        ),
        ("bomb", vec![Item::Zeros("big".into(), 3 << 20)], "limit"),
    ];
    for (tag, items, _) in &cases {
        layout.add_image(tag, &[(layer_tar(items), Compress::Gzip)], json!({}));
    }
    // Replacing a planted symlink writes a new file, never through the link.
    layout.add_image(
        "replace-link",
        &[(
            layer_tar(&[
                Item::Symlink("victim".into(), format!("{out}/victim")),
                Item::file("victim", "overwritten?"),
            ]),
            Compress::Gzip,
        )],
        json!({}),
    );
    // Extended attributes: a user's and a capability are kept, overlayfs's own never (an
    // image could otherwise redirect or hide what the layers below hold).
    layout.add_image(
        "xattrs",
        &[(
            layer_tar(&[Item::FileWithXattrs(
                "f".into(),
                b"x".to_vec(),
                vec![
                    ("user.hutch".into(), "kept".into()),
                    ("trusted.overlay.opaque".into(), "y".into()),
                    ("trusted.overlay.redirect".into(), "/etc".into()),
                ],
            )]),
            Compress::Gzip,
        )],
        json!({}),
    );
    let store_dir = scratch.0.join("store");
    let store = strict_store(&store_dir);
    let built = store
        .build("xattrs", &image(&layout.reference("xattrs")), None)
        .await
        .expect("xattrs");
    let f = built.info.path.join("f");
    assert_eq!(
        xattr_of(&f, "user.hutch").as_deref(),
        Some(b"kept".as_slice())
    );
    assert_eq!(xattr_of(&f, "trusted.overlay.opaque"), None);
    assert_eq!(xattr_of(&f, "trusted.overlay.redirect"), None);
    store.remove("xattrs", &[]).expect("rm");
    for (tag, _, why) in &cases {
        let e = store
            .build(tag, &image(&layout.reference(tag)), None)
            .await
            .expect_err(tag);
        let text = e.to_string();
        assert!(text.contains(why), "{tag}: {text}");
        let code = hutch_agent::runtime::RuntimeError::Rootfs(e).class();
        let expected = if *tag == "bomb" {
            hutch_agent::runtime::ErrorClass::ResourceExhausted
        } else {
            hutch_agent::runtime::ErrorClass::InvalidArgument
        };
        assert_eq!(code, expected, "{tag}: {text}");
        assert!(layer_dirs(&store_dir).is_empty(), "{tag}: a layer was kept");
        assert!(store.get(tag).is_err(), "{tag}: named anyway");
        assert_no_partial(&store_dir);
    }
    store
        .build(
            "replace-link",
            &image(&layout.reference("replace-link")),
            None,
        )
        .await
        .expect("a replaced symlink is fine");
    let names: Vec<_> = std::fs::read_dir(&outside)
        .expect("outside")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["victim"], "nothing written outside");
    assert_eq!(
        std::fs::read_to_string(outside.join("victim")).expect("victim"),
        "untouched"
    );
    assert!(!Path::new("/escape").exists() && !scratch.0.join("escape").exists());

    // An agent that allows device nodes creates them.
    let lenient = RootfsStore::open(scratch.0.join("lenient"))
        .expect("store")
        .with_image_options(ImageOptions {
            allow_devices: true,
            ..ImageOptions::default()
        });
    let built = lenient
        .build("dev", &image(&layout.reference("device")), None)
        .await
        .expect("devices allowed");
    use std::os::unix::fs::FileTypeExt;
    let node = built.info.path.join("dev-null");
    assert!(std::fs::symlink_metadata(&node)
        .expect("node")
        .file_type()
        .is_char_device());
}

/// An extended attribute of `path`, if it has it.
fn xattr_of(path: &Path, name: &str) -> Option<Vec<u8>> {
    xattr::get(path, name).ok().flatten()
}

/// Rewrites the manifest that `tag` names with `edit`, re-pointing the index at it.
fn edit_manifest(layout: &Layout, tag: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    let index_path = layout.dir.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).expect("index")).expect("json");
    let entry = index["manifests"]
        .as_array_mut()
        .expect("manifests")
        .iter_mut()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .expect("tag");
    let digest = entry["digest"].as_str().expect("digest").to_string();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.blob_path(&digest)).expect("manifest"))
            .expect("json");
    edit(&mut manifest);
    let bytes = serde_json::to_vec(&manifest).expect("json");
    entry["digest"] = json!(layout.blob(&bytes));
    entry["size"] = json!(bytes.len());
    std::fs::write(&index_path, serde_json::to_vec(&index).expect("json")).expect("index");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_images_get_precise_errors_and_leave_nothing() {
    use hutch_agent::runtime::{ErrorClass, RuntimeError};
    let scratch = Scratch::new("img-bad");
    let layout = Layout::create(&scratch.0.join("layout"));
    let small = layer_tar(&[Item::file("f", "content")]);
    layout.add_image("ok", &[(small.clone(), Compress::Gzip)], json!({}));
    layout.add_image("corrupt", &[(small.clone(), Compress::None)], json!({}));
    layout.add_image_for(
        "arm",
        &[(small.clone(), Compress::Gzip)],
        json!({}),
        "arm64",
    );
    layout.add_image("encrypted", &[(small.clone(), Compress::Gzip)], json!({}));
    edit_manifest(&layout, "encrypted", |m| {
        m["layers"][0]["mediaType"] = json!("application/vnd.oci.image.layer.v1.tar+encrypted");
    });
    layout.add_image("chart", &[(small.clone(), Compress::Gzip)], json!({}));
    edit_manifest(&layout, "chart", |m| {
        m["config"]["mediaType"] = json!("application/vnd.cncf.helm.config.v1+json");
    });
    // The corrupt image's layer: same size, other bytes.
    {
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.dir.join("index.json")).expect("index"))
                .expect("json");
        let m = index["manifests"]
            .as_array()
            .expect("manifests")
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "corrupt")
            .expect("corrupt")["digest"]
            .as_str()
            .expect("digest")
            .to_string();
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.blob_path(&m)).expect("manifest"))
                .expect("json");
        let layer = manifest["layers"][0]["digest"].as_str().expect("layer");
        let mut bytes = std::fs::read(layout.blob_path(layer)).expect("layer");
        let last = bytes.len() - 600; // inside the file's data block
        bytes[last] ^= 0xff;
        std::fs::write(layout.blob_path(layer), bytes).expect("corrupt it");
    }
    let store_dir = scratch.0.join("store");
    let store = strict_store(&store_dir);
    let dir = layout.dir.display().to_string();
    for (reference, class, says) in [
        (
            "oci:relative/path".to_string(),
            ErrorClass::InvalidArgument,
            "absolute",
        ),
        (
            "docker://nohost/x".to_string(),
            ErrorClass::InvalidArgument,
            "registry",
        ),
        (
            format!("oci:{dir}:missing"),
            ErrorClass::NotFound,
            "tag 'missing' is not in the layout",
        ),
        (
            format!("oci:{dir}"),
            ErrorClass::InvalidArgument,
            "add a tag",
        ),
        (
            format!("oci:{dir}-nope:x"),
            ErrorClass::FailedPrecondition,
            "cannot read",
        ),
        (format!("oci:{dir}:corrupt"), ErrorClass::DataLoss, "digest"),
        (
            format!("oci:{dir}:arm"),
            ErrorClass::FailedPrecondition,
            "linux/arm64, not linux/amd64",
        ),
        (
            format!("oci:{dir}:encrypted"),
            ErrorClass::FailedPrecondition,
            "no tar layer",
        ),
        (
            format!("oci:{dir}:chart"),
            ErrorClass::FailedPrecondition,
            "not a container image",
        ),
        (
            "docker://127.0.0.1:1/x/y:z".to_string(),
            ErrorClass::Unavailable,
            "cannot be reached",
        ),
    ] {
        let e = store
            .build("bad", &image(&reference), None)
            .await
            .expect_err(&reference);
        let text = e.to_string();
        assert!(text.contains(says), "{reference}: {text}");
        let got = RuntimeError::Rootfs(e).class();
        assert_eq!(got, class, "{reference}: {text}");
        assert!(
            layer_dirs(&store_dir).is_empty(),
            "{reference}: a layer was kept"
        );
        assert_no_partial(&store_dir);
    }
    // The platform asked for is what decides.
    store
        .build(
            "arm",
            &RootfsSource::Image {
                reference: format!("oci:{dir}:arm"),
                platform: "linux/arm64".into(),
                credentials: String::new(),
            },
            None,
        )
        .await
        .expect("an arm64 image when arm64 is asked for");
    store
        .build("ok", &image(&format!("oci:{dir}:ok")), None)
        .await
        .expect("a good image after the bad ones");
    // Both have the same layer content: one directory.
    assert_eq!(
        layer_dirs(&store_dir).len(),
        1,
        "the arm64 and the good image share it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_debian_image_from_every_transport_shares_one_layer() {
    use common::images::{debian_images, TestRegistry};
    // The shared rootfs first: the Debian image is made from it.
    let shared = TestHost::new("img-debian-src").await;
    let expected = std::fs::read_to_string(
        shared
            .runtime
            .store()
            .get(common::ROOTFS)
            .expect("shared")
            .path
            .join("etc/debian_version"),
    )
    .expect("version");
    drop(shared);
    let cache = tokio::task::spawn_blocking(debian_images)
        .await
        .expect("images");
    let scratch = Scratch::new("img-debian");
    let store_dir = scratch.0.join("store");
    let host = TestHost::with_rootfs_dir("img-debian", store_dir.clone());
    let registry = TestRegistry::start("img-debian", None);
    let layout = format!("oci:{}:bookworm", cache.join("debian-oci").display());
    let pushed = tokio::task::spawn_blocking({
        let layout = layout.clone();
        let registry_addr = registry.addr.clone();
        move || TestRegistry::push_to(&registry_addr, None, &layout, "hutch/debian:bookworm")
    })
    .await
    .expect("push");
    let sources = [
        ("oci", layout.clone()),
        (
            "oci-archive",
            format!(
                "oci-archive:{}:bookworm",
                cache.join("debian-oci.tar").display()
            ),
        ),
        (
            "docker-archive",
            format!(
                "docker-archive:{}",
                cache.join("debian-docker.tar").display()
            ),
        ),
        ("registry", pushed.clone()),
    ];
    for (name, reference) in &sources {
        let built = host
            .runtime
            .store()
            .build(name, &image(reference), None)
            .await
            .unwrap_or_else(|e| panic!("{reference}: {e}"));
        let meta = built.info.image.expect("image");
        assert_eq!(
            meta.config.defaults.cmd,
            ["cat", "/etc/debian_version"],
            "{name}"
        );
        // The image's Cmd, no command given.
        assert_eq!(
            run_out(&host, &format!("run-{name}"), spec_on(name, &[])).await,
            expected,
            "{name}"
        );
    }
    assert_eq!(
        layer_dirs(&store_dir).len(),
        1,
        "four transports, one layer on disk"
    );

    // Pinned by digest: the same manifest, so the same entry; a digest the registry lacks
    // is not found.
    let digest = host
        .runtime
        .store()
        .get("registry")
        .expect("registry")
        .image
        .expect("image")
        .manifest_digest;
    let pinned = format!("{}@{digest}", pushed.trim_end_matches(":bookworm"));
    let by_digest = host
        .runtime
        .store()
        .build("pinned", &image(&pinned), None)
        .await
        .expect("by digest");
    assert_eq!(
        by_digest.outcome,
        BuildOutcome::Built,
        "a new key (no tag), the same layer"
    );
    assert_eq!(layer_dirs(&store_dir).len(), 1);
    let unknown = format!(
        "{}@sha256:{}",
        pushed.trim_end_matches(":bookworm"),
        "0".repeat(64)
    );
    let e = host
        .runtime
        .store()
        .build("unknown", &image(&unknown), None)
        .await
        .expect_err("unknown digest");
    assert_eq!(
        hutch_agent::runtime::RuntimeError::Rootfs(e).class(),
        hutch_agent::runtime::ErrorClass::NotFound
    );

    // A tag the registry does not have, and a registry that is not there.
    let missing = pushed.replace(":bookworm", ":nope");
    let e = host
        .runtime
        .store()
        .build("missing", &image(&missing), None)
        .await
        .expect_err("missing tag");
    assert_eq!(
        hutch_agent::runtime::RuntimeError::Rootfs(e).class(),
        hutch_agent::runtime::ErrorClass::NotFound
    );
    drop(registry);
    let e = host
        .runtime
        .store()
        .build("gone", &image(&pushed.replace("bookworm", "other")), None)
        .await
        .expect_err("registry down");
    assert_eq!(
        hutch_agent::runtime::RuntimeError::Rootfs(e).class(),
        hutch_agent::runtime::ErrorClass::Unavailable
    );
    assert_no_partial(&store_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_with_basic_auth_needs_the_agents_credentials() {
    use base64::Engine;
    use common::images::TestRegistry;
    let scratch = Scratch::new("img-auth");
    let layout = Layout::create(&scratch.0.join("layout"));
    layout.add_image(
        "latest",
        &[(busybox_layer(), Compress::Gzip)],
        json!({"Cmd": ["/bin/echo", "authenticated"]}),
    );
    let registry = TestRegistry::start("img-auth", Some(("hutch", "s3cret-pass")));
    let reference = {
        let (addr, source) = (registry.addr.clone(), layout.reference("latest"));
        tokio::task::spawn_blocking(move || {
            TestRegistry::push_to(
                &addr,
                Some(("hutch", "s3cret-pass")),
                &source,
                "tools/busybox:latest",
            )
        })
        .await
        .expect("push")
    };
    // No credentials: refused by the registry.
    let anonymous = RootfsStore::open(scratch.0.join("anon")).expect("store");
    let e = anonymous
        .build("bb", &image(&reference), None)
        .await
        .expect_err("anonymous");
    let text = e.to_string();
    assert_eq!(
        hutch_agent::runtime::RuntimeError::Rootfs(e).class(),
        hutch_agent::runtime::ErrorClass::PermissionDenied,
        "{text}"
    );
    // Wrong ones, then the right ones, from the agent's file (Docker's format).
    let auth_file = scratch.0.join("auth.json");
    let write_auth = |password: &str| {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("hutch:{password}"));
        std::fs::write(
            &auth_file,
            json!({"auths": {registry.addr.clone(): {"auth": auth}}}).to_string(),
        )
        .expect("auth file");
    };
    let with_auth = |dir: &str| {
        RootfsStore::open(scratch.0.join(dir))
            .expect("store")
            .with_image_options(ImageOptions {
                auth_file: Some(auth_file.clone()),
                ..ImageOptions::default()
            })
    };
    write_auth("wrong");
    let e = with_auth("wrong")
        .build("bb", &image(&reference), None)
        .await
        .expect_err("wrong password");
    assert_eq!(
        hutch_agent::runtime::RuntimeError::Rootfs(e).class(),
        hutch_agent::runtime::ErrorClass::PermissionDenied
    );
    write_auth("s3cret-pass");
    let store_dir = scratch.0.join("right");
    let built = with_auth("right")
        .build("bb", &image(&reference), None)
        .await
        .expect("with the agent's credentials");
    assert_eq!(
        built.info.image.expect("image").config.defaults.cmd,
        ["/bin/echo", "authenticated"]
    );
    // The credentials are nowhere in the store.
    let grep = std::process::Command::new("grep")
        .args(["-r", "-l", "s3cret-pass"])
        .arg(&store_dir)
        .output()
        .expect("grep");
    assert!(
        grep.stdout.is_empty(),
        "the password was written into the store"
    );
    // Naming an entry the file lacks is an error, not an anonymous pull; an entry of
    // another registry is refused before anything is sent.
    let named = |entry: &str| RootfsSource::Image {
        reference: reference.clone(),
        platform: String::new(),
        credentials: entry.into(),
    };
    let e = with_auth("named")
        .build("bb", &named(&format!("{}/team", registry.addr)), None)
        .await
        .expect_err("unknown entry");
    assert!(e.to_string().contains("has no entry"), "{e}");
    let e = with_auth("other")
        .build("bb", &named("other.example:5000"), None)
        .await
        .expect_err("another registry's entry");
    assert!(e.to_string().contains("not for the registry"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_of_many_layers_run_and_too_many_are_refused() {
    let scratch = Scratch::new("img-deep");
    let layout = Layout::create(&scratch.0.join("layout"));
    let mut layers = vec![(busybox_layer(), Compress::Gzip)];
    for i in 0..127 {
        layers.push((
            layer_tar(&[Item::file(&format!("layer-{i}"), &i.to_string())]),
            Compress::None,
        ));
    }
    // 60 layers: their full paths would overflow overlayfs's one-page options; the layer
    // store's short links fit.
    layout.add_image(
        "deep",
        &layers[..60],
        json!({"Cmd": ["/bin/cat", "/layer-58"]}),
    );
    // 128: more than hutch takes.
    layout.add_image("deeper", &layers, json!({}));
    let host = TestHost::with_rootfs_dir("img-deep", scratch.0.join("store"));
    host.runtime
        .store()
        .build("deep", &image(&layout.reference("deep")), None)
        .await
        .expect("60 layers import");
    assert_eq!(run_out(&host, "deep", spec_on("deep", &[])).await, "58\n");
    let e = host
        .runtime
        .store()
        .build("deeper", &image(&layout.reference("deeper")), None)
        .await
        .expect_err("128 layers");
    assert!(e.to_string().contains("at most 127"), "{e}");
    host.assert_nothing_left("deep");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_cannot_point_its_mount_points_at_the_host() {
    let scratch = Scratch::new("img-proc-link");
    let planted = scratch.0.join("planted-on-the-host");
    let layout = Layout::create(&scratch.0.join("layout"));
    layout.add_image(
        "evil",
        &[
            (busybox_layer(), Compress::Gzip),
            (
                layer_tar(&[Item::Symlink("proc".into(), planted.display().to_string())]),
                Compress::Gzip,
            ),
        ],
        json!({"Cmd": ["/bin/true"]}),
    );
    let host = TestHost::with_rootfs_dir("img-proc-link", scratch.0.join("store"));
    host.runtime
        .store()
        .build("evil", &image(&layout.reference("evil")), None)
        .await
        .expect("import: a symlink is a fine layer member");
    let e = host
        .runtime
        .run("evil", spec_on("evil", &[]))
        .await
        .expect_err("a /proc that points outside");
    assert!(e.to_string().contains("is a symlink"), "{e}");
    assert!(!planted.exists(), "a directory was made on the host");
    host.assert_nothing_left("evil");
}
