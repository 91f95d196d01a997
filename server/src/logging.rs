//! Logging for the daemons: `tracing` to stderr, filtered by `RUST_LOG` (for example
//! `RUST_LOG=hutch_agent=debug`), or at `default_level` when it is unset or invalid.

/// Installs the daemon's `tracing` subscriber.
pub fn init(default_level: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
}
