//! Mounts a container asks for: host paths bound in (`-v /srv/data:/data`), named volumes
//! its node keeps (`-v data:/data`) and tmpfs (`--tmpfs /run`), parsed in Docker's
//! spellings, with the checks that need no host. Whether a bind source exists and may be
//! bound is the agent's check (it knows its allowed paths); mounting is the supervisor's.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::names::validate_name;
use crate::units::parse_size;

/// Most mounts one container may have.
pub const MAX_MOUNTS: usize = 64;
/// Longest path a mount may name (the kernel's `PATH_MAX`).
const MAX_PATH_LEN: usize = 4096;
/// Directories hutch mounts itself in every container; nothing may be mounted at or below
/// them (a mount there could hide what hutch masks).
const RESERVED_TARGETS: [&str; 3] = ["/proc", "/sys", "/dev"];

/// What is mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    /// A host path, bound in (`source` is the absolute host path).
    Bind,
    /// A named volume of the node (`source` is the volume's name); created on first use.
    Volume,
    /// A fresh tmpfs, gone with the container (`source` is empty).
    Tmpfs,
}

impl MountKind {
    /// The word Docker's `--mount type=` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            MountKind::Bind => "bind",
            MountKind::Volume => "volume",
            MountKind::Tmpfs => "tmpfs",
        }
    }
}

/// One mount of a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// What is mounted.
    pub kind: MountKind,
    /// The host path (bind), the volume's name (volume) or nothing (tmpfs).
    #[serde(default)]
    pub source: String,
    /// The absolute path inside the container.
    pub target: String,
    /// Mounted read-only.
    #[serde(default)]
    pub read_only: bool,
    /// `noexec`, and for tmpfs `size=SIZE` and `mode=OCTAL`.
    #[serde(default)]
    pub options: Vec<String>,
}

/// Why a mount was refused. Each message says what to change.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MountError {
    /// A flag's text does not parse.
    #[error("{0}")]
    Syntax(String),
    /// A path that cannot be used.
    #[error("{0}")]
    BadPath(String),
    /// An option that is not known or not for this kind.
    #[error("{0}")]
    BadOption(String),
    /// Two mounts on one target, or too many mounts.
    #[error("{0}")]
    Conflict(String),
}

/// Options of a tmpfs, from its option list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TmpfsOptions {
    /// Most bytes it holds; `None`: the kernel's default (half the memory).
    pub size_bytes: Option<u64>,
    /// Permissions of its root; `None`: 1777 (like /tmp).
    pub mode: Option<u32>,
}

impl Mount {
    /// A bind of the host path `source` at `target`.
    pub fn bind(source: impl Into<String>, target: impl Into<String>, read_only: bool) -> Self {
        Self::new(MountKind::Bind, source.into(), target.into(), read_only)
    }

    /// The named volume `name` at `target`.
    pub fn volume(name: impl Into<String>, target: impl Into<String>, read_only: bool) -> Self {
        Self::new(MountKind::Volume, name.into(), target.into(), read_only)
    }

    /// A tmpfs at `target`.
    pub fn tmpfs(target: impl Into<String>) -> Self {
        Self::new(MountKind::Tmpfs, String::new(), target.into(), false)
    }

    fn new(kind: MountKind, source: String, target: String, read_only: bool) -> Self {
        Mount {
            kind,
            source,
            target,
            read_only,
            options: Vec::new(),
        }
    }

    /// Whether the command may not execute files from it.
    pub fn noexec(&self) -> bool {
        self.options.iter().any(|o| o == "noexec")
    }

