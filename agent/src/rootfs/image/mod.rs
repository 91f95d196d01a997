//! OCI and Docker images as rootfs: read from a layout, an archive or a registry
//! ([`local`], [`registry`]), checked ([`manifest`]), each layer verified ([`digest`]) and
//! unpacked once per node into the shared layer store ([`layers`], [`unpack`]).
//!
//! An image entry of the rootfs store holds no tree of its own: its `image.json` lists its
//! layers, lowest first, and the image's defaults; a container's root is an overlay of
//! those layers plus its writable layer, so a 10-layer image starts as fast as a 1-layer
//! one and two images sharing a base share its disk.

pub mod digest;
pub mod layers;
pub mod local;
pub mod manifest;
pub mod registry;
pub mod tar_guard;
pub mod unpack;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use hutch_core::image_ref::ImageRef;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use self::digest::Verifying;
use self::layers::Layers;
use self::manifest::{Compression, ConfigSummary, PlannedLayer, Platform};
use self::unpack::{UnpackError, UnpackRules};
use super::progress::{BuildProgress, BuildStage};

/// Most bytes of a manifest, index or config.
pub const MAX_DOCUMENT_BYTES: u64 = 4 << 20;
/// The default bound on an image's unpacked bytes (`--image-max-size`).
pub const DEFAULT_MAX_IMAGE_BYTES: u64 = 32 << 30;
/// Most members (files, directories, links) of one image: each costs an inode and a block
/// whatever its bytes (a large distribution image has a few hundred thousand).
pub const MAX_IMAGE_ENTRIES: u64 = 2_000_000;
/// Most layers of one image (Docker's own limit is 125 to 127).
pub const MAX_LAYERS: usize = 127;
/// Longest one layer may take to arrive and unpack.
pub const LAYER_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// Why an image could not be imported. Each maps to its own gRPC code at the edge.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ImageError {
    /// The image (or what the agent was given) is malformed.
    #[error("{0}")]
    Invalid(String),
    /// No such image, tag or blob.
    #[error("{0}")]
    NotFound(String),
    /// A local file of the image cannot be read.
    #[error("{0}")]
    Missing(String),
    /// The image is well formed but hutch cannot use it here (media type, platform).
    #[error("{0}")]
    Unsupported(String),
    /// Content does not have the digest (or size) that names it.
    #[error("{0}")]
    DigestMismatch(String),
    /// The registry cannot be reached, or broke off.
    #[error("{0}")]
    Unavailable(String),
    /// The registry refused the credentials, or there are none to use.
    #[error("{0}")]
    Auth(String),
    /// A layer would write outside its directory, or holds what the agent does not allow.
    #[error("layer {layer} is refused: {why}")]
    LayerRefused {
        /// Its diff id.
        layer: String,
        /// The entry and the rule.
        why: String,
    },
    /// The image unpacks to more than the agent allows.
    #[error("{0}")]
    TooLarge(String),
    /// This agent does not pull images for containers.
    #[error("{0}")]
    NotAllowed(String),
    /// The node's disk failed.
    #[error("{0}")]
    Io(String),
}

/// How the agent imports images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageOptions {
    /// `HOST:PORT` of registries reached over plain HTTP (loopback ones always are).
    pub insecure_registries: Vec<String>,
    /// Docker `config.json`-style credentials file.
    pub auth_file: Option<PathBuf>,
    /// Most unpacked bytes of one image.
    pub max_image_bytes: u64,
    /// Device nodes in layers are created rather than refused.
    pub allow_devices: bool,
    /// A container whose rootfs is an image reference has it imported on the fly.
    pub allow_pull: bool,
}

impl Default for ImageOptions {
    fn default() -> Self {
        ImageOptions {
            insecure_registries: Vec::new(),
            auth_file: None,
            max_image_bytes: DEFAULT_MAX_IMAGE_BYTES,
            allow_devices: false,
            allow_pull: true,
        }
    }
}

/// An image, read and checked, before its layers are fetched.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The manifest's digest.
    pub manifest_digest: String,
    /// The config's digest.
    pub config_digest: String,
    /// What the config says.
    pub config: ConfigSummary,
    /// Its layers, lowest first.
    pub layers: Vec<PlannedLayer>,
}

impl Plan {
    /// The plan of manifest `m` (`manifest_digest`) whose config, already checked against
    /// `config_digest`, is `config_bytes`.
    pub fn from_config(
        m: &oci_spec::image::ImageManifest,
        manifest_digest: String,
        config_digest: String,
        config_bytes: &[u8],
        platform: &Platform,
    ) -> Result<Plan, ImageError> {
        let config = local::parse_config(config_bytes)?;
        Ok(Plan {
            manifest_digest,
            config_digest,
            layers: manifest::plan_layers(m.layers(), &config, platform)?,
            config: manifest::summarize(&config),
        })
    }
}

