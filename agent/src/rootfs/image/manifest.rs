//! Reading an image's index, manifest and config (with `oci-spec`'s types), choosing the
//! platform, and deciding what hutch can use: pure, so every rule is tested without a host.
//!
//! Docker's schema 2 manifests and manifest lists have the OCI structure with other media
//! types, so both are read by the same code.

use std::collections::BTreeMap;

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};
use serde::{Deserialize, Serialize};

use super::digest::is_sha256;
use super::ImageError;
use hutch_core::spec::ImageDefaults;

/// Media types of an index (OCI image index, Docker manifest list).
pub const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
/// Media types of a manifest (OCI, Docker schema 2).
pub const MANIFEST_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];
/// Media types of an image config.
const CONFIG_TYPES: [&str; 2] = [
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// The compression a layer media type declares; `None` for a type hutch cannot unpack
    /// (encrypted, an artifact, anything not a tar).
    pub fn of_media_type(media_type: &str) -> Option<Compression> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                Some(Compression::Gzip)
            }
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => {
                Some(Compression::Zstd)
            }
            _ => None,
        }
    }

    /// The compression the first bytes of a blob show (for archives that name no media
    /// type, such as `docker save` output).
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// A platform: `linux/amd64`, `linux/arm64/v8`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// Go's architecture names: `amd64`, `arm64`.
    pub architecture: String,
    /// `v8`, `v7`; `None`: any.
    pub variant: Option<String>,
}

impl Platform {
    /// `os/arch[/variant]`, or the node's own when empty.
    pub fn parse_or_host(s: &str) -> Platform {
        let mut parts = s.split('/');
        match (parts.next(), parts.next()) {
            (Some(os), Some(arch)) if !os.is_empty() => Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: parts.next().map(str::to_string),
            },
            _ => Platform::host(),
        }
    }

    /// This node's: Linux and the architecture this agent was built for, in Go's names.
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: None,
        }
    }

    fn matches(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        self.os == os
            && self.architecture == architecture
            && self.variant.as_deref().is_none_or(|v| Some(v) == variant)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match &self.variant {
            Some(v) => write!(f, "/{v}"),
            None => Ok(()),
        }
    }
}

fn media_type_of(d: &Descriptor) -> String {
    d.media_type().to_string()
}

/// An index's manifest for `platform`.
pub fn choose_platform(index: &ImageIndex, platform: &Platform) -> Result<Descriptor, ImageError> {
    let mut offered = Vec::new();
    for d in index.manifests() {
        let Some(p) = d.platform() else { continue };
        let (os, arch) = (p.os().to_string(), p.architecture().to_string());
        if platform.matches(&os, &arch, p.variant().as_deref())
            && MANIFEST_TYPES.contains(&media_type_of(d).as_str())
        {
            return Ok(d.clone());
        }
        offered.push(match p.variant() {
            Some(v) => format!("{os}/{arch}/{v}"),
            None => format!("{os}/{arch}"),
        });
    }
    Err(ImageError::Unsupported(format!(
        "the image has no manifest for platform {platform} (it has: {})",
        if offered.is_empty() {
            "none named".to_string()
        } else {
            offered.join(", ")
        }
    )))
}

/// Parses a manifest or an index by its declared (or given) media type.
pub enum Manifest {
    /// An image index: one more step, choosing the platform.
    Index(Box<ImageIndex>),
    /// An image manifest.
    Image(Box<ImageManifest>),
}

/// Parses `bytes`, which the registry or the layout says has `media_type` (may be empty:
/// then the document's own `mediaType` field decides).
pub fn parse_manifest(bytes: &[u8], media_type: &str) -> Result<Manifest, ImageError> {
    #[derive(Deserialize)]
    struct Peek {
        #[serde(rename = "mediaType", default)]
        media_type: String,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
    }
    let peek: Peek = serde_json::from_slice(bytes)
        .map_err(|e| ImageError::Invalid(format!("the manifest is not JSON: {e}")))?;
    let kind = if media_type.is_empty() {
        peek.media_type.as_str()
    } else {
        media_type
    };
    let is_index = INDEX_TYPES.contains(&kind) || (kind.is_empty() && peek.manifests.is_some());
    if is_index {
        return ImageIndex::from_reader(bytes)
            .map(|i| Manifest::Index(Box::new(i)))
            .map_err(|e| ImageError::Invalid(format!("the image index does not parse: {e}")));
    }
    if !kind.is_empty() && !MANIFEST_TYPES.contains(&kind) {
        return Err(ImageError::Unsupported(format!(
            "media type '{kind}' is no container image manifest (hutch reads OCI and Docker schema 2 images)"
        )));
    }
    ImageManifest::from_reader(bytes)
        .map(|m| Manifest::Image(Box::new(m)))
        .map_err(|e| ImageError::Invalid(format!("the image manifest does not parse: {e}")))
}

