//! A container's network through CNI plugins (the Container Network Interface
//! specification, 1.0): ADD when it starts, DEL on every way out, CHECK on demand.
//!
//! An [`Attachment`] is everything a DEL needs, kept in the container's state directory
//! (`network.json`) from before the first ADD on: the network list as it was used (a changed
//! file cannot change what is removed), the plugins' directories, the network namespace
//! (pinned by a bind mount at `DIR/netns`, so it outlives the container's processes until
//! DEL), the published ports and the chain's result. The supervisor runs ADD and DEL; the
//! agent runs DEL itself for a container whose supervisor died (`deleted` says it is done).
//!
//! Plugins are programs (`bridge`, `host-local`, `portmap`, ...) started with `CNI_COMMAND`,
//! `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME` and `CNI_PATH` in their environment and a
//! JSON configuration on stdin; they answer JSON on stdout. Single-threaded callers only
//! start them with `std::process`, which is sound there.

pub mod conf;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use hutch_core::network::PortMapping;

pub use conf::NetworkList;

/// The interface a container's network appears as.
pub const CONTAINER_INTERFACE: &str = "eth0";

/// Longest a plugin may run before it is killed and the step fails (a chain of plugins
/// stays well within the agent's 60 s wait for a start).
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a CNI step failed.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// A network configuration cannot be used.
    #[error("CNI configuration {0}")]
    Config(String),
    /// A plugin is in none of the directories.
    #[error("CNI plugin '{plugin}' is not in {dirs}: install it (Debian: containernetworking-plugins) or point --cni-bin-dir at it")]
    PluginMissing {
        /// The plugin's name.
        plugin: String,
        /// The directories searched.
        dirs: String,
    },
    /// A plugin failed.
    #[error("CNI plugin '{plugin}' {command} failed: {message}")]
    Plugin {
        /// The plugin's name.
        plugin: String,
        /// ADD, DEL or CHECK.
        command: &'static str,
        /// Its error, or what went wrong running it.
        message: String,
    },
    /// Reading or writing the attachment record.
    #[error("network record {path}: {source}")]
    Record {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// One container on one network: what ADD was given and answered, kept for DEL.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attachment {
    /// `CNI_CONTAINERID`: the container's id on its node.
    pub container_id: String,
    /// `CNI_NETNS`: the pinned network namespace.
    pub netns: PathBuf,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// The network configuration list, as used at ADD.
    pub config: Value,
    /// Where plugins are looked up (`CNI_PATH`).
    pub bin_dirs: Vec<PathBuf>,
    /// Ports to publish (the `portMappings` capability).
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    /// The chain's result once ADD succeeded.
    #[serde(default)]
    pub result: Option<Value>,
    /// Whether DEL has run to its end.
    #[serde(default)]
    pub deleted: bool,
}