/// One layer of an imported image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerMeta {
    /// The uncompressed tar's digest: its name in the layer store.
    pub diff_id: String,
    /// The blob's digest, where the source names it.
    #[serde(default)]
    pub digest: Option<String>,
    /// The blob's size, where known.
    #[serde(default)]
    pub size: Option<u64>,
    /// Bytes of its files.
    pub unpacked_bytes: u64,
}

/// What an image entry records (`image.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMeta {
    /// The reference it was imported from.
    pub reference: String,
    /// The manifest's digest.
    pub manifest_digest: String,
    /// The config's digest.
    pub config_digest: String,
    /// The config's defaults and descriptions.
    pub config: ConfigSummary,
    /// Lowest first.
    pub layers: Vec<LayerMeta>,
}

impl ImageMeta {
    /// Sum of its layers' unpacked bytes.
    pub fn unpacked_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.unpacked_bytes).sum()
    }
}

/// Where the image's blobs come from.
enum Source {
    Files(local::Files),
    Registry(Box<registry::Pull>, tokio::runtime::Handle),
}

impl Source {
    fn open(&self, layer: &PlannedLayer) -> Result<Box<dyn Read + Send>, ImageError> {
        match self {
            Source::Files(files) => {
                let rel = match &layer.digest {
                    Some(d) if layer.location.is_empty() => local::blob_path(d)?,
                    _ => layer.location.clone(),
                };
                Ok(files.open(&rel)?.0)
            }
            Source::Registry(pull, handle) => pull.open_layer(handle, layer),
        }
    }
}

/// Resolves what a reference points at now, for the store's key: a registry tag's manifest
/// digest (one request); `None` for local images, which are keyed by their files.
pub async fn resolve_registry_digest(
    reference: &str,
    credentials: &str,
    options: &ImageOptions,
) -> Result<Option<String>, ImageError> {
    let ImageRef::Registry {
        registry,
        repository,
        tag,
        digest,
    } = ImageRef::parse(reference).map_err(|e| ImageError::Invalid(e.to_string()))?
    else {
        return Ok(None);
    };
    let auth = auth_for(&registry, credentials, options)?;
    let pull = registry::Pull::new(&registry, &repository, tag, digest, auth, options);
    pull.resolve_digest().await.map(Some)
}

fn auth_for(
    registry: &str,
    credentials: &str,
    options: &ImageOptions,
) -> Result<oci_client::secrets::RegistryAuth, ImageError> {
    // An entry is the registry's own (`HOST:PORT`, or `HOST:PORT/namespace` for one of
    // several accounts there): a request cannot send one registry's password to another.
    let own = credentials == registry || credentials.starts_with(&format!("{registry}/"));
    if !credentials.is_empty() && !own {
        return Err(ImageError::Auth(format!(
            "credentials '{credentials}' are not for the registry {registry}: name an entry of that registry ({registry} or {registry}/...)"
        )));
    }
    let entry = if credentials.is_empty() {
        registry
    } else {
        credentials
    };
    registry::credentials(options.auth_file.as_deref(), entry, !credentials.is_empty())
}

/// An image as a build asks for it.
#[derive(Debug, Clone, Copy)]
pub struct Wanted<'a> {
    /// The reference.
    pub reference: &'a str,
    /// `os/arch[/variant]`; empty: the node's.
    pub platform: &'a str,
    /// The credentials entry; empty: the registry's.
    pub credentials: &'a str,
    /// For a registry image, the manifest digest the tag was resolved to.
    pub digest: Option<&'a str>,
}

