//! hutch's Rust SDK: a typed client for the controller (`hutch.v1.Controller`).
//!
//! ```no_run
//! # async fn demo() -> hutch::Result<()> {
//! use hutch::{Client, ContainerSpec, Namespace};
//! let client = Client::connect("http://127.0.0.1:7000").await?;
//! let (container, _) = client
//!     .create(
//!         &ContainerSpec::new("debian")
//!             .command(["ps", "-ef"])
//!             .memory("64M")
//!             .namespaces([Namespace::Pid, Namespace::Ipc, Namespace::Net, Namespace::Uts, Namespace::Mount]),
//!     )
//!     .await?;
//! let end = container.wait().await?;
//! println!("exit code {:?}", end.exit_code);
//! # Ok(()) }
//! ```
//!
//! Every error is one [`Error`] that keeps the gRPC code ([`Error::code`]). The wire types
//! are re-exported as [`proto`].
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod client;
pub mod container;
pub mod error;
pub mod manifest;
pub mod services;
pub mod spec;

pub use client::{BoxStream, Client, ClientOptions, TlsOptions};
pub use container::{is_final, Container, ExecOutput, ExecSession, LogsOptions, SessionOutput};
pub use error::{Error, Result};
pub use hutch_core::units::{human_bytes, parse_size};
pub use hutch_proto::v1 as proto;
pub use spec::{parse_namespaces, ContainerSpec, Namespace, RestartPolicy};
