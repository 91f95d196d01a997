//! The SDK's one error type. Errors from the cluster keep their gRPC code, so a program can
//! tell "no such container" (`NotFound`) from "the controller is away" (`Unavailable`).

use tonic::Code;

/// Anything that can go wrong talking to hutch.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request was refused before it was sent (a size that does not parse, a bad URL).
    #[error("{0}")]
    InvalidInput(String),
    /// The controller could not be reached.
    #[error("cannot reach the controller at {url}: {message}")]
    Connect {
        /// Where it was looked for.
        url: String,
        /// Why it failed.
        message: String,
    },
    /// The controller (or a node behind it) answered with an error status.
    #[error("{}", .0.message())]
    Status(#[from] tonic::Status),
}

impl Error {
    /// The gRPC code: the server's for [`Error::Status`], `InvalidArgument` for input refused
    /// here, `Unavailable` when the controller could not be reached.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidInput(_) => Code::InvalidArgument,
            Error::Connect { .. } => Code::Unavailable,
            Error::Status(s) => s.code(),
        }
    }

    /// Whether the thing asked for does not exist.
    pub fn is_not_found(&self) -> bool {
        self.code() == Code::NotFound
    }
}

/// The SDK's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
