//! The agent's durable event log: every state change of every container, each with a
//! per-agent, strictly increasing sequence number, appended to `STATE_DIR/events.log` and
//! fsynced *before* anyone is told about it.
//!
//! Readers subscribe "from seq N": stored events after N are replayed, then live ones follow.
//! Appending and subscribing take the same lock, so the replay and the live channel meet with
//! no gap and no duplicate. The log keeps the newest `keep` events (compaction rewrites the
//! file atomically once it holds twice that); asking for older ones is
//! [`EventLogError::Compacted`], which tells the reader the oldest seq still kept so it knows
//! to re-list instead.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::broadcast;

use crate::fsutil::write_atomic;
use crate::runtime::state::{StartTimeline, Status};

/// Live events buffered per subscriber before it counts as lagging.
const LIVE_BUFFER: usize = 1024;

/// One recorded state change: a [`NewEvent`] with its sequence number and time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Sequence number, strictly increasing per agent, starting at 1.
    pub seq: u64,
    /// When it was recorded (ms since the epoch).
    pub time_ms: u64,
    /// What changed.
    #[serde(flatten)]
    pub change: NewEvent,
}

/// A state change of a container, before it is recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewEvent {
    /// The container.
    pub container_id: String,
    /// Its new status.
    pub status: Status,
    /// A human-readable summary.
    pub details: String,
    /// Exit code, for an exit.
    pub exit_code: Option<i32>,
    /// Terminating signal, for an exit by signal.
    pub signal: Option<i32>,
    /// Whether the OOM killer acted.
    pub oom_killed: bool,
    /// Whether the container was removed from the node.
    pub removed: bool,
    /// Its health, when it has a check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<hutch_core::health::HealthStatus>,
    /// When each step of its start happened: on every state of a started container, so
    /// whichever of its events the controller applies last carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<StartTimeline>,
}

/// Why the log could not be used.
#[derive(Debug, Error)]
pub enum EventLogError {
    /// The file could not be read or written.
    #[error("event log {path}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The requested events were compacted away.
    #[error("events after seq {since} are no longer kept: the oldest kept is {oldest}; list the current state and resume from there")]
    Compacted {
        /// What was asked for.
        since: u64,
        /// Oldest seq still kept.
        oldest: u64,
    },
}

struct Inner {
    path: PathBuf,
    file: File,
    events: VecDeque<Event>,
    next_seq: u64,
    keep: usize,
}

