//! Group commit: many changes share one flush to disk.
//!
//! A change is *staged* under the state lock: written to the store without waiting for the
//! disk ([`crate::store::Store::stage`]) and applied in memory, so the next change placed
//! under the lock sees it. It is made durable by a *sync* that runs outside the lock and
//! covers every change staged before it. Whoever needs a change durable (the caller being
//! answered, a reader, a dispatch about to start a container) waits until the sync that
//! covers it is done; the first of them that finds no sync under way runs one for all
//! (leader and followers). A change's watch events are published, and its caller answered,
//! only once it is durable, so nothing is acknowledged that a crash could take back.
//!
//! Staged changes are numbered in the order they were staged (1, 2, ...): a sync of number
//! `n` makes every change up to `n` durable, because the store keeps their order.
//!
//! A sync that fails leaves changes in memory that may never reach the disk: the cluster
//! then steps down (its term ends, as when an etcd write's outcome is lost), and every
//! waiter gets the error.

use std::cell::Cell;

use tokio::sync::watch;

/// Where the staged changes stand.
#[derive(Debug, Clone, Default)]
pub(crate) struct Progress {
    /// The number of the last change staged.
    pub staged: u64,
    /// Every change up to this number is durable, and its events are published.
    pub durable: u64,
    /// A sync is under way.
    pub syncing: bool,
    /// A sync failed with this message: what is staged past `durable` may never be durable.
    pub failed: Option<String>,
}

/// The staged and durable change numbers, shared by the cluster's callers.
#[derive(Debug)]
pub(crate) struct GroupSync {
    progress: watch::Sender<Progress>,
}

impl Default for GroupSync {
    fn default() -> Self {
        GroupSync {
            progress: watch::channel(Progress::default()).0,
        }
    }
}

impl GroupSync {
    /// Numbers a change just staged (called under the state lock, so numbers follow the
    /// store's order).
    pub fn staged(&self) -> u64 {
        let mut seq = 0;
        self.progress.send_modify(|p| {
            p.staged += 1;
            seq = p.staged;
        });
        seq
    }

    /// The number of the last change staged.
    pub fn last_staged(&self) -> u64 {
        self.progress.borrow().staged
    }

    /// Takes the lead of a sync when none is under way and something is staged and not yet
    /// durable: returns the number the sync will make durable.
    pub fn claim(&self) -> Option<u64> {
        let mut target = None;
        self.progress.send_if_modified(|p| {
            if p.syncing || p.failed.is_some() || p.durable >= p.staged {
                return false;
            }
            p.syncing = true;
            target = Some(p.staged);
            false
        });
        target
    }

    /// Records that every change up to `seq` is durable (and published); `led`: the caller
    /// claimed the sync that did it.
    pub fn synced(&self, seq: u64, led: bool) {
        self.progress.send_modify(|p| {
            p.durable = p.durable.max(seq);
            if led {
                p.syncing = false;
            }
        });
    }

    /// Records that a sync failed: no later change will be durable.
    pub fn failed(&self, message: String, led: bool) {
        self.progress.send_modify(|p| {
            p.failed.get_or_insert(message);
            if led {
                p.syncing = false;
            }
        });
    }

    /// Waits until change `seq` is durable, or a sync fails (its message), or no sync is
    /// under way though `seq` is not durable (`Ok(false)`: the caller should lead one).
    pub async fn wait(&self, seq: u64) -> Result<bool, String> {
        let mut progress = self.progress.subscribe();
        let seen = progress
            .wait_for(|p| p.durable >= seq || p.failed.is_some() || !p.syncing)
            .await;
        // The sender lives as long as `self`: `wait_for` cannot fail here.
        let Ok(p) = seen else { return Ok(false) };
        match &p.failed {
            _ if p.durable >= seq => Ok(true),
            Some(message) => Err(message.clone()),
            None => Ok(false),
        }
    }
}

