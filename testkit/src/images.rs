//! Test images, made on this machine and never fetched: OCI image layouts written here from
//! layer tars (a small busybox image from Debian's `busybox-static`, multi-layer images with
//! whiteouts and opaque directories, crafted malicious layers), the shared Debian rootfs as an
//! OCI layout by `umoci` and as archives by `skopeo`, and a real `docker-registry` on loopback
//! (with or without basic auth) that `skopeo` pushes them to.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::host::{shared_rootfs_dir, unique};

/// One member of a layer tar.
#[derive(Debug, Clone)]
pub enum Item {
    /// A directory (mode 0755).
    Dir(String),
    /// A regular file with its content and mode.
    File(String, Vec<u8>, u32),
    /// A symlink: path, target.
    Symlink(String, String),
    /// A hard link: path, target (as the tar names it).
    Hardlink(String, String),
    /// A character device node 1:3 (what `/dev/null` is).
    CharDevice(String),
    /// A whiteout of the path (written as `.wh.NAME` in its directory).
    Whiteout(String),
    /// The opaque marker of a directory (`DIR/.wh..wh..opq`).
    Opaque(String),
    /// A regular file of `len` zero bytes (compresses to almost nothing).
    Zeros(String, u64),
    /// A bare header of an extension entry (`b'L'`, `b'x'`...) claiming `size` bytes, with
    /// none after it: what a layer asking for a huge long name looks like.
    ExtensionHeader(u8, u64),
    /// A regular file with extended attributes (PAX `SCHILY.xattr.NAME` records): path,
    /// content, `(name, value)` pairs.
    FileWithXattrs(String, Vec<u8>, Vec<(String, String)>),
}

/// One PAX record, `LEN KEY=VALUE\n`, LEN counting itself.
fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let body = format!(" {key}={value}\n");
    let mut len = body.len() + 1;
    while format!("{len}").len() + body.len() != len {
        len += 1;
    }
    format!("{len}{body}").into_bytes()
}

impl Item {
    /// A file of mode 0644.
    pub fn file(path: &str, content: &str) -> Item {
        Item::File(path.into(), content.as_bytes().to_vec(), 0o644)
    }
}

/// A header for `path` written byte for byte (no checks: a malicious name stays as given).
fn header(path: &str, kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    let bytes = path.as_bytes();
    assert!(bytes.len() <= 100, "test paths fit a ustar name");
    h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

fn set_link(h: &mut tar::Header, target: &str) {
    let bytes = target.as_bytes();
    assert!(bytes.len() <= 100, "test link targets fit a ustar name");
    h.as_old_mut().linkname[..bytes.len()].copy_from_slice(bytes);
}

/// The uncompressed tar of `items`, in order.
pub fn layer_tar(items: &[Item]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut append = |mut h: tar::Header, data: &[u8]| {
        h.set_cksum();
        b.append(&h, data).expect("append to an in-memory tar");
    };
    for item in items {
        match item {
            Item::Dir(p) => append(header(p, tar::EntryType::Directory, 0, 0o755), &[]),
            Item::File(p, data, mode) => append(
                header(p, tar::EntryType::Regular, data.len() as u64, *mode),
                data,
            ),
            Item::FileWithXattrs(p, data, xattrs) => {
                let records: Vec<u8> = xattrs
                    .iter()
                    .flat_map(|(k, v)| pax_record(&format!("SCHILY.xattr.{k}"), v))
                    .collect();
                append(
                    header(
                        "PaxHeaders/x",
                        tar::EntryType::XHeader,
                        records.len() as u64,
                        0o644,
                    ),
                    &records,
                );
                append(
                    header(p, tar::EntryType::Regular, data.len() as u64, 0o644),
                    data,
                )
            }
            Item::ExtensionHeader(kind, size) => append(
                header("././@LongLink", tar::EntryType::new(*kind), *size, 0o644),
                &[],
            ),
            Item::Zeros(p, len) => {
                let data = vec![0u8; *len as usize];
                append(header(p, tar::EntryType::Regular, *len, 0o644), &data)
            }
            Item::Symlink(p, t) | Item::Hardlink(p, t) => {
                let kind = if matches!(item, Item::Symlink(..)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                };
                let mut h = header(p, kind, 0, 0o777);
                set_link(&mut h, t);
                append(h, &[])
            }
            Item::CharDevice(p) => {
                let mut h = header(p, tar::EntryType::Char, 0, 0o666);
                h.set_device_major(1).expect("major");
                h.set_device_minor(3).expect("minor");
                append(h, &[])
            }
            Item::Whiteout(p) => {
                let (dir, name) = p.rsplit_once('/').unwrap_or(("", p));
                let path = if dir.is_empty() {
                    format!(".wh.{name}")
                } else {
                    format!("{dir}/.wh.{name}")
                };
                append(header(&path, tar::EntryType::Regular, 0, 0o644), &[])
            }
            Item::Opaque(dir) => append(
                header(
                    &format!("{dir}/.wh..wh..opq"),
                    tar::EntryType::Regular,
                    0,
                    0o644,
                ),
                &[],
            ),
        }
    }
    b.into_inner().expect("finish the tar")
}

/// How a layer blob is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compress {
    /// `application/vnd.oci.image.layer.v1.tar`.
    None,
    /// `...tar+gzip`.
    Gzip,
    /// `...tar+zstd`.
    Zstd,
}

