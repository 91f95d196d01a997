//! hutch-server: what both daemons, `hutch-agent` and `hutch-controller`, share as gRPC
//! servers, so neither depends on the other:
//! - [`listen`]: binding, the health and reflection services, TLS, HTTP/2 limits, a
//!   graceful stop on SIGTERM;
//! - [`auth`]: bearer tokens and certificate identities, checked per call by a tower layer;
//! - [`limits`]: budgets of requests in flight and a time limit per request, as a tower layer;
//! - [`config`]: the configuration errors, the plaintext rule and the limits' settings;
//! - [`logging`]: `tracing` to stderr under `RUST_LOG`.
//! - [`metrics`]: the Prometheus registry, gRPC call counts and durations as a tower layer,
//!   and the `/metrics` endpoint.
#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod limits;
pub mod listen;
pub mod logging;
pub mod metrics;

pub use listen::{
    base_router, bind, serve_router, shutdown_signal, ServeError, MAX_REQUEST_BYTES,
    MAX_RESPONSE_BYTES, MAX_STREAMS_PER_CONNECTION,
};
