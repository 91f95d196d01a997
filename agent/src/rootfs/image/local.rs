//! Images on the node's disk: an OCI image layout directory (`oci:`), a tar of one
//! (`oci-archive:`) and `docker save` output (`docker-archive:`).
//!
//! An archive is not extracted: one pass over its headers records where each member's
//! bytes lie, and blobs are then read in place (a `docker save` of a 1 GB image is not
//! copied before its layers are unpacked).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex};
use serde::Deserialize;

use super::digest::{hex_of, Verifying};
use super::manifest::{self, parse_manifest, Manifest, PlannedLayer, Platform};
use super::{ImageError, Plan, MAX_DOCUMENT_BYTES};

/// The annotation an OCI layout names its images by.
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A tree of files: a directory, or a tar archive read in place.
pub enum Files {
    /// A directory on the node.
    Dir(PathBuf),
    /// A plain tar archive: member path -> (offset of its bytes, size).
    Archive {
        /// The archive.
        file: PathBuf,
        /// Where each regular member's bytes are.
        members: HashMap<String, (u64, u64)>,
    },
}

fn clean(path: &str) -> String {
    path.trim_start_matches("./")
        .trim_start_matches('/')
        .to_string()
}

impl Files {
    /// Indexes the tar archive `file` (one pass over its headers).
    pub fn archive(file: &Path) -> Result<Files, ImageError> {
        let missing =
            |e: io::Error| ImageError::Missing(format!("cannot read '{}': {e}", file.display()));
        let meta = std::fs::metadata(file).map_err(missing)?;
        if !meta.is_file() {
            return Err(ImageError::Invalid(format!(
                "'{}' is not a regular file",
                file.display()
            )));
        }
        let mut f = File::open(file).map_err(missing)?;
        let mut head = [0u8; 512];
        let n = f.read(&mut head).map_err(missing)?;
        if manifest::Compression::sniff(&head[..n]) != manifest::Compression::None {
            return Err(ImageError::Invalid(format!(
                "'{}' is compressed: hutch reads uncompressed image archives (as skopeo and docker save write them); decompress it first",
                file.display()
            )));
        }
        if head.get(257..262) != Some(b"ustar".as_slice()) {
            return Err(ImageError::Invalid(format!(
                "'{}' is not a tar archive",
                file.display()
            )));
        }
        f.seek(SeekFrom::Start(0)).map_err(missing)?;
        let mut archive = tar::Archive::new(f);
        let mut members = HashMap::new();
        let mut links = Vec::new();
        let bad = |e: io::Error| {
            ImageError::Invalid(format!("reading the archive '{}': {e}", file.display()))
        };
        for entry in archive.entries().map_err(bad)? {
            let entry = entry.map_err(bad)?;
            let path = clean(&String::from_utf8_lossy(&entry.path_bytes()));
            let kind = entry.header().entry_type();
            if kind.is_file() || kind.is_contiguous() {
                members.insert(path, (entry.raw_file_position(), entry.size()));
            } else if kind.is_symlink() || kind.is_hard_link() {
                let target = String::from_utf8_lossy(&entry.link_name_bytes().unwrap_or_default())
                    .into_owned();
                let base = if kind.is_symlink() {
                    Path::new(&path)
                        .parent()
                        .map(|p| p.to_path_buf())
                        .unwrap_or_default()
                } else {
                    PathBuf::new()
                };
                links.push((path, base.join(target)));
            }
        }
        // `docker save` links a layer that two images share: follow links inside the archive.
        for (path, target) in links {
            let mut resolved = PathBuf::new();
            for c in target.components() {
                match c {
                    std::path::Component::ParentDir => {
                        resolved.pop();
                    }
                    std::path::Component::Normal(n) => resolved.push(n),
                    _ => {}
                }
            }
            if let Some(at) = members.get(&clean(&resolved.to_string_lossy())).copied() {
                members.insert(path, at);
            }
        }
        Ok(Files::Archive {
            file: file.to_path_buf(),
            members,
        })
    }