/// `sha256:HEX` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    format!(
        "sha256:{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// The image config's `config` part: Entrypoint, Cmd, Env, WorkingDir, User and the like,
/// as JSON (e.g. `json!({"Cmd": ["/bin/sh"]})`).
pub type ConfigJson = serde_json::Value;

/// An OCI image layout written by the test.
pub struct Layout {
    /// Its directory.
    pub dir: PathBuf,
}

impl Layout {
    /// An empty layout at `dir` (replaced if it exists).
    pub fn create(dir: &Path) -> Layout {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir.join("blobs/sha256")).expect("layout dirs");
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
            .expect("oci-layout");
        std::fs::write(
            dir.join("index.json"),
            r#"{"schemaVersion":2,"manifests":[]}"#,
        )
        .expect("index.json");
        Layout {
            dir: dir.to_path_buf(),
        }
    }

    /// Stores `bytes` as a blob; returns its digest.
    pub fn blob(&self, bytes: &[u8]) -> String {
        let digest = sha256(bytes);
        let path = self
            .dir
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"));
        std::fs::write(path, bytes).expect("write blob");
        digest
    }

    /// Where blob `digest` is.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    /// Adds an image tagged `tag`: `layers` (lowest first, each an uncompressed tar and how
    /// to store it) and `config` (the config's `config` object). Returns the manifest's
    /// digest.
    pub fn add_image(
        &self,
        tag: &str,
        layers: &[(Vec<u8>, Compress)],
        config: ConfigJson,
    ) -> String {
        self.add_image_for(tag, layers, config, "amd64")
    }

    /// As [`Layout::add_image`], for another architecture.
    pub fn add_image_for(
        &self,
        tag: &str,
        layers: &[(Vec<u8>, Compress)],
        config: ConfigJson,
        architecture: &str,
    ) -> String {
        let mut descriptors = Vec::new();
        let mut diff_ids = Vec::new();
        for (tar, how) in layers {
            diff_ids.push(sha256(tar));
            let (blob, media_type) = match how {
                Compress::None => (tar.clone(), "application/vnd.oci.image.layer.v1.tar"),
                Compress::Gzip => {
                    let mut gz =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    gz.write_all(tar).expect("gzip");
                    (
                        gz.finish().expect("gzip"),
                        "application/vnd.oci.image.layer.v1.tar+gzip",
                    )
                }
                Compress::Zstd => (
                    zstd::encode_all(&tar[..], 3).expect("zstd"),
                    "application/vnd.oci.image.layer.v1.tar+zstd",
                ),
            };
            let digest = self.blob(&blob);
            descriptors.push(serde_json::json!({
                "mediaType": media_type, "digest": digest, "size": blob.len()
            }));
        }
        let config = serde_json::json!({
            "architecture": architecture,
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let config_bytes = serde_json::to_vec(&config).expect("config json");
        let config_digest = self.blob(&config_bytes);
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config_bytes.len(),
            },
            "layers": descriptors,
        });
        let manifest_bytes = serde_json::to_vec(&manifest).expect("manifest json");
        let manifest_digest = self.blob(&manifest_bytes);
        let index_path = self.dir.join("index.json");
        let mut index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&index_path).expect("index.json"))
                .expect("index json");
        let manifests = index["manifests"].as_array_mut().expect("manifests");
        manifests.retain(|m| m["annotations"]["org.opencontainers.image.ref.name"] != tag);
        manifests.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }));
        std::fs::write(&index_path, serde_json::to_vec(&index).expect("index json"))
            .expect("write index.json");
        manifest_digest
    }

    /// `oci:DIR:TAG`.
    pub fn reference(&self, tag: &str) -> String {
        format!("oci:{}:{tag}", self.dir.display())
    }
}

