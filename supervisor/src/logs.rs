//! The container log format: one line per line of output, as the CRI (Kubernetes) log format
//! writes it, so existing tools can read it:
//!
//! ```text
//! 2026-11-29T01:02:03.123456789Z stdout F hello world
//! 2026-11-29T01:02:03.223456789Z stderr P a long line cut at the buffer size...
//! ```
//!
//! `F` marks a full line, `P` a partial one (a line longer than the buffer, or output that
//! ended without a newline is flushed as `F` at exit).

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One parsed log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// RFC 3339 timestamp with nanoseconds, UTC.
    pub time: String,
    /// Source stream.
    pub stream: Stream,
    /// Whether this completes a line (`F`) or is a fragment (`P`).
    pub full: bool,
    /// The text, without the newline.
    pub text: String,
}

/// Formats one log line, newline included.
pub fn format_line(time: SystemTime, stream: Stream, full: bool, text: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "{} {} {} ",
        humantime::format_rfc3339_nanos(time),
        stream.as_str(),
        if full { "F" } else { "P" }
    )
    .into_bytes();
    out.extend(text.iter().map(|&b| if b == b'\n' { b' ' } else { b }));
    out.push(b'\n');
    out
}

/// Parses one line written by [`format_line`].
pub fn parse_line(line: &str) -> Option<LogLine> {
    let mut parts = line.splitn(4, ' ');
    let time = parts.next()?.to_string();
    let stream = match parts.next()? {
        "stdout" => Stream::Stdout,
        "stderr" => Stream::Stderr,
        _ => return None,
    };
    let full = match parts.next()? {
        "F" => true,
        "P" => false,
        _ => return None,
    };
    Some(LogLine {
        time,
        stream,
        full,
        text: parts.next().unwrap_or("").to_string(),
    })
}

/// Splits a stream's output into log records: complete lines are emitted as they come; a
/// fragment longer than `max_line` is emitted as partial; the rest waits for more bytes.
#[derive(Debug)]
pub struct LineSplitter {
    pending: Vec<u8>,
    max_line: usize,
}

impl LineSplitter {
    /// A splitter emitting partial records above `max_line` bytes.
    pub fn new(max_line: usize) -> Self {
        LineSplitter {
            pending: Vec::new(),
            max_line,
        }
    }

    /// Feeds bytes; returns `(full, text)` records ready to be written.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<(bool, Vec<u8>)> {
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(pos) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=pos).take(pos).collect();
            out.push((true, line));
        }
        while self.pending.len() >= self.max_line {
            let chunk: Vec<u8> = self.pending.drain(..self.max_line).collect();
            out.push((false, chunk));
        }
        out
    }

    /// Flushes what is left at end of stream as a full record.
    pub fn finish(&mut self) -> Option<(bool, Vec<u8>)> {
        (!self.pending.is_empty()).then(|| (true, std::mem::take(&mut self.pending)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(1_700_000_000_123_456_789);
        let line = format_line(t, Stream::Stderr, true, b"hello world");
        let text = String::from_utf8(line).expect("utf8");
        assert_eq!(
            text,
            "2023-11-14T22:13:20.123456789Z stderr F hello world\n"
        );
        let parsed = parse_line(text.trim_end()).expect("parse");
        assert_eq!(parsed.stream, Stream::Stderr);
        assert!(parsed.full);
        assert_eq!(parsed.text, "hello world");
        assert_eq!(parse_line("bad"), None);
    }

    #[test]
    fn splitter() {
        let mut s = LineSplitter::new(8);
        assert_eq!(s.push(b"ab\ncd"), vec![(true, b"ab".to_vec())]);
        assert_eq!(
            s.push(b"e\n\n"),
            vec![(true, b"cde".to_vec()), (true, Vec::new())]
        );
        assert_eq!(s.push(b"0123456789"), vec![(false, b"01234567".to_vec())]);
        assert_eq!(s.finish(), Some((true, b"89".to_vec())));
        assert_eq!(s.finish(), None);
    }
}
