//! The agent's durable event log: every state change of every container, each with a
//! per-agent, strictly increasing sequence number, appended to `STATE_DIR/events.log` and
//! fsynced *before* anyone is told about it.
//!
//! Appends commit in groups: an append writes its line and waits; one of the waiters (the
//! first that finds no sync under way) fsyncs the file on a blocking thread, which makes
//! every line written before it durable, then publishes those events in order and answers
//! their appenders. Concurrent appends share one fsync, and no Tokio worker waits for a
//! disk. A failed fsync fails every append it covered; their lines are rewritten away.
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
use tokio::sync::{broadcast, oneshot};

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

/// Answers an appender: its event is durable, or why not.
type Settle = oneshot::Sender<Result<(), String>>;
/// An appender's side of [`Settle`].
type Settled = oneshot::Receiver<Result<(), String>>;

struct Inner {
    path: PathBuf,
    file: File,
    /// Durable and published events, the newest `keep` (to `2 * keep` before compaction).
    events: VecDeque<Event>,
    /// Written to the file, waiting for a sync, in seq order, with their appenders.
    pending: VecDeque<(Event, Settle)>,
    /// A sync of the file is under way.
    syncing: bool,
    /// The highest seq published (0 before the first).
    published_seq: u64,
    /// Why the log takes no more events: a write, or the rewrite after a failed write or
    /// sync, failed, so the file may not hold what was published (restart the agent).
    broken: Option<String>,
    next_seq: u64,
    keep: usize,
}