/// Imports `reference` (resolved: a registry image pinned to `digest`) into the layer
/// store of `store_root`; returns what the entry records. Runs on a blocking thread inside
/// the agent's runtime (registry streams are driven by `handle`).
pub fn import(
    store_root: &Path,
    wanted: &Wanted,
    options: &ImageOptions,
    progress: &dyn Fn(BuildProgress),
    log: &mut dyn FnMut(&str),
) -> Result<ImageMeta, ImageError> {
    let Wanted {
        reference,
        platform,
        credentials,
        digest,
    } = *wanted;
    let parsed = ImageRef::parse(reference).map_err(|e| ImageError::Invalid(e.to_string()))?;
    let platform = Platform::parse_or_host(platform);
    progress(BuildProgress::stage(
        BuildStage::Resolving,
        format!("reading {reference} for {platform}"),
    ));
    let (plan, source) = match parsed {
        ImageRef::OciLayout { dir, tag } => {
            let files = local::Files::Dir(dir);
            (
                local::oci_layout_plan(&files, tag.as_deref(), &platform)?,
                Source::Files(files),
            )
        }
        ImageRef::OciArchive { file, tag } => {
            let files = local::Files::archive(&file)?;
            (
                local::oci_layout_plan(&files, tag.as_deref(), &platform)?,
                Source::Files(files),
            )
        }
        ImageRef::DockerArchive { file } => {
            let files = local::Files::archive(&file)?;
            (
                local::docker_archive_plan(&files, &platform)?,
                Source::Files(files),
            )
        }
        ImageRef::Registry {
            registry,
            repository,
            tag,
            digest: pinned,
        } => {
            let handle = tokio::runtime::Handle::try_current()
                .map_err(|e| ImageError::Io(format!("no runtime to pull with: {e}")))?;
            let auth = auth_for(&registry, credentials, options)?;
            let pull = registry::Pull::new(&registry, &repository, tag, pinned, auth, options);
            let digest = match digest {
                Some(d) => d.to_string(),
                None => handle.block_on(pull.resolve_digest())?,
            };
            let plan = handle.block_on(pull.plan(&digest, &platform))?;
            (plan, Source::Registry(Box::new(pull), handle))
        }
    };
    log(&format!(
        "{reference}: manifest {}, config {}, {} layers",
        plan.manifest_digest,
        plan.config_digest,
        plan.layers.len()
    ));
    let layers = Layers::new(store_root);
    if plan.layers.len() > MAX_LAYERS {
        return Err(ImageError::Unsupported(format!(
            "the image has {} layers: hutch takes at most {MAX_LAYERS}; flatten it",
            plan.layers.len()
        )));
    }
    if let Some(big) = plan
        .layers
        .iter()
        .find(|l| l.size.is_some_and(|s| s > options.max_image_bytes))
    {
        return Err(ImageError::TooLarge(format!(
            "layer {} is {} bytes, more than the agent's limit of {} for a whole image (--image-max-size)",
            big.diff_id,
            big.size.unwrap_or(0),
            hutch_core::units::human_bytes(options.max_image_bytes)
        )));
    }
    let mut budget = options.max_image_bytes;
    let mut entries_left = MAX_IMAGE_ENTRIES;
    let mut metas = Vec::with_capacity(plan.layers.len());
    let count = plan.layers.len();
    for (i, layer) in plan.layers.iter().enumerate() {
        let short: String = layer
            .diff_id
            .trim_start_matches("sha256:")
            .chars()
            .take(12)
            .collect();
        let label = format!("layer {}/{count} {short}", i + 1);
        let rules = UnpackRules {
            allow_devices: options.allow_devices,
            max_entries: entries_left,
        };
        let (unpacked, fetched) = layers.ensure(&layer.diff_id, |tree| {
            let blob = source.open(layer)?;
            fetch_layer(blob, layer, tree, budget, rules, &|done| {
                progress(BuildProgress::bytes(
                    BuildStage::Downloading,
                    label.clone(),
                    done,
                    layer.size.unwrap_or(0),
                ))
            })
        })?;
        if !fetched {
            progress(BuildProgress::stage(
                BuildStage::Extracting,
                format!("{label} already on the node"),
            ));
        }
        log(&format!(
            "{label}: {} ({} bytes, {} entries)",
            if fetched { "unpacked" } else { "shared" },
            unpacked.bytes,
            unpacked.entries
        ));
        budget = budget
            .checked_sub(unpacked.bytes)
            .ok_or_else(|| too_large(options.max_image_bytes))?;
        entries_left = entries_left.checked_sub(unpacked.entries).ok_or_else(|| {
            ImageError::TooLarge(format!(
                "the image has more than {MAX_IMAGE_ENTRIES} files, directories and links"
            ))
        })?;
        metas.push(LayerMeta {
            diff_id: layer.diff_id.clone(),
            digest: layer.digest.clone(),
            size: layer.size,
            unpacked_bytes: unpacked.bytes,
        });
    }
    Ok(ImageMeta {
        reference: reference.to_string(),
        manifest_digest: plan.manifest_digest,
        config_digest: plan.config_digest,
        config: plan.config,
        layers: metas,
    })
}

fn too_large(limit: u64) -> ImageError {
    ImageError::TooLarge(format!(
        "the image unpacks to more than the agent's limit of {} (--image-max-size)",
        hutch_core::units::human_bytes(limit)
    ))
}

