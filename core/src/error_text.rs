//! Errors as one line a person can read: an error with its causes, and a gRPC status with
//! the transport failure behind it.

/// An error with its causes, `a: b: c` (a cause already in the text is not repeated):
/// transport errors keep the useful part (refused, certificate unknown) in their causes.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(feature = "wire")]
/// A status's message, and for a transport failure its causes (where a TLS or connection
/// error says what went wrong).
pub fn status_text(status: &tonic::Status) -> String {
    match std::error::Error::source(status) {
        Some(cause) => format!("{}: {}", status.message(), error_chain(cause)),
        None => status.message().to_string(),
    }
}
