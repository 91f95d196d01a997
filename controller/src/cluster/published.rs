//! Watch events as the controller keeps and publishes them: each is encoded for the wire
//! at most once, by the first stream that sends it, and every watcher sends the same bytes
//! (with 100 watchers, one encoding instead of a deep copy and an encoding per watcher).

use std::sync::{Arc, OnceLock};

use hutch_proto::v1;
use hutch_proto::wire::PreEncoded;

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

#[cfg(test)]
mod tests {
    use super::*;

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
