//! Unpacking one image layer (a tar stream) into a directory of its own, as overlayfs reads
//! it: the layer's whiteouts (`.wh.NAME`) become overlay whiteouts (a 0/0 character device
//! named NAME) and its opaque markers (`.wh..wh..opq`) the `trusted.overlay.opaque`
//! attribute of their directory, as the OCI image spec's "whiteouts" section and
//! overlayfs's documentation define them.
//!
//! Nothing a layer holds can write outside its directory:
//! - a `..` component refuses the layer; an absolute path (umoci writes them) means the
//!   same path below the layer's root, as containerd and Docker read it;
//! - no path is ever followed through a symlink: every ancestor of an entry is checked to be
//!   a real directory (nothing else writes into the directory while it is unpacked), and an
//!   entry replacing an existing one removes it first, so a file is never opened through a
//!   symlink an earlier entry planted;
//! - a hard link must point at a file unpacked earlier in the same layer;
//! - device nodes are refused unless the agent allows them (FIFOs are harmless and kept).
//!
//! The byte bound (a decompression bomb) is the caller's: it wraps the stream in a
//! [`super::digest::Verifying`] reader with a limit.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use super::tar_guard::TarGuard;
use tar::EntryType;
use thiserror::Error;

/// Why a layer was refused or could not be unpacked.
#[derive(Debug, Error)]
pub enum UnpackError {
    /// The layer holds an entry that would escape or break its directory.
    #[error("entry '{path}' is refused: {why}")]
    Refused {
        /// The entry's path as the tar has it.
        path: String,
        /// What is wrong with it.
        why: String,
    },
    /// Reading the stream or writing a file failed.
    #[error("{context}: {source}")]
    Io {
        /// Where.
        context: String,
        /// The error.
        source: io::Error,
    },
}

/// What a layer may hold beyond files, directories, links and FIFOs, and how much.
#[derive(Debug, Clone, Copy)]
pub struct UnpackRules {
    /// Character and block devices are created (else the layer is refused).
    pub allow_devices: bool,
    /// Most members (files, directories, links...) the layer may have.
    pub max_entries: u64,
}

impl Default for UnpackRules {
    fn default() -> Self {
        UnpackRules {
            allow_devices: false,
            max_entries: u64::MAX,
        }
    }
}

/// What a layer gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unpacked {
    /// Bytes of its regular files.
    pub bytes: u64,
    /// Its members.
    pub entries: u64,
}

/// Whiteout prefix of the OCI image spec (inherited from AUFS).
const WHITEOUT: &str = ".wh.";
/// The opaque-directory marker.
const OPAQUE: &str = ".wh..wh..opq";
/// The attribute overlayfs reads to hide a lower directory's content.
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