/// Reads `blob` (the layer as stored), decompresses and unpacks it into `tree`, checking the
/// blob's digest and size and the uncompressed digest (the diff id) on the way; at most
/// `limit` uncompressed bytes. Returns the bytes of its files.
fn fetch_layer(
    blob: Box<dyn Read + Send>,
    layer: &PlannedLayer,
    tree: &Path,
    limit: u64,
    rules: UnpackRules,
    on_bytes: &dyn Fn(u64),
) -> Result<unpack::Unpacked, ImageError> {
    let corrupt = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::FileTooLarge => ImageError::DigestMismatch(format!(
            "layer {} is longer than its descriptor's {} bytes",
            layer.diff_id,
            layer.size.unwrap_or(0)
        )),
        _ => ImageError::Unavailable(format!("reading layer {}: {e}", layer.diff_id)),
    };
    let outer = Verifying::new(blob, layer.size.unwrap_or(u64::MAX)).reporting(on_bytes);
    let mut buffered = BufReader::with_capacity(1 << 20, outer);
    let compression = match layer.compression {
        Some(c) => c,
        None => Compression::sniff(buffered.fill_buf().map_err(corrupt)?),
    };
    let unpacked = (|| {
        let decompressed: Box<dyn Read + '_> = match compression {
            Compression::None => Box::new(&mut buffered),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&mut buffered)),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::with_buffer(&mut buffered)
                    .map_err(|e| ImageError::Io(format!("zstd: {e}")))?,
            ),
        };
        let mut diff = Verifying::new(decompressed, limit);
        let written = unpack::unpack_layer(unpack::CompletedTar::new(&mut diff), tree, rules)
            .map_err(|e| match e {
                UnpackError::Refused { path, why } => ImageError::LayerRefused {
                    layer: layer.diff_id.clone(),
                    why: format!("entry '{path}': {why}"),
                },
                UnpackError::Io { source, .. }
                    if source.kind() == std::io::ErrorKind::FileTooLarge =>
                {
                    too_large(limit)
                }
                UnpackError::Io { context, source } => match source.kind() {
                    std::io::ErrorKind::InvalidData
                    | std::io::ErrorKind::InvalidInput
                    | std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::Other => ImageError::Invalid(format!(
                        "layer {} is corrupt: {context}: {source}",
                        layer.diff_id
                    )),
                    _ => ImageError::Io(format!("layer {}: {context}: {source}", layer.diff_id)),
                },
            })?;
        let (digest, _) = diff.finish().map_err(|e| match e.kind() {
            std::io::ErrorKind::FileTooLarge => too_large(limit),
            _ => ImageError::Invalid(format!("layer {} is corrupt: {e}", layer.diff_id)),
        })?;
        Ok::<_, ImageError>((digest, written))
    })();
    // The blob's own digest first: content that is not the image's is reported as such,
    // whatever else it broke.
    let (blob_digest, blob_size) = buffered.into_inner().finish().map_err(corrupt)?;
    if let Some(expected) = &layer.digest {
        if &blob_digest != expected {
            return Err(ImageError::DigestMismatch(format!(
                "layer blob {expected} has digest {blob_digest}"
            )));
        }
    }
    let (diff_digest, written) = unpacked?;
    if let Some(size) = layer.size {
        if blob_size != size {
            return Err(ImageError::DigestMismatch(format!(
                "layer {} is {blob_size} bytes, not the {size} its descriptor says",
                layer.diff_id
            )));
        }
    }
    if diff_digest != layer.diff_id {
        return Err(ImageError::DigestMismatch(format!(
            "layer {} unpacks to content with digest {diff_digest}",
            layer.diff_id
        )));
    }
    Ok(written)
}

/// Removes the layers that no entry lists (`entries` gives the entry directories, each of
/// which may hold an `image.json`, read once builds are held off); returns the removed
/// diff ids.
pub fn collect_layers(
    store_root: &Path,
    entries: impl FnOnce() -> Vec<PathBuf>,
) -> Result<Vec<String>, ImageError> {
    Layers::new(store_root).collect(|| {
        let mut keep = HashSet::new();
        for dir in entries() {
            match crate::fsutil::read_json::<ImageMeta>(&dir.join("image.json")) {
                Ok(meta) => keep.extend(meta.layers.into_iter().map(|l| l.diff_id)),
                // No image.json: a tree entry.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(entry = %dir.display(), error = %e, "cannot read an image entry");
                    return None;
                }
            }
        }
        Some(keep)
    })
}
