//! Why a runtime operation failed, and the broad class of each reason, which the service
//! edge maps to a gRPC code (`crate::service::status`).

use std::path::{Path, PathBuf};

use thiserror::Error;

use super::mount_plan::MountPlanError;
use super::state::{Failure, Status};
use crate::cgroup::CgroupError;
use crate::names::NameError;
use crate::rootfs::RootfsError;
use crate::spec::SpecError;
use crate::volumes::VolumeError;

/// The broad class of an error, for mapping to API status codes at the service edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The request is malformed.
    InvalidArgument,
    /// The thing asked for does not exist.
    NotFound,
    /// It exists already.
    AlreadyExists,
    /// The request is fine but the state does not allow it now.
    FailedPrecondition,
    /// The host ran out of something.
    ResourceExhausted,
    /// The node's configuration does not allow it.
    PermissionDenied,
    /// A remote service the request needs (a registry) cannot be reached.
    Unavailable,
    /// Content did not have the digest that names it.
    DataLoss,
    /// Something on the host went wrong.
    Internal,
}

/// Why a runtime operation failed.
#[derive(Debug, Error)]
pub enum RuntimeError {
    /// The container id is not a safe name.
    #[error(transparent)]
    BadId(NameError),
    /// The spec is invalid.
    #[error("invalid container spec: {0}")]
    InvalidSpec(#[from] SpecError),
    /// A container with this id exists on this host.
    #[error("container '{0}' already exists on this host; pick another id or remove it first")]
    AlreadyExists(String),
    /// No such container.
    #[error("container '{0}' not found on this host")]
    NotFound(String),
    /// A rootfs problem (unknown rootfs, build failure, in use).
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    /// A cgroup problem.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The container could not be started; `failure.step` names the failing step.
    #[error("container '{id}' failed to start at step '{}': {}", failure.step, failure.message)]
    StartFailed {
        /// The container.
        id: String,
        /// What failed.
        failure: Failure,
    },
    /// Attach to a container that does not run on a terminal.
    #[error(
        "container '{0}' was not started with tty: there is no terminal to attach to (use exec)"
    )]
    NotAttachable(String),
    /// An exec could not run its command.
    #[error("exec in container '{id}' failed at step '{}': {}", failure.step, failure.message)]
    ExecFailed {
        /// The container.
        id: String,
        /// What failed.
        failure: Failure,
    },
    /// The container is not running.
    #[error("container '{id}' is not running (status: {status:?})")]
    NotRunning {
        /// The container.
        id: String,
        /// Its status.
        status: Status,
    },
    /// The container is still running.
    #[error("container '{0}' is still running; stop it first or remove it with force")]
    StillRunning(String),
    /// A signal number outside 1..=64.
    #[error("signal {0} is not a valid signal number (1-64)")]
    InvalidSignal(i32),
    /// The supervisor could not be started or did not report.
    #[error("supervisor of container '{id}': {message}")]
    Supervisor {
        /// The container.
        id: String,
        /// What happened.
        message: String,
    },
    /// The container's network cannot be set up (or taken down) on this node.
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),
    /// A mount cannot be made on this node.
    #[error(transparent)]
    Mount(#[from] MountPlanError),
    /// `user_name` names no user (or group) of the rootfs.
    #[error("spec.security.user_name: {0}")]
    UnknownUser(String),
    /// A volume operation failed.
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// The state directory could not be read or written.
    #[error("{path}: {message}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What happened.
        message: String,
    },
}

impl RuntimeError {
    /// The class of this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            RuntimeError::BadId(_)
            | RuntimeError::UnknownUser(_)
            | RuntimeError::InvalidSpec(_)
            | RuntimeError::InvalidSignal(_) => ErrorClass::InvalidArgument,
            RuntimeError::AlreadyExists(_) => ErrorClass::AlreadyExists,
            RuntimeError::NotFound(_) => ErrorClass::NotFound,
            RuntimeError::Rootfs(e) => match e {
                RootfsError::BadName(_) | RootfsError::InvalidSource(_) => {
                    ErrorClass::InvalidArgument
                }
                RootfsError::NotFound { .. } => ErrorClass::NotFound,
                RootfsError::SourceMissing(_) | RootfsError::InUse { .. } => {
                    ErrorClass::FailedPrecondition
                }
                RootfsError::BuildFailed { .. } | RootfsError::Store { .. } => ErrorClass::Internal,
                RootfsError::Image(e) => image_class(e),
            },
            RuntimeError::Cgroup(
                CgroupError::SwapUnsupported(_)
                | CgroupError::NoPidsController(_)
                | CgroupError::NoCpuController(_)
                | CgroupError::MemoryNotDelegated { .. },
            ) => ErrorClass::FailedPrecondition,
            RuntimeError::StartFailed { failure, .. }
            | RuntimeError::ExecFailed { failure, .. } => {
                if failure.step.is_the_requests_fault() {
                    ErrorClass::InvalidArgument
                } else if failure.step.is_a_precondition() {
                    // The node cannot grant what was asked (a capability its agent lacks).
                    ErrorClass::FailedPrecondition
                } else {
                    ErrorClass::Internal
                }
            }
            RuntimeError::NotRunning { .. }
            | RuntimeError::StillRunning(_)
            | RuntimeError::NotAttachable(_)
            | RuntimeError::Network(_) => ErrorClass::FailedPrecondition,
            RuntimeError::Mount(e) => match e {
                MountPlanError::SourceMissing(_)
                | MountPlanError::BadOption(_)
                | MountPlanError::BadPolicy(_) => ErrorClass::InvalidArgument,
                MountPlanError::NotAllowed { .. } => ErrorClass::PermissionDenied,
                MountPlanError::SourceUnreadable { .. } => ErrorClass::FailedPrecondition,
                MountPlanError::Volume(v) => volume_class(v),
            },
            RuntimeError::Volume(v) => volume_class(v),
            RuntimeError::Cgroup(_) | RuntimeError::Supervisor { .. } | RuntimeError::Io { .. } => {
                ErrorClass::Internal
            }
        }
    }
}

/// The class of an image error.
fn image_class(e: &crate::rootfs::image::ImageError) -> ErrorClass {
    use crate::rootfs::image::ImageError as E;
    match e {
        E::Invalid(_) | E::LayerRefused { .. } => ErrorClass::InvalidArgument,
        E::NotFound(_) => ErrorClass::NotFound,
        E::Missing(_) | E::Unsupported(_) | E::NotAllowed(_) => ErrorClass::FailedPrecondition,
        E::DigestMismatch(_) => ErrorClass::DataLoss,
        E::Unavailable(_) => ErrorClass::Unavailable,
        E::Auth(_) => ErrorClass::PermissionDenied,
        E::TooLarge(_) => ErrorClass::ResourceExhausted,
        E::Io(_) => ErrorClass::Internal,
    }
}

/// The class of a volume error.
fn volume_class(e: &VolumeError) -> ErrorClass {
    match e {
        VolumeError::BadName(_) | VolumeError::BadLabels(_) => ErrorClass::InvalidArgument,
        VolumeError::AlreadyExists(_) => ErrorClass::AlreadyExists,
        VolumeError::NotFound(_) => ErrorClass::NotFound,
        VolumeError::InUse { .. } => ErrorClass::FailedPrecondition,
        VolumeError::Io { .. } => ErrorClass::Internal,
    }
}

pub(crate) fn io_err(path: &Path, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}
