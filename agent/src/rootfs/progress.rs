//! Build progress as typed events, so a caller can draw a progress bar, and the parser that
//! turns `debootstrap`'s `I:` lines into them.
//!
//! debootstrap prints one line per package and step (`I: Retrieving libc6 2.36-9`,
//! `I: Unpacking libc6...`, `I: Configuring libc6...`). The parser counts packages per stage;
//! once retrieval is over the total is known, so later stages carry `done / total`.

use serde::{Deserialize, Serialize};

/// A step of a rootfs build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildStage {
    /// Waiting for another build of the same rootfs (in this or another process).
    Waiting,
    /// Fetching and checking the release and package indices; resolving dependencies.
    Resolving,
    /// Downloading packages.
    Downloading,
    /// Extracting the essential packages.
    Extracting,
    /// Unpacking packages with dpkg.
    Unpacking,
    /// Configuring packages with dpkg.
    Configuring,
    /// Copying a directory or reading an archive.
    Copying,
    /// Recording metadata and moving the finished rootfs into place.
    Finalizing,
    /// The rootfs is ready.
    Done,
}

/// One progress report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildProgress {
    /// Current stage.
    pub stage: BuildStage,
    /// Human-readable detail (e.g. the package being configured).
    pub message: String,
    /// Packages done in this stage, where known.
    pub packages_done: Option<u32>,
    /// Packages in this stage in total, where known.
    pub packages_total: Option<u32>,
    /// Bytes done, where the build reads an archive.
    pub bytes_done: Option<u64>,
    /// Bytes in total, where known.
    pub bytes_total: Option<u64>,
}

impl BuildProgress {
    /// A report with only a stage and a message.
    pub fn stage(stage: BuildStage, message: impl Into<String>) -> Self {
        BuildProgress {
            stage,
            message: message.into(),
            packages_done: None,
            packages_total: None,
            bytes_done: None,
            bytes_total: None,
        }
    }

    /// A report of bytes read from an archive.
    pub fn bytes(stage: BuildStage, message: impl Into<String>, done: u64, total: u64) -> Self {
        BuildProgress {
            bytes_done: Some(done),
            bytes_total: Some(total),
            ..BuildProgress::stage(stage, message)
        }
    }
}

/// Turns debootstrap output lines into [`BuildProgress`] events.
#[derive(Debug, Default)]
pub struct DebootstrapParser {
    retrieved: u32,
    extracted: u32,
    unpacked: u32,
    configured: u32,
}

impl DebootstrapParser {
    /// A parser at the start of a build.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one line; returns the progress it reports, if any.
    pub fn feed(&mut self, line: &str) -> Option<BuildProgress> {
        let info = line.strip_prefix("I: ")?.trim();
        let first_word = info.split_whitespace().next()?;
        let package = || {
            info.split_whitespace()
                .nth(1)
                .unwrap_or("")
                .trim_end_matches("...")
                .to_string()
        };
        let total = (self.retrieved > 0).then_some(self.retrieved);
        let counted = |stage, done: u32, total: Option<u32>, message: String| BuildProgress {
            packages_done: Some(done),
            packages_total: total,
            ..BuildProgress::stage(stage, message)
        };
        let per_package = info.ends_with("...")
            && !info.contains("required packages")
            && !info.contains("the base system");
        let progress = match first_word {
            "Retrieving" if info.split_whitespace().count() >= 3 => {
                self.retrieved += 1;
                counted(
                    BuildStage::Downloading,
                    self.retrieved,
                    None,
                    format!("retrieving {}", package()),
                )
            }
            "Validating" if self.retrieved > 0 => counted(
                BuildStage::Downloading,
                self.retrieved,
                None,
                format!("validating {}", package()),
            ),
            "Extracting" => {
                self.extracted += 1;
                counted(
                    BuildStage::Extracting,
                    self.extracted,
                    total,
                    format!("extracting {}", package()),
                )
            }
            "Unpacking" if per_package => {
                self.unpacked += 1;
                counted(
                    BuildStage::Unpacking,
                    self.unpacked.min(total.unwrap_or(u32::MAX)),
                    total,
                    format!("unpacking {}", package()),
                )
            }
            "Configuring" if per_package => {
                self.configured += 1;
                counted(
                    BuildStage::Configuring,
                    self.configured.min(total.unwrap_or(u32::MAX)),
                    total,
                    format!("configuring {}", package()),
                )
            }
            "Base" => BuildProgress::stage(BuildStage::Finalizing, info),
            _ if self.retrieved == 0 => BuildProgress::stage(BuildStage::Resolving, info),
            _ => BuildProgress::stage(BuildStage::Unpacking, info),
        };
        Some(progress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_debootstrap_run() {
        let lines = [
            "I: Retrieving InRelease ",
            "I: Checking Release signature",
            "I: Resolving dependencies of required packages...",
            "I: Retrieving adduser 3.134",
            "I: Validating adduser 3.134",
            "I: Retrieving apt 2.6.1",
            "I: Extracting adduser...",
            "I: Unpacking required packages...",
            "I: Unpacking adduser...",
            "I: Configuring apt...",
            "I: Base system installed successfully.",
            "W: something odd",
        ];
        let mut p = DebootstrapParser::new();
        let out: Vec<_> = lines.iter().map(|l| p.feed(l)).collect();
        assert_eq!(
            out[0].as_ref().map(|e| e.stage),
            Some(BuildStage::Resolving)
        );
        assert_eq!(
            out[2].as_ref().map(|e| e.stage),
            Some(BuildStage::Resolving)
        );
        let dl = out[3].as_ref().expect("download event");
        assert_eq!(dl.stage, BuildStage::Downloading);
        assert_eq!(dl.packages_done, Some(1));
        assert_eq!(dl.message, "retrieving adduser");
        assert_eq!(
            out[4].as_ref().map(|e| e.stage),
            Some(BuildStage::Downloading)
        );
        assert_eq!(out[5].as_ref().and_then(|e| e.packages_done), Some(2));
        let ex = out[6].as_ref().expect("extract event");
        assert_eq!(
            (ex.stage, ex.packages_done, ex.packages_total),
            (BuildStage::Extracting, Some(1), Some(2))
        );
        let un = out[8].as_ref().expect("unpack event");
        assert_eq!(
            (un.stage, un.packages_done, un.packages_total),
            (BuildStage::Unpacking, Some(1), Some(2))
        );
        assert_eq!(un.message, "unpacking adduser");
        let cf = out[9].as_ref().expect("configure event");
        assert_eq!(
            (cf.stage, cf.packages_done),
            (BuildStage::Configuring, Some(1))
        );
        assert_eq!(
            out[10].as_ref().map(|e| e.stage),
            Some(BuildStage::Finalizing)
        );
        assert!(out[11].is_none(), "warnings are logged, not progress");
    }

    #[test]
    fn non_info_lines_are_ignored() {
        let mut p = DebootstrapParser::new();
        assert_eq!(
            p.feed("E: No such script: /usr/share/debootstrap/scripts/nosuch"),
            None
        );
        assert_eq!(p.feed(""), None);
    }
}