fn refused(path: &str, why: impl Into<String>) -> UnpackError {
    UnpackError::Refused {
        path: path.chars().take(200).collect(),
        why: why.into(),
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> UnpackError {
    let context = context.into();
    move |source| UnpackError::Io { context, source }
}

/// The entry's path as components below the layer root; `None` for the root itself.
pub fn relative_path(raw: &str) -> Result<Option<PathBuf>, UnpackError> {
    let mut out = PathBuf::new();
    for c in Path::new(raw).components() {
        match c {
            Component::Normal(name) => out.push(name),
            // `/bin` in a layer is the layer's own `bin`.
            Component::CurDir | Component::RootDir => {}
            Component::Prefix(_) => return Err(refused(raw, "a path prefix")),
            Component::ParentDir => return Err(refused(raw, "'..' would leave the layer")),
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// Makes sure every ancestor of `rel` below `root` is a real directory (creating missing
/// ones), never a symlink.
fn prepare_parents(root: &Path, rel: &Path, raw: &str) -> Result<(), UnpackError> {
    let mut dir = root.to_path_buf();
    let parents: Vec<_> = rel
        .parent()
        .map(|p| p.components().collect())
        .unwrap_or_default();
    for c in parents {
        dir.push(c);
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(refused(
                    raw,
                    "a parent directory is a symlink: following it could leave the layer",
                ))
            }
            Ok(_) => return Err(refused(raw, "a parent is not a directory")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&dir).map_err(io_err(format!("creating {}", dir.display())))?
            }
            Err(e) => return Err(io_err(format!("reading {}", dir.display()))(e)),
        }
    }
    Ok(())
}

/// Removes what `dest` holds, unless both it and the new entry are directories.
fn clear(dest: &Path, new_is_dir: bool) -> Result<(), UnpackError> {
    match fs::symlink_metadata(dest) {
        Ok(m) if m.file_type().is_dir() && new_is_dir => Ok(()),
        Ok(m) if m.file_type().is_dir() => {
            fs::remove_dir_all(dest).map_err(io_err(format!("replacing {}", dest.display())))
        }
        Ok(_) => fs::remove_file(dest).map_err(io_err(format!("replacing {}", dest.display()))),
        Err(_) => Ok(()),
    }
}

/// Unpacks the tar stream `reader` into `root` (an empty directory), watched by a
/// [`TarGuard`]. Returns what it wrote.
pub fn unpack_layer(
    reader: impl Read,
    root: &Path,
    rules: UnpackRules,
) -> Result<Unpacked, UnpackError> {
    let guard = TarGuard::new(reader, rules.max_entries);
    let refusal = guard.refusal();
    let refused_by_guard = |e: UnpackError| match refusal.borrow().clone() {
        Some(why) => refused("", why),
        None => e,
    };
    let mut entries = 0u64;
    let written = unpack_entries(guard, root, rules, &mut entries).map_err(refused_by_guard)?;
    Ok(Unpacked {
        bytes: written,
        entries,
    })
}

fn unpack_entries(
    reader: impl Read,
    root: &Path,
    rules: UnpackRules,
    entries_seen: &mut u64,
) -> Result<u64, UnpackError> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    // Applied by hand, filtered (see `wanted_xattrs`).
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    let mut written = 0u64;
    let entries = archive.entries().map_err(io_err("reading the layer"))?;
    for entry in entries {
        let mut entry = entry.map_err(io_err("reading the layer"))?;
        *entries_seen += 1;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some(rel) = relative_path(&raw)? else {
            continue; // the root itself: its mode stays the layer directory's
        };
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        prepare_parents(root, &rel, &raw)?;
        let parent = root.join(rel.parent().unwrap_or(Path::new("")));
        if name == OPAQUE {
            xattr::set(&parent, OPAQUE_XATTR, b"y")
                .map_err(io_err(format!("marking {} opaque", parent.display())))?;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            if hidden.starts_with(WHITEOUT) || hidden.is_empty() {
                continue; // other AUFS metadata (.wh..wh.plnk and the like)
            }
            if hidden == "." || hidden == ".." {
                return Err(refused(&raw, "a whiteout of '.' or '..'"));
            }
            let dest = parent.join(hidden);
            clear(&dest, false)?;
            mknod(&dest, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
                .map_err(|e| io_err(format!("whiteout {}", dest.display()))(e.into()))?;
            continue;
        }
        let dest = root.join(&rel);
        let kind = entry.header().entry_type();
        clear(&dest, kind.is_dir())?;
        match kind {
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                let Some(target_rel) = relative_path(&target)? else {
                    return Err(refused(&raw, "a hard link to the layer's root"));
                };
                prepare_parents(root, &target_rel, &raw)?;
                let source = root.join(&target_rel);
                match fs::symlink_metadata(&source) {
                    Ok(m) if !m.file_type().is_dir() => {}
                    _ => {
                        return Err(refused(
                            &raw,
                            format!("hard link to '{target}', which is no file unpacked before it in this layer"),
                        ))
                    }
                }
                fs::hard_link(&source, &dest)
                    .map_err(io_err(format!("linking {}", dest.display())))?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let header = entry.header();
                let mode = header.mode().unwrap_or(0o644) & 0o7777;
                let (flag, dev) = match kind {
                    EntryType::Fifo => (SFlag::S_IFIFO, 0),
                    _ if !rules.allow_devices => {
                        return Err(refused(
                            &raw,
                            "a device node (the agent allows none in images; see --allow-image-devices)",
                        ))
                    }
                    EntryType::Char => (SFlag::S_IFCHR, dev_of(header)),
                    _ => (SFlag::S_IFBLK, dev_of(header)),
                };
                mknod(&dest, flag, Mode::from_bits_truncate(mode), dev)
                    .map_err(|e| io_err(format!("creating {}", dest.display()))(e.into()))?;
                let (uid, gid) = (header.uid().unwrap_or(0), header.gid().unwrap_or(0));
                std::os::unix::fs::lchown(&dest, Some(uid as u32), Some(gid as u32))
                    .map_err(io_err(format!("owning {}", dest.display())))?;
            }
            EntryType::XGlobalHeader
            | EntryType::XHeader
            | EntryType::GNULongName
            | EntryType::GNULongLink => {}
            _ => {
                if kind.is_file() || kind.is_contiguous() || kind.is_gnu_sparse() {
                    written += entry.size();
                }
                let xattrs = wanted_xattrs(&mut entry);
                entry
                    .unpack(&dest)
                    .map_err(io_err(format!("unpacking '{raw}'")))?;
                if !kind.is_symlink() {
                    for (name, value) in xattrs {
                        xattr::set(&dest, &name, &value)
                            .map_err(io_err(format!("setting {name} on '{raw}'")))?;
                    }
                }
            }
        }
    }
    Ok(written)
}

/// The entry's extended attributes (PAX `SCHILY.xattr.NAME`) that a layer may set: `user.*`,
/// `security.*` (file capabilities) and POSIX ACLs. Never `trusted.*`: those are
/// overlayfs's own (`trusted.overlay.opaque`, `.redirect`, `.metacopy`), which only hutch
/// writes, from the whiteout markers.
fn wanted_xattrs<R: Read>(entry: &mut tar::Entry<R>) -> Vec<(String, Vec<u8>)> {
    let Ok(Some(extensions)) = entry.pax_extensions() else {
        return Vec::new();
    };
    extensions
        .flatten()
        .filter_map(|e| {
            let name = e.key().ok()?.strip_prefix("SCHILY.xattr.")?.to_string();
            let allowed = name.starts_with("user.")
                || name.starts_with("security.")
                || name == "system.posix_acl_access"
                || name == "system.posix_acl_default";
            allowed.then(|| (name, e.value_bytes().to_vec()))
        })
        .collect()
}

fn dev_of(header: &tar::Header) -> u64 {
    let major = header.device_major().ok().flatten().unwrap_or(0);
    let minor = header.device_minor().ok().flatten().unwrap_or(0);
    makedev(major as u64, minor as u64)
}

/// A tar stream completed at its end: some writers (umoci 0.4.7 for small layers) stop
/// right after the last member's data, without its padding to 512 bytes or the two zero
/// blocks that end an archive. Past the stream's end this reader gives the zeros a
/// complete archive would have had; the caller's digest covers only the real bytes, so
/// nothing is added to what was verified. A complete archive never reaches them.
pub struct CompletedTar<R> {
    inner: R,
    read: u64,
    /// Zero bytes still to give once `inner` is at its end; `None` before.
    padding: Option<u64>,
}

impl<R: Read> CompletedTar<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        CompletedTar {
            inner,
            read: 0,
            padding: None,
        }
    }
}

