//! Starts in flight, by container id: a second start of an id waits until the first has
//! ended (started or failed) before it tries, so it answers ALREADY_EXISTS only about a
//! container that is all there, and starts afresh when the first one failed and left
//! nothing. A retry racing its first try, or a restarted controller sending a run again,
//! then never sees a container half made.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

/// The ids being started.
#[derive(Default)]
pub struct Starts {
    running: Mutex<HashMap<String, watch::Receiver<()>>>,
}

/// The claim on an id while its start runs; dropping it (the start ended, or its task was
/// cancelled) lets the next start of the id go.
pub struct StartClaim<'a> {
    starts: &'a Starts,
    id: String,
    /// Dropped after the entry is removed: waiters then see the channel closed.
    _ended: watch::Sender<()>,
}

impl Starts {
    /// Claims `id`, first waiting for every start of it in flight to end.
    pub async fn claim(&self, id: &str) -> StartClaim<'_> {
        loop {
            let mut in_flight = {
                let mut running = self.lock();
                match running.get(id) {
                    Some(ended) => ended.clone(),
                    None => {
                        let (ended, waiters) = watch::channel(());
                        running.insert(id.to_string(), waiters);
                        return StartClaim {
                            starts: self,
                            id: id.to_string(),
                            _ended: ended,
                        };
                    }
                }
            };
            // Nothing is ever sent: this returns once the sender is dropped.
            while in_flight.changed().await.is_ok() {}
        }
    }

    /// Whether a start of `id` is in flight.
    pub fn in_flight(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Receiver<()>>> {
        // The map is whole after any panic (one insert or remove at a time).
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for StartClaim<'_> {
    fn drop(&mut self) {
        self.starts.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_second_claim_waits_for_the_first_to_end() {
        let starts = Arc::new(Starts::default());
        let first = starts.claim("a").await;
        assert!(starts.in_flight("a"));
        let second = {
            let starts = starts.clone();
            tokio::spawn(async move {
                let _claim = starts.claim("a").await;
            })
        };
        // Another id is not held up.
        drop(starts.claim("b").await);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !second.is_finished(),
            "the second claim went ahead of the first"
        );
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("the second claim goes once the first ends")
            .expect("task");
        assert!(!starts.in_flight("a"));
    }
}