/// The log. Shared by the service handlers and the container watchers.
pub struct EventLog {
    inner: Mutex<Inner>,
    live: broadcast::Sender<Event>,
    /// Fired when a sync ends, for appenders waiting to lead the next one.
    sync_ended: tokio::sync::Notify,
    /// Syncs run so far.
    syncs: std::sync::atomic::AtomicU64,
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
        let published_seq = events.back().map(|e| e.seq).unwrap_or(0);
        let next_seq = published_seq + 1;
        let mut inner = Inner {
            path: path.to_path_buf(),
            file: OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| io_err(path, e))?,
            events,
            pending: VecDeque::new(),
            syncing: false,
            published_seq,
            broken: None,
            next_seq,
            keep,
        };
        // Rewrite once at start: drops a torn line and applies the bound.
        compact(&mut inner, true)?;
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        Ok(EventLog {
            inner: Mutex::new(inner),
            live,
            sync_ended: tokio::sync::Notify::new(),
            syncs: Default::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the log half-written in memory (the
        // push happens after the durable write), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `event` durably, then publishes it. Returns it with its seq.
    pub async fn append(&self, event: NewEvent) -> Result<Event, EventLogError> {
        self.stage(event)?.durable().await
    }

    /// Gives `event` its seq and writes its line, not yet durable: events staged one after
    /// the other are recorded (and published) in that order; [`Staged::durable`] waits.
    pub fn stage(&self, event: NewEvent) -> Result<Staged<'_>, EventLogError> {
        let (event, settled) = self.write(event)?;
        Ok(Staged {
            log: self,
            event,
            settled,
        })
    }

    fn outcome(&self, event: Event, outcome: Result<(), String>) -> Result<Event, EventLogError> {
        outcome.map(|()| event).map_err(|e| EventLogError::Io {
            path: self.lock().path.clone(),
            message: e,
        })
    }

    /// Gives `event` its seq and writes its line (not synced); the receiver answers once a
    /// sync has settled it.
    fn write(&self, event: NewEvent) -> Result<(Event, Settled), EventLogError> {
        let mut inner = self.lock();
        if let Some(why) = &inner.broken {
            return Err(io_err(&inner.path, format!("{why}; restart the agent")));
        }
        let event = Event {
            seq: inner.next_seq,
            time_ms: crate::fsutil::unix_millis_now(),
            change: event,
        };
        let mut line = serde_json::to_vec(&event).map_err(|e| io_err(&inner.path, e))?;
        line.push(b'\n');
        let path = inner.path.clone();
        if let Err(e) = inner.file.write_all(&line) {
            // Part of the line may be in the file: rewrite it without.
            if let Err(rewrite) = compact(&mut inner, true) {
                inner.broken = Some(format!(
                    "a write failed ({e}), then its rewrite ({rewrite})"
                ));
            }
            return Err(io_err(&path, e));
        }
        inner.next_seq += 1;
        let (settle, settled) = oneshot::channel();
        inner.pending.push_back((event.clone(), settle));
        Ok((event, settled))
    }

    /// The next sync to run, when none runs and lines wait for one.
    fn lead(&self) -> Option<Sync<'_>> {
        let mut inner = self.lock();
        if inner.syncing {
            return None;
        }
        let through = inner.pending.back()?.0.seq;
        let file = match inner.file.try_clone() {
            Ok(file) => file,
            Err(e) => {
                let failure = format!("cannot sync: {e}");
                drop(inner);
                self.settle(through, Err(failure));
                return None;
            }
        };
        inner.syncing = true;
        Some(Sync {
            log: self,
            file: Some(file),
            through,
        })
    }

    /// Settles the pending events up to `through`: published in order (and the log
    /// compacted), or, when their sync failed, dropped and their lines rewritten away.
    fn settle(&self, through: u64, synced: Result<(), String>) {
        let mut inner = self.lock();
        inner.syncing = false;
        while inner.pending.front().is_some_and(|(e, _)| e.seq <= through) {
            let Some((event, settle)) = inner.pending.pop_front() else {
                break;
            };
            if synced.is_ok() {
                inner.published_seq = event.seq;
                inner.events.push_back(event.clone());
                // Sent under the lock, so subscribers see events in seq order.
                let _ = self.live.send(event);
            }
            let _ = settle.send(synced.clone());
        }
        // After a failed sync, the lines it covered are rewritten away.
        if let Err(e) = compact(&mut inner, synced.is_err()) {
            tracing::error!(error = %e, "rewriting the event log failed; it takes no more events");
            inner.broken = Some(format!("rewriting it failed ({e})"));
        }
        drop(inner);
        self.sync_ended.notify_waiters();
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

    /// The highest seq recorded (durable and published) so far (0 before the first event).
    pub fn last_seq(&self) -> u64 {
        self.lock().published_seq
    }

    /// The fsyncs run so far (each made every event written before it durable).
    pub fn syncs(&self) -> u64 {
        self.syncs.load(std::sync::atomic::Ordering::Relaxed)
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

/// An event written to the log and waiting for the sync that makes it durable.
pub struct Staged<'a> {
    log: &'a EventLog,
    event: Event,
    settled: Settled,
}

impl Staged<'_> {
    /// Its seq.
    pub fn seq(&self) -> u64 {
        self.event.seq
    }

    /// Waits until the event is durable and published (leading a sync when none runs),
    /// and returns it; an error when the sync that covered it failed.
    pub async fn durable(mut self) -> Result<Event, EventLogError> {
        let log = self.log;
        loop {
            // Made before the look below, so a sync that ends after it still wakes us.
            let sync_ended = log.sync_ended.notified();
            tokio::pin!(sync_ended);
            sync_ended.as_mut().enable();
            match self.settled.try_recv() {
                Ok(outcome) => return log.outcome(self.event, outcome),
                Err(oneshot::error::TryRecvError::Closed) => {
                    return log.outcome(self.event, Err("the log dropped it".into()))
                }
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            if let Some(sync) = log.lead() {
                sync.run().await;
                continue;
            }
            tokio::select! {
                outcome = &mut self.settled => {
                    let outcome = outcome.unwrap_or_else(|_| Err("the log dropped it".into()));
                    return log.outcome(self.event, outcome);
                }
                _ = &mut sync_ended => {}
            }
        }
    }
}

/// One sync of the log's file, run by the appender that leads it; a sync abandoned (its
/// appender's task cancelled) ends as failed for none: its events wait for the next one.
struct Sync<'a> {
    log: &'a EventLog,
    file: Option<File>,
    through: u64,
}

impl Sync<'_> {
    async fn run(mut self) {
        let Some(file) = self.file.take() else { return };
        self.log
            .syncs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let synced = tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        if let Err(e) = &synced {
            tracing::error!(error = %e, "syncing the event log failed; the events it covered are dropped");
        }
        let through = self.through;
        // Settled: nothing for the drop below to undo.
        self.through = 0;
        self.log.settle(through, synced);
    }
}

