//! Logging for the daemons: `tracing` to stderr, filtered by `RUST_LOG` (for example
//! `RUST_LOG=hutch_agent=debug`), or at `default_level` when it is unset or invalid; as text
//! for people, or one JSON object per line for log collectors (`--log-format json`: the
//! span and event fields as JSON fields, not interpolated into the message).

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields` (with `message`),
    /// `target`, and the current `span` and `spans` with their fields.
    Json,
}

/// Installs the daemon's `tracing` subscriber.
pub fn init(default_level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}