thread_local! {
    /// Inside [`deferring`]: the number of the last change staged on this thread, 0 if none.
    static DEFERRING: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Runs `f`, in which the changes staged on this thread are not synced before they return
/// (the caller waits for them after `f`, without the state lock); returns what `f` returned
/// and the number of the last change it staged.
pub(crate) fn deferring<T>(f: impl FnOnce() -> T) -> (T, Option<u64>) {
    /// Puts back the outer state (keeping the latest number for an outer `deferring`).
    struct Reset(Option<u64>);
    impl Drop for Reset {
        fn drop(&mut self) {
            DEFERRING.with(|d| {
                let inner = d.get().unwrap_or(0);
                d.set(self.0.map(|outer| outer.max(inner)));
            });
        }
    }
    let outer = DEFERRING.with(|d| d.replace(Some(0)));
    let reset = Reset(outer);
    let value = f();
    let last = DEFERRING.with(|d| d.get()).filter(|&seq| seq > 0);
    drop(reset);
    (value, last)
}

/// Called by a commit that staged change `seq`: true when the thread is inside
/// [`deferring`] (the change is synced after it); false when the commit must sync now.
pub(crate) fn defer(seq: u64) -> bool {
    DEFERRING.with(|d| match d.get() {
        Some(_) => {
            d.set(Some(seq));
            true
        }
        None => false,
    })
}

/// What a call that committed becomes when its changes could not be made durable.
pub(crate) trait Outcome {
    /// `self`, or the error in its place when the type can carry one.
    fn unless_lost(self, error: super::ClusterError) -> Self;
}

impl<T> Outcome for Result<T, super::ClusterError> {
    fn unless_lost(self, error: super::ClusterError) -> Self {
        self.and(Err(error))
    }
}

/// Outcomes that carry no error: the cluster has stepped down, which its loops and streams
/// see on their own.
macro_rules! outcome_without_error {
    ($($t:ty),*) => {$(
        impl Outcome for $t {
            fn unless_lost(self, _: super::ClusterError) -> Self {
                self
            }
        }
    )*};
}
outcome_without_error!((), bool);

impl<T> Outcome for Option<T> {
    fn unless_lost(self, _: super::ClusterError) -> Self {
        None
    }
}

impl<T> Outcome for Vec<T> {
    fn unless_lost(self, _: super::ClusterError) -> Self {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_claim_at_a_time_covers_everything_staged_before_it() {
        let g = GroupSync::default();
        assert_eq!(g.claim(), None, "nothing staged, nothing to sync");
        assert_eq!(g.staged(), 1);
        assert_eq!(g.staged(), 2);
        assert_eq!(g.claim(), Some(2));
        assert_eq!(g.staged(), 3);
        assert_eq!(g.claim(), None, "a sync is under way");
        g.synced(2, true);
        assert_eq!(g.claim(), Some(3), "what was staged during the sync");
        g.synced(3, true);
        assert_eq!(g.claim(), None);
    }

    #[tokio::test]
    async fn waiters_learn_durable_failed_or_lead() {
        let g = GroupSync::default();
        let one = g.staged();
        assert_eq!(g.wait(one).await, Ok(false), "nobody syncs: lead");
        assert_eq!(g.claim(), Some(one));
        g.synced(one, true);
        assert_eq!(g.wait(one).await, Ok(true));
        let two = g.staged();
        assert_eq!(g.claim(), Some(two));
        g.failed("disk gone".into(), true);
        assert_eq!(g.wait(two).await, Err("disk gone".to_string()));
        assert_eq!(
            g.wait(one).await,
            Ok(true),
            "what was durable stays durable"
        );
        assert_eq!(g.claim(), None, "no sync after a failure");
    }

    #[test]
    fn only_commits_inside_deferring_are_deferred() {
        assert!(!defer(7), "outside: sync now");
        let ((), last) = deferring(|| {
            assert!(defer(4));
            assert!(defer(9));
        });
        assert_eq!(last, Some(9));
        let ((), last) = deferring(|| ());
        assert_eq!(last, None);
        assert!(!defer(7), "reset after");
        let outcome = std::panic::catch_unwind(|| deferring(|| panic!("inside")));
        assert!(outcome.is_err());
        assert!(!defer(7), "reset after a panic too");
    }
}