impl Attachment {
    /// The record's path in a container's state directory.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("network.json")
    }

    /// Where the network namespace is pinned.
    pub fn netns_path(dir: &Path) -> PathBuf {
        dir.join("netns")
    }

    /// Reads the record of a container, if it has one.
    pub fn load(dir: &Path) -> Result<Option<Attachment>, CniError> {
        let path = Self::path(dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| CniError::Record {
                    path,
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CniError::Record { path, source }),
        }
    }

    /// Writes the record into `dir` (atomically, and never empty after a crash: the leases
    /// it names outlive one, and DEL needs it to release them).
    pub fn save(&self, dir: &Path) -> Result<(), CniError> {
        let path = Self::path(dir);
        crate::fsutil::replace_json_ordered(&path, self).map_err(|e| CniError::Record {
            path,
            source: std::io::Error::other(e.to_string()),
        })
    }

    fn list(&self) -> Result<NetworkList, CniError> {
        NetworkList::parse(&self.config.to_string(), "in the network record")
    }

    /// Runs ADD through the chain; on success `result` holds the last plugin's answer. On
    /// failure nothing is undone here: the caller runs [`Attachment::del`].
    pub fn add(&mut self) -> Result<&Value, CniError> {
        let list = self.list()?;
        let mut prev: Option<Value> = None;
        for (i, plugin) in list.types().into_iter().enumerate() {
            let stdin = list.plugin_stdin(i, prev.as_ref(), &self.ports);
            let out = self.run(plugin, "ADD", &stdin)?;
            let result: Value = serde_json::from_slice(&out).map_err(|e| CniError::Plugin {
                plugin: plugin.into(),
                command: "ADD",
                message: format!("its result is not JSON: {e}"),
            })?;
            prev = Some(result);
        }
        self.result = prev;
        Ok(self.result.as_ref().unwrap_or(&Value::Null))
    }

    /// Runs DEL through the chain in reverse, every plugin even after one failed (so as
    /// much as possible is released); returns the first failure.
    pub fn del(&mut self) -> Result<(), CniError> {
        let list = self.list()?;
        let mut first_error = None;
        for (i, plugin) in list.types().into_iter().enumerate().rev() {
            let stdin = list.plugin_stdin(i, self.result.as_ref(), &self.ports);
            if let Err(e) = self.run(plugin, "DEL", &stdin) {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => {
                self.deleted = true;
                Ok(())
            }
        }
    }

    /// Runs CHECK through the chain: whether the container's network is still as ADD left it.
    pub fn check(&self) -> Result<(), CniError> {
        let list = self.list()?;
        for (i, plugin) in list.types().into_iter().enumerate() {
            let stdin = list.plugin_stdin(i, self.result.as_ref(), &self.ports);
            self.run(plugin, "CHECK", &stdin)?;
        }
        Ok(())
    }

    /// Runs one plugin; its stdout when it succeeded.
    fn run(&self, plugin: &str, command: &'static str, stdin: &Value) -> Result<Vec<u8>, CniError> {
        let program = find_plugin(&self.bin_dirs, plugin)?;
        let failed = |message: String| CniError::Plugin {
            plugin: plugin.into(),
            command,
            message,
        };
        let cni_path = std::env::join_paths(&self.bin_dirs)
            .map_err(|e| failed(format!("bin directories: {e}")))?;
        // A namespace no longer pinned (its mount gone after a crash or a reboot) is passed
        // as none: plugins then release what lives outside it (leases, port mappings), and
        // the namespace's interfaces went with it.
        let netns = if is_network_namespace(&self.netns) {
            self.netns.as_os_str()
        } else {
            std::ffi::OsStr::new("")
        };
        let mut child = Command::new(&program)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &self.container_id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", &self.ifname)
            .env("CNI_PATH", cni_path)
            .env("PATH", plugin_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| failed(format!("starting {}: {e}", program.display())))?;
        if let Some(mut input) = child.stdin.take() {
            let _ = input.write_all(stdin.to_string().as_bytes());
        }
        let status = wait_with_deadline(&mut child, PLUGIN_TIMEOUT)
            .map_err(|e| failed(format!("waiting for it: {e}")))?;
        let mut out = Vec::new();
        let mut err = Vec::new();
        if let Some(mut s) = child.stdout.take() {
            let _ = s.read_to_end(&mut out);
        }
        if let Some(mut s) = child.stderr.take() {
            let _ = s.read_to_end(&mut err);
        }
        match status {
            None => Err(failed(format!(
                "it ran longer than {}s and was killed",
                PLUGIN_TIMEOUT.as_secs()
            ))),
            Some(s) if s.success() => Ok(out),
            Some(s) => {
                let message = conf::plugin_error(&out).unwrap_or_else(|| {
                    let text = String::from_utf8_lossy(if err.is_empty() { &out } else { &err });
                    format!("{s}: {}", text.trim())
                });
                Err(failed(message))
            }
        }
    }
}

/// Whether `path` is a namespace file (nsfs), as a pinned namespace is.
fn is_network_namespace(path: &Path) -> bool {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == NSFS_MAGIC)
}

/// The first `dirs/plugin` that is an executable file.
pub fn find_plugin(dirs: &[PathBuf], plugin: &str) -> Result<PathBuf, CniError> {
    use std::os::unix::fs::PermissionsExt;
    dirs.iter()
        .map(|d| d.join(plugin))
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
        .ok_or_else(|| CniError::PluginMissing {
            plugin: plugin.into(),
            dirs: dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(":"),
        })
}

/// The `PATH` plugins run with (portmap and bridge call `iptables`, in `/usr/sbin`).
fn plugin_path() -> String {
    let base = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    match std::env::var("PATH") {
        Ok(p) if !p.is_empty() => format!("{p}:{base}"),
        _ => base.into(),
    }
}

/// Waits for `child` at most `limit`; kills it past that (`None`).
fn wait_with_deadline(
    child: &mut std::process::Child,
    limit: Duration,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_micros(200);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(5));
    }
}