    /// Opens member `rel`; returns a reader and its size.
    pub fn open(&self, rel: &str) -> Result<(Box<dyn Read + Send>, u64), ImageError> {
        let rel = clean(rel);
        if rel.split('/').any(|c| c == "..") {
            return Err(ImageError::Invalid(format!("'{rel}' leaves the image")));
        }
        match self {
            Files::Dir(dir) => {
                let path = dir.join(&rel);
                let missing = |e: io::Error| {
                    ImageError::Missing(format!("cannot read '{}': {e}", path.display()))
                };
                let meta = std::fs::metadata(&path).map_err(missing)?;
                if !meta.is_file() {
                    return Err(ImageError::Invalid(format!(
                        "'{}' is not a regular file",
                        path.display()
                    )));
                }
                Ok((Box::new(File::open(&path).map_err(missing)?), meta.len()))
            }
            Files::Archive { file, members } => {
                let (offset, size) = members.get(&rel).copied().ok_or_else(|| {
                    ImageError::Missing(format!("the archive '{}' has no '{rel}'", file.display()))
                })?;
                let mut f = File::open(file).map_err(|e| {
                    ImageError::Missing(format!("cannot read '{}': {e}", file.display()))
                })?;
                f.seek(SeekFrom::Start(offset)).map_err(|e| {
                    ImageError::Missing(format!("cannot read '{}': {e}", file.display()))
                })?;
                Ok((Box::new(f.take(size)), size))
            }
        }
    }

    /// Reads member `rel` whole (a JSON document: at most [`MAX_DOCUMENT_BYTES`]).
    pub fn read(&self, rel: &str) -> Result<Vec<u8>, ImageError> {
        let (reader, size) = self.open(rel)?;
        if size > MAX_DOCUMENT_BYTES {
            return Err(ImageError::Invalid(format!(
                "'{rel}' is {size} bytes: too large for a JSON document"
            )));
        }
        let mut out = Vec::with_capacity(size as usize);
        reader
            .take(MAX_DOCUMENT_BYTES)
            .read_to_end(&mut out)
            .map_err(|e| ImageError::Missing(format!("reading '{rel}': {e}")))?;
        Ok(out)
    }

    /// Reads the blob `digest`, checking its digest (and its size, where a descriptor gives
    /// one).
    pub fn read_blob(&self, digest: &str, size: Option<u64>) -> Result<Vec<u8>, ImageError> {
        let rel = blob_path(digest)?;
        let (reader, len) = self.open(&rel)?;
        if size.is_some_and(|s| s != len) || len > MAX_DOCUMENT_BYTES {
            return Err(ImageError::DigestMismatch(format!(
                "blob {digest} is {len} bytes, not the {} its descriptor says",
                size.map_or("size".into(), |s| s.to_string())
            )));
        }
        let mut out = Vec::new();
        let mut v = Verifying::new(reader, len);
        v.read_to_end(&mut out)
            .map_err(|e| ImageError::Missing(format!("reading blob {digest}: {e}")))?;
        let (got, _) = v
            .finish()
            .map_err(|e| ImageError::Missing(format!("reading blob {digest}: {e}")))?;
        if got != digest {
            return Err(ImageError::DigestMismatch(format!(
                "blob {digest} has digest {got}"
            )));
        }
        Ok(out)
    }
}

/// Where a layout keeps blob `digest`.
pub fn blob_path(digest: &str) -> Result<String, ImageError> {
    manifest::check_digest("blob", digest)?;
    Ok(format!(
        "blobs/sha256/{}",
        hex_of(digest).unwrap_or_default()
    ))
}