/// One layer as the manifest and config describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedLayer {
    /// The blob's digest (`None` in a `docker save` archive, which names files instead).
    pub digest: Option<String>,
    /// The blob's size, where known.
    pub size: Option<u64>,
    /// How it is compressed, where the media type says (`None`: look at its first bytes).
    pub compression: Option<Compression>,
    /// The uncompressed tar's digest, from the config.
    pub diff_id: String,
    /// Where an archive keeps it (a `docker save` archive's path); empty otherwise.
    pub location: String,
}

/// Checks a config against its manifest's layers and `platform`; returns the layers to
/// unpack (lowest first).
pub fn plan_layers(
    manifest_layers: &[Descriptor],
    config: &ImageConfiguration,
    platform: &Platform,
) -> Result<Vec<PlannedLayer>, ImageError> {
    check_config_platform(config, platform)?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest_layers.len() {
        return Err(ImageError::Invalid(format!(
            "the manifest lists {} layers but the config {} diff ids",
            manifest_layers.len(),
            diff_ids.len()
        )));
    }
    manifest_layers
        .iter()
        .zip(diff_ids)
        .map(|(d, diff_id)| {
            let media_type = media_type_of(d);
            let compression = Compression::of_media_type(&media_type).ok_or_else(|| {
                ImageError::Unsupported(format!(
                    "layer {} has media type '{media_type}', which is no tar layer hutch can unpack (plain, gzip or zstd)",
                    d.digest()
                ))
            })?;
            let digest = d.digest().to_string();
            check_digest("layer", &digest)?;
            check_digest("diff id", diff_id)?;
            Ok(PlannedLayer {
                digest: Some(digest),
                size: Some(d.size()),
                compression: Some(compression),
                diff_id: diff_id.clone(),
                location: String::new(),
            })
        })
        .collect()
}

/// Refuses a config of another OS or architecture than `platform`.
pub fn check_config_platform(
    config: &ImageConfiguration,
    platform: &Platform,
) -> Result<(), ImageError> {
    let (os, arch) = (config.os().to_string(), config.architecture().to_string());
    if !platform.matches(&os, &arch, config.variant().as_deref()) {
        return Err(ImageError::Unsupported(format!(
            "the image is for {os}/{arch}, not {platform}"
        )));
    }
    Ok(())
}

/// Refuses a config whose media type is not an image config (an artifact, a chart).
pub fn check_config_media_type(d: &Descriptor) -> Result<(), ImageError> {
    let t = media_type_of(d);
    if !CONFIG_TYPES.contains(&t.as_str()) {
        return Err(ImageError::Unsupported(format!(
            "config media type '{t}' is no container image config: this is not a container image"
        )));
    }
    check_digest("config", d.digest().as_ref())
}

/// Refuses a digest of another algorithm than sha256, or a malformed one.
pub fn check_digest(what: &str, digest: &str) -> Result<(), ImageError> {
    if is_sha256(digest) {
        Ok(())
    } else {
        Err(ImageError::Unsupported(format!(
            "{what} digest '{}' is not sha256:<64 hex digits>, the only algorithm hutch verifies",
            digest.chars().take(80).collect::<String>()
        )))
    }
}

/// What hutch keeps of a config: the defaults, and what `rootfs inspect` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigSummary {
    /// The container defaults.
    pub defaults: ImageDefaults,
    /// `80/tcp`.
    pub exposed_ports: Vec<String>,
    /// The image's labels.
    pub labels: BTreeMap<String, String>,
    /// `linux`.
    pub os: String,
    /// `amd64`.
    pub architecture: String,
}