impl Drop for Sync<'_> {
    fn drop(&mut self) {
        if self.through > 0 {
            self.log.lock().syncing = false;
            self.log.sync_ended.notify_waiters();
        }
    }
}

/// Keeps the newest `keep` events once the log holds twice that (or always when `force`),
/// rewriting the file atomically (durably) and reopening it for appends.
fn compact(inner: &mut Inner, force: bool) -> Result<(), EventLogError> {
    if !force && inner.events.len() < inner.keep * 2 {
        return Ok(());
    }
    while inner.events.len() > inner.keep {
        inner.events.pop_front();
    }
    // Lines still waiting for their sync stay, behind the published ones.
    let mut data = Vec::new();
    for e in inner
        .events
        .iter()
        .chain(inner.pending.iter().map(|(e, _)| e))
    {
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
    use std::sync::Arc;

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

    #[tokio::test]
    async fn seqs_increase_and_survive_reopen() {
        let path = temp("reopen");
        let log = EventLog::open(&path, 100).expect("open");
        assert_eq!(log.append(ev("a")).await.expect("append").seq, 1);
        assert_eq!(log.append(ev("b")).await.expect("append").seq, 2);
        drop(log);
        let log = EventLog::open(&path, 100).expect("reopen");
        assert_eq!(log.last_seq(), 2);
        assert_eq!(log.append(ev("c")).await.expect("append").seq, 3);
        let (replay, _) = log.subscribe(1).expect("subscribe");
        assert_eq!(replay.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2, 3]);
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[tokio::test]
    async fn torn_last_line_is_dropped() {
        let path = temp("torn");
        let log = EventLog::open(&path, 100).expect("open");
        log.append(ev("a")).await.expect("append");
        drop(log);
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(b"{\"seq\":2,\"time_ms").expect("write");
        drop(f);
        let log = EventLog::open(&path, 100).expect("reopen");
        assert_eq!(log.last_seq(), 1);
        assert_eq!(log.append(ev("b")).await.expect("append").seq, 2);
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[tokio::test]
    async fn compaction_bounds_the_log_and_reports_the_oldest_kept() {
        let path = temp("compact");
        let log = EventLog::open(&path, 3).expect("open");
        for i in 0..10 {
            log.append(ev(&format!("c{i}"))).await.expect("append");
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_share_syncs_and_are_published_in_order() {
        // On a disk (not a tmpfs, whose fsync costs nothing), as the agent's log is.
        let dir = PathBuf::from(format!(
            "/var/tmp/hutch-events-group-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("events.log");
        let log = Arc::new(EventLog::open(&path, 1000).expect("open"));
        let (_, mut live) = log.subscribe(0).expect("subscribe");
        let appends: Vec<_> = (0..64)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move { log.append(ev(&format!("c{i}"))).await })
            })
            .collect();
        let mut seqs = Vec::new();
        for a in appends {
            seqs.push(a.await.expect("task").expect("append").seq);
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=64).collect::<Vec<_>>());
        for want in 1..=64 {
            assert_eq!(
                live.recv().await.expect("live").seq,
                want,
                "published in order"
            );
        }
        let syncs = log.syncs();
        println!("64 concurrent appends took {syncs} fsyncs");
        assert!(syncs < 32, "{syncs} fsyncs for 64 concurrent appends");
        drop(log);
        let reopened = EventLog::open(&path, 1000).expect("reopen");
        assert_eq!(
            reopened.last_seq(),
            64,
            "every acknowledged event is in the file"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn replay_then_live_without_gap_or_duplicate() {
        let path = temp("live");
        let log = EventLog::open(&path, 100).expect("open");
        log.append(ev("a")).await.expect("append");
        let (replay, mut live) = log.subscribe(0).expect("subscribe");
        log.append(ev("b")).await.expect("append");
        assert_eq!(replay.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1]);
        assert_eq!(live.recv().await.expect("live").seq, 2);
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }
}