/// Where the static busybox of Debian's `busybox-static` is.
pub fn busybox_bin() -> PathBuf {
    for p in ["/bin/busybox", "/usr/bin/busybox"] {
        if Path::new(p).is_file() {
            return p.into();
        }
    }
    panic!("busybox is not installed: scripts/deps.sh installs busybox-static for the tests");
}

/// The layer of a busybox image: `/bin/busybox` and links for the usual tools.
pub fn busybox_layer() -> Vec<u8> {
    let binary = std::fs::read(busybox_bin()).expect("read busybox");
    let mut items = vec![
        Item::Dir("bin".into()),
        Item::File("bin/busybox".into(), binary, 0o755),
    ];
    for tool in [
        "sh", "echo", "cat", "ls", "id", "pwd", "test", "sleep", "env", "true", "stat",
    ] {
        items.push(Item::Symlink(format!("bin/{tool}"), "busybox".into()));
    }
    items.extend([
        Item::Dir("etc".into()),
        Item::file(
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        ),
        Item::file("etc/group", "root:x:0:\napp:x:1000:\n"),
        Item::Dir("tmp".into()),
    ]);
    layer_tar(&items)
}

/// Runs a tool; panics with its output when it fails.
pub fn run_tool(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/deps.sh installs the test tools)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The images every test run shares, made once (under a lock) from the shared rootfs:
/// see [`debian_images_from`]. Returns the cache directory.
pub fn debian_images() -> PathBuf {
    let rootfs_store = shared_rootfs_dir();
    let key = std::fs::read_to_string(rootfs_store.join("names/debian.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["key"].as_str().map(str::to_string))
        .expect("the shared rootfs is built first (TestHost::new)");
    let cache = rootfs_store
        .parent()
        .unwrap_or(Path::new("/var/tmp"))
        .join(format!("images-{key}"));
    debian_images_from(&rootfs_store.join(format!("entries/{key}/rootfs")), &cache);
    cache
}

/// Makes (once, under a lock) in `cache` the Debian tree `src` as an OCI layout by `umoci`
/// (`debian-oci/`, tag `bookworm`, Cmd `cat /etc/debian_version`), an `oci-archive` and a
/// `docker-archive` of it by `skopeo` (`debian-oci.tar`, `debian-docker.tar`).
pub fn debian_images_from(src: &Path, cache: &Path) {
    let done = cache.join("done");
    std::fs::create_dir_all(cache).expect("image cache dir");
    let lock = std::fs::File::create(cache.join("lock")).expect("lock file");
    let _lock = exclusive_lock(&lock);
    if done.exists() {
        return;
    }
    let tree = cache.join("tree");
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(&tree).expect("tree");
    // The tree without debootstrap's device nodes (images carry none; the agent refuses
    // them by default).
    run_tool(Command::new("sh").arg("-c").arg(format!(
        "tar -C '{}' --exclude='./dev/*' -cf - . | tar -C '{}' -xf -",
        src.display(),
        tree.display()
    )));
    let layout = cache.join("debian-oci");
    let _ = std::fs::remove_dir_all(&layout);
    let image = format!("{}:bookworm", layout.display());
    run_tool(
        Command::new("umoci")
            .args(["init", "--layout"])
            .arg(&layout),
    );
    run_tool(Command::new("umoci").args(["new", "--image", &image]));
    run_tool(
        Command::new("umoci")
            .args(["insert", "--image", &image])
            .arg(&tree)
            .arg("/"),
    );
    run_tool(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.cmd",
        "cat",
        "--config.cmd",
        "/etc/debian_version",
        "--config.env",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--config.workingdir",
        "/root",
    ]));
    let _ = std::fs::remove_dir_all(&tree);
    for (dest, name) in [
        ("oci-archive", "debian-oci.tar"),
        ("docker-archive", "debian-docker.tar"),
    ] {
        let file = cache.join(name);
        let _ = std::fs::remove_file(&file);
        let target = if dest == "oci-archive" {
            format!("oci-archive:{}:bookworm", file.display())
        } else {
            format!("docker-archive:{}:hutch/debian:bookworm", file.display())
        };
        run_tool(Command::new("skopeo").args(["copy", "-q", &format!("oci:{image}"), &target]));
    }
    std::fs::write(&done, "").expect("done marker");
}

