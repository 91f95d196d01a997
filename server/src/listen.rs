//! The gRPC server base every hutch daemon shares: the listener, the services each one
//! offers besides its own (`grpc.health.v1.Health`, and server reflection in both versions
//! clients use: `grpc.reflection.v1`, and `v1alpha`, which grpcurl 1.8 asks for), TLS with
//! client certificates of the cluster CA, HTTP/2 limits, and a graceful stop on SIGTERM.
//! Message sizes are bounded on purpose: requests are small (4 MiB), responses may carry
//! exec output (up to 16 MiB per stream, so 40 MiB).

use std::future::Future;

use thiserror::Error;
use tokio::net::TcpListener;
use tonic::transport::server::Router;
use tonic_health::server::HealthReporter;

/// Largest request accepted.
pub const MAX_REQUEST_BYTES: usize = 4 << 20;
/// Largest response sent.
pub const MAX_RESPONSE_BYTES: usize = 40 << 20;
/// Streams one connection may have open at once (HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

/// Why a server could not be set up or stopped serving.
#[derive(Debug, Error)]
pub enum ServeError {
    /// Reflection could not be set up.
    #[error("reflection: {0}")]
    Reflection(#[source] tonic_reflection::server::Error),
    /// The TLS settings were refused.
    #[error("TLS: {}", hutch_core::error_chain(.0))]
    Tls(#[source] tonic::transport::Error),
    /// The transport failed.
    #[error("gRPC server: {0}")]
    Transport(#[source] tonic::transport::Error),
}

/// A server with the services every hutch daemon offers: `grpc.health.v1.Health` and
/// reflection in both versions, plus the health reporter to mark its own services. With
/// `tls`, it serves TLS only, asking callers for a certificate of the cluster CA.
pub fn base_router(
    tls: Option<&hutch_pki::material::TlsMaterial>,
) -> Result<(Router, HealthReporter), ServeError> {
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(hutch_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().map_err(ServeError::Reflection)?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(ServeError::Reflection)?;
    let (health, health_service) = tonic_health::server::health_reporter();
    let mut server = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)));
    if let Some(tls) = tls {
        server = server
            .tls_config(tls.server_config())
            .map_err(ServeError::Tls)?;
    }
    let router = server
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    Ok((router, health))
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve_router(
    router: Router,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    router
        // No Nagle: small replies must not wait for a delayed ACK (40 ms per round trip).
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
        .map_err(ServeError::Transport)
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Binds `listen` for a daemon; returns the listener and the address it got (port 0 picks
/// one). A non-loopback address without `tls` gets here only with `insecure` (see
/// [`crate::config::check_plaintext`]); it is warned about at every start.
pub async fn bind(
    listen: std::net::SocketAddr,
    tls: bool,
) -> Result<(TcpListener, String), String> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    if !listen.ip().is_loopback() && !tls {
        tracing::warn!(%addr, "--insecure: serving plaintext gRPC on a non-loopback address; anyone who can reach it can run containers as root");
    }
    Ok((listener, addr))
}
