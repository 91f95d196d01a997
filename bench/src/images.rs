//! `rootfs-image`: images as rootfs. Three rows:
//! - create -> EXITED p50 from a 10-layer Debian image against the same from the Debian
//!   directory rootfs, alternating, through the run's controller (target at most 1.1x);
//! - pull + unpack of the Debian image from a loopback `docker-registry` into a fresh store,
//!   against `skopeo copy` + `umoci unpack` of the same, alternating (target at most 1x);
//! - disk used by two images sharing the Debian base (each with a small layer of its own)
//!   against the sum of their sizes (what two full copies would take).
//!
//! The images are made here (umoci, skopeo) from the run's Debian rootfs and kept in
//! `/var/tmp/hutch-bench-cache/images` between runs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use hutch_agent::rootfs::{RootfsSource, RootfsStore};
use hutch_testkit::images::{debian_images_from, run_tool, TestRegistry};

use crate::report::{ms, percentile, Row};
use crate::scenarios::{connect_and_watch, hutch_sample, remove_one};
use crate::setup::BenchEnv;
use hutch_proto::v1;

/// Where the images are kept between runs.
const CACHE: &str = "/var/tmp/hutch-bench-cache/images";

fn image(reference: &str) -> RootfsSource {
    RootfsSource::Image {
        reference: reference.into(),
        platform: String::new(),
        credentials: String::new(),
    }
}

/// The Debian layout with three more tags: `ten` (nine small layers on top of the Debian
/// one), `a` and `b` (one small layer each). Made once.
fn bench_images(rootfs: &Path) -> Result<PathBuf, String> {
    let cache = PathBuf::from(CACHE);
    debian_images_from(rootfs, &cache);
    let layout = cache.join("debian-oci");
    let done = cache.join("bench-tags-done");
    if done.exists() {
        return Ok(layout);
    }
    let tag = |name: &str| format!("{}:{name}", layout.display());
    let small = cache.join("small");
    let insert = |on: &str, name: &str| -> Result<(), String> {
        let dir = small.join(name);
        std::fs::create_dir_all(dir.join("etc")).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("etc").join(format!("hutch-{name}")), name)
            .map_err(|e| e.to_string())?;
        run_tool(
            Command::new("umoci")
                .args(["insert", "--image", &tag(on)])
                .arg(&dir)
                .arg("/"),
        );
        Ok(())
    };
    for name in ["ten", "a", "b"] {
        run_tool(Command::new("umoci").args(["tag", "--image", &tag("bookworm"), name]));
    }
    for i in 1..=9 {
        insert("ten", &format!("layer-{i}"))?;
    }
    insert("a", "only-a")?;
    insert("b", "only-b")?;
    let _ = std::fs::remove_dir_all(&small);
    std::fs::write(&done, "").map_err(|e| e.to_string())?;
    Ok(layout)
}