/// The summary of `config`.
pub fn summarize(config: &ImageConfiguration) -> ConfigSummary {
    let c = config.config().clone().unwrap_or_default();
    ConfigSummary {
        defaults: ImageDefaults {
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            env: c.env().clone().unwrap_or_default(),
            working_dir: c.working_dir().clone().unwrap_or_default(),
            user: c.user().clone().unwrap_or_default(),
        },
        exposed_ports: c.exposed_ports().clone().unwrap_or_default(),
        labels: c.labels().clone().unwrap_or_default().into_iter().collect(),
        os: config.os().to_string(),
        architecture: config.architecture().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/bin/sh"],"Cmd":["-c","echo hi"],"Env":["PATH=/bin"],"WorkingDir":"/w","User":"1:2","ExposedPorts":{"80/tcp":{}},"Labels":{"a":"b"}},"rootfs":{"type":"layers","diff_ids":["sha256:1111111111111111111111111111111111111111111111111111111111111111"]}}"#;

    fn layer(media_type: &str) -> Descriptor {
        serde_json::from_str(&format!(
            r#"{{"mediaType":"{media_type}","digest":"sha256:{}","size":10}}"#,
            "2".repeat(64)
        ))
        .expect("descriptor")
    }

    fn amd64() -> Platform {
        Platform::parse_or_host("linux/amd64")
    }

    #[test]
    fn a_docker_config_gives_the_defaults() {
        let config = ImageConfiguration::from_reader(CONFIG.as_bytes()).expect("config");
        let s = summarize(&config);
        assert_eq!(s.defaults.entrypoint, ["/bin/sh"]);
        assert_eq!(s.defaults.cmd, ["-c", "echo hi"]);
        assert_eq!(s.defaults.user, "1:2");
        assert_eq!(s.exposed_ports, ["80/tcp"]);
        let layers = plan_layers(
            &[layer("application/vnd.docker.image.rootfs.diff.tar.gzip")],
            &config,
            &amd64(),
        )
        .expect("plan");
        assert_eq!(layers[0].compression, Some(Compression::Gzip));
    }

    #[test]
    fn what_hutch_cannot_use_is_refused() {
        let config = ImageConfiguration::from_reader(CONFIG.as_bytes()).expect("config");
        let e = plan_layers(
            &[layer("application/vnd.oci.image.layer.v1.tar+encrypted")],
            &config,
            &amd64(),
        )
        .expect_err("encrypted");
        assert!(matches!(e, ImageError::Unsupported(m) if m.contains("no tar layer")));
        let e = plan_layers(&[], &config, &amd64()).expect_err("count");
        assert!(matches!(e, ImageError::Invalid(_)));
        let arm = Platform::parse_or_host("linux/arm64");
        let e = plan_layers(
            &[layer("application/vnd.oci.image.layer.v1.tar")],
            &config,
            &arm,
        )
        .expect_err("arch");
        assert!(e.to_string().contains("not linux/arm64"), "{e}");
        assert!(matches!(
            parse_manifest(b"{}", "application/vnd.cncf.helm.config.v1+json"),
            Err(ImageError::Unsupported(_))
        ));
        assert!(matches!(
            parse_manifest(b"not json", ""),
            Err(ImageError::Invalid(_))
        ));
    }

    #[test]
    fn an_index_gives_the_platforms_manifest() {
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{a}","size":1,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},
            {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{b}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
            a = "a".repeat(64),
            b = "b".repeat(64)
        );
        let Manifest::Index(index) = parse_manifest(index.as_bytes(), "").expect("index") else {
            panic!("not read as an index")
        };
        let d = choose_platform(&index, &amd64()).expect("amd64");
        assert!(d.digest().to_string().ends_with(&"b".repeat(64)));
        let d = choose_platform(&index, &Platform::parse_or_host("linux/arm64")).expect("arm64");
        assert!(d.digest().to_string().ends_with(&"a".repeat(64)));
        let e = choose_platform(&index, &Platform::parse_or_host("linux/s390x")).expect_err("none");
        assert!(e.to_string().contains("linux/arm64/v8, linux/amd64"), "{e}");
    }
}
