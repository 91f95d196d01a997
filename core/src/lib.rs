//! hutch-core: the domain types every part of hutch shares, with no I/O beyond reading
//! randomness and replacing a file atomically: the names that become paths, human units,
//! the container spec and its validation, the security settings a spec may ask for, rootfs
//! sources, and the conversions between them and the wire types of `hutch.v1`.
//!
//! Both daemons validate with this crate, so the controller refuses a bad request with the
//! same message an agent would, before anything is scheduled; the SDK and the CLI parse with
//! it, so `--ns U` means the same everywhere.
//!
//! Modules, one concern each:
//! - [`names`]: names that end up in paths (container ids, rootfs names), and fresh ones.
//! - [`network`]: network modes, published ports, IPv4 blocks, a container's network status.
//! - [`health`]: health checks, their bounds and the state their results drive.
//! - [`mounts`]: binds, named volumes and tmpfs in Docker's spellings; their checks.
//! - [`units`]: `64M`, `1GiB` and back.
//! - [`process`]: signal names and the exit status a shell shows.
//! - [`step`]: the steps of a start, as failure records name them.
//! - [`spec`]: [`spec::ContainerSpec`], [`spec::Namespace`] (one parser) and validation.
//! - [`security`]: capabilities, seccomp, pids limit, privileged, run-as; their checks.
//! - [`seccomp_profile`]: seccomp profiles in Docker's JSON format.
//! - [`rootfs_source`]: where a rootfs comes from, and its checks.
//! - [`image_ref`]: OCI image references (`oci:`, `oci-archive:`, `docker-archive:`,
//!   `docker://`), parsed.
//! - `convert` (feature `wire`): wire <-> domain, with errors that name the field.
//! - `bearer` (feature `wire`): the client side of bearer tokens.
//! - `failover` (feature `wire`): a channel over several controllers that follows the
//!   leader.
//! - [`error_text`]: errors and statuses as one readable line.
//! - [`atomic_file`]: replacing a file atomically, the one way hutch writes its files.
//! - [`token_file`]: tokens read from files rather than flags (`ps` shows flags).
//! - [`paging`]: list answers in pages (`page_size`, `page_token`, `next_page_token`).
#![forbid(unsafe_code)]

pub mod atomic_file;
#[cfg(feature = "wire")]
pub mod bearer;
#[cfg(feature = "wire")]
pub mod convert;
pub mod cpu;
pub mod error_text;
#[cfg(feature = "wire")]
pub mod failover;
pub mod health;
pub mod image_ref;
pub mod mounts;
pub mod names;
pub mod network;
pub mod paging;
pub mod process;
pub mod rootfs_source;
pub mod seccomp_profile;
pub mod security;
pub mod spec;
pub mod step;
pub mod token_file;
pub mod units;

pub use error_text::error_chain;
#[cfg(feature = "wire")]
pub use error_text::status_text;