/// Reads the image `tag` (or the only one) of the OCI layout in `files`.
pub fn oci_layout_plan(
    files: &Files,
    tag: Option<&str>,
    platform: &Platform,
) -> Result<Plan, ImageError> {
    files.read("oci-layout").map_err(|_| {
        ImageError::Invalid("not an OCI image layout: it has no 'oci-layout' file".into())
    })?;
    let index = ImageIndex::from_reader(&files.read("index.json")?[..])
        .map_err(|e| ImageError::Invalid(format!("index.json does not parse: {e}")))?;
    let name_of = |d: &Descriptor| {
        d.annotations()
            .as_ref()
            .and_then(|a| a.get(REF_NAME).cloned())
    };
    let names: Vec<String> = index.manifests().iter().filter_map(name_of).collect();
    let chosen = match tag {
        Some(tag) => index
            .manifests()
            .iter()
            .find(|d| name_of(d).as_deref() == Some(tag))
            .ok_or_else(|| {
                ImageError::NotFound(format!(
                    "tag '{tag}' is not in the layout (it has: {})",
                    if names.is_empty() {
                        "no tags".into()
                    } else {
                        names.join(", ")
                    }
                ))
            })?,
        None => match index.manifests().as_slice() {
            [only] => only,
            [] => return Err(ImageError::NotFound("the layout holds no image".into())),
            many => {
                return Err(ImageError::Invalid(format!(
                "the layout holds {} images: add a tag to the reference (oci:DIR:TAG; it has: {})",
                many.len(),
                names.join(", ")
            )))
            }
        },
    };
    let mut descriptor = chosen.clone();
    for _ in 0..2 {
        let digest = descriptor.digest().to_string();
        let bytes = files.read_blob(&digest, Some(descriptor.size()))?;
        match parse_manifest(&bytes, descriptor.media_type().as_ref())? {
            Manifest::Index(index) => descriptor = manifest::choose_platform(&index, platform)?,
            Manifest::Image(m) => {
                manifest::check_config_media_type(m.config())?;
                let config_digest = m.config().digest().to_string();
                let config_bytes = files.read_blob(&config_digest, Some(m.config().size()))?;
                return Plan::from_config(&m, digest, config_digest, &config_bytes, platform);
            }
        }
    }
    Err(ImageError::Invalid(
        "the index nests indexes more than one level deep".into(),
    ))
}

/// Parses an image config.
pub fn parse_config(bytes: &[u8]) -> Result<ImageConfiguration, ImageError> {
    ImageConfiguration::from_reader(bytes)
        .map_err(|e| ImageError::Invalid(format!("the image config does not parse: {e}")))
}

/// The one image of a `docker save` archive.
pub fn docker_archive_plan(files: &Files, platform: &Platform) -> Result<Plan, ImageError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Entry {
        config: String,
        #[serde(default)]
        layers: Vec<String>,
    }
    let entries: Vec<Entry> =
        serde_json::from_slice(&files.read("manifest.json").map_err(|_| {
            ImageError::Invalid(
                "not a docker-archive: it has no manifest.json (is it an oci-archive?)".into(),
            )
        })?)
        .map_err(|e| ImageError::Invalid(format!("manifest.json does not parse: {e}")))?;
    let entry = match entries.as_slice() {
        [one] => one,
        other => {
            return Err(ImageError::Invalid(format!(
                "the archive holds {} images: hutch imports archives of exactly one",
                other.len()
            )))
        }
    };
    // Its name is its digest: `HEX.json` (older) or `blobs/sha256/HEX` (newer).
    let config_hex = entry
        .config
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .trim_end_matches(".json")
        .to_string();
    let config_digest = format!("sha256:{config_hex}");
    let config_bytes = files.read(&entry.config)?;
    if hex_of(&config_digest).is_some() && super::digest::sha256_of(&config_bytes) != config_digest
    {
        return Err(ImageError::DigestMismatch(format!(
            "the config '{}' does not have the digest its name says",
            entry.config
        )));
    }
    let config = parse_config(&config_bytes)?;
    manifest::check_config_platform(&config, platform)?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != entry.layers.len() {
        return Err(ImageError::Invalid(format!(
            "manifest.json lists {} layers but the config {} diff ids",
            entry.layers.len(),
            diff_ids.len()
        )));
    }
    let layers = entry
        .layers
        .iter()
        .zip(diff_ids)
        .map(|(location, diff_id)| {
            manifest::check_digest("diff id", diff_id)?;
            Ok(PlannedLayer {
                digest: None,
                size: None,
                compression: None,
                diff_id: diff_id.clone(),
                location: location.clone(),
            })
        })
        .collect::<Result<_, ImageError>>()?;
    Ok(Plan {
        manifest_digest: super::digest::sha256_of(&files.read("manifest.json")?),
        config_digest,
        layers,
        config: manifest::summarize(&config),
    })
}