impl<R: Read> Read for CompletedTar<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.padding.is_none() {
            let n = self.inner.read(buf)?;
            if n > 0 || buf.is_empty() {
                self.read += n as u64;
                return Ok(n);
            }
            let to_block = (512 - self.read % 512) % 512;
            self.padding = Some(to_block + 1024);
        }
        let left = self.padding.unwrap_or(0);
        let n = (buf.len() as u64).min(left) as usize;
        buf[..n].fill(0);
        self.padding = Some(left - n as u64);
        Ok(n)
    }
}

/// Whether `path` is an overlay whiteout (what [`unpack_layer`] makes of `.wh.NAME`).
pub fn is_whiteout(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    meta.file_type().is_char_device() && meta.rdev() == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_below_the_root() {
        assert_eq!(
            relative_path("./a/b").expect("ok"),
            Some(PathBuf::from("a/b"))
        );
        assert_eq!(relative_path("./").expect("root"), None);
        assert_eq!(
            relative_path("/etc/passwd").expect("ok"),
            Some(PathBuf::from("etc/passwd"))
        );
        assert_eq!(relative_path("/").expect("root"), None);
        assert!(relative_path("a/../../x").is_err());
        assert!(relative_path("../x").is_err());
    }

    #[test]
    fn a_tar_cut_after_its_last_data_is_completed() {
        // A header and 7 bytes of data, nothing after: what umoci 0.4.7 writes.
        let mut header = tar::Header::new_ustar();
        header.set_path("etc/x").expect("path");
        header.set_size(7);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        let mut cut = header.as_bytes().to_vec();
        cut.extend_from_slice(b"layer-1");
        let dir = std::env::temp_dir().join(format!("hutch-cut-tar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let written = unpack_layer(CompletedTar::new(&cut[..]), &dir, UnpackRules::default())
            .expect("unpacked");
        assert_eq!(written.bytes, 7);
        assert_eq!(std::fs::read(dir.join("etc/x")).expect("file"), b"layer-1");
        let _ = std::fs::remove_dir_all(&dir);
        // A complete archive ends where it says, the padding never read.
        let mut complete = CompletedTar::new(&[0u8; 1024][..]);
        let mut all = Vec::new();
        complete.read_to_end(&mut all).expect("read");
        assert_eq!(all.len(), 1024 + 1024, "zeros past the end only");
    }
}
