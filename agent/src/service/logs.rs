//! `ContainerLogs`: the container's log file as a stream of entries, optionally only the last
//! `tail` lines and only lines between two times, and with `follow` new lines as they are written
//! until the container has ended. The files (the current one and those rotated away, see
//! `LogFiles`) are read incrementally, so memory stays bounded by the channel and the `tail`
//! window, whatever the container writes.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use hutch_proto::v1;
use tokio::sync::mpsc;
use tonic::Status;

use super::convert::log_to;
use crate::runtime::logs::{LogFiles, LogLine};
use crate::runtime::state::StatePaths;
use crate::runtime::Runtime;

/// How often a follower looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// Largest `tail` honoured, to bound memory.
pub const MAX_TAIL: usize = 100_000;
/// Bytes read from the log file per step.
const READ_CHUNK: usize = 64 * 1024;

/// What to stream.
pub struct LogQuery {
    /// Container id.
    pub id: String,
    /// Keep streaming until the container ends.
    pub follow: bool,
    /// RFC 3339 time: only lines at or after it.
    pub since: Option<String>,
    /// RFC 3339 time: only lines at or before it (a follower stops there).
    pub until: Option<String>,
    /// Only the last N lines before following.
    pub tail: Option<usize>,
}

/// Streams the log of `query.id` into `tx` until done or the receiver goes away.
pub async fn stream_logs(
    runtime: Arc<Runtime>,
    query: LogQuery,
    tx: mpsc::Sender<Result<v1::LogEntry, Status>>,
    closing: tokio::sync::watch::Receiver<bool>,
) {
    let Ok(dir) = runtime.existing_dir(&query.id) else {
        let _ = tx
            .send(Err(Status::not_found(format!(
                "container '{}' not found",
                query.id
            ))))
            .await;
        return;
    };
    // Across rotated files, following rotations (see LogFiles).
    let mut reader = LogFiles::open(&StatePaths::log(&dir));
    let keep = |l: &LogLine| {
        query.since.as_deref().is_none_or(|s| l.time.as_str() >= s)
            && query.until.as_deref().is_none_or(|u| l.time.as_str() <= u)
    };
    let past_until = || {
        query.until.as_deref().is_some_and(|u| {
            humantime::format_rfc3339_nanos(std::time::SystemTime::now())
                .to_string()
                .as_str()
                > u
        })
    };
    // Catch up: everything written so far, through the tail window.
    let mut window: VecDeque<LogLine> = VecDeque::new();
    let tail = query.tail.map(|t| t.min(MAX_TAIL));
    loop {
        let lines = match reader.read_new(READ_CHUNK) {
            Ok(l) => l,
            Err(e) => {
                let _ = tx
                    .send(Err(Status::internal(format!("reading the log: {e}"))))
                    .await;
                return;
            }
        };
        if lines.is_empty() {
            break;
        }
        for l in lines.into_iter().filter(|l| keep(l)) {
            match tail {
                Some(t) => {
                    if t == 0 {
                        continue;
                    }
                    if window.len() == t {
                        window.pop_front();
                    }
                    window.push_back(l);
                }
                None => {
                    if tx.send(Ok(log_to(&l))).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
    for l in window {
        if tx.send(Ok(log_to(&l))).await.is_err() {
            return;
        }
    }
    if !query.follow {
        return;
    }
    // Wakes the loop as soon as the exit is recorded (the supervisor writes it once the
    // output is drained into the log), so a follower learns of the end at once instead of
    // at the next poll.
    let supervisor_done = runtime.wait_ended(&query.id);
    tokio::pin!(supervisor_done);
    let mut done_seen = false;
    loop {
        let ended = runtime
            .get(&query.id)
            .map(|i| i.state.status.is_final())
            .unwrap_or(true);
        let lines = reader.read_new(READ_CHUNK).unwrap_or_default();
        let quiet = lines.is_empty();
        for l in lines.into_iter().filter(|l| keep(l)) {
            if tx.send(Ok(log_to(&l))).await.is_err() {
                return;
            }
        }
        // Done when the container has ended, the client left, the agent stops, or the
        // lines asked for are all behind.
        if (ended && quiet) || tx.is_closed() || *closing.borrow() || past_until() {
            return;
        }
        if quiet {
            if done_seen {
                tokio::time::sleep(FOLLOW_POLL).await;
            } else {
                tokio::select! {
                    _ = tokio::time::sleep(FOLLOW_POLL) => {}
                    _ = &mut supervisor_done => done_seen = true,
                }
            }
        }
    }
}
