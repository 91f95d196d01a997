//! The one place where hutch's typed errors become gRPC status codes, each with the
//! error's own message (which names the field, the container, the rootfs or the step).

use tonic::{Code, Status};

use crate::events::EventLogError;
use crate::rootfs::RootfsError;
use crate::runtime::{ErrorClass, RuntimeError};

/// The gRPC code of an error class.
pub fn code_of(class: ErrorClass) -> Code {
    match class {
        ErrorClass::InvalidArgument => Code::InvalidArgument,
        ErrorClass::NotFound => Code::NotFound,
        ErrorClass::AlreadyExists => Code::AlreadyExists,
        ErrorClass::FailedPrecondition => Code::FailedPrecondition,
        ErrorClass::ResourceExhausted => Code::ResourceExhausted,
        ErrorClass::PermissionDenied => Code::PermissionDenied,
        ErrorClass::Unavailable => Code::Unavailable,
        ErrorClass::DataLoss => Code::DataLoss,
        ErrorClass::Internal => Code::Internal,
    }
}

impl From<RuntimeError> for Status {
    fn from(e: RuntimeError) -> Status {
        Status::new(code_of(e.class()), e.to_string())
    }
}

impl From<RootfsError> for Status {
    fn from(e: RootfsError) -> Status {
        RuntimeError::Rootfs(e).into()
    }
}

impl From<EventLogError> for Status {
    fn from(e: EventLogError) -> Status {
        match e {
            EventLogError::Compacted { .. } => Status::out_of_range(e.to_string()),
            EventLogError::Io { .. } => Status::internal(e.to_string()),
        }
    }
}

/// `InvalidArgument` naming the field.
pub fn invalid(field: &str, message: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {message}"))
}