/// The log. Shared by the service handlers and the container watchers.
pub struct EventLog {
    inner: Mutex<Inner>,
    live: broadcast::Sender<Event>,
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> EventLogError {
    EventLogError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

impl EventLog {
    /// Opens the log at `path`, keeping at least the newest `keep` events. A torn last line
    /// (a crash in the middle of an append) is dropped: it was never acknowledged.
    pub fn open(path: &Path, keep: usize) -> Result<Self, EventLogError> {
        let keep = keep.max(1);
        let mut events = VecDeque::new();
        if let Ok(f) = File::open(path) {
            for line in BufReader::new(f).lines() {
                let line = line.map_err(|e| io_err(path, e))?;
                match serde_json::from_str::<Event>(&line) {
                    Ok(e) => events.push_back(e),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "dropping an unreadable event line")
                    }
                }
            }
        }
        let next_seq = events.back().map(|e| e.seq + 1).unwrap_or(1);
        let mut inner = Inner {
            path: path.to_path_buf(),
            file: OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| io_err(path, e))?,
            events,
            next_seq,
            keep,
        };
        // Rewrite once at start: drops a torn line and applies the bound.
        compact(&mut inner, true)?;
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        Ok(EventLog {
            inner: Mutex::new(inner),
            live,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the log half-written in memory (the
        // push happens after the durable write), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `event` durably, then publishes it. Returns it with its seq.
    pub fn append(&self, event: NewEvent) -> Result<Event, EventLogError> {
        let mut inner = self.lock();
        let event = Event {
            seq: inner.next_seq,
            time_ms: crate::fsutil::unix_millis_now(),
            change: event,
        };
        let mut line = serde_json::to_vec(&event).map_err(|e| io_err(&inner.path, e))?;
        line.push(b'\n');
        let path = inner.path.clone();
        inner.file.write_all(&line).map_err(|e| io_err(&path, e))?;
        inner.file.sync_data().map_err(|e| io_err(&path, e))?;
        inner.next_seq += 1;
        inner.events.push_back(event.clone());
        compact(&mut inner, false)?;
        // Sent under the lock, so subscribers see events in seq order.
        let _ = self.live.send(event.clone());
        Ok(event)
    }

    /// Stored events after `since`, and a receiver for every later one.
    pub fn subscribe(
        &self,
        since: u64,
    ) -> Result<(Vec<Event>, broadcast::Receiver<Event>), EventLogError> {
        let inner = self.lock();
        let oldest = inner
            .events
            .front()
            .map(|e| e.seq)
            .unwrap_or(inner.next_seq);
        if since > 0 && since + 1 < oldest {
            return Err(EventLogError::Compacted { since, oldest });
        }
        let replay = inner
            .events
            .iter()
            .filter(|e| e.seq > since)
            .cloned()
            .collect();
        Ok((replay, self.live.subscribe()))
    }

    /// The highest seq recorded so far (0 before the first event).
    pub fn last_seq(&self) -> u64 {
        self.lock().next_seq - 1
    }

    /// Events kept now.
    pub fn len(&self) -> usize {
        self.lock().events.len()
    }

    /// Whether no event is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Keeps the newest `keep` events once the log holds twice that (or always when `force`),
/// rewriting the file atomically and reopening it for appends.
fn compact(inner: &mut Inner, force: bool) -> Result<(), EventLogError> {
    if !force && inner.events.len() < inner.keep * 2 {
        return Ok(());
    }
    while inner.events.len() > inner.keep {
        inner.events.pop_front();
    }
    let mut data = Vec::new();
    for e in &inner.events {
        data.extend(serde_json::to_vec(e).map_err(|err| io_err(&inner.path, err))?);
        data.push(b'\n');
    }
    write_atomic(&inner.path, &data).map_err(|e| io_err(&inner.path, e))?;
    inner.file = OpenOptions::new()
        .append(true)
        .open(&inner.path)
        .map_err(|e| io_err(&inner.path, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str) -> NewEvent {
        NewEvent {
            container_id: id.into(),
            status: Status::Running,
            details: "started".into(),
            exit_code: None,
            signal: None,
            oom_killed: false,
            removed: false,
            health: None,
            timeline: None,
        }
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hutch-events-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir.join("events.log")
    }

    #[test]
    fn seqs_increase_and_survive_reopen() {
        let path = temp("reopen");
        let log = EventLog::open(&path, 100).expect("open");
        assert_eq!(log.append(ev("a")).expect("append").seq, 1);
        assert_eq!(log.append(ev("b")).expect("append").seq, 2);
        drop(log);
        let log = EventLog::open(&path, 100).expect("reopen");
        assert_eq!(log.last_seq(), 2);
        assert_eq!(log.append(ev("c")).expect("append").seq, 3);
        let (replay, _) = log.subscribe(1).expect("subscribe");
        assert_eq!(replay.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2, 3]);
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[test]
    fn torn_last_line_is_dropped() {
        let path = temp("torn");
        let log = EventLog::open(&path, 100).expect("open");
        log.append(ev("a")).expect("append");
        drop(log);
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(b"{\"seq\":2,\"time_ms").expect("write");
        drop(f);
        let log = EventLog::open(&path, 100).expect("reopen");
        assert_eq!(log.last_seq(), 1);
        assert_eq!(log.append(ev("b")).expect("append").seq, 2);
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[test]
    fn compaction_bounds_the_log_and_reports_the_oldest_kept() {
        let path = temp("compact");
        let log = EventLog::open(&path, 3).expect("open");
        for i in 0..10 {
            log.append(ev(&format!("c{i}"))).expect("append");
        }
        let (replay, _) = log.subscribe(0).expect("everything kept");
        assert!(replay.len() <= 6 && replay.len() >= 3, "{}", replay.len());
        let oldest = replay[0].seq;
        assert_eq!(replay.last().map(|e| e.seq), Some(10));
        match log.subscribe(1) {
            Err(EventLogError::Compacted {
                since: 1,
                oldest: o,
            }) => assert_eq!(o, oldest),
            other => panic!("expected Compacted, got {other:?}"),
        }
        assert!(
            log.subscribe(oldest - 1).is_ok(),
            "the seq just before the oldest is fine"
        );
        drop(log);
        let log = EventLog::open(&path, 3).expect("reopen");
        assert_eq!(log.last_seq(), 10);
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[tokio::test]
    async fn replay_then_live_without_gap_or_duplicate() {
        let path = temp("live");
        let log = EventLog::open(&path, 100).expect("open");
        log.append(ev("a")).expect("append");
        let (replay, mut live) = log.subscribe(0).expect("subscribe");
        log.append(ev("b")).expect("append");
        assert_eq!(replay.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1]);
        assert_eq!(live.recv().await.expect("live").seq, 2);
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }
}
