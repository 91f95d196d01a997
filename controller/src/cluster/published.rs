//! Watch events as the controller keeps and publishes them: each is encoded for the wire
//! at most once, by the first stream that sends it, and every watcher sends the same bytes
//! (with 100 watchers, one encoding instead of a deep copy and an encoding per watcher).
//!
//! The [`Feed`] holds them: the events of staged changes until a sync makes them durable,
//! then the last ones published, for watchers resuming from a revision. It has a lock of
//! its own, so publishing after a sync never waits for the state lock.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};

use hutch_proto::v1;
use hutch_proto::wire::PreEncoded;
use tokio::sync::broadcast;

/// A committed watch event, kept for replay and broadcast to live watchers.
#[derive(Debug)]
pub struct PublishedEvent {
    event: v1::WatchEvent,
    wire: OnceLock<PreEncoded>,
}

impl PublishedEvent {
    /// `event`, not yet encoded.
    pub fn new(event: v1::WatchEvent) -> Arc<PublishedEvent> {
        Arc::new(PublishedEvent {
            event,
            wire: OnceLock::new(),
        })
    }

    /// The event, for the watchers' filters.
    pub fn event(&self) -> &v1::WatchEvent {
        &self.event
    }

    /// Its revision.
    pub fn revision(&self) -> u64 {
        self.event.revision
    }

    /// Its encoding, made by the first caller and shared by the rest.
    pub fn wire(&self) -> PreEncoded {
        self.wire
            .get_or_init(|| PreEncoded::of(&self.event))
            .clone()
    }
}

/// A watcher's receiver of the events published after it subscribed.
pub type LiveEvents = broadcast::Receiver<Arc<PublishedEvent>>;

/// Why a watch cannot start at the revision asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum NotKept {
    /// Older than the oldest event kept.
    Compacted {
        /// The oldest revision kept.
        oldest: u64,
        /// The revision published last (where a resync resumes).
        published: u64,
    },
    /// Newer than the last event published.
    Future {
        /// The revision published last.
        published: u64,
    },
}

/// The watch events, published in revision order once their changes are durable.
pub struct Feed {
    /// Events of staged changes, with their change numbers, oldest first.
    unpublished: VecDeque<(u64, v1::WatchEvent)>,
    /// The last `keep` events published, oldest first.
    kept: VecDeque<Arc<PublishedEvent>>,
    /// The revision of the last event published.
    revision: u64,
    keep: usize,
    live: broadcast::Sender<Arc<PublishedEvent>>,
}

impl Feed {
    /// A feed holding `events` (loaded from the store) at `revision`, keeping `keep` events
    /// and letting a live watcher fall `buffer` events behind.
    pub fn new(events: Vec<v1::WatchEvent>, revision: u64, keep: usize, buffer: usize) -> Feed {
        Feed {
            unpublished: VecDeque::new(),
            kept: events.into_iter().map(PublishedEvent::new).collect(),
            revision,
            keep,
            live: broadcast::channel(buffer.max(1)).0,
        }
    }

    /// Holds the events of change `seq`, just staged, until [`Feed::publish_through`].
    pub fn stage(&mut self, seq: u64, events: Vec<v1::WatchEvent>) {
        self.unpublished
            .extend(events.into_iter().map(|e| (seq, e)));
    }

    /// Events kept or waiting to be: what the store keeps too.
    pub fn held(&self) -> usize {
        self.kept.len() + self.unpublished.len()
    }

    /// Events kept for replay.
    pub fn kept(&self) -> usize {
        self.kept.len()
    }

    /// Publishes the events of every change up to `seq` (durable now), in order.
    pub fn publish_through(&mut self, seq: u64) {
        while self.unpublished.front().is_some_and(|(s, _)| *s <= seq) {
            let Some((_, e)) = self.unpublished.pop_front() else {
                break;
            };
            self.revision = e.revision;
            let e = PublishedEvent::new(e);
            self.kept.push_back(e.clone());
            // No receivers is fine: nobody watches.
            let _ = self.live.send(e);
        }
        while self.kept.len() > self.keep {
            self.kept.pop_front();
        }
    }

    /// Every event after `since` kept, then a receiver of those published later, without
    /// gap or duplicate (both taken under the lock publication holds).
    pub fn watch(&self, since: u64) -> Result<(Vec<Arc<PublishedEvent>>, LiveEvents), NotKept> {
        let published = self.revision;
        let oldest = self.kept.front().map_or(published + 1, |e| e.revision());
        if since > 0 && since.saturating_add(1) < oldest {
            return Err(NotKept::Compacted { oldest, published });
        }
        if since > published {
            return Err(NotKept::Future { published });
        }
        let replay = self
            .kept
            .iter()
            .filter(|e| e.revision() > since)
            .cloned()
            .collect();
        Ok((replay, self.live.subscribe()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(revision: u64) -> v1::WatchEvent {
        v1::WatchEvent {
            revision,
            ..Default::default()
        }
    }

    #[test]
    fn events_are_published_once_their_change_is_durable_and_in_order() {
        let mut feed = Feed::new(vec![event(1), event(2)], 2, 3, 16);
        let (replay, mut live) = feed.watch(1).expect("kept");
        assert_eq!(replay.iter().map(|e| e.revision()).collect::<Vec<_>>(), [2]);
        feed.stage(1, vec![event(3), event(4)]);
        feed.stage(2, vec![event(5)]);
        assert_eq!(feed.held(), 5);
        assert_eq!(feed.watch(3).err(), Some(NotKept::Future { published: 2 }));
        assert!(
            live.try_recv().is_err(),
            "nothing published before its sync"
        );
        feed.publish_through(1);
        let got: Vec<u64> = std::iter::from_fn(|| live.try_recv().ok())
            .map(|e| e.revision())
            .collect();
        assert_eq!(got, [3, 4]);
        feed.publish_through(2);
        assert_eq!(live.try_recv().map(|e| e.revision()).ok(), Some(5));
        assert_eq!(feed.kept(), 3, "only `keep` are kept");
        assert_eq!(
            feed.watch(1).err(),
            Some(NotKept::Compacted {
                oldest: 3,
                published: 5
            })
        );
        assert_eq!(feed.watch(0).map(|(r, _)| r.len()).ok(), Some(3));
    }

    #[test]
    fn encoded_once_for_every_watcher() {
        let published = PublishedEvent::new(v1::WatchEvent {
            revision: 7,
            ..Default::default()
        });
        let first = published.wire();
        let second = published.clone().wire();
        assert_eq!(first.bytes().as_ptr(), second.bytes().as_ptr());
        assert_eq!(published.revision(), 7);
    }
}
