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

/// What a layer may hold beyond files, directories, links and FIFOs.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnpackRules {
    /// Character and block devices are created (else the layer is refused).
    pub allow_devices: bool,
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

/// Unpacks the tar stream `reader` into `root` (an empty directory). Returns the bytes of
/// the regular files it wrote.
pub fn unpack_layer(
    reader: impl Read,
    root: &Path,
    rules: UnpackRules,
) -> Result<u64, UnpackError> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    let mut written = 0u64;
    let entries = archive.entries().map_err(io_err("reading the layer"))?;
    for entry in entries {
        let mut entry = entry.map_err(io_err("reading the layer"))?;
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
                entry
                    .unpack(&dest)
                    .map_err(io_err(format!("unpacking '{raw}'")))?;
            }
        }
    }
    Ok(written)
}

fn dev_of(header: &tar::Header) -> u64 {
    let major = header.device_major().ok().flatten().unwrap_or(0);
    let minor = header.device_minor().ok().flatten().unwrap_or(0);
    makedev(major as u64, minor as u64)
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
}