    /// The tmpfs options (size, mode); errors for a malformed one.
    pub fn tmpfs_options(&self) -> Result<TmpfsOptions, MountError> {
        let mut out = TmpfsOptions::default();
        for option in &self.options {
            match option.split_once('=') {
                Some(("size", v)) => {
                    let size = parse_size(v).map_err(|e| {
                        MountError::BadOption(format!("tmpfs {}: size: {e}", self.target))
                    })?;
                    if size == 0 {
                        return Err(MountError::BadOption(format!(
                            "tmpfs {}: size=0 would hold nothing: give a size such as 64m",
                            self.target
                        )));
                    }
                    out.size_bytes = Some(size);
                }
                Some(("mode", v)) => {
                    let mode = u32::from_str_radix(v, 8)
                        .ok()
                        .filter(|m| *m <= 0o7777)
                        .ok_or_else(|| {
                            MountError::BadOption(format!(
                                "tmpfs {}: mode '{v}' is not an octal mode such as 1777 or 755",
                                self.target
                            ))
                        })?;
                    out.mode = Some(mode);
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// The text handed to `mount -t tmpfs -o`: `mode=1777` and the size if given.
    pub fn tmpfs_data(&self) -> Result<String, MountError> {
        let o = self.tmpfs_options()?;
        let mut data = format!("mode={:o}", o.mode.unwrap_or(0o1777));
        if let Some(size) = o.size_bytes {
            data.push_str(&format!(",size={size}"));
        }
        Ok(data)
    }

    /// Checks one mount: paths, the volume name, the options for its kind.
    pub fn validate(&self) -> Result<(), MountError> {
        validate_target(&self.target)?;
        match self.kind {
            MountKind::Bind => {
                if !self.source.starts_with('/') {
                    return Err(MountError::BadPath(format!(
                        "bind source '{}' must be an absolute path of the node, e.g. /srv/data",
                        self.source
                    )));
                }
                check_plain_path("bind source", &self.source)?;
            }
            MountKind::Volume => validate_name("volume name", &self.source)
                .map_err(|e| MountError::BadPath(e.to_string()))?,
            MountKind::Tmpfs => {
                if !self.source.is_empty() {
                    return Err(MountError::BadPath(format!(
                        "a tmpfs mount has no source (got '{}'); give only its target",
                        self.source
                    )));
                }
                self.tmpfs_options()?;
            }
        }
        for option in &self.options {
            let known = option == "noexec"
                || (self.kind == MountKind::Tmpfs
                    && (option.starts_with("size=") || option.starts_with("mode=")));
            if !known {
                let accepted = match self.kind {
                    MountKind::Tmpfs => "noexec, size=SIZE and mode=OCTAL",
                    _ => "noexec",
                };
                return Err(MountError::BadOption(format!(
                    "{} mount at {}: unknown option '{option}': a {} mount takes {accepted}",
                    self.kind.as_str(),
                    self.target,
                    self.kind.as_str()
                )));
            }
        }
        Ok(())
    }
}

/// Checks a container's mounts together: each one, their number, no target twice.
pub fn validate_mounts(mounts: &[Mount]) -> Result<(), MountError> {
    if mounts.len() > MAX_MOUNTS {
        return Err(MountError::Conflict(format!(
            "{} mounts: at most {MAX_MOUNTS}",
            mounts.len()
        )));
    }
    let mut targets = std::collections::BTreeSet::new();
    for m in mounts {
        m.validate()?;
        if !targets.insert(m.target.as_str()) {
            return Err(MountError::Conflict(format!(
                "two mounts on {}: give each target once",
                m.target
            )));
        }
    }
    Ok(())
}

/// The order to mount in: parents before what is mounted inside them.
pub fn mount_order(mounts: &[Mount]) -> Vec<&Mount> {
    let mut ordered: Vec<&Mount> = mounts.iter().collect();
    ordered.sort_by_key(|m| m.target.split('/').filter(|c| !c.is_empty()).count());
    ordered
}

/// The named volumes among `mounts`.
pub fn volume_names(mounts: &[Mount]) -> impl Iterator<Item = &str> {
    mounts
        .iter()
        .filter(|m| m.kind == MountKind::Volume)
        .map(|m| m.source.as_str())
}

fn check_plain_path(what: &str, path: &str) -> Result<(), MountError> {
    if path.len() > MAX_PATH_LEN || path.contains('\0') {
        return Err(MountError::BadPath(format!(
            "{what} is longer than {MAX_PATH_LEN} bytes or contains a NUL byte"
        )));
    }
    if path.split('/').any(|c| c == ".." || c == ".") {
        return Err(MountError::BadPath(format!(
            "{what} '{path}' must not contain '.' or '..' components"
        )));
    }
    // One spelling per path: '//x' or '/x/' would slip past the checks made on '/x'.
    if path.len() > 1 && path.split('/').skip(1).any(str::is_empty) {
        return Err(MountError::BadPath(format!(
            "{what} '{path}' has an empty component ('//' or a trailing '/'): write it as {}",
            normalized(path)
        )));
    }
    Ok(())
}

/// `path` with empty components dropped (`//a//b/` -> `/a/b`).
fn normalized(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    format!("/{}", parts.join("/"))
}

fn validate_target(target: &str) -> Result<(), MountError> {
    if !target.starts_with('/') {
        return Err(MountError::BadPath(format!(
            "mount target '{target}' must be an absolute path inside the container, e.g. /data"
        )));
    }
    if target == "/" {
        return Err(MountError::BadPath(
            "mount target '/' would hide the rootfs: mount below it, e.g. /data".into(),
        ));
    }
    check_plain_path("mount target", target)?;
    for reserved in RESERVED_TARGETS {
        let under = target
            .strip_prefix(reserved)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
        if under {
            return Err(MountError::BadPath(format!(
                "mount target '{target}' is at or below {reserved}, which hutch mounts itself: pick another path"
            )));
        }
    }
    Ok(())
}

fn syntax(flag: &str, text: &str, why: &str) -> MountError {
    MountError::Syntax(format!("{flag} '{text}': {why}"))
}

/// Parses Docker's `-v SOURCE:TARGET[:ro|rw]`: an absolute SOURCE is a host path (bind),
/// anything else names a volume.
pub fn parse_volume_flag(text: &str) -> Result<Mount, MountError> {
    let parts: Vec<&str> = text.split(':').collect();
    let (source, target, options) = match parts.as_slice() {
        [source, target] => (*source, *target, ""),
        [source, target, options] => (*source, *target, *options),
        _ => {
            return Err(syntax(
                "-v",
                text,
                "give SOURCE:TARGET[:ro], e.g. /srv/data:/data:ro or a volume name, data:/data",
            ))
        }
    };
    if source.is_empty() || target.is_empty() {
        return Err(syntax("-v", text, "SOURCE and TARGET must both be given"));
    }
    let mut read_only = false;
    for option in options.split(',').filter(|o| !o.is_empty()) {
        match option {
            "ro" => read_only = true,
            "rw" => read_only = false,
            other => {
                return Err(syntax(
                    "-v",
                    text,
                    &format!("unknown option '{other}': use ro or rw"),
                ))
            }
        }
    }
    let mount = if source.starts_with('/') {
        Mount::bind(source, target, read_only)
    } else {
        Mount::volume(source, target, read_only)
    };
    mount
        .validate()
        .map_err(|e| syntax("-v", text, &e.to_string()))?;
    Ok(mount)
}

/// Parses Docker's `--tmpfs TARGET[:OPTIONS]` (options: `size=64m`, `mode=1777`, `noexec`,
/// `ro`; `rw`, `exec`, `nosuid` and `nodev` are accepted as what hutch does anyway).
pub fn parse_tmpfs_flag(text: &str) -> Result<Mount, MountError> {
    let (target, options) = text.split_once(':').unwrap_or((text, ""));
    let mut mount = Mount::tmpfs(target);
    for option in options.split(',').filter(|o| !o.is_empty()) {
        match option {
            "ro" => mount.read_only = true,
            "rw" | "exec" | "nosuid" | "nodev" => {}
            other => mount.options.push(other.to_string()),
        }
    }
    mount
        .validate()
        .map_err(|e| syntax("--tmpfs", text, &e.to_string()))?;
    Ok(mount)
}

/// Parses Docker's `--mount type=bind|volume|tmpfs,source=...,target=...[,readonly]`
/// (also `src`, `destination`/`dst`, `ro`, `readonly=true|false`, `tmpfs-size`,
/// `tmpfs-mode`).
pub fn parse_mount_flag(text: &str) -> Result<Mount, MountError> {
    let mut kind = None;
    let mut source = String::new();
    let mut target = String::new();
    let mut read_only = false;
    let mut options = Vec::new();
    for field in text.split(',').filter(|f| !f.is_empty()) {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (field, None),
        };
        match (key, value) {
            ("type", Some(v)) => {
                kind = Some(match v {
                    "bind" => MountKind::Bind,
                    "volume" => MountKind::Volume,
                    "tmpfs" => MountKind::Tmpfs,
                    other => {
                        return Err(syntax(
                            "--mount",
                            text,
                            &format!("type '{other}' is not bind, volume or tmpfs"),
                        ))
                    }
                })
            }
            ("source" | "src", Some(v)) => source = v.to_string(),
            ("target" | "destination" | "dst", Some(v)) => target = v.to_string(),
            ("readonly" | "ro", None) => read_only = true,
            ("readonly" | "ro", Some(v)) => {
                read_only = match v {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(syntax("--mount", text, "readonly takes true or false")),
                }
            }
            ("tmpfs-size", Some(v)) => options.push(format!("size={v}")),
            ("tmpfs-mode", Some(v)) => options.push(format!("mode={v}")),
            _ => {
                return Err(syntax(
                    "--mount",
                    text,
                    &format!(
                        "unknown field '{field}': use type=, source=, target=, readonly, tmpfs-size=, tmpfs-mode="
                    ),
                ))
            }
        }
    }
    let kind = kind.ok_or_else(|| syntax("--mount", text, "type= is missing"))?;
    if target.is_empty() {
        return Err(syntax("--mount", text, "target= is missing"));
    }
    if kind != MountKind::Tmpfs && source.is_empty() {
        return Err(syntax("--mount", text, "source= is missing"));
    }
    if kind != MountKind::Tmpfs && !options.is_empty() {
        return Err(syntax(
            "--mount",
            text,
            "tmpfs-size and tmpfs-mode are for type=tmpfs",
        ));
    }
    let mount = Mount {
        kind,
        source,
        target,
        read_only,
        options,
    };
    mount
        .validate()
        .map_err(|e| syntax("--mount", text, &e.to_string()))?;
    Ok(mount)
}

/// How a mount is shown in a table or `inspect`: `/srv/data:/data:ro`, `data:/data`,
/// `tmpfs:/run`.
pub fn describe(m: &Mount) -> String {
    let source = match m.kind {
        MountKind::Tmpfs => "tmpfs",
        _ => m.source.as_str(),
    };
    let mut text = format!("{source}:{}", m.target);
    if m.read_only {
        text.push_str(":ro");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_flag_tells_binds_from_volumes() {
        let bind = parse_volume_flag("/srv/data:/data:ro").expect("bind");
        assert_eq!(bind, Mount::bind("/srv/data", "/data", true));
        let volume = parse_volume_flag("cache:/var/cache").expect("volume");
        assert_eq!(volume, Mount::volume("cache", "/var/cache", false));
        for bad in [
            "/data",
            ":/data",
            "a:b:c:d",
            "/x:/y:z",
            "../x:/y",
            "/x:relative",
            "/x:/",
            "/x:/proc/sys",
            "/x:/dev",
            "/a/../b:/y",
            "bad name:/y",
            "/x://proc",
            "/x:/data/",
            "/x:/a//b",
            "/x//y:/data",
        ] {
            assert!(parse_volume_flag(bad).is_err(), "{bad} accepted");
        }
        // /procfs is not /proc.
        assert!(parse_volume_flag("/x:/procfs").is_ok());
    }

    #[test]
    fn mount_flag_as_docker_spells_it() {
        let m = parse_mount_flag("type=bind,source=/srv,target=/srv,readonly").expect("bind");
        assert_eq!(m, Mount::bind("/srv", "/srv", true));
        let m = parse_mount_flag("type=volume,src=v1,dst=/v,ro=false").expect("volume");
        assert_eq!(m, Mount::volume("v1", "/v", false));
        let m = parse_mount_flag("type=tmpfs,target=/run,tmpfs-size=64m,tmpfs-mode=755")
            .expect("tmpfs");
        assert_eq!(m.tmpfs_data().expect("data"), "mode=755,size=67108864");
        for bad in [
            "source=/a,target=/b",
            "type=nfs,source=a,target=/b",
            "type=bind,target=/b",
            "type=bind,source=/a",
            "type=bind,source=/a,target=/b,colour=red",
            "type=bind,source=/a,target=/b,tmpfs-size=1m",
            "type=bind,source=/a,target=/b,readonly=maybe",
        ] {
            assert!(parse_mount_flag(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn tmpfs_flag_and_options() {
        let m = parse_tmpfs_flag("/run:size=1m,noexec,rw").expect("tmpfs");
        assert!(m.noexec());
        assert_eq!(m.tmpfs_data().expect("data"), "mode=1777,size=1048576");
        assert_eq!(
            parse_tmpfs_flag("/scratch").expect("plain").tmpfs_data(),
            Ok("mode=1777".to_string())
        );
        for bad in [
            "/run:size=0",
            "/run:mode=999",
            "/run:size=lots",
            "/run:uid=0",
            "run",
        ] {
            assert!(parse_tmpfs_flag(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn mounts_together() {
        let a = Mount::tmpfs("/data");
        let b = Mount::bind("/srv", "/data", false);
        assert!(validate_mounts(&[a.clone(), b]).is_err());
        let nested = Mount::tmpfs("/data/inner");
        let given = [nested.clone(), a.clone()];
        assert_eq!(mount_order(&given), vec![&a, &nested]);
        let many = vec![Mount::tmpfs("/x"); MAX_MOUNTS + 1];
        assert!(validate_mounts(&many).is_err());
        let mut bad = Mount::bind("/a", "/b", false);
        bad.options.push("size=1m".into());
        assert!(bad.validate().is_err(), "size on a bind");
        assert_eq!(describe(&Mount::volume("v", "/v", true)), "v:/v:ro");
    }
}