/// An exclusive lock on `file` for as long as the guard lives.
fn exclusive_lock(file: &std::fs::File) -> impl Drop + '_ {
    file.lock().expect("lock the image cache");
    struct Unlock<'a>(&'a std::fs::File);
    impl Drop for Unlock<'_> {
        fn drop(&mut self) {
            let _ = self.0.unlock();
        }
    }
    Unlock(file)
}

/// A `docker-registry` (Debian's distribution registry) on a loopback port, storing in its
/// own directory, removed when dropped.
pub struct TestRegistry {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    dir: PathBuf,
    child: Child,
    /// With basic auth: the user and password.
    pub credentials: Option<(String, String)>,
}

impl TestRegistry {
    /// Starts a registry; with `auth`, it requires that user and password (htpasswd,
    /// bcrypt, made with `htpasswd -B`).
    pub fn start(test: &str, auth: Option<(&str, &str)>) -> TestRegistry {
        let dir = PathBuf::from(format!("/var/tmp/hutch-test-registry-{}", unique(test)));
        std::fs::create_dir_all(dir.join("data")).expect("registry dir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let auth_section = match auth {
            Some((user, pass)) => {
                let line = run_tool(Command::new("htpasswd").args(["-Bbn", user, pass]));
                std::fs::write(dir.join("htpasswd"), line.trim()).expect("htpasswd");
                format!(
                    "auth:\n  htpasswd:\n    realm: hutch-test\n    path: {}\n",
                    dir.join("htpasswd").display()
                )
            }
            None => String::new(),
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{auth_section}",
            dir.join("data").display()
        );
        std::fs::write(dir.join("config.yml"), config).expect("registry config");
        let log = std::fs::File::create(dir.join("registry.log")).expect("log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("docker-registry (scripts/deps.sh installs it for the tests)");
        let registry = TestRegistry {
            addr,
            dir,
            child,
            credentials: auth.map(|(u, p)| (u.to_string(), p.to_string())),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&registry.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "the registry did not come up: {}",
                std::fs::read_to_string(registry.dir.join("registry.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    /// Pushes the image `source` (a skopeo reference, e.g. `oci:DIR:TAG`) as `repo:tag`;
    /// returns `docker://ADDR/REPO:TAG`.
    pub fn push(&self, source: &str, repo_tag: &str) -> String {
        let creds = self
            .credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()));
        TestRegistry::push_to(&self.addr, creds, source, repo_tag)
    }

    /// [`TestRegistry::push`] to the registry at `addr` (for a blocking thread of its own).
    pub fn push_to(
        addr: &str,
        creds: Option<(&str, &str)>,
        source: &str,
        repo_tag: &str,
    ) -> String {
        let dest = format!("docker://{addr}/{repo_tag}");
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "-q", "--dest-tls-verify=false"]);
        if let Some((u, p)) = creds {
            cmd.arg("--dest-creds").arg(format!("{u}:{p}"));
        }
        run_tool(cmd.arg(source).arg(&dest));
        dest
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