/// Bytes the files below `dir` take on disk (`du -sb`).
fn disk_bytes(dir: &Path) -> u64 {
    Command::new("du")
        .arg("-sb")
        .arg(dir)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// The scenario; `runs` start-latency samples per rootfs, `pulls` pulls per side.
pub async fn rootfs_image(env: &BenchEnv, runs: usize, pulls: usize) -> Result<Vec<Row>, String> {
    let layout = {
        let rootfs = env.rootfs_dir.clone();
        tokio::task::spawn_blocking(move || bench_images(&rootfs))
            .await
            .map_err(|e| e.to_string())??
    };
    let reference = |tag: &str| format!("oci:{}:{tag}", layout.display());
    let mut rows = Vec::new();

    // 1. Start latency, 10 layers against a directory. Imported through the controller, as
    // a user would, so it knows the node has it.
    let (mut client, mut watch) = connect_and_watch(env).await?;
    let mut build = client
        .build_rootfs(v1::ClusterBuildRootfsRequest {
            rootfs: Some(v1::RootfsSpec {
                name: "debian-10-layers".into(),
                source: Some(v1::rootfs_spec::Source::Image(v1::ImageSource {
                    reference: reference("ten"),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("importing the 10-layer image: {e}"))?
        .into_inner();
    let mut layers = 0;
    while let Some(msg) = build.message().await.map_err(|e| e.to_string())? {
        use v1::cluster_build_rootfs_response::Event;
        match msg.event {
            Some(Event::Result(r)) => {
                layers = r.rootfs.and_then(|i| i.image).map_or(0, |i| i.layers.len());
            }
            Some(Event::Error(e)) => {
                return Err(format!("importing the 10-layer image: {}", e.message))
            }
            _ => {}
        }
    }
    let (mut from_image, mut from_dir) = (Vec::new(), Vec::new());
    for i in 0..runs + 2 {
        for (rootfs, out) in [
            ("debian-10-layers", &mut from_image),
            ("debian", &mut from_dir),
        ] {
            let name = format!("img-{}-{i}", if rootfs == "debian" { "dir" } else { "ten" });
            let (_, exited) = hutch_sample(&mut client, &mut watch, &name, rootfs).await?;
            remove_one(&mut client, name).await?;
            if i >= 2 {
                out.push(exited);
            }
        }
    }
    let (img, dir) = (
        ms(percentile(&from_image, 0.5)),
        ms(percentile(&from_dir, 0.5)),
    );
    rows.push(Row {
        scenario: "rootfs-image".into(),
        metric: format!("p50 create->EXITED, {layers}-layer image"),
        hutch: img,
        peer: Some(dir),
        peer_name: "directory rootfs".into(),
        unit: "ms".into(),
        ratio: Some(img / dir),
        target: "<= 1.1x directory".into(),
        pass: img <= 1.1 * dir,
    });

    // 2. Pull + unpack from a loopback registry, against skopeo + umoci.
    let registry = TestRegistry::start("bench-pull", None);
    let pushed = {
        let (addr, source) = (registry.addr.clone(), reference("bookworm"));
        tokio::task::spawn_blocking(move || {
            TestRegistry::push_to(&addr, None, &source, "bench/debian:bookworm")
        })
        .await
        .map_err(|e| e.to_string())?
    };
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for i in 0..pulls {
        let store_dir = env.dir.join(format!("pull-store-{i}"));
        let started = Instant::now();
        RootfsStore::open(&store_dir)
            .map_err(|e| e.to_string())?
            .build("debian", &image(&pushed), None)
            .await
            .map_err(|e| format!("pulling {pushed}: {e}"))?;
        ours.push(started.elapsed());
        let _ = std::fs::remove_dir_all(&store_dir);
        let peer_dir = env.dir.join(format!("pull-peer-{i}"));
        let docker_ref = pushed.clone();
        let took = tokio::task::spawn_blocking(move || {
            let oci = format!("oci:{}:bookworm", peer_dir.join("layout").display());
            let _ = std::fs::create_dir_all(&peer_dir);
            let started = Instant::now();
            run_tool(Command::new("skopeo").args([
                "copy",
                "-q",
                "--src-tls-verify=false",
                &docker_ref,
                &oci,
            ]));
            run_tool(
                Command::new("umoci")
                    .args(["unpack", "--image"])
                    .arg(format!("{}:bookworm", peer_dir.join("layout").display()))
                    .arg(peer_dir.join("bundle")),
            );
            let took = started.elapsed();
            let _ = std::fs::remove_dir_all(&peer_dir);
            took
        })
        .await
        .map_err(|e| e.to_string())?;
        theirs.push(took);
    }
    drop(registry);
    let (o, t) = (ms(percentile(&ours, 0.5)), ms(percentile(&theirs, 0.5)));
    rows.push(Row {
        scenario: "rootfs-image".into(),
        metric: "pull + unpack Debian, loopback registry".into(),
        hutch: o,
        peer: Some(t),
        peer_name: "skopeo copy + umoci unpack".into(),
        unit: "ms".into(),
        ratio: Some(o / t),
        target: "<= 1x".into(),
        pass: o <= t,
    });

    // 3. Disk of two images sharing a base.
    let store_dir = env.dir.join("shared-store");
    let shared = RootfsStore::open(&store_dir).map_err(|e| e.to_string())?;
    let mut sizes = 0;
    for tag in ["a", "b"] {
        let built = shared
            .build(tag, &image(&reference(tag)), None)
            .await
            .map_err(|e| format!("importing {tag}: {e}"))?;
        sizes += built.info.size_bytes;
    }
    let disk = disk_bytes(&store_dir.join("layers"));
    let _ = std::fs::remove_dir_all(&store_dir);
    let (disk_mb, sum_mb) = (disk as f64 / 1e6, sizes as f64 / 1e6);
    rows.push(Row {
        scenario: "rootfs-image".into(),
        metric: "disk, two images sharing a base".into(),
        hutch: disk_mb,
        peer: Some(sum_mb),
        peer_name: "sum of their sizes".into(),
        unit: "MB".into(),
        ratio: Some(disk_mb / sum_mb),
        target: "<= 0.55x".into(),
        pass: disk_mb <= 0.55 * sum_mb,
    });
    Ok(rows)
}
