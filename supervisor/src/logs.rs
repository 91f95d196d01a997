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

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// How much log a container keeps: Docker's `max-size` and `max-file`. When the current
/// file would pass `max_bytes`, it becomes `container.log.1` (the older ones move up one,
/// the oldest beyond `max_files` goes), and a new one starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLimits {
    /// Largest size of one file.
    pub max_bytes: u64,
    /// Files kept, the current one included (1: the current one is emptied instead).
    pub max_files: u32,
}

impl Default for LogLimits {
    /// 10 MiB, 5 files: at most 50 MiB of log per container.
    fn default() -> Self {
        LogLimits {
            max_bytes: 10 << 20,
            max_files: 5,
        }
    }
}

/// `container.log.N`, the Nth newest rotated file (`N` = 0: `container.log` itself).
pub fn rotated(path: &Path, n: u32) -> PathBuf {
    if n == 0 {
        return path.to_path_buf();
    }
    let mut name = path.as_os_str().to_os_string();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// The writer's side: appends lines to `container.log`, rotating by [`LogLimits`].
pub struct RotatingLog {
    path: PathBuf,
    file: File,
    written: u64,
    limits: LogLimits,
}

impl RotatingLog {
    /// Opens (appends to) the log at `path`.
    pub fn open(path: &Path, limits: LogLimits) -> std::io::Result<RotatingLog> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let written = file.metadata()?.len();
        Ok(RotatingLog {
            path: path.to_path_buf(),
            file,
            written,
            limits,
        })
    }

    /// Appends one formatted line (see [`format_line`]), rotating first if it would not
    /// fit. A line is never split across files.
    pub fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.written > 0 && self.written + line.len() as u64 > self.limits.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.written += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let keep = self.limits.max_files.max(1);
        if keep > 1 {
            for n in (1..keep - 1).rev() {
                match std::fs::rename(rotated(&self.path, n), rotated(&self.path, n + 1)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            std::fs::rename(&self.path, rotated(&self.path, 1))?;
            // Readers follow by inode: the renamed file is complete, the new one starts empty.
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
        } else {
            self.file.set_len(0)?;
        }
        self.written = 0;
        Ok(())
    }
}

/// Most rotated files a reader looks for (more than any `max_files` accepted).
const MAX_ROTATED: u32 = 100;

/// The reader's side: the log's lines oldest first, across rotated files, then (polled)
/// the lines written since, following the current file through rotations without a gap or
/// a duplicate. Every file is read through an open descriptor, so a file renamed away is
/// still read to its end; then come the files newer than it, found by its inode among the
/// rotated names (an open file's inode cannot be reused). Only a file rotated out of
/// `max_files` before the reader opened it is missed.
pub struct LogFiles {
    path: PathBuf,
    /// Files still to read, oldest first, each with its inode.
    queue: std::collections::VecDeque<(File, u64)>,
    /// The file being read.
    current: Option<(File, u64)>,
    /// The current file was found renamed away: once read to its end, move on.
    rotated_away: bool,
    pending: Vec<u8>,
}

impl LogFiles {
    /// Opens the log at `path` (`container.log`) and its rotated files.
    pub fn open(path: &Path) -> LogFiles {
        let mut files = LogFiles {
            path: path.to_path_buf(),
            queue: std::collections::VecDeque::new(),
            current: None,
            rotated_away: false,
            pending: Vec::new(),
        };
        files.queue = files.newer_than(None);
        files.current = files.queue.pop_front();
        files
    }

    /// The files at the path and its rotated names that are newer than the file with inode
    /// `than` (all of them for `None`, or when that file is gone), oldest first. Opened
    /// newest first, so a rotation meanwhile repeats a file (dropped by its inode) rather
    /// than skipping one.
    fn newer_than(&self, than: Option<u64>) -> std::collections::VecDeque<(File, u64)> {
        let mut found = std::collections::VecDeque::new();
        for n in 0..=MAX_ROTATED {
            let Ok(file) = File::open(rotated(&self.path, n)) else {
                if n == 0 {
                    continue;
                }
                break;
            };
            let Ok(ino) = file.metadata().map(|m| m.ino()) else {
                continue;
            };
            if Some(ino) == than {
                break;
            }
            if !found.iter().any(|(_, i)| *i == ino) {
                found.push_front((file, ino));
            }
        }
        found
    }

    /// The complete lines written since the last call (none at the end of what is written
    /// so far; a torn last line waits for its end). At most `chunk` bytes are read.
    pub fn read_new(&mut self, chunk: usize) -> std::io::Result<Vec<LogLine>> {
        let mut buf = vec![0u8; chunk];
        loop {
            let Some((file, ino)) = self.current.as_mut() else {
                // Nothing was written when the reader opened the log.
                self.queue = self.newer_than(None);
                match self.queue.pop_front() {
                    Some(next) => {
                        self.current = Some(next);
                        continue;
                    }
                    None => return Ok(Vec::new()),
                }
            };
            let n = file.read(&mut buf)?;
            if n > 0 {
                self.pending.extend_from_slice(&buf[..n]);
                let lines = self.complete_lines();
                if lines.is_empty() {
                    continue;
                }
                return Ok(lines);
            }
            let ino = *ino;
            // Emptied in place (max_files 1): start it again from its beginning.
            let (len, at) = (file.metadata()?.len(), file.stream_position()?);
            if len < at {
                file.seek(std::io::SeekFrom::Start(0))?;
                self.pending.clear();
                continue;
            }
            if let Some(next) = self.queue.pop_front() {
                self.current = Some(next);
                self.pending.clear();
                continue;
            }
            if self.rotated_away {
                // Read to its end: on to the files written after it (still holding it, so
                // its inode names it).
                let newer = self.newer_than(Some(ino));
                if newer.is_empty() {
                    // The writer has not made the new file yet: look again next time.
                    return Ok(Vec::new());
                }
                self.queue = newer;
                self.current = self.queue.pop_front();
                self.rotated_away = false;
                self.pending.clear();
                continue;
            }
            let at_path = std::fs::metadata(&self.path).map(|m| m.ino()).ok();
            if at_path.is_some_and(|i| i != ino) {
                // Renamed away: read it once more to its end (the writer may have added a
                // line just before renaming), then the files that came after it.
                self.rotated_away = true;
                continue;
            }
            return Ok(Vec::new());
        }
    }

    /// Every line written so far, oldest first.
    pub fn read_all(&mut self) -> std::io::Result<Vec<LogLine>> {
        let mut all = Vec::new();
        loop {
            let lines = self.read_new(64 * 1024)?;
            if lines.is_empty() {
                return Ok(all);
            }
            all.extend(lines);
        }
    }

    fn complete_lines(&mut self) -> Vec<LogLine> {
        let mut lines = Vec::new();
        while let Some(pos) = self.pending.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = self.pending.drain(..=pos).collect();
            if let Some(l) = parse_line(String::from_utf8_lossy(&raw[..raw.len() - 1]).as_ref()) {
                lines.push(l);
            }
        }
        lines
    }
}

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

    fn line(i: usize) -> Vec<u8> {
        format_line(
            SystemTime::UNIX_EPOCH,
            Stream::Stdout,
            true,
            format!("line {i}").as_bytes(),
        )
    }

    fn texts(lines: Vec<LogLine>) -> Vec<String> {
        lines.into_iter().map(|l| l.text).collect()
    }

    #[test]
    fn rotation_keeps_max_files_and_readers_see_each_line_once() {
        let dir = std::env::temp_dir().join(format!("hutch-logs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("container.log");
        let each = line(0).len() as u64;
        let limits = LogLimits {
            max_bytes: each * 10,
            max_files: 3,
        };
        let mut log = RotatingLog::open(&path, limits).expect("open");
        // A follower started before anything is written, reading while rotations happen.
        let mut follower = LogFiles::open(&path);
        let mut followed = Vec::new();
        for i in 0..100 {
            log.write_line(&line(i)).expect("write");
            if i % 7 == 0 {
                followed.extend(texts(follower.read_all().expect("follow")));
            }
        }
        followed.extend(texts(follower.read_all().expect("follow")));
        let expected: Vec<String> = (0..100).map(|i| format!("line {i}")).collect();
        assert_eq!(followed, expected);
        // Three files kept (about ten lines each): a late reader sees the newest lines, in
        // order, without a gap.
        assert!(rotated(&path, 2).exists() && !rotated(&path, 3).exists());
        let late = texts(LogFiles::open(&path).read_all().expect("read"));
        assert!((20..=30).contains(&late.len()), "{late:?}");
        assert_eq!(late, expected[100 - late.len()..]);
        // One file: the current one is emptied instead.
        let single = dir.join("single.log");
        let mut log = RotatingLog::open(
            &single,
            LogLimits {
                max_bytes: each * 2,
                max_files: 1,
            },
        )
        .expect("open");
        // A follower reading after each line sees every line, across the emptyings.
        let mut follower = LogFiles::open(&single);
        let mut followed = Vec::new();
        for i in 0..5 {
            log.write_line(&line(i)).expect("write");
            followed.extend(texts(follower.read_all().expect("follow")));
        }
        assert_eq!(followed, expected[..5]);
        assert_eq!(
            texts(LogFiles::open(&single).read_all().expect("read")),
            ["line 4"]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

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
